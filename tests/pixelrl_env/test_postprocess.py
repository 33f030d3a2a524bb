"""Post-processing (:mod:`pixelrl_env.postprocess`) on hand-made masks with hand-computed results, and its use by
``evaluate_checkpoint(postprocess="auto")``, which must choose on the validation split only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rl_agents.experiment.evaluate as E
from pixelrl_env.metrics import dice
from pixelrl_env.postprocess import (
    DEFAULT_CANDIDATES,
    Rule,
    apply_rule,
    choose_rule,
    drop_small,
    keep_largest,
    parse_rule,
)
from pixelrl_env.prepare import resize_mask
from rl_agents.algo.agent import PA3CAgent
from rl_agents.cli import main
from rl_agents.config import load_config
from rl_agents.experiment.checkpoint import make_payload, write_checkpoint
from tests.conftest import write_lgg_layout

ROOT = Path(__file__).resolve().parents[2]


def _mask(size: tuple[int, int], *pixels: tuple[int, int], dtype=np.uint8) -> np.ndarray:
    m = np.zeros(size, dtype)
    for r, c in pixels:
        m[r, c] = 1
    return m


BLOB = [(1, 1), (1, 2), (2, 1), (2, 2)]  # a 2x2 blob: 4 pixels
ISLAND = [(5, 5)]  # 1 pixel, far from the blob


def test_keep_largest_keeps_the_blob_and_drops_the_island():
    m = _mask((6, 6), *BLOB, *ISLAND)
    out = keep_largest(m)
    np.testing.assert_array_equal(out, _mask((6, 6), *BLOB))
    assert out.dtype == np.uint8 and m.sum() == 5  # input untouched
    out_b = keep_largest(m.astype(bool))
    assert out_b.dtype == bool and out_b.sum() == 4


def test_diagonal_neighbours_are_connected():
    # a 3-pixel diagonal chain and a 2-pixel vertical bar: under 8-connectivity the chain is one component of 3
    # (under 4-connectivity it would be three single pixels and the bar would win)
    chain, bar = [(0, 0), (1, 1), (2, 2)], [(0, 4), (1, 4)]
    m = _mask((5, 5), *chain, *bar)
    np.testing.assert_array_equal(keep_largest(m), _mask((5, 5), *chain))
    np.testing.assert_array_equal(drop_small(m, 3), _mask((5, 5), *chain))
    np.testing.assert_array_equal(drop_small(m, 2), m)  # the bar has exactly 2 pixels: kept


def test_empty_and_all_foreground_masks():
    empty = np.zeros((4, 7), np.uint8)
    for out in (keep_largest(empty), drop_small(empty, 5)):
        assert out.shape == (4, 7) and out.dtype == np.uint8 and not out.any()
    full = np.ones((4, 7), bool)
    np.testing.assert_array_equal(keep_largest(full), full)
    np.testing.assert_array_equal(drop_small(full, 28), full)  # exactly 28 pixels: kept
    assert not drop_small(full, 29).any()  # one component, too small: the mask empties


def test_ties_keep_the_component_met_first_in_raster_order():
    # two 2x2 blobs: one lower-left (rows 3-4), one upper-right (rows 0-1); the upper one starts first in a raster scan
    upper, lower = [(0, 4), (0, 5), (1, 4), (1, 5)], [(3, 0), (3, 1), (4, 0), (4, 1)]
    np.testing.assert_array_equal(keep_largest(_mask((6, 6), *upper, *lower)), _mask((6, 6), *upper))
    # same first row: the leftmost wins
    left, right = [(2, 0), (3, 0)], [(2, 3), (3, 3)]
    np.testing.assert_array_equal(keep_largest(_mask((6, 6), *left, *right)), _mask((6, 6), *left))


def test_drop_small_thresholds_at_the_boundary():
    m = _mask((6, 6), *BLOB, *ISLAND)
    for n in (-3, 0, 1):  # min_pixels <= 1: unchanged
        np.testing.assert_array_equal(drop_small(m, n), m)
    np.testing.assert_array_equal(drop_small(m, 2), _mask((6, 6), *BLOB))  # island (1 px) < 2: dropped
    np.testing.assert_array_equal(drop_small(m, 4), _mask((6, 6), *BLOB))  # blob of exactly 4: kept
    assert not drop_small(m, 5).any()  # blob of 4 < 5: dropped too


def test_masks_must_be_2d_and_binary():
    with pytest.raises(ValueError, match=r"2-D \(H, W\) mask, got shape \(2, 3, 3\)"):
        keep_largest(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"binary .* values such as \[2\]"):
        drop_small(np.full((3, 3), 2), 2)


def test_parse_rule_specs_and_errors():
    assert parse_rule("none") == Rule("none") and parse_rule("largest") == Rule("largest")
    assert parse_rule(" Min:25 ") == Rule("min", 25) and parse_rule("min:007").spec == "min:7"
    assert parse_rule(Rule("min", 3)) == Rule("min", 3)
    assert [parse_rule(s).spec for s in DEFAULT_CANDIDATES] == list(DEFAULT_CANDIDATES)
    for bad in ("min:0", "min:", "min:2.5", "min:-3", "biggest", "auto", "", 5):
        with pytest.raises(ValueError) as e:
            parse_rule(bad)
        msg = str(e.value)
        assert msg == f"post-processing rule must be 'none', 'largest' or 'min:N' (N an integer >= 1), got {bad!r}"
        assert "\n" not in msg


def test_apply_rule_over_a_batch_and_a_list_of_sizes():
    a = _mask((6, 6), *BLOB, *ISLAND)
    b = _mask((6, 6), (0, 0), (4, 4), (4, 5), (5, 4))  # 1 + 3 pixels
    out = apply_rule(np.stack([a, b]), "largest")
    assert isinstance(out, np.ndarray) and out.shape == (2, 6, 6) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], _mask((6, 6), *BLOB))
    np.testing.assert_array_equal(out[1], _mask((6, 6), (4, 4), (4, 5), (5, 4)))
    np.testing.assert_array_equal(apply_rule(np.stack([a, b]), "none"), np.stack([a, b]))
    c = _mask((3, 8), (0, 0), (2, 7), (2, 6))  # native slices may differ in size
    out_l = apply_rule([a, c], "min:2")
    assert isinstance(out_l, list) and [o.shape for o in out_l] == [(6, 6), (3, 8)]
    np.testing.assert_array_equal(out_l[1], _mask((3, 8), (2, 7), (2, 6)))
    with pytest.raises(ValueError, match=r"\(N, H, W\) .* got shape \(6, 6\)"):
        apply_rule(a, "largest")


def test_choose_rule_keeps_none_when_nothing_improves():
    # the truth has a 4-pixel blob and a true 1-pixel island; the prediction is exact
    gt = _mask((6, 6), *BLOB, *ISLAND)
    choice = choose_rule([gt.copy()], [gt], candidates=("none", "largest", "min:2", "min:10"))
    # largest and min:2 lose the island: Dice 2*4 / (4 + 5) = 8/9; min:10 empties the mask: 0
    assert choice.rule == Rule("none") and choice.n_images == 1
    assert choice.dice == pytest.approx({"none": 1.0, "largest": 8 / 9, "min:2": 8 / 9, "min:10": 0.0}, abs=1e-12)
    # equal Dice is no improvement: "none" stays (nnU-Net's rule needs a strict rise)
    one = _mask((6, 6), *BLOB)
    tie = choose_rule([one], [one], candidates=("largest", "min:2", "min:4"))  # none of them changes the blob
    assert tie.rule == Rule("none") and tie.dice == {"none": 1.0, "largest": 1.0, "min:2": 1.0, "min:4": 1.0}


def test_choose_rule_picks_largest_when_islands_hurt():
    gt = _mask((6, 6), *BLOB)
    preds = [_mask((6, 6), *BLOB, *ISLAND),                       # tp 4, pred 5: 8/9; without the island: 1
             _mask((6, 6), (1, 1), (1, 2), (2, 1), *ISLAND),      # tp 3, pred 4: 6/8; without the island: 6/7
             _mask((6, 6), (0, 5))]                               # truth empty: not in the mean
    gts = [gt, gt, np.zeros((6, 6), np.uint8)]
    choice = choose_rule(preds, gts, candidates=("none", "largest", "min:2", "min:4"))
    # min:4 also drops the 3-pixel blob of the second slice: (1 + 0) / 2
    expect = {"none": (8 / 9 + 6 / 8) / 2, "largest": (1 + 6 / 7) / 2, "min:2": (1 + 6 / 7) / 2, "min:4": 0.5}
    assert choice.dice == pytest.approx(expect, abs=1e-12)
    assert choice.rule == Rule("largest")  # tied with min:2: the first candidate wins
    assert choice.n_images == 2
    # "none" is scored even when not a candidate
    only = choose_rule(preds, gts, candidates=("min:2",))
    assert list(only.dice) == ["none", "min:2"] and only.rule == Rule("min", 2)


def test_choose_rule_errors():
    gt = _mask((6, 6), *BLOB)
    with pytest.raises(ValueError, match="got 2 predictions and 1 truths"):
        choose_rule([gt, gt], [gt])
    with pytest.raises(ValueError, match="no slice with foreground among the 1 validation truths"):
        choose_rule([gt], [np.zeros((6, 6))])
    with pytest.raises(ValueError, match="got 'min:x'"):
        choose_rule([gt], [gt], candidates=("none", "min:x"))


# --- evaluate_checkpoint(postprocess=...) -----------------------------------------------------------------------

def _checkpoint(tmp_path: Path, src: Path) -> Path:
    cfg = load_config(ROOT / "tune_configs" / "smoke.yaml",
                      ["num_workers=0", "data.format=lgg", f"data.path={src}", "data.size=32"])
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, make_payload("local", cfg, PA3CAgent(cfg, in_channels=3, n_train=1).state_dict(),
                                        {"update": 0}))
    return path


def _blob(size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1  # covers every truth disc's centre
    return m


def _blob_and_island(size: int) -> np.ndarray:
    m = _blob(size)
    m[:2, :2] = 1  # a stray island in the corner, where no truth disc reaches
    return m


def test_evaluate_auto_chooses_on_val_and_reports_both_rows(tmp_path: Path, monkeypatch):
    src = write_lgg_layout(tmp_path / "lgg", patients=3, slices=4, size=48, seed=5)
    ckpt = _checkpoint(tmp_path, src)

    def fake_predict(model, cfg, images, device):  # a model that paints a blob and a stray island on every slice
        n, s = len(images), images.shape[-1]
        return np.repeat(_blob_and_island(s)[None], n, 0), np.zeros((n, s, s), np.float32)

    monkeypatch.setattr(E, "predict", fake_predict)
    seen, chose_on = [], []
    native, choose = E._native_masks, E.choose_rule
    monkeypatch.setattr(E, "_native_masks", lambda m, c, ss, *a: seen.append([s.group for s in ss]) or native(m, c, ss, *a))
    monkeypatch.setattr(E, "choose_rule", lambda p, g, **kw: chose_on.append(g) or choose(p, g, **kw))

    val_patients = set(E.evaluate_checkpoint(ckpt, split="val")["volumes"]["per_volume_dice"])
    plain = E.evaluate_checkpoint(ckpt, split="test")
    test_patients = set(plain["volumes"]["per_volume_dice"])
    assert len(val_patients) == len(test_patients) == 1 and val_patients != test_patients
    assert "raw" not in plain and plain["postprocess"] == {
        "rule": "none", "chosen_by": "given", "applied_at": "native resolution, after the mask is resized back"}
    seen.clear()

    res = E.evaluate_checkpoint(ckpt, split="test", postprocess="auto", json_out=tmp_path / "pp.json")
    # predictions were made for the validation patients first, then the test patients; the rule saw val truths only
    assert [set(g) for g in seen] == [val_patients, test_patients] and len(seen[0]) == 4
    (val_dir,) = [d for d in sorted(src.iterdir()) if d.name in val_patients]
    val_truth = [np.asarray(Image.open(p)) > 0 for p in sorted(val_dir.glob("*_mask.tif"))]
    assert len(chose_on) == 1 and len(chose_on[0]) == len(val_truth)
    for got, want in zip(chose_on[0], val_truth):
        np.testing.assert_array_equal(got.astype(bool), want)

    # Dice by hand at native size (48 px): the blob with and without its island, over slices with foreground
    raw48, clean48 = resize_mask(_blob_and_island(32), (48, 48)), resize_mask(_blob(32), (48, 48))
    assert 0 < raw48.sum() - clean48.sum() < 10  # the island survives the resize, as a few pixels
    by_hand = lambda pred, truth: np.mean([dice(pred, t) for t in truth if t.any()])  # noqa: E731
    (test_dir,) = [d for d in sorted(src.iterdir()) if d.name in test_patients]
    test_truth = [np.asarray(Image.open(p)) > 0 for p in sorted(test_dir.glob("*_mask.tif"))]
    pp = res["postprocess"]
    assert pp["rule"] == "largest" and pp["chosen_by"] == "auto" and pp["chosen_on"] == "val"
    assert pp["n_validation_images"] == 3 and list(pp["validation_dice"]) == list(DEFAULT_CANDIDATES)
    assert pp["validation_dice"]["none"] == pytest.approx(by_hand(raw48, val_truth), abs=1e-12)
    assert pp["validation_dice"]["largest"] == pytest.approx(by_hand(clean48, val_truth), abs=1e-12)
    assert pp["validation_dice"]["largest"] > pp["validation_dice"]["none"]
    assert res["dice"] == pytest.approx(by_hand(clean48, test_truth), abs=1e-12)
    assert res["raw"]["dice"] == pytest.approx(by_hand(raw48, test_truth), abs=1e-12) == plain["dice"]
    for k in ("all_slices", "volumes", "empty_slices"):  # the raw row is the un-post-processed evaluation
        assert res["raw"][k] == plain[k], k
    assert json.loads((tmp_path / "pp.json").read_text())["postprocess"] == pp
    rows = list(csv.DictReader(open(tmp_path / "pp.csv")))
    assert all(int(r["raw_pred_pixels"]) - int(r["pred_pixels"]) == raw48.sum() - clean48.sum() for r in rows)

    seen.clear()  # on the validation split itself, its predictions are made once and reused
    res_val = E.evaluate_checkpoint(ckpt, split="val", postprocess="auto")
    assert len(seen) == 1 and res_val["postprocess"]["validation_dice"] == pp["validation_dice"]
    assert res_val["dice"] == pytest.approx(pp["validation_dice"]["largest"], abs=1e-12)


def test_cli_bad_postprocess_is_one_line_and_exit_2(tmp_path: Path, capsys):
    # checked before the checkpoint is read: the missing file is never reached
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--postprocess", "min:0"]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "postprocess must be 'auto', 'none', 'largest' or 'min:N' (N an integer >= 1), got 'min:0'" in err
    assert "Traceback" not in err and "none.pt" not in err
