"""Writing Parquet shards (``pixeldrl prepare-data``): one row per slice, images as PNG (float32 slices as TIFF),
each shard written under a temporary name and moved into place; the schema and reading are in
:mod:`pixelrl_env.parquet`."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from .io import BadFiles, DataError, Sample
from .parquet import MANIFEST, SCHEMA, resolve_fs, sample_digest


def _png(arr: np.ndarray, name: str) -> bytes:
    """PNG bytes of an integer image; float32 grey images become 32-bit float TIFF, PNG having no float type."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.float32:
        if arr.ndim != 2:
            raise DataError(f"{name}: float32 images with several channels cannot be stored; expected one channel")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="TIFF")  # mode F: exact, so the SHA-256 check holds
        return buf.getvalue()
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise DataError(f"{name}: 16-bit images with several channels cannot be stored as PNG")
        im = Image.fromarray(arr.astype("<u2"))  # mode I;16
    elif arr.dtype == np.uint8:
        im = Image.fromarray(arr)
    else:
        raise DataError(f"{name}: image dtype {arr.dtype} not supported; expected uint8, uint16 or float32")
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


def _write_atomic(fs: pafs.FileSystem, path: str, table: pa.Table, row_group_size: int) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    # a CRC32 per page, verified on every read (_open): a flipped byte inside a page fails the read of that shard
    # instead of decoding to other pixels, ahead of the per-row SHA-256 (which also covers the decoded content)
    pq.write_table(table, tmp, filesystem=fs, compression="zstd", row_group_size=row_group_size,
                   write_page_checksum=True)
    fs.move(tmp, path)


def _empty_output(out: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and folder of ``out``, created; refused if it is a file or already holds shards."""
    fs, root = resolve_fs(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise DataError(f"output {out} is a file; expected a folder (or a new path) for the shards")
    if info.type == pafs.FileType.Directory:
        existing = [f.path for f in fs.get_file_info(pafs.FileSelector(root)) if f.base_name.startswith("part-")]
        if existing:
            raise DataError(f"output {out} already holds shards ({len(existing)} part-* files); choose an empty folder")
    fs.create_dir(root, recursive=True)
    return fs, root


def write_shards(
    samples: Iterable[Sample],
    out: str,
    shard_size: int = 256,
    bad: BadFiles | None = None,
    row_group_size: int = 32,
) -> dict:
    """Write ``samples`` as Parquet shards under ``out`` (path or URI); returns the manifest.

    Each shard is written to a temporary name and moved into place, so a crash never leaves a half-written shard
    under a final name. Existing ``part-*.parquet`` files in ``out`` are refused rather than silently mixed.

    ``row_group_size`` bounds the rows per row group. A reader can skip whole row groups but not rows inside one, so
    with one group per shard (Parquet's default here) a worker that needs a few rows downloads the whole shard. 32
    slices of 256x256 RGB PNG are about 3-4 MB: large enough for efficient ranged GETs on object storage, small
    enough that a worker reading 1/14 of the data fetches little more than its share.
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if row_group_size < 1:
        raise DataError(f"row_group_size must be >= 1, got {row_group_size}")
    fs, root = _empty_output(out)
    rows: list[dict] = []
    shards: list[str] = []
    groups: set[str] = set()
    n = 0

    def flush() -> None:
        name = f"part-{len(shards):05d}.parquet"
        _write_atomic(fs, f"{root}/{name}", pa.Table.from_pylist(rows, schema=SCHEMA), row_group_size)
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
        "row_group_size": row_group_size,
        "skipped": [{"path": p, "error": e} for p, e in (bad.entries if bad else [])],
        "schema": [f.name for f in SCHEMA],
    }
    with fs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write(json.dumps(manifest, indent=2).encode())
    return manifest
