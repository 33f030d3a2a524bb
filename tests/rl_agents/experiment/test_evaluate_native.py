"""Evaluation at native resolution against values computed by hand.

A checkpoint whose policy is constant (the last layer's weights zeroed, its bias picking one action everywhere) gives
a known prediction at the model's 32 px: all foreground ("keep" from the all-foreground start) or all background. Its
native 48 px mask is then known too, and each slice's scores follow from the ground truth's foreground count ``k``
out of ``N = 48 * 48`` pixels: Dice ``2k / (k + N)``, IoU and PPV ``k / N``, sensitivity 1 (all foreground); Dice,
IoU, sensitivity 0 and PPV 0 (all background, by the empty-prediction convention), and 1 on slices with no foreground.
Whole volumes follow the same way: a patient's Dice is ``2 sum(k) / (sum(k) + slices * N)`` (all foreground) or 0
(all background), and every slice with an empty truth is a false positive (all foreground) or none is.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelrl_env.env import KEEP, SET_BACKGROUND
from rl_agents.algo.agent import PA3CAgent
from rl_agents.config import load_config
from rl_agents.experiment.checkpoint import make_payload, write_checkpoint
from rl_agents.experiment.evaluate import evaluate_checkpoint
from tests.conftest import write_lgg_layout

ROOT = Path(__file__).resolve().parents[3]


def _constant_policy_checkpoint(tmp_path: Path, src: Path, action: int) -> Path:
    cfg = load_config(ROOT / "tune_configs" / "smoke.yaml",
                      ["num_workers=0", "data.format=lgg", f"data.path={src}", "data.size=32"])
    agent = PA3CAgent(cfg, in_channels=3, n_train=1)
    last = agent.model.policy_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-20.0)
        last.bias[action] = 20.0
    path = tmp_path / f"const{action}.pt"
    write_checkpoint(path, make_payload("local", cfg, agent.state_dict(), {"update": 0}))
    return path


def _truth(src: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) > 0 for p in sorted(src.rglob("*_mask.tif"))]


def _truth_by_patient(src: Path) -> dict[str, list[np.ndarray]]:
    return {d.name: _truth(d) for d in sorted(src.iterdir())}


@pytest.mark.parametrize("action", [KEEP, SET_BACKGROUND])
def test_constant_policy_scores_match_hand_computed_values(tmp_path: Path, action: int):
    src = write_lgg_layout(tmp_path / "lgg", patients=3, slices=4, size=48, seed=5)
    masks = _truth(src)
    n = 48 * 48
    fg = [int(m.sum()) for m in masks if m.any()]
    n_empty = sum(not m.any() for m in masks)
    assert len(fg) == 9 and n_empty == 3  # the layout's first slice of each patient is empty
    res = evaluate_checkpoint(_constant_policy_checkpoint(tmp_path, src, action), split="all",
                              json_out=tmp_path / "e.json")
    if action == KEEP:  # all foreground at native size
        expect = {"dice": np.mean([2 * k / (k + n) for k in fg]), "iou": np.mean([k / n for k in fg]),
                  "ppv": np.mean([k / n for k in fg]), "sensitivity": 1.0}
        expect_all_dice = sum(2 * k / (k + n) for k in fg) / len(masks)  # one empty mask: Dice 0
    else:  # all background: 0 on slices with foreground, 1 where both are empty
        expect = {"dice": 0.0, "iou": 0.0, "ppv": 0.0, "sensitivity": 0.0}
        expect_all_dice = n_empty / len(masks)
    for k, v in expect.items():
        assert res[k] == pytest.approx(v, abs=1e-9), k
    assert res["n_images"] == 9 and res["all_slices"]["n_images"] == 12
    assert res["all_slices"]["dice"] == pytest.approx(expect_all_dice, abs=1e-9)
    by_patient = _truth_by_patient(src)
    if action == KEEP:
        expect_vol = {p: 2 * sum(int(m.sum()) for m in ms) / (sum(int(m.sum()) for m in ms) + len(ms) * n)
                      for p, ms in by_patient.items()}
    else:
        expect_vol = dict.fromkeys(by_patient, 0.0)
    assert res["volumes"]["per_volume_dice"] == pytest.approx(expect_vol, abs=1e-12)
    assert res["volumes"]["dice"] == pytest.approx(np.mean(list(expect_vol.values())), abs=1e-12)
    assert res["volumes"]["n_volumes"] == 3
    assert res["empty_slices"] == {"false_positive_rate": 1.0 if action == KEEP else 0.0, "n_images": n_empty,
                                   "n_false_positive": n_empty if action == KEEP else 0}
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert {(r["height"], r["width"]) for r in rows} == {("48", "48")}  # scored at native size, not 32 px
    assert sorted(int(r["gt_pixels"]) for r in rows) == sorted(int(m.sum()) for m in masks)
