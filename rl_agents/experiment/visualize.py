"""Overlays for people: image, ground truth, prediction and uncertainty side by side, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _grey(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)


def overlay_panels(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """``(H, 4W, 3)`` uint8: the image; truth in green; prediction in red (yellow where both); uncertainty (hot).

    Shapes: ``image`` ``(C, H, W)`` or ``(H, W)``; masks and uncertainty ``(H, W)``; uncertainty in [0, 1].
    """
    base = _grey(image.mean(axis=0) if image.ndim == 3 else image)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    both = rgb.copy()
    both[truth.astype(bool), 1] = 255
    both[pred.astype(bool), 0] = 255
    gt_only = rgb.copy()
    gt_only[truth.astype(bool), 1] = 255
    u = np.clip(uncertainty, 0, 1)
    heat = np.stack([np.clip(3 * u, 0, 1), np.clip(3 * u - 1, 0, 1), np.clip(3 * u - 2, 0, 1)], -1)
    return np.concatenate([rgb, gt_only, both, (heat * 255).astype(np.uint8)], axis=1)


def save_overlay(path: str | Path, image, truth, pred, uncertainty) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_panels(image, truth, pred, uncertainty)).save(path)
    return path
