"""The Ray runtime's own guards that need no cluster: the token file made private when the project connects."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from rl_agents.engines import ray_runtime


def test_connecting_makes_the_token_file_readable_by_its_owner_only(tmp_path: Path, monkeypatch):
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0" * 64)
    token.chmod(0o644)  # as Ray 2.60 writes it: anyone on the machine could read the cluster's key
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = []
    monkeypatch.setattr(ray_runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_runtime.ray, "init", lambda **kw: started.append(kw))
    assert ray_runtime.connect(None) is True and started
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))  # where the user keeps it instead
    (tmp_path / "elsewhere").write_text("1" * 64)
    (tmp_path / "elsewhere").chmod(0o640)
    assert ray_runtime.tighten_token_file() == tmp_path / "elsewhere"
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o600
    assert ray_runtime.tighten_token_file(tmp_path / "missing") is None


WATCHED = """
import socket, sys, time
from pathlib import Path
import ray
from rl_agents.engines.ray_runtime import HeadWatchdog
ray.is_initialized = lambda: True  # as in a connected driver, without starting a cluster
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
host, port = server.getsockname()
HeadWatchdog(f"{host}:{port}", timeout_s=30, checkpoint=Path(sys.argv[1]))
time.sleep(1.0)  # the head answers for a while
server.close()  # then it is gone: connections are refused
time.sleep(30)
print("still running")
"""


def test_the_head_watchdog_ends_the_driver_with_status_75_naming_the_head_and_checkpoint(tmp_path: Path):
    """Deterministic: a stand-in GCS that stops listening (the chaos suite's whole-head kill races Ray's own exit of
    the driver; this checks the watchdog alone, every time)."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    r = subprocess.run([sys.executable, "-c", WATCHED, str(ckpt)], capture_output=True, text=True, timeout=60)
    assert r.returncode == ray_runtime.EXIT_HEAD_LOST == 75, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "head (GCS at 127.0.0.1:" in msg and "is stopped (connection refused)" in msg and str(ckpt) in msg
    assert "--resume" in msg and "still running" not in r.stdout
