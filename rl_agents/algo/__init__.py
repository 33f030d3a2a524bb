"""The algorithm: the PixelDRL-MG network, the PA3C loss, the rollout, the agent that owns them, greedy inference.

Nothing here knows about Ray, MLflow or files: engines and tools build on it.
"""
