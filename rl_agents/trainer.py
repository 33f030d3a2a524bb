"""Single-process PA3C training: rollout, loss, update, periodic validation and atomic checkpoints.

The Ray issue distributes this same loop (workers run :func:`collect_rollout` and the loss; a learner applies the
gradients). Everything a run produces goes under ``output_dir``: ``metrics.json``, ``config.yaml`` and
``checkpoints/{last,best}.pt`` (with optimiser, scheduler and RNG state, so ``resume`` continues where it stopped).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pixelrl_env.dataset import ArraySet, load_splits
from pixelrl_env.env import PixelSegEnv
from pixelrl_env.metrics import compute_all

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, to_dict
from .inference import segment
from .model import PixelDRLNet, count_parameters, forward_flops
from .pa3c import RewardMapConv, pa3c_loss
from .rollout import collect_rollout

log = logging.getLogger(__name__)
console = Console()


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def build_model(cfg: TrainConfig, in_channels: int) -> PixelDRLNet:
    n_actions = 3 if cfg.action_set == "three" else 2
    return PixelDRLNet(in_channels, n_actions, cfg.preset, attention=cfg.attention, dilation=cfg.dilation,
                       init_keep_prob=cfg.init_keep_prob, norm=cfg.norm)


def evaluate_arrays(model, data: ArraySet, cfg: TrainConfig, device, max_images: int | None = None) -> dict[str, float]:
    """Greedy segmentation of ``data`` at its stored resolution; mean of each metric over images."""
    n = len(data) if max_images is None else min(len(data), max_images)
    if n == 0:
        return {}
    pred, _ = segment(model, data.images[:n], cfg.t_max, batch_size=16, device=device)
    per = compute_all(pred, data.masks[:n])
    return {k: float(np.mean(v)) for k, v in per.items()}


def rollout_and_loss(cfg: TrainConfig, model, reward_conv, env: PixelSegEnv, device, gen):
    """One rollout of ``cfg.t_max`` steps and its PA3C loss (graph kept, not yet backpropagated).

    Shared by the single-process trainer and the Ray workers, so both optimise exactly the same objective.
    """
    roll = collect_rollout(model, env, device, gen, with_aux=cfg.aux_coef > 0)
    bootstrap = roll.bootstrap if cfg.bootstrap == "value" else torch.zeros_like(roll.bootstrap)
    loss = pa3c_loss(
        roll.log_probs, roll.entropies, roll.values, roll.rewards, bootstrap,
        gamma=cfg.gamma, reward_conv=reward_conv, value_coef=cfg.value_coef, entropy_coef=cfg.entropy_coef,
        aux_log_probs=roll.aux_log_probs, aux_coef=cfg.aux_coef, aux_weights=roll.aux_weights,
    )
    return roll, loss


def update_stats(roll, loss) -> dict[str, float]:
    """Scalars of one update: the named loss terms, the mean return and the Dice of the rollout's final masks."""
    return {
        **loss.scalars(),
        "train/return": roll.mean_return(),
        "train/dice": float(np.mean(compute_all(roll.final_state, roll.ground_truth)["dice"])),
    }


def make_train_env(cfg: TrainConfig, images: np.ndarray, masks: np.ndarray, seed: int) -> PixelSegEnv:
    env = PixelSegEnv(images, masks, batch_size=cfg.batch_size, t_max=cfg.t_max, action_set=cfg.action_set)
    env.reset(seed=seed)
    return env


def make_scheduler(cfg: TrainConfig, opt, n_train: int):
    """The paper's step schedule counted in updates; returns (scheduler, total updates planned)."""
    updates_per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    total_updates = cfg.epochs * updates_per_epoch
    if cfg.max_updates is not None:
        total_updates = min(total_updates, cfg.max_updates)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_epochs * updates_per_epoch, gamma=cfg.lr_decay)
    return sched, total_updates


@dataclass
class RunState:
    update: int = 0
    best_dice: float = -1.0
    wall_time_s: float = 0.0
    pixel_agent_steps: int = 0
    history: list | None = None


def _payload(cfg, model, reward_conv, opt, sched, env, gen, state: RunState, in_channels: int) -> dict[str, Any]:
    return {
        "kind": "pixeldrl",
        "config": to_dict(cfg),
        "in_channels": in_channels,
        "n_actions": model.n_actions,
        "model": model.state_dict(),
        "reward_conv": reward_conv.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "env_rng": env.np_random.bit_generator.state,
        "torch_rng": gen.get_state(),
        "state": vars(state),
    }


def prepare_run(cfg: TrainConfig, output_dir: str | Path):
    """Output folders, threads, seed, device and data, shared by PA3C training and the U-Net baseline."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.data)
    return out, out / "checkpoints", pick_device(cfg.device), splits


def train(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
          on_eval=None) -> dict[str, Any]:
    """Train PixelDRL-MG as configured; returns the final metrics (also written to ``output_dir/metrics.json``).

    ``on_eval(entry)`` is called with each history entry after a validation pass (Tune reports through it).
    """
    out, ckpt_dir, device, splits = prepare_run(cfg, output_dir)
    train_set, val_set = splits.train, splits.val
    if len(train_set) == 0:
        raise ValueError("the training split is empty; check data.split, data.k_shot and data.drop_empty")
    in_channels = train_set.images.shape[1]
    env = make_train_env(cfg, train_set.images, train_set.masks, cfg.seed)
    model = build_model(cfg, in_channels).to(device)
    reward_conv = RewardMapConv(cfg.reward_kernel).to(device)
    params = list(model.parameters()) + list(reward_conv.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched, total_updates = make_scheduler(cfg, opt, len(train_set))
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    state = RunState(history=[])

    if resume:
        payload = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(payload["model"])
        reward_conv.load_state_dict(payload["reward_conv"])
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        env.np_random.bit_generator.state = payload["env_rng"]
        gen.set_state(payload["torch_rng"])
        state = RunState(**payload["state"])
        console.print(f"resumed from {ckpt_dir / 'last.pt'} at update {state.update}")

    n_params = count_parameters(model)
    flops = forward_flops(model.cpu(), in_channels, train_set.images.shape[-1])
    model.to(device)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if not quiet:
        console.print(f"config: {to_dict(cfg)}", highlight=False)
        console.print(
            f"data: {len(train_set)} train / {len(val_set)} val slices; model {cfg.preset}: {n_params:,} parameters, "
            f"{flops / 1e9:.3f} GFLOP per image-step; device {device}; {total_updates} updates planned"
        )

    def save(name: str) -> None:
        save_checkpoint(ckpt_dir / name, _payload(cfg, model, reward_conv, opt, sched, env, gen, state, in_channels))

    last_eval: dict[str, float] = {}
    train_stats: dict[str, float] = {}
    t_start = time.perf_counter() - state.wall_time_s
    deadline = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    progress = Progress(
        TextColumn("[bold]PA3C"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, disable=quiet, transient=False,
    )
    stopped_by = "epochs"
    with progress:
        task = progress.add_task("train", total=total_updates, completed=state.update, info="")
        try:
            while state.update < total_updates:
                roll, loss = rollout_and_loss(cfg, model, reward_conv, env, device, gen)
                opt.zero_grad(set_to_none=True)
                loss.total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                state.update += 1
                state.pixel_agent_steps += roll.pixel_agent_steps
                state.wall_time_s = time.perf_counter() - t_start
                train_stats = {**update_stats(roll, loss), "charts/grad_norm": float(grad_norm),
                               "charts/lr": float(sched.get_last_lr()[0])}
                out_of_time = deadline is not None and state.wall_time_s >= deadline
                if state.update % cfg.eval_every == 0 or state.update == total_updates or out_of_time:
                    last_eval = {f"val/{k}": v for k, v in
                                 evaluate_arrays(model, val_set, cfg, device, cfg.eval_max_images).items()}
                    state.history.append({"update": state.update, "wall_time_s": round(state.wall_time_s, 2),
                                          **train_stats, **last_eval})
                    if last_eval and last_eval["val/dice"] > state.best_dice:
                        state.best_dice = last_eval["val/dice"]
                        save("best.pt")
                    if on_eval is not None:
                        on_eval(state.history[-1])
                    if not quiet:
                        progress.console.print(
                            f"update {state.update:5d}  {state.wall_time_s:7.1f}s  return {train_stats['train/return']:9.1f}"
                            f"  train dice {train_stats['train/dice']:.3f}  val dice {last_eval.get('val/dice', float('nan')):.3f}"
                            f"  biou {last_eval.get('val/biou', float('nan')):.3f}  hd95 {last_eval.get('val/hd95', float('nan')):.2f}"
                        )
                reached = (cfg.stop_at_val_dice is not None and last_eval
                           and state.history[-1]["update"] == state.update
                           and last_eval["val/dice"] >= cfg.stop_at_val_dice)
                if state.update % cfg.checkpoint_every == 0:
                    save("last.pt")
                progress.update(task, completed=state.update, info=(
                    f"return {train_stats['train/return']:.0f}  loss {train_stats['losses/total']:.4f}  "
                    f"val dice {last_eval.get('val/dice', float('nan')):.3f}"))
                if out_of_time or reached:
                    stopped_by = "max_minutes" if out_of_time else "stop_at_val_dice"
                    break
        except KeyboardInterrupt:
            stopped_by = "interrupted"
            console.print("interrupted: writing checkpoints/last.pt")
    if stopped_by == "epochs" and cfg.max_updates is not None and state.update >= cfg.max_updates:
        stopped_by = "max_updates"
    save("last.pt")
    if not (ckpt_dir / "best.pt").exists():
        save("best.pt")

    # Final figures come from the best checkpoint (selected on validation Dice).
    best = load_checkpoint(ckpt_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    final = {f"val/{k}": v for k, v in evaluate_arrays(model, val_set, cfg, device, None).items()}
    wall = state.wall_time_s
    metrics = {
        **final,
        "params": n_params,
        "gflop_per_image_step": flops / 1e9,
        "wall_time_s": round(wall, 2),
        "updates": state.update,
        "best_update": best["state"]["update"],
        "pixel_agent_steps": state.pixel_agent_steps,
        "perf/pixel_agent_steps_per_s": state.pixel_agent_steps / max(wall, 1e-9),
        # forward + backward ~ 3 forward passes per image-step, plus the bootstrap forward per rollout
        "perf/train_gflop_per_s": (3 * cfg.t_max + 1) * cfg.batch_size * state.update * flops / 1e9 / max(wall, 1e-9),
        "stopped_by": stopped_by,
        "n_train": len(train_set),
        "n_val": len(val_set),
        **{k: v for k, v in train_stats.items()},
        "history": state.history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if stopped_by == "interrupted":
        raise KeyboardInterrupt
    return metrics
