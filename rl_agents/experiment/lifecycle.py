"""One run lifecycle for every engine: budgets, evaluation cadence, checkpoints, Ctrl-C, final figures, tracking.

An engine (:mod:`rl_agents.engines`) supplies only what differs between ways of training:

* ``setup(resume)`` builds the agent and reads data (restoring ``resume``, a :class:`Checkpoint`, if given) and
  returns a description (``n_train``, ``n_val``, ``params``, ...);
* ``step()`` makes progress (one update, or whatever arrived from Ray workers) and returns the newest training
  scalars; ``update``, ``total_updates``, ``pixel_agent_steps`` and ``finished`` say where it stands;
* ``start_eval(max_images)`` starts a validation pass on the current weights and returns a job with
  ``result(block)`` (metrics or None while running) and ``snapshot()`` (the agent state that was evaluated);
* ``agent_state()``, ``rng_state()``, ``evaluate_state(state)``, ``stop()``, ``close()``, ``perf(wall)``.

Everything else is here, once: ``epochs`` / ``max_updates`` (the engine's plan), ``max_minutes`` and
``stop_at_val_dice``; a validation pass every ``eval_every`` updates; ``best.pt`` on a better validation Dice and
``last.pt`` every ``checkpoint_every`` updates (atomic, through :mod:`rl_agents.experiment.checkpoint`); Ctrl-C writes
``last.pt`` and re-raises; the final figures re-evaluate ``best.pt`` on the whole validation split; ``metrics.json``;
and MLflow (a live run fed at each validation pass, completed by :func:`rl_agents.experiment.tracking.log_run`).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pixelrl_env.profile import training_profile
from rl_agents.config import TrainConfig, to_dict
from rl_agents.engines.base import Engine
from rl_agents.experiment.checkpoint import (
    Checkpoint,
    CheckpointError,
    make_payload,
    previous_path,
    read_checkpoint,
    write_checkpoint,
)
from rl_agents.experiment.live import LiveRun
from rl_agents.experiment.tracking import log_run, tracking_uri
from rl_agents.experiment.visualize import learning_curve

console = Console()
log = logging.getLogger(__name__)


def engine_name(cfg: TrainConfig) -> str:
    """``supervised`` (the U-Net), ``hogwild``, ``ray``, ``rllib_appo`` or ``local``: ``cfg.engine``, ``auto``
    resolved."""
    if cfg.model == "unet":
        return "supervised"
    if cfg.engine == "auto":
        return "ray" if cfg.num_workers > 0 else "local"
    return cfg.engine


# name -> "module:class". Imported when chosen: a machine without Ray (the GPU suite's) still trains locally, and a
# local run does not pay for importing Ray and RLlib
ENGINES = {"supervised": "rl_agents.engines.supervised:SupervisedEngine",
           "hogwild": "rl_agents.engines.hogwild:HogwildEngine", "ray": "rl_agents.engines.ray_a3c:RayA3CEngine",
           "rllib_appo": "rl_agents.engines.rllib.engine:RLlibAPPOEngine", "local": "rl_agents.engines.local:LocalEngine"}


def engine_class(name: str) -> Callable[..., Engine]:
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_engine(cfg: TrainConfig, quiet: bool = False):
    """The engine ``cfg`` asks for: the single place where the CLI and sweep trials choose how to train."""
    return engine_class(engine_name(cfg))(cfg, quiet=quiet)


@dataclass
class RunState:
    update: int = 0
    best_dice: float = -1.0
    wall_time_s: float = 0.0
    pixel_agent_steps: int = 0
    history: list[dict] = field(default_factory=list)


class Run:
    """Drives one engine from start (or ``last.pt``) to its final ``metrics.json``."""

    def __init__(self, cfg: TrainConfig, output_dir: str | Path, engine, quiet: bool = False,
                 on_eval: Callable[[dict], None] | None = None):
        self.cfg, self.engine, self.quiet, self.on_eval = cfg, engine, quiet, on_eval
        self.out = Path(output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.state = RunState()
        self.train_stats: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.eval_job = None
        self.stopped_by: str | None = None
        self.profile: dict[str, Any] | None = None

    # checkpoints -----------------------------------------------------------------------------------------------
    def _run_dict(self) -> dict[str, Any]:
        s = self.state
        return {"update": s.update, "best_dice": s.best_dice, "wall_time_s": s.wall_time_s,
                "pixel_agent_steps": s.pixel_agent_steps, "history": s.history}

    def save_last(self) -> None:
        payload = make_payload(self.engine.name, self.cfg, self.engine.agent_state(), self._run_dict(),
                               self.engine.rng_state(), self.profile)
        write_checkpoint(self.ckpt_dir / "last.pt", payload)

    def _save_best(self, agent_state: dict, update: int) -> None:
        run = {**self._run_dict(), "update": update}
        write_checkpoint(self.ckpt_dir / "best.pt",
                         make_payload(self.engine.name, self.cfg, agent_state, run, profile=self.profile))

    def _resume_from(self) -> Checkpoint:
        ckpt = read_checkpoint(self.ckpt_dir / "last.pt")
        want = "unet" if self.cfg.model == "unet" else "pixeldrl"
        if ckpt.kind != want:
            raise CheckpointError(f"{ckpt.path} holds a {ckpt.kind!r} model; this config trains {want!r}")
        r = ckpt.run
        self.state = RunState(int(r["update"]), float(r["best_dice"]), float(r["wall_time_s"]),
                              int(r["pixel_agent_steps"]), list(r["history"]))
        return ckpt

    # evaluation ------------------------------------------------------------------------------------------------
    def _start_eval(self) -> None:
        self.eval_job = self.engine.start_eval(self.cfg.eval.max_images)

    def _poll_eval(self, block: bool) -> None:
        if self.eval_job is None:
            return
        res = self.eval_job.result(block)
        if res is None:
            return
        job, self.eval_job = self.eval_job, None
        update = int(res.pop("update"))
        self.last_eval = {f"val/{k}": v for k, v in res.items()}
        entry = {"update": update, "wall_time_s": round(self.state.wall_time_s, 2), **self.train_stats,
                 **self.last_eval}
        self.state.history.append(entry)
        if self.last_eval and self.last_eval["val/dice"] > self.state.best_dice:
            self.state.best_dice = self.last_eval["val/dice"]
            self._save_best(job.snapshot(), update)
        if not self.quiet:
            g = self.last_eval.get
            console.print(f"update {update:6d}  {self.state.wall_time_s:7.1f}s  "
                          f"return {self.train_stats.get('train/return', float('nan')):9.1f}  "
                          f"val dice {g('val/dice', float('nan')):.3f}  biou {g('val/biou', float('nan')):.3f}  "
                          f"hd95 {g('val/hd95', float('nan')):.2f}", highlight=False)
        if self.on_eval is not None:
            self.on_eval(entry)

    # the loop --------------------------------------------------------------------------------------------------
    def _budget_spent(self) -> str | None:
        cfg = self.cfg
        if cfg.budget.max_minutes is not None and self.state.wall_time_s >= cfg.budget.max_minutes * 60.0:
            return "max_minutes"
        if (cfg.budget.stop_at_val_dice is not None and self.state.history
                and self.state.history[-1].get("val/dice", -1.0) >= cfg.budget.stop_at_val_dice):
            return "stop_at_val_dice"
        return None

    def _loop(self, t0: float) -> None:
        cfg, s = self.cfg, self.state
        self.next_eval = (s.update // cfg.eval.every + 1) * cfg.eval.every
        self.next_ckpt = (s.update // cfg.eval.checkpoint_every + 1) * cfg.eval.checkpoint_every
        self.last_report = time.perf_counter()
        progress = Progress(TextColumn(f"[bold]{self.engine.name}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), console=console, disable=self.quiet)
        with progress:
            task = progress.add_task("train", total=self.engine.total_updates, completed=s.update, info="")
            while not self.engine.finished:
                self._tick(t0)
                progress.update(task, completed=s.update, info=f"val dice {self.last_eval.get('val/dice', float('nan')):.3f}")

    def _tick(self, t0: float) -> None:
        """One pass: a step of the engine, then whatever is due (evaluation, checkpoint, report, stop)."""
        cfg, eng, s = self.cfg, self.engine, self.state
        stats = eng.step()
        if stats:
            self.train_stats = stats
        s.update, s.pixel_agent_steps = eng.update, eng.pixel_agent_steps
        s.wall_time_s = time.perf_counter() - t0
        spent = self._budget_spent() if self.stopped_by is None else None
        due = s.update >= self.next_eval or (s.update >= eng.total_updates and self.stopped_by is None) or spent
        if due and self.eval_job is None and (not s.history or s.history[-1]["update"] != s.update):
            self._start_eval()
            self.next_eval = (s.update // cfg.eval.every + 1) * cfg.eval.every
        self._poll_eval(block=False)
        if s.update >= self.next_ckpt:
            self.save_last()
            self.next_ckpt = (s.update // cfg.eval.checkpoint_every + 1) * cfg.eval.checkpoint_every
        spent = spent or (self._budget_spent() if self.stopped_by is None else None)
        if spent:
            self.stopped_by = spent
            eng.stop()
        if time.perf_counter() - self.last_report >= cfg.tracking.report_every_s:
            self.last_report = time.perf_counter()
            line = eng.report_line(self.last_eval)
            if line and not self.quiet:
                console.print(line, highlight=False)

    def execute(self, resume: bool = False) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self._resume_from() if resume else None
        # where a distributed engine restores a dead learner from
        self.engine.last_checkpoint = last = self.ckpt_dir / "last.pt"
        self.engine.read_last_checkpoint = lambda: read_checkpoint(last) if (
            last.exists() or previous_path(last).exists()) else None
        info = self.engine.setup(ckpt)
        # a resumed run keeps the profile its checkpoint holds (the same data): read once, not at every resume
        self.profile = ckpt.profile if ckpt is not None and ckpt.profile else _profile(self.cfg)
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        if not self.quiet:
            console.print(info["banner"], highlight=False)
            if ckpt is not None:
                console.print(f"resumed from {ckpt.path} (written by the {ckpt.engine} engine) at update {ckpt.update}")
        t0 = time.perf_counter() - self.state.wall_time_s
        try:
            self._loop(t0)
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
            console.print("interrupted: writing checkpoints/last.pt")
            self.engine.stop()
            self.state.wall_time_s = time.perf_counter() - t0
            self.save_last()
            raise
        self.state.wall_time_s = time.perf_counter() - t0
        self._poll_eval(block=True)
        if not self.state.history or self.state.history[-1]["update"] != self.engine.update:
            self._start_eval()
            self._poll_eval(block=True)
        self.save_last()
        if not (self.ckpt_dir / "best.pt").exists():
            self._save_best(self.engine.agent_state(), self.engine.update)
        return self._finish(info)

    def _stop_reason(self) -> str:
        if self.stopped_by:
            return self.stopped_by
        if self.cfg.budget.max_updates is not None and self.engine.update >= self.cfg.budget.max_updates:
            return "max_updates"
        return "epochs"

    def _finish(self, info: dict[str, Any]) -> dict[str, Any]:
        # final figures come from the best checkpoint (selected on validation Dice), on the whole validation split
        best = read_checkpoint(self.ckpt_dir / "best.pt")
        final = {f"val/{k}": v for k, v in self.engine.evaluate_state(best.agent).items() if k != "update"}
        wall = self.state.wall_time_s
        metrics = {
            **final,
            "params": info["params"],
            **({"gflop_per_image_step": info["gflop_per_image_step"]} if "gflop_per_image_step" in info else {}),
            "wall_time_s": round(wall, 2),
            "updates": self.engine.update,
            "best_update": best.update,
            "pixel_agent_steps": self.engine.pixel_agent_steps,
            **self.engine.perf(wall),
            "stopped_by": self._stop_reason(),
            "engine": self.engine.name,
            "n_train": info["n_train"],
            "n_val": info["n_val"],
            **self.train_stats,
            "history": self.state.history,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))

        learning_curve(self.state.history, self.out / "learning_curve.png")  # with or without MLflow
        return metrics


def _profile(cfg: TrainConfig) -> dict[str, Any] | None:
    """What the training slices look like, for predict's "unlike the training data" check; a failure costs only the
    check (a warning), never the run."""
    try:
        return training_profile(cfg.data, to_dict(cfg)["data"])
    except Exception as e:  # noqa: BLE001
        log.warning("no data profile in the checkpoints (%s: %s): predict will not flag unfamiliar inputs",
                    type(e).__name__, e)
        return None


def train(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
          on_eval: Callable[[dict], None] | None = None, engine=None) -> dict[str, Any]:
    """Train as ``cfg`` says with the engine it asks for (or ``engine``, one built with test or benchmark hooks);
    returns the final metrics (no MLflow: tests, benchmarks)."""
    engine = engine or make_engine(cfg, quiet=quiet)
    try:
        return Run(cfg, output_dir, engine, quiet=quiet, on_eval=on_eval).execute(resume)
    finally:
        engine.close()


def train_distributed(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
                      on_report=None, on_eval=None, worker_cls=None, learner_cls=None,
                      evaluator_cls=None) -> dict[str, Any]:
    """Ray A3C through the run lifecycle, without MLflow, with the engine's test and benchmark hooks (fault
    injection: ``on_report``, and actor classes in place of :mod:`rl_agents.engines.ray_actors`')."""
    engine = engine_class("ray")(cfg, quiet=quiet, on_report=on_report, worker_cls=worker_cls, learner_cls=learner_cls,
                          evaluator_cls=evaluator_cls)
    return train(cfg, output_dir, resume=resume, quiet=quiet, on_eval=on_eval, engine=engine)


def run_training(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
                 on_eval: Callable[[dict], None] | None = None, mlflow_run_id: str | None = None) -> dict[str, Any]:
    """:func:`train`, recorded in MLflow as it goes: the run is RUNNING from the start and each validation pass is
    logged as it is computed (:class:`LiveRun`), then the final figures, model and artifacts end it (status KILLED
    when interrupted). The returned metrics gain ``mlflow`` (run id, experiment id, model URI) when recorded.

    ``on_eval(entry)`` is called after each validation pass (Tune reports through it). ``mlflow_run_id``: a run the
    caller created (a sweep trial's, a child of the sweep's run), fed the same way; a sweep ends it on failure.
    """
    live = (LiveRun(mlflow_run_id, cfg.tracking.system_metrics) if mlflow_run_id
            else LiveRun.start(cfg, output_dir))

    def report(entry: dict) -> None:
        if live is not None:
            live.log(entry)
        if on_eval is not None:
            on_eval(entry)

    run_id = live.run_id if live is not None else None
    try:
        metrics = train(cfg, output_dir, resume=resume, quiet=quiet, on_eval=report)
    except BaseException as e:
        if live is not None:
            live.close()
        if isinstance(e, KeyboardInterrupt) or mlflow_run_id is None:
            log_run(cfg, output_dir, None, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                    run_id=run_id, logged_steps=frozenset(live.logged) if live else frozenset())
        raise
    if live is not None:
        live.close()
    if cfg.tracking.mlflow and not quiet:  # logging the model and overlays takes a while: say what is happening
        console.print(f"recording the run in MLflow ({tracking_uri()}): metrics, model, overlays ...", highlight=False)
    recorded = log_run(cfg, output_dir, metrics, run_id=run_id,
                       logged_steps=frozenset(live.logged) if live else frozenset())
    return {**metrics, **({"mlflow": recorded} if recorded else {})}
