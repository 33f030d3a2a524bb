"""The batched recompute (``rollout_mode: recompute``) is the same mathematics as the online rollout: the same
actions, the same loss and the same gradients on a fixed seed, for every loss term that depends on the rollout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.algo.phases import PhaseTimer
from rl_agents.config import TrainConfig

SIZE, B = 32, 3


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((6, 2, SIZE, SIZE), dtype=np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.stack([((yy - 8 - i) ** 2 + (xx - 12) ** 2 < 40 + 10 * i) for i in range(6)]).astype(np.uint8)
    return images, masks


def _gradients(mode: str, **overrides):
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=B, t_max=4, rollout_mode=mode, init_keep_prob=0.7, **overrides)
    images, masks = _data()
    agent = PA3CAgent(cfg, in_channels=2, n_train=len(images))
    env = make_train_env(cfg, images, masks, seed=3)
    roll, loss = agent.rollout_and_loss(env, torch.Generator().manual_seed(5))
    for p in agent.params:
        p.grad = None
    loss.total.backward()
    return roll, loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in agent.params]


@pytest.mark.parametrize("overrides", [
    {},  # the paper's loss: terminal return, two actions
    {"bootstrap": "value", "action_set": "three", "aux_coef": 0.5, "adv_norm": True},  # every term that can differ
    {"step_features": "once", "bootstrap": "value", "action_set": "three"},  # the trunk encodes once per episode
])
def test_recompute_gives_the_online_gradients(overrides):
    roll_a, loss_a, grads_a = _gradients("online", **overrides)
    roll_b, loss_b, grads_b = _gradients("recompute", **overrides)
    np.testing.assert_array_equal(roll_a.final_state, roll_b.final_state)  # the same actions were drawn
    torch.testing.assert_close(roll_b.rewards, roll_a.rewards)
    torch.testing.assert_close(roll_b.log_probs, roll_a.log_probs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(roll_b.values, roll_a.values.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(roll_b.bootstrap, roll_a.bootstrap, rtol=1e-5, atol=1e-6)
    for term in ("total", "policy", "value", "entropy", "aux"):
        torch.testing.assert_close(getattr(loss_b, term), getattr(loss_a, term), rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads_a)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_terminal_return_skips_the_bootstrap_forward():
    with PhaseTimer() as timer:
        _gradients("online")
    assert timer.calls["forward"] == 4 and "bootstrap" not in timer.calls
    with PhaseTimer() as timer:
        _gradients("online", bootstrap="value")
    assert timer.calls["bootstrap"] == 1


def test_phase_timer_times_nested_phases_once():
    with PhaseTimer() as timer:
        _gradients("recompute")
    assert timer.calls["forward"] == 4 and timer.calls["recompute"] == 1 and timer.calls["returns"] == 1
    # the returns run inside the loss: their time is in the loss's total, not in its own share
    assert timer.total["loss"] >= timer.own["loss"] + timer.own["returns"] - 1e-9
    assert timer.own["loss"] >= 0
    with pytest.raises(RuntimeError, match="already active"), PhaseTimer(), PhaseTimer():
        pass


def test_an_unknown_rollout_mode_is_refused():
    from rl_agents.config import validate

    with pytest.raises(ValueError, match="rollout_mode must be one of"):
        validate(TrainConfig(rollout_mode="batched"))
