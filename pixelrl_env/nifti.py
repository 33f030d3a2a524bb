"""NIfTI volumes (``data.format: nifti``): 3-D volumes in the Medical Segmentation Decathlon layout,
``ROOT/imagesTr/<id>.nii.gz`` with the label map ``ROOT/labelsTr/<id>.nii.gz``; every 2-D cut along ``slice_axis`` is
a sample and the group id is the volume ``<id>``, so a split never divides a patient. The eager reader
(:func:`iter_nifti`) and the lazy one that lists rows from headers (:class:`VolumeRows`, for per-worker parts).
Needs nibabel (imported only for this format)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .io import BadFiles, DataError, Sample, check_paired, file_size, index_files, two_dirs


NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Image and label must lie on the same voxel grid. Affines are in mm and stored as float32 in the header, which rounds
# positions of ~100 mm at ~1e-5 mm; 1e-3 mm absorbs that and still catches any real shift, flip or spacing change.
AFFINE_ATOL_MM = 1e-3
_NIFTI_EXPECTED = (
    "a folder in the Medical Segmentation Decathlon layout: imagesTr/<id>.nii.gz with labelsTr/<id>.nii.gz "
    "(same file name; .nii also read)"
)


def _nibabel():
    try:
        import nibabel
    except ImportError as e:  # a dependency, but other formats work without it
        raise DataError("data.format nifti needs nibabel (pip install nibabel)") from e
    return nibabel


def _nifti_id(name: str) -> str | None:
    """Volume id of a NIfTI file name; None for other files and hidden ones (MSD tarballs hold macOS ``._*`` forks)."""
    if name.startswith("."):
        return None
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def nifti_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """List ``(volume id, image_path, label_path)`` sorted by id, checking that images and labels pair one to one."""
    img_dir, lbl_dir = two_dirs(root, "imagesTr", "labelsTr", _NIFTI_EXPECTED)
    images, labels = index_files(img_dir, _nifti_id, "volume"), index_files(lbl_dir, _nifti_id, "volume")
    if not images:
        raise DataError(f"no NIfTI volumes (*.nii.gz, *.nii) in {img_dir}; expected {_NIFTI_EXPECTED}")

    check_paired(images, labels, "image", "label file", lambda k, f: lbl_dir / f.name)
    check_paired(labels, images, "label", "image file", lambda k, f: img_dir / f.name)
    return [(vid, images[vid], labels[vid]) for vid in sorted(images)]


def slice_axis_index(slice_axis: int, where: str | Path) -> int:
    """``slice_axis`` as an index 0..2 of a 3-D volume (negative counts from the end, -1 = last axis)."""
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, (int, np.integer)) or not -3 <= slice_axis <= 2:
        raise DataError(
            f"slice_axis {slice_axis!r} is out of range for the 3-D volumes in {where}; expected -3..2 (-1 = last axis)"
        )
    return int(slice_axis) % 3


def _load_nifti(path: Path, what: str):
    nib = _nibabel()
    try:
        return nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"cannot read {what} {path}: not a NIfTI file, or its header is corrupt ({e})") from e


def _volume_shape(img, path: Path, what: str) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:  # (X, Y, Z, 1) is a 3-D volume with a unit 4th dimension
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(
            f"{what} {path} has shape {tuple(img.shape)} ({len(shape)}-D); expected a 3-D volume of one channel "
            "(4-D multi-channel or time-series images are not supported)"
        )
    return shape  # type: ignore[return-value]


def _checked_pair(image_path: Path, label_path: Path):
    """Open both headers and check they describe the same 3-D grid; returns ``(image, label, shape)``."""
    img, lbl = _load_nifti(image_path, "image"), _load_nifti(label_path, "label")
    shape = _volume_shape(img, image_path, "image")
    lshape = _volume_shape(lbl, label_path, "label")
    if shape != lshape:
        raise DataError(
            f"image {image_path} is {shape[0]}x{shape[1]}x{shape[2]} but its label {label_path} is "
            f"{lshape[0]}x{lshape[1]}x{lshape[2]}; expected the same shape"
        )
    diff = float(np.max(np.abs(np.asarray(img.affine) - np.asarray(lbl.affine))))
    if not np.allclose(img.affine, lbl.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        raise DataError(
            f"label {label_path} is not on the voxel grid of its image {image_path}: their affines differ by up to "
            f"{diff:.4g} mm (tolerance {AFFINE_ATOL_MM} mm); expected the label map saved with the image's affine"
        )
    return img, lbl, shape


def nifti_header(image_path: str | Path, label_path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape of a pair, from the headers only (no voxels decompressed), after the same checks as reading."""
    return _checked_pair(Path(image_path), Path(label_path))[2]


def _voxels(read, path: Path, what: str) -> np.ndarray:
    try:
        return read()
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"cannot read the voxels of {what} {path}: the file is truncated or corrupt ({e})") from e


def _label_map(lbl, path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Integer label voxels; non-integer values (a probability map, a resampled label) are refused, not rounded."""
    arr = _voxels(lambda: np.asanyarray(lbl.dataobj), path, "label").reshape(shape)
    if arr.dtype.kind == "f":
        wrong = ~np.isfinite(arr) | (arr != np.round(arr))
        if wrong.any():
            raise DataError(
                f"label {path} holds non-integer values ({int(wrong.sum())} voxels, e.g. {arr[wrong][0]!r}); "
                "expected an integer label map (0 = background)"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise DataError(f"label {path} has voxel type {arr.dtype}; expected integer labels (0 = background)")
    return arr


def _mask_of(labels: np.ndarray, label_value: int | None) -> np.ndarray:
    return (labels > 0 if label_value is None else labels == label_value).astype(np.uint8)


def nifti_label_values(label_path: str | Path) -> list[int]:
    """The distinct label values of a label volume, checked as :func:`read_nifti_volume` checks them."""
    path = Path(label_path)
    lbl = _load_nifti(path, "label")
    return [int(v) for v in np.unique(_label_map(lbl, path, _volume_shape(lbl, path, "label")))]


def check_label_value(pairs: list[tuple[str, Path, Path]], label_value: int, where: str | Path) -> int:
    """Raise unless ``label_value`` occurs in some label volume; returns how many label files were read.

    A value missing from some volumes only leaves their slices without foreground (a structure absent in a patient);
    missing from all, it is a wrong value (e.g. 1 where the structure is 2), and the error lists the values found.
    Unreadable labels are skipped here: the reader of that volume reports them.
    """
    found: set[int] = set()
    for n, (_, _, label_path) in enumerate(pairs, start=1):
        try:
            found.update(nifti_label_values(label_path))
        except DataError:
            continue
        if label_value in found:
            return n
    raise DataError(
        f"data.label_value={label_value} occurs in none of the {len(pairs)} label volume(s) in {where}; "
        f"values found: {sorted(found)}"
    )


def read_nifti_mask(
    image_path: str | Path, label_path: str | Path, axis: int, label_value: int | None = None
) -> np.ndarray:
    """The ``(n_slices, H, W)`` uint8 {0, 1} mask of a pair, slice axis first; the image voxels are not read."""
    _, lbl, shape = _checked_pair(Path(image_path), Path(label_path))
    return np.moveaxis(_mask_of(_label_map(lbl, Path(label_path), shape), label_value), axis, 0)


def read_nifti_volume(
    image_path: str | Path, label_path: str | Path, axis: int, label_value: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(n_slices, H, W)`` float32 and mask ``(n_slices, H, W)`` uint8 {0, 1} of a pair, slice axis first.

    Intensities are the header-scaled voxel values (``get_fdata``) as float32, never rescaled here: normalisation is
    per slice, in :func:`pixelrl_env.dataset.prepare_image`. Non-finite intensities are refused.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    img, lbl, shape = _checked_pair(image_path, label_path)
    labels = _label_map(lbl, label_path, shape)
    image = _finite_voxels(img, image_path, shape)
    return np.moveaxis(image, axis, 0), np.moveaxis(_mask_of(labels, label_value), axis, 0)


def _finite_voxels(img, image_path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    image = _voxels(lambda: img.get_fdata(dtype=np.float32), image_path, "image").reshape(shape)
    finite = np.isfinite(image)
    if not finite.all():
        raise DataError(
            f"image {image_path} holds {int((~finite).sum())} NaN or infinite voxel(s); expected finite intensities"
        )
    return image


def nifti_image_shape(image_path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape of a scan without a label, from its header only: refuses what :func:`read_nifti_image` would."""
    image_path = Path(image_path)
    return _volume_shape(_load_nifti(image_path, "image"), image_path, "image")


def nifti_from_bytes(data: bytes, name: str, max_bytes: int):
    """``(nibabel image, (X, Y, Z) float32 voxels)`` of an uploaded ``.nii`` or ``.nii.gz`` (a served request), checked
    as :func:`read_nifti_image` checks a file; a gzip stream that inflates past ``max_bytes`` is refused (a
    decompression bomb), as is a truncated one."""
    nib = _nibabel()
    raw = data
    if data[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflate.decompress(data, max_bytes + 1)
        except zlib.error as e:
            raise DataError(f"{name}: not a readable gzip stream ({e})") from e
        if len(raw) > max_bytes:
            raise DataError(f"{name}: inflates to more than {max_bytes:,} bytes; expected a smaller volume")
        if not inflate.eof:
            raise DataError(f"{name}: the gzip stream is truncated; expected a complete .nii.gz")
    try:
        img = nib.Nifti1Image.from_bytes(raw)
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for a bad header
        raise DataError(f"{name}: not a NIfTI-1 volume, or its header is corrupt ({type(e).__name__}: {e})") from e
    path = Path(name)
    return img, _finite_voxels(img, path, _volume_shape(img, path, "image"))


def read_nifti_image(image_path: str | Path):
    """``(nibabel image, (X, Y, Z) float32 voxels)`` of a scan without a label (``pixeldrl predict``), checked as
    :func:`read_nifti_volume` checks a labelled one: a readable 3-D volume of finite intensities."""
    image_path = Path(image_path)
    img = _load_nifti(image_path, "image")
    return img, _finite_voxels(img, image_path, _volume_shape(img, image_path, "image"))


def nifti_source(image_path: str | Path, axis: int, k: int) -> str:
    """How a slice is named in ``Sample.source``: ``<image path>#axis<a>_slice<k>``."""
    return f"{image_path}#axis{axis}_slice{k:03d}"


def iter_nifti(
    root: str | Path, bad: BadFiles | None = None, slice_axis: int = -1, label_value: int | None = None
) -> Iterator[Sample]:
    """2-D cuts along ``slice_axis`` of every volume, in volume id then slice order; group = volume id.

    Images are ``(H, W, 1)`` float32, masks ``label > 0`` (``label_value`` None) or ``label == label_value``. Under
    ``skip_bad`` an unreadable or inconsistent volume is skipped whole and counted once.
    """
    bad = bad if bad is not None else BadFiles()
    axis = slice_axis_index(slice_axis, root)
    pairs = nifti_pairs(root)
    if label_value is not None:
        check_label_value(pairs, label_value, root)
    for vid, img_path, lbl_path in pairs:
        try:
            image, mask = read_nifti_volume(img_path, lbl_path, axis, label_value)
        except DataError as e:
            bad.handle(img_path, e)
            continue
        for k in range(image.shape[0]):
            yield Sample(
                np.ascontiguousarray(image[k])[..., None], np.ascontiguousarray(mask[k]), vid,
                nifti_source(img_path, axis, k),
            )


class VolumeRows:
    """nifti rows, one per slice, listed from the volume headers (no voxels read).

    A volume's labels are decompressed when one of its masks is asked (drop_empty), its image only when one of its
    slices is in this part; the last volume read stays cached, as rows are visited in volume order. A volume found bad
    under ``skip_bad`` loses all its rows and is counted once, as :func:`iter_nifti` counts it.
    ``stats`` counts the (compressed) size of each file read, header-only reads as opened but not as bytes.
    """

    def __init__(self, root: str | Path, slice_axis: int, label_value: int | None, stats: dict, bad: BadFiles):
        self.stats, self._label_value = stats, label_value
        self._axis = slice_axis_index(slice_axis, root)
        pairs = nifti_pairs(root)
        if label_value is not None:
            n = check_label_value(pairs, label_value, root)
            stats["files_opened"] += n
            stats["bytes_read"] += sum(file_size(lp) for _, _, lp in pairs[:n])
        self._vols: list[tuple[str, Path, Path]] = []
        self._loc: list[tuple[int, int]] = []  # (volume, slice) of each row
        self._shapes: list[tuple[int, int]] = []  # (H, W) of each volume's slices
        self.groups: list[str] = []
        self.sources: list[str] = []
        for vid, img_path, lbl_path in pairs:
            stats["files_opened"] += 2
            try:
                shape = nifti_header(img_path, lbl_path)
            except DataError as e:
                bad.handle(img_path, e)
                continue
            v = len(self._vols)
            self._vols.append((vid, img_path, lbl_path))
            self._shapes.append(tuple(n for a, n in enumerate(shape) if a != self._axis))  # type: ignore[arg-type]
            for k in range(shape[self._axis]):
                self._loc.append((v, k))
                self.groups.append(vid)
                self.sources.append(nifti_source(img_path, self._axis, k))
        self._failed: dict[int, DataError] = {}
        self._mask_cache: tuple[int, np.ndarray] | None = None
        self._volume_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _read(self, v: int, paths: tuple[Path, ...], read):
        if v in self._failed:
            raise self._failed[v]
        self.stats["files_opened"] += len(paths)
        self.stats["bytes_read"] += sum(file_size(p) for p in paths)
        try:
            return read()
        except DataError as e:
            self._failed[v] = e
            raise

    def where(self, i: int) -> str:
        return str(self._vols[self._loc[i][0]][1])  # the image file, as iter_nifti names a bad volume

    def image_shape(self, i: int) -> tuple[int, int, int]:
        return (*self._shapes[self._loc[i][0]], 1)

    def mask(self, i: int) -> np.ndarray:
        v, k = self._loc[i]
        if self._volume_cache is not None and self._volume_cache[0] == v:
            return self._volume_cache[2][k]
        if self._mask_cache is None or self._mask_cache[0] != v:
            _, img_path, lbl_path = self._vols[v]
            read = lambda: read_nifti_mask(img_path, lbl_path, self._axis, self._label_value)  # noqa: E731
            self._mask_cache = (v, self._read(v, (lbl_path,), read))
        return self._mask_cache[1][k]

    def samples(self, rows: Iterable[int], bad: BadFiles) -> list[Sample]:
        out = []
        for i in rows:
            v, k = self._loc[i]
            vid, img_path, lbl_path = self._vols[v]
            if self._volume_cache is None or self._volume_cache[0] != v:
                read = lambda: read_nifti_volume(img_path, lbl_path, self._axis, self._label_value)  # noqa: E731
                try:
                    self._volume_cache = (v, *self._read(v, (img_path, lbl_path), read))
                except DataError as e:
                    bad.handle(img_path, e)
                    continue
            _, image, mask = self._volume_cache
            self.stats["rows_decoded"] += 1
            out.append(Sample(np.ascontiguousarray(image[k])[..., None], np.ascontiguousarray(mask[k]), vid,
                              self.sources[i]))
        return out

    def n_read(self, bad: BadFiles) -> int:
        """Rows listed less those of volumes found bad after listing (a bad entry is a volume, not a row)."""
        return len(self.groups) - sum(1 for v, _ in self._loc if v in self._failed)

    def close(self) -> None:
        self._mask_cache = self._volume_cache = None
