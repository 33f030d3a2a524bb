"""Collecting a PA3C rollout: t_max steps of every pixel agent through the environment.

Kept apart from the update (as Stable-Baselines3 keeps ``collect_rollouts`` apart from ``train``): this module only
acts and records; :mod:`rl_agents.algo.pa3c` turns the record into a loss. The record keeps the autograd graph of the
per-step log-probabilities and values, so the update needs no second forward pass (a third of the compute on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pixelrl_env.env import PixelSegEnv
from pixelrl_env.policies import oracle_actions

from rl_agents.algo.accel import Accel, as_float32
from rl_agents.algo.pa3c import class_balanced_weights


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None):
    """Sample one action per pixel from ``(B, A, H, W)`` logits by inverse CDF (seedable, unlike Categorical).

    Returns actions ``(B, H, W)`` int64, their log-probabilities and the per-pixel entropy, both ``(B, H, W)``.
    """
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    b, a, h, w = logits.shape
    u = torch.rand((b, 1, h, w), generator=generator, device=logits.device)
    cdf = p.detach().cumsum(dim=1)
    actions = (u > cdf[:, :-1]).sum(dim=1).clamp_(max=a - 1)
    log_prob = logp.gather(1, actions[:, None])[:, 0]
    entropy = -(p * logp).sum(dim=1)
    return actions, log_prob, entropy


@dataclass
class Rollout:
    """One rollout of ``T`` steps over ``B`` images; per-pixel tensors are ``(T, B, H, W)``."""

    log_probs: torch.Tensor
    entropies: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    bootstrap: torch.Tensor  # (B, H, W) V(s_T), no graph
    aux_log_probs: torch.Tensor | None  # log pi(a*|s) of oracle actions, when asked for
    aux_weights: torch.Tensor | None  # (B, H, W) class-balanced weights for the aux term, when asked for
    final_state: np.ndarray  # (B, H, W) uint8
    ground_truth: np.ndarray  # (B, H, W) uint8

    @property
    def pixel_agent_steps(self) -> int:
        return int(self.rewards.numel())

    def mean_return(self) -> float:
        """Mean over images of the summed per-pixel rewards (the number of pixels the episode fixed, net)."""
        return float(self.rewards.sum(dim=(0, 2, 3)).mean())


def collect_rollout(
    model: torch.nn.Module,
    env: PixelSegEnv,
    device: torch.device,
    generator: torch.Generator | None = None,
    with_aux: bool = False,
    accel: Accel | None = None,
) -> Rollout:
    """Reset ``env`` (batched) and run ``env.t_max`` sampled steps with ``model``.

    ``accel`` (default: plain float32 on ``device``) sets precision, layout and copies; under bf16 autocast only the
    network runs in bfloat16: sampling, log-probabilities and the loss's inputs are float32.
    """
    if env.batch_size is None:
        raise ValueError("collect_rollout needs a batched PixelSegEnv (batch_size=B)")
    accel = accel or Accel(device)
    obs, _ = env.reset()
    logps, ents, vals, rews, aux = [], [], [], [], []
    for _ in range(env.t_max):
        x = accel.to_device(obs, image=True)
        with accel.autocast():
            logits, value = model(x)
        logits, value = as_float32(logits, value)
        actions, logp, ent = sample_actions(logits, generator)
        if with_aux:
            star = oracle_actions(env.state, env.ground_truth, env.n_actions)
            star_t = accel.to_device(star)
            aux.append(F.log_softmax(logits, dim=1).gather(1, star_t[:, None])[:, 0])
        obs, _, _, _, info = env.step(actions.cpu().numpy())
        logps.append(logp)
        ents.append(ent)
        vals.append(value)
        rews.append(accel.to_device(info["reward_map"]))
    with torch.no_grad(), accel.autocast():
        _, bootstrap = model(accel.to_device(obs, image=True))
    bootstrap = bootstrap.float()
    return Rollout(
        log_probs=torch.stack(logps),
        entropies=torch.stack(ents),
        values=torch.stack(vals),
        rewards=torch.stack(rews),
        bootstrap=bootstrap,
        aux_log_probs=torch.stack(aux) if with_aux else None,
        aux_weights=class_balanced_weights(accel.to_device(env.ground_truth)) if with_aux else None,
        final_state=env.state.copy(),
        ground_truth=env.ground_truth.copy(),
    )
