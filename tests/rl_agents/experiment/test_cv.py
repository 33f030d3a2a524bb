"""The k-fold CV protocol: the sweep files, and ``cv_report`` on a sweep folder laid out as Tune leaves it.

The folder is built without Tune: each of 2 variants x 3 folds is trained for 2 updates on tiny synthetic data with
the shared run lifecycle (config.yaml, metrics.json, checkpoints/best.pt as a sweep trial writes them), and its
variant is recorded with the sweep's own ``record_trial``. The figures are checked against the per-fold values and
numpy; whole-volume figures against a case computed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import robustness
from pixelrl_env.corrupt import LEVELS
from pixelrl_env.folds import fold_of
from pixelrl_env.metrics import dice
from rl_agents.cli import main
from rl_agents.config import flatten, load_config, to_dict
from rl_agents.experiment import cv
from rl_agents.experiment.ablation import ablation_markdown, ablation_report
from rl_agents.experiment.cv import LOWER_IS_BETTER, PAPER_METRICS, WHOLE_METRICS, CVError, cv_report, find_trials
from rl_agents.experiment.evaluate import empty_slice_fp_rate, evaluate_checkpoint, volume_dice
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.sweep import _space, load_sweep, record_trial, trial_config

ROOT = Path(__file__).resolve().parents[3]
K = 3
PATIENTS = [f"synth{p:03d}" for p in range(6)]
VARIANTS = {"pixeldrl": [], "unet": ["model=unet"]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``<storage>/cv-t/trial_<variant>_<fold>/run/`` for 2 variants x 3 folds; returns the storage folder."""

    storage = tmp_path_factory.mktemp("tune")
    for variant, extra in VARIANTS.items():
        for fold in range(K):
            cfg = load_config(None, [
                "data.format=synthetic", "data.size=32", f"data.folds={K}", f"data.fold={fold}",
                "data.synthetic={n_patients: 6, slices_per_patient: 4, size: 32, difficulty: easy}",
                "budget.max_updates=2", "budget.max_minutes=null", "eval.every=2", "eval.checkpoint_every=2", "pa3c.t_max=2", "optim.batch_size=2",
                "num_workers=0", "compute.threads=1", "tracking.mlflow=false", *extra])
            out = storage / "cv-t" / f"trial_{variant}_{fold}" / "run"
            train(cfg, out, quiet=True)
            record_trial(out, f"{variant}_{fold}", {"data.fold": fold, "variant": {"name": variant, **(
                {"model": "unet"} if variant == "unet" else {})}})
    return storage


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report") / "cv.json"


@pytest.fixture(scope="module")
def report(sweep: Path, report_file: Path) -> dict:
    return cv_report(sweep, "cv-t", a="pixeldrl", b="unet", json_out=report_file,
                     command="pixeldrl cv-report --experiment cv-t")


def test_each_fold_is_scored_on_its_own_test_patients(report: dict):
    expect = fold_of(PATIENTS, K, seed=0)  # the test fold of every patient
    assert report["folds"] == [0, 1, 2] and report["k"] == K and report["missing_folds"] == []
    for f in range(K):
        assert report["patients"][f] == sorted(p for p, pf in expect.items() if pf == f)
        for v in VARIANTS:
            assert report["per_fold"][v][f]["patients"] == report["patients"][f]
            assert report["per_fold"][v][f]["n_slices"] == 4 * len(report["patients"][f])  # empty slices included
    folds = [set(report["patients"][f]) for f in range(K)]
    assert all(not (folds[i] & folds[j]) for i in range(K) for j in range(i + 1, K))
    assert set().union(*folds) == set(PATIENTS)


def test_per_fold_figures_are_the_checkpoints_native_evaluation(sweep: Path, report: dict):
    ev = evaluate_checkpoint(sweep / "cv-t" / "trial_unet_1" / "run" / "checkpoints" / "best.pt", split="test")
    fig = report["per_fold"]["unet"][1]
    for m in PAPER_METRICS:
        assert fig[m] == ev[m]
    assert fig["volume_dice"] == ev["volumes"]["dice"] and fig["all_dice"] == ev["all_slices"]["dice"]
    assert fig["empty_fp_rate"] == ev["empty_slices"]["false_positive_rate"]
    assert fig["n_empty_slices"] == ev["empty_slices"]["n_images"] > 0  # the synthetic ends are empty slices


def test_paired_difference_and_mean_sd_match_the_per_fold_values(report: dict):
    folds = report["folds"]
    for m in (*PAPER_METRICS, *WHOLE_METRICS):
        a = np.array([report["per_fold"]["pixeldrl"][f][m] for f in folds])
        b = np.array([report["per_fold"]["unet"][f][m] for f in folds])
        p = report["paired"][m]
        assert p["diffs"] == {f: x - y for f, x, y in zip(folds, a, b)}, m  # exactly A - B, fold by fold
        assert p["mean"] == pytest.approx(np.mean(a - b), abs=1e-15)
        assert p["sd"] == pytest.approx(np.std(a - b, ddof=1), abs=1e-15)
        better = (a < b) if m in LOWER_IS_BETTER else (a > b)
        assert (p["a_wins"], p["ties"], p["n"]) == (int(better.sum()), int((a == b).sum()), K), m
        for name, vals in (("pixeldrl", a), ("unet", b)):
            s = report["variants"][name][m]
            assert s["mean"] == pytest.approx(np.mean(vals), abs=1e-15)
            assert s["sd"] == pytest.approx(np.std(vals, ddof=1), abs=1e-15)
            assert s["n"] == K
    assert LOWER_IS_BETTER == {"hd95", "empty_fp_rate"}


def test_json_holds_folds_budgets_machine_and_command(report: dict, report_file: Path):
    saved = json.loads(report_file.read_text())
    assert saved["folds"] == [0, 1, 2] and set(saved["per_fold"]) == set(VARIANTS)
    assert saved["per_fold"]["unet"]["2"]["dice"] == report["per_fold"]["unet"][2]["dice"]
    assert saved["command"] == "pixeldrl cv-report --experiment cv-t"
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["torch"] and saved["machine"]["cpu"]
    assert saved["budgets"] == {v: {"max_minutes": [None], "max_updates": [2], "threads": [1]} for v in VARIANTS}
    assert saved["budgets_equal"] is True
    for v in VARIANTS:
        for f in ("0", "1", "2"):
            b = saved["per_fold"][v][f]["budget"]
            assert b["updates"] == 2 and b["stopped_by"] == "max_updates" and b["wall_time_s"] >= 0
            assert b["model"] == v


def test_volume_dice_and_empty_slice_fp_rate_on_a_hand_made_case():
    # patient p: a 2-slice volume. Slice 0: truth 4 pixels, prediction 3 of them plus 1 outside; slice 1: truth
    # empty, prediction 2 pixels. Volume Dice = 2 * 3 / (6 + 4) = 0.6. Patient q: one slice, both empty -> 1.0.
    gt0 = np.zeros((4, 4), np.uint8)
    gt0[0, :4] = 1
    pred0 = np.zeros((4, 4), np.uint8)
    pred0[0, :3] = 1
    pred0[3, 3] = 1
    gt1, pred1 = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    pred1[2, 1:3] = 1
    empty = np.zeros((4, 4), np.uint8)
    groups = ["p", "p", "q"]
    tp = [3, 0, 0]
    pred_px = [4, 2, 0]
    gt_px = [4, 0, 0]
    got = volume_dice(groups, tp, pred_px, gt_px)
    assert got == {"p": pytest.approx(0.6, abs=1e-15), "q": 1.0}
    # the stacked volume is one image to pixelrl_env.metrics.dice
    assert got["p"] == pytest.approx(dice(np.concatenate([pred0, pred1]), np.concatenate([gt0, gt1])), abs=1e-15)
    # empty truth on slices 1 (marked) and 2 (not): one of two
    assert empty_slice_fp_rate(pred_px, gt_px) == 0.5
    assert empty_slice_fp_rate([int(empty.sum())], [0]) == 0.0
    assert empty_slice_fp_rate([5, 0], [4, 9]) is None  # no empty truth: undefined, not 0
    assert volume_dice([], [], [], []) == {}
    with pytest.raises(ValueError, match="one entry per slice expected, got 2 groups, 3 tp"):
        volume_dice(["p", "p"], tp, pred_px, gt_px)
    with pytest.raises(ValueError, match="tp <= min"):
        volume_dice(["p"], [5], [4], [4])


def _copy(sweep: Path, tmp_path: Path) -> Path:
    shutil.copytree(sweep / "cv-t", tmp_path / "cv-t")
    return tmp_path


def test_refuses_unknown_experiment_missing_fold_and_missing_checkpoint(sweep: Path, tmp_path: Path):
    with pytest.raises(CVError, match=r"no sweep folder .*cv-nope; experiments under .*: \['cv-t'\]"):
        cv_report(sweep, "cv-nope")
    with pytest.raises(CVError, match=r"variant 'pixeldrl-big' not in the sweep .*found variants \['pixeldrl', "
                                      r"'unet'\]"):
        cv_report(sweep, "cv-t", a="pixeldrl-big")
    root = _copy(sweep, tmp_path / "no-fold")
    shutil.rmtree(root / "cv-t" / "trial_unet_2")
    with pytest.raises(CVError, match=r"'pixeldrl' has folds \[0, 1, 2\], 'unet' has \[0, 1\]; missing from "
                                      r"'pixeldrl': \[\], from 'unet': \[2\]"):
        cv_report(root, "cv-t")
    root = _copy(sweep, tmp_path / "no-best")
    (root / "cv-t" / "trial_pixeldrl_1" / "run" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CVError, match=r"1 of 6 trial\(s\) .* cannot be reported:\n  .*trial_pixeldrl_1/run: no "
                                      r"checkpoints/best.pt"):
        cv_report(root, "cv-t")


def test_variant_from_tunes_params_json_and_duplicate_folds(sweep: Path, tmp_path: Path):
    root = _copy(sweep, tmp_path / "old")
    run = root / "cv-t" / "trial_unet_0" / "run"
    (run / "trial.json").unlink()  # a sweep from before trial.json: Tune's params.json names the variant
    (run.parent / "params.json").write_text(json.dumps({"data.fold": 0, "variant": {"name": "unet", "model": "unet"}}))
    assert [(t.variant, t.fold) for t in find_trials(root, "cv-t")] == [(v, f) for v in VARIANTS for f in range(K)]
    shutil.copytree(root / "cv-t" / "trial_unet_1", root / "cv-t" / "trial_unet_1b")
    with pytest.raises(CVError, match=r"variant 'unet' fold 1 trained twice: .*trial_unet_1/run and "
                                      r".*trial_unet_1b/run"):
        find_trials(root, "cv-t")


def test_cli_prints_both_blocks_and_exits_2_on_refusal(sweep: Path, tmp_path: Path, capsys):
    assert main(["cv-report", "--experiment", "cv-t", "--storage", str(sweep), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "the paper's protocol: mean over slices with foreground" in out and "whole volumes and all slices" in out
    assert "HD95 (px, lower is better)" in out and "Empty-slice FP rate (lower is better)" in out
    assert "A - B (paired by fold)" in out and "A better (folds)" in out
    assert json.loads((tmp_path / "r.json").read_text())["command"].startswith(("pixeldrl", "python"))
    assert main(["cv-report", "--experiment", "cv-none", "--storage", str(sweep)]) == 2
    assert "no sweep folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cv_lgg", "cv_heart"])
def test_cv_sweep_files_give_five_folds_of_each_model_at_equal_budget(name: str):
    from ray.tune.search.variant_generator import generate_variants

    spec = load_sweep(ROOT / "tune_configs" / f"{name}.yaml")
    assert spec["experiment"] == name.replace("_", "-") and spec["storage"].endswith("runs/tune")
    assert spec["scheduler"] == {"type": "fifo"} and spec["metric"] == "val/dice" and spec["num_samples"] == 1
    assert spec["max_concurrent_trials"] == 2 and spec["cpus_per_trial"] == 1
    trials = [(sampled["variant"]["name"], trial_config(spec["base"], sampled))
              for _, sampled in generate_variants(_space(spec["search_space"]))]
    assert len(trials) == 10
    assert sorted((v, c.data.fold) for v, c in trials) == [(v, f) for v in ("pixeldrl", "unet") for f in range(5)]
    for v, c in trials:
        assert c.data.folds == 5 and c.model == v and c.compute.threads == 1
        assert c.budget.max_updates is None and c.pa3c.aux_coef == 0.0  # pure PA3C; the U-Net ignores it
        assert c.optim.batch_size == (8 if v == "unet" else 4)
        assert Path(c.data.path).is_absolute()
    budgets = {v: {c.budget.max_minutes for w, c in trials if w == v} for v in ("pixeldrl", "unet")}
    assert budgets["pixeldrl"] == budgets["unet"] and len(budgets["unet"]) == 1  # equal wall clock, every fold
    assert next(iter(budgets["unet"])) > 0


def test_robustness_benchmark_on_the_cv_folds(sweep: Path, tmp_path: Path):
    """benchmarks/robustness.py on the same sweep: every (variant, fold) at every level, clean rows equal to scoring
    the checkpoint directly, a summary whose level-0 loss is 0, and the plot written."""

    out, png = tmp_path / "rob.json", tmp_path / "rob.png"
    assert robustness.main(["--experiment", "cv-t", "--storage", str(sweep), "--kinds", "gaussian", "contrast",
                            "--max-slices", "6", "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert len(res["rows"]) == len(VARIANTS) * K * (1 + len(LEVELS["gaussian"]) + len(LEVELS["contrast"]))
    model, cfg = load_model(sweep / "cv-t" / "trial_unet_2" / "run" / "checkpoints" / "best.pt")
    images, masks = robustness.test_slices(cfg, 6, seed=2)
    clean = next(r for r in res["rows"] if r["variant"] == "unet" and r["fold"] == 2 and r["kind"] == "clean")
    assert clean["dice"] == pytest.approx(robustness.score(model, cfg, images, masks)["dice"])
    for v in VARIANTS:
        for kind in ("gaussian", "contrast"):
            levels = res["summary"][v][kind]
            assert [r["level"] for r in levels] == [0, *LEVELS[kind]] and levels[0]["dice_lost_mean"] == 0
            assert all(r["folds"] == K for r in levels)
    assert png.stat().st_size > 10_000 and res["command"].startswith("python -m benchmarks.robustness")


def test_ablation_report_pairs_every_variant_with_the_baseline(sweep: Path, report: dict, tmp_path: Path, capsys):
    """The same sweep read as an ablation with the U-Net as baseline: the test-split row is cv_report's paired
    difference, every checkpoint is also scored on its validation patients, and each row names its config changes."""

    ab = ablation_report(sweep, "cv-t", baseline="unet", json_out=tmp_path / "ab.json")
    assert list(ab["rows"]) == ["unet", "pixeldrl"] and ab["folds"] == list(range(K))
    row = ab["rows"]["pixeldrl"]
    assert row["changes"] == {} and ab["rows"]["unet"]["changes"] == {"model": "unet"}
    for m in (*PAPER_METRICS, *WHOLE_METRICS):
        assert row["test"]["paired"][m]["mean"] == pytest.approx(report["paired"][m]["mean"])
    val = ab["per_fold"]["val"]["pixeldrl"]
    for f in range(K):  # validation patients: neither the fold's test patients nor its training ones
        assert set(val[f]["patients"]).isdisjoint(report["patients"][f]) and val[f]["patients"]
        d = [val[f]["dice"] - ab["per_fold"]["val"]["unet"][f]["dice"]]
        assert row["val"]["paired"]["dice"]["diffs"][f] == pytest.approx(d[0])
    assert ab["rows"]["unet"]["test"]["paired"]["dice"]["mean"] == 0.0  # the baseline minus itself
    assert json.loads((tmp_path / "ab.json").read_text())["baseline"] == "unet"
    with pytest.raises(CVError, match="baseline variant 'base' not in the sweep.*'pixeldrl', 'unet'"):
        ablation_report(sweep, "cv-t")
    alone = ablation_report(sweep, "cv-t", baseline="unet", only=["unet"], splits=("val",))
    assert list(alone["rows"]) == ["unet"]
    with pytest.raises(CVError, match=r"variant\(s\) \['nope'\] not in the sweep"):
        ablation_report(sweep, "cv-t", baseline="unet", only=["nope"])
    assert main(["ablation-report", "--experiment", "cv-t", "--storage", str(sweep), "--baseline", "unet"]) == 0
    out = capsys.readouterr().out
    assert "Δ val Dice (wins)" in out and "(the paper's defaults)" in out and "model=unet" in out


def test_ablation_report_of_a_sweep_in_progress_reports_the_finished_variants(sweep: Path, tmp_path: Path, capsys):
    """A sweep still running: a variant with an unfinished fold is left out and named, with the folder of the trial
    that has not finished; the finished ones are reported as usual. An unfinished baseline has nothing to pair
    with: an error naming the trial. ``--only`` still insists on what it names."""

    root = _copy(sweep, tmp_path / "running")
    (root / "cv-t" / "trial_pixeldrl_1" / "run" / "checkpoints" / "best.pt").unlink()
    ab = ablation_report(root, "cv-t", baseline="unet", splits=("val",))
    assert list(ab["rows"]) == ["unet"] and ab["incomplete"] == {"pixeldrl": [0, 2]}
    assert len(ab["unfinished"]) == 1 and ab["unfinished"][0].endswith("trial_pixeldrl_1/run: no checkpoints/best.pt")
    with pytest.raises(CVError, match=r"1 of 6 trial\(s\) .* cannot be reported"):
        ablation_report(root, "cv-t", baseline="unet", only=["pixeldrl"], splits=("val",))
    with pytest.raises(CVError, match=r"baseline variant 'pixeldrl' has folds \[0, 2\] of the sweep's \[0, 1, 2\] "
                                      r"finished.*\n  .*trial_pixeldrl_1/run: no checkpoints/best.pt"):
        ablation_report(root, "cv-t", baseline="pixeldrl", splits=("val",))
    assert main(["ablation-report", "--experiment", "cv-t", "--storage", str(root), "--baseline", "unet"]) == 0
    out = capsys.readouterr().out
    assert "not in the table, the sweep has not finished them: 1 trial(s)" in out and "pixeldrl (folds [0, 2])" in out


def test_an_earlier_reports_figures_stand_in_for_the_trials_a_storage_lacks(sweep: Path, tmp_path: Path, capsys):
    """Rows run later without a baseline of their own (``--variants``): ``merge`` takes the baseline's figures from an
    earlier report of the same sweep, and the rows equal those of the whole sweep. Figures of other patients, another
    baseline or another k do not pool, nor into a storage with baseline trials of its own."""

    whole = ablation_report(sweep, "cv-t", baseline="unet", splits=("val",), json_out=tmp_path / "whole.json")
    root = _copy(sweep, tmp_path / "no-baseline")
    for d in (root / "cv-t").glob("trial_unet_*"):
        shutil.rmtree(d)
    with pytest.raises(CVError, match="baseline variant 'unet' not in the sweep"):
        ablation_report(root, "cv-t", baseline="unet", splits=("val",))
    ab = ablation_report(root, "cv-t", baseline="unet", splits=("val",), merge=tmp_path / "whole.json",
                         json_out=tmp_path / "merged.json")
    assert list(ab["rows"]) == ["unet", "pixeldrl"] and ab["merged"]["variants"] == ["unet"]
    assert ab["merged"]["command"] == whole["command"] and ab["rows"]["unet"]["changes"] == {"model": "unet"}
    for m in (*PAPER_METRICS, *WHOLE_METRICS):
        assert ab["rows"]["pixeldrl"]["val"]["paired"][m] == whole["rows"]["pixeldrl"]["val"]["paired"][m]
    d = ab["rows"]["pixeldrl"]["val"]["paired"]["dice"]
    md = ablation_markdown({**ab, "rows": {v: {**r, "test": r["val"]} for v, r in ab["rows"].items()}}).splitlines()
    assert len(md) == 4 and md[2].startswith("| `unet` (model=unet) | ") and md[3].startswith("| `pixeldrl` | ")
    assert f"| {d['mean']:+.3f} ± {d['sd']:.3f} ({d['a_wins']}/{K}) |" in md[3]
    assert main(["ablation-report", "--experiment", "cv-t", "--storage", str(root), "--baseline", "unet",
                 "--merge", str(tmp_path / "whole.json")]) == 2  # the earlier report has no test figures
    assert "no figures on split(s) ['test']" in capsys.readouterr().err

    bad = json.loads((tmp_path / "whole.json").read_text())
    bad["per_fold"]["val"]["unet"]["1"]["patients"] = ["someone-else"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CVError, match=r"fold 1's val patients differ from those of 'pixeldrl' here"):
        ablation_report(root, "cv-t", baseline="unet", splits=("val",), merge=tmp_path / "bad.json")
    with pytest.raises(CVError, match=r"baseline 'unet' with k=3, this report's 'pixeldrl'"):
        ablation_report(root, "cv-t", baseline="pixeldrl", splits=("val",), merge=tmp_path / "whole.json")
    with pytest.raises(CVError, match="has its own 'unet' trials; the earlier report's rows were paired"):
        ablation_report(sweep, "cv-t", baseline="unet", splits=("val",), merge=tmp_path / "whole.json")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(CVError, match="not an ablation-report JSON"):
        ablation_report(root, "cv-t", baseline="unet", splits=("val",), merge=tmp_path / "junk.json")


def test_ablation_sweep_changes_one_thing_per_row_at_equal_updates():
    from ray.tune.search.variant_generator import generate_variants

    spec = load_sweep(ROOT / "tune_configs" / "ablation_heart.yaml")
    trials = [(s["variant"], trial_config(spec["base"], s)) for _, s in generate_variants(_space(spec["search_space"]))]
    names = sorted({v["name"] for v, _ in trials})
    assert "base" in names and len(trials) == 3 * len(names)
    base = {c.data.fold: flatten(to_dict(c)) for v, c in trials if v["name"] == "base"}
    assert sorted(base) == [0, 1, 2]
    for v, c in trials:
        assert c.budget.max_updates == 200 and c.budget.max_minutes is None and c.compute.threads == 1 and c.data.folds == 5
        diff = {k for k, x in flatten(to_dict(c)).items() if base[c.data.fold][k] != x}
        assert diff == set(flatten({k: x for k, x in v.items() if k != "name"})), v["name"]  # exactly its own change


def test_a_reports_evaluations_are_cached_under_the_checkpoints_hash(sweep: Path, tmp_path: Path, monkeypatch):
    """A second report reads each trial's figures from beside its checkpoint (no evaluation); a checkpoint that
    changed is scored again, and its figures replace the cached ones."""

    root = _copy(sweep, tmp_path / "cached")
    first = ablation_report(root, "cv-t", baseline="unet", splits=("val",))
    assert len(list(root.glob("cv-t/*/run/checkpoints/report_eval_val.json"))) == 6
    real, calls = cv.evaluate_checkpoint, []
    monkeypatch.setattr(cv, "evaluate_checkpoint", lambda c, **kw: calls.append(str(c)) or real(c, **kw))
    again = ablation_report(root, "cv-t", baseline="unet", splits=("val",))
    assert calls == [] and again["rows"] == first["rows"]
    # fold 1's PA3C checkpoint replaced by fold 0's: only it is scored again, and the report follows the new file
    ck = root / "cv-t" / "trial_pixeldrl_1" / "run" / "checkpoints" / "best.pt"
    shutil.copy(root / "cv-t" / "trial_pixeldrl_0" / "run" / "checkpoints" / "best.pt", ck)
    ablation_report(root, "cv-t", baseline="unet", splits=("val",))
    assert calls == [str(ck)]


def test_a_post_processed_report_is_the_evaluation_under_that_rule_cached_apart(sweep: Path, report: dict):
    pp = cv_report(sweep, "cv-t", a="pixeldrl", b="unet", postprocess="largest", command="x")
    assert pp["postprocess"] == "largest" and report["postprocess"] == "none"
    best = sweep / "cv-t" / "trial_unet_1" / "run" / "checkpoints" / "best.pt"
    ev = evaluate_checkpoint(best, split="test", postprocess="largest")
    fig = pp["per_fold"]["unet"][1]
    assert fig["postprocess"]["rule"] == "largest"
    for m in PAPER_METRICS:
        assert fig[m] == ev[m]
    # the raw figures keep their own cache: a report without post-processing still reads the raw evaluation
    assert (best.parent / "report_eval_test_pp-largest.json").is_file()
    assert (best.parent / "report_eval_test.json").is_file()
    raw = cv_report(sweep, "cv-t", a="pixeldrl", b="unet", command="x")
    assert raw["per_fold"]["unet"][1]["dice"] == report["per_fold"]["unet"][1]["dice"]
