"""Which patients train, validate and test: the 70/10/20 split, patient-level k-fold cross-validation, and which
slices of a split are kept (empty ones, k-shot).

With few patients (20 heart volumes) one 70/10/20 split leaves a test score that depends on which 4 patients were
drawn; k folds test every patient exactly once. Each fold also keeps its own validation patients, taken from the
training side, so that checkpoint selection never sees the fold's test patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data_config import DataConfig
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


def split_groups(groups: Sequence[str], fractions: Sequence[float], seed: int) -> tuple[set, set, set]:
    """Assign unique groups to train/val/test, deterministic by ``seed``.

    Counts are rounded from the fractions; every split whose fraction is positive gets at least one group when there
    are enough groups (three or more), and the remainder goes to train.
    """
    uniq = sorted(set(groups))
    n = len(uniq)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
    n_train = n - n_val - n_test
    if n_train < 1 and fractions[0] > 0:
        raise DataError(f"only {n} group(s): too few to split {tuple(fractions)} by patient")
    shuffled = [uniq[i] for i in order]
    return (
        set(shuffled[:n_train]),
        set(shuffled[n_train : n_train + n_val]),
        set(shuffled[n_train + n_val :]),
    )


def config_split(groups: Sequence[str], cfg: DataConfig) -> tuple[set, set, set]:
    """``(train, val, test)`` group sets under ``cfg``: k-fold (:func:`kfold_groups`) when
    ``cfg.folds`` is set, else :func:`split_groups` by ``cfg.split``. Every reader of a split goes through here."""
    if cfg.folds is None:
        return split_groups(groups, cfg.split, cfg.seed)
    val_fraction = cfg.split[1] / (cfg.split[0] + cfg.split[1])
    return kfold_groups(groups, cfg.folds, cfg.fold, cfg.seed, val_fraction)


def split_names(groups: Sequence[str], cfg: DataConfig) -> np.ndarray:
    """The split ("train" | "val" | "test") of each row, from its group."""
    tr, va, _ = config_split(groups, cfg)
    return np.array(["train" if g in tr else "val" if g in va else "test" for g in groups], dtype=object)


def kept_positions(nonempty: np.ndarray, split: str, cfg: DataConfig) -> np.ndarray:
    """Positions a split keeps, in order: drop_empty (train: plus ``train_empty`` of the empty slices), then (train
    only) k_shot. Shared so parts match load_splits."""
    # drop_empty is judged at the working resolution: a lesion that vanishes when resized leaves nothing to learn
    idx = np.flatnonzero(nonempty) if cfg.drop_empty else np.arange(len(nonempty))
    if split == "train" and cfg.drop_empty and cfg.train_empty > 0:  # a fixed random share of the empty ones back
        empty = np.flatnonzero(~np.asarray(nonempty, bool))
        n = int(round(len(empty) * cfg.train_empty))
        idx = np.sort(np.concatenate([idx, np.random.default_rng([cfg.seed, 2]).choice(empty, n, replace=False)]))
    if split == "train" and cfg.k_shot is not None:
        if cfg.k_shot > len(idx):
            raise DataError(f"data.k_shot={cfg.k_shot} but the training split has only {len(idx)} slices")
        idx = idx[np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(idx), cfg.k_shot, replace=False))]
    return idx
