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

:func:`load_part` gives one worker its contiguous share of one split, reading as little as the format allows (see
its docstring); :func:`load_splits` is every split read whole the same way; :func:`describe` gives the split sizes and
array shapes without decoding images. Membership is decided first, from groups and masks only (``_plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .data_config import SPLITS, DataConfig
from .folds import kept_positions, split_names
from .io import BadFiles, DataError, Sample
from .nifti import VolumeRows
from .parquet import ParquetIndex
from .prepare import context_rows, prepare_image, size_mismatch, working_mask
from .sources import FileRows, SampleRows, folder_pairs, group_of, iter_source, lgg_pairs

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


def _to_arrays(samples: list[Sample], cfg: DataConfig) -> ArraySet:
    images, masks = [], []
    native: tuple | None = None
    for s in samples:
        if cfg.size is None:
            if native is None:
                native = s.image.shape[:2]
            elif s.image.shape[:2] != native:
                raise size_mismatch(s.source, s.image.shape, native)
        images.append(prepare_image(s.image, cfg, s.source))
        masks.append(working_mask(s.mask, cfg))
    if not images:
        c = (len(cfg.channels) if cfg.channels else 1) * (2 * cfg.context + 1)
        side = cfg.size or 1
        return ArraySet(np.zeros((0, c, side, side), np.float32), np.zeros((0, side, side), np.uint8), [], [])
    return ArraySet(
        np.stack(images).astype(np.float32),
        np.stack(masks).astype(np.uint8),
        [s.group for s in samples],
        [s.source for s in samples],
    )


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
    which: np.ndarray  # every row's split name, read or not


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
            raise size_mismatch(rows.sources[i], shape, native)
        ok.append(i)
    return np.asarray(ok, np.int64), native


def _kept_rows(rows, idx: np.ndarray, split: str, cfg: DataConfig, bad: BadFiles) -> tuple[np.ndarray, tuple | None]:
    """Rows of one split that load_splits keeps, in read order; reads masks only when drop_empty needs them."""
    native = None
    if cfg.size is None:
        idx, native = _common_size(rows, idx, bad)
    if not cfg.drop_empty:
        return idx[kept_positions(np.ones(len(idx), bool), split, cfg)], native
    found, nonempty = [], []
    for i in idx:
        try:
            mask = rows.mask(i)
        except DataError as e:
            bad.handle(rows.where(i), e)
            continue
        found.append(i)
        # an all-zero mask stays all-zero when resized: skip the resize for it (most slices of a scan)
        nonempty.append(bool(mask.any()) and bool(working_mask(mask, cfg).any()))
    return np.asarray(found, np.int64)[kept_positions(np.asarray(nonempty, bool), split, cfg)], native


def _plan(cfg: DataConfig, splits: Sequence[str], bad: BadFiles, stats: dict) -> _Plan:
    """Decide membership of ``splits`` with load_splits' recipe, without decoding any image."""
    rows = _open_rows(cfg, stats, bad)
    try:
        if not rows.groups:
            raise DataError(f"no readable samples in {cfg.path or cfg.format}")
        which = split_names(rows.groups, cfg)
        kept, native = {}, {}
        for name in splits:
            kept[name], native[name] = _kept_rows(rows, np.flatnonzero(which == name), name, cfg, bad)
    except BaseException:
        rows.close()
        raise
    return _Plan(rows, kept, native, which)


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

    With ``skip_bad``, a bad file is found only by a reader that opens it (a bad image drops from its part; a patient
    whose every file is bad still counts in the group split, and k_shot draws as if the image were good).
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
        if len(plan.kept[split]) < n_parts:
            raise DataError(
                f"the {split} split of {cfg.path or cfg.format} has {len(plan.kept[split])} slice(s) after "
                f"drop_empty/k_shot, too few for n_parts={n_parts}: part {part} would be empty; use n_parts <= "
                f"{len(plan.kept[split])}"
            )
        out = _read(plan, cfg, split, np.array_split(plan.kept[split], n_parts)[part], bad)
    finally:
        plan.rows.close()
    _finish_stats(stats, plan, bad)
    return out


def load_spread(cfg: DataConfig, split: str, max_rows: int) -> ArraySet:
    """At most ``max_rows`` rows of one split, evenly spread over it in read order (every patient represented, not
    the first few): a sample of the split, read as :func:`load_part` reads a part."""
    cfg.validate()
    bad = BadFiles(skip_bad=cfg.skip_bad)
    stats = _fresh_stats(None)
    plan = _plan(cfg, (split,), bad, stats)
    try:
        kept = plan.kept[split]
        here = kept[np.unique(np.linspace(0, len(kept) - 1, min(max_rows, len(kept))).round().astype(int))] \
            if len(kept) else kept
        return _read(plan, cfg, split, here, bad)
    finally:
        plan.rows.close()


def load_splits(cfg: DataConfig) -> Splits:
    """The whole data set: :func:`load_part` of each split, their membership planned once."""
    cfg.validate()
    stats = _fresh_stats(None)
    bad = BadFiles(skip_bad=cfg.skip_bad)
    plan = _plan(cfg, SPLITS, bad, stats)
    try:
        arrays = {k: _read(plan, cfg, k, plan.kept[k], bad) for k in SPLITS}
    finally:
        plan.rows.close()
    _finish_stats(stats, plan, bad)
    return Splits(train=arrays["train"], val=arrays["val"], test=arrays["test"], bad_files=stats["bad_files"],
                  n_read=stats["n_read"], n_split_read={k: int((plan.which == k).sum()) for k in SPLITS})


def _read(plan: _Plan, cfg: DataConfig, split: str, here: np.ndarray, bad: BadFiles) -> ArraySet:
    """The rows ``here`` of ``split`` decoded and prepared; with 2.5-D context, each stacked with its neighbours from
    the split's rows (kept or not)."""
    if not len(here):
        return _to_arrays([], cfg)
    if not cfg.context:
        return _to_arrays(plan.rows.samples(here, bad), cfg)
    split_rows = np.flatnonzero(plan.which == split)
    local = context_rows([plan.rows.groups[r] for r in split_rows], cfg.context)
    neighbours = split_rows[local[np.searchsorted(split_rows, here)]]
    need = np.unique(neighbours)
    got = dict(zip(need.tolist(), plan.rows.samples(need, bad)))  # all or an error: context refuses skip_bad
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
