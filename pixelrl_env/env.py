"""The pixel-agent segmentation environment."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .data_config import DataConfig
from .dataset import ArraySet, load_splits

ACTION_SETS = {
    # the paper's: 0 = set background, 1 = do nothing; the mask starts all foreground
    "paper": 2,
    # our extension: 0 = set background, 1 = do nothing, 2 = set foreground
    "three": 3,
}
SET_BACKGROUND, KEEP, SET_FOREGROUND = 0, 1, 2

# Small and quick to generate, so that ``gymnasium.make("PixelSeg-v0")`` works with no arguments.
DEFAULT_DATA = DataConfig(
    format="synthetic",
    size=64,
    split=(1.0, 0.0, 0.0),
    synthetic={"n_patients": 4, "slices_per_patient": 6, "size": 64, "difficulty": "easy"},
)


class PixelSegEnv(gym.Env):
    """Binary segmentation where every pixel is an agent that flips its own label over ``t_max`` steps.

    ## Description

    After Liu et al., "Pixel level deep reinforcement learning for accurate and robust medical image segmentation"
    (Sci. Rep. 2025) and PixelRL (Furuta et al. 2019). Each pixel of an image holds a state, foreground (1) or
    background (0), and is an agent choosing its own action at every step. All H x W agents act at once, so the
    environment is a multi-agent problem packed into single-agent Gymnasium spaces: **the action is an array with
    one discrete choice per pixel and the reward is an array with one value per pixel**. Gymnasium requires a scalar
    reward, so ``step`` returns the mean of the per-pixel rewards, and the full reward map travels in
    ``info["reward_map"]`` for learners that need it (PA3C does). The batched variant (``batch_size=B``) holds B
    images at once and adds a leading batch axis everywhere; every step is a handful of whole-array operations.

    ## Action Space

    ``MultiDiscrete`` of shape ``(H, W)`` (batched: ``(B, H, W)``), dtype int64, ``n_actions`` choices per pixel:

    | action set | 0 | 1 | 2 |
    |------------|---|---|---|
    | ``"paper"`` (default) | set background | do nothing | |
    | ``"three"`` | set background | do nothing | set foreground |

    Any integer dtype is accepted by ``step`` (uint8 actions save memory bandwidth).

    ## Observation Space

    ``Box(low, high, shape=(C, H, W), dtype=float32)`` (batched: ``(B, C, H, W)``): the image multiplied by the
    current mask, ``image * m_t``, as in the paper: pixels set to background read as 0. ``low``/``high`` are the
    range of the loaded images (and 0). The state ``m_t`` itself is in ``info["state"]`` as uint8 ``(H, W)``.

    ## Rewards

    Per pixel, ``r_t = (m_{t-1} - g)^2 - (m_t - g)^2`` with ground truth ``g``: +1 for correcting a wrong pixel,
    -1 for breaking a right one, 0 otherwise. ``info["reward_map"]`` is float32 ``(H, W)`` (batched ``(B, H, W)``);
    the scalar reward is its mean. Summed over an episode, a pixel's rewards equal its final improvement.

    ## Starting State

    ``reset`` draws ``B`` images from the loaded pool with ``self.np_random`` (or takes
    ``options={"indices": [...]}``) and sets every pixel to foreground (``start="foreground"``, the paper) or
    background (``start="background"``).

    ## Episode End

    After ``t_max`` steps (10 in the paper) the episode *terminates*: the fixed horizon is part of the task, and the
    final mask is the segmentation (PixelRL's code also ends its episodes as done, with a zero return after them).
    ``truncated`` is always False. Learners that prefer to bootstrap from the value of the final state may (an option
    of the trainer). Stepping past the end raises; call ``reset``.

    ## Arguments

    ``images`` ``(N, C, H, W)`` float32 and ``masks`` ``(N, H, W)`` {0, 1}, or ``data`` (a :class:`DataConfig` or a
    dict of its fields, the training split is used); with neither, a small built-in synthetic set.
    ``batch_size`` (None: unbatched), ``t_max``, ``action_set``, ``start``, ``render_mode`` (``"rgb_array"``).
    ``transform(images, masks, rng) -> (images, masks)``: applied to each episode's images at ``reset`` with this
    env's RNG (training augmentation, :class:`pixelrl_env.augment.Augment`); it must keep shapes, dtypes and the
    observation range.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        images: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        *,
        data: DataConfig | dict | None = None,
        batch_size: int | None = None,
        t_max: int = 10,
        action_set: str = "paper",
        start: str = "foreground",
        render_mode: str | None = None,
        transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self._check_options(action_set, start, t_max, batch_size, render_mode)
        images, masks = self._pool(images, masks, data)
        self.images = images
        self.masks = masks.astype(bool)
        self.batch_size = batch_size
        self.t_max = int(t_max)
        self.action_set = action_set
        self.n_actions = ACTION_SETS[action_set]
        self.start = start
        self.render_mode = render_mode
        self.transform = transform

        _, c, h, w = images.shape
        lead = () if batch_size is None else (batch_size,)
        self._b = batch_size or 1
        low = float(min(0.0, images.min()))
        high = float(max(0.0, images.max()))
        self.observation_space = spaces.Box(low, high, shape=lead + (c, h, w), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(lead + (h, w), self.n_actions, dtype=np.int64))
        self._act_shape = (self._b, h, w)
        self._t = 0
        self._indices = np.zeros(self._b, dtype=np.int64)
        self._img = np.zeros((self._b, c, h, w), np.float32)
        self._gt = np.zeros((self._b, h, w), bool)
        self._state = np.zeros((self._b, h, w), bool)
        self._done = True

    def _check_options(self, action_set: str, start: str, t_max: int, batch_size: int | None,
                       render_mode: str | None) -> None:
        if action_set not in ACTION_SETS:
            raise ValueError(f"action_set must be one of {sorted(ACTION_SETS)}, got {action_set!r}")
        if start not in ("foreground", "background"):
            raise ValueError(f"start must be 'foreground' or 'background', got {start!r}")
        if action_set == "paper" and start == "background":
            raise ValueError("the paper's action set can only remove foreground: start='background' would be stuck")
        if t_max < 1:
            raise ValueError(f"t_max must be >= 1, got {t_max}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")

    @staticmethod
    def _pool(images, masks, data) -> tuple[np.ndarray, np.ndarray]:
        """The images and masks episodes draw from, given or read from ``data``, checked."""
        if images is None:
            if masks is not None:
                raise ValueError("masks given without images")
            cfg = DEFAULT_DATA if data is None else data if isinstance(data, DataConfig) else DataConfig(**data)
            pool: ArraySet = load_splits(cfg).train
            images, masks = pool.images, pool.masks
        images = np.ascontiguousarray(images, dtype=np.float32)
        masks = np.asarray(masks)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
        if masks.shape != (images.shape[0],) + images.shape[2:]:
            raise ValueError(f"masks must be (N, H, W) = {(images.shape[0],) + images.shape[2:]}, got {masks.shape}")
        if masks.size and not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must hold only 0 and 1")
        if len(images) == 0:
            raise ValueError("no images to segment (the pool is empty)")
        return images, masks

    # -- views for learners and oracles ------------------------------------------------------------------------
    def _unbatch(self, x: np.ndarray) -> np.ndarray:
        return x[0] if self.batch_size is None else x

    @property
    def state(self) -> np.ndarray:
        """Current masks ``m_t`` as uint8, ``(H, W)`` or ``(B, H, W)``."""
        return self._unbatch(self._state.view(np.uint8))

    @property
    def ground_truth(self) -> np.ndarray:
        """Ground-truth masks of the current images as uint8 (for oracles, metrics and learners' diagnostics)."""
        return self._unbatch(self._gt.view(np.uint8))

    @property
    def current_images(self) -> np.ndarray:
        """The images of the current episode as drawn (augmented), float32 ``(C, H, W)`` or ``(B, C, H, W)``: the
        observation is ``current_images * state``; learners that encode the image once per episode read it here."""
        return self._unbatch(self._img)

    @property
    def indices(self) -> np.ndarray:
        """Pool indices of the current images."""
        return self._indices.copy()

    @property
    def t(self) -> int:
        return self._t

    def _obs(self) -> np.ndarray:
        return self._unbatch(self._img * self._state[:, None])

    # -- Gymnasium API -----------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        n = len(self.images)
        if options and options.get("indices") is not None:
            idx = np.asarray(options["indices"], dtype=np.int64).reshape(-1)
            if idx.shape != (self._b,) or idx.min() < 0 or idx.max() >= n:
                raise ValueError(f"options['indices'] must be {self._b} indices in [0, {n}), got {idx.tolist()}")
        else:
            idx = self.np_random.choice(n, size=self._b, replace=n < self._b)
        self._indices = idx
        self._img = self.images[idx]
        self._gt = self.masks[idx]
        if self.transform is not None:  # e.g. pixelrl_env.augment.Augment, drawn from this env's RNG
            self._img, self._gt = self.transform(self._img, self._gt, self.np_random)
        fill = self.start == "foreground"
        self._state = np.full(self._gt.shape, fill, dtype=bool)
        self._t = 0
        self._done = False
        info = {"state": self.state, "t": 0, "indices": idx.copy()}
        return self._obs(), info

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called after the episode ended (t_max steps); call reset() first")
        a = np.asarray(action)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"action must be integer-typed, got dtype {a.dtype}")
        a = a.reshape(self._act_shape)
        prev = self._state
        new = prev & (a == KEEP)
        if self.n_actions == 3:
            new |= a == SET_FOREGROUND
        gt = self._gt
        # (m_{t-1} - g)^2 - (m_t - g)^2 for binary m, g is [m_{t-1} != g] - [m_t != g].
        reward_map = (prev != gt).view(np.int8) - (new != gt).view(np.int8)
        reward_map = reward_map.astype(np.float32)
        self._state = new
        self._t += 1
        terminated = self._t >= self.t_max
        self._done = terminated
        info = {"state": self.state, "reward_map": self._unbatch(reward_map), "t": self._t}
        return self._obs(), float(reward_map.mean()), terminated, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        img = self._img[0].mean(axis=0)
        lo, hi = float(img.min()), float(img.max())
        grey = ((img - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        state = self._state[0]
        rgb[state, 0] = np.maximum(rgb[state, 0], 200)  # current mask in red
        gt = self._gt[0]
        edge = gt & ~(  # ground-truth outline in green
            np.pad(gt, 1)[:-2, 1:-1] & np.pad(gt, 1)[2:, 1:-1] & np.pad(gt, 1)[1:-1, :-2] & np.pad(gt, 1)[1:-1, 2:]
        )
        rgb[edge] = (0, 255, 0)
        return rgb
