"""Asynchronous A3C on Ray: one learner actor, N worker actors, an evaluator actor; no barrier anywhere.

The shape follows Ray's parameter-server example: small actors with one verb each, plain CPU arrays between them,
``ray.wait`` in the driver.

* :class:`Learner` holds the global :class:`~rl_agents.algo.agent.PA3CAgent` (on a GPU when the node has one).
  ``push`` applies one worker's gradient the moment it arrives (an actor runs its calls one at a time, so gradients
  are applied in arrival order) and answers with the newest weights.
* :class:`Worker` holds a local agent, its own environment and its own part of the training split, which it reads
  itself (only its part: :func:`pixelrl_env.dataset.load_part`; images never pass through the driver). ``work``
  runs rollouts of ``t_max`` steps, computes the PA3C gradient, pushes it, and carries on with the weights it gets.
* :class:`Evaluator` reads only the validation split and scores a set of weights.
* :class:`RayA3CEngine` is the driver side: it keeps workers busy (:meth:`~RayA3CEngine.step`), restarts the ones
  that die, and hands evaluations and checkpoints to the shared run lifecycle, which writes them on the driver's
  disk (under ``ray job submit`` the learner may sit on a GPU node that does not share it).

Staleness: every gradient carries the learner version its weights came from; ``staleness = version_now - version``.
Above ``staleness_bound`` a gradient is dropped or down-weighted by ``1 / (1 + staleness - bound)`` and counted.

Reproducibility: the order in which gradients arrive depends on timing, so two asynchronous runs with the same seed
differ (as in any A3C); each actor's own randomness is seeded from ``(seed, worker index, starting update)``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from rl_agents.algo.agent import PA3CAgent, Weights, make_train_env
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig, config_from_dict, to_dict

console = Console()


def _threads(cpus: float) -> int:
    return max(1, int(round(cpus)))


def actor_seed(seed: int, index: int, start_update: int) -> int:
    """Seed of worker ``index`` (index -1: the learner) in a run that starts (or resumes) at ``start_update``."""
    return int(np.random.SeedSequence([seed, index + 1, start_update]).generate_state(1)[0])


class Learner:
    """The global agent. One verb: :meth:`push` (apply a gradient, answer with the newest weights)."""

    def __init__(self, cfg_dict: dict, in_channels: int, n_train: int, resume: dict | None = None,
                 pixel_agent_steps: int = 0):
        self.cfg = cfg = config_from_dict(cfg_dict)
        torch.set_num_threads(_threads(cfg.learner_cpus))
        # fake GPU nodes (and CPU-only torch) report a GPU torch cannot use: fall back to the CPU
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        torch.manual_seed(cfg.seed)
        self.agent = PA3CAgent(cfg, in_channels, n_train, device)
        if resume is not None:
            self.agent.load_state_dict(resume)
        self.counters: dict[str, Any] = {"pixel_agent_steps": int(pixel_agent_steps), "dropped": 0,
                                         "downweighted": 0, "busy_s": 0.0, "staleness_sum": 0, "staleness_max": 0,
                                         "pushes": 0, "ahead": 0, "applied": 0, "duplicates": 0}
        self.seen: set[str] = set()  # gradient ids applied: a push that arrives twice (a retried call) is not
        self.per_worker: dict[int, int] = defaultdict(int)
        self.last_stats: dict[str, float] = {}
        self.stopped = False
        self._cache: tuple[int, list[Weights]] | None = None
        self.t0 = time.perf_counter()

    def placement(self) -> tuple[str, str]:
        """``(device, Ray node id)``: where the learner computes, and on which node (metrics, autoscaling test)."""
        import ray

        d = self.agent.device
        device = str(d) + (f" ({torch.cuda.get_device_name()})" if d.type == "cuda" else "")
        return device, ray.get_runtime_context().get_node_id()

    def weights(self) -> tuple[int, list[Weights], bool, int]:
        """``(version, [network, reward kernel] as CPU arrays, done, pixel-agent steps applied so far)``."""
        if self._cache is None or self._cache[0] != self.agent.update:
            self._cache = (self.agent.update, self.agent.weights())
        return self.agent.update, self._cache[1], self.done(), self.counters["pixel_agent_steps"]

    def done(self) -> bool:
        return self.stopped or self.agent.update >= self.agent.total_updates

    def _scale(self, staleness: int) -> float | None:
        """1.0, a down-weighting factor, or None (drop), by the staleness rule; counted."""
        c, bound = self.counters, self.cfg.staleness_bound
        c["pushes"] += 1
        c["staleness_sum"] += staleness
        c["staleness_max"] = max(c["staleness_max"], staleness)
        if bound is None or staleness <= bound:
            return 1.0
        if self.cfg.stale_policy == "drop":
            c["dropped"] += 1
            return None
        c["downweighted"] += 1
        return 1.0 / (1 + staleness - bound)

    def push(self, worker: int, version: int, grads: list[np.ndarray], stats: dict[str, float]):
        """Apply one gradient (computed on weights of ``version``) unless it is too stale; return :meth:`weights`."""
        t = time.perf_counter()
        gid = stats.pop("gradient_id", None)
        if self.done():
            return self.weights()
        if gid is not None:
            if gid in self.seen:
                self.counters["duplicates"] += 1
                return self.weights()
            self.seen.add(gid)
        staleness = self.agent.update - version
        if staleness < 0:  # weights newer than this learner's: a worker that missed a learner restore
            self.counters["ahead"] += 1
        scale = self._scale(staleness)
        if scale is not None:
            charts = self.agent.apply_gradients(grads, scale)
            self.counters["applied"] += 1
            self.counters["pixel_agent_steps"] += int(stats.get("pixel_agent_steps", 0))
            self.per_worker[worker] += 1
            self.last_stats = {**{k: v for k, v in stats.items() if k != "pixel_agent_steps"}, **charts,
                               "charts/staleness": float(staleness)}
        self.counters["busy_s"] += time.perf_counter() - t
        return self.weights()

    def stop(self) -> int:
        self.stopped = True
        return self.agent.update

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "update": self.agent.update,
            "pixel_agent_steps": c["pixel_agent_steps"],
            "staleness_mean": c["staleness_sum"] / max(c["pushes"], 1),
            "staleness_max": c["staleness_max"],
            "dropped": c["dropped"],
            "downweighted": c["downweighted"],
            "ahead": c["ahead"],
            "applied": c["applied"],
            "duplicates": c["duplicates"],
            "busy_s": c["busy_s"],
            "wall_s": time.perf_counter() - self.t0,
            "per_worker_updates": dict(self.per_worker),
            "last": dict(self.last_stats),
        }

    def state_dict(self) -> dict[str, Any]:
        """The agent's state (the checkpoint's ``agent`` part), every tensor on the CPU."""
        return self.agent.state_dict()


class Worker:
    """A local agent and an environment over this worker's part of the data. One verb: :meth:`work`."""

    def __init__(self, cfg_dict: dict, index: int, n_workers: int, start_update: int = 0, slowdown: float = 1.0):
        from pixelrl_env.dataset import load_part

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.index = index
        self.slowdown = slowdown
        torch.set_num_threads(_threads(cfg.worker_cpus))
        seed = actor_seed(cfg.seed, index, start_update)
        torch.manual_seed(seed)
        self.read_stats: dict[str, Any] = {}
        part = load_part(cfg.data, "train", index, n_workers, stats=self.read_stats)
        self.env = make_train_env(cfg, part.images, part.masks, seed)
        self.agent = PA3CAgent(cfg, part.images.shape[1], len(part), optimizer=False)
        self.gen = torch.Generator().manual_seed(seed)
        self.version: int | None = None
        # every gradient gets an id unique to this incarnation of the worker: the learner applies each id once
        self.gradient_ids = (f"{index}:{os.getpid()}:{time.time_ns()}:{k}" for k in itertools.count())

    def reset(self) -> None:
        """Forget the weights: the next :meth:`work` starts from the learner's (after a learner restore)."""
        self.version = None

    def _set(self, version: int, weights: list[Weights]) -> None:
        self.agent.set_weights(weights)
        self.version = self.agent.update = version  # schedules (entropy_coef_final) follow the learner's version

    def work(self, learner, n_rollouts: int) -> dict[str, Any]:
        """Run up to ``n_rollouts`` rollouts, pushing each gradient to ``learner``; stop early when it is done."""
        import ray

        t0 = time.perf_counter()
        done = False
        applied = 0
        if self.version is None:
            version, weights, done, applied = ray.get(learner.weights.remote())
            self._set(version, weights)
        n = steps = 0
        compute_s = 0.0
        stats: dict[str, float] = {}
        while n < n_rollouts and not done:
            t = time.perf_counter()
            grads, stats = self.agent.compute_gradients(self.env, self.gen)
            grads = [g.numpy() for g in grads]
            dt = time.perf_counter() - t
            compute_s += dt
            if self.slowdown > 1:
                time.sleep((self.slowdown - 1) * dt)
            version, weights, done, applied = ray.get(learner.push.remote(self.index, self.version, grads,
                                                                     {**stats, "gradient_id": next(self.gradient_ids)}))
            self._set(version, weights)
            n += 1
            steps += int(stats["pixel_agent_steps"])
        return {"worker": self.index, "node": ray.get_runtime_context().get_node_id(), "rollouts": n,
                "pixel_agent_steps": steps, "wall_s": time.perf_counter() - t0, "compute_s": compute_s, "done": done,
                "version": self.version, "applied_pixel_agent_steps": applied, "stats": stats,
                "read": dict(self.read_stats)}


class Evaluator:
    """Reads only the validation split. One verb: :meth:`evaluate` (greedy segmentation, mean metrics)."""

    def __init__(self, cfg_dict: dict):
        from pixelrl_env.dataset import describe, load_part

        self.cfg = cfg = config_from_dict(cfg_dict)
        torch.set_num_threads(1)
        self.desc = describe(cfg.data)
        self.val = load_part(cfg.data, "val") if self.desc["n_val"] else None
        self.agent = PA3CAgent(cfg, self.desc["in_channels"], max(self.desc["n_train"], 1), optimizer=False)

    def info(self) -> dict[str, int]:
        return dict(self.desc)

    def evaluate(self, versioned: tuple, max_images: int | None) -> dict[str, Any]:
        from rl_agents.engines.local import evaluate_arrays

        version, weights = versioned[0], versioned[1]
        self.agent.set_weights(weights)
        if self.val is None:
            return {"update": version}
        metrics = evaluate_arrays(self.agent.model, self.val, self.cfg, torch.device("cpu"), max_images)
        return {"update": version, **metrics}

    def evaluate_state(self, state: dict[str, Any]) -> dict[str, Any]:
        self.agent.load_state_dict(state, weights_only=True)
        return self.evaluate((int(state["update"]), self.agent.weights()), None)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def connect(address: str | None, num_cpus: float | None = None) -> bool:
    """Connect to Ray (``address``, else ``RAY_ADDRESS``, else a local Ray on 127.0.0.1); True when this call
    started it (and so must shut it down). The one ``ray.init`` of the project: training and sweeps use it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(num_cpus or 0))
        # Ray 2.60 turns token authentication on for a local cluster and warns at every start that it did ("Set
        # RAY_AUTH_MODE=disabled to opt out"): we want it on, so the notice is noise. Setting RAY_AUTH_MODE=token
        # here instead would not do: Ray has read its config at import, and the driver would then be refused by its
        # own GCS. Other warnings of that logger (auth disabled by the user) still show.
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        quiet = _DropMessage("Token authentication is enabled")
        auth_log.addFilter(quiet)
        try:
            ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        finally:
            auth_log.removeFilter(quiet)
    return True


EXIT_HEAD_LOST = 75  # EX_TEMPFAIL: the cluster went away; the same command with --resume on a new one continues


class HeadWatchdog:
    """Ends the driver when the Ray head goes away: a TCP connection to its GCS is tried every 0.2 s; when the
    connection is refused (nothing listens: the GCS has stopped) or has failed for ``timeout_s`` (the head
    unreachable), the process prints what happened and exits with :data:`EXIT_HEAD_LOST`.

    Why a process exit, and why this fast: a driver whose node's raylet dies with the head is ended by Ray within
    seconds with exit status 1 and no word on the console (the reason goes to a log file under the session dir);
    a driver on another node blocks on actors that died with the head until Ray's reconnect timeout (60 s). On the
    head's own machine this is a race that Ray can still win under load (status 1, no message). Nothing
    can be saved at that point (the learner died with the cluster): ``checkpoints/last.pt`` is as the last periodic
    checkpoint wrote it.
    """

    def __init__(self, gcs_address: str, timeout_s: float, checkpoint: Path | None):
        import threading

        host, port = gcs_address.rsplit(":", 1)
        self.addr, self.timeout_s, self.checkpoint = (host, int(port)), timeout_s, checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-head-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import socket

        failing_since, refused = None, 0
        while not self._stop.wait(0.2):
            try:
                socket.create_connection(self.addr, timeout=2).close()
                failing_since, refused = None, 0
                continue
            except ConnectionRefusedError:
                refused += 1
            except OSError:
                refused = 0
            failing_since = failing_since or time.monotonic()
            if refused or time.monotonic() - failing_since >= self.timeout_s:
                self._give_up("stopped (connection refused)" if refused else
                              f"unreachable for {self.timeout_s:g} s")

    def _give_up(self, what: str) -> None:
        import sys

        import ray

        if self._stop.is_set() or not ray.is_initialized():  # this process shut Ray down itself: nothing is lost
            return
        where = f"{self.checkpoint} is as last written" if self.checkpoint else "no checkpoint was written"
        print(f"\nerror: the Ray cluster's head (GCS at {self.addr[0]}:{self.addr[1]}) is {what}: the cluster is "
              f"gone, and this run cannot go on. {where}; start a cluster and run the same command with --resume.",
              file=sys.stderr, flush=True)
        os._exit(EXIT_HEAD_LOST)

    def stop(self) -> None:
        self._stop.set()


def ray_bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """The placement-group layout of a Ray A3C run: ``[driver + evaluator, learner, worker 0, worker 1, ...]``.

    Sweeps reserve exactly this (:func:`rl_agents.experiment.sweep.trial_resources`) and the engine pins each actor
    to its own bundle of it (:func:`_pin`): one definition, so the two cannot drift apart.
    """
    learner = {"CPU": max(cfg.learner_cpus, 0.01)}
    if cfg.learner_gpus:
        learner["GPU"] = cfg.learner_gpus
    return [{"CPU": 0.01}, learner] + [{"CPU": cfg.worker_cpus}] * cfg.num_workers


def _pin(cfg: TrainConfig, index: int) -> dict[str, Any]:
    """Actor options that pin an actor to bundle ``index`` of the placement group this code runs in, if any.

    Left to "any bundle", the learner (0.25 CPU) can take half of a worker's bundle (0.5 CPU) and leave the last
    worker with no bundle that fits: the trial then waits forever. Outside a placement group of our layout, none.
    """
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None or pg.bundle_specs != ray_bundles(cfg):
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}


EVALUATOR_MAX_RESTARTS = 3


def _on_this_node() -> dict[str, Any]:
    """Actor options that put an actor on the driver's node when it has room (soft: elsewhere otherwise)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)}


# how long a validation pass is asked again while its evaluator is unreachable: a node lost without grace is
# declared dead only after the GCS's health checks give up (up to a minute), and Ray restarts the evaluator after that
EVALUATOR_UNAVAILABLE_S = 180.0


class RayEval:
    """A validation pass running on the evaluator actor while training goes on. If the learner dies before its
    weights were taken, the pass is started again on the restored learner's weights; if the evaluator is unreachable
    (its node lost: Ray's own task retries can run out before the node is declared dead and the actor restarted),
    the pass is asked again for up to ``EVALUATOR_UNAVAILABLE_S``."""

    def __init__(self, engine: RayA3CEngine, max_images: int | None):
        self.engine, self.max_images = engine, max_images
        self.unavailable_since: float | None = None
        self._launch()

    def _launch(self) -> None:
        self.weights_ref = self.engine.learner.weights.remote()
        self.result_ref = self.engine.evaluator.evaluate.remote(self.weights_ref, self.max_images)

    def result(self, block: bool) -> dict[str, Any] | None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        done, _ = ray.wait([self.result_ref], timeout=None if block else 0)
        if not done:
            return None
        try:
            return ray.get(self.result_ref)
        except (RayActorError, RayTaskError) as e:
            if not self.engine._check_learner(e) and not self._evaluator_restarting(e):
                raise
            self._launch()  # on the restored learner's weights, or on the restarted evaluator
            return self.result(block)

    def _evaluator_restarting(self, error: Exception) -> bool:
        from ray.exceptions import ActorUnavailableError

        if not isinstance(error, ActorUnavailableError):
            return False
        now = time.monotonic()
        self.unavailable_since = self.unavailable_since or now
        if now - self.unavailable_since > EVALUATOR_UNAVAILABLE_S:
            return False
        time.sleep(2.0)
        return True

    def snapshot(self) -> dict[str, Any]:
        """The evaluated weights as an agent state (no optimiser: a best checkpoint is for use, not for resuming)."""
        import ray

        version, weights = ray.get(self.weights_ref)[:2]
        tensors = [{k: torch.tensor(v) for k, v in w.items()} for w in weights]
        return {"kind": "pixeldrl", "in_channels": self.engine.info["in_channels"],
                "n_actions": self.engine.n_actions, "update": version,
                "model": tensors[0], "reward_conv": tensors[1], "optimizer": None, "scheduler": None}


class KillLearnerAfterCheckpoint:
    """An ``on_report`` callback for fault drills (tests and ``benchmarks/chaos.py``): kills the learner actor once,
    after ``checkpoints/last.pt`` exists, and records ``killed = [{"update", "checkpoint_update", "t"}]``.

    It waits for the learner to be ``lead`` updates past that checkpoint, so that the restore has work to redo; once
    the learner reaches ``by_update`` it kills it whatever the lead. Reports land at chance moments against the
    checkpoint cadence (on a busy machine every report of a short run can fall just after a save), and a drill
    must not end without its fault. The checkpoint read here is the one the restore uses: the driver, which calls
    this, is also the only writer of ``last.pt``, so no save can land between the read and the kill.
    """

    def __init__(self, last: str | Path, lead: int = 2, by_update: int | None = None):
        self.last, self.lead, self.by_update = Path(last), lead, by_update
        self.killed: list[dict[str, Any]] = []
        self.seen: list[tuple[int, int | None]] = []  # (learner update, checkpoint update) per report: a miss's why

    def __call__(self, state: dict[str, Any]) -> None:
        import ray

        from rl_agents.experiment.checkpoint import read_checkpoint

        if self.killed:
            return
        update = int(state["stats"]["update"])
        at = read_checkpoint(self.last).update if self.last.exists() else None
        self.seen.append((update, at))
        if at is not None and (update >= at + self.lead or (self.by_update is not None and update >= self.by_update)):
            ray.kill(state["learner"], no_restart=True)
            self.killed.append({"update": update, "checkpoint_update": at, "t": time.time()})


class RayA3CEngine:
    """The driver side of Ray A3C: starts the actors, keeps the workers busy, restarts the ones that die.

    ``on_report(state)`` is called after each report line (tests use it to kill a worker or the learner mid-run);
    ``worker_cls``, ``learner_cls`` and ``evaluator_cls`` replace :class:`Worker`, :class:`Learner` and
    :class:`Evaluator` (fault injection).

    A dead learner is rebuilt from ``last_checkpoint`` (set by the run lifecycle to ``checkpoints/last.pt``; before
    the first checkpoint, from the state the run started with), at most ``learner_max_restarts`` times: its update
    counter is the checkpoint's, every worker forgets its weights and takes the restored learner's, and the
    gradients in flight to the dead learner are dropped with it. Ray's own actor restart would not do: it rebuilds
    the learner from its constructor arguments, i.e. the state the run started with.
    """

    name = "ray"

    def __init__(self, cfg: TrainConfig, quiet: bool = False, on_report=None, worker_cls=None, learner_cls=None,
                 evaluator_cls=None):
        if cfg.num_workers < 1:
            raise ValueError(f"the Ray engine needs num_workers >= 1, got {cfg.num_workers}")
        self.cfg, self.quiet, self.on_report = cfg, quiet, on_report
        self.worker_cls = worker_cls or Worker
        self.learner_cls = learner_cls or Learner
        self.evaluator_cls = evaluator_cls or Evaluator
        self.started = False
        self.running: dict[Any, int] = {}  # work call -> worker index
        self.sent_at: dict[Any, float] = {}  # work call -> when it was sent
        self.killed: set = set()  # work calls whose worker was killed as hung
        self.retry_at: dict[int, float] = {}
        self.restarting: dict[int, dict[str, Any]] = {}  # worker -> its entry in restart_log while it is gone
        n = cfg.num_workers
        self.restarts, self.rollouts, self.busy_s = [0] * n, [0] * n, [0.0] * n
        # per restart: when the driver saw the worker dead, and when its restarted actor's first work call returned
        self.restart_log: list[dict[str, Any]] = []
        self.nodes: list[str | None] = [None] * n
        self.update = self.pixel_agent_steps = 0
        self.stopped = False
        self.t0 = time.perf_counter()
        self.last_checkpoint: Path | None = None  # set by the run lifecycle
        self.epoch = 0  # the learner's incarnation; a work call sent to an earlier one failed with it
        self.sent_epoch: dict[Any, int] = {}
        self.needs_reset: set[int] = set()
        self.learner_restores: list[dict[str, Any]] = []

    def setup(self, resume=None) -> dict[str, Any]:
        import ray

        cfg = self.cfg
        self.started = connect(cfg.ray_address, cfg.num_workers * cfg.worker_cpus + cfg.learner_cpus)
        self.watchdog = HeadWatchdog(ray.get_runtime_context().gcs_address, cfg.head_timeout_s,
                                     self.last_checkpoint) if cfg.head_timeout_s else None
        cfg_dict = to_dict(cfg)
        # the evaluator shares the driver's bundle (or, outside a placement group, its node): it runs while the
        # driver only waits, and it does not die with a worker's node (seen when Ray had put it there). Should its
        # node go anyway, Ray restarts it and runs the pass it lost again (a pure function of the weights)
        self.evaluator = ray.remote(self.evaluator_cls).options(num_cpus=0, max_restarts=EVALUATOR_MAX_RESTARTS,
                                                       max_task_retries=EVALUATOR_MAX_RESTARTS,
                                                       **(_pin(cfg, 0) or _on_this_node())).remote(cfg_dict)
        self.info = info = ray.get(self.evaluator.info.remote())
        if info["n_train"] == 0:
            raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
        if resume is not None:
            self.update, self.pixel_agent_steps = resume.update, int(resume.run.get("pixel_agent_steps", 0))
        self.start = (resume.agent if resume else None, self.update, self.pixel_agent_steps)
        self.gpus = self._learner_gpus()
        self._start_learner(resume.agent if resume else None, self.pixel_agent_steps)
        slow = list(cfg.worker_slowdown or [])
        self.workers = [ray.remote(self.worker_cls).options(num_cpus=cfg.worker_cpus, max_restarts=cfg.worker_max_restarts,
                                                   max_task_retries=0, **_pin(cfg, 2 + i)).remote(
                            cfg_dict, i, cfg.num_workers, self.update, float(slow[i]) if i < len(slow) else 1.0)
                        for i in range(cfg.num_workers)]
        self.learner_device, self.learner_node = ray.get(self.learner.placement.remote())
        probe = PA3CAgent(cfg, info["in_channels"], info["n_train"], optimizer=False)
        self.n_actions, self.total_updates = probe.n_actions, probe.total_updates
        self.flops = forward_flops(probe.model, info["in_channels"], info["image_size"])
        n_params = count_parameters(probe.model)
        for i in range(len(self.workers)):
            self._dispatch(i)
        self.t0 = time.perf_counter()
        return {"n_train": info["n_train"], "n_val": info["n_val"], "params": n_params,
                "gflop_per_image_step": self.flops / 1e9,
                "banner": f"Ray A3C: {cfg.num_workers} workers x {cfg.worker_cpus} CPU, learner on "
                          f"{self.learner_device} (num_gpus={self.gpus}); data: {info['n_train']} train / "
                          f"{info['n_val']} val slices; model {cfg.preset}: {n_params:,} parameters, "
                          f"{self.flops / 1e9:.3f} GFLOP per image-step; {self.total_updates} updates planned"}

    def _start_learner(self, agent: dict | None, pixel_agent_steps: int) -> None:
        import ray

        cfg = self.cfg
        self.learner = ray.remote(self.learner_cls).options(
            num_cpus=cfg.learner_cpus, num_gpus=self.gpus, **_pin(cfg, 1)).remote(
            to_dict(cfg), self.info["in_channels"], self.info["n_train"], ray.put(agent) if agent else None,
            pixel_agent_steps)

    def _learner_gpus(self) -> float:
        import ray

        cfg = self.cfg
        if cfg.learner_gpus is not None:
            return cfg.learner_gpus
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.device != "cpu" else 0.0

    # keeping workers busy -------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.running and not self.retry_at

    def _dispatch(self, i: int) -> None:
        if i in self.needs_reset:  # the learner was restored: start from its weights, not the dead one's
            self.needs_reset.discard(i)
            self.workers[i].reset.remote()  # an actor runs its calls in order: before the work below
        ref = self.workers[i].work.remote(self.learner, self.cfg.rollouts_per_call)
        self.running[ref] = i
        self.sent_at[ref] = time.perf_counter()
        self.sent_epoch[ref] = self.epoch

    def _kill_hung(self) -> None:
        """Kill a worker whose work call is older than ``worker_timeout_s`` (a rollout stuck in I/O or a deadlock never
        returns, and ``ray.wait`` alone would wait for it forever). Ray restarts the actor; its call then fails as a
        death, and :meth:`_collect` counts the restart and hands the new actor work."""
        import ray

        limit = self.cfg.worker_timeout_s
        if limit is None:
            return
        now = time.perf_counter()
        for ref, i in self.running.items():
            if ref not in self.killed and now - self.sent_at.get(ref, now) > limit:
                console.print(f"worker {i} has not answered for {now - self.sent_at[ref]:.0f} s (worker_timeout_s="
                              f"{limit:g}): taken for hung, killed; Ray restarts it")
                ray.kill(self.workers[i], no_restart=False)
                self.killed.add(ref)

    def step(self) -> dict[str, float]:
        """Wait (at most 1 s) for a worker's batch of rollouts, hand it more work; returns its last update's scalars."""
        import ray

        stats: dict[str, float] = {}
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0) if self.running else ([], [])
        if not self.running:
            time.sleep(0.2)
        self._kill_hung()
        for ref in ready:
            i = self.running.pop(ref)
            self.sent_at.pop(ref, None)
            self.killed.discard(ref)
            res = self._collect(ref, i, self.sent_epoch.pop(ref, self.epoch))
            if res is None:
                continue
            stats = {k: v for k, v in res["stats"].items() if k != "pixel_agent_steps"}
            if not res["done"]:
                self._dispatch(i)  # when the learner is done, this worker rests
        for i, t in list(self.retry_at.items()):
            if time.perf_counter() >= t:
                del self.retry_at[i]
                self._dispatch(i)
        return stats

    def _collect(self, ref, i: int, epoch: int) -> dict | None:
        """A worker's result, or None if it died (Ray restarts it; it is retried shortly, up to the restart limit)
        or its learner died (the learner is restored; the worker is handed work again)."""
        import ray
        from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

        try:
            res = ray.get(ref)
        except RayTaskError as e:  # the work call raised: a bug in the worker, or the learner it pushes to died
            if epoch != self.epoch or self._check_learner(e):
                self.needs_reset.add(i)
                self.retry_at[i] = time.perf_counter() + 0.5
                return None
            raise
        except RayActorError as e:
            if isinstance(e, ActorDiedError) and self.restarts[i] >= self.cfg.worker_max_restarts:
                raise RuntimeError(f"worker {i} is dead after {self.restarts[i]} restart(s) (worker_max_restarts="
                                   f"{self.cfg.worker_max_restarts}): {e}") from e
            if i not in self.restarting:
                self.restarts[i] += 1
                self.restarting[i] = {"worker": i, "dead_seen_unix": time.time(), "back_unix": None}
                self.restart_log.append(self.restarting[i])
                console.print(f"worker {i} died ({type(e).__name__}); Ray restarts it (restart {self.restarts[i]})")
            elif time.time() - self.restarting[i]["dead_seen_unix"] > 600:
                raise RuntimeError(f"worker {i} has not come back within 600 s of dying: {e}") from e
            self.retry_at[i] = time.perf_counter() + 0.5
            return None
        if (back := self.restarting.pop(i, None)) is not None:
            back["back_unix"] = time.time()
        self.rollouts[i] += res["rollouts"]
        self.busy_s[i] += res["compute_s"]
        self.nodes[i] = res["node"]
        # every push answers with the learner's counts after it, so the largest seen is the learner's newest
        self.update = max(self.update, int(res["version"] or 0))
        self.pixel_agent_steps = max(self.pixel_agent_steps, int(res["applied_pixel_agent_steps"]))
        return res

    def _call(self, method: str, *args):
        """A learner call's result; if the learner is dead, it is restored (:meth:`_check_learner`) and asked again."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for attempt in (0, 1):
            try:
                return ray.get(getattr(self.learner, method).remote(*args))
            except (RayActorError, RayTaskError) as e:
                if attempt or not self._check_learner(e):
                    raise

    def _check_learner(self, cause: Exception) -> bool:
        """False if the learner is alive (``cause`` is someone else's); True once a dead learner is restored; a
        clear error when it may not be restored again."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            ray.get(self.learner.stats.remote(), timeout=60)
            return False
        except (RayActorError, GetTimeoutError) as e:
            self._restore_learner(e, cause)
            return True

    def _restore_learner(self, error: Exception, cause: Exception) -> None:
        import ray

        from rl_agents.experiment.checkpoint import previous_path, read_checkpoint

        n, limit = len(self.learner_restores), self.cfg.learner_max_restarts
        if n >= limit:
            raise RuntimeError(
                f"the learner actor died ({type(error).__name__}) at about update {self.update}"
                f"{f' after {n} restore(s)' if n else ''} (learner_max_restarts={limit}); workers cannot go on. "
                "The last checkpoint (checkpoints/last.pt) is intact: continue with --resume") from cause
        path = self.last_checkpoint
        ckpt = read_checkpoint(path) if path is not None and (path.exists() or previous_path(path).exists()) else None
        agent, update, steps = (ckpt.agent, ckpt.update, int(ckpt.run.get("pixel_agent_steps", 0))) if ckpt \
            else self.start
        died_at = self.update
        ray.kill(self.learner, no_restart=True)  # a hung one too, so that it frees its bundle
        self._start_learner(agent, steps)
        self.epoch += 1
        self.update, self.pixel_agent_steps = update, steps
        self.needs_reset = set(range(len(self.workers)))
        source = str(ckpt.path) if ckpt else "the state the run started from"
        self.learner_restores.append({"died_at_update": died_at, "restored_update": update, "from": source,
                                      "restored_at_unix": time.time()})
        console.print(f"the learner actor died ({type(error).__name__}) at about update {died_at}; restored from "
                      f"{source} at update {update} (restore {n + 1} of at most {limit}); workers take its weights")

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._call("stop")

    def close(self) -> None:
        import ray

        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()  # before a shutdown of our own makes the head go away
        if self.started:
            ray.shutdown()
            self.started = False

    # evaluation, state, figures --------------------------------------------------------------------------------
    def start_eval(self, max_images: int | None) -> RayEval:
        return RayEval(self, max_images)

    def evaluate_state(self, state: dict[str, Any]) -> dict[str, float]:
        import ray

        return ray.get(self.evaluator.evaluate_state.remote(state))

    def agent_state(self) -> dict[str, Any]:
        return self._call("state_dict")

    def rng_state(self) -> dict[str, Any]:
        return {}  # one RNG per worker; a resumed run reseeds them from (seed, worker, update)

    def report_line(self, last_eval: dict) -> str:
        stats = self._call("stats")
        if self.on_report is not None:
            self.on_report({"stats": stats, "workers": self.workers, "restarts": self.restarts,
                            "learner": self.learner, "worker_nodes": list(self.nodes),
                            "learner_node": self.learner_node})
        wall = max(stats["wall_s"], 1e-9)
        per = " ".join(f"{k}:{v}" for k, v in sorted(stats["per_worker_updates"].items()))
        return (f"update {stats['update']:6d}  {stats['update'] / wall:6.2f} upd/s  "
                f"{stats['pixel_agent_steps'] / wall / 1e6:7.2f} M px-steps/s  staleness "
                f"{stats['staleness_mean']:.2f} (max {stats['staleness_max']})  learner busy "
                f"{stats['busy_s'] / wall:5.1%}  dropped {stats['dropped']}  restarts {sum(self.restarts)}  "
                f"val dice {last_eval.get('val/dice', float('nan')):.3f}  per worker [{per}]")

    def perf(self, wall: float) -> dict[str, Any]:
        s = self._call("stats")
        lw = max(s["wall_s"], 1e-9)
        run_wall = max(time.perf_counter() - self.t0, 1e-9)
        return {
            "perf/updates_per_s": s["update"] / lw,
            "perf/pixel_agent_steps_per_s": s["pixel_agent_steps"] / lw,
            "perf/staleness_mean": s["staleness_mean"],
            "perf/staleness_max": s["staleness_max"],
            "perf/learner_busy_fraction": s["busy_s"] / lw,
            "perf/dropped_gradients": s["dropped"],
            "perf/downweighted_gradients": s["downweighted"],
            # the learner's count of applied pushes: a worker's work call that died still had its pushes applied
            "perf/worker_updates_per_s": [s["per_worker_updates"].get(i, 0) / run_wall
                                          for i in range(self.cfg.num_workers)],
            "perf/worker_busy_fraction": [b / run_wall for b in self.busy_s],
            "workers/restarts": sum(self.restarts),
            "workers/restart_log": self.restart_log,
            "learner/restores": len(self.learner_restores),
            "learner/restore_log": self.learner_restores,
            "perf/gradients_ahead_of_learner": s["ahead"],
            "perf/applied_gradients": s["applied"],
            "perf/duplicate_gradients": s["duplicates"],
            "workers/n": self.cfg.num_workers,
            "learner_device": self.learner_device,
            **self._placement(),
            **s["last"],
        }

    def _placement(self) -> dict[str, Any]:
        """Which nodes the learner and each worker ran on, with each node's resources (an autoscaler's doing shows)."""
        import ray

        used = {self.learner_node, *(n for n in self.nodes if n)}
        nodes = {n["NodeID"]: {"address": n["NodeManagerAddress"], "resources": n["Resources"]}
                 for n in ray.nodes() if n["NodeID"] in used}
        return {"cluster/learner_node": self.learner_node, "cluster/worker_nodes": self.nodes, "cluster/nodes": nodes}


def train_distributed(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
                      on_report=None, on_eval=None, worker_cls=None, learner_cls=None,
                      evaluator_cls=None) -> dict[str, Any]:
    """Ray A3C through the shared run lifecycle, without MLflow, with test and benchmark hooks."""
    from rl_agents.experiment.lifecycle import train

    engine = RayA3CEngine(cfg, quiet=quiet, on_report=on_report, worker_cls=worker_cls, learner_cls=learner_cls,
                          evaluator_cls=evaluator_cls)
    return train(cfg, output_dir, resume=resume, quiet=quiet, on_eval=on_eval, engine=engine)
