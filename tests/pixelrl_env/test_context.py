"""2.5-D input (``data.context``): each slice with its neighbours of the same volume as channels, the same in every
reader (load_splits, a worker's load_part, describe, native evaluation), from a NIfTI volume written here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pixelrl_env.data_config import DataConfig
from pixelrl_env.dataset import describe, load_part, load_splits
from pixelrl_env.io import DataError
from pixelrl_env.prepare import context_rows, prepare_image
from pixelrl_env.sources import iter_source
from rl_agents.config import load_config
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.lifecycle import train
from rl_agents.experiment.loaded import load_model
from tests.conftest import SHAPE, write_nifti_layout


def test_neighbours_stay_in_their_volume_and_repeat_its_edge_slices():
    rows = context_rows(["a", "a", "a", "b", "b", "c"], 1)
    assert rows.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4], [5, 5, 5]]
    assert context_rows(["a", "a", "a"], 2).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    assert context_rows(["a", "b"], 0).tolist() == [[0], [1]]


@pytest.fixture
def heart(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "heart"
    return root, write_nifti_layout(root, n=5)


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="nifti", path=str(root), size=8, normalize="minmax", split=(0.6, 0.2, 0.2), seed=0, **kw)


def test_each_kept_slice_carries_its_prepared_neighbours_empty_ones_included(heart):
    root, vols = heart
    cfg = _cfg(root, context=1)
    splits = load_splits(cfg)
    prepared = {s.source: prepare_image(s.image, cfg, s.source) for s in iter_source("nifti", root)}
    assert splits.train.images.shape[1:] == (3, 8, 8)
    for a in (splits.train, splits.val, splits.test):
        for img, src in zip(a.images, a.sources):
            stem, k = src.rsplit("slice", 1)
            k = int(k)
            # label 1 fills slices 1..3 (of 0..5), so slice 1's left neighbour (0) is an empty slice, still stacked
            want = [prepared[f"{stem}slice{min(max(j, 0), SHAPE[2] - 1):03d}"][0] for j in (k - 1, k, k + 1)]
            np.testing.assert_array_equal(img, np.stack(want))
    flat = load_splits(dataclasses.replace(cfg, context=0))
    np.testing.assert_array_equal(splits.train.images[:, 1:2], flat.train.images)  # the centre is the 2-D input
    np.testing.assert_array_equal(splits.train.masks, flat.train.masks)
    assert describe(cfg)["in_channels"] == 3 and describe(dataclasses.replace(cfg, context=2))["in_channels"] == 5


@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_worker_parts_equal_the_split_row_for_row(heart, n_parts: int):
    root, _ = heart
    cfg = _cfg(root, context=2)
    train = load_splits(cfg).train
    parts = [load_part(cfg, "train", i, n_parts) for i in range(n_parts)]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), train.images)
    np.testing.assert_array_equal(np.concatenate([p.masks for p in parts]), train.masks)
    assert sum((p.sources for p in parts), []) == train.sources


def test_bad_context_values_are_named():
    for bad in (-1, 9, True, 1.5):
        with pytest.raises(DataError, match=r"data.context must be an integer 0..8.*got"):
            DataConfig(context=bad).validate()
    with pytest.raises(DataError, match="data.context needs every slice.*skip_bad"):
        DataConfig(context=1, skip_bad=True).validate()


def test_a_25d_model_trains_and_is_evaluated_at_native_size(heart, tmp_path: Path):
    """Training sees 3 channels; evaluate_checkpoint stacks the same neighbours from the volume at native size."""

    root, _ = heart
    cfg = load_config(None, [
        "data.format=nifti", f"data.path={root}", "data.size=8", "data.context=1", "data.split=[0.6, 0.2, 0.2]",
        "budget.max_updates=2", "budget.max_minutes=null", "eval.every=2", "eval.checkpoint_every=2", "pa3c.t_max=2", "optim.batch_size=2",
        "num_workers=0", "compute.threads=1", "tracking.mlflow=false"])
    m = train(cfg, tmp_path / "run", quiet=True)
    model, saved = load_model(tmp_path / "run" / "checkpoints" / "best.pt")
    assert saved.data.context == 1 and m["updates"] == 2
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.shape[1] == 3  # the network's input channels: slice and its two neighbours
    ev = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", split="test")
    assert ev["all_slices"]["n_images"] == SHAPE[2] and ev["all_slices"]["dice"] is not None
