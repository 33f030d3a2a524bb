"""Atomic checkpoints: write to a temporary file, fsync, keep the previous file as ``*.prev.pt``, then rename.

A crash at any moment leaves either the new checkpoint or the previous one readable, never a torn file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)
    return path


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``path``; if it is missing or unreadable, fall back to its ``.prev`` file and say so."""
    path = Path(path)
    errors = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            errors.append(f"{candidate}: not found")
            continue
        try:
            payload = torch.load(candidate, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means this file is unusable
            errors.append(f"{candidate}: unreadable ({e})")
            continue
        if candidate != path:
            import logging

            logging.getLogger(__name__).warning("checkpoint %s unusable; resumed from %s", path, candidate)
        return payload
    raise FileNotFoundError("no usable checkpoint: " + "; ".join(errors))
