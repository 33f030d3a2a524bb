"""load_part / describe: a worker's share of a split equals its slice of load_splits, and reads little else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pixelrl_env.dataset import describe, load_part, load_splits

from pixelrl_env.data_config import DataConfig
from pixelrl_env.io import DataError
from pixelrl_env.parquet_write import write_shards
from pixelrl_env.sources import iter_source
from tests.conftest import write_folder_layout, write_lgg_layout

SYNTH = {"n_patients": 12, "slices_per_patient": 5, "size": 32, "seed": 3}


def _cfg(fmt: str, path: Path | None, **kw) -> DataConfig:
    base = dict(format=fmt, path=None if path is None else str(path), size=24, seed=5, synthetic=dict(SYNTH))
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def sources(tmp_path: Path, lgg_dir: Path, folder_dir: Path) -> dict[str, DataConfig]:
    """One config per format; the Parquet shards hold the synthetic set in many small row groups."""
    pq_dir = tmp_path / "pq"
    write_shards(iter_source("synthetic", synthetic=SYNTH), str(pq_dir), shard_size=25, row_group_size=4)
    big_lgg = write_lgg_layout(tmp_path / "lgg6", patients=6, slices=5, size=32, seed=2)
    return {
        "synthetic": _cfg("synthetic", None),
        "parquet": _cfg("parquet", pq_dir),
        "lgg": _cfg("lgg", lgg_dir),
        "lgg6": _cfg("lgg", big_lgg),
        "folder": _cfg("folder", folder_dir),
        "folder_groups": _cfg(
            "folder", write_folder_layout(tmp_path / "f9", n=18, seed=4), group_pattern=r"^(case\d+)"
        ),
    }


def _check_partition(cfg: DataConfig, split: str, whole) -> None:
    """Every n_parts in 1..4: disjoint, near-equal, contiguous parts whose union is the split, row for row."""
    for n in range(1, 5):
        if len(whole) < n:
            with pytest.raises(DataError, match=rf"has {len(whole)} slice\(s\).*n_parts={n}"):
                load_part(cfg, split, n - 1, n)
            continue
        parts = [load_part(cfg, split, i, n) for i in range(n)]
        sizes = [len(p) for p in parts]
        assert sum(sizes) == len(whole) and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        srcs = [s for p in parts for s in p.sources]
        assert len(set(srcs)) == len(srcs) and sorted(srcs) == sorted(whole.sources)
        assert srcs == whole.sources  # contiguous runs in read order
        order = np.argsort(srcs)
        np.testing.assert_array_equal(np.concatenate([p.images for p in parts])[order], whole.images[order])
        np.testing.assert_array_equal(np.concatenate([p.masks for p in parts])[order], whole.masks[order])
        assert [g for p in parts for g in p.groups] == whole.groups


@pytest.mark.parametrize("name", ["synthetic", "parquet", "lgg", "lgg6", "folder", "folder_groups"])
def test_parts_partition_every_split_of_every_format(sources, name):
    cfg = sources[name]
    full = load_splits(cfg)
    assert len(full.train) >= 3  # the fixtures are big enough that train splits into several parts
    for split in ("train", "val", "test"):
        _check_partition(cfg, split, getattr(full, split))
    d = describe(cfg)
    assert (d["n_train"], d["n_val"], d["n_test"]) == (len(full.train), len(full.val), len(full.test))
    assert (d["in_channels"], d["image_size"], d["n_read"]) == (3, 24, full.n_read)


@pytest.mark.parametrize("name", ["parquet", "lgg6"])
@pytest.mark.parametrize(
    "kw",
    [
        {"k_shot": 7, "channels": [1]},  # k_shot draws from the drop_empty'd train split with load_splits' seed
        {"drop_empty": False, "seed": 11},
        {"size": 8},  # small lesions vanish at 8 px: drop_empty is judged at the working size
        {"size": None, "normalize": "zscore"},
    ],
)
def test_parts_follow_k_shot_drop_empty_and_size(sources, name, kw):
    cfg = dataclasses.replace(sources[name], **kw)
    full = load_splits(cfg)
    _check_partition(cfg, "train", full.train)
    d = describe(cfg)
    assert (d["n_train"], d["n_val"], d["n_test"]) == (len(full.train), len(full.val), len(full.test))
    assert d["in_channels"] == full.train.images.shape[1] and d["image_size"] == full.train.images.shape[-1]
    if "k_shot" in kw:
        assert len(full.train) == 7


def test_working_size_decides_drop_empty(sources):
    at_24 = describe(sources["lgg6"])
    at_8 = describe(dataclasses.replace(sources["lgg6"], size=8))
    assert at_8["n_train"] + at_8["n_val"] + at_8["n_test"] < at_24["n_train"] + at_24["n_val"] + at_24["n_test"]


def test_bad_arguments_name_the_problem(sources):
    cfg = sources["lgg"]  # train: one patient, 3 non-empty slices
    assert len(load_splits(cfg).train) == 3
    with pytest.raises(DataError, match=r"train split of .*lgg has 3 slice\(s\).*n_parts=4: part 3 would be empty"):
        load_part(cfg, "train", 3, 4)
    with pytest.raises(DataError, match=r"split 'dev' unknown; expected one of train, val, test"):
        load_part(cfg, "dev")
    with pytest.raises(DataError, match=r"part 2 of n_parts=2 is out of range"):
        load_part(cfg, "train", 2, 2)
    with pytest.raises(DataError, match="needs a data path"):
        load_part(_cfg("parquet", None), "train")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the truncated TIFF
def test_file_formats_decode_only_the_part(sources):
    cfg = sources["lgg6"]
    st_all, st_part = {}, {}
    whole = load_part(cfg, "train", 0, 1, stats=st_all)
    part = load_part(cfg, "train", 1, 4, stats=st_part)
    assert st_all["rows_decoded"] == len(whole) and st_part["rows_decoded"] == len(part) == len(whole) // 4
    assert st_part["bytes_read"] < 0.6 * st_all["bytes_read"]
    # a truncated image in another part does not fail this part; the part that owns it names the file
    victim = Path(part.sources[0])
    victim.write_bytes(victim.read_bytes()[:200])
    assert len(load_part(cfg, "train", 0, 4)) == len(load_part(cfg, "train", 3, 4)) > 0
    with pytest.raises(DataError, match=rf"cannot read image .*{victim.name}.*truncated"):
        load_part(cfg, "train", 1, 4)


def _synthetic_parquet(tmp_path: Path, **kw) -> tuple[DataConfig, dict]:
    synth = {"n_patients": 40, "slices_per_patient": 4, "size": 64, "seed": 1}
    manifest = write_shards(iter_source("synthetic", synthetic=synth), str(tmp_path / "pq"), shard_size=80, **kw)
    return DataConfig(format="parquet", path=str(tmp_path / "pq"), size=32, seed=2, drop_empty=False), manifest


def test_parquet_part_reads_a_fraction_of_the_bytes(tmp_path: Path):
    cfg, manifest = _synthetic_parquet(tmp_path, row_group_size=4)
    assert manifest["row_group_size"] == 4
    shards = [tmp_path / "pq" / s for s in manifest["shards"]]
    assert [pq.ParquetFile(s).metadata.num_row_groups for s in shards] == [20, 20]
    on_disk = sum(s.stat().st_size for s in shards)
    st_all, st_0 = {}, {}
    whole = load_part(cfg, "train", 0, 1, stats=st_all)
    part = load_part(cfg, "train", 0, 4, stats=st_0)
    assert st_all["files_opened"] == st_0["files_opened"] == 2
    assert (st_all["rows_decoded"], st_0["rows_decoded"]) == (len(whole), len(part))
    assert len(part) == -(-len(whole) // 4)  # part 0 takes the remainder
    assert st_all["bytes_read"] <= 1.1 * on_disk
    assert st_0["bytes_read"] <= 0.5 * st_all["bytes_read"]
    small = {}
    describe(cfg, stats=small)  # small columns only: no image bytes at all
    assert small["rows_decoded"] == 0 and small["bytes_read"] < 0.25 * st_all["bytes_read"]


def test_parquet_default_row_groups_and_old_single_group_shards(tmp_path: Path):
    cfg, manifest = _synthetic_parquet(tmp_path / "new")
    assert manifest["row_group_size"] == 32
    assert pq.ParquetFile(Path(cfg.path) / "part-00000.parquet").metadata.num_row_groups == 3  # 80 rows: 32+32+16
    old, _ = _synthetic_parquet(tmp_path / "old", row_group_size=10**6)  # as shards were written before
    assert pq.ParquetFile(Path(old.path) / "part-00000.parquet").metadata.num_row_groups == 1
    _check_partition(old, "val", load_splits(old).val)


def _flip_image_byte(shard: Path, row_group: int, row: int) -> None:
    """Corrupt one byte in the middle of one row's image PNG, in place, inside the shard's bytes.

    PNG data barely compresses, so zstd stores it as raw blocks and the PNG bytes appear verbatim in the file.
    """
    png = pq.ParquetFile(shard).read_row_group(row_group, columns=["image"]).column(0)[row].as_py()
    data = bytearray(shard.read_bytes())
    at = bytes(data).find(png)
    assert at > 0 and bytes(data).find(png, at + 1) == -1
    data[at + len(png) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_parquet_corrupt_row_group_fails_only_its_owner(tmp_path: Path):
    cfg, manifest = _synthetic_parquet(tmp_path, row_group_size=4)
    cfg = dataclasses.replace(cfg, split=(1.0, 0.0, 0.0))  # every row is train: part 3 of 4 owns the last shard's end
    expected = load_part(cfg, "train", 0, 4)
    last = tmp_path / "pq" / manifest["shards"][-1]
    _flip_image_byte(last, row_group=19, row=2)
    got = load_part(cfg, "train", 0, 4)
    assert got.sources == expected.sources and np.array_equal(got.images, expected.images)
    # the page's CRC fails before any PNG is decoded: the error names the shard and the row group
    with pytest.raises(DataError, match=r"row group 19 of Parquet shard \S*part-00001\.parquet: .*CRC checksum"):
        load_part(cfg, "train", 3, 4)
    st = {}
    skipped = load_part(dataclasses.replace(cfg, skip_bad=True), "train", 3, 4, stats=st)
    assert len(skipped) == 40 - 4 and st["n_bad_skipped"] == 1  # the damaged group's 4 rows, one entry
    assert st["bad_files"][0][0].endswith("part-00001.parquet row group 19")
