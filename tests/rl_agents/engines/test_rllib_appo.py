"""The RLlib APPO engine (rl_agents/engines/rllib/): its env, RLModule, reward-map connector, per-pixel
V-trace (against hand-computed returns, and RLlib's truncation convention checked), an env runner that crashes,
and a run through the lifecycle that learns the easy synthetic set and leaves a checkpoint `evaluate` reads."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from benchmarks.peer_rllib import distributions, stock_training
from rl_agents.algo.pa3c import pixel_returns
from rl_agents.cli import main
from rl_agents.config import load_config, to_dict
from rl_agents.engines.rllib.config import build_config
from rl_agents.engines.rllib.engine import MODULE, RLlibAPPOEngine
from rl_agents.engines.rllib.env import REWARD_MAP, PixelSegRLlibEnv
from rl_agents.engines.rllib.learner import episode_rows, pixel_vtrace
from rl_agents.engines.rllib.module import PixelDRLRLModule
from rl_agents.experiment.lifecycle import run_training

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def _cfg(*overrides: str):
    return load_config(SMOKE, ["engine=rllib_appo", "num_workers=0", "tracking.mlflow=false", "budget.max_minutes=null", *overrides])


def test_env_spaces_rewards_and_termination():
    env = PixelSegRLlibEnv({"cfg": to_dict(_cfg())})
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    c, h, w = env.observation_space.shape
    assert obs.shape == (c, h, w) == (3, 32, 32) and obs.dtype == np.float32
    assert env.action_space.shape == (h * w,) and set(env.action_space.nvec.tolist()) == {2}
    rng = np.random.default_rng(0)
    for t in range(3):
        obs, r, term, trunc, info = env.step(rng.integers(0, 2, h * w))
        rm = info[REWARD_MAP]
        assert rm.shape == (h * w,) and rm.dtype == np.float32
        assert r == pytest.approx(float(rm.mean()))  # the scalar RLlib needs: the mean of the reward map
        assert term == (t == 2) and trunc is False


def test_module_gives_per_pixel_actions_log_probs_and_values():
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    cfg = _cfg()
    env = PixelSegRLlibEnv({"cfg": to_dict(cfg)})
    module_cls = PixelDRLRLModule
    mod = module_cls(observation_space=env.observation_space, action_space=env.action_space,
                     model_config={"cfg": to_dict(cfg)})
    mod.make_target_networks()
    obs = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(4)]))
    n = 32 * 32
    logits = mod.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    assert logits.shape == (4, n, 2)
    dist = mod.get_exploration_action_dist_cls().from_logits(logits)
    a = dist.sample()
    assert a.shape == (4, n) and dist.logp(a).shape == (4, n) and dist.entropy().shape == (4, n)
    tr = mod.forward_train({Columns.OBS: obs})
    assert mod.compute_values({Columns.OBS: obs}).shape == (4, n)
    assert mod.forward_target({Columns.OBS: obs})[TARGET_NETWORK_ACTION_DIST_INPUTS].shape == (4, n, 2)
    assert not any(p.requires_grad for p in mod._target_net.parameters())
    # loss-masked rows (the bootstrap row IMPALA appends) are skipped, and the others are as without the mask
    mask = torch.tensor([True, True, False, True])
    tr_m = mod.forward_train({Columns.OBS: obs, Columns.LOSS_MASK: mask})
    torch.testing.assert_close(tr_m[Columns.EMBEDDINGS][mask], tr[Columns.EMBEDDINGS][mask])
    torch.testing.assert_close(tr_m[Columns.ACTION_DIST_INPUTS][mask], tr[Columns.ACTION_DIST_INPUTS][mask])
    assert not tr_m[Columns.EMBEDDINGS][2].any()
    det = mod.get_inference_action_dist_cls().from_logits(logits).to_deterministic().sample()
    assert torch.equal(det, logits.argmax(-1))  # greedy = argmax per pixel, as our evaluation


def _vtrace_one(rewards, values, bootstrap, *, terminated_last: bool, gamma=0.9):
    """One episode as RLlib 2.60's IMPALA/APPO loss sees it: the real steps, then the appended bootstrap step
    (loss_mask False, reward 0, value V(s_T)); discount gamma * (1 - terminated) * loss_mask; on-policy."""
    from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch

    n = len(rewards)
    r = torch.tensor(rewards + [0.0])[:, None]
    v = torch.tensor(values + [bootstrap])[:, None]
    term = torch.tensor([0.0] * (n - 1) + [1.0 if terminated_last else 0.0] + [0.0])[:, None]
    mask = torch.tensor([1.0] * n + [0.0])[:, None]
    zeros = torch.zeros_like(r)
    vs, adv = vtrace_torch(target_action_log_probs=zeros, behaviour_action_log_probs=zeros,
                           discounts=gamma * (1 - term) * mask,
                           rewards=r, values=v, bootstrap_values=torch.tensor([123.0]))
    return vs[:, 0], adv[:, 0]


@pytest.mark.parametrize("bootstrap", [0.0, 5.0, -7.0])
def test_vtrace_terminated_at_t_max_gives_the_hand_computed_returns(bootstrap):
    g, r0, r1, v0, v1 = 0.9, 1.0, 2.0, 0.5, -0.25
    vs, adv = _vtrace_one([r0, r1], [v0, v1], bootstrap, terminated_last=True, gamma=g)
    torch.testing.assert_close(vs[:2], torch.tensor([r0 + g * r1, r1]))  # whatever V(s_T) is
    torch.testing.assert_close(adv[:2], torch.tensor([r0 + g * r1 - v0, r1 - v1]))


@pytest.mark.parametrize("bootstrap", [5.0, -7.0])
def test_vtrace_a_truncated_chunk_end_loses_its_bootstrap(bootstrap):
    """The issue's claim, checked: cut at t_max *without* terminated, the target should be r1 + g V(s_2), but the
    appended step's delta (-V(s_2), discount 0 there) cancels it: vs_1 = r1, as if terminal. Hence episodes here
    end terminated at t_max and train whole, instead of leaning on that accident."""
    g, r0, r1, v0, v1 = 0.9, 1.0, 2.0, 0.5, -0.25
    vs, adv = _vtrace_one([r0, r1], [v0, v1], bootstrap, terminated_last=False, gamma=g)
    assert not math.isclose(float(vs[1]), r1 + g * bootstrap)
    torch.testing.assert_close(vs[1], torch.tensor(r1))
    torch.testing.assert_close(adv[1], torch.tensor(r1 - v1))


def test_pixel_vtrace_matches_the_projects_per_pixel_returns():
    """``(T, B, N)`` V-trace, terminated at t_max, on-policy = PA3C's per-pixel returns (identity reward kernel)."""

    g, T, B, N = 0.95, 3, 2, 5
    gen = torch.Generator().manual_seed(0)
    rew = torch.randn(T, B, N, generator=gen)
    val = torch.randn(T + 1, B, N, generator=gen)
    term = torch.zeros(T + 1, B)
    term[T - 1] = 1
    mask = torch.ones(T + 1, B)
    mask[T] = 0
    logp = torch.zeros(T + 1, B, N)
    vs, _ = pixel_vtrace(behaviour_logp=logp, target_logp=logp, rewards=torch.cat([rew, torch.zeros(1, B, N)]),
                           values=val, terminateds=term, loss_mask=mask, gamma=g,
                           bootstrap_values=torch.full((B, N), 99.0))
    hand, ret = [], torch.zeros(B, N)
    for t in reversed(range(T)):
        ret = rew[t] + g * ret
        hand.append(ret)
    torch.testing.assert_close(vs[:T], torch.stack(hand[::-1]))
    ours = pixel_returns(rew.reshape(T, B, 1, N), torch.zeros(B, 1, N), g)
    torch.testing.assert_close(vs[:T], ours.reshape(T, B, N))


def test_episode_rows_refuses_partial_episodes():
    assert episode_rows(torch.tensor([1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)) == 4
    with pytest.raises(ValueError, match="not complete episodes of 3 steps"):
        episode_rows(torch.tensor([1, 1, 1, 0, 1, 1, 0], dtype=torch.bool))


def test_connector_puts_each_steps_reward_map_on_its_row(ray_2cpu):
    from ray.rllib.core.columns import Columns

    algo = build_config(_cfg("optim.batch_size=2")).build_algo()
    try:
        eps = algo.env_runner.sample()
        assert len(eps) == 2 and all(len(e) == 3 and e.is_terminated for e in eps)
        learner = algo.learner_group._learner
        batch = learner._learner_connector(rl_module=learner.module, batch={}, episodes=eps, shared_data={},
                                           metrics=None)[MODULE]
        n = 32 * 32
        assert batch[REWARD_MAP].shape == batch[Columns.ACTIONS].shape == batch[Columns.ACTION_LOGP].shape == (8, n)
        assert batch[Columns.LOSS_MASK].tolist() == [True, True, True, False] * 2
        assert batch[Columns.TERMINATEDS].tolist() == [False, False, True, False] * 2
        # row t's map is the reward of action t: its mean is the scalar reward of step t
        torch.testing.assert_close(batch[REWARD_MAP].mean(1), batch[Columns.REWARDS].float())
        stats = algo.train()["learners"][MODULE]
        assert np.isfinite(stats["total_loss"]) and np.isfinite(stats["advantage_mean"])
    finally:
        algo.stop()


def test_an_env_runner_that_crashes_is_restarted_and_training_goes_on(ray_2cpu, tmp_path: Path):
    """One remote env runner whose env raises once in step(): restart_failed_env_runners brings it back and
    training goes on (3 more batches trained after the crash, the runner healthy again)."""
    marker = tmp_path / "crashed"
    algo = build_config(_cfg("optim.batch_size=2", "num_workers=1", "ray.worker_cpus=0.5"),
                          crash_once_file=str(marker)).build_algo()
    try:
        deadline = time.monotonic() + 150
        at_crash, trained, healthy = None, 0, []
        while time.monotonic() < deadline:
            res = algo.train()
            trained = int(res.get("learners", {}).get("__all_modules__", {}).get("num_env_steps_trained_lifetime",
                                                                                 trained))
            healthy.append(algo.env_runner_group.num_healthy_remote_workers())
            if marker.exists() and at_crash is None:
                at_crash = trained
            if at_crash is not None and trained >= at_crash + 3 * 2 * 3 and healthy[-1] == 1 \
                    and algo.env_runner_group.num_remote_worker_restarts() >= 1:
                break
        assert marker.exists(), "the injected failure never happened"
        assert 0 in healthy, "the runner was never seen down"
        assert res["fault_tolerance"]["num_remote_worker_restarts"] >= 1
        assert trained >= at_crash + 3 * 2 * 3 and healthy[-1] == 1, (at_crash, trained, healthy[-5:])
    finally:
        algo.stop()


@pytest.mark.slow
def test_appo_learns_the_easy_synthetic_set_and_its_checkpoint_evaluates(tmp_path: Path):
    """``python train.py --set engine=rllib_appo``'s path: 240 updates of 8 images (sampling in this process, seed
    0) reach validation Dice >= 0.8 from an all-foreground start below 0.3 (test_training.py); ``best.pt`` is a PA3C
    agent state that ``pixeldrl evaluate`` scores to the Dice the run reported."""

    m = run_training(_cfg("optim.batch_size=8", "budget.epochs=60", "eval.every=40"), tmp_path / "run", quiet=True)
    assert m["updates"] == 240 and m["stopped_by"] == "epochs"
    assert m["val/dice"] >= 0.8, m["val/dice"]
    assert m["perf/pixel_agent_steps_per_s"] > 0 and "losses/value" in m["history"][-1]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.pt"), "--split", "val",
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["dice"] == pytest.approx(m["val/dice"], abs=1e-6)


def test_the_stock_multidiscrete_path_loses_per_pixel_credit():
    """What benchmarks/peer_rllib.py times: RLlib's stock distribution for MultiDiscrete([2] * N) returns one joint
    log-prob per image; the engine's per-pixel categorical returns N, one per pixel agent."""

    (row,) = distributions(sizes=(8,), batches=(2,), repeats=1)
    assert row["stock_multidiscrete_logp_shape"] == [2] and row["per_pixel_categorical_logp_shape"] == [2, 64]
    assert row["stock_multidiscrete_ms"] > 0 and row["per_pixel_categorical_ms"] > 0


def test_a_remote_learner_trains_and_its_weights_reach_the_mirror_and_back():
    """``rllib_learners=1``: the learner is a Ray actor (as a GPU learner beside a CPU-only driver would be). The
    engine reads and writes its weights through the learner group's public state API: updates change them, the
    agent's mirror equals them, and weights put back (a resume) are what the remote learner then holds."""

    engine = RLlibAPPOEngine(_cfg("optim.batch_size=2", "ray.rllib_learners=1", "ray.learner_cpus=0.5", "ray.learner_gpus=0"),
                               quiet=True)
    try:
        engine.setup()
        assert not engine.algo.learner_group.is_local
        start = copy.deepcopy(engine.learner_weights())
        assert start.keys() == engine.agent.model.state_dict().keys()
        updates = 0
        for _ in range(20):
            updates += bool(engine.step())
            if updates == 3:
                break
        assert updates == 3 and engine.agent.update == 3
        after = engine.learner_weights()
        assert any(not torch.equal(start[k], after[k]) for k in start), "3 updates changed no weight"
        mirrored = engine.agent_state()["model"]
        for k, v in after.items():
            torch.testing.assert_close(mirrored[k].cpu(), v, rtol=0, atol=0)
        engine._load_weights(start)
        for k, v in engine.learner_weights().items():
            torch.testing.assert_close(v, start[k], rtol=0, atol=0)
    finally:
        engine.close()


def test_the_stock_multidiscrete_path_trains_with_rllibs_own_learner():
    """benchmarks/peer_rllib.py's stock arm is a real APPO run (finite losses, asserted inside), timed beside the
    engine's per-pixel path from the same config."""

    row = stock_training(updates=1, size=16, batch=2)
    assert row["updates_timed"] == 1 and row["t_max"] == 3
    for arm in ("stock_multidiscrete", "per_pixel_categorical"):
        assert row[arm]["s_per_update"] > 0
        assert row[arm]["pixel_agent_steps_per_s"] == pytest.approx(2 * 3 * 16 * 16 / row[arm]["s_per_update"], rel=0.03)
