"""PA3C's environment for RLlib: one image per episode, a flat action space, the reward map in ``info``."""

from __future__ import annotations

import json
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pixelrl_env.dataset import load_part
from pixelrl_env.env import ACTION_SETS, PixelSegEnv
from rl_agents.algo.agent import make_augment
from rl_agents.config import config_from_dict

REWARD_MAP = "reward_map"  # info key (env) and train-batch column (learner connector)

_PARTS: dict[str, Any] = {}


def _train_part(cfg_dict: dict):
    """The training split, read once per process: RLlib builds ``num_envs_per_env_runner`` envs in one process."""
    key = json.dumps(cfg_dict["data"], sort_keys=True, default=str)
    if key not in _PARTS:
        _PARTS[key] = load_part(config_from_dict(cfg_dict).data, "train")
    return _PARTS[key]


class PixelSegRLlibEnv(gym.Env):
    """:class:`pixelrl_env.env.PixelSegEnv` for RLlib: one image per episode, a flat action space.

    ``env_config``: ``cfg`` (a :class:`TrainConfig` as a dict) and, for fault-injection tests, ``crash_once_file``:
    the first ``step`` that finds this path absent creates it and raises (once per machine, across restarts).

    Observation: ``Box(C, H, W) float32`` as PixelSegEnv's. Action: ``MultiDiscrete([A] * H * W)`` (a 2-D ``nvec``
    fails in RLlib's catalog). Reward: the mean of the per-pixel reward map; ``info["reward_map"]``: the map,
    ``(H*W,) float32``. ``terminated`` at t_max.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_config: dict | None = None):
        env_config = dict(env_config or {})
        cfg_dict = env_config["cfg"]
        cfg = config_from_dict(cfg_dict)
        part = _train_part(cfg_dict)
        self.inner = PixelSegEnv(part.images, part.masks, batch_size=None, t_max=cfg.pa3c.t_max, action_set=cfg.pa3c.action_set,
                                 transform=make_augment(cfg))
        _, h, w = self.inner.observation_space.shape
        self.hw = (h, w)
        self.observation_space = self.inner.observation_space
        self.action_space = spaces.MultiDiscrete(np.full(h * w, ACTION_SETS[cfg.pa3c.action_set], dtype=np.int64))
        self.crash_once_file = env_config.get("crash_once_file")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self.inner.reset(seed=seed, options=options)
        return obs, {}

    def step(self, action):
        if self.crash_once_file and not os.path.exists(self.crash_once_file):
            with open(self.crash_once_file, "w") as f:
                f.write(f"crashed in pid {os.getpid()}\n")
            raise RuntimeError("injected env failure (crash_once_file)")
        obs, reward, terminated, truncated, info = self.inner.step(np.asarray(action, dtype=np.int64).reshape(self.hw))
        return obs, float(reward), terminated, truncated, {
            REWARD_MAP: info["reward_map"].reshape(-1).astype(np.float32, copy=False)}
