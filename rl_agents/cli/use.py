"""``predict`` and ``export``: a trained model on a user's own images, or as one ONNX / TorchScript graph."""

from __future__ import annotations

import argparse

from rl_agents.cli.common import console, err_console
from rl_agents.experiment.export import export_checkpoint
from rl_agents.experiment.predict import predict_files, unlike_message


def predict(args: argparse.Namespace) -> int:
    recs, found = predict_files(args.checkpoint, args.inputs, args.output_dir, device=args.device,
                                batch_size=args.batch_size, overlay=args.overlay, gif=args.gif,
                                progress=not args.quiet, exclude=tuple(args.exclude))
    if found.skipped:
        names = ", ".join(p.name for p in found.skipped[:3]) + (", ..." if len(found.skipped) > 3 else "")
        console.print(f"skipped {len(found.skipped)} file(s) as masks, labels, earlier outputs or --exclude: {names}",
                      highlight=False, soft_wrap=True)
    for r in recs:
        fg = r.get("foreground_voxels", r.get("foreground_pixels"))
        console.print(f"{r['input']} -> {r['mask']} ({'x'.join(map(str, r['shape']))}, {fg:,} foreground)",
                      highlight=False, soft_wrap=True)
        if r["unlike_training"] and r["unlike_training"]["flagged"]:
            err_console.print(f"warning: {unlike_message(r['input'], r['unlike_training'])}", highlight=False,
                              soft_wrap=True)
    if recs and all(r["unlike_training"] is None for r in recs):
        err_console.print(f"note: {args.checkpoint} holds no data profile (written before predict checked inputs "
                          "against the training data): inputs were not checked", highlight=False, soft_wrap=True)
    flagged = sum(bool(r["unlike_training"] and r["unlike_training"]["flagged"]) for r in recs)
    console.print(f"segmented {len(recs)} input(s) into {args.output_dir}"
                  + (f"; {flagged} flagged as unlike the training data" if flagged else "")
                  + " (records: predictions.json)", highlight=False, soft_wrap=True)
    return 0


def export(args: argparse.Namespace) -> int:
    with console.status(f"exporting {args.checkpoint} to {args.format} and checking it against torch ..."):
        meta = export_checkpoint(args.checkpoint, args.format, args.output)
    shape = "x".join(map(str, meta["inputs"]["images"]["shape"]))
    console.print(f"wrote {meta['path']} ({meta['kind']}, images {shape} -> masks, uncertainty; "
                  f"{'matches torch' if meta['checked_against_torch'] else 'NOT checked: onnxruntime missing'}) "
                  f"and {meta['metadata']}", highlight=False)
    return 0
