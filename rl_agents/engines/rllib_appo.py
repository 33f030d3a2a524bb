"""PA3C's problem under RLlib's APPO (Ray 2.60, new API stack): the same env, network, data, run lifecycle and
checkpoints as the other engines, trained by RLlib (``engine: rllib_appo``).

RLlib is what a Ray user reaches for first, and APPO is its asynchronous actor-learner (A3C left RLlib in 2.9). Its
stock path cannot train a pixel agent: a ``MultiDiscrete([2] * H * W)`` action space becomes one Python distribution
per pixel (about 1 s per 64x64 image) with one joint log-prob per step, so per-pixel credit is lost. Here:

* :class:`PixelSegRLlibEnv`: one image per episode, the flat ``MultiDiscrete`` space RLlib's catalog accepts, the
  mean of the reward map as the scalar reward RLlib needs, and the map itself in ``info``; ``terminated`` at t_max.
* :class:`PixelDRLRLModule`: :class:`~rl_agents.algo.model.PixelDRLNet` as a ``TorchRLModule``. Logits shaped
  ``(B, H*W, A)`` read by ``TorchCategorical`` give a per-pixel sample, log-prob and entropy in one tensor op; values
  are per pixel; a frozen copy of the net is APPO's target (old) policy.
* :class:`PixelRewardMapToBatch`: a learner connector that puts the reward maps into the train batch, row t getting
  ``infos[t+1]`` (the reward of action t), zeros on the bootstrap row IMPALA's pipeline appends to every episode.
* :class:`PixelAPPOTorchLearner`: APPO's loss with V-trace over ``(T, B, N)`` and the clipped surrogate, value and
  entropy terms each a mean over valid timesteps x pixels.

Episodes end ``terminated`` at t_max and train whole (``batch_mode="complete_episodes"``): with 2.60's discount
``gamma * (1 - terminated) * loss_mask``, a bootstrap value at a truncated chunk end cancels (tests/test_rllib_appo.py
checks both). One ``train()`` = one update on ``batch_size`` complete episodes, as one update of our engines.

Not carried over from PA3C (the comparison in ``benchmarks/peer_rllib.py`` states it): the learnable reward-map
kernel (V-trace uses the identity), the learning-rate decay and warm-up, the entropy schedule and ``adv_norm``; a
resumed run restores the weights and the update count, not Adam's moments (RLlib keeps those inside the learner).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from pixelrl_env.dataset import load_part
from pixelrl_env.env import ACTION_SETS, PixelSegEnv
from rl_agents.algo.agent import PA3CAgent, build_network, make_augment
from rl_agents.algo.model import count_parameters, forward_flops
from rl_agents.config import TrainConfig, config_from_dict, to_dict
from rl_agents.engines.base import InProcessEngine, evaluate_arrays
from rl_agents.engines.ray_runtime import connect

REWARD_MAP = "reward_map"  # info key (env) and train-batch column (learner connector)
MODULE = "default_policy"

_PARTS: dict[str, Any] = {}


def _train_part(cfg_dict: dict):
    """The training split, read once per process: RLlib builds ``num_envs_per_env_runner`` envs in one process."""
    key = json.dumps(cfg_dict["data"], sort_keys=True, default=str)
    if key not in _PARTS:
        _PARTS[key] = load_part(config_from_dict(cfg_dict).data, "train")
    return _PARTS[key]


class PixelSegRLlibEnv(gym.Env):
    """:class:`pixelrl_env.env.PixelSegEnv` for RLlib: one image per episode, a flat action space.

    ``env_config``: ``cfg`` (a :class:`TrainConfig` as a dict) and, for fault-injection tests, ``crash_once_file``:
    the first ``step`` that finds this path absent creates it and raises (once per machine, across restarts).

    Observation: ``Box(C, H, W) float32`` as PixelSegEnv's. Action: ``MultiDiscrete([A] * H * W)`` (a 2-D ``nvec``
    fails in RLlib's catalog). Reward: the mean of the per-pixel reward map; ``info["reward_map"]``: the map,
    ``(H*W,) float32``. ``terminated`` at t_max.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_config: dict | None = None):
        env_config = dict(env_config or {})
        cfg_dict = env_config["cfg"]
        cfg = config_from_dict(cfg_dict)
        part = _train_part(cfg_dict)
        self.inner = PixelSegEnv(part.images, part.masks, batch_size=None, t_max=cfg.t_max, action_set=cfg.action_set,
                                 transform=make_augment(cfg))
        _, h, w = self.inner.observation_space.shape
        self.hw = (h, w)
        self.observation_space = self.inner.observation_space
        self.action_space = spaces.MultiDiscrete(np.full(h * w, ACTION_SETS[cfg.action_set], dtype=np.int64))
        self.crash_once_file = env_config.get("crash_once_file")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self.inner.reset(seed=seed, options=options)
        return obs, {}

    def step(self, action):
        if self.crash_once_file and not os.path.exists(self.crash_once_file):
            with open(self.crash_once_file, "w") as f:
                f.write(f"crashed in pid {os.getpid()}\n")
            raise RuntimeError("injected env failure (crash_once_file)")
        obs, reward, terminated, truncated, info = self.inner.step(np.asarray(action, dtype=np.int64).reshape(self.hw))
        return obs, float(reward), terminated, truncated, {
            REWARD_MAP: info["reward_map"].reshape(-1).astype(np.float32, copy=False)}


def _define_classes():
    """The RLlib subclasses, defined when RLlib is imported (module scope would import it for every engine)."""
    from ray.rllib.algorithms.appo.appo import LEARNER_RESULTS_CURR_KL_COEFF_KEY, LEARNER_RESULTS_KL_KEY
    from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
    from ray.rllib.connectors.connector_v2 import ConnectorV2
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
    from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
    from ray.rllib.core.learner.utils import make_target_network
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, ValueFunctionAPI
    from ray.rllib.core.rl_module.torch import TorchRLModule

    class PixelDRLRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI):
        """PixelDRLNet as an RLModule (``model_config["cfg"]``: the run's TrainConfig as a dict).

        ``ACTION_DIST_INPUTS``: logits ``(B, H*W, A)``, so ``TorchCategorical`` samples ``(B, H*W)`` and gives
        per-pixel log-probs and entropies. ``_forward_train`` also returns the values as ``EMBEDDINGS``: one pass
        gives both heads, as in our rollout. The bootstrap row IMPALA appends (``loss_mask`` False) is never read
        by the loss (its discount is 0), so the learner's passes skip it: ``1 / (t_max + 1)`` of their work.
        """

        def setup(self):
            c = self.observation_space.shape[0]
            self.net = build_network(config_from_dict(self.model_config["cfg"]), c)
            self.action_dist_cls = TorchCategorical

        @staticmethod
        def _flat(logits: torch.Tensor) -> torch.Tensor:  # (B, A, H, W) -> (B, H*W, A)
            return logits.flatten(2).transpose(1, 2)

        def _forward(self, batch, **kwargs):
            return {Columns.ACTION_DIST_INPUTS: self._flat(self.net.policy(batch[Columns.OBS]))}

        def _forward_train(self, batch, **kwargs):
            obs, keep = _rows(batch)
            logits, values = self.net(obs)
            return {Columns.ACTION_DIST_INPUTS: _scatter(self._flat(logits), keep),
                    Columns.EMBEDDINGS: _scatter(values.flatten(1), keep)}

        def compute_values(self, batch, embeddings=None):
            """Per-pixel values ``(B, H*W)`` (the API says ``(B,)``; the loss is ours and reads them per pixel)."""
            if embeddings is not None:
                return embeddings
            obs, keep = _rows(batch)
            return _scatter(self.net(obs)[1].flatten(1), keep)

        def make_target_networks(self) -> None:
            self._target_net = make_target_network(self.net)

        def get_target_network_pairs(self):
            return [(self.net, self._target_net)]

        def forward_target(self, batch, **kwargs):
            obs, keep = _rows(batch)
            return {TARGET_NETWORK_ACTION_DIST_INPUTS: _scatter(self._flat(self._target_net.policy(obs)), keep)}

        def get_non_inference_attributes(self):
            return ["_target_net"]

    class PixelRewardMapToBatch(ConnectorV2):
        """Column ``reward_map`` ``(rows, H*W) float32`` of the train batch, aligned with ``actions``: row t of an
        episode gets ``infos[t+1]`` (the reward of action t); the bootstrap row IMPALA's pipeline appended before
        this connector runs gets zeros (it is loss-masked)."""

        def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
            extended = bool((shared_data or {}).get("_added_loss_mask_for_valid_episode_ts"))
            for ep in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
                n = len(ep)
                real = n - 1 if extended else n
                maps = [np.asarray(i[REWARD_MAP], dtype=np.float32) for i in ep.get_infos(slice(1, real + 1))]
                if len(maps) != real:
                    raise ValueError(f"expected {real} infos with {REWARD_MAP!r}, got {len(maps)}")
                if extended:
                    maps.append(np.zeros_like(maps[-1]))
                self.add_n_batch_items(batch, REWARD_MAP, items_to_add=np.stack(maps), num_items=n,
                                       single_agent_episode=ep)
            return batch

    class PixelAPPOTorchLearner(APPOTorchLearner):
        """APPO with per-pixel credit: V-trace over ``(T, B, N)``; each loss term a mean over valid steps x pixels."""

        def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
            module = self.module[module_id].unwrapped()
            loss_mask = batch[Columns.LOSS_MASK].bool()
            T = episode_rows(loss_mask)
            B = loss_mask.shape[0] // T

            def tm(x):  # (B*T, ...) -> (T, B, ...)
                return x.reshape(B, T, *x.shape[1:]).transpose(0, 1)

            dist_cls = module.get_train_action_dist_cls()
            target = dist_cls.from_logits(fwd_out[Columns.ACTION_DIST_INPUTS])
            with torch.no_grad():
                old = dist_cls.from_logits(module.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS])
            actions = batch[Columns.ACTIONS].long()  # (rows, N); env runners send int32
            target_logp, old_logp = target.logp(actions), old.logp(actions)
            behaviour_logp = batch[Columns.ACTION_LOGP]
            values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
            rewards = batch[REWARD_MAP]
            if not (rewards.shape == values.shape == behaviour_logp.shape == actions.shape):
                raise ValueError(f"per-pixel columns disagree: actions {tuple(actions.shape)}, rewards "
                                 f"{tuple(rewards.shape)}, values {tuple(values.shape)}, logp "
                                 f"{tuple(behaviour_logp.shape)}")
            mask = tm(loss_mask.float())  # (T, B)
            vs, adv = pixel_vtrace(behaviour_logp=tm(behaviour_logp), target_logp=tm(old_logp), rewards=tm(rewards),
                                   values=tm(values), terminateds=tm(batch[Columns.TERMINATEDS]), loss_mask=mask,
                                   gamma=config.gamma, clip_rho_threshold=config.vtrace_clip_rho_threshold,
                                   clip_pg_rho_threshold=config.vtrace_clip_pg_rho_threshold)
            m = mask[..., None]
            denom = mask.sum() * actions.shape[1]
            adv = adv * m

            def masked(x):  # log-ratios zeroed where masked first: exp() could overflow there, and inf * 0 is NaN
                return torch.where(m > 0, x, torch.zeros_like(x))

            is_ratio = torch.clip(torch.exp(masked(tm(behaviour_logp) - tm(old_logp))), 0.0, 2.0)
            ratio = is_ratio * torch.exp(masked(tm(target_logp) - tm(behaviour_logp)))
            surrogate = torch.minimum(adv * ratio, adv * torch.clip(ratio, 1 - config.clip_param, 1 + config.clip_param))
            pi_loss = -(surrogate * m).sum() / denom
            vf_loss = 0.5 * (((tm(values) - vs) ** 2) * m).sum() / denom
            entropy = (tm(target.entropy()) * m).sum() / denom
            ent_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
            total = pi_loss + config.vf_loss_coeff * vf_loss - ent_coeff * entropy
            self.metrics.log_dict({POLICY_LOSS_KEY: pi_loss, VF_LOSS_KEY: vf_loss, ENTROPY_KEY: entropy,
                                   LEARNER_RESULTS_KL_KEY: torch.zeros(()),
                                   LEARNER_RESULTS_CURR_KL_COEFF_KEY: self.curr_kl_coeffs_per_module[module_id],
                                   "advantage_mean": adv.sum() / denom, "returns_mean": (vs * m).sum() / denom},
                                  key=module_id, window=1)
            return total

    return PixelDRLRLModule, PixelRewardMapToBatch, PixelAPPOTorchLearner


_CLASSES: tuple | None = None


def classes() -> tuple:
    """``(PixelDRLRLModule, PixelRewardMapToBatch, PixelAPPOTorchLearner)``, defined once per process."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _define_classes()
    return _CLASSES


def _rows(batch):
    """The observations the loss reads, and which rows they are (None: all): the appended bootstrap rows (loss_mask
    False) are skipped."""
    obs = batch["obs"]
    mask = batch.get("loss_mask")
    if mask is None or bool(mask.all()):
        return obs, None
    keep = mask.bool()
    return obs[keep], keep


def _scatter(x: torch.Tensor, keep) -> torch.Tensor:
    """Rows of ``x`` back at the positions of ``keep``; zeros elsewhere (never read by the loss)."""
    if keep is None:
        return x
    out = x.new_zeros((keep.shape[0],) + tuple(x.shape[1:]))
    out[keep] = x
    return out


def episode_rows(loss_mask: torch.Tensor) -> int:
    """The length T of every episode in a batch of complete, equal-length episodes (t_max steps plus the appended
    bootstrap row, whose ``loss_mask`` is False). Raises when the batch is not laid out that way."""
    m = loss_mask.bool()
    false_at = torch.nonzero(~m).flatten()
    if false_at.numel() == 0:
        raise ValueError("no bootstrap row in the batch (is AddOneTsToEpisodesAndTruncate in the pipeline?)")
    T = int(false_at[0]) + 1
    if m.shape[0] % T or bool(m.view(-1, T)[:, -1].any()) or not bool(m.view(-1, T)[:, :-1].all()):
        raise ValueError(f"a batch of {m.shape[0]} rows is not complete episodes of {T - 1} steps each; use "
                         "batch_mode='complete_episodes' and a fixed t_max")
    return T


def pixel_vtrace(*, behaviour_logp, target_logp, rewards, values, terminateds, loss_mask, gamma,
                 clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, bootstrap_values=None):
    """Per-pixel V-trace targets and policy-gradient advantages, each ``(T, B, N)``.

    Inputs time-major: log-probs, rewards, values ``(T, B, N)``; ``terminateds``, ``loss_mask`` ``(T, B)``. The
    discount is RLlib 2.60's, ``gamma * (1 - terminated) * loss_mask``, over every pixel; ``bootstrap_values``
    ``(B, N)`` (zeros if None) is the value after the last row; it never matters when each episode ends
    ``terminated`` before its loss-masked bootstrap row.
    """
    from ray.rllib.algorithms.impala.torch.vtrace_torch_v2 import vtrace_torch

    disc = (gamma * (1.0 - terminateds.float()) * loss_mask.float())[..., None].expand_as(rewards)
    if bootstrap_values is None:
        bootstrap_values = torch.zeros_like(values[0])
    return vtrace_torch(target_action_log_probs=target_logp, behaviour_action_log_probs=behaviour_logp,
                        discounts=disc, rewards=rewards, values=values, bootstrap_values=bootstrap_values,
                        clip_rho_threshold=clip_rho_threshold, clip_pg_rho_threshold=clip_pg_rho_threshold)


def _learner_connector(obs_space, act_space):
    return classes()[1]()


def build_config(cfg: TrainConfig, crash_once_file: str | None = None, learner_gpus: float = 0):
    """An APPO config for ``cfg``: ``num_workers`` remote env runners (0: sampling in this process),
    ``rllib_learners`` remote learners (0: the learner in this process, on a GPU when ``learner_gpus``), one update
    per ``train()`` on ``batch_size`` complete episodes.

    What makes it a fair peer of our A3C (RLlib's defaults would not be): the circular buffer off (it replays each
    batch twice), no 10 s minimum per ``train()``, runners restarted after 0.5 s instead of 60 s, and
    ``vf_loss_coeff = 2 * value_coef`` because APPO's value loss already carries a 0.5.
    """
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    module_cls, _, learner_cls = classes()
    cfg_dict = to_dict(cfg)
    remote = cfg.num_workers > 0
    return (
        APPOConfig()
        .framework("torch")
        .environment(PixelSegRLlibEnv, env_config={"cfg": cfg_dict, "crash_once_file": crash_once_file})
        .env_runners(
            num_env_runners=cfg.num_workers,
            # APPO samples in this process whenever no remote runner is healthy (one restarting); without a local
            # env that fallback fails with "doesn't have an env!"
            create_env_on_local_worker=True,
            num_envs_per_env_runner=cfg.batch_size,
            gym_env_vectorize_mode="sync",
            rollout_fragment_length=cfg.t_max,
            batch_mode="complete_episodes",
            num_cpus_per_env_runner=cfg.worker_cpus if remote else 1,
            sample_timeout_s=120.0,
        )
        .learners(num_learners=cfg.rllib_learners, num_gpus_per_learner=learner_gpus,
                  num_cpus_per_learner=cfg.learner_cpus if cfg.rllib_learners else "auto",
                  learner_class=learner_cls, learner_connector=_learner_connector)
        .training(
            train_batch_size_per_learner=cfg.batch_size * cfg.t_max,
            lr=cfg.lr, gamma=cfg.gamma, grad_clip=cfg.grad_clip, grad_clip_by="global_norm",
            vf_loss_coeff=2 * cfg.value_coef, entropy_coeff=cfg.entropy_coef, clip_param=0.4, use_kl_loss=False,
            use_circular_buffer=False,
            # still read by APPO's target-update rule with the buffer off: 1 keeps it one update
            circular_buffer_num_batches=1, circular_buffer_iterations_per_batch=1, target_network_update_freq=1,
            broadcast_interval=1,
            # with remote runners, wait up to 1 s for a sample (default 0: train() often returns with nothing)
            timeout_s_sampler_manager=1.0 if remote else 0.0,
            simple_queue_size=2,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls, model_config={"cfg": cfg_dict}))
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0,
                   min_train_timesteps_per_iteration=0, metrics_num_episodes_for_smoothing=cfg.batch_size)
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=cfg.worker_max_restarts,
                         delay_between_env_runner_restarts_s=0.5, env_runner_health_probe_timeout_s=10.0)
        .evaluation(evaluation_interval=None)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )


def learner_gpus(cfg: TrainConfig, cluster_gpus: float, torch_sees_cuda: bool) -> float:
    """GPUs per learner: ``learner_gpus``, or (null) 1 where a learner can have one: the cluster has a GPU for a
    remote learner, torch sees one for a learner in this process."""
    if cfg.learner_gpus is not None:
        return cfg.learner_gpus
    return 1 if (cluster_gpus >= 1 if cfg.rllib_learners else torch_sees_cuda) else 0


def rllib_bundles(cfg: TrainConfig, driver_cpus: float, cluster_gpus: float) -> list[dict[str, float]]:
    """A sweep trial's placement group: the trial's driver (with the learner, and its GPU, when it is local), one
    bundle per remote env runner, one per remote learner."""
    gpus = learner_gpus(cfg, cluster_gpus, torch_sees_cuda=cluster_gpus >= 1)
    driver = {"CPU": driver_cpus, **({"GPU": gpus} if gpus and not cfg.rllib_learners else {})}
    learner = {"CPU": cfg.learner_cpus, **({"GPU": gpus} if gpus else {})}
    return [driver, *[{"CPU": cfg.worker_cpus}] * cfg.num_workers, *[learner] * cfg.rllib_learners]


class RLlibAPPOEngine(InProcessEngine):
    """RLlib APPO behind the run lifecycle. One step = one ``algo.train()`` = one update.

    ``self.agent`` mirrors the learner's weights (copied when read: evaluation, checkpoints), so checkpoints are
    PA3C agent states: ``pixeldrl evaluate``, ``predict`` and ``export`` take them like any other.
    """

    name = "rllib_appo"

    def __init__(self, cfg: TrainConfig, quiet: bool = False, crash_once_file: str | None = None):
        self.cfg, self.quiet, self.crash_once_file = cfg, quiet, crash_once_file
        self.pixel_agent_steps = 0
        self.started = False
        self.algo = None
        self._mirrored = -1
        self.env_runner_restarts = 0

    def setup(self, resume=None) -> dict[str, Any]:
        cfg = self.cfg
        self.train_set, self.val_set = self._prepare()
        in_channels, size = self.train_set.images.shape[1], self.train_set.images.shape[-1]
        self.agent = PA3CAgent(cfg, in_channels, len(self.train_set), self.device, optimizer=False)
        if resume is not None:
            self.agent.load_state_dict(resume.agent, weights_only=True)
            self.agent.update = resume.update
            self.pixel_agent_steps = int(resume.run.get("pixel_agent_steps", 0))
        cpus = cfg.num_workers * cfg.worker_cpus + cfg.rllib_learners * cfg.learner_cpus + 1
        self.started = connect(cfg.ray_address, cpus)
        self.algo = build_config(cfg, self.crash_once_file, learner_gpus=self._learner_gpus()).build_algo()
        if resume is not None:
            self._load_weights(self.agent.model.state_dict())
        self._mirrored = self.agent.update
        n_params = count_parameters(self.agent.model)
        self.flops = forward_flops(self.agent.model.cpu(), in_channels, size)
        self.agent.model.to(self.device)
        where = f"{cfg.num_workers} remote env runner(s)" if cfg.num_workers else "sampling in this process"
        where += f", {cfg.rllib_learners} remote learner(s)" if cfg.rllib_learners else ", learner in this process"
        return {"n_train": len(self.train_set), "n_val": len(self.val_set), "params": n_params,
                "gflop_per_image_step": self.flops / 1e9,
                "banner": f"data: {len(self.train_set)} train / {len(self.val_set)} val slices; model {cfg.preset}: "
                          f"{n_params:,} parameters; RLlib APPO ({where}); "
                          f"{self.agent.total_updates} updates planned"}

    def _learner_gpus(self) -> float:
        import ray

        return learner_gpus(self.cfg, ray.cluster_resources().get("GPU", 0), torch.cuda.is_available())

    def learner_weights(self) -> dict[str, torch.Tensor]:
        """The learner's network weights, through the learner group's public state API: the same call reads a
        learner in this process or a remote one (``num_learners > 0``), where RLlib hands back numpy arrays."""
        state = self.algo.learner_group.get_weights([MODULE])[MODULE]
        return {k[len("net."):]: torch.as_tensor(v) for k, v in state.items() if k.startswith("net.")}

    def _load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Put weights into the learner's net and its target, then send them to the env runners."""
        both = {f"{prefix}.{k}": v for prefix in ("net", "_target_net") for k, v in state.items()}
        self.algo.learner_group.set_weights({MODULE: both})
        self.algo.env_runner_group.sync_weights(from_worker_or_learner_group=self.algo.learner_group,
                                                inference_only=True)

    def _mirror(self) -> None:
        if self._mirrored != self.agent.update:
            self.agent.model.load_state_dict(self.learner_weights())  # copies: the mirror never aliases the learner
            self._mirrored = self.agent.update

    def step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        res = self.algo.train()
        learner = (res.get("learners") or {}).get(MODULE, {})
        if not learner:  # no sample reached the learner (runners restarting): no update this time
            return {}
        self.agent.update += 1
        h, w = self.train_set.images.shape[-2:]
        self.pixel_agent_steps += self.cfg.batch_size * self.cfg.t_max * h * w
        self.env_runner_restarts = int((res.get("fault_tolerance") or {}).get("num_remote_worker_restarts", 0))
        # the env's scalar reward is the mean of the reward map: times H*W, the summed per-pixel return as PA3C's
        ret = float((res.get("env_runners") or {}).get("episode_return_mean", float("nan"))) * h * w
        return {"train/return": ret, "losses/policy": float(learner.get("policy_loss", float("nan"))),
                "losses/value": float(learner.get("vf_loss", float("nan"))),
                "losses/entropy": float(learner.get("entropy", float("nan"))),
                "charts/advantage_mean": float(learner.get("advantage_mean", float("nan"))),
                "charts/returns_mean": float(learner.get("returns_mean", float("nan"))),
                "perf/step_s": time.perf_counter() - t0}

    def _evaluate(self, max_images: int | None) -> dict[str, float]:
        self._mirror()
        return evaluate_arrays(self.agent.model, self.val_set, self.cfg, self.device, max_images)

    def agent_state(self) -> dict[str, Any]:
        self._mirror()
        return self.agent.state_dict()

    def start_eval(self, max_images: int | None):
        self._mirror()
        return super().start_eval(max_images)

    def rng_state(self) -> dict[str, Any]:
        return {}  # RLlib seeds its runners from (seed, runner index); a resumed run does not replay the stream

    def perf(self, wall: float) -> dict[str, float]:
        return {"perf/pixel_agent_steps_per_s": self.pixel_agent_steps / max(wall, 1e-9),
                "perf/updates_per_s": self.agent.update / max(wall, 1e-9),
                "workers/restarts": self.env_runner_restarts}

    def close(self) -> None:
        import ray

        if self.algo is not None:
            self.algo.stop()
            self.algo = None
        if self.started:
            ray.shutdown()
            self.started = False
