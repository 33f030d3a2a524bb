"""Evaluation of a checkpoint at the data's native resolution: per-image CSV and a JSON summary.

The model runs at its training resolution (each image prepared exactly as in training); the final mask is resized
back to the slice's native size (bilinear, threshold 0.5) and compared with the native ground truth. Summary
metrics are means over slices with foreground (the paper's protocol), and an ``all_slices`` block covers every
slice of the split, empty ones included, under the empty-mask conventions of :mod:`pixelrl_env.metrics`.

Two whole-volume figures come from the per-slice pixel counts: ``volumes`` (each patient's slices stacked into one
volume, Dice of the volume, mean over patients), which a per-slice mean hides when a model misses whole slices or
paints empty ones, and ``empty_slices`` (how often the model marks anything on a slice whose truth is empty), which
the paper's foreground-only protocol never sees. Every slice of the split is read (``drop_empty`` is not applied).

Post-processing (:mod:`pixelrl_env.postprocess`: keep the largest connected component, or drop islands below N
pixels) runs on each native-size mask, after it is resized back and before it is scored. ``postprocess="auto"``
chooses the rule on the validation split only, by nnU-Net's rule (none unless it raises validation Dice strictly);
under a rule other than none the summary also keeps the raw figures (``"raw"``), so both rows can be reported.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelrl_env.dataset import iter_samples

from pixelrl_env.data_config import DataConfig

from pixelrl_env.folds import config_split

from pixelrl_env.prepare import prepare_rows, resize_mask
from pixelrl_env.io import BadFiles, DataError
from pixelrl_env.metrics import ALL_METRICS, compute_all
from pixelrl_env.postprocess import RULE_SPECS, Rule, RuleChoice, apply_rule, choose_rule, parse_rule

from rl_agents.experiment.loaded import load_model
from rl_agents.config import TrainConfig, data_with
from rl_agents.algo.inference import binary_entropy, segment_with_steps

SPLITS = ("train", "val", "test", "all")
CRITERION = ("nnU-Net's rule: 'none' unless a candidate raises the mean validation Dice (slices with foreground) "
             "strictly")


@torch.no_grad()
def predict(model: torch.nn.Module, cfg: TrainConfig, images: np.ndarray, device,
            early_exit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Masks and uncertainty for prepared images ``(N, C, S, S)``, from either model kind (``early_exit``: see
    :func:`rl_agents.algo.inference.segment`; the masks are the same either way). The uncertainty is the binary
    entropy (bits) of :func:`predict_probability`'s probability, for both kinds."""
    masks, prob = predict_probability(model, cfg, images, device, early_exit)
    return masks, binary_entropy(torch.from_numpy(prob)).numpy()


def predict_probability(model: torch.nn.Module, cfg: TrainConfig, images: np.ndarray, device,
                        early_exit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Masks and each pixel's probability of foreground ``(N, S, S)`` float32: the U-Net's sigmoid, or PixelDRL-MG's
    probability of ending foreground (:mod:`rl_agents.algo.inference`)."""
    if getattr(model, "is_unet", False):
        with torch.inference_mode():
            prob = torch.sigmoid(model(torch.as_tensor(images, device=device))[:, 0]).float().cpu().numpy()
        return (prob >= 0.5).astype(np.uint8), prob
    out = segment_with_steps(model, images, cfg.pa3c.t_max, batch_size=16, device=device, early_exit=early_exit)
    return out.masks, out.probability


def volume_dice(groups: Sequence[str], tp, pred_pixels, gt_pixels) -> dict[str, float]:
    """Dice of each group's slices stacked into one volume: ``2 sum(tp) / (sum(pred) + sum(gt))`` over its slices.

    ``groups``, ``tp`` (true-positive pixels), ``pred_pixels`` and ``gt_pixels`` (foreground pixels of prediction and
    truth) hold one entry per slice, shape ``(N,)``; counts must be non-negative. A volume whose prediction and truth
    are both empty scores 1.0 (the convention of :mod:`pixelrl_env.metrics`). Returns ``{group: dice}``, groups in
    sorted order; ``{}`` for no slices.
    """
    tp, ps, gs = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (tp, pred_pixels, gt_pixels))
    if not len(groups) == len(tp) == len(ps) == len(gs):
        raise ValueError(f"one entry per slice expected, got {len(groups)} groups, {len(tp)} tp, {len(ps)} pred and "
                         f"{len(gs)} gt counts")
    if (tp < 0).any() or (ps < 0).any() or (gs < 0).any() or (tp > np.minimum(ps, gs)).any():
        raise ValueError("pixel counts must be >= 0 with tp <= min(pred_pixels, gt_pixels)")
    g = np.asarray(groups, dtype=object)
    out = {}
    for name in sorted(set(groups)):
        sel = g == name
        den = ps[sel].sum() + gs[sel].sum()
        out[name] = float(2 * tp[sel].sum() / den) if den > 0 else 1.0
    return out


def empty_slice_fp_rate(pred_pixels, gt_pixels) -> float | None:
    """Fraction of slices with an empty truth (``gt_pixels == 0``) on which the prediction marks any pixel.

    ``pred_pixels`` and ``gt_pixels``: foreground pixel counts per slice, shape ``(N,)``. ``None`` when no slice has an
    empty truth (the rate is undefined, not 0).
    """
    ps, gs = np.asarray(pred_pixels).reshape(-1), np.asarray(gt_pixels).reshape(-1)
    if ps.shape != gs.shape:
        raise ValueError(f"one count per slice expected, got {ps.shape} pred and {gs.shape} gt counts")
    empty = gs == 0
    return float(np.mean(ps[empty] > 0)) if empty.any() else None


def _parse_postprocess(spec: str | Rule) -> Rule | None:
    """The rule of ``spec``, or ``None`` for ``"auto"`` (chosen on the validation split)."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return None
    try:
        return parse_rule(spec)
    except ValueError:
        raise ValueError(f"postprocess must be 'auto', {RULE_SPECS}, got {spec!r}") from None


def _read_splits(data: DataConfig, bad: BadFiles, names: set[str]) -> dict[str, list]:
    """The slices of each split in ``names``: the run's own split, k-fold included (never another fold's patients)."""
    samples = list(iter_samples(data, bad))  # the source options (NIfTI axis, label value...) of the run
    out = {"all": samples} if "all" in names else {}
    if names - {"all"}:
        parts = dict(zip(("train", "val", "test"), config_split([s.group for s in samples], data)))
        out.update({n: [s for s in samples if s.group in parts[n]] for n in names - {"all"}})
    return out


def _native_masks(model, cfg: TrainConfig, samples: list, data: DataConfig, device, batch_size: int,
                  overlays: str | Path | None = None, max_overlays: int = 8) -> Iterator[np.ndarray]:
    """Each slice's predicted mask, resized back to the slice's native size (writing up to ``max_overlays`` PNGs of
    slices with foreground, at the model's resolution, when ``overlays`` names a folder)."""
    n_overlays = 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        images = prepare_rows(samples, range(i, i + len(chunk)), data)  # 2.5-D: with its neighbours as channels
        if images.shape[1] != int(model.in_channels):
            raise DataError(f"{chunk[0].source}: prepared by this data section, a slice has {images.shape[1]} "
                            f"channel(s), but the checkpoint's model takes {int(model.in_channels)}: evaluate it on "
                            "data like its training data (the same channels, data.channels and data.context)")
        masks, uncertainty = predict(model, cfg, images, device)
        for j, (s, img, m, unc) in enumerate(zip(chunk, images, masks, uncertainty)):
            if overlays and s.mask.any() and n_overlays < max_overlays:  # slices with something to see
                from rl_agents.experiment.visualize import save_overlay

                gt_small = resize_mask(s.mask, m.shape)
                save_overlay(Path(overlays) / f"{i + j:03d}_{Path(s.source).stem}.png", img, gt_small, m, unc,
                             caption=f"{s.group}: {Path(s.source).name}")
                n_overlays += 1
            yield resize_mask(m, s.mask.shape)


def _slice_row(s, pred: np.ndarray) -> dict[str, Any]:
    """The per-image CSV row of one slice: its metrics and pixel counts at native size."""
    vals = {k: float(v[0]) for k, v in compute_all(pred, s.mask).items()}
    p, g = pred.astype(bool), s.mask.astype(bool)
    return {"source": s.source, "group": s.group, "has_foreground": bool(g.any()),
            "height": s.mask.shape[0], "width": s.mask.shape[1], **vals,
            "tp_pixels": int(np.count_nonzero(p & g)), "pred_pixels": int(np.count_nonzero(p)),
            "gt_pixels": int(np.count_nonzero(g))}


def _score(samples: list, preds, rule: Rule) -> tuple[list[dict], list[dict]]:
    """Rows of the post-processed masks and, when ``rule`` is not ``none``, of the raw ones (else ``[]``); rows of
    the former then carry the raw ``raw_<metric>`` and ``raw_pred_pixels`` too."""
    rows, raw_rows = [], []
    for s, raw in zip(samples, preds):
        if rule.kind == "none":
            rows.append(_slice_row(s, raw))
            continue
        pred = apply_rule([raw], rule)[0]  # at native size: where the metrics are computed
        row = _slice_row(s, pred)
        raw_row = dict(row) if np.array_equal(pred, raw) else _slice_row(s, raw)
        rows.append({**row, **{f"raw_{k}": raw_row[k] for k in (*ALL_METRICS, "pred_pixels")}})
        raw_rows.append(raw_row)
    return rows, raw_rows


def _summary(rows: list[dict]) -> dict[str, Any]:
    """The summary blocks of a split's rows: slices with foreground (top level), ``all_slices``, ``volumes``,
    ``empty_slices``."""
    def block(sel: list[dict]) -> dict[str, Any]:
        if not sel:
            return {**{k: None for k in ("dice", "iou", "ppv", "sensitivity", "biou", "hd95", "assd")}, "n_images": 0}
        return {**{k: float(np.mean([r[k] for r in sel])) for k in ALL_METRICS}, "n_images": len(sel)}

    col = lambda k: [r[k] for r in rows]  # noqa: E731
    per_volume = volume_dice(col("group"), col("tp_pixels"), col("pred_pixels"), col("gt_pixels"))
    n_empty = sum(not r["has_foreground"] for r in rows)
    return {
        **block([r for r in rows if r["has_foreground"]]),
        "all_slices": block(rows),
        "volumes": {"dice": float(np.mean(list(per_volume.values()))), "n_volumes": len(per_volume),
                    "per_volume_dice": per_volume},
        "empty_slices": {"false_positive_rate": empty_slice_fp_rate(col("pred_pixels"), col("gt_pixels")),
                         "n_images": n_empty,
                         "n_false_positive": sum(not r["has_foreground"] and r["pred_pixels"] > 0 for r in rows)},
    }


def _postprocess_record(rule: Rule, choice: RuleChoice | None) -> dict[str, Any]:
    """The JSON's ``postprocess`` block: the rule used and how it was chosen."""
    rec: dict[str, Any] = {"rule": rule.spec, "chosen_by": "given" if choice is None else "auto",
                           "applied_at": "native resolution, after the mask is resized back"}
    if choice is not None:
        rec.update({"chosen_on": "val", "criterion": CRITERION, "validation_dice": choice.dice,
                    "n_validation_images": choice.n_images})
    return rec


def _write(result: dict[str, Any], rows: list[dict], json_out, csv_out) -> None:
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=2))
        csv_out = csv_out or Path(json_out).with_suffix(".csv")
    if csv_out:
        with open(csv_out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_config: str | Path | None = None,
    data_overrides: list[str] | None = None,
    split: str = "test",
    json_out: str | Path | None = None,
    csv_out: str | Path | None = None,
    device: str = "cpu",
    skip_bad: bool = False,
    batch_size: int = 16,
    overlays: str | Path | None = None,
    max_overlays: int = 8,
    postprocess: str | Rule = "none",
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of a data set: the one it was trained on, or the ``data`` section of the
    config file ``data_config``, with ``data.*`` overrides (``["data.fold=2"]``) on top.

    ``postprocess``: a rule of :mod:`pixelrl_env.postprocess` (``"none"``, ``"largest"``, ``"min:N"``) applied to each
    native-size mask, or ``"auto"``: the rule chosen on the validation split only (nnU-Net's rule, never on ``split``'s
    truth unless ``split`` is ``"val"``), then applied to ``split``. Under a rule other than ``none`` the result keeps
    the un-post-processed summary under ``"raw"``; ``"postprocess"`` records the rule and how it was chosen.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rule = _parse_postprocess(postprocess)  # before any loading: a bad value fails fast
    model, cfg = load_model(checkpoint, device)
    data: DataConfig = data_with(cfg.data, data_config, data_overrides)
    if skip_bad:
        data = replace(data, skip_bad=True)
    bad = BadFiles(skip_bad=data.skip_bad)
    parts = _read_splits(data, bad, {split} if rule is not None else {split, "val"})
    samples = parts[split]
    if not samples:
        raise ValueError(f"no slices in split {split!r} of {data.path or data.format}")
    run = lambda ss, ov: _native_masks(model, cfg, ss, data, device, batch_size, ov, max_overlays)  # noqa: E731
    preds, choice = None, None
    if rule is None:
        if not parts["val"]:
            raise ValueError(f"postprocess='auto' chooses on the validation split, which has no slices in "
                             f"{data.path or data.format}")
        val_preds = list(run(parts["val"], overlays if split == "val" else None))
        choice = choose_rule(val_preds, [s.mask for s in parts["val"]])
        rule, preds = choice.rule, val_preds if split == "val" else None
    rows, raw_rows = _score(samples, preds if preds is not None else run(samples, overlays), rule)
    result = {
        **_summary(rows),
        "split": split,
        "checkpoint": str(checkpoint),
        "data": {"format": data.format, "path": data.path},
        "n_bad_skipped": len(bad),
        "resolution": "native (model at data.size, masks resized back)",
        "postprocess": _postprocess_record(rule, choice),
    }
    if raw_rows:
        result["raw"] = _summary(raw_rows)
    _write(result, rows, json_out, csv_out)
    return result
