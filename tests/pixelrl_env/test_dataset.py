from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrl_env.data_config import DataConfig
from pixelrl_env.dataset import load_splits
from pixelrl_env.folds import split_groups
from pixelrl_env.io import DataError
from pixelrl_env.prepare import normalize_image, prepare_image, resize_mask
from tests.conftest import assert_patient_split, lgg_on_disk, need_shared


def test_split_groups_70_10_20_deterministic_disjoint():
    groups = [f"p{i:02d}" for i in range(20)]
    tr, va, te = split_groups(groups, (0.7, 0.1, 0.2), seed=3)
    assert (len(tr), len(va), len(te)) == (14, 2, 4)
    assert not (tr & va or tr & te or va & te) and tr | va | te == set(groups)
    assert split_groups(groups, (0.7, 0.1, 0.2), seed=3) == (tr, va, te)
    assert split_groups(groups, (0.7, 0.1, 0.2), seed=4) != (tr, va, te)
    # few groups: each positive fraction still gets one
    assert tuple(map(len, split_groups(["a", "b", "c"], (0.7, 0.1, 0.2), 0))) == (1, 1, 1)
    with pytest.raises(DataError, match="too few"):
        split_groups(["a", "b"], (0.2, 0.4, 0.4), 0)


def _synth(**kw) -> DataConfig:
    base = dict(format="synthetic", size=32, synthetic={"n_patients": 10, "slices_per_patient": 6, "size": 48})
    base.update(kw)
    return DataConfig(**base)


def test_splits_never_share_a_patient_and_drop_empty():
    s = load_splits(_synth())
    assert not set(s.train.groups) & set(s.val.groups) and not set(s.val.groups) & set(s.test.groups)
    assert s.train.images.shape[1:] == (3, 32, 32) and s.train.images.dtype == np.float32
    assert s.train.masks.dtype == np.uint8 and all(m.any() for m in s.train.masks)
    kept = load_splits(_synth(drop_empty=False))
    assert len(kept.train) + len(kept.val) + len(kept.test) == 60 == kept.n_read
    assert any(not m.any() for m in kept.train.masks)
    assert len(s.train) + len(s.val) + len(s.test) < 60


def test_k_shot_channels_and_normalisation():
    s = load_splits(_synth(k_shot=5, channels=[1], normalize="minmax"))
    assert len(s.train) == 5 and s.train.images.shape[1] == 1
    full = load_splits(_synth(channels=[1]))
    assert set(s.train.sources) <= set(full.train.sources)
    assert s.train.images.min() >= 0.0 and s.train.images.max() <= 1.0
    z = load_splits(_synth(normalize="zscore")).train.images
    np.testing.assert_allclose(z.mean(axis=(2, 3)), 0.0, atol=1e-4)
    with pytest.raises(DataError, match=r"k_shot=999 but the training split has only"):
        load_splits(_synth(k_shot=999))
    with pytest.raises(DataError, match=r"data.channels \[5\] out of range .* 3 channel"):
        load_splits(_synth(channels=[5]))
    with pytest.raises(DataError, match="data.normalize 'l2' unknown"):
        load_splits(_synth(normalize="l2"))
    with pytest.raises(DataError, match="summing to 1"):
        load_splits(_synth(split=(0.5, 0.2, 0.2)))


def test_resize_image_bilinear_mask_by_area():
    img = np.zeros((8, 8, 1), np.uint8)
    img[:, 4:] = 200
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 1
    out = prepare_image(img, DataConfig(format="synthetic", size=4, normalize="none"))  # (C, S, S), / 255
    out = out.transpose(1, 2, 0) * 255
    m = resize_mask(mask, (4, 4))
    assert out.shape == (4, 4, 1) and m.shape == (4, 4)
    # antialiased bilinear: the outer columns keep their values, the inner ones blend symmetrically
    np.testing.assert_allclose(out[:, 0, 0], 0, atol=1e-3)
    np.testing.assert_allclose(out[:, 3, 0], 200, atol=1e-3)
    np.testing.assert_allclose(out[:, 1, 0] + out[:, 2, 0], 200, atol=1e-3)
    assert 0 < out[0, 1, 0] < 100
    np.testing.assert_array_equal(m, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])


def test_normalize_minmax_uses_percentiles():
    img = np.linspace(0, 100, 101, dtype=np.float32).reshape(101, 1, 1)
    out = normalize_image(img, "minmax", 255.0)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[50, 0, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(normalize_image(img, "none", 255.0).max(), 100 / 255)


def test_native_size_requires_equal_sizes(tmp_path: Path):
    for name, side in (("a", 16), ("b", 20), ("c", 16), ("d", 16)):
        for sub in ("images", "masks"):
            (tmp_path / sub).mkdir(exist_ok=True)
        Image.fromarray(np.full((side, side), 9, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        m = np.zeros((side, side), np.uint8)
        m[2:5, 2:5] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"{name}.png")
    with pytest.raises(DataError, match=r"is 20x20 but earlier slices are 16x16; set data.size"):
        load_splits(DataConfig(format="folder", path=str(tmp_path), size=None, split=(1.0, 0.0, 0.0)))
    s = load_splits(DataConfig(format="folder", path=str(tmp_path), size=12, split=(1.0, 0.0, 0.0)))
    assert s.train.images.shape == (4, 1, 12, 12)


def test_real_lgg_patient_split_flair_only():
    root = need_shared("lgg_kaggle_3m")
    disk = lgg_on_disk(root)
    patients = set(disk["patients"])
    cfg = DataConfig(format="lgg", path=str(root), size=128, channels=[1], seed=0, drop_empty=False)
    every = load_splits(cfg)
    assert every.n_read == disk["pairs"] and len(every.train) + len(every.val) + len(every.test) == disk["pairs"]
    split = tuple(set(a.groups) for a in (every.train, every.val, every.test))
    assert_patient_split(*split, patients)
    # only slices with foreground (at 128x128: a lesion can vanish when halved, one holding a 5x5 block cannot)
    s = load_splits(dataclasses.replace(cfg, drop_empty=True))
    n_fg = len(s.train) + len(s.val) + len(s.test)
    assert disk["solid"] <= n_fg <= disk["foreground"], (disk, n_fg)
    assert s.summary()["n_read"] == disk["pairs"]
    for part, full in zip((s.train, s.val, s.test), (every.train, every.val, every.test)):
        assert set(part.sources) <= set(full.sources) and all(m.any() for m in part.masks)
        assert len(part) == int(full.masks.any(axis=(1, 2)).sum())
    assert s.train.images.shape[1:] == (1, 128, 128)
    again = load_splits(cfg)  # deterministic for a seed
    assert [again.train.sources, again.val.sources, again.test.sources] == \
        [every.train.sources, every.val.sources, every.test.sources]
