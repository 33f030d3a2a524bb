"""Image corruptions for robustness tests: Gaussian and Rician noise, a bias field, lower contrast, lower resolution.

The paper claims robustness; these are the degradations MRI users meet (thermal noise is Rician in magnitude
images, coil sensitivity gives a smooth bias field, fast protocols give low contrast or low resolution). Each is a
pure function of a prepared image batch ``(N, C, H, W)`` float32 and a level; noise levels are fractions of each
image's intensity range (1st to 99th percentile), so the same level means the same thing on min-max and z-scored
data. Level 0 is the identity for every kind.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("gaussian", "rician", "bias_field", "contrast", "resolution")
# levels of each kind a robustness sweep uses, mildest first (level 0, the clean images, is always added)
LEVELS = {
    "gaussian": (0.05, 0.1, 0.2),  # noise sd / intensity range
    "rician": (0.05, 0.1, 0.2),  # sd of each of the two Gaussian components / intensity range
    "bias_field": (0.2, 0.4, 0.6),  # multiplicative field within 1 +- level
    "contrast": (0.25, 0.5, 0.75),  # contrast lowered by this fraction (0.75: a quarter of the contrast left)
    "resolution": (2, 3, 4),  # downsampling factor, then back up (bilinear)
}


def bias_field(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth ``(H, W)`` field, a random quadratic surface scaled to ``[-strength, strength]``; an image is
    multiplied by ``1 + field``. Shared by this corruption and training augmentation (pixelrl_env/augment.py)."""
    h, w = shape
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    terms = np.stack([y, x, y * x, y * y, x * x])
    field = np.tensordot(rng.uniform(-1, 1, len(terms)), terms, axes=1)
    return field * (strength / max(float(np.abs(field).max()), 1e-12))


def _range(images: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(images, [1, 99], axis=(-2, -1), keepdims=True)
    return np.maximum(hi - lo, 1e-6).astype(np.float32)


def corrupt(images: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """``images`` ``(N, C, H, W)`` float32 corrupted by ``kind`` at ``level``; a new array of the same shape.

    Raises ValueError naming the kind or level when either is unknown or out of range.
    """
    if kind not in KINDS:
        raise ValueError(f"corruption kind must be one of {KINDS}, got {kind!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if level < 0 or (kind == "contrast" and level >= 1) or (kind == "resolution" and level and level < 1):
        raise ValueError(f"level {level} out of range for {kind} (see pixelrl_env.corrupt.LEVELS)")
    x = images.astype(np.float32, copy=True)
    if level == 0:
        return x
    if kind == "gaussian":
        return x + rng.normal(0, 1, x.shape).astype(np.float32) * level * _range(x)
    if kind == "rician":
        sd = level * _range(x)
        lo = np.percentile(x, 1, axis=(-2, -1), keepdims=True).astype(np.float32)
        mag = x - lo  # magnitude images are non-negative: noise both channels of the complex signal
        n1, n2 = (rng.normal(0, 1, x.shape).astype(np.float32) * sd for _ in range(2))
        return (np.sqrt((mag + n1) ** 2 + n2**2) + lo).astype(np.float32)
    if kind == "bias_field":
        out = np.empty_like(x)
        for i in range(len(x)):
            out[i] = x[i] * (1 + bias_field(x.shape[-2:], level, rng)).astype(np.float32)[None]
        return out
    if kind == "contrast":
        mean = x.mean(axis=(-2, -1), keepdims=True)
        return (mean + (x - mean) * (1 - level)).astype(np.float32)
    # resolution: down by `level`, back up, bilinear (what a coarser acquisition interpolated to the grid looks like)
    h, w = x.shape[-2:]
    small = (max(1, round(w / level)), max(1, round(h / level)))
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            im = Image.fromarray(x[i, c])
            out[i, c] = np.asarray(im.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR))
    return out
