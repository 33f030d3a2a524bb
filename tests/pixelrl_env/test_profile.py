"""The "unlike the training data" check: a profile of synthetic MRI slices, its threshold from validation slices,
and images of other modalities made here (a colour photo-like gradient scene, speckled ultrasound-like noise)."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrl_env.data_config import DataConfig
from pixelrl_env.io import Sample
from pixelrl_env.prepare import prepare_rows
from pixelrl_env.profile import build_profile, distances, histograms, training_profile, unlike
from pixelrl_env.synthetic import synthetic_slice
from tests.conftest import photo, speckle

DATA = DataConfig(format="synthetic", size=32)


def _prepared(images: list[np.ndarray]) -> np.ndarray:
    samples = [Sample(im, np.zeros(im.shape[:2], np.uint8), f"g{k}", f"s{k}") for k, im in enumerate(images)]
    return prepare_rows(samples, range(len(samples)), DATA)


def _mri(seed: int, n: int) -> np.ndarray:
    return _prepared([synthetic_slice(seed, p, s, 4, 32)[0] for p in range(n // 4) for s in range(4)])


def test_histograms_by_hand():
    x = np.array([[[[0.0, 0.5], [1.0, 1.0]]]])  # one slice, one channel, between 0 and 1, 2 bins
    h = histograms(x, [0.0], [1.0], bins=2)
    np.testing.assert_allclose(h[0, :2], [0.25, 0.75])  # 0 | 0.5, 1, 1 (the top value counts in the end bin)
    # one gradient, from the top-left pixel: (1.0 down, 0.5 across) -> 1.12, beyond half the range: the top bin
    np.testing.assert_allclose(h[0, 2:], [0.0, 1.0])


def test_familiar_slices_pass_and_other_modalities_are_flagged():
    rng = np.random.default_rng(0)
    prof = build_profile(_mri(0, 64), _mri(1, 32), {"format": "synthetic"})
    assert prof["channels"] == 3 and prof["n_train"] == 64 and prof["n_val"] == 32
    own = distances(prof, _mri(2, 64))  # other synthetic patients: never seen
    assert np.mean(own > prof["threshold"]) <= 0.05
    for make in (photo, speckle):
        other = distances(prof, _prepared([make(rng) for _ in range(8)]))
        assert (other > prof["threshold"]).all(), (make.__name__, other, prof["threshold"])
    assert unlike(prof, _prepared([photo(rng)]))["flagged"] is True
    assert unlike(prof, _mri(3, 4))["flagged"] is False
    assert unlike(None, _mri(3, 4)) is None  # a checkpoint from before profiles: not checked


def test_a_profile_without_a_validation_split_uses_the_training_spread():
    prof = build_profile(_mri(0, 32), np.zeros((0, 3, 32, 32), np.float32), {})
    assert "training" in prof["threshold_rule"] and prof["threshold"] > 0
    with pytest.raises(ValueError, match="no training slices"):
        build_profile(np.zeros((0, 3, 32, 32), np.float32), np.zeros((0, 3, 32, 32), np.float32), {})


def test_a_training_profile_reads_a_spread_of_the_splits():
    data = DataConfig(format="synthetic", size=32, synthetic={"n_patients": 10, "slices_per_patient": 4, "size": 32})
    prof = training_profile(data, {"format": "synthetic"})
    assert prof["n_train"] > 0 and prof["n_val"] > 0 and len(prof["reference"]) == prof["n_train"]
