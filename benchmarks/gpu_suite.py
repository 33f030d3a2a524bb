"""The GPU suite: throughput, quality in minutes, inference latency and Ray around a GPU learner, in one time-boxed run.

GPU time comes in short slots on a machine we do not control (one H200, 16 cores, no network, 10 minutes a
command), so everything is prepared beforehand (``benchmarks/gpu_prepare.py``) and this one command measures it all.
Every part has its own budget in seconds and stops starting new measurements when it is spent; the whole run is
time-boxed (``--budget-s``, default 540 s = 9 minutes). ``gpu_suite.json`` is rewritten after every measurement, so a
run killed at its limit still leaves what it measured, and ``gpu_suite.log`` holds the printed lines.

Parts, most valuable first:

* ``peak``: the bf16 (and TF32) matmul peak of this GPU, measured here, the denominator of every "fraction of peak".
* ``throughput``: training image-steps/s and pixel-agent steps/s of the ``paper`` and ``small`` presets (rollout +
  PA3C loss + backward + Adam, the real agent) and of the U-Net (forward + Dice-CE + backward + Adam), for
  ``fp32``, ``tf32``, ``bf16`` autocast, bf16 + ``channels_last`` and bf16 + ``torch.compile``, batch 2 to 64 at 128
  and 256 px, and ``small-once`` (issue 23's cheaper options: ``step_features=once``, ``head_stride=2``,
  ``t_max=5``); achieved FLOP/s (one real update counted by torch's FLOP counter, backward included), its
  fraction of the bf16 peak, peak GPU memory, and the share of wall time spent in the CPU environment.
* ``quality``: the ``paper`` preset trained on the LGG Parquet copy for 4 minutes and the U-Net for 2, through the
  ordinary training lifecycle; validation Dice / IoU / Boundary IoU / HD95 of each best checkpoint.
* ``latency``: greedy segmentation of 256x256 slices (all ``t_max`` steps) for ``paper``, ``small`` and the U-Net,
  batch 1 and 32, fp32/tf32 and bf16; median milliseconds per call and per slice.
* ``ray`` (only when Ray is importable): 1, 2, 4, 8, 14 CPU workers around a learner on the GPU
  (``learner_gpus=1``), and the same with the learner on the CPU: updates/s, per-worker efficiency, learner busy
  fraction, staleness.

``--dry-run`` runs every part at toy sizes on the CPU in about a minute (the test suite does, so that this script
cannot rot between GPU slots). Nothing here needs MLflow, Gymnasium's extras or PettingZoo.

    PYTHONPATH=. python -m benchmarks.gpu_suite --out OUT --data .gpu/carry2/lgg_flair_fg
    PYTHONPATH=. python -m benchmarks.gpu_suite --dry-run --out /tmp/gpu_dry
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.gpu_measure import (
    base_cfg,
    eval_cadence,
    free,
    is_oom,
    make_stepper,
    matmul_rate,
    measure,
    sync,
    throughput_grid,
    timed_calls,
    toy_data,
)
from rl_agents.algo.accel import Accel
from rl_agents.algo.agent import build_network
from rl_agents.algo.inference import segment
from rl_agents.config import load_config
from rl_agents.engines.supervised import build_unet
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]

PARTS = ("peak", "throughput", "quality", "latency", "ray")
# seconds, 540 in all; what a part leaves unspent goes to the parts after it
BUDGETS = {"peak": 5, "throughput": 75, "quality": 405, "latency": 20, "ray": 35}
DRY_BUDGETS = {"peak": 5, "throughput": 25, "quality": 25, "latency": 10, "ray": 40}




class Suite:
    """Budgets, the log and the JSON written after every measurement."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.dry_run = dry_run
        self.log_file = open(out / "gpu_suite.log", "a")
        self.results: dict = {"command": command(module="benchmarks.gpu_suite"),
                              "dry_run": dry_run, "machine": machine(), "parts": {}}
        self.save()

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        write_json(self.out / "gpu_suite.json", self.results)

    @contextmanager
    def part(self, name: str):
        """Run one part within what is left of the whole run less the budgets of the parts still to come (so time one
        part leaves unspent goes to the next); an exception ends this part only."""
        later = self.parts[self.parts.index(name) + 1:]
        budget = max(0.0, self.left() - sum(self.budgets[p] for p in later))
        rec = self.results["parts"].setdefault(name, {"budget_s": round(budget, 1), "rows": []})
        t = time.perf_counter()
        deadline = t + budget
        self.log(f"part {name}: budget {budget:.0f} s")
        try:
            yield rec, deadline
            rec["status"] = "ok"
        except Exception as e:  # a broken part must not cost the others their slot
            rec["status"] = f"error: {type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-3000:]
            self.log(f"part {name} failed: {type(e).__name__}: {e}")
        rec["wall_s"] = round(time.perf_counter() - t, 1)
        self.save()


def machine() -> dict:
    info = {**describe(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    for mod in ("ray", "monai", "gymnasium"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


# peak ----------------------------------------------------------------------------------------------------------------
def part_peak(suite: Suite, device: torch.device) -> None:
    with suite.part("peak") as (rec, _):
        n = 8192 if device.type == "cuda" else 512
        rec["bf16_tflop_per_s"] = matmul_rate(device, torch.bfloat16, n) / 1e12
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        rec["tf32_tflop_per_s"] = matmul_rate(device, torch.float32, n) / 1e12
        torch.backends.cuda.matmul.allow_tf32 = prev
        rec["n"] = n
        suite.log(f"matmul peak: bf16 {rec['bf16_tflop_per_s']:.1f} TFLOP/s, tf32 {rec['tf32_tflop_per_s']:.1f} "
                  f"TFLOP/s (n={n})")


# throughput ----------------------------------------------------------------------------------------------------------
def part_throughput(suite: Suite, device: torch.device) -> None:
    peak = suite.results["parts"].get("peak", {}).get("bf16_tflop_per_s")
    with suite.part("throughput") as (rec, deadline):
        oom: set[tuple[str, int, str]] = set()  # (model, size, mode) that ran out of memory at a smaller batch
        last_cost: dict[tuple[str, int], float] = {}
        for model, size, batch, (label, precision, cl, comp) in throughput_grid(suite.dry_run):
            row = {"model": model, "size": size, "batch": batch, "mode": label}
            # compiling the paper network with its backward takes about a minute: not started without one left
            guess = max(60.0, 3 * last_cost.get((model, size), 0.0)) if comp and not suite.dry_run else \
                last_cost.get((model, size), 0.0)
            if (model, size, label) in oom:
                rec["rows"].append({**row, "status": "skipped: out of memory at a smaller batch"})
                continue
            if time.perf_counter() + guess > deadline:
                rec["rows"].append({**row, "status": "skipped: part budget spent"})
                continue
            cfg = base_cfg(model, size, batch, precision, cl, comp, device)
            t_row = time.perf_counter()
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                step, gflop, image_steps, env_time, params = make_stepper(model, cfg, device, size)
                left = max(deadline - time.perf_counter(), 0.1)
                warm, spu, k = measure(step, device, warmup=2 if comp else 1, min_updates=3,
                                       max_s=min(3.0, left / 2))
                env_time[0] = 0.0
                env_s = 0.0
                if model != "unet":  # env share measured over one more update
                    t = time.perf_counter()
                    step()
                    sync(device)
                    env_s = env_time[0] / (time.perf_counter() - t)
                row.update(
                    status="ok", params=params,
                    warmup_s=round(warm, 2), timed_updates=k, seconds_per_update=spu,
                    image_steps_per_s=image_steps / spu,
                    pixel_agent_steps_per_s=(image_steps * size * size / spu) if model != "unet" else None,
                    train_tflop_per_s=gflop / spu / 1e3,
                    fraction_of_bf16_peak=(gflop / spu / 1e3 / peak) if peak else None,
                    env_fraction=round(env_s, 3) if model != "unet" else None,
                    peak_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if device.type == "cuda" else None,
                )
                suite.log(f"{model:5s} {size}px B={batch:<2d} {label:19s} {row['image_steps_per_s']:9.1f} img-steps/s "
                          f"{row['train_tflop_per_s']:7.3g} TFLOP/s"
                          + (f" ({100 * row['fraction_of_bf16_peak']:.0f}% of bf16 peak)" if peak else "")
                          + (f" mem {row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] else ""))
            except Exception as e:
                if not is_oom(e):
                    row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
                    suite.log(f"{model} {size}px B={batch} {label}: {row['status']}")
                else:
                    oom.add((model, size, label))
                    row.update(status="out of memory")
                    suite.log(f"{model} {size}px B={batch} {label}: out of memory")
            finally:
                step = None
                free(device)
            last_cost[(model, size)] = time.perf_counter() - t_row
            rec["rows"].append(row)
            suite.save()


# quality -------------------------------------------------------------------------------------------------------------
def part_quality(suite: Suite, device: torch.device, data: str | None) -> None:
    with suite.part("quality") as (rec, deadline):
        if data:
            src = ["data.format=parquet", f"data.path={data}", "data.channels=null"]
        else:  # no carried copy (the dry run): easy synthetic data
            src = ["data.format=synthetic", "data.synthetic.size=32", "data.synthetic.n_patients=10"]
        size = 32 if suite.dry_run else 256
        runs = [("paper" if not suite.dry_run else "small", 4.0 if not suite.dry_run else 0.05, "pixeldrl"),
                ("unet", 2.0 if not suite.dry_run else 0.05, "unet")]
        rec["data"] = data or "synthetic"
        for name, minutes, model in runs:
            # keep time for setup and the final evaluations, and the U-Net's minutes while the first run trains
            left_min = (deadline - time.perf_counter()) / 60 - (0.3 if not suite.dry_run else 0.05)
            minutes = min(minutes, left_min - (runs[-1][1] + 0.3 if model != "unet" else 0))
            if minutes <= 0.02:
                rec["rows"].append({"model": name, "status": "skipped: part budget spent"})
                continue
            cfg = load_config(ROOT / "tune_configs" / "paper_brain.yaml", src + [
                f"data.size={size}", f"model={model}", f"compute.device={device.type}", "tracking.mlflow=false",
                f"budget.max_minutes={minutes}", "budget.epochs=100000", "eval.every=100000", "eval.checkpoint_every=100000",
                "eval.max_images=null", "compute.precision=bf16" if device.type == "cuda" else "compute.precision=fp32",
                f"eval.every={eval_cadence(name, suite.dry_run)}",
            ] + ([] if model == "unet" else [f"network.preset={name}"]) + (["optim.batch_size=8"] if model == "unet" else []))
            t = time.perf_counter()
            m = train(cfg, suite.out / f"quality_{name}", quiet=True)
            row = {"model": name, "status": "ok", "train_minutes": round(minutes, 2), "precision": cfg.compute.precision,
                   "batch_size": cfg.optim.batch_size, "size": size, "params": m["params"], "updates": m["updates"],
                   "best_update": m["best_update"], "wall_s": round(time.perf_counter() - t, 1),
                   "n_train": m["n_train"], "n_val": m["n_val"],
                   **{k: v for k, v in m.items() if k.startswith("val/")}}
            rec["rows"].append(row)
            suite.log(f"quality {name}: {m['updates']} updates in {minutes:.1f} min, val Dice "
                      f"{m.get('val/dice', float('nan')):.3f}, BIoU {m.get('val/biou', float('nan')):.3f}, "
                      f"HD95 {m.get('val/hd95', float('nan')):.1f}")
            suite.save()
            free(device)


def part_latency(suite: Suite, device: torch.device) -> None:
    size = 32 if suite.dry_run else 256
    with suite.part("latency") as (rec, deadline):
        batches = (1, 32) if not suite.dry_run else (1, 2)
        plan = [(m, p, b) for b in batches for m in ("paper", "small", "small-once", "unet") for p in ("tf32", "bf16")
                if not (suite.dry_run and m == "paper" and b > 1)]  # batch 1 of every model first
        for model, precision, batch in plan:
            row = {"model": model, "batch": batch, "size": size, "precision": precision}
            if time.perf_counter() > deadline:
                rec["rows"].append({**row, "status": "skipped: part budget spent"})
                continue
            cfg = base_cfg(model, size, batch, precision, False, None, device)
            accel = Accel.from_config(cfg, device)
            net = (build_unet(1) if model == "unet" else build_network(cfg, 1)).eval()
            net, _ = accel.prepare(net)
            x = torch.as_tensor(toy_data(batch, size)[0]).to(device)

            def call():
                with torch.no_grad(), accel.autocast():
                    if model == "unet":
                        return (net(x)[:, 0] > 0).cpu()
                    return segment(net, x, cfg.pa3c.t_max, batch_size=batch, device=device)

            try:
                times = timed_calls(call, device, deadline, warmup=1 if suite.dry_run else 2,
                                    max_s=0.3 if suite.dry_run else 1.0)
                med = statistics.median(times)
                row.update(status="ok", calls=len(times), ms_per_call=1e3 * med,
                           ms_per_slice=1e3 * med / batch, slices_per_s=batch / med)
                suite.log(f"latency {model:5s} {precision} B={batch:<2d} {1e3 * med:8.2f} ms/call "
                          f"{1e3 * med / batch:7.2f} ms/slice")
            except Exception as e:
                row.update(status=("out of memory" if is_oom(e) else f"error: {type(e).__name__}: {e}"))
            rec["rows"].append(row)
            free(device)
        suite.save()


# Ray -----------------------------------------------------------------------------------------------------------------
def part_ray(suite: Suite, device: torch.device) -> None:
    with suite.part("ray") as (rec, deadline):
        try:
            import ray
        except ImportError:
            rec["skipped"] = "ray is not importable here"
            suite.log("ray: not importable, skipped")
            return
        cores = os.cpu_count() or 2
        gpu = device.type == "cuda"
        if suite.dry_run:
            plan, seconds, size = [(1, 0)], 3.0, 32
        else:
            counts = [n for n in (1, 4, 14, 2, 8) if n <= cores - 1]
            plan = [(n, 1) for n in counts[:3]] + [(counts[2] if len(counts) > 2 else counts[-1], 0)] + \
                   [(n, 1) for n in counts[3:]] + [(1, 0)]
            seconds, size = 8.0, 128
        rec.update(size=size, seconds_per_run=seconds, preset="small", learner_precision="tf32")
        # one local Ray for every run of the part (ray_run leaves a Ray it did not start running)
        ray.init(num_cpus=cores, num_gpus=1 if gpu else 0, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        try:
            ray_rows(suite, rec, plan, seconds, size, gpu, deadline)
        finally:
            ray.shutdown()
        one = {r["learner"]: r["updates_per_s"] for r in rec["rows"] if r.get("workers") == 1 and r.get("status") == "ok"}
        for r in rec["rows"]:
            if r.get("status") == "ok" and r["learner"] in one:
                r["per_worker_efficiency"] = r["updates_per_s"] / (r["workers"] * one[r["learner"]])
        suite.save()


def ray_rows(suite: Suite, rec: dict, plan, seconds: float, size: int, gpu: bool, deadline: float) -> None:
    from benchmarks.scaling import ray_run  # optional: scaling imports Ray, which a GPU machine may lack

    for n, learner_gpus in plan:
        row = {"workers": n, "learner": "gpu" if learner_gpus else "cpu"}
        if learner_gpus and not gpu:
            rec["rows"].append({**row, "status": "skipped: no GPU"})
            continue
        if time.perf_counter() + seconds + 10 > deadline:
            rec["rows"].append({**row, "status": "skipped: part budget spent"})
            continue
        try:
            r = ray_run(size, n, seconds, overrides={"ray.learner_gpus": learner_gpus, "tracking.report_every_s": 1.0,
                                                     "compute.device": "cuda" if learner_gpus else "cpu"},
                        out_dir=suite.out / "ray_runs")
            row.update(status="ok", **{k: r[k] for k in ("updates_per_s", "pixel_agent_steps_per_s",
                                                         "per_worker_updates_per_s", "staleness_mean",
                                                         "staleness_max", "learner_busy_fraction", "window_s")})
            suite.log(f"ray {n:2d} workers, learner on {row['learner']}: {r['updates_per_s']:.2f} updates/s, "
                      f"learner busy {r['learner_busy_fraction']:.2f}, staleness {r['staleness_mean']:.2f}")
        except Exception as e:
            row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
            suite.log(f"ray {n} workers: {row['status']}")
        rec["rows"].append(row)
        suite.save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.log and the quality runs")
    ap.add_argument("--data", default=None, help="Parquet copy of the LGG FLAIR foreground slices (gpu_prepare.py)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="the whole run's time box (default: the parts' budgets, 540 s = 9 min; dry run 105 s)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=S", help="one part's budget in seconds")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU (what the test suite runs)")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown}; expected some of {list(PARTS)}")
    if args.data and not Path(args.data).exists():
        ap.error(f"--data {args.data}: no such folder (make it with benchmarks/gpu_prepare.py)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no GPU")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() and not args.dry_run
                          else "cpu")
    budgets = dict(DRY_BUDGETS if args.dry_run else BUDGETS)
    for item in args.budget:
        k, _, v = item.partition("=")
        if k not in PARTS or not v:
            ap.error(f"--budget expects PART=SECONDS with PART in {list(PARTS)}, got {item!r}")
        budgets[k] = float(v)
    selected = [p for p in PARTS if p in parts]
    suite = Suite(Path(args.out), args.budget_s or sum(budgets[p] for p in selected), args.dry_run)
    suite.budgets, suite.parts = budgets, selected
    suite.results["device"] = str(device)
    suite.results["budgets_s"] = suite.budgets
    suite.log(f"device {device}; machine {json.dumps(suite.results['machine'])}")
    torch.manual_seed(0)
    steps = {"peak": lambda: part_peak(suite, device), "throughput": lambda: part_throughput(suite, device),
             "quality": lambda: part_quality(suite, device, args.data),
             "latency": lambda: part_latency(suite, device), "ray": lambda: part_ray(suite, device)}
    for p in suite.parts:
        steps[p]()
    suite.results["wall_s"] = round(time.perf_counter() - suite.t0, 1)
    suite.save()
    failed = [p for p, r in suite.results["parts"].items() if str(r.get("status", "")).startswith("error")]
    suite.log(f"done in {suite.results['wall_s']} s; wrote {suite.out / 'gpu_suite.json'}"
              + (f"; parts that failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
