"""Validation of a :class:`TrainConfig`: each section's values, then the choices that must fit together."""

from __future__ import annotations

from pixelrl_env.env import ACTION_SETS
from rl_agents.algo.accel import PRECISIONS
from rl_agents.algo.model import ATTN_STRIDES, PRESETS, STEP_FEATURES
from rl_agents.algo.rollout import ROLLOUT_MODES
from rl_agents.config.sections import TrainConfig

ENGINES = ("auto", "local", "ray", "hogwild", "rllib_appo")
Checks = list[tuple[bool, str]]


def _run_checks(cfg: TrainConfig) -> Checks:
    return [
        (cfg.model in ("pixeldrl", "unet"), f"model must be 'pixeldrl' or 'unet', got {cfg.model!r}"),
        (cfg.engine in ENGINES, f"engine must be one of {ENGINES}, got {cfg.engine!r}"),
        (cfg.engine not in ("ray", "hogwild") or cfg.num_workers >= 1,
         f"engine {cfg.engine} needs num_workers >= 1, got {cfg.num_workers}"),
        (cfg.model == "pixeldrl" or cfg.engine in ("auto", "local"),
         f"the U-Net baseline trains in one process (engine auto or local), got engine {cfg.engine!r}"),
        (cfg.num_workers >= 0, f"num_workers must be >= 0, got {cfg.num_workers}"),
        (cfg.data.size is None or cfg.data.size % 4 == 0, f"data.size must be divisible by 4, got {cfg.data.size}"),
    ]


def _network_checks(cfg: TrainConfig) -> Checks:
    n = cfg.network
    return [
        (n.norm in ("group", "none"), f"network.norm must be 'group' or 'none', got {n.norm!r}"),
        (n.preset in PRESETS, f"network.preset must be one of {sorted(PRESETS)}, got {n.preset!r}"),
        (n.step_features in STEP_FEATURES,
         f"network.step_features must be one of {STEP_FEATURES}, got {n.step_features!r}"),
        (n.head_stride in (1, 2), f"network.head_stride must be 1 or 2, got {n.head_stride}"),
        (n.attn_stride in ATTN_STRIDES, f"network.attn_stride must be one of {ATTN_STRIDES}, got {n.attn_stride}"),
        (n.step_features == "every" or not cfg.compute.compile,
         "compute.compile wraps the network's whole-observation forward; step_features=once runs encode and step "
         "instead, which it would leave uncompiled: use compile with network.step_features=every"),
        (cfg.engine != "rllib_appo" or n.step_features == "every",
         "engine rllib_appo passes observations (image x mask) to the network: it needs network.step_features=every"),
    ]


def _pa3c_checks(cfg: TrainConfig) -> Checks:
    p = cfg.pa3c
    return [
        (p.action_set in ACTION_SETS, f"pa3c.action_set must be one of {sorted(ACTION_SETS)}, got {p.action_set!r}"),
        (p.bootstrap in ("terminal", "value"), f"pa3c.bootstrap must be 'terminal' or 'value', got {p.bootstrap!r}"),
        (p.t_max >= 1, f"pa3c.t_max must be >= 1, got {p.t_max}"),
        (p.rollout_mode in ROLLOUT_MODES, f"pa3c.rollout_mode must be one of {ROLLOUT_MODES}, got {p.rollout_mode!r}"),
        (p.entropy_coef_final is None or p.entropy_coef_final >= 0,
         f"pa3c.entropy_coef_final must be >= 0 or null, got {p.entropy_coef_final}"),
        (0 < p.gamma <= 1, f"pa3c.gamma must be in (0, 1], got {p.gamma}"),
        (p.reward_kernel >= 1 and p.reward_kernel % 2 == 1, f"pa3c.reward_kernel must be odd, got {p.reward_kernel}"),
    ]


def _optim_budget_compute_checks(cfg: TrainConfig) -> Checks:
    o, b, c = cfg.optim, cfg.budget, cfg.compute
    return [
        (o.lr_warmup_updates >= 0, f"optim.lr_warmup_updates must be >= 0, got {o.lr_warmup_updates}"),
        (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
        (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
        (b.epochs >= 1, f"budget.epochs must be >= 1, got {b.epochs}"),
        (b.max_updates is None or b.max_updates >= 1, f"budget.max_updates must be >= 1 or null, got {b.max_updates}"),
        (c.device in ("auto", "cpu", "cuda"), f"compute.device must be auto, cpu or cuda, got {c.device!r}"),
        (c.precision in PRECISIONS, f"compute.precision must be one of {PRECISIONS}, got {c.precision!r}"),
        (cfg.engine != "hogwild" or not c.channels_last,
         "engine hogwild shares its parameters in memory as they are laid out; compute.channels_last would copy them"),
    ]


def _ray_checks(cfg: TrainConfig) -> Checks:
    r = cfg.ray
    return [
        (r.worker_cpus > 0, f"ray.worker_cpus must be > 0, got {r.worker_cpus}"),
        (r.head_timeout_s is None or r.head_timeout_s > 0,
         f"ray.head_timeout_s must be > 0 seconds or null, got {r.head_timeout_s}"),
        (r.learner_max_restarts >= 0, f"ray.learner_max_restarts must be >= 0, got {r.learner_max_restarts}"),
        (r.worker_timeout_s is None or r.worker_timeout_s > 0,
         f"ray.worker_timeout_s must be > 0 seconds or null, got {r.worker_timeout_s}"),
        (r.learner_cpus >= 0, f"ray.learner_cpus must be >= 0, got {r.learner_cpus}"),
        (r.rllib_learners >= 0, f"ray.rllib_learners must be >= 0, got {r.rllib_learners}"),
        (r.learner_gpus is None or r.learner_gpus >= 0,
         f"ray.learner_gpus must be >= 0 or null, got {r.learner_gpus}"),
        (r.staleness_bound is None or r.staleness_bound >= 0,
         f"ray.staleness_bound must be >= 0 or null, got {r.staleness_bound}"),
        (r.stale_policy in ("drop", "downweight"),
         f"ray.stale_policy must be drop or downweight, got {r.stale_policy!r}"),
        (r.rollouts_per_call >= 1, f"ray.rollouts_per_call must be >= 1, got {r.rollouts_per_call}"),
        (r.worker_slowdown is None or (len(r.worker_slowdown) <= max(cfg.num_workers, 0)
                                       and all(float(f) >= 1 for f in r.worker_slowdown)),
         f"ray.worker_slowdown needs at most num_workers factors, each >= 1, got {r.worker_slowdown}"),
    ]


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` with one line naming the first key that is out of range."""
    cfg.data.validate()
    for ok, msg in [*_run_checks(cfg), *_network_checks(cfg), *_pa3c_checks(cfg),
                    *_optim_budget_compute_checks(cfg), *_ray_checks(cfg)]:
        if not ok:
            raise ValueError(msg)
