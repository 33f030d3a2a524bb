"""``train``, ``baseline``, ``tune`` and ``compare``: runs, sweeps, and MLflow's runs side by side."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rl_agents.cli.common import cell, console, print_metrics, removed_if_left_empty
from rl_agents.config import load_config
from rl_agents.experiment.lifecycle import run_training
from rl_agents.experiment.sweep import run_sweep
from rl_agents.experiment.compare import compare as compare_runs
from rl_agents.experiment.tracking import tracking_uri, ui_address


def tune(args: argparse.Namespace) -> int:
    summary = run_sweep(args.tune, resume=args.resume,
                        variants=args.variants.split(",") if getattr(args, "variants", None) else None)
    console.print(f"{summary['n_trials']} trials ({summary['n_errors']} errored); results in {summary['storage']}; "
                  f"MLflow parent run {summary['parent_run_id']}")
    if summary["best_run_name"]:
        console.print(f"best trial{' so far' if summary['interrupted'] else ''}: {summary['best_run_name']} (its "
                      "MLflow run has this name; `pixeldrl compare` lists it first)", highlight=False)
        console.print("best metrics: " + ", ".join(f"{k} {cell(v)}" for k, v in summary["best_metrics"].items()),
                      highlight=False)
    if summary["interrupted"]:
        console.print(f"interrupted with {summary['n_finished']} trial(s) run to their end; Tune saved its state: "
                      f"continue with `python train.py --tune {args.tune} --resume`", highlight=False)
        return 130  # as an interrupted training run
    return 0 if summary["n_errors"] == 0 else 1


def train(args: argparse.Namespace) -> int:
    if getattr(args, "tune", None):
        return tune(args)

    cfg = load_config(args.config, args.set)
    refuse_to_replace(args.output_dir, args.resume or args.overwrite)
    with removed_if_left_empty(args.output_dir):
        metrics = run_training(cfg, args.output_dir, resume=args.resume, quiet=args.quiet)
    print_metrics(f"validation ({metrics['n_val']} slices, best checkpoint) -> {args.output_dir}", metrics)
    if "mlflow" in metrics:
        print_mlflow_run(metrics["mlflow"])
    return 0


def print_mlflow_run(rec: dict) -> None:
    """Where a finished run is in MLflow: its id, the page to open (and the command that serves it), its model."""
    uri = tracking_uri()
    serve = "" if uri.startswith(("http://", "https://")) else f" after `mlflow ui --backend-store-uri {uri}`"
    console.print(f"MLflow run {rec['run_id']}: open {ui_address(rec['experiment_id'], rec['run_id'])}{serve}",
                  highlight=False, soft_wrap=True)
    if rec.get("model_uri"):
        console.print(f"model: {rec['model_uri']} (mlflow.pytorch.load_model or mlflow models serve -m)",
                      highlight=False, soft_wrap=True)


def refuse_to_replace(output_dir: str, allowed: bool) -> None:
    """A repeated command must not replace a trained model: a folder with checkpoints needs --resume or --overwrite."""
    found = sorted(p.name for p in (Path(output_dir) / "checkpoints").glob("*.pt"))
    if found and not allowed:
        raise ValueError(f"{output_dir} holds a trained run ({', '.join(found)}): continue it with --resume, start "
                         f"afresh with --overwrite, or choose another --output-dir")


def baseline(args: argparse.Namespace) -> int:
    args.set = ["model=unet", *(args.set or [])]
    return train(args)


def compare(args: argparse.Namespace) -> int:
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    header, rows = compare_runs(args.experiment, args.metric, args.max_runs)
    table = Table(title=f"MLflow experiment {args.experiment!r} ({tracking_uri()}), best {args.metric} first")
    for col in header:
        table.add_column(col)
    for r in rows:
        table.add_row(*(cell(v) for v in r))
    # never squeeze the table into a narrow terminal: run names and values must stay readable
    Console(width=max(console.width, 24 + 16 * len(header))).print(table)
    if not rows:
        console.print("no runs yet")
    return 0
