"""Segmentation metrics of the paper, as pure functions over binary masks.

Every function takes ``pred`` and ``target`` as binary arrays of shape ``(H, W)`` or ``(B, H, W)`` (numpy arrays or
torch tensors, any of bool/int/float dtypes holding only 0 and 1) and returns one value per image: a Python ``float``
for ``(H, W)`` input, a ``(B,)`` float64 numpy array for ``(B, H, W)`` input.

Empty-mask conventions (the same for every metric, so that averages stay comparable):

* both ``pred`` and ``target`` empty: a perfect score (1.0 for overlap metrics, 0.0 for distances);
* exactly one of them empty: the worst score (0.0 for overlap metrics; for distances, the image diagonal
  ``sqrt(H^2 + W^2)`` in pixel units, i.e. the largest distance possible in the image, kept finite so means exist).

Overlap metrics:

* ``dice`` = 2|P∩G| / (|P| + |G|);  ``iou`` = |P∩G| / |P∪G|;
* ``ppv`` (precision) = |P∩G| / |P|;  ``sensitivity`` (recall) = |P∩G| / |G|;
  with ``pred`` empty and ``target`` not, ``ppv`` is 0.0 (nothing found), and with ``target`` empty and ``pred`` not,
  ``sensitivity`` is 0.0 (per the rule above), so neither can be gamed by an empty or a full prediction.
* ``boundary_iou`` (Cheng et al., CVPR 2021): IoU of the boundary bands ``M - erode(M, d)`` of the two masks, where
  ``d = max(1, round(dilation_ratio * diagonal))`` (0.02 by default, as in the paper's reference code) and pixels
  outside the image count as background (so foreground on the image border is boundary).

Distance metrics (in pixels, or in ``spacing`` units), on the surfaces ``M XOR erode(M)`` with a 3x3 cross, as MONAI:

* ``hd95``: the larger of the two directed 95th-percentile surface distances (linear interpolation);
* ``assd``: the mean of all surface distances in both directions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

Array = np.ndarray


def _as_binary(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if x.size and not np.isin(x, (0, 1)).all():
        bad = np.unique(x[~np.isin(x, (0, 1))])[:5]
        raise ValueError(f"{name} must be binary (0/1 or bool), got values such as {bad.tolist()} (dtype {x.dtype})")
    return x.astype(bool)


def _prepare(pred, target) -> tuple[np.ndarray, np.ndarray, bool]:
    p, g = _as_binary(pred, "pred"), _as_binary(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {g.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (B, H, W) masks, got shape {p.shape}")
    single = p.ndim == 2
    if single:
        p, g = p[None], g[None]
    return p, g, single


def _out(values: np.ndarray, single: bool):
    values = values.astype(np.float64)
    return float(values[0]) if single else values


def _ratio(num: np.ndarray, den: np.ndarray, p_any: np.ndarray, g_any: np.ndarray) -> np.ndarray:
    both_empty = ~p_any & ~g_any
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.maximum(den, 1), 0.0)
    return np.where(both_empty, 1.0, r)


def _counts(p: np.ndarray, g: np.ndarray):
    axes = (1, 2)
    tp = np.count_nonzero(p & g, axis=axes).astype(np.float64)
    ps = np.count_nonzero(p, axis=axes).astype(np.float64)
    gs = np.count_nonzero(g, axis=axes).astype(np.float64)
    return tp, ps, gs


def dice(pred, target):
    """Dice coefficient per image. See the module docstring for shapes and empty masks."""
    p, g, single = _prepare(pred, target)
    tp, ps, gs = _counts(p, g)
    return _out(_ratio(2 * tp, ps + gs, ps > 0, gs > 0), single)


def iou(pred, target):
    """Intersection over union (Jaccard) per image."""
    p, g, single = _prepare(pred, target)
    tp, ps, gs = _counts(p, g)
    return _out(_ratio(tp, ps + gs - tp, ps > 0, gs > 0), single)


def ppv(pred, target):
    """Positive predictive value (precision) per image."""
    p, g, single = _prepare(pred, target)
    tp, ps, gs = _counts(p, g)
    return _out(_ratio(tp, ps, ps > 0, gs > 0), single)


def sensitivity(pred, target):
    """Sensitivity (recall, true-positive rate) per image."""
    p, g, single = _prepare(pred, target)
    tp, ps, gs = _counts(p, g)
    return _out(_ratio(tp, gs, ps > 0, gs > 0), single)


def boundary_band(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Inner boundary band of one ``(H, W)`` bool mask: ``mask`` minus its erosion by ``dilation`` 3x3 steps."""
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=dilation, border_value=0)
    return mask & ~eroded


def boundary_iou(pred, target, dilation_ratio: float = 0.02):
    """Boundary IoU (Cheng et al. 2021) per image; band width ``max(1, round(dilation_ratio * diagonal))``."""
    p, g, single = _prepare(pred, target)
    h, w = p.shape[1:]
    d = max(1, int(round(dilation_ratio * np.hypot(h, w))))
    out = np.empty(len(p))
    for i in range(len(p)):
        if not p[i].any() and not g[i].any():
            out[i] = 1.0
            continue
        bp, bg = boundary_band(p[i], d), boundary_band(g[i], d)
        union = np.count_nonzero(bp | bg)
        out[i] = np.count_nonzero(bp & bg) / union if union else 0.0
    return _out(out, single)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(src_edge: np.ndarray, dst_edge: np.ndarray, spacing) -> np.ndarray:
    dist = ndimage.distance_transform_edt(~dst_edge, sampling=spacing)
    return dist[src_edge]


def _surface_metric(pred, target, reduce: Callable[[np.ndarray, np.ndarray], float], spacing):
    p, g, single = _prepare(pred, target)
    h, w = p.shape[1:]
    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    worst = float(np.hypot(h * sp[0], w * sp[1]))
    out = np.empty(len(p))
    for i in range(len(p)):
        pa, ga = p[i].any(), g[i].any()
        if not pa and not ga:
            out[i] = 0.0
        elif pa != ga:
            out[i] = worst
        else:
            ep, eg = _surface(p[i]), _surface(g[i])
            out[i] = reduce(_directed_distances(ep, eg, sp), _directed_distances(eg, ep, sp))
    return _out(out, single)


def hd95(pred, target, spacing: Sequence[float] | None = None):
    """95th-percentile symmetric Hausdorff distance per image, in pixels (or ``spacing`` units)."""
    return _surface_metric(
        pred, target, lambda a, b: max(np.percentile(a, 95), np.percentile(b, 95)), spacing
    )


def assd(pred, target, spacing: Sequence[float] | None = None):
    """Average symmetric surface distance per image, in pixels (or ``spacing`` units)."""
    return _surface_metric(pred, target, lambda a, b: float(np.concatenate([a, b]).mean()), spacing)


ALL_METRICS: dict[str, Callable] = {
    "dice": dice,
    "iou": iou,
    "ppv": ppv,
    "sensitivity": sensitivity,
    "biou": boundary_iou,
    "hd95": hd95,
    "assd": assd,
}


def compute_all(pred, target) -> dict[str, np.ndarray]:
    """Every metric of :data:`ALL_METRICS` per image, as ``(B,)`` arrays (a 2-D input counts as B = 1)."""
    p, g, _ = _prepare(pred, target)
    return {name: np.atleast_1d(np.asarray(fn(p, g), dtype=np.float64)) for name, fn in ALL_METRICS.items()}
