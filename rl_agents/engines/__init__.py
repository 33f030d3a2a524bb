"""Engines: ways to produce updates of one agent (one process, Ray A3C, Hogwild, the supervised U-Net baseline).

Each supplies its step, its state and its evaluation; :mod:`rl_agents.experiment.lifecycle` owns the rest.
"""
