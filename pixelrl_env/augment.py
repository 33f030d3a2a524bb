"""Data augmentation for training batches: flips, small rotations and scaling, intensity and bias-field jitter.

Why these: MRI slices of one structure differ between patients and scanners mostly by pose (a few degrees, a few
per cent of size), contrast and a smooth multiplicative bias field; the validation split of 2-8 patients cannot show
the networks that variety. The same geometric transform moves an image and its mask (images bilinear, masks nearest,
so a mask stays binary); intensity changes touch the image only.

Pure NumPy/SciPy, applied per episode by :class:`pixelrl_env.env.PixelSegEnv` (``transform=``) and per minibatch by
the U-Net, so both models of a comparison see the same augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .corrupt import bias_field


@dataclass(frozen=True)
class Augment:
    """Random augmentation of a batch.

    Args:
        flip: flip each image left-right and up-down, each with probability 0.5.
        rotate_deg: rotation drawn from U(-rotate_deg, rotate_deg) degrees about the centre.
        scale: zoom factor drawn from U(1 - scale, 1 + scale).
        intensity: contrast x U(1 - a, 1 + a) about the image's mean, plus a shift of U(-a/2, a/2) x its range.
        bias_field: multiplicative smooth field (a random quadratic surface) within 1 +- bias_field.

    Call with images ``(B, C, H, W)`` float32, masks ``(B, H, W)`` (bool or {0, 1}) and a NumPy Generator; returns new
    arrays of the same shapes and dtypes. Images are clipped to the batch's input range, so an environment's
    observation space still holds them. All parameters 0 and ``flip=False`` is the identity.
    """

    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity: float = 0.1
    bias_field: float = 0.2

    def __post_init__(self):
        for name in ("rotate_deg", "scale", "intensity", "bias_field"):
            if getattr(self, name) < 0:
                raise ValueError(f"Augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1:
            raise ValueError(f"Augment.scale must be < 1 (a zoom factor 1 +- scale), got {self.scale}")

    def __call__(self, images: np.ndarray, masks: np.ndarray, rng: np.random.Generator):
        if images.ndim != 4 or masks.shape != (images.shape[0],) + images.shape[2:]:
            raise ValueError(f"expected images (B, C, H, W) and masks (B, H, W), got {images.shape} and {masks.shape}")
        lo, hi = float(images.min()), float(images.max())
        out_img = np.empty_like(images)
        out_mask = np.empty_like(masks)
        for i in range(len(images)):
            img, m = self._geometry(images[i], masks[i], rng)
            out_img[i] = np.clip(self._intensity(img, rng), lo, hi)
            out_mask[i] = m
        return out_img, out_mask

    def _geometry(self, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        if self.flip:
            if rng.random() < 0.5:
                img, mask = img[:, :, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                img, mask = img[:, ::-1, :], mask[::-1, :]
        angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg)) if self.rotate_deg else 0.0
        zoom = rng.uniform(1 - self.scale, 1 + self.scale) if self.scale else 1.0
        if angle == 0.0 and zoom == 1.0:
            return np.ascontiguousarray(img), np.ascontiguousarray(mask)
        # output pixel o samples input at matrix @ (o - centre) + centre: rotation by -angle, magnification zoom
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.array([[c, -s], [s, c]]) / zoom
        centre = (np.array(mask.shape) - 1) / 2.0
        offset = centre - matrix @ centre
        warped = np.stack([ndimage.affine_transform(ch, matrix, offset, order=1, mode="nearest") for ch in img])
        m = ndimage.affine_transform(mask.astype(np.uint8), matrix, offset, order=0, mode="constant", cval=0)
        return warped.astype(img.dtype), m.astype(mask.dtype)

    def _intensity(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = img
        if self.intensity:
            mean, span = float(img.mean()), float(img.max() - img.min())
            contrast = rng.uniform(1 - self.intensity, 1 + self.intensity)
            shift = rng.uniform(-self.intensity / 2, self.intensity / 2) * span
            out = (out - mean) * contrast + mean + shift
        if self.bias_field:
            out = out * (1.0 + bias_field(img.shape[-2:], self.bias_field, rng))[None]
        return out.astype(img.dtype, copy=False)
