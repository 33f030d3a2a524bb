"""`ray job submit` end to end: a local Ray cluster on 127.0.0.1 with token authentication, the smoke config
submitted with ``--working-dir .``, status SUCCEEDED (`ray job status`), a checkpoint and metrics written; the cluster is always stopped."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_smoke(tmp_path: Path):
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           # token auth on, the same for `ray start` and `ray job submit` (as the cluster configs use it)
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray = [str(Path(bin_dir) / "ray")]
    gcs, dash = _free_port(), _free_port()
    subprocess.run(ray + ["stop", "--force"], env=env, capture_output=True, timeout=120)
    try:
        start = subprocess.run(
            ray + ["start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
                   "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                   "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stdout + start.stderr
        out = tmp_path / "run"
        job_id = "pixeldrl-smoke-" + secrets.token_hex(4)
        job = subprocess.run(
            ray + ["job", "submit", "--address", f"http://127.0.0.1:{dash}", "--submission-id", job_id,
                   "--working-dir", str(ROOT), "--",
                   "python", "train.py", "--config", "tune_configs/smoke.yaml", "--output-dir", str(out), "--quiet"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        status = subprocess.run(ray + ["job", "status", "--address", f"http://127.0.0.1:{dash}", job_id],
                                env=env, capture_output=True, text=True, timeout=120)
        assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr  # status SUCCEEDED
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["workers/n"] == 2 and metrics["updates"] >= 1 and "val/dice" in metrics
        assert metrics["perf/updates_per_s"] > 0
        assert (out / "checkpoints" / "last.pt").exists() and (out / "checkpoints" / "best.pt").exists()
    finally:
        subprocess.run(ray + ["stop", "--force"], env=env, capture_output=True, timeout=120)
