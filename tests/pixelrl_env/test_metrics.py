from __future__ import annotations

import warnings

import monai.metrics as mm
import numpy as np
import pytest
import torch
from monai.metrics import get_confusion_matrix
from scipy import ndimage

from pixelrl_env import metrics as M


def _random_masks(seed: int, n: int = 12, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of non-empty masks: smooth blobs (like lesions) and salt-and-pepper noise (many surfaces)."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n):
        if i % 3 == 2:
            p, g = rng.random((size, size)) > 0.6, rng.random((size, size)) > 0.6
        else:
            base = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4)
            p = base > np.quantile(base, 0.7)
            g = ndimage.gaussian_filter(base + 0.3 * rng.standard_normal((size, size)), 1) > np.quantile(base, 0.72)
        preds.append(p)
        gts.append(g)
    return np.stack(preds), np.stack(gts)


def _monai(fn_name: str, p: np.ndarray, g: np.ndarray, **kw) -> np.ndarray:
    fn = getattr(mm, fn_name)
    yp = torch.as_tensor(p[:, None].astype(np.float32))
    y = torch.as_tensor(g[:, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(yp, y, include_background=True, **kw)[:, 0].double().numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_monai(seed):
    p, g = _random_masks(seed)
    np.testing.assert_allclose(M.dice(p, g), _monai("compute_dice", p, g), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_and_assd_match_monai(seed):
    p, g = _random_masks(seed)
    np.testing.assert_allclose(M.hd95(p, g), _monai("compute_hausdorff_distance", p, g, percentile=95), atol=1e-3)
    np.testing.assert_allclose(
        M.assd(p, g), _monai("compute_average_surface_distance", p, g, symmetric=True), atol=1e-3
    )


def test_iou_ppv_sensitivity_match_monai_confusion_matrix():
    p, g = _random_masks(3)
    cm = get_confusion_matrix(torch.as_tensor(p[:, None]).float(), torch.as_tensor(g[:, None]).float())[:, 0].numpy()
    tp, fp, tn, fn = cm.T
    np.testing.assert_allclose(M.iou(p, g), tp / (tp + fp + fn), atol=1e-6)
    np.testing.assert_allclose(M.ppv(p, g), tp / (tp + fp), atol=1e-6)
    np.testing.assert_allclose(M.sensitivity(p, g), tp / (tp + fn), atol=1e-6)


def _square(r0, r1, c0, c1, size=10):
    m = np.zeros((size, size), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def test_boundary_iou_hand_computed():
    # 10x10 image: band width d = max(1, round(0.02 * 14.14)) = 1, so each 5x5 square's band is its 16-pixel ring.
    pred, gt = _square(2, 7, 2, 7), _square(2, 7, 3, 8)
    # the rings share the top and bottom rows at columns 3..6: 8 pixels; union 16 + 16 - 8 = 24
    assert M.boundary_iou(pred, gt) == pytest.approx(8 / 24)
    assert M.iou(pred, gt) == pytest.approx(20 / 30)
    assert M.dice(pred, gt) == pytest.approx(40 / 50)
    # foreground touching the image border is boundary there (outside counts as background)
    full = np.ones((4, 4), np.uint8)
    assert M.boundary_iou(full, full) == 1.0
    np.testing.assert_array_equal(M.boundary_band(full.astype(bool), 1), np.pad(np.zeros((2, 2)), 1, constant_values=1))
    # a wider band (ratio 0.2 of the diagonal, d = 3) covers both squares entirely: BIoU = IoU
    assert M.boundary_iou(pred, gt, dilation_ratio=0.2) == pytest.approx(20 / 30)


def test_hand_made_distances():
    pred, gt = _square(2, 7, 2, 7), _square(2, 7, 4, 9)  # shifted by 2 columns
    # pred's edge: 16 pixels; distances to gt's edge: columns 4..6 of the top/bottom rows lie on it (0),
    # the rest are 1 or 2 away; the 95th percentile of each direction is 2
    assert M.hd95(pred, gt) == pytest.approx(2.0)
    assert M.hd95(pred, pred) == 0.0
    assert M.hd95(pred, gt, spacing=(1.0, 0.5)) == pytest.approx(1.0)


def test_empty_mask_conventions():
    e, f = np.zeros((8, 8), np.uint8), _square(2, 5, 2, 5, size=8)
    diag = float(np.hypot(8, 8))
    for fn in (M.dice, M.iou, M.ppv, M.sensitivity, M.boundary_iou):
        assert fn(e, e) == 1.0, fn.__name__
        assert fn(e, f) == 0.0 and fn(f, e) == 0.0, fn.__name__
    for fn in (M.hd95, M.assd):
        assert fn(e, e) == 0.0
        assert fn(e, f) == diag and fn(f, e) == diag


def test_batch_shapes_types_and_errors():
    p, g = _random_masks(4, n=3, size=16)
    out = M.dice(p, g)
    assert isinstance(out, np.ndarray) and out.shape == (3,) and out.dtype == np.float64
    assert isinstance(M.dice(p[0], g[0]), float)
    np.testing.assert_allclose(M.dice(torch.as_tensor(p), torch.as_tensor(g.astype(np.float32))), out)
    all_m = M.compute_all(p, g)
    assert set(all_m) == {"dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd"}
    assert all(v.shape == (3,) for v in all_m.values())
    with pytest.raises(ValueError, match=r"same shape, got \(3, 16, 16\) and \(2, 16, 16\)"):
        M.dice(p, g[:2])
    with pytest.raises(ValueError, match=r"pred must be binary .* values such as \[2\]"):
        M.dice(p.astype(int) * 2, g)
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(B, H, W\) masks, got shape \(16,\)"):
        M.iou(p[0, 0], g[0, 0])
