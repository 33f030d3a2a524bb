"""From a stored slice to a model input: channels, resize, per-image normalisation, masks at the working size, and
2.5-D context (each slice with its neighbours of the same volume as extra channels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .data_config import DataConfig
from .io import DataError, Sample


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


def size_mismatch(source: str, shape: tuple, native: tuple) -> DataError:
    return DataError(
        f"{source} is {shape[0]}x{shape[1]} but earlier slices are {native[0]}x{native[1]}; "
        "set data.size to resize to a common size"
    )


def working_mask(mask: np.ndarray, cfg: DataConfig) -> np.ndarray:
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


def prepare_rows(samples: Sequence[Sample], rows: Sequence[int], cfg: DataConfig) -> np.ndarray:
    """``(len(rows), C', S, S)`` model inputs of ``samples[rows]``; with ``cfg.context`` each stacks its neighbours
    from ``samples`` (a volume's slices in read order), each neighbour prepared once."""
    if not cfg.context:
        return np.stack([prepare_image(samples[i].image, cfg, samples[i].source) for i in rows])
    nb = context_rows([s.group for s in samples], cfg.context)
    prepared = {int(j): prepare_image(samples[j].image, cfg, samples[j].source) for j in np.unique(nb[list(rows)])}
    return np.stack([np.concatenate([prepared[int(j)] for j in nb[i]]) for i in rows])
