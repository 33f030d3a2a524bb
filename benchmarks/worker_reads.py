"""What one Ray worker reads to get its data: ``load_part`` (its share only) vs the full ``load_splits`` of today.

The real LGG set (``../shared/data/lgg_kaggle_3m``, FLAIR channel, 128 px, drop_empty) is converted to Parquet shards
in a temp folder with ``write_shards`` (default 256 rows a shard, 32 rows a row group), unless ``--parquet DIR`` names
shards already written. Then, for 1, 2 and 4 workers, each worker ``i`` runs ``load_part(cfg, "train", i, n)``, and
the evaluator runs ``load_part(cfg, "val")``; the old path is one ``load_splits(cfg)``, which every worker and the
evaluator ran. ``--formats parquet lgg`` also measures the file layout read in place.

Bytes are counted at the file object (``stats["bytes_read"]``: Parquet bytes fetched; for lgg, sizes of the files
decoded); the old path reads every byte of every shard or file, so its figure is their total size. As a cross-check the
kernel's count (``rchar`` of ``/proc/self/io``) is shown too: it matches for Parquet but misses most lgg bytes, because
libtiff memory-maps the TIFFs instead of reading them. Calls run one after another in one process, so the page cache
is warm and the seconds are decoding and preparation, not disk or network; on object storage the byte counts are what
a worker downloads. Every run checks that the parts, concatenated, equal ``load_splits(cfg).train`` row for row.

    python -m benchmarks.worker_reads [--parquet DIR] [--formats parquet lgg]
                                      [--json benchmarks/results/worker_reads.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from rl_agents.experiment.provenance import command, describe as machine, write_json

from pixelrl_env.dataset import describe, load_part, load_splits

from pixelrl_env.data_config import DataConfig
from pixelrl_env.parquet import shard_paths
from pixelrl_env.parquet_write import write_shards
from pixelrl_env.sources import iter_source, lgg_pairs

ROOT = Path(__file__).resolve().parents[1]
LGG = ROOT.parent / "shared" / "data" / "lgg_kaggle_3m"
WORKERS = (1, 2, 4)


def rchar() -> int:
    """Bytes this process has read through system calls (Linux); -1 where unavailable."""
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
    except (OSError, StopIteration):
        return -1


def timed(call) -> tuple[object, dict]:
    """Run ``call(stats)``; its result and a row of seconds, kernel-counted bytes and the reader's own counts."""
    stats: dict = {}
    r0, t0 = rchar(), time.perf_counter()
    out = call(stats)
    seconds, r1 = time.perf_counter() - t0, rchar()
    row = {"seconds": round(seconds, 3), "rchar_bytes": r1 - r0 if r0 >= 0 else None}
    row.update({k: stats[k] for k in ("bytes_read", "rows_decoded", "files_opened") if k in stats})
    return out, row


def convert(out: Path) -> dict:
    t0 = time.perf_counter()
    manifest = write_shards(iter_source("lgg", LGG), str(out))
    print(f"converted {manifest['n_samples']} LGG slices to {len(manifest['shards'])} shards in "
          f"{time.perf_counter() - t0:.1f} s: {out}")
    return manifest


def parquet_info(path: str) -> dict:
    fs, files = shard_paths(path)
    groups = [pq.ParquetFile(fs.open_input_file(f)).metadata.num_row_groups for f in files]
    return {"shards": len(files), "row_groups": sum(groups), "bytes": sum(fs.get_file_info(f).size for f in files)}


def whole_bytes(cfg: DataConfig) -> tuple[int, int]:
    """Bytes and files the old path reads: every shard, or every image and mask file, in full."""
    if cfg.format == "parquet":
        fs, files = shard_paths(cfg.path)
        return sum(fs.get_file_info(f).size for f in files), len(files)
    files = [p for _, img, mask in lgg_pairs(cfg.path) for p in (img, mask)]
    return sum(p.stat().st_size for p in files), len(files)


def measure(cfg: DataConfig) -> list[dict]:
    """The old full read, then every worker's part for each worker count, then the evaluator's val."""
    rows = []
    full, row = timed(lambda st: load_splits(cfg))
    row["bytes_read"], row["files_opened"] = whole_bytes(cfg)
    row["rows_decoded"] = full.n_read
    rows.append({"reader": "load_splits (old, every worker)", "workers": None, "worker": None,
                 "slices": len(full.train), **row})
    for n in WORKERS:
        parts = []
        for i in range(n):
            part, row = timed(lambda st: load_part(cfg, "train", i, n, stats=st))
            parts.append(part)
            rows.append({"reader": "load_part train", "workers": n, "worker": i, "slices": len(part), **row})
        assert [s for p in parts for s in p.sources] == full.train.sources
        assert np.array_equal(np.concatenate([p.images for p in parts]), full.train.images)
        assert np.array_equal(np.concatenate([p.masks for p in parts]), full.train.masks)
    val, row = timed(lambda st: load_part(cfg, "val", stats=st))
    assert val.sources == full.val.sources and np.array_equal(val.images, full.val.images)
    rows.append({"reader": "load_part val (evaluator)", "workers": 1, "worker": None, "slices": len(val), **row})
    _, row = timed(lambda st: describe(cfg, stats=st))
    rows.append({"reader": "describe", "workers": None, "worker": None, "slices": None, **row})
    return rows


def mb(v) -> str:
    return "-" if v is None else f"{v / 1e6:8.1f}"


def print_table(fmt: str, rows: list[dict]) -> None:
    print(f"\n{fmt}: reader                           workers worker slices decoded  MB read  rchar MB  seconds"
          + ("  (rchar misses mmap'd TIFF bytes)" if fmt == "lgg" else ""))
    for r in rows:
        worker = "-" if r["worker"] is None else r["worker"]
        print(f"{'':{len(fmt) + 2}}{r['reader']:33s} {r['workers'] or '-':>7} {worker:>6} "
              f"{r['slices'] if r['slices'] is not None else '-':>6} {r.get('rows_decoded', '-'):>7} "
              f"{mb(r.get('bytes_read'))} {mb(r['rchar_bytes'])}  {r['seconds']:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parquet", help="shards already written from the LGG set (skips the conversion)")
    ap.add_argument("--formats", nargs="+", default=["parquet"], choices=["parquet", "lgg"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "worker_reads.json"))
    args = ap.parse_args()
    if not LGG.is_dir():
        raise SystemExit(f"real data missing: {LGG} (see ../shared/DESIGN.md section 4)")
    with tempfile.TemporaryDirectory(prefix="worker_reads_") as tmp:
        pq_path = args.parquet or str(Path(tmp) / "lgg_parquet")
        if not args.parquet:
            convert(Path(pq_path))
        out = {"machine": machine(), "command": command(), "data": str(LGG),
               "config": {"channels": [1], "size": 128, "drop_empty": True, "seed": 0},
               "parquet": parquet_info(pq_path), "results": {}}
        for fmt in args.formats:
            cfg = DataConfig(format=fmt, path=pq_path if fmt == "parquet" else str(LGG), channels=[1], size=128)
            out["split_sizes"] = {k: v for k, v in describe(cfg).items() if k.startswith("n_")}
            out["results"][fmt] = measure(cfg)
            print_table(fmt, out["results"][fmt])
    write_json(args.json, out)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
