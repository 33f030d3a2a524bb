"""Benchmarks: each module prints its figures and writes JSON with the command and the machine
(:mod:`rl_agents.experiment.provenance`). Run them from the repository root as modules, e.g.
``python -m benchmarks.update_cost --sizes 64``; they import each other as ``benchmarks.<name>``."""
