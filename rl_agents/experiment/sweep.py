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

A trial trains into ``<storage>/<experiment>/trial_<id>/run/`` (``config.yaml``, ``metrics.json``, ``checkpoints/``,
and ``trial.json`` naming its variant), which :mod:`rl_agents.experiment.cv` reads for cross-validation reports.

Each validation pass of a trial is one Tune report (``training_iteration``), so ASHA's ``grace_period`` counts
validation passes. A trial with ``num_workers >= 1`` reserves its actors with a placement group laid out by
:func:`rl_agents.engines.ray_runtime.ray_bundles` (bundle 0: the trial's driver and the evaluator, bundle 1: the
learner, then one bundle per worker); the engine pins each actor to its own bundle.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from rl_agents.config import (
    LEGACY,
    TrainConfig,
    canonical_key,
    config_from_dict,
    flatten,
    load_config,
    read_yaml_mapping,
    set_key,
    to_dict,
    validate,
)
from rl_agents.config.load import notify_flat
from rl_agents.engines.ray_runtime import connect, ray_bundles
from rl_agents.experiment.lifecycle import engine_name, run_training
from rl_agents.experiment.sweep_storage import check_storage
from rl_agents.experiment.tracking import (
    end_run,
    end_sweep_run,
    numeric,
    start_sweep_run,
    start_trial_run,
    tracking_uri,
)

SWEEP_KEYS = {"base", "set", "search_space", "num_samples", "max_concurrent_trials", "search", "scheduler", "metric",
              "mode", "max_failures", "cpus_per_trial", "experiment", "storage", "inject_failure"}
DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint", "grid")
TRIAL_INFO = "trial.json"  # beside a trial's config.yaml: what Tune sampled, the variant's name included


def load_sweep(path: str | Path, variants: list[str] | None = None) -> dict[str, Any]:
    """Read and check a sweep file; ``base`` resolved to a full config dict. ``variants`` keeps only those rows of
    its ``variant`` grid (part of an ablation on another machine, or the rows a lost storage took with it)."""
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
    space = _canonical_space(spec.get("search_space") or {}, f"sweep file {p}")
    known = set(flatten(to_dict(cfg)))
    for key, dist in space.items():
        if key == "variant":  # a grid of named override sets, e.g. the ablation rows
            rows = dist.get("grid") if isinstance(dist, dict) else None
            if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
                raise ValueError(f"sweep file {p}: search_space.variant must be {{grid: [{{key: value, ...}}, ...]}}")
            bad = sorted({k for r in rows for k in flatten(r) if k != "name" and k not in known})
            if bad:
                raise ValueError(f"sweep file {p}: search_space.variant sets unknown config key(s) {bad}")
            if variants is not None:
                names = [r.get("name") for r in rows]
                unknown = [v for v in variants if v not in names]
                if unknown or not variants:
                    raise ValueError(f"--variants {','.join(variants)!r}: no row named {unknown} in sweep file {p}; "
                                     f"its variant rows: {names}")
                space = {**space, "variant": {"grid": [r for r in rows if r.get("name") in variants]}}
            continue
        if key not in known:
            raise ValueError(f"sweep file {p}: search_space key {key!r} is not a config key")
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
            raise ValueError(f"sweep file {p}: search_space.{key} must be one of {{{', '.join(DISTRIBUTIONS)}: "
                             f"...}}, got {dist!r}")
    if variants is not None and "variant" not in space:
        raise ValueError(f"--variants {','.join(variants)!r}: sweep file {p} has no search_space.variant grid")
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


def _canonical_space(space: dict, where: str) -> dict:
    """The search space with flat keys from before the config's sections in their places (``lr`` -> ``optim.lr``),
    in the keys it samples and in each variant row."""
    if not isinstance(space, dict):
        raise ValueError(f"{where}: search_space must be a mapping, got {type(space).__name__}")
    rows = (space.get("variant") or {}).get("grid") if isinstance(space.get("variant"), dict) else None
    flat = [k.split(".")[0] for k in space if k.split(".")[0] in LEGACY]
    out = {canonical_key(k): v for k, v in space.items()}
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        flat += [k.split(".")[0] for r in rows for k in flatten(r) if k.split(".")[0] in LEGACY]
        out["variant"] = {**space["variant"], "grid": [{canonical_key(k): v for k, v in flatten(r).items()}
                                                       for r in rows]}
    notify_flat(sorted(set(flat)), where)
    return out


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
    raw = copy.deepcopy(base)
    sampled = dict(sampled)
    variant = sampled.pop("variant", None) or {}
    for k, v in {**flatten({k: v for k, v in variant.items() if k != "name"}), **sampled}.items():
        set_key(raw, k, v)
    cfg = config_from_dict(raw)
    validate(cfg)
    return cfg


def record_trial(out: Path, trial_id: str, sampled: dict[str, Any]) -> None:
    """Write ``out/trial.json``: the trial id, its variant's name and what was sampled.

    The variant's name exists nowhere else in the trial's folder (config.yaml holds only the resulting config), and
    reports that read the folder (:mod:`rl_agents.experiment.cv`) need it without MLflow.
    """
    out.mkdir(parents=True, exist_ok=True)
    name = str((sampled.get("variant") or {}).get("name", ""))
    (out / TRIAL_INFO).write_text(json.dumps({"trial_id": trial_id, "variant": name, "sampled": sampled}, indent=2,
                                             default=str))


def trial_run_name(sampled: dict[str, Any], trial_id: str) -> str:
    """A name that says what the trial tried (its variant and sampled values), ending in Tune's trial id:
    ``"pixeldrl fold=2 [4df70_00002]"``, ``"lr=0.00123 gamma=0.951 [a1b2c_00003]"``."""
    parts = [str(sampled["variant"]["name"])] if (sampled.get("variant") or {}).get("name") else []
    for k, v in sorted(flatten({k: v for k, v in sampled.items() if k != "variant"}).items()):
        parts.append(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}")
    text = " ".join(parts)
    return f"{text[:80]} [{trial_id}]" if text else trial_id


def _final_metric(result, metric: str) -> float | None:
    """The trial's figure as MLflow (and ``pixeldrl compare``) holds it: the final one of a finished trial (best
    checkpoint on the whole validation split, ``metrics.json``), else the last one it reported (stopped by ASHA)."""
    path = Path(result.path) / "run" / "metrics.json" if result.path else None
    if path is not None and path.is_file():
        value = json.loads(path.read_text()).get(metric)
        if value is not None:
            return float(value)
    value = (result.metrics or {}).get(metric)
    return None if value is None else float(value)


def _trainable(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """One trial: train with the sampled ``config`` through the shared run lifecycle, reporting each validation pass
    to Tune and MLflow.

    ``sweep`` (bound with ``tune.with_parameters``, so that Tune's tables show only what was sampled) holds the base
    config, the MLflow parent run and experiment, and the tracking URI.
    """
    from ray import tune

    os.environ["MLFLOW_TRACKING_URI"] = sweep["tracking_uri"]  # the driver's store, not one in the trial dir
    sampled = {k: v for k, v in config.items() if not k.startswith("_")}  # "_" keys: sweeps started before 0.1.0
    cfg = trial_config(sweep["base"], sampled)
    ctx = tune.get_context()
    out = Path(ctx.get_trial_dir()) / "run"
    cfg.tracking.run_name = trial_run_name(sampled, ctx.get_trial_id())
    record_trial(out, ctx.get_trial_id(), sampled)
    run_id = start_trial_run(sweep["experiment_id"], sweep["parent_run_id"], ctx.get_trial_id(), cfg.tracking.run_name,
                             str((sampled.get("variant") or {}).get("name", "")), cfg)

    def on_eval(entry: dict) -> None:  # run_training has logged it to the trial's MLflow run
        if sweep["inject_failure"] and not (out / ".failed_once").exists():
            (out / ".failed_once").write_text("injected")  # the retry of this trial passes
            raise RuntimeError("injected failure (sweep inject_failure: true)")
        tune.report(numeric(entry))

    try:
        run_training(cfg, out, quiet=True, on_eval=on_eval, mlflow_run_id=run_id)
    except SystemExit:  # Tune stops a trial (ASHA) by exiting its thread at a report
        end_run(run_id, "KILLED", "scheduler")
        raise
    except BaseException:
        end_run(run_id, "FAILED")
        raise


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default lists every param, and the base config is one of them


def trial_resources(spec: dict):
    """What a trial reserves: a Ray A3C or RLlib trial the engine's own bundle layout (Tune puts the actors a trial
    starts into its placement group), a single-process trial its CPUs."""
    from ray import tune

    cfg = config_from_dict(spec["base"])
    if engine_name(cfg) == "ray":
        return tune.PlacementGroupFactory(ray_bundles(cfg))
    if engine_name(cfg) == "hogwild":
        return tune.PlacementGroupFactory([{"CPU": cfg.num_workers * cfg.ray.worker_cpus}])
    if engine_name(cfg) == "rllib_appo":
        import ray

        from rl_agents.engines.rllib.engine import rllib_bundles

        return tune.PlacementGroupFactory(rllib_bundles(cfg, spec["cpus_per_trial"],
                                                        ray.cluster_resources().get("GPU", 0)))
    return tune.PlacementGroupFactory([{"CPU": spec["cpus_per_trial"]}])


def _tuner(spec: dict[str, Any], trainable, param_space: dict, storage_dir: Path, resume: bool):
    """A new Tuner for ``spec``, or the interrupted one restored from ``storage_dir`` (``resume``)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if resume and tune.Tuner.can_restore(str(storage_dir)):
        return tune.Tuner.restore(str(storage_dir), trainable, resume_unfinished=True, restart_errored=True,
                                  param_space=param_space)
    sched = spec["scheduler"]
    scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=int(sched.get("grace_period", 1)),
                               reduction_factor=float(sched.get("reduction_factor", 2)),
                               max_t=int(sched.get("max_t", 1000)))
                 if sched.get("type", "asha") == "asha" else FIFOScheduler())
    search_alg = None
    if spec["search"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=spec["metric"], mode=spec["mode"], scheduler=scheduler,
                                    search_alg=search_alg, num_samples=spec["num_samples"],
                                    max_concurrent_trials=spec["max_concurrent_trials"],
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=spec["experiment"], storage_path=spec["storage"],
                                  failure_config=tune.FailureConfig(max_failures=spec["max_failures"]), verbose=1),
    )


@contextlib.contextmanager
def _ctrl_c_seen():
    """Yields a function that says whether Ctrl-C was pressed while the block ran. Tune's own stop is kept: the first
    Ctrl-C is passed on as SIGUSR1 (Tune's other stop signal: save the state, end ``fit()``), a second one raises
    KeyboardInterrupt at once, as Tune does. Only in the main thread, where signal handlers can be set."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield lambda: False
        return
    seen = []

    def on_sigint(sig, frame):
        seen.append(sig)
        if len(seen) > 1:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)

    before, env = signal.signal(signal.SIGINT, on_sigint), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # else Tune's handler replaces ours for the run
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, before)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


def _trial_finished(result) -> bool:
    """Whether a trial ran to its end: the run lifecycle writes ``run/metrics.json`` last (a trial that ASHA stopped
    early, or that Ctrl-C stopped, has none)."""
    return bool(result.path) and (Path(result.path) / "run" / "metrics.json").is_file()


def run_sweep(path: str | Path, resume: bool = False, variants: list[str] | None = None) -> dict[str, Any]:
    """Run (or with ``resume``, continue) the sweep in ``path``, only the ``variants`` rows of its variant grid if
    given (a resumed sweep keeps the rows it started with); returns the best trial's config and metrics."""
    import ray
    from ray import tune

    spec = load_sweep(path, variants)
    storage_dir = check_storage(spec["storage"], spec["experiment"], resume, bool(variants))
    marker = storage_dir / "mlflow_parent_run_id"
    exp_id, parent_id = start_sweep_run(spec["experiment"], str(Path(path).resolve()), spec,
                                        marker.read_text().strip() if resume and marker.exists() else None)
    started = connect(None)
    try:
        param_space = _space(spec["search_space"])
        sweep = {"base": spec["base"], "parent_run_id": parent_id, "experiment_id": exp_id,
                 "inject_failure": spec["inject_failure"], "tracking_uri": tracking_uri()}
        trainable = tune.with_resources(tune.with_parameters(_trainable, sweep=sweep), trial_resources(spec))
        tuner = _tuner(spec, trainable, param_space, storage_dir, resume)
        storage_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(parent_id)
        with _ctrl_c_seen() as interrupted:
            results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    # the best by the figures MLflow holds, so that the sweep and `pixeldrl compare` name the same trial (Tune's own
    # best is by the last validation pass, not the best checkpoint's final evaluation)
    # Tune answers Ctrl-C by saving its state and returning from fit() as if done (the trials it stopped read as
    # terminated, those not started yet are not listed): only the signal tells an interrupted sweep from a done one
    stopped = interrupted()
    scored = [(v, r) for r in results if r.error is None and (v := _final_metric(r, spec["metric"])) is not None]
    if not scored and not stopped:
        raise RuntimeError(f"no trial of {spec['experiment']} reported {spec['metric']} ({results.num_errors} failed)")
    summary = {"best_config": {}, "best_run_name": None, "best_metrics": {}, "n_trials": len(results),
               "n_errors": results.num_errors, "interrupted": stopped,
               "n_finished": sum(1 for r in results if r.error is None and _trial_finished(r)),
               "parent_run_id": parent_id, "storage": str(storage_dir)}
    if scored:
        best = (max if spec["mode"] == "max" else min)(scored, key=lambda vr: vr[0])[1]
        final = best.path and Path(best.path) / "run" / "metrics.json"
        best_metrics = json.loads(final.read_text()) if final and final.is_file() else dict(best.metrics or {})
        sampled = {k: v for k, v in best.config.items() if not k.startswith("_")}
        summary.update(best_config=sampled,
                       best_run_name=trial_run_name(sampled, str((best.metrics or {}).get("trial_id", "?"))),
                       best_metrics={k: v for k, v in best_metrics.items() if "/" in k and isinstance(v, (int, float))})
    clean = {r.metrics.get("trial_id") for r in results if r.error is None and r.metrics}
    end_sweep_run(exp_id, parent_id, summary["best_metrics"], failed=results.num_errors > 0, ended_cleanly=clean,
                  interrupted=stopped)
    return summary
