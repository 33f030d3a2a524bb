"""The ``pixeldrl`` argument parser. Each command names the function that runs it (``module:function`` in this
package), imported only when that command runs, so that ``pixeldrl --help`` stays quick."""

from __future__ import annotations

import argparse

VARIANTS_HELP = "comma-separated rows of the sweep's variant grid to run (default all), e.g. train-empty,adv-norm"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixeldrl", description="PixelDRL-MG: pixel-level deep RL segmentation on Ray")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_data_commands, _training_commands, _report_commands, _use_commands):
        add(sub)
    return p


def _data_commands(sub) -> None:
    prep = sub.add_parser(
        "prepare-data", help="convert an LGG-layout, images/masks or NIfTI (imagesTr/labelsTr) folder to Parquet shards"
    )
    prep.add_argument("src", help="source folder")
    prep.add_argument("out", help="output folder or URI (s3://bucket/prefix, gs://..., file:///...)")
    prep.add_argument("--format", required=True, choices=("lgg", "folder", "nifti", "synthetic"))
    prep.add_argument("--skip-bad", action="store_true", help="log and skip unreadable or invalid files")
    prep.add_argument("--shard-size", type=int, default=256, help="slices per shard (default 256)")
    prep.add_argument("--group-pattern", default=None, help="folder format: regex giving the patient id of a stem")
    prep.add_argument("--channels", default=None, help="keep only these channels, e.g. 1 (LGG's FLAIR) or 0,2")
    prep.add_argument("--foreground-only", action="store_true",
                      help="keep only slices whose mask has foreground (a small copy for the paper's protocol)")
    _add_nifti_args(prep)
    prep.set_defaults(run="data:prepare_data")

    info = sub.add_parser("data-info", help="show the patient-level split of a config's data (its data section)")
    _add_config_args(info, "e.g. --config tune_configs/lgg_cpu.yaml --set data.folds=5 --set data.fold=2")
    info.add_argument("--json", default=None, help="also write the summary to this JSON file")
    info.set_defaults(run="data:data_info")

    demo = sub.add_parser("env-demo", help="run the environment with oracle, random and do-nothing policies on the "
                                           "validation+test slices of a config's data")
    _add_config_args(demo, "e.g. --set pa3c.action_set=three --set data.size=128")
    demo.add_argument("--json", default=None, help="also write the results to this JSON file")
    demo.set_defaults(run="data:env_demo")


def _training_commands(sub) -> None:
    tr = sub.add_parser("train", help="train PixelDRL-MG (PA3C); the default command of train.py")
    _add_train_args(tr, "runs/main")
    tr.add_argument("--tune", default=None, metavar="SWEEP",
                    help="run a Ray Tune sweep from this YAML instead (same as `pixeldrl tune SWEEP`)")
    tr.add_argument("--variants", default=None, metavar="NAMES", help=VARIANTS_HELP)
    tr.set_defaults(run="training:train")

    bl = sub.add_parser("baseline", help="train the supervised MONAI U-Net on the same split and resolution")
    _add_train_args(bl, "runs/unet")
    bl.set_defaults(run="training:baseline")

    tu = sub.add_parser("tune", help="a Ray Tune sweep (ASHA, random or Optuna search), each trial an MLflow run")
    tu.add_argument("tune", metavar="SWEEP", help="sweep YAML, e.g. tune_configs/sweep_asha.yaml")
    tu.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    tu.add_argument("--variants", default=None, metavar="NAMES", help=VARIANTS_HELP)
    tu.set_defaults(run="training:tune")

    cmp_ = sub.add_parser("compare", help="MLflow runs side by side: the params that differ and the metrics")
    cmp_.add_argument("--experiment", default="pixeldrl")
    cmp_.add_argument("--metric", default="val/dice", help="sort by this metric, best first")
    cmp_.add_argument("--max-runs", type=int, default=50)
    cmp_.add_argument("--tracking-uri", default=None,
                      help="the MLflow store to read (default MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db); "
                           "never created: a store that does not exist is an error")
    cmp_.set_defaults(run="training:compare")


def _report_commands(sub) -> None:
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint at native resolution; per-image CSV and JSON")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--config", default=None,
                    help="evaluate on this config's data section (default: the data the checkpoint was trained on)")
    ev.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                    help="override a data key, e.g. --set data.fold=2 --set data.path=other/ (repeatable)")
    ev.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    ev.add_argument("--json", default=None, help="summary JSON (the per-image CSV goes beside it)")
    ev.add_argument("--csv", default=None)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--skip-bad", action="store_true", help="the same as --set data.skip_bad=true")
    ev.add_argument("--overlays", default=None, help="write image/truth/prediction/uncertainty PNGs to this folder")
    ev.add_argument("--max-overlays", type=int, default=8)
    ev.add_argument("--postprocess", default="none", metavar="{none,auto,largest,min:N}",
                    help="post-process each native-size mask: keep the largest connected component, drop islands "
                         "under N pixels, or auto (chosen on the validation split by nnU-Net's rule: only when it "
                         "raises validation Dice); default none")
    ev.set_defaults(run="reports:evaluate")

    ref = sub.add_parser("config-reference", help="print docs/config.md, every config key, generated from the code")
    ref.add_argument("--write", default=None, metavar="PATH", help="write it to PATH instead (e.g. docs/config.md)")
    ref.add_argument("--check", default=None, metavar="PATH", help="exit 1 when PATH is not the current page")
    ref.set_defaults(run="reports:config_reference")

    cv = sub.add_parser("cv-report", help="k-fold CV sweep: two variants compared fold by fold on test patients")
    _add_sweep_args(cv, "cv-heart")
    cv.add_argument("--a", default="pixeldrl", help="variant A (default pixeldrl)")
    cv.add_argument("--b", default="unet", help="variant B, the baseline (default unet)")
    cv.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="each fold's patients to evaluate on (default test)")
    cv.add_argument("--json", default=None, help="write every per-fold figure, budgets and the machine here")
    cv.add_argument("--device", default="cpu")
    cv.add_argument("--postprocess", default="none", help="none (default), largest, min:N, or auto: each trial's "
                    "rule chosen on its fold's validation patients (nnU-Net's rule), the post-processed row")
    cv.set_defaults(run="reports:cv_report")

    ab = sub.add_parser("ablation-report", help="k-fold ablation sweep: every variant minus the baseline, by fold")
    _add_sweep_args(ab, "ablation-heart")
    ab.add_argument("--baseline", default="base", help="the variant every row is paired with (default base)")
    ab.add_argument("--json", default=None, help="write every per-fold figure, budgets and the machine here")
    ab.add_argument("--only", default=None, help="comma-separated variants to report (e.g. those with every fold done)")
    ab.add_argument("--merge", default=None, metavar="JSON",
                    help="an earlier report of the same sweep: its figures stand in for the variants (the baseline "
                         "too) that --storage lacks; checked to be the same folds and patients")
    ab.add_argument("--markdown", action="store_true", help="also print the table as Markdown (the README's)")
    ab.add_argument("--device", default="cpu")
    ab.set_defaults(run="reports:ablation_report")


def _use_commands(sub) -> None:
    pr = sub.add_parser("predict", help="segment your own images, folders of images or NIfTI volumes (no masks)")
    pr.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of any engine")
    pr.add_argument("inputs", nargs="+", help="image files (PNG/JPEG/TIFF/BMP), folders of them, NIfTI volumes")
    pr.add_argument("--output-dir", required=True, help="masks, uncertainty maps (and overlays, GIFs) go here")
    pr.add_argument("--overlay", action="store_true", help="also a labelled image | prediction | uncertainty PNG")
    pr.add_argument("--gif", action="store_true", help="also a GIF of the mask over the t_max steps (PixelDRL-MG)")
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    pr.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    pr.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="skip files whose name matches (repeatable); masks (*_mask.*, masks/, labelsTr/) and "
                         "earlier outputs (*_pred.*, *_uncertainty.*) in folders are always skipped")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(run="use:predict")

    sv = sub.add_parser("serve", help="serve a checkpoint over HTTP with Ray Serve (POST a scan, get its mask)")
    sv.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of any engine")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only; 0.0.0.0 exposes it "
                                                        "to the network, with no authentication)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--replicas", default="1,2", metavar="MIN,MAX", help="replicas, autoscaled (default 1,2)")
    sv.add_argument("--replica-cpus", type=float, default=1.0)
    sv.add_argument("--max-batch", type=int, default=8, help="slices batched from concurrent requests")
    sv.add_argument("--batch-wait-ms", type=float, default=10.0, help="longest wait for a batch to fill")
    sv.add_argument("--max-upload-mb", type=float, default=64.0, help="larger bodies get 413")
    sv.add_argument("--device", default="cpu")
    sv.set_defaults(run="serving:serve")

    ex = sub.add_parser("export", help="a checkpoint as one ONNX or TorchScript graph (dynamic batch), checked")
    ex.add_argument("--checkpoint", required=True, help="a best.pt or last.pt of any engine")
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--output", default=None,
                    help="file to write (default beside the checkpoint: <stem>.onnx or <stem>.ts.pt); "
                         "metadata goes to <file>.json")
    ex.set_defaults(run="use:export")


def _add_config_args(p: argparse.ArgumentParser, example: str = "e.g. --set optim.lr=3e-4 --set data.size=64") -> None:
    p.add_argument("--config", default=None, help="YAML config (see tune_configs/ and docs/config.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config value, {example} (repeatable)")


def _add_train_args(p: argparse.ArgumentParser, default_out: str) -> None:
    _add_config_args(p)
    p.add_argument("--output-dir", default=default_out, help=f"where metrics and checkpoints go (default {default_out})")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUTPUT_DIR that holds a run's checkpoints (each earlier one is kept once "
                        "as *.prev.pt); without it, or --resume, such a folder is refused")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _add_nifti_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slice-axis", type=int, default=-1,
                   help="nifti: volume axis cut into 2-D slices (default -1, the last)")
    p.add_argument("--label-value", type=int, default=None,
                   help="nifti: foreground = label == VALUE (default: any label > 0)")


def _add_sweep_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--experiment", required=True, help=f"the sweep's experiment, e.g. {example}")
    p.add_argument("--storage", default="runs/tune", help="the sweep's storage folder (default runs/tune)")
