"""Autoscaling on this machine with Ray's fake multi-node provider (``cluster/fake_multinode.yaml``).

A head with 1 CPU and no GPU; a job that wants a GPU learner and four 1-CPU workers. The autoscaler must bring up
the `gpu_learner` node (the learner runs there) and `cpu_worker` nodes (workers run there), training must finish,
and after the job the idle nodes must be removed. Everything binds to 127.0.0.1. The cluster is the test's own (its
temp dir and ports, see ``tests/ray_head.py``) and is stopped by signalling its process group, never with
`ray stop`; the fake nodes' processes, which the autoscaler starts, must be gone too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.ray_head import BIN, RAY, RayHead

ROOT = Path(__file__).resolve().parents[2]

# subprocess budgets (s); the test's timeout is larger than their sum
START, STATUS, SUBMIT, SCALE_DOWN, STOP = 180, 30, 480, 180, 100


def _active_nodes(gcs: int, env: dict, timeout: float = STATUS) -> dict[str, int]:
    """``{node type: count}`` from the "Active:" block of ``ray status``."""
    out = subprocess.run(RAY + ["status", f"--address=127.0.0.1:{gcs}"], env=env, capture_output=True, text=True,
                         timeout=timeout).stdout
    block = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+(\S+)", block, re.M)}


@pytest.mark.timeout(START + 2 * STATUS + SUBMIT + SCALE_DOWN + STOP + 60)
def test_fake_cluster_scales_up_for_a_gpu_learner_and_workers_then_down(tmp_path: Path):
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # fake nodes bind to 127.0.0.1, like the head
           # token auth on (Ray's default for `ray start`); fake nodes, `ray status` and `ray job` share the token
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    conf = tmp_path / "fake_multinode.yaml"
    head = RayHead(env, ["--num-cpus=1", "--num-gpus=0", f"--autoscaling-config={conf}"])
    cfg = yaml.safe_load((ROOT / "cluster" / "fake_multinode.yaml").read_text())
    cfg["provider"]["gcs_address"] = f"127.0.0.1:{head.gcs}"
    conf.write_text(yaml.safe_dump(cfg))
    env = head.env
    try:
        head.start(timeout=START)
        assert _active_nodes(head.gcs, env) == {"ray.head.default": 1}  # nothing but the head before the job
        out = tmp_path / "run"
        t0 = time.time()
        job = subprocess.run(
            # No --working-dir: every fake node shares this machine's session directory, and a node that starts
            # up clears the unpacked working directories that running processes use as their cwd (torch then fails
            # to load). The project is installed in this venv, so the job runs the checkout by absolute path.
            RAY + ["job", "submit", "--address", head.dashboard_url, "--",
                   sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tune_configs" / "smoke.yaml"),
                   "--output-dir", str(out), "--quiet",
                   "--set", "num_workers=4", "--set", "ray.worker_cpus=1", "--set", "ray.learner_cpus=1",
                   "--set", "ray.learner_gpus=1", "--set", "budget.max_updates=16", "--set", "budget.epochs=1000",
                   "--set", "tracking.mlflow=false"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUBMIT)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["updates"] >= 16 and metrics["learner_device"] == "cpu"  # a fake GPU: torch sees none
        nodes = metrics["cluster/nodes"]
        learner_node = nodes[metrics["cluster/learner_node"]]
        assert learner_node["resources"].get("GPU") == 1  # the scaled-up gpu_learner node (the head has no GPU)
        worker_node_cpus = {nodes[n]["resources"].get("CPU") for n in metrics["cluster/worker_nodes"]}
        assert 2 in worker_node_cpus  # at least one worker ran on a scaled-up cpu_worker node (2 CPUs; the head has 1)
        assert len(set(metrics["cluster/worker_nodes"])) >= 2
        t_job = time.time() - t0
        deadline = time.time() + SCALE_DOWN  # idle_timeout_minutes 0.25, then the autoscaler's next pass
        active = _active_nodes(head.gcs, env)
        while active != {"ray.head.default": 1} and time.time() < deadline - 3:
            time.sleep(3)
            active = _active_nodes(head.gcs, env, timeout=max(1.0, min(STATUS, deadline - time.time())))
        assert active == {"ray.head.default": 1}, f"idle nodes were not removed: {active}"
        print(f"job {t_job:.0f} s on {len(nodes)} nodes ({[nodes[n]['resources'].get('CPU') for n in nodes]} CPUs); "
              f"learner on a node with GPU; idle nodes removed {time.time() - t0 - t_job:.0f} s after the job")
    finally:
        problems = head.shutdown(timeout=STOP - 40)
    assert not problems, problems
