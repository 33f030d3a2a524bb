"""From a data source to train/val/test arrays: patient-level splits, empty-slice dropping, k-shot, resizing,
channel choice and per-image normalisation.

Order of operations (each deterministic given ``DataConfig.seed``):

1. read every sample of the source (bad files raise, or are skipped and counted with ``skip_bad``);
2. split the *groups* (patients) 70/10/20 by default, or by patient-level k-fold cross-validation (``folds``, see
   :mod:`pixelrl_env.folds`): a patient's slices all land in one split;
3. choose channels, resize (images bilinear with antialiasing, masks by thresholding a bilinear resize at 0.5),
   and normalise each image per channel;
4. per split, drop slices without foreground at the working resolution if ``drop_empty`` (the paper's protocol);
5. k-shot: keep ``k_shot`` training slices, drawn without replacement.

2.5-D input (``context`` = k > 0): each kept slice carries its k neighbours on either side as extra channels, taken
from the slices of its volume in read order (empty ones included, before step 4), the volume's edge slice repeated
past its ends; channels are ordered neighbour -k first, each with the ``channels`` chosen. Sources list a volume's
slices in order (NIfTI by index, LGG by slice number, Parquet as written: write it without ``--foreground-only``).

:func:`load_splits` reads everything. :func:`load_part` gives one worker its contiguous share of one split with the
same result row for row, reading as little as the format allows (see its docstring); :func:`describe` gives the split
sizes and array shapes without decoding images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .folds import kfold_groups
from .io import BadFiles, DataError, Sample
from .nifti import VolumeRows
from .parquet import ParquetIndex
from .sources import FORMATS, FileRows, SampleRows, folder_pairs, group_of, iter_source, lgg_pairs

NORMALIZATIONS = ("minmax", "zscore", "none")
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared. All fields can be set from YAML or ``--set data.x=y``."""

    format: str = "synthetic"  # lgg | folder | parquet | synthetic | nifti
    path: str | None = None  # folder, or Parquet path/URI; unused for synthetic
    size: int | None = 128  # square side after resizing; None keeps the native size (needs equal sizes)
    channels: list[int] | None = None  # channel indices to keep, e.g. [1] = FLAIR of LGG; None = all
    # per image and channel: minmax (1st-99th percentile to [0, 1]) | zscore | none (integer images divided by their
    # dtype max, 255 or 65535; float images, i.e. NIfTI, kept as stored)
    normalize: str = "minmax"
    drop_empty: bool = True  # drop slices without foreground, as the paper does
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test fractions of groups
    seed: int = 0
    # patient-level k-fold cross-validation: k folds of groups, fold `fold` is the test set, validation groups are
    # split[1] / (split[0] + split[1]) of the rest (split[2] unused); null = the train/val/test split above
    folds: int | None = None
    fold: int = 0  # which fold (0..folds-1) is the test set
    k_shot: int | None = None  # keep only k training slices (50, 100 in the paper's low-resource study)
    train_empty: float = 0.0  # with drop_empty: keep this fraction of the training split's empty slices (ours;
    # a user's scan is mostly empty slices, which a model trained on foreground slices only never saw)
    skip_bad: bool = False
    group_pattern: str | None = None  # folder format: regex on the file stem giving the patient id
    context: int = 0  # 2.5-D: this many neighbouring slices on either side of a slice join it as channels (ours)
    slice_axis: int = -1  # nifti: the volume axis cut into 2-D slices (-1 = last, the axial axis of MSD volumes)
    label_value: int | None = None  # nifti: foreground = label == this value; null = any label > 0
    synthetic: dict = field(
        default_factory=lambda: {"n_patients": 20, "slices_per_patient": 8, "size": 128, "difficulty": "easy"}
    )

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"data.format {self.format!r} unknown; expected one of {', '.join(FORMATS)}")
        if self.normalize not in NORMALIZATIONS:
            raise DataError(f"data.normalize {self.normalize!r} unknown; expected one of {', '.join(NORMALIZATIONS)}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise DataError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        if self.size is not None and self.size < 8:
            raise DataError(f"data.size must be >= 8 or null, got {self.size}")
        if self.k_shot is not None and self.k_shot < 1:
            raise DataError(f"data.k_shot must be >= 1 or null, got {self.k_shot}")
        if not 0.0 <= self.train_empty <= 1.0:
            raise DataError(f"data.train_empty must be a fraction in [0, 1], got {self.train_empty}")
        if isinstance(self.slice_axis, bool) or not isinstance(self.slice_axis, int) or not -3 <= self.slice_axis <= 2:
            raise DataError(
                f"data.slice_axis must be -3..2 (an axis of a 3-D volume, -1 = last), got {self.slice_axis!r}"
            )
        if self.label_value is not None and (
            isinstance(self.label_value, bool) or not isinstance(self.label_value, int) or self.label_value < 1
        ):
            raise DataError(
                f"data.label_value must be a label >= 1 (0 is background) or null, got {self.label_value!r}"
            )
        if isinstance(self.context, bool) or not isinstance(self.context, int) or not 0 <= self.context <= 8:
            raise DataError(f"data.context must be an integer 0..8 (neighbouring slices on each side), "
                            f"got {self.context!r}")
        if self.context and self.skip_bad:
            raise DataError("data.context needs every slice of a volume (a skipped bad slice would shift its "
                            "neighbours); set data.skip_bad=false, or data.context=0")
        if self.folds is None:
            if self.fold != 0:
                raise DataError(f"data.fold={self.fold} needs data.folds (k of k-fold cross-validation); it is null")
        else:
            if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
                raise DataError(f"data.folds must be an integer >= 2 or null, got {self.folds!r}")
            if isinstance(self.fold, bool) or not isinstance(self.fold, int) or not 0 <= self.fold < self.folds:
                raise DataError(
                    f"data.fold must be in 0..{self.folds - 1} for data.folds={self.folds}, got {self.fold!r}"
                )
            if self.split[0] + self.split[1] <= 0:
                raise DataError(f"data.folds needs data.split[0] + data.split[1] > 0 (train and val), got {self.split}")


@dataclass
class ArraySet:
    """One split as arrays.

    Attributes:
        images: ``(N, C, H, W)`` float32, normalised.
        masks: ``(N, H, W)`` uint8 in {0, 1}.
        groups: ``N`` group ids.
        sources: ``N`` source paths.
    """

    images: np.ndarray
    masks: np.ndarray
    groups: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.groups)


@dataclass
class Splits:
    train: ArraySet
    val: ArraySet
    test: ArraySet
    bad_files: list[tuple[str, str]]
    n_read: int
    n_split_read: dict[str, int] = field(default_factory=dict)  # per split: slices read, before drop_empty/k_shot

    def summary(self) -> dict:
        out: dict = {"n_read": self.n_read, "n_bad_skipped": len(self.bad_files)}
        for name in ("train", "val", "test"):
            s: ArraySet = getattr(self, name)
            out[name] = {
                "read": self.n_split_read.get(name, len(s)),
                "slices": len(s),
                "groups": len(set(s.groups)),
                "foreground_fraction": float(s.masks.mean()) if len(s) else 0.0,
            }
        return out


def split_groups(groups: Sequence[str], fractions: Sequence[float], seed: int) -> tuple[set, set, set]:
    """Assign unique groups to train/val/test, deterministic by ``seed``.

    Counts are rounded from the fractions; every split whose fraction is positive gets at least one group when there
    are enough groups (three or more), and the remainder goes to train.
    """
    uniq = sorted(set(groups))
    n = len(uniq)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    if n_train < 1 and fractions[0] > 0:
        raise DataError(f"only {n} group(s): too few to split {tuple(fractions)} by patient")
    shuffled = [uniq[i] for i in order]
    return (
        set(shuffled[:n_train]),
        set(shuffled[n_train : n_train + n_val]),
        set(shuffled[n_train + n_val :]),
    )


def config_split(groups: Sequence[str], cfg: DataConfig) -> tuple[set, set, set]:
    """``(train, val, test)`` group sets under ``cfg``: k-fold (:func:`pixelrl_env.folds.kfold_groups`) when
    ``cfg.folds`` is set, else :func:`split_groups` by ``cfg.split``. Every reader of a split goes through here."""
    if cfg.folds is None:
        return split_groups(groups, cfg.split, cfg.seed)
    val_fraction = cfg.split[1] / (cfg.split[0] + cfg.split[1])
    return kfold_groups(groups, cfg.folds, cfg.fold, cfg.seed, val_fraction)


def _resize_channel(ch: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32)).resize((size, size), Image.BILINEAR))


def normalize_image(image: np.ndarray, method: str, dtype_max: float) -> np.ndarray:
    """Normalise ``(H, W, C)`` per channel. ``minmax`` maps the 1st..99th percentile to [0, 1] and clips; ``none``
    divides by ``dtype_max`` (1 for float images, whose values have no fixed range)."""
    if method == "none":
        return image / dtype_max
    flat = image.reshape(-1, image.shape[-1])
    if method == "minmax":
        lo, hi = np.percentile(flat, [1, 99], axis=0)
        span = np.where(hi - lo > 1e-6, hi - lo, 1.0)
        return np.clip((image - lo) / span, 0.0, 1.0)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    return (image - mean) / np.where(std > 1e-6, std, 1.0)


def prepare_image(image: np.ndarray, cfg: DataConfig, source: str = "image") -> np.ndarray:
    """Channels, resize and normalisation of one ``(H, W, C)`` stored image; returns ``(C', S, S)`` float32."""
    img = image if image.ndim == 3 else image[..., None]
    if cfg.channels is not None:
        if max(cfg.channels) >= img.shape[2] or min(cfg.channels) < 0:
            raise DataError(f"data.channels {cfg.channels} out of range for {source}, which has {img.shape[2]} channel(s)")
        img = img[..., list(cfg.channels)]
    # integer images span their dtype; float images (NIfTI intensities, possibly negative) have no such range, so
    # `normalize: none` leaves them as stored rather than dividing by an arbitrary 255
    dtype_max = 1.0 if img.dtype.kind == "f" else 65535.0 if img.dtype == np.uint16 else 255.0
    img_f = img.astype(np.float32)
    if cfg.size is not None and img_f.shape[:2] != (cfg.size, cfg.size):
        img_f = np.stack([_resize_channel(img_f[..., c], cfg.size) for c in range(img_f.shape[2])], axis=-1)
    return normalize_image(img_f, cfg.normalize, dtype_max).transpose(2, 0, 1).astype(np.float32)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a ``(h, w)`` {0, 1} mask to ``shape`` by thresholding a bilinear resize at 0.5."""
    if mask.shape == tuple(shape):
        return mask.astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(mask, dtype=np.float32)).resize((shape[1], shape[0]), Image.BILINEAR)
    return (np.asarray(im) >= 0.5).astype(np.uint8)


def _size_mismatch(source: str, shape: tuple, native: tuple) -> DataError:
    return DataError(
        f"{source} is {shape[0]}x{shape[1]} but earlier slices are {native[0]}x{native[1]}; "
        "set data.size to resize to a common size"
    )


def _working_mask(mask: np.ndarray, cfg: DataConfig) -> np.ndarray:
    return mask if cfg.size is None else resize_mask(mask, (cfg.size, cfg.size))


def context_rows(groups: Sequence[str], k: int) -> np.ndarray:
    """``(N, 2k+1)`` row numbers of each row's neighbours ``-k..k`` within its run of equal groups (its volume) in
    read order; past either end of the run the edge row repeats (a volume's first slice has no slice before it)."""
    n = len(groups)
    start, end = np.zeros(n, np.int64), np.zeros(n, np.int64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and groups[j + 1] == groups[i]:
            j += 1
        start[i : j + 1], end[i : j + 1] = i, j
        i = j + 1
    return np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :], start[:, None], end[:, None])


def stack_context(images: np.ndarray, groups: Sequence[str], k: int) -> np.ndarray:
    """``(N, C, H, W)`` slices in read order to ``(N, (2k+1)C, H, W)``: each slice with its neighbours as channels."""
    if k == 0:
        return images
    n, c, h, w = images.shape
    return np.ascontiguousarray(images[context_rows(groups, k)].reshape(n, (2 * k + 1) * c, h, w))


def prepare_rows(samples: Sequence[Sample], rows: Sequence[int], cfg: DataConfig) -> np.ndarray:
    """``(len(rows), C', S, S)`` model inputs of ``samples[rows]``; with ``cfg.context`` each stacks its neighbours
    from ``samples`` (a volume's slices in read order), each neighbour prepared once."""
    if not cfg.context:
        return np.stack([prepare_image(samples[i].image, cfg, samples[i].source) for i in rows])
    nb = context_rows([s.group for s in samples], cfg.context)
    prepared = {int(j): prepare_image(samples[j].image, cfg, samples[j].source) for j in np.unique(nb[list(rows)])}
    return np.stack([np.concatenate([prepared[int(j)] for j in nb[i]]) for i in rows])


def _to_arrays(samples: list[Sample], cfg: DataConfig) -> ArraySet:
    images, masks = [], []
    native: tuple | None = None
    for s in samples:
        if cfg.size is None:
            if native is None:
                native = s.image.shape[:2]
            elif s.image.shape[:2] != native:
                raise _size_mismatch(s.source, s.image.shape, native)
        images.append(prepare_image(s.image, cfg, s.source))
        masks.append(_working_mask(s.mask, cfg))
    if not images:
        c = (len(cfg.channels) if cfg.channels else 1) * (2 * cfg.context + 1)
        side = cfg.size or 1
        return ArraySet(np.zeros((0, c, side, side), np.float32), np.zeros((0, side, side), np.uint8), [], [])
    return ArraySet(
        stack_context(np.stack(images).astype(np.float32), [s.group for s in samples], cfg.context),
        np.stack(masks).astype(np.uint8),
        [s.group for s in samples],
        [s.source for s in samples],
    )


def _select(a: ArraySet, idx: np.ndarray) -> ArraySet:
    return ArraySet(a.images[idx], a.masks[idx], [a.groups[i] for i in idx], [a.sources[i] for i in idx])


def _split_names(groups: Sequence[str], cfg: DataConfig) -> np.ndarray:
    """The split ("train" | "val" | "test") of each row, from its group."""
    tr, va, _ = config_split(groups, cfg)
    return np.array(["train" if g in tr else "val" if g in va else "test" for g in groups], dtype=object)


def _kept(nonempty: np.ndarray, split: str, cfg: DataConfig) -> np.ndarray:
    """Positions a split keeps, in order: drop_empty (train: plus ``train_empty`` of the empty slices), then (train
    only) k_shot. Shared so parts match load_splits."""
    # drop_empty is judged at the working resolution: a lesion that vanishes when resized leaves nothing to learn
    idx = np.flatnonzero(nonempty) if cfg.drop_empty else np.arange(len(nonempty))
    if split == "train" and cfg.drop_empty and cfg.train_empty > 0:  # a fixed random share of the empty ones back
        empty = np.flatnonzero(~np.asarray(nonempty, bool))
        n = int(round(len(empty) * cfg.train_empty))
        idx = np.sort(np.concatenate([idx, np.random.default_rng([cfg.seed, 2]).choice(empty, n, replace=False)]))
    if split == "train" and cfg.k_shot is not None:
        if cfg.k_shot > len(idx):
            raise DataError(f"data.k_shot={cfg.k_shot} but the training split has only {len(idx)} slices")
        idx = idx[np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(idx), cfg.k_shot, replace=False))]
    return idx


def _synthetic_args(cfg: DataConfig) -> dict:
    synth = dict(cfg.synthetic)
    synth.setdefault("seed", cfg.seed)
    return synth


def iter_samples(cfg: DataConfig, bad: BadFiles | None = None):
    """Every sample of ``cfg``'s source in read order, with the source options of ``cfg`` (pattern, NIfTI axis...)."""
    return iter_source(
        cfg.format,
        cfg.path,
        bad=bad,
        group_pattern=cfg.group_pattern,
        synthetic=_synthetic_args(cfg),
        slice_axis=cfg.slice_axis,
        label_value=cfg.label_value,
    )


def load_splits(cfg: DataConfig) -> Splits:
    """Read, split by group, filter and prepare the data set described by ``cfg``."""
    cfg.validate()
    bad = BadFiles(skip_bad=cfg.skip_bad)
    samples = list(iter_samples(cfg, bad))
    if not samples:
        raise DataError(f"no readable samples in {cfg.path or cfg.format} ({len(bad)} bad files skipped)")
    which = _split_names([s.group for s in samples], cfg)
    arrays = {k: _to_arrays([s for s, w in zip(samples, which) if w == k], cfg) for k in SPLITS}
    n_split_read = {k: len(a) for k, a in arrays.items()}
    arrays = {k: _select(a, _kept(a.masks.any(axis=(1, 2)), k, cfg)) for k, a in arrays.items()}
    return Splits(
        train=arrays["train"],
        val=arrays["val"],
        test=arrays["test"],
        bad_files=list(bad.entries),
        n_read=len(samples),
        n_split_read=n_split_read,
    )


# --- One worker's part -------------------------------------------------------------------------------------------


def _open_rows(cfg: DataConfig, stats: dict, bad: BadFiles):
    """The rows of ``cfg``'s source, in load_splits' read order, with nothing but groups and sources read."""
    if cfg.format == "synthetic":
        return SampleRows(list(iter_source("synthetic", synthetic=_synthetic_args(cfg))), stats)
    if cfg.path is None or str(cfg.path) == "":
        raise DataError(f"format {cfg.format!r} needs a data path")
    if cfg.format == "parquet":
        return ParquetIndex(str(cfg.path), stats)
    if cfg.format == "nifti":
        return VolumeRows(cfg.path, cfg.slice_axis, cfg.label_value, stats, bad)
    if cfg.format == "lgg":
        return FileRows(lgg_pairs(cfg.path), stats)
    return FileRows([(group_of(stem, cfg.group_pattern), i, m) for stem, i, m in folder_pairs(cfg.path)], stats)


@dataclass
class _Plan:
    rows: object  # sources.FileRows | sources.SampleRows | nifti.VolumeRows | parquet.ParquetIndex
    kept: dict[str, np.ndarray]  # per split: row numbers kept, in read order
    native: dict[str, tuple | None]  # per split: common (H, W) when cfg.size is None


def _common_size(rows, idx: np.ndarray, bad: BadFiles) -> tuple[np.ndarray, tuple | None]:
    """The split's rows that have a readable header and their common size, checked as _to_arrays does."""
    ok, native = [], None
    for i in idx:
        try:
            shape = rows.image_shape(i)[:2]
        except DataError as e:
            bad.handle(rows.where(i), e)
            continue
        if native is None:
            native = shape
        elif shape != native:
            raise _size_mismatch(rows.sources[i], shape, native)
        ok.append(i)
    return np.asarray(ok, np.int64), native


def _kept_rows(rows, idx: np.ndarray, split: str, cfg: DataConfig, bad: BadFiles) -> tuple[np.ndarray, tuple | None]:
    """Rows of one split that load_splits keeps, in read order; reads masks only when drop_empty needs them."""
    native = None
    if cfg.size is None:
        idx, native = _common_size(rows, idx, bad)
    if not cfg.drop_empty:
        return idx[_kept(np.ones(len(idx), bool), split, cfg)], native
    found, nonempty = [], []
    for i in idx:
        try:
            mask = rows.mask(i)
        except DataError as e:
            bad.handle(rows.where(i), e)
            continue
        found.append(i)
        # an all-zero mask stays all-zero when resized: skip the resize for it (most slices of a scan)
        nonempty.append(bool(mask.any()) and bool(_working_mask(mask, cfg).any()))
    return np.asarray(found, np.int64)[_kept(np.asarray(nonempty, bool), split, cfg)], native


def _plan(cfg: DataConfig, splits: Sequence[str], bad: BadFiles, stats: dict) -> _Plan:
    """Decide membership of ``splits`` with load_splits' recipe, without decoding any image."""
    rows = _open_rows(cfg, stats, bad)
    try:
        if not rows.groups:
            raise DataError(f"no readable samples in {cfg.path or cfg.format}")
        which = _split_names(rows.groups, cfg)
        kept, native = {}, {}
        for name in splits:
            kept[name], native[name] = _kept_rows(rows, np.flatnonzero(which == name), name, cfg, bad)
    except BaseException:
        rows.close()
        raise
    return _Plan(rows, kept, native)


def _fresh_stats(stats: dict | None) -> dict:
    stats = stats if stats is not None else {}
    stats.update(bytes_read=0, rows_decoded=0, files_opened=0)
    return stats


def _finish_stats(stats: dict, plan: _Plan, bad: BadFiles) -> None:
    rows = plan.rows
    n_read = rows.n_read(bad) if isinstance(rows, VolumeRows) else len(rows.groups) - len(bad)
    stats.update(n_read=n_read, n_bad_skipped=len(bad), bad_files=list(bad.entries))


def load_part(cfg: DataConfig, split: str, part: int = 0, n_parts: int = 1, stats: dict | None = None) -> ArraySet:
    """Part ``part`` of ``n_parts`` of one split: ``np.array_split`` of ``load_splits(cfg).<split>``'s rows.

    Parts are contiguous runs in read order, so a worker touches few Parquet row groups; their concatenation is the
    split, row for row. Only this part's images are decoded: Parquet reads small columns of every row, then ``image``
    of this part's row groups (:class:`pixelrl_env.parquet.ParquetIndex`); lgg / folder list the files, read the
    split's masks (for drop_empty) and this part's images; nifti lists slices from the volume headers, then reads the
    split's label volumes (for drop_empty) and the image volumes of this part's slices; synthetic generates all and
    selects. ``stats``, if given,
    receives ``bytes_read``, ``rows_decoded``, ``files_opened``, ``n_read``, ``n_bad_skipped`` and ``bad_files``.

    With ``skip_bad``, a bad file is found only by a reader that opens it, so parts equal load_splits' split when no
    file is bad (an unreadable image drops from its part; a patient whose every file is bad still counts in the
    group split, and k_shot draws as if the image were good).
    """
    cfg.validate()
    if split not in SPLITS:
        raise DataError(f"split {split!r} unknown; expected one of {', '.join(SPLITS)}")
    if n_parts < 1 or not 0 <= part < n_parts:
        raise DataError(f"part {part} of n_parts={n_parts} is out of range; expected n_parts >= 1, 0 <= part < n_parts")
    stats = _fresh_stats(stats)
    bad = BadFiles(skip_bad=cfg.skip_bad)
    plan = _plan(cfg, (split,), bad, stats)
    try:
        idx = plan.kept[split]
        if len(idx) < n_parts:
            raise DataError(
                f"the {split} split of {cfg.path or cfg.format} has {len(idx)} slice(s) after drop_empty/k_shot, "
                f"too few for n_parts={n_parts}: part {part} would be empty; use n_parts <= {len(idx)}"
            )
        here = np.array_split(idx, n_parts)[part]
        if cfg.context:  # the neighbours too: from the split's rows (as load_splits stacks them), kept or not
            split_rows = np.flatnonzero(_split_names(plan.rows.groups, cfg) == split)
            local = context_rows([plan.rows.groups[r] for r in split_rows], cfg.context)
            neighbours = split_rows[local[np.searchsorted(split_rows, here)]]
            need = np.unique(neighbours)
            got = dict(zip(need.tolist(), plan.rows.samples(need, bad)))  # skip_bad is off: all or an error
        else:
            samples = plan.rows.samples(here, bad)
    finally:
        plan.rows.close()
    _finish_stats(stats, plan, bad)
    if not cfg.context:
        return _to_arrays(samples, cfg)
    centre = _to_arrays([got[int(r)] for r in here], replace(cfg, context=0))  # masks, groups, size checks
    prepared = {r: prepare_image(s.image, cfg, s.source) for r, s in got.items()}
    images = np.stack([np.concatenate([prepared[int(j)] for j in row]) for row in neighbours]).astype(np.float32)
    return ArraySet(images, centre.masks, centre.groups, centre.sources)


def describe(cfg: DataConfig, stats: dict | None = None) -> dict:
    """Split sizes and array shapes as load_splits would give them, without decoding images.

    Returns ``n_train``, ``n_val``, ``n_test`` (after drop_empty and k_shot), ``in_channels``, ``image_size`` (the
    working size, or the common native size), ``n_read`` (rows listed less bad files found) and ``n_bad_skipped``.
    Reads masks (for drop_empty) and, for Parquet, only the small columns.
    """
    cfg.validate()
    stats = _fresh_stats(stats)
    bad = BadFiles(skip_bad=cfg.skip_bad)
    plan = _plan(cfg, SPLITS, bad, stats)
    try:
        rows = plan.rows
        first = next((int(plan.kept[k][0]) for k in SPLITS if len(plan.kept[k])), 0)
        channels = rows.image_shape(first)[2]
    finally:
        plan.rows.close()
    if cfg.channels is not None:
        if max(cfg.channels) >= channels or min(cfg.channels) < 0:
            raise DataError(
                f"data.channels {cfg.channels} out of range for {rows.sources[first]}, which has {channels} channel(s)"
            )
        channels = len(cfg.channels)
    channels *= 2 * cfg.context + 1
    size = cfg.size
    if size is None:
        sizes = {k: v for k, v in plan.native.items() if v is not None}
        if len(set(sizes.values())) > 1:
            raise DataError(f"native sizes differ between splits ({sizes}); set data.size to resize to a common size")
        h, w = next(iter(sizes.values()), (0, 0))
        size = h if h == w else (h, w)
    _finish_stats(stats, plan, bad)
    out = {f"n_{k}": len(plan.kept[k]) for k in SPLITS}
    out.update(in_channels=int(channels), image_size=size, n_read=stats["n_read"], n_bad_skipped=len(bad))
    return out
