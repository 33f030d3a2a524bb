"""Where a sweep may run, checked before Tune touches the folder (no Ray needed): plain experiment names, no fresh
sweep over one that ran, and resuming only from storage that nobody else can write to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rl_agents.experiment.sweep_storage import check_storage


def _ran(storage: Path, name: str = "asha") -> Path:
    folder = storage / name
    folder.mkdir(parents=True)
    (folder / "experiment_state-2026-12-07_00-00-00.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"state")
    return folder


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "/abs", "", ".hidden", "x" * 101])
def test_an_experiment_name_is_a_plain_name(name: str, tmp_path: Path):
    with pytest.raises(ValueError, match="expected a plain name"):
        check_storage(str(tmp_path), name, resume=False, adding_variants=False)


def test_a_sweep_that_ran_is_resumed_or_extended_never_restarted_over(tmp_path: Path):
    assert check_storage(str(tmp_path), "asha", False, False) == tmp_path / "asha"  # nothing there yet
    folder = _ran(tmp_path)
    with pytest.raises(ValueError, match=r"asha already holds a sweep: continue it with --resume"):
        check_storage(str(tmp_path), "asha", resume=False, adding_variants=False)
    assert check_storage(str(tmp_path), "asha", resume=True, adding_variants=False) == folder
    assert check_storage(str(tmp_path), "asha", resume=False, adding_variants=True) == folder


def test_resuming_refuses_storage_others_could_have_written(tmp_path: Path):
    folder = _ran(tmp_path)
    folder.chmod(0o777)
    with pytest.raises(ValueError, match=r"asha is writable by others: .* chmod go-w"):
        check_storage(str(tmp_path), "asha", resume=True, adding_variants=False)
    folder.chmod(0o755)
    (folder / "tuner.pkl").chmod(0o664)  # a planted state file a group member could have written
    with pytest.raises(ValueError, match=r"tuner.pkl is writable by its group"):
        check_storage(str(tmp_path), "asha", resume=True, adding_variants=False)
    (folder / "tuner.pkl").chmod(0o644)
    if os.getuid() == 0:  # root can hand the file to another user, as an attacker's upload would be
        os.chown(folder / "tuner.pkl", 12345, 12345)
        with pytest.raises(ValueError, match=r"tuner.pkl is owned by user id 12345, not you"):
            check_storage(str(tmp_path), "asha", resume=True, adding_variants=False)
