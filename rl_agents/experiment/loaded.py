"""A checkpoint made a ready model, in one place: ``evaluate``, ``predict``, ``export`` and MLflow's model take it from
here. Read through :func:`rl_agents.experiment.checkpoint.read_checkpoint` (safe loading, format checked), so a
checkpoint of any engine loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rl_agents.algo.agent import build_network
from rl_agents.algo.model import load_weights
from rl_agents.config import TrainConfig
from rl_agents.engines.supervised import build_unet
from rl_agents.experiment.checkpoint import read_checkpoint


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The model stored in a checkpoint (PixelDRL-MG or the U-Net baseline), in eval mode, with its training config;
    any engine's checkpoint, read safely (:func:`rl_agents.experiment.checkpoint.read_checkpoint`)."""
    model, cfg, _ = _read(checkpoint, device)
    return model, cfg


def _read(checkpoint: str | Path, device) -> tuple[torch.nn.Module, TrainConfig, dict | None]:
    """:func:`load_model`, and the checkpoint's data profile (None in files from before profiles)."""
    ckpt = read_checkpoint(checkpoint, map_location="cpu", fallback=False)
    state = ckpt.agent
    if ckpt.kind == "unet":
        model = build_unet(int(state["in_channels"]))
    else:
        model = build_network(ckpt.config, int(state["in_channels"]))
        if model.n_actions != int(state["n_actions"]):
            raise ValueError(f"{checkpoint}: {state['n_actions']} actions stored, but its config builds "
                             f"{model.n_actions}")
    load_weights(model, state["model"], str(checkpoint))
    return model.to(device).eval(), ckpt.config, ckpt.profile


@dataclass
class Loaded:
    """A model ready to segment: the network (or U-Net), its training config and device."""

    model: torch.nn.Module
    cfg: TrainConfig
    device: torch.device
    profile: dict | None = None  # what the training slices looked like (pixelrl_env.profile); None: older file

    @property
    def in_channels(self) -> int:
        """Channels of the network's input (a 2.5-D model's include each slice's neighbours)."""
        return int(self.model.in_channels)


def load(checkpoint: str | Path | Loaded, device: str = "cpu") -> Loaded:
    if isinstance(checkpoint, Loaded):
        return checkpoint
    model, cfg, profile = _read(checkpoint, device)
    return Loaded(model, cfg, torch.device(device), profile)
