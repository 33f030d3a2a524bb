"""Overlays for people: image, ground truth, prediction and uncertainty side by side, as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw

UNCERTAINTY_TITLE = "uncertainty, bits (bar: black 0 - red - yellow - white 1)"
PANEL_TITLES = ("image", "truth (green)", "truth + prediction (red; yellow = both)", UNCERTAINTY_TITLE)
PREDICTION_TITLES = ("image", "prediction (red)", UNCERTAINTY_TITLE)
MIN_PANEL = 256  # small working resolutions (32-128 px) are upscaled so that a person can see the masks
LINE_PX = 12  # Pillow's default font: 11 px a line
BAR_PX = 44  # the colour bar beside the uncertainty panel, with its 0 / 0.5 / 1 labels


def grey(x: np.ndarray, robust: bool = False) -> np.ndarray:
    """``(H, W)`` to uint8 0..255: min..max, or with ``robust`` the 1st..99th percentile (a raw scan's bright outliers
    would otherwise leave the anatomy black)."""
    lo, hi = (float(np.percentile(x, 1)), float(np.percentile(x, 99))) if robust else (float(x.min()), float(x.max()))
    return (np.clip((x - lo) / (hi - lo + 1e-8), 0, 1) * 255).astype(np.uint8)


def heat(uncertainty: np.ndarray) -> np.ndarray:
    """``(H, W)`` in [0, 1] to a black-red-yellow-white ``(H, W, 3)`` uint8 map."""
    u = np.clip(uncertainty, 0, 1)
    return (np.stack([np.clip(3 * u, 0, 1), np.clip(3 * u - 1, 0, 1), np.clip(3 * u - 2, 0, 1)], -1) * 255).astype(
        np.uint8)


def tint(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``rgb`` with the ``mask`` pixels blended half-way to red."""
    out = rgb.copy()
    m = mask.astype(bool)
    out[m] = (0.5 * out[m] + 0.5 * np.array([255, 40, 40])).astype(np.uint8)
    return out


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` px (a word longer than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _colour_bar(canvas: Image.Image, top: int, draw: ImageDraw.ImageDraw) -> None:
    """:func:`heat`'s palette as a vertical bar at the right edge, 1 at the top, labelled 1, 0.5 and 0."""
    x0, h = canvas.width - BAR_PX, canvas.height - top
    ramp = heat(np.linspace(1.0, 0.0, h)[:, None].repeat(12, axis=1))
    canvas.paste(Image.fromarray(ramp), (x0 + 4, top))
    for value, y in ((1.0, top), (0.5, top + h // 2 - LINE_PX // 2), (0.0, canvas.height - LINE_PX)):
        draw.text((x0 + 19, y), f"{value:g}", fill=(255, 255, 255))


def titled(path: str | Path, panels: list[np.ndarray], titles: list[str], min_panel: int = 0,
           caption: str | None = None, colour_bar: bool = False) -> Path:
    """Equal-sized ``(H, W, 3)`` panels side by side as one PNG, each upscaled (nearest, so masks stay crisp) to at
    least ``min_panel`` px, titled above (wrapped to the panel's width, so that no title is cut), under an optional
    ``caption`` line (which slice of what), with an optional colour bar of the last panel's palette at the right."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = panels[0].shape[:2]
    scale = max(1, -(-min_panel // min(h, w)))
    pw = w * scale
    big = Image.fromarray(np.concatenate(panels, axis=1)).resize((len(panels) * pw, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(draw, t, pw - 6) for t in titles]
    cap_lines = _wrap(draw, caption, big.width - 6) if caption else []
    head = LINE_PX * (len(cap_lines) + max(len(t) for t in wrapped)) + 4
    canvas = Image.new("RGB", (big.width + (BAR_PX if colour_bar else 0), big.height + head), (0, 0, 0))
    canvas.paste(big, (0, head))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(cap_lines):
        draw.text((3, 2 + i * LINE_PX), line, fill=(255, 255, 0))
    for k, lines in enumerate(wrapped):
        for i, line in enumerate(lines):
            draw.text((k * pw + 3, 2 + (len(cap_lines) + i) * LINE_PX), line, fill=(255, 255, 255))
    if colour_bar:
        _colour_bar(canvas, head, draw)
    canvas.save(path)
    return path


def overlay_panels(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, uncertainty: np.ndarray,
                   robust: bool = False) -> list[np.ndarray]:
    """``(H, W, 3)`` uint8 panels. With ``truth``: the image; truth in green; prediction in red (yellow where both);
    uncertainty (hot). Without (a user's scan, ``pixeldrl predict``): the image; the prediction tinted red;
    uncertainty.

    Shapes: ``image`` ``(C, H, W)`` or ``(H, W)``; masks and uncertainty ``(H, W)``; uncertainty in [0, 1];
    ``robust``: grey levels from the 1st..99th percentile (a raw scan), else min..max (a prepared image).
    """
    base = grey(image.mean(axis=0) if image.ndim == 3 else image, robust)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    if truth is None:
        return [rgb, tint(rgb, pred), heat(uncertainty)]
    both = rgb.copy()
    both[truth.astype(bool), 1] = 255
    both[pred.astype(bool), 0] = 255
    gt_only = rgb.copy()
    gt_only[truth.astype(bool), 1] = 255
    return [rgb, gt_only, both, heat(uncertainty)]


def save_overlay(path: str | Path, image, truth, pred, uncertainty, robust: bool = False,
                 caption: str | None = None) -> Path:
    """:func:`overlay_panels` as a PNG, each panel upscaled to at least ``MIN_PANEL`` px and titled above, the
    uncertainty's colour bar at the right, ``caption`` (which slice of which scan) on top; the centre slice of a 2.5-D
    input is the one shown. ``truth`` None: the mask-free mode."""
    if image.ndim == 3 and image.shape[0] > 1 and image.shape[0] % 2 == 1:
        image = image[image.shape[0] // 2 : image.shape[0] // 2 + 1]  # a 2.5-D stack: the slice segmented
    titles = list(PANEL_TITLES) if truth is not None else list(PREDICTION_TITLES)
    return titled(path, overlay_panels(image, truth, pred, uncertainty, robust), titles, MIN_PANEL, caption,
                  colour_bar=True)


def scan_frames(image: np.ndarray, masks: np.ndarray) -> list[Image.Image]:
    """A raw scan ``(C, H, W)`` or ``(H, W)`` with each mask of ``masks`` ``(T, H, W)`` tinted red, titled "start",
    "step 1", ...: the frames of a GIF of the steps."""
    base = grey(image.mean(axis=0) if image.ndim == 3 else image, robust=True)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    frames = []
    for t, m in enumerate(masks):
        im = Image.fromarray(tint(rgb, m))
        ImageDraw.Draw(im).text((3, 2), f"step {t}" if t else "start", fill=(255, 255, 0))
        frames.append(im)
    return frames


def learning_curve(history: list[dict], path: Path) -> Path | None:
    """Validation Dice / Boundary IoU and training return against the update, as a PNG."""

    matplotlib.use("Agg")

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
