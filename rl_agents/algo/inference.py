"""Greedy iterative mask generation, the probability of each pixel's final state, and the uncertainty map.

The mask is the greedy policy's final state. Its probability: each pixel's state is a two-state Markov chain under the
policy's per-step action probabilities (0 sets background, 1 keeps, 2 sets foreground), propagated along the greedy
trajectory (every other pixel follows the greedy mask, the mean-field view):
``p' = p (1 - pi_background) + (1 - p) pi_foreground``. The uncertainty map is that probability's binary entropy in
bits, 0..1. Unlike the policy's own entropy, it is low where the outcome is settled whatever the actions say: a
background pixel that both actions leave background (the paper's two actions) is certain, however evenly the policy
spreads over them there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from pixelrl_env.env import KEEP, SET_FOREGROUND


def apply_actions(state: torch.Tensor, actions: torch.Tensor, n_actions: int) -> torch.Tensor:
    """The environment's transition in torch: 0 sets background, 1 keeps, 2 (three-action set) sets foreground."""
    new = state & (actions == KEEP)
    if n_actions == 3:
        new |= actions == SET_FOREGROUND
    return new


def greedy_actions(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)``; with two actions a comparison instead (ties to action 0, as argmax): argmax over a
    2-long dimension was a quarter of a greedy segmentation's time on a CPU (``benchmarks/latency.py``)."""
    if logits.shape[1] == 2:
        return (logits[:, 1] > logits[:, 0]).to(torch.int64)
    return logits.argmax(dim=1)


def policy_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Policy logits ``(B, n_actions, H, W)``, without the value head where the network can skip it."""
    policy = getattr(model, "policy", None)
    return policy(x) if policy is not None else model(x)[0]


# An episode as encode-then-steps (:meth:`rl_agents.algo.model.PixelDRLNet.encode`). ``net`` may be a
# ``torch.compile`` wrapper: under ``step_features="every"`` a step calls it on ``image * mask``, so the compiled
# forward runs; a network without ``encode`` (a test double, a wrapper) is treated as ``every``.
def _once(net: torch.nn.Module) -> torch.nn.Module | None:
    model = getattr(net, "_orig_mod", net)
    return model if getattr(model, "step_features", "every") == "once" else None


def encode(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the steps of an episode share: the images, or under ``step_features="once"`` their features."""
    model = _once(net)
    return images if model is None else model.encode(images)


def step(net: torch.nn.Module, context: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and values of one step from :func:`encode`'s context and the masks ``(B, H, W)``."""
    model = _once(net)
    return net(context * state[:, None]) if model is None else model.step(context, state)


def step_policy(net: torch.nn.Module, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """:func:`step`'s logits only."""
    model = _once(net)
    return policy_logits(net, context * state[:, None]) if model is None else model.step_policy(context, state)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a Bernoulli ``p``, elementwise (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = p.clamp(0, 1)
    return (-(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / math.log(2)).clamp_(0, 1)


def propagate(p: torch.Tensor, logits: torch.Tensor, n_actions: int, steps: int | torch.Tensor = 1) -> torch.Tensor:
    """The probability of foreground after ``steps`` steps with these action ``logits`` ``(B, A, H, W)``, from ``p``
    ``(B, H, W)``: ``p' = p (1 - pi_0) + (1 - p) pi_2`` (``pi_2 = 0`` with two actions), applied ``steps`` times
    (per image when a tensor ``(B,)``: an image whose input no longer changes repeats its last step)."""
    probs = torch.softmax(logits.float(), dim=1)
    stay, arrive = 1 - probs[:, 0], (probs[:, 2] if n_actions == 3 else torch.zeros_like(p))
    k = torch.as_tensor(steps, device=p.device).reshape(-1, 1, 1).expand_as(p) if torch.is_tensor(steps) else None
    for i in range(int(k.max()) if k is not None else steps):
        nxt = p * stay + (1 - p) * arrive
        p = nxt if k is None else torch.where(k > i, nxt, p)
    return p


@torch.inference_mode()
def segment(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    t_max: int,
    *,
    start: str = "foreground",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    early_exit: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the greedy policy for ``t_max`` steps from the start mask; the final state is the segmentation.

    Args:
        images: ``(N, C, H, W)`` float32, prepared as in training.
        early_exit: stop an image once a step changes none of its pixels. The step's input (image x mask) is then
            the same as the previous step's, so every later step would repeat it: masks and uncertainty are
            exactly those of all ``t_max`` steps (the last step's entropy counts for each step skipped), at the
            cost of the steps actually needed. ``False`` runs every step (what an exported graph does).

    Returns:
        masks ``(N, H, W)`` uint8 and uncertainty ``(N, H, W)`` float32 in [0, 1]: the binary entropy (bits) of each
        pixel's probability of ending foreground (module docstring); :func:`segment_with_steps` gives the probability.
    """
    out = segment_with_steps(model, images, t_max, start=start, batch_size=batch_size, device=device,
                             early_exit=early_exit)
    return out.masks, out.uncertainty


class Segmentation(NamedTuple):
    """What :func:`segment_with_steps` gives: ``masks`` ``(N, H, W)`` uint8, ``uncertainty`` ``(N, H, W)`` float32,
    ``steps`` ``(N,)`` the network calls each image needed, with ``keep_states`` the mask at the start and after
    every step, ``(N, t_max + 1, H, W)`` uint8 (an image that stopped early repeats its last mask), and
    ``probability`` ``(N, H, W)`` float32, each pixel's probability of ending foreground."""

    masks: np.ndarray
    uncertainty: np.ndarray
    steps: np.ndarray
    states: np.ndarray | None = None
    probability: np.ndarray | None = None


@torch.inference_mode()
def segment_with_steps(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    t_max: int,
    *,
    start: str = "foreground",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    early_exit: bool = True,
    keep_states: bool = False,
) -> Segmentation:
    """:func:`segment`, plus the number of network calls each image needed and, with ``keep_states``, every step's
    mask (the frames of ``pixeldrl predict --gif``)."""
    was_training = model.training
    model.eval()
    images_t = torch.as_tensor(images)
    parts = [_segment_batch(model, images_t[i : i + batch_size].to(device), t_max, start, early_exit, keep_states)
             for i in range(0, len(images_t), batch_size)]
    model.train(was_training)
    masks, prob, steps, states = (list(x) for x in zip(*parts)) if parts else ([], [], [], [])
    prob_t = torch.as_tensor(np.concatenate(prob)).float()
    return Segmentation(np.concatenate(masks), binary_entropy(prob_t).numpy(), np.concatenate(steps),
                        np.concatenate(states) if keep_states else None, prob_t.numpy())


def _segment_batch(model: torch.nn.Module, x: torch.Tensor, t_max: int, start: str, early_exit: bool,
                   keep_states: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    n, n_actions, device = x.shape[0], model.n_actions, x.device
    state = torch.full((n, x.shape[2], x.shape[3]), start == "foreground", dtype=torch.bool, device=device)
    prob = state.float()
    used = torch.full((n,), t_max, dtype=torch.int64)
    live = torch.arange(n, device=device)  # images still changing
    frames = [state.clone()] if keep_states else []
    context = encode(model, x)
    for t in range(t_max):
        s = state[live]
        logits = step_policy(model, context[live], s).float()
        new = apply_actions(s, greedy_actions(logits), n_actions)
        state[live] = new
        if not early_exit or t == t_max - 1:
            prob[live] = propagate(prob[live], logits, n_actions)
        else:
            still = (new != s).flatten(1).any(dim=1)
            # an image whose step changed nothing sees the same input at every later step: this step and each
            # repeat of it, applied now
            prob[live] = propagate(prob[live], logits, n_actions, torch.where(still, 1, t_max - t))
            used[live[~still].cpu()] = t + 1
            live = live[still]
        frames += [state.clone()] * (1 if len(live) or t == t_max - 1 else t_max - t) if keep_states else []
        if len(live) == 0:
            break
    states = torch.stack(frames, 1).to(torch.uint8).cpu().numpy() if keep_states else None
    return state.to(torch.uint8).cpu().numpy(), prob.clamp_(0, 1).cpu().numpy(), used.numpy(), states


class GreedySegmenter(torch.nn.Module):
    """The whole greedy ``t_max``-step segmentation as one module: images ``(B, C, H, W)`` -> masks ``(B, H, W)``
    float32 in {0, 1} (and, with ``uncertainty=True``, the uncertainty map of :func:`segment` as a second output).
    What ``mlflow.pytorch.log_model`` stores and ``pixeldrl export`` writes: every step runs (a fixed graph, traceable
    with a dynamic batch), so it does not exit early as :func:`segment` does."""

    def __init__(self, net: torch.nn.Module, t_max: int, uncertainty: bool = False):
        super().__init__()
        self.net = net
        self.t_max = t_max
        self.uncertainty = uncertainty

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        state = torch.ones_like(images[:, 0], dtype=torch.bool)
        prob = torch.ones_like(images[:, 0])
        context = encode(self.net, images)
        for _ in range(self.t_max):
            logits = step_policy(self.net, context, state)
            if self.uncertainty:
                prob = propagate(prob, logits, self.net.n_actions)
            state = apply_actions(state, greedy_actions(logits), self.net.n_actions)
        if not self.uncertainty:
            return state.float()
        return state.float(), binary_entropy(prob)


class UNetSegmenter(torch.nn.Module):
    """The U-Net with :func:`rl_agents.experiment.evaluate.predict`'s post-processing, for export: images
    ``(B, C, H, W)`` -> masks ``(B, H, W)`` float32 in {0, 1} (probability >= 0.5) and, with ``uncertainty=True``,
    the probability's binary entropy (bits), as for PixelDRL-MG."""

    def __init__(self, net: torch.nn.Module, uncertainty: bool = False):
        super().__init__()
        self.net = net
        self.uncertainty = uncertainty

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        prob = torch.sigmoid(self.net(images)[:, 0])
        mask = (prob >= 0.5).float()
        return (mask, binary_entropy(prob)) if self.uncertainty else mask
