"""What a model was trained on, and how far an input is from it: the check behind "this scan looks unlike the
training data" in ``pixeldrl predict``.

A profile holds the data description (format, source, channels, size, normalisation) and what prepared training
slices look like: for each of up to 256 slices spread over the training split, per channel, a 16-bin histogram of its
intensities (between the training values' 0.5th and 99.5th percentiles) and one of its gradient magnitude (texture).
An input slice, prepared the same way, is scored by the mean total-variation distance between its histograms and
those of its ``K`` nearest training slices (0 = looks like some training slices, 1 = nothing in common). The
threshold is chosen on the validation split: the distance that 99 % of validation slices, patients the model never
trained on, stay under (``MARGIN`` 1). On the real data (``python -m benchmarks.unlike_training``) it flags 3 % of
LGG and none of the left-atrium test slices with foreground, and 99-100 % of endoscopy photos and of the other
organ's MRI. The training slices are those the model trained on: under ``drop_empty`` none is empty, and a quarter
of all LGG test slices (the empty ends of each head, never trained on) are flagged.
With a handful of validation slices (the toy data sets of the tests) that quantile is their maximum, and unseen slices
of the same kind can exceed it: the check is meant for data sets of hundreds of slices. Pure NumPy; the profile is
plain JSON (stored in checkpoints as a string).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .data_config import DataConfig
from .dataset import load_spread

BINS = 16
K = 5
QUANTILE = 0.99
MARGIN = 1.0  # the validation split's own 1 %: no margin was needed (benchmarks/unlike_training.py)
MAX_TRAIN = 256  # training slices kept in a profile (a few hundred kB of JSON in the checkpoint)


def _edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    lo, hi = np.percentile(flat, 0.5, axis=1), np.percentile(flat, 99.5, axis=1)
    return lo, np.where(hi - lo > 1e-6, hi, lo + 1.0)


def histograms(x: np.ndarray, lo, hi, bins: int = BINS) -> np.ndarray:
    """``(N, 2 C bins)``: each slice's per-channel histogram of ``x`` ``(N, C, H, W)`` between ``lo`` and ``hi``
    (values beyond them counted in the end bins), then of its gradient magnitude (texture) between 0 and
    ``hi - lo``, each channel's summing to 1 in each half."""
    span = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
    gy, gx = np.diff(x, axis=2)[..., :, :-1], np.diff(x, axis=3)[..., :-1, :]
    grad = np.sqrt(gy.astype(np.float64) ** 2 + gx ** 2)
    return np.concatenate([_hist(x, lo, hi, bins), _hist(grad, np.zeros_like(span), span / 2, bins)], axis=1)


def _hist(x: np.ndarray, lo, hi, bins: int) -> np.ndarray:
    lo, hi = np.asarray(lo, np.float64)[None, :, None], np.asarray(hi, np.float64)[None, :, None]
    flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    idx = np.clip(((flat - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    n, c = idx.shape[:2]
    offset = (np.arange(n)[:, None] * c + np.arange(c)[None, :])[..., None] * bins
    counts = np.bincount((idx + offset).ravel(), minlength=n * c * bins).reshape(n, c * bins)
    return counts / flat.shape[-1]


def distances(profile: dict[str, Any], x: np.ndarray, skip_self: bool = False) -> np.ndarray:
    """Each slice's distance ``(N,)`` in [0, 1] from the training slices: the mean total-variation distance between
    its histogram and those of its ``K`` nearest training slices (``skip_self``: the nearest, itself, left out)."""
    h = histograms(x, profile["lo"], profile["hi"], profile["bins"])
    ref = np.asarray(profile["reference"])
    c = 2 * len(profile["lo"])  # intensity and gradient histograms of each channel
    d = np.stack([0.5 * np.abs(ref - row[None]).sum(axis=1) / c for row in h])
    d.sort(axis=1)
    return d[:, int(skip_self): int(skip_self) + K].mean(axis=1)


def build_profile(train: np.ndarray, val: np.ndarray, data: dict[str, Any]) -> dict[str, Any]:
    """The profile of prepared training slices ``train`` ``(N, C, H, W)``, its threshold set on ``val`` (module
    docstring); ``data`` describes the source (format, path, channels, size, normalize)."""
    if len(train) == 0:
        raise ValueError("no training slices to profile")
    lo, hi = _edges(train)
    prof = {"data": data, "channels": int(train.shape[1]), "size": list(train.shape[2:]), "bins": BINS,
            "lo": lo.tolist(), "hi": hi.tolist(), "n_train": int(len(train)), "n_val": int(len(val))}
    prof["reference"] = np.round(histograms(train, lo, hi), 5).tolist()
    # no validation split: the training slices' own spread, each without itself
    d = distances(prof, val) if len(val) else distances(prof, train, skip_self=True)
    prof["threshold"] = float(MARGIN * np.quantile(d, QUANTILE))
    prof["threshold_rule"] = (f"{MARGIN} x the {QUANTILE:.0%} quantile of {'validation' if len(val) else 'training'}"
                              " slices' distances")
    return prof


def unlike(profile: dict[str, Any] | None, x: np.ndarray) -> dict[str, Any] | None:
    """How far the prepared slices ``x`` of one input are from the training data: the median slice distance, the
    threshold and whether it is over (None without a profile: a checkpoint from before profiles)."""
    if profile is None or x.shape[1] != profile["channels"]:
        return None
    d = float(np.median(distances(profile, x)))
    return {"distance": round(d, 4), "threshold": round(profile["threshold"], 4), "flagged": d > profile["threshold"]}


def training_profile(data: DataConfig, description: dict[str, Any]) -> dict[str, Any]:
    """:func:`build_profile` of up to ``MAX_TRAIN`` training and as many validation slices of ``data``, read spread
    over each split; ``description`` is the data section as the checkpoint records it."""
    train = load_spread(data, "train", MAX_TRAIN).images
    val = load_spread(data, "val", MAX_TRAIN).images
    return build_profile(train, val, description)
