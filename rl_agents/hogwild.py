"""The classic single-machine A3C: ``torch.multiprocessing`` Hogwild over a shared-memory model.

This is the peer the Ray implementation is measured against (``benchmarks/scaling.py``), with the same model, loss,
rollout and environment: each process keeps a local copy, syncs it from the shared model, runs a rollout, and
writes its gradient into the shared parameters without locks, then steps its own Adam over the shared parameters
(the pattern of PyTorch's ``mnist_hogwild`` example and of pytorch-a3c). It runs on one machine only; Ray is what
scales past one.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.multiprocessing as mp

from .config import TrainConfig, config_from_dict, to_dict
from .pa3c import RewardMapConv


def _worker(rank: int, n: int, cfg_dict: dict, shared: list[torch.nn.Module], counter, seconds: float, queue) -> None:
    from pixelrl_env.dataset import load_splits

    from .trainer import build_model, make_train_env, rollout_and_loss

    cfg = config_from_dict(cfg_dict)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed + 1 + rank)
    train = load_splits(cfg.data).train
    shard = np.arange(rank, len(train), n)
    env = make_train_env(cfg, train.images[shard], train.masks[shard], cfg.seed + 1 + rank)
    model, conv = build_model(cfg, train.images.shape[1]), RewardMapConv(cfg.reward_kernel)
    local = list(model.parameters()) + list(conv.parameters())
    global_params = list(shared[0].parameters()) + list(shared[1].parameters())
    opt = torch.optim.Adam(global_params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)
    times = []
    queue.put(("ready", rank, time.perf_counter()))
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        model.load_state_dict(shared[0].state_dict())
        conv.load_state_dict(shared[1].state_dict())
        roll, loss = rollout_and_loss(cfg, model, conv, env, torch.device("cpu"), gen)
        for p in local:
            p.grad = None
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(local, cfg.grad_clip)
        for gp, lp in zip(global_params, local):
            gp.grad = lp.grad
        opt.step()
        with counter.get_lock():
            counter.value += 1
        times.append(time.perf_counter())
    queue.put(("done", rank, times))


def run_hogwild(cfg: TrainConfig, n_processes: int, seconds: float) -> dict:
    """Train for ``seconds`` with ``n_processes`` Hogwild processes; returns each process's update timestamps."""
    from .trainer import build_model

    from pixelrl_env.dataset import load_splits

    in_channels = int(load_splits(cfg.data).train.images.shape[1])
    torch.manual_seed(cfg.seed)
    shared = [build_model(cfg, in_channels), RewardMapConv(cfg.reward_kernel)]
    for m in shared:
        m.share_memory()
    before = [p.detach().clone() for p in shared[0].parameters()]
    ctx = mp.get_context("spawn")
    counter, queue = ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, n_processes, to_dict(cfg), shared, counter, seconds, queue))
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
