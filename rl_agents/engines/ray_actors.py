"""The Ray A3C actors, after Ray's parameter-server example: small, one verb each, plain CPU arrays between them.

* :class:`Learner` holds the global :class:`~rl_agents.algo.agent.PA3CAgent` (on a GPU when the node has one).
  ``push`` applies one worker's gradient the moment it arrives (an actor runs its calls one at a time, so gradients
  are applied in arrival order) and answers with the newest weights.
* :class:`Worker` holds a local agent, its own environment and its own part of the training split, which it reads
  itself (only its part: :func:`pixelrl_env.dataset.load_part`; images never pass through the driver). ``work``
  runs rollouts of ``t_max`` steps, computes the PA3C gradient, pushes it, and carries on with the weights it gets.
* :class:`Evaluator` reads only the validation split and scores a set of weights.

Staleness: every gradient carries the learner version its weights came from; ``staleness = version_now - version``.
Above ``staleness_bound`` a gradient is dropped or down-weighted by ``1 / (1 + staleness - bound)`` and counted.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
import ray
import torch

from pixelrl_env.dataset import describe, load_part
from rl_agents.algo.agent import PA3CAgent, Weights, make_train_env
from rl_agents.config import TrainConfig
from rl_agents.engines.base import actor_seed, evaluate_arrays


def _threads(cpus: float) -> int:
    return max(1, int(round(cpus)))


class Learner:
    """The global agent. One verb: :meth:`push` (apply a gradient, answer with the newest weights)."""

    def __init__(self, cfg: TrainConfig, in_channels: int, n_train: int, resume: dict | None = None,
                 pixel_agent_steps: int = 0):
        self.cfg = cfg
        torch.set_num_threads(_threads(cfg.ray.learner_cpus))
        # fake GPU nodes (and CPU-only torch) report a GPU torch cannot use: fall back to the CPU
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.compute.device != "cpu" else "cpu")
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
        c, bound = self.counters, self.cfg.ray.staleness_bound
        c["pushes"] += 1
        c["staleness_sum"] += staleness
        c["staleness_max"] = max(c["staleness_max"], staleness)
        if bound is None or staleness <= bound:
            return 1.0
        if self.cfg.ray.stale_policy == "drop":
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

    def __init__(self, cfg: TrainConfig, index: int, n_workers: int, start_update: int = 0, slowdown: float = 1.0):
        self.cfg = cfg
        self.index = index
        self.slowdown = slowdown
        torch.set_num_threads(_threads(cfg.ray.worker_cpus))
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

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        torch.set_num_threads(1)
        self.desc = describe(cfg.data)
        self.val = load_part(cfg.data, "val") if self.desc["n_val"] else None
        self.agent = PA3CAgent(cfg, self.desc["in_channels"], max(self.desc["n_train"], 1), optimizer=False)

    def info(self) -> dict[str, int]:
        return dict(self.desc)

    def evaluate(self, versioned: tuple, max_images: int | None) -> dict[str, Any]:
        version, weights = versioned[0], versioned[1]
        self.agent.set_weights(weights)
        if self.val is None:
            return {"update": version}
        metrics = evaluate_arrays(self.agent.model, self.val, self.cfg, torch.device("cpu"), max_images)
        return {"update": version, **metrics}

    def evaluate_state(self, state: dict[str, Any]) -> dict[str, Any]:
        self.agent.load_state_dict(state, weights_only=True)
        return self.evaluate((int(state["update"]), self.agent.weights()), None)
