"""Faults of the cluster itself (reliability rows 2, 8 and 10): the head stopped mid-run, a node removed and added back,
a slow learner under fast workers. Each test runs its own Ray cluster on 127.0.0.1 (its own temp dir and ports) and
stops exactly that cluster; ``benchmarks/chaos.py`` runs the same cases longer and writes the figures.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_agents.engines.ray_a3c import EXIT_HEAD_LOST
from rl_agents.experiment.checkpoint import read_checkpoint
from tests.ray_head import BIN, RayHead

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


def _token_env() -> dict[str, str]:
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)


@pytest.mark.slow
def test_the_head_stopped_mid_run_ends_the_driver_clearly_and_resume_continues_on_a_new_cluster(tmp_path: Path):
    """Row 10: the head's processes are SIGKILLed mid-run (what ``ray stop --force`` does to them). The driver exits
    with status 75 and a message naming the head and the checkpoint within 10 s (its watchdog sees the GCS refuse
    connections; without it Ray ended the driver with status 1 and no message); ``last.pt`` is intact, and the same
    command with ``--resume`` on a new cluster ends after the planned updates."""
    env = _token_env()
    out = tmp_path / "run"
    sets = ["max_minutes=null", "epochs=8", "checkpoint_every=4", "eval_every=1000", "mlflow=false",
            "head_timeout_s=10"]
    cmd = [sys.executable, "train.py", "--config", str(SMOKE), *[x for a in sets for x in ("--set", a)],
           "--output-dir", str(out), "--quiet"]
    last = out / "checkpoints" / "last.pt"
    head = RayHead(env, ["--num-cpus=2"]).start()
    proc = None
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.1:{head.gcs}"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_for(last, proc, 240)
        assert last.exists(), "no checkpoint before the deadline"
        t_kill = time.time()
        os.killpg(head.proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate(timeout=120)
        exit_s = time.time() - t_kill
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        head.stop()
        head.cleanup()
    assert proc.returncode == EXIT_HEAD_LOST, stdout[-3000:]
    assert "head (GCS at" in stdout and "is stopped" in stdout and str(last) in stdout and "--resume" in stdout, \
        stdout[-3000:]
    assert exit_s < 10, f"the driver took {exit_s:.0f} s to exit"
    at = read_checkpoint(last).update
    planned = None
    head2 = RayHead(env, ["--num-cpus=2"]).start()
    try:
        r = subprocess.run([*cmd, "--resume"], cwd=ROOT, env={**env, "RAY_ADDRESS": f"127.0.0.1:{head2.gcs}"},
                           capture_output=True, text=True, timeout=300)
    finally:
        head2.stop()
        head2.cleanup()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json

    m = json.loads((out / "metrics.json").read_text())
    planned = 8 * -(-m["n_train"] // 4)  # smoke: batch_size 4
    assert 0 < at < planned and m["updates"] == planned and m["stopped_by"] == "epochs"


@pytest.mark.slow
def test_a_node_removed_and_added_back_training_goes_on_and_reaches_its_dice(tmp_path: Path, monkeypatch):
    """Row 2: a 3-node cluster on one machine (``ray.cluster_utils.Cluster``: a head and two 1-CPU nodes, each its own
    raylet on 127.0.0.1). Mid-run the node of a worker (not the learner's, not the head) is removed without grace, then
    added back 5 s later. The worker on it dies and cannot restart until the node is back; the other worker trains on;
    the run ends after the planned updates with validation Dice >= 0.6 on the easy synthetic set."""
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    from rl_agents.config import load_config
    from rl_agents.engines.ray_a3c import train_distributed

    # Ray turns "127.0.0.1" into the machine's address when a driver connects (resolve_ip_for_localhost), unless
    # multi-node clusters are off: then every node, and the driver, stay on loopback (as the fake-cluster test does)
    import ray._private.ray_constants as ray_constants

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the nodes' processes read it at start
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process imported Ray already
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: socket paths live under it
    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": temp}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    nodes = [cluster.add_node(**node_args) for _ in range(2)]
    events: list[tuple[str, float, int]] = []

    def remove_then_add(state):
        upd = state["stats"]["update"]
        if not events and upd >= 40 and all(state["worker_nodes"]):
            by_id = {n.node_id: n for n in nodes}
            victim = next(by_id[w] for w in state["worker_nodes"] if w in by_id and w != state["learner_node"])
            cluster.remove_node(victim, allow_graceful=False)
            nodes.remove(victim)
            events.append(("removed", time.time(), upd))
        elif len(events) == 1 and time.time() - events[0][1] >= 5:
            nodes.append(cluster.add_node(**node_args))
            events.append(("added", time.time(), upd))

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        # the recipe of test_training.py::test_pa3c_learns_on_easy_synthetic_data, on 2 Ray workers
        cfg = load_config(SMOKE, ["max_minutes=null", "batch_size=8", "epochs=80", "eval_every=80",
                                  "report_every_s=0.5", "worker_cpus=1", "learner_cpus=0.25", "mlflow=false"])
        m = train_distributed(cfg, tmp_path, quiet=True, on_report=remove_then_add)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert [e[0] for e in events] == ["removed", "added"], events
    assert m["workers/restarts"] >= 1
    assert m["updates"] == 80 * -(-m["n_train"] // 8) and m["stopped_by"] == "epochs"
    assert m["val/dice"] >= 0.6, m["val/dice"]
