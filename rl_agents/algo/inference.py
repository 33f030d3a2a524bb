"""Greedy iterative mask generation and the per-pixel uncertainty map."""

from __future__ import annotations

import math

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


@torch.no_grad()
def segment(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    t_max: int,
    *,
    start: str = "foreground",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Run the greedy policy for ``t_max`` steps from the start mask; the final state is the segmentation.

    Args:
        images: ``(N, C, H, W)`` float32, prepared as in training.

    Returns:
        masks ``(N, H, W)`` uint8 and uncertainty ``(N, H, W)`` float32 in [0, 1]: the policy entropy averaged over the
        steps, divided by log(n_actions), so 0 means every step was certain and 1 means a coin toss each time.
    """
    model.eval()
    n_actions = model.n_actions
    masks, uncert = [], []
    images_t = torch.as_tensor(images)
    for i in range(0, len(images_t), batch_size):
        x = images_t[i : i + batch_size].to(device)
        state = torch.full((x.shape[0], x.shape[2], x.shape[3]), start == "foreground", dtype=torch.bool,
                           device=device)
        ent = torch.zeros(state.shape, device=device)
        for _ in range(t_max):
            logits, _ = model(x * state[:, None])
            logp = F.log_softmax(logits, dim=1)
            ent += -(logp.exp() * logp).sum(dim=1)
            state = apply_actions(state, logits.argmax(dim=1), n_actions)
        masks.append(state.to(torch.uint8).cpu().numpy())
        uncert.append((ent / (t_max * math.log(n_actions))).clamp_(0, 1).cpu().numpy())
    model.train()
    return np.concatenate(masks), np.concatenate(uncert).astype(np.float32)


class GreedySegmenter(torch.nn.Module):
    """The whole greedy ``t_max``-step segmentation as one module: images ``(B, C, H, W)`` -> masks ``(B, H, W)``
    float32 in {0, 1}. What ``mlflow.pytorch.log_model`` stores, so a loaded model segments in one call."""

    def __init__(self, net: torch.nn.Module, t_max: int):
        super().__init__()
        self.net = net
        self.t_max = t_max

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        state = torch.ones((images.shape[0], images.shape[2], images.shape[3]), dtype=torch.bool,
                           device=images.device)
        for _ in range(self.t_max):
            logits, _ = self.net(images * state[:, None])
            state = apply_actions(state, logits.argmax(dim=1), self.net.n_actions)
        return state.float()
