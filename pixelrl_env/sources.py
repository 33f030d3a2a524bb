"""Data sources. Each yields :class:`Sample` (image, mask, group id, source path) in a deterministic order.

* ``lgg``: the Kaggle LGG ``kaggle_3m`` layout, ``ROOT/<patient>/<patient>_<n>.tif`` with ``<patient>_<n>_mask.tif``;
  the group id is the patient folder.
* ``folder``: ``ROOT/images/`` and ``ROOT/masks/`` paired by file stem, any Pillow format; the group id is the stem, or
  the first capture group of ``group_pattern`` matched against the stem (e.g. ``^(la_\\d+)`` for slices exported from
  volumes), so that splits stay per patient.
* ``synthetic``: built-in MRI-like slices, see :mod:`pixelrl_env.synthetic`.
* ``parquet``: shards written by ``pixeldrl prepare-data``, see :mod:`pixelrl_env.parquet`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import IMAGE_SUFFIXES, BadFiles, DataError, read_pair
from .synthetic import synthetic_slice

FORMATS = ("lgg", "folder", "parquet", "synthetic")


@dataclass(frozen=True)
class Sample:
    """One annotated slice.

    Attributes:
        image: ``(H, W, C)`` uint8 or uint16, as stored.
        mask: ``(H, W)`` uint8 in {0, 1}.
        group: the patient (or other unit) the slice belongs to; splits never divide a group.
        source: where it came from (file path, or ``synthetic:<seed>/<patient>/<slice>``).
    """

    image: np.ndarray
    mask: np.ndarray
    group: str
    source: str


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


def folder_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """List ``(stem, image_path, mask_path)`` sorted by stem, checking that every image has a mask."""
    root = _existing_dir(root, _FOLDER_EXPECTED)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"missing folder {d}; expected {_FOLDER_EXPECTED}")

    def by_stem(d: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                if f.stem in out:
                    raise DataError(f"two files share the name {f.stem!r} in {d}: {out[f.stem].name} and {f.name}")
                out[f.stem] = f
        return out

    images, masks = by_stem(img_dir), by_stem(mask_dir)
    if not images:
        raise DataError(f"no image files in {img_dir}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    missing = sorted(set(images) - set(masks))
    if missing:
        first = images[missing[0]]
        raise DataError(
            f"image {first} has no mask in {mask_dir} (expected a file named {missing[0]}.*)"
            + (f"; {len(missing) - 1} more images lack masks" if len(missing) > 1 else "")
        )
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


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
) -> Iterator[Sample]:
    """Dispatch on ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "synthetic":
        return iter_synthetic(**(synthetic or {}))
    if path is None or str(path) == "":
        raise DataError(f"format {fmt!r} needs a data path")
    if fmt == "lgg":
        return iter_lgg(path, bad)
    if fmt == "folder":
        return iter_folder(path, bad, group_pattern)
    if fmt == "parquet":
        from .parquet import iter_parquet

        return iter_parquet(str(path), bad)
    raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
