"""The classic single-machine A3C: ``torch.multiprocessing`` Hogwild over a shared-memory agent.

This is the peer the Ray implementation is measured against (``benchmarks/scaling.py``), with the same agent, loss,
rollout and environment: each process keeps a local agent, syncs it from the shared one, runs a rollout, and applies
its gradient to the shared parameters without locks through its own :class:`~rl_agents.algo.agent.PA3CAgent` over
the shared modules (so clipping, Adam and the schedule are the same code as everywhere else; each process has its
own Adam moments, as in PyTorch's ``mnist_hogwild`` example and pytorch-a3c). It runs on one machine only and for a
fixed time; it is a benchmark peer, not a run engine (its per-process optimiser states cannot be checkpointed as
one). Ray is what scales past one machine.
"""

from __future__ import annotations

import time

import torch
import torch.multiprocessing as mp

from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.config import TrainConfig, config_from_dict, to_dict


def _worker(rank: int, n: int, cfg_dict: dict, shared: list[torch.nn.Module], n_train: int, counter,
            seconds: float, queue) -> None:
    from pixelrl_env.dataset import load_part

    cfg = config_from_dict(cfg_dict)
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
    from pixelrl_env.dataset import describe

    desc = describe(cfg.data)
    torch.manual_seed(cfg.seed)
    agent = PA3CAgent(cfg, desc["in_channels"], desc["n_train"], optimizer=False)
    shared = [agent.model, agent.reward_conv]
    for m in shared:
        m.share_memory()
    before = [p.detach().clone() for p in shared[0].parameters()]
    ctx = mp.get_context("spawn")
    counter, queue = ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, n_processes, to_dict(cfg), shared, desc["n_train"], counter,
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
