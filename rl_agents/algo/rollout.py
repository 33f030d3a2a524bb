"""Collecting a PA3C rollout: t_max steps of every pixel agent through the environment.

Kept apart from the update (as Stable-Baselines3 keeps ``collect_rollouts`` apart from ``train``): this module only
acts and records; :mod:`rl_agents.algo.pa3c` turns the record into a loss. Two ways to get the per-step
log-probabilities, entropies and values the loss needs, the same mathematics (``rollout_mode`` in the config):

* ``online``: every step's forward pass keeps its autograd graph, and the update backpropagates through all of them.
* ``recompute``: the steps run without autograd (and without the value head, which acting does not need); the
  stored observations are then passed through the network once more as one batch of ``T x B`` images, with the
  graph (the A2C/PPO layout). The actions are the same draws from the same logits, so the gradients equal
  ``online``'s up to float rounding (tested). It spends one extra policy forward per step to run the differentiable
  pass as one large batch, which pays where kernels want large batches (GPUs) and not where they do not.

Both go through the network's episode interface (:func:`rl_agents.algo.inference.encode` once, then ``step`` per
mask), so ``step_features: once`` (the trunk encodes the image once per episode) needs no rollout of its own. The
bootstrap value V(s_T) is computed only when the loss uses it (``bootstrap: value``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pixelrl_env.env import PixelSegEnv
from pixelrl_env.policies import oracle_actions

from rl_agents.algo.accel import Accel, as_float32
from rl_agents.algo.inference import encode, step, step_policy
from rl_agents.algo.pa3c import class_balanced_weights
from rl_agents.algo.phases import phase

ROLLOUT_MODES = ("online", "recompute")


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None):
    """Sample one action per pixel from ``(B, A, H, W)`` logits by inverse CDF (seedable, unlike Categorical).

    Returns actions ``(B, H, W)`` int64, their log-probabilities and the per-pixel entropy, both ``(B, H, W)``.
    """
    logp = F.log_softmax(logits, dim=1)
    actions = draw(logp.detach().exp(), generator)
    return actions, logp.gather(1, actions[:, None])[:, 0], -(logp.exp() * logp).sum(dim=1)


def draw(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Actions ``(B, H, W)`` drawn from probabilities ``(B, A, H, W)``: one uniform number per pixel against the CDF."""
    b, a, h, w = p.shape
    u = torch.rand((b, 1, h, w), generator=generator, device=p.device)
    return (u > p.cumsum(dim=1)[:, :-1]).sum(dim=1).clamp_(max=a - 1)


@dataclass
class Rollout:
    """One rollout of ``T`` steps over ``B`` images; per-pixel tensors are ``(T, B, H, W)``."""

    log_probs: torch.Tensor
    entropies: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    bootstrap: torch.Tensor  # (B, H, W) V(s_T), no graph; zeros when not asked for
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
    mode: str = "online",
    bootstrap: bool = True,
) -> Rollout:
    """Reset ``env`` (batched) and run ``env.t_max`` sampled steps with ``model``.

    ``accel`` (default: plain float32 on ``device``) sets precision, layout and copies; under bf16 autocast only the
    network runs in bfloat16: sampling, log-probabilities and the loss's inputs are float32. ``mode`` is ``online``
    or ``recompute`` (see the module docstring); ``bootstrap=False`` skips V(s_T) (the ``terminal`` return).
    """
    if env.batch_size is None:
        raise ValueError("collect_rollout needs a batched PixelSegEnv (batch_size=B)")
    if mode not in ROLLOUT_MODES:
        raise ValueError(f"rollout mode must be one of {ROLLOUT_MODES}, got {mode!r}")
    accel = accel or Accel(device)
    run = _online if mode == "online" else _recompute
    return run(model, env, generator, with_aux, accel, bootstrap)


def _oracle(env: PixelSegEnv, accel: Accel) -> torch.Tensor:
    return accel.to_device(oracle_actions(env.state, env.ground_truth, env.n_actions))


def _env_step(env: PixelSegEnv, actions: torch.Tensor, accel: Accel) -> torch.Tensor:
    """Step the environment; returns the reward map on the device. The observation (image x mask) is not read:
    the network gets the images once per episode and the mask at each step (:func:`inference.step`)."""
    with phase("env_step"):
        _, _, _, _, info = env.step(actions.cpu().numpy())
        return accel.to_device(info["reward_map"])


def _finish(env, accel, with_aux, logps, ents, vals, rews, aux, bootstrap) -> Rollout:
    return Rollout(
        log_probs=logps, entropies=ents, values=vals, rewards=rews, bootstrap=bootstrap,
        aux_log_probs=aux if with_aux else None,
        aux_weights=class_balanced_weights(accel.to_device(env.ground_truth)) if with_aux else None,
        final_state=env.state.copy(), ground_truth=env.ground_truth.copy(),
    )


def _online(model, env, generator, with_aux, accel, bootstrap) -> Rollout:
    env.reset()
    with phase("encode"), accel.autocast():
        context = encode(model, accel.to_device(env.current_images, image=True))
    logps, ents, vals, rews, aux = [], [], [], [], []
    for _ in range(env.t_max):
        with phase("forward"), accel.autocast():
            logits, value = step(model, context, _state(env, accel))
        logits, value = as_float32(logits, value)
        with phase("sample"):
            actions, logp, ent = sample_actions(logits, generator)
            if with_aux:
                aux.append(F.log_softmax(logits, dim=1).gather(1, _oracle(env, accel)[:, None])[:, 0])
        reward = _env_step(env, actions, accel)
        logps.append(logp)
        ents.append(ent)
        vals.append(value)
        rews.append(reward)
    if bootstrap:
        with phase("bootstrap"), torch.no_grad(), accel.autocast():
            boot = step(model, context.detach(), _state(env, accel))[1].float()
    else:
        boot = torch.zeros_like(vals[0]).detach()
    return _finish(env, accel, with_aux, torch.stack(logps), torch.stack(ents), torch.stack(vals),
                   torch.stack(rews), torch.stack(aux) if with_aux else None, boot)


def _state(env: PixelSegEnv, accel: Accel) -> torch.Tensor:
    return accel.to_device(env.state.view(bool))


def _recompute(model, env, generator, with_aux, accel, bootstrap) -> Rollout:
    env.reset()
    images = accel.to_device(env.current_images, image=True)
    with phase("encode"), torch.no_grad(), accel.autocast():
        context = encode(model, images)
    states, acts, stars, rews = [], [], [], []
    for _ in range(env.t_max):
        s = _state(env, accel)
        with phase("forward"), torch.no_grad(), accel.autocast():
            logits = step_policy(model, context, s).float()
        with phase("sample"):
            actions = draw(F.log_softmax(logits, dim=1).exp(), generator)
            if with_aux:
                stars.append(_oracle(env, accel))
        rews.append(_env_step(env, actions, accel))
        states.append(s)
        acts.append(actions)
    if bootstrap:
        states.append(_state(env, accel))
    t, b = env.t_max, env.batch_size
    with phase("recompute"):
        with accel.autocast():
            context = encode(model, images)  # with its graph this time
            logits, values = step(model, context.repeat(len(states), 1, 1, 1), torch.cat(states))
        logits, values = as_float32(logits, values)
        logp = F.log_softmax(logits[: t * b], dim=1)
        ent = -(logp.exp() * logp).sum(dim=1)
        actions = torch.cat(acts)
        taken = logp.gather(1, actions[:, None])[:, 0]
        aux = logp.gather(1, torch.cat(stars)[:, None])[:, 0] if with_aux else None
    shape = (t, b) + tuple(actions.shape[1:])
    boot = values[t * b:].detach() if bootstrap else torch.zeros(shape[1:], device=values.device)
    return _finish(env, accel, with_aux, taken.reshape(shape), ent.reshape(shape), values[: t * b].reshape(shape),
                   torch.stack(rews), aux.reshape(shape) if with_aux else None, boot)
