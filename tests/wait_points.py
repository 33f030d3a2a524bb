"""Child processes that stop at a known point and wait there for a test's signal: events, not polls.

Each runs ``train.py`` (``python -c "import tests.wait_points as w; w.<point>()" train.py ...``) with one hook added;
at its point the child prints the point's marker and waits on stdin, so the signal lands where the test expects and
the run cannot end first. A test reads the child's output up to the marker, then signals it.

* :func:`after_first_checkpoint`: right after the run's first periodic ``checkpoints/last.pt``.
* :func:`at_first_trial_result`: inside Tune's loop, at the first trial result a sweep's driver receives (with
  ``WAIT_AT_FIRST_RESULT=1`` in its environment). The callback lives in this importable module because Tune pickles the
  run config with its state: a ``--resume`` (without the variable) reads it back, and it does nothing there.
"""

from __future__ import annotations

import os
import runpy
import sys

from ray import tune

import rl_agents.experiment.lifecycle as lifecycle

CHECKPOINT = "CHECKPOINT WRITTEN, WAITING"
FIRST_RESULT = "FIRST TRIAL RESULT, WAITING"
ENV = "WAIT_AT_FIRST_RESULT"


def wait_here(marker: str) -> None:
    print(marker, flush=True)
    sys.stdin.readline()  # never written: the test's signal ends the wait (or, for Ctrl-C in Tune, a newline after it)


def _run_train_py() -> None:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


def after_first_checkpoint() -> None:
    write = lifecycle.write_checkpoint
    paused = []

    def write_then_wait(path, payload, *args, **kwargs):
        out = write(path, payload, *args, **kwargs)
        if path.name == "last.pt" and not paused:
            paused.append(path)
            wait_here(CHECKPOINT)
        return out

    lifecycle.write_checkpoint = write_then_wait
    _run_train_py()


class WaitAtFirstResult(tune.Callback):
    seen = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if os.environ.get(ENV) == "1" and not WaitAtFirstResult.seen:
            WaitAtFirstResult.seen = True
            wait_here(FIRST_RESULT)


class RunConfigWaitingAtFirstResult(tune.RunConfig):
    def __init__(self, *args, **kwargs):
        callbacks = [c for c in kwargs.get("callbacks") or [] if not isinstance(c, WaitAtFirstResult)]
        super().__init__(*args, **{**kwargs, "callbacks": [*callbacks, WaitAtFirstResult()]})


def at_first_trial_result() -> None:
    tune.RunConfig = RunConfigWaitingAtFirstResult
    _run_train_py()
