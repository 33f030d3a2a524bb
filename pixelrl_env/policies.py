"""Reference policies that need no learning: the oracle (an upper bound) and uniform random (a lower bound)."""

from __future__ import annotations

import numpy as np

from .env import KEEP, SET_BACKGROUND, SET_FOREGROUND


def oracle_actions(state: np.ndarray, ground_truth: np.ndarray, n_actions: int) -> np.ndarray:
    """Actions that move every pixel to its ground-truth label at once.

    With the paper's two actions a background pixel cannot return to foreground, so where ``state`` is background
    and the truth is foreground the oracle keeps it (the all-foreground start never creates such pixels).
    Shapes: ``state`` and ``ground_truth`` ``(..., H, W)`` {0, 1}; returns int64 of the same shape.
    """
    gt = ground_truth.astype(bool)
    a = np.where(gt, KEEP, SET_BACKGROUND)
    if n_actions == 3:
        a = np.where(gt & ~state.astype(bool), SET_FOREGROUND, a)
    return a.astype(np.int64)


def random_actions(rng: np.random.Generator, shape: tuple[int, ...], n_actions: int) -> np.ndarray:
    """Uniformly random actions of ``shape``."""
    return rng.integers(0, n_actions, size=shape, dtype=np.int64)
