"""``predict`` and ``export``: a trained model on a user's own images, or as one ONNX / TorchScript graph."""

from __future__ import annotations

import argparse

from rl_agents.cli.common import console
from rl_agents.experiment.export import export_checkpoint
from rl_agents.experiment.predict import predict_files


def predict(args: argparse.Namespace) -> int:
    recs, found = predict_files(args.checkpoint, args.inputs, args.output_dir, device=args.device,
                                batch_size=args.batch_size, overlay=args.overlay, gif=args.gif,
                                progress=not args.quiet, exclude=tuple(args.exclude))
    if found.skipped:
        names = ", ".join(p.name for p in found.skipped[:3]) + (", ..." if len(found.skipped) > 3 else "")
        console.print(f"skipped {len(found.skipped)} file(s) as masks, labels, earlier outputs or --exclude: {names}",
                      highlight=False)
    for r in recs:
        fg = r.get("foreground_voxels", r.get("foreground_pixels"))
        console.print(f"{r['input']} -> {r['mask']} ({'x'.join(map(str, r['shape']))}, {fg:,} foreground)",
                      highlight=False)
    console.print(f"segmented {len(recs)} input(s) into {args.output_dir}", highlight=False)
    return 0


def export(args: argparse.Namespace) -> int:
    with console.status(f"exporting {args.checkpoint} to {args.format} and checking it against torch ..."):
        meta = export_checkpoint(args.checkpoint, args.format, args.output)
    shape = "x".join(map(str, meta["inputs"]["images"]["shape"]))
    console.print(f"wrote {meta['path']} ({meta['kind']}, images {shape} -> masks, uncertainty; "
                  f"{'matches torch' if meta['checked_against_torch'] else 'NOT checked: onnxruntime missing'}) "
                  f"and {meta['metadata']}", highlight=False)
    return 0
