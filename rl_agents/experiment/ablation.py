"""Ablation reports: every variant of a sweep against a baseline, paired fold by fold, read on the validation
patients (the test patients' figures beside them choose nothing); as JSON and as the README's Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rl_agents.config import flatten
from rl_agents.experiment.cv import (LABELS, LOWER_IS_BETTER, CVError, Trial, _evaluate, _fold_mismatch, find_trials,
                                     pm_text, summarize)
from rl_agents.experiment.provenance import command as this_command
from rl_agents.experiment.provenance import describe, write_json
from rl_agents.experiment.sweep import TRIAL_INFO


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
    where = Path(storage_dir) / (experiment or "")
    by, incomplete = _finished(trials, baseline, unfinished, where)
    earlier = _earlier_report(merge, baseline, trials[0].folds, splits) if merge else None
    by = _chosen(by, only, baseline, earlier, merge, where)
    folds = sorted(by[baseline]) if baseline in by else earlier["folds"]
    for v, ts in by.items():
        if set(ts) != set(folds):
            raise CVError(_fold_mismatch(v, set(ts), baseline, set(folds)))
    per_split = {split: _evaluate(by, folds, split, device) for split in splits}
    rows = {v: {"changes": _changes(by[v][folds[0]]),
                "updates": [by[v][f].metrics.get("updates") for f in folds],
                "wall_time_s": [by[v][f].metrics.get("wall_time_s") for f in folds],
                "params": by[v][folds[0]].metrics.get("params")} for v in by}
    merged = None
    if earlier is not None:
        merged = _merge_earlier(earlier, merge, by, only, baseline, folds, per_split, rows)
    rows = {v: {**rows[v], **{split: summarize(per_split[split], v, baseline) for split in splits}}
            for v in sorted(rows, key=lambda v: (v != baseline, v))}
    report = {
        "experiment": experiment, "storage": str(Path(storage_dir).resolve()), "baseline": baseline,
        "splits": list(splits), "k": trials[0].folds, "folds": folds, "rows": rows,
        "incomplete": incomplete, "unfinished": [f"{run}: {why}" for run, why in unfinished or []],
        "per_fold": per_split, "lower_is_better": sorted(LOWER_IS_BETTER), "labels": LABELS,
        "machine": describe(), "command": command or this_command(), "device": device,
        **({"merged": merged} if merged else {}),
    }
    if json_out:
        write_json(json_out, report)
    return report


def _finished(trials: list[Trial], baseline: str, unfinished: list | None,
              where: Path) -> tuple[dict[str, dict[int, Trial]], dict[str, list[int]]]:
    """Trials by variant and fold, only variants with every fold of the sweep finished; the others' finished folds.
    A sweep still running is reported as far as it got, but its baseline must be complete."""
    pending = "\n  ".join(f"{run}: {why}" for run, why in unfinished or [])
    if not trials:
        raise CVError(f"no finished trial in {where} yet:\n  {pending}")
    by: dict[str, dict[int, Trial]] = {}
    for t in trials:
        by.setdefault(t.variant, {})[t.fold] = t
    if not unfinished:
        return by, {}
    # the folds the sweep trains: those any of its trials has, finished or not
    sweep_folds = {t.fold for t in trials} | {
        int(yaml.safe_load((run / "config.yaml").read_text())["data"]["fold"]) for run, _ in unfinished}
    if baseline in by and set(by[baseline]) != sweep_folds:
        raise CVError(f"baseline variant {baseline!r} has folds {sorted(by[baseline])} of the sweep's "
                      f"{sorted(sweep_folds)} finished; finish or resume the sweep. Not finished:\n  {pending}")
    incomplete = {v: sorted(ts) for v, ts in by.items() if set(ts) != sweep_folds}
    return {v: ts for v, ts in by.items() if v not in incomplete}, incomplete


def _chosen(by: dict[str, dict[int, Trial]], only: list[str] | None, baseline: str, earlier: dict | None,
            merge, where: Path) -> dict[str, dict[int, Trial]]:
    """The variants to report (``only`` and the baseline, if given), checked against what the sweep and an earlier
    report hold."""
    if only:
        unknown = sorted(set(only) - set(by) - set(earlier["rows"] if earlier else ()))
        if unknown:
            raise CVError(f"variant(s) {unknown} not in the sweep at {where}; found variants {sorted(by)}")
        by = {v: ts for v, ts in by.items() if v in only or v == baseline}
    if baseline in by and earlier is not None:
        raise CVError(f"--merge {merge}: the sweep at {where} has its own {baseline!r} trials; the earlier report's "
                      f"rows were paired with the {baseline!r} trained beside them, so they are merged only into a "
                      "sweep without one (e.g. run with --variants)")
    if baseline not in by and earlier is None:
        raise CVError(f"baseline variant {baseline!r} not in the sweep at {where}; found variants {sorted(by)}")
    return by


def _merge_earlier(earlier: dict, merge, by: dict, only: list[str] | None, baseline: str, folds: list[int],
                   per_split: dict, rows: dict) -> dict[str, Any]:
    """Put the earlier report's variants that this storage lacks into ``per_split`` and ``rows`` (in place), after
    checking that both are of one protocol: the same folds and, fold by fold, the same patients in each split."""
    taken = [v for v in earlier["rows"] if v not in by and (not only or v in only or v == baseline)]
    if earlier["folds"] != folds:
        raise CVError(f"{merge}: folds {earlier['folds']}, this sweep's {folds}: not the same protocol")
    for split in per_split:
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
    return {"from": str(merge), "variants": sorted(taken), "command": earlier.get("command"),
            "machine": earlier.get("machine")}


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
