"""Built-in synthetic MRI-like slices: the default data, needing no files.

Each synthetic *patient* is a head with an ellipsoidal lesion in 3-D; its slices cut the lesion at different heights,
so slices near the ends of the volume hold no lesion (empty slices arise naturally, as in real scans). Three channels
imitate the LGG set (pre-contrast, FLAIR, post-contrast): the lesion is bright in FLAIR and faint elsewhere.
The lesion outline is irregular (random radial harmonics) and its edge is sharp on one side and soft on the other.
Difficulty levels change contrast, noise (Rician), bias field, edge softness, irregularity and distractor blobs.

Every slice is a pure function of ``(seed, patient, slice)``: the same arguments give the same pixels on any machine
and in any order of generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Difficulty:
    contrast: float  # lesion brightness above tissue in FLAIR, in [0, 1] intensity units
    noise: float  # std of the Gaussian noise on both Rician components
    bias: float  # strength of the multiplicative bias field
    softness: float  # edge width (pixels at 128 px) of the soft side of the lesion
    irregularity: float  # amplitude of the radial harmonics of the outline
    distractors: int  # bright non-lesion blobs per slice


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(contrast=0.55, noise=0.02, bias=0.0, softness=0.5, irregularity=0.12, distractors=0),
    "medium": Difficulty(contrast=0.35, noise=0.05, bias=0.25, softness=1.5, irregularity=0.25, distractors=1),
    "hard": Difficulty(contrast=0.2, noise=0.09, bias=0.4, softness=3.0, irregularity=0.4, distractors=3),
}


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def synthetic_slice(
    seed: int, patient: int, index: int, n_slices: int, size: int = 128, difficulty: str = "easy"
) -> tuple[np.ndarray, np.ndarray]:
    """One slice of one synthetic patient.

    Args:
        seed: dataset seed.
        patient: patient number (its anatomy and lesion are fixed by ``(seed, patient)``).
        index: slice number in ``[0, n_slices)``.
        n_slices: slices per patient.
        size: side of the square slice in pixels.
        difficulty: one of ``"easy"``, ``"medium"``, ``"hard"``.

    Returns:
        image ``(size, size, 3)`` uint8 and mask ``(size, size)`` uint8 in {0, 1}.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown synthetic difficulty {difficulty!r}; expected one of {sorted(DIFFICULTIES)}")
    if size < 16:
        raise ValueError(f"synthetic size must be >= 16 pixels, got {size}")
    d = DIFFICULTIES[difficulty]
    prng = np.random.default_rng([seed, patient, 7919])
    srng = np.random.default_rng([seed, patient, index, 104729])
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    # Head: an ellipse of brain tissue inside a bright skull ring.
    axes = (size * prng.uniform(0.36, 0.42), size * prng.uniform(0.40, 0.46))
    head_r = np.sqrt(((grid[1] - c) / axes[0]) ** 2 + ((grid[0] - c) / axes[1]) ** 2)
    brain = head_r < 0.92
    skull = (head_r >= 0.92) & (head_r < 1.0)
    texture = _smooth_noise(srng, size, 3.0 * size / 128.0)
    z = (index + 0.5) / n_slices * 2.0 - 1.0
    mask, lesion = _lesion(prng, d, grid, axes, z, brain)
    channels = _tissue(srng, d, grid, axes, brain, skull, texture, lesion)
    return _acquire(prng, srng, d, channels, grid), mask.astype(np.uint8)


def _lesion(prng, d, grid, axes, z, brain) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid lesion in (x, y, z) with an irregular, partly soft edge, cut at height ``z`` in [-1, 1]: its mask
    and its intensity profile (0 outside, 1 inside)."""
    yy, xx = grid
    size = xx.shape[0]
    scale, c = size / 128.0, (size - 1) / 2.0
    lz0, lz_half = prng.uniform(-0.25, 0.25), prng.uniform(0.55, 0.8)
    zrel = (z - lz0) / lz_half
    lr_max = size * prng.uniform(0.08, 0.16)
    lr = lr_max * np.sqrt(max(0.0, 1.0 - zrel**2))
    off = prng.uniform(-0.35, 0.35, size=2) * np.array(axes) * 0.7
    lx, ly = c + off[0], c + off[1]
    theta = np.arctan2(yy - ly, xx - lx)
    outline = np.ones_like(theta)
    for k in (2, 3, 5):
        amp = d.irregularity * prng.uniform(0.3, 1.0) / np.sqrt(k)
        outline += amp * np.cos(k * theta + prng.uniform(0, 2 * np.pi) + 0.4 * zrel)
    r_edge = lr * np.clip(outline, 0.3, None)
    signed = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) - r_edge  # < 0 inside
    soft_dir = prng.uniform(0, 2 * np.pi)
    width = scale * (0.25 + d.softness * np.clip(np.cos(theta - soft_dir), 0.0, None))
    profile = 1.0 / (1.0 + np.exp(np.clip(signed / width, -30, 30)))
    mask = (signed < 0) & brain
    if lr < 1.5 * scale:  # a lesion too thin to annotate reliably is left out of both image and mask
        mask[:] = False
        profile[:] = 0.0
    return mask, profile * brain


def _tissue(srng, d, grid, axes, brain, skull, texture, lesion) -> np.ndarray:
    """Pre-contrast, FLAIR and post-contrast channels ``(H, W, 3)`` of the head with its lesion and distractors."""
    yy, xx = grid
    size = xx.shape[0]
    c = (size - 1) / 2.0
    flair = 0.35 + 0.06 * texture
    flair = np.where(brain, flair, 0.0) + 0.15 * skull
    flair = flair + d.contrast * lesion
    pre = np.where(brain, 0.45 + 0.05 * texture, 0.0) + 0.5 * skull - 0.4 * d.contrast * lesion
    post = np.where(brain, 0.4 + 0.05 * texture, 0.0) + 0.45 * skull + 0.25 * d.contrast * lesion
    for _ in range(d.distractors):  # bright spots that are not lesion
        dx, dy = srng.uniform(-0.6, 0.6, size=2) * np.array(axes)
        rr = size * srng.uniform(0.02, 0.05)
        blob = np.exp(-(((xx - c - dx) ** 2 + (yy - c - dy) ** 2) / (2 * rr**2))) * brain
        flair = flair + 0.8 * d.contrast * blob
    return np.stack([pre, flair, post], axis=-1)


def _acquire(prng, srng, d, channels, grid) -> np.ndarray:
    """The scanner's part: a smooth bias field, then Rician noise (the magnitude of a complex signal with Gaussian
    noise on both parts, as in MR magnitude images); uint8."""
    yy, xx = grid
    size = xx.shape[0]
    c = (size - 1) / 2.0
    if d.bias > 0:
        gx, gy, gxy = prng.uniform(-1, 1, size=3)
        u, v = (xx - c) / size, (yy - c) / size
        field = np.exp(d.bias * (gx * u + gy * v + 2 * gxy * u * v))
        channels = channels * field[..., None]
    n1 = srng.standard_normal(channels.shape) * d.noise
    n2 = srng.standard_normal(channels.shape) * d.noise
    channels = np.sqrt((channels + n1) ** 2 + n2**2)
    return np.clip(channels * 255.0, 0, 255).astype(np.uint8)
