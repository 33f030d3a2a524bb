"""Calibration measures, hand-computed on a few pixels, with their stated edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrl_env.calibration import brier, error_auroc, error_by_uncertainty, expected_calibration_error, reliability


def test_ece_and_brier_by_hand():
    prob, truth = np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1])
    bins = reliability(prob, truth, n_bins=10)
    assert bins[1] == {"lo": 0.1, "hi": 0.2, "count": 2, "mean_prob": pytest.approx(0.1), "foreground_rate": 0.5}
    assert bins[9]["count"] == 2 and bins[9]["foreground_rate"] == 1.0
    assert bins[0] == {"lo": 0.0, "hi": 0.1, "count": 0, "mean_prob": None, "foreground_rate": None}
    assert expected_calibration_error(prob, truth, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert brier(prob, truth) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    assert reliability(np.array([1.0]), np.array([1]), n_bins=4)[3]["count"] == 1  # 1.0 falls in the last bin
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0


def test_error_auroc_by_hand_with_a_tie():
    # errors at 0.9 and 0.5, correct pixels at 0.1 and 0.5: pairs 1 + 1 + 1 + 0.5 (the tie) of 4
    assert error_auroc([0.9, 0.1, 0.5, 0.5], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert error_auroc([0.2, 0.3], [1, 0]) == 0.0 and error_auroc([0.2, 0.3], [0, 1]) == 1.0
    assert error_auroc([0.2, 0.3], [1, 1]) is None and error_auroc([0.2, 0.3], [0, 0]) is None


def test_error_by_uncertainty_puts_errors_first():
    u, e = np.arange(10, dtype=float), np.array([0] * 8 + [1, 1])  # the two most uncertain pixels are the errors
    curve = error_by_uncertainty(u, e, fractions=(0.2, 0.5))
    assert curve == [{"top_fraction": 0.2, "error_rate": 1.0, "share_of_errors": 1.0},
                     {"top_fraction": 0.5, "error_rate": 0.4, "share_of_errors": 1.0}]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no pixels"):
        brier([], [])
    with pytest.raises(ValueError, match=r"prob must lie in \[0, 1\]"):
        brier([1.5], [1])
    with pytest.raises(ValueError, match="one value per pixel"):
        reliability([0.5, 0.5], [1])
