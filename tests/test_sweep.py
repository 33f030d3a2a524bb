"""Ray Tune sweeps: sweep-file checks, an ASHA smoke sweep with nested MLflow runs, a failing trial retried, and an
interrupted sweep resumed. Ray binds to 127.0.0.1 and is shut down after each test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from rl_agents.sweep import load_sweep, run_sweep
from rl_agents.tracking import compare

ROOT = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path: Path, name: str, **over) -> Path:
    spec = yaml.safe_load((ROOT / "tune_configs" / "sweep_asha.yaml").read_text())
    spec.update(base=str(ROOT / "tune_configs" / "smoke.yaml"), experiment=name, storage=str(tmp_path / "tune"))
    spec["set"] = {**spec["set"], "epochs": 2, "eval_every": 4}
    spec.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.fixture
def ray_2cpu():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def test_sweep_file_is_checked(tmp_path: Path):
    spec = load_sweep(ROOT / "tune_configs" / "sweep_asha.yaml")
    assert spec["num_samples"] == 4 and spec["base"]["num_workers"] == 0 and spec["scheduler"]["type"] == "asha"
    with pytest.raises(ValueError, match="unknown key"):
        load_sweep(_sweep_file(tmp_path, "a", samples=3))
    with pytest.raises(ValueError, match="search_space key 'lr_rate' is not a config key"):
        load_sweep(_sweep_file(tmp_path, "b", search_space={"lr_rate": {"uniform": [0, 1]}}))
    with pytest.raises(ValueError, match=r"search_space.lr must be one of"):
        load_sweep(_sweep_file(tmp_path, "c", search_space={"lr": {"normal": [0, 1]}}))


def _children(name: str, parent: str):
    exp = mlflow.get_experiment_by_name(name)
    return MlflowClient().search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


def test_asha_sweep_leaves_nested_mlflow_runs(tmp_path: Path, ray_2cpu):
    t0 = time.perf_counter()
    summary = run_sweep(_sweep_file(tmp_path, "t-asha"))
    print(f"4-trial ASHA sweep: {time.perf_counter() - t0:.0f} s")
    assert summary["n_trials"] == 4 and summary["n_errors"] == 0
    assert 0.0 <= summary["best_metrics"]["val/dice"] <= 1.0 and "lr" in summary["best_config"]
    children = _children("t-asha", summary["parent_run_id"])
    assert len(children) == 4
    client = MlflowClient()
    for r in children:
        assert r.info.status in ("FINISHED", "KILLED")  # KILLED: stopped early by ASHA
        assert "lr" in r.data.params and "val/dice" in r.data.metrics
        assert len(client.get_metric_history(r.info.run_id, "val/dice")) >= 1
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert finished, "no trial ran to its end"
    arts = {a.path for a in client.list_artifacts(finished[0].info.run_id)}
    assert {"config.yaml", "metrics.json", "learning_curve.png", "overlays", "checkpoints"} <= arts
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and "best/val/dice" in parent.data.metrics
    header, rows = compare("t-asha")  # the trials only: the parent's sweep.* params would make every column differ
    assert len(rows) == 4 and "lr" in header and "gamma" in header
    assert not any(h.startswith("sweep.") for h in header) and "preset" not in header


def test_a_failing_trial_is_retried_and_the_sweep_completes_with_optuna(tmp_path: Path, ray_2cpu):
    summary = run_sweep(_sweep_file(tmp_path, "t-fail", num_samples=2, inject_failure=True, search="optuna",
                                    scheduler={"type": "fifo"}))
    assert summary["n_trials"] == 2 and summary["n_errors"] == 0
    runs = _children("t-fail", summary["parent_run_id"])
    # each trial failed once, then passed; the failed attempt points to its retry
    assert sorted((r.info.status, r.data.tags["attempt"]) for r in runs) == [("FAILED", "1"), ("FAILED", "1"),
                                                                            ("FINISHED", "2"), ("FINISHED", "2")]
    by_id = {r.info.run_id: r for r in runs}
    for r in runs:
        if r.info.status == "FAILED":
            retry = by_id[r.data.tags["superseded_by"]]
            assert retry.info.status == "FINISHED" and retry.data.tags["trial_id"] == r.data.tags["trial_id"]


def test_an_interrupted_sweep_resumes(tmp_path: Path):
    sweep = _sweep_file(tmp_path, "t-resume", num_samples=3, max_concurrent_trials=1, scheduler={"type": "fifo"})
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", "--tune", str(sweep)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        results = []
        while time.time() < deadline and proc.poll() is None:
            results = list((tmp_path / "tune" / "t-resume").glob("*/result.json"))
            if any(p.stat().st_size > 0 for p in results):
                break
            time.sleep(1)
        assert results, "no trial reported before the deadline"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    parent = (tmp_path / "tune" / "t-resume" / "mlflow_parent_run_id").read_text().strip()
    finished = [r for r in _children("t-resume", parent) if r.info.status == "FINISHED"]
    assert len(finished) < 3, "the sweep finished before it could be interrupted"
    r = subprocess.run([sys.executable, "train.py", "--tune", str(sweep), "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 trials (0 errored)" in r.stdout
    current = [r for r in _children("t-resume", parent) if "superseded_by" not in r.data.tags]
    # the resumed sweep ran the rest under the same parent run: one current, finished run per trial
    assert sorted(r.info.status for r in current) == ["FINISHED"] * 3
    assert len({r.data.tags["trial_id"] for r in current}) == 3



@pytest.mark.timeout(300)  # unpinned actors used to fragment the bundles and wait forever
def test_a_trial_trains_with_ray_workers_inside_its_placement_group(tmp_path: Path, ray_2cpu):
    # bundles [driver 0.01, learner 0.25, worker 0.5, worker 0.5] on 2 CPUs: each actor pinned to its own bundle
    sweep = _sweep_file(tmp_path, "t-ray", num_samples=2, max_concurrent_trials=1, scheduler={"type": "fifo"},
                        search_space={"lr": {"choice": [1e-3, 2e-3]}})
    spec = yaml.safe_load(sweep.read_text())
    spec["set"] = {**spec["set"], "num_workers": 2, "max_updates": 12, "epochs": 100}
    sweep.write_text(yaml.safe_dump(spec))
    summary = run_sweep(sweep)
    assert summary["n_trials"] == 2 and summary["n_errors"] == 0
    for r in _children("t-ray", summary["parent_run_id"]):
        assert r.info.status == "FINISHED"
        assert r.data.params["num_workers"] == "2" and r.data.metrics["updates"] >= 12
        assert r.data.metrics["perf/updates_per_s"] > 0 and "perf/staleness_mean" in r.data.metrics
