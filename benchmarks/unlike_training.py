"""How the "unlike the training data" check (:mod:`pixelrl_env.profile`) behaves on real scans: a profile built from
each data set's training split (threshold set on its validation split), then the share of flagged slices of its own
test patients (those with foreground, as trained, and every slice) and of every other data set here (other modality, other organ), each prepared as that model prepares
its input.

    python -m benchmarks.unlike_training --json benchmarks/results/unlike_training.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from pixelrl_env.dataset import load_spread
from pixelrl_env.io import Sample, read_image
from pixelrl_env.profile import build_profile, distances
from pixelrl_env.prepare import prepare_rows
from rl_agents.config import load_config, to_dict
from rl_agents.experiment.provenance import command, describe, write_json

MODELS = {"lgg": "tune_configs/lgg_cpu.yaml", "heart": "tune_configs/heart_cpu.yaml"}
KVASIR = Path("../shared/data/kvasir_seg/images")


def prepared_like(data, images: list[np.ndarray]) -> np.ndarray:
    """Foreign images prepared as this model prepares its input: its channels (a grey image repeated where it needs
    more, the first channel where it needs one), size and normalisation."""
    want = (max(data.channels) + 1) if data.channels else None
    out = []
    for im in images:
        im = im if im.ndim == 3 else im[..., None]
        if want and im.shape[-1] < want:
            im = np.repeat(im[..., :1], want, axis=-1)
        out.append(im)
    samples = [Sample(im, np.zeros(im.shape[:2], np.uint8), f"x{k}", f"x{k}") for k, im in enumerate(out)]
    return prepare_rows(samples, range(len(samples)), replace(data, context=0))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-rows", type=int, default=400, help="slices read per split (evenly spread over it)")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    cfgs = {name: load_config(path) for name, path in MODELS.items()}
    tests = {name: load_spread(cfg.data, "test", args.max_rows) for name, cfg in cfgs.items()}
    # every slice of the test patients, the empty ones the models never trained on (drop_empty) included
    whole = {name: load_spread(replace(cfg.data, drop_empty=False), "test", args.max_rows)
             for name, cfg in cfgs.items()}
    kvasir = [read_image(f) for f in sorted(KVASIR.iterdir())[: args.max_rows]]
    rec = {"command": command(argv), "machine": describe(), "models": {}}
    for name, cfg in cfgs.items():
        d = cfg.data
        train, val = load_spread(d, "train", args.max_rows), load_spread(d, "val", args.max_rows)
        prof = build_profile(train.images, val.images, to_dict(cfg)["data"])
        c = prof["channels"] // (2 * d.context + 1)
        inputs = {f"{name} test (own)": tests[name].images,
                  f"{name} test, empty slices too": whole[name].images,
                  "kvasir endoscopy (RGB photos)": prepared_like(d, kvasir)}
        for other, arr in tests.items():
            if other != name:  # the other MRI set's slices, one channel each, as this model would get them
                inputs[f"{other} test (other organ)"] = prepared_like(d, [a[len(a) // 2] for a in arr.images])
        r = {"threshold": prof["threshold"], "rule": prof["threshold_rule"], "n_train": prof["n_train"],
             "n_val": prof["n_val"], "inputs": {}}
        for what, x in inputs.items():
            x = x if x.shape[1] == prof["channels"] else np.concatenate([x[:, :c]] * (2 * d.context + 1), axis=1)
            dist = distances(prof, x)
            r["inputs"][what] = {"slices": int(len(x)), "flagged": float(np.mean(dist > prof["threshold"])),
                                 "median_distance": float(np.median(dist))}
            print(f"{name:6s} model, {what:32s} {len(x):4d} slices  flagged {np.mean(dist > prof['threshold']):6.1%}"
                  f"  median distance {np.median(dist):.3f} (threshold {prof['threshold']:.3f})", flush=True)
        rec["models"][name] = r
    write_json(args.json, rec)


if __name__ == "__main__":
    main()
