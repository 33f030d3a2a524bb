"""Robustness of PixelDRL-MG and the U-Net to corrupted scans, on each cross-validation fold's test patients.

For every finished trial of a CV sweep (``tune_configs/cv_*.yaml``; one best checkpoint per model and fold) the fold's
test slices (foreground slices at the trained resolution, the paper's protocol) are corrupted with Gaussian and
Rician noise at several levels, a bias field, lower contrast and a resolution drop (``pixelrl_env/corrupt.py``) and
segmented; Dice and Boundary IoU per level are averaged over slices, then mean +- sd over folds. The figure is
Dice (top) and Boundary IoU (bottom) against the corruption level, one panel per kind, both models; the JSON holds
every per-fold value, the machine and the command. The corruptions' random draws are seeded per (fold, kind, level),
so both models see identical corrupted images.

    python -m benchmarks.robustness --experiment cv-heart --json benchmarks/results/robustness_heart.json \\
        --plot benchmarks/results/robustness_heart.png [--max-slices 120]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from pixelrl_env.corrupt import KINDS, LEVELS, corrupt
from pixelrl_env.dataset import load_splits
from pixelrl_env.metrics import compute_all
from rl_agents.experiment.cv import find_trials
from rl_agents.experiment.evaluate import predict
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_slices(cfg, max_slices: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fold's test split as the model was trained to see it; a fixed random subset when ``max_slices``."""
    test = load_splits(cfg.data).test
    images, masks = test.images, test.masks
    if max_slices is not None and len(images) > max_slices:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), max_slices, replace=False))
        images, masks = images[keep], masks[keep]
    return images, masks


def score(model, cfg, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    with torch.no_grad():
        pred, _ = predict(model, cfg, images, "cpu")
    per = compute_all(pred, masks)
    return {"dice": float(np.mean(per["dice"])), "biou": float(np.mean(per["biou"]))}


def run(experiment: str, storage: str, kinds: list[str], max_slices: int | None) -> dict:
    trials = find_trials(Path(storage), experiment)
    rows = []
    for t in trials:
        t0 = time.perf_counter()
        model, cfg = load_model(t.checkpoint, "cpu")
        images, masks = test_slices(cfg, max_slices, seed=t.fold)
        clean = score(model, cfg, images, masks)
        rows.append({"variant": t.variant, "fold": t.fold, "kind": "clean", "level": 0, **clean})
        for k, kind in enumerate(kinds):
            for j, level in enumerate(LEVELS[kind]):
                rng = np.random.default_rng([t.fold, k, j])  # the same corrupted images for every model
                rows.append({"variant": t.variant, "fold": t.fold, "kind": kind, "level": level,
                             **score(model, cfg, corrupt(images, kind, level, rng), masks)})
        print(f"{t.variant} fold {t.fold}: {len(images)} test slices, clean Dice {clean['dice']:.3f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return {"trials": [{"variant": t.variant, "fold": t.fold, "path": str(t.path)} for t in trials], "rows": rows}


def summarize(rows: list[dict], kinds: list[str]) -> dict:
    """Per variant, kind and level: mean and sd over folds of Dice and BIoU, and the Dice lost against clean."""
    out: dict = {}
    variants = sorted({r["variant"] for r in rows})
    for v in variants:
        clean = {r["fold"]: r for r in rows if r["variant"] == v and r["kind"] == "clean"}
        out[v] = {}
        for kind in kinds:
            levels = []
            for level in (0, *LEVELS[kind]):
                sel = [r for r in rows if r["variant"] == v and (r["kind"] == kind and r["level"] == level
                                                                 or level == 0 and r["kind"] == "clean")]
                d = np.array([r["dice"] for r in sel])
                b = np.array([r["biou"] for r in sel])
                loss = np.array([clean[r["fold"]]["dice"] - r["dice"] for r in sel])
                sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)  # noqa: E731
                levels.append({"level": level, "dice_mean": float(d.mean()), "dice_sd": sd(d),
                               "biou_mean": float(b.mean()), "biou_sd": sd(b), "dice_lost_mean": float(loss.mean()),
                               "folds": len(sel)})
            out[v][kind] = levels
    return out


def plot(summary: dict, kinds: list[str], path: Path, title: str) -> None:
    matplotlib.use("Agg")

    fig, axes = plt.subplots(2, len(kinds), figsize=(3.2 * len(kinds), 5.6), sharey="row", squeeze=False)
    for col, kind in enumerate(kinds):
        for v, per in summary.items():
            lv = per[kind]
            x = [r["level"] for r in lv]
            for row, key in enumerate(("dice", "biou")):
                axes[row][col].errorbar(x, [r[f"{key}_mean"] for r in lv], yerr=[r[f"{key}_sd"] for r in lv],
                                        marker="o", capsize=3, label=v)
        axes[0][col].set_title(kind.replace("_", " "))
        axes[1][col].set_xlabel({"resolution": "downsampling factor", "contrast": "contrast lost"}.get(kind, "level"))
    axes[0][0].set_ylabel("Dice")
    axes[1][0].set_ylabel("Boundary IoU")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="the CV sweep's experiment (e.g. cv-heart)")
    ap.add_argument("--storage", default="runs/tune")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--max-slices", type=int, default=None, help="a fixed random subset of each fold's test slices")
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    res = run(args.experiment, args.storage, args.kinds, args.max_slices)
    summary = summarize(res["rows"], args.kinds)
    out = {"command": command(argv, __spec__.name),
           "machine": describe(), "experiment": args.experiment, "levels": {k: LEVELS[k] for k in args.kinds},
           "max_slices": args.max_slices, "wall_s": round(time.perf_counter() - t0, 1), "summary": summary, **res}
    write_json(args.json, out)
    for v, per in summary.items():
        strongest = {k: per[k][-1]["dice_lost_mean"] for k in args.kinds}
        print(f"{v}: clean Dice {per[args.kinds[0]][0]['dice_mean']:.3f}; Dice lost at the strongest level: "
              + ", ".join(f"{k} {d:+.3f}" for k, d in strongest.items()))
    if args.plot:
        plot(summary, args.kinds, Path(args.plot), f"{args.experiment}: test folds under corruption")
        print(f"wrote {args.plot}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
