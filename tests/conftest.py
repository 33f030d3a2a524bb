"""Shared fixtures: tiny data sets written on the fly, and access to the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _mlflow_store(tmp_path_factory):
    """Runs made by tests go to a throwaway MLflow store, never to the checkout's mlflow.db."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def need_shared(name: str) -> Path:
    """Path to a real data set; fails under CI=true when missing (never silently skipped there)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        msg = f"real data {path} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: tests on real data must run)")
        pytest.skip(msg)
    return path


def blob_mask(rng: np.random.Generator, h: int, w: int, empty: bool = False) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    if not empty:
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        r = rng.integers(2, max(3, min(h, w) // 4))
        yy, xx = np.mgrid[0:h, 0:w]
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return m


def write_lgg_layout(root: Path, patients: int = 3, slices: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Write a small data set in the Kaggle LGG kaggle_3m layout (deflate TIFF, masks 0/255); first slice empty."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        name = f"TCGA_XX_{1000 + p}_20000101"
        d = root / name
        d.mkdir(parents=True)
        for s in range(1, slices + 1):
            img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            mask = blob_mask(rng, size, size, empty=(s == 1)) * 255
            Image.fromarray(img).save(d / f"{name}_{s}.tif", compression="tiff_adobe_deflate")
            Image.fromarray(mask).save(d / f"{name}_{s}_mask.tif", compression="tiff_adobe_deflate")
    return root


@pytest.fixture
def lgg_dir(tmp_path: Path) -> Path:
    return write_lgg_layout(tmp_path / "lgg")


def write_folder_layout(root: Path, n: int = 6, size: int = 24, ext: str = ".png", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i // 2:02d}_s{i % 2}{ext}")
        Image.fromarray(blob_mask(rng, size, size) * 255).save(root / "masks" / f"case{i // 2:02d}_s{i % 2}.png")
    return root


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    return write_folder_layout(tmp_path / "folder")
