"""Experiment tooling: the run lifecycle, checkpoints, tracking (MLflow), sweeps (Tune), evaluation, plots."""
