from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pixelrl_env.io import BadFiles, DataError, Sample
from pixelrl_env.parquet import ParquetIndex, iter_parquet
from pixelrl_env.parquet_write import write_shards
from pixelrl_env.sources import iter_folder, iter_lgg, iter_synthetic
from rl_agents.cli import main
from tests.conftest import need_shared, write_lgg_layout


def _assert_same(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.image.dtype == y.image.dtype and x.image.shape == y.image.shape
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert (x.group, x.source) == (y.group, y.source)


def test_round_trip_lgg_layout_identical_and_sharded(lgg_dir: Path, tmp_path: Path):
    out = tmp_path / "shards"
    manifest = write_shards(iter_lgg(lgg_dir), str(out), shard_size=5)
    assert manifest["n_samples"] == 12 and manifest["n_groups"] == 3
    assert manifest["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(out / s).metadata.num_rows for s in manifest["shards"]] == [5, 5, 2]
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.names == ["image", "mask", "group", "source", "height", "width", "channels", "sha256"]
    _assert_same(iter_lgg(lgg_dir), iter_parquet(str(out)))
    _assert_same(iter_lgg(lgg_dir), iter_parquet(f"file://{out}"))  # a URI reads the same, no code change
    # the folder is one data set for other readers too: they pass over _-prefixed files such as the manifest

    assert (out / "_manifest.json").is_file() and not (out / "manifest.json").exists()
    assert ds.dataset(str(out)).count_rows() == 12 and pq.read_table(str(out)).num_rows == 12
    assert sorted(pd.read_parquet(out, columns=["group"])["group"].unique()) == sorted({s.group for s in iter_lgg(lgg_dir)})


def test_round_trip_grey_and_16_bit(tmp_path: Path):
    rng = np.random.default_rng(1)
    samples = [
        Sample(rng.integers(0, 65535, (9, 7, 1), dtype=np.uint16), rng.integers(0, 2, (9, 7), dtype=np.uint8), "g", "a"),
        Sample(rng.integers(0, 255, (9, 7, 1), dtype=np.uint8), np.zeros((9, 7), np.uint8), "g", "b"),
    ]
    write_shards(samples, str(tmp_path / "o"))
    _assert_same(samples, iter_parquet(str(tmp_path / "o")))


def test_corrupt_row_detected(tmp_path: Path):
    write_shards(iter_synthetic(n_patients=1, slices_per_patient=3, size=32), str(tmp_path / "o"))
    path = tmp_path / "o" / "part-00000.parquet"
    t = pq.read_table(path)
    sha = t.column("sha256").to_pylist()
    sha[1] = "0" * 64
    t = t.set_column(t.schema.get_field_index("sha256"), "sha256", pa.array(sha))
    pq.write_table(t, path)
    with pytest.raises(DataError, match=r"part-00000\.parquet row 1: SHA-256 mismatch"):
        list(iter_parquet(str(tmp_path / "o")))
    bad = BadFiles(skip_bad=True)
    assert len(list(iter_parquet(str(tmp_path / "o"), bad))) == 2 and len(bad) == 1


def test_refuses_existing_shards_and_missing_input(tmp_path: Path):
    write_shards(iter_synthetic(n_patients=1, slices_per_patient=2, size=32), str(tmp_path / "o"))
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(iter_synthetic(n_patients=1, slices_per_patient=2, size=32), str(tmp_path / "o"))
    with pytest.raises(DataError, match="Parquet data not found"):
        list(iter_parquet(str(tmp_path / "absent")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet shards"):
        list(iter_parquet(str(tmp_path / "empty")))


def test_cli_prepare_data_on_unseen_lgg_folder(tmp_path: Path, capsys):
    src = write_lgg_layout(tmp_path / "new_site", patients=2, slices=3, size=40, seed=9)
    out = tmp_path / "pq"
    assert main(["prepare-data", str(src), str(out), "--format", "lgg", "--shard-size", "4"]) == 0
    assert "wrote 6 slices of 2 groups in 2 shard(s)" in capsys.readouterr().out
    _assert_same(iter_lgg(src), iter_parquet(str(out)))

    victim = sorted(src.glob("*/*_2.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    assert main(["prepare-data", str(src), str(tmp_path / "pq2"), "--format", "lgg"]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and victim.name in err and "truncated" in err
    assert not (tmp_path / "pq2" / "part-00000.parquet").exists()

    assert main(["prepare-data", str(src), str(tmp_path / "pq3"), "--format", "lgg", "--skip-bad"]) == 0
    assert "skipped 1 bad file(s)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "pq3" / "_manifest.json").read_text())
    assert manifest["n_samples"] == 5 and manifest["skipped"][0]["path"] == str(victim)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_uri_round_trip_with_local_moto_server(lgg_dir: Path, monkeypatch):
    """Object storage through a pyarrow URI: an S3 server (moto) on 127.0.0.1, nothing else reached."""
    import boto3  # installed with moto (test extra): a missing one must fail, not skip
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="scans")
        uri = f"s3://scans/lgg/v1?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        manifest = write_shards(iter_lgg(lgg_dir), uri, shard_size=8)
        assert manifest["shards"] == ["part-00000.parquet", "part-00001.parquet"]
        _assert_same(iter_lgg(lgg_dir), iter_parquet(uri))
    finally:
        server.stop()


def test_real_kvasir_round_trip(tmp_path: Path):
    root = need_shared("kvasir_seg")
    sub = list(iter_folder(root))[:20]  # varied sizes, JPEG
    write_shards(sub, str(tmp_path / "kv"), shard_size=7)
    _assert_same(sub, iter_parquet(str(tmp_path / "kv")))


@pytest.mark.parametrize("damage", ["two bytes swapped inside a page", "truncated footer"])
def test_a_damaged_shard_fails_naming_it_and_never_returns_other_pixels(tmp_path: Path, damage: str, reliability):
    write_shards(iter_synthetic(n_patients=1, slices_per_patient=3, size=32), str(tmp_path / "o"))
    path = tmp_path / "o" / "part-00000.parquet"
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).num_rows == 3
    raw = bytearray(path.read_bytes())
    if damage.startswith("two bytes"):
        col = meta.schema.to_arrow_schema().get_field_index("image")
        chunk = meta.row_group(0).column(col)
        i = chunk.data_page_offset + chunk.total_compressed_size // 2
        while raw[i] == raw[i + 1]:  # a swap of equal bytes would change nothing
            i += 1
        raw[i], raw[i + 1] = raw[i + 1], raw[i]
    else:
        raw = raw[:-20]
    path.write_bytes(bytes(raw))

    with pytest.raises(DataError, match=r"part-00000\.parquet") as whole:
        list(iter_parquet(str(tmp_path / "o")))
    with pytest.raises(DataError, match=r"part-00000\.parquet") as parts:  # the worker's two-pass reader too
        ParquetIndex(str(tmp_path / "o")).samples(range(3))
    if damage.startswith("two bytes"):  # caught by the page's CRC, before any pixel is decoded
        for e in (whole, parts):
            assert "crc" in str(e.value).lower() or "checksum" in str(e.value).lower(), e.value
    reliability(7, f"a Parquet shard: {damage}", "the damaged shard's rows, refused by name; no wrong pixel returned",
                None, "refused at read")
