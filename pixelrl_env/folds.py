"""Patient-level k-fold cross-validation: which groups (patients) train, validate and test in one fold.

With few patients (20 heart volumes) one 70/10/20 split leaves a test score that depends on which 4 patients were
drawn; k folds test every patient exactly once. Each fold also keeps its own validation patients, taken from the
training side, so that checkpoint selection never sees the fold's test patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .io import DataError


def kfold_groups(
    groups: Sequence[str], k: int, fold: int, seed: int = 0, val_fraction: float = 0.125
) -> tuple[set, set, set]:
    """``(train, val, test)`` group sets of fold ``fold`` of ``k``, deterministic by ``seed``.

    The unique groups are shuffled with ``seed`` and cut into ``k`` contiguous folds whose sizes differ by at most
    one; fold ``fold`` is the test set. Of the other ``n_rest`` groups, ``round(n_rest * val_fraction)`` (at least one
    when ``val_fraction > 0`` and ``n_rest >= 2``, and never all of them) form the validation set, drawn with
    ``(seed, fold)``; the rest train. The folds depend on ``seed`` and ``k`` only, never on ``fold``, so the ``k``
    calls with ``fold = 0 .. k-1`` test every group exactly once.
    """
    uniq = sorted(set(groups))
    n = len(uniq)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise DataError(f"data.folds must be an integer >= 2 (k of k-fold cross-validation), got {k!r}")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
        raise DataError(f"data.fold must be in 0..{k - 1} for data.folds={k}, got {fold!r}")
    if k > n:
        raise DataError(f"data.folds={k} but the data holds only {n} group(s) (patients); use data.folds <= {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    shuffled = [uniq[i] for i in np.random.default_rng(seed).permutation(n)]
    bounds = np.cumsum([0] + [len(c) for c in np.array_split(np.arange(n), k)])
    test = shuffled[bounds[fold] : bounds[fold + 1]]
    rest = shuffled[: bounds[fold]] + shuffled[bounds[fold + 1] :]
    n_val = int(round(len(rest) * val_fraction))
    if val_fraction > 0 and len(rest) >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(rest) - 1)  # train keeps at least one group
    pick = np.random.default_rng([seed, fold]).permutation(len(rest))[:n_val]
    val = {rest[i] for i in pick}
    return set(rest) - val, val, set(test)


def fold_of(groups: Sequence[str], k: int, seed: int = 0) -> dict[str, int]:
    """The test fold of every group, as :func:`kfold_groups` assigns it (for reports and checks)."""
    out: dict[str, int] = {}
    for f in range(k):
        out.update(dict.fromkeys(kfold_groups(groups, k, f, seed, 0.0)[2], f))
    return out
