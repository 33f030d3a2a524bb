"""Calibration of per-pixel foreground probabilities, and how well an uncertainty map points at the errors.

Pure functions over flat arrays (any shape, flattened): ``prob`` in [0, 1], ``truth`` in {0, 1}, ``uncertainty`` any
real score where higher means less sure. Edge cases: an empty input raises ``ValueError``; a bin without pixels is
left out of the expected calibration error and reported with ``count`` 0 and ``None`` for its means; the error AUROC
is ``None`` when the pixels hold no error or nothing but errors (it is undefined, not 0.5).
"""

from __future__ import annotations

import numpy as np


def _flat(prob, truth) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    t = np.asarray(truth).reshape(-1).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prob and truth must have one value per pixel, got {p.size} and {t.size}")
    if p.size == 0:
        raise ValueError("no pixels")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"prob must lie in [0, 1], got {p.min()}..{p.max()}")
    return p, t


def reliability(prob, truth, n_bins: int = 15) -> list[dict]:
    """Equal-width bins of ``prob`` (the last one closed at 1): pixel count, mean probability and the observed
    fraction of foreground in each, the points of a reliability diagram."""
    p, t = _flat(prob, truth)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf = np.bincount(idx, weights=p, minlength=n_bins)
    fg = np.bincount(idx, weights=t.astype(np.float64), minlength=n_bins)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(count[b]),
             "mean_prob": float(conf[b] / count[b]) if count[b] else None,
             "foreground_rate": float(fg[b] / count[b]) if count[b] else None} for b in range(n_bins)]


def expected_calibration_error(prob, truth, n_bins: int = 15) -> float:
    """``sum_b (n_b / N) |foreground rate_b - mean prob_b|`` over :func:`reliability`'s non-empty bins."""
    bins = reliability(prob, truth, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] / n * abs(b["foreground_rate"] - b["mean_prob"]) for b in bins if b["count"]))


def brier(prob, truth) -> float:
    """Mean squared difference between ``prob`` and the truth."""
    p, t = _flat(prob, truth)
    return float(np.mean((p - t) ** 2))


def error_auroc(uncertainty, errors) -> float | None:
    """Probability that a random wrong pixel is more uncertain than a random right one (ties count half): 1 means the
    map ranks every error above every correct pixel, 0.5 that it says nothing about them."""
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    e = np.asarray(errors).reshape(-1).astype(bool)
    if u.shape != e.shape:
        raise ValueError(f"one uncertainty per pixel expected, got {u.size} and {e.size} errors")
    n_err, n_ok = int(e.sum()), int((~e).sum())
    if n_err == 0 or n_ok == 0:
        return None
    _, inv, counts = np.unique(u, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average ranks, 1-based
    return float((ranks[e].sum() - n_err * (n_err + 1) / 2.0) / (n_err * n_ok))


def error_by_uncertainty(uncertainty, errors, fractions=(0.01, 0.05, 0.1, 0.2, 0.5)) -> list[dict]:
    """The error-vs-uncertainty curve: for the most uncertain ``f`` of the pixels, the error rate among them and the
    share of all errors they hold (an uncertainty that means something puts most errors in a small top share)."""
    u = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    e = np.asarray(errors).reshape(-1).astype(bool)
    order = np.argsort(-u, kind="stable")
    total = max(int(e.sum()), 1)
    out = []
    for f in fractions:
        k = max(1, int(round(f * len(u))))
        top = e[order[:k]]
        out.append({"top_fraction": f, "error_rate": float(top.mean()), "share_of_errors": float(top.sum() / total)})
    return out
