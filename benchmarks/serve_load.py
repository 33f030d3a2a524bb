"""Load on ``pixeldrl serve`` from a real HTTP client on loopback: requests per second and p50 / p99 latency against
replicas and batch size, for PixelDRL-MG and the U-Net of one CV fold (LGG slices as PNG; left-atrium volumes as
NIfTI), each case bounded in requests and seconds.

    python -m benchmarks.serve_load --json benchmarks/results/serve_load.json

Every request is a whole round trip as a client sees it: upload, decode, checks, preparation, the model, the mask
encoded and sent back. Ray and the client share this machine's cores (2 here), so figures are of one machine serving
itself; ratios between rows are what carries over.
"""

from __future__ import annotations

import argparse
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from rl_agents.experiment.cv import find_trials
from rl_agents.experiment.provenance import command, describe, write_json
from rl_agents.experiment.serve import ServeOptions, start, stop

LGG = Path("../shared/data/lgg_kaggle_3m")
HEART = Path("../shared/data/la_heart/imagesTr")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lgg_slices(n: int) -> list[tuple[str, bytes]]:
    """``n`` LGG slices with foreground as a client would send them (PNG of the stored 256x256x3 TIFF)."""
    out = []
    for mask in sorted(LGG.glob("*/*_mask.tif")):
        if np.asarray(Image.open(mask)).any():
            buf = io.BytesIO()
            Image.open(mask.with_name(mask.name.replace("_mask", ""))).save(buf, format="PNG")
            out.append(("slice.png", buf.getvalue()))
            if len(out) == n:
                break
    return out


def load(url: str, bodies: list[tuple[str, bytes]], n: int, concurrency: int, max_s: float) -> dict:
    """``n`` requests (or as many as ``max_s`` allows) from ``concurrency`` client threads; latencies of each."""
    session = requests.Session()
    deadline = time.perf_counter() + max_s

    def one(i: int) -> float | None:
        if time.perf_counter() > deadline:
            return None
        name, body = bodies[i % len(bodies)]
        t = time.perf_counter()
        r = session.post(f"{url}/segment", params={"name": name}, data=body, timeout=max_s)
        r.raise_for_status()
        return time.perf_counter() - t

    one(0)  # warm-up: the replica's first call
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        lat = [x for x in pool.map(one, range(n)) if x is not None]
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "concurrency": concurrency, "wall_s": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 2), "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 1),
            "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 1)}


def cases(args) -> list[dict]:
    out = []
    for exp, bodies, grid in (
            ("cv-lgg-recipe", lgg_slices(32), [(1, 1), (1, 8), (2, 8)]),
            ("cv-heart-recipe", [(p.name, p.read_bytes()) for p in sorted(HEART.glob("*.nii.gz"))[:4]], [(1, 8)])):
        trials = [t for t in find_trials(args.storage, exp, {"recipe", "unet"}) if t.fold == 0]
        for t in sorted(trials, key=lambda t: t.variant):
            for replicas, batch in grid:
                out.append({"experiment": exp, "model": t.variant, "checkpoint": str(t.checkpoint),
                            "replicas": replicas, "max_batch": batch, "bodies": bodies,
                            "n": args.requests if exp == "cv-lgg-recipe" else args.volumes,
                            "concurrency": args.concurrency if exp == "cv-lgg-recipe" else 2})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default="runs/tune")
    p.add_argument("--requests", type=int, default=96, help="slice requests per case")
    p.add_argument("--volumes", type=int, default=8, help="volume requests per case")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=90.0, help="per case")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    rec = {"command": command(argv), "machine": describe(), "rows": []}
    for case in cases(args):
        url = start(case["checkpoint"], ServeOptions(port=_port(), min_replicas=case["replicas"],
                                                     max_replicas=case["replicas"], replica_cpus=0.5,
                                                     max_batch=case["max_batch"], batch_wait_s=0.01))
        try:
            row = {k: case[k] for k in ("experiment", "model", "replicas", "max_batch")}
            row.update(load(url, case["bodies"], case["n"], case["concurrency"], args.max_seconds))
        finally:
            stop()
        rec["rows"].append(row)
        print(f"{row['experiment']:16s} {row['model']:7s} replicas {row['replicas']} batch {row['max_batch']}: "
              f"{row['requests_per_s']:6.2f} req/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms "
              f"({row['requests']} requests)", flush=True)
        write_json(args.json, rec)


if __name__ == "__main__":
    main()
