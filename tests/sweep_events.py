"""A sweep driver that waits at its first trial result, for the interrupted-sweep test (an event, not a poll).

``python -c "import tests.sweep_events as e; e.main()" train.py --tune SWEEP`` runs train.py with Tune's run config
replaced by one that adds :class:`WaitAtFirstResult`; with ``WAIT_AT_FIRST_RESULT=1`` in its environment it prints
:data:`MARKER` at the first trial result the driver receives and waits on stdin inside Tune's loop, where the test's
signal lands. The classes live in an importable module because Tune pickles the run config with its state: a
``--resume`` (without the variable) reads them back and they do nothing there.
"""

from __future__ import annotations

import os
import runpy
import sys

from ray import tune

MARKER = "FIRST TRIAL RESULT, WAITING"
ENV = "WAIT_AT_FIRST_RESULT"


class WaitAtFirstResult(tune.Callback):
    seen = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if os.environ.get(ENV) == "1" and not WaitAtFirstResult.seen:
            WaitAtFirstResult.seen = True
            print(MARKER, flush=True)
            sys.stdin.readline()


class RunConfigWaitingAtFirstResult(tune.RunConfig):
    def __init__(self, *args, **kwargs):
        callbacks = [c for c in kwargs.get("callbacks") or [] if not isinstance(c, WaitAtFirstResult)]
        super().__init__(*args, **{**kwargs, "callbacks": [*callbacks, WaitAtFirstResult()]})


def main() -> None:
    tune.RunConfig = RunConfigWaitingAtFirstResult
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
