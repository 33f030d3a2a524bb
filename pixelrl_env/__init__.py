"""Data, the pixel-agent environment and metrics for PixelDRL-MG. Free of Ray and of training code."""

import gymnasium as gym

from .data_config import DataConfig
from .dataset import ArraySet, Splits, describe, load_part, load_splits
from .env import ACTION_SETS, PixelSegEnv
from .io import DataError, Sample
from .sources import FORMATS, iter_source

__all__ = [
    "ACTION_SETS",
    "ArraySet",
    "DataConfig",
    "DataError",
    "FORMATS",
    "PixelSegEnv",
    "Sample",
    "Splits",
    "describe",
    "iter_source",
    "load_part",
    "load_splits",
]

# Registration is idempotent so that re-imports (e.g. in Ray workers) do not warn.
for _id, _kwargs in (("PixelSeg-v0", {}), ("PixelSegBatch-v0", {"batch_size": 8})):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="pixelrl_env.env:PixelSegEnv", kwargs=_kwargs)
