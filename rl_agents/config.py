"""One typed training configuration, loaded from YAML with ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelrl_env.data_config import DataConfig


def _default_data() -> DataConfig:
    # 64 px keeps the README's main job inside 10 minutes on 2 cores; real-data configs use 128 or native 256
    return DataConfig(
        format="synthetic",
        size=64,
        synthetic={"n_patients": 40, "slices_per_patient": 8, "size": 64, "difficulty": "easy"},
    )


# The paper's PA3C step as --set overrides. tune_configs/lgg_cpu.yaml and heart_cpu.yaml carry issue 23's cheaper
# recipe instead, so the benchmarks and sweeps whose recorded figures used the paper's step pin these.
PAPER_STEP = ("t_max=10", "step_features=every", "head_stride=1")

@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the README's main job (``small`` preset, synthetic data)."""

    data: DataConfig = field(default_factory=_default_data)
    model: str = "pixeldrl"  # pixeldrl | unet (the supervised baseline)
    # network
    preset: str = "small"  # small (CPU) | paper (7.0M parameters, GPU)
    attention: bool = True  # paper ablation: self-attention block on/off
    dilation: bool = True  # paper ablation: dilated convolutions on/off
    norm: str = "group"  # group (GroupNorm after each conv; ours, the paper does not say) | none
    init_keep_prob: float | None = None  # start near "do nothing" (e.g. 0.9); null = PyTorch default init (paper)
    # every: each step runs the whole network on image x mask (the paper) | once (ours): the trunk encodes the image
    # once per episode and each step runs only the heads on [features, mask] (rl_agents/algo/model.py)
    step_features: str = "every"
    head_stride: int = 1  # 2 (ours): policy and value heads at half resolution, outputs upsampled bilinearly
    attn_stride: int = 1  # 2 or 4 (ours): self-attention over features pooled 2x2 or 4x4, output upsampled
    # environment and PA3C
    action_set: str = "paper"  # paper (set background / do nothing) | three (+ set foreground; ours)
    t_max: int = 10
    gamma: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    bootstrap: str = "terminal"  # terminal: R_T = 0, the episode ends at t_max (PixelRL's code) | value: R_T = V(s_T)
    reward_kernel: int = 5  # side of the learnable reward-map kernel (PixelRL: 33; the paper does not say)
    aux_coef: float = 0.0  # NOT in the paper: supervised term towards the oracle action (0 = pure PA3C)
    # online: each step's forward keeps its graph | recompute: steps without autograd, then one batched forward and
    # backward over all T x B observations (the same gradients; rl_agents/algo/rollout.py)
    rollout_mode: str = "online"
    # options to close the gap to the U-Net, each NOT in the paper and off by default (the paper's row)
    adv_norm: bool = False  # advantages of the policy term scaled to mean 0, std 1 per rollout
    entropy_coef_final: float | None = None  # entropy_coef moves linearly to this over the planned updates
    lr_warmup_updates: int = 0  # learning rate ramps linearly from lr / N to lr over the first N updates
    augment: bool = False  # flips, +-10 deg rotation, +-10 % scale, intensity and bias-field jitter (both models)
    # optimisation
    batch_size: int = 8  # images per rollout (the paper: 2)
    lr: float = 1e-3
    lr_decay: float = 0.9  # multiply the learning rate by this ...
    lr_decay_epochs: int = 25  # ... every this many epochs (the paper: 0.9 every 25)
    epochs: int = 50  # the paper: 200 (see tune_configs/paper_brain.yaml)
    max_minutes: float | None = 10.0  # stop earlier when this wall-clock budget is spent (null: no limit)
    max_updates: int | None = None  # stop after this many updates (equal-work comparisons, e.g. ablation rows)
    stop_at_val_dice: float | None = None  # stop once a validation pass reaches this Dice (time-to-accuracy runs)
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: all cores)
    device: str = "auto"  # auto | cpu | cuda
    # how the network runs (rl_agents/algo/accel.py): fp32 (strict) | tf32 (NVIDIA tensor cores; = fp32 on CPU) |
    # bf16 (autocast forward, float32 loss and optimiser); NHWC layout; a torch.compile backend (inductor) or null
    precision: str = "tf32"
    channels_last: bool = False
    compile: str | None = None
    # distribution on Ray (rl_agents/engines/ray_a3c.py, ray_actors.py): 0 workers = one process trains alone (rl_agents/engines/local.py)
    # engine (rl_agents/experiment/lifecycle.py::make_engine): auto = supervised for the U-Net, ray when num_workers
    # >= 1, else local; hogwild = num_workers torch.multiprocessing processes on this machine (the classic A3C)
    engine: str = "auto"  # auto | local | ray | hogwild | rllib_appo (RLlib APPO: num_workers = env runners)
    num_workers: int = 0  # N >= 1: asynchronous A3C, one learner actor and N worker actors, no barrier
    worker_cpus: float = 1.0  # Ray CPUs per worker; its torch threads = max(1, round(worker_cpus))
    learner_cpus: float = 0.5
    learner_gpus: float | None = None  # null: 1 when the cluster has a GPU, else 0; the learner uses CPU if torch sees none
    rllib_learners: int = 0  # engine rllib_appo: 0 = its learner in the driver; n = n remote learner actors (each
    # learner_cpus, learner_gpus), data-parallel: a GPU learner apart from a CPU-only driver, or several GPUs
    staleness_bound: int | None = None  # gradients computed on weights older than this many updates are ...
    stale_policy: str = "drop"  # ... dropped, or "downweight"ed by 1 / (1 + staleness - bound); both counted
    rollouts_per_call: int = 4  # rollouts a worker runs (pushing each) before it reports to the driver
    worker_max_restarts: int = 5  # a dead worker is restarted by Ray this many times, then the run fails
    # a work call (rollouts_per_call rollouts) that has not returned after this many seconds is taken for a hung
    # worker: it is killed and Ray restarts it (counted against worker_max_restarts); null waits forever
    worker_timeout_s: float | None = 600.0
    # a dead learner actor is rebuilt from checkpoints/last.pt (or the initial weights before the first checkpoint)
    # this many times; workers then refetch its weights. 0: a dead learner ends the run with a clear error
    learner_max_restarts: int = 3
    # the driver ends the run (exit status 75, a clear message; last.pt as last written) when the Ray head's GCS
    # refuses connections (stopped) or has not answered for this many seconds (unreachable); without this, Ray ends
    # the driver silently or it hangs on actors that died with the head (HeadWatchdog). null: never
    head_timeout_s: float | None = 20.0
    ray_address: str | None = None  # null: RAY_ADDRESS if set (as under `ray job submit`), else a local Ray
    report_every_s: float = 10.0  # seconds between throughput lines and history entries
    worker_slowdown: list[float] | None = None  # benchmarks only: worker i sleeps so a rollout takes factor[i] x
    # tracking (rl_agents/experiment/tracking.py)
    mlflow: bool = True  # record the run in MLflow (MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)
    experiment: str = "pixeldrl"
    run_name: str | None = None  # null: the output directory's name
    # evaluation and checkpoints
    eval_every: int = 50  # updates between validation passes
    eval_max_images: int | None = 64
    checkpoint_every: int = 50  # updates between last.pt writes


ENGINES = ("auto", "local", "ray", "hogwild", "rllib_appo")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """YAML reads '3e-4' as a string (YAML 1.1 floats need a dot); convert by the field's declared type."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is Any:
            return None
        raise ValueError(f"config key {key} cannot be null")
    base = next((a for a in args if a is not type(None)), tp) if args and type(None) in args else tp
    try:
        if base is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if base is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    except ValueError:
        raise ValueError(f"config key {key} expects {getattr(base, '__name__', base)}, got {value!r}") from None
    if base in (int, float, bool, str) and not isinstance(value, base if base is not float else (int, float)):
        raise ValueError(f"config key {key} expects {base.__name__}, got {value!r}")
    return value


def _from_dict(cls, d: dict, prefix: str = ""):
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix or '<root>'} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(names)}")
    kwargs = {}
    types = _field_types(cls)
    for k, v in d.items():
        if dataclasses.is_dataclass(types[k]):
            base = getattr(cls(), k)
            merged = {**dataclasses.asdict(base), **(v or {})}
            kwargs[k] = _from_dict(types[k], merged, prefix + k + ".")
        elif k == "split" and isinstance(v, list):
            kwargs[k] = tuple(float(x) for x in v)
        else:
            kwargs[k] = _coerce(v, types[k], prefix + k)
    return cls(**kwargs)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping; errors name the file and what it is (``what``: "config", "sweep")."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:  # one line with the place, not the parser's traceback
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{what} file {where}: not valid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} file {p} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``key=value`` overrides (values parsed as YAML: 1e-3, true, [1], null)."""
    raw: dict = dataclasses.asdict(TrainConfig())
    if path is not None:
        for k, v in read_yaml_mapping(path, "config").items():
            if k == "data" and isinstance(v, dict):
                raw["data"] = {**raw["data"], **v}
            else:
                raw[k] = v
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
        _set_dotted(raw, k.strip(), value)
    cfg = _from_dict(TrainConfig, raw)
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a config saved as a dict (e.g. in a checkpoint); keys it lacks take today's defaults."""
    return _from_dict(TrainConfig, d)


def _cost_option_checks(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """Issue 23's options (rl_agents/algo/model.py, rollout.py): known values, and the engines they fit."""
    from rl_agents.algo.model import ATTN_STRIDES, STEP_FEATURES
    from rl_agents.algo.rollout import ROLLOUT_MODES

    return [
        (cfg.step_features in STEP_FEATURES, f"step_features must be one of {STEP_FEATURES}, got {cfg.step_features!r}"),
        (cfg.head_stride in (1, 2), f"head_stride must be 1 or 2, got {cfg.head_stride}"),
        (cfg.attn_stride in ATTN_STRIDES, f"attn_stride must be one of {ATTN_STRIDES}, got {cfg.attn_stride}"),
        (cfg.step_features == "every" or not cfg.compile,
         "compile wraps the network's whole-observation forward; step_features=once runs encode and step instead, "
         "which it would leave uncompiled: use compile with step_features=every"),
        (cfg.engine != "rllib_appo" or cfg.step_features == "every",
         "engine rllib_appo passes observations (image x mask) to the network: it needs step_features=every"),
        (cfg.rollout_mode in ROLLOUT_MODES, f"rollout_mode must be one of {ROLLOUT_MODES}, got {cfg.rollout_mode!r}"),
    ]


def validate(cfg: TrainConfig) -> None:
    from rl_agents.algo.accel import PRECISIONS
    from rl_agents.algo.model import PRESETS
    from pixelrl_env.env import ACTION_SETS

    cfg.data.validate()
    checks = [
        (cfg.model in ("pixeldrl", "unet"), f"model must be 'pixeldrl' or 'unet', got {cfg.model!r}"),
        (cfg.engine in ENGINES, f"engine must be one of {ENGINES}, got {cfg.engine!r}"),
        (cfg.engine not in ("ray", "hogwild") or cfg.num_workers >= 1,
         f"engine {cfg.engine} needs num_workers >= 1, got {cfg.num_workers}"),
        (cfg.model == "pixeldrl" or cfg.engine in ("auto", "local"),
         f"the U-Net baseline trains in one process (engine auto or local), got engine {cfg.engine!r}"),
        (cfg.norm in ("group", "none"), f"norm must be 'group' or 'none', got {cfg.norm!r}"),
        (cfg.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got {cfg.preset!r}"),
        (cfg.action_set in ACTION_SETS, f"action_set must be one of {sorted(ACTION_SETS)}, got {cfg.action_set!r}"),
        (cfg.bootstrap in ("terminal", "value"), f"bootstrap must be 'terminal' or 'value', got {cfg.bootstrap!r}"),
        (cfg.t_max >= 1, f"t_max must be >= 1, got {cfg.t_max}"),
        *_cost_option_checks(cfg),
        (cfg.entropy_coef_final is None or cfg.entropy_coef_final >= 0,
         f"entropy_coef_final must be >= 0 or null, got {cfg.entropy_coef_final}"),
        (cfg.lr_warmup_updates >= 0, f"lr_warmup_updates must be >= 0, got {cfg.lr_warmup_updates}"),
        (0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}"),
        (cfg.reward_kernel >= 1 and cfg.reward_kernel % 2 == 1, f"reward_kernel must be odd, got {cfg.reward_kernel}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}"),
        (cfg.max_updates is None or cfg.max_updates >= 1, f"max_updates must be >= 1 or null, got {cfg.max_updates}"),
        (cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {cfg.precision!r}"),
        (cfg.engine != "hogwild" or not cfg.channels_last,
         "engine hogwild shares its parameters in memory as they are laid out; channels_last would copy them"),
        (cfg.num_workers >= 0, f"num_workers must be >= 0, got {cfg.num_workers}"),
        (cfg.worker_cpus > 0, f"worker_cpus must be > 0, got {cfg.worker_cpus}"),
        (cfg.head_timeout_s is None or cfg.head_timeout_s > 0,
         f"head_timeout_s must be > 0 seconds or null, got {cfg.head_timeout_s}"),
        (cfg.learner_max_restarts >= 0, f"learner_max_restarts must be >= 0, got {cfg.learner_max_restarts}"),
        (cfg.worker_timeout_s is None or cfg.worker_timeout_s > 0,
         f"worker_timeout_s must be > 0 seconds or null, got {cfg.worker_timeout_s}"),
        (cfg.learner_cpus >= 0, f"learner_cpus must be >= 0, got {cfg.learner_cpus}"),
        (cfg.rllib_learners >= 0, f"rllib_learners must be >= 0, got {cfg.rllib_learners}"),
        (cfg.learner_gpus is None or cfg.learner_gpus >= 0, f"learner_gpus must be >= 0 or null, got {cfg.learner_gpus}"),
        (cfg.staleness_bound is None or cfg.staleness_bound >= 0,
         f"staleness_bound must be >= 0 or null, got {cfg.staleness_bound}"),
        (cfg.stale_policy in ("drop", "downweight"), f"stale_policy must be drop or downweight, got {cfg.stale_policy!r}"),
        (cfg.rollouts_per_call >= 1, f"rollouts_per_call must be >= 1, got {cfg.rollouts_per_call}"),
        (cfg.worker_slowdown is None or (len(cfg.worker_slowdown) <= max(cfg.num_workers, 0)
                                         and all(float(f) >= 1 for f in cfg.worker_slowdown)),
         f"worker_slowdown needs at most num_workers factors, each >= 1, got {cfg.worker_slowdown}"),
        (cfg.data.size is None or cfg.data.size % 4 == 0, f"data.size must be divisible by 4, got {cfg.data.size}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
