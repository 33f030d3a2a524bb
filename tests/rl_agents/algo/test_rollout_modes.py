"""The batched recompute (``rollout_mode: recompute``) is the same mathematics as the online rollout: the same
actions, the same loss and the same gradients on a fixed seed, for every loss term that depends on the rollout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rl_agents.algo.agent import PA3CAgent, make_train_env
from rl_agents.algo.inference import GreedySegmenter, greedy_actions, segment
from rl_agents.algo.model import PixelDRLNet, SelfAttention2d
from rl_agents.algo.phases import PhaseTimer
from rl_agents.config import load_config
from rl_agents.experiment.checkpoint import read_checkpoint
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.loaded import load_model

SIZE, B = 32, 3


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((6, 2, SIZE, SIZE), dtype=np.float32)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    masks = np.stack([((yy - 8 - i) ** 2 + (xx - 12) ** 2 < 40 + 10 * i) for i in range(6)]).astype(np.uint8)
    return images, masks


def _gradients(mode: str, overrides: dict | None = None):
    torch.manual_seed(0)
    cfg = load_config(None, [f"optim.batch_size={B}", "pa3c.t_max=4", f"pa3c.rollout_mode={mode}",
                             "network.init_keep_prob=0.7", *(f"{k}={v}" for k, v in (overrides or {}).items())])
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
    {"pa3c.bootstrap": "value", "pa3c.action_set": "three", "pa3c.aux_coef": 0.5, "pa3c.adv_norm": True},  # every term
    {"network.step_features": "once", "pa3c.bootstrap": "value", "pa3c.action_set": "three"},  # trunk once per episode
])
def test_recompute_gives_the_online_gradients(overrides):
    roll_a, loss_a, grads_a = _gradients("online", overrides)
    roll_b, loss_b, grads_b = _gradients("recompute", overrides)
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
        _gradients("online", {"pa3c.bootstrap": "value"})
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


def test_unknown_or_incompatible_cost_options_are_refused():
    with pytest.raises(ValueError, match="rollout_mode must be one of"):
        load_config(None, ["pa3c.rollout_mode=batched"])
    with pytest.raises(ValueError, match="step_features must be one of"):
        load_config(None, ["network.step_features=twice"])
    with pytest.raises(ValueError, match="attn_stride must be one of"):
        load_config(None, ["network.attn_stride=3"])
    with pytest.raises(ValueError, match="leave uncompiled"):
        load_config(None, ["network.step_features=once", "compute.compile=inductor"])
    with pytest.raises(ValueError, match="rllib_appo passes observations"):
        load_config(None, ["network.step_features=once", "engine=rllib_appo", "num_workers=1"])


@pytest.mark.parametrize("preset", ["small", "medium"])
def test_the_fuse_before_upsampling_is_the_same_network(preset):
    """The default fuse (1x1 conv at low resolution, then upsampling) against the original (upsample, concatenate,
    conv): the same outputs and the same gradients from the same weights."""

    torch.manual_seed(0)
    net = PixelDRLNet(2, 3, preset)
    x = torch.rand(2, 2, 32, 32)
    outs, grads = [], []
    for low in (True, False):
        net.fuse_at_low_res = low
        net.zero_grad()
        logits, values = net(x)
        (logits.square().mean() + values.mean()).backward()
        outs.append((logits.detach(), values.detach()))
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_half_resolution_heads_cost_a_quarter_and_answer_at_full_resolution():
    def step_flops(net):
        context = net.encode(torch.rand(1, 1, 64, 64))
        state = torch.ones(1, 64, 64, dtype=torch.bool)
        with FlopCounterMode(display=False) as counter:
            logits, values = net.step(context, state)
        assert logits.shape == (1, 2, 64, 64) and values.shape == (1, 64, 64)
        return counter.get_total_flops()

    full = step_flops(PixelDRLNet(1, 2, "small", step_features="once"))
    half = step_flops(PixelDRLNet(1, 2, "small", step_features="once", head_stride=2))
    assert half == pytest.approx(full / 4, rel=0.01)
    with pytest.raises(ValueError, match="head_stride must be 1 or 2"):
        PixelDRLNet(1, 2, "small", head_stride=3)


def test_pooling_the_features_once_per_episode_is_the_same_network():
    """Under step_features=once with head_stride=2 the encoded features are pooled once per episode and the mask per
    step: the same outputs and gradients as pooling [features, mask] at every step (the layout before)."""

    torch.manual_seed(0)
    net = PixelDRLNet(1, 2, "small", step_features="once", head_stride=2)
    x = torch.rand(2, 1, 32, 32)
    state = torch.rand(2, 32, 32) > 0.3
    outs, grads = [], []
    for pooled_once in (True, False):
        net.zero_grad()
        if pooled_once:
            logits, values = net.step(net.encode(x), state)
        else:  # every step: the full-resolution concatenation, pooled inside the heads
            logits, values = net.heads(torch.cat([net.features(x), state[:, None].float()], dim=1))
        (logits.square().mean() + values.mean()).backward()
        outs.append((logits.detach(), values.detach()))
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_greedy_actions_are_the_argmax_ties_included():
    torch.manual_seed(0)
    for n in (2, 3):
        logits = torch.randn(4, n, 8, 8)
        logits[:, 1, :2] = logits[:, 0, :2]  # ties: argmax takes the first
        assert torch.equal(greedy_actions(logits), logits.argmax(dim=1))


def test_a_once_network_reads_the_mask_at_every_step():
    """Under step_features=once the trunk sees the image only; the step's answer must still depend on the mask."""

    torch.manual_seed(0)
    net = PixelDRLNet(1, 2, "small", step_features="once")
    context = net.encode(torch.rand(1, 1, 32, 32))
    full = torch.ones(1, 32, 32, dtype=torch.bool)
    half = full.clone()
    half[:, :, :16] = False
    assert not torch.allclose(net.step(context, full)[0], net.step(context, half)[0])


def test_strided_attention_costs_a_sixteenth_and_keeps_the_block_shape():
    """network.attn_stride=2 attends over 2x2-pooled features: 1/4 of the positions, so 1/16 of the (HW x HW) products."""

    def attention_flops(block, x):
        with FlopCounterMode(display=False) as counter:
            y = block(x)
        sdpa = {str(k): v for k, v in counter.get_flop_counts()["Global"].items() if "attention" in str(k)}
        assert sdpa, "the SDPA kernel was not counted"
        return sum(sdpa.values()), y

    torch.manual_seed(0)
    x = torch.rand(2, 48, 32, 32)
    full, strided = SelfAttention2d(48, 12, 24), SelfAttention2d(48, 12, 24, stride=2)
    strided.load_state_dict(full.state_dict())  # the same parameters: only where the block attends changes
    f1, y1 = attention_flops(full, x)
    f2, y2 = attention_flops(strided, x)
    assert f2 == pytest.approx(f1 / 16, rel=0.01)
    torch.testing.assert_close(y2, x)  # zero gate: both start as the identity
    with torch.no_grad():
        full.gamma.fill_(1.0)
        strided.gamma.fill_(1.0)
    y1, y2 = full(x), strided(x)
    assert y2.shape == x.shape and not torch.allclose(y1, y2)
    with pytest.raises(ValueError, match="attn_stride must be one of"):
        PixelDRLNet(1, 2, "small", attn_stride=3)


OPTIONS = [
    {"network.step_features": "once"},
    {"network.step_features": "once", "network.head_stride": 2},
    {"network.attn_stride": 2},
    {"network.step_features": "once", "network.head_stride": 2, "network.attn_stride": 2},
    {"network.head_stride": 2},
    {"pa3c.rollout_mode": "recompute"},
]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_each_cost_option_trains_the_smoke_config_and_round_trips_a_checkpoint(tmp_path, option):
    cfg = load_config("tune_configs/smoke.yaml", [
        "num_workers=0", "budget.max_updates=4", "eval.every=4", "eval.checkpoint_every=2", "eval.max_images=4", "tracking.mlflow=false",
        *[f"{k}={v}" for k, v in option.items()]])
    metrics = train(cfg, tmp_path / "run", quiet=True)
    assert metrics["updates"] == 4
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    model, loaded_cfg = load_model(ckpt)  # a strict load: the option's architecture must be rebuilt from the config
    for key, value in option.items():
        section, name = key.split(".")
        assert getattr(getattr(loaded_cfg, section), name) == value
    assert model.step_features == option.get("network.step_features", "every")
    assert model.head_stride == option.get("network.head_stride", 1)
    assert model.attention.stride == option.get("network.attn_stride", 1)
    stored = read_checkpoint(ckpt, map_location="cpu", fallback=False).agent["model"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, stored[k])
    images = torch.rand(3, model.in_channels, 32, 32)
    early, _ = segment(model, images, cfg.pa3c.t_max)
    every, _ = segment(model, images, cfg.pa3c.t_max, early_exit=False)
    np.testing.assert_array_equal(early, every)  # early exit stays exact: a step's input is (context, mask)
    exported = GreedySegmenter(model, cfg.pa3c.t_max)(images).numpy().astype(np.uint8)
    np.testing.assert_array_equal(exported, early)
