from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import pixelrl_env  # noqa: F401  (registers the ids)
from pixelrl_env.env import PixelSegEnv
from pixelrl_env.metrics import dice
from pixelrl_env.multiagent import PixelAgentsParallelEnv
from pixelrl_env.policies import oracle_actions, random_actions

GT = np.array([[[1, 0], [0, 1]]], np.uint8)  # (N=1, 2, 2)
IMG = np.array([[[[0.2, 0.4], [0.6, 0.8]]]], np.float32)  # (N=1, C=1, 2, 2)


def test_check_env_on_registered_ids():
    check_env(gym.make("PixelSeg-v0").unwrapped)
    check_env(gym.make("PixelSegBatch-v0").unwrapped)
    check_env(PixelSegEnv(action_set="three", render_mode="rgb_array"), skip_render_check=False)
    env = gym.make("PixelSegBatch-v0", batch_size=3, t_max=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 3, 64, 64) and obs.dtype == np.float32
    assert env.action_space.shape == (3, 64, 64) and env.action_space.dtype == np.int64


def test_hand_computed_rewards_paper_actions():
    env = PixelSegEnv(IMG, GT, t_max=3)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["state"], [[1, 1], [1, 1]])  # starts all foreground
    np.testing.assert_allclose(obs, IMG[0])  # image * all-ones mask
    # set the top row to background: fixes (0,1), breaks (0,0)
    obs, r, term, trunc, info = env.step(np.array([[0, 0], [1, 1]]))
    np.testing.assert_array_equal(info["state"], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(info["reward_map"], [[-1, 1], [0, 0]])
    assert info["reward_map"].dtype == np.float32
    assert r == 0.0 and not term and not trunc
    np.testing.assert_allclose(obs, [[[0.0, 0.0], [0.6, 0.8]]])
    # set (1,0) to background: +1; a pixel already background stays so with "do nothing": 0
    _, r, term, _, info = env.step(np.array([[1, 1], [0, 1]]))
    np.testing.assert_array_equal(info["reward_map"], [[0, 0], [1, 0]])
    assert r == 0.25 and not term
    _, r, term, trunc, info = env.step(np.ones((2, 2), np.uint8))
    np.testing.assert_array_equal(info["reward_map"], np.zeros((2, 2)))
    assert term and not trunc and info["t"] == 3
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.ones((2, 2), int))


def test_hand_computed_rewards_three_actions_and_return_equals_improvement():
    env = PixelSegEnv(IMG, GT, t_max=2, action_set="three", start="background")
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["state"], np.zeros((2, 2)))
    _, r, _, _, info = env.step(np.array([[2, 2], [1, 1]]))
    np.testing.assert_array_equal(info["reward_map"], [[1, -1], [0, 0]])
    _, r, term, _, info = env.step(np.array([[1, 0], [2, 2]]))
    np.testing.assert_array_equal(info["state"], [[1, 0], [1, 1]])
    np.testing.assert_array_equal(info["reward_map"], [[0, 1], [-1, 1]])
    assert term


def test_episode_return_is_the_improvement_in_wrong_pixels():
    rng = np.random.default_rng(0)
    masks = (rng.random((4, 16, 16)) > 0.7).astype(np.uint8)
    env = PixelSegEnv(rng.random((4, 1, 16, 16)).astype(np.float32), masks, batch_size=4, t_max=5,
                      action_set="three")
    env.reset(seed=1)
    wrong0 = (env.state != env.ground_truth).sum()
    total = np.zeros((4, 16, 16), np.float32)
    for _ in range(5):
        _, _, _, _, info = env.step(random_actions(rng, (4, 16, 16), 3))
        total += info["reward_map"]
    assert total.sum() == wrong0 - (env.state != env.ground_truth).sum()


@pytest.mark.parametrize("action_set", ["paper", "three"])
def test_oracle_reaches_dice_one_in_one_step(action_set):
    env = gym.make("PixelSegBatch-v0", batch_size=4, action_set=action_set).unwrapped
    env.reset(seed=0)
    _, r, _, _, info = env.step(oracle_actions(env.state, env.ground_truth, env.n_actions))
    np.testing.assert_allclose(dice(info["state"], env.ground_truth), 1.0)
    assert r > 0


def test_reset_is_seeded_and_indices_option():
    env = PixelSegEnv(batch_size=3)
    a, _ = env.reset(seed=7)
    ia = env.indices
    b, _ = env.reset(seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia, env.indices)
    _, info = env.reset(options={"indices": [2, 0, 1]})
    np.testing.assert_array_equal(info["indices"], [2, 0, 1])
    np.testing.assert_array_equal(env.ground_truth, env.masks[[2, 0, 1]])
    with pytest.raises(ValueError, match=r"options\['indices'\] must be 3 indices"):
        env.reset(options={"indices": [0, 1]})


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="action_set must be one of"):
        PixelSegEnv(IMG, GT, action_set="four")
    with pytest.raises(ValueError, match="start='background' would be stuck"):
        PixelSegEnv(IMG, GT, start="background")
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        PixelSegEnv(IMG, GT[:, :1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        PixelSegEnv(IMG, GT * 255)
    env = PixelSegEnv(IMG, GT)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2, 2\), got \(3,\)"):
        env.step(np.zeros(3, int))
    with pytest.raises(ValueError, match="integer-typed"):
        env.step(np.zeros((2, 2), np.float32))


def test_render_overlays_state_and_truth():
    env = PixelSegEnv(render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert (frame == [0, 255, 0]).all(axis=-1).any()  # the ground-truth outline


def test_pettingzoo_parallel_api_and_rewards_match_the_map():
    from pettingzoo.test import parallel_api_test

    data = dict(format="synthetic", size=12, split=(1.0, 0.0, 0.0),
                synthetic={"n_patients": 2, "slices_per_patient": 4, "size": 48})
    parallel_api_test(PixelAgentsParallelEnv(data=data, t_max=3), num_cycles=6)

    env = PixelAgentsParallelEnv(data=data, t_max=2, patch=3)
    obs, _ = env.reset(seed=0)
    assert len(env.agents) == 144 and obs["pixel_0_0"].shape == (3, 3, 3)
    np.testing.assert_array_equal(obs["pixel_0_0"][:, 0, :], 0.0)  # zero padding outside the image
    gt = env.env.ground_truth
    actions = {a: int(1 if gt[int(a.split("_")[1]), int(a.split("_")[2])] else 0) for a in env.agents}
    _, rewards, term, _, _ = env.step(actions)
    assert sum(rewards.values()) == (gt == 0).sum()  # each background pixel fixed earns +1
    assert not any(term.values())
    _, _, term, trunc, _ = env.step({})
    assert all(term.values()) and not any(trunc.values()) and env.agents == []
    with pytest.raises(ValueError, match="meant for small images"):
        PixelAgentsParallelEnv(data={**data, "size": 128}, max_agents=4096)
