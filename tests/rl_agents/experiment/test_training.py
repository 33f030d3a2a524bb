from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelrl_env.dataset import load_splits
from pixelrl_env.metrics import dice
from rl_agents.cli import main
from rl_agents.config import load_config
from rl_agents.experiment.checkpoint import read_checkpoint
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.visualize import BAR_PX, LINE_PX
from rl_agents.experiment.sweep import load_sweep
from tests.conftest import write_lgg_layout

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"
LOCAL = ["num_workers=0"]  # the single-process trainer; tests/rl_agents/engines/test_distributed.py covers Ray


def test_config_yaml_and_overrides(tmp_path: Path):
    cfg = load_config(SMOKE, LOCAL + ["optim.lr=3e-4", "data.size=16", "data.channels=[1]", "budget.max_minutes=null"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.size == 16 and cfg.data.channels == [1] and cfg.data.synthetic["size"] == 32
    assert cfg.pa3c.t_max == 3 and cfg.budget.max_minutes is None
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['data.sise'\]"):
        load_config(SMOKE, LOCAL + ["data.sise=3"])
    with pytest.raises(ValueError, match="config key optim.lr expects float, got 'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ValueError, match="preset must be one of"):
        load_config(None, ["network.preset=huge"])
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")

    for f in sorted((ROOT / "tune_configs").glob("*.yaml")):  # every shipped config and sweep is valid
        load_sweep(f) if "search_space" in yaml.safe_load(f.read_text()) else load_config(f)


def test_smoke_training_writes_metrics_checkpoints_and_resumes(tmp_path: Path):
    cfg = load_config(SMOKE, LOCAL)
    out = tmp_path / "run"
    m = train(cfg, out, quiet=True)
    for k in ("val/dice", "val/iou", "val/biou", "val/hd95", "params", "wall_time_s"):
        assert k in m
    assert m["updates"] == 2 * int(np.ceil(m["n_train"] / 4))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["params"] == m["params"] and (out / "checkpoints" / "best.pt").exists()
    last = read_checkpoint(out / "checkpoints" / "last.pt")
    assert last.run["update"] == m["updates"] and last.agent["optimizer"] is not None and "env" in last.rng
    # resume with more epochs continues from the saved update count
    cfg2 = load_config(SMOKE, LOCAL + ["budget.epochs=3"])
    m2 = train(cfg2, out, resume=True, quiet=True)
    assert m2["updates"] == 3 * int(np.ceil(m["n_train"] / 4))
    assert read_checkpoint(out / "checkpoints" / "last.pt").run["update"] == m2["updates"]


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path):
    cfg4 = load_config(SMOKE, LOCAL + ["budget.epochs=4"])
    full = train(cfg4, tmp_path / "full", quiet=True)
    train(load_config(SMOKE, LOCAL + ["budget.epochs=2"]), tmp_path / "split", quiet=True)
    resumed = train(cfg4, tmp_path / "split", resume=True, quiet=True)
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt").agent["model"]
    b = read_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt").agent["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert full["updates"] == resumed["updates"]


@pytest.mark.slow
def test_pa3c_learns_on_easy_synthetic_data(tmp_path: Path):
    """Pure PA3C (no auxiliary term) beats the all-foreground start on validation Dice by at least 0.5."""
    cfg = load_config(SMOKE, LOCAL + ["data.size=32", "pa3c.t_max=3", "optim.batch_size=8", "budget.epochs=80", "eval.every=50"])
    m = train(cfg, tmp_path / "learn", quiet=True)

    val = load_splits(cfg.data).val
    start = float(np.mean(dice(np.ones_like(val.masks), val.masks)))
    assert start < 0.3
    assert m["val/dice"] >= start + 0.5, (m["val/dice"], start)


def test_evaluate_native_resolution_json_and_csv(tmp_path: Path):
    src = write_lgg_layout(tmp_path / "lgg", patients=4, slices=4, size=48, seed=3)
    cfg = load_config(SMOKE, LOCAL + [f"data.path={src}", "data.format=lgg", "data.size=32", "budget.epochs=1"])
    train(cfg, tmp_path / "r", quiet=True)
    res = evaluate_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt", split="all", json_out=tmp_path / "e.json",
                              overlays=tmp_path / "ov", max_overlays=3)
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert len(pngs) == 3

    # four titled panels at the model's resolution, upscaled 8x (nearest) to be seen: 32 px -> 256 px; the
    # uncertainty's colour bar beside them; caption and titles above
    w, h = Image.open(pngs[0]).size
    assert w == 4 * 256 + BAR_PX and 256 + 2 * LINE_PX <= h <= 256 + 6 * LINE_PX
    assert res["all_slices"]["n_images"] == 16 and res["n_images"] == 12  # 4 empty first slices
    for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "n_images"):
        assert k in res
    rows = (tmp_path / "e.csv").read_text().splitlines()
    assert len(rows) == 17 and rows[0].startswith("source,group,has_foreground,height,width,dice")
    assert ",48,48," in rows[1]  # native size, not the 32 px training size
    # the CLI gives the same numbers
    assert main(["evaluate", "--checkpoint", str(tmp_path / "r" / "checkpoints" / "best.pt"), "--split", "all",
                 "--json", str(tmp_path / "e2.json")]) == 0
    assert json.loads((tmp_path / "e2.json").read_text())["dice"] == pytest.approx(res["dice"])
    # data keys from the command line: another copy of the data (4 patients more), every patient in the test split
    other = write_lgg_layout(tmp_path / "lgg2", patients=8, slices=4, size=48, seed=3)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "r" / "checkpoints" / "best.pt"), "--split", "test",
                 "--set", f"data.path={other}", "--set", "data.split=[0, 0, 1]", "--set", "data.drop_empty=false",
                 "--json", str(tmp_path / "e3.json")]) == 0
    e3 = json.loads((tmp_path / "e3.json").read_text())
    assert e3["all_slices"]["n_images"] == 32 and e3["data"]["path"] == str(other)


def test_evaluate_takes_only_data_keys(tmp_path: Path, capsys):
    cfg = load_config(SMOKE, LOCAL + ["budget.max_updates=1"])
    train(cfg, tmp_path / "r", quiet=True)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "r" / "checkpoints" / "best.pt"),
                 "--set", "pa3c.t_max=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only data.* keys apply here" in err[0]


def test_unet_baseline_smoke(tmp_path: Path):
    assert main(["baseline", "--config", str(SMOKE), "--set", "budget.epochs=3", "--output-dir", str(tmp_path / "u"),
                 "--quiet"]) == 0
    m = json.loads((tmp_path / "u" / "metrics.json").read_text())
    assert m["params"] > 1_000_000 and "val/dice" in m
    res = evaluate_checkpoint(tmp_path / "u" / "checkpoints" / "best.pt", split="val")
    assert res["n_images"] > 0


def test_train_cli_reports_bad_config(tmp_path: Path, capsys):
    assert main(["train", "--set", "pa3c.t_max=0", "--output-dir", str(tmp_path)]) == 2
    assert "t_max must be >= 1" in capsys.readouterr().err
