"""The checkpoint format: one writer (:func:`write_checkpoint`), one reader (:func:`read_checkpoint`), versioned.

A checkpoint is a dict of tensors and plain types only, so that it loads with ``torch.load(weights_only=True)``: a
crafted file whose pickle would call a function is refused, never run (unrestricted unpickling executes any
``__reduce__`` payload). The config, the run's history and NumPy RNG states are stored as JSON strings for the same
reason. Layout (``version`` 2)::

    format: "pixeldrl-mg-checkpoint"   version: 2   engine: local | ray | supervised | hogwild
    config: JSON of the TrainConfig
    agent:  the agent's state_dict (kind, in_channels, n_actions, update, model, [reward_conv], optimizer, scheduler)
    run:    update, best_dice, wall_time_s, pixel_agent_steps, history (JSON)
    rng:    engine-specific RNG state (may be empty: an engine that resumes another's checkpoint reseeds)
    data_profile: JSON of what the training slices look like (:mod:`pixelrl_env.profile`; absent in older files)
    sha256: digest of everything above (:func:`content_digest`), added by the writer and checked by the reader

The digest is there because a zip record's bytes are not checked by ``torch.load``: a flipped bit inside a tensor
loads silently as a different weight. A file whose content does not match its digest counts as damaged; a file
without one is refused (every writer adds it), unless ``PIXELDRL_ALLOW_UNDIGESTED=1`` says to load it unchecked.

Writes are atomic: a temporary file is written and fsynced, the previous checkpoint is kept as ``*.prev.pt``, then
the new one is renamed into place, so a crash at any moment leaves a readable checkpoint. A damaged file (torn,
truncated) falls back to ``*.prev.pt`` with a warning; a file refused for security reasons does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rl_agents.config import TrainConfig, config_from_dict, to_dict

log = logging.getLogger(__name__)

FORMAT = "pixeldrl-mg-checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, refused, foreign or from another format version."""


@dataclass
class Checkpoint:
    path: Path
    engine: str
    config: TrainConfig
    agent: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.agent["kind"]

    @property
    def update(self) -> int:
        return int(self.run.get("update", self.agent.get("update", 0)))


def make_payload(engine: str, cfg: TrainConfig, agent: dict[str, Any], run: dict[str, Any] | None = None,
                 rng: dict[str, Any] | None = None, profile: dict[str, Any] | None = None) -> dict[str, Any]:
    run = dict(run or {})
    history = run.pop("history", [])
    return {**({"data_profile": json.dumps(profile)} if profile else {}),
        "format": FORMAT,
        "version": VERSION,
        "engine": engine,
        "config": json.dumps(to_dict(cfg)),
        "agent": agent,
        "run": {"update": int(run.get("update", agent.get("update", 0))),
                "best_dice": float(run.get("best_dice", -1.0)),
                "wall_time_s": float(run.get("wall_time_s", 0.0)),
                "pixel_agent_steps": int(run.get("pixel_agent_steps", 0)),
                "history": json.dumps(history)},
        "rng": dict(rng or {}),
    }


@contextlib.contextmanager
def _ctrl_c_after():
    """Deliver a Ctrl-C that arrives during the block after it: torch.save interrupted midway raises a zip-writer
    RuntimeError instead of KeyboardInterrupt (exit 1 with a traceback, not the clean stop with a checkpoint)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)  # now, to the handler that was in place (KeyboardInterrupt)


def content_digest(payload: Any) -> str:
    """SHA-256 over a payload's structure and values: dict keys in sorted order, each tensor's dtype, shape and raw
    bytes (on the CPU, contiguous), plain values by ``repr``. Equal before ``torch.save`` and after ``torch.load``."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"(" if isinstance(o, tuple) else b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(payload)
    return h.hexdigest()


ALLOW_UNDIGESTED = "PIXELDRL_ALLOW_UNDIGESTED"


def _verify(path: Path, payload: dict[str, Any]) -> None:
    want = payload.pop("sha256", None)
    if want is None:  # every writer adds one: a file without is hand-made or had it stripped
        if os.environ.get(ALLOW_UNDIGESTED) != "1":
            raise CheckpointError(f"{path} carries no SHA-256 digest, so a damaged or altered weight would load "
                                  f"unnoticed; set {ALLOW_UNDIGESTED}=1 to load it anyway")
        log.warning("%s carries no SHA-256 digest: loaded unchecked (%s=1)", path, ALLOW_UNDIGESTED)
        return
    if content_digest(payload) != want:
        raise ValueError(f"content does not match its SHA-256 (a flipped bit or a damaged copy of {path.name})")


def write_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = True) -> Path:
    """Atomically write ``payload`` to ``path`` (keeping the former file as ``*.prev.pt``); a Ctrl-C during the write
    takes effect once the file is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _ctrl_c_after():
        try:
            with open(tmp, "wb") as f:
                torch.save({**payload, "sha256": content_digest(payload)}, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
            tmp.unlink(missing_ok=True)
            kept = f"; {path} is left as it was" if path.exists() else ""
            raise CheckpointError(f"could not write checkpoint {path} (is the disk full?): {e}{kept}") from e
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    return path


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _load(path: Path, map_location) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and nothing else; refusals and damage raise distinct errors."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise  # garbage bytes ("invalid load key"): damage, handled by the caller
        # weights_only refuses globals and callables: a crafted (or pre-format-2) file. Never retry unsafely.
        raise CheckpointError(
            f"refused checkpoint {path}: it holds pickled Python objects that safe loading (weights_only=True) does "
            f"not allow, so loading it could run code. PixelDRL-MG checkpoints (format {VERSION}) hold only tensors "
            f"and plain values. Detail: {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} is not a PixelDRL-MG checkpoint (a {type(payload).__name__}, not a dict)")
    return payload


def _check(path: Path, payload: dict[str, Any]) -> None:
    if payload.get("format") != FORMAT:
        if "kind" in payload and "model" in payload:
            raise CheckpointError(f"{path} was written by an older PixelDRL-MG (format 1, before versioned "
                                  f"checkpoints); this version reads format {VERSION} only: train again")
        raise CheckpointError(f"{path} is not a PixelDRL-MG checkpoint (keys {sorted(payload)[:8]}; expected "
                              f"'format': {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint format version {payload.get('version')!r}; this PixelDRL-MG "
                              f"reads version {VERSION}")


def _parse(path: Path, payload: dict[str, Any]) -> Checkpoint:
    _check(path, payload)
    try:
        cfg = config_from_dict(json.loads(payload["config"]))
        run = dict(payload["run"])
        run["history"] = json.loads(run.get("history") or "[]")
        profile = json.loads(payload["data_profile"]) if "data_profile" in payload else None
        return Checkpoint(path, payload["engine"], cfg, payload["agent"], run, dict(payload.get("rng") or {}), profile)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed checkpoint ({type(e).__name__}: {e})") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", fallback: bool = True) -> Checkpoint:
    """Read a checkpoint; if it is missing or damaged, fall back to its ``*.prev.pt`` (``fallback``) and say so.

    A refused file (unsafe pickle) or one of another format is reported at once: the previous file is not used
    silently in its place, because that would hide an attack or a mix-up of folders.
    """
    path = Path(path)
    errors = []
    for candidate in (path, previous_path(path)) if fallback else (path,):
        if not candidate.exists():
            errors.append(f"{candidate}: not found")
            continue
        try:
            payload = _load(candidate, map_location)
            _check(candidate, payload)  # what the file is first: an old or foreign file is named as such
            _verify(candidate, payload)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - torn or truncated file: try the previous one
            errors.append(f"{candidate}: damaged ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        if candidate != path:
            log.warning("checkpoint %s unusable (%s); using %s", path, errors[-1], candidate)
        return _parse(candidate, payload)
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
