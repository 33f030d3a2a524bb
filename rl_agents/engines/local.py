"""The single-process engine: one agent, one environment, one update per step, in this process.

With the same seed it is exactly reproducible, resume included: the environment's and the sampler's RNG states
travel in ``last.pt``. A checkpoint written by another engine (Ray, which keeps one RNG per worker) carries none;
resuming it here reseeds both from ``(seed, update)`` and says so.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import numpy as np
import torch

from pixelrl_env.dataset import ArraySet, load_splits
from pixelrl_env.metrics import compute_all

from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.algo.inference import segment
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate_arrays(model, data: ArraySet, cfg: TrainConfig, device, max_images: int | None = None) -> dict[str, float]:
    """Greedy segmentation of ``data`` at its stored resolution; mean of each metric over images."""
    n = len(data) if max_images is None else min(len(data), max_images)
    if n == 0:
        return {}
    pred, _ = segment(model, data.images[:n], cfg.t_max, batch_size=16, device=device)
    per = compute_all(pred, data.masks[:n])
    return {k: float(np.mean(v)) for k, v in per.items()}


def reseed(seed: int, update: int) -> int:
    """A seed for RNGs restarted at ``update`` (resuming another engine's checkpoint): distinct per update."""
    return int(np.random.SeedSequence([seed, update]).generate_state(1)[0])


class DoneEval:
    """An evaluation computed on the spot (the synchronous engines' kind of evaluation job).

    ``snapshot`` is called only when the lifecycle keeps the result as the new best, right after ``start_eval`` and
    before the next step, so the agent has not moved: no copy of the weights and optimiser per evaluation.
    """

    def __init__(self, metrics: dict[str, Any], snapshot: Callable[[], dict[str, Any]]):
        self._metrics, self.snapshot = metrics, snapshot

    def result(self, block: bool) -> dict[str, Any]:
        return dict(self._metrics)


class InProcessEngine:
    """What the engines that train in this process share: progress read off ``self.agent``, stop, state."""

    stopped = False

    def _prepare(self):
        """Threads, seed, device and the data (all splits read here: one process trains on all of it)."""
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        splits = load_splits(cfg.data)
        if len(splits.train) == 0:
            raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
        return splits.train, splits.val

    @property
    def update(self) -> int:
        return self.agent.update

    @property
    def total_updates(self) -> int:
        return self.agent.total_updates

    @property
    def finished(self) -> bool:
        return self.stopped or self.agent.update >= self.agent.total_updates

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        pass

    def agent_state(self) -> dict[str, Any]:
        return self.agent.state_dict()

    def report_line(self, last_eval: dict) -> str | None:
        return None  # the lifecycle prints a line per validation pass; one process has nothing more to say

    def evaluate_state(self, state: dict[str, Any]) -> dict[str, float]:
        """Score ``state`` on the whole validation split, then put the live weights back."""
        live = self.agent.state_dict()
        self.agent.load_state_dict(state, weights_only=True)
        try:
            return self._evaluate(None)
        finally:
            self.agent.load_state_dict(live, weights_only=True)

    def start_eval(self, max_images: int | None) -> DoneEval:
        return DoneEval({"update": self.agent.update, **self._evaluate(max_images)}, self.agent.state_dict)


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
                "banner": f"data: {len(self.train_set)} train / {len(self.val_set)} val slices; model {cfg.preset}: "
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
            "perf/train_gflop_per_s": (3 * cfg.t_max + 1) * cfg.batch_size * self.agent.update * self.flops / 1e9
            / max(wall, 1e-9),
        }

