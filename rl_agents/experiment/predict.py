"""Segment a user's own scans with a trained checkpoint: no masks needed, outputs in the input's own geometry.

Inputs (``pixeldrl predict --checkpoint C INPUT... --output-dir D``), checked before anything is written
(:mod:`rl_agents.experiment.predict_inputs`: folders skip truth files and earlier outputs, every file's channels and
dimensions are checked against the model):

* image files (PNG, JPEG, TIFF, BMP): one slice each; the mask is written as ``<stem>_pred.png`` (or ``.tif`` for a
  TIFF input) at the image's native size, 0 = background and 255 = foreground (JPEG inputs get PNG masks: a lossy
  mask would not stay binary); ``_pred`` so that it is never mistaken for a dataset's ``<stem>_mask`` truth file;
* folders: every image file in them, sorted by name, each as above;
* NIfTI volumes (``.nii``, ``.nii.gz``): cut into slices along the checkpoint's ``data.slice_axis``; the mask is a
  ``uint8`` volume ``<stem>_pred.nii.gz`` with the input's affine and header (so viewers overlay it on the scan).

Every input is also compared with what the model was trained on (:mod:`pixelrl_env.profile`, stored in the
checkpoint): one far from it (another modality, organ or preparation) is segmented anyway but flagged, on the terminal
and in ``predictions.json`` beside the masks (one record per input: its outputs, shape, foreground and
``unlike_training``).

Beside each mask: ``<stem>_uncertainty``, the binary entropy in bits (0..1) of each pixel's probability of ending
foreground (:mod:`rl_agents.algo.inference`; the U-Net's: of its sigmoid), and on request a labelled overlay PNG (``--overlay``) and, for PixelDRL-MG, a GIF of the
mask over the ``t_max`` steps (``--gif``, what the paper's figures show). Each slice is prepared exactly as in
training (channels, resize, normalisation, 2-D slices or 2.5-D neighbours from the same volume), and the mask is
resized back to the native size.

From Python, one call on an array: :func:`segment_array`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from rich.progress import Progress

from pixelrl_env.io import DataError, Sample, read_image
from pixelrl_env.nifti import read_nifti_image, slice_axis_index
from pixelrl_env.prepare import prepare_rows, resize_mask
from pixelrl_env.profile import unlike
from rl_agents.algo.inference import segment_with_steps
from rl_agents.experiment.evaluate import predict
from rl_agents.experiment.loaded import Loaded, load
from rl_agents.experiment.provenance import write_json
from rl_agents.experiment.predict_inputs import Inputs, check_channels, expand_inputs, is_nifti, preflight, stem
from rl_agents.experiment.visualize import save_overlay, scan_frames

__all__ = ["UnlikeTrainingWarning", "expand_inputs", "load", "predict_files", "segment_array"]


def _as_slices(array: np.ndarray, slice_axis: int | None) -> np.ndarray:
    """``(N, H, W, C)`` from an image ``(H, W[, C])``, slices ``(N, H, W, C)``, or a volume cut along ``slice_axis``."""
    a = np.asarray(array)
    if slice_axis is not None:
        if a.ndim not in (3, 4):
            raise DataError(f"slice_axis={slice_axis} needs a volume (X, Y, Z) or (X, Y, Z, C); got shape {a.shape}")
        a = np.moveaxis(a, slice_axis_index(slice_axis, "the array"), 0)
        return a[..., None] if a.ndim == 3 else a
    if a.ndim == 2:
        return a[None, ..., None]
    if a.ndim == 3 and a.shape[-1] <= 4:
        return a[None]
    if a.ndim == 3:
        raise DataError(f"an array of shape {a.shape} could be slices (N, H, W) or a volume as nibabel loads it "
                        "(H, W, N); pass slice_axis=0 or slice_axis=2 (the axis that counts the slices)")
    if a.ndim == 4:
        return a
    raise DataError(f"expected an image (H, W) or (H, W, C), slices (N, H, W, C), or a volume with slice_axis; "
                    f"got shape {a.shape}")


class UnlikeTrainingWarning(UserWarning):
    """An input far from what the model was trained on (:mod:`pixelrl_env.profile`): its mask may mean nothing."""


def unlike_message(what: str, report: dict[str, Any]) -> str:
    return (f"{what} looks unlike the model's training data (distance {report['distance']:.3f} > "
            f"{report['threshold']:.3f}, which 99 % of validation slices stay under): another modality, organ or "
            "preparation? Its mask may mean nothing")


def segment_array(checkpoint: str | Path | Loaded, array: np.ndarray, device: str = "cpu",
                  batch_size: int = 16, early_exit: bool = True,
                  slice_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Masks (uint8 {0, 1}) and uncertainty (float32 0..1) of an image, a stack of slices, or a volume.

    ``array``: ``(H, W)`` or ``(H, W, C)`` (C <= 4) for one slice, giving ``(1, H, W)`` outputs; ``(N, H, W, C)`` for
    the slices of one volume in order, giving ``(N, H, W)``; a volume ``(X, Y, Z)`` as nibabel loads it, with
    ``slice_axis`` the axis to cut (``2`` for axial MSD volumes), giving outputs of the volume's own shape. A 3-D array
    without ``slice_axis`` is refused unless its last axis is small enough to be channels: ``(N, H, W)`` and
    ``(H, W, N)`` cannot be told apart, and cutting the wrong axis segments nonsense without an error. A 2.5-D model
    takes each slice's neighbours from the array. Values as stored (uint8, uint16 or float): the checkpoint's own
    normalisation is applied. The channels are checked against the model's first; an input unlike the training data
    (:mod:`pixelrl_env.profile`) is segmented with an :class:`UnlikeTrainingWarning`.
    """
    masks, uncert, report = segment_checked(checkpoint, array, device, batch_size, early_exit, slice_axis)
    if report and report["flagged"]:
        warnings.warn(unlike_message(f"an array of shape {np.shape(array)}", report), UnlikeTrainingWarning,
                      stacklevel=2)
    return masks, uncert


def segment_checked(checkpoint: str | Path | Loaded, array: np.ndarray, device: str = "cpu", batch_size: int = 16,
                    early_exit: bool = True, slice_axis: int | None = None):
    """:func:`segment_array`'s masks and uncertainty, and how far the input is from the training data (a dict of
    :func:`pixelrl_env.profile.unlike`, None without a profile) instead of a warning."""
    m = load(checkpoint, device)
    slices = _as_slices(array, slice_axis)
    d = m.cfg.data
    check_channels(f"an array of shape {np.shape(array)}", slices.shape[-1], m.in_channels, d.channels, d.context)
    samples = [Sample(s, np.zeros(s.shape[:2], np.uint8), "volume", f"slice{k}") for k, s in enumerate(slices)]
    masks, uncert, xs = [], [], []
    for i in range(0, len(samples), batch_size):
        rows = range(i, min(i + batch_size, len(samples)))
        x = prepare_rows(samples, rows, d)
        xs.append(x)
        mk, un = predict(m.model, m.cfg, x, m.device, early_exit=early_exit)
        for k, a, u in zip(rows, mk, un):
            h, w = slices[k].shape[:2]
            masks.append(resize_mask(a, (h, w)))
            uncert.append(resize_float(u, (h, w)))
    masks_a, uncert_a = np.stack(masks).astype(np.uint8), np.stack(uncert).astype(np.float32)
    report = unlike(m.profile, np.concatenate(xs))
    if slice_axis is not None:  # back into the volume's own geometry
        axis = slice_axis_index(slice_axis, "the array")
        return np.moveaxis(masks_a, 0, axis), np.moveaxis(uncert_a, 0, axis), report
    return masks_a, uncert_a, report


def resize_float(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 0..1 map ``(h, w)`` resized bilinearly to ``shape`` (uncertainty back at an input's native size)."""
    if x.shape == tuple(shape):
        return x.astype(np.float32)
    im = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)).resize((shape[1], shape[0]), Image.BILINEAR)
    return np.clip(np.asarray(im), 0.0, 1.0).astype(np.float32)


def _chw(image: np.ndarray) -> np.ndarray:
    """A native image ``(H, W)`` or ``(H, W, C)`` as visualize's ``(H, W)`` or ``(C, H, W)``."""
    return np.moveaxis(image, -1, 0) if image.ndim == 3 else image


def _save_gif(path: Path, image: np.ndarray, m: Loaded, x: np.ndarray) -> None:
    """The mask over the scan at the start and after each greedy step: the states of one :func:`segment_with_steps`."""
    states = segment_with_steps(m.model, x[None], m.cfg.pa3c.t_max, device=m.device, keep_states=True).states[0]
    frames = scan_frames(_chw(image), [resize_mask(s, image.shape[:2]) for s in states])
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=400, loop=0)


def _save_overlay(path: Path, image: np.ndarray, mask: np.ndarray, uncert: np.ndarray, caption: str) -> None:
    save_overlay(path, _chw(image), None, mask, uncert, robust=True, caption=caption)


def _write_image_mask(path: Path, mask: np.ndarray, suffix: str) -> Path:
    out = path.with_name(path.name + (".tif" if suffix in (".tif", ".tiff") else ".png"))
    Image.fromarray((mask * 255).astype(np.uint8)).save(out)
    return out


def predict_files(checkpoint: str | Path, inputs: list[str | Path], output_dir: str | Path, device: str = "cpu",
                  batch_size: int = 16, overlay: bool = False, gif: bool = False, progress: bool = True,
                  exclude: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], Inputs]:
    """Segment every input (see the module docstring) into ``output_dir``: one record per input, and the
    :class:`Inputs` read (files, and what folders held that was skipped). Every input is checked against the model
    before the first output is written."""

    found = expand_inputs(inputs, exclude)
    m = load(checkpoint, device)
    if gif and getattr(m.model, "is_unet", False):
        raise ValueError("--gif shows PixelDRL-MG's steps; the U-Net segments in one step")
    preflight(found.files, m.in_channels, m.cfg.data.channels, m.cfg.data.context)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("segmenting", total=len(found.files))
        for f in found.files:
            if is_nifti(f):
                rec = _predict_nifti(m, f, out, batch_size)
                slices = rec.pop("_slices")
                if overlay or gif:
                    _volume_extras(m, f, out, rec, slices, overlay, gif)
            else:
                rec = _predict_image(m, f, out, overlay, gif)
            records.append(rec)
            bar.advance(task)
    write_json(out / "predictions.json", {"checkpoint": str(checkpoint), "profiled": m.profile is not None,
                                          "inputs": records, "skipped": [str(p) for p in found.skipped]})
    return records, found


def _predict_image(m: Loaded, f: Path, out: Path, overlay: bool, gif: bool) -> dict[str, Any]:
    image = read_image(f)
    masks, uncert, report = segment_checked(m, image, str(m.device))
    base = out / stem(f)
    mask_path = _write_image_mask(base.with_name(base.name + "_pred"), masks[0], f.suffix.lower())
    unc_path = base.with_name(base.name + "_uncertainty.png")
    Image.fromarray((uncert[0] * 255).round().astype(np.uint8)).save(unc_path)
    rec = {"input": str(f), "mask": str(mask_path), "uncertainty": str(unc_path), "shape": list(masks.shape[1:]),
           "foreground_pixels": int(masks.sum()), "unlike_training": report}
    if overlay:
        rec["overlay"] = str(base.with_name(base.name + "_overlay.png"))
        _save_overlay(Path(rec["overlay"]), image, masks[0], uncert[0], f.name)
    if gif:
        sample = [Sample(image, np.zeros(image.shape[:2], np.uint8), "volume", str(f))]
        rec["gif"] = str(base.with_name(base.name + "_steps.gif"))
        _save_gif(Path(rec["gif"]), image, m, prepare_rows(sample, [0], m.cfg.data)[0])
    return rec


def _read_volume(m: Loaded, f: Path):
    img, data = read_nifti_image(f)
    return img, slice_axis_index(m.cfg.data.slice_axis, f), data


def volume_like(img, data: np.ndarray, dtype) -> nib.Nifti1Image:
    """``data`` as a NIfTI volume on the scan ``img``'s grid: its affine, header, qform and sform codes, stored as
    ``dtype`` without the scan's intensity scaling (labels stay 0/1), so that viewers overlay it on the scan."""
    header = img.header.copy()
    header.set_data_dtype(dtype)
    out = nib.Nifti1Image(data.astype(dtype), img.affine, header)
    out.set_qform(img.get_qform(), int(img.header["qform_code"]))
    out.set_sform(img.get_sform(), int(img.header["sform_code"]))
    out.header.set_slope_inter(1, 0)
    return out


def _predict_nifti(m: Loaded, f: Path, out: Path, batch_size: int) -> dict[str, Any]:
    img, axis, data = _read_volume(m, f)
    mask_vol, unc_vol, report = segment_checked(m, data, str(m.device), batch_size, slice_axis=axis)
    base = out / stem(f)
    mask_path = base.with_name(base.name + "_pred.nii.gz")
    nib.save(volume_like(img, mask_vol, np.uint8), str(mask_path))
    unc_path = base.with_name(base.name + "_uncertainty.nii.gz")
    nib.save(volume_like(img, unc_vol, np.float32), str(unc_path))
    return {"input": str(f), "mask": str(mask_path), "uncertainty": str(unc_path), "shape": list(mask_vol.shape),
            "slice_axis": axis, "foreground_voxels": int(mask_vol.sum()), "unlike_training": report,
            "_slices": tuple(np.moveaxis(v, axis, 0) for v in (data, mask_vol, unc_vol))}


def _volume_extras(m: Loaded, f: Path, out: Path, rec: dict, arrays: tuple, overlay: bool, gif: bool) -> None:
    """Overlay and GIF of the volume's slice with the largest predicted area (its middle slice if none)."""
    slices, masks, uncert = arrays
    area = masks.reshape(len(masks), -1).sum(axis=1)
    k = int(area.argmax()) if area.max() > 0 else len(masks) // 2
    base = out / f"{stem(f)}_slice{k:03d}"
    rec["shown_slice"] = k
    if overlay:
        rec["overlay"] = str(base.with_name(base.name + "_overlay.png"))
        _save_overlay(Path(rec["overlay"]), slices[k], masks[k], uncert[k],
                      f"{f.name}: slice {k} of {len(slices)} along axis {rec['slice_axis']}")
    if gif:
        samples = [Sample(s[..., None], np.zeros(s.shape, np.uint8), "volume", str(j)) for j, s in enumerate(slices)]
        rec["gif"] = str(base.with_name(base.name + "_steps.gif"))
        _save_gif(Path(rec["gif"]), slices[k], m, prepare_rows(samples, [k], m.cfg.data)[0])
