"""``evaluate``, ``cv-report``, ``ablation-report`` and ``config-reference``: checkpoints scored, sweeps compared
fold by fold, the config documented."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rl_agents.cli.common import console, err_console
from rl_agents.config import reference
from rl_agents.experiment.ablation import ablation_markdown
from rl_agents.experiment.ablation import ablation_report as make_ablation_report
from rl_agents.experiment.cv import LABELS, pm_text
from rl_agents.experiment.cv import cv_report as make_cv_report
from rl_agents.experiment.evaluate import evaluate_checkpoint


def evaluate(args: argparse.Namespace) -> int:
    res = evaluate_checkpoint(args.checkpoint, args.config, args.set, split=args.split, json_out=args.json,
                              csv_out=args.csv, device=args.device, skip_bad=args.skip_bad,
                              overlays=args.overlays, max_overlays=args.max_overlays, postprocess=args.postprocess)
    pp = res["postprocess"]
    table = Table(title=f"{args.split} split, slices with foreground (n={res['n_images']}); "
                        f"all slices n={res['all_slices']['n_images']}; post-processing: {pp['rule']}"
                        + (" (chosen on val)" if pp.get("chosen_on") else ""))
    for col in ("slices", "Dice", "IoU", "PPV", "Sens", "BIoU", "HD95", "ASSD"):
        table.add_column(col, justify="right")
    blocks = [("foreground", res), ("all", res["all_slices"])]
    if "raw" in res:  # the un-post-processed rows beside the post-processed ones
        blocks = [(f"{name}, {pp['rule']}", b) for name, b in blocks]
        blocks += [("foreground, raw", res["raw"]), ("all, raw", res["raw"]["all_slices"])]
    for name, block in blocks:
        if block["n_images"]:
            table.add_row(name, *(f"{block[k]:.3f}" for k in ("dice", "iou", "ppv", "sensitivity", "biou")),
                          f"{block['hd95']:.2f}", f"{block['assd']:.2f}")
    console.print(table)
    if pp.get("validation_dice"):
        console.print(f"validation Dice by rule (n={pp['n_validation_images']}): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in pp["validation_dice"].items()))
    return 0


def cv_report(args: argparse.Namespace) -> int:
    r = make_cv_report(Path(args.storage), args.experiment, a=args.a, b=args.b, split=args.split, device=args.device,
                  postprocess=args.postprocess, json_out=args.json)
    a, b, n = r["a"], r["b"], len(r["folds"])
    wide = Console(width=max(console.width, 120))  # a metric per row, each on one line
    pts = ", ".join(f"{f}: {r['n_patients'][f]}" for f in r["folds"])
    wide.print(f"{args.experiment}: {n} of {r['k']} folds, {args.split} patients per fold ({pts}); "
               f"A = {a}, B = {b}; post-processing {args.postprocess}", highlight=False)
    if r["missing_folds"]:
        wide.print(f"[yellow]folds {r['missing_folds']} are missing for both variants: the sweep is not finished",
                   highlight=False)
    titles = {"paper": "the paper's protocol: mean over slices with foreground",
              "whole": "whole volumes and all slices (empty ones included)"}
    for block, metrics in r["metrics"].items():
        table = Table(title=f"{titles[block]}; mean ± sd over folds (sd ddof=1)")
        for col in ("metric", f"A: {a}", f"B: {b}", "A - B (paired by fold)", "A better (folds)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for m in metrics:
            digits = 2 if m == "hd95" else 3
            p = r["paired"][m]
            table.add_row(LABELS[m], pm_text(r["variants"][a][m], digits), pm_text(r["variants"][b][m], digits),
                          pm_text(p, digits), f"{p['a_wins']}/{p['n']}" + (f" ({p['ties']} tied)" if p["ties"] else ""))
        wide.print(table)
    for v in (a, b):
        folds = r["per_fold"][v]
        upd = [folds[f]["budget"]["updates"] for f in r["folds"]]
        wall = [folds[f]["budget"]["wall_time_s"] or 0.0 for f in r["folds"]]
        bud = r["budgets"][v]
        wide.print(f"{v}: max_minutes {bud['max_minutes']}, max_updates {bud['max_updates']}, threads "
                   f"{bud['threads']}; updates done {upd}, training wall {[round(w) for w in wall]} s",
                   highlight=False)
    if not r["budgets_equal"]:
        wide.print(f"[yellow]the budgets of {a} and {b} differ: not an equal-budget comparison", highlight=False)
    m = r["machine"]
    wide.print(f"evaluated on {m['cpu']} ({m['cores']} cores), torch {m['torch']}"
               + (f"; JSON with every per-fold figure: {args.json}" if args.json else ""), highlight=False)
    return 0


def ablation_report(args: argparse.Namespace) -> int:
    r = make_ablation_report(Path(args.storage), args.experiment, baseline=args.baseline, device=args.device,
                        json_out=args.json, only=args.only.split(",") if args.only else None, merge=args.merge)
    base, n = r["baseline"], len(r["folds"])
    wide = Console(width=max(console.width, 230))  # eleven columns, each header on one line
    table = Table(title=f"{args.experiment}: each variant minus {base!r}, paired by fold ({n} of {r['k']} folds; "
                        "mean ± sd over folds). Read the validation columns; test columns choose nothing")
    for col in ("variant", "changes", "updates", "val Dice", "Δ val Dice (wins)", "test Dice", "Δ test Dice",
                "Δ test BIoU", "Δ test HD95", "Δ test Dice/volume", "Δ test empty FP"):
        table.add_column(col, justify="left" if col in ("variant", "changes") else "right", no_wrap=col != "changes")
    for v, row in r["rows"].items():
        val, test = row["val"], row["test"]
        changes = ", ".join(f"{k}={w}" for k, w in row["changes"].items()) or "(the paper's defaults)"

        def delta(block: dict, m: str, digits: int = 3) -> str:
            return "" if v == base else pm_text(block["paired"][m], digits)

        wins = "" if v == base else f" ({val['paired']['dice']['a_wins']}/{val['paired']['dice']['n']})"
        table.add_row(v, changes, "/".join(str(u) for u in row["updates"]), pm_text(val["variants"][v]["dice"], 3),
                      delta(val, "dice") + wins, pm_text(test["variants"][v]["dice"], 3), delta(test, "dice"),
                      delta(test, "biou"), delta(test, "hd95", 2), delta(test, "volume_dice"),
                      delta(test, "empty_fp_rate"))
    wide.print(table)
    m = r["machine"]
    wide.print(f"evaluated on {m['cpu']} ({m['cores']} cores), torch {m['torch']}"
               + (f"; JSON with every per-fold figure: {args.json}" if args.json else ""), highlight=False)
    if r["incomplete"] or r["unfinished"]:
        done = ", ".join(f"{v} (folds {f})" for v, f in r["incomplete"].items()) or "none"
        wide.print(f"not in the table, the sweep has not finished them: {len(r['unfinished'])} trial(s) without "
                   f"best.pt or metrics.json; variants with some folds done: {done}", highlight=False)
    if r.get("merged"):
        wide.print(f"rows from {r['merged']['from']} (made by `{r['merged']['command']}`): "
                   f"{', '.join(r['merged']['variants'])}", highlight=False)
    if args.markdown:
        print(ablation_markdown(r))
    return 0


def config_reference(args: argparse.Namespace) -> int:
    if args.check:
        problem = reference.check(Path(args.check))
        if problem:
            err_console.print(problem, highlight=False)
            return 1
        return 0
    if args.write:
        Path(args.write).write_text(reference.render())
        console.print(f"wrote {args.write}", highlight=False)
    else:
        print(reference.render(), end="")
    return 0
