"""The classic single-machine A3C: ``torch.multiprocessing`` Hogwild over a shared-memory agent.

This is the peer the Ray implementation is measured against (``benchmarks/scaling.py``), with the same agent, loss,
rollout and environment: each process keeps a local agent, syncs it from the shared one, runs a rollout, and applies
its gradient to the shared parameters without locks through its own :class:`~rl_agents.algo.agent.PA3CAgent` over
the shared modules (so clipping, Adam and the schedule are the same code as everywhere else; each process has its
own Adam moments, as in PyTorch's ``mnist_hogwild`` example and pytorch-a3c, while the learning-rate schedule follows
the shared update count). It runs on one machine only; Ray is
what scales past one.

Two entry points: :class:`HogwildEngine` (``engine: hogwild``) trains under the shared run lifecycle (budgets,
evaluation, checkpoints, resume); :func:`run_hogwild` runs for a fixed time and returns update timestamps
(``benchmarks/scaling.py``). Checkpoints hold the shared weights and the update count but no optimiser state: each
process has its own Adam moments, which are not one state to save; a resumed run (under any engine) starts them anew.
"""

from __future__ import annotations

import copy
import queue
import signal
import time

import torch
import torch.multiprocessing as mp

from pixelrl_env.dataset import describe, load_part
from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig
from rl_agents.engines.base import DoneEval, actor_seed, evaluate_arrays


def _train_process(rank: int, n: int, cfg: TrainConfig, shared: list[torch.nn.Module], n_train: int, counters,
                   stop, stats_queue, start_update: int) -> None:
    """One Hogwild process of :class:`HogwildEngine`: updates until the plan is done or ``stop`` is set.

    ``counters``: (reserved, applied). An update is reserved before it is applied, so that the processes together
    never exceed the plan; ``applied`` is what the driver reports and checkpoints.
    """

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle (it stops us via ``stop``)
    reserved, applied = counters
    torch.set_num_threads(1)
    seed = actor_seed(cfg.seed, rank, start_update)
    torch.manual_seed(seed)
    part = load_part(cfg.data, "train", rank, n)
    env = make_train_env(cfg, part.images, part.masks, seed)
    local = PA3CAgent(cfg, part.images.shape[1], n_train, optimizer=False)
    glob = PA3CAgent(cfg, part.images.shape[1], n_train, modules=(shared[0], shared[1]))
    gen = torch.Generator().manual_seed(seed)
    while not stop.is_set():
        local.model.load_state_dict(shared[0].state_dict())
        local.reward_conv.load_state_dict(shared[1].state_dict())
        local.update = applied.value  # schedules (entropy_coef_final) follow the shared update count
        grads, stats = local.compute_gradients(env, gen)
        with reserved.get_lock():
            if reserved.value >= glob.total_updates:
                break
            at = reserved.value
            reserved.value += 1
        glob.apply_gradients(grads, at_update=at)  # the schedule of the shared count, not this process's own
        with applied.get_lock():
            applied.value += 1
        if stats_queue.empty():
            stats_queue.put(stats)


class HogwildEngine:
    """Hogwild A3C under the run lifecycle: ``num_workers`` processes update one shared-memory agent.

    The driver process only watches: a step waits half a second and reads the shared update counter; evaluations
    score a copy of the shared weights taken at that moment.
    """

    name = "hogwild"

    def __init__(self, cfg: TrainConfig, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.procs: list = []
        self.last_stats: dict = {}

    def setup(self, resume=None) -> dict:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        desc = describe(cfg.data)
        if desc["n_train"] == 0:
            raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
        self.val = load_part(cfg.data, "val") if desc["n_val"] else None
        self.agent = PA3CAgent(cfg, desc["in_channels"], desc["n_train"], optimizer=False)
        self.judge = PA3CAgent(cfg, desc["in_channels"], desc["n_train"], optimizer=False)  # scores snapshots
        start = 0
        if resume is not None:
            self.agent.load_state_dict(resume.agent, weights_only=True)
            start = resume.update
        self.px_per_update = cfg.optim.batch_size * cfg.pa3c.t_max * desc["image_size"] ** 2
        flops = forward_flops(self.agent.model, desc["in_channels"], desc["image_size"])
        for m in (self.agent.model, self.agent.reward_conv):
            m.share_memory()
        ctx = mp.get_context("spawn")
        self.counters = (ctx.Value("i", start), ctx.Value("i", start))
        self.stop_event, self.stats_queue = ctx.Event(), ctx.Queue()
        shared = [self.agent.model, self.agent.reward_conv]
        self.procs = [ctx.Process(target=_train_process, args=(r, cfg.num_workers, cfg, shared,
                                                              desc["n_train"], self.counters, self.stop_event,
                                                              self.stats_queue, start), daemon=True)
                      for r in range(cfg.num_workers)]
        for p in self.procs:
            p.start()
        n_params = count_parameters(self.agent.model)
        return {"n_train": desc["n_train"], "n_val": desc["n_val"], "params": n_params,
                "gflop_per_image_step": flops / 1e9,
                "banner": f"Hogwild A3C: {cfg.num_workers} processes x 1 thread; data: {desc['n_train']} train / "
                          f"{desc['n_val']} val slices; model {cfg.network.preset}: {n_params:,} parameters; "
                          f"{self.agent.total_updates} updates planned"}

    @property
    def update(self) -> int:
        return int(self.counters[1].value)

    @property
    def total_updates(self) -> int:
        return self.agent.total_updates

    @property
    def pixel_agent_steps(self) -> int:
        return self.update * self.px_per_update

    @property
    def finished(self) -> bool:
        return not any(p.is_alive() for p in self.procs)

    def step(self) -> dict:
        time.sleep(0.5)
        dead = [p for p in self.procs if not p.is_alive() and p.exitcode not in (0, None)]
        if dead:
            self.stop()
            raise RuntimeError(f"a Hogwild process died (exit code {dead[0].exitcode}); continue with --resume")
        try:
            self.last_stats = {k: v for k, v in self.stats_queue.get_nowait().items() if k != "pixel_agent_steps"}
        except queue.Empty:
            pass
        return dict(self.last_stats)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self.procs:
            self.stop_event.set()
            for p in self.procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()

    def _snapshot(self) -> dict:
        # state_dict() returns the shared-memory tensors themselves (.cpu() of a CPU tensor is no copy), which the
        # child processes keep changing: a checkpoint written from them failed its own content digest. Copy them.
        return {**copy.deepcopy(self.agent.state_dict()), "update": self.update}

    def start_eval(self, max_images: int | None):
        snap = self._snapshot()
        return DoneEval({"update": snap["update"], **self._evaluate(snap, max_images)}, lambda: snap)

    def _evaluate(self, state: dict, max_images: int | None) -> dict:
        if self.val is None:
            return {}
        self.judge.load_state_dict(state, weights_only=True)
        return evaluate_arrays(self.judge.model, self.val, self.cfg, torch.device("cpu"), max_images)

    def evaluate_state(self, state: dict) -> dict:
        return self._evaluate(state, None)

    def agent_state(self) -> dict:
        return self._snapshot()

    def rng_state(self) -> dict:
        return {}

    def report_line(self, last_eval: dict) -> str | None:
        return None

    def perf(self, wall: float) -> dict:
        return {"perf/updates_per_s": self.update / max(wall, 1e-9),
                "perf/pixel_agent_steps_per_s": self.pixel_agent_steps / max(wall, 1e-9), "workers/n": len(self.procs)}


def _worker(rank: int, n: int, cfg: TrainConfig, shared: list[torch.nn.Module], n_train: int, counter,
            seconds: float, queue) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed + 1 + rank)
    part = load_part(cfg.data, "train", rank, n)
    env = make_train_env(cfg, part.images, part.masks, cfg.seed + 1 + rank)
    in_channels = part.images.shape[1]
    local = PA3CAgent(cfg, in_channels, n_train, optimizer=False)
    glob = PA3CAgent(cfg, in_channels, n_train, modules=(shared[0], shared[1]))
    gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    times = []
    queue.put(("ready", rank, time.perf_counter()))
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        local.model.load_state_dict(shared[0].state_dict())
        local.reward_conv.load_state_dict(shared[1].state_dict())
        grads, _ = local.compute_gradients(env, gen)
        glob.apply_gradients(grads)
        with counter.get_lock():
            counter.value += 1
        times.append(time.perf_counter())
    queue.put(("done", rank, times))


def run_hogwild(cfg: TrainConfig, n_processes: int, seconds: float) -> dict:
    """Train for ``seconds`` with ``n_processes`` Hogwild processes; returns each process's update timestamps."""

    desc = describe(cfg.data)
    torch.manual_seed(cfg.seed)
    agent = PA3CAgent(cfg, desc["in_channels"], desc["n_train"], optimizer=False)
    shared = [agent.model, agent.reward_conv]
    for m in shared:
        m.share_memory()
    before = [p.detach().clone() for p in shared[0].parameters()]
    ctx = mp.get_context("spawn")
    counter, queue = ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, n_processes, cfg, shared, desc["n_train"], counter,
                                               seconds, queue))
             for r in range(n_processes)]
    for p in procs:
        p.start()
    out: dict = {"ready": {}, "times": {}}
    for _ in range(2 * n_processes):
        kind, rank, payload = queue.get(timeout=seconds + 600)
        out["ready" if kind == "ready" else "times"][rank] = payload
    for p in procs:
        p.join(timeout=60)
    out["updates"] = counter.value
    out["weight_change"] = float(sum((p.detach() - b).abs().sum() for p, b in zip(shared[0].parameters(), before)))
    return out
