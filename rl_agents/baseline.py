"""The supervised baseline: MONAI's 2-D U-Net trained with Dice + BCE on the same split, resolution and budget.

It writes the same ``metrics.json`` keys and checkpoints as PixelDRL-MG training, so that ``pixeldrl evaluate`` and
``benchmarks/quality.py`` treat both alike.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from pixelrl_env.metrics import compute_all

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, to_dict
from .model import count_parameters

console = Console()


def build_unet(in_channels: int) -> torch.nn.Module:
    """MONAI U-Net, 16-32-64-128-256 channels, two residual units per level (a common 2-D configuration)."""
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2)
    net.is_unet = True
    return net


@torch.no_grad()
def _evaluate(model, images: np.ndarray, masks: np.ndarray, device) -> dict[str, float]:
    if len(images) == 0:
        return {}
    model.eval()
    preds = []
    for i in range(0, len(images), 16):
        logits = model(torch.as_tensor(images[i : i + 16], device=device))[:, 0]
        preds.append((logits > 0).to(torch.uint8).cpu().numpy())
    model.train()
    return {k: float(np.mean(v)) for k, v in compute_all(np.concatenate(preds), masks).items()}


def train_unet(cfg: TrainConfig, output_dir: str | Path, resume: bool = False, quiet: bool = False,
               on_eval=None) -> dict[str, Any]:
    """Supervised U-Net training; ``epochs``, ``batch_size``, ``lr``, ``max_minutes``, ``seed`` from ``cfg``."""
    from monai.losses import DiceCELoss

    from .trainer import prepare_run

    out, ckpt_dir, device, splits = prepare_run(cfg, output_dir)
    tr, va = splits.train, splits.val
    in_channels = tr.images.shape[1]
    model = build_unet(in_channels).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = DiceCELoss(sigmoid=True)
    per_epoch = max(1, math.ceil(len(tr) / cfg.batch_size))
    total = cfg.epochs * per_epoch
    rng = np.random.default_rng(cfg.seed)
    state = {"update": 0, "best_dice": -1.0, "wall_time_s": 0.0, "history": []}
    if resume:
        payload = load_checkpoint(ckpt_dir / "last.pt", map_location=device)
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        state = payload["state"]
        rng.bit_generator.state = payload["rng"]
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    n_params = count_parameters(model)
    if not quiet:
        console.print(f"U-Net baseline: {n_params:,} parameters; {len(tr)} train / {len(va)} val slices; device {device}")

    def save(name: str) -> None:
        save_checkpoint(ckpt_dir / name, {"kind": "unet", "config": to_dict(cfg), "in_channels": in_channels,
                                          "model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "state": state, "rng": rng.bit_generator.state})

    t0 = time.perf_counter() - state["wall_time_s"]
    deadline = None if cfg.max_minutes is None else cfg.max_minutes * 60
    stopped_by = "epochs"
    images_t = torch.as_tensor(tr.images)
    masks_t = torch.as_tensor(tr.masks, dtype=torch.float32)[:, None]
    last_loss = float("nan")
    while state["update"] < total:
        idx = torch.as_tensor(rng.choice(len(tr), size=min(cfg.batch_size, len(tr)), replace=False))
        logits = model(images_t[idx].to(device))
        loss = loss_fn(logits, masks_t[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        last_loss = float(loss.detach())
        state["update"] += 1
        state["wall_time_s"] = time.perf_counter() - t0
        out_of_time = deadline is not None and state["wall_time_s"] >= deadline
        if state["update"] % cfg.eval_every == 0 or state["update"] == total or out_of_time:
            ev = {f"val/{k}": v for k, v in _evaluate(model, va.images, va.masks, device).items()}
            state["history"].append({"update": state["update"], "wall_time_s": round(state["wall_time_s"], 2),
                                     "losses/supervised": last_loss, **ev})
            if ev and ev["val/dice"] > state["best_dice"]:
                state["best_dice"] = ev["val/dice"]
                save("best.pt")
            if on_eval is not None:
                on_eval(state["history"][-1])
            if not quiet:
                console.print(f"update {state['update']:5d}  {state['wall_time_s']:7.1f}s  loss {last_loss:.4f}  "
                              f"val dice {ev.get('val/dice', float('nan')):.3f}")
        if state["update"] % cfg.checkpoint_every == 0:
            save("last.pt")
        if out_of_time:
            stopped_by = "max_minutes"
            break
    save("last.pt")
    if not (ckpt_dir / "best.pt").exists():
        save("best.pt")
    best = load_checkpoint(ckpt_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    final = {f"val/{k}": v for k, v in _evaluate(model, va.images, va.masks, device).items()}
    metrics = {**final, "params": n_params, "wall_time_s": round(state["wall_time_s"], 2), "updates": state["update"],
               "best_update": best["state"]["update"], "stopped_by": stopped_by, "n_train": len(tr), "n_val": len(va),
               "losses/supervised": last_loss, "history": state["history"]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
