"""Inference latency per 256x256 slice: PixelDRL-MG against the U-Net, torch against onnxruntime, and where the time
goes.

Two parts, side by side in one run on one machine:

1. **Networks at 256x256** (random weights: latency does not depend on them), batch 16 and batch 1, every ``t_max``
   step run. PixelDRL-MG as it was before this benchmark existed (policy and value heads each step, attention on
   PyTorch's math path: ``before``, written out in :class:`Before`), as it is now (policy head only, flash attention:
   ``torch``), and the exported ONNX graph in onnxruntime (``onnxruntime``); ``pixeldrl-mg-once``, issue 23's
   cheaper options (``step_features=once``, ``head_stride=2``, ``t_max=5``), also with ``attn_stride=2``; the U-Net in
   torch and onnxruntime.
   Plus FLOPs per slice and the share of time of the top operators, which says where the time goes.
2. **Trained checkpoints on real slices**: one fold's PixelDRL-MG and U-Net of a CV sweep (``tune_configs/cv_*.yaml``)
   on that fold's 256x256 test slices, end to end as ``pixeldrl predict`` runs them (prepare at the trained size,
   segment, resize back): PixelDRL-MG with every step and with early exit (:func:`rl_agents.algo.inference.segment`
   stops an image at its fixed point; the masks are identical), the mean number of steps, and the masks' agreement.

    python -m benchmarks.latency --experiment cv-lgg --fold 0 --json benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from pixelrl_env.dataset import iter_samples
from pixelrl_env.folds import config_split
from pixelrl_env.io import Sample
from pixelrl_env.prepare import prepare_rows
from rl_agents.algo.inference import apply_actions, segment_with_steps
from rl_agents.algo.model import PixelDRLNet, count_parameters, forward_flops
from rl_agents.engines.supervised import build_unet
from rl_agents.experiment.cv import find_trials
from rl_agents.experiment.export import _write_onnx, segmenter
from rl_agents.experiment.predict import load, segment_array
from rl_agents.experiment.provenance import command, describe, write_json

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int, min_s: float) -> float:
    """Median seconds of one call, after a warm-up call; at least ``repeats`` calls and ``min_s`` seconds."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class OldAttention(torch.nn.Module):
    """The self-attention block as it was before: 3-D q, k, v of different widths, which sends SDPA down its math path
    (the full HW x HW matrix). Same weights as the block it wraps."""

    def __init__(self, att: torch.nn.Module):
        super().__init__()
        self.att = att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.att
        b, _, h, w = x.shape
        q, k, v = (m(x).flatten(2).transpose(1, 2) for m in (a.q, a.k, a.v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, h, w)
        return x + a.gamma * a.out(y)


class Before(torch.nn.Module):
    """The greedy loop as the project ran it before: the old attention, and the full forward (value head too) at
    every step, every step run."""

    def __init__(self, net: torch.nn.Module, t_max: int):
        super().__init__()
        self.net, self.t_max = copy.deepcopy(net), t_max
        if self.net.attention is not None:
            self.net.attention = OldAttention(self.net.attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = torch.ones_like(x[:, 0], dtype=torch.bool)
        for _ in range(self.t_max):
            logits, _ = self.net(x * state[:, None])
            state = apply_actions(state, logits.argmax(dim=1), self.net.n_actions)
        return state


def top_ops(fn, n: int = 6) -> list[dict]:
    with profile() as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3)} for e in ev[:n]]


def networks(size: int, t_max: int, in_channels: int, threads: int, min_s: float) -> list[dict]:
    import onnxruntime as ort

    torch.manual_seed(0)
    pa3c = PixelDRLNet(in_channels, 2, "small").eval()
    unet = build_unet(in_channels).eval()
    segs = {"pixeldrl-mg": segmenter(pa3c, t_max), "unet": segmenter(unet, t_max),
            **{name: segmenter(once_network(in_channels, **kw), ONCE_T_MAX) for name, kw in ONCE_ROWS.items()}}
    steps = {"pixeldrl-mg": t_max, "unet": 1, **{name: ONCE_T_MAX for name in ONCE_ROWS}}
    before = Before(pa3c, t_max)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in segs.items():
            path = Path(tmp) / f"{name}.onnx"
            _write_onnx(module, torch.rand(2, in_channels, size, size), path)  # dynamic batch: one export
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (16, 1):
        x = torch.rand(batch, in_channels, size, size)

        def before_call():
            with torch.inference_mode():
                before(x)

        def torch_call(m):
            def call():
                with torch.inference_mode():
                    m(x)
            return call

        def ort_call(name):
            return lambda: sessions[name].run(["masks"], {"images": x.numpy()})

        plan = [("pixeldrl-mg", "before", before_call)]
        plan += [(name, runtime, torch_call(segs[name]) if runtime == "torch" else ort_call(name))
                 for name in segs for runtime in ("torch", "onnxruntime")]
        for model, runtime, call in plan:
            s = timed(call, 3, min_s)
            rows.append({"model": model, "runtime": runtime, "batch": batch, "size": size,
                         "steps": steps[model], "ms_per_slice": 1e3 * s / batch})
            print(f"  {model:22s} {runtime:11s} B={batch:<2d} {1e3 * s / batch:8.1f} ms/slice", flush=True)
    return rows


# issue 23's cheaper mathematics (named options, not the paper's): the trunk encodes the slice once, each of
# t_max=5 steps runs the policy head at half resolution on [features, mask]; one row per further option
ONCE_T_MAX = 5
ONCE_ROWS = {"pixeldrl-mg-once": {}, "pixeldrl-mg-once-attn2": {"attn_stride": 2}}


def once_network(in_channels: int, **options) -> PixelDRLNet:
    return PixelDRLNet(in_channels, 2, "small", step_features="once", head_stride=2, **options).eval()


def segment_flops(module: torch.nn.Module, in_channels: int, size: int) -> float:
    """FLOPs of one whole greedy segmentation (every step) of one slice, counted by torch's FLOP counter."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, in_channels, size, size))
    return float(counter.get_total_flops())


def trained(experiment: str, storage: str, fold: int, max_slices: int, min_s: float) -> dict:
    trials = [t for t in find_trials(storage, experiment) if t.fold == fold]
    kinds = {("unet" if t.config.get("model") == "unet" else "pixeldrl-mg"): t for t in trials}
    if set(kinds) != {"pixeldrl-mg", "unet"}:
        raise SystemExit(f"{storage}/{experiment} fold {fold}: need one PixelDRL-MG and one U-Net trial, found "
                         f"{sorted((t.variant, t.config.get('model')) for t in trials)}")
    out: dict = {"experiment": experiment, "fold": fold}
    loaded = {k: load(t.path / "checkpoints" / "best.pt") for k, t in kinds.items()}
    cfg = loaded["pixeldrl-mg"].cfg
    # the fold's raw test slices, as a user's scans would arrive (foreground and empty alike, native size, stored
    # values): what evaluate_checkpoint reads
    samples = list(iter_samples(cfg.data))
    test = config_split([s.group for s in samples], cfg.data)[2]
    samples = [s for s in samples if s.group in test]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(samples), size=min(max_slices, len(samples)), replace=False))
    slices = np.stack([np.atleast_3d(samples[i].image) for i in idx])  # (N, H, W, C) as segment_array takes them
    out["slices"] = int(len(idx))  # a seeded random subset
    out["slice_shape"] = list(slices.shape[1:])
    for kind, m in loaded.items():
        out[kind] = {"checkpoint": str(kinds[kind].path / "checkpoints" / "best.pt"), "trained_size": m.cfg.data.size,
                     "parameters": count_parameters(m.model)}
    masks: dict = {}
    out["latency"] = {}
    for name, kind, early in (("pixeldrl-mg all steps", "pixeldrl-mg", False),
                              ("pixeldrl-mg early exit", "pixeldrl-mg", True), ("unet", "unet", True)):
        def call(m=loaded[kind], name=name, early=early):
            masks[name] = segment_array(m, slices, early_exit=early)[0]

        s = timed(call, 1, min_s)
        out["latency"][name] = {"ms_per_slice": 1e3 * s / len(slices)}
        print(f"  {name:24s} {1e3 * s / len(slices):8.1f} ms/slice end to end", flush=True)
    m = loaded["pixeldrl-mg"]
    samples = [Sample(s, np.zeros(s.shape[:2], np.uint8), "volume", f"s{k}") for k, s in enumerate(slices)]
    x = prepare_rows(samples, range(len(samples)), m.cfg.data)
    steps = segment_with_steps(m.model, x, m.cfg.pa3c.t_max).steps
    out["latency"]["pixeldrl-mg early exit"].update(mean_steps=float(steps.mean()), t_max=m.cfg.pa3c.t_max)
    out["early_exit_masks_identical"] = bool(np.array_equal(masks["pixeldrl-mg all steps"],
                                                            masks["pixeldrl-mg early exit"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="cv-lgg", help="CV sweep whose fold's checkpoints to time (part 2)")
    p.add_argument("--storage", default="runs/tune")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--t-max", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-slices", type=int, default=64)
    p.add_argument("--min-seconds", type=float, default=5.0, help="time each case at least this long")
    p.add_argument("--json", default="benchmarks/results/latency.json")
    p.add_argument("--skip-trained", action="store_true", help="part 1 only (no CV sweep's checkpoints needed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    rec: dict = {"command": command(), "machine": describe(), "threads": args.threads}
    import onnxruntime

    rec["onnxruntime"] = onnxruntime.__version__
    pa3c, unet = PixelDRLNet(args.in_channels, 2, "small"), build_unet(args.in_channels)
    rec["flops_per_slice"] = {
        "pixeldrl-mg (all steps, policy only)": args.t_max * forward_flops(_PolicyOnly(pa3c), args.in_channels,
                                                                           args.size),
        **{f"{name} (t_max 5, encode + steps, policy only)": segment_flops(
            segmenter(once_network(args.in_channels, **kw), ONCE_T_MAX), args.in_channels, args.size)
           for name, kw in ONCE_ROWS.items()},
        "unet": forward_flops(unet, args.in_channels, args.size)}
    rec["parameters"] = {"pixeldrl-mg": count_parameters(pa3c), "unet": count_parameters(unet)}
    x = torch.rand(16, args.in_channels, args.size, args.size)
    recipe = segmenter(once_network(args.in_channels, **ONCE_ROWS["pixeldrl-mg-once-attn2"]), ONCE_T_MAX)
    with torch.inference_mode():
        rec["pixeldrl_step_top_ops"] = top_ops(lambda: pa3c.eval().policy(x))
        rec["pixeldrl_once_attn2_segment_top_ops"] = top_ops(lambda: recipe(x))
        rec["unet_top_ops"] = top_ops(lambda: unet.eval()(x))
    print(f"networks at {args.size}x{args.size}, {args.threads} threads:", flush=True)
    rec["networks"] = networks(args.size, args.t_max, args.in_channels, args.threads, args.min_seconds)
    if not args.skip_trained:
        print(f"trained checkpoints, {args.experiment} fold {args.fold}:", flush=True)
        rec["trained"] = trained(args.experiment, args.storage, args.fold, args.max_slices, args.min_seconds)
    rec["wall_s"] = round(time.time() - t0, 1)
    write_json(args.json, rec)
    print(f"wrote {args.json} ({rec['wall_s']} s)")


class _PolicyOnly(torch.nn.Module):
    def __init__(self, net: PixelDRLNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.policy(x)


if __name__ == "__main__":
    main()
