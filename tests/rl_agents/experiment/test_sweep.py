"""Ray Tune sweeps: sweep-file checks, an ASHA smoke sweep with nested MLflow runs, a failing trial retried, and an
interrupted sweep resumed. Ray binds to 127.0.0.1 and is shut down after each test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pixelrl_env.data_config import DataConfig
from pixelrl_env.dataset import load_splits
from rl_agents.cli import main
from rl_agents.config import PAPER_STEP, load_config
from rl_agents.engines.rllib.engine import rllib_bundles
from rl_agents.experiment.sweep import load_sweep, run_sweep, trial_config
from rl_agents.experiment.compare import compare
from tests import wait_points

ROOT = Path(__file__).resolve().parents[3]


def _sweep_file(tmp_path: Path, name: str, **over) -> Path:
    spec = yaml.safe_load((ROOT / "tune_configs" / "sweep_asha.yaml").read_text())
    spec.update(base=str(ROOT / "tune_configs" / "smoke.yaml"), experiment=name, storage=str(tmp_path / "tune"))
    spec["set"] = {**spec["set"], "epochs": 2, "eval_every": 4}
    spec.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_sweep_file_is_checked(tmp_path: Path):
    spec = load_sweep(ROOT / "tune_configs" / "sweep_asha.yaml")
    assert spec["num_samples"] == 4 and spec["base"]["num_workers"] == 0 and spec["scheduler"]["type"] == "asha"
    with pytest.raises(ValueError, match="unknown key"):
        load_sweep(_sweep_file(tmp_path, "a", samples=3))
    with pytest.raises(ValueError, match="search_space key 'lr_rate' is not a config key"):
        load_sweep(_sweep_file(tmp_path, "b", search_space={"lr_rate": {"uniform": [0, 1]}}))
    with pytest.raises(ValueError, match=r"search_space.optim.lr must be one of"):
        load_sweep(_sweep_file(tmp_path, "c", search_space={"lr": {"normal": [0, 1]}}))


def _children(name: str, parent: str):
    exp = mlflow.get_experiment_by_name(name)
    return MlflowClient().search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")


# ASHA made to stop trials, deterministically: the trials run one at a time in the order of the grid below (no random
# search), each trained with seed 0. The first learns fast (the supervised aux term, lr 1e-3) and sets every rung's
# bar; the others barely move from their start (lr 1e-6 / 1e-5), fall below the bar at the first rung (grace_period
# 1 = the first validation pass, every 4 updates) or the second, and are stopped. Only the first runs its 2 epochs.
ASHA_VARIANTS = [
    {"name": "fast", "lr": 1.0e-3, "gamma": 0.95},
    {"name": "frozen", "lr": 1.0e-6, "gamma": 0.95},
    {"name": "frozen-g90", "lr": 1.0e-6, "gamma": 0.9},
    {"name": "slow-g90", "lr": 1.0e-5, "gamma": 0.9},
]
ASHA_DICE_FLOOR = 0.2  # the fast trial passes ~0.3 at its first validation pass; the all-foreground start is ~0.04


def _all_foreground_dice(base: dict) -> float:
    """Validation Dice of the all-foreground start (the environment's initial state), from the data itself."""

    data = {**base["data"], "split": tuple(base["data"]["split"])}
    gt = load_splits(DataConfig(**data)).val.masks.astype(bool)
    g = gt.sum(axis=(1, 2))
    return float(np.mean(2 * g / (g + gt[0].size)))


@pytest.mark.timeout(600)
def test_asha_sweep_stops_weak_trials_and_leaves_nested_mlflow_runs(tmp_path: Path, ray_2cpu):
    sweep = _sweep_file(tmp_path, "t-asha", search_space={"variant": {"grid": ASHA_VARIANTS}}, num_samples=1,
                        max_concurrent_trials=1, cpus_per_trial=2,
                        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    spec = yaml.safe_load(sweep.read_text())
    spec["set"] = {**spec["set"], "aux_coef": 0.5, "epochs": 2, "eval_every": 4}
    sweep.write_text(yaml.safe_dump(spec))
    t0 = time.perf_counter()
    summary = run_sweep(sweep)
    print(f"4-trial ASHA sweep: {time.perf_counter() - t0:.0f} s")
    assert summary["n_trials"] == 4 and summary["n_errors"] == 0
    children = _children("t-asha", summary["parent_run_id"])
    assert len(children) == 4
    client = MlflowClient()
    history = {r.info.run_id: client.get_metric_history(r.info.run_id, "val/dice") for r in children}
    steps = {rid: {m.step for m in h} for rid, h in history.items()}
    for r in children:
        assert r.info.status in ("FINISHED", "KILLED"), r.info.status
        assert "optim.lr" in r.data.params and "val/dice" in r.data.metrics and history[r.info.run_id]
    by_variant = {r.data.tags["variant"]: r for r in children}
    assert set(by_variant) == {v["name"] for v in ASHA_VARIANTS}
    # ASHA stopped something: runs ended by the scheduler, with fewer validation passes than the trial that ran on
    stopped = [r for r in children if r.info.status == "KILLED"]
    assert stopped, {r.data.tags["variant"]: (r.info.status, len(steps[r.info.run_id])) for r in children}
    longest = max(len(v) for v in steps.values())
    for r in stopped:
        assert len(steps[r.info.run_id]) < longest
        # also the last one, whose stop can race the end of the sweep (the sweep then labels it from Tune's results)
        assert r.data.tags.get("stopped_by") == "scheduler", r.data.tags
    fast = by_variant["fast"]
    assert fast.info.status == "FINISHED" and len(steps[fast.info.run_id]) == longest >= 3
    assert by_variant["frozen"].info.status == "KILLED"  # below the fast trial's bar at the first rung
    # the best trial is the best of the children as MLflow has them, and it learned well above the start
    best = summary["best_metrics"]["val/dice"]
    assert summary["best_config"]["variant"]["name"] == "fast"
    top = max(children, key=lambda r: r.data.metrics["val/dice"])
    assert top.info.run_id == fast.info.run_id
    assert top.data.metrics["val/dice"] == pytest.approx(max(m.value for h in history.values() for m in h))
    assert any(m.value == pytest.approx(best) for m in history[fast.info.run_id])  # Tune's figure is one MLflow has
    start = _all_foreground_dice(load_sweep(sweep)["base"])
    assert start < ASHA_DICE_FLOOR / 2, start
    assert best > ASHA_DICE_FLOOR, (best, start)
    assert max(r.data.metrics["val/dice"] for r in stopped) < best
    arts = {a.path for a in client.list_artifacts(fast.info.run_id)}
    assert {"config.yaml", "metrics.json", "learning_curve.png", "overlays", "checkpoints"} <= arts
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["best/val/dice"] == pytest.approx(best)
    header, rows = compare("t-asha")  # the trials only: the parent's sweep.* params would make every column differ
    assert len(rows) == 4 and "optim.lr" in header and "pa3c.gamma" in header
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


@pytest.mark.chaos  # 2 x 2 minutes: benchmarks/chaos.py --suite runs it
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl_c", "sigkill"])
def test_an_interrupted_sweep_resumes(tmp_path: Path, sig: int, reliability):
    """Ctrl-C (Tune saves its state on the way out) and SIGKILL (no chance to: the state Tune saved last, with the
    trial in flight, is all there is) after the first trial reported: ``--resume`` finishes every trial once, under
    the same MLflow parent run, and each trial has exactly one current, finished run (a killed attempt's run is kept,
    marked ``superseded_by`` its successor)."""
    sweep = _sweep_file(tmp_path, "t-resume", num_samples=3, max_concurrent_trials=1, scheduler={"type": "fifo"})
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    # the driver waits inside Tune's loop at the first trial result (an event, not a poll): the signal lands there
    proc = subprocess.Popen([sys.executable, "-c", "import tests.wait_points as w; w.at_first_trial_result()",
                             "train.py", "--tune", str(sweep)], cwd=ROOT, env={**env, wait_points.ENV: "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see conftest
    timer = threading.Timer(300, proc.kill)  # a sweep that never reports ends the wait
    timer.start()
    try:
        before = []
        for line in proc.stdout:
            before.append(line)
            if line.startswith(wait_points.FIRST_RESULT):
                break
        timer.cancel()
        assert before and before[-1].startswith(wait_points.FIRST_RESULT), "no result:\n" + "".join(before)[-3000:]
        proc.send_signal(sig)
        if sig == signal.SIGINT:  # the handler runs as the signal interrupts the wait; the loop then sees the stop
            proc.stdin.write("\n")
            proc.stdin.flush()
        out = "".join(before) + proc.communicate(timeout=180)[0]
        assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), (proc.returncode, out[-3000:])
        if sig == signal.SIGINT:  # not taken for a finished sweep: says so, and how to go on
            assert "interrupted with " in out and "--resume" in out, out[-3000:]
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    parent = (tmp_path / "tune" / "t-resume" / "mlflow_parent_run_id").read_text().strip()
    finished = [r for r in _children("t-resume", parent) if r.info.status == "FINISHED"]
    assert len(finished) < 3, "the sweep finished before it could be interrupted"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "train.py", "--tune", str(sweep), "--resume"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    resume_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 trials (0 errored)" in r.stdout
    current = [r for r in _children("t-resume", parent) if "superseded_by" not in r.data.tags]
    # the resumed sweep ran the rest under the same parent run: one current, finished run per trial
    assert sorted(r.info.status for r in current) == ["FINISHED"] * 3
    assert len({r.data.tags["trial_id"] for r in current}) == 3
    assert MlflowClient().get_run(parent).info.status == "FINISHED"
    reliability(4, f"a sweep's driver {'stopped with Ctrl-C' if sig == signal.SIGINT else 'SIGKILLed'} after its "
                   "first trial reported, then --resume",
                f"the trial in flight, rerun; every trial finished once ({len(finished)} of 3 before the stop)",
                resume_s, "--resume to the end of the sweep")



@pytest.mark.timeout(300)  # unpinned actors used to fragment the bundles and wait forever
def test_a_trial_trains_with_ray_workers_inside_its_placement_group(tmp_path: Path, ray_2cpu):
    # bundles [driver 0.01, learner 0.25, worker 0.5, worker 0.5] on 2 CPUs: each actor pinned to its own bundle
    sweep = _sweep_file(tmp_path, "t-ray", num_samples=2, max_concurrent_trials=1, scheduler={"type": "fifo"},
                        search_space={"lr": {"choice": [1e-3, 2e-3]}})
    spec = yaml.safe_load(sweep.read_text())
    spec["set"] = {**spec["set"], "num_workers": 2, "max_updates": 6, "epochs": 100}
    sweep.write_text(yaml.safe_dump(spec))
    summary = run_sweep(sweep)
    assert summary["n_trials"] == 2 and summary["n_errors"] == 0
    for r in _children("t-ray", summary["parent_run_id"]):
        assert r.info.status == "FINISHED"
        assert r.data.params["num_workers"] == "2" and r.data.metrics["updates"] >= 6
        assert r.data.metrics["perf/updates_per_s"] > 0 and "perf/staleness_mean" in r.data.metrics


def test_rllib_bundles_reserve_the_runners_and_learners_a_trial_starts():
    smoke = ROOT / "tune_configs" / "smoke.yaml"
    local = load_config(smoke, ["engine=rllib_appo", "num_workers=0"])
    assert rllib_bundles(local, 1, cluster_gpus=0) == [{"CPU": 1}]
    assert rllib_bundles(local, 1, cluster_gpus=1) == [{"CPU": 1, "GPU": 1}]  # the learner is in the trial's driver
    remote = load_config(smoke, ["engine=rllib_appo", "num_workers=2", "ray.worker_cpus=0.5", "ray.rllib_learners=1",
                                 "ray.learner_cpus=0.25"])
    assert rllib_bundles(remote, 0.5, cluster_gpus=0) == [{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.25}]
    assert rllib_bundles(remote, 0.5, cluster_gpus=2)[-1] == {"CPU": 0.25, "GPU": 1}
    cpu_only = load_config(smoke, ["engine=rllib_appo", "num_workers=0", "ray.rllib_learners=1", "ray.learner_cpus=0.5",
                                   "ray.learner_gpus=0"])
    assert rllib_bundles(cpu_only, 1, cluster_gpus=1) == [{"CPU": 1}, {"CPU": 0.5}]


@pytest.mark.timeout(420)
def test_an_rllib_appo_sweep_runs_its_trials_with_remote_runners_and_learners(tmp_path: Path, ray_2cpu):
    """``engine: rllib_appo`` in a sweep: each trial's env runner and learner actors live in its placement group
    (0.5 + 0.5 + 0.5 CPUs of 2), each trial trains its updates and is one FINISHED MLflow run with a validation Dice."""
    sweep = _sweep_file(tmp_path, "t-rllib", num_samples=2, max_concurrent_trials=1, cpus_per_trial=0.5,
                        scheduler={"type": "fifo"}, search_space={"lr": {"choice": [1e-3, 2e-3]}})
    spec = yaml.safe_load(sweep.read_text())
    spec["set"] = {**spec["set"], "engine": "rllib_appo", "num_workers": 1, "worker_cpus": 0.5, "rllib_learners": 1,
                   "learner_cpus": 0.5, "batch_size": 2, "max_updates": 6, "eval_every": 3, "epochs": 100}
    sweep.write_text(yaml.safe_dump(spec))
    summary = run_sweep(sweep)
    assert summary["n_trials"] == 2 and summary["n_errors"] == 0
    runs = _children("t-rllib", summary["parent_run_id"])
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params["engine"] == "rllib_appo" and r.data.params["ray.rllib_learners"] == "1"
        assert r.data.metrics["updates"] == 6 and 0 <= r.data.metrics["val/dice"] <= 1
        assert r.data.metrics["perf/updates_per_s"] > 0


SWEEP_FILES = sorted(p.name for p in (ROOT / "tune_configs").glob("*.yaml") if "search_space" in
                     yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_shipped_sweep_file_loads_and_each_of_its_trials_is_a_valid_config(name: str):
    """A sweep is hours of CPU: a typo in its last variant must fail here, not when Tune reaches that trial."""

    spec = load_sweep(ROOT / "tune_configs" / name)
    space = spec["search_space"]
    rows = space.get("variant", {}).get("grid", [{}])
    names = [r.get("name") for r in rows]
    assert len(set(names)) == len(names), f"{name}: variant names repeat: {names}"
    grids = {k: d["grid"] for k, d in space.items() if k != "variant" and "grid" in d}
    for row in rows:
        for k, values in grids.items():
            cfg = trial_config(spec["base"], {k: values[-1], "variant": row})
            assert cfg.budget.max_updates == spec["base"]["budget"]["max_updates"] or "budget.max_updates" in row


def test_the_shipped_sweeps_include_the_ablations():
    assert {"ablation_heart.yaml", "ablation_lgg.yaml", "cv_heart.yaml", "cv_lgg.yaml"} <= set(SWEEP_FILES)


def test_variants_keeps_only_the_named_rows_of_a_sweeps_variant_grid(capsys):
    """``--variants`` runs part of an ablation (rows left for another machine, or lost with a storage): only the named
    rows, in the file's order; a name the file lacks, or a sweep without a variant grid, is an error naming both."""

    path = ROOT / "tune_configs" / "ablation_lgg.yaml"
    spec = load_sweep(path, ["keep-0.9", "adv-norm"])
    assert [r["name"] for r in spec["search_space"]["variant"]["grid"]] == ["adv-norm", "keep-0.9"]
    assert spec["search_space"]["data.fold"] == load_sweep(path)["search_space"]["data.fold"]
    assert spec["experiment"] == load_sweep(path)["experiment"]  # the same storage: one report reads both parts
    with pytest.raises(ValueError, match=r"no row named \['adv_norm'\] in sweep file .*ablation_lgg.yaml; its variant "
                                         r"rows: \['base', "):
        load_sweep(path, ["base", "adv_norm"])
    with pytest.raises(ValueError, match="sweep_asha.yaml has no search_space.variant grid"):
        load_sweep(ROOT / "tune_configs" / "sweep_asha.yaml", ["base"])
    assert main(["train", "--tune", str(path), "--variants", "nope"]) == 2  # refused before Ray or MLflow start
    assert "no row named ['nope']" in capsys.readouterr().err


# sweeps whose recorded figures (benchmarks/results/*.json) were measured with the paper's step, before the CPU
# configs took issue 23's recipe
PAPER_STEP_SWEEPS = ["ablation.yaml", "ablation_lgg.yaml", "cv_lgg.yaml", "cv_lgg_tmax5.yaml", "cv_lgg_recipe.yaml",
                     "fewshot.yaml", "cost_lgg.yaml", "ablation_heart.yaml", "cv_heart.yaml", "cv_heart_recipe.yaml"]


def test_the_cpu_configs_carry_the_recipe_and_older_sweeps_still_run_the_papers_step():
    for name in ("lgg_cpu.yaml", "heart_cpu.yaml"):
        cfg = load_config(ROOT / "tune_configs" / name, [])
        assert (cfg.pa3c.t_max, cfg.network.step_features, cfg.network.head_stride) == (5, "once", 2), name
    paper = dict(s.split("=") for s in PAPER_STEP)
    for name in PAPER_STEP_SWEEPS:
        base = load_sweep(ROOT / "tune_configs" / name)["base"]
        expected_t_max = 5 if name == "cost_lgg.yaml" else int(paper["pa3c.t_max"])  # cost_lgg's rows all ran 5
        assert (base["pa3c"]["t_max"], base["network"]["step_features"], base["network"]["head_stride"]) == (
            expected_t_max, paper["network.step_features"], int(paper["network.head_stride"])), name
