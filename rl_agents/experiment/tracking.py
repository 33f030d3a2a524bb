"""MLflow tracking: every training run (PA3C, Ray A3C or the U-Net) becomes one MLflow run.

What a run records: params = the full flattened config; metrics = the evaluation history per update (``step`` =
update, for every engine) and the final metrics; tags = git commit, dataset, preset, model; artifacts = the
config, ``metrics.json``, a learning-curve plot, overlays (image, ground truth, prediction, uncertainty) of a fixed
set of validation slices, the best checkpoint, and the model via ``mlflow.pytorch.log_model`` with an input example.

The store defaults to SQLite at an absolute path in the working directory (``sqlite:///<cwd>/mlflow.db``; an
absolute URI because Ray trials run in other directories); ``MLFLOW_TRACKING_URI`` overrides it (a tracking server on
the head node for clusters). Tracking never fails a training run: errors are logged as warnings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_agents.config import TrainConfig, flatten, to_dict
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.run_summary import model_input, run_note
from rl_agents.experiment.visualize import learning_curve

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


_warned_ray_copy = False


def cluster_credentials() -> None:
    """With ``PIXELDRL_MLFLOW_AUTH=ray-token`` (the cluster files set it on every node), MLflow's basic-auth
    username and password for the head's server (``cluster/mlflow_server.sh``): ``pixeldrl`` and the Ray token, from
    ``RAY_AUTH_TOKEN`` or the token file. Credentials the user set already are kept."""
    if os.environ.get("PIXELDRL_MLFLOW_AUTH") != "ray-token" or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    if not token:
        log.warning("PIXELDRL_MLFLOW_AUTH=ray-token but no Ray token (RAY_AUTH_TOKEN, ~/.ray/auth_token) was found: "
                    "the tracking server will refuse this run's logging")
        return
    os.environ["MLFLOW_TRACKING_USERNAME"] = "pixeldrl"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = token


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else SQLite in the working directory; warns (once) when that directory is Ray's
    temporary copy of a job's ``--working-dir``, where a store is lost to ``mlflow ui`` and ``pixeldrl compare``.
    On a cluster, sets the tracking server's credentials first (:func:`cluster_credentials`)."""
    global _warned_ray_copy
    cluster_credentials()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = (Path.cwd() / "mlflow.db").resolve()
    if not _warned_ray_copy and ("runtime_resources" in db.parts or any(p.startswith("_ray_pkg_") for p in db.parts)):
        _warned_ray_copy = True
        log.warning("MLflow would write to %s, inside Ray's temporary copy of the job's working dir, where mlflow ui "
                    "and pixeldrl compare never look: submit with --runtime-env-json "
                    "'{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"sqlite:////abs/path/mlflow.db\"}}' (or a tracking "
                    "server's http:// URI)", db)
    return f"sqlite:///{db}"


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it if needed. With a SQLite store its artifacts go beside the database
    (``<db dir>/mlartifacts``, absolute) rather than into whatever directory the first run happened to start in."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND[0]) is None:  # one made before the tag: opens as model training too
            mlflow.MlflowClient(tracking_uri()).set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # noqa: BLE001 - created meanwhile by a concurrent trial: use that one
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# MLflow 3's UI opens an experiment without this tag on its GenAI pages; ours is model training
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def log_dataset(cfg: TrainConfig) -> None:
    """The run's data as an MLflow input (the UI's "Datasets used"): where it came from, its split and preparation."""

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    d = to_dict(cfg)["data"]
    where = d.get("path") or f"built-in {d['format']}"
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
    source = CodeDatasetSource({"format": str(d["format"]), "path": str(where),
                                "preparation": json.dumps(d, sort_keys=True, default=str)})
    name = f"{d['format']}:{Path(str(where)).name}" + (f" fold {d['fold']}/{d['folds']}" if d.get("folds") else "")
    mlflow.log_input(MetaDataset(source, name=name, digest=digest), context="training")


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}




def run_tags(cfg: TrainConfig, out: Path) -> dict[str, str]:
    return {"git_commit": git_commit(), "dataset": f"{cfg.data.format}:{cfg.data.path or 'built-in'}",
            "preset": cfg.network.preset if cfg.model == "pixeldrl" else "unet", "model": cfg.model,
            "output_dir": str(out.resolve())}


def log_params(run_id: str, cfg: TrainConfig) -> None:
    import mlflow

    _client().log_batch(run_id, params=[mlflow.entities.Param(k, str(v)[:6000])
                                        for k, v in flatten(to_dict(cfg)).items()])


def start_run(cfg: TrainConfig, output_dir: str | Path) -> str:
    """A new RUNNING run for a training run about to start (params and tags logged); returns its id."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    out = Path(output_dir)
    run = _client().create_run(ensure_experiment(cfg.tracking.experiment),
                               run_name=cfg.tracking.run_name or out.name, tags=run_tags(cfg, out))
    log_params(run.info.run_id, cfg)
    return run.info.run_id


def ui_address(experiment_id: str, run_id: str) -> str:
    """Where a run opens: the tracking server's page, or ``mlflow ui``'s default address over a local store."""
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def log_run(cfg: TrainConfig, output_dir: str | Path, metrics: dict[str, Any] | None, status: str = "FINISHED",
            n_overlays: int = 4, run_id: str | None = None,
            logged_steps: frozenset[int] = frozenset()) -> dict[str, str] | None:
    """Record a finished (or interrupted: ``status="KILLED"``) run in MLflow and end it; returns ``run_id``,
    ``experiment_id`` and, when a model was logged, ``model_uri``.

    ``run_id``: complete a run created when training started (:class:`rl_agents.experiment.live.LiveRun` logged its
    params and each validation pass live; ``logged_steps``, the updates it logged, are not sent again).
    """
    if not cfg.tracking.mlflow:
        return None
    try:
        return _log_run(cfg, Path(output_dir), metrics, status, n_overlays, run_id, logged_steps)
    except Exception as e:  # noqa: BLE001 - a tracking failure must not cost the user the trained model
        log.warning("MLflow tracking failed (%s: %s); the run's files in %s are intact", type(e).__name__, e,
                    output_dir)
        return None


def _log_run(cfg: TrainConfig, out: Path, metrics: dict | None, status: str, n_overlays: int, run_id: str | None,
             logged_steps: frozenset[int]) -> dict[str, str]:
    import mlflow

    # "Creating initial MLflow database tables..." at every new store: MLflow's housekeeping, not the user's business
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    # the experiment passed explicitly: mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID to this process's
    # environment, which child processes (a Ray cluster started from it, a job) inherit and would then look up in
    # their own, different store ("experiment id 1 does not exist")
    experiment_id = ensure_experiment(cfg.tracking.experiment) if run_id is None else None
    params = {k: str(v) for k, v in flatten(to_dict(cfg)).items()}
    nested = mlflow.active_run() is not None
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=cfg.tracking.run_name or out.name, nested=nested, experiment_id=experiment_id)
    try:
        if run_id is None:
            mlflow.log_params(params)
        mlflow.set_tags(run_tags(cfg, out))
        log_dataset(cfg)
        for h in [h for h in (metrics or {}).get("history", []) if int(h["update"]) not in logged_steps]:
            mlflow.log_metrics(_numeric({k: v for k, v in h.items() if k != "update"}), step=int(h["update"]))
        if metrics:
            mlflow.set_tag("mlflow.note.content", run_note(metrics, "Validation: the best checkpoint on the whole "
                                                                    f"validation split ({metrics.get('n_val')} slices)"))
            # at the last step, logged after the history: MLflow's "latest" value (what `compare` and the UI show)
            # is then the final one (best checkpoint on the whole validation split), not the last evaluation
            steps = [int(h["update"]) for h in metrics.get("history", [])]
            final_step = max([*steps, int(metrics.get("updates", 0) or 0)])
            mlflow.log_metrics(_numeric({k: v for k, v in metrics.items() if k != "history"}), step=final_step)
        for name in ("config.yaml", "metrics.json"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name))
        best = out / "checkpoints" / "best.pt"
        model_uri = None
        if best.exists():
            mlflow.log_artifact(str(best), artifact_path="checkpoints")
            model_uri = _log_model_and_overlays(best, n_overlays)
        if (out / "learning_curve.png").exists():  # written by every finished run
            mlflow.log_artifact(str(out / "learning_curve.png"))
        else:  # an interrupted run: drawn from what it reached
            with tempfile.TemporaryDirectory() as tmp:
                png = learning_curve((metrics or {}).get("history", []), Path(tmp) / "learning_curve.png")
                if png:
                    mlflow.log_artifact(str(png))
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status=status)
    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            **({"model_uri": model_uri} if model_uri else {})}


def _log_model_and_overlays(best: Path, n_overlays: int) -> str:
    import mlflow
    import mlflow.pytorch


    model, cfg = load_model(best)
    in_ch = int(model.in_channels)  # PixelDRLNet and MONAI's UNet both keep it
    size = int(cfg.data.size or 64)  # native-size data: any size divisible by 4 works; 64 keeps the example small
    # batch 2: MLflow saves the model with torch.export (pt2), which fixes a dimension of size 1 for good, so an
    # example of one image gave a model that took one image only
    example = np.zeros((2, in_ch, size, size), np.float32)
    if cfg.model == "pixeldrl":  # the network alone returns (logits, value); log the t_max-step segmenter
        from rl_agents.algo.inference import GreedySegmenter

        model = GreedySegmenter(model, cfg.pa3c.t_max).eval()
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    # requirements stated, not inferred: inference warns (twice) about torch's "+cpu" local version label
    info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                    signature=infer_signature(example, output),
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                    metadata=model_input(cfg, in_ch))
    if n_overlays > 0:
        with tempfile.TemporaryDirectory() as tmp:
            evaluate_checkpoint(best, split="val", overlays=Path(tmp) / "overlays", max_overlays=n_overlays,
                                json_out=Path(tmp) / "eval_val.json")
            if (Path(tmp) / "overlays").exists():
                mlflow.log_artifacts(str(Path(tmp) / "overlays"), artifact_path="overlays")
            mlflow.log_artifact(str(Path(tmp) / "eval_val.json"))
    return info.model_uri


# Sweeps: a parent run per sweep, one child run per trial attempt, history logged live as Tune reports arrive.
def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri())


def start_sweep_run(experiment: str, sweep_file: str, spec: dict[str, Any], parent_run_id: str | None = None):
    """``(experiment_id, parent_run_id)``: the sweep's parent run, new unless ``parent_run_id`` (a resumed sweep)."""
    import mlflow

    exp_id = ensure_experiment(experiment)
    if parent_run_id:
        _client().update_run(parent_run_id, "RUNNING")  # an interrupted sweep's parent was ended KILLED
        return exp_id, parent_run_id
    client = _client()
    parent = client.create_run(exp_id, run_name=f"sweep {experiment}", tags={"sweep_file": sweep_file})
    client.log_batch(parent.info.run_id, params=[mlflow.entities.Param(f"sweep.{k}", str(v)[:6000])
                                                 for k, v in spec.items() if k != "base"])
    return exp_id, parent.info.run_id


def start_trial_run(experiment_id: str, parent_run_id: str, trial_id: str, name: str, variant: str,
                    cfg: TrainConfig) -> str:
    """A new MLflow run for this attempt of a trial (its params logged); earlier attempts get ``superseded_by``.

    A trial runs again after a failure (FailureConfig) or when a resumed sweep restarts it: each attempt is its own
    run, and "the trial's run" is the one without ``superseded_by``.
    """
    client = _client()
    earlier = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
                                 f" and tags.trial_id = '{trial_id}'")
    run = client.create_run(experiment_id, run_name=name,
                            tags={"mlflow.parentRunId": parent_run_id, "trial_id": trial_id,
                                  "attempt": str(len(earlier) + 1), "variant": variant})
    run_id = run.info.run_id
    for r in earlier:
        if "superseded_by" not in r.data.tags:
            client.set_tag(r.info.run_id, "superseded_by", run_id)
    log_params(run_id, cfg)
    return run_id


def numeric(entry: dict[str, Any]) -> dict[str, float]:
    """The numbers of a history entry (what Tune and MLflow receive)."""
    return _numeric(entry)


def log_step(run_id: str, entry: dict[str, Any]) -> dict[str, float]:
    """One history entry (a validation pass) as metrics at ``step = update``; returns the numeric values."""
    import mlflow

    nums = _numeric(entry)
    step = int(entry.get("update", 0))
    _client().log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, 0, step) for k, v in nums.items()
                                         if k != "update"])
    return nums


def set_note(run_id: str, note: str) -> None:
    _client().set_tag(run_id, "mlflow.note.content", note)


def end_run(run_id: str, status: str, stopped_by: str | None = None) -> None:
    client = _client()
    if stopped_by:
        client.set_tag(run_id, "stopped_by", stopped_by)
    client.set_terminated(run_id, status)


def end_sweep_run(experiment_id: str, parent_run_id: str, best_metrics: dict[str, Any], failed: bool,
                  ended_cleanly: set[str] = frozenset(), interrupted: bool = False) -> None:
    """Close trial runs left RUNNING, log the best, close the parent (KILLED when the sweep was interrupted: a
    ``--resume`` reopens it).

    A run can be left RUNNING two ways: its trial was stopped by the scheduler and the sweep ended before the trial's
    thread tagged it (``trial_id`` in ``ended_cleanly``: Tune reports it ended without error), or its process was
    stopped from outside (an interrupted sweep).
    """
    import mlflow

    client = _client()
    for r in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        if r.info.status == "RUNNING":
            by = "scheduler" if r.data.tags.get("trial_id") in ended_cleanly else "sweep ended or interrupted"
            end_run(r.info.run_id, "KILLED", by)
    client.log_batch(parent_run_id, metrics=[mlflow.entities.Metric(f"best/{k}", float(v), 0, 0)
                                             for k, v in best_metrics.items() if isinstance(v, (int, float))])
    client.set_terminated(parent_run_id, "FAILED" if failed else "KILLED" if interrupted else "FINISHED")


def search_runs(experiment: str, metric: str, max_runs: int):
    """The experiment's runs as MLflow's data frame, best ``metric`` first (``pixeldrl compare`` shapes it)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri()}")
    return mlflow.search_runs(experiment_names=[experiment], max_results=max_runs,
                              order_by=[f"metrics.`{metric}` DESC"])


def system_metrics_monitor(run_id: str):
    """MLflow's sampler of CPU, memory, disk and GPU use for ``run_id``, started (a thread; ``finish()`` stops it), or
    None where psutil is missing."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as e:  # psutil: a dependency, but a run must not need it
        log.warning("MLflow system metrics are off: %s", e)
        return None
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # "Started monitoring ...": not the user's
    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri())
    monitor.start()
    return monitor
