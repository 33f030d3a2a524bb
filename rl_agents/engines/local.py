"""The single-process engine: one agent, one environment, one update per step, in this process.

With the same seed it is exactly reproducible, resume included: the environment's and the sampler's RNG states
travel in ``last.pt``. A checkpoint written by another engine (Ray, which keeps one RNG per worker) carries none;
resuming it here reseeds both from ``(seed, update)`` and says so.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig
from rl_agents.engines.base import InProcessEngine, evaluate_arrays, reseed

log = logging.getLogger(__name__)


class LocalEngine(InProcessEngine):
    """PA3C in one process. One step = one rollout of ``batch_size`` images and one update."""

    name = "local"

    def __init__(self, cfg: TrainConfig, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.pixel_agent_steps = 0

    def setup(self, resume=None) -> dict[str, Any]:
        cfg = self.cfg
        self.train_set, self.val_set = self._prepare()
        in_channels = self.train_set.images.shape[1]
        self.env = make_train_env(cfg, self.train_set.images, self.train_set.masks, cfg.seed)
        self.agent = PA3CAgent(cfg, in_channels, len(self.train_set), self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(cfg.seed)
        if resume is not None:
            self._restore(resume)
        n_params = count_parameters(self.agent.model)
        self.flops = forward_flops(self.agent.model.cpu(), in_channels, self.train_set.images.shape[-1])
        self.agent.model.to(self.device)
        return {"n_train": len(self.train_set), "n_val": len(self.val_set), "params": n_params,
                "gflop_per_image_step": self.flops / 1e9,
                "banner": f"data: {len(self.train_set)} train / {len(self.val_set)} val slices; model {cfg.network.preset}: "
                          f"{n_params:,} parameters, {self.flops / 1e9:.3f} GFLOP per image-step; device "
                          f"{self.device}; {self.agent.total_updates} updates planned"}

    def _restore(self, ckpt) -> None:
        self.agent.load_state_dict(ckpt.agent)
        self.pixel_agent_steps = int(ckpt.run.get("pixel_agent_steps", 0))
        if "env" in ckpt.rng and "torch" in ckpt.rng:
            self.env.np_random.bit_generator.state = json.loads(ckpt.rng["env"])
            self.gen.set_state(ckpt.rng["torch"])
        else:
            s = reseed(self.cfg.seed, self.agent.update)
            log.warning("%s holds no single-process RNG state (written by the %s engine): reseeded from "
                        "(seed, update)", ckpt.path, ckpt.engine)
            self.env.reset(seed=s)
            self.gen.manual_seed(s)

    def step(self) -> dict[str, float]:
        grads, stats = self.agent.compute_gradients(self.env, self.gen)
        self.pixel_agent_steps += int(stats.pop("pixel_agent_steps"))
        return {**stats, **self.agent.apply_gradients(grads)}

    def _evaluate(self, max_images: int | None) -> dict[str, float]:
        return evaluate_arrays(self.agent.model, self.val_set, self.cfg, self.device, max_images)

    def rng_state(self) -> dict[str, Any]:
        return {"env": json.dumps(self.env.np_random.bit_generator.state), "torch": self.gen.get_state()}

    def perf(self, wall: float) -> dict[str, float]:
        cfg = self.cfg
        return {
            "perf/pixel_agent_steps_per_s": self.pixel_agent_steps / max(wall, 1e-9),
            "perf/updates_per_s": self.agent.update / max(wall, 1e-9),
            # forward + backward ~ 3 forward passes per image-step, plus the bootstrap forward per rollout
            "perf/train_gflop_per_s": (3 * cfg.pa3c.t_max + 1) * cfg.optim.batch_size * self.agent.update * self.flops / 1e9
            / max(wall, 1e-9),
        }

