"""Patient-level k-fold cross-validation report: two models of one sweep, compared fold by fold on test patients.

A CV sweep (``tune_configs/cv_heart.yaml``, ``cv_lgg.yaml``) trains every variant (model) on every fold ``data.fold``
of ``data.folds``; each trial leaves ``<storage>/<experiment>/trial_<id>/run/`` with ``config.yaml``,
``metrics.json``, ``checkpoints/best.pt`` (selected on the fold's validation patients) and ``trial.json`` (the
variant's name, :func:`rl_agents.experiment.sweep.record_trial`). :func:`cv_report` evaluates each ``best.pt`` on its
own fold's test patients at native resolution (:func:`rl_agents.experiment.evaluate.evaluate_checkpoint`, which
splits with the checkpoint's own data config) and summarises:

* per (variant, fold): the paper's block (means over slices with foreground) and a whole-volume block (per-volume
  Dice, the false-positive rate on slices with an empty truth, Dice over all slices);
* per variant: mean and sample standard deviation (``ddof=1``) over folds;
* A minus B, paired by fold (the same test patients), its mean and sd, and on how many folds A beats B.

With 5 folds a mean difference means little without its spread and the per-fold signs, so all three are reported.
The report refuses, naming what it found, rather than pair folds that do not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rl_agents.config import flatten, upgrade
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.provenance import command as this_command
from rl_agents.experiment.provenance import describe, write_json
from rl_agents.experiment.sweep import TRIAL_INFO

PAPER_METRICS = ("dice", "iou", "ppv", "sensitivity", "biou", "hd95")
WHOLE_METRICS = ("volume_dice", "empty_fp_rate", "all_dice")
LOWER_IS_BETTER = frozenset({"hd95", "empty_fp_rate"})
LABELS = {
    "dice": "Dice", "iou": "IoU", "ppv": "PPV", "sensitivity": "Sensitivity", "biou": "Boundary IoU",
    "hd95": "HD95 (px, lower is better)", "volume_dice": "Dice per volume",
    "empty_fp_rate": "Empty-slice FP rate (lower is better)", "all_dice": "Dice, all slices",
}


class CVError(ValueError):
    """A sweep folder that cannot give a paired cross-validation report (what is wrong is in the message)."""


@dataclass
class Trial:
    """One finished trial of a CV sweep, as read from its folder."""

    path: Path  # the trial's run/ folder
    variant: str
    fold: int
    folds: int
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def budget(self) -> dict[str, Any]:
        c, m = flatten(upgrade(self.config, "a trial's config.yaml")), self.metrics
        return {"max_minutes": c.get("budget.max_minutes"), "max_updates": c.get("budget.max_updates"),
                "epochs": c.get("budget.epochs"), "threads": c.get("compute.threads"),
                "batch_size": c.get("optim.batch_size"), "model": c.get("model"),
                "updates": m.get("updates"), "best_update": m.get("best_update"), "wall_time_s": m.get("wall_time_s"),
                "stopped_by": m.get("stopped_by")}


def _variant_of(run: Path) -> str | None:
    """The variant's name: ``run/trial.json``, else Tune's ``params.json`` beside ``run/`` (older sweeps)."""
    for path in (run / TRIAL_INFO, run.parent / "params.json"):
        if path.is_file():
            info = json.loads(path.read_text())
            name = info.get("variant") if path.name == TRIAL_INFO else (info.get("variant") or {}).get("name")
            if name:
                return str(name)
    return None


def _problem(problems: list[str], unfinished: list | None, run: Path, why: str) -> None:
    if unfinished is None:
        problems.append(f"{run}: {why}")
    else:
        unfinished.append((run, why))


def find_trials(storage_dir: str | Path, experiment: str | None, variants: set[str] | None = None,
                unfinished: list[tuple[Path, str]] | None = None) -> list[Trial]:
    """Every trial folder of the sweep at ``storage_dir/experiment`` (``storage_dir`` itself when ``experiment`` is
    None), each checked to be finished and to be a k-fold trial with a named variant; sorted by variant and fold.
    With ``variants``, only those variants' trials are read and checked (the rest of an interrupted sweep may be
    unfinished). With an ``unfinished`` list, a trial not finished yet (no best.pt or metrics.json: a sweep still
    running, or stopped) is listed there as ``(run folder, why)`` instead of failing the call; any other problem
    still does."""
    storage_dir = Path(storage_dir)
    root = storage_dir / experiment if experiment else storage_dir
    if not root.is_dir():
        found = sorted(p.name for p in storage_dir.iterdir() if p.is_dir()) if storage_dir.is_dir() else []
        raise CVError(f"no sweep folder {root}" + (f"; experiments under {storage_dir}: {found}" if found else
                                                   f" ({storage_dir} does not exist)" if not storage_dir.is_dir()
                                                   else f"; {storage_dir} holds no experiment folder"))
    runs = sorted(p.parent for p in root.glob("*/run/config.yaml"))
    if not runs:
        raise CVError(f"{root} holds no trial folder (*/run/config.yaml): has the sweep started?")
    problems, trials = [], []
    for run in runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        variant = _variant_of(run)
        if variants is not None and variant not in variants:
            continue
        if not (run / "checkpoints" / "best.pt").is_file():
            _problem(problems, unfinished, run, "no checkpoints/best.pt")
        elif not (run / "metrics.json").is_file():
            _problem(problems, unfinished, run, "no metrics.json (the trial did not finish; resume the sweep)")
        elif variant is None:
            problems.append(f"{run}: no variant name ({TRIAL_INFO} or ../params.json)")
        elif cfg["data"].get("folds") is None:
            problems.append(f"{run}: not a k-fold trial (data.folds is null)")
        else:
            trials.append(Trial(run, variant, int(cfg["data"]["fold"]), int(cfg["data"]["folds"]), cfg,
                                json.loads((run / "metrics.json").read_text())))
    if problems:
        raise CVError(f"{len(problems)} of {len(runs)} trial(s) in {root} cannot be reported:\n  " +
                      "\n  ".join(problems))
    seen: dict[tuple[str, int], Path] = {}
    for t in trials:
        if (t.variant, t.fold) in seen:
            raise CVError(f"variant {t.variant!r} fold {t.fold} trained twice: {seen[t.variant, t.fold]} and {t.path}")
        seen[t.variant, t.fold] = t.path
    split = {(t.folds, t.config["data"].get("seed")) for t in trials}
    if len(split) > 1:
        raise CVError(f"trials in {root} use different patient folds (data.folds, data.seed): {sorted(split)}")
    return sorted(trials, key=lambda t: (t.variant, t.fold))


def mean_sd(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample sd (``ddof=1``) of the defined values; ``sd`` None for fewer than two, both None for none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) >= 2 else None,
            "n": int(len(v))}


def paired(a: dict[int, float | None], b: dict[int, float | None], lower_is_better: bool = False) -> dict[str, Any]:
    """``a[fold] - b[fold]`` on the folds where both are defined, their mean and sd, and how often A is better.

    ``a`` and ``b`` must hold the same folds (the caller checks: a difference over unmatched folds is not paired).
    """
    if set(a) != set(b):
        raise CVError(f"paired difference needs the same folds, got {sorted(a)} and {sorted(b)}")
    diffs = {f: a[f] - b[f] for f in sorted(a) if a[f] is not None and b[f] is not None}
    d = list(diffs.values())
    better = [x < 0 if lower_is_better else x > 0 for x in d]
    return {"diffs": diffs, **mean_sd(d), "a_wins": int(sum(better)), "ties": int(sum(x == 0 for x in d)),
            "lower_is_better": lower_is_better}


def fold_figures(ev: dict[str, Any]) -> dict[str, Any]:
    """The report's figures of one (variant, fold) from an :func:`evaluate_checkpoint` result."""
    return {**{k: ev[k] for k in PAPER_METRICS}, "volume_dice": ev["volumes"]["dice"],
            "empty_fp_rate": ev["empty_slices"]["false_positive_rate"], "all_dice": ev["all_slices"]["dice"],
            "n_foreground_slices": ev["n_images"], "n_slices": ev["all_slices"]["n_images"],
            "n_empty_slices": ev["empty_slices"]["n_images"], "patients": sorted(ev["volumes"]["per_volume_dice"]),
            "per_volume_dice": ev["volumes"]["per_volume_dice"]}


def summarize(per_fold: dict[str, dict[int, dict[str, Any]]], a: str, b: str) -> dict[str, Any]:
    """Per-variant mean +- sd over folds and the paired A - B of every metric, from ``per_fold[variant][fold]``."""
    if set(per_fold[a]) != set(per_fold[b]):
        raise CVError(_fold_mismatch(a, set(per_fold[a]), b, set(per_fold[b])))
    folds = sorted(per_fold[a])
    out: dict[str, Any] = {"variants": {}, "paired": {}}
    for v in (a, b):
        out["variants"][v] = {m: {**mean_sd([per_fold[v][f][m] for f in folds]),
                                  "values": {f: per_fold[v][f][m] for f in folds}}
                              for m in (*PAPER_METRICS, *WHOLE_METRICS)}
    for m in (*PAPER_METRICS, *WHOLE_METRICS):
        out["paired"][m] = paired({f: per_fold[a][f][m] for f in folds}, {f: per_fold[b][f][m] for f in folds},
                                  m in LOWER_IS_BETTER)
    return out


# bump when what evaluate_checkpoint or fold_figures compute changes: older cached figures are then recomputed
EVAL_CACHE_VERSION = 1


def _figures(checkpoint: Path, split: str, device: str, postprocess: str = "none") -> dict[str, Any]:
    """:func:`fold_figures` of ``checkpoint`` on ``split``, cached beside it (``report_eval_<split>.json``) under the
    checkpoint's SHA-256: a report scores every trial of a sweep at native resolution (minutes each on a CPU), and
    a rerun, or a report of a sweep that has gone on, then scores only what is new or changed."""

    key = {"version": EVAL_CACHE_VERSION, "split": split, "device": device,
           "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    if postprocess != "none":  # its own cache: the raw figures stay cached beside it
        key["postprocess"] = postprocess
    suffix = "" if postprocess == "none" else "_pp-" + postprocess.replace(":", "")
    cache = checkpoint.parent / f"report_eval_{split}{suffix}.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["figures"]
    except (OSError, ValueError, AttributeError):
        pass  # none yet, or unreadable: computed again
    ev = evaluate_checkpoint(checkpoint, split=split, device=device, postprocess=postprocess)
    figures = {**fold_figures(ev), "postprocess": ev.get("postprocess")}
    try:
        write_json(cache, {"key": key, "figures": figures}, indent=None)
    except OSError:
        pass  # a read-only sweep folder: the report still stands, uncached
    return figures


def _evaluate(by: dict[str, dict[int, Trial]], folds: list[int], split: str, device: str,
              postprocess: str = "none") -> dict[str, Any]:
    """``per_fold[variant][fold]``: each trial's best checkpoint scored on its own fold's ``split`` patients (after
    ``postprocess``; ``auto`` chooses each trial's rule on that fold's validation patients)."""
    per_fold: dict[str, dict[int, dict[str, Any]]] = {}
    for v, trials in by.items():
        per_fold[v] = {}
        for f in folds:
            per_fold[v][f] = {**_figures(Path(trials[f].checkpoint), split, device, postprocess),
                              "trial": str(trials[f].path),
                              "budget": trials[f].budget()}
    return per_fold


def _fold_mismatch(a: str, fa: set[int], b: str, fb: set[int]) -> str:
    return (f"variants {a!r} and {b!r} do not cover the same folds, so no paired difference: {a!r} has folds "
            f"{sorted(fa)}, {b!r} has {sorted(fb)}; missing from {a!r}: {sorted(fb - fa)}, from {b!r}: "
            f"{sorted(fa - fb)} (finish or resume the sweep)")


def cv_report(
    storage_dir: str | Path,
    experiment: str | None,
    a: str = "pixeldrl",
    b: str = "unet",
    split: str = "test",
    device: str = "cpu",
    json_out: str | Path | None = None,
    command: str | None = None,
    postprocess: str = "none",
) -> dict[str, Any]:
    """Evaluate every trial of variants ``a`` and ``b`` on its fold's ``split`` patients and compare them fold by fold.

    ``storage_dir/experiment`` is the sweep's folder (Tune's ``storage`` and ``experiment``). Returns (and writes to
    ``json_out``) every per-fold figure, per-variant mean/sd, the paired A - B, the folds and their patients, the
    budgets each trial had and used, the machine and ``command`` (default: this process's command line).
    Raises :class:`CVError` before evaluating anything when the folder, a checkpoint or a fold is missing.
    """
    trials = find_trials(storage_dir, experiment)
    variants = sorted({t.variant for t in trials})
    for v in (a, b):
        if v not in variants:
            where = Path(storage_dir) / (experiment or "")
            raise CVError(f"variant {v!r} not in the sweep at {where}; found variants {variants}")
    if a == b:
        raise CVError(f"A and B are the same variant {a!r}")
    by = {v: {t.fold: t for t in trials if t.variant == v} for v in (a, b)}
    if set(by[a]) != set(by[b]):
        raise CVError(_fold_mismatch(a, set(by[a]), b, set(by[b])))
    k = trials[0].folds
    folds = sorted(by[a])

    per_fold = _evaluate(by, folds, split, device, postprocess)
    patients = {}
    for f in folds:
        pa, pb = per_fold[a][f]["patients"], per_fold[b][f]["patients"]
        if pa != pb:
            raise CVError(f"fold {f}: {a!r} was tested on patients {pa} but {b!r} on {pb} (different data configs?)")
        patients[f] = pa

    # the budgets each variant was given (distinct values over its folds): equal between A and B, or say so
    budgets = {v: {key: list(dict.fromkeys(per_fold[v][f]["budget"][key] for f in folds))
                   for key in ("max_minutes", "max_updates", "threads")} for v in (a, b)}
    report = {
        "experiment": experiment, "storage": str(Path(storage_dir).resolve()), "split": split, "a": a, "b": b,
        "k": k, "folds": folds, "missing_folds": sorted(set(range(k)) - set(folds)),
        "patients": patients, "n_patients": {f: len(p) for f, p in patients.items()},
        "metrics": {"paper": list(PAPER_METRICS), "whole": list(WHOLE_METRICS)},
        "lower_is_better": sorted(LOWER_IS_BETTER), "labels": LABELS,
        "per_fold": per_fold, **summarize(per_fold, a, b),
        "budgets": budgets, "budgets_equal": budgets[a] == budgets[b],
        "other_variants": [v for v in variants if v not in (a, b)],
        "machine": describe(), "command": command or this_command(),
        "device": device, "postprocess": postprocess,
    }
    if json_out:
        write_json(json_out, report)
    return report


def pm_text(stat: dict, digits: int = 3, sign: bool = False) -> str:
    """``mean ± sd`` of a :func:`mean_sd` or :func:`paired` result (``-`` where undefined); ``sign``: ``+`` too."""
    if stat["mean"] is None:
        return "-"
    sd = "-" if stat["sd"] is None else f"{stat['sd']:.{digits}f}"
    return f"{stat['mean']:{'+' if sign else ''}.{digits}f} ± {sd}"
