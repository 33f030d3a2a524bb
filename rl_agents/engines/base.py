"""What every engine shares: the :class:`Engine` protocol that :class:`rl_agents.experiment.lifecycle.Run` drives,
the in-process engines' common part, evaluation of in-memory arrays, and seeds.

An engine never imports another engine; what two engines share lives here (or in ``ray_runtime`` for Ray).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import torch

from pixelrl_env.dataset import ArraySet, load_splits
from pixelrl_env.metrics import compute_all

from rl_agents.algo.inference import segment
from rl_agents.config import TrainConfig



class EvalJob(Protocol):
    def result(self, block: bool) -> dict[str, Any] | None: ...
    def snapshot(self) -> dict[str, Any]: ...


class Engine(Protocol):
    """The members :class:`~rl_agents.experiment.lifecycle.Run` calls: one engine per way of training."""

    name: str
    update: int
    total_updates: int
    pixel_agent_steps: int
    # set by the lifecycle: checkpoints/last.pt and its reader (None before the first), from which a distributed
    # engine restores a dead learner
    last_checkpoint: Any
    read_last_checkpoint: Callable[[], Any] | None

    @property
    def finished(self) -> bool: ...
    def setup(self, resume=None) -> dict[str, Any]: ...
    def step(self) -> dict[str, float]: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def start_eval(self, max_images: int | None) -> EvalJob: ...
    def evaluate_state(self, state: dict[str, Any]) -> dict[str, float]: ...
    def agent_state(self) -> dict[str, Any]: ...
    def rng_state(self) -> dict[str, Any]: ...
    def report_line(self, last_eval: dict) -> str | None: ...
    def perf(self, wall: float) -> dict[str, Any]: ...


def actor_seed(seed: int, index: int, start_update: int) -> int:
    """Seed of worker ``index`` (index -1: the learner) in a run that starts (or resumes) at ``start_update``."""
    return int(np.random.SeedSequence([seed, index + 1, start_update]).generate_state(1)[0])


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
    pred, _ = segment(model, data.images[:n], cfg.pa3c.t_max, batch_size=16, device=device)
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
        if cfg.compute.threads:
            torch.set_num_threads(cfg.compute.threads)
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.compute.device)
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
