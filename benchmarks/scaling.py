"""Scaling of the asynchronous Ray A3C, side by side with a torch.multiprocessing Hogwild peer, in one run.

Measured in a steady-state window (from the moment every worker has pushed once, to the end), same model, loss,
rollout and environment, 1 CPU thread per worker:

* Ray, 1 and 2 workers: updates/s and pixel-agent steps/s; target 2 workers >= 1.7x one.
* The single-process engine at equal cores, in the same run: 1 and 2 intra-op threads (one process), against Ray with
  1 and 2 one-thread workers; target Ray >= 0.9x the single process at equal cores. Both run the same lifecycle,
  agent and rollout; the difference is one process splitting each convolution over 2 threads (intra-op) versus two
  processes each running whole rollouts on 1 thread (the small preset's convolutions are too small to split well).
* Hogwild (``rl_agents/engines/hogwild.py``), 1 and 2 processes at equal cores; target Ray / Hogwild >= 0.9.
* Asynchrony: 2 Ray workers with worker 1 slowed 5x (it sleeps 4x its compute time after each rollout); worker 0's
  rate stays within 10 % of a worker's rate in the unslowed 2-worker run.
* ``--lgg``: wall time for 1 and 2 Ray workers to reach a fixed validation Dice on LGG (64 px; stops at the target).

    python -m benchmarks.scaling [--seconds 90] [--size 128] [--lgg] [--json benchmarks/results/scaling.json]
    python -m benchmarks.scaling --asynchrony-repeats 3 --seconds 120     # the asynchrony check alone, repeated
    python -m benchmarks.scaling --equal-cores-repeats 3 --seconds 60     # one process vs Ray at 2 cores, repeated

The learner reserves no CPU here (``learner_cpus=0``) so that 2 workers x 1 CPU fit 2 cores; its share of the
machine is reported as ``learner_busy_fraction``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ray
import torch

from rl_agents.config import PAPER_STEP, load_config, override
from rl_agents.engines.hogwild import run_hogwild
from rl_agents.engines.local import LocalEngine
from rl_agents.experiment.lifecycle import train, train_distributed
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]


def _cfg(size: int):
    cfg = load_config(None, [
        f"data.size={size}", f"data.synthetic.size={size}", "data.synthetic.n_patients=40", "optim.batch_size=4",
        "pa3c.t_max=10", "ray.learner_cpus=0", "ray.worker_cpus=1", "budget.epochs=100000", "budget.max_updates=null", "eval.every=1000000",
        "eval.checkpoint_every=1000000", "tracking.report_every_s=2", "ray.rollouts_per_call=2",
    ])
    return cfg


def ray_run(size: int, n: int, seconds: float, slowdown=None, cfg=None, overrides: dict | None = None,
            out_dir: Path | None = None) -> dict:
    """``n`` Ray workers for ``seconds``; a local 2-CPU Ray unless one is already running (the GPU suite's)."""
    cfg = override(cfg or _cfg(size), {"num_workers": n, "budget.max_minutes": seconds / 60,
                                       "ray.worker_slowdown": slowdown, **(overrides or {})})
    size = cfg.data.size
    px_per_update = cfg.optim.batch_size * cfg.pa3c.t_max * size * size
    samples = []
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        m = train_distributed(cfg, (out_dir or ROOT / "runs") / f"scaling_ray{n}", quiet=True,
                              on_report=lambda st: samples.append(
                                  (time.perf_counter(), st["stats"]["update"], dict(st["stats"]["per_worker_updates"]))))
    finally:
        if started:
            ray.shutdown()
    start = next((i for i, s in enumerate(samples) if len(s[2]) == n), len(samples))
    if start >= len(samples) - 1:
        raise RuntimeError(f"no steady-state window: not all {n} workers had pushed a gradient before the last "
                           f"report of a {seconds:.0f} s run ({len(samples)} reports)")
    (t0, u0, w0), (t1, u1, w1) = samples[start], samples[-1]
    dt = t1 - t0
    return {
        "system": "ray", "workers": n, "slowdown": slowdown, "window_s": round(dt, 1),
        "updates_per_s": (u1 - u0) / dt, "pixel_agent_steps_per_s": (u1 - u0) * px_per_update / dt,
        "per_worker_updates_per_s": [(w1.get(i, 0) - w0.get(i, 0)) / dt for i in range(n)],
        "staleness_mean": m["perf/staleness_mean"], "staleness_max": m["perf/staleness_max"],
        "learner_busy_fraction": m["perf/learner_busy_fraction"], "learner_device": m.get("learner_device"),
    }


def local_run(size: int, threads: int, seconds: float, cfg=None) -> dict:
    """The single-process engine with ``threads`` intra-op threads; rate from the 2nd update to the last."""

    cfg = override(cfg or _cfg(size), {"num_workers": 0, "compute.threads": threads, "budget.max_minutes": seconds / 60})
    size = cfg.data.size
    times: list[float] = []

    class Timed(LocalEngine):
        def step(self):
            out = super().step()
            times.append(time.perf_counter())
            return out

    train(cfg, ROOT / "runs" / f"scaling_local{threads}", quiet=True, engine=Timed(cfg, quiet=True))
    dt = times[-1] - times[0]
    rate = (len(times) - 1) / dt
    return {"system": "local", "threads": threads, "interop_threads": torch.get_num_interop_threads(),
            "window_s": round(dt, 1), "updates_per_s": rate,
            "pixel_agent_steps_per_s": rate * cfg.optim.batch_size * cfg.pa3c.t_max * size * size,
            "per_worker_updates_per_s": [rate]}


def hogwild_run(size: int, n: int, seconds: float) -> dict:
    cfg = _cfg(size)
    px_per_update = cfg.optim.batch_size * cfg.pa3c.t_max * size * size
    out = run_hogwild(cfg, n, seconds)
    t0 = max(min(ts) for ts in out["times"].values())  # every process has finished one update
    t1 = min(max(ts) for ts in out["times"].values())
    per = [sum(t0 < t <= t1 for t in ts) / (t1 - t0) for _, ts in sorted(out["times"].items())]
    return {"system": "hogwild", "workers": n, "window_s": round(t1 - t0, 1), "updates_per_s": sum(per),
            "pixel_agent_steps_per_s": sum(per) * px_per_update, "per_worker_updates_per_s": per}


def lgg_time_to_dice(n: int, target: float, minutes: float) -> dict:
    cfg = load_config(ROOT / "tune_configs" / "lgg_cpu.yaml", [
        "data.size=64", f"num_workers={n}", "ray.worker_cpus=1", "ray.learner_cpus=0", f"budget.stop_at_val_dice={target}",
        f"budget.max_minutes={minutes}", "eval.every=25", "eval.max_images=null", "eval.checkpoint_every=100", *PAPER_STEP,
    ])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        m = train_distributed(cfg, ROOT / "runs" / f"scaling_lgg{n}", quiet=True)
    finally:
        ray.shutdown()
    hit = next((h for h in m["history"] if h.get("val/dice", -1) >= target), None)
    return {"workers": n, "target_val_dice": target, "reached": hit is not None,
            "wall_time_s": hit["wall_time_s"] if hit else None, "updates": hit["update"] if hit else m["updates"],
            "best_val_dice": max(h.get("val/dice", 0) for h in m["history"]), "budget_min": minutes}


def asynchrony(size: int, seconds: float, repeats: int) -> None:
    """Interleaved pairs, so that drift of the shared machine hits both sides alike; ratio of medians."""

    pairs = []
    for _ in range(repeats):
        slowed = ray_run(size, 2, seconds, slowdown=[1.0, 5.0])
        unslowed = ray_run(size, 2, seconds)
        pairs.append({"slowed": slowed, "unslowed": unslowed,
                      "ratio": slowed["per_worker_updates_per_s"][0] / statistics.mean(unslowed["per_worker_updates_per_s"])})
        print(f"fast worker {slowed['per_worker_updates_per_s'][0]:.3f} upd/s (other slowed 5x: "
              f"{slowed['per_worker_updates_per_s'][1]:.3f}) vs unslowed {unslowed['per_worker_updates_per_s']}: "
              f"ratio {pairs[-1]['ratio']:.3f}", flush=True)
    fast = statistics.median(p["slowed"]["per_worker_updates_per_s"][0] for p in pairs)
    base = statistics.median(statistics.mean(p["unslowed"]["per_worker_updates_per_s"]) for p in pairs)
    out = {"command": command(), "machine": describe(), "size": size, "seconds": seconds, "pairs": pairs,
           "median_fast_worker_over_unslowed": fast / base}
    print(f"median ratio {fast / base:.3f} (target: within 10 %)")
    write_json("benchmarks/results/scaling_asynchrony.json", out)


def equal_cores(size: int, seconds: float, repeats: int, json_path: str) -> None:
    """Interleaved (single process with 2 threads, Ray with 2 one-thread workers) pairs: drift of the shared machine
    hits both sides alike; the ratio of medians is the figure."""

    pairs = []
    for _ in range(repeats):
        local, ray2 = local_run(size, 2, seconds), ray_run(size, 2, seconds)
        pairs.append({"local2": local, "ray2": ray2, "ratio": ray2["updates_per_s"] / local["updates_per_s"]})
        print(f"local 2 threads {local['updates_per_s']:.3f} upd/s, Ray 2 workers {ray2['updates_per_s']:.3f}: "
              f"ratio {pairs[-1]['ratio']:.3f}", flush=True)
    med = (statistics.median(p["ray2"]["updates_per_s"] for p in pairs)
           / statistics.median(p["local2"]["updates_per_s"] for p in pairs))
    print(f"Ray 2 workers / one process with 2 threads, ratio of medians: {med:.3f} (target >= 0.9)")
    out = {"machine": describe(), "size": size, "seconds": seconds, "pairs": pairs,
           "median_ray2_over_local2": med, "command": command()}
    write_json(json_path, out)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lgg", action="store_true", help="also time 1 vs 2 workers to a validation Dice on LGG")
    ap.add_argument("--lgg-target", type=float, default=0.5)
    ap.add_argument("--lgg-minutes", type=float, default=12)
    ap.add_argument("--asynchrony-repeats", type=int, default=0, metavar="K",
                    help="only the asynchrony check: K interleaved (slowed, unslowed) pairs of 2-worker runs, "
                         "written to benchmarks/results/scaling_asynchrony.json")
    ap.add_argument("--equal-cores-lgg", action="store_true",
                    help="also compare the single process and Ray at equal cores on tune_configs/lgg_cpu.yaml")
    ap.add_argument("--equal-cores-repeats", type=int, default=0, metavar="K",
                    help="only: K interleaved (one process 2 threads, Ray 2 workers) pairs, written to "
                         "benchmarks/results/scaling_equal_cores.json")
    ap.add_argument("--json", default="benchmarks/results/scaling.json")
    return ap.parse_args()


def _summary(runs: dict) -> dict:
    unslowed = sum(runs["ray2"]["per_worker_updates_per_s"]) / 2
    return {
        "ray_2_over_1": runs["ray2"]["updates_per_s"] / runs["ray1"]["updates_per_s"],
        "hogwild_2_over_1": runs["hogwild2"]["updates_per_s"] / runs["hogwild1"]["updates_per_s"],
        "ray_over_hogwild_1": runs["ray1"]["updates_per_s"] / runs["hogwild1"]["updates_per_s"],
        "ray_over_hogwild_2": runs["ray2"]["updates_per_s"] / runs["hogwild2"]["updates_per_s"],
        "ray_1_over_local_1_thread": runs["ray1"]["updates_per_s"] / runs["local1"]["updates_per_s"],
        "ray_2_over_local_2_threads": runs["ray2"]["updates_per_s"] / runs["local2"]["updates_per_s"],
        "local_2_threads_over_1": runs["local2"]["updates_per_s"] / runs["local1"]["updates_per_s"],
        "slowed_run_fast_worker_over_unslowed": runs["ray2_slow1"]["per_worker_updates_per_s"][0] / unslowed,
        "slowed_run_slow_worker_over_unslowed": runs["ray2_slow1"]["per_worker_updates_per_s"][1] / unslowed,
    }


def main() -> None:
    args = _args()
    if args.asynchrony_repeats:
        return asynchrony(args.size, args.seconds, args.asynchrony_repeats)
    if args.equal_cores_repeats:
        return equal_cores(args.size, args.seconds, args.equal_cores_repeats,
                           "benchmarks/results/scaling_equal_cores.json")
    runs = {
        "local1": local_run(args.size, 1, args.seconds),
        "local2": local_run(args.size, 2, args.seconds),
        "ray1": ray_run(args.size, 1, args.seconds),
        "ray2": ray_run(args.size, 2, args.seconds),
        "hogwild1": hogwild_run(args.size, 1, args.seconds),
        "hogwild2": hogwild_run(args.size, 2, args.seconds),
        "ray2_slow1": ray_run(args.size, 2, args.seconds, slowdown=[1.0, 5.0]),
    }
    for k, r in runs.items():
        print(f"{k:11s} {r['updates_per_s']:6.3f} upd/s  {r['pixel_agent_steps_per_s'] / 1e6:6.2f} M px-steps/s  "
              f"per worker {[round(x, 3) for x in r['per_worker_updates_per_s']]}  window {r['window_s']} s")
    summary = _summary(runs)
    if args.equal_cores_lgg:
        lgg = load_config(ROOT / "tune_configs" / "lgg_cpu.yaml", [
            "ray.worker_cpus=1", "ray.learner_cpus=0", "eval.every=1000000", "eval.checkpoint_every=1000000", "tracking.report_every_s=2",
            "ray.rollouts_per_call=2", "budget.epochs=100000", "data.size=128", *PAPER_STEP])
        runs["lgg_local2"] = local_run(lgg.data.size, 2, args.seconds, cfg=lgg)
        runs["lgg_ray2"] = ray_run(lgg.data.size, 2, args.seconds, cfg=lgg)
        summary["lgg_ray_2_over_local_2_threads"] = runs["lgg_ray2"]["updates_per_s"] / runs["lgg_local2"]["updates_per_s"]
        for k in ("lgg_local2", "lgg_ray2"):
            print(f"{k:11s} {runs[k]['updates_per_s']:6.3f} upd/s")
    if args.lgg:
        summary["lgg_time_to_dice"] = [lgg_time_to_dice(n, args.lgg_target, args.lgg_minutes) for n in (1, 2)]
    for k, v in summary.items():
        print(f"{k:40s} {v if isinstance(v, list) else round(v, 3)}")
    base = _cfg(args.size)  # what every synthetic run above was built from, read back rather than restated
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    out = {"command": command(), "machine": {**describe(), "gpu": gpu},
           "setup": {"size": base.data.size, "batch_size": base.optim.batch_size, "t_max": base.pa3c.t_max,
                     "preset": base.network.preset, "threads_per_worker": 1, "seconds": args.seconds,
                     "learner_cpus": base.ray.learner_cpus,
                     "threads": "Ray workers and Hogwild processes: 1 intra-op thread each (torch.set_num_threads(1)); "
                                "local1/local2: one process with 1 / 2 intra-op threads; inter-op threads: torch's "
                                "default (reported per local run)"},
           "runs": runs, "summary": summary}
    write_json(args.json, out)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
