"""Side-by-side quality on the LGG validation patients: PixelDRL-MG presets and options vs the MONAI U-Net.

Each row is a training run directory (``metrics.json`` + ``checkpoints/best.pt``); a missing run is trained first
with its config (on this machine that takes its ``max_minutes``). Every checkpoint is then evaluated the same way:
``pixeldrl evaluate`` at the native 256x256 resolution, on the validation patients (the split used to pick the best
checkpoint) and on the test patients (never used for any choice).

    python benchmarks/quality.py [--json benchmarks/results/quality_lgg.json] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, overrides, run directory)
ROWS: dict[str, tuple[str, list[str], str]] = {
    "PixelDRL-MG small, PA3C (paper actions)": ("tune_configs/lgg_cpu.yaml", [], "runs/lgg_small"),
    "U-Net (MONAI, Dice+BCE)": (
        "tune_configs/lgg_cpu.yaml", ["model=unet", "batch_size=8", "max_minutes=30"], "runs/lgg_unet"
    ),
    "PixelDRL-MG small + supervised aux (ours)": (
        "tune_configs/lgg_cpu.yaml", ["aux_coef=1.0", "max_minutes=20"], "runs/lgg_small_aux"
    ),
}


def run_row(name: str, config: str, overrides: list[str], run_dir: Path, train_missing: bool) -> dict | None:
    from rl_agents.config import load_config
    from rl_agents.evaluate import evaluate_checkpoint

    if not (run_dir / "metrics.json").exists():
        if not train_missing:
            print(f"skip {name}: no run in {run_dir} (use --train to train it)")
            return None
        cfg = load_config(ROOT / config, overrides)
        if cfg.model == "unet":
            from rl_agents.baseline import train_unet

            train_unet(cfg, run_dir)
        else:
            from rl_agents.trainer import train

            train(cfg, run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / "checkpoints" / "best.pt"
    val = evaluate_checkpoint(ckpt, split="val", json_out=run_dir / "eval_val.json")
    test = evaluate_checkpoint(ckpt, split="test", json_out=run_dir / "eval_test.json")
    return {
        "name": name,
        "config": config,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "params": m["params"],
        "train_wall_time_s": m["wall_time_s"],
        "updates": m["updates"],
        "best_update": m.get("best_update"),
        "val": {k: val[k] for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd", "n_images")},
        "test": {k: test[k] for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd", "n_images")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/quality_lgg.json")
    ap.add_argument("--only", nargs="*", default=None, help="row names (substrings) to include")
    ap.add_argument("--train", action="store_true", help="train rows whose run directory is missing")
    args = ap.parse_args()
    rows = []
    for name, (config, overrides, run_dir) in ROWS.items():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        r = run_row(name, config, overrides, ROOT / run_dir, args.train)
        if r:
            rows.append(r)
    header = f"{'model':44s} {'params':>10s} {'train s':>8s} | {'Dice':>6s} {'IoU':>6s} {'BIoU':>6s} {'HD95':>6s} | test Dice"
    print(header)
    print("-" * len(header))
    for r in rows:
        v = r["val"]
        print(f"{r['name']:44s} {r['params']:>10,d} {r['train_wall_time_s']:>8.0f} | {v['dice']:6.3f} {v['iou']:6.3f} "
              f"{v['biou']:6.3f} {v['hd95']:6.2f} | {r['test']['dice']:.3f}")
    out = {
        "data": "../shared/data/lgg_kaggle_3m (20 patients; patient split 70/10/20, seed 0; foreground slices)",
        "evaluation": "native 256x256; model at 128 (FLAIR); masks resized back; means over slices with foreground",
        "machine": {"cpu": _cpu(), "cores": 2, "python": platform.python_version()},
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


if __name__ == "__main__":
    main()
