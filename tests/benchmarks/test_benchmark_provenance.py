"""Every README figure comes from a committed benchmark that writes its JSON with the machine, the versions and the
exact command. The quick scripts run here at toy sizes and their JSON is checked for that provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rl_agents.experiment import provenance

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_is_recorded_as_typed_from_the_repository_root(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "scaling.py"), "--seconds", "75", "--json", "a b.json"])
    assert provenance.command() == "python -m benchmarks.scaling --seconds 75 --json 'a b.json'"
    monkeypatch.setattr(sys, "argv", ["/home/u/.venv/bin/pixeldrl", "cv-report", "--experiment", "cv-lgg"])
    assert provenance.command() == "pixeldrl cv-report --experiment cv-lgg"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), "--set", "pa3c.t_max=5"])
    assert provenance.command() == "python train.py --set pa3c.t_max=5"
    assert provenance.command(["--x"], "benchmarks.main_job") == "python -m benchmarks.main_job --x"


def test_a_result_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch):
    """A run cut while writing its JSON keeps the previous result file whole (written beside it, then renamed)."""
    out = tmp_path / "results" / "r.json"
    provenance.write_json(out, {"run": 1})
    assert json.loads(out.read_text()) == {"run": 1}

    def cut(self, text):  # the new file's write dies half way
        Path.write_bytes(self, text[: len(text) // 2].encode())
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", cut)
    try:
        provenance.write_json(out, {"run": 2, "more": list(range(100))})
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert json.loads(out.read_text()) == {"run": 1}


def _run(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    subprocess.run([sys.executable, f"benchmarks/{script}.py", *args, "--json", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    return json.loads(out.read_text())


def test_env_throughput_and_train_flops_write_machine_versions_and_command(tmp_path: Path):
    env = _run(tmp_path, "env_throughput", "--seconds", "0.02")
    assert env["command"] == f"python -m benchmarks.env_throughput --seconds 0.02 --json {tmp_path}/env_throughput.json"
    assert {"cpu", "cores", "python", "torch", "numpy"} <= env["machine"].keys() and env["machine"]["cores_used"] == 1
    assert len(env["results"]) == 16 and all(r["pixel_agent_steps_per_s"] > 0 for r in env["results"])

    fl = _run(tmp_path, "train_flops", "--threads", "1", "--updates", "1")
    assert fl["command"].startswith("python -m benchmarks.train_flops --threads 1 --updates 1 --json ")
    assert {"cpu", "python", "torch"} <= fl["machine"].keys() and fl["machine"]["threads"] == 1
    (row,) = fl["rows"]
    assert row["preset"] == "small" and 0 < row["fraction_of_peak"] < 1.5
    counted = {r["preset"]: r for r in fl["presets"]}
    assert counted.keys() == {"small", "medium", "paper"}
    assert counted["small"]["params"] == row["params"]
    assert counted["small"]["forward_gflop_128px"] == row["gflop_per_image_step"]
    # four times the pixels: four times the convolutions' work, sixteen times the attention's (its positions squared;
    # 2 % of the paper preset's forward at 256 px), so a little over 4x in all
    assert 4 < counted["paper"]["forward_gflop_256px"] / counted["paper"]["forward_gflop_128px"] < 4.1
