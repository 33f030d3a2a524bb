"""Agents, training and tooling for PixelDRL-MG (network, PA3C, Ray actors, evaluation, baselines, command line)."""
