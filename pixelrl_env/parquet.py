"""Parquet shards: the portable form of a data set, on local disk or object storage.

Schema (one row per slice):

============  ========  =====================================================================
column        type      meaning
============  ========  =====================================================================
image         binary    PNG bytes of the image (8-bit grey/RGB, or 16-bit grey)
mask          binary    PNG bytes of the mask, 8-bit, 0 (background) / 255 (foreground)
group         string    patient or other split unit
source        string    the original file (or synthetic id)
height        int32     image height in pixels
width         int32     image width in pixels
channels      int32     image channels (1 or 3)
sha256        string    SHA-256 of the decoded image array bytes then the 0/1 mask bytes
============  ========  =====================================================================

Shards are named ``part-00000.parquet``, ``part-00001.parquet``, ... and ``manifest.json`` records counts and skipped
files. ``OUT``/``PATH`` may be a local path or any URI that :func:`pyarrow.fs.FileSystem.from_uri` understands
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``; S3 options such as
``?endpoint_override=host:port&scheme=http`` go in the query string), so the same code reads local and cloud data.
Reading verifies the SHA-256 of every row, so a round trip gives identical arrays or an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from .io import BadFiles, DataError, image_to_array, mask_from_image
from .sources import Sample

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("mask", pa.binary()),
        ("group", pa.string()),
        ("source", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int32()),
        ("sha256", pa.string()),
    ]
)


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URI (s3://, gs://, file://, ...)."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise DataError(f"cannot open data URI {uri!r}: {e}") from e
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def sample_digest(image: np.ndarray, mask: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _png(arr: np.ndarray, name: str) -> bytes:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise DataError(f"{name}: 16-bit images with several channels cannot be stored as PNG")
        im = Image.fromarray(arr.astype("<u2"))  # mode I;16
    elif arr.dtype == np.uint8:
        im = Image.fromarray(arr)
    else:
        raise DataError(f"{name}: image dtype {arr.dtype} not supported; expected uint8 or uint16")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _record(s: Sample) -> dict:
    img = s.image if s.image.ndim == 3 else s.image[..., None]
    return {
        "image": _png(img, s.source),
        "mask": _png((s.mask > 0).astype(np.uint8) * 255, s.source),
        "group": s.group,
        "source": s.source,
        "height": int(img.shape[0]),
        "width": int(img.shape[1]),
        "channels": int(img.shape[2]),
        "sha256": sample_digest(img, (s.mask > 0).astype(np.uint8)),
    }


def _write_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)


def write_shards(samples: Iterable[Sample], out: str, shard_size: int = 256, bad: BadFiles | None = None) -> dict:
    """Write ``samples`` as Parquet shards under ``out`` (path or URI); returns the manifest.

    Each shard is written to a temporary name and moved into place, so a crash never leaves a half-written shard
    under a final name. Existing ``part-*.parquet`` files in ``out`` are refused rather than silently mixed.
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    fs, root = resolve_fs(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise DataError(f"output {out} is a file; expected a folder (or a new path) for the shards")
    if info.type == pafs.FileType.Directory:
        existing = [f.path for f in fs.get_file_info(pafs.FileSelector(root)) if f.base_name.startswith("part-")]
        if existing:
            raise DataError(f"output {out} already holds shards ({len(existing)} part-* files); choose an empty folder")
    fs.create_dir(root, recursive=True)
    rows: list[dict] = []
    shards: list[str] = []
    groups: set[str] = set()
    n = 0

    def flush() -> None:
        name = f"part-{len(shards):05d}.parquet"
        _write_atomic(fs, f"{root}/{name}", pa.Table.from_pylist(rows, schema=SCHEMA))
        shards.append(name)
        rows.clear()

    for s in samples:
        rows.append(_record(s))
        groups.add(s.group)
        n += 1
        if len(rows) >= shard_size:
            flush()
    if rows:
        flush()
    if n == 0:
        raise DataError(f"no samples to write to {out}")
    manifest = {
        "n_samples": n,
        "n_groups": len(groups),
        "shards": shards,
        "shard_size": shard_size,
        "skipped": [{"path": p, "error": e} for p, e in (bad.entries if bad else [])],
        "schema": [f.name for f in SCHEMA],
    }
    with fs.open_output_stream(f"{root}/manifest.json") as f:
        f.write(json.dumps(manifest, indent=2).encode())
    return manifest


def shard_paths(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """The shard files under ``uri`` (or ``uri`` itself if it is one file), sorted."""
    fs, root = resolve_fs(uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"Parquet data not found: {uri} (expected a folder of part-*.parquet shards)")
    if info.type == pafs.FileType.File:
        return fs, [root]
    files = sorted(
        f.path
        for f in fs.get_file_info(pafs.FileSelector(root))
        if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
    )
    if not files:
        raise DataError(f"no .parquet shards in {uri}; write them with `pixeldrl prepare-data SRC OUT`")
    return fs, files


def _decode_row(row: dict, where: str) -> Sample:
    try:
        with Image.open(io.BytesIO(row["image"])) as im:
            im.load()
            image = image_to_array(im, where)
        with Image.open(io.BytesIO(row["mask"])) as im:
            im.load()
            mask = mask_from_image(im, where)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: cannot decode PNG bytes ({e})") from e
    if image.shape != (row["height"], row["width"], row["channels"]):
        raise DataError(
            f"{where}: decoded image shape {image.shape} differs from the stored "
            f"({row['height']}, {row['width']}, {row['channels']})"
        )
    if sample_digest(image, mask) != row["sha256"]:
        raise DataError(f"{where}: SHA-256 mismatch; the row is corrupt or was altered after writing")
    return Sample(image, mask, row["group"], row["source"])


def iter_parquet(uri: str, bad: BadFiles | None = None) -> Iterator[Sample]:
    """Read samples back from shards under ``uri`` (local path or pyarrow filesystem URI), in write order."""
    bad = bad if bad is not None else BadFiles()
    fs, files = shard_paths(uri)
    for path in files:
        try:
            pf = pq.ParquetFile(fs.open_input_file(path))
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read Parquet shard {path}: {e}") from e
        missing = {f.name for f in SCHEMA} - set(pf.schema_arrow.names)
        if missing:
            raise DataError(f"Parquet shard {path} lacks columns {sorted(missing)}; expected {SCHEMA.names}")
        row_idx = 0
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                where = f"{path} row {row_idx}"
                row_idx += 1
                try:
                    yield _decode_row(row, where)
                except DataError as e:
                    bad.handle(where, e)

