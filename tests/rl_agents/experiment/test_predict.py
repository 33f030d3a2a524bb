"""`pixeldrl predict`: a user's own images, folders and NIfTI volumes segmented without masks, outputs in the input's
geometry, the same masks as the evaluation pipeline, and clear errors for what it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pixelrl_env.prepare import prepare_image, resize_mask
from pixelrl_env.synthetic import synthetic_slice
from pixelrl_env.io import DataError
from rl_agents.cli import main
from rl_agents.experiment.evaluate import predict
from rl_agents.experiment.loaded import load_model
from rl_agents.experiment.predict import UnlikeTrainingWarning, expand_inputs, load, predict_files, segment_array
from rl_agents.experiment.visualize import BAR_PX, MIN_PANEL, heat
from tests.conftest import AFFINE, TINY_T_MAX, photo, speckle, train_tiny, write_lgg_layout, write_nifti_layout

T_MAX = TINY_T_MAX
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def synth_ckpt(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("synth"), [
        "data.format=synthetic", "data.size=32", "data.synthetic={n_patients: 6, slices_per_patient: 4, size: 32}"])


def _reference(ckpt: Path, image: np.ndarray) -> np.ndarray:
    """The evaluation pipeline's mask of one stored image: prepare as in training, predict, resize back."""
    model, cfg = load_model(ckpt)
    mask, _ = predict(model, cfg, prepare_image(image, cfg.data)[None], "cpu")
    return resize_mask(mask[0], image.shape[:2])


def test_images_and_folders_get_native_size_masks_equal_to_the_evaluation_pipeline(synth_ckpt: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    images = {"a.png": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8),
              "b.tif": rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)}
    for name, a in images.items():
        Image.fromarray(a).save(src / name)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(src), "--output-dir", str(out), "--overlay",
                 "--gif", "--quiet"]) == 0
    for name, a in images.items():
        stem = Path(name).stem
        mask_file = out / (f"{stem}_pred.tif" if name.endswith(".tif") else f"{stem}_pred.png")
        written = np.asarray(Image.open(mask_file))
        assert written.shape == a.shape[:2] and set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written // 255, _reference(synth_ckpt, a))
        np.testing.assert_array_equal(written // 255, segment_array(synth_ckpt, a)[0][0])  # the Python API
        unc = np.asarray(Image.open(out / f"{stem}_uncertainty.png"))
        assert unc.shape == a.shape[:2]
        k = -(-MIN_PANEL // min(a.shape[:2]))  # small images are upscaled to at least MIN_PANEL px a panel
        shown = np.asarray(Image.open(out / f"{stem}_overlay.png").convert("RGB"))
        assert shown.shape[1] == 3 * a.shape[1] * k + BAR_PX and a.shape[0] * k >= MIN_PANEL
        head = shown.shape[0] - a.shape[0] * k  # caption and titles, wrapped to fit above their panels
        bar = shown[head:, -BAR_PX + 4 : -BAR_PX + 16].astype(int)  # the colour bar: heat(1) on top, heat(0) below
        assert (np.abs(bar[0] - heat(np.array([1.0]))[0]) <= 2).all() and (np.abs(bar[-1] - heat(np.array([0.0]))[0]) <= 2).all()
        gif = Image.open(out / f"{stem}_steps.gif")
        assert gif.n_frames == T_MAX + 1  # the start and each step
        gif.seek(T_MAX)
        last = np.asarray(gif.convert("RGB"))
        tinted = (last[..., 0].astype(int) - last[..., 1].astype(int)) > 40  # red-tinted pixels: the final mask
        assert tinted[20:].sum() == (written // 255)[20:].sum()  # below the "step" caption


def test_a_nifti_volume_gets_a_mask_volume_on_the_same_grid(tmp_path: Path):
    root = tmp_path / "heart"
    vols = write_nifti_layout(root, n=4)
    ckpt = train_tiny(tmp_path / "run", ["data.format=nifti", f"data.path={root}", "data.size=8",
                                     "data.split=[0.5, 0.25, 0.25]", "data.context=1"])
    scan = root / "imagesTr" / "la_000.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(scan), "--output-dir", str(out), "--overlay",
                 "--quiet"]) == 0
    got = nib.load(str(out / "la_000_pred.nii.gz"))
    image = vols["la_000"][0]
    assert got.shape == image.shape and got.get_data_dtype() == np.uint8
    np.testing.assert_allclose(got.affine, AFFINE)
    data = np.asarray(got.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    # slices along the last axis with their neighbours (2.5-D), as the model was trained
    np.testing.assert_array_equal(data, segment_array(ckpt, image, slice_axis=2)[0])
    # the volume as nibabel loads it, (H, W, N): cut along the wrong axis it would segment nonsense, so it is refused
    with pytest.raises(DataError, match=r"could be slices \(N, H, W\) or a volume .* pass slice_axis"):
        segment_array(ckpt, image)
    np.testing.assert_array_equal(  # (N, H, W, C) slices: the same masks, slice first
        segment_array(ckpt, np.moveaxis(image, -1, 0)[..., None])[0], np.moveaxis(data, -1, 0))
    unc = nib.load(str(out / "la_000_uncertainty.nii.gz"))
    assert unc.shape == image.shape and float(np.asarray(unc.dataobj).max()) <= 1.0
    assert list(out.glob("la_000_slice*_overlay.png"))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "photo.jpg")  # a colour photo, a grey model
    with pytest.raises(DataError, match=r"photo.jpg has 3 channel\(s\); this model takes 1 channel\(s\) per slice "
                                        r"\(convert it to greyscale\)"):
        predict_files(ckpt, [tmp_path / "photo.jpg"], tmp_path / "o2", progress=False)


def test_what_predict_cannot_read_is_named(synth_ckpt: Path, tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: unknown kind of input"):
        expand_inputs([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match=r"input not found: .*nope.png"):
        expand_inputs([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no image"):
        expand_inputs([tmp_path / "empty"])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(tmp_path / "broken.png"), "--output-dir",
                 str(tmp_path / "o"), "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"expected an image .* got shape \(2, 3, 4, 5, 6\)"):
        segment_array(load(synth_ckpt), np.zeros((2, 3, 4, 5, 6)))


def test_a_patient_folder_is_read_for_its_scans_not_its_truth_files(synth_ckpt: Path, tmp_path: Path, capsys):
    patient = next(write_lgg_layout(tmp_path / "lgg", patients=1, slices=3).iterdir())
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(patient), "--output-dir", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 file(s) as masks" in printed and "segmented 3 input(s)" in printed
    scans = sorted(p.stem for p in patient.glob("*.tif") if not p.stem.endswith("_mask"))
    assert sorted(p.name for p in out.glob("*_pred.tif")) == [f"{s}_pred.tif" for s in scans]
    assert not list(out.glob("*_mask*"))  # nothing written under a truth file's name
    # predicting into the patient's own folder, again: the first run's outputs are not read as scans either
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(patient), "--output-dir", str(patient),
                 "--quiet"]) == 0
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(patient), "--output-dir", str(out), "--quiet",
                 "--exclude", "*_2.tif"]) == 0
    assert "segmented 2 input(s)" in capsys.readouterr().out


def test_an_input_the_model_cannot_take_is_refused_in_one_line_before_anything_is_written(synth_ckpt: Path,
                                                                                          tmp_path: Path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / "a_colour.png")
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(src / "b_grey.png")  # sorted after a
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(src), "--output-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "b_grey.png has 1 channel(s); this model takes 3 channel(s)" in err
    assert not out.exists()  # refused before the first (good) image was segmented
    with pytest.raises(DataError, match=r"an array of shape \(24, 24\) has 1 channel\(s\); this model takes 3"):
        segment_array(synth_ckpt, np.zeros((24, 24), np.uint8))


def test_an_input_unlike_the_training_data_is_flagged(synth_ckpt: Path, tmp_path: Path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_slice(99, 0, 2, 4, 32)[0]).save(src / "a_like_training.png")  # an unseen patient
    Image.fromarray(photo(np.random.default_rng(0))).save(src / "b_photo.png")  # a colour endoscopy-like scene
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(synth_ckpt), str(src), "--output-dir", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: " + str(src / "b_photo.png") + " looks unlike the model's training data" in captured.err
    assert "a_like_training" not in captured.err and "1 flagged as unlike the training data" in captured.out
    recs = {Path(r["input"]).name: r for r in json.loads((out / "predictions.json").read_text())["inputs"]}
    assert recs["b_photo.png"]["unlike_training"]["flagged"] is True
    assert recs["a_like_training.png"]["unlike_training"]["flagged"] is False
    with pytest.warns(UnlikeTrainingWarning, match=r"an array of shape \(48, 48, 3\) looks unlike"):
        segment_array(synth_ckpt, speckle(np.random.default_rng(1)))
    # a checkpoint written before profiles segments as before, and says that nothing was checked
    old = ROOT / "tests" / "fixtures" / "before_sections_best.pt"
    assert main(["predict", "--checkpoint", str(old), str(src / "b_photo.png"), "--output-dir", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert "holds no data profile" in capsys.readouterr().err
