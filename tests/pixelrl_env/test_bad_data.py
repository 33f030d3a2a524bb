"""Bad data at scale: a folder data set in which about 10 % of the files are broken in every way we have met.

With ``skip_bad`` every bad file is named and counted once and the rest trains; without it the first bad file stops
the run with its name; memory stays bounded when one file claims 20000x20000 pixels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrl_env.data_config import DataConfig
from pixelrl_env.dataset import load_splits
from pixelrl_env.io import DataError
from rl_agents.config import load_config
from rl_agents.experiment.lifecycle import train
from tests.conftest import blob_mask

ROOT = Path(__file__).resolve().parents[2]
N_GOOD = 63
# stems sort in this order, so the first bad file read is the truncated one
BAD = ["zz1_truncated", "zz2_missized_mask", "zz3_nonbinary_mask", "zz4_nan_image", "zz5_16bit_nonbinary_mask",
       "zz6_one_pixel", "zz7_huge"]


def _write(root: Path) -> Path:
    rng = np.random.default_rng(0)
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for i in range(N_GOOD):
        stem = f"case{i // 7:02d}_s{i % 7}"
        if i % 9 == 0:  # 16-bit images are valid scans, not bad ones
            Image.fromarray(rng.integers(0, 4000, (32, 32), dtype=np.uint16)).save(img_dir / f"{stem}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(img_dir / f"{stem}.png")
        Image.fromarray(blob_mask(rng, 32, 32) * 255).save(mask_dir / f"{stem}.png")

    def good_image(stem: str) -> None:
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(img_dir / f"{stem}.png")

    def good_mask(stem: str) -> None:
        Image.fromarray(blob_mask(rng, 32, 32) * 255).save(mask_dir / f"{stem}.png")

    good_image("zz1_truncated")
    raw = (img_dir / "zz1_truncated.png").read_bytes()
    (img_dir / "zz1_truncated.png").write_bytes(raw[: len(raw) // 2])
    good_mask("zz1_truncated")
    good_image("zz2_missized_mask")
    Image.fromarray(blob_mask(rng, 24, 24) * 255).save(mask_dir / "zz2_missized_mask.png")
    good_image("zz3_nonbinary_mask")
    Image.fromarray(rng.integers(0, 200, (32, 32), dtype=np.uint8)).save(mask_dir / "zz3_nonbinary_mask.png")
    Image.fromarray(np.full((32, 32), np.nan, np.float32)).save(img_dir / "zz4_nan_image.tif")
    good_mask("zz4_nan_image")
    good_image("zz5_16bit_nonbinary_mask")
    Image.fromarray(rng.integers(0, 1000, (32, 32), dtype=np.uint16)).save(mask_dir / "zz5_16bit_nonbinary_mask.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(img_dir / "zz6_one_pixel.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(mask_dir / "zz6_one_pixel.png")
    Image.new("L", (20000, 20000)).save(img_dir / "zz7_huge.png", compress_level=1)  # 400 MP, 0.4 MB on disk
    Image.new("L", (20000, 20000)).save(mask_dir / "zz7_huge.png", compress_level=1)
    return root


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("bad") / "data")


def _cfg(path: Path, skip_bad: bool) -> DataConfig:
    return DataConfig(format="folder", path=str(path), size=32, drop_empty=False, skip_bad=skip_bad,
                      group_pattern=r"^([a-z0-9]+?)_", split=[0.6, 0.2, 0.2])


def test_without_skip_bad_the_first_bad_file_stops_the_run_with_its_name(bad_folder: Path, reliability):
    with pytest.raises(DataError) as err:
        load_splits(_cfg(bad_folder, skip_bad=False))
    # the first bad file the reader meets (splits are read train, val, test), by name, and only that one
    assert [b for b in BAD if b in str(err.value)] == ["zz2_missized_mask"], err.value
    reliability(13, f"{len(BAD)} bad files of {len(BAD) + N_GOOD}, without --skip-bad", "nothing trained: the run "
                "stops at the first bad file, by name", None, "not meant to: a clear error")


def test_with_skip_bad_every_bad_file_is_named_once_and_the_rest_is_read(bad_folder: Path):
    s = load_splits(_cfg(bad_folder, skip_bad=True))
    assert s.n_read == N_GOOD
    assert len(s.train) + len(s.val) + len(s.test) == N_GOOD
    named = [next(b for b in BAD if b in str(entry)) for entry in s.bad_files]
    assert sorted(named) == BAD, s.bad_files  # each exactly once
    text = "\n".join(map(str, s.bad_files))
    for reason in ("truncated", "size", "binary", "NaN", "binary", "2 px", "exceeds limit"):
        assert reason in text, (reason, text)


def test_the_huge_file_is_refused_before_it_is_decoded(bad_folder: Path):
    """A child process reads the whole set; its peak memory stays far below the 400 MB one decoded image would take."""
    script = (
        "import json, sys\n"
        "from pixelrl_env.data_config import DataConfig\nfrom pixelrl_env.dataset import load_splits\n"
        "s = load_splits(DataConfig(format='folder', path=sys.argv[1], size=32, drop_empty=False, skip_bad=True,"
        " group_pattern=r'^([a-z0-9]+?)_', split=[0.6, 0.2, 0.2]))\n"
        # VmHWM: this process's peak resident memory (ru_maxrss would carry over the forking pytest's peak)
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(json.dumps({'n': s.n_read, 'peak_mb': int(hwm.split()[1]) / 1024}))\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(bad_folder)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["n"] == N_GOOD
    assert out["peak_mb"] < 200, out  # python + numpy + Pillow take ~60 MB; one decoded 20000x20000 L image 400


def test_the_rest_trains(bad_folder: Path, tmp_path: Path, caplog, reliability):
    cfg = load_config(None, ["data.format=folder", f"data.path={bad_folder}", "data.size=32", "data.skip_bad=true",
                             "data.group_pattern='^([a-z0-9]+?)_'", "data.split=[0.6, 0.2, 0.2]", "budget.max_updates=2",
                             "budget.max_minutes=null", "eval.every=2", "eval.checkpoint_every=2", "pa3c.t_max=2", "optim.batch_size=2",
                             "num_workers=0", "compute.threads=1", "tracking.mlflow=false"])
    metrics = train(cfg, tmp_path / "run", quiet=True)
    assert metrics["updates"] == 2 and (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert 0 < metrics["n_train"] + metrics["n_val"] < N_GOOD
    skipped = {b for b in BAD for r in caplog.records if "skipping bad file" in r.getMessage() and b in r.getMessage()}
    assert skipped == set(BAD)
    reliability(13, f"{len(BAD)} bad files of {len(BAD) + N_GOOD} (truncated, mis-sized, non-binary, NaN, 16-bit, "
                "1-pixel, 20000x20000), with --skip-bad", f"the {len(BAD)} bad files only, each named once",
                None, "skipped at read; the rest trains")
