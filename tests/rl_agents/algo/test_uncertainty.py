"""The probability of each pixel's final state and its entropy (the uncertainty map), hand-computed on a policy whose
action probabilities are fixed, with and without the early exit, in torch and in the exported graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_agents.algo.inference import GreedySegmenter, binary_entropy, segment_with_steps


class FixedPolicy(torch.nn.Module):
    """Every pixel gets the same action probabilities at every step (a test double of the network)."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.n_actions = len(probs)
        self.logits = torch.log(torch.tensor(probs))

    def forward(self, x: torch.Tensor):
        b, _, h, w = x.shape
        return self.logits.view(1, -1, 1, 1).expand(b, -1, h, w).clone(), torch.zeros(b, 1, h, w)


def _h(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_two_actions_keep_with_probability_0_8_for_three_steps():
    # pi = (set background 0.2, keep 0.8): greedy keeps every pixel; it stays foreground only if kept 3 times
    out = segment_with_steps(FixedPolicy([0.2, 0.8]), np.ones((2, 1, 3, 3), np.float32), 3, early_exit=False)
    assert (out.masks == 1).all()
    np.testing.assert_allclose(out.probability, 0.8 ** 3, rtol=1e-6)
    np.testing.assert_allclose(out.uncertainty, _h(0.512), rtol=1e-5)
    # the first step changes nothing, so the early exit stops there and applies the two repeats: same figures
    fast = segment_with_steps(FixedPolicy([0.2, 0.8]), np.ones((2, 1, 3, 3), np.float32), 3)
    assert (fast.steps == 1).all()
    np.testing.assert_allclose(fast.probability, out.probability, rtol=1e-6)


def test_three_actions_come_back_to_the_foreground():
    # pi = (background 0.1, keep 0.6, foreground 0.3): p1 = 0.9, p2 = 0.9 * 0.9 + 0.1 * 0.3 = 0.84
    out = segment_with_steps(FixedPolicy([0.1, 0.6, 0.3]), np.ones((1, 1, 2, 2), np.float32), 2, early_exit=False)
    np.testing.assert_allclose(out.probability, 0.84, rtol=1e-6)
    g_m, g_u = GreedySegmenter(FixedPolicy([0.1, 0.6, 0.3]), 2, uncertainty=True)(torch.ones(1, 1, 2, 2))
    np.testing.assert_allclose(g_u.numpy(), _h(0.84), rtol=1e-5)


def test_a_background_pixel_that_both_actions_leave_background_is_certain():
    # the paper's two actions from a background start: nothing can bring a pixel back, whatever the policy's
    # entropy (here the maximum, a coin toss): the old map said 1 (most uncertain), the probability says 0
    out = segment_with_steps(FixedPolicy([0.5, 0.5]), np.ones((1, 1, 2, 2), np.float32), 4, start="background")
    assert (out.masks == 0).all() and (out.probability == 0).all() and (out.uncertainty == 0).all()


@pytest.mark.parametrize(("p", "bits"), [(0.0, 0.0), (1.0, 0.0), (0.5, 1.0), (0.11, 0.4999)])
def test_binary_entropy(p: float, bits: float):
    assert binary_entropy(torch.tensor([p])).item() == pytest.approx(bits, abs=1e-4)
