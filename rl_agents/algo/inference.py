"""Greedy iterative mask generation and the per-pixel uncertainty map."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

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
        masks ``(N, H, W)`` uint8 and uncertainty ``(N, H, W)`` float32 in [0, 1]: the policy entropy averaged over the
        steps, divided by log(n_actions), so 0 means every step was certain and 1 means a coin toss each time.
    """
    out = segment_with_steps(model, images, t_max, start=start, batch_size=batch_size, device=device,
                             early_exit=early_exit)
    return out.masks, out.uncertainty


class Segmentation(NamedTuple):
    """What :func:`segment_with_steps` gives: ``masks`` ``(N, H, W)`` uint8, ``uncertainty`` ``(N, H, W)`` float32,
    ``steps`` ``(N,)`` the network calls each image needed, and with ``keep_states`` the mask at the start and after
    every step, ``(N, t_max + 1, H, W)`` uint8 (an image that stopped early repeats its last mask)."""

    masks: np.ndarray
    uncertainty: np.ndarray
    steps: np.ndarray
    states: np.ndarray | None = None


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
    masks, uncert, steps, states = (list(x) for x in zip(*parts)) if parts else ([], [], [], [])
    return Segmentation(np.concatenate(masks), np.concatenate(uncert).astype(np.float32), np.concatenate(steps),
                        np.concatenate(states) if keep_states else None)


def _segment_batch(model: torch.nn.Module, x: torch.Tensor, t_max: int, start: str, early_exit: bool,
                   keep_states: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    n, n_actions, device = x.shape[0], model.n_actions, x.device
    state = torch.full((n, x.shape[2], x.shape[3]), start == "foreground", dtype=torch.bool, device=device)
    ent = torch.zeros(state.shape, device=device)
    used = torch.full((n,), t_max, dtype=torch.int64)
    live = torch.arange(n, device=device)  # images still changing
    frames = [state.clone()] if keep_states else []
    context = encode(model, x)
    for t in range(t_max):
        s = state[live]
        logits = step_policy(model, context[live], s).float()
        logp = F.log_softmax(logits, dim=1)
        step_ent = -(logp.exp() * logp).sum(dim=1)
        new = apply_actions(s, greedy_actions(logits), n_actions)
        state[live] = new
        if not early_exit or t == t_max - 1:
            ent[live] += step_ent
        else:
            still = (new != s).flatten(1).any(dim=1)
            done = live[~still]
            ent[live[still]] += step_ent[still]
            ent[done] += (t_max - t) * step_ent[~still]  # this step and every repeat of it
            used[done.cpu()] = t + 1
            live = live[still]
        frames += [state.clone()] * (1 if len(live) or t == t_max - 1 else t_max - t) if keep_states else []
        if len(live) == 0:
            break
    states = torch.stack(frames, 1).to(torch.uint8).cpu().numpy() if keep_states else None
    return (state.to(torch.uint8).cpu().numpy(), (ent / (t_max * math.log(n_actions))).clamp_(0, 1).cpu().numpy(),
            used.numpy(), states)


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
        ent = torch.zeros_like(images[:, 0])
        context = encode(self.net, images)
        for _ in range(self.t_max):
            logits = step_policy(self.net, context, state)
            if self.uncertainty:
                logp = F.log_softmax(logits, dim=1)
                ent = ent - (logp.exp() * logp).sum(dim=1)
            state = apply_actions(state, greedy_actions(logits), self.net.n_actions)
        if not self.uncertainty:
            return state.float()
        return state.float(), (ent / (self.t_max * math.log(self.net.n_actions))).clamp(0, 1)


class UNetSegmenter(torch.nn.Module):
    """The U-Net with :func:`rl_agents.experiment.evaluate.predict`'s post-processing, for export: images
    ``(B, C, H, W)`` -> masks ``(B, H, W)`` float32 in {0, 1} (probability >= 0.5) and, with ``uncertainty=True``,
    ``1 - |2p - 1|``."""

    def __init__(self, net: torch.nn.Module, uncertainty: bool = False):
        super().__init__()
        self.net = net
        self.uncertainty = uncertainty

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        prob = torch.sigmoid(self.net(images)[:, 0])
        mask = (prob >= 0.5).float()
        return (mask, 1 - (2 * prob - 1).abs()) if self.uncertainty else mask
