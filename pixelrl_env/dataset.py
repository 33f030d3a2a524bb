"""From a data source to train/val/test arrays: patient-level splits, empty-slice dropping, k-shot, resizing,
channel choice and per-image normalisation.

Order of operations (each deterministic given ``DataConfig.seed``):

1. read every sample of the source (bad files raise, or are skipped and counted with ``skip_bad``);
2. split the *groups* (patients) 70/10/20 by default: a patient's slices all land in one split;
3. choose channels, resize (images bilinear with antialiasing, masks by thresholding a bilinear resize at 0.5),
   and normalise each image per channel;
4. per split, drop slices without foreground at the working resolution if ``drop_empty`` (the paper's protocol);
5. k-shot: keep ``k_shot`` training slices, drawn without replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .io import BadFiles, DataError
from .sources import FORMATS, Sample, iter_source

NORMALIZATIONS = ("minmax", "zscore", "none")
LGG_CHANNELS = {"pre": 0, "flair": 1, "post": 2}


@dataclass
class DataConfig:
    """Where the data comes from and how it is prepared. All fields can be set from YAML or ``--set data.x=y``."""

    format: str = "synthetic"  # lgg | folder | parquet | synthetic
    path: str | None = None  # folder, or Parquet path/URI; unused for synthetic
    size: int | None = 128  # square side after resizing; None keeps the native size (needs equal sizes)
    channels: list[int] | None = None  # channel indices to keep, e.g. [1] = FLAIR of LGG; None = all
    normalize: str = "minmax"  # minmax (1st-99th percentile to [0, 1]) | zscore | none (divide by the dtype max)
    drop_empty: bool = True  # drop slices without foreground, as the paper does
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test fractions of groups
    seed: int = 0
    k_shot: int | None = None  # keep only k training slices (50, 100 in the paper's low-resource study)
    skip_bad: bool = False
    group_pattern: str | None = None  # folder format: regex on the file stem giving the patient id
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

    def summary(self) -> dict:
        out: dict = {"n_read": self.n_read, "n_bad_skipped": len(self.bad_files)}
        for name in ("train", "val", "test"):
            s: ArraySet = getattr(self, name)
            out[name] = {
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


def _resize_channel(ch: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32)).resize((size, size), Image.BILINEAR))


def resize_sample(image: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``(H, W, C)`` image (float32 out) and ``(H, W)`` mask to ``size`` x ``size``."""
    image = image.astype(np.float32)
    if size is None or image.shape[:2] == (size, size):
        return image, mask
    out = np.stack([_resize_channel(image[..., c], size) for c in range(image.shape[2])], axis=-1)
    return out, resize_mask(mask, (size, size))


def normalize_image(image: np.ndarray, method: str, dtype_max: float) -> np.ndarray:
    """Normalise ``(H, W, C)`` per channel. ``minmax`` maps the 1st..99th percentile to [0, 1] and clips."""
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
    dtype_max = 65535.0 if img.dtype == np.uint16 else 255.0
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


def _to_arrays(samples: list[Sample], cfg: DataConfig) -> ArraySet:
    images, masks = [], []
    native: tuple | None = None
    for s in samples:
        if cfg.size is None:
            if native is None:
                native = s.image.shape[:2]
            elif s.image.shape[:2] != native:
                raise DataError(
                    f"{s.source} is {s.image.shape[0]}x{s.image.shape[1]} but earlier slices are {native[0]}x{native[1]}; "
                    "set data.size to resize to a common size"
                )
        images.append(prepare_image(s.image, cfg, s.source))
        masks.append(s.mask if cfg.size is None else resize_mask(s.mask, (cfg.size, cfg.size)))
    if not images:
        c = len(cfg.channels) if cfg.channels else 1
        side = cfg.size or 1
        return ArraySet(np.zeros((0, c, side, side), np.float32), np.zeros((0, side, side), np.uint8), [], [])
    return ArraySet(
        np.stack(images).astype(np.float32),
        np.stack(masks).astype(np.uint8),
        [s.group for s in samples],
        [s.source for s in samples],
    )


def _select(a: ArraySet, idx: np.ndarray) -> ArraySet:
    return ArraySet(a.images[idx], a.masks[idx], [a.groups[i] for i in idx], [a.sources[i] for i in idx])


def load_splits(cfg: DataConfig) -> Splits:
    """Read, split by group, filter and prepare the data set described by ``cfg``."""
    cfg.validate()
    bad = BadFiles(skip_bad=cfg.skip_bad)
    synth = dict(cfg.synthetic)
    synth.setdefault("seed", cfg.seed)
    samples = list(iter_source(cfg.format, cfg.path, bad=bad, group_pattern=cfg.group_pattern, synthetic=synth))
    if not samples:
        raise DataError(f"no readable samples in {cfg.path or cfg.format} ({len(bad)} bad files skipped)")
    tr, va, te = split_groups([s.group for s in samples], cfg.split, cfg.seed)
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for s in samples:
        parts["train" if s.group in tr else "val" if s.group in va else "test"].append(s)
    arrays = {k: _to_arrays(v, cfg) for k, v in parts.items()}
    if cfg.drop_empty:
        # judged at the working resolution: a lesion that vanishes when resized leaves no foreground to learn
        arrays = {k: _select(a, np.flatnonzero(a.masks.any(axis=(1, 2)))) for k, a in arrays.items()}
    if cfg.k_shot is not None:
        train = arrays["train"]
        if cfg.k_shot > len(train):
            raise DataError(f"data.k_shot={cfg.k_shot} but the training split has only {len(train)} slices")
        keep = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(train), cfg.k_shot, replace=False))
        arrays["train"] = _select(train, keep)
    return Splits(
        train=arrays["train"],
        val=arrays["val"],
        test=arrays["test"],
        bad_files=list(bad.entries),
        n_read=len(samples),
    )
