"""The ``pixeldrl`` command line (also behind ``python train.py``)."""

from __future__ import annotations

import argparse
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


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from pixelrl_env.io import BadFiles
    from pixelrl_env.parquet import write_shards
    from pixelrl_env.sources import iter_source

    bad = BadFiles(skip_bad=args.skip_bad)
    t0 = time.perf_counter()
    samples = iter_source(args.format, args.src, bad=bad, group_pattern=args.group_pattern)
    manifest = write_shards(samples, args.out, shard_size=args.shard_size, bad=bad)
    dt = time.perf_counter() - t0
    console.print(
        f"wrote {manifest['n_samples']} slices of {manifest['n_groups']} groups in {len(manifest['shards'])} "
        f"shard(s) to {args.out} in {dt:.1f} s"
    )
    if args.skip_bad:
        console.print(f"skipped {len(bad)} bad file(s)" + (": see manifest.json" if len(bad) else ""))
    return 0


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
    )
    if args.format == "synthetic":
        cfg.synthetic = {**cfg.synthetic, "size": args.size or 128, "difficulty": args.difficulty}
    return cfg


def _cmd_data_info(args: argparse.Namespace) -> int:
    from pixelrl_env.dataset import load_splits

    splits = load_splits(_data_config(args))
    s = splits.summary()
    table = Table(title=f"{args.format} data: {args.path or 'built-in'}")
    for col in ("split", "slices", "groups", "foreground fraction"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for name in ("train", "val", "test"):
        table.add_row(name, str(s[name]["slices"]), str(s[name]["groups"]), f"{s[name]['foreground_fraction']:.4f}")
    console.print(table)
    console.print(f"read {s['n_read']} slices, skipped {s['n_bad_skipped']} bad file(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2))
    return 0


def _cmd_env_demo(args: argparse.Namespace) -> int:
    from .env_demo import DemoConfig, env_demo

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixeldrl", description="PixelDRL-MG: pixel-level deep RL segmentation on Ray")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    prep = sub.add_parser("prepare-data", help="convert an LGG-layout or images/masks folder to Parquet shards")
    prep.add_argument("src", help="source folder")
    prep.add_argument("out", help="output folder or URI (s3://bucket/prefix, gs://..., file:///...)")
    prep.add_argument("--format", required=True, choices=("lgg", "folder", "synthetic"))
    prep.add_argument("--skip-bad", action="store_true", help="log and skip unreadable or invalid files")
    prep.add_argument("--shard-size", type=int, default=256, help="slices per shard (default 256)")
    prep.add_argument("--group-pattern", default=None, help="folder format: regex giving the patient id of a stem")
    prep.set_defaults(func=_cmd_prepare_data)

    info = sub.add_parser("data-info", help="show the patient-level split of a data set")
    info.add_argument("--format", default="synthetic", choices=("lgg", "folder", "parquet", "synthetic"))
    info.add_argument("--path", default=None)
    info.add_argument("--size", type=int, default=128, help="resize to SIZE x SIZE (0 = native)")
    info.add_argument("--channels", default=None, help="comma-separated channel indices, e.g. 1 for LGG FLAIR")
    info.add_argument("--keep-empty", action="store_true", help="keep slices without foreground")
    info.add_argument("--k-shot", type=int, default=None)
    info.add_argument("--seed", type=int, default=0)
    info.add_argument("--skip-bad", action="store_true")
    info.add_argument("--group-pattern", default=None)
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
    return p


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if default_command and (not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help"))):
        argv = [default_command, *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DataError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
