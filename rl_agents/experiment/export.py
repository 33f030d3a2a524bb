"""Export a trained checkpoint as one self-contained graph: ONNX (onnxruntime, C++, other languages) or TorchScript
(libtorch, no Python).

The graph is the whole segmentation, not the bare network: images ``(B, C, S, S)`` float32, prepared as in training,
go in; ``masks`` ``(B, S, S)`` float32 in {0, 1} and ``uncertainty`` ``(B, S, S)`` float32 in [0, 1] come out. For
PixelDRL-MG that is all ``t_max`` greedy steps unrolled (:class:`rl_agents.algo.inference.GreedySegmenter`: a fixed
graph, so no early exit); for the U-Net, the sigmoid and the 0.5 threshold. The batch dimension is dynamic; ``C`` and
``S`` are the checkpoint's (``data.size``, channels incl. 2.5-D neighbours).

Beside the model, ``<file>.json`` states what a caller needs: input and output names and shapes, ``t_max``, and the
data config that says how to prepare a slice (``pixelrl_env.dataset.prepare_rows`` does it in Python).

Every export is checked before it is kept: the written file is loaded back (onnxruntime, ``torch.jit.load``) and run
on a batch of a size other than the one traced, and its masks must agree with torch's on at least 99.9 % of the
pixels (:data:`MIN_AGREEMENT`; exact for TorchScript); a worse export raises and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_agents.algo.inference import GreedySegmenter, UNetSegmenter
from rl_agents.experiment.loaded import load_model

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts.pt"}
# Another runtime's kernels round differently; where a pixel's two action logits are within rounding of each other
# the argmax, and with it every later step of that pixel, can flip. Measured on LGG and synthetic checkpoints: at most
# 1 pixel in 5000 for onnxruntime, none for TorchScript (the same ATen kernels).
MIN_AGREEMENT = 0.999


def segmenter(model: torch.nn.Module, t_max: int) -> torch.nn.Module:
    """The exportable module for either model kind, outputs ``(masks, uncertainty)``."""

    if getattr(model, "is_unet", False):
        return UNetSegmenter(model, uncertainty=True).eval()
    return GreedySegmenter(model, t_max, uncertainty=True).eval()


def _example(in_channels: int, size: int, batch: int, seed: int) -> torch.Tensor:
    return torch.rand((batch, in_channels, size, size), generator=torch.Generator().manual_seed(seed))


def _write_onnx(module: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before torch fails deep inside)
    except ImportError as e:
        raise RuntimeError("ONNX export needs the 'export' extra: pip install 'pixeldrl-mg[export]'") from e
    with warnings.catch_warnings():
        # torch.export's own deprecation notice about its pytree internals: nothing a user can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(module, (x,), str(path), input_names=["images"], output_names=["masks", "uncertainty"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, optimize=False,
                          verbose=False, external_data=False)


def _write_torchscript(module: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but it is still the format libtorch (C++) loads; the
        # tracer also warns at each Python comparison of shapes, which it bakes in (the spatial size is fixed)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        traced = torch.jit.trace(module, x)
        torch.jit.save(traced, str(path))


def _run_exported(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            log.warning("onnxruntime is not installed: %s was written but not checked", path)
            return None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(["masks"], {"images": x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(x)[0].numpy()


def export_checkpoint(checkpoint: str | Path, fmt: str, output: str | Path | None = None) -> dict[str, Any]:
    """Write ``checkpoint`` as ``fmt`` (``onnx`` or ``torchscript``) to ``output`` (default: beside the checkpoint,
    ``<stem>.onnx`` / ``<stem>.ts.pt``), plus ``<output>.json``. Returns that JSON's content."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    checkpoint = Path(checkpoint)
    model, cfg = load_model(checkpoint, "cpu")
    kind = "unet" if getattr(model, "is_unet", False) else "pixeldrl-mg"
    in_channels = int(model.in_channels)  # PixelDRLNet and MONAI's UNet both keep it
    if cfg.data.size is None:
        raise ValueError(f"{checkpoint} was trained at native size (data.size: null); an exported graph has one fixed "
                         "image size, so export a checkpoint trained with data.size set")
    size = int(cfg.data.size)
    out = Path(output) if output is not None else checkpoint.with_name(checkpoint.stem + SUFFIX[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    module = segmenter(model, cfg.pa3c.t_max)

    # trace at batch 2 and check at batch 3: a graph that had kept the traced batch size fails the check
    x_trace, x_check = _example(in_channels, size, 2, 0), _example(in_channels, size, 3, 1)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        (_write_onnx if fmt == "onnx" else _write_torchscript)(module, x_trace, tmp)
        got = _run_exported(fmt, tmp, x_check)
        with torch.inference_mode():
            want = module(x_check)[0].numpy()
        checked = got is not None
        agreement = float((got == want).mean()) if checked else None
        if checked and agreement < MIN_AGREEMENT:
            raise RuntimeError(f"exported {fmt} model disagrees with torch on {int((got != want).sum())} of "
                               f"{want.size} mask pixels at batch 3; nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    meta = {
        "format": fmt,
        "file": out.name,
        "checkpoint": str(checkpoint),
        "kind": kind,
        "inputs": {"images": {"shape": ["batch", in_channels, size, size], "dtype": "float32",
                              "prepare": "as in training: pixelrl_env.dataset.prepare_rows with the 'data' config"}},
        "outputs": {"masks": {"shape": ["batch", size, size], "dtype": "float32", "values": "0 or 1"},
                    "uncertainty": {"shape": ["batch", size, size], "dtype": "float32", "values": "0..1"}},
        "t_max": cfg.pa3c.t_max if kind == "pixeldrl-mg" else None,
        "checked_against_torch": checked,
        "mask_agreement_with_torch": agreement,
        "data": asdict(cfg.data),
        "torch": torch.__version__,
    }
    side = out.with_name(out.name + ".json")
    side.write_text(json.dumps(meta, indent=2, default=str))
    meta["path"], meta["metadata"] = str(out), str(side)
    return meta
