"""benchmarks/main_job.py, the script behind the README's main-job figure, on a toy budget."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import main_job


def test_first_validation_pass_at_the_target():
    hist = [{"update": 10, "wall_time_s": 5.0, "losses/total": 1.0}, {"update": 20, "wall_time_s": 9.0, "val/dice": 0.5},
            {"update": 30, "wall_time_s": 14.0, "val/dice": 0.91}, {"update": 40, "wall_time_s": 18.0, "val/dice": 0.95}]
    assert main_job.first_at(hist, 0.9) == {"update": 30, "wall_time_s": 14.0, "val/dice": 0.91}
    assert main_job.first_at(hist, 0.99) is None


def test_the_main_job_runs_as_the_quickstart_runs_it_and_its_json_names_the_machine(tmp_path: Path):
    out = tmp_path / "mj.json"
    work = tmp_path / "work"
    assert main_job.main(["--json", str(out), "--work", str(work), "--set", "budget.max_updates=4", "--set",
                          "eval.every=2", "--set", "data.size=32", "--set", "data.synthetic.size=32"]) == 0
    r = json.loads(out.read_text())
    mj = r["main_job"]
    assert mj["updates"] == 4 and mj["stopped_by"] == "max_updates" and mj["config"]["data.size"] == 32 and mj["config"]["pa3c.t_max"] == 10
    assert mj["command"] == ("python train.py --set budget.max_updates=4 --set eval.every=2 --set data.size=32 "
                             "--set data.synthetic.size=32")
    assert 0.0 <= mj["val"]["dice"] <= 1.0 and mj["params"] > 0 and mj["process_wall_s"] >= mj["wall_time_s"]
    assert r["machine"]["cores"] >= 1 and r["command"].startswith("python -m benchmarks.main_job")
    assert (work / "mlflow.db").exists()  # the job tracked into the benchmark's own database, as a user's would
