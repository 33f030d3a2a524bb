"""Bad input reaches a user as one line naming the file or value and what was expected (exit 2), never a traceback:
each case of issue 26's list through the command line, as a user types it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_agents.cli import main
from rl_agents.experiment.checkpoint import make_payload, read_checkpoint, write_checkpoint
from tests.conftest import train_tiny, write_nifti_layout

SYNTH = ["data.format=synthetic", "data.size=32", "data.synthetic={n_patients: 6, slices_per_patient: 4, size: 32}"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    train_tiny(out, SYNTH)
    return out


def _retargeted(ckpt: Path, dest: Path, **network) -> Path:
    """``ckpt`` with its config's network section changed (a valid file, digest and all), weights as trained."""
    c = read_checkpoint(ckpt)
    cfg = json.loads(json.dumps(c.config, default=lambda o: o.__dict__))
    cfg["network"].update(network)
    from rl_agents.config import config_from_dict

    write_checkpoint(dest, make_payload(c.engine, config_from_dict(cfg), c.agent, c.run))
    return dest


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_a_checkpoint_whose_config_does_not_fit_its_weights(run_dir: Path, tmp_path: Path, capsys):
    bad = _retargeted(run_dir / "checkpoints" / "best.pt", tmp_path / "retargeted.pt", preset="paper")
    assert main(["evaluate", "--checkpoint", str(bad), "--split", "val"]) == 2
    _one_line(capsys, "retargeted.pt: its weights do not fit the network its config describes", "must be those")
    assert main(["predict", "--checkpoint", str(bad), str(_image(tmp_path)), "--output-dir", str(tmp_path / "o")]) == 2
    _one_line(capsys, "do not fit")


def test_resuming_under_another_network(run_dir: Path, capsys):
    assert main(["train", "--set", "tracking.mlflow=false", "--set", "network.preset=paper", *sum(
        (["--set", s] for s in SYNTH), []), "--output-dir", str(run_dir), "--resume", "--quiet"]) == 2
    _one_line(capsys, "the checkpoint: its weights do not fit the network its config describes")


def test_a_three_channel_model_evaluated_on_one_channel_volumes(run_dir: Path, tmp_path: Path, capsys):
    root = tmp_path / "heart"
    write_nifti_layout(root, n=4)
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--split", "val",
                 "--set", "data.format=nifti", "--set", f"data.path={root}"]) == 2
    _one_line(capsys, "a slice has 1 channel(s), but the checkpoint's model takes 3")


@pytest.mark.parametrize("command", ["train", "predict", "export"])
def test_an_output_that_cannot_be_written(command: str, run_dir: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    ckpt = str(run_dir / "checkpoints" / "best.pt")
    argv = {"train": ["train", "--set", "tracking.mlflow=false", "--set", "budget.max_updates=1",
                      "--output-dir", str(blocker / "run"), "--quiet"],
            "predict": ["predict", "--checkpoint", ckpt, str(_image(tmp_path)), "--output-dir", str(blocker / "o"),
                        "--quiet"],
            "export": ["export", "--checkpoint", ckpt, "--format", "torchscript", "--output",
                       str(blocker / "m.ts.pt")]}[command]
    assert main(argv) == 2
    _one_line(capsys, str(blocker))


def _image(tmp_path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path
