from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl_agents.cli import main
from tests.conftest import lgg_on_disk, need_shared

ROOT = Path(__file__).resolve().parents[3]


def _demo_data(size: int, patients: int) -> list[str]:
    """env-demo's --set flags for a synthetic set of this size (the medium difficulty: shapes with texture)."""
    return [f for kv in (f"data.size={size}", f"data.synthetic.size={size}", f"data.synthetic.n_patients={patients}",
                         "data.synthetic.difficulty=medium", "optim.batch_size=16") for f in ("--set", kv)]


def test_env_demo_oracle_reaches_dice_one(tmp_path: Path, capsys):
    out = tmp_path / "demo.json"
    assert main(["env-demo", *_demo_data(64, 8), "--json", str(out)]) == 0
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
    assert main(["env-demo", *_demo_data(48, 6), "--set", "pa3c.action_set=three", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["oracle"]["dice"] == 1.0


def test_train_py_trains_by_default_and_runs_other_commands(tmp_path: Path):
    env = {**os.environ, "COLUMNS": "120"}
    r = subprocess.run([sys.executable, "train.py", "--config", "tune_configs/smoke.yaml", "--set", "budget.epochs=1", "--set", "num_workers=0",
                        "--output-dir", str(tmp_path / "run"), "--quiet"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["updates"] >= 1 and "val/dice" in metrics and "Dice" in r.stdout
    demo = tmp_path / "demo.json"
    r = subprocess.run([sys.executable, "train.py", "env-demo", *_demo_data(48, 6), "--json", str(demo)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dice = _table_column(r.stdout, "Dice")
    assert dice["oracle"] == 1.0, r.stdout
    assert dice["keep"] < 1.0 and dice["random"] < 1.0, r.stdout
    results = json.loads(demo.read_text())["results"]
    assert results["oracle"]["dice"] == 1.0 and results["keep"]["dice"] < 1.0
    assert dice["keep"] == pytest.approx(results["keep"]["dice"], abs=5e-4)  # the table shows 3 decimals


def _table_column(text: str, column: str) -> dict[str, float]:
    """``{first cell: value of column}`` for the rows of a table printed by rich (box drawn in Unicode or ASCII)."""
    header, out = None, {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        if len(cells) < 3:
            continue
        cells = cells[1:-1]  # the text before the first and after the last border
        if column in cells and header is None:
            header = cells
        elif header is not None and len(cells) == len(header) and cells[0]:
            try:
                out[cells[0]] = float(cells[header.index(column)])
            except ValueError:
                pass
    assert header is not None, f"no table with a {column!r} column in:\n{text}"
    return out


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
    disk = lgg_on_disk(root)
    n_patients = len(disk["patients"])
    assert main(["data-info", "--set", "data.format=lgg", "--set", f"data.path={root}", "--set", "data.channels=[1]",
                 "--set", "data.drop_empty=false", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    parts = [s[k] for k in ("train", "val", "test")]
    assert s["n_read"] == disk["pairs"] and sum(p["slices"] for p in parts) == disk["pairs"]
    # every patient in exactly one split (slices of a patient are never divided: the group counts add up)
    assert sum(p["groups"] for p in parts) == n_patients
    assert all(p["groups"] >= 1 for p in parts)
    assert abs(s["val"]["groups"] - 0.1 * n_patients) <= 1 and abs(s["test"]["groups"] - 0.2 * n_patients) <= 1


def test_malformed_yaml_is_one_line_naming_file_and_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: small\nlr: [1e-3\nt_max: 10\n")  # an unclosed list
    for argv in (["train", "--config", str(bad)], ["train", "--tune", str(bad)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) <= 2, err  # rich may wrap one long line
        assert re.search(rf"(config|sweep) file {re.escape(str(bad))}:\d+:\d+: not valid YAML", err.replace("\n", ""))
    assert main(["train", "--set", "optim.lr=[1e-3"]) == 2
    assert "--set optim.lr=[1e-3: the value is not valid YAML" in capsys.readouterr().err.replace("\n", "")


def test_a_failed_command_leaves_no_empty_output_folder(tmp_path: Path):
    missing = tmp_path / "no-such-data"
    assert main(["train", "--set", "data.format=lgg", "--set", f"data.path={missing}", "--set", "tracking.mlflow=false",
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert main(["prepare-data", str(missing), str(tmp_path / "pq"), "--format", "folder"]) == 2
    assert not (tmp_path / "pq").exists()
    kept = tmp_path / "mine"
    (kept / "notes").mkdir(parents=True)  # a folder the user had is never removed
    assert main(["prepare-data", str(missing), str(kept), "--format", "folder"]) == 2
    assert (kept / "notes").is_dir()


def test_train_refuses_to_replace_a_trained_run_without_resume_or_overwrite(tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "tune_configs" / "smoke.yaml"), "--set", "num_workers=0", "--set",
            "budget.max_updates=2", "--set", "tracking.mlflow=false", "--output-dir", str(out), "--quiet"]
    assert main(args) == 0
    best = out / "checkpoints" / "best.pt"
    before = best.read_bytes()
    capsys.readouterr()
    assert main(args) == 2  # the same command again: the trained model is kept
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a trained run" in err[0] and "--overwrite" in err[0], err
    assert best.read_bytes() == before and not (out / "checkpoints" / "best.prev.pt").exists()
    assert main(["baseline", *args[1:]]) == 2  # the U-Net command too
    assert main([*args, "--overwrite"]) == 0
    assert (out / "checkpoints" / "best.prev.pt").read_bytes() == before  # the replaced model kept once
