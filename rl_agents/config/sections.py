"""The training configuration in sections, the way :class:`~pixelrl_env.data_config.DataConfig` is one.

Each field's comment is its documentation: ``docs/config.md`` is generated from this file
(``pixeldrl config-reference --write docs/config.md``; a test keeps it current). A comment on the lines above a field
and the one at the end of its line both count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixelrl_env.data_config import DataConfig


def _default_data() -> DataConfig:
    # 64 px keeps the README's main job inside 10 minutes on 2 cores; real-data configs use 128 or native 256
    return DataConfig(
        format="synthetic",
        size=64,
        synthetic={"n_patients": 40, "slices_per_patient": 8, "size": 64, "difficulty": "easy"},
    )


@dataclass
class NetworkConfig:
    """The network's shape (rl_agents/algo/model.py)."""

    preset: str = "small"  # small (CPU) | paper (7.0M parameters, GPU)
    attention: bool = True  # paper ablation: self-attention block on/off
    dilation: bool = True  # paper ablation: dilated convolutions on/off
    norm: str = "group"  # group (GroupNorm after each conv; ours, the paper does not say) | none
    init_keep_prob: float | None = None  # start near "do nothing" (e.g. 0.9); null = PyTorch default init (paper)
    # every: each step runs the whole network on image x mask (the paper) | once (ours): the trunk encodes the image
    # once per episode and each step runs only the heads on [features, mask]
    step_features: str = "every"
    head_stride: int = 1  # 2 (ours): policy and value heads at half resolution, outputs upsampled bilinearly
    attn_stride: int = 1  # 2 or 4 (ours): self-attention over features pooled 2x2 or 4x4, output upsampled


@dataclass
class PA3CConfig:
    """The environment and the pixel-level A3C objective (rl_agents/algo/pa3c.py, rollout.py)."""

    action_set: str = "paper"  # paper (set background / do nothing) | three (+ set foreground; ours)
    t_max: int = 10  # steps per episode
    gamma: float = 0.95  # discount
    entropy_coef: float = 0.01  # weight of the policy's entropy bonus
    entropy_coef_final: float | None = None  # ours: entropy_coef moves linearly to this over the planned updates
    value_coef: float = 0.5  # weight of the value loss
    bootstrap: str = "terminal"  # terminal: R_T = 0, the episode ends at t_max (PixelRL's code) | value: R_T = V(s_T)
    reward_kernel: int = 5  # side of the learnable reward-map kernel (PixelRL: 33; the paper does not say)
    aux_coef: float = 0.0  # NOT in the paper: supervised term towards the oracle action (0 = pure PA3C)
    adv_norm: bool = False  # ours: advantages of the policy term scaled to mean 0, std 1 per rollout
    # online: each step's forward keeps its graph | recompute: steps without autograd, then one batched forward and
    # backward over all T x B observations (the same gradients)
    rollout_mode: str = "online"


@dataclass
class OptimConfig:
    """The optimiser and what it sees (both models)."""

    batch_size: int = 8  # images per rollout or U-Net batch (the paper: 2)
    lr: float = 1e-3  # Adam's learning rate
    lr_decay: float = 0.9  # multiply the learning rate by this ...
    lr_decay_epochs: int = 25  # ... every this many epochs (the paper: 0.9 every 25)
    lr_warmup_updates: int = 0  # ours: the learning rate ramps linearly from lr / N to lr over the first N updates
    grad_clip: float = 1.0  # gradient norm clip
    augment: bool = False  # ours: flips, +-10 deg rotation, +-10 % scale, intensity and bias-field jitter


@dataclass
class BudgetConfig:
    """When a run stops: the first budget spent ends it."""

    epochs: int = 50  # passes over the training split (the paper: 200, see tune_configs/paper_brain.yaml)
    max_minutes: float | None = 10.0  # wall-clock budget (null: no limit)
    max_updates: int | None = None  # stop after this many updates (equal-work comparisons, e.g. ablation rows)
    stop_at_val_dice: float | None = None  # stop once a validation pass reaches this Dice (time-to-accuracy runs)


@dataclass
class ComputeConfig:
    """How the network runs on this process's hardware (rl_agents/algo/accel.py)."""

    threads: int | None = None  # torch CPU threads (null: all cores)
    device: str = "auto"  # auto | cpu | cuda
    # fp32 (strict) | tf32 (NVIDIA tensor cores; = fp32 on CPU) | bf16 (autocast forward, float32 loss and optimiser)
    precision: str = "tf32"
    channels_last: bool = False  # NHWC memory layout
    compile: str | None = None  # a torch.compile backend (inductor), or null


@dataclass
class RayConfig:
    """Asynchronous A3C on Ray (rl_agents/engines/ray_a3c.py, ray_actors.py) and RLlib's learners."""

    address: str | None = None  # null: RAY_ADDRESS if set (as under `ray job submit`), else a local Ray
    worker_cpus: float = 1.0  # Ray CPUs per worker; its torch threads = max(1, round(worker_cpus))
    learner_cpus: float = 0.5  # Ray CPUs of the learner actor
    learner_gpus: float | None = None  # null: 1 when the cluster has a GPU, else 0; CPU if torch sees none
    # engine rllib_appo: 0 = its learner in the driver; n = n remote learner actors (each learner_cpus,
    # learner_gpus), data-parallel: a GPU learner apart from a CPU-only driver, or several GPUs
    rllib_learners: int = 0
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
    # refuses connections (stopped) or has not answered for this many seconds (unreachable). null: never
    head_timeout_s: float | None = 20.0
    worker_slowdown: list[float] | None = None  # benchmarks only: worker i sleeps so a rollout takes factor[i] x


@dataclass
class TrackingConfig:
    """What a run records (rl_agents/experiment/tracking.py)."""

    mlflow: bool = True  # record the run in MLflow (MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)
    experiment: str = "pixeldrl"  # MLflow experiment
    run_name: str | None = None  # null: the output directory's name
    report_every_s: float = 10.0  # seconds between throughput lines and history entries
    system_metrics: bool = True  # MLflow's CPU, memory, disk and GPU use of the run, every 10 s (needs psutil)


@dataclass
class EvalConfig:
    """Validation passes and checkpoints (rl_agents/experiment/lifecycle.py)."""

    every: int = 50  # updates between validation passes
    max_images: int | None = 64  # validation images per pass (null: all)
    checkpoint_every: int = 50  # updates between last.pt writes


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the README's main job (``small`` preset, synthetic data)."""

    model: str = "pixeldrl"  # pixeldrl | unet (the supervised baseline)
    # auto: supervised for the U-Net, ray when num_workers >= 1, else local | local: one process | ray: asynchronous
    # A3C on Ray | hogwild: num_workers torch.multiprocessing processes on this machine (the classic A3C) |
    # rllib_appo: RLlib's APPO, num_workers env runners (rl_agents/experiment/lifecycle.py ENGINES)
    engine: str = "auto"
    num_workers: int = 0  # workers (ray, hogwild) or env runners (rllib_appo); 0 = one process trains alone
    seed: int = 0  # seeds the network, the data order, the workers and the environment
    data: DataConfig = field(default_factory=_default_data)  # pixelrl_env/data_config.py, docs/data.md
    network: NetworkConfig = field(default_factory=NetworkConfig)
    pa3c: PA3CConfig = field(default_factory=PA3CConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS = ("network", "pa3c", "optim", "budget", "compute", "ray", "tracking", "eval")
# keys of the flat config (before sections) whose name changed, not only their place
RENAMED = {"ray_address": "ray.address", "eval_every": "eval.every", "eval_max_images": "eval.max_images"}
