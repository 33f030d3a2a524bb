"""The GPU path kept honest on a CPU: precision/layout/compile settings, the GPU suite's dry run, and the scripts that
prepare and run it on a GPU machine with no network (benchmarks/gpu_prepare.py, benchmarks/gpu_run.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_agents.algo.accel import Accel
from rl_agents.algo.agent import PA3CAgent, build_network, make_train_env
from rl_agents.cli import main as cli
from rl_agents.config import load_config
from pixelrl_env.parquet import iter_parquet

from benchmarks import gpu_prepare

from tests.conftest import write_lgg_layout

ROOT = Path(__file__).resolve().parents[2]


def _data(n=4, size=16):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, 4:12, 5:11] = 1
    return (0.5 * masks + 0.5 * rng.random((n, size, size))).astype(np.float32)[:, None], masks


@pytest.mark.parametrize("overrides", [["compute.precision=bf16"], ["compute.channels_last=true"], ["compute.compile=aot_eager"],
                                       ["compute.precision=bf16", "compute.channels_last=true", "compute.compile=aot_eager"]])
def test_accelerated_agent_matches_plain_fp32_on_cpu(overrides):
    """bf16 autocast, NHWC and torch.compile change how the network runs, not what it learns: the same seed gives
    the same loss (bf16: close), finite gradients for every parameter, and one optimiser step moves the same
    parameters that plain fp32 moves."""
    images, masks = _data()
    out = {}
    for name, extra in (("plain", ["compute.precision=fp32"]), ("accel", overrides)):
        cfg = load_config(None, ["optim.batch_size=2", "pa3c.t_max=3", "compute.device=cpu", *extra])
        torch.manual_seed(0)
        agent = PA3CAgent(cfg, 1, len(images), "cpu")
        before = [p.detach().clone() for p in agent.model.parameters()]
        env = make_train_env(cfg, images, masks, seed=0)
        grads, stats = agent.compute_gradients(env, torch.Generator().manual_seed(0))
        assert all(torch.isfinite(g).all() for g in grads)
        agent.apply_gradients(grads)
        moved = [not torch.equal(a, p) for a, p in zip(before, agent.model.parameters())]
        out[name] = (stats["losses/total"], moved, agent)
    tol = 5e-2 if "compute.precision=bf16" in overrides else 1e-4
    assert out["accel"][0] == pytest.approx(out["plain"][0], rel=tol, abs=tol)
    assert out["accel"][1] == out["plain"][1] and sum(out["plain"][1]) > 0
    agent = out["accel"][2]
    if "compute.compile=aot_eager" in overrides:  # the compiled wrapper trains the very parameters the checkpoint saves
        assert agent.net is not agent.model
        assert [id(p) for p in agent.net.parameters()] == [id(p) for p in agent.model.parameters()]
    state = agent.state_dict()  # checkpoints never hold compile prefixes or non-CPU tensors
    assert not any(k.startswith("_orig_mod") for k in state["model"])


def test_channels_last_network_gives_the_same_outputs():
    cfg = load_config(None, [])
    torch.manual_seed(0)
    net = build_network(cfg, 1)
    x = torch.rand(2, 1, 16, 16)
    ref = net(x)
    accel = Accel(torch.device("cpu"), "fp32", channels_last=True)
    net, fwd = accel.prepare(net)
    xc = accel.to_device(x.numpy(), image=True)
    assert xc.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ref, fwd(xc)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_to_device_on_cpu_does_not_copy_and_bad_precision_is_named():
    arr = np.ones((2, 3), np.float32)
    t = Accel(torch.device("cpu")).to_device(arr)
    assert t.data_ptr() == arr.__array_interface__["data"][0]
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp8'"):
        load_config(None, ["compute.precision=fp8"])
    with pytest.raises(ValueError, match="hogwild .* compute.channels_last"):
        load_config(None, ["engine=hogwild", "num_workers=2", "compute.channels_last=true"])


def test_gpu_suite_dry_run_measures_every_part(tmp_path: Path):
    """The whole suite at toy sizes on the CPU: every part runs its real code path (bf16 autocast, channels_last,
    torch.compile tracing, the training lifecycle, greedy inference, Ray around a learner) and writes its JSON."""
    out = tmp_path / "dry"
    budgets = ["--budget", "throughput=300", "--budget", "quality=120", "--budget", "latency=120",
               "--budget", "ray=120"]  # generous: a slow CI machine must not skip rows
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--dry-run", "--out", str(out),
                        *budgets], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "gpu_suite.json").read_text())
    assert res["dry_run"] and res["device"] == "cpu"
    parts = res["parts"]
    assert {p: parts[p]["status"] for p in parts} == {p: "ok" for p in ("peak", "throughput", "quality", "latency",
                                                                         "ray")}
    assert parts["peak"]["bf16_tflop_per_s"] > 0
    rows = parts["throughput"]["rows"]
    assert {r["mode"] for r in rows} == {"fp32", "tf32", "bf16", "bf16+channels_last", "bf16+compile"}
    assert all(r["status"] == "ok" and r["image_steps_per_s"] > 0 and r["train_tflop_per_s"] > 0 for r in rows)
    small = next(r for r in rows if r["model"] == "small" and r["mode"] == "fp32")
    assert small["pixel_agent_steps_per_s"] == pytest.approx(small["image_steps_per_s"] * 32 * 32)
    assert 0 <= small["env_fraction"] <= 1
    q = {r["model"]: r for r in parts["quality"]["rows"]}
    assert set(q) == {"small", "unet"} and all(0 <= q[m]["val/dice"] <= 1 and q[m]["updates"] >= 1 for m in q)
    once = next(r for r in rows if r["model"] == "small-once" and r["mode"] == "fp32")  # issue 23's options
    assert once["train_tflop_per_s"] > 0 and once["image_steps_per_s"] > 0
    lat = parts["latency"]["rows"]
    assert {r["model"] for r in lat} == {"paper", "small", "small-once", "unet"}
    assert all(r["ms_per_call"] > 0 for r in lat)
    ray_rows = parts["ray"]["rows"]
    assert ray_rows and ray_rows[0]["status"] == "ok" and ray_rows[0]["updates_per_s"] > 0
    assert ray_rows[0]["per_worker_efficiency"] == pytest.approx(1.0)
    assert "part ray" in (out / "gpu_suite.log").read_text()


def test_prepare_data_copy_keeps_channels_and_foreground_only(tmp_path: Path, capsys):
    src = write_lgg_layout(tmp_path / "lgg", patients=2, slices=3, size=24)  # each patient's first slice is empty
    out = tmp_path / "pq"
    assert cli(["prepare-data", str(src), str(out), "--format", "lgg", "--channels", "1", "--foreground-only"]) == 0
    assert "wrote 4 slices of 2 groups" in capsys.readouterr().out
    rows = list(iter_parquet(str(out)))
    assert all(s.image.shape == (24, 24, 1) and s.mask.any() for s in rows)
    assert cli(["prepare-data", str(src), str(tmp_path / "bad"), "--format", "lgg", "--channels", "5"]) == 2
    assert "--channels [5] but the image has 3 channel(s)" in capsys.readouterr().err


def _dummy_wheel(folder: Path, dist: str, pkg: str, pad: int = 0) -> Path:
    """A minimal installable wheel of distribution ``dist`` holding module ``pkg`` (``pad`` random bytes make it big
    enough to split)."""
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{pkg}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{pkg}/blob.bin", np.random.default_rng(0).bytes(pad))
        z.writestr(f"{dist}-0.1.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{dist}-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        z.writestr(f"{dist}-0.1.dist-info/RECORD", "")
    return path


def test_gpu_prepare_splits_within_the_limit_and_gpu_run_joins_installs_and_runs(tmp_path: Path, monkeypatch):
    """The two-command transfer end to end on this machine: prepare splits the (here: stand-in) Ray wheel under a
    limit, ``gpu_run.sh stage`` keeps part 1, ``gpu_run.sh run`` joins and checks it, installs every wheel with pip
    --no-index into the target, and runs the suite; a corrupted part is refused and the suite still runs."""
    gpu = tmp_path / "gpu"
    dl = gpu / "download"
    dl.mkdir(parents=True)
    wheel = _dummy_wheel(dl, "ray", "pxray_standin", pad=40_000)  # named as Ray's wheel; no `ray` module inside
    _dummy_wheel(dl, "pxdep", "pxdep")
    monkeypatch.setattr(gpu_prepare, "LIMIT", gpu_prepare.tree_bytes() + gpu_prepare.MARGIN + 10_000)
    sizes = gpu_prepare.prepare(gpu, lgg=None, fetch=False)
    part1, part2 = gpu / "carry1" / "ray.part1", gpu / "carry2" / "ray.part2"
    assert part1.stat().st_size == 10_000 and part1.stat().st_size + part2.stat().st_size == wheel.stat().st_size
    assert sizes["call1"] == sizes["tree"] + 10_000 and sizes["call2"] <= gpu_prepare.LIMIT
    assert [w.name for w in (gpu / "carry2" / "wheels").iterdir()] == ["pxdep-0.1-py3-none-any.whl"]

    env = {**os.environ, "GPU_DIR": str(gpu), "GPU_STAGE": str(tmp_path / "stage"), "GPU_SITE": str(tmp_path / "site"),
           "OUT": str(tmp_path / "out"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = str(ROOT / "benchmarks" / "gpu_run.sh")
    r = subprocess.run(["bash", script, "stage"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / "stage" / "ray.part1").exists(), r.stderr
    r = subprocess.run(["bash", script, "run", "--dry-run", "--parts", "peak"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "ray-0.1-py3-none-any.whl: OK" in r.stdout
    assert (tmp_path / "site" / "pxray_standin" / "__init__.py").exists()
    assert (tmp_path / "site" / "pxdep" / "__init__.py").exists()
    assert json.loads((tmp_path / "out" / "gpu_suite.json").read_text())["parts"]["peak"]["status"] == "ok"

    part2.write_bytes(b"x" + part2.read_bytes()[1:])
    r = subprocess.run(["bash", script, "run", "--dry-run", "--parts", "peak"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "do not join to the expected wheel" in r.stderr


def test_suite_and_training_need_no_optional_package(tmp_path: Path):
    """The GPU machine has no MLflow, PettingZoo or Optuna, and Ray only when its wheel arrived whole: training and
    the suite import none of them (the Ray part says it was skipped)."""
    code = f"""
import sys
for name in ("mlflow", "pettingzoo", "optuna", "ray"):
    sys.modules[name] = None  # any import of them raises ImportError
import json
from benchmarks import gpu_suite
from rl_agents.config import load_config
from rl_agents.experiment.lifecycle import train
cfg = load_config(None, ["budget.max_updates=1", "optim.batch_size=2", "pa3c.t_max=2", "data.size=16", "data.synthetic.size=16",
                         "data.synthetic.n_patients=6", "eval.max_images=4", "tracking.mlflow=false"])
print("dice", train(cfg, {str(tmp_path / 'run')!r}, quiet=True)["val/dice"])
rc = gpu_suite.main(["--dry-run", "--out", {str(tmp_path / 'out')!r}, "--parts", "peak,ray"])
res = json.loads(open({str(tmp_path / 'out' / 'gpu_suite.json')!r}).read())
print("ray", res["parts"]["ray"]["status"], res["parts"]["ray"]["skipped"], rc)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ray ok ray is not importable here 0" in r.stdout
    assert 0.0 <= float(r.stdout.split("dice ")[1].split()[0]) <= 1.0
