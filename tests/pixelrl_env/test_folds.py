"""Patient-level k-fold cross-validation: pure splitter and its use by load_splits / describe / load_part."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pixelrl_env.dataset import describe, load_part, load_splits

from pixelrl_env.data_config import DataConfig

from pixelrl_env.folds import config_split
from pixelrl_env.folds import fold_of, kfold_groups
from pixelrl_env.io import DataError

GROUPS = [f"p{i:02d}" for i in range(23)]


@pytest.mark.parametrize("k", [2, 3, 5, 23])
def test_every_patient_tested_exactly_once_and_fold_sizes_balanced(k):
    rows = [g for g in GROUPS for _ in range(3)]  # several slices per patient: folds are over unique groups
    tests = []
    for fold in range(k):
        tr, va, te = kfold_groups(rows, k, fold, seed=7, val_fraction=0.125)
        assert not (tr & va or tr & te or va & te) and tr | va | te == set(GROUPS)
        n_rest = len(GROUPS) - len(te)
        assert len(va) == max(1, round(n_rest * 0.125)) and len(tr) == n_rest - len(va) >= 1
        tests.append(te)
    assert sorted(g for te in tests for g in te) == GROUPS  # each patient in exactly one test fold
    sizes = [len(te) for te in tests]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 23
    assert fold_of(rows, k, seed=7) == {g: f for f, te in enumerate(tests) for g in te}


def test_deterministic_by_seed_and_val_rules():
    a = kfold_groups(GROUPS, 5, 2, seed=3, val_fraction=0.2)
    assert a == kfold_groups(list(reversed(GROUPS)), 5, 2, seed=3, val_fraction=0.2)  # input order does not matter
    assert a != kfold_groups(GROUPS, 5, 2, seed=4, val_fraction=0.2)
    tr, va, te = a
    assert (len(tr), len(va), len(te)) == (14, 4, 5)  # fold 2 of 23 in 5: 5 5 5 4 4; val round(18 * 0.2) = 4
    assert tuple(map(len, kfold_groups(GROUPS, 5, 4, 0, 0.0))) == (19, 0, 4)  # no validation asked: none
    assert tuple(map(len, kfold_groups(GROUPS, 5, 0, 0, 0.01))) == (17, 1, 5)  # a positive fraction gets one
    assert tuple(map(len, kfold_groups(["a", "b", "c"], 3, 1, 0, 0.5))) == (1, 1, 1)
    assert tuple(map(len, kfold_groups(["a", "b"], 2, 0, 0, 0.5))) == (1, 0, 1)  # train keeps the last one
    # the folds are the same whatever the validation fraction: only train/val change
    assert [kfold_groups(GROUPS, 4, f, 1, 0.1)[2] for f in range(4)] == [kfold_groups(GROUPS, 4, f, 1, 0.4)[2]
                                                                         for f in range(4)]


@pytest.mark.parametrize(
    "k, fold, pattern",
    [
        (1, 0, r"data.folds must be an integer >= 2 .*got 1"),
        (5, 5, r"data.fold must be in 0\.\.4 for data.folds=5, got 5"),
        (5, -1, r"data.fold must be in 0\.\.4 for data.folds=5, got -1"),
        (24, 0, r"data.folds=24 but the data holds only 23 group\(s\) \(patients\); use data.folds <= 23"),
    ],
)
def test_bad_k_or_fold(k, fold, pattern):
    with pytest.raises(DataError, match=pattern):
        kfold_groups(GROUPS, k, fold)


def _synth(**kw) -> DataConfig:
    base = dict(format="synthetic", size=16, seed=2, synthetic={"n_patients": 9, "slices_per_patient": 4, "size": 24})
    base.update(kw)
    return DataConfig(**base)


def test_config_validation():
    for kw, pattern in [
        ({"folds": 1}, r"data.folds must be an integer >= 2 or null, got 1"),
        ({"folds": 3, "fold": 3}, r"data.fold must be in 0\.\.2 for data.folds=3, got 3"),
        ({"fold": 1}, r"data.fold=1 needs data.folds"),
        ({"folds": 3, "split": (0.0, 0.0, 1.0)}, r"data.folds needs data.split\[0\] \+ data.split\[1\] > 0"),
    ]:
        with pytest.raises(DataError, match=pattern):
            load_splits(_synth(**kw))
    with pytest.raises(DataError, match=r"data.folds=10 but the data holds only 9 group"):
        describe(_synth(folds=10))


def test_load_splits_describe_and_parts_honour_the_fold():
    tested = []
    for fold in range(3):
        cfg = _synth(folds=3, fold=fold, drop_empty=False)
        s = load_splits(cfg)
        tr, va, te = kfold_groups([f"synth{p:03d}" for p in range(9)], 3, fold, seed=2, val_fraction=0.125)
        assert (set(s.train.groups), set(s.val.groups), set(s.test.groups)) == (tr, va, te)
        assert config_split(s.train.groups + s.val.groups + s.test.groups, cfg) == (tr, va, te)
        assert (len(s.train), len(s.val), len(s.test)) == (4 * len(tr), 4, 12)  # 9 in 3 folds; val round(6/8) = 1
        d = describe(cfg)
        assert (d["n_train"], d["n_val"], d["n_test"]) == (len(s.train), len(s.val), len(s.test))
        parts = [load_part(cfg, "test", i, 2) for i in range(2)]
        assert parts[0].sources + parts[1].sources == s.test.sources
        np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), s.test.images)
        tested += s.test.groups
    assert sorted(set(tested)) == [f"synth{p:03d}" for p in range(9)] and len(tested) == 36
    # without folds, the usual 70/10/20 split is unchanged
    plain = load_splits(_synth(drop_empty=False))
    assert len(set(plain.test.groups)) == 2 and len(set(plain.val.groups)) == 1
    assert dataclasses.replace(_synth(), folds=None).folds is None
