"""Data sources. Each yields :class:`Sample` (image, mask, group id, source path) in a deterministic order.

* ``lgg``: the Kaggle LGG ``kaggle_3m`` layout, ``ROOT/<patient>/<patient>_<n>.tif`` with ``<patient>_<n>_mask.tif``;
  the group id is the patient folder.
* ``folder``: ``ROOT/images/`` and ``ROOT/masks/`` paired by file stem, any Pillow format; the group id is the stem, or
  the first capture group of ``group_pattern`` matched against the stem (e.g. ``^(la_\\d+)`` for slices exported from
  volumes), so that splits stay per patient.
* ``synthetic``: built-in MRI-like slices, see :mod:`pixelrl_env.synthetic`.
* ``parquet``: shards written by ``pixeldrl prepare-data``, see :mod:`pixelrl_env.parquet`.
* ``nifti``: 3-D volumes in the Medical Segmentation Decathlon layout, ``ROOT/imagesTr/<id>.nii.gz`` with the label map
  ``ROOT/labelsTr/<id>.nii.gz`` (same name; ``.nii`` too); every 2-D cut along ``slice_axis`` is a sample and the group
  id is the volume ``<id>``, so a split never divides a patient. Needs nibabel (imported only for this format).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, BadFiles, DataError, Sample, read_pair
from .parquet import iter_parquet
from .synthetic import synthetic_slice

FORMATS = ("lgg", "folder", "parquet", "synthetic", "nifti")


def _existing_dir(root: str | Path, expected: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {root} (expected {expected})")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root} (expected {expected})")
    return root


_LGG_EXPECTED = "a folder in the Kaggle LGG kaggle_3m layout: <patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif"
_LGG_SLICE = re.compile(r"^(?P<stem>.+_(?P<n>\d+))(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


def lgg_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """List ``(patient, image_path, mask_path)`` in patient then slice-number order, checking the layout."""
    root = _existing_dir(root, _LGG_EXPECTED)
    patients = sorted(p for p in root.iterdir() if p.is_dir())
    pairs: list[tuple[str, Path, Path]] = []
    for pdir in patients:
        images: dict[str, tuple[int, Path]] = {}
        masks: dict[str, Path] = {}
        for f in pdir.iterdir():
            m = _LGG_SLICE.match(f.name)
            if not m or not f.is_file():
                continue
            if m.group("mask"):
                masks[m.group("stem")] = f
            else:
                images[m.group("stem")] = (int(m.group("n")), f)
        for stem, mask_path in masks.items():
            if stem not in images:
                raise DataError(f"mask {mask_path} has no image; expected {pdir / (stem + mask_path.suffix)}")
        for stem, (n, img_path) in sorted(images.items(), key=lambda kv: kv[1][0]):
            if stem not in masks:
                raise DataError(f"image {img_path} has no mask; expected {pdir / (stem + '_mask' + img_path.suffix)}")
            pairs.append((pdir.name, img_path, masks[stem]))
    if not pairs:
        raise DataError(f"no image/mask pairs found in {root}; expected {_LGG_EXPECTED}")
    return pairs


def iter_lgg(root: str | Path, bad: BadFiles | None = None) -> Iterator[Sample]:
    """Slices of the LGG ``kaggle_3m`` layout; group = patient folder name."""
    bad = bad if bad is not None else BadFiles()
    for patient, img_path, mask_path in lgg_pairs(root):
        try:
            image, mask = read_pair(img_path, mask_path)
        except DataError as e:
            bad.handle(img_path, e)
            continue
        yield Sample(image, mask, patient, str(img_path))


_FOLDER_EXPECTED = "a folder with images/ and masks/ holding files paired by name (PNG, JPEG, TIFF, BMP, GIF)"


def _two_dirs(root: str | Path, first: str, second: str, expected: str) -> tuple[Path, Path]:
    """``root/first`` and ``root/second``, each required to exist (errors name the missing folder)."""
    root = _existing_dir(root, expected)
    dirs = (root / first, root / second)
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"missing folder {d}; expected {expected}")
    return dirs


def _index(d: Path, key, what: str) -> dict[str, Path]:
    """``{key(name): file}`` over the files of ``d`` whose ``key`` is not None; two files with one key are refused."""
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        k = key(f.name) if f.is_file() else None
        if k is None:
            continue
        if k in out:
            raise DataError(f"two files hold {what} {k!r} in {d}: {out[k].name} and {f.name}")
        out[k] = f
    return out


def folder_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """List ``(stem, image_path, mask_path)`` sorted by stem, checking that every image has a mask."""
    img_dir, mask_dir = _two_dirs(root, "images", "masks", _FOLDER_EXPECTED)

    def stem(name: str) -> str | None:
        return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else None

    images, masks = _index(img_dir, stem, "the name"), _index(mask_dir, stem, "the name")
    if not images:
        raise DataError(f"no image files in {img_dir}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    _unpaired(images, masks, "image", f"mask in {mask_dir}", lambda k, f: f"a file named {k}.*")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _unpaired(have: dict[str, Path], other: dict[str, Path], what: str, other_what: str, expected) -> None:
    """Refuse the first key of ``have`` missing from ``other``, naming its file and ``expected(key, file)``."""
    missing = sorted(set(have) - set(other))
    if missing:
        first = have[missing[0]]
        raise DataError(
            f"{what} {first} has no {other_what}; expected {expected(missing[0], first)}"
            + (f"; {len(missing) - 1} more {what}s lack one" if len(missing) > 1 else "")
        )


def group_of(stem: str, group_pattern: str | None) -> str:
    """Group id of a file stem: the stem itself, or the first capture group (or whole match) of ``group_pattern``."""
    if not group_pattern:
        return stem
    m = re.search(group_pattern, stem)
    if not m:
        raise DataError(f"group_pattern {group_pattern!r} does not match file name {stem!r}")
    return m.group(1) if m.groups() else m.group(0)


def iter_folder(root: str | Path, bad: BadFiles | None = None, group_pattern: str | None = None) -> Iterator[Sample]:
    """Pairs of ``images/`` and ``masks/`` by stem; group = stem or ``group_pattern`` match."""
    bad = bad if bad is not None else BadFiles()
    for stem, img_path, mask_path in folder_pairs(root):
        try:
            image, mask = read_pair(img_path, mask_path)
        except DataError as e:
            bad.handle(img_path, e)
            continue
        yield Sample(image, mask, group_of(stem, group_pattern), str(img_path))


# --- NIfTI volumes ------------------------------------------------------------------------------------------------

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
    img_dir, lbl_dir = _two_dirs(root, "imagesTr", "labelsTr", _NIFTI_EXPECTED)
    images, labels = _index(img_dir, _nifti_id, "volume"), _index(lbl_dir, _nifti_id, "volume")
    if not images:
        raise DataError(f"no NIfTI volumes (*.nii.gz, *.nii) in {img_dir}; expected {_NIFTI_EXPECTED}")

    _unpaired(images, labels, "image", "label file", lambda k, f: lbl_dir / f.name)
    _unpaired(labels, images, "label", "image file", lambda k, f: img_dir / f.name)
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


def iter_synthetic(
    n_patients: int = 20, slices_per_patient: int = 8, size: int = 128, difficulty: str = "easy", seed: int = 0
) -> Iterator[Sample]:
    """Built-in synthetic patients; group = ``synth<patient>``."""
    if n_patients < 1 or slices_per_patient < 1:
        raise ValueError(f"need at least one patient and slice, got {n_patients} x {slices_per_patient}")
    for p in range(n_patients):
        for s in range(slices_per_patient):
            image, mask = synthetic_slice(seed, p, s, slices_per_patient, size, difficulty)
            yield Sample(image, mask, f"synth{p:03d}", f"synthetic:{seed}/{p}/{s}")


def iter_source(
    fmt: str,
    path: str | Path | None = None,
    *,
    bad: BadFiles | None = None,
    group_pattern: str | None = None,
    synthetic: dict | None = None,
    slice_axis: int = -1,
    label_value: int | None = None,
) -> Iterator[Sample]:
    """Dispatch on ``fmt`` (one of :data:`FORMATS`); ``slice_axis`` and ``label_value`` apply to ``nifti`` only."""
    if fmt == "synthetic":
        return iter_synthetic(**(synthetic or {}))
    if path is None or str(path) == "":
        raise DataError(f"format {fmt!r} needs a data path")
    if fmt == "lgg":
        return iter_lgg(path, bad)
    if fmt == "folder":
        return iter_folder(path, bad, group_pattern)
    if fmt == "parquet":
        return iter_parquet(str(path), bad)
    if fmt == "nifti":
        return iter_nifti(path, bad, slice_axis, label_value)
    raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
