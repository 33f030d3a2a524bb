"""The supervised baseline engine: MONAI's 2-D U-Net trained with Dice + BCE on the same split, resolution and budget.

It runs under the same lifecycle as PA3C (:mod:`rl_agents.experiment.lifecycle`), so it honours every budget key
(``epochs``, ``max_updates``, ``max_minutes``, ``stop_at_val_dice``), Ctrl-C and ``--resume``, and writes the same
checkpoints and ``metrics.json`` keys; ``pixeldrl evaluate`` and ``benchmarks/quality.py`` treat both alike.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from pixelrl_env.metrics import compute_all
from rl_agents.algo.accel import Accel
from rl_agents.algo.agent import cpu_state, make_augment, planned_updates
from rl_agents.algo.model import count_parameters, load_weights
from rl_agents.config import TrainConfig
from rl_agents.engines.base import InProcessEngine


def build_unet(in_channels: int) -> torch.nn.Module:
    """MONAI U-Net, 16-32-64-128-256 channels, two residual units per level (a common 2-D configuration)."""

    net = UNet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=2)
    net.is_unet = True
    return net


class UNetAgent:
    """The U-Net and its Adam: the supervised counterpart of :class:`rl_agents.algo.agent.PA3CAgent`, with the same
    precision, layout and compilation settings (``self.net`` is the module to call forward on)."""

    kind = "unet"

    def __init__(self, cfg: TrainConfig, in_channels: int, n_train: int, device: torch.device | str = "cpu"):
        self.cfg, self.in_channels, self.device = cfg, int(in_channels), torch.device(device)
        self.accel = Accel.from_config(cfg, self.device)
        self.model, self.net = self.accel.prepare(build_unet(in_channels))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr)
        self.total_updates = planned_updates(cfg, n_train)
        self.update = 0

    def apply_gradients(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.update += 1
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "in_channels": self.in_channels, "n_actions": 0, "update": self.update,
                "model": cpu_state(self.model.state_dict()), "optimizer": cpu_state(self.opt.state_dict())}

    def load_state_dict(self, state: dict[str, Any], weights_only: bool = False) -> None:
        if state.get("kind") != self.kind or int(state["in_channels"]) != self.in_channels:
            raise ValueError(f"checkpoint holds a {state.get('kind')!r} model with {state.get('in_channels')} input "
                             f"channel(s); expected a U-Net with {self.in_channels}")
        load_weights(self.model, state["model"], "the checkpoint")
        if not weights_only:
            self.update = int(state["update"])
            if state.get("optimizer") is not None:
                self.opt.load_state_dict(state["optimizer"])


@torch.no_grad()
def evaluate_unet(model, images: np.ndarray, masks: np.ndarray, device) -> dict[str, float]:
    if len(images) == 0:
        return {}
    model.eval()
    preds = []
    for i in range(0, len(images), 16):
        logits = model(torch.as_tensor(images[i : i + 16], device=device))[:, 0]
        preds.append((logits > 0).to(torch.uint8).cpu().numpy())
    model.train()
    return {k: float(np.mean(v)) for k, v in compute_all(np.concatenate(preds), masks).items()}


class SupervisedEngine(InProcessEngine):
    """One step = one minibatch of ``batch_size`` slices drawn without replacement, one Adam step."""

    name = "supervised"

    def __init__(self, cfg: TrainConfig, quiet: bool = False):
        self.cfg, self.quiet = cfg, quiet
        self.pixel_agent_steps = 0  # no pixel agents; kept so every engine reports the same keys

    def setup(self, resume=None) -> dict[str, Any]:
        cfg = self.cfg
        self.tr, self.va = self._prepare()
        self.agent = UNetAgent(cfg, self.tr.images.shape[1], len(self.tr), self.device)
        self.loss_fn = DiceCELoss(sigmoid=True)
        self.rng = np.random.default_rng(cfg.seed)
        self.augment = make_augment(cfg)
        self.images = torch.as_tensor(self.tr.images)
        self.masks = torch.as_tensor(self.tr.masks, dtype=torch.float32)[:, None]
        if resume is not None:
            self.agent.load_state_dict(resume.agent)
            if "numpy" in resume.rng:
                self.rng.bit_generator.state = json.loads(resume.rng["numpy"])
            else:
                self.rng = np.random.default_rng([cfg.seed, self.agent.update])
        n_params = count_parameters(self.agent.model)
        return {"n_train": len(self.tr), "n_val": len(self.va), "params": n_params,
                "banner": f"U-Net baseline: {n_params:,} parameters; {len(self.tr)} train / {len(self.va)} val "
                          f"slices; device {self.device}; {self.agent.total_updates} updates planned"}

    def step(self) -> dict[str, float]:
        idx = torch.as_tensor(self.rng.choice(len(self.tr), size=min(self.cfg.optim.batch_size, len(self.tr)),
                                              replace=False))
        accel = self.agent.accel
        images, masks = self.images[idx], self.masks[idx]
        if self.augment is not None:  # the same augmentation PA3C's episodes get, drawn from this engine's RNG
            im, m = self.augment(images.numpy(), masks[:, 0].numpy(), self.rng)
            images, masks = torch.from_numpy(im), torch.from_numpy(m)[:, None]
        with accel.autocast():
            logits = self.agent.net(accel.to_device(images, image=True))
        loss = self.loss_fn(logits.float(), accel.to_device(masks))
        self.agent.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = self.agent.apply_gradients()
        return {"losses/supervised": float(loss.detach()), "charts/grad_norm": norm}

    def _evaluate(self, max_images: int | None) -> dict[str, float]:
        # the whole validation split every time (one forward pass per slice: cheap), as before this engine existed
        return evaluate_unet(self.agent.model, self.va.images, self.va.masks, self.device)

    def rng_state(self) -> dict[str, Any]:
        return {"numpy": json.dumps(self.rng.bit_generator.state)}

    def perf(self, wall: float) -> dict[str, float]:
        return {"perf/updates_per_s": self.agent.update / max(wall, 1e-9)}
