from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rl_agents.cli import main
from tests.conftest import need_shared

ROOT = Path(__file__).resolve().parents[1]


def test_env_demo_oracle_reaches_dice_one(tmp_path: Path, capsys):
    out = tmp_path / "demo.json"
    assert main(["env-demo", "--size", "64", "--n-patients", "8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert res["oracle"]["dice"] == 1.0 and res["oracle"]["biou"] == 1.0 and res["oracle"]["hd95"] == 0.0
    assert res["random"]["dice"] < 0.5
    # doing nothing keeps the all-foreground start: sensitivity 1, Dice = 2|G| / (|G| + HW) small, return 0
    assert res["keep"]["sensitivity"] == 1.0 and res["keep"]["dice"] < 0.2 and res["keep"]["return_per_image"] == 0
    # the oracle's return is the number of background pixels it fixes
    assert res["oracle"]["return_per_image"] > 0
    table = capsys.readouterr().out
    assert "oracle" in table and "Dice" in table


def test_env_demo_three_actions(tmp_path: Path):
    out = tmp_path / "demo.json"
    assert main(["env-demo", "--size", "48", "--n-patients", "6", "--action-set", "three", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["oracle"]["dice"] == 1.0


def test_train_py_trains_by_default_and_runs_other_commands(tmp_path: Path):
    env = {**os.environ, "COLUMNS": "120"}
    r = subprocess.run([sys.executable, "train.py", "--config", "tune_configs/smoke.yaml", "--set", "epochs=1", "--set", "num_workers=0",
                        "--output-dir", str(tmp_path / "run"), "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["updates"] >= 1 and "val/dice" in metrics and "Dice" in r.stdout
    r = subprocess.run([sys.executable, "train.py", "env-demo", "--size", "48", "--n-patients", "6"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "oracle" in r.stdout and "1.000" in r.stdout


def test_pixeldrl_console_script_reports_bad_path(tmp_path: Path):
    exe = Path(sys.executable).with_name("pixeldrl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rl_agents.cli"]
    r = subprocess.run([*cmd, "prepare-data", str(tmp_path / "nope"), str(tmp_path / "o"), "--format", "folder"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "data path does not exist" in r.stderr and "nope" in r.stderr


def test_data_info_on_real_lgg(tmp_path: Path):
    root = need_shared("lgg_kaggle_3m")
    out = tmp_path / "info.json"
    assert main(["data-info", "--format", "lgg", "--path", str(root), "--channels", "1", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["n_read"] == 738 and s["train"]["groups"] == 14 and s["val"]["groups"] == 2 and s["test"]["groups"] == 4
