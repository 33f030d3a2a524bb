"""Data sources. Each yields :class:`Sample` (image, mask, group id, source path) in a deterministic order.

* ``lgg``: the Kaggle LGG ``kaggle_3m`` layout, ``ROOT/<patient>/<patient>_<n>.tif`` with ``<patient>_<n>_mask.tif``;
  the group id is the patient folder.
* ``folder``: ``ROOT/images/`` and ``ROOT/masks/`` paired by file stem, any Pillow format; the group id is the stem, or
  the first capture group of ``group_pattern`` matched against the stem (e.g. ``^(la_\\d+)`` for slices exported from
  volumes), so that splits stay per patient.
* ``synthetic``: built-in MRI-like slices, see :mod:`pixelrl_env.synthetic`.
* ``parquet``: shards written by ``pixeldrl prepare-data``, see :mod:`pixelrl_env.parquet`.
* ``nifti``: 3-D volumes in the Medical Segmentation Decathlon layout, see :mod:`pixelrl_env.nifti`.

Each format's lazy row reader (what per-worker parts use: groups listed first, images decoded only for the part) lives
with it: :class:`FileRows` and :class:`SampleRows` here, :class:`pixelrl_env.nifti.VolumeRows`,
:class:`pixelrl_env.parquet.ParquetIndex`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .io import (IMAGE_SUFFIXES, BadFiles, DataError, Sample, check_paired, existing_dir, file_size, image_header,
                 index_files, read_mask, read_pair, two_dirs)
from .nifti import iter_nifti
from .parquet import iter_parquet
from .synthetic import synthetic_slice

FORMATS = ("lgg", "folder", "parquet", "synthetic", "nifti")


_LGG_EXPECTED = "a folder in the Kaggle LGG kaggle_3m layout: <patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif"
_LGG_SLICE = re.compile(r"^(?P<stem>.+_(?P<n>\d+))(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


def lgg_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """List ``(patient, image_path, mask_path)`` in patient then slice-number order, checking the layout."""
    root = existing_dir(root, _LGG_EXPECTED)
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
    img_dir, mask_dir = two_dirs(root, "images", "masks", _FOLDER_EXPECTED)

    def stem(name: str) -> str | None:
        return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else None

    images, masks = index_files(img_dir, stem, "the name"), index_files(mask_dir, stem, "the name")
    if not images:
        raise DataError(f"no image files in {img_dir}; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    check_paired(images, masks, "image", f"mask in {mask_dir}", lambda k, f: f"a file named {k}.*")
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


# --- lazy rows (per-worker parts read only their images) --------------------------------------------------------

class FileRows:
    """lgg / folder rows: groups from the file listing; a mask file is read when asked, an image only for its part.

    ``stats["bytes_read"]`` adds the size of each file decoded (a decode reads the whole file); header reads, made only
    for native size or ``describe``, count as opened but not as bytes.
    """

    def __init__(self, pairs: list[tuple[str, Path, Path]], stats: dict):
        self._pairs, self.stats = pairs, stats
        self.groups = [g for g, _, _ in pairs]
        self.sources = [str(p) for _, p, _ in pairs]

    def _opened(self, *paths: Path, decoded: bool = True) -> None:
        self.stats["files_opened"] += len(paths)
        if decoded:
            self.stats["bytes_read"] += sum(file_size(p) for p in paths)

    def where(self, i: int) -> str:
        return self.sources[i]  # as iter_lgg / iter_folder name a bad pair

    def image_shape(self, i: int) -> tuple[int, int, int]:
        self._opened(self._pairs[i][1], decoded=False)
        return image_header(self._pairs[i][1])

    def mask(self, i: int) -> np.ndarray:
        self._opened(self._pairs[i][2])
        return read_mask(self._pairs[i][2])

    def samples(self, rows: Iterable[int], bad: BadFiles) -> list[Sample]:
        out = []
        for i in rows:
            group, img_path, mask_path = self._pairs[i]
            self._opened(img_path, mask_path)
            self.stats["rows_decoded"] += 1
            try:
                image, mask = read_pair(img_path, mask_path)
            except DataError as e:
                bad.handle(img_path, e)
                continue
            out.append(Sample(image, mask, group, str(img_path)))
        return out

    def close(self) -> None:
        pass


class SampleRows:
    """Synthetic rows: generated whole (cheap, nothing to download), then selected; every row counts as decoded."""

    def __init__(self, samples: list[Sample], stats: dict):
        self._samples = samples
        self.groups = [s.group for s in samples]
        self.sources = [s.source for s in samples]
        stats["rows_decoded"] += len(samples)

    def where(self, i: int) -> str:
        return self.sources[i]

    def image_shape(self, i: int) -> tuple[int, int, int]:
        img = self._samples[i].image
        return (*img.shape[:2], img.shape[2] if img.ndim == 3 else 1)

    def mask(self, i: int) -> np.ndarray:
        return self._samples[i].mask

    def samples(self, rows: Iterable[int], bad: BadFiles) -> list[Sample]:
        return [self._samples[i] for i in rows]

    def close(self) -> None:
        pass
