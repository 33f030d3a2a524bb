"""``prepare-data``, ``data-info`` and ``env-demo``: data in, splits shown, the environment tried."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pixelrl_env.dataset import load_splits
from pixelrl_env.io import BadFiles, DataError
from pixelrl_env.parquet_write import write_shards
from pixelrl_env.sources import iter_source
from rl_agents.config import load_config, to_dict
from rl_agents.cli.common import console, err_console, removed_if_left_empty
from rl_agents.experiment import env_demo as demo


def prepare_data(args: argparse.Namespace) -> int:
    bad = BadFiles(skip_bad=args.skip_bad)
    t0 = time.perf_counter()
    samples = iter_source(args.format, args.src, bad=bad, group_pattern=args.group_pattern,
                          slice_axis=args.slice_axis, label_value=args.label_value)
    if args.channels or args.foreground_only:
        samples = _select(samples, [int(c) for c in args.channels.split(",")] if args.channels else None,
                          args.foreground_only)

    def counted(it, bar, task):
        for x in it:
            yield x
            bar.advance(task)

    with removed_if_left_empty(args.out), Progress(SpinnerColumn(), TextColumn("{task.description}"),
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

    for s in samples:
        if foreground_only and not s.mask.any():
            continue
        if channels is not None:
            img = s.image if s.image.ndim == 3 else s.image[..., None]
            if max(channels) >= img.shape[2]:
                raise DataError(f"{s.source}: --channels {channels} but the image has {img.shape[2]} channel(s)")
            s = replace(s, image=img[..., channels])
        yield s


def data_info(args: argparse.Namespace) -> int:
    data = load_config(args.config, args.set).data
    splits = load_splits(data)
    s = splits.summary()
    fold = f", fold {data.fold} of {data.folds}" if data.folds else ""
    table = Table(title=f"{data.format} data: {data.path or 'built-in'}{fold}")
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


def env_demo(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    console.print(f"env-demo: data {asdict(cfg.data)}, pa3c.t_max {cfg.pa3c.t_max}, pa3c.action_set "
                  f"{cfg.pa3c.action_set}, optim.batch_size {cfg.optim.batch_size}", highlight=False)
    t0 = time.perf_counter()
    results = demo.env_demo(cfg)
    dt = time.perf_counter() - t0
    n = next(iter(results.values()))["n_images"]
    table = Table(title=f"Pixel agents on {n} {cfg.data.format} validation+test slices ({cfg.data.size or 'native'} px)")
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
        Path(args.json).write_text(json.dumps({"config": to_dict(cfg), "results": results, "seconds": dt}, indent=2))
    return 0
