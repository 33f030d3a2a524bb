"""The Quickstart's two timed figures, measured as a user gets them: the main job and the ASHA smoke sweep.

* ``python train.py`` (the default config: ``small`` preset, pure PA3C, synthetic easy slices at 64 px, 10-minute
  budget) run as a subprocess with MLflow on, as the Quickstart runs it, but into this benchmark's own folder and
  tracking database. From its ``metrics.json``: the final validation figures, updates, wall time, and the first
  validation pass at or above ``--target`` Dice (update and seconds).
* ``--sweep``: ``python train.py --tune tune_configs/sweep_asha.yaml`` (4 trials, ASHA, 2 at a time), timed end to
  end with its MLflow parent and nested runs.

    python -m benchmarks.main_job [--sweep] [--target 0.9] [--json benchmarks/results/main_job.json]

Each figure is a wall time on the machine named in the JSON: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rl_agents.config import flatten, upgrade
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], work: Path) -> float:
    """Run ``cmd`` in the repository with its MLflow database under ``work``; its wall time in seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{(work / 'mlflow.db').resolve()}"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def first_at(history: list[dict], target: float) -> dict | None:
    """The first validation pass of ``history`` with Dice >= ``target``: its update and training seconds."""
    for h in history:
        if h.get("val/dice") is not None and h["val/dice"] >= target:
            return {"update": h["update"], "wall_time_s": h["wall_time_s"], "val/dice": h["val/dice"]}
    return None


def main_job(work: Path, target: float, overrides: list[str] = ()) -> dict:
    out_dir = work / "main"
    cmd = [sys.executable, "train.py", "--output-dir", str(out_dir), *(a for o in overrides for a in ("--set", o))]
    wall = _run(cmd, work)
    m = json.loads((out_dir / "metrics.json").read_text())
    flat = flatten(upgrade(yaml.safe_load((out_dir / "config.yaml").read_text()), str(out_dir / "config.yaml")))
    return {
        "command": shlex.join(["python", "train.py", *(a for o in overrides for a in ("--set", o))]),
        "process_wall_s": round(wall, 1), "wall_time_s": m["wall_time_s"],
        "updates": m["updates"], "stopped_by": m.get("stopped_by"), "params": m["params"],
        "n_val_slices": m.get("n_val"), "best_update": m.get("best_update"),
        "val": {k.split("/", 1)[1]: m[k] for k in ("val/dice", "val/iou", "val/biou", "val/hd95") if k in m},
        "target": target, "first_at_target": first_at(m.get("history", []), target),
        "config": {k: flat[k] for k in ("network.preset", "optim.batch_size", "pa3c.t_max", "budget.max_minutes",
                                        "budget.max_updates", "budget.epochs", "data.size", "data.format")},
    }


def sweep(work: Path) -> dict:
    spec = yaml.safe_load((ROOT / "tune_configs" / "sweep_asha.yaml").read_text())
    spec.update(base=str(ROOT / "tune_configs" / spec["base"]), storage=str((work / "tune").resolve()))
    path = work / "sweep_asha.yaml"  # the committed sweep, with its results kept in this benchmark's folder
    path.write_text(yaml.safe_dump(spec))
    wall = _run([sys.executable, "train.py", "--tune", str(path)], work)
    trials = sorted((work / "tune" / spec["experiment"]).glob("*/run/metrics.json"))
    return {"command": "python train.py --tune tune_configs/sweep_asha.yaml", "process_wall_s": round(wall, 1),
            "trials": spec["num_samples"], "max_concurrent_trials": spec["max_concurrent_trials"],
            "trials_with_metrics": len(trials),
            "updates": [json.loads(p.read_text())["updates"] for p in trials]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/main_job.json")
    ap.add_argument("--target", type=float, default=0.9, help="validation Dice whose first crossing is timed")
    ap.add_argument("--sweep", action="store_true", help="also time the ASHA smoke sweep")
    ap.add_argument("--work", default="runs/bench_main_job", help="scratch folder (emptied first)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to the main job (the tests' dry run; the README's figure uses none)")
    args = ap.parse_args(argv)
    work = (ROOT / args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = {"machine": describe(),
           "command": command(argv, __spec__.name),
           "main_job": main_job(work, args.target, args.set)}
    if args.sweep:
        out["sweep"] = sweep(work)
    write_json(args.json, out)
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
