"""Side-by-side quality on the LGG validation patients: PixelDRL-MG presets and options vs the MONAI U-Net.

Each row is a training run directory (``metrics.json`` + ``checkpoints/best.pt``); a missing run is trained first
with its config (on this machine that takes its ``max_minutes``). Every checkpoint is then evaluated the same way:
``pixeldrl evaluate`` at the native 256x256 resolution, on the validation patients (the split used to pick the best
checkpoint) and on the test patients (never used for any choice).

    python -m benchmarks.quality [--suite main|ablation] [--train | --train-only] [--only NAME ...] [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rl_agents.config import PAPER_STEP, load_config
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]

# name -> (config, overrides, run directory)
MAIN: dict[str, tuple[str, list[str], str]] = {
    "PixelDRL-MG small, PA3C (paper actions)": ("tune_configs/lgg_cpu.yaml", ["data.size=128", *PAPER_STEP], "runs/lgg_small"),
    "U-Net (MONAI, Dice+BCE)": (
        "tune_configs/lgg_cpu.yaml", ["model=unet", "optim.batch_size=8", "budget.max_minutes=30", "data.size=128"], "runs/lgg_unet"
    ),
}

# Ablation and extension rows at equal work: 800 updates at 64 px (a quarter of the 128 px cost, so five rows fit in
# about half an hour with two rows training side by side, 1 thread each, on 2 cores). Compare them with each other,
# not with the 55-minute rows above.
_EQ = ["budget.max_updates=800", "budget.max_minutes=null", "compute.threads=1", "data.size=64", *PAPER_STEP]
ABLATION: dict[str, tuple[str, list[str], str]] = {
    "small, PA3C (paper)": ("tune_configs/lgg_cpu.yaml", _EQ, "runs/abl_base"),
    "small, no self-attention (paper ablation)": (
        "tune_configs/lgg_cpu.yaml", _EQ + ["network.attention=false"], "runs/abl_no_attention"),
    "small, no dilation (paper ablation)": ("tune_configs/lgg_cpu.yaml", _EQ + ["network.dilation=false"], "runs/abl_no_dilation"),
    "small, three actions (ours)": ("tune_configs/lgg_cpu.yaml", _EQ + ["pa3c.action_set=three"], "runs/abl_three"),
    "small, + balanced supervised aux (ours)": ("tune_configs/lgg_cpu.yaml", _EQ + ["pa3c.aux_coef=1.0"], "runs/abl_aux"),
}
SUITES = {"main": (MAIN, "benchmarks/results/quality_lgg.json"),
          "ablation": (ABLATION, "benchmarks/results/ablation_lgg.json")}


def _train(config: str, overrides: list[str], run_dir: Path) -> None:
    train(load_config(ROOT / config, overrides), run_dir)


def run_row(name: str, config: str, overrides: list[str], run_dir: Path, train_missing: bool) -> dict | None:
    if not (run_dir / "metrics.json").exists():
        if not train_missing:
            print(f"skip {name}: no run in {run_dir} (use --train to train it)")
            return None
        _train(config, overrides, run_dir)

    m = json.loads((run_dir / "metrics.json").read_text())
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]  # what the run was trained on, as saved
    ckpt = run_dir / "checkpoints" / "best.pt"
    val = evaluate_checkpoint(ckpt, split="val", json_out=run_dir / "eval_val.json")
    test = evaluate_checkpoint(ckpt, split="test", json_out=run_dir / "eval_test.json")
    return {
        "name": name,
        "config": config,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "params": m["params"],
        "trained_at_px": data["size"],
        "data": {k: data.get(k) for k in ("format", "path", "channels", "split", "seed", "folds", "fold")},
        "patients": {"val": len(val["volumes"]["per_volume_dice"]), "test": len(test["volumes"]["per_volume_dice"])},
        "train_wall_time_s": m["wall_time_s"],
        "updates": m["updates"],
        "best_update": m.get("best_update"),
        "val": {k: val[k] for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd", "n_images")},
        "test": {k: test[k] for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd", "n_images")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="main")
    ap.add_argument("--json", default=None, help="default: the suite's file under benchmarks/results/")
    ap.add_argument("--only", nargs="*", default=None, help="row names (substrings) to include")
    ap.add_argument("--train", action="store_true", help="train rows whose run directory is missing")
    ap.add_argument("--train-only", action="store_true", help="train missing rows, evaluate nothing (run rows "
                    "side by side in separate processes, then evaluate all in one)")
    args = ap.parse_args()
    table, default_json = SUITES[args.suite]
    json_path = args.json or default_json
    rows = []
    for name, (config, overrides, run_dir) in table.items():
        if args.only and not any(s.lower() in name.lower() for s in args.only):
            continue
        if args.train_only:
            if not (ROOT / run_dir / "metrics.json").exists():
                _train(config, overrides, ROOT / run_dir)
            continue
        r = run_row(name, config, overrides, ROOT / run_dir, args.train)
        if r:
            rows.append(r)
    if args.train_only:
        return
    header = f"{'model':44s} {'params':>10s} {'train s':>8s} | {'Dice':>6s} {'IoU':>6s} {'BIoU':>6s} {'HD95':>6s} | test Dice"
    print(header)
    print("-" * len(header))
    for r in rows:
        v = r["val"]
        print(f"{r['name']:44s} {r['params']:>10,d} {r['train_wall_time_s']:>8.0f} | {v['dice']:6.3f} {v['iou']:6.3f} "
              f"{v['biou']:6.3f} {v['hd95']:6.2f} | {r['test']['dice']:.3f}")
    out = {
        "evaluation": "native resolution; each row's model runs at its trained_at_px and its masks are resized back; "
                      "means over slices with foreground",
        "machine": describe(),
        "command": command(),
        "rows": rows,
    }
    write_json(json_path, out)
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
