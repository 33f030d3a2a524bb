"""The ``pixeldrl`` command line (also behind ``python train.py``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pixelrl_env.io import DataError

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def _removed_if_left_empty(path: str | Path):
    """A local folder this command creates is removed again if the command fails before writing a file into it."""
    p = None if "://" in str(path) else Path(path)
    existed = p is None or p.exists()
    try:
        yield
    except BaseException:
        if not existed and p.is_dir():
            for d in sorted((q for q in p.rglob("*") if q.is_dir()), key=lambda q: len(q.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only empty ones: a checkpoint or shard already written stays
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from pixelrl_env.io import BadFiles
    from pixelrl_env.parquet import write_shards
    from pixelrl_env.sources import iter_source

    bad = BadFiles(skip_bad=args.skip_bad)
    t0 = time.perf_counter()
    samples = iter_source(args.format, args.src, bad=bad, group_pattern=args.group_pattern,
                          slice_axis=args.slice_axis, label_value=args.label_value)
    if args.channels or args.foreground_only:
        samples = _select(samples, [int(c) for c in args.channels.split(",")] if args.channels else None,
                          args.foreground_only)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    def counted(it, bar, task):
        for x in it:
            yield x
            bar.advance(task)

    with _removed_if_left_empty(args.out), Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                                   TextColumn("{task.completed} slices"), TimeElapsedColumn(),
                                                   console=err_console, transient=True) as bar:
        task = bar.add_task(f"converting {args.src}", total=None)
        manifest = write_shards(counted(samples, bar, task), args.out, shard_size=args.shard_size, bad=bad)
    dt = time.perf_counter() - t0
    console.print(
        f"wrote {manifest['n_samples']} slices of {manifest['n_groups']} groups in {len(manifest['shards'])} "
        f"shard(s) to {args.out} in {dt:.1f} s"
    )
    if args.skip_bad:
        console.print(f"skipped {len(bad)} bad file(s)" + (": see _manifest.json" if len(bad) else ""))
    return 0


def _select(samples, channels: list[int] | None, foreground_only: bool):
    """A smaller copy: only ``channels`` of each image, only slices with foreground (at the native resolution)."""
    from dataclasses import replace

    for s in samples:
        if foreground_only and not s.mask.any():
            continue
        if channels is not None:
            img = s.image if s.image.ndim == 3 else s.image[..., None]
            if max(channels) >= img.shape[2]:
                raise DataError(f"{s.source}: --channels {channels} but the image has {img.shape[2]} channel(s)")
            s = replace(s, image=img[..., channels])
        yield s


def _data_config(args: argparse.Namespace):
    from pixelrl_env.dataset import DataConfig

    cfg = DataConfig(
        format=args.format,
        path=args.path,
        size=None if args.size == 0 else args.size,
        channels=[int(c) for c in args.channels.split(",")] if args.channels else None,
        drop_empty=not args.keep_empty,
        seed=args.seed,
        k_shot=args.k_shot,
        skip_bad=args.skip_bad,
        group_pattern=args.group_pattern,
        slice_axis=args.slice_axis,
        label_value=args.label_value,
        folds=args.folds,
        fold=args.fold,
    )
    if args.format == "synthetic":
        cfg.synthetic = {**cfg.synthetic, "size": args.size or 128, "difficulty": args.difficulty}
    return cfg


def _cmd_data_info(args: argparse.Namespace) -> int:
    from pixelrl_env.dataset import load_splits

    data = _data_config(args)
    splits = load_splits(data)
    s = splits.summary()
    fold = f", fold {args.fold} of {args.folds}" if args.folds else ""
    table = Table(title=f"{args.format} data: {args.path or 'built-in'}{fold}")
    for col in ("split", "slices read", "slices kept", "groups", "foreground fraction"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name in ("train", "val", "test"):
        table.add_row(name, str(s[name]["read"]), str(s[name]["slices"]), str(s[name]["groups"]),
                      f"{s[name]['foreground_fraction']:.4f}")
    console.print(table)
    kept = sum(s[k]["slices"] for k in ("train", "val", "test"))
    why = []
    if data.drop_empty:
        why.append("slices without foreground dropped (drop_empty, the paper's protocol"
                   + (f"; train keeps {data.train_empty:.0%} of its empty ones" if data.train_empty else "") + ")")
    if data.k_shot:
        why.append(f"train cut to k_shot={data.k_shot}")
    console.print(f"read {s['n_read']} slices, kept {kept}" + (f": {'; '.join(why)}" if kept < s["n_read"] else "")
                  + f"; skipped {s['n_bad_skipped']} bad file(s)", highlight=False)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2))
    return 0


def _cmd_env_demo(args: argparse.Namespace) -> int:
    from rl_agents.experiment.env_demo import DemoConfig, env_demo

    cfg = DemoConfig(
        size=args.size,
        difficulty=args.difficulty,
        n_patients=args.n_patients,
        batch_size=args.batch_size,
        t_max=args.t_max,
        action_set=args.action_set,
        seed=args.seed,
    )
    console.print(f"env-demo config: {asdict(cfg)}")
    t0 = time.perf_counter()
    results = env_demo(cfg)
    dt = time.perf_counter() - t0
    n = next(iter(results.values()))["n_images"]
    table = Table(title=f"Pixel agents on {n} synthetic validation+test slices ({cfg.difficulty}, {cfg.size}px)")
    cols = {"dice": "Dice", "iou": "IoU", "ppv": "PPV", "sensitivity": "Sens", "biou": "BIoU", "hd95": "HD95",
            "assd": "ASSD", "return_per_image": "Return"}
    table.add_column("policy")
    for c in cols.values():
        table.add_column(c, justify="right")
    for policy, m in results.items():
        table.add_row(policy, *(f"{m[c]:.3f}" if c not in ("hd95", "assd", "return_per_image") else f"{m[c]:.1f}"
                                for c in cols))
    console.print(table)
    console.print(f"done in {dt:.1f} s ('keep' = the all-foreground start left unchanged)")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": asdict(cfg), "results": results, "seconds": dt}, indent=2))
    return 0


def _print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    for col in ("Dice", "IoU", "PPV", "Sens", "BIoU", "HD95", "params", "wall s"):
        table.add_column(col, justify="right")
    g = metrics.get
    table.add_row(*(f"{g('val/' + k, float('nan')):.3f}" for k in ("dice", "iou", "ppv", "sensitivity", "biou")),
                  f"{g('val/hd95', float('nan')):.2f}", f"{g('params', 0):,}", f"{g('wall_time_s', 0):.0f}")
    console.print(table)


def _cmd_tune(args: argparse.Namespace) -> int:
    from rl_agents.experiment.sweep import run_sweep

    summary = run_sweep(args.tune, resume=args.resume,
                        variants=args.variants.split(",") if getattr(args, "variants", None) else None)
    console.print(f"{summary['n_trials']} trials ({summary['n_errors']} errored); results in {summary['storage']}; "
                  f"MLflow parent run {summary['parent_run_id']}")
    if summary["best_run_name"]:
        console.print(f"best trial{' so far' if summary['interrupted'] else ''}: {summary['best_run_name']} (its "
                      "MLflow run has this name; `pixeldrl compare` lists it first)", highlight=False)
        console.print("best metrics: " + ", ".join(f"{k} {_cell(v)}" for k, v in summary["best_metrics"].items()),
                      highlight=False)
    if summary["interrupted"]:
        console.print(f"interrupted with {summary['n_finished']} trial(s) run to their end; Tune saved its state: "
                      f"continue with `python train.py --tune {args.tune} --resume`", highlight=False)
        return 130  # as an interrupted training run
    return 0 if summary["n_errors"] == 0 else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from rl_agents.config import load_config

    if getattr(args, "tune", None):
        return _cmd_tune(args)
    from rl_agents.experiment.lifecycle import run_training

    cfg = load_config(args.config, args.set)
    with _removed_if_left_empty(args.output_dir):
        metrics = run_training(cfg, args.output_dir, resume=args.resume, quiet=args.quiet)
    _print_metrics(f"validation ({metrics['n_val']} slices, best checkpoint) -> {args.output_dir}", metrics)
    return 0


def _cell(v) -> str:
    """A table cell: counts with thousands separators, other numbers to 4 significant digits, never exponents for
    numbers a person reads (a parameter count, seconds); text (a param as MLflow stores it) parsed first."""
    if isinstance(v, str):  # a param: an integer one (seed, fold) stays as typed
        try:
            v = float(v) if any(c in v for c in ".eE") else v
        except ValueError:
            return v
        if isinstance(v, str):
            return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v != v:  # NaN: not logged for this run
        return "-"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1e-3:
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
    return f"{v:.3g}"


def _cmd_compare(args: argparse.Namespace) -> int:
    from rl_agents.experiment.tracking import compare, tracking_uri

    header, rows = compare(args.experiment, args.metric, args.max_runs)
    table = Table(title=f"MLflow experiment {args.experiment!r} ({tracking_uri()}), best {args.metric} first")
    for col in header:
        table.add_column(col)
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    # never squeeze the table into a narrow terminal: run names and values must stay readable
    Console(width=max(console.width, 24 + 16 * len(header))).print(table)
    if not rows:
        console.print("no runs yet")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    args.set = ["model=unet", *(args.set or [])]
    return _cmd_train(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from rl_agents.experiment.evaluate import evaluate_checkpoint

    res = evaluate_checkpoint(args.checkpoint, args.format, args.data, split=args.split, json_out=args.json,
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


def _cmd_cv_report(args: argparse.Namespace) -> int:
    from rl_agents.experiment.cv import LABELS, cv_report, pm_text

    r = cv_report(Path(args.storage), args.experiment, a=args.a, b=args.b, split=args.split, device=args.device,
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


def _cmd_ablation_report(args: argparse.Namespace) -> int:
    from rl_agents.experiment.ablation import ablation_markdown, ablation_report
    from rl_agents.experiment.cv import pm_text

    r = ablation_report(Path(args.storage), args.experiment, baseline=args.baseline, device=args.device,
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


def _cmd_predict(args: argparse.Namespace) -> int:
    from rl_agents.experiment.predict import predict_files

    recs = predict_files(args.checkpoint, args.inputs, args.output_dir, device=args.device,
                         batch_size=args.batch_size, overlay=args.overlay, gif=args.gif, progress=not args.quiet)
    for r in recs:
        fg = r.get("foreground_voxels", r.get("foreground_pixels"))
        console.print(f"{r['input']} -> {r['mask']} ({'x'.join(map(str, r['shape']))}, {fg:,} foreground)",
                      highlight=False)
    console.print(f"segmented {len(recs)} input(s) into {args.output_dir}", highlight=False)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from rl_agents.experiment.export import export_checkpoint

    with console.status(f"exporting {args.checkpoint} to {args.format} and checking it against torch ..."):
        meta = export_checkpoint(args.checkpoint, args.format, args.output)
    shape = "x".join(map(str, meta["inputs"]["images"]["shape"]))
    console.print(f"wrote {meta['path']} ({meta['kind']}, images {shape} -> masks, uncertainty; "
                  f"{'matches torch' if meta['checked_against_torch'] else 'NOT checked: onnxruntime missing'}) "
                  f"and {meta['metadata']}", highlight=False)
    return 0


def _add_train_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--config", default=None, help="YAML config (see tune_configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set lr=3e-4 --set data.size=64 (repeatable)")
    p.add_argument("--output-dir", default=default_out, help=f"where metrics and checkpoints go (default {default_out})")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _add_nifti_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slice-axis", type=int, default=-1,
                   help="nifti: volume axis cut into 2-D slices (default -1, the last)")
    p.add_argument("--label-value", type=int, default=None,
                   help="nifti: foreground = label == VALUE (default: any label > 0)")


VARIANTS_HELP = "comma-separated rows of the sweep's variant grid to run (default all), e.g. train-empty,adv-norm"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixeldrl", description="PixelDRL-MG: pixel-level deep RL segmentation on Ray")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    prep = sub.add_parser(
        "prepare-data", help="convert an LGG-layout, images/masks or NIfTI (imagesTr/labelsTr) folder to Parquet shards"
    )
    prep.add_argument("src", help="source folder")
    prep.add_argument("out", help="output folder or URI (s3://bucket/prefix, gs://..., file:///...)")
    prep.add_argument("--format", required=True, choices=("lgg", "folder", "nifti", "synthetic"))
    prep.add_argument("--skip-bad", action="store_true", help="log and skip unreadable or invalid files")
    prep.add_argument("--shard-size", type=int, default=256, help="slices per shard (default 256)")
    prep.add_argument("--group-pattern", default=None, help="folder format: regex giving the patient id of a stem")
    prep.add_argument("--channels", default=None, help="keep only these channels, e.g. 1 (LGG's FLAIR) or 0,2")
    prep.add_argument("--foreground-only", action="store_true",
                      help="keep only slices whose mask has foreground (a small copy for the paper's protocol)")
    _add_nifti_args(prep)
    prep.set_defaults(func=_cmd_prepare_data)

    tr = sub.add_parser("train", help="train PixelDRL-MG (PA3C); the default command of train.py")
    _add_train_args(tr, "runs/main")
    tr.add_argument("--tune", default=None, metavar="SWEEP",
                    help="run a Ray Tune sweep from this YAML instead (same as `pixeldrl tune SWEEP`)")
    tr.add_argument("--variants", default=None, metavar="NAMES", help=VARIANTS_HELP)
    tr.set_defaults(func=_cmd_train)

    bl = sub.add_parser("baseline", help="train the supervised MONAI U-Net on the same split and resolution")
    _add_train_args(bl, "runs/unet")
    bl.set_defaults(func=_cmd_baseline)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint at native resolution; per-image CSV and JSON")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", default=None, help="data path (default: the checkpoint's training data)")
    ev.add_argument("--format", default=None, choices=("lgg", "folder", "parquet", "nifti", "synthetic"))
    ev.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ev.add_argument("--json", default=None, help="summary JSON (the per-image CSV goes beside it)")
    ev.add_argument("--csv", default=None)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--skip-bad", action="store_true")
    ev.add_argument("--overlays", default=None, help="write image/truth/prediction/uncertainty PNGs to this folder")
    ev.add_argument("--max-overlays", type=int, default=8)
    ev.add_argument("--postprocess", default="none", metavar="{none,auto,largest,min:N}",
                    help="post-process each native-size mask: keep the largest connected component, drop islands "
                         "under N pixels, or auto (chosen on the validation split by nnU-Net's rule: only when it "
                         "raises validation Dice); default none")
    ev.set_defaults(func=_cmd_evaluate)

    info = sub.add_parser("data-info", help="show the patient-level split of a data set")
    info.add_argument("--format", default="synthetic", choices=("lgg", "folder", "parquet", "nifti", "synthetic"))
    info.add_argument("--path", default=None)
    info.add_argument("--size", type=int, default=128, help="resize to SIZE x SIZE (0 = native)")
    info.add_argument("--channels", default=None, help="comma-separated channel indices, e.g. 1 for LGG FLAIR")
    info.add_argument("--keep-empty", action="store_true", help="keep slices without foreground")
    info.add_argument("--k-shot", type=int, default=None)
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--skip-bad", action="store_true")
    info.add_argument("--group-pattern", default=None)
    _add_nifti_args(info)
    info.add_argument("--folds", type=int, default=None, help="patient-level k-fold cross-validation: k")
    info.add_argument("--fold", type=int, default=0, help="with --folds: the fold that is the test set (0..k-1)")
    info.add_argument("--difficulty", default="easy", choices=("easy", "medium", "hard"))
    info.add_argument("--json", default=None, help="also write the summary to this JSON file")
    info.set_defaults(func=_cmd_data_info)

    demo = sub.add_parser("env-demo", help="run the environment with oracle, random and do-nothing policies")
    demo.add_argument("--size", type=int, default=128)
    demo.add_argument("--difficulty", default="medium", choices=("easy", "medium", "hard"))
    demo.add_argument("--n-patients", type=int, default=20)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--t-max", type=int, default=10)
    demo.add_argument("--action-set", default="paper", choices=("paper", "three"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", default=None, help="also write the results to this JSON file")
    demo.set_defaults(func=_cmd_env_demo)

    tu = sub.add_parser("tune", help="a Ray Tune sweep (ASHA, random or Optuna search), each trial an MLflow run")
    tu.add_argument("tune", metavar="SWEEP", help="sweep YAML, e.g. tune_configs/sweep_asha.yaml")
    tu.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    tu.add_argument("--variants", default=None, metavar="NAMES", help=VARIANTS_HELP)
    tu.set_defaults(func=_cmd_tune)

    cmp_ = sub.add_parser("compare", help="MLflow runs side by side: the params that differ and the metrics")
    cmp_.add_argument("--experiment", default="pixeldrl")
    cmp_.add_argument("--metric", default="val/dice", help="sort by this metric, best first")
    cmp_.add_argument("--max-runs", type=int, default=50)
    cmp_.set_defaults(func=_cmd_compare)

    cv = sub.add_parser("cv-report", help="k-fold CV sweep: two variants compared fold by fold on test patients")
    cv.add_argument("--experiment", required=True, help="the sweep's experiment, e.g. cv-heart")
    cv.add_argument("--storage", default="runs/tune", help="the sweep's storage folder (default runs/tune)")
    cv.add_argument("--a", default="pixeldrl", help="variant A (default pixeldrl)")
    cv.add_argument("--b", default="unet", help="variant B, the baseline (default unet)")
    cv.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="each fold's patients to evaluate on (default test)")
    cv.add_argument("--json", default=None, help="write every per-fold figure, budgets and the machine here")
    cv.add_argument("--device", default="cpu")
    cv.add_argument("--postprocess", default="none", help="none (default), largest, min:N, or auto: each trial's "
                    "rule chosen on its fold's validation patients (nnU-Net's rule), the post-processed row")
    cv.set_defaults(func=_cmd_cv_report)

    pr = sub.add_parser("predict", help="segment your own images, folders of images or NIfTI volumes (no masks)")
    pr.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of any engine")
    pr.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/TIFF/BMP), folders of them, NIfTI volumes")
    pr.add_argument("--output-dir", required=True, help="masks, uncertainty maps (and overlays, GIFs) go here")
    pr.add_argument("--overlay", action="store_true", help="also a labelled image | prediction | uncertainty PNG")
    pr.add_argument("--gif", action="store_true", help="also a GIF of the mask over the t_max steps (PixelDRL-MG)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    pr.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="a checkpoint as one ONNX or TorchScript graph (dynamic batch), checked")
    ex.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of any engine")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--output", default=None,
                    help="file to write (default beside the checkpoint: <stem>.onnx or <stem>.ts.pt); "
                         "metadata goes to <file>.json")
    ex.set_defaults(func=_cmd_export)

    ab = sub.add_parser("ablation-report", help="k-fold ablation sweep: every variant minus the baseline, by fold")
    ab.add_argument("--experiment", required=True, help="the sweep's experiment, e.g. ablation-heart")
    ab.add_argument("--storage", default="runs/tune", help="the sweep's storage folder (default runs/tune)")
    ab.add_argument("--baseline", default="base", help="the variant every row is paired with (default base)")
    ab.add_argument("--json", default=None, help="write every per-fold figure, budgets and the machine here")
    ab.add_argument("--only", default=None, help="comma-separated variants to report (e.g. those with every fold done)")
    ab.add_argument("--merge", default=None, metavar="JSON",
                    help="an earlier report of the same sweep: its figures stand in for the variants (the baseline "
                         "too) that --storage lacks; checked to be the same folds and patients")
    ab.add_argument("--markdown", action="store_true", help="also print the table as Markdown (the README's)")
    ab.add_argument("--device", default="cpu")
    ab.set_defaults(func=_cmd_ablation_report)
    return p


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if default_command:  # `python train.py [-v] [options]` means `pixeldrl [-v] train [options]`
        i = 0
        while i < len(argv) and argv[i] in ("-v", "--verbose"):
            i += 1
        rest = argv[i:]
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            argv = [*argv[:i], default_command, *rest]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, FileNotFoundError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:  # training has already written checkpoints/last.pt; --resume continues
        err_console.print("interrupted: stopped with a checkpoint (continue with --resume)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
