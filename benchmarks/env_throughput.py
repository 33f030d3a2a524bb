"""Pixel-agent steps per second of PixelSegEnv, on one core.

A pixel-agent step is one pixel taking one action: ``B * H * W`` per ``env.step``. The target is 100 million per
second for B = 32 at 128x128 and 256x256, so that the environment never limits training. Actions are drawn before
timing (a policy produces them), so the figure is the environment's own cost: state update, reward map, observation.

    python -m benchmarks.env_throughput [--json benchmarks/results/env_throughput.json] [--seconds 2]
"""

from __future__ import annotations

import os

# One core, pinned, before numpy loads any threaded library.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

# the imports below come after the thread pinning above, on purpose
import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pixelrl_env.env import PixelSegEnv  # noqa: E402
from rl_agents.experiment.provenance import command, describe, write_json  # noqa: E402

TARGET = 100e6


def measure(batch: int, size: int, channels: int, action_set: str, action_dtype, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    images = rng.random((max(batch, 8), channels, size, size), dtype=np.float32)
    masks = (rng.random((max(batch, 8), size, size)) > 0.9).astype(np.uint8)
    t_max = 10
    env = PixelSegEnv(images, masks, batch_size=batch, t_max=t_max, action_set=action_set)
    n_actions = env.n_actions
    actions = [rng.integers(0, n_actions, size=(batch, size, size)).astype(action_dtype) for _ in range(t_max)]
    env.reset(seed=0)
    for a in actions[:3]:  # warm-up
        env.step(a)
    steps, t_env = 0, 0.0
    while t_env < seconds:
        env.reset()
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        t_env += time.perf_counter() - t0
        steps += t_max
    rate = steps * batch * size * size / t_env
    return {
        "batch": batch,
        "size": size,
        "channels": channels,
        "action_set": action_set,
        "action_dtype": np.dtype(action_dtype).name,
        "env_steps": steps,
        "seconds": round(t_env, 3),
        "ms_per_step": round(1000 * t_env / steps, 3),
        "pixel_agent_steps_per_s": rate,
        "meets_100M": rate >= TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/env_throughput.json")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    args = ap.parse_args()
    rows = []
    for size in (128, 256):
        for channels in (1, 3):
            for action_set in ("paper", "three"):
                for dt in (np.int64, np.uint8):
                    r = measure(32, size, channels, action_set, dt, args.seconds)
                    rows.append(r)
                    print(
                        f"B=32 {size}x{size} C={channels} {action_set:5s} actions {r['action_dtype']:5s}: "
                        f"{r['pixel_agent_steps_per_s'] / 1e6:7.1f} M pixel-agent steps/s "
                        f"({r['ms_per_step']:.2f} ms/step) {'OK' if r['meets_100M'] else 'BELOW 100M'}"
                    )
    out = {
        "command": command(),
        "machine": {**describe(), "cores_used": 1, "numpy": np.__version__},
        "target_pixel_agent_steps_per_s": TARGET,
        "results": rows,
    }
    write_json(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
