"""``serve``: a checkpoint behind an HTTP endpoint on Ray Serve until Ctrl-C (Ray Serve imported only here)."""

from __future__ import annotations

import argparse
import threading

from rl_agents.cli.common import console


def _replicas(spec: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(f"--replicas {spec!r}: expected MIN,MAX, e.g. 1,2") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"--replicas {spec!r}: expected 1 <= MIN <= MAX")
    return lo, hi


def serve(args: argparse.Namespace) -> int:
    from rl_agents.experiment.serve import ServeOptions, start, stop

    lo, hi = _replicas(args.replicas)
    if args.max_batch < 1 or args.max_upload_mb <= 0:
        raise ValueError("--max-batch and --max-upload-mb must be positive")
    options = ServeOptions(host=args.host, port=args.port, min_replicas=lo, max_replicas=hi,
                           replica_cpus=args.replica_cpus, max_batch=args.max_batch,
                           batch_wait_s=args.batch_wait_ms / 1000, max_upload_bytes=int(args.max_upload_mb * 2**20),
                           device=args.device)
    url = start(args.checkpoint, options)
    console.print(f"serving {args.checkpoint} at {url}/segment: POST a PNG, JPEG, TIFF or NIfTI file with "
                  f"?name=<its file name> (add &output=uncertainty for the map); GET {url}/health; Ctrl-C stops",
                  highlight=False, soft_wrap=True)
    try:
        threading.Event().wait()  # until Ctrl-C
    finally:
        stop()
    return 0
