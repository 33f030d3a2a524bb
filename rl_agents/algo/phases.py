"""Named phases of a PA3C update, timed only when someone is listening.

The update's code marks its parts (``with phase("forward"):``); nothing is recorded unless a :class:`PhaseTimer` is
active, so training pays one global lookup per mark. ``benchmarks/update_cost.py`` activates one to break an update
down into forward, environment step, reward-map convolution, loss, backward and optimiser, on the real code path of
whichever rollout mode is configured. Each mark is also a ``torch.profiler.record_function`` range while a profiler
runs, so operator tables can be grouped by phase.

Phases nest (the loss contains the returns); a timer records each phase's own time and its total time, so the
breakdown adds up to the update without counting a nested phase twice.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

_active: PhaseTimer | None = None


class PhaseTimer:
    """Accumulates wall-clock seconds per phase: ``own`` (minus nested phases) and ``total``, with call counts.

    On a CUDA device the caller must synchronise around the measured region; the marks do not (they would stall
    the stream on every step of a normal run). On a CPU every operator is synchronous, so the times are exact.
    """

    def __init__(self) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []  # per open phase: [start, time spent in nested phases]

    def __enter__(self) -> PhaseTimer:
        global _active
        if _active is not None:
            raise RuntimeError("a PhaseTimer is already active")
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None

    def reset(self) -> None:
        self.own.clear()
        self.total.clear()
        self.calls.clear()


@contextlib.contextmanager
def _timed(timer: PhaseTimer, name: str) -> Iterator[None]:
    frame = [time.perf_counter(), 0.0]
    timer._stack.append(frame)
    try:
        with torch.profiler.record_function(f"pa3c.{name}"):
            yield
    finally:
        timer._stack.pop()
        spent = time.perf_counter() - frame[0]
        timer.total[name] += spent
        timer.own[name] += spent - frame[1]
        timer.calls[name] += 1
        if timer._stack:
            timer._stack[-1][1] += spent


def phase(name: str) -> contextlib.AbstractContextManager:
    """Mark a part of the update; a no-op unless a :class:`PhaseTimer` is active."""
    if _active is None:
        return contextlib.nullcontext()
    return _timed(_active, name)
