"""How the network runs on its device: numeric precision, memory layout, compilation and host-to-device copies.

Three config keys (:class:`rl_agents.config.TrainConfig`) choose it, and every engine applies them through this one
module so that the training rollout, the Ray learner and the U-Net behave alike:

* ``precision``: ``fp32`` (strict: TF32 off for matmuls *and* cuDNN convolutions, which PyTorch otherwise allows for
  convolutions by default), ``tf32`` (TF32 tensor cores on NVIDIA GPUs; the same as fp32 on a CPU) or ``bf16``
  (``torch.autocast`` to bfloat16 around the forward pass; the loss and the optimiser stay in float32, so no loss
  scaling is needed). bf16 autocast also runs on a CPU, which is how the test suite keeps this path honest.
* ``channels_last``: NHWC memory layout for the network and its inputs (tensor-core convolutions prefer it).
* ``compile``: a ``torch.compile`` backend name (``inductor`` for speed; ``aot_eager`` only checks that the network
  traces, with no code generation) or null. The compiled module shares its parameters with the original, so the
  optimiser, checkpoints and weight exchange keep using the uncompiled one.

Host-to-device copies of observations and rewards go through pinned memory with ``non_blocking=True`` on CUDA;
on a CPU they are the NumPy buffers themselves (no copy).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Accel:
    """The device and the three settings above; cheap to build, holds no state but the settings."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def from_config(cls, cfg, device: torch.device | str) -> Accel:
        return cls(torch.device(device), cfg.compute.precision, cfg.compute.channels_last, cfg.compute.compile)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def apply_global(self) -> None:
        """Set the process-wide TF32 switches for this precision (they are global in PyTorch; CUDA only)."""
        if self.cuda:
            tf32 = self.precision in ("tf32", "bf16")  # under bf16, the float32 leftovers may use TF32 too
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward pass, or a no-op."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """Move ``model`` to the device in the chosen layout; returns ``(model, the module to call forward on)``."""
        self.apply_global()
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not self.compile:
            return model, model
        return model, torch.compile(model, backend=self.compile, dynamic=False)

    def to_device(self, array: np.ndarray | torch.Tensor, image: bool = False) -> torch.Tensor:
        """A NumPy batch on the device: through pinned memory and a non-blocking copy on CUDA; ``image`` batches
        ``(B, C, H, W)`` in channels-last layout when that is chosen."""
        t = torch.as_tensor(array)
        if self.cuda:
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif t.device != self.device:
            t = t.to(self.device)
        if image and self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t


def as_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Network outputs back to float32 (under bf16 autocast they are bfloat16): log-probabilities, entropies and
    returns are computed in float32 so that sampling and the loss do not lose precision."""
    return tuple(t.float() for t in tensors)
