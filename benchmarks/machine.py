"""Names the machine a benchmark ran on (benchmarks are run as scripts, so this sits beside them)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def describe() -> dict:
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def command() -> str:
    """The invocation that produced a result, as typed from the repository root (so that it can be re-run as is)."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parent.parent
    name = script.relative_to(root).as_posix() if script.is_relative_to(root) else sys.argv[0]
    return shlex.join(["python", name, *sys.argv[1:]])


def write_json(path: str | Path, obj: object, indent: int = 2) -> None:
    """``obj`` as JSON at ``path``, its folder made if need be. Written beside it and renamed into place, so that a
    run cut mid-write (Ctrl-C, a time limit) leaves the previous file whole, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)
