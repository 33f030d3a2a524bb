"""The PixelDRL-MG network: a lightweight VGG16-style trunk with dilated convolutions, multi-scale fusion, a
non-local self-attention block, and per-pixel policy and value heads.

What the paper states (Liu et al. 2025): a VGG16 trunk at half the channels, using its first conv blocks, dilated
convolutions, multi-scale features concatenated, a residual self-attention module, and policy/value heads with
dilated convolutions; 7.14M parameters in all. Exact widths are not published, so ``paper`` is our reading, sized to
about 7.1M parameters; ``small`` keeps the same structure at a CPU budget (<= 0.5M parameters, about 0.5 GFLOP per
128x128 image-step). Pooling stops at 1/4 resolution; deeper blocks widen their receptive field by dilation instead
(as in DeepLab), so the multi-scale features are at 1, 1/2 and 1/4 resolution.

``attention=False`` and ``dilation=False`` give the paper's ablation rows. Every conv is followed by GroupNorm
(``norm="group"``, our choice: the paper does not say). Without it the critic needs several hundred updates to tell
small lesions from background, and PA3C first collapses to "remove everything" (measured: on 32 px synthetic data,
no recovery within 800 updates without normalisation, recovery by update 200 with it); ``norm="none"`` remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from pixelrl_env.env import KEEP


@dataclass(frozen=True)
class Block:
    width: int
    dilations: tuple[int, ...]  # one conv per entry
    downsample: bool  # 2x2 max-pool before the block


@dataclass(frozen=True)
class NetSpec:
    blocks: tuple[Block, ...]
    attn_key: int  # query/key channels of the self-attention block
    attn_value: int
    fuse_width: int
    fuse_kernel: int
    head_width: int
    head_dilations: tuple[int, ...]


PRESETS: dict[str, NetSpec] = {
    "small": NetSpec(
        blocks=(
            Block(12, (1, 1), False),
            Block(24, (1, 1), True),
            Block(48, (1, 2, 4), True),
        ),
        attn_key=12,
        attn_value=24,
        fuse_width=16,
        fuse_kernel=1,
        head_width=16,
        head_dilations=(2,),
    ),
    # ours, not the paper's: 5x the small preset's parameters (356k, 22 % of the MONAI U-Net's 1.62M) for 1.9x its
    # FLOPs, by putting the width at 1/4 and 1/8 resolution, where convolutions are cheap
    "medium": NetSpec(
        blocks=(
            Block(12, (1, 1), False),
            Block(24, (1, 1), True),
            Block(64, (1, 2, 4), True),
            Block(128, (2, 4), True),
        ),
        attn_key=16,
        attn_value=64,
        fuse_width=24,
        fuse_kernel=1,
        head_width=24,
        head_dilations=(2,),
    ),
    # half-width VGG16 (32-64-128-256-256, 2-2-3-3-3 convs); blocks 3-5 dilated at 1/4 resolution
    "paper": NetSpec(
        blocks=(
            Block(32, (1, 1), False),
            Block(64, (1, 1), True),
            Block(128, (1, 1, 1), True),
            Block(256, (2, 2, 2), False),
            Block(256, (4, 4, 4), False),
        ),
        attn_key=32,
        attn_value=128,
        fuse_width=192,
        fuse_kernel=3,
        head_width=192,
        head_dilations=(1, 2, 4),
    ),
}


NORMS = ("group", "none")
STEP_FEATURES = ("every", "once")
ATTN_STRIDES = (1, 2, 4)


def conv_relu(cin: int, cout: int, k: int = 3, dilation: int = 1, norm: str = "group") -> nn.Sequential:
    """Conv, then GroupNorm (4 groups; batch-size independent, the paper trains with batch 2), then ReLU."""
    conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation)
    if norm == "group":
        return nn.Sequential(conv, nn.GroupNorm(min(4, cout), cout), nn.ReLU(inplace=True))
    return nn.Sequential(conv, nn.ReLU(inplace=True))


class SelfAttention2d(nn.Module):
    """Non-local block (Wang et al. 2018, embedded Gaussian) with a zero-initialised residual gate (SAGAN), so that
    the network starts as if the block were absent and learns how much global context to mix in.

    ``stride`` > 1 (ours, NOT the paper's) attends over the features average-pooled ``stride`` x ``stride`` and
    upsamples the block's output bilinearly before the residual sum: the same parameters, ``stride**4`` times fewer
    attention FLOPs (the (HW x HW) products), which are most of a ``small`` forward at 256 px."""

    def __init__(self, channels: int, key: int, value: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.q = nn.Conv2d(channels, key, 1)
        self.k = nn.Conv2d(channels, key, 1)
        self.v = nn.Conv2d(channels, value, 1)
        self.out = nn.Conv2d(value, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x + self.gamma * self.out(self._attend(x))
        y = self.out(self._attend(F.avg_pool2d(x, self.stride)))
        return x + self.gamma * bilinear_resize(y, x.shape[-2:])

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, 1, HW, width), one head, contiguous: PyTorch's CPU flash-attention kernel takes only 4-D inputs whose
        # last dimension is contiguous and of one width for q, k and v; otherwise SDPA falls back to the math path,
        # which materialises the (HW x HW) matrix: 6.6x slower at 64x64 features and O(HW^2) memory (the transposed
        # view alone sent every call down that path). Zero-padding q and k to the value width leaves q.k unchanged;
        # the scale stays 1/sqrt(key).
        q = self.q(x).flatten(2).transpose(1, 2).contiguous()[:, None]
        k = self.k(x).flatten(2).transpose(1, 2).contiguous()[:, None]
        v = self.v(x).flatten(2).transpose(1, 2).contiguous()[:, None]
        e_qk, e_v = q.shape[-1], v.shape[-1]
        if e_qk < e_v:
            q, k = F.pad(q, (0, e_v - e_qk)), F.pad(k, (0, e_v - e_qk))
        elif e_v < e_qk:
            v = F.pad(v, (0, e_qk - e_v))
        y = F.scaled_dot_product_attention(q, k, v, scale=e_qk**-0.5)[:, 0, :, :e_v]  # (B, HW, value)
        return y.transpose(1, 2).reshape(b, -1, h, w)


class PixelDRLNet(nn.Module):
    """Maps an observation ``(B, C, H, W)`` to policy logits ``(B, n_actions, H, W)`` and values ``(B, H, W)``.

    H and W must be divisible by 4 (two poolings).
    """

    def __init__(
        self,
        in_channels: int,
        n_actions: int,
        preset: str = "small",
        attention: bool = True,
        dilation: bool = True,
        init_keep_prob: float | None = None,
        norm: str = "group",
        step_features: str = "every",
        head_stride: int = 1,
        attn_stride: int = 1,
    ):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown network preset {preset!r}; expected one of {sorted(PRESETS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        if step_features not in STEP_FEATURES:
            raise ValueError(f"unknown step_features {step_features!r}; expected one of {STEP_FEATURES}")
        spec = PRESETS[preset]
        self.preset, self.in_channels, self.n_actions = preset, in_channels, n_actions
        if head_stride not in (1, 2):
            raise ValueError(f"head_stride must be 1 or 2, got {head_stride}")
        if attn_stride not in ATTN_STRIDES:
            raise ValueError(f"attn_stride must be one of {ATTN_STRIDES}, got {attn_stride}")
        self.step_features, self.head_stride = step_features, head_stride
        self.use_attention, self.use_dilation = attention, dilation
        self.blocks = nn.ModuleList()
        self.downsample = [b.downsample for b in spec.blocks]
        cin = in_channels
        for b in spec.blocks:
            layers = [conv_relu(cin if i == 0 else b.width, b.width, 3, d if dilation else 1, norm)
                      for i, d in enumerate(b.dilations)]
            self.blocks.append(nn.Sequential(*layers))
            cin = b.width
        self.attention = SelfAttention2d(cin, spec.attn_key, spec.attn_value, attn_stride) if attention else None
        total = sum(b.width for b in spec.blocks)
        self.fuse = conv_relu(total, spec.fuse_width, spec.fuse_kernel, 1, norm)

        def head(cout: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            c = spec.fuse_width + (1 if step_features == "once" else 0)  # "once": the heads also read the mask
            for d in spec.head_dilations:
                layers.append(conv_relu(c, spec.head_width, 3, d if dilation else 1, norm))
                c = spec.head_width
            layers.append(nn.Conv2d(c, cout, 1))
            return nn.Sequential(*layers)

        # False: the original fuse (upsample every feature, concatenate, conv); kept to measure and test against
        self.fuse_at_low_res = True
        self.policy_head = head(n_actions)
        self.value_head = head(1)
        if init_keep_prob is not None:
            self.init_policy(init_keep_prob)

    def init_policy(self, keep_prob: float) -> None:
        """Start near "do nothing": p(keep) = ``keep_prob`` at every pixel, other actions sharing the rest.

        With the paper's action set a foreground pixel that is set to background can never come back, so under a
        uniform initial policy almost every foreground pixel is lost within ``t_max`` steps and the advantage of
        keeping it is tiny (about 1 - gamma). Starting mostly passive lets foreground pixels survive to the steps
        where keeping them is clearly rewarded; background pixels are still removed by exploration.
        """
        if not 0 < keep_prob < 1:
            raise ValueError(f"init_keep_prob must be in (0, 1), got {keep_prob}")

        last = self.policy_head[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[KEEP] = math.log(keep_prob * (self.n_actions - 1) / (1 - keep_prob))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the observation ``x = image * mask``. Under ``step_features="once"`` the mask is not
        recoverable from ``x``: this is then the first step (mask all ones); episodes go through encode/step."""
        if self.step_features == "once":
            return self.step(self.encode(x), torch.ones_like(x[:, 0], dtype=torch.bool))
        z = self.features(x)
        return self.heads(z)

    # an episode: encode the images once, then one step per mask ------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """What every step of an episode shares. ``every`` (the paper): the images themselves, since each step
        runs the whole network on ``image * mask``. ``once`` (ours, NOT the paper's): the trunk's fused features of
        the image, computed once per episode; each step then runs only the heads on ``[features, mask]``. Under
        ``head_stride`` those features are kept average-pooled: the heads read ``[features, mask]`` pooled, and
        pooling acts on each channel alone, so pooling the features once per episode and the mask per step is the
        same mathematics as pooling their concatenation per step, without a full-resolution copy per step."""
        if self.step_features == "every":
            return images
        features = self.features(images)
        return features if self.head_stride == 1 else F.avg_pool2d(features, self.head_stride)

    def step(self, context: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits ``(B, n_actions, H, W)`` and values ``(B, H, W)`` for masks ``state`` ``(B, H, W)``."""
        if self.step_features == "every":
            return self(context * state[:, None])
        return self._step_heads(context, state, value=True)

    def step_policy(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """:meth:`step`'s policy logits only (greedy inference needs no value head)."""
        if self.step_features == "every":
            return self.policy(context * state[:, None])
        return self._step_heads(context, state, value=False)[0]

    def _step_heads(self, context: torch.Tensor, state: torch.Tensor, value: bool):
        """The heads on ``[context, mask]`` at the context's resolution (pooled under ``head_stride``), answered at
        the mask's."""
        mask = state[:, None].to(context.dtype)
        if self.head_stride > 1:
            mask = F.avg_pool2d(mask, self.head_stride)
        return self.heads(torch.cat([context, mask], dim=1), value=value, size=state.shape[-2:])

    def heads(self, h: torch.Tensor, value: bool = True,
              size: torch.Size | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Policy logits and values (None unless ``value``) from the heads' input ``h`` ``(B, c, H, W)``. With
        ``head_stride=2`` (ours) the heads run on ``h`` average-pooled 2x2 and their outputs are upsampled
        bilinearly: a quarter of the heads' FLOPs, which are most of a step's under ``step_features="once"``.
        ``size``: ``h`` is already at the heads' resolution and the answer is wanted at ``size``."""
        if size is None:
            size = h.shape[-2:]
            if self.head_stride > 1:
                h = F.avg_pool2d(h, self.head_stride)
        logits = self.policy_head(h)
        values = self.value_head(h) if value else None
        if logits.shape[-2:] != size:
            logits = bilinear_resize(logits, size)
            values = bilinear_resize(values, size) if value else None
        return logits, (values[:, 0] if value else None)

    def policy(self, x: torch.Tensor) -> torch.Tensor:
        """Policy logits ``(B, n_actions, H, W)`` only: what greedy inference needs. The value head runs at full
        resolution and costs as much as the policy head, so skipping it saves about a fifth of a step."""
        if self.step_features == "once":
            return self.step_policy(self.encode(x), torch.ones_like(x[:, 0], dtype=torch.bool))
        return self.heads(self.features(x), value=False)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused multi-scale features ``(B, fuse_width, H, W)`` that both heads read."""
        size = x.shape[-2:]
        feats = []
        h = x
        for down, block in zip(self.downsample, self.blocks):
            if down:
                h = F.max_pool2d(h, 2)
            h = block(h)
            feats.append(h)
        if self.attention is not None:
            feats[-1] = self.attention(feats[-1])
        if self.fuse_at_low_res and self.fuse[0].kernel_size == (1, 1):
            return self.fuse[1:](self._fuse_low_res(feats, size))
        up = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
              for f in feats]
        return self.fuse(torch.cat(up, dim=1))

    def _fuse_low_res(self, feats: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """The 1x1 fuse conv over ``cat(upsample(f_i))``, computed as ``sum_i upsample(W_i f_i) + b``.

        The same mathematics: a 1x1 conv mixes channels and bilinear upsampling mixes positions (with weights that
        sum to 1), so they commute. Mixing first shrinks what is upsampled from the trunk's widths (84 channels in
        ``small``) to the fuse width (16) and never builds the full-resolution concatenation: measured, the
        upsampling and its copies were a fifth of a CPU update (``benchmarks/update_cost.py``, row
        ``pa3c-reference``). Upsampling as two matmuls (a faster backward) gained 6 % at 64 px and lost at 256.
        """
        conv = self.fuse[0]
        out = None
        start = 0
        for f in feats:
            w = conv.weight[:, start : start + f.shape[1]]
            start += f.shape[1]
            y = F.conv2d(f, w)
            y = y if y.shape[-2:] == size else bilinear_resize(y, size)
            out = y if out is None else out + y
        return out + conv.bias[:, None, None]


def bilinear_resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _count_cpu_attention() -> None:
    """Teach torch's FLOP counter the CPU flash-attention kernel, forward and backward. Torch 2.13 has formulas for
    the CUDA attention kernels only, so on a CPU it counted the self-attention as 0 FLOPs: at 256 px its 4096
    positions cost 1.6 GFLOP a pass in ``small``, more than all its convolutions. Registered once, at import, so
    every count in the project (``forward_flops``, the benchmarks' counters) includes it."""
    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_count_cpu_attention()


def forward_flops(model: nn.Module, in_channels: int, size: int) -> float:
    """Multiply-adds x 2 of one forward pass on a ``size`` x ``size`` image, counted with torch's FLOP counter."""
    x = torch.zeros(1, in_channels, size, size)
    with flop_counter.FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


def load_weights(module: nn.Module, weights: dict, what: str) -> None:
    """``module.load_state_dict(weights)``, with torch's multi-line refusal (weights of another network shape) as one
    line naming ``what`` and the first mismatch: a checkpoint read under network keys it was not trained with."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e).splitlines()[0])
        raise ValueError(f"{what}: its weights do not fit the network its config describes ({detail[:200]}); "
                         "the network keys (network.preset, attention, dilation, step_features, ...) must be those "
                         "it was trained with") from None
