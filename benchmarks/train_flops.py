"""Achieved training FLOP/s of the network presets against the machine's measured matmul peak, side by side.

Peak: a large float32 matmul (4096^3) with the same thread count. Training: rollout + PA3C loss + backward + Adam step
of the real trainer pieces on random 128x128 images, counted as 3 forward passes per image-step plus the bootstrap
forward (backward ~ 2x forward). FLOPs per forward come from torch's FLOP counter.

    python -m benchmarks.train_flops [--threads 2] [--json benchmarks/results/train_flops.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rl_agents.experiment.provenance import command, describe, write_json
from pixelrl_env.env import PixelSegEnv
from rl_agents.algo.model import PixelDRLNet, count_parameters, forward_flops
from rl_agents.algo.pa3c import RewardMapConv, pa3c_loss
from rl_agents.algo.rollout import collect_rollout


def matmul_peak(n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def train_rate(preset: str, size: int, batch: int, t_max: int, updates: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.random((16, 1, size, size), dtype=np.float32)
    masks = (rng.random((16, size, size)) > 0.95).astype(np.uint8)
    env = PixelSegEnv(images, masks, batch_size=batch, t_max=t_max)
    env.reset(seed=0)
    model = PixelDRLNet(1, 2, preset)
    conv = RewardMapConv(5)
    opt = torch.optim.Adam(list(model.parameters()) + list(conv.parameters()), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    flops = forward_flops(model, 1, size)

    def step():
        roll = collect_rollout(model, env, torch.device("cpu"), gen)
        loss = pa3c_loss(roll.log_probs, roll.entropies, roll.values, roll.rewards, roll.bootstrap * 0,
                         reward_conv=conv)
        opt.zero_grad()
        loss.total.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(updates):
        step()
    dt = time.perf_counter() - t0
    image_steps = updates * batch * t_max
    return {
        "preset": preset,
        "params": count_parameters(model),
        "size": size,
        "batch": batch,
        "t_max": t_max,
        "gflop_per_image_step": flops / 1e9,
        "seconds_per_update": dt / updates,
        "image_steps_per_s": image_steps / dt,
        "pixel_agent_steps_per_s": image_steps * size * size / dt,
        "train_gflop_per_s": (3 * t_max + 1) * batch * updates * flops / dt / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--updates", type=int, default=5)
    ap.add_argument("--json", default="benchmarks/results/train_flops.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s on {args.threads} threads")
    rows = [train_rate("small", 128, 8, 10, args.updates)]
    for r in rows:
        r["fraction_of_peak"] = r["train_gflop_per_s"] * 1e9 / peak
        print(f"{r['preset']}: {r['params']:,} params, {r['gflop_per_image_step']:.3f} GFLOP/image-step, "
              f"{r['seconds_per_update']:.2f} s/update (B={r['batch']}, t_max={r['t_max']}), "
              f"{r['image_steps_per_s']:.1f} image-steps/s, {r['train_gflop_per_s']:.1f} GFLOP/s "
              f"= {100 * r['fraction_of_peak']:.0f}% of peak")
    # What each preset would cost, trained or not (the `paper` preset is a GPU network: it is counted, not timed).
    presets = []
    for preset in ("small", "medium", "paper"):
        model = PixelDRLNet(1, 2, preset)
        presets.append({"preset": preset, "params": count_parameters(model),
                        **{f"forward_gflop_{s}px": forward_flops(model, 1, s) / 1e9 for s in (128, 256)}})
        print(f"{preset}: {presets[-1]['params']:,} params, forward {presets[-1]['forward_gflop_128px']:.2f} / "
              f"{presets[-1]['forward_gflop_256px']:.2f} GFLOP per image at 128 / 256 px")
    out = {"command": command(), "machine": {**describe(), "threads": args.threads},
           "matmul_peak_gflop_per_s": peak / 1e9, "rows": rows, "presets": presets}
    write_json(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
