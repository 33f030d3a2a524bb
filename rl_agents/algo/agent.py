"""The PA3C agent: the network, the reward-map kernel, Adam and the step schedule, owned by one object.

Every engine trains this same object: the single process computes a gradient and applies it here; a Ray worker
computes a gradient on its local agent and the learner's agent applies it; Hogwild processes apply into a shared one.
So clipping, Adam and the schedule are written once (:meth:`PA3CAgent.apply_gradients`), and the agent's
:meth:`state_dict` is the checkpoint's content whichever engine wrote it (see :mod:`rl_agents.experiment.checkpoint`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from pixelrl_env.augment import Augment
from pixelrl_env.env import PixelSegEnv
from pixelrl_env.metrics import compute_all

from rl_agents.algo.accel import Accel
from rl_agents.algo.model import PixelDRLNet, load_weights
from rl_agents.algo.pa3c import RewardMapConv, pa3c_loss
from rl_agents.algo.phases import phase
from rl_agents.algo.rollout import collect_rollout
from rl_agents.config import TrainConfig

Weights = dict[str, np.ndarray]


def n_actions_of(cfg: TrainConfig) -> int:
    return 3 if cfg.pa3c.action_set == "three" else 2


def build_network(cfg: TrainConfig, in_channels: int) -> PixelDRLNet:
    return PixelDRLNet(in_channels, n_actions_of(cfg), cfg.network.preset, attention=cfg.network.attention, dilation=cfg.network.dilation,
                       init_keep_prob=cfg.network.init_keep_prob, norm=cfg.network.norm, step_features=cfg.network.step_features,
                       head_stride=cfg.network.head_stride, attn_stride=cfg.network.attn_stride)


def updates_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    return max(1, math.ceil(n_train / cfg.optim.batch_size))


def planned_updates(cfg: TrainConfig, n_train: int) -> int:
    """``epochs`` in updates (one update = one rollout of ``batch_size`` images), capped by ``max_updates``."""
    total = cfg.budget.epochs * updates_per_epoch(cfg, n_train)
    return total if cfg.budget.max_updates is None else min(total, cfg.budget.max_updates)


def to_numpy(module: torch.nn.Module) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def cpu_state(obj: Any) -> Any:
    """A state dict with every tensor moved to the CPU (checkpoints and Ray messages never carry CUDA tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


def make_augment(cfg: TrainConfig) -> Augment | None:
    """The training augmentation ``cfg.optim.augment`` asks for (the same for PA3C episodes and U-Net minibatches)."""
    return Augment() if cfg.optim.augment else None


def make_train_env(cfg: TrainConfig, images: np.ndarray, masks: np.ndarray, seed: int) -> PixelSegEnv:
    env = PixelSegEnv(images, masks, batch_size=cfg.optim.batch_size, t_max=cfg.pa3c.t_max, action_set=cfg.pa3c.action_set,
                      transform=make_augment(cfg))
    env.reset(seed=seed)
    return env


def _tensor(x) -> torch.Tensor:
    """A tensor over ``x`` without copying when it can be written to; Ray hands arrays out of its object store
    read-only, and torch warns on every wrap of one, so those are copied (they are copied into the model anyway)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return torch.from_numpy(x.copy())
    return torch.as_tensor(x)


def lr_factor(cfg: TrainConfig, update: int, step: int) -> float:
    """Learning-rate multiplier after ``update`` updates: the paper's x``lr_decay`` every ``step`` updates, times a
    linear warm-up over the first ``lr_warmup_updates`` (ours; none by default)."""
    warm = min(1.0, (update + 1) / cfg.optim.lr_warmup_updates) if cfg.optim.lr_warmup_updates else 1.0
    return warm * cfg.optim.lr_decay ** (update // step)


class PA3CAgent:
    """Network + reward-map kernel + Adam + StepLR, and the count of updates applied (the learner's version).

    Args:
        cfg: the training config (network preset, PA3C coefficients, optimiser settings).
        in_channels: image channels.
        n_train: training slices; the paper's schedule (x``lr_decay`` every ``lr_decay_epochs`` epochs) is counted
            in updates, so it needs the epoch length.
        device: where the network and optimiser live.
        optimizer: False for an agent that only acts and computes gradients (a Ray worker, an evaluator).
        modules: ``(network, reward kernel)`` to use instead of new ones (Hogwild: modules in shared memory).

    ``self.model`` is the network (parameters, checkpoints, weights); ``self.net`` is what the rollout calls: the same
    module, or its ``torch.compile`` wrapper sharing those parameters (``cfg.compute.compile``). Precision and layout follow
    ``cfg.compute.precision`` and ``cfg.compute.channels_last`` (:mod:`rl_agents.algo.accel`).
    """

    kind = "pixeldrl"

    def __init__(self, cfg: TrainConfig, in_channels: int, n_train: int, device: torch.device | str = "cpu",
                 optimizer: bool = True, modules: tuple[torch.nn.Module, torch.nn.Module] | None = None):
        self.cfg = cfg
        self.in_channels = int(in_channels)
        self.n_train = int(n_train)
        self.device = torch.device(device)
        self.accel = Accel.from_config(cfg, self.device)
        if modules is None:
            modules = (build_network(cfg, in_channels), RewardMapConv(cfg.pa3c.reward_kernel))
        self.model, self.net = self.accel.prepare(modules[0])
        self.reward_conv = modules[1].to(self.device)
        self.params = list(self.model.parameters()) + list(self.reward_conv.parameters())
        self.total_updates = planned_updates(cfg, n_train)
        self.update = 0
        self.opt = self.sched = None
        if optimizer:
            self.opt = torch.optim.Adam(self.params, lr=cfg.optim.lr)
            self.lr_step = step = cfg.optim.lr_decay_epochs * updates_per_epoch(cfg, n_train)
            if cfg.optim.lr_warmup_updates:  # StepLR otherwise, so checkpoints of earlier runs keep loading
                self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda u: lr_factor(cfg, u, step))
            else:
                self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=step, gamma=cfg.optim.lr_decay)

    @property
    def n_actions(self) -> int:
        return self.model.n_actions

    # acting and learning -------------------------------------------------------------------------------------
    def entropy_coef(self) -> float:
        """``entropy_coef``, or on a schedule towards ``entropy_coef_final`` by this agent's update count (a Ray
        worker's count is the learner version of its weights)."""
        cfg = self.cfg
        if cfg.pa3c.entropy_coef_final is None:
            return cfg.pa3c.entropy_coef
        frac = min(1.0, self.update / max(self.total_updates, 1))
        return cfg.pa3c.entropy_coef + (cfg.pa3c.entropy_coef_final - cfg.pa3c.entropy_coef) * frac

    def rollout_and_loss(self, env: PixelSegEnv, gen: torch.Generator):
        """One rollout of ``t_max`` steps and its PA3C loss (graph kept, not yet backpropagated)."""
        cfg = self.cfg
        roll = collect_rollout(self.net, env, self.device, gen, with_aux=cfg.pa3c.aux_coef > 0, accel=self.accel,
                               mode=cfg.pa3c.rollout_mode, bootstrap=cfg.pa3c.bootstrap == "value")
        with phase("loss"):
            loss = pa3c_loss(
                roll.log_probs, roll.entropies, roll.values, roll.rewards, roll.bootstrap,
                gamma=cfg.pa3c.gamma, reward_conv=self.reward_conv, value_coef=cfg.pa3c.value_coef,
                entropy_coef=self.entropy_coef(), aux_log_probs=roll.aux_log_probs, aux_coef=cfg.pa3c.aux_coef,
                aux_weights=roll.aux_weights, normalize_advantage=cfg.pa3c.adv_norm,
            )
        return roll, loss

    def compute_gradients(self, env: PixelSegEnv, gen: torch.Generator) -> tuple[list[torch.Tensor], dict]:
        """Run one rollout, backpropagate its loss; returns the gradients (one per parameter) and the update's scalars."""
        roll, loss = self.rollout_and_loss(env, gen)
        for p in self.params:
            p.grad = None
        with phase("backward"):
            loss.total.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        stats = {
            **loss.scalars(),
            "train/return": roll.mean_return(),
            "train/dice": float(np.mean(compute_all(roll.final_state, roll.ground_truth)["dice"])),
            "pixel_agent_steps": roll.pixel_agent_steps,
        }
        return grads, stats

    def apply_gradients(self, grads: list[torch.Tensor | np.ndarray] | None, scale: float = 1.0,
                        at_update: int | None = None) -> dict[str, float]:
        """Clip, one Adam step, one schedule step; ``grads=None`` uses the gradients already in ``.grad``.

        ``scale`` down-weights a stale gradient before clipping (the Ray learner's ``stale_policy: downweight``).
        ``at_update`` steps with the learning rate of that point of the schedule instead of this agent's own count:
        Hogwild processes each hold an optimiser over the shared weights, and the schedule must follow the updates
        of all of them, or n processes would decay (and warm up) n times too slowly.
        Returns ``charts/grad_norm`` (before clipping) and ``charts/lr`` (the rate this step used).
        """
        if self.opt is None:
            raise RuntimeError("this agent was built without an optimiser (optimizer=False)")
        if grads is not None:
            for p, g in zip(self.params, grads):
                g = _tensor(g)
                p.grad = g.to(self.device, dtype=p.dtype).reshape(p.shape)
        if scale != 1.0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)
        with phase("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
            if at_update is not None:
                for group in self.opt.param_groups:
                    group["lr"] = self.cfg.optim.lr * lr_factor(self.cfg, at_update, self.lr_step)
            lr = float(self.opt.param_groups[0]["lr"])
            self.opt.step()
            self.sched.step()
        self.update += 1
        return {"charts/grad_norm": float(grad_norm), "charts/lr": lr}

    # weights between processes -------------------------------------------------------------------------------
    def weights(self) -> list[Weights]:
        """``[network, reward kernel]`` weights as CPU arrays (what travels through Ray's object store)."""
        return [to_numpy(self.model), to_numpy(self.reward_conv)]

    def set_weights(self, weights: list[Weights]) -> None:
        self.model.load_state_dict({k: _tensor(v) for k, v in weights[0].items()})
        if len(weights) > 1:
            self.reward_conv.load_state_dict({k: _tensor(v) for k, v in weights[1].items()})

    # checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that defines the agent, as CPU tensors and plain types (loadable with ``weights_only=True``)."""
        return {
            "kind": self.kind,
            "in_channels": self.in_channels,
            "n_actions": self.n_actions,
            "update": self.update,
            "model": cpu_state(self.model.state_dict()),
            "reward_conv": cpu_state(self.reward_conv.state_dict()),
            "optimizer": cpu_state(self.opt.state_dict()) if self.opt is not None else None,
            "scheduler": dict(self.sched.state_dict()) if self.sched is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        """Restore from :meth:`state_dict`; ``weights_only`` keeps this agent's fresh optimiser (evaluation)."""
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint holds a {state.get('kind')!r} model, not {self.kind!r}")
        if int(state["in_channels"]) != self.in_channels or int(state["n_actions"]) != self.n_actions:
            raise ValueError(f"checkpoint is for {state['in_channels']} input channel(s) and {state['n_actions']} "
                             f"actions; this run has {self.in_channels} and {self.n_actions}")
        load_weights(self.model, state["model"], "the checkpoint")
        self.reward_conv.load_state_dict(state["reward_conv"])
        if weights_only:
            return
        self.update = int(state["update"])
        if self.opt is not None and state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
