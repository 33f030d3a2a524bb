"""NIfTI volumes (``data.format: nifti``): slices, masks, groups, errors, Parquet round trip, and the real la_heart."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pixelrl_env.dataset import describe, load_part, load_splits

from pixelrl_env.data_config import DataConfig

from pixelrl_env.folds import config_split

from pixelrl_env.prepare import prepare_image
from pixelrl_env.io import BadFiles, DataError
from pixelrl_env.nifti import iter_nifti
from pixelrl_env.sources import iter_source
from rl_agents.cli import main
from tests.conftest import SHAPE, need_shared, save_nifti as _save, write_nifti_layout

@pytest.fixture
def heart(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "heart"
    return root, write_nifti_layout(root)


def test_slices_along_last_axis_exact_float_images_and_masks(heart):
    root, vols = heart
    samples = list(iter_source("nifti", root))
    assert len(samples) == 2 * SHAPE[2]
    assert [s.group for s in samples] == ["la_000"] * 6 + ["la_001"] * 6
    for s in samples:
        k = int(s.source.rsplit("slice", 1)[1])
        image, label = vols[s.group]
        assert s.source == f"{root / 'imagesTr' / s.group}.nii.gz#axis2_slice{k:03d}"
        assert s.image.shape == (16, 12, 1) and s.image.dtype == np.float32
        np.testing.assert_array_equal(s.image[..., 0], image[:, :, k])  # intensities as stored, negatives kept
        np.testing.assert_array_equal(s.mask, (label[:, :, k] > 0).astype(np.uint8))
    assert [bool(s.mask.any()) for s in samples[:6]] == [False, True, True, True, True, False]


def test_slice_axis_zero_and_label_value(heart):
    root, vols = heart
    along_x = list(iter_nifti(root, slice_axis=0))
    assert len(along_x) == 2 * SHAPE[0] and along_x[0].image.shape == (12, 6, 1)
    np.testing.assert_array_equal(along_x[20].image[..., 0], vols["la_001"][0][4])
    np.testing.assert_array_equal(along_x[12].mask, (vols["la_000"][1][12] > 0).astype(np.uint8))
    # label_value picks one structure; it may be absent from some volumes (la_001 has no label 2)
    two = list(iter_nifti(root, label_value=2))
    np.testing.assert_array_equal(np.stack([s.mask for s in two[:6]], -1), (vols["la_000"][1] == 2).astype(np.uint8))
    assert not any(s.mask.any() for s in two[6:])
    one = list(iter_nifti(root, label_value=1))
    assert sum(int(s.mask.sum()) for s in one) == sum(int((lbl == 1).sum()) for _, lbl in vols.values())
    with pytest.raises(DataError, match=r"label_value=3 occurs in none of the 2 label volume\(s\) .*: \[0, 1, 2\]"):
        list(iter_nifti(root, label_value=3))


def test_load_splits_groups_are_volumes_and_float_none_keeps_values(heart):
    root, vols = heart
    cfg = DataConfig(format="nifti", path=str(root), size=None, normalize="none", split=(0.5, 0.5, 0.0))
    s = load_splits(cfg)
    assert s.n_read == 12 and len(s.test) == 0
    assert {len(set(s.train.groups)), len(set(s.val.groups))} == {1} and set(s.train.groups) != set(s.val.groups)
    for part in (s.train, s.val):
        image, label = vols[part.groups[0]]
        kept = [k for k in range(SHAPE[2]) if label[:, :, k].any()]
        assert len(part) == len(kept) == {"la_000": 4, "la_001": 3}[part.groups[0]]  # label 2 reaches slice 4
        # normalize none: float intensities are kept as stored (not divided by 255)
        np.testing.assert_array_equal(part.images[:, 0], image[:, :, kept].transpose(2, 0, 1))
        np.testing.assert_array_equal(part.masks, (label[:, :, kept] > 0).transpose(2, 0, 1).astype(np.uint8))
    x = np.array([[[-2.5], [0.25]]], np.float32)
    np.testing.assert_array_equal(prepare_image(x, DataConfig(size=None, normalize="none"))[0], x[..., 0])
    u = np.array([[[255], [51]]], np.uint8)
    np.testing.assert_allclose(prepare_image(u, DataConfig(size=None, normalize="none"))[0], [[1.0, 0.2]])
    mm = load_splits(dataclasses.replace(cfg, size=8, normalize="minmax"))
    assert mm.train.images.shape[1:] == (1, 8, 8) and 0.0 <= mm.train.images.min() < mm.train.images.max() <= 1.0


def test_parts_and_describe_match_load_splits(tmp_path: Path):
    root = tmp_path / "h6"
    write_nifti_layout(root, n=6)
    cfg = DataConfig(format="nifti", path=str(root), size=8, seed=1, split=(0.5, 0.25, 0.25))
    full = load_splits(cfg)
    d = describe(cfg)
    assert (d["n_train"], d["n_val"], d["n_test"]) == (len(full.train), len(full.val), len(full.test))
    assert (d["in_channels"], d["image_size"], d["n_read"]) == (1, 8, 36)
    st = {}
    parts = [load_part(cfg, "train", i, 3, stats=st if i == 1 else None) for i in range(3)]
    assert sum((p.sources for p in parts), []) == full.train.sources
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), full.train.images)
    np.testing.assert_array_equal(np.concatenate([p.masks for p in parts]), full.train.masks)
    assert st["rows_decoded"] == len(parts[1]) and st["n_read"] == 36
    assert describe(dataclasses.replace(cfg, drop_empty=False, slice_axis=1))["n_read"] == 6 * SHAPE[1]


def _volume(root: Path, sub: str, vid: str = "la_000") -> Path:
    return root / sub / f"{vid}.nii.gz"


def test_unpaired_files_and_layout_errors(heart, tmp_path: Path):
    root, _ = heart
    img1 = _volume(root, "imagesTr", "la_001")
    moved = tmp_path / "la_001.nii.gz"
    shutil.move(_volume(root, "labelsTr", "la_001"), moved)
    with pytest.raises(DataError, match=rf"image {img1} has no label file; expected .*labelsTr/la_001\.nii\.gz"):
        list(iter_nifti(root))
    shutil.move(moved, _volume(root, "labelsTr", "la_001"))
    _save(_volume(root, "labelsTr", "la_009"), np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match=r"label .*labelsTr/la_009\.nii\.gz has no image file; expected .*imagesTr"):
        list(iter_nifti(root))
    (root / "imagesTr" / "._la_000.nii.gz").write_bytes(b"macOS fork")  # MSD tarballs hold these: ignored
    (root / "empty" / "imagesTr").mkdir(parents=True)
    (root / "empty" / "labelsTr").mkdir()
    with pytest.raises(DataError, match=r"no NIfTI volumes \(\*\.nii\.gz, \*\.nii\) in .*empty/imagesTr"):
        list(iter_nifti(root / "empty"))
    shutil.rmtree(root / "empty" / "labelsTr")
    with pytest.raises(DataError, match=r"missing folder .*empty/labelsTr; expected .*Decathlon layout"):
        list(iter_nifti(root / "empty"))
    with pytest.raises(DataError, match=r"data path does not exist: .*nowhere"):
        load_splits(DataConfig(format="nifti", path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize(
    "break_it, pattern",
    [
        (lambda r: _save(_volume(r, "labelsTr"), np.zeros((16, 12, 5), np.uint8)),
         r"image .*imagesTr/la_000\.nii\.gz is 16x12x6 but its label .*labelsTr/la_000\.nii\.gz is 16x12x5"),
        (lambda r: _save(_volume(r, "labelsTr"), np.zeros(SHAPE, np.uint8), np.diag([0.625, 0.625, 1.25, 1.0])),
         r"label .*labelsTr/la_000\.nii\.gz is not on the voxel grid of its image .*differ by up to 0\.625 mm"),
        (lambda r: _save(_volume(r, "labelsTr"), np.full(SHAPE, 0.5, np.float32)),
         r"label .*labelsTr/la_000\.nii\.gz holds non-integer values \(1152 voxels, e\.g\. .*0\.5\)"),
        (lambda r: _save(_volume(r, "imagesTr"), np.zeros((*SHAPE, 2), np.float32)),
         r"image .*imagesTr/la_000\.nii\.gz has shape \(16, 12, 6, 2\) \(4-D\); expected a 3-D volume"),
        (lambda r: _volume(r, "imagesTr").write_bytes(b"not a volume"),
         r"cannot read image .*imagesTr/la_000\.nii\.gz: not a NIfTI file"),
    ],
    ids=["shape", "affine", "non-integer", "4-D", "garbage"],
)
def test_bad_volume_is_named_and_skippable(heart, break_it, pattern):
    root, _ = heart
    break_it(root)
    with pytest.raises(DataError, match=pattern):
        list(iter_nifti(root))
    cfg = DataConfig(format="nifti", path=str(root), size=8, drop_empty=False, skip_bad=True, split=(1.0, 0.0, 0.0))
    bad = BadFiles(skip_bad=True)
    assert [s.group for s in iter_nifti(root, bad)] == ["la_001"] * 6
    assert bad.entries[0][0] == str(_volume(root, "imagesTr")) and len(bad) == 1
    st = {}
    part = load_part(cfg, "train", 0, 1, stats=st)  # the same volume skipped once, whether found from headers or voxels
    assert part.groups == ["la_001"] * 6 and (st["n_read"], st["n_bad_skipped"]) == (6, 1)
    assert describe(dataclasses.replace(cfg, drop_empty=True))["n_read"] == 6


def test_unit_fourth_dimension_is_a_volume_and_bad_settings(heart):
    root, vols = heart
    _save(_volume(root, "imagesTr"), vols["la_000"][0][..., None])  # (16, 12, 6, 1)
    assert len(list(iter_nifti(root))) == 12
    with pytest.raises(DataError, match=r"slice_axis 3 is out of range for the 3-D volumes in .*heart; expected -3"):
        list(iter_nifti(root, slice_axis=3))
    with pytest.raises(DataError, match=r"data.slice_axis must be -3\.\.2 .*got -4"):
        load_splits(DataConfig(format="nifti", path=str(root), slice_axis=-4))
    with pytest.raises(DataError, match=r"data.label_value must be a label >= 1 .*got 0"):
        describe(DataConfig(format="nifti", path=str(root), label_value=0))
    with pytest.raises(DataError, match=r"label_value=7 occurs in none"):
        describe(DataConfig(format="nifti", path=str(root), label_value=7))


def test_prepare_data_round_trip_gives_the_same_arrays(heart, tmp_path: Path, capsys):
    root, _ = heart
    out = tmp_path / "pq"
    args = ["prepare-data", str(root), str(out), "--format", "nifti", "--label-value", "1", "--shard-size", "5"]
    assert main(args) == 0
    assert "wrote 12 slices of 2 groups in 3 shard(s)" in capsys.readouterr().out
    assert json.loads((out / "_manifest.json").read_text())["n_samples"] == 12
    direct = list(iter_nifti(root, label_value=1))
    back = list(iter_source("parquet", out))
    assert [(s.group, s.source) for s in back] == [(s.group, s.source) for s in direct]
    for a, b in zip(direct, back):
        assert b.image.dtype == np.float32
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    cfg = DataConfig(format="nifti", path=str(root), size=8, label_value=1, split=(0.5, 0.5, 0.0))
    s_nii, s_pq = load_splits(cfg), load_splits(dataclasses.replace(cfg, format="parquet", path=str(out)))
    for name in ("train", "val", "test"):
        a, b = getattr(s_nii, name), getattr(s_pq, name)
        assert a.sources == b.sources
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert main(["data-info", "--set", "data.format=nifti", "--set", f"data.path={root}", "--set", "data.size=8",
                 "--set", "data.slice_axis=0", "--set", "data.drop_empty=true"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich may wrap the line
    kept = sum(len(getattr(load_splits(dataclasses.replace(cfg, label_value=None, slice_axis=0)), k))
               for k in ("train", "val", "test"))
    assert f"read 32 slices, kept {kept}: slices without foreground dropped (drop_empty" in out and kept < 32


# --- the real left-atrium volumes in ../shared/data/la_heart -------------------------------------------------------


def _heart_on_disk(root: Path, size: int) -> dict:
    """Volume ids, slice counts and foreground slices read with nibabel alone. ``solid``: slices holding an all-
    foreground square of side 3 * (downscale factor) + 1, which survives the antialiased bilinear resize to ``size``
    thresholded at 0.5 (a lower bound on the slices kept by drop_empty)."""
    ids, slices, fg, solid = [], 0, 0, 0
    for f in sorted((root / "imagesTr").glob("*.nii.gz")):
        vid = f.name[: -len(".nii.gz")]
        ids.append(vid)
        label = np.asanyarray(nib.load(str(root / "labelsTr" / f.name)).dataobj) > 0
        assert nib.load(str(f)).shape == label.shape
        slices += label.shape[-1]
        side = int(np.ceil(3 * max(label.shape[:2]) / size)) + 1
        for k in range(label.shape[-1]):
            m = label[:, :, k]
            if m.any():
                fg += 1
                c = np.pad(m.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
                box = c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]
                solid += bool((box == side * side).any())
    return {"ids": ids, "slices": slices, "foreground": fg, "solid": solid}


@pytest.mark.real_data
def test_real_la_heart_loads_split_by_volume():
    root = need_shared("la_heart")
    disk = _heart_on_disk(root, 64)
    assert len(disk["ids"]) == len(list((root / "imagesTr").glob("*.nii.gz"))) > 0
    cfg = DataConfig(format="nifti", path=str(root), size=64, seed=0)
    every = describe(dataclasses.replace(cfg, drop_empty=False))  # headers only
    assert every["n_train"] + every["n_val"] + every["n_test"] == every["n_read"] == disk["slices"]
    assert (every["in_channels"], every["image_size"]) == (1, 64)
    s = load_splits(cfg)
    groups = [set(a.groups) for a in (s.train, s.val, s.test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert groups[0] | groups[1] | groups[2] == set(disk["ids"]) and s.n_read == disk["slices"]
    assert [set(g) for g in config_split(disk["ids"], cfg)] == groups
    n_fg = len(s.train) + len(s.val) + len(s.test)
    assert disk["solid"] <= n_fg <= disk["foreground"], (disk, n_fg)
    assert s.train.images.shape[1:] == (1, 64, 64) and all(m.any() for m in s.train.masks)
    d = describe(cfg)
    assert (d["n_train"], d["n_val"], d["n_test"]) == (len(s.train), len(s.val), len(s.test))
    # patient-level 5-fold: every volume tested once, never validated on in its own fold
    k = min(5, len(disk["ids"]))
    tested = []
    for fold in range(k):
        tr, va, te = config_split(disk["ids"], dataclasses.replace(cfg, folds=k, fold=fold))
        assert not (tr & va or tr & te or va & te) and len(va) >= 1
        tested += sorted(te)
    assert sorted(tested) == sorted(disk["ids"])
