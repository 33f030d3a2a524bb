"""The Ray runtime's own guards that need no cluster: the token file made private when the project connects."""

from __future__ import annotations

import stat
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
