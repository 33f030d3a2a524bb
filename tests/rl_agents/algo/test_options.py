"""The named options that try to close the gap to the U-Net (issue 12), each off by default: the medium preset,
augmentation, advantage normalisation, the entropy schedule, learning-rate warm-up and empty training slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelrl_env.augment import Augment
from pixelrl_env.data_config import DataConfig
from pixelrl_env.dataset import load_splits
from pixelrl_env.env import PixelSegEnv
from rl_agents.algo.agent import PA3CAgent, build_network, make_train_env
from rl_agents.algo.model import count_parameters
from rl_agents.algo.pa3c import pa3c_loss
from rl_agents.config import load_config
from rl_agents.engines.supervised import build_unet
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.lifecycle import train


def _batch(n=3, size=24, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    masks[:, 6:15, 8:18] = True
    images = (0.6 * masks + 0.4 * rng.random((n, size, size))).astype(np.float32)[:, None]
    return images, masks


def test_medium_preset_has_at_most_a_quarter_of_the_unets_parameters():
    medium = count_parameters(build_network(load_config(None, ["network.preset=medium"]), 1))
    small = count_parameters(build_network(load_config(None, ["network.preset=small"]), 1))
    unet = count_parameters(build_unet(1))
    assert small < medium <= unet / 4


def test_augment_identity_flips_and_mask_follows_image():
    images, masks = _batch()
    same = Augment(flip=False, rotate_deg=0, scale=0, intensity=0, bias_field=0)(images, masks, np.random.default_rng(0))
    np.testing.assert_array_equal(same[0], images)
    np.testing.assert_array_equal(same[1], masks)
    # flips only: the mask moves exactly with the image (the bright rectangle is the mask)
    im, m = Augment(rotate_deg=0, scale=0, intensity=0, bias_field=0)(images, masks, np.random.default_rng(3))
    assert m.dtype == bool and m.sum() == masks.sum()
    np.testing.assert_array_equal(im[:, 0] >= 0.6, m)
    # rotation and scaling: still binary, and the image's bright region agrees with the mask on >= 95 % of pixels
    a = Augment(flip=False, intensity=0, bias_field=0)
    im, m = a(images, masks, np.random.default_rng(1))
    assert set(np.unique(m)) <= {False, True}
    assert np.mean((im[:, 0] > 0.55) == m) >= 0.95
    # deterministic by the RNG; intensity changes stay within the input range
    full = Augment()
    x1, y1 = full(images, masks, np.random.default_rng(7))
    x2, y2 = full(images, masks, np.random.default_rng(7))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.min() >= images.min() and x1.max() <= images.max() and not np.array_equal(x1, images)
    with pytest.raises(ValueError, match="scale must be < 1"):
        Augment(scale=1.5)


def test_env_applies_the_transform_at_reset_from_its_own_rng():
    images, masks = _batch(n=4)
    calls = []

    def flip_all(im, m, rng):
        calls.append(rng)
        return im[:, :, :, ::-1].copy(), m[:, :, ::-1].copy()

    env = PixelSegEnv(images, masks.astype(np.uint8), batch_size=2, transform=flip_all)
    obs, info = env.reset(seed=0)
    assert calls[-1] is env.np_random
    np.testing.assert_array_equal(env.ground_truth, masks[info["indices"]][:, :, ::-1])
    np.testing.assert_array_equal(obs, images[info["indices"]][:, :, :, ::-1])
    cfg = load_config(None, ["optim.augment=true", "optim.batch_size=2"])
    assert isinstance(make_train_env(cfg, images, masks.astype(np.uint8), seed=0).transform, Augment)


def test_advantage_normalisation_centres_the_policy_advantage():
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 4, 4)
    args = [torch.randn(shape, generator=g) for _ in range(4)] + [torch.zeros(shape[1:])]
    plain = pa3c_loss(*args)
    normed = pa3c_loss(*args, normalize_advantage=True)
    assert abs(float(plain.advantage_mean)) > 0.05
    assert float(normed.advantage_mean) == pytest.approx(0.0, abs=1e-6)
    assert float(normed.value) == pytest.approx(float(plain.value))  # only the policy term changes


def test_entropy_schedule_and_lr_warmup_follow_the_update_count():
    images, masks = _batch(n=8)
    cfg = load_config(None, ["pa3c.entropy_coef=0.05", "pa3c.entropy_coef_final=0.01", "optim.batch_size=2", "budget.epochs=4",
                             "optim.lr_warmup_updates=4", "optim.lr=1e-3", "optim.lr_decay=0.5", "optim.lr_decay_epochs=2"])
    agent = PA3CAgent(cfg, 1, len(images))  # 4 updates an epoch: decay every 8, 16 planned
    assert agent.total_updates == 16 and agent.entropy_coef() == pytest.approx(0.05)
    agent.update = 8
    assert agent.entropy_coef() == pytest.approx(0.03)
    agent.update = 20
    assert agent.entropy_coef() == pytest.approx(0.01)
    agent.update = 0
    grads = [torch.zeros_like(p) for p in agent.params]
    lrs = [agent.apply_gradients(grads)["charts/lr"] for _ in range(10)]  # the rate each update used
    expected = [1e-3 * min(1, (u + 1) / 4) * 0.5 ** (u // 8) for u in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)
    # Hogwild: two processes' optimisers over shared weights step at the shared count, alternating here
    a, b = PA3CAgent(cfg, 1, len(images)), PA3CAgent(cfg, 1, len(images))
    shared = [(a if u % 2 == 0 else b).apply_gradients(grads, at_update=u)["charts/lr"] for u in range(10)]
    np.testing.assert_allclose(shared, expected, rtol=1e-9)
    state = agent.state_dict()  # the warm-up schedule survives a checkpoint round trip
    again = PA3CAgent(cfg, 1, len(images))
    again.load_state_dict(state)
    assert again.sched.get_last_lr() == agent.sched.get_last_lr()


def test_train_empty_keeps_a_fixed_share_of_empty_training_slices():
    base = {"format": "synthetic", "size": 32,
            "synthetic": {"n_patients": 10, "slices_per_patient": 8, "size": 32, "difficulty": "easy"}}
    paper = load_splits(DataConfig(**base))
    every = load_splits(DataConfig(**base, drop_empty=False))
    n_empty = int((every.train.masks.reshape(len(every.train), -1).max(1) == 0).sum())
    assert n_empty > 0
    half = load_splits(DataConfig(**base, train_empty=0.5))
    assert len(half.train) == len(paper.train) + round(0.5 * n_empty)
    assert len(half.val) == len(paper.val) and len(half.test) == len(paper.test)  # evaluation splits untouched
    assert len(load_splits(DataConfig(**base, train_empty=1.0)).train) == len(every.train)
    with pytest.raises(ValueError, match="train_empty must be a fraction"):
        DataConfig(**base, train_empty=1.5).validate()


@pytest.mark.parametrize("model", ["pixeldrl", "unet"])
def test_every_option_trains_end_to_end(tmp_path, model):
    cfg = load_config(None, [
        f"model={model}", "network.preset=medium", "optim.augment=true", "pa3c.adv_norm=true", "pa3c.entropy_coef_final=0.0",
        "optim.lr_warmup_updates=2", "data.train_empty=0.5", "budget.max_updates=3", "optim.batch_size=2", "pa3c.t_max=2", "data.size=32",
        "data.synthetic.size=32", "data.synthetic.n_patients=6", "eval.every=3", "tracking.mlflow=false",
    ])
    m = train(cfg, tmp_path / model, quiet=True)
    # the reported Dice is that of the weights the run ended with, read back and evaluated on their own
    assert m["updates"] == 3
    ev = evaluate_checkpoint(tmp_path / model / "checkpoints" / "last.pt", split="val")
    assert ev["n_images"] == m["n_val"] and ev["dice"] == pytest.approx(m["val/dice"], abs=1e-6)
