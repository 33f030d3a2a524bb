"""An MLflow run that is live while training runs: RUNNING from the start, each validation pass logged as it is
computed, MLflow's system metrics (CPU, memory, GPU) beside them. One path for a single ``python train.py`` run and a
Tune trial: the run is created here (single runs) or by the sweep (a trial's run, a child of the sweep's), then
:func:`rl_agents.experiment.lifecycle.run_training` streams into it and
:func:`rl_agents.experiment.tracking.log_run` completes and ends it.

Tracking never fails training: an MLflow error is one warning, and the run's files stay the record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rl_agents.config import TrainConfig
from rl_agents.experiment.run_summary import run_note
from rl_agents.experiment.tracking import log_step, set_note, start_run, system_metrics_monitor

log = logging.getLogger(__name__)


class LiveRun:
    """A RUNNING MLflow run fed while training: :meth:`log` one validation pass, :meth:`close` before it ends."""

    def __init__(self, run_id: str, system_metrics: bool = True):
        self.run_id = run_id
        self.logged: set[int] = set()
        self._warned = False
        self._monitor = system_metrics_monitor(run_id) if system_metrics else None

    @classmethod
    def start(cls, cfg: TrainConfig, output_dir: str | Path) -> LiveRun | None:
        """A new run for ``cfg`` (None when tracking is off, or MLflow failed: warned)."""
        if not cfg.tracking.mlflow:
            return None
        try:
            return cls(start_run(cfg, output_dir), cfg.tracking.system_metrics)
        except Exception as e:  # noqa: BLE001 - a tracking failure must not stop training
            log.warning("MLflow run not started (%s: %s); the run is recorded at its end if MLflow recovers",
                        type(e).__name__, e)
            return None

    def log(self, entry: dict[str, Any]) -> None:
        try:
            log_step(self.run_id, entry)
            self.logged.add(int(entry.get("update", 0)))
            set_note(self.run_id, run_note(entry, f"Validation, latest pass (update {entry.get('update')}; "
                                                  "running)"))
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                self._warned = True
                log.warning("MLflow metrics not logged live (%s: %s); they are sent when the run ends",
                            type(e).__name__, e)

    def close(self) -> None:
        """Stop the system-metrics sampler (its last sample is logged)."""
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()
