"""MLflow tracking of training runs and `pixeldrl compare` (store: the session's throwaway SQLite, see conftest)."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from rl_agents.algo.inference import GreedySegmenter
from rl_agents.cli import main
from rl_agents.cli.common import cell as _cell
from rl_agents.config import load_config
from rl_agents.experiment import tracking
from rl_agents.experiment.lifecycle import run_training
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.sweep import trial_run_name
from tests.conftest import mlflow_model_server

ROOT = Path(__file__).resolve().parents[3]
SMOKE = str(ROOT / "tune_configs" / "smoke.yaml")


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out.add(a.path)
        if a.is_dir:
            out |= _artifacts(client, run_id, a.path)
    return out


def test_training_runs_are_tracked_and_compared(tmp_path: Path, capsys):
    for lr in ("1e-3", "5e-4"):
        assert main(["train", "--config", SMOKE, "--set", "num_workers=0", "--set", "budget.epochs=2", "--set", f"optim.lr={lr}",
                     "--set", "tracking.experiment=test-tracking", "--set", f"tracking.run_name=lr-{lr}",
                     "--output-dir", str(tmp_path / lr), "--quiet"]) == 0
    client = MlflowClient(mlflow.get_tracking_uri())
    runs = mlflow.search_runs(experiment_names=["test-tracking"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["lr-1e-3", "lr-5e-4"]
    run = next(r for r in runs if r.info.run_name == "lr-5e-4")
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.0005" and run.data.params["data.format"] == "synthetic"
    assert run.data.params["num_workers"] == "0" and "network.preset" in run.data.params
    assert run.data.tags["preset"] == "small"
    exp = client.get_experiment(run.info.experiment_id)  # opens on model training, not MLflow 3's GenAI pages
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    full = client.get_run(run.info.run_id)
    assert [d.dataset.name for d in full.inputs.dataset_inputs] == ["synthetic:built-in synthetic"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    if head.returncode == 0:  # a git checkout: the run names its commit in full
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"]), run.data.tags["git_commit"]
        assert run.data.tags["git_commit"] == head.stdout.strip()
    else:
        assert run.data.tags["git_commit"] == "unknown"
    final = json.loads((tmp_path / "5e-4" / "metrics.json").read_text())
    # the value MLflow shows is the run's final one (best checkpoint), not the last evaluation during training
    assert run.data.metrics["val/dice"] == pytest.approx(final["val/dice"]) and run.data.metrics["params"] > 0
    history = client.get_metric_history(run.info.run_id, "val/dice")
    assert len(history) >= 2 and len({m.step for m in history}) >= 2  # per step, plus the final value
    arts = _artifacts(client, run.info.run_id)
    for name in ("config.yaml", "metrics.json", "learning_curve.png", "checkpoints/best.pt", "eval_val.json"):
        assert name in arts, (name, arts)
    assert any(a.startswith("overlays/") and a.endswith(".png") for a in arts)
    assert any(a.startswith("model") for a in arts) or client.search_logged_models(
        experiment_ids=[run.info.experiment_id])
    # the logged model takes any batch size, in both flavours, and segments as the checkpoint does
    from mlflow import pyfunc as mlflow_pyfunc
    from mlflow import pytorch as mlflow_pytorch

    uri = f"runs:/{run.info.run_id}/model"
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    if logged:  # MLflow 3: the model is a LoggedModel of the run
        uri = next(m.model_uri for m in logged if m.source_run_id == run.info.run_id)
    net, saved = load_model(tmp_path / "5e-4" / "checkpoints" / "best.pt")
    x = np.random.default_rng(0).random((3, net.in_channels, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = GreedySegmenter(net, saved.pa3c.t_max).eval()(torch.from_numpy(x)).numpy()
    got = mlflow_pytorch.load_model(uri)(torch.from_numpy(x))
    np.testing.assert_array_equal(np.asarray(got), want)
    assert np.asarray(mlflow_pyfunc.load_model(uri).predict(x)).shape == want.shape
    info = mlflow.models.get_model_info(uri)  # what the model takes, stated beside its signature
    assert info.metadata["input_channels"] == net.in_channels and info.metadata["image_size"] == 32
    printed = capsys.readouterr().out  # the end of the run says where it is
    assert f"MLflow run {run.info.run_id}: open http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/" \
           f"{run.info.run_id} after `mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}`" in printed
    assert f"model: {uri}" in printed
    # the logged model as MLflow serves it on its own (no project code on the request path): the same masks
    with mlflow_model_server(uri, tmp_path) as (base, _):
        r = requests.post(f"{base}/invocations", json={"inputs": x.tolist()}, timeout=120)
    assert r.status_code == 200, r.text[-500:]
    np.testing.assert_array_equal(np.asarray(r.json()["predictions"]), want)
    assert main(["compare", "--experiment", "test-tracking"]) == 0
    out = capsys.readouterr().out
    assert "lr-1e-3" in out and "lr-5e-4" in out and "lr" in out and "val/dice" in out
    assert "run_name" not in out  # differs between runs, but is already the first column
    assert "e+0" not in out and re.search(r"\b\d{2},\d{3}\b", out)  # the parameter count as 71,584, not 7.158e+04
    assert main(["compare", "--experiment", "test-tracking"]) == 0
    assert capsys.readouterr().out == out  # the same columns in the same order on a second call


def test_cells_and_trial_names_are_readable():
    assert [_cell(v) for v in (71584.0, 0.98512, 379.23, "0.0012345678", "2026", "small", float("nan"))] == [
        "71,584", "0.9851", "379.2", "0.001235", "2026", "small", "-"]
    assert trial_run_name({"data.fold": 2, "variant": {"name": "pixeldrl", "model": "pixeldrl"}}, "4df70_00002") == \
        "pixeldrl fold=2 [4df70_00002]"
    assert trial_run_name({"lr": 0.00123456, "gamma": 0.9512}, "a_1") == "gamma=0.951 lr=0.00123 [a_1]"


def test_compare_names_a_missing_experiment(capsys):
    assert main(["compare", "--experiment", "no-such-experiment"]) == 2
    assert "no MLflow experiment named 'no-such-experiment'" in capsys.readouterr().err


def test_compare_reads_a_store_it_is_given_and_never_creates_one(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # another folder than the one trained in: no mlflow.db here
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["compare", "--experiment", "pixeldrl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("pass --tracking-uri (or set MLFLOW_TRACKING_URI)") and len(err.splitlines()) == 1
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in err
    assert not (tmp_path / "mlflow.db").exists()
    assert main(["compare", "--tracking-uri", f"sqlite:///{tmp_path / 'other.db'}"]) == 2
    assert not (tmp_path / "other.db").exists()


def test_a_run_is_live_in_mlflow_while_it_trains(tmp_path: Path, monkeypatch):
    """Read from the store at the second validation pass (an event of the run, not a timer): the run is RUNNING and
    holds exactly the passes made so far; at the end its duration covers the training, with system metrics."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = load_config(SMOKE, ["num_workers=0", "budget.epochs=1000", "budget.max_updates=30", "eval.every=10",
                              "tracking.experiment=test-live", "tracking.run_name=live"])
    client, seen = MlflowClient(mlflow.get_tracking_uri()), []

    def at_eval(entry: dict) -> None:
        seen.append(int(entry["update"]))
        if len(seen) == 2:
            (run,) = mlflow.search_runs(experiment_names=["test-live"], output_format="list")
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")]
            seen.append((run.info.status, steps, run.data.params["optim.lr"], run.data.tags["mlflow.note.content"]))

    metrics = run_training(cfg, tmp_path / "run", quiet=True, on_eval=at_eval)
    status, steps, lr, note = seen[2]
    assert status == "RUNNING" and steps == seen[:2] == [10, 20] and lr == str(cfg.optim.lr)
    # the run's page opens on its validation figures (MLflow lists metrics alphabetically, validation last)
    assert note.startswith("**Validation, latest pass (update 20; running)**") and "| Dice | IoU |" in note
    run = client.get_run(metrics["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert f"{metrics['val/dice']:.3f}" in run.data.tags["mlflow.note.content"].split("\n")[-1]
    assert (run.info.end_time - run.info.start_time) / 1000 >= metrics["wall_time_s"]
    # each pass sent once (live, not again at the end), then the final figure (best checkpoint) at the last step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")] == [10, 20, 30, 30]
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)


def _unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released: connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_training_finishes_when_the_tracking_server_is_down(tmp_path: Path, monkeypatch, caplog):
    before = mlflow.get_tracking_uri()  # the session's store; training sets MLflow's process-wide URI to the dead one
    port = _unused_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    out = tmp_path / "run"
    caplog.set_level(logging.WARNING)
    t0 = time.perf_counter()
    try:
        assert main(["train", "--config", SMOKE, "--set", "num_workers=0", "--set", "budget.epochs=1",
                     "--output-dir", str(out), "--quiet"]) == 0
    finally:
        mlflow.set_tracking_uri(before)
    took = time.perf_counter() - t0
    assert (out / "metrics.json").is_file() and (out / "checkpoints" / "best.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "val/dice" in metrics and metrics["updates"] >= 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "mlflow" in r.getMessage().lower()]
    assert warnings, [r.getMessage() for r in caplog.records]
    # no retry loop against the dead server: what is not training (start-up, data, tracking) stays short
    overhead = took - metrics["wall_time_s"]
    assert overhead < 30, f"{overhead:.0f} s outside training with the tracking server down (total {took:.0f} s)"


def test_a_store_inside_rays_copy_of_the_working_dir_is_warned(tmp_path: Path, monkeypatch, caplog):
    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_warned_ray_copy", False)
    monkeypatch.chdir(copy)
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        assert tracking.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"
        assert "inside Ray's temporary copy" in caplog.text and "--runtime-env-json" in caplog.text
        caplog.clear()
        tracking.tracking_uri()
        assert caplog.text == ""  # once per process
        monkeypatch.setattr(tracking, "_warned_ray_copy", False)
        monkeypatch.chdir(tmp_path)
        tracking.tracking_uri()
        assert caplog.text == ""  # an ordinary working directory
