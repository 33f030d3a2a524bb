"""Post-processing of predicted binary masks, chosen on validation by nnU-Net's rule (Isensee et al. 2021).

Pure functions over 2-D masks (numpy and :mod:`scipy.ndimage` only; no torch, no Ray), for either model (PixelDRL-MG
or the U-Net). Connectivity is 8-connected throughout (``scipy.ndimage.label`` with a 3x3 structure of ones): pixels
that touch by an edge or a corner belong to the same component.

A rule is written as a string spec:

* ``"none"``: the mask as predicted;
* ``"largest"``: only the largest connected foreground component is kept (:func:`keep_largest`);
* ``"min:N"``: connected components of fewer than ``N`` pixels are removed (:func:`drop_small`), ``N`` an integer >= 1.

:func:`choose_rule` applies each candidate rule to the validation predictions and keeps ``"none"`` unless another
candidate raises the mean Dice (over slices whose truth has foreground, the paper's protocol) strictly: nnU-Net's rule,
so post-processing is only ever used when validation shows that it helps.

Example::

    rule = parse_rule("min:25")
    cleaned = apply_rule(pred_masks, rule)         # (N, H, W) -> (N, H, W)
    choice = choose_rule(val_pred_masks, val_gt_masks)
    choice.rule.spec, choice.dice                  # e.g. "largest", {"none": 0.81, "largest": 0.83, ...}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pixelrl_env.metrics import dice

__all__ = ["Rule", "RuleChoice", "DEFAULT_CANDIDATES", "RULE_SPECS", "keep_largest", "drop_small", "parse_rule",
           "apply_rule", "choose_rule"]

RULE_SPECS = "'none', 'largest' or 'min:N' (N an integer >= 1)"

# Thresholds are pixels at the evaluation resolution (native slices: 256x256 LGG FLAIR, 320x320 heart MRI). The stray
# pixels that a pixel-level policy leaves are single pixels or clusters of a few (10 px is 0.015 % of a 256x256 slice);
# 100 px, a disc of radius ~5.6 px, is still smaller than most lesion cross-sections but not than the small ones at a
# volume's end slices, so larger thresholds would start deleting true lesion. The grid spans "stray pixels" to "small
# blobs" on a roughly doubling scale; validation Dice decides, so a threshold that costs true lesion is not chosen.
DEFAULT_CANDIDATES: tuple[str, ...] = ("none", "largest", "min:10", "min:25", "min:50", "min:100")

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Rule:
    """A parsed post-processing rule: ``kind`` is ``"none"``, ``"largest"`` or ``"min"`` (with ``min_pixels``)."""

    kind: str
    min_pixels: int = 0

    @property
    def spec(self) -> str:
        """The canonical string spec (``"none"``, ``"largest"``, ``"min:25"``); :func:`parse_rule` reads it back."""
        return f"min:{self.min_pixels}" if self.kind == "min" else self.kind

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class RuleChoice:
    """What :func:`choose_rule` decided: the chosen ``rule``, each candidate's mean validation Dice (``dice``, keyed
    by spec, in candidate order) and the number of slices with foreground that the means are over (``n_images``)."""

    rule: Rule
    dice: dict[str, float]
    n_images: int


def _as_mask(mask, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {m.shape}")
    if m.dtype != bool and m.size and not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1 or bool), got values such as "
                         f"{np.unique(m[~np.isin(m, (0, 1))])[:5].tolist()}")
    return m


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels of ``mask`` (0 = background, 1..K in raster order) and the pixel count of each label."""
    labels, _ = ndimage.label(mask.astype(bool), structure=_EIGHT)
    return labels, np.bincount(labels.ravel())


def keep_largest(mask) -> np.ndarray:
    """Keep only the largest 8-connected foreground component of a 2-D mask.

    Args:
        mask: ``(H, W)`` binary mask (bool, or an integer/float dtype holding only 0 and 1).

    Returns:
        A new mask of the same shape and dtype as ``mask`` holding that one component.

    Edge cases:
        * an empty mask stays empty (a copy is returned);
        * an all-foreground mask is one component and is returned unchanged;
        * ties (several components of the largest size): the component met first in a raster scan (row by row, top
          to bottom, each row left to right) is kept, i.e. the one whose first pixel in row-major order comes first.
          ``scipy.ndimage.label`` numbers components in that order and the smallest label wins, so the result is
          deterministic.

    Raises:
        ValueError: ``mask`` is not 2-D or not binary.
    """
    m = _as_mask(mask)
    labels, sizes = _components(m)
    if len(sizes) <= 1:  # no foreground
        return m.copy()
    keep = 1 + int(np.argmax(sizes[1:]))  # argmax returns the first (smallest-label) maximum
    return (labels == keep).astype(m.dtype)


def drop_small(mask, min_pixels: int) -> np.ndarray:
    """Remove the 8-connected foreground components of fewer than ``min_pixels`` pixels from a 2-D mask.

    Args:
        mask: ``(H, W)`` binary mask (bool, or an integer/float dtype holding only 0 and 1).
        min_pixels: the smallest component size kept; a component of exactly ``min_pixels`` pixels is kept.

    Returns:
        A new mask of the same shape and dtype as ``mask``.

    Edge cases:
        * ``min_pixels <= 1`` leaves the mask unchanged (every component has at least one pixel);
        * an empty mask stays empty;
        * every component may be smaller than ``min_pixels``: the result is then empty (unlike :func:`keep_largest`,
          which never empties a mask that has foreground).

    Raises:
        ValueError: ``mask`` is not 2-D or not binary.
    """
    m = _as_mask(mask)
    if min_pixels <= 1:
        return m.copy()
    labels, sizes = _components(m)
    keep = sizes >= min_pixels
    keep[0] = False  # background
    return keep[labels].astype(m.dtype)


def parse_rule(spec: str | Rule) -> Rule:
    """Parse a rule spec ``"none"``, ``"largest"`` or ``"min:N"`` (``N`` an integer >= 1; case and surrounding blanks
    are ignored). A :class:`Rule` is returned as is.

    Raises:
        ValueError: one line naming the value and what was expected, e.g. for ``"min:x"``, ``"biggest"`` or
            ``"min:0"``.
    """
    if isinstance(spec, Rule):
        return spec
    s = spec.strip().lower() if isinstance(spec, str) else None
    if s in ("none", "largest"):
        return Rule(s)
    match = re.fullmatch(r"min:\s*([0-9]+)", s) if s is not None else None
    if match and int(match.group(1)) >= 1:
        return Rule("min", int(match.group(1)))
    raise ValueError(f"post-processing rule must be {RULE_SPECS}, got {spec!r}")


def _apply_one(mask, rule: Rule) -> np.ndarray:
    if rule.kind == "largest":
        return keep_largest(mask)
    if rule.kind == "min":
        return drop_small(mask, rule.min_pixels)
    return _as_mask(mask).copy()


def apply_rule(masks, rule: str | Rule):
    """Apply ``rule`` to each 2-D mask of a batch.

    Args:
        masks: an ``(N, H, W)`` array, or a sequence of ``(H, W)`` masks whose sizes may differ (native slices).
        rule: a spec for :func:`parse_rule` or a :class:`Rule`.

    Returns:
        An ``(N, H, W)`` array for an array input (``N = 0`` gives an empty copy), else a list of masks; dtypes kept.

    Raises:
        ValueError: a bad rule spec, a 3-D array that is not ``(N, H, W)``, or a mask that is not binary.
    """
    r = parse_rule(rule)
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"masks must be (N, H, W) or a sequence of (H, W) masks, got shape {masks.shape}")
        out = np.empty_like(masks)
        for i, m in enumerate(masks):
            out[i] = _apply_one(m, r)
        return out
    return [_apply_one(m, r) for m in masks]


def choose_rule(pred_masks, gt_masks, candidates: Sequence[str | Rule] = DEFAULT_CANDIDATES) -> RuleChoice:
    """Choose a post-processing rule on validation predictions by nnU-Net's rule.

    Each candidate is applied to ``pred_masks`` and scored by the mean Dice (:func:`pixelrl_env.metrics.dice`) over
    the slices whose truth has foreground (the project's protocol). ``"none"`` is always scored (added first when not
    among ``candidates``) and wins unless another candidate's mean Dice is strictly higher; among candidates with the
    same highest mean Dice, the first in ``candidates`` order wins.

    Args:
        pred_masks: predicted masks, an ``(N, H, W)`` array or a sequence of ``(H, W)`` masks.
        gt_masks: the matching ground-truth masks, same shapes.
        candidates: rule specs or :class:`Rule` objects.

    Returns:
        :class:`RuleChoice` with the chosen rule and every candidate's mean Dice.

    Raises:
        ValueError: different numbers of predictions and truths, a shape mismatch, a bad candidate, or no slice whose
            truth has foreground (nothing to choose on).
    """
    rules = [parse_rule(c) for c in candidates]
    if Rule("none") not in rules:
        rules.insert(0, Rule("none"))
    rules = list(dict.fromkeys(rules))  # duplicates scored once
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"one truth per prediction expected, got {len(pred_masks)} predictions and "
                         f"{len(gt_masks)} truths")
    fg = [i for i, g in enumerate(gt_masks) if np.asarray(g).any()]
    if not fg:
        raise ValueError(f"no slice with foreground among the {len(gt_masks)} validation truths: "
                         "nothing to choose a post-processing rule on")
    preds, gts = [pred_masks[i] for i in fg], [gt_masks[i] for i in fg]
    scores = {r.spec: float(np.mean([dice(p, g) for p, g in zip(apply_rule(preds, r), gts)])) for r in rules}
    best = Rule("none")
    for r in rules:
        if scores[r.spec] > scores[best.spec]:
            best = r
    return RuleChoice(best, scores, len(fg))
