"""Corruptions for the robustness benchmark (pixelrl_env/corrupt.py): each checked against what it should do."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrl_env.corrupt import KINDS, LEVELS, corrupt


def _images(seed=0):
    rng = np.random.default_rng(seed)
    x = np.zeros((4, 1, 64, 64), np.float32)
    x[:, :, 16:48, 16:48] = 1.0
    return x + 0.01 * rng.random(x.shape, dtype=np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_level_zero_is_the_identity_and_levels_are_valid(kind):
    x = _images()
    np.testing.assert_array_equal(corrupt(x, kind, 0, np.random.default_rng(0)), x)
    for level in LEVELS[kind]:
        y = corrupt(x, kind, level, np.random.default_rng(0))
        assert y.shape == x.shape and y.dtype == np.float32 and not np.array_equal(x, y)


def test_noise_has_the_stated_size_and_rician_is_biased_upwards():
    x = np.zeros((2, 1, 128, 128), np.float32)
    x[:, :, :, 64:] = 1.0  # range (1st..99th percentile) = 1
    g = corrupt(x, "gaussian", 0.1, np.random.default_rng(0)) - x
    assert g.std() == pytest.approx(0.1, rel=0.02) and abs(g.mean()) < 0.005
    r = corrupt(x, "rician", 0.1, np.random.default_rng(0))
    background = r[:, :, :, :64]  # Rician on a zero signal: Rayleigh, mean sd * sqrt(pi / 2)
    assert background.mean() == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.03) and background.min() >= 0


def test_contrast_bias_and_resolution():
    x = _images()
    c = corrupt(x, "contrast", 0.75, np.random.default_rng(0))
    np.testing.assert_allclose(c.std(axis=(-2, -1)), 0.25 * x.std(axis=(-2, -1)), rtol=1e-4)
    np.testing.assert_allclose(c.mean(axis=(-2, -1)), x.mean(axis=(-2, -1)), atol=1e-5)
    b = corrupt(x, "bias_field", 0.4, np.random.default_rng(0)) / np.where(x > 0, x, 1)
    assert b.min() >= 0.6 - 1e-5 and b.max() <= 1.4 + 1e-5 and b.max() - b.min() > 0.2
    low = corrupt(x, "resolution", 4, np.random.default_rng(0))
    edge = lambda im: np.abs(np.diff(im, axis=-1)).max()  # noqa: E731
    assert edge(low) < 0.6 * edge(x)  # a sharp edge is smeared over several pixels
    with pytest.raises(ValueError, match="corruption kind must be one of"):
        corrupt(x, "blur", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="level 1.0 out of range for contrast"):
        corrupt(x, "contrast", 1.0, np.random.default_rng(0))
