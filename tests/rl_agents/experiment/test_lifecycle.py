"""One checkpoint format and one run lifecycle for every engine.

A checkpoint from any engine loads through the one reader and resumes under any other; crafted, damaged, old and
foreign files are refused or fall back as documented; the U-Net honours every budget; budgets stop PA3C runs; a dead
learner and used-up worker restarts end a Ray run with a clear error. Ray runs on 127.0.0.1 with 2 CPUs.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from rl_agents.config import load_config
from rl_agents.engines.ray_actors import Worker
from rl_agents.experiment.checkpoint import (
    CheckpointError,
    make_payload,
    previous_path,
    read_checkpoint,
    write_checkpoint,
)
from rl_agents.experiment.evaluate import evaluate_checkpoint
from rl_agents.experiment.lifecycle import train, train_distributed
from rl_agents.experiment.loaded import load_model
from tests.conftest import interrupt_after_checkpoint

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"
LOCAL = ["num_workers=0", "budget.max_minutes=null"]
RAY = ["budget.max_minutes=null"]


def _updates_per_epoch(m: dict, batch: int = 4) -> int:
    return -(-m["n_train"] // batch)


# --- the one format ---------------------------------------------------------------------------------------------
def test_checkpoint_is_atomic_keeps_the_previous_and_falls_back_when_damaged(tmp_path: Path, caplog, reliability):
    cfg = load_config(SMOKE, LOCAL)
    p = tmp_path / "ck" / "last.pt"
    write_checkpoint(p, make_payload("local", cfg, {"kind": "pixeldrl", "update": 1}, {"update": 1}))
    write_checkpoint(p, make_payload("local", cfg, {"kind": "pixeldrl", "update": 2}, {"update": 2}))
    assert read_checkpoint(p).update == 2 and read_checkpoint(previous_path(p)).update == 1
    assert not list(p.parent.glob(".*tmp*"))
    good = p.read_bytes()
    for damage in (b"torn", good[: len(good) // 2]):  # garbage, then a truncated file
        p.write_bytes(damage)
        assert read_checkpoint(p).update == 1  # the previous one, with a warning naming the damaged file
        assert str(p) in caplog.text

    # one flipped bit inside a weight: torch.load reads it without complaint, the stored SHA-256 does not match
    weights = {"kind": "pixeldrl", "update": 3, "model": {"w": torch.arange(4096, dtype=torch.float32)}}
    write_checkpoint(p, make_payload("local", cfg, {"kind": "pixeldrl", "update": 2}, {"update": 2}))
    write_checkpoint(p, make_payload("local", cfg, weights, {"update": 3}))
    raw = bytearray(p.read_bytes())
    at = raw.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[4000:4016])
    assert at > 0
    raw[at + 5] ^= 0x04
    p.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(p, weights_only=True)["agent"]["model"]["w"], torch.arange(4096.0))  # silent
    caplog.clear()
    t0 = time.perf_counter()
    assert read_checkpoint(p).update == 2  # refused as damaged: the previous checkpoint instead
    reliability(5, "a truncated, torn or bit-flipped last.pt", "the updates after last.prev.pt's (here update 3 of 3)",
                time.perf_counter() - t0, "the read that refuses last.pt and returns last.prev.pt")
    assert "SHA-256" in caplog.text and str(p) in caplog.text
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(p, fallback=False)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        read_checkpoint(tmp_path / "none.pt")


def test_a_checkpoint_without_its_digest_is_refused_unless_the_user_says(tmp_path: Path, monkeypatch, caplog):
    payload = make_payload("local", load_config(SMOKE, LOCAL), {"kind": "pixeldrl", "update": 4}, {"update": 4})
    stripped = tmp_path / "stripped.pt"
    torch.save(payload, stripped)  # as write_checkpoint would, less the sha256 it adds
    previous_path(stripped).write_bytes(b"")  # a .prev beside it is not used instead: the file was refused, not torn
    with pytest.raises(CheckpointError, match=r"stripped.pt carries no SHA-256 digest.*PIXELDRL_ALLOW_UNDIGESTED=1"):
        read_checkpoint(stripped)
    monkeypatch.setenv("PIXELDRL_ALLOW_UNDIGESTED", "1")
    assert read_checkpoint(stripped).update == 4 and "loaded unchecked" in caplog.text


def test_old_and_foreign_checkpoints_are_refused_with_a_clear_message(tmp_path: Path):
    old = tmp_path / "old.pt"  # what pixeldrl-mg 0.1 wrote: no format key
    torch.save({"kind": "pixeldrl", "config": {}, "model": {}, "state": {"update": 3}}, old)
    with pytest.raises(CheckpointError, match=r"older PixelDRL-MG \(format 1"):
        read_checkpoint(old, fallback=False)
    foreign = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="is not a PixelDRL-MG checkpoint"):
        read_checkpoint(foreign)
    future = tmp_path / "future.pt"
    payload = make_payload("local", load_config(SMOKE, LOCAL), {"kind": "pixeldrl"})
    torch.save({**payload, "version": 99}, future)
    with pytest.raises(CheckpointError, match="format version 99"):
        read_checkpoint(future)


class _Payload:
    """Unpickling this calls os.system: what an attacker's ``last.pt`` would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.timeout(960)  # three subprocesses of at most 300 s each
def test_a_crafted_checkpoint_never_runs_its_code(tmp_path: Path, reliability):
    """The exact attack: a ``last.pt`` whose pickle runs a shell command, under ``evaluate`` and ``--resume``."""
    run = tmp_path / "run"
    assert subprocess.run([sys.executable, "train.py", "--config", str(SMOKE), "--set", "num_workers=0",
                           "--set", "budget.epochs=1", "--set", "tracking.mlflow=false", "--output-dir", str(run), "--quiet"],
                          cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    marker = tmp_path / "pwned"
    last = run / "checkpoints" / "last.pt"
    shutil.copy(last, previous_path(last))  # a good last.prev.pt beside it: a refusal must not fall back to it
    torch.save({"format": "pixeldrl-mg-checkpoint", "version": 2, "agent": _Payload(marker)}, last)
    for cmd in (["pixeldrl", "evaluate", "--checkpoint", str(last), "--split", "val"],
                ["train.py", "--config", str(SMOKE), "--set", "num_workers=0", "--set", "budget.epochs=2",
                 "--set", "tracking.mlflow=false", "--output-dir", str(run), "--resume", "--quiet"]):
        exe = [str(Path(sys.executable).with_name("pixeldrl"))] if cmd[0] == "pixeldrl" else [sys.executable, cmd[0]]
        r = subprocess.run(exe + cmd[1:], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"refused checkpoint {last}" in " ".join(r.stderr.split()) and "could run code" in r.stderr
        assert not marker.exists(), "the crafted checkpoint ran its payload"
    reliability(6, "a checkpoint whose pickle runs a shell command, under evaluate and --resume",
                "none: refused (exit 2), the payload's marker file never created", None, "refused at load")


_LOADERS = {"torch.load", "torch.serialization.load"}
_PICKLE = {"pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "joblib.load"}


def unsafe_loads(source: str) -> list[str]:
    """Every call in ``source`` that unpickles without ``weights_only=True`` (a literal): torch.load and
    torch.serialization.load under any import alias, and plain pickle / dill / joblib loads, which have no safe mode."""
    return [text for target, safe, text in load_calls(source) if target in _PICKLE or not safe]


def load_calls(source: str) -> list[tuple[str, bool, str]]:
    """``(what it calls, weights_only=True given, the call)`` for every loading call in ``source``."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> dotted origin, from the imports
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"

    def dotted(f: ast.expr) -> str:
        if isinstance(f, ast.Name):
            return names.get(f.id, f.id)
        if isinstance(f, ast.Attribute):
            return f"{dotted(f.value)}.{f.attr}"
        return ""

    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or dotted(node.func) not in _LOADERS | _PICKLE:
            continue
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        calls.append((dotted(node.func), safe, f"line {node.lineno}: {ast.unparse(node)[:120]}"))
    return calls


def test_the_load_scan_finds_every_unsafe_form():
    """The scan below can fail: each way of loading unsafely is found, the safe call is not."""
    for snippet in ("import torch\ntorch.load(p)", "import torch\ntorch.load(p, weights_only=False)",
                    "import torch as T\nT.load(p)", "from torch import load\nload(p)",
                    "from torch import load as L\nL(p, weights_only=flag)",
                    "import torch\ntorch.serialization.load(p, weights_only=False)",
                    "from torch.serialization import load\nload(p)", "import pickle\npickle.loads(b)"):
        assert unsafe_loads(snippet), snippet
    assert unsafe_loads("import torch\ntorch.load(p, map_location='cpu', weights_only=True)") == []
    assert unsafe_loads("x = 'torch.load(p)'  # a mention in a string is not a call") == []


def test_every_torch_load_in_the_project_is_weights_only():
    files = [*(ROOT / "rl_agents").rglob("*.py"), *(ROOT / "pixelrl_env").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.py"), ROOT / "train.py"]
    bad = {f.relative_to(ROOT).as_posix(): b for f in files if (b := unsafe_loads(f.read_text()))}
    assert not bad, bad
    loaders = [f.name for f in files if load_calls(f.read_text())]
    assert loaders == ["checkpoint.py"]  # one reader of checkpoints (a mention in a string, as in mutation.py, is none)


# --- one lifecycle, every engine --------------------------------------------------------------------------------
def test_checkpoints_of_every_engine_load_through_the_one_reader(ray_local, tmp_path: Path):
    runs = {"local": train(load_config(SMOKE, LOCAL + ["budget.epochs=1"]), tmp_path / "local", quiet=True),
            "ray": train_distributed(load_config(SMOKE, RAY + ["budget.epochs=1"]), tmp_path / "ray", quiet=True),
            "supervised": train(load_config(SMOKE, LOCAL + ["model=unet", "budget.epochs=1"]), tmp_path / "sup", quiet=True)}
    for (engine, m), d in zip(runs.items(), ("local", "ray", "sup")):
        for name in ("last.pt", "best.pt"):
            ck = read_checkpoint(tmp_path / d / "checkpoints" / name, fallback=False)
            assert ck.engine == engine and ck.kind == ("unet" if engine == "supervised" else "pixeldrl")
            model, cfg = load_model(ck.path)
            assert sum(p.numel() for p in model.parameters()) == m["params"]
        assert read_checkpoint(tmp_path / d / "checkpoints" / "last.pt").update == m["updates"]
        # the final figures are the best checkpoint's, re-evaluated by `evaluate` the same way
        res = evaluate_checkpoint(tmp_path / d / "checkpoints" / "best.pt", split="val")
        assert res["n_images"] == m["n_val"] and m["engine"] == engine


def test_a_ray_checkpoint_resumes_in_one_process_and_back(ray_local, tmp_path: Path, caplog):
    out = tmp_path / "run"
    m1 = train_distributed(load_config(SMOKE, RAY + ["budget.epochs=1"]), out, quiet=True)
    per_epoch = _updates_per_epoch(m1)
    assert m1["updates"] == per_epoch
    w_ray = read_checkpoint(out / "checkpoints" / "last.pt").agent["model"]
    # Ray -> single process: continues from the Ray learner's update count, weights and optimiser
    m2 = train(load_config(SMOKE, LOCAL + ["budget.epochs=2"]), out, resume=True, quiet=True)
    assert m2["updates"] == 2 * per_epoch and m2["engine"] == "local"
    assert "reseeded" in caplog.text  # Ray keeps per-worker RNGs; the single process says it reseeded
    ck2 = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ck2.engine == "local" and ck2.run["pixel_agent_steps"] == m2["pixel_agent_steps"]
    assert any(not torch.equal(w_ray[k], ck2.agent["model"][k]) for k in w_ray)  # it trained on
    assert len(m2["history"]) > len(m1["history"])
    # single process -> Ray
    m3 = train_distributed(load_config(SMOKE, RAY + ["budget.epochs=3"]), out, resume=True, quiet=True)
    assert m3["updates"] == 3 * per_epoch and m3["engine"] == "ray"
    assert m3["pixel_agent_steps"] == m3["updates"] * 4 * 3 * 32 * 32  # counts carried over, none lost or doubled
    assert [h["update"] for h in m3["history"]] == sorted(h["update"] for h in m3["history"])


def test_budgets_stop_a_pa3c_run(tmp_path: Path):
    m = train(load_config(SMOKE, LOCAL + ["budget.epochs=50", "budget.max_updates=7", "eval.every=5"]), tmp_path / "a", quiet=True)
    assert m["updates"] == 7 and m["stopped_by"] == "max_updates" and [h["update"] for h in m["history"]] == [5, 7]
    m = train(load_config(SMOKE, LOCAL + ["budget.epochs=500", "budget.max_minutes=0.05", "eval.every=1000"]), tmp_path / "b",
              quiet=True)
    assert m["stopped_by"] == "max_minutes" and 3.0 <= m["wall_time_s"] < 30 and m["updates"] < 500 * 15
    assert m["history"][-1]["update"] == m["updates"]  # evaluated where it stopped
    m = train(load_config(SMOKE, LOCAL + ["budget.epochs=50", "eval.every=2", "budget.stop_at_val_dice=0.0"]), tmp_path / "c",
              quiet=True)
    assert m["stopped_by"] == "stop_at_val_dice" and m["updates"] == 2


def test_the_unet_honours_every_budget(tmp_path: Path):
    base = LOCAL + ["model=unet", "eval.every=2"]
    m = train(load_config(SMOKE, base + ["budget.epochs=50", "budget.max_updates=5"]), tmp_path / "a", quiet=True)
    assert m["updates"] == 5 and m["stopped_by"] == "max_updates" and m["engine"] == "supervised"
    m = train(load_config(SMOKE, base + ["budget.epochs=50", "budget.stop_at_val_dice=0.0"]), tmp_path / "b", quiet=True)
    assert m["updates"] == 2 and m["stopped_by"] == "stop_at_val_dice"
    m = train(load_config(SMOKE, base + ["budget.epochs=5000", "budget.max_minutes=0.05", "eval.every=100000"]), tmp_path / "c",
              quiet=True)
    assert m["stopped_by"] == "max_minutes" and m["wall_time_s"] < 30 and m["updates"] < 5000
    # resume continues the count and the sampler state
    m2 = train(load_config(SMOKE, base + ["budget.epochs=50", "budget.max_updates=9"]), tmp_path / "a", resume=True, quiet=True)
    assert m2["updates"] == 9 and [h["update"] for h in m2["history"]] == [2, 4, 5, 6, 8, 9]


def test_the_unet_learns_the_easy_synthetic_task(tmp_path: Path):
    """A quality floor for the baseline: 100 updates on 32 px easy synthetic data reach val Dice >= 0.4 (0.50
    measured; the all-background start scores 0; the smoke set's blobs are small at 32 px)."""
    m = train(load_config(SMOKE, LOCAL + ["model=unet", "budget.epochs=1000", "budget.max_updates=100", "eval.every=25",
                                          "optim.batch_size=8", "optim.lr=3e-3"]), tmp_path / "u", quiet=True)
    assert m["history"][0]["val/dice"] < 0.2 and m["val/dice"] >= 0.4, m["history"]


def test_ctrl_c_inside_a_checkpoint_write_waits_for_the_whole_file(tmp_path: Path, monkeypatch):
    """Ctrl-C delivered at a known moment, in the middle of torch.save: the file is finished and renamed into place,
    then the KeyboardInterrupt is raised (without the deferral it would cut the write and leave no new file)."""
    real_save = torch.save

    def save_with_ctrl_c(obj, f, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, mid-write
        real_save(obj, f, *args, **kwargs)

    p = tmp_path / "last.pt"
    cfg = load_config(SMOKE, LOCAL)
    write_checkpoint(p, make_payload("local", cfg, {"kind": "pixeldrl", "update": 6}, {"update": 6}))
    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(p, make_payload("local", cfg, {"kind": "pixeldrl", "update": 7}, {"update": 7}))
    assert read_checkpoint(p, fallback=False).update == 7 and read_checkpoint(previous_path(p)).update == 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_ctrl_c_stops_a_unet_run_with_a_checkpoint(tmp_path: Path):
    out = tmp_path / "run"
    code, stdout = interrupt_after_checkpoint(
        [sys.executable, "train.py", "--config", str(SMOKE), "--set", "model=unet", "--set", "num_workers=0",
         "--set", "budget.epochs=100000", "--set", "eval.checkpoint_every=2", "--set", "tracking.mlflow=false", "--output-dir", str(out)],
        out, ROOT, wait_s=240, exit_s=120)
    assert code == 130, stdout[-3000:]
    assert "stopped with a checkpoint" in stdout
    ck = read_checkpoint(out / "checkpoints" / "last.pt")
    assert ck.kind == "unet" and ck.run["update"] >= 2 and ck.agent["optimizer"] is not None


# --- Ray failures that end a run ----------------------------------------------------------------------------------
def test_a_dead_learner_past_its_restore_limit_ends_the_run_with_a_clear_error(ray_local, tmp_path: Path,
                                                                              reliability):
    cfg = load_config(SMOKE, RAY + ["budget.epochs=500", "tracking.report_every_s=0.5", "eval.checkpoint_every=2",
                                    "ray.learner_max_restarts=0"])
    killed = []

    def kill_learner(state):
        if not killed and state["stats"]["update"] >= 4:
            ray.kill(state["learner"], no_restart=True)
            killed.append(state["stats"]["update"])

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"learner actor died .*learner_max_restarts=0.* continue with --resume"):
        train_distributed(cfg, tmp_path, quiet=True, on_report=kill_learner)
    assert killed and time.perf_counter() - t0 < 180
    last = read_checkpoint(tmp_path / "checkpoints" / "last.pt").update
    assert last >= 2  # intact, resumable
    reliability(3, "the learner killed with learner_max_restarts=0",
                f"the updates after last.pt (killed at about update {killed[0]}, last.pt at {last}); last.pt intact",
                None, "not meant to: the run ends with a clear error")


def test_worker_restarts_used_up_end_the_run_with_a_clear_error(ray_local, tmp_path: Path, reliability):
    class CrashingWorker(Worker):
        def work(self, learner, n_rollouts):
            os._exit(1)  # the process dies every time, as a segfault or OOM kill would

    cfg = load_config(SMOKE, RAY + ["ray.worker_max_restarts=1"])
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"worker \d is dead after 1 restart\(s\) \(worker_max_restarts=1\)"):
        train_distributed(cfg, tmp_path, quiet=True, worker_cls=CrashingWorker)
    wall = time.perf_counter() - t0
    assert wall < 120  # a clear end, not an endless restart loop
    reliability(1, "a worker that crashes every time (worker_max_restarts=1)", "none: no update was made", None,
                f"not meant to: a clear error after {wall:.0f} s, no restart loop")


def test_the_architecture_keeps_one_place_for_each_concern():
    """MLflow is written by tracking.py only, Ray is started by ray_runtime.connect only, the engine is chosen by
    lifecycle.make_engine only, gradients are applied by the agents only; pixelrl_env imports no Ray or rl_agents."""
    src = {f.relative_to(ROOT).as_posix(): f.read_text() for f in (ROOT / "rl_agents").rglob("*.py")}
    env_src = {f.relative_to(ROOT).as_posix(): f.read_text() for f in (ROOT / "pixelrl_env").rglob("*.py")}

    def where(pattern: str, files=src) -> set[str]:
        return {name for name, text in files.items() if re.search(pattern, text, re.M)}

    assert where(r"^\s*(import mlflow|from mlflow)") == {"rl_agents/experiment/tracking.py"}
    assert where(r"ray\.init\(") == {"rl_agents/engines/ray_runtime.py"}
    assert where(r"(LocalEngine|RayA3CEngine|SupervisedEngine|HogwildEngine|RLlibAPPOEngine)\(cfg|ENGINES\[") == {
        "rl_agents/experiment/lifecycle.py"}  # the registry (train_distributed's hooks go through it too)
    assert where(r"\.step\(\)\s*$") - {"rl_agents/experiment/lifecycle.py"} <= {
        "rl_agents/algo/agent.py", "rl_agents/engines/supervised.py"}  # optimiser steps live in the agents
    assert where(r"clip_grad_norm_") == {"rl_agents/algo/agent.py", "rl_agents/engines/supervised.py"}
    assert not where(r"^\s*(import ray|from ray|from rl_agents|import torch\.optim)", env_src)


def test_hogwild_trains_under_the_lifecycle_and_hands_over_to_one_process(tmp_path: Path):
    m = train(load_config(SMOKE, LOCAL + ["engine=hogwild", "num_workers=2", "budget.epochs=2"]), tmp_path, quiet=True)
    planned = 2 * _updates_per_epoch(m)
    assert m["engine"] == "hogwild" and m["updates"] == planned and m["stopped_by"] == "epochs"
    assert m["pixel_agent_steps"] == planned * 4 * 3 * 32 * 32 and m["history"][-1]["update"] == planned
    ck = read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck.engine == "hogwild" and ck.update == planned and ck.agent["optimizer"] is None
    m2 = train(load_config(SMOKE, LOCAL + ["budget.epochs=3"]), tmp_path, resume=True, quiet=True)  # one process goes on
    assert m2["updates"] == 3 * _updates_per_epoch(m) and m2["engine"] == "local"
    with pytest.raises(ValueError, match="engine hogwild needs num_workers >= 1"):
        load_config(SMOKE, LOCAL + ["engine=hogwild"])


def test_a_write_that_runs_out_of_space_keeps_the_previous_checkpoint(tmp_path: Path, reliability):
    """The kernel refuses the write midway (a file-size limit stands in for a full disk: the same failed write(2),
    without mounting anything): a clear error naming the file, the checkpoint already there intact, no debris."""

    script = (
        "import resource, signal, sys, torch\n"
        "from rl_agents.experiment.checkpoint import CheckpointError, write_checkpoint\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a killed process\n"
        "write_checkpoint(sys.argv[1], {'w': torch.ones(10)})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "try:\n"
        "    write_checkpoint(sys.argv[1], {'w': torch.zeros(1_000_000)})\n"
        "except CheckpointError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    ckpt = tmp_path / "last.pt"
    r = subprocess.run([sys.executable, "-c", script, str(ckpt)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert str(ckpt) in r.stdout and "is left as it was" in r.stdout and "Traceback" not in r.stderr
    assert torch.load(ckpt, weights_only=True)["w"].tolist() == [1.0] * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file, no .prev.pt of a failure
    reliability(14, "the disk full during a checkpoint write (RLIMIT_FSIZE: the same failed write(2))",
                "the checkpoint being written; the previous one byte-identical, no debris", None,
                "a clear error naming the file")


def test_a_driver_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path: Path, reliability):
    """SIGKILL gives no chance to save: the run resumes from the last periodic checkpoint and (same seed, RNG states in
    the checkpoint) ends at the uninterrupted run's result, after the same number of updates. The model has learnt
    (Dice 0.71 after 168 updates; it is 0 at 84), so a resume that lost any of its state would not land there.
    Every run is a fresh process with one thread: learning this steep amplifies a last-bit difference (another thread
    count, or a setting an earlier test left in this process) into a different Dice."""

    args = LOCAL + ["budget.epochs=24", "eval.checkpoint_every=8", "eval.every=56", "tracking.mlflow=false",
                    "compute.threads=1"]

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "train.py", "--config", str(SMOKE), *[x for a in args for x in ("--set", a)],
                "--output-dir", str(out), "--quiet", *extra]

    def metrics(out: Path) -> dict:
        return json.loads((out / "metrics.json").read_text())

    subprocess.run(cmd(tmp_path / "full"), cwd=ROOT, check=True, capture_output=True, timeout=600)
    full = metrics(tmp_path / "full")
    assert full["val/dice"] > 0.5, full["val/dice"]  # a model that has learnt, or the comparison proves nothing
    out = tmp_path / "killed"
    code, _ = interrupt_after_checkpoint(cmd(out), out, ROOT, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = read_checkpoint(out / "checkpoints" / "last.pt").update
    assert killed_at == 8  # the first periodic checkpoint: the child waits there for the signal
    t0 = time.perf_counter()
    subprocess.run(cmd(out, "--resume"), cwd=ROOT, check=True, capture_output=True, timeout=600)
    resume_s = time.perf_counter() - t0
    resumed = metrics(out)
    assert resumed["updates"] == full["updates"]
    # the same process state, threads and seed: the same arithmetic (measured: equal); a resume that lost the RNG
    # streams or the weights ends elsewhere (benchmarks/mutation.py)
    assert resumed["val/dice"] == pytest.approx(full["val/dice"], abs=1e-6)
    reliability(4, "the driver SIGKILLed, then --resume (one process)",
                f"the updates after last.pt (update {killed_at}), redone; the result: Dice "
                f"{resumed['val/dice']:.4f} against {full['val/dice']:.4f} uninterrupted", resume_s,
                f"--resume (a new process) to the planned {resumed['updates']} updates")
