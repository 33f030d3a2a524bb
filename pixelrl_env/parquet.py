"""Parquet shards: the portable form of a data set, on local disk or object storage.

Schema (one row per slice):

============  ========  =====================================================================
column        type      meaning
============  ========  =====================================================================
image         binary    PNG bytes of the image (8-bit grey/RGB, or 16-bit grey); float32 grey images (NIfTI
                        slices) as 32-bit float TIFF bytes, uncompressed (the column's zstd compresses them)
mask          binary    PNG bytes of the mask, 8-bit, 0 (background) / 255 (foreground)
group         string    patient or other split unit
source        string    the original file (or synthetic id)
height        int32     image height in pixels
width         int32     image width in pixels
channels      int32     image channels (1 or 3)
sha256        string    SHA-256 of the decoded image array bytes then the 0/1 mask bytes
============  ========  =====================================================================

Shards are named ``part-00000.parquet``, ``part-00001.parquet``, ... and ``_manifest.json`` records counts and skipped
files (the leading ``_`` makes pyarrow, pandas and Spark pass it over when they read the folder as one data set). ``OUT``/``PATH`` may be a local path or any URI that :func:`pyarrow.fs.FileSystem.from_uri` understands
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``; S3 options such as
``?endpoint_override=host:port&scheme=http`` go in the query string), so the same code reads local and cloud data.
Reading verifies the SHA-256 of every row, so a round trip gives identical arrays or an error.

Shards hold row groups of ``row_group_size`` rows (32 by default). A row group is the smallest unit a reader can
fetch, so small groups let a worker that needs 1/n of the rows download about 1/n of the image bytes
(:class:`ParquetIndex`: small columns of every row, then ``image`` of the chosen rows' groups only).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from .io import BadFiles, DataError, Sample, image_to_array, mask_from_image

MANIFEST = "_manifest.json"  # folders written before were read the same: the reader lists *.parquet
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


def _decode_png(data: bytes, where: str, convert) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return convert(im, where)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: cannot decode PNG bytes ({e})") from e


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """The ``mask`` column's PNG as ``(H, W)`` uint8 {0, 1}; errors name ``where`` as :func:`iter_parquet` does."""
    return _decode_png(data, where, mask_from_image)


def _stored_image(im: Image.Image, where: str) -> np.ndarray:
    """The ``image`` column decoded: float TIFF (mode F, written only for float32 images) stays float32."""
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)[..., None].copy()
    return image_to_array(im, where)


def _decode_row(row: dict, where: str) -> Sample:
    image = _decode_png(row["image"], where, _stored_image)
    mask = decode_mask(row["mask"], where)
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
        pf = _open(fs.open_input_file, path)
        row_idx = 0
        for batch in _batches(pf, path):
            for row in batch.to_pylist():
                where = f"{path} row {row_idx}"
                row_idx += 1
                try:
                    yield _decode_row(row, where)
                except DataError as e:
                    bad.handle(where, e)



class _CountingFile:
    """Python file object over ``fs.open_input_file(path)`` that adds the bytes it returns to ``stats["bytes_read"]``.

    Wrapped in :class:`pyarrow.PythonFile`, every byte Parquet fetches (footer, column chunks) goes through ``read``,
    so the count is what was actually read from storage, local or remote.
    """

    def __init__(self, raw: pa.NativeFile, stats: dict):
        self._raw, self._stats = raw, stats

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._stats["bytes_read"] = self._stats.get("bytes_read", 0) + len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False


def _open(open_file, path: str, **kwargs) -> pq.ParquetFile:
    """``pq.ParquetFile`` over ``open_file(path)`` with page checksums verified (pages written without one, by
    older versions of this project, are read as before), schema checked; every failure a DataError naming the shard."""
    try:
        pf = pq.ParquetFile(open_file(path), page_checksum_verification=True, **kwargs)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet shard {path}: {e}") from e
    missing = {f.name for f in SCHEMA} - set(pf.schema_arrow.names)
    if missing:
        raise DataError(f"Parquet shard {path} lacks columns {sorted(missing)}; expected {SCHEMA.names}")
    return pf


def _batches(pf: pq.ParquetFile, path: str):
    try:
        yield from pf.iter_batches(batch_size=64)
    except (pa.ArrowException, OSError) as e:  # a damaged page (checksum, decompression) found while reading
        raise DataError(f"cannot read Parquet shard {path}: {e}") from e


def _open_counted(fs: pafs.FileSystem, path: str, stats: dict) -> pq.ParquetFile:
    def open_counted(p: str):
        raw = fs.open_input_file(p)
        stats["files_opened"] = stats.get("files_opened", 0) + 1
        return pa.PythonFile(_CountingFile(raw, stats), mode="r")

    return _open(open_counted, path, pre_buffer=False)


def _read_group(pf: pq.ParquetFile, path: str, rg: int, columns: list[str]) -> dict:
    try:
        return pf.read_row_group(rg, columns=columns).to_pydict()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read row group {rg} of Parquet shard {path}: {e}") from e


class ParquetIndex:
    """Two-pass reading of shards, so that a worker downloads the images of its own rows only.

    Pass 1 (on construction) reads the small columns (:attr:`SMALL`, not ``image``) of every row: enough to split by
    group and to judge empty masks. Pass 2 (:meth:`samples`) reads ``image`` and ``sha256`` of the row groups that
    hold the chosen rows and verifies each row exactly as :func:`iter_parquet` does. Rows are numbered in write order,
    the order of :func:`iter_parquet`. ``stats`` receives ``bytes_read``, ``files_opened`` and ``rows_decoded``.
    """

    SMALL = ["group", "source", "mask", "height", "width", "channels"]

    def __init__(self, uri: str, stats: dict | None = None):
        self.stats = stats if stats is not None else {}
        fs, paths = shard_paths(uri)
        self._paths = paths
        self._files: list[pq.ParquetFile] = []
        self._loc: list[tuple[int, int, int]] = []  # (file, row group, row in shard) of each row
        self._group_first: dict[tuple[int, int], int] = {}  # (file, row group) -> index of its first row
        self._small: dict[str, list] = {c: [] for c in self.SMALL}
        try:
            for f, path in enumerate(paths):
                pf = _open_counted(fs, path, self.stats)
                self._files.append(pf)
                first = 0
                for rg in range(pf.metadata.num_row_groups):
                    cols = _read_group(pf, path, rg, self.SMALL)
                    n = len(cols["group"])
                    self._group_first[(f, rg)] = len(self._loc)
                    self._loc.extend((f, rg, first + k) for k in range(n))
                    for c in self.SMALL:
                        self._small[c].extend(cols[c])
                    first += n
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._loc)

    @property
    def groups(self) -> list[str]:
        return self._small["group"]

    @property
    def sources(self) -> list[str]:
        return self._small["source"]

    def where(self, i: int) -> str:
        """How errors name row ``i``: ``<shard> row <n>``, as :func:`iter_parquet` does."""
        f, _, k = self._loc[i]
        return f"{self._paths[f]} row {k}"

    def image_shape(self, i: int) -> tuple[int, int, int]:
        return self._small["height"][i], self._small["width"][i], self._small["channels"][i]

    def mask(self, i: int) -> np.ndarray:
        """Decoded mask of row ``i`` from the pass-1 bytes (no further reading)."""
        return decode_mask(self._small["mask"][i], self.where(i))

    def samples(self, rows: Iterable[int], bad: BadFiles | None = None) -> list[Sample]:
        """Decode and verify ``rows`` (pass 2), reading only their row groups; returned in row order."""
        bad = bad if bad is not None else BadFiles()
        wanted: dict[tuple[int, int], list[int]] = {}
        for i in sorted(set(int(r) for r in rows)):
            f, rg, _ = self._loc[i]
            wanted.setdefault((f, rg), []).append(i)
        out: list[Sample] = []
        for (f, rg), idx in wanted.items():
            try:
                cols = _read_group(self._files[f], self._paths[f], rg, ["image", "sha256"])
            except DataError as e:  # a damaged page (CRC): none of the group's rows can be trusted
                bad.handle(f"{self._paths[f]} row group {rg}", e)
                continue
            first = self._group_first[(f, rg)]
            for i in idx:
                row = {c: self._small[c][i] for c in self.SMALL}
                row["image"], row["sha256"] = cols["image"][i - first], cols["sha256"][i - first]
                self.stats["rows_decoded"] = self.stats.get("rows_decoded", 0) + 1
                try:
                    out.append(_decode_row(row, self.where(i)))
                except DataError as e:
                    bad.handle(self.where(i), e)
        return out

    def close(self) -> None:
        for pf in self._files:
            pf.close()
        self._files = []
