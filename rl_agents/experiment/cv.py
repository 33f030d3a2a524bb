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

import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rl_agents.config import flatten
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
        c, m = self.config, self.metrics
        return {"max_minutes": c.get("max_minutes"), "max_updates": c.get("max_updates"), "epochs": c.get("epochs"),
                "threads": c.get("threads"), "batch_size": c.get("batch_size"), "model": c.get("model"),
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
    import hashlib

    from rl_agents.experiment.evaluate import evaluate_checkpoint

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
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "figures": figures}))
        os.replace(tmp, cache)
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


def machine() -> dict[str, Any]:
    """Where this report ran: CPU model, cores, torch version (the trials of a local sweep ran here too)."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _command_line() -> str:
    """This process's command as typed: ``pixeldrl cv-report ...`` or ``python train.py cv-report ...``."""
    prog = Path(sys.argv[0]).name
    return shlex.join([*(["python"] if prog.endswith(".py") else []), prog, *sys.argv[1:]])


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
        "machine": machine(), "command": command or _command_line(),
        "device": device, "postprocess": postprocess,
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report


def _changes(t: Trial) -> dict[str, Any]:
    """The config keys a variant sets (its ``trial.json`` record less the name): the row's label in a report."""
    info = json.loads((t.path / TRIAL_INFO).read_text()) if (t.path / TRIAL_INFO).is_file() else {}
    return {k: v for k, v in ((info.get("sampled") or {}).get("variant") or {}).items() if k != "name"}


def ablation_report(
    storage_dir: str | Path,
    experiment: str | None,
    baseline: str = "base",
    splits: tuple[str, ...] = ("val", "test"),
    device: str = "cpu",
    json_out: str | Path | None = None,
    command: str | None = None,
    only: list[str] | None = None,
    merge: str | Path | None = None,
) -> dict[str, Any]:
    """Every variant of an ablation sweep (or those in ``only``, the baseline always) against ``baseline``, paired by
    fold, on each fold's ``splits`` patients.

    Rows are read on the validation patients (``val``, carved from each fold's training part) to say what helped;
    the test patients' figures are reported beside them but choose nothing, so no option is tuned on a test fold.
    Each checkpoint is evaluated once per split. Returns (and writes to ``json_out``) ``rows[variant][split]`` with
    the :func:`summarize` of variant minus baseline, each variant's config ``changes``, budgets, machine and command.

    Without ``only``, a sweep still running (or stopped) is reported as far as it got: the variants with every fold
    finished, and ``incomplete`` (variant -> folds done) and ``unfinished`` (trial folders) for the rest. A
    baseline without every fold is an error: there is nothing yet to pair with.

    ``merge`` is an earlier report's JSON of the same sweep, for rows run later without a baseline of their own
    (``train.py --tune ... --variants``): its per-fold figures stand in for the variants, the baseline included, that
    this storage lacks, and every row is paired with that baseline. Only figures of the same protocol pool: the same
    baseline, k, folds and, fold by fold, the same patients in each split; a storage with its own baseline trials is
    refused (the earlier rows were paired with the baseline trained beside them).
    """
    unfinished: list[tuple[Path, str]] | None = None if only else []
    trials = find_trials(storage_dir, experiment, set(only) | {baseline} if only else None, unfinished=unfinished)
    pending = "\n  ".join(f"{run}: {why}" for run, why in unfinished or [])
    if not trials:
        raise CVError(f"no finished trial in {Path(storage_dir) / (experiment or '')} yet:\n  {pending}")
    by: dict[str, dict[int, Trial]] = {}
    for t in trials:
        by.setdefault(t.variant, {})[t.fold] = t
    incomplete: dict[str, list[int]] = {}
    if unfinished:
        # the folds the sweep trains: those any of its trials has, finished or not
        sweep_folds = {t.fold for t in trials} | {
            int(yaml.safe_load((run / "config.yaml").read_text())["data"]["fold"]) for run, _ in unfinished}
        if baseline in by and set(by[baseline]) != sweep_folds:
            raise CVError(f"baseline variant {baseline!r} has folds {sorted(by[baseline])} of the sweep's "
                          f"{sorted(sweep_folds)} finished; finish or resume the sweep. Not finished:\n  {pending}")
        incomplete = {v: sorted(ts) for v, ts in by.items() if set(ts) != sweep_folds}
        by = {v: ts for v, ts in by.items() if v not in incomplete}
    earlier = _earlier_report(merge, baseline, trials[0].folds, splits) if merge else None
    if only:
        unknown = sorted(set(only) - set(by) - set(earlier["rows"] if earlier else ()))
        if unknown:
            raise CVError(f"variant(s) {unknown} not in the sweep at {Path(storage_dir) / (experiment or '')}; "
                          f"found variants {sorted(by)}")
        by = {v: ts for v, ts in by.items() if v in only or v == baseline}
    if baseline in by and earlier is not None:
        raise CVError(f"--merge {merge}: the sweep at {Path(storage_dir) / (experiment or '')} has its own "
                      f"{baseline!r} trials; the earlier report's rows were paired with the {baseline!r} trained "
                      "beside them, so they are merged only into a sweep without one (e.g. run with --variants)")
    if baseline not in by and earlier is None:
        raise CVError(f"baseline variant {baseline!r} not in the sweep at {Path(storage_dir) / (experiment or '')}; "
                      f"found variants {sorted(by)}")
    folds = sorted(by[baseline]) if baseline in by else earlier["folds"]
    for v, ts in by.items():
        if set(ts) != set(folds):
            raise CVError(_fold_mismatch(v, set(ts), baseline, set(folds)))
    per_split = {split: _evaluate(by, folds, split, device) for split in splits}
    rows = {v: {"changes": _changes(by[v][folds[0]]),
                "updates": [by[v][f].metrics.get("updates") for f in folds],
                "wall_time_s": [by[v][f].metrics.get("wall_time_s") for f in folds],
                "params": by[v][folds[0]].metrics.get("params")} for v in by}
    merged: dict[str, Any] | None = None
    if earlier is not None:
        taken = [v for v in earlier["rows"] if v not in by and (not only or v in only or v == baseline)]
        if earlier["folds"] != folds:
            raise CVError(f"{merge}: folds {earlier['folds']}, this sweep's {folds}: not the same protocol")
        for split in splits:
            theirs = earlier["per_fold"][split]
            for f in folds:
                want = theirs[baseline][f]["patients"]
                for v in per_split[split]:
                    if per_split[split][v][f]["patients"] != want:
                        raise CVError(f"{merge}: fold {f}'s {split} patients differ from those of {v!r} here "
                                      f"({want} there); figures of different splits do not pool")
            for v in taken:
                per_split[split][v] = theirs[v]
        for v in taken:
            rows[v] = {k: earlier["rows"][v][k] for k in ("changes", "updates", "wall_time_s", "params")}
        merged = {"from": str(merge), "variants": sorted(taken), "command": earlier.get("command"),
                  "machine": earlier.get("machine")}
    rows = {v: {**rows[v], **{split: summarize(per_split[split], v, baseline) for split in splits}}
            for v in sorted(rows, key=lambda v: (v != baseline, v))}
    report = {
        "experiment": experiment, "storage": str(Path(storage_dir).resolve()), "baseline": baseline,
        "splits": list(splits), "k": trials[0].folds, "folds": folds, "rows": rows,
        "incomplete": incomplete, "unfinished": [f"{run}: {why}" for run, why in unfinished or []],
        "per_fold": per_split, "lower_is_better": sorted(LOWER_IS_BETTER), "labels": LABELS,
        "machine": machine(), "command": command or _command_line(), "device": device,
        **({"merged": merged} if merged else {}),
    }
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report


def pm_text(stat: dict, digits: int = 3, sign: bool = False) -> str:
    """``mean ± sd`` of a :func:`mean_sd` or :func:`paired` result (``-`` where undefined); ``sign``: ``+`` too."""
    if stat["mean"] is None:
        return "-"
    sd = "-" if stat["sd"] is None else f"{stat['sd']:.{digits}f}"
    return f"{stat['mean']:{'+' if sign else ''}.{digits}f} ± {sd}"


def ablation_markdown(report: dict[str, Any]) -> str:
    """An :func:`ablation_report` (or its JSON) as the README's Markdown table: the baseline, then the rows by their
    paired validation Dice difference, best first (the order the validation patients give; test columns beside)."""
    base, n = report["baseline"], len(report["folds"])
    rows = report["rows"]
    order = [base] + sorted((v for v in rows if v != base), key=lambda v: -rows[v]["val"]["paired"]["dice"]["mean"])
    out = [f"| variant ({n} folds; what it sets) | params | val Dice | Δ val Dice (folds better) | test Dice | "
           "Δ test Dice | Δ test BIoU | Δ test HD95 (px) | Δ test Dice per volume | Δ test empty-slice FP |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in order:
        row, val, test = rows[v], rows[v]["val"], rows[v]["test"]
        sets = ", ".join(f"{k}={w}" for k, w in flatten(row["changes"]).items())
        cells = [f"`{v}`" + (f" ({sets})" if sets else ""), f"{row['params']:,}" if row.get("params") else "-",
                 pm_text(val["variants"][v]["dice"])]
        if v == base:
            cells += ["", pm_text(test["variants"][v]["dice"]), "", "", "", "", ""]
        else:
            d = val["paired"]["dice"]
            cells += [f"{pm_text(d, sign=True)} ({d['a_wins']}/{d['n']})", pm_text(test["variants"][v]["dice"]),
                      *(pm_text(test["paired"][m], 1 if m == "hd95" else 3, sign=True)
                        for m in ("dice", "biou", "hd95", "volume_dice", "empty_fp_rate"))]
        out.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n".join(out)


def _earlier_report(path: str | Path, baseline: str, k: int, splits: tuple[str, ...]) -> dict[str, Any]:
    """An :func:`ablation_report` JSON, checked to be of the same protocol, with its fold keys as integers again."""
    p = Path(path)
    try:
        rep = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CVError(f"--merge {p}: not a readable ablation-report JSON ({e})") from e
    if not isinstance(rep, dict) or not {"baseline", "k", "folds", "rows", "per_fold"} <= set(rep):
        raise CVError(f"--merge {p}: not an ablation-report JSON (expected keys baseline, k, folds, rows, per_fold)")
    if rep["baseline"] != baseline or rep["k"] != k:
        raise CVError(f"--merge {p}: baseline {rep['baseline']!r} with k={rep['k']}, this report's {baseline!r} "
                      f"with k={k}: not the same protocol")
    missing = [s for s in splits if s not in rep["per_fold"]]
    if missing:
        raise CVError(f"--merge {p}: no figures on split(s) {missing}")
    if any(baseline not in rep["per_fold"][s] for s in splits):
        raise CVError(f"--merge {p}: no figures of the baseline {baseline!r}")
    rep["per_fold"] = {s: {v: {int(f): fig for f, fig in folds.items()} for v, folds in per.items()}
                       for s, per in rep["per_fold"].items()}
    return rep
