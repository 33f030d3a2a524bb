"""`pixeldrl env-demo`: the environment driven by reference policies, with the paper's metrics.

The oracle (sets every pixel to its label) must reach Dice 1.0; the random policy shows what chance gives; the
all-foreground start ("do nothing" for t_max steps) is the baseline that a learned policy has to beat.
"""

from __future__ import annotations

import numpy as np

from pixelrl_env.dataset import load_splits
from pixelrl_env.env import KEEP, PixelSegEnv
from pixelrl_env.metrics import compute_all
from pixelrl_env.policies import oracle_actions, random_actions
from rl_agents.config import TrainConfig

POLICIES = ("oracle", "random", "keep")


def run_policy(env: PixelSegEnv, policy: str, seed: int) -> dict[str, float]:
    """Run ``policy`` over every image of a batched ``env``'s pool once; return mean metrics and return."""
    rng = np.random.default_rng(seed)
    n, b = len(env.images), env.batch_size
    shape = env.action_space.shape
    per_image: dict[str, list[np.ndarray]] = {}
    returns = []
    for start in range(0, n, b):
        idx = np.arange(start, start + b) % n  # the last batch wraps; its repeats are dropped below
        keep = min(b, n - start)
        env.reset(seed=seed, options={"indices": idx})
        total = np.zeros(shape, np.float32)
        for _ in range(env.t_max):
            if policy == "oracle":
                a = oracle_actions(env.state, env.ground_truth, env.n_actions)
            elif policy == "random":
                a = random_actions(rng, shape, env.n_actions)
            else:
                a = np.full(shape, KEEP, np.int64)
            _, _, done, _, info = env.step(a)
            total += info["reward_map"]
            if done:
                break
        for k, v in compute_all(env.state[:keep], env.ground_truth[:keep]).items():
            per_image.setdefault(k, []).append(v)
        returns.append(total[:keep].sum(axis=(1, 2)))
    out = {k: float(np.concatenate(v).mean()) for k, v in per_image.items()}
    out["return_per_image"] = float(np.concatenate(returns).mean())
    out["n_images"] = n
    return out


def env_demo(cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """Run every policy of :data:`POLICIES` on the validation+test slices of ``cfg.data`` with the config's episode
    (``pa3c.t_max``, ``pa3c.action_set``, ``optim.batch_size`` images at a time); return their metrics."""
    splits = load_splits(cfg.data)
    images = np.concatenate([splits.val.images, splits.test.images])
    masks = np.concatenate([splits.val.masks, splits.test.masks])
    env = PixelSegEnv(images, masks, batch_size=min(cfg.optim.batch_size, len(images)), t_max=cfg.pa3c.t_max,
                      action_set=cfg.pa3c.action_set)
    return {p: run_policy(env, p, cfg.seed) for p in POLICIES}
