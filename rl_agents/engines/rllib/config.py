"""The APPO config that ties the env, module, connector and learner together (imports RLlib)."""

from __future__ import annotations

from ray.rllib.algorithms.appo import APPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from rl_agents.config import TrainConfig, to_dict
from rl_agents.engines.rllib.connector import PixelRewardMapToBatch
from rl_agents.engines.rllib.env import PixelSegRLlibEnv
from rl_agents.engines.rllib.learner import PixelAPPOTorchLearner
from rl_agents.engines.rllib.module import PixelDRLRLModule


def _learner_connector(obs_space, act_space):
    return PixelRewardMapToBatch()


def build_config(cfg: TrainConfig, crash_once_file: str | None = None, learner_gpus: float = 0):
    """An APPO config for ``cfg``: ``num_workers`` remote env runners (0: sampling in this process),
    ``rllib_learners`` remote learners (0: the learner in this process, on a GPU when ``learner_gpus``), one update
    per ``train()`` on ``batch_size`` complete episodes.

    What makes it a fair peer of our A3C (RLlib's defaults would not be): the circular buffer off (it replays each
    batch twice), no 10 s minimum per ``train()``, runners restarted after 0.5 s instead of 60 s, and
    ``vf_loss_coeff = 2 * value_coef`` because APPO's value loss already carries a 0.5.
    """
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
            num_envs_per_env_runner=cfg.optim.batch_size,
            gym_env_vectorize_mode="sync",
            rollout_fragment_length=cfg.pa3c.t_max,
            batch_mode="complete_episodes",
            num_cpus_per_env_runner=cfg.ray.worker_cpus if remote else 1,
            sample_timeout_s=120.0,
        )
        .learners(num_learners=cfg.ray.rllib_learners, num_gpus_per_learner=learner_gpus,
                  num_cpus_per_learner=cfg.ray.learner_cpus if cfg.ray.rllib_learners else "auto",
                  learner_class=PixelAPPOTorchLearner, learner_connector=_learner_connector)
        .training(
            train_batch_size_per_learner=cfg.optim.batch_size * cfg.pa3c.t_max,
            lr=cfg.optim.lr, gamma=cfg.pa3c.gamma, grad_clip=cfg.optim.grad_clip, grad_clip_by="global_norm",
            vf_loss_coeff=2 * cfg.pa3c.value_coef, entropy_coeff=cfg.pa3c.entropy_coef, clip_param=0.4, use_kl_loss=False,
            use_circular_buffer=False,
            # still read by APPO's target-update rule with the buffer off: 1 keeps it one update
            circular_buffer_num_batches=1, circular_buffer_iterations_per_batch=1, target_network_update_freq=1,
            broadcast_interval=1,
            # with remote runners, wait up to 1 s for a sample (default 0: train() often returns with nothing)
            timeout_s_sampler_manager=1.0 if remote else 0.0,
            simple_queue_size=2,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=PixelDRLRLModule, model_config={"cfg": cfg_dict}))
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=0,
                   min_train_timesteps_per_iteration=0, metrics_num_episodes_for_smoothing=cfg.optim.batch_size)
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=cfg.ray.worker_max_restarts,
                         delay_between_env_runner_restarts_s=0.5, env_runner_health_probe_timeout_s=10.0)
        .evaluation(evaluation_interval=None)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )
