"""Shared fixtures: tiny data sets written on the fly, and access to the real data in ../shared/data."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from rl_agents.config import load_config
from rl_agents.experiment.lifecycle import train
from tests import wait_points

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_T_MAX = 3  # steps of the tiny trained checkpoints (train_tiny)


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


@contextlib.contextmanager
def local_ray():
    """Ray on 127.0.0.1 only, 2 CPUs (fractional requests share them), shut down after: the one Ray of the tests that
    need a connected driver (tests that start a cluster of their own use tests/ray_head.py)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """:func:`local_ray` for every test of a module that asks for it (Ray's start is seconds)."""
    with local_ray():
        yield


@pytest.fixture
def ray_2cpu():
    """:func:`local_ray` for one test."""
    with local_ray():
        yield


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


# --- images of other modalities, for the "unlike the training data" check -----------------------------------------

def photo(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A colour scene: smooth gradients under a bright disc (endoscopy- or dermoscopy-like, nothing like an MRI)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.6 + 0.3 * xx, 0.3 + 0.4 * yy, 0.2 + 0.2 * xx * yy], -1)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < 0.04] += 0.3
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)


def speckle(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Ultrasound-like speckle: Rayleigh noise over a fan, repeated on three channels."""
    img = rng.rayleigh(40, (size, size))
    img[:, : size // 4] = 0
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)



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


# --- what the real data sets hold, counted from the files on disk (never hard-coded: the data sets grow) -----------

def lgg_on_disk(root: Path) -> dict:
    """Patients, slice pairs and slices with foreground of a kaggle_3m folder, read with Pillow alone.

    ``patients``: folders holding at least one ``*_mask.tif``; ``pairs``: ``*_mask.tif`` files; ``foreground``: masks
    with any non-zero pixel; ``solid``: masks holding a 5x5 all-foreground block (such a lesion survives any 2x
    bilinear downscale thresholded at 0.5, so it bounds the foreground count at half resolution from below).
    """
    return _lgg_on_disk(str(root))


@functools.lru_cache(maxsize=None)
def _lgg_on_disk(root: str) -> dict:
    masks = sorted(Path(root).glob("*/*_mask.tif"))
    fg = solid = 0
    for p in masks:
        m = np.asarray(Image.open(p)) > 0
        if m.ndim == 3:
            m = m.any(axis=-1)
        if m.any():
            fg += 1
            c = np.pad(m.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            box = c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]
            solid += bool((box == 25).any())
    return {"patients": sorted({p.parent.name for p in masks}), "pairs": len(masks), "foreground": fg, "solid": solid}


def kvasir_on_disk(root: Path) -> int:
    """Image files in ``images/`` with a same-stem file in ``masks/``."""
    suffixes = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif"}
    stems = lambda d: {f.stem for f in (root / d).iterdir() if f.is_file() and f.suffix.lower() in suffixes}  # noqa: E731
    return len(stems("images") & stems("masks"))


def assert_patient_split(train: set, val: set, test: set, patients: set, fractions=(0.7, 0.1, 0.2)) -> None:
    """A split by patient: disjoint, covering every patient, each positive fraction with >= 1 patient, and the val
    and test sizes within one patient of their fraction (rounding and the at-least-one rule)."""
    assert not (train & val or train & test or val & test), "a patient is in two splits"
    assert train | val | test == patients
    n = len(patients)
    for part, frac in zip((train, val, test), fractions):
        if frac > 0:
            assert len(part) >= 1
    assert abs(len(val) - fractions[1] * n) <= 1 and abs(len(test) - fractions[2] * n) <= 1, (len(val), len(test), n)


def interrupt_after_checkpoint(cmd: list[str], out: Path, cwd: Path, wait_s: float = 300,
                               exit_s: float = 180, sig: int | None = None) -> tuple[int, str]:
    """Run a training command (``[python, train.py, ...]``) and send Ctrl-C (SIGINT; or ``sig``) once it has written
    its first periodic ``out/checkpoints/last.pt`` and waits there; (exit code, output)."""

    # the child waits right after its first periodic checkpoint (tests/wait_points.py): the signal lands there, after
    # a known update, and the run cannot finish first. SIGINT back to its default in the child: a test run started in
    # the background (`cmd &`) inherits an ignored SIGINT, and a Python started with it ignored never raises
    # KeyboardInterrupt
    proc = subprocess.Popen([cmd[0], "-c", "import tests.wait_points as w; w.after_first_checkpoint()", *cmd[1:]],
                            cwd=cwd, env={**os.environ, "RAY_ADDRESS": ""}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    timer = threading.Timer(wait_s, proc.kill)  # a child that never gets to its checkpoint ends the wait
    timer.start()
    try:
        before = []
        for line in proc.stdout:  # blocks on the child's output: the line below is the event
            before.append(line)
            if line.startswith(wait_points.CHECKPOINT):
                break
        timer.cancel()
        assert before and before[-1].startswith(wait_points.CHECKPOINT), "no checkpoint:\n" + "".join(before)[-3000:]
        assert (out / "checkpoints" / "last.pt").exists()
        proc.send_signal(signal.SIGINT if sig is None else sig)
        rest, _ = proc.communicate(timeout=exit_s)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(before) + rest


def mlflow_ui(store: str, cwd: Path, start_s: float = 90):
    """`mlflow ui --backend-store-uri STORE --host 127.0.0.1` as the README starts it, on a free port; yields
    ``(base_url, port)`` once ``/health`` answers, and stops that server (and only it) afterwards."""
    return local_server(_mlflow_cli("ui", "--backend-store-uri", store), cwd, "/health", start_s)


def mlflow_model_server(model_uri: str, cwd: Path, start_s: float = 120):
    """`mlflow models serve -m MODEL --env-manager local --host 127.0.0.1` on a free port (the store from
    ``MLFLOW_TRACKING_URI``); yields ``(base_url, port)`` once ``/ping`` answers, and stops that server after."""
    return local_server(_mlflow_cli("models", "serve", "-m", model_uri, "--env-manager", "local"), cwd, "/ping",
                        start_s)


def _mlflow_cli(*args: str):
    return lambda port: [sys.executable, "-m", "mlflow", *args, "--host", "127.0.0.1", "--port", str(port)]


@contextlib.contextmanager
def local_server(argv_for, cwd: Path, health: str, start_s: float, env: dict | None = None):
    """The server ``argv_for(port)`` starts on a free port of 127.0.0.1, waited for until ``health`` answers 200
    (a server's start can only be watched for); yields ``(base_url, port)``, then stops that process and nothing
    else."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = argv_for(port)
    log_path = cwd / f"server_{port}.log"
    env = dict(env or os.environ)  # the interpreter's bin first: `mlflow models serve` execs `uvicorn` by name
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_s
            while True:
                try:
                    if urllib.request.urlopen(f"{base}{health}", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, log_path.read_text()[-2000:]
                assert time.time() < deadline, f"{argv[:4]} did not answer {health} within {start_s:g} s"
                time.sleep(0.5)
            yield base, port
        finally:
            with contextlib.suppress(ProcessLookupError):  # a server that failed to start has gone already
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server's workers go with it
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def reliability(request):
    """``reliability(row, fault, data_lost, recover_s, recovery)``: what a case of the reliability suite measured,
    for ``benchmarks/chaos.py --suite`` (which sets ``CHAOS_RECORD`` and adds pytest's verdict as "survived").
    ``row`` is the issue's row number, ``recover_s`` the seconds ``recovery`` names (None where nothing has to
    recover: the fault is refused outright). Outside chaos.py it records nothing."""

    rows: list[dict] = []

    def record(row: int, fault: str, data_lost: str, recover_s: float | None, recovery: str) -> None:
        rows.append({"row": row, "fault": fault, "data_lost": data_lost,
                     "recover_s": None if recover_s is None else round(recover_s, 4), "recovery": recovery})

    yield record
    if (path := os.environ.get("CHAOS_RECORD")) and rows:
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "test": request.node.nodeid}) + "\n")


def pytest_collection_modifyitems(config, items):
    """A test that takes the ``reliability`` fixture is a case of the reliability suite: marked so, for
    ``pytest -m reliability`` and ``benchmarks/chaos.py --suite``."""
    for item in items:
        if "reliability" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reliability)


# --- NIfTI volumes in the Medical Segmentation Decathlon layout -------------------------------------------------

SHAPE = (16, 12, 6)
AFFINE = np.diag([0.625, 0.625, 0.625, 1.0])


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_nifti_layout(root: Path, n: int = 2, shape: tuple = SHAPE, seed: int = 0) -> dict[str, tuple]:
    """MSD layout with ``n`` volumes ``la_<i>``: float32 images (negative, non-integer), uint8 labels holding a box of
    label 1 in slices 1..3 of the last axis and, in volume 0 only, a box of label 2 in slices 2..4.
    Returns ``{id: (image, label)}`` as written."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        image = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[3 + i : 9 + i, 2:7, 1:4] = 1
        if i == 0:
            label[11:14, 8:11, 2:5] = 2
        vid = f"la_{i:03d}"
        save_nifti(root / "imagesTr" / f"{vid}.nii.gz", image)
        save_nifti(root / "labelsTr" / f"{vid}.nii.gz", label)
        out[vid] = (image, label)
    return out


# --- a tiny trained checkpoint ----------------------------------------------------------------------------------

def train_tiny(out: Path, overrides: list[str]) -> Path:
    """Train 3 updates of a tiny PA3C (``TINY_T_MAX`` steps, batch 2) or, with ``model=unet``, U-Net into ``out``;
    return its ``best.pt``."""

    cfg = load_config(None, ["budget.max_updates=3", "budget.max_minutes=null", "eval.every=3",
                             "eval.checkpoint_every=3", f"pa3c.t_max={TINY_T_MAX}", "optim.batch_size=2", "num_workers=0",
                             "compute.threads=1", "tracking.mlflow=false", *overrides])
    train(cfg, out, quiet=True)
    return out / "checkpoints" / "best.pt"
