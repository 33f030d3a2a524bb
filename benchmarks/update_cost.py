"""Where a PA3C update's time goes, beside one U-Net update, in one run (issue 23, item 1).

Each row is a named configuration on top of the CV protocol (``tune_configs/cv_lgg_tmax5.yaml`` over
``lgg_cpu.yaml``: ``small`` preset, batch 4, t_max 5, one FLAIR channel; the U-Net as that sweep's ``unet`` variant,
batch 8), trained on seeded random images of each size. Per row and size: warm-up updates, then ``--updates`` timed
updates of the real code path (``PA3CAgent.compute_gradients`` + ``apply_gradients``) under
:class:`rl_agents.algo.phases.PhaseTimer`: own time per phase, the rest of the wall time as overhead (Python, stats);
FLOPs of one update (forward and backward) by ``torch.utils.flop_counter.FlopCounterMode``; achieved GFLOP/s against
a float32 matmul peak measured in the same run on the same threads; ms per training image; the top operators of one
profiled update. The U-Net update is timed piece by piece on the objects ``SupervisedEngine`` trains (its
``step()`` is timed too, as a check that the pieces are that step).

    python -m benchmarks.update_cost [--sizes 64,128,256] [--updates 5] [--rows pa3c,unet] [--threads 1]
    python -m benchmarks.update_cost --from-json benchmarks/results/update_cost.json   # the README table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.train_flops import matmul_peak
from rl_agents.algo.agent import PA3CAgent, make_augment, make_train_env
from rl_agents.algo.phases import PhaseTimer, phase
from rl_agents.engines.supervised import SupervisedEngine, UNetAgent
from rl_agents.experiment.provenance import command, describe, write_json
from rl_agents.experiment.sweep import load_sweep, trial_config

ROOT = Path(__file__).resolve().parents[1]

PROTOCOL = ROOT / "tune_configs" / "cv_lgg_tmax5.yaml"
PROTOCOL_VARIANT = "t_max-5"  # the variant of that sweep a row starts from unless it names another ("variant")
TARGETS = {"per_image_vs_unet_max": 3.0, "fraction_of_peak_min": 0.40}


def reference_path(agent) -> None:
    """The network path before the fuse was moved to low resolution (kept to measure the optimisation against)."""
    agent.model.fuse_at_low_res = False


# One row = one line: "name", optionally "variant" (of the protocol sweep) and "hooks" (callables applied to the agent
# after it is built); every other key is a config override, dotted or nested ({"data.size": 128}, {"lr": 3e-4}).
ROWS = [
    {"name": "pa3c"},
    {"name": "pa3c-recompute", "rollout_mode": "recompute"},
    {"name": "pa3c-channels-last", "channels_last": True},
    {"name": "pa3c-compile", "compile": "inductor"},
    {"name": "pa3c-reference", "hooks": (reference_path,)},
    # issue 23's cheaper mathematics (named options beyond the paper, off by default)
    {"name": "once", "step_features": "once"},
    {"name": "once-half", "step_features": "once", "head_stride": 2},
    {"name": "once-half-channels-last", "step_features": "once", "head_stride": 2, "channels_last": True},
    {"name": "once-half-attn2", "step_features": "once", "head_stride": 2, "attn_stride": 2},
    {"name": "unet", "variant": "unet"},
]
SPECIAL = ("name", "variant", "hooks")
PHASE_ORDER = ("batch", "encode", "forward", "sample", "env_step", "bootstrap", "recompute", "returns", "loss",
               "backward", "optimizer")


def protocol() -> tuple[dict, dict[str, dict]]:
    """The protocol's base config (as a dict) and its variant rows by name, read through the project's loader."""

    sweep = load_sweep(PROTOCOL)
    grid = sweep["search_space"]["variant"]["grid"]
    return sweep["base"], {v["name"]: {k: x for k, x in v.items() if k != "name"} for v in grid}


def row_config(row: dict, base: dict, variants: dict, size: int):
    """The row's TrainConfig at ``size`` px; ValueError/TypeError when the installed code rejects it."""

    name = row.get("variant", PROTOCOL_VARIANT)
    if name not in variants:
        raise ValueError(f"{PROTOCOL.name} has no variant {name!r}; it has {sorted(variants)}")
    overrides = {k: v for k, v in row.items() if k not in SPECIAL}
    return trial_config(base, {"variant": {**variants[name], **overrides}, "data.size": size})


def random_data(cfg, size: int, n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    channels = len(cfg.data.channels) if cfg.data.channels else 1
    images = rng.random((n, channels, size, size), dtype=np.float32)
    masks = (rng.random((n, size, size)) > 0.9).astype(np.uint8)
    return images, masks


def pa3c_update(cfg, hooks, images, masks):
    """One PA3C update exactly as the single-process engine runs it, on a fresh agent (after the row's hooks)."""

    agent = PA3CAgent(cfg, images.shape[1], len(images), device="cpu")
    for hook in hooks:
        hook(agent)
    env = make_train_env(cfg, images, masks, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    def update() -> None:
        grads, _ = agent.compute_gradients(env, gen)
        agent.apply_gradients(grads)

    return update, {"steps_per_update": cfg.pa3c.t_max}


def unet_update(cfg, hooks, images, masks):
    """One U-Net update: ``SupervisedEngine.step``'s pieces on that engine's own objects, each marked as a phase."""

    eng = SupervisedEngine(cfg, quiet=True)  # setup() would read the data set: its fields are filled in here
    eng.agent = UNetAgent(cfg, images.shape[1], len(images), "cpu")
    for hook in hooks:
        hook(eng.agent)
    eng.tr, eng.loss_fn = images, DiceCELoss(sigmoid=True)  # step() reads only len(eng.tr)
    eng.rng, eng.augment = np.random.default_rng(cfg.seed), make_augment(cfg)
    eng.images, eng.masks = torch.as_tensor(images), torch.as_tensor(masks, dtype=torch.float32)[:, None]
    agent, accel = eng.agent, eng.agent.accel

    def update() -> None:
        with phase("batch"):
            idx = torch.as_tensor(eng.rng.choice(len(eng.tr), size=min(cfg.optim.batch_size, len(eng.tr)), replace=False))
            x, y = eng.images[idx], eng.masks[idx]
            if eng.augment is not None:
                im, m = eng.augment(x.numpy(), y[:, 0].numpy(), eng.rng)
                x, y = torch.from_numpy(im), torch.from_numpy(m)[:, None]
        with phase("forward"), accel.autocast():
            logits = agent.net(accel.to_device(x, image=True))
        with phase("loss"):
            loss = eng.loss_fn(logits.float(), accel.to_device(y))
        with phase("backward"):
            agent.opt.zero_grad(set_to_none=True)
            loss.backward()
        with phase("optimizer"):
            agent.apply_gradients()
        float(loss.detach())

    return update, {"steps_per_update": 1, "engine_step": eng.step}


def top_ops(fn, n: int = 10) -> list[dict]:
    """The ``n`` operators with the most self CPU time in one call of ``fn`` (phase ranges left out)."""

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = [e for e in prof.key_averages() if not e.key.startswith("pa3c.")]
    ev.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 3), "calls": int(e.count),
             "share": round(e.self_cpu_time_total / total, 3)} for e in ev[:n]]


def timed_updates(update, n: int) -> tuple[float, PhaseTimer]:
    """Seconds of ``n`` updates (wall, summed) and the phase times recorded during them."""
    wall = 0.0
    with PhaseTimer() as timer:
        for _ in range(n):
            t = time.perf_counter()
            update()
            wall += time.perf_counter() - t
    return wall, timer


def measure(update, extra: dict, batch: int, args) -> dict:
    for _ in range(args.warmup):
        update()
    wall, timer = timed_updates(update, args.updates)
    n = args.updates
    names = [p for p in PHASE_ORDER if p in timer.own] + sorted(set(timer.own) - set(PHASE_ORDER))
    phases = {p: 1e3 * timer.own[p] / n for p in names}
    ms = 1e3 * wall / n
    out = {"ms_per_update": ms, "phases_ms": phases, "phase_calls": {p: timer.calls[p] / n for p in names},
           "overhead_ms": ms - sum(phases.values()), "images_per_update": batch, "ms_per_image": ms / batch,
           "steps_per_update": extra["steps_per_update"]}
    if timer.calls.get("forward"):
        out["forward_ms_per_step"] = 1e3 * timer.own["forward"] / timer.calls["forward"]
    if "engine_step" in extra:  # the real SupervisedEngine.step, to check that the timed pieces are that step
        t = time.perf_counter()
        for _ in range(n):
            extra["engine_step"]()
        out["engine_step_ms"] = 1e3 * (time.perf_counter() - t) / n

    with FlopCounterMode(display=False) as fc:
        update()
    out["gflop_per_update"] = fc.get_total_flops() / 1e9
    out["gflop_per_s"] = out["gflop_per_update"] / (wall / n)
    out["top_ops"] = top_ops(update)
    return out


def run_row(row: dict, base: dict, variants: dict, size: int, args) -> dict:
    rec = {"name": row["name"], "size": size,
           "overrides": {k: v for k, v in row.items() if k not in ("name", "hooks")},
           "hooks": [getattr(h, "__name__", repr(h)) for h in row.get("hooks", ())]}
    try:
        cfg = row_config(row, base, variants, size)
        images, masks = random_data(cfg, size)
        make = unet_update if cfg.model == "unet" else pa3c_update
        torch.manual_seed(cfg.seed)
        update, extra = make(cfg, row.get("hooks", ()), images, masks)
    except (ValueError, TypeError, AttributeError) as e:  # a config or hook the installed code does not have
        return {**rec, "status": "skipped", "reason": f"{type(e).__name__}: {e}"}
    rec.update(status="ok", model=cfg.model, batch_size=cfg.optim.batch_size, t_max=cfg.pa3c.t_max,
               rollout_mode=getattr(cfg, "rollout_mode", None))
    return {**rec, **measure(update, extra, cfg.optim.batch_size, args)}


def add_ratios(rows: list[dict], peak: float) -> None:
    """Fraction of peak; per image against the U-Net; speed-up against ``pa3c-reference`` (same size, same run)."""
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["fraction_of_peak"] = r["gflop_per_s"] * 1e9 / peak
        unet = next((u for u in ok if u["model"] == "unet" and u["size"] == r["size"]), None)
        ref = next((u for u in ok if u["name"] == "pa3c-reference" and u["size"] == r["size"]), None)
        if r["model"] != "unet":
            if unet is not None:
                r["per_image_vs_unet"] = r["ms_per_image"] / unet["ms_per_image"]
            if ref is not None:
                r["speedup_vs_reference"] = ref["ms_per_image"] / r["ms_per_image"]


def columns(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by the printed and the Markdown form)."""
    present = {p for r in rows for p in r.get("phases_ms", {})}
    phases = [p for p in PHASE_ORDER if p in present] + sorted(present - set(PHASE_ORDER))
    head = ["row", "px", "ms/update", "ms/image", "x U-Net/image", "x vs reference", "forward ms/step",
            *[f"{p} ms" for p in phases], "overhead ms", "GFLOP/update", "GFLOP/s", "% peak"]
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append([r["name"], str(r["size"]), f"skipped: {r['reason']}"] + [""] * (len(head) - 3))
            continue

        def f(key, fmt="{:.1f}", d=r):
            return fmt.format(d[key]) if d.get(key) is not None else "-"

        cells.append([r["name"], str(r["size"]), f("ms_per_update"), f("ms_per_image"),
                      f("per_image_vs_unet", "{:.2f}"), f("speedup_vs_reference", "{:.2f}"),
                      f("forward_ms_per_step", "{:.2f}"), *[f(p, d=r["phases_ms"]) for p in phases], f("overhead_ms"),
                      f("gflop_per_update", "{:.2f}"), f("gflop_per_s"), "{:.0f}".format(100 * r["fraction_of_peak"])])
    return head, cells


def plain(rows: list[dict]) -> str:
    head, cells = columns(rows)
    widths = [max(len(c[i]) for c in [head] + [c for c in cells if not c[2].startswith("skipped")])
              for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    for c in cells:
        lines.append("  ".join(x.rjust(w) for x, w in zip(c, widths)) if not c[2].startswith("skipped")
                     else f"{c[0].rjust(widths[0])}  {c[1].rjust(widths[1])}  {c[2]}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The README tables: the breakdown, then the top operators of each row at its first size."""
    head, cells = columns(res["rows"])
    out = [f"`{res['command']}` on {res['machine']['cpu']}, {res['machine']['threads']} thread(s); matmul peak "
           f"{res['matmul_peak_gflop_per_s']:.1f} GFLOP/s; times are ms per update, phases their own time.", "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    out += ["", "| row | px | top operators (self ms per update, calls) |", "|---|--:|---|"]
    seen = set()
    for r in res["rows"]:
        if r["status"] == "ok" and r["name"] not in seen:
            seen.add(r["name"])
            ops = "; ".join(f"{o['op']} {o['self_ms']:.1f} ({o['calls']})" for o in r["top_ops"][:6])
            out.append(f"| {r['name']} | {r['size']} | {ops} |")
    return "\n".join(out)


def verdict(rows: list[dict]) -> list[str]:
    """The issue's two targets, per PA3C row and size."""
    lines = []
    for r in rows:
        if r["status"] == "ok" and r["model"] != "unet" and "per_image_vs_unet" in r:
            ok1 = r["per_image_vs_unet"] <= TARGETS["per_image_vs_unet_max"]
            ok2 = r["fraction_of_peak"] >= TARGETS["fraction_of_peak_min"]
            lines.append(f"{r['name']} @ {r['size']} px: {r['per_image_vs_unet']:.2f}x a U-Net image "
                         f"({'meets' if ok1 else 'misses'} <= 3x), {100 * r['fraction_of_peak']:.0f}% of peak "
                         f"({'meets' if ok2 else 'misses'} >= 40%)")
    return lines


def parse_row(text: str) -> dict:
    """``--add-row "name key=value ..."``: values parsed as YAML (true, 3e-4, null, [1])."""

    name, *items = text.split()
    row = {"name": name}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--add-row {text!r}: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        row[k] = yaml.safe_load(v)
    return row


def select_rows(args) -> list[dict]:
    known = {r["name"]: r for r in ROWS}
    names = args.rows.split(",") if args.rows else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--rows: no row named {unknown}; known: {list(known)}")
    return [known[n] for n in names] + [parse_row(t) for t in args.add_row]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=None, help=f"comma-separated names from ROWS (default all: "
                                                f"{','.join(r['name'] for r in ROWS)})")
    p.add_argument("--add-row", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                   help="an extra row from the command line (repeatable)")
    p.add_argument("--sizes", default="64,128,256")
    p.add_argument("--updates", type=int, default=5, help="timed updates per row and size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CV protocol: 1)")
    p.add_argument("--json", default="benchmarks/results/update_cost.json")
    p.add_argument("--dry-run", action="store_true", help="32 px, 1 warm-up and 1 timed update, a small peak matmul")
    p.add_argument("--markdown", action="store_true", help="also print the README tables")
    p.add_argument("--from-json", default=None, metavar="PATH", help="print the README tables of PATH; run nothing")
    args = p.parse_args(argv)
    if args.dry_run:
        args.sizes, args.updates, args.warmup = "32", 1, 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return
    rows_wanted = select_rows(args)
    torch.set_num_threads(args.threads)
    peak = matmul_peak(*((512, 3) if args.dry_run else (4096, 5)))
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s on {args.threads} thread(s)", flush=True)
    base, variants = protocol()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for row in rows_wanted:
            rows.append(run_row(row, base, variants, size, args))
            r = rows[-1]
            print(f"  {r['name']} @ {size} px: " + (f"{r['ms_per_update']:.1f} ms/update" if r["status"] == "ok"
                                                     else f"skipped ({r['reason']})"), flush=True)
    add_ratios(rows, peak)
    res = {"command": command(), "machine": {**describe(), "threads": args.threads},
           "matmul_peak_gflop_per_s": peak / 1e9, "protocol": f"{PROTOCOL.relative_to(ROOT)} ({PROTOCOL_VARIANT})",
           "updates": args.updates, "warmup": args.warmup, "targets": TARGETS, "rows": rows}
    print(plain(rows))
    print("\n".join(verdict(rows)))
    write_json(args.json, res)
    print(f"wrote {args.json}")
    if args.markdown:
        print(markdown(res))


if __name__ == "__main__":
    main()
