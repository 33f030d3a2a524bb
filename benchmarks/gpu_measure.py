"""What ``benchmarks/gpu_suite.py`` measures with: timing that waits for the GPU, one training update of each
network (its FLOPs counted by torch), matmul peaks, toy data. Beside the suite, which imports it as a sibling."""

from __future__ import annotations

import functools
import gc
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rl_agents.algo.agent import PA3CAgent, build_network, make_train_env
from rl_agents.algo.model import forward_flops
from rl_agents.config import load_config
from rl_agents.engines.supervised import build_unet

# (label, precision, channels_last, compile backend)
MODES = [("fp32", "fp32", False, None), ("tf32", "tf32", False, None), ("bf16", "bf16", False, None),
         ("bf16+channels_last", "bf16", True, None), ("bf16+compile", "bf16", False, "inductor")]

# issue 23's cheaper options as a network row of their own (named options beyond the paper; the recipe)
VARIANTS = {"small-once": ["network.preset=small", "network.step_features=once", "network.head_stride=2", "pa3c.t_max=5"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """FLOP/s of an n^3 matmul (mean of ``reps`` after 3 warm-ups) on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def toy_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with one bright disc each and its mask: the networks do the same work on any data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * rng.uniform(0.1, 0.25)) ** 2
    images = (0.6 * masks + 0.4 * rng.random((n, size, size))).astype(np.float32)[:, None]
    return images, masks


def base_cfg(model: str, size: int, batch: int, precision: str, channels_last: bool, compile_: str | None,
             device: torch.device):
    preset = "small" if model == "unet" else model
    return load_config(None, [
        f"model={'unet' if model == 'unet' else 'pixeldrl'}", f"network.preset={preset}", f"optim.batch_size={batch}",
        f"compute.precision={precision}", f"compute.channels_last={str(channels_last).lower()}",
        f"compute.compile={compile_ or 'null'}", f"compute.device={device.type}", "tracking.mlflow=false", f"data.size={size}",
    ] if model not in VARIANTS else [f"optim.batch_size={batch}", f"compute.precision={precision}",
                                     f"compute.channels_last={str(channels_last).lower()}", f"compute.compile={compile_ or 'null'}",
                                     f"compute.device={device.type}", "tracking.mlflow=false", f"data.size={size}", *VARIANTS[model]])


@functools.lru_cache(maxsize=None)
def forward_gflop(model: str, preset: str, size: int) -> float:
    """One forward pass on one ``size`` image, counted once per network and size (on the CPU: seconds for paper)."""

    net = build_unet(1) if model == "unet" else build_network(load_config(None, [f"network.preset={preset}"]), 1)
    return forward_flops(net, 1, size) / 1e9


def make_stepper(model: str, cfg, device: torch.device, size: int):
    """``(step(), GFLOP per update, image-steps per update, env seconds counter, parameters)`` for one setting."""

    n = max(cfg.optim.batch_size, 8)
    images, masks = toy_data(n, size)
    env_time = [0.0]
    if model == "unet":
        from monai.losses import DiceCELoss

        from rl_agents.engines.supervised import UNetAgent

        agent = UNetAgent(cfg, 1, n, device)
        loss_fn = DiceCELoss(sigmoid=True)
        x, y = torch.as_tensor(images[: cfg.optim.batch_size]), torch.as_tensor(masks[: cfg.optim.batch_size, None]).float()
        accel = agent.accel

        def step():
            with accel.autocast():
                logits = agent.net(accel.to_device(x, image=True))
            loss = loss_fn(logits.float(), accel.to_device(y))
            agent.opt.zero_grad(set_to_none=True)
            loss.backward()
            agent.apply_gradients()

        params = sum(p.numel() for p in agent.model.parameters())
        return step, 3 * cfg.optim.batch_size * forward_gflop(model, cfg.network.preset, size), cfg.optim.batch_size, env_time, params

    agent = PA3CAgent(cfg, 1, n, device)
    env = make_train_env(cfg, images, masks, seed=0)
    gen = torch.Generator(device=device).manual_seed(0)
    env_step = env.step

    def timed_step(actions):
        t = time.perf_counter()
        out = env_step(actions)
        env_time[0] += time.perf_counter() - t
        return out

    env.step = timed_step

    def step():
        grads, _ = agent.compute_gradients(env, gen)
        agent.apply_gradients(grads)

    with FlopCounterMode(display=False) as counter:  # one real update, backward included, whatever the options
        step()
    gflop = counter.get_total_flops() / 1e9
    return step, gflop, cfg.optim.batch_size * cfg.pa3c.t_max, env_time, sum(p.numel() for p in agent.model.parameters())


def measure(step, device: torch.device, warmup: int, min_updates: int, max_s: float) -> tuple[float, float, int]:
    """``(warm-up seconds, seconds per update, timed updates)``: at least ``min_updates`` (or 1 past ``max_s``)."""
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    k = 0
    while k < min_updates and (k == 0 or time.perf_counter() - t < max_s):
        step()
        k += 1
        sync(device)
    return warm, (time.perf_counter() - t) / k, k


def timed_calls(call, device: torch.device, deadline: float, warmup: int = 2, max_calls: int = 20,
                max_s: float = 1.0) -> list[float]:
    for _ in range(warmup):
        call()
    sync(device)
    times: list[float] = []
    t_end = min(deadline, time.perf_counter() + max_s)
    while len(times) < max_calls and (not times or time.perf_counter() < t_end):
        t = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def throughput_grid(dry: bool) -> list[tuple[str, int, int, tuple]]:
    """``(model, size, batch, mode)`` rows, most valuable first (a part that runs out of time loses the tail)."""
    modes = {m[0]: m for m in MODES}
    if dry:
        # 32 px: the U-Net's 5 levels need 2x2 at the bottom; aot_eager traces and differentiates without codegen
        return [(m, 32, 2, modes[k]) for m in ("small", "small-once", "unet")
                for k in ("fp32", "bf16", "bf16+channels_last")] + [
            ("small", 32, 2, ("bf16+compile", "bf16", False, "aot_eager")), ("small", 32, 4, modes["tf32"])]
    rows = []
    for model in ("paper", "small", "unet"):  # every mode at batch 8, 256 px (compiling takes a minute or so)
        rows += [(model, 256, 8, modes[k]) for k in ("fp32", "tf32", "bf16", "bf16+channels_last")]
        rows += [(model, 256, 8, modes["bf16+compile"])] if model != "small" else []
    rows += [("small-once", 256, 8, modes[k]) for k in ("fp32", "tf32", "bf16", "bf16+channels_last")]
    rows += [(m, 256, b, modes["bf16"]) for m in ("paper", "small", "small-once", "unet") for b in (2, 32, 64)]
    rows += [(m, 128, b, modes["bf16"]) for m in ("paper", "small", "unet") for b in (2, 8, 32, 64)]  # 128 px
    rows += [(m, 128, 8, modes[k]) for m in ("paper", "small", "unet") for k in ("fp32", "tf32")]
    return rows


def eval_cadence(name: str, dry: bool) -> int:
    """Updates between validation passes: about every 30 s of GPU training (best-checkpoint selection)."""
    if dry:
        return 5
    return {"paper": 100, "unet": 300}.get(name, 200)


# latency -------------------------------------------------------------------------------------------------------------
