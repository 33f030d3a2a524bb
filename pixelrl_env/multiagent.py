"""A PettingZoo ``ParallelEnv`` view of :class:`PixelSegEnv` in which each pixel is a named agent.

This makes the pixel-agent framing literal for multi-agent tooling and for teaching; it is for small images only
(one Python dict entry per pixel per step), while training uses the array form of :class:`PixelSegEnv`.

* agents: ``"pixel_<row>_<col>"``, all ``H x W`` of them, alive for ``t_max`` steps, then terminated together;
* observation per agent: a ``(C, k, k)`` float32 patch of ``image * mask`` centred on the pixel (zero outside the
  image; ``k = patch``, odd), so that the agent sees its own state and its neighbourhood;
* action per agent: ``Discrete(n_actions)`` with the meanings of :class:`PixelSegEnv`;
* reward per agent: its own entry of the per-pixel reward map.
"""

from __future__ import annotations

import functools

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from .env import PixelSegEnv


class PixelAgentsParallelEnv(ParallelEnv):
    metadata = {"name": "pixelseg_agents_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(self, *, patch: int = 3, max_agents: int = 4096, render_mode: str | None = None, **env_kwargs):
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"patch must be a positive odd number, got {patch}")
        env_kwargs.pop("batch_size", None)
        self.env = PixelSegEnv(batch_size=None, render_mode=render_mode, **env_kwargs)
        c, h, w = self.env.observation_space.shape
        if h * w > max_agents:
            raise ValueError(
                f"{h}x{w} images give {h * w} agents, more than max_agents={max_agents}; the per-pixel agent view is "
                "meant for small images (use PixelSegEnv for training)"
            )
        self.render_mode = render_mode
        self.patch = patch
        self._hw = (h, w)
        self.possible_agents = [f"pixel_{r}_{q}" for r in range(h) for q in range(w)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(
            self.env.observation_space.low.min(),
            self.env.observation_space.high.max(),
            shape=(c, patch, patch),
            dtype=np.float32,
        )
        self._act_space = spaces.Discrete(self.env.n_actions)

    @functools.lru_cache(maxsize=None)
    def observation_space(self, agent: str) -> spaces.Box:
        return self._obs_space

    @functools.lru_cache(maxsize=None)
    def action_space(self, agent: str) -> spaces.Discrete:
        return self._act_space

    def _agent_obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        k = self.patch // 2
        padded = np.pad(obs, ((0, 0), (k, k), (k, k)))
        # (C, H, W, p, p) windows, one per pixel, without a Python loop over pixels to build them
        win = np.lib.stride_tricks.sliding_window_view(padded, (self.patch, self.patch), axis=(1, 2))
        h, w = self._hw
        flat = win.reshape(obs.shape[0], h * w, self.patch, self.patch).transpose(1, 0, 2, 3)
        return {a: np.ascontiguousarray(flat[i]) for i, a in enumerate(self.possible_agents) if a in self._alive}

    def reset(self, seed: int | None = None, options: dict | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        self._alive = set(self.agents)
        return self._agent_obs(obs), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]):
        h, w = self._hw
        grid = np.full((h, w), 1, dtype=np.int64)  # agents that send no action do nothing
        for i, a in enumerate(self.possible_agents):
            if a in actions:
                grid[i // w, i % w] = int(actions[a])
        obs, _, done, _, info = self.env.step(grid)
        reward_map = info["reward_map"].reshape(-1)
        observations = self._agent_obs(obs)
        rewards = {a: float(reward_map[i]) for i, a in enumerate(self.possible_agents) if a in self._alive}
        terminations = {a: bool(done) for a in self.agents}
        truncations = {a: False for a in self.agents}
        infos = {a: {} for a in self.agents}
        if done:
            self.agents = []
            self._alive = set()
        return observations, rewards, terminations, truncations, infos

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()

    def state(self) -> np.ndarray:
        """The global state: the current mask ``(H, W)`` uint8."""
        return self.env.state
