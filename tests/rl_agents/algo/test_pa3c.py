from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelrl_env.env import PixelSegEnv
from rl_agents.algo.inference import apply_actions, segment
from rl_agents.algo.model import PRESETS, PixelDRLNet, count_parameters, forward_flops
from rl_agents.algo.pa3c import RewardMapConv, class_balanced_weights, pa3c_loss, pixel_returns
from rl_agents.algo.rollout import collect_rollout, sample_actions

R0 = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])  # (B=1, 2, 2)
R1 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
REWARDS = torch.stack([R0, R1])  # (T=2, 1, 2, 2)
V_T = torch.ones(1, 2, 2)


def test_returns_identity_kernel_hand_computed():
    conv = RewardMapConv(3)
    ret = pixel_returns(REWARDS, V_T, 0.5, conv)
    # R1 = r1 + 0.5 * V_T;  R0 = r0 + 0.5 * R1
    torch.testing.assert_close(ret[1], torch.tensor([[[0.5, 1.5], [1.5, 0.5]]]))
    torch.testing.assert_close(ret[0], torch.tensor([[[1.25, 0.75], [0.75, -0.75]]]))
    torch.testing.assert_close(pixel_returns(REWARDS, V_T, 0.5, None), ret)


def test_returns_neighbourhood_kernel_hand_computed():
    conv = RewardMapConv(3)
    with torch.no_grad():
        conv.weight.fill_(0.25)
    # on a 2x2 map every 3x3 window covers all four pixels: (w * R) = 0.25 * sum(R) everywhere
    ret = pixel_returns(REWARDS, V_T, 0.5, conv)
    torch.testing.assert_close(ret[1], R1 + 0.5)  # 0.5 * 0.25 * 4
    torch.testing.assert_close(ret[0], R0 + 0.5)  # sum(R1) = 4 -> 0.5 * 0.25 * 4


def test_kernel_gradient_through_value_loss_hand_computed():
    conv = RewardMapConv(1)  # a scalar w = 1
    values = torch.zeros(2, 1, 2, 2, requires_grad=True)
    logp = torch.zeros(2, 1, 2, 2, requires_grad=True)
    ent = torch.zeros(2, 1, 2, 2, requires_grad=True)
    loss = pa3c_loss(logp, ent, values, REWARDS, V_T, gamma=0.5, reward_conv=conv, value_coef=0.5, entropy_coef=0.01)
    # L_v = 0.5 * mean(R^2) over 8 entries; dR1/dw = 0.5 * V_T, dR0/dw = 0.5 * R1 + 0.25 * V_T
    # dL/dw = (sum R0 dR0 + sum R1 dR1) / 8 = (1.75 + 2.0) / 8
    loss.value.backward(retain_graph=True)
    assert conv.weight.grad.item() == pytest.approx(0.46875)
    expected_value = 0.5 * (torch.tensor([1.25, 0.75, 0.75, -0.75, 0.5, 1.5, 1.5, 0.5]) ** 2).mean()
    assert loss.value.item() == pytest.approx(expected_value.item())
    # the value loss pulls V towards R: dL/dV = -(R - V) / 8
    torch.testing.assert_close(values.grad[0], -torch.tensor([[[1.25, 0.75], [0.75, -0.75]]]) / 8)


def test_policy_and_entropy_terms_hand_computed():
    conv = RewardMapConv(3)
    values = torch.zeros(2, 1, 2, 2)
    logp = torch.full((2, 1, 2, 2), -0.5, requires_grad=True)
    ent = torch.full((2, 1, 2, 2), 0.6, requires_grad=True)
    loss = pa3c_loss(logp, ent, values, REWARDS, V_T, gamma=0.5, reward_conv=conv, entropy_coef=0.01)
    returns = torch.stack([torch.tensor([[[1.25, 0.75], [0.75, -0.75]]]), torch.tensor([[[0.5, 1.5], [1.5, 0.5]]])])
    assert loss.policy.item() == pytest.approx((0.5 * returns).mean().item())
    assert loss.entropy.item() == pytest.approx(-0.01 * 0.6)
    (loss.policy + loss.entropy).backward()
    torch.testing.assert_close(logp.grad, -returns / 8)  # advantage detached: no gradient into w or V here
    torch.testing.assert_close(ent.grad, torch.full_like(ent, -0.01 / 8))
    assert conv.weight.grad is None
    assert loss.aux.item() == 0.0
    with pytest.raises(ValueError, match="aux_coef > 0 needs aux_log_probs"):
        pa3c_loss(logp, ent, values, REWARDS, V_T, aux_coef=1.0)
    with pytest.raises(ValueError, match=r"values must match rewards \(2, 1, 2, 2\)"):
        pa3c_loss(logp, ent, values[:1], REWARDS, V_T)


def test_sample_actions_seeded_and_distributed():
    logits = torch.zeros(1, 2, 100, 100)
    logits[:, 1] = float(np.log(0.3 / 0.7))  # p(action 1) = 0.3
    g = torch.Generator().manual_seed(0)
    a, lp, ent = sample_actions(logits, g)
    assert a.shape == (1, 100, 100) and a.dtype == torch.int64
    assert abs(a.float().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(lp[a == 1], torch.full_like(lp[a == 1], float(np.log(0.3))))
    h = -(0.3 * np.log(0.3) + 0.7 * np.log(0.7))
    torch.testing.assert_close(ent, torch.full_like(ent, float(h)))
    b, _, _ = sample_actions(logits, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    three = torch.tensor([-1e9, -1e9, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert (sample_actions(three, g)[0] == 2).all()


@pytest.mark.parametrize("n_actions", [2, 3])
def test_torch_transition_matches_env(n_actions):
    rng = np.random.default_rng(0)
    gt = (rng.random((2, 8, 8)) > 0.5).astype(np.uint8)
    env = PixelSegEnv(rng.random((2, 1, 8, 8)).astype(np.float32), gt, batch_size=2, t_max=3,
                      action_set="three" if n_actions == 3 else "paper")
    env.reset(seed=0, options={"indices": [0, 1]})
    state = torch.ones(2, 8, 8, dtype=torch.bool)
    for _ in range(3):
        a = rng.integers(0, n_actions, (2, 8, 8))
        env.step(a)
        state = apply_actions(state, torch.from_numpy(a), n_actions)
        np.testing.assert_array_equal(state.numpy().astype(np.uint8), env.state)


def test_presets_parameters_and_flops():
    small = PixelDRLNet(1, 2, "small")
    assert count_parameters(small) <= 500_000
    # 0.49 GFLOP at 128 px, the self-attention included: torch's counter has no formula for the CPU flash kernel,
    # model.py registers one. Its 32x32 = 1024 positions, queries and keys padded to the value width 24:
    # 2 matmuls of 1024 x 1024 x 24, forward only = 4 * 1024^2 * 24 FLOPs
    assert forward_flops(small, 1, 128) <= 0.5e9
    no_attention = PixelDRLNet(1, 2, "small", attention=False)
    attention = forward_flops(small, 1, 128) - forward_flops(no_attention, 1, 128)
    assert attention >= 4 * 1024**2 * 24
    paper = PixelDRLNet(3, 2, "paper")
    assert abs(count_parameters(paper) - 7.14e6) / 7.14e6 < 0.05  # the paper: 7.14M
    no_attn = PixelDRLNet(1, 2, "small", attention=False)
    assert count_parameters(no_attn) < count_parameters(small)
    logits, value = small(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 2, 32, 32) and value.shape == (2, 32, 32)
    assert set(PRESETS) >= {"small", "paper"}
    with pytest.raises(ValueError, match="unknown network preset 'huge'"):
        PixelDRLNet(1, 2, "huge")


def test_no_dilation_ablation_changes_receptive_field_not_parameters():
    a, b = PixelDRLNet(1, 2, "small"), PixelDRLNet(1, 2, "small", dilation=False)
    assert count_parameters(a) == count_parameters(b)
    assert any(m.dilation != (1, 1) for m in a.modules() if isinstance(m, torch.nn.Conv2d))
    assert all(m.dilation == (1, 1) for m in b.modules() if isinstance(m, torch.nn.Conv2d))


def test_class_balanced_aux_term_hand_computed():
    # one foreground pixel of four: it weighs 0.5 / 0.25 = 2, each background pixel 0.5 / 0.75 = 2/3
    gt = torch.tensor([[[1, 0], [0, 0]]])
    w = class_balanced_weights(gt)
    torch.testing.assert_close(w, torch.tensor([[[2.0, 2 / 3], [2 / 3, 2 / 3]]]))
    assert w.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(class_balanced_weights(torch.zeros(1, 2, 2)), torch.ones(1, 2, 2))  # one class only
    # the foreground pixel's oracle action is unlikely (log p = -2), the background's likely (log p = -0.1)
    aux_logp = torch.tensor([[[-2.0, -0.1], [-0.1, -0.1]]]).expand(2, 1, 2, 2)
    zeros = torch.zeros(2, 1, 2, 2)
    plain = pa3c_loss(zeros, zeros, zeros, REWARDS, V_T, aux_log_probs=aux_logp, aux_coef=1.0)
    balanced = pa3c_loss(zeros, zeros, zeros, REWARDS, V_T, aux_log_probs=aux_logp, aux_coef=1.0, aux_weights=w)
    assert plain.aux.item() == pytest.approx((2.0 + 3 * 0.1) / 4)  # 0.575: the rare class barely counts
    assert balanced.aux.item() == pytest.approx((2 * 2.0 + 3 * (2 / 3) * 0.1) / 4)  # 1.05: half the weight each


def test_rollout_shapes_and_segment():
    torch.manual_seed(0)
    env = PixelSegEnv(batch_size=2, t_max=3)
    env.reset(seed=0)
    model = PixelDRLNet(3, 2, "small")
    roll = collect_rollout(model, env, torch.device("cpu"), torch.Generator().manual_seed(0), with_aux=True)
    assert roll.log_probs.shape == roll.values.shape == roll.rewards.shape == (3, 2, 64, 64)
    assert roll.bootstrap.shape == (2, 64, 64) and not roll.bootstrap.requires_grad
    assert roll.aux_log_probs.shape == (3, 2, 64, 64)
    assert roll.aux_weights.shape == (2, 64, 64)
    assert roll.log_probs.requires_grad and roll.values.requires_grad
    # the recorded rewards sum to the net number of pixels fixed
    start_wrong = (roll.ground_truth != 1).sum()
    assert roll.rewards.sum().item() == start_wrong - (roll.final_state != roll.ground_truth).sum()
    masks, unc = segment(model, env.images[:3], t_max=3)
    assert masks.shape == (3, 64, 64) and masks.dtype == np.uint8
    assert unc.shape == (3, 64, 64) and unc.min() >= 0 and unc.max() <= 1
