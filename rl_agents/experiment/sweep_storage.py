"""Where a sweep keeps its trials, checked before Ray Tune touches it: the experiment is a plain name (joined to the
storage folder, it must not climb out of it), a sweep is not started afresh over one that already ran, and a sweep
is resumed only from a folder that nobody else could have planted files in (Tune unpickles its state from there:
``tuner.pkl`` runs code when loaded)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_storage(storage: str, experiment: str, resume: bool, adding_variants: bool) -> Path:
    """``storage/experiment`` if a sweep may run there now, else ``ValueError`` in one line saying why.

    ``adding_variants``: ``--variants`` runs more rows into an existing sweep on purpose (an ablation split over
    machines); otherwise an experiment folder that holds a sweep needs ``--resume``.
    """
    if not _NAME.match(str(experiment)) or ".." in str(experiment):
        raise ValueError(f"sweep experiment {experiment!r}: expected a plain name (letters, digits, '.', '_', '-'), "
                         "not a path")
    if "://" in str(storage):  # object storage: Tune's own checks
        return Path(storage) / experiment
    folder = Path(storage) / experiment
    ran = folder.is_dir() and any(folder.glob("experiment_state-*.json"))
    if ran and not (resume or adding_variants):
        raise ValueError(f"{folder} already holds a sweep: continue it with --resume, add rows with --variants, or "
                         "choose another experiment name (delete the folder to start it afresh)")
    if resume and folder.exists():
        for p in (Path(storage), folder, *folder.glob("*.pkl")):
            _check_private(p)
    return folder


def _check_private(path: Path) -> None:
    """Refuse a path owned by another user, or writable by others: a state file planted there would run its code."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ValueError(f"{path} is owned by user id {st.st_uid}, not you ({os.getuid()}): a sweep is resumed only "
                         "from your own storage (Tune unpickles its state from there)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        raise ValueError(f"{path} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}: anyone "
                         f"who can write there could plant a state file that runs code when resumed; chmod go-w it")
