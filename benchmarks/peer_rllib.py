"""Our A3C against RLlib's APPO on the same problem, in one run on one machine.

Every arm trains the same network (``small`` preset), on the same data, through the same run lifecycle
(:func:`rl_agents.experiment.lifecycle.run_training`) for the same wall-clock budget, validation every
``eval_every`` updates; figures are read off the run's ``metrics.json``:

* ``local``: PA3C in one process (``engine=local``).
* ``ray``: our asynchronous A3C on Ray, 2 workers of 0.5 CPU and a learner (``engine=ray``, the smoke layout).
* ``rllib_appo``: RLlib APPO with per-pixel V-trace, sampling in the learner's process (``num_workers=0``).
* ``rllib_appo_remote``: the same with one remote env runner (``num_workers=1``).

Reported per arm: pixel-agent steps/s and updates/s over the run, wall time to the first validation pass at or above
``--target`` (validation time included for the in-process engines; Ray's evaluator runs beside training), and the
best validation Dice within the budget. Fairness settings of APPO (circular buffer off, no minimum iteration time,
learner in this process, one update per ``train()``) are in :func:`rl_agents.engines.rllib.config.build_config`.

The stock path is measured apart, twice. RLlib maps ``MultiDiscrete([2] * H * W)`` to ``TorchMultiCategorical``,
one distribution object per pixel: ``distributions`` times its sample + log-prob + entropy for one step's batch
against the ``TorchCategorical`` over ``(B, H*W, 2)`` logits the engine uses, and ``stock_training`` times whole APPO
updates of the stock path (RLlib's own learner) against the engine's, interleaved, from the same config.

    python -m benchmarks.peer_rllib --json benchmarks/results/peer_rllib.json [--seconds 120] [--lgg-seconds 240]
    python -m benchmarks.peer_rllib --parts stock_training --json benchmarks/results/peer_rllib.json  # one part
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from rl_agents.config import PAPER_STEP, load_config, to_dict
from rl_agents.engines.ray_runtime import connect
from rl_agents.engines.rllib.config import build_config
from rl_agents.engines.rllib.engine import MODULE
from rl_agents.engines.rllib.module import PixelDRLRLModule
from rl_agents.experiment.lifecycle import run_training
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]

SMOKE = ROOT / "tune_configs" / "smoke.yaml"
LGG = ROOT / "tune_configs" / "lgg_cpu.yaml"

PARTS = ("distributions", "stock_training", "synthetic", "lgg")
ARMS = {
    "local": ["engine=local", "num_workers=0"],
    "ray": ["engine=ray", "num_workers=2", "ray.worker_cpus=0.5", "ray.learner_cpus=0.25"],
    "rllib_appo": ["engine=rllib_appo", "num_workers=0"],
    "rllib_appo_remote": ["engine=rllib_appo", "num_workers=1", "ray.worker_cpus=0.5"],
}


def arm(name: str, base: Path, overrides: list[str], seconds: float, target: float, out: Path) -> dict:
    cfg = load_config(base, [*overrides, *ARMS[name], f"budget.max_minutes={seconds / 60}", "budget.epochs=100000",
                             "budget.max_updates=null", "tracking.mlflow=false", "seed=0"])
    t0 = time.perf_counter()
    m = run_training(cfg, out / name, quiet=True)
    hist = [h for h in m["history"] if "val/dice" in h]
    hit = next((h for h in hist if h["val/dice"] >= target), None)
    return {"engine": name, "overrides": [*overrides, *ARMS[name]], "wall_s": round(time.perf_counter() - t0, 1),
            "updates": m["updates"], "updates_per_s": round(m["perf/updates_per_s"], 3),
            "pixel_agent_steps_per_s": round(m["perf/pixel_agent_steps_per_s"]),
            "best_val_dice": round(m["val/dice"], 4), "target": target,
            "s_to_target": hit and round(hit["wall_time_s"], 1), "updates_to_target": hit and hit["update"],
            "curve": [(h["update"], round(h["wall_time_s"], 1), round(h["val/dice"], 4)) for h in hist]}


def distributions(sizes=(32, 64), batches=(1, 8), repeats: int = 3) -> list[dict]:
    """ms for sample + logp + entropy of one step's actions: RLlib's stock MultiDiscrete distribution (one
    categorical per pixel) against one TorchCategorical over ``(B, H*W, 2)`` logits."""
    from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical, TorchMultiCategorical

    rows = []
    for size in sizes:
        n = size * size
        for b in batches:
            logits = torch.randn(b, n, 2)

            def stock():
                d = TorchMultiCategorical.from_logits(logits.reshape(b, 2 * n), input_lens=[2] * n)
                a = d.sample()
                return d.logp(a), d.entropy()

            def ours():
                d = TorchCategorical.from_logits(logits)
                a = d.sample()
                return d.logp(a), d.entropy()

            row = {"size": size, "batch": b}
            for key, fn in (("stock_multidiscrete_ms", stock), ("per_pixel_categorical_ms", ours)):
                fn()  # warm-up
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    logp, _ = fn()
                    times.append((time.perf_counter() - t0) * 1e3)
                row[key] = round(min(times), 2)
                row[key.replace("_ms", "_logp_shape")] = list(logp.shape)
            row["ratio"] = round(row["stock_multidiscrete_ms"] / row["per_pixel_categorical_ms"], 1)
            rows.append(row)
    return rows


def stock_classes():
    """The stock path as a trainable APPO: the same network, RLlib's ``TorchMultiCategorical`` over
    ``MultiDiscrete([2] * H*W)`` (one joint log-prob per image), a scalar value (the mean of the per-pixel values)
    and RLlib's own APPO learner on the env's scalar reward (the mean of the reward map)."""
    from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.distribution.torch.torch_distribution import TorchMultiCategorical

    class StockMultiDiscreteModule(PixelDRLRLModule):
        def setup(self):
            super().setup()
            self.action_dist_cls = TorchMultiCategorical.get_partial_dist_cls(
                input_lens=[2] * int(self.action_space.shape[0]))

        @staticmethod
        def _flat(logits: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) -> (B, H*W*2), pixel i's logits side by side
            return logits.flatten(2).transpose(1, 2).flatten(1)

        def _forward_train(self, batch, **kwargs):
            out = super()._forward_train(batch, **kwargs)
            out[Columns.EMBEDDINGS] = out[Columns.EMBEDDINGS].mean(1)
            return out

        def compute_values(self, batch, embeddings=None):
            v = super().compute_values(batch, embeddings)
            return v if v.dim() == 1 else v.mean(1)

    return StockMultiDiscreteModule, APPOTorchLearner


def stock_training(updates: int = 3, size: int = 32, batch: int = 8) -> dict:
    """Seconds per APPO update, the stock MultiDiscrete path against the engine's per-pixel one: both built from
    the same ``build_config`` (same env, network, batch, sampling in this process), their ``train()`` calls
    interleaved so that whatever else the machine runs slows both alike. One warm-up update each, not timed."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    cfg = load_config(SMOKE, ["engine=rllib_appo", "num_workers=0", "tracking.mlflow=false", f"optim.batch_size={batch}",
                              f"data.size={size}", "seed=0"])
    started = connect(None, 2)
    module_cls, learner_cls = stock_classes()
    stock_cfg = build_config(cfg).rl_module(
        rl_module_spec=RLModuleSpec(module_class=module_cls, model_config={"cfg": to_dict(cfg)}))
    stock_cfg = stock_cfg.learners(learner_class=learner_cls, learner_connector=None)
    algos = {"per_pixel_categorical": build_config(cfg).build_algo(), "stock_multidiscrete": stock_cfg.build_algo()}
    times = {k: [] for k in algos}
    try:
        for i in range(updates + 1):
            for name, algo in algos.items():
                t0 = time.perf_counter()
                res = algo.train()
                loss = (res.get("learners") or {}).get(MODULE, {}).get("total_loss")
                assert loss is not None and math.isfinite(loss), f"{name}: train() made no update ({loss})"
                if i:
                    times[name].append(time.perf_counter() - t0)
    finally:
        for algo in algos.values():
            algo.stop()
        if started:
            import ray

            ray.shutdown()
    steps = batch * cfg.pa3c.t_max * size * size
    row = {"size": size, "batch": batch, "t_max": cfg.pa3c.t_max, "updates_timed": updates}
    for name, ts in times.items():
        mean = sum(ts) / len(ts)
        row[name] = {"s_per_update": round(mean, 3), "updates_per_s": round(1 / mean, 4),
                     "pixel_agent_steps_per_s": round(steps / mean)}
    row["ratio_s_per_update"] = round(row["stock_multidiscrete"]["s_per_update"]
                                      / row["per_pixel_categorical"]["s_per_update"], 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120, help="budget per arm on the easy synthetic set")
    p.add_argument("--target", type=float, default=0.8, help="validation Dice to time, easy synthetic set")
    p.add_argument("--lgg-seconds", type=float, default=240, help="budget per arm on LGG (0: skip)")
    p.add_argument("--lgg-target", type=float, default=0.5, help="validation Dice to time, LGG")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS))
    p.add_argument("--lgg-arms", default="local,rllib_appo")
    p.add_argument("--stock-updates", type=int, default=3, help="timed updates per arm of the stock-path run")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated, of " + ", ".join(PARTS) + "; with --json naming an existing file, the "
                        "parts not run are kept from it (its 'commands' lists each invocation)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    parts = args.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        p.error(f"--parts: unknown {sorted(unknown)}, expected of {PARTS}")
    torch.set_num_threads(1)
    invoked = command()
    old = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else {}
    kept = {k: v for k, v in old.items() if k in PARTS and k not in parts} if set(parts) != set(PARTS) else {}
    earlier = (old.get("commands") or [old["command"]]) if kept else []
    res = {"command": invoked, "commands": [*earlier, invoked], "machine": describe(), **kept}
    if kept:
        res["machine_of_kept_parts"] = old.get("machine")
    if "distributions" in parts:
        res["distributions"] = distributions()
        print(json.dumps(res["distributions"], indent=1), flush=True)
    if "stock_training" in parts:
        res["stock_training"] = stock_training(args.stock_updates)
        print(json.dumps(res["stock_training"]), flush=True)
    synthetic = ["optim.batch_size=8", "eval.every=25", "eval.checkpoint_every=100000"]
    # LGG at 64 px (the scaling benchmark's size), 4 images of 10 steps per update as lgg_cpu.yaml
    lgg = ["data.size=64", "eval.every=50", "eval.checkpoint_every=100000", *PAPER_STEP]
    with tempfile.TemporaryDirectory() as tmp:
        if "synthetic" in parts:
            res["synthetic"] = []
            for name in args.arms.split(","):
                res["synthetic"].append(arm(name, SMOKE, synthetic, args.seconds, args.target, Path(tmp) / "syn"))
                print(json.dumps({k: v for k, v in res["synthetic"][-1].items() if k != "curve"}), flush=True)
        if args.lgg_seconds and "lgg" in parts:
            res["lgg"] = []
            for name in args.lgg_arms.split(","):
                res["lgg"].append(arm(name, LGG, lgg, args.lgg_seconds, args.lgg_target, Path(tmp) / "lgg"))
                print(json.dumps({k: v for k, v in res["lgg"][-1].items() if k != "curve"}), flush=True)
    if args.json:
        write_json(args.json, res, indent=1)


if __name__ == "__main__":
    main()
