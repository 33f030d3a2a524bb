"""Asynchronous A3C on Ray, the driver side: one learner actor, N worker actors, an evaluator actor
(:mod:`rl_agents.engines.ray_actors`); no barrier anywhere. :class:`RayA3CEngine` keeps workers busy
(:meth:`~RayA3CEngine.step`, ``ray.wait``), restarts the ones that die, restores a dead learner from the last
checkpoint, and hands evaluations and checkpoints to the shared run lifecycle, which writes them on the driver's disk
(under ``ray job submit`` the learner may sit on a GPU node that does not share it).

Reproducibility: the order in which gradients arrive depends on timing, so two asynchronous runs with the same seed
differ (as in any A3C); each actor's own randomness is seeded from ``(seed, worker index, starting update)``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from rich.console import Console

from rl_agents.algo.agent import PA3CAgent
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig
from rl_agents.engines.ray_actors import Evaluator, Learner, Worker
from rl_agents.engines.ray_runtime import HeadWatchdog, connect, on_this_node, pin

console = Console()

EVALUATOR_MAX_RESTARTS = 3


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
        version, weights = ray.get(self.weights_ref)[:2]
        agent = self.engine.probe
        agent.set_weights(weights)
        agent.update = version
        return copy.deepcopy(agent.state_dict())  # the probe's next snapshot must not change this one


class RayA3CEngine:
    """The driver side of Ray A3C: starts the actors, keeps the workers busy, restarts the ones that die.

    ``on_report(state)`` is called after each report line (tests use it to kill a worker or the learner mid-run);
    ``worker_cls``, ``learner_cls`` and ``evaluator_cls`` replace :class:`Worker`, :class:`Learner` and
    :class:`Evaluator` (fault injection).

    A dead learner is rebuilt from ``read_last_checkpoint()`` (set by the run lifecycle: ``checkpoints/last.pt``; before
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
        self.last_checkpoint: Path | None = None  # set by the run lifecycle, with its reader
        self.read_last_checkpoint: Callable[[], Any] | None = None
        self.epoch = 0  # the learner's incarnation; a work call sent to an earlier one failed with it
        self.sent_epoch: dict[Any, int] = {}
        self.needs_reset: set[int] = set()
        self.learner_restores: list[dict[str, Any]] = []

    def setup(self, resume=None) -> dict[str, Any]:
        cfg = self.cfg
        self.started = connect(cfg.ray.address, cfg.num_workers * cfg.ray.worker_cpus + cfg.ray.learner_cpus)
        self.watchdog = HeadWatchdog(ray.get_runtime_context().gcs_address, cfg.ray.head_timeout_s,
                                     self.last_checkpoint) if cfg.ray.head_timeout_s else None
        # the evaluator shares the driver's bundle (or, outside a placement group, its node): it runs while the
        # driver only waits, and it does not die with a worker's node (seen when Ray had put it there). Should its
        # node go anyway, Ray restarts it and runs the pass it lost again (a pure function of the weights)
        self.evaluator = ray.remote(self.evaluator_cls).options(num_cpus=0, max_restarts=EVALUATOR_MAX_RESTARTS,
                                                       max_task_retries=EVALUATOR_MAX_RESTARTS,
                                                       **(pin(cfg, 0) or on_this_node())).remote(cfg)
        self.info = info = ray.get(self.evaluator.info.remote())
        if info["n_train"] == 0:
            raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
        if resume is not None:
            self.update, self.pixel_agent_steps = resume.update, int(resume.run.get("pixel_agent_steps", 0))
        self.start = (resume.agent if resume else None, self.update, self.pixel_agent_steps)
        self.gpus = self._learner_gpus()
        self._start_learner(resume.agent if resume else None, self.pixel_agent_steps)
        slow = list(cfg.ray.worker_slowdown or [])
        self.workers = [ray.remote(self.worker_cls).options(num_cpus=cfg.ray.worker_cpus, max_restarts=cfg.ray.worker_max_restarts,
                                                   max_task_retries=0, **pin(cfg, 2 + i)).remote(
                            cfg, i, cfg.num_workers, self.update, float(slow[i]) if i < len(slow) else 1.0)
                        for i in range(cfg.num_workers)]
        self.learner_device, self.learner_node = ray.get(self.learner.placement.remote())
        # the driver's copy of the agent, without an optimiser: it sizes the run and turns weights into states
        self.probe = probe = PA3CAgent(cfg, info["in_channels"], info["n_train"], optimizer=False)
        self.n_actions, self.total_updates = probe.n_actions, probe.total_updates
        self.flops = forward_flops(probe.model, info["in_channels"], info["image_size"])
        n_params = count_parameters(probe.model)
        for i in range(len(self.workers)):
            self._dispatch(i)
        self.t0 = time.perf_counter()
        return {"n_train": info["n_train"], "n_val": info["n_val"], "params": n_params,
                "gflop_per_image_step": self.flops / 1e9,
                "banner": f"Ray A3C: {cfg.num_workers} workers x {cfg.ray.worker_cpus} CPU, learner on "
                          f"{self.learner_device} (num_gpus={self.gpus}); data: {info['n_train']} train / "
                          f"{info['n_val']} val slices; model {cfg.network.preset}: {n_params:,} parameters, "
                          f"{self.flops / 1e9:.3f} GFLOP per image-step; {self.total_updates} updates planned"}

    def _start_learner(self, agent: dict | None, pixel_agent_steps: int) -> None:
        cfg = self.cfg
        self.learner = ray.remote(self.learner_cls).options(
            num_cpus=cfg.ray.learner_cpus, num_gpus=self.gpus, **pin(cfg, 1)).remote(
            cfg, self.info["in_channels"], self.info["n_train"], ray.put(agent) if agent else None,
            pixel_agent_steps)

    def _learner_gpus(self) -> float:
        cfg = self.cfg
        if cfg.ray.learner_gpus is not None:
            return cfg.ray.learner_gpus
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.compute.device != "cpu" else 0.0

    # keeping workers busy -------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.running and not self.retry_at

    def _dispatch(self, i: int) -> None:
        if i in self.needs_reset:  # the learner was restored: start from its weights, not the dead one's
            self.needs_reset.discard(i)
            self.workers[i].reset.remote()  # an actor runs its calls in order: before the work below
        ref = self.workers[i].work.remote(self.learner, self.cfg.ray.rollouts_per_call)
        self.running[ref] = i
        self.sent_at[ref] = time.perf_counter()
        self.sent_epoch[ref] = self.epoch

    def _kill_hung(self) -> None:
        """Kill a worker whose work call is older than ``worker_timeout_s`` (a rollout stuck in I/O or a deadlock never
        returns, and ``ray.wait`` alone would wait for it forever). Ray restarts the actor; its call then fails as a
        death, and :meth:`_collect` counts the restart and hands the new actor work."""
        limit = self.cfg.ray.worker_timeout_s
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
        try:
            res = ray.get(ref)
        except RayTaskError as e:  # the work call raised: a bug in the worker, or the learner it pushes to died
            if epoch != self.epoch or self._check_learner(e):
                self.needs_reset.add(i)
                self.retry_at[i] = time.perf_counter() + 0.5
                return None
            raise
        except RayActorError as e:
            if isinstance(e, ActorDiedError) and self.restarts[i] >= self.cfg.ray.worker_max_restarts:
                raise RuntimeError(f"worker {i} is dead after {self.restarts[i]} restart(s) (worker_max_restarts="
                                   f"{self.cfg.ray.worker_max_restarts}): {e}") from e
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
        for attempt in (0, 1):
            try:
                return ray.get(getattr(self.learner, method).remote(*args))
            except (RayActorError, RayTaskError) as e:
                if attempt or not self._check_learner(e):
                    raise

    def _check_learner(self, cause: Exception) -> bool:
        """False if the learner is alive (``cause`` is someone else's); True once a dead learner is restored; a
        clear error when it may not be restored again."""
        try:
            ray.get(self.learner.stats.remote(), timeout=60)
            return False
        except (RayActorError, GetTimeoutError) as e:
            self._restore_learner(e, cause)
            return True

    def _restore_learner(self, error: Exception, cause: Exception) -> None:
        n, limit = len(self.learner_restores), self.cfg.ray.learner_max_restarts
        if n >= limit:
            raise RuntimeError(
                f"the learner actor died ({type(error).__name__}) at about update {self.update}"
                f"{f' after {n} restore(s)' if n else ''} (learner_max_restarts={limit}); workers cannot go on. "
                "The last checkpoint (checkpoints/last.pt) is intact: continue with --resume") from cause
        ckpt = self.read_last_checkpoint() if self.read_last_checkpoint is not None else None
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
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()  # before a shutdown of our own makes the head go away
        if self.started:
            ray.shutdown()
            self.started = False

    # evaluation, state, figures --------------------------------------------------------------------------------
    def start_eval(self, max_images: int | None) -> RayEval:
        return RayEval(self, max_images)

    def evaluate_state(self, state: dict[str, Any]) -> dict[str, float]:
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
        used = {self.learner_node, *(n for n in self.nodes if n)}
        nodes = {n["NodeID"]: {"address": n["NodeManagerAddress"], "resources": n["Resources"]}
                 for n in ray.nodes() if n["NodeID"] in used}
        return {"cluster/learner_node": self.learner_node, "cluster/worker_nodes": self.nodes, "cluster/nodes": nodes}
