"""Asynchronous A3C on Ray: one learner actor, N worker actors, an evaluator actor; no barrier anywhere.

The shape follows Ray's parameter-server example: small actors with one verb each, plain CPU arrays between them,
``ray.wait`` in the driver.

* :class:`Learner` holds the global network, the reward-map kernel, Adam and the schedule (on a GPU when the node has
  one). ``push`` applies one worker's gradient the moment it arrives (an actor runs its calls one at a time, so
  gradients are applied in arrival order) and answers with the newest weights.
* :class:`Worker` holds a local copy, its own environment and its own shard of the training split (it reads the data
  itself: images never pass through the driver). ``work`` runs rollouts of ``t_max`` steps, computes the PA3C
  gradient, pushes it and carries on with the weights the learner sent back.
* :class:`Evaluator` reads the validation split itself and scores a set of weights (greedy segmentation, Dice etc.).
* The driver (:func:`train_distributed`) only keeps workers busy, restarts the ones that die, reports throughput and
  writes checkpoints: it pulls the learner's state every ``checkpoint_every`` updates and writes it atomically on the
  driver's disk, because under ``ray job submit`` the learner may sit on a GPU node that does not share it.

Staleness: every gradient carries the learner version its weights came from; ``staleness = version_now - version``.
Above ``staleness_bound`` a gradient is dropped or down-weighted by ``1 / (1 + staleness - bound)`` and counted.

Reproducibility: the order in which gradients arrive depends on timing, so two asynchronous runs with the same seed
differ (as in any A3C); each actor's own randomness is seeded (``seed + 1 + worker index``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, config_from_dict, to_dict
from .model import count_parameters, forward_flops
from .pa3c import RewardMapConv

log = logging.getLogger(__name__)
console = Console()

Weights = dict[str, np.ndarray]


def _threads(cpus: float) -> int:
    return max(1, int(round(cpus)))


def _state_to_numpy(*modules: torch.nn.Module) -> list[Weights]:
    return [{k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()} for m in modules]


def _load_numpy(module: torch.nn.Module, weights: Weights) -> None:
    module.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})


def _load_data(cfg: TrainConfig):
    from pixelrl_env.dataset import load_splits

    return load_splits(cfg.data)


class Learner:
    """The global network and optimiser. One verb: :meth:`push` (apply a gradient, answer with the newest weights)."""

    def __init__(self, cfg_dict: dict, in_channels: int, n_train: int, resume: dict | None = None):
        from .trainer import build_model, make_scheduler

        self.cfg = cfg = config_from_dict(cfg_dict)
        torch.set_num_threads(_threads(cfg.learner_cpus))
        # fake GPU nodes (and CPU-only torch) report a GPU torch cannot use: fall back to the CPU
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
        torch.manual_seed(cfg.seed)
        self.in_channels = in_channels
        self.model = build_model(cfg, in_channels).to(self.device)
        self.reward_conv = RewardMapConv(cfg.reward_kernel).to(self.device)
        self.params = list(self.model.parameters()) + list(self.reward_conv.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.sched, self.total_updates = make_scheduler(cfg, self.opt, n_train)
        self.version = 0
        self.counters: dict[str, Any] = {"pixel_agent_steps": 0, "dropped": 0, "downweighted": 0, "busy_s": 0.0,
                                         "staleness_sum": 0, "staleness_max": 0, "pushes": 0}
        self.per_worker: dict[int, int] = defaultdict(int)
        self.last_stats: dict[str, float] = {}
        self.stopped = False
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.reward_conv.load_state_dict(resume["reward_conv"])
            self.opt.load_state_dict(resume["optimizer"])
            self.sched.load_state_dict(resume["scheduler"])
            self.version = int(resume["state"]["update"])
            self.counters["pixel_agent_steps"] = int(resume["state"].get("pixel_agent_steps", 0))
        self._cache: tuple[int, list[Weights]] | None = None
        self.t0 = time.perf_counter()

    def placement(self) -> tuple[str, str]:
        """``(device, Ray node id)``: where the learner computes, and on which node (metrics, autoscaling test)."""
        import ray

        device = str(self.device) + (f" ({torch.cuda.get_device_name()})" if self.device.type == "cuda" else "")
        return device, ray.get_runtime_context().get_node_id()

    def weights(self) -> tuple[int, list[Weights], bool]:
        """``(version, [model weights, reward-kernel weights], done)`` as CPU arrays."""
        if self._cache is None or self._cache[0] != self.version:
            self._cache = (self.version, _state_to_numpy(self.model, self.reward_conv))
        return self.version, self._cache[1], self.done()

    def done(self) -> bool:
        return self.stopped or self.version >= self.total_updates

    def push(self, worker: int, version: int, grads: list[np.ndarray], stats: dict[str, float]):
        """Apply one gradient (computed on weights of ``version``) unless it is too stale; return :meth:`weights`."""
        t = time.perf_counter()
        if self.done():
            return self.weights()
        staleness = self.version - version
        scale = 1.0
        bound = self.cfg.staleness_bound
        c = self.counters
        c["pushes"] += 1
        c["staleness_sum"] += staleness
        c["staleness_max"] = max(c["staleness_max"], staleness)
        if bound is not None and staleness > bound:
            if self.cfg.stale_policy == "drop":
                c["dropped"] += 1
                c["busy_s"] += time.perf_counter() - t
                return self.weights()
            scale = 1.0 / (1 + staleness - bound)
            c["downweighted"] += 1
        for p, g in zip(self.params, grads):
            p.grad = torch.from_numpy(g).to(self.device)
            if scale != 1.0:
                p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.version += 1
        c["pixel_agent_steps"] += int(stats.get("pixel_agent_steps", 0))
        self.per_worker[worker] += 1
        self.last_stats = {**{k: v for k, v in stats.items() if k != "pixel_agent_steps"},
                           "charts/grad_norm": float(grad_norm), "charts/lr": float(self.sched.get_last_lr()[0]),
                           "charts/staleness": float(staleness)}
        c["busy_s"] += time.perf_counter() - t
        return self.weights()

    def stop(self) -> int:
        self.stopped = True
        return self.version

    def stats(self) -> dict[str, Any]:
        c = self.counters
        wall = time.perf_counter() - self.t0
        return {
            "update": self.version,
            "pixel_agent_steps": c["pixel_agent_steps"],
            "staleness_mean": c["staleness_sum"] / max(c["pushes"], 1),
            "staleness_max": c["staleness_max"],
            "dropped": c["dropped"],
            "downweighted": c["downweighted"],
            "busy_s": c["busy_s"],
            "wall_s": wall,
            "per_worker_updates": dict(self.per_worker),
            "last": dict(self.last_stats),
        }

    def checkpoint(self) -> dict[str, Any]:
        """A checkpoint payload (the single-process trainer's format) with every tensor on the CPU."""
        def cpu(obj):
            if isinstance(obj, torch.Tensor):
                return obj.detach().cpu()
            if isinstance(obj, dict):
                return {k: cpu(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [cpu(v) for v in obj]
            return obj

        return {
            "kind": "pixeldrl",
            "config": to_dict(self.cfg),
            "in_channels": self.in_channels,
            "n_actions": self.model.n_actions,
            "model": cpu(self.model.state_dict()),
            "reward_conv": cpu(self.reward_conv.state_dict()),
            "optimizer": cpu(self.opt.state_dict()),
            "scheduler": self.sched.state_dict(),
            "state": {"update": self.version, "pixel_agent_steps": self.counters["pixel_agent_steps"]},
        }


class Worker:
    """A local network copy, an environment over this worker's data shard. One verb: :meth:`work`."""

    def __init__(self, cfg_dict: dict, index: int, n_workers: int, slowdown: float = 1.0):
        from .trainer import build_model, make_train_env

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.index = index
        self.slowdown = slowdown
        torch.set_num_threads(_threads(cfg.worker_cpus))
        torch.manual_seed(cfg.seed + 1 + index)
        train = _load_data(cfg).train
        shard = np.arange(index, len(train), n_workers)
        if len(shard) == 0:
            raise ValueError(f"worker {index}: the training split has {len(train)} slices, fewer than "
                             f"num_workers={n_workers}; use fewer workers")
        self.env = make_train_env(cfg, train.images[shard], train.masks[shard], cfg.seed + 1 + index)
        self.device = torch.device("cpu")
        self.model = build_model(cfg, train.images.shape[1])
        self.reward_conv = RewardMapConv(cfg.reward_kernel)
        self.params = list(self.model.parameters()) + list(self.reward_conv.parameters())
        self.gen = torch.Generator().manual_seed(cfg.seed + 1 + index)
        self.version: int | None = None

    def _set(self, version: int, weights: list[Weights]) -> None:
        _load_numpy(self.model, weights[0])
        _load_numpy(self.reward_conv, weights[1])
        self.version = version

    def work(self, learner, n_rollouts: int) -> dict[str, Any]:
        """Run up to ``n_rollouts`` rollouts, pushing each gradient to ``learner``; stop early when it is done."""
        import ray

        from .trainer import rollout_and_loss, update_stats

        t0 = time.perf_counter()
        done = False
        if self.version is None:
            version, weights, done = ray.get(learner.weights.remote())
            self._set(version, weights)
        n = steps = 0
        compute_s = 0.0
        while n < n_rollouts and not done:
            t = time.perf_counter()
            roll, loss = rollout_and_loss(self.cfg, self.model, self.reward_conv, self.env, self.device, self.gen)
            for p in self.params:
                p.grad = None
            loss.total.backward()
            grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).numpy() for p in self.params]
            stats = {**update_stats(roll, loss), "pixel_agent_steps": roll.pixel_agent_steps}
            dt = time.perf_counter() - t
            compute_s += dt
            if self.slowdown > 1:
                time.sleep((self.slowdown - 1) * dt)
            version, weights, done = ray.get(learner.push.remote(self.index, self.version, grads, stats))
            self._set(version, weights)
            n += 1
            steps += roll.pixel_agent_steps
        return {"worker": self.index, "node": ray.get_runtime_context().get_node_id(), "rollouts": n,
                "pixel_agent_steps": steps, "wall_s": time.perf_counter() - t0, "compute_s": compute_s, "done": done,
                "version": self.version}


class Evaluator:
    """Reads the validation split itself. One verb: :meth:`evaluate` (greedy segmentation, mean metrics)."""

    def __init__(self, cfg_dict: dict, max_images: int | None):
        from .trainer import build_model

        self.cfg = cfg = config_from_dict(cfg_dict)
        torch.set_num_threads(1)
        splits = _load_data(cfg)
        self.val = splits.val
        self.n_train = len(splits.train)
        self.in_channels = int(splits.train.images.shape[1]) if len(splits.train) else 0
        self.image_size = int(splits.train.images.shape[-1]) if len(splits.train) else 0
        self.max_images = max_images
        self.model = build_model(cfg, self.in_channels) if self.in_channels else None

    def info(self) -> dict[str, int]:
        return {"n_train": self.n_train, "n_val": len(self.val), "in_channels": self.in_channels,
                "image_size": self.image_size}

    def evaluate(self, versioned: tuple[int, list[Weights], bool], max_images: int | None = -1) -> dict[str, Any]:
        from .trainer import evaluate_arrays

        version, weights, _ = versioned
        _load_numpy(self.model, weights[0])
        self.model.eval()
        n = self.max_images if max_images == -1 else max_images
        metrics = evaluate_arrays(self.model, self.val, self.cfg, torch.device("cpu"), n)
        self.model.train()
        return {"update": version, **{f"val/{k}": v for k, v in metrics.items()}}


def _connect(cfg: TrainConfig) -> bool:
    """Connect to Ray; returns True when this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        need = cfg.num_workers * cfg.worker_cpus + cfg.learner_cpus
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=False)
    return True


def _learner_gpus(cfg: TrainConfig) -> float:
    import ray

    if cfg.learner_gpus is not None:
        return cfg.learner_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and cfg.device != "cpu" else 0.0


def _bundle(cfg: TrainConfig, index: int) -> dict[str, Any]:
    """Actor options that pin an actor to bundle ``index`` of the placement group this code runs in, if any.

    A Tune trial reserves ``[driver, learner, worker 0, worker 1, ...]`` (see :mod:`rl_agents.sweep`) and its child
    actors land in that group. Left to "any bundle", the learner (0.25 CPU) can take half of a worker's bundle
    (0.5 CPU) and leave the last worker with no bundle that fits: the trial then waits forever. Pinning each actor
    to its own bundle makes the fit exact. Outside a placement group, or in one laid out differently, no constraint.
    """
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None or pg.bundle_count != cfg.num_workers + 2:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)}


def train_distributed(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
                      on_report=None, on_eval=None) -> dict[str, Any]:
    """Asynchronous A3C with ``cfg.num_workers`` Ray workers; writes what :func:`rl_agents.trainer.train` writes.

    ``on_report(driver_state)`` is called after each report line (tests use it to kill a worker mid-run);
    ``on_eval(entry)`` with each history entry after a validation pass (Tune reports through it).
    """
    import ray

    if cfg.num_workers < 1:
        raise ValueError(f"train_distributed needs num_workers >= 1, got {cfg.num_workers}")
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    started = _connect(cfg)
    cfg_dict = to_dict(cfg)
    try:
        # the evaluator shares the driver's bundle: it runs while the driver only waits
        evaluator = ray.remote(Evaluator).options(num_cpus=0, **_bundle(cfg, 0)).remote(cfg_dict, cfg.eval_max_images)
        info = ray.get(evaluator.info.remote())
        if info["n_train"] == 0:
            raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
        payload = load_checkpoint(ckpt_dir / "last.pt") if resume else None
        gpus = _learner_gpus(cfg)
        learner = ray.remote(Learner).options(num_cpus=cfg.learner_cpus, num_gpus=gpus, **_bundle(cfg, 1)).remote(
            cfg_dict, info["in_channels"], info["n_train"], ray.put(payload) if payload else None)
        slow = list(cfg.worker_slowdown or [])
        worker_cls = ray.remote(Worker)
        workers = [worker_cls.options(num_cpus=cfg.worker_cpus, max_restarts=cfg.worker_max_restarts,
                                      max_task_retries=0, **_bundle(cfg, 2 + i)).remote(
                       cfg_dict, i, cfg.num_workers, float(slow[i]) if i < len(slow) else 1.0)
                   for i in range(cfg.num_workers)]
        placement = ray.get(learner.placement.remote())
        return _drive(cfg, cfg_dict, out, ckpt_dir, info, learner, placement, workers, evaluator, gpus, payload,
                      quiet, on_report, on_eval)
    finally:
        if started:
            ray.shutdown()


def _drive(cfg, cfg_dict, out, ckpt_dir, info, learner, placement, workers, evaluator, gpus, payload, quiet,
           on_report, on_eval):
    import ray
    from ray.exceptions import ActorDiedError, RayActorError

    from .trainer import build_model

    model_cpu = build_model(cfg, info["in_channels"])
    n_params = count_parameters(model_cpu)
    flops = forward_flops(model_cpu, info["in_channels"], info["image_size"])
    state = payload["state"] if payload else {}
    history: list[dict] = list(state.get("history", []))
    best_dice = float(state.get("best_dice", -1.0))
    wall_before = float(state.get("wall_time_s", 0.0))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    learner_device, learner_node = placement
    worker_nodes: list[str | None] = [None] * len(workers)  # where each worker last ran (a restart may move it)
    if not quiet:
        console.print(f"config: {cfg_dict}", highlight=False)
        console.print(f"Ray A3C: {cfg.num_workers} workers x {cfg.worker_cpus} CPU, learner on {learner_device} "
                      f"(num_gpus={gpus}); data: {info['n_train']} train / {info['n_val']} val slices; model "
                      f"{cfg.preset}: {n_params:,} parameters, {flops / 1e9:.3f} GFLOP per image-step")

    def save_payload(name: str, extra_state: dict) -> None:
        p = ray.get(learner.checkpoint.remote())
        p["state"].update(extra_state)
        save_checkpoint(ckpt_dir / name, p)

    def driver_state(stats: dict) -> dict:
        return {"history": history, "best_dice": best_dice, "wall_time_s": wall_before + (time.perf_counter() - t0),
                **{k: stats[k] for k in ("update", "pixel_agent_steps")}}

    t0 = time.perf_counter()
    deadline = None if cfg.max_minutes is None else cfg.max_minutes * 60.0 - wall_before
    running = {w.work.remote(learner, cfg.rollouts_per_call): i for i, w in enumerate(workers)}
    restarts = [0] * len(workers)
    worker_rollouts = [0] * len(workers)
    worker_busy_s = [0.0] * len(workers)
    eval_ref = eval_weights = None
    next_eval = (int(state.get("update", 0)) // cfg.eval_every + 1) * cfg.eval_every
    next_ckpt = (int(state.get("update", 0)) // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    last_report = t0
    stopped_by = "epochs"
    stats = ray.get(learner.stats.remote())
    last_eval: dict[str, float] = {}

    def handle_eval(block: bool) -> None:
        nonlocal eval_ref, eval_weights, best_dice, last_eval
        if eval_ref is None:
            return
        done, _ = ray.wait([eval_ref], timeout=None if block else 0)
        if not done:
            return
        res = ray.get(eval_ref)
        last_eval = {k: v for k, v in res.items() if k.startswith("val/")}
        history.append({"update": res["update"], "wall_time_s": round(wall_before + time.perf_counter() - t0, 2),
                        **stats.get("last", {}), **last_eval})
        if last_eval and last_eval["val/dice"] > best_dice:
            best_dice = last_eval["val/dice"]
            version, weights, _ = ray.get(eval_weights)
            best = build_model(cfg, info["in_channels"])
            _load_numpy(best, weights[0])
            save_checkpoint(ckpt_dir / "best.pt", {
                "kind": "pixeldrl", "config": cfg_dict, "in_channels": info["in_channels"],
                "n_actions": best.n_actions, "model": best.state_dict(),
                "state": {"update": version, "best_dice": best_dice}})
        eval_ref = eval_weights = None
        if on_eval is not None:
            on_eval(history[-1])

    restarting: dict[int, float] = {}  # worker -> when it was first seen down
    retry_at: dict[int, float] = {}  # worker -> when to hand it work again
    try:
        while running or retry_at:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0) if running else ([], [])
            if not running:
                time.sleep(0.2)
            for ref in ready:
                i = running.pop(ref)
                try:
                    res = ray.get(ref)
                    restarting.pop(i, None)
                    worker_rollouts[i] += res["rollouts"]
                    worker_busy_s[i] += res["compute_s"]
                    worker_nodes[i] = res["node"]
                    if res["done"]:
                        continue  # the learner has finished; this worker rests
                except RayActorError as e:  # died, or is being restarted by Ray: count once, retry shortly
                    if isinstance(e, ActorDiedError) and restarts[i] >= cfg.worker_max_restarts:
                        raise RuntimeError(f"worker {i} is dead after {restarts[i]} restart(s) (worker_max_restarts="
                                           f"{cfg.worker_max_restarts}): {e}") from e
                    if i not in restarting:
                        restarting[i] = time.perf_counter()
                        restarts[i] += 1
                        console.print(f"worker {i} died ({type(e).__name__}); Ray restarts it (restart {restarts[i]})")
                    elif time.perf_counter() - restarting[i] > 600:
                        raise RuntimeError(f"worker {i} has not come back within 600 s of dying: {e}") from e
                    retry_at[i] = time.perf_counter() + 0.5
                    continue
                running[workers[i].work.remote(learner, cfg.rollouts_per_call)] = i
            for i, t in list(retry_at.items()):
                if time.perf_counter() >= t:
                    del retry_at[i]
                    running[workers[i].work.remote(learner, cfg.rollouts_per_call)] = i
            now = time.perf_counter()
            stats = ray.get(learner.stats.remote())
            if stats["update"] >= next_eval and eval_ref is None:
                eval_weights = learner.weights.remote()
                eval_ref = evaluator.evaluate.remote(eval_weights)
                next_eval = (stats["update"] // cfg.eval_every + 1) * cfg.eval_every
            handle_eval(block=False)
            if stats["update"] >= next_ckpt:
                save_payload("last.pt", driver_state(stats))
                next_ckpt = (stats["update"] // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            if now - last_report >= cfg.report_every_s:
                last_report = now
                if not quiet:
                    console.print(_report_line(stats, last_eval, restarts), highlight=False)
                if on_report is not None:
                    on_report({"stats": stats, "workers": workers, "restarts": restarts})
            if deadline is not None and now - t0 >= deadline and stopped_by == "epochs":
                stopped_by = "max_minutes"
                ray.get(learner.stop.remote())
            if (cfg.stop_at_val_dice is not None and stopped_by == "epochs"
                    and last_eval.get("val/dice", -1.0) >= cfg.stop_at_val_dice):
                stopped_by = "stop_at_val_dice"
                ray.get(learner.stop.remote())
    except KeyboardInterrupt:
        stopped_by = "interrupted"
        console.print("interrupted: writing checkpoints/last.pt")
        ray.get(learner.stop.remote())
    stats = ray.get(learner.stats.remote())
    if stopped_by == "epochs" and cfg.max_updates is not None and stats["update"] >= cfg.max_updates:
        stopped_by = "max_updates"
    wall = time.perf_counter() - t0
    if stopped_by != "interrupted":
        handle_eval(block=True)
        if best_dice < 0 or (history and history[-1]["update"] != stats["update"]):
            eval_weights = learner.weights.remote()
            eval_ref = evaluator.evaluate.remote(eval_weights)
            handle_eval(block=True)
    save_payload("last.pt", driver_state(stats))
    if stopped_by == "interrupted":
        raise KeyboardInterrupt
    best = load_checkpoint(ckpt_dir / "best.pt")
    w = {k: v.numpy() for k, v in best["model"].items()}
    final = {k: v for k, v in ray.get(evaluator.evaluate.remote((best["state"]["update"], [w], True), None)).items()
             if k.startswith("val/")}
    metrics = {
        **final,
        "params": n_params,
        "gflop_per_image_step": flops / 1e9,
        "wall_time_s": round(wall_before + wall, 2),
        "updates": stats["update"],
        "best_update": best["state"]["update"],
        "pixel_agent_steps": stats["pixel_agent_steps"],
        **_throughput(stats, wall, worker_rollouts, worker_busy_s, restarts, cfg),
        "learner_device": learner_device,
        **_cluster_placement(learner_node, worker_nodes),
        "stopped_by": stopped_by,
        "n_train": info["n_train"],
        "n_val": info["n_val"],
        **stats.get("last", {}),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not quiet:
        console.print(_report_line(stats, last_eval, restarts), highlight=False)
    return metrics


def _cluster_placement(learner_node: str, worker_nodes: list[str | None]) -> dict[str, Any]:
    """Which nodes the learner and each worker ran on, with each node's resources (an autoscaler's doing shows)."""
    import ray

    used = {learner_node, *(n for n in worker_nodes if n)}
    nodes = {n["NodeID"]: {"address": n["NodeManagerAddress"], "resources": n["Resources"]}
             for n in ray.nodes() if n["NodeID"] in used}
    return {"cluster/learner_node": learner_node, "cluster/worker_nodes": worker_nodes, "cluster/nodes": nodes}


def _throughput(stats, wall, worker_rollouts, worker_busy_s, restarts, cfg) -> dict[str, Any]:
    return {
        "perf/updates_per_s": stats["update"] / max(stats["wall_s"], 1e-9),
        "perf/pixel_agent_steps_per_s": stats["pixel_agent_steps"] / max(stats["wall_s"], 1e-9),
        "perf/staleness_mean": stats["staleness_mean"],
        "perf/staleness_max": stats["staleness_max"],
        "perf/learner_busy_fraction": stats["busy_s"] / max(stats["wall_s"], 1e-9),
        "perf/dropped_gradients": stats["dropped"],
        "perf/downweighted_gradients": stats["downweighted"],
        "perf/worker_updates_per_s": [r / max(wall, 1e-9) for r in worker_rollouts],
        "perf/worker_busy_fraction": [b / max(wall, 1e-9) for b in worker_busy_s],
        "workers/restarts": sum(restarts),
        "workers/n": cfg.num_workers,
    }


def _report_line(stats: dict, last_eval: dict, restarts: list[int]) -> str:
    wall = max(stats["wall_s"], 1e-9)
    per = " ".join(f"{k}:{v}" for k, v in sorted(stats["per_worker_updates"].items()))
    return (f"update {stats['update']:6d}  {stats['update'] / wall:6.2f} upd/s  "
            f"{stats['pixel_agent_steps'] / wall / 1e6:7.2f} M px-steps/s  staleness {stats['staleness_mean']:.2f}"
            f" (max {stats['staleness_max']})  learner busy {stats['busy_s'] / wall:5.1%}  dropped {stats['dropped']}"
            f"  restarts {sum(restarts)}  val dice {last_eval.get('val/dice', float('nan')):.3f}  per worker [{per}]")
