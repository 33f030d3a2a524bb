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


PANEL_TITLES = ("image", "truth (green)", "truth + prediction (red; yellow = both)", "uncertainty (0 black - 1 white)")
MIN_PANEL = 192  # small working resolutions (32-128 px) are upscaled so that a person can see the masks
TITLE_PX = 16


def save_overlay(path: str | Path, image, truth, pred, uncertainty) -> Path:
    """:func:`overlay_panels` as a PNG, each panel upscaled (nearest: masks stay crisp) to at least ``MIN_PANEL`` px
    and titled above; the centre slice of a 2.5-D input is the one shown."""
    from PIL import ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3 and image.shape[0] > 1 and image.shape[0] % 2 == 1:
        image = image[image.shape[0] // 2 : image.shape[0] // 2 + 1]  # a 2.5-D stack: the slice segmented
    panels = overlay_panels(image, truth, pred, uncertainty)
    h, w4 = panels.shape[:2]
    w = w4 // 4
    scale = max(1, -(-MIN_PANEL // min(h, w)))
    big = Image.fromarray(panels).resize((w4 * scale, h * scale), Image.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + TITLE_PX), (0, 0, 0))
    canvas.paste(big, (0, TITLE_PX))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(PANEL_TITLES):
        draw.text((k * w * scale + 3, 2), title, fill=(255, 255, 255))
    canvas.save(path)
    return path


def learning_curve(history: list[dict], path: Path) -> Path | None:
    """Validation Dice / Boundary IoU and training return against the update, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [h for h in history if "val/dice" in h]
    if not pts:
        return None
    step = "update"
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("val/dice", "val/biou"):
        ax[0].plot([h[step] for h in pts if key in h], [h[key] for h in pts if key in h], label=key)
    ax[0].set_xlabel(step)
    ax[0].legend()
    train_key = "train/return" if "train/return" in pts[0] else "train/loss"
    if train_key in pts[0]:
        ax[1].plot([h[step] for h in pts], [h.get(train_key, float("nan")) for h in pts])
        ax[1].set_title(train_key)
        ax[1].set_xlabel(step)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
