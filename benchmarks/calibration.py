"""Calibration of PixelDRL-MG's and the U-Net's per-pixel foreground probability, on validation patients.

For each fold of a CV sweep (``tune_configs/cv_*.yaml``), both models' best checkpoints segment that fold's
validation patients (every slice, at the trained size; truth resized to it as in training). Pooled over the folds,
per model: expected calibration error (15 bins), Brier score, the reliability diagram, and how well the uncertainty
map finds the errors (AUROC of uncertainty against "this pixel is wrong", and the share of all errors among the most
uncertain 1-50 % of pixels; an error is a pixel where the delivered mask, PixelDRL-MG's greedy one, differs from the
truth). For PixelDRL-MG the map before issue 25 (the policy's entropy averaged over the steps)
is scored beside today's (the binary entropy of the propagated probability, :mod:`rl_agents.algo.inference`).

    python -m benchmarks.calibration --experiment cv-lgg-recipe --a recipe --b unet \
        --json benchmarks/results/calibration_lgg.json --plot benchmarks/results/calibration_lgg.png
"""

from __future__ import annotations

import argparse
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from pixelrl_env.calibration import brier, error_auroc, error_by_uncertainty, expected_calibration_error, reliability
from pixelrl_env.dataset import iter_samples
from pixelrl_env.folds import config_split
from pixelrl_env.prepare import prepare_rows, working_mask
from rl_agents.algo.inference import apply_actions, binary_entropy, encode, greedy_actions, step_policy
from rl_agents.experiment.cv import find_trials
from rl_agents.experiment.evaluate import predict_probability
from rl_agents.experiment.loaded import load
from rl_agents.experiment.provenance import command, describe, write_json


@torch.inference_mode()
def policy_entropy_map(model: torch.nn.Module, x: np.ndarray, t_max: int) -> np.ndarray:
    """The map before issue 25: the policy's entropy averaged over the greedy steps, over log(n_actions)."""
    images = torch.as_tensor(x)
    state = torch.ones(images.shape[0], *images.shape[2:], dtype=torch.bool)
    ent = torch.zeros(state.shape)
    context = encode(model, images)
    for _ in range(t_max):
        logits = step_policy(model, context, state).float()
        logp = F.log_softmax(logits, dim=1)
        ent -= (logp.exp() * logp).sum(dim=1)
        state = apply_actions(state, greedy_actions(logits), model.n_actions)
    return (ent / (t_max * math.log(model.n_actions))).numpy()


def fold_pixels(trial, batch: int = 32) -> dict[str, np.ndarray]:
    """Probability, the delivered mask, truth and (PixelDRL-MG) the old map of every validation pixel of one trial's
    fold."""
    m = load(trial.checkpoint)
    samples = list(iter_samples(m.cfg.data))
    val = config_split([s.group for s in samples], m.cfg.data)[1]
    rows = [i for i, s in enumerate(samples) if s.group in val]
    probs, masks, truths, old, has_fg = [], [], [], [], []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        x = prepare_rows(samples, chunk, m.cfg.data)
        mask, prob = predict_probability(m.model, m.cfg, x, m.device)
        probs.append(prob)
        masks.append(mask)
        truths.append(np.stack([working_mask(samples[j].mask, m.cfg.data) for j in chunk]))
        has_fg.append(np.repeat([samples[j].mask.any() for j in chunk], truths[-1][0].size))
        if not getattr(m.model, "is_unet", False):
            old.append(policy_entropy_map(m.model, x, m.cfg.pa3c.t_max))
    out = {"prob": np.concatenate(probs).ravel(), "mask": np.concatenate(masks).ravel().astype(bool),
           "has_fg": np.concatenate(has_fg), "truth": np.concatenate(truths).ravel().astype(bool),
           "patients": np.array(sorted(val)), "slices": np.array(len(rows))}
    if old:
        out["old_map"] = np.concatenate(old).ravel()
    return out


def scores(prob: np.ndarray, mask: np.ndarray, truth: np.ndarray, old_map: np.ndarray | None) -> dict:
    errors = mask != truth  # of the mask a user gets: PixelDRL-MG's greedy one, the U-Net's p >= 0.5
    unc = binary_entropy(torch.from_numpy(prob)).numpy()
    rec = {"pixels": int(prob.size), "foreground_share": float(truth.mean()), "error_rate": float(errors.mean()),
           "ece": expected_calibration_error(prob, truth), "brier": brier(prob, truth),
           "error_auroc": error_auroc(unc, errors), "errors_in_top": error_by_uncertainty(unc, errors),
           "reliability": reliability(prob, truth)}
    if old_map is not None:
        rec["old_map"] = {"error_auroc": error_auroc(old_map, errors),
                          "errors_in_top": error_by_uncertainty(old_map, errors)}
    return rec


def plot(results: dict, path: str) -> None:
    """Reliability diagrams and error-vs-uncertainty curves, all slices (solid) and slices with foreground (dashed)."""
    matplotlib.use("Agg")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot([0, 1], [0, 1], "k:", lw=1)
    for colour, (name, model) in zip(("tab:blue", "tab:orange"), results.items()):
        for subset, style in (("all_slices", "-"), ("foreground_slices", "--")):
            r = model[subset]
            pts = [(b["mean_prob"], b["foreground_rate"]) for b in r["reliability"] if b["count"]]
            ax[0].plot(*zip(*pts), "o" + style, ms=3, color=colour, label=f"{name}, {subset} (ECE {r['ece']:.4f})")
            curve = r["errors_in_top"]
            ax[1].plot([c["top_fraction"] for c in curve], [c["share_of_errors"] for c in curve], "o" + style,
                       ms=3, color=colour, label=f"{name}, {subset}")
            if "old_map" in r and subset == "all_slices":
                old = r["old_map"]["errors_in_top"]
                ax[1].plot([c["top_fraction"] for c in old], [c["share_of_errors"] for c in old], "x:", ms=4,
                           color="tab:grey", label=f"{name}, map before issue 25")
    ax[0].set(xlabel="predicted probability of foreground", ylabel="observed foreground rate",
              title="reliability (validation pixels)")
    ax[1].set(xscale="log", xlabel="most uncertain share of pixels", ylabel="share of all errors",
              title="errors found by the uncertainty map")
    for a in ax:
        a.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="a CV sweep under --storage (e.g. cv-lgg-recipe)")
    p.add_argument("--storage", default="runs/tune")
    p.add_argument("--a", default="recipe", help="the PixelDRL-MG variant")
    p.add_argument("--b", default="unet", help="the U-Net variant")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    p.add_argument("--json", required=True)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    trials = find_trials(args.storage, args.experiment, {args.a, args.b})
    folds = sorted({t.fold for t in trials}) if args.folds is None else [int(f) for f in args.folds.split(",")]
    rec = {"command": command(argv), "machine": describe(), "experiment": args.experiment, "folds": folds,
           "split": "val", "resolution": "the trained size (data.size)", "models": {}}
    for variant in (args.a, args.b):
        parts = [fold_pixels(next(t for t in trials if t.variant == variant and t.fold == f)) for f in folds]
        pooled = {k: np.concatenate([q[k] for q in parts]) for k in ("prob", "mask", "truth", "has_fg")}
        if "old_map" in parts[0]:
            pooled["old_map"] = np.concatenate([q["old_map"] for q in parts])
        rec["models"][variant] = r = {"slices": int(sum(int(q["slices"]) for q in parts)),
                                      "patients": int(sum(len(q["patients"]) for q in parts))}
        # every slice of the validation patients (what a user's volume holds), and the slices with foreground only
        # (the training protocol, drop_empty): models trained without empty slices mark some on them
        for subset, sel in (("all_slices", slice(None)), ("foreground_slices", pooled["has_fg"])):
            r[subset] = scores(*(pooled[k][sel] for k in ("prob", "mask", "truth")),
                               pooled["old_map"][sel] if "old_map" in pooled else None)
            q = r[subset]
            print(f"{variant:8s} {subset:17s} ECE {q['ece']:.4f}  Brier {q['brier']:.4f}  error AUROC "
                  f"{q['error_auroc']:.3f}" + (f" (map before issue 25: {q['old_map']['error_auroc']:.3f})"
                                               if "old_map" in q else "")
                  + f"  errors in the top 5 %: {q['errors_in_top'][1]['share_of_errors']:.2f}", flush=True)
        write_json(args.json, rec)
    if args.plot:
        plot(rec["models"], args.plot)


if __name__ == "__main__":
    main()
