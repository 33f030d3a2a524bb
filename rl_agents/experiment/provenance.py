"""Where a figure came from: the machine, the command as typed, and JSON written whole. The one home of these for
the library's reports (``cv-report``, ``ablation-report``) and every script in ``benchmarks/``."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """CPU model, cores, Python, torch, platform and the GPU torch sees (None without one)."""
    # imported here: benchmarks/readme_commands.py writes its JSON with this module before the Quickstart it runs
    # has installed torch
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def command(argv: list[str] | None = None, module: str | None = None) -> str:
    """This process's command as typed, so that it can be run again as is: ``python -m benchmarks.x ...`` (a module of
    the repository's packages, or ``module`` when its ``main(argv)`` was called from another program such as a test),
    ``python train.py ...`` (a script under the repository, named from its root) or ``pixeldrl cv-report ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if module:
        return shlex.join(["python", "-m", module, *args])
    prog = Path(sys.argv[0])
    if not prog.name.endswith(".py"):
        return shlex.join([prog.name, *args])
    script = prog.resolve()
    if not script.is_relative_to(ROOT):
        return shlex.join(["python", sys.argv[0], *args])
    rel = script.relative_to(ROOT)
    if (script.parent / "__init__.py").is_file():  # run as python -m package.module
        return shlex.join(["python", "-m", ".".join(rel.with_suffix("").parts).removesuffix(".__main__"), *args])
    return shlex.join(["python", rel.as_posix(), *args])


def write_json(path: str | Path, obj: object, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, its folder made if need be. Written beside it and renamed into place, so that a
    run cut mid-write (Ctrl-C, a time limit) leaves the previous file whole, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, path)
