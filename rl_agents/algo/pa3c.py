"""The pixel-level A3C (PA3C) loss as a pure function, with per-pixel n-step returns and the reward-map convolution.

Returns (PixelRL, Furuta et al. 2019; used by the paper):

    R_T = V(s_T)                              (bootstrap from the value of the state after the last step)
    R_t = r_t + gamma * (w * R_{t+1})         (w: a learnable k x k kernel, '*' a 2-D convolution, zero padding)

``w`` starts as the identity (a 1 at the centre), which gives ordinary per-pixel n-step returns; it lets a pixel's
return include its neighbours' future rewards. ``w`` receives gradient only through the value loss, because the
advantage in the policy loss is detached (as in PixelRL).

Loss terms, each averaged over time steps, images and pixels:

    losses/policy  = -mean(log pi(a_t|s_t) * A_t),  A_t = (R_t - V(s_t)) detached
    losses/value   = value_coef * mean((R_t - V(s_t))^2)          (value_coef = 0.5 as PixelRL)
    losses/entropy = -entropy_coef * mean(H(pi(.|s_t)))            (a bonus, so it enters with a minus sign)
    losses/aux     = aux_coef * mean_w(-log pi(a*_t|s_t))           (optional, NOT in the paper: a supervised term
                                                                     towards the oracle action a*, off by default;
                                                                     mean_w weighs fg and bg pixels equally)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rl_agents.algo.phases import phase


class RewardMapConv(nn.Module):
    """The learnable ``k x k`` kernel ``w`` of the reward-map convolution, initialised to the identity."""

    def __init__(self, kernel_size: int = 5):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"reward-map kernel size must be a positive odd number, got {kernel_size}")
        w = torch.zeros(kernel_size, kernel_size)
        w[kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``(B, H, W)`` maps with ``w``; output has the same shape."""
        k = self.weight.shape[-1]
        return F.conv2d(x[:, None], self.weight[None, None], padding=k // 2)[:, 0]


def pixel_returns(
    rewards: torch.Tensor, bootstrap: torch.Tensor, gamma: float, reward_conv: nn.Module | None = None
) -> torch.Tensor:
    """Per-pixel discounted returns with the reward-map convolution.

    Args:
        rewards: ``(T, B, H, W)`` per-pixel rewards r_0 .. r_{T-1}.
        bootstrap: ``(B, H, W)`` value of the final state (detached by the caller if it should not be trained).
        gamma: discount.
        reward_conv: the kernel ``w`` (None: identity, i.e. plain per-pixel returns).

    Returns:
        ``(T, B, H, W)`` returns R_0 .. R_{T-1}; differentiable in ``w``.
    """
    if rewards.dim() != 4 or bootstrap.shape != rewards.shape[1:]:
        raise ValueError(
            f"rewards must be (T, B, H, W) and bootstrap (B, H, W); got {tuple(rewards.shape)} and "
            f"{tuple(bootstrap.shape)}"
        )
    out = []
    R = bootstrap
    with phase("returns"):
        for t in range(rewards.shape[0] - 1, -1, -1):
            R = rewards[t] + gamma * (reward_conv(R) if reward_conv is not None else R)
            out.append(R)
        return torch.stack(out[::-1])


@dataclass
class PA3CLoss:
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    aux: torch.Tensor
    advantage_mean: torch.Tensor
    returns_mean: torch.Tensor

    def scalars(self) -> dict[str, float]:
        return {
            "losses/total": float(self.total.detach()),
            "losses/policy": float(self.policy.detach()),
            "losses/value": float(self.value.detach()),
            "losses/entropy": float(self.entropy.detach()),
            "losses/aux": float(self.aux.detach()),
            "charts/advantage_mean": float(self.advantage_mean),
            "charts/returns_mean": float(self.returns_mean),
        }


def pa3c_loss(
    log_probs: torch.Tensor,
    entropies: torch.Tensor,
    values: torch.Tensor,
    rewards: torch.Tensor,
    bootstrap: torch.Tensor,
    *,
    gamma: float = 0.95,
    reward_conv: nn.Module | None = None,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    aux_log_probs: torch.Tensor | None = None,
    aux_coef: float = 0.0,
    aux_weights: torch.Tensor | None = None,
    normalize_advantage: bool = False,
) -> PA3CLoss:
    """PA3C loss over a rollout (see the module docstring for the terms).

    Args:
        log_probs: ``(T, B, H, W)`` log pi(a_t|s_t) of the actions taken.
        entropies: ``(T, B, H, W)`` policy entropy per pixel.
        values: ``(T, B, H, W)`` V(s_t).
        rewards: ``(T, B, H, W)``.
        bootstrap: ``(B, H, W)`` V(s_T); detached here.
        aux_log_probs: ``(T, B, H, W)`` log pi(a*_t|s_t) of the oracle actions, for the optional supervised term.
        aux_weights: per-pixel weights broadcastable to ``(T, B, H, W)`` (see :func:`class_balanced_weights`); the
            aux term is their weighted mean. ``None``: a plain mean.
        normalize_advantage: NOT in the paper: scale the policy term's advantages to mean 0, std 1 over the rollout
            (most pixels' advantages are ~0 once they are right; a few wrong pixels otherwise dominate the scale).
    """
    shape = rewards.shape
    for name, t in (("log_probs", log_probs), ("entropies", entropies), ("values", values)):
        if t.shape != shape:
            raise ValueError(f"{name} must match rewards {tuple(shape)}, got {tuple(t.shape)}")
    returns = pixel_returns(rewards, bootstrap.detach(), gamma, reward_conv)
    delta = returns - values
    advantage = delta.detach()
    if normalize_advantage:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    policy = -(log_probs * advantage).mean()
    value = value_coef * delta.pow(2).mean()
    entropy = -entropy_coef * entropies.mean()
    aux = _aux_term(aux_log_probs, aux_coef, aux_weights, shape) if aux_coef > 0 else torch.zeros(
        (), device=rewards.device)
    return PA3CLoss(
        total=policy + value + entropy + aux,
        policy=policy,
        value=value,
        entropy=entropy,
        aux=aux,
        advantage_mean=advantage.mean(),
        returns_mean=returns.detach().mean(),
    )


def _aux_term(aux_log_probs: torch.Tensor | None, aux_coef: float, aux_weights: torch.Tensor | None,
              shape: torch.Size) -> torch.Tensor:
    """The optional supervised term: ``aux_coef`` x the (weighted) mean negative log-probability of the oracle actions."""
    if aux_log_probs is None:
        raise ValueError("aux_coef > 0 needs aux_log_probs (log-probabilities of the oracle actions)")
    if aux_weights is None:
        return aux_coef * (-aux_log_probs).mean()
    w = torch.broadcast_to(aux_weights, shape)
    return aux_coef * (-(aux_log_probs * w)).sum() / w.sum().clamp_min(1e-12)


def class_balanced_weights(ground_truth: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights giving foreground and background half the total weight each, per image.

    Why: a tumour covers ~1-5 % of an LGG slice, so a plain mean of the supervised term is won by predicting
    "background" everywhere (measured: an empty mask after 450 updates). Balanced, both classes count equally.

    Args:
        ground_truth: ``(B, H, W)`` {0, 1}.
    Returns:
        ``(B, H, W)`` float32 with mean 1 per image; an image with one class only gets all ones.
    """
    gt = ground_truth.float()
    frac = gt.mean(dim=(-2, -1), keepdim=True)
    both = (frac > 0) & (frac < 1)
    w = torch.where(gt > 0, 0.5 / frac.clamp_min(1e-12), 0.5 / (1 - frac).clamp_min(1e-12))
    return torch.where(both, w, torch.ones_like(w))
