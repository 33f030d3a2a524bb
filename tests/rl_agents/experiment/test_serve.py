"""`pixeldrl serve`: a checkpoint behind Ray Serve on a local Ray, driven over HTTP on 127.0.0.1 as a client would:
masks equal to `segment_array`'s, concurrent requests batched, bad requests answered 4xx with a reason while the
replica keeps serving, and the server bound to loopback only."""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from pixelrl_env.synthetic import synthetic_slice
from rl_agents.experiment.predict import segment_array
from rl_agents.experiment.serve import RequestError, Segmenter, ServeOptions, start, stop
from tests.conftest import AFFINE, photo, train_tiny, write_nifti_layout

# the toy model's profile is of a few validation slices: unseen synthetic slices can pass its threshold
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::rl_agents.experiment.predict.UnlikeTrainingWarning")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def synth_ckpt(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("synth"), [
        "data.format=synthetic", "data.size=32", "data.synthetic={n_patients: 6, slices_per_patient: 4, size: 32}"])


def test_a_served_model_answers_over_http_and_survives_bad_requests(synth_ckpt: Path, ray_2cpu):
    port = _free_port()
    url = start(synth_ckpt, ServeOptions(port=port, min_replicas=1, max_replicas=1, replica_cpus=0.5, max_batch=4,
                                         batch_wait_s=0.05, max_upload_bytes=200_000))
    try:
        # bound to loopback only: the one listening socket on the port is 127.0.0.1's
        listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
        health = requests.get(f"{url}/health", timeout=60).json()
        assert health["input_channels"] == 3 and health["size"] == 32 and health["profiled"] is True
        images = [synthetic_slice(7, p, 1, 4, 32)[0] for p in range(6)]  # unseen patients of the training kind

        def post(a: np.ndarray, **params) -> requests.Response:
            return requests.post(f"{url}/segment", params={"name": "scan.png", **params}, data=_png(a), timeout=120)

        with ThreadPoolExecutor(6) as pool:  # concurrent: the replica batches them
            answers = list(pool.map(post, images))
        for a, r in zip(images, answers):
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            got = np.asarray(Image.open(io.BytesIO(r.content)))
            np.testing.assert_array_equal(got // 255, segment_array(synth_ckpt, a)[0][0])
            assert int(r.headers["X-Foreground"]) == int(got.sum() // 255)
            assert r.headers["X-Unlike-Training"].startswith("flagged=")
        unc = post(images[0], output="uncertainty")
        assert unc.status_code == 200 and np.asarray(Image.open(io.BytesIO(unc.content))).shape == (32, 32)
        assert "flagged=true" in post(photo(np.random.default_rng(0))).headers["X-Unlike-Training"]

        noise = np.random.default_rng(0).random((20, 20, 5)).astype(np.float32)
        volume = gzip.compress(nib.Nifti1Image(noise, np.eye(4)).to_bytes())
        bad = {  # what a client can get wrong, and the status and reason it gets back
            "a text file": (requests.post(f"{url}/segment?name=notes.txt", data=b"hello", timeout=60), 415,
                            "unknown kind of file"),
            "no name": (requests.post(f"{url}/segment", data=_png(images[0]), timeout=60), 400, "name the file"),
            "garbage as a PNG": (requests.post(f"{url}/segment?name=x.png", data=b"\x89PNG garbage", timeout=60),
                                 400, "truncated, corrupt or not an image"),
            "a grey image": (post(images[0][..., 0]), 400, "has 1 channel(s); this model takes 3"),
            "a truncated volume": (requests.post(f"{url}/segment?name=v.nii.gz", timeout=60, data=volume[: len(volume)
                                                 // 2]), 400, "the gzip stream is truncated"),
            "a huge body": (requests.post(f"{url}/segment?name=big.png", data=b"\0" * 300_000, timeout=60), 413,
                            "this server takes up to 200,000"),
        }
        for what, (r, status, reason) in bad.items():
            assert r.status_code == status and reason in r.json()["error"], (what, r.status_code, r.text)
        assert post(images[1]).status_code == 200  # the replica is still serving
    finally:
        stop()


def test_a_volume_comes_back_on_the_scan_grid(tmp_path: Path):
    """The NIfTI path of a replica, called directly (the HTTP layer is the test above's)."""
    root = tmp_path / "heart"
    vols = write_nifti_layout(root, n=4)
    ckpt = train_tiny(tmp_path / "run", ["data.format=nifti", f"data.path={root}", "data.size=8",
                                         "data.split=[0.5, 0.25, 0.25]", "data.context=1"])
    seg = Segmenter(str(ckpt), ServeOptions(max_upload_bytes=1_000_000))
    body = (root / "imagesTr" / "la_000.nii.gz").read_bytes()
    content, media, headers = asyncio.run(seg.answer(body, "la_000.nii.gz", "mask"))
    got = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    image = vols["la_000"][0]
    assert media == "application/gzip" and got.shape == image.shape
    np.testing.assert_allclose(got.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(got.dataobj), segment_array(ckpt, image, slice_axis=2)[0])
    with pytest.raises(RequestError, match="unknown kind of file"):
        asyncio.run(seg.answer(body, "la_000.vol", "mask"))
