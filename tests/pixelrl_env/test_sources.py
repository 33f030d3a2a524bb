from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrl_env.io import BadFiles, DataError, read_mask
from pixelrl_env.sources import iter_folder, iter_lgg, iter_source, iter_synthetic
from tests.conftest import kvasir_on_disk, lgg_on_disk, need_shared, write_folder_layout


def test_lgg_layout_reads_in_patient_and_slice_order(lgg_dir: Path):
    samples = list(iter_lgg(lgg_dir))
    assert len(samples) == 12
    assert [s.group for s in samples[:4]] == ["TCGA_XX_1000_20000101"] * 4
    assert [Path(s.source).stem for s in samples[:4]] == [f"TCGA_XX_1000_20000101_{i}" for i in range(1, 5)]
    s = samples[1]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 1} and s.mask.any()
    assert not samples[0].mask.any()  # the first slice of each patient was written empty
    raw = np.asarray(Image.open(s.source))
    np.testing.assert_array_equal(s.image, raw)


def test_lgg_slice_numbers_sort_numerically(tmp_path: Path):
    d = tmp_path / "P1"
    d.mkdir()
    for n in (10, 2, 1):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / f"P1_{n}.tif")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / f"P1_{n}_mask.tif")
    assert [Path(s.source).name for s in iter_lgg(tmp_path)] == ["P1_1.tif", "P1_2.tif", "P1_10.tif"]


def test_lgg_missing_mask_names_the_image(lgg_dir: Path):
    victim = next(lgg_dir.glob("*/*_3_mask.tif"))
    victim.unlink()
    with pytest.raises(DataError, match=r"_3\.tif has no mask; expected .*_3_mask\.tif"):
        list(iter_lgg(lgg_dir))


def test_lgg_mask_without_image(lgg_dir: Path):
    next(lgg_dir.glob("*/*_2.tif")).unlink()
    with pytest.raises(DataError, match=r"_2_mask\.tif has no image"):
        list(iter_lgg(lgg_dir))


def test_wrong_path_and_empty_folder(tmp_path: Path):
    with pytest.raises(DataError, match=r"does not exist: .*nowhere .*kaggle_3m layout"):
        list(iter_lgg(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no image/mask pairs found in .*empty"):
        list(iter_lgg(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"missing folder .*images"):
        list(iter_folder(tmp_path / "empty"))
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    with pytest.raises(DataError, match=r"no image files in .*images"):
        list(iter_folder(tmp_path / "f"))
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        list(iter_lgg(afile))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_tiff_is_named_and_skippable(lgg_dir: Path):
    victim = sorted(lgg_dir.glob("*/*_2.tif"))[1]
    _truncate(victim)
    with pytest.raises(DataError, match=rf"cannot read image {victim}: the file is truncated"):
        list(iter_lgg(lgg_dir))
    bad = BadFiles(skip_bad=True)
    samples = list(iter_lgg(lgg_dir, bad))
    assert len(samples) == 11 and len(bad) == 1 and bad.entries[0][0] == str(victim)


def test_size_mismatch_is_named(lgg_dir: Path):
    victim = next(lgg_dir.glob("*/*_2_mask.tif"))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(victim)
    with pytest.raises(DataError, match=r"is 32x32 \(WxH\) but its mask .*_2_mask\.tif is 16x16"):
        list(iter_lgg(lgg_dir))


def test_non_binary_lossless_mask_rejected(tmp_path: Path):
    p = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).save(p)
    with pytest.raises(DataError, match=r"m\.png is not binary: it holds 3 levels \(0, 1, 2\)"):
        read_mask(p)
    grey = tmp_path / "grey.tif"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(grey)
    with pytest.raises(DataError, match="not binary"):
        read_mask(grey)


@pytest.mark.parametrize(
    "values, mode, fmt, expected",
    [
        ([[0, 255], [255, 0]], "L", "PNG", [[0, 1], [1, 0]]),  # 8-bit 0/255: > 127
        ([[0, 1], [1, 0]], "L", "PNG", [[0, 1], [1, 0]]),  # 0/1: > 0
        ([[0, 255], [0, 0]], "1", "PNG", [[0, 1], [0, 0]]),  # 1-bit
        ([[0, 255], [0, 255]], "L", "BMP", [[0, 1], [0, 1]]),
        ([[0, 255], [0, 255]], "L", "GIF", [[0, 1], [0, 1]]),
        ([[0, 255], [255, 255]], "L", "TIFF", [[0, 1], [1, 1]]),
        ([[0, 255], [255, 0]], "I", "TIFF", [[0, 1], [1, 0]]),  # 32-bit integer image holding 8-bit levels
    ],
)
def test_mask_rule_per_format(tmp_path: Path, values, mode, fmt, expected):
    arr = np.array(values, np.uint8)
    p = tmp_path / f"m.{fmt.lower()}"
    Image.fromarray(arr).convert(mode).save(p, format=fmt)
    np.testing.assert_array_equal(read_mask(p), np.array(expected, np.uint8))


def test_jpeg_mask_threshold_and_garbage(tmp_path: Path):
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 20:40] = 255
    p = tmp_path / "m.jpg"
    Image.fromarray(m).convert("RGB").save(p, quality=75)
    out = read_mask(p)
    assert out.dtype == np.uint8 and (out == (m > 127)).mean() > 0.99
    noisy = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noisy)
    with pytest.raises(DataError, match=r"photo\.jpg is not binary: .* mid-grey"):
        read_mask(noisy)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp", ".gif"])
def test_folder_formats_pair_by_stem(tmp_path: Path, ext: str):
    root = write_folder_layout(tmp_path / "f", ext=ext)
    samples = list(iter_folder(root))
    assert len(samples) == 6
    assert [Path(s.source).stem for s in samples] == sorted(Path(s.source).stem for s in samples)
    assert all(s.image.shape[:2] == s.mask.shape == (24, 24) for s in samples)
    assert samples[0].group == "case00_s0"


def test_folder_group_pattern_and_missing_mask(folder_dir: Path):
    groups = [s.group for s in iter_folder(folder_dir, group_pattern=r"^(case\d+)")]
    assert groups == ["case00", "case00", "case01", "case01", "case02", "case02"]
    with pytest.raises(DataError, match="does not match file name"):
        list(iter_folder(folder_dir, group_pattern=r"^patient"))
    (folder_dir / "masks" / "case01_s1.png").unlink()
    with pytest.raises(DataError, match=r"case01_s1\.png has no mask in .*masks"):
        list(iter_folder(folder_dir))


def test_folder_skip_bad_counts(folder_dir: Path):
    _truncate(folder_dir / "images" / "case02_s0.png", 0.3)
    bad = BadFiles(skip_bad=True)
    assert len(list(iter_folder(folder_dir, bad))) == 5 and len(bad) == 1


def test_synthetic_is_deterministic_and_varied():
    a = list(iter_synthetic(n_patients=3, slices_per_patient=8, size=64, seed=5))
    b = list(iter_synthetic(n_patients=3, slices_per_patient=8, size=64, seed=5))
    c = list(iter_synthetic(n_patients=3, slices_per_patient=8, size=64, seed=6))
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    empties = sum(not s.mask.any() for s in a)
    assert 0 < empties < len(a)  # slices beyond the lesion's extent are empty, as in real volumes
    assert a[0].image.shape == (64, 64, 3) and a[0].image.dtype == np.uint8
    assert {s.group for s in a} == {"synth000", "synth001", "synth002"}


def test_synthetic_difficulty_lowers_contrast():
    def contrast(d: str) -> float:
        vals = []
        for s in iter_synthetic(n_patients=4, slices_per_patient=4, size=64, difficulty=d):
            if s.mask.sum() > 20:
                flair = s.image[..., 1].astype(float)
                vals.append(flair[s.mask == 1].mean() - flair[s.mask == 0][flair[s.mask == 0] > 20].mean())
        return float(np.mean(vals))

    assert contrast("easy") > contrast("medium") > contrast("hard") > 0
    with pytest.raises(ValueError, match="unknown synthetic difficulty 'extreme'"):
        list(iter_synthetic(difficulty="extreme"))


def test_unknown_format():
    with pytest.raises(DataError, match="unknown data format 'dicom'"):
        iter_source("dicom", "x")


def test_real_lgg_data():
    root = need_shared("lgg_kaggle_3m")
    disk = lgg_on_disk(root)  # counted from the files with Pillow, not through pixelrl_env
    samples = list(iter_lgg(root))
    assert len(samples) == disk["pairs"] > 0
    assert sorted({s.group for s in samples}) == disk["patients"]
    assert all(s.image.shape == (256, 256, 3) for s in samples)
    assert sum(bool(s.mask.any()) for s in samples) == disk["foreground"]
    # every slice of a patient comes with its mask, in slice-number order
    assert all(Path(s.source).with_name(Path(s.source).stem + "_mask.tif").is_file() for s in samples)
    numbers: dict[str, list[int]] = {}
    for s in samples:
        numbers.setdefault(s.group, []).append(int(Path(s.source).stem.rsplit("_", 1)[1]))
    assert all(v == sorted(v) for v in numbers.values())


def test_real_kvasir_folder(tmp_path: Path):
    root = need_shared("kvasir_seg")
    samples = list(iter_folder(root))
    assert len(samples) == kvasir_on_disk(root) > 0
    assert all(s.image.shape[:2] == s.mask.shape and s.image.shape[2] == 3 for s in samples)
    fg = np.mean([s.mask.mean() for s in samples])
    assert 0.05 < fg < 0.4  # polyps cover a minority of each frame
    # copy a handful into a new folder with one corrupt mask: it is named
    sub = tmp_path / "kv"
    (sub / "images").mkdir(parents=True)
    (sub / "masks").mkdir()
    for s in samples[:3]:
        name = Path(s.source).name
        shutil.copy(s.source, sub / "images" / name)
        shutil.copy(root / "masks" / name, sub / "masks" / name)
    victim = sub / "masks" / Path(samples[1].source).name
    _truncate(victim, 0.2)
    with pytest.raises(DataError, match=rf"cannot read mask {victim}"):
        list(iter_folder(sub))
