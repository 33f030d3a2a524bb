"""Ray Tune sweeps over the training config, each trial an MLflow run nested under the sweep's parent run.

A sweep file (``tune_configs/sweep_asha.yaml`` is an example)::

    base: smoke.yaml              # a training config (path relative to this file), or a mapping of config keys
    set: {max_minutes: null}      # overrides applied to every trial
    search_space:                 # dotted config keys -> one distribution each
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      entropy_coef: {choice: [0.0, 0.01]}
      gamma: {uniform: [0.9, 0.99]}
      t_max: {randint: [3, 6]}    # upper bound excluded
      variant: {grid: [{name: full}, {name: no-attention, attention: false}]}   # named override sets
    num_samples: 4
    max_concurrent_trials: 2
    search: random                # random | optuna (pip install optuna)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or type: fifo
    metric: val/dice
    mode: max
    max_failures: 1               # a trial that raises is retried this many times
    cpus_per_trial: 1             # single-process trials; Ray trials reserve learner + workers instead
    experiment: sweep-smoke       # MLflow experiment and Tune run name
    storage: runs/tune            # Tune's results (resolved to an absolute path)

Each validation pass of a trial is one Tune report (``training_iteration``), so ASHA's ``grace_period`` counts
validation passes. A trial with ``num_workers >= 1`` reserves its learner and workers with a placement group
(bundle 0: the trial's driver and learner, then one bundle per worker); the actors it starts land in it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, config_from_dict, flatten, to_dict
from .tracking import ensure_experiment, log_run, tracking_uri

SWEEP_KEYS = {"base", "set", "search_space", "num_samples", "max_concurrent_trials", "search", "scheduler", "metric",
              "mode", "max_failures", "cpus_per_trial", "experiment", "storage", "inject_failure"}
DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint", "grid")


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file; ``base`` resolved to a full config dict."""
    from .config import load_config, read_yaml_mapping

    p = Path(path)
    spec = read_yaml_mapping(p, "sweep")
    unknown = sorted(set(spec) - SWEEP_KEYS)
    if unknown:
        raise ValueError(f"sweep file {p}: unknown key(s) {unknown}; known: {sorted(SWEEP_KEYS)}")
    base = spec.get("base", {})
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in
                 flatten(spec.get("set") or {}).items()]
    if isinstance(base, str):
        cfg = load_config(p.parent / base, overrides)
    else:
        cfg = load_config(None, [*(f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                   for k, v in flatten(base or {}).items()), *overrides])
    # trials run with the trial directory as working directory: make a relative local data path absolute here
    if cfg.data.path and "://" not in cfg.data.path and not Path(cfg.data.path).is_absolute():
        cfg.data.path = str(Path(cfg.data.path).resolve())
    space = spec.get("search_space") or {}
    known = set(flatten(to_dict(cfg)))
    for key, dist in space.items():
        if key == "variant":  # a grid of named override sets, e.g. the ablation rows
            rows = dist.get("grid") if isinstance(dist, dict) else None
            if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
                raise ValueError(f"sweep file {p}: search_space.variant must be {{grid: [{{key: value, ...}}, ...]}}")
            bad = sorted({k for r in rows for k in flatten(r) if k != "name" and k not in known})
            if bad:
                raise ValueError(f"sweep file {p}: search_space.variant sets unknown config key(s) {bad}")
            continue
        if key not in known:
            raise ValueError(f"sweep file {p}: search_space key {key!r} is not a config key")
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
            raise ValueError(f"sweep file {p}: search_space.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: "
                             f"...}}, got {dist!r}")
    sched = spec.get("scheduler") or {"type": "asha"}
    if sched.get("type", "asha") not in ("asha", "fifo"):
        raise ValueError(f"sweep file {p}: scheduler.type must be asha or fifo, got {sched.get('type')!r}")
    if spec.get("search", "random") not in ("random", "optuna"):
        raise ValueError(f"sweep file {p}: search must be random or optuna, got {spec.get('search')!r}")
    return {
        "base": to_dict(cfg), "search_space": space, "num_samples": int(spec.get("num_samples", 4)),
        "max_concurrent_trials": int(spec.get("max_concurrent_trials", 2)), "search": spec.get("search", "random"),
        "scheduler": sched, "metric": spec.get("metric", "val/dice"), "mode": spec.get("mode", "max"),
        "max_failures": int(spec.get("max_failures", 1)), "cpus_per_trial": float(spec.get("cpus_per_trial", 1)),
        "experiment": spec.get("experiment", p.stem), "storage": str(Path(spec.get("storage", "runs/tune")).resolve()),
        "inject_failure": bool(spec.get("inject_failure", False)),
    }


def _space(space: dict[str, dict]) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dist in space.items():
        kind, arg = next(iter(dist.items()))
        out[key] = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
                    "choice": tune.choice, "randint": lambda a: tune.randint(*a),
                    "grid": tune.grid_search}[kind](arg)
    return out


def trial_config(base: dict, sampled: dict[str, Any]) -> TrainConfig:
    """The base config with the trial's dotted keys set, type-checked like ``--set``."""
    from .config import _set_dotted, validate

    raw = {**base, "data": dict(base["data"])}
    sampled = dict(sampled)
    variant = sampled.pop("variant", None) or {}
    for k, v in {**flatten({k: v for k, v in variant.items() if k != "name"}), **sampled}.items():
        _set_dotted(raw, k, v)
    cfg = config_from_dict(raw)
    validate(cfg)
    return cfg


def _trainable(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial: train with the sampled ``config``, report each validation pass to Tune and MLflow.

    ``sweep`` (bound with ``tune.with_parameters``, so that Tune's tables show only what was sampled) holds the base
    config, the MLflow parent run and experiment, and the tracking URI.
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from ray import tune

    os.environ["MLFLOW_TRACKING_URI"] = sweep["tracking_uri"]  # the driver's store, not one in the trial dir
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}  # "_" keys: sweeps started before 0.1.0
    cfg = trial_config(sweep["base"], sampled)
    ctx = tune.get_context()
    out = Path(ctx.get_trial_dir()) / "run"
    name = f"{ctx.get_trial_name()}"
    cfg.run_name = name
    client = MlflowClient(tracking_uri())
    trial_id = ctx.get_trial_id()
    # A trial runs again after a failure (FailureConfig) or when a resumed sweep restarts it; a trial that ended just
    # as the sweep was interrupted can run again too. Each attempt is its own run; earlier ones are tagged so that
    # "the trial's run" is the one without `superseded_by`.
    earlier = client.search_runs([sweep["experiment_id"]], f"tags.mlflow.parentRunId = '{sweep['parent_run_id']}'"
                                 f" and tags.trial_id = '{trial_id}'")
    run = client.create_run(sweep["experiment_id"], run_name=name,
                            tags={"mlflow.parentRunId": sweep["parent_run_id"], "trial_id": trial_id,
                                  "attempt": str(len(earlier) + 1),
                                  "variant": str((sampled.get("variant") or {}).get("name", ""))})
    run_id = run.info.run_id
    for r in earlier:
        if "superseded_by" not in r.data.tags:
            client.set_tag(r.info.run_id, "superseded_by", run_id)
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000])
                                     for k, v in flatten(to_dict(cfg)).items()])

    def on_eval(entry: dict) -> None:
        step = int(entry.get("update", 0))
        nums = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, 0, step) for k, v in nums.items()
                                          if k != "update"])
        if sweep["inject_failure"] and not (out / ".failed_once").exists():
            (out / ".failed_once").write_text("injected")  # the retry of this trial passes
            raise RuntimeError("injected failure (sweep inject_failure: true)")
        tune.report(nums)

    if cfg.model == "unet":
        from .baseline import train_unet as run_fn
    elif cfg.num_workers > 0:
        from .distributed import train_distributed as run_fn
    else:
        from .trainer import train as run_fn
    try:
        metrics = run_fn(cfg, out, quiet=True, on_eval=on_eval)
    except SystemExit:  # Tune stops a trial (ASHA) by exiting its thread at a report
        client.set_tag(run_id, "stopped_by", "scheduler")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    log_run(cfg, out, metrics, run_id=run_id, history_logged=True)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default lists every param, and the base config is one of them


def _resources(spec: dict):
    from ray import tune

    base = spec["base"]
    if base["num_workers"] > 0:
        # bundle 0: the trial's driver (it only waits); then the learner; then one bundle per worker
        learner = {"CPU": max(base["learner_cpus"], 0.01)}
        if base["learner_gpus"]:
            learner["GPU"] = base["learner_gpus"]
        return tune.PlacementGroupFactory([{"CPU": 0.01}, learner] + [{"CPU": base["worker_cpus"]}] * base["num_workers"])
    return tune.PlacementGroupFactory([{"CPU": spec["cpus_per_trial"]}])


def run_sweep(path: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run (or with ``resume``, continue) the sweep in ``path``; returns the best trial's config and metrics."""
    import mlflow
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = load_sweep(path)
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment(ensure_experiment(spec["experiment"]))
    client = MlflowClient(tracking_uri())
    marker = Path(spec["storage"]) / spec["experiment"] / "mlflow_parent_run_id"
    if resume and marker.exists():
        parent_id = marker.read_text().strip()
    else:
        parent = client.create_run(exp.experiment_id, run_name=f"sweep {spec['experiment']}",
                                   tags={"sweep_file": str(Path(path).resolve())})
        parent_id = parent.info.run_id
        client.log_batch(parent_id, params=[mlflow.entities.Param(f"sweep.{k}", str(v)[:6000]) for k, v in
                                            spec.items() if k != "base"])
    started = not ray.is_initialized()
    if started:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(include_dashboard=False)
    try:
        param_space = _space(spec["search_space"])
        sweep = {"base": spec["base"], "parent_run_id": parent_id, "experiment_id": exp.experiment_id,
                 "inject_failure": spec["inject_failure"], "tracking_uri": tracking_uri()}
        trainable = tune.with_resources(tune.with_parameters(_trainable, sweep=sweep), _resources(spec))
        storage_dir = Path(spec["storage"]) / spec["experiment"]
        if resume and tune.Tuner.can_restore(str(storage_dir)):
            tuner = tune.Tuner.restore(str(storage_dir), trainable, resume_unfinished=True, restart_errored=True,
                                       param_space=param_space)
        else:
            sched = spec["scheduler"]
            scheduler = (ASHAScheduler(time_attr="training_iteration",
                                       grace_period=int(sched.get("grace_period", 1)),
                                       reduction_factor=float(sched.get("reduction_factor", 2)),
                                       max_t=int(sched.get("max_t", 1000)))
                         if sched.get("type", "asha") == "asha" else FIFOScheduler())
            search_alg = None
            if spec["search"] == "optuna":
                from ray.tune.search.optuna import OptunaSearch

                search_alg = OptunaSearch()
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(metric=spec["metric"], mode=spec["mode"], scheduler=scheduler,
                                            search_alg=search_alg, num_samples=spec["num_samples"],
                                            max_concurrent_trials=spec["max_concurrent_trials"],
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(name=spec["experiment"], storage_path=spec["storage"],
                                          failure_config=tune.FailureConfig(max_failures=spec["max_failures"]),
                                          verbose=1),
            )
            storage_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(parent_id)
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    # trials whose process was stopped from outside (an interrupted sweep) never reach their end: close them here
    for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"):
        if r.info.status == "RUNNING":
            client.set_tag(r.info.run_id, "stopped_by", "sweep ended or interrupted")
            client.set_terminated(r.info.run_id, "KILLED")
    best = results.get_best_result(metric=spec["metric"], mode=spec["mode"])
    summary = {"best_config": {k: v for k, v in best.config.items() if not k.startswith("_")},
               "best_metrics": {k: v for k, v in (best.metrics or {}).items() if "/" in k},
               "n_trials": len(results), "n_errors": results.num_errors, "parent_run_id": parent_id,
               "storage": str(storage_dir)}
    client.log_batch(parent_id, metrics=[mlflow.entities.Metric(f"best/{k}", float(v), 0, 0)
                                         for k, v in summary["best_metrics"].items()
                                         if isinstance(v, (int, float))])
    client.set_terminated(parent_id, "FINISHED" if results.num_errors == 0 else "FAILED")
    return summary
