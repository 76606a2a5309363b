# Copyright 2026 The diffusers-videovae contributors and Microsoft Corporation (Reducio-VAE).
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Reducio-VAE: a 4x32x32 (or 2x32x32) video VAE whose decoder cross-attends to a content frame.

Original work: "Reducio! Generating 1024x1024 Video within 16 Seconds using Extremely Compressed Motion Latents"
(Tian et al., 2024, arXiv:2411.13552) and https://github.com/microsoft/Reducio-VAE (MIT license). The released
checkpoints (`microsoft/Reducio-VAE` on the Hub) are the original `.ckpt` files; this file re-implements the network
so that they load with diffusers' API.

What makes this model unlike the package's others:

* a clip is 16 frames (the decoder's temporal position tables fix it); longer clips (`T = 16k`) are encoded and
  decoded here as k independent 16-frame clips, as the original's latent-extraction script does;
* a separate 2D "content encoder" turns the clip's middle frame `(T - 1) // 2` into a pyramid of features, and the
  decoder cross-attends to them: `decode` needs that frame (or its features) besides the latents;
* `decode` takes *normalised* latents: a parameter-free layer norm over `(C, t, h, w)` of each 16-frame segment,
  which is also what Reducio-DiT is trained on (`normalize_latents`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..loaders import FromOriginalCheckpointMixin
from ._common import InputRule, VideoAutoencoderMixin, block_offload_names, register_compression_ratios
from ._layers import NearestUpsampleConvMixin, checkpointed
from ._tiling import (
    TileStep,
    TilingLimits,
    blend_tiles_as_they_come,
    check_condition,
    check_finite,
    check_latents,
    check_not_empty,
    check_video,
    configure_tiling,
    group_moments,
    normalize_groups,
    stitch_tiles_as_they_come,
    tiled_in_layer_order,
)

__all__ = ["AutoencoderKLReducio", "ReducioContentFeatures", "ReducioTiledContent"]

# Without autograd, 3D resnets and upsamplers compute their output a few frames at a time (`_by_frames`), each step
# reading at most about this many bytes of input frames (halo included): no full-size normalised copy of a feature map,
# and no full-size copy inside the convolution, ever exists. Decoding 16x256x256 peaks at less than half the memory of
# the original this way (README, bench_reducio.py).
_FRAME_STEP_BYTES = 128 * 2**20
# The default tile side, blended and exact (blended tiles every 192 px: 4/5 of the side, rounded down to 32). The
# original's tiles, 320 px every 256 (`enable_tiling(320, 320)`), are 1.56x the area of a 256x256 clip, which runs in
# one piece, so their peak grows past that clip's by as much; 256-px tiles keep it within 1.25x (README, "Issue 19's
# bound").
_DEFAULT_TILE = 256
# Exact tiles share GroupNorm statistics by watching `F.group_norm` (`_tiling.tiled_in_layer_order`), which
# the frame steps bypass (they normalise with `ReducioGroupNorm.statistics`): the exact tiled paths call the blocks
# without `stream=True`, so they run whole clips there.


class ReducioGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (eps 1e-6, affine) that can also normalise a slice of frames with the statistics of the whole
    tensor: `forward(part, statistics=norm.statistics(x))`, which is how blocks stream frames (`_by_frames`).

    Without `statistics` it is exactly `nn.GroupNorm`. With them, `x * scale + shift` per (sample, channel), as
    torch's kernel computes it, from moments accumulated in float64: equal to the whole-tensor norm up to rounding.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (sample, group) mean and `1 / sqrt(var + eps)` of `x` `(B, C, ...)`."""
        count, mean, m2 = group_moments(x, self.num_groups)
        return mean, torch.rsqrt(m2 / count + self.eps)

    def forward(self, x: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if statistics is None:
            return super().forward(x)
        return normalize_groups(x, self.num_groups, self.weight, self.bias, *statistics)


def _group_norm(channels: int, groups: int) -> ReducioGroupNorm:
    return ReducioGroupNorm(channels, groups)


def _pad_frames(x: torch.Tensor, before: int = 1, after: int = 1) -> torch.Tensor:
    """Zero frames before and after `x` `(B, C, T, H, W)`: the temporal padding of the 3x3x3 convolutions, which take
    none themselves so that a slice of frames can be convolved with its true neighbours (`_by_frames`)."""
    return F.pad(x, (0, 0, 0, 0, before, after)) if before or after else x


def _streams(x: torch.Tensor, growth: int = 1) -> bool:
    """Whether a 3D block told to stream (`stream=True`, which the autoencoder decides) computes `x`'s output in
    frame steps: when one step holds fewer frames than the clip."""
    return x.ndim == 5 and _frames_per_step(x, growth) < x.shape[2]


def _frames_per_step(x: torch.Tensor, growth: int = 1) -> int:
    """Output frames per step: `_FRAME_STEP_BYTES` of input frames (a step reads 2 more than it writes), or of
    output frames for a block whose frames are `growth` times larger than its input's (an upsampler: 4)."""
    frame_bytes = x[:, :, :1].numel() * x.element_size() * growth
    return max(1, _FRAME_STEP_BYTES // frame_bytes - 2)


def _by_frames(x: torch.Tensor, layers, step: int | None = None) -> torch.Tensor:
    """`layers(_pad_frames(x))` for a per-frame `layers` prologue ending in a 3x3x3 convolution without temporal
    padding, computed `step` output frames at a time: output frames `[s, e)` read input frames `[s - 1, e + 1)`
    (zeros beyond the clip). Equal to the one-call result: each output frame sees the same inputs."""
    frames = x.shape[2]
    step = step or _frames_per_step(x)
    out = None
    for start in range(0, frames, step):
        stop = min(start + step, frames)
        lo, hi = max(start - 1, 0), min(stop + 1, frames)
        part = layers(x[:, :, lo:hi], (lo - start + 1, stop + 1 - hi))
        if out is None:
            out = part.new_empty(*part.shape[:2], frames, *part.shape[3:])
        out[:, :, start:stop] = part
    return out


def _sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """Transformer sinusoids `(length, dim)`: angle `p / 10000^(2 * (j // 2) / dim)`, sin on even j, cos on odd j
    (interleaved), computed in float64 as the original does."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def _split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """`(N, L, heads * d)` -> `(N, heads, L, d)`; channel `c = head * d + i` as in the original."""
    batch, length, channels = tokens.shape
    # Channels contiguous: the CPU's fused attention kernel needs it, else PyTorch builds the (L, L) matrix per head.
    return tokens.contiguous().view(batch, length, heads, channels // heads).transpose(1, 2)


def _merge_heads(tokens: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, length, heads * dim)


def _windows(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """`(B, ..., H, W, C)` with H, W multiples of `window` -> `(B * rows * cols, ... * wh * ww, C)` in window order
    (b, row, col) and tokens in (..., y, x) order."""
    batch, *middle, height, width, channels = x.shape
    rows, cols = height // window[0], width // window[1]
    x = x.reshape(batch, *middle, rows, window[0], cols, window[1], channels)
    n = len(middle)
    # (B, *middle, rows, wh, cols, ww, C) -> (B, rows, cols, *middle, wh, ww, C)
    order = [0, n + 1, n + 3, *range(1, n + 1), n + 2, n + 4, n + 5]
    return x.permute(order).reshape(batch * rows * cols, -1, channels)


def _unwindow(x: torch.Tensor, batch: int, middle: tuple[int, ...], size: tuple[int, int], window: tuple[int, int]):
    """Inverse of `_windows`: `(B * rows * cols, ... * wh * ww, C)` -> `(B, ..., H, W, C)`."""
    rows, cols = size[0] // window[0], size[1] // window[1]
    channels = x.shape[-1]
    x = x.reshape(batch, rows, cols, *middle, window[0], window[1], channels)
    n = len(middle)
    # (B, rows, cols, *middle, wh, ww, C) -> (B, *middle, rows, wh, cols, ww, C)
    order = [0, *range(3, 3 + n), 1, 3 + n, 2, 4 + n, 5 + n]
    return x.permute(order).reshape(batch, *middle, size[0], size[1], channels)


class ReducioResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> dropout -> conv, plus a 1x1 shortcut when the width changes.

    3x3x3 convolutions for video (`dims=3`), 3x3 for the content frame (`dims=2`); zero padding; no time embedding.
    The 3D convolutions pad time in `forward` (`_pad_frames`): with `stream=True` (the autoencoder's choice: no
    autograd), a video block computes its output a few frames at a time (`_forward_by_frames`), with the same result.
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        padding = (0, 1, 1) if dims == 3 else 1
        self.dims = dims
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = conv(in_channels, out_channels, 3, padding=padding)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_channels, out_channels, 3, padding=padding)
        self.nin_shortcut = conv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return _pad_frames(x) if self.dims == 3 else x

    def forward(self, x: torch.Tensor, stream: bool = False, convolve_by_frames: bool = False) -> torch.Tensor:
        """`convolve_by_frames` (exact tiles, whose shared GroupNorms need whole-clip norm calls): the norms run on
        the whole clip, the 3x3x3 convolutions a few frames at a time, so that no padded copy of a map exists."""
        if stream and _streams(x) and not (self.training and self.dropout.p > 0):
            return self._forward_by_frames(x)
        # One statement per layer so that each intermediate is freed as soon as the next one exists.
        h = F.silu(self.norm1(x), inplace=True)
        h = self._convolve(self.conv1, h, convolve_by_frames)
        h = F.silu(self.norm2(h), inplace=True)
        h = self._convolve(self.conv2, self.dropout(h), convolve_by_frames)
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut)

    def _convolve(self, conv: nn.Module, h: torch.Tensor, by_frames: bool) -> torch.Tensor:
        if by_frames and self.dims == 3:
            return _by_frames(h, lambda part, pad: conv(_pad_frames(part, *pad)))
        return conv(self._pad(h))

    def _forward_by_frames(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` a few output frames at a time (inference): each GroupNorm normalises the frames a step reads
        with the statistics of the whole clip, measured first, so that besides the input, the hidden map and the
        output only one step's temporaries exist (at 256 channels x 16 x 256 x 256, 1 GiB per map)."""
        statistics = self.norm1.statistics(x)

        def first(part: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
            return self.conv1(_pad_frames(F.silu(self.norm1(part, statistics), inplace=True), *pad))

        h = _by_frames(x, first)
        statistics = self.norm2.statistics(h)

        def second(part: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
            return self.conv2(_pad_frames(self.dropout(F.silu(self.norm2(part, statistics), inplace=True)), *pad))

        out = _by_frames(h, second)
        del h
        if self.nin_shortcut is None:
            return out.add_(x)
        step = _frames_per_step(x)
        for start in range(0, x.shape[2], step):
            out[:, :, start : start + step] += self.nin_shortcut(x[:, :, start : start + step])
        return out


class ReducioDownsample(nn.Module):
    """2x downsampling: one zero at the END of each downsampled axis, then a stride-2 convolution without padding.

    `dims=2`: 3x3 stride 2 (content frame). `dims=3`: kernel (1, 3, 3) stride (1, 2, 2) when `temporal` is False,
    (3, 3, 3) stride 2 when True (16 frames -> 8). Sizes go n -> floor(n / 2).
    """

    def __init__(self, channels: int, dims: int, temporal: bool = False):
        super().__init__()
        if dims == 2:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)
            self.padding = (0, 1, 0, 1)
        elif temporal:
            self.conv = nn.Conv3d(channels, channels, 3, stride=2)
            self.padding = (0, 1, 0, 1, 0, 1)
        else:
            self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2))
            self.padding = (0, 1, 0, 1, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ReducioUpsampleConv(NearestUpsampleConvMixin, nn.Conv3d):
    """The upsampler's convolution, applied to the input BEFORE its nearest 2x upsampling of (H, W) (or (T, H, W)
    when `temporal`): `conv(interpolate(x, 2, "nearest"))` with a 3x3x3 kernel and zero padding 1, computed as 4 (8)
    output phases (`NearestUpsampleConvMixin`). The parameters are the original's `conv.weight` `(C, C, 3, 3, 3)` and
    `conv.bias`.
    """

    def __init__(self, channels: int, temporal: bool):
        super().__init__(channels, channels, 3)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, frame_pad: tuple[int, int] = (1, 1)) -> torch.Tensor:
        """`x` `(B, C, t, h, w)` -> `(B, C, t * (2 if temporal else 1), 2h, 2w)`. `frame_pad`: zero frames before and
        after `x` (in input frames; `(1, 1)` for a whole clip), so that a slice of frames with its neighbours can be
        given (`_by_frames`)."""
        return self.upsample_then_convolve(x, (self.temporal, True, True), (frame_pad, (1, 1), (1, 1)))


class ReducioUpsample(nn.Module):
    """Nearest 2x upsampling of (H, W) (or of (T, H, W) when `temporal`), then a 3x3x3 convolution, zero padding 1,
    both in `ReducioUpsampleConv` (which never builds the upsampled tensor). With `stream=True`, the output is
    computed a few frames at a time (`_by_frames`), with the same result."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = ReducioUpsampleConv(channels, temporal)

    def forward(self, x: torch.Tensor, stream: bool = False) -> torch.Tensor:
        if self.temporal or not (stream and _streams(x, growth=4)):
            return self.conv(x)
        return _by_frames(x, self.conv, _frames_per_step(x, growth=4))


def _tile_reach(layer: nn.Module) -> int:
    """How far, in input pixels, beyond its own an output pixel of a layer that exact tiles run as one step reads
    (`_tiling.TileStep.halo`): a resnet its two 3x3 convolutions (the shortcut is 1x1); a downsampler one pixel past
    its own two (one zero right / bottom, then 3x3 stride 2), rounded up to 2 so that tiles stay aligned to its
    stride; an upsampler its 3x3 convolution after the nearest 2x (one fine pixel past a tile is half an input
    pixel, rounded up); a convolution its padding."""
    if isinstance(layer, (ReducioResnetBlock, ReducioDownsample)):
        return 2
    if isinstance(layer, ReducioUpsample):
        return 1
    return layer.padding[-1]


def _tile_step(layer: nn.Module) -> TileStep:
    if isinstance(layer, ReducioResnetBlock):
        return TileStep(partial(layer, convolve_by_frames=True), _tile_reach(layer), layer)
    return TileStep(layer, _tile_reach(layer), layer)


class ReducioSelfAttention(nn.Module):
    """Multi-head self-attention over all positions (the original's `MemoryEfficientAttnBlock`), residual.

    GroupNorm, 1x1 q/k/v convolutions, `heads` heads of `C / heads` channels (softmax scale `(C / heads)^-0.5`),
    tokens in (t, h, w) order, 1x1 output projection. For an image (`dims=2`) larger than `window_size^2` positions,
    attention runs in `window_size x window_size` windows of the zero-padded (after the norm) map, unmasked as in the
    original. The original's windowed path for video is broken (it raises an AttributeError), so video larger than
    `window_size^2` latent positions is refused.
    """

    def __init__(self, channels: int, dims: int, heads: int = 8, window_size: int = 128, groups: int = 32):
        super().__init__()
        if channels % heads:
            raise ValueError(f"Self-attention width {channels} is not a multiple of its {heads} heads.")
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.dims = dims
        self.heads = heads
        self.window_size = window_size
        self.norm = _group_norm(channels, groups)
        self.q = conv(channels, channels, 1)
        self.k = conv(channels, channels, 1)
        self.v = conv(channels, channels, 1)
        self.proj_out = conv(channels, channels, 1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            _split_heads(q, self.heads), _split_heads(k, self.heads), _split_heads(v, self.heads)
        )
        return _merge_heads(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        ws = self.window_size
        h = self.norm(x)
        if self.dims == 3:
            if height * width > ws * ws:
                raise ValueError(
                    f"Latent frames of {height}x{width} positions exceed the self-attention window "
                    f"({ws}x{ws}); the original's windowed video attention is broken (it raises), so this size is "
                    "not supported. Use enable_tiling() or smaller frames."
                )
            batch, channels, frames = x.shape[:3]
            q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
            out = self._attend(q, k, v).transpose(1, 2).reshape(batch, channels, frames, height, width)
            return x + self.proj_out(out)
        batch, channels = x.shape[:2]
        if height * width > ws * ws:
            padded = F.pad(h, (0, (-width) % ws, 0, (-height) % ws))
            size = padded.shape[-2:]
            q, k, v = (_windows(proj(padded).permute(0, 2, 3, 1), (ws, ws)) for proj in (self.q, self.k, self.v))
            out = _unwindow(self._attend(q, k, v), batch, (), size, (ws, ws))
            out = out[:, :height, :width].permute(0, 3, 1, 2)
        else:
            q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
            out = self._attend(q, k, v).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class ReducioCrossAttention(nn.Module):
    """Attention from video tokens to content-frame tokens: `to_q` (no bias), `to_k` / `to_v` (no bias) from the
    context width, heads of `head_dim` channels (scale `head_dim^-0.5`), `to_out` with bias.

    Global: every query token attends to every context position. Windowed (original rule: the context has more
    than `window_size^2` positions AND a query frame has at least `window_size^2`): the context is zero-padded
    right/bottom to multiples of `window_size` and cut into square windows; the query frames get windows of
    `ceil(window_size * h / h')` x `ceil(window_size * w / w')` (all frames in one window), zero-padded likewise;
    window k of the video attends to window k of the context only, padded context positions unmasked.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        heads: int,
        head_dim: int = 64,
        window_size: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.window_size = window_size
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.dropout = nn.Dropout(dropout)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            _split_heads(q, self.heads), _split_heads(k, self.heads), _split_heads(v, self.heads)
        )
        return _merge_heads(out)

    def forward(self, hidden: torch.Tensor, grid: tuple[int, int, int], context: torch.Tensor) -> torch.Tensor:
        """`hidden`: `(B, t*h*w, C)` normalised query tokens of a `grid = (t, h, w)` video; `context`:
        `(B, C_ctx, h', w')`. Returns `(B, t*h*w, C)`."""
        batch = hidden.shape[0]
        frames, height, width = grid
        ctx_h, ctx_w = context.shape[-2:]
        ws = self.window_size
        if ctx_h * ctx_w > ws * ws and height * width >= ws * ws:
            win = (math.ceil(ws * height / ctx_h), math.ceil(ws * width / ctx_w))
            context = F.pad(context, (0, (-ctx_w) % ws, 0, (-ctx_h) % ws))
            query = hidden.view(batch, frames, height, width, -1)
            query = F.pad(query, (0, 0, 0, (-width) % win[1], 0, (-height) % win[0]))
            size = query.shape[2:4]
            if (size[0] // win[0], size[1] // win[1]) != (context.shape[-2] // ws, context.shape[-1] // ws):
                raise ValueError(
                    f"Windowed cross-attention needs as many query windows as context windows: a {height}x{width} "
                    f"feature map in {win[0]}x{win[1]} windows vs a {ctx_h}x{ctx_w} context in {ws}x{ws} windows."
                )
            q = self.to_q(_windows(query, win))
            context = _windows(context.permute(0, 2, 3, 1), (ws, ws))
            out = _unwindow(self._attend(q, self.to_k(context), self.to_v(context)), batch, (frames,), size, win)
            out = out[:, :, :height, :width].reshape(batch, frames * height * width, -1)
        else:
            context = context.flatten(2).transpose(1, 2)
            out = self._attend(self.to_q(hidden), self.to_k(context), self.to_v(context))
        return self.dropout(self.to_out(out))


class ReducioFusionBlock(nn.Module):
    """Cross-attention of a video feature map to content features, with a temporal sinusoid added for good.

    `x + pe[t]` (the same vector for every position of frame t) is LayerNormed to form the queries; the context is
    used raw; the output is `x + pe + attention` (the positional table stays in the feature stream, as in the
    original). `pos_embed` `(1, num_frames, 1, C)` is a stored, frozen table: it fixes the number of frames.
    """

    def __init__(
        self,
        channels: int,
        context_channels: int,
        num_frames: int,
        head_dim: int = 64,
        window_size: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        heads = max(1, channels // head_dim)
        self.pos_embed = nn.Parameter(_sinusoid_table(num_frames, channels)[None, :, None], requires_grad=False)
        self.norm = nn.LayerNorm(channels, eps=1e-5)
        self.attn = ReducioCrossAttention(channels, context_channels, heads, head_dim, window_size, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, by_frames: bool = False) -> torch.Tensor:
        """`x` `(B, C, t, h, w)`, `context` `(B, C_ctx, h', w')`. `by_frames` (exact tiles, whose whole-frame steps
        must not hold the clip's tokens several times over): one frame's queries at a time into the output. Every
        query attends to the same keys either way (the windows depend on its place in the frame, not on the other
        frames), so the result is the same up to rounding."""
        frames = x.shape[2]
        if frames != self.pos_embed.shape[1]:
            raise ValueError(
                f"This fusion block works on {self.pos_embed.shape[1]} frames (its stored temporal table), got "
                f"{frames}: decode one 16-frame segment's latents at a time."
            )
        if not by_frames:
            return self._fuse(x, context, self.pos_embed)
        out = torch.empty_like(x)
        for frame in range(frames):
            out[:, :, frame : frame + 1] = self._fuse(x[:, :, frame : frame + 1], context, self.pos_embed[:, [frame]])
        return out

    def _fuse(self, x: torch.Tensor, context: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """`forward` of the frames of `x` whose rows of the temporal table are `pos_embed` `(1, t, 1, C)`."""
        batch, channels, frames, height, width = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width, channels)
        tokens = (tokens + pos_embed.to(tokens.dtype)).reshape(batch, frames * height * width, channels)
        tokens = tokens + self.attn(self.norm(tokens), (frames, height, width), context)
        return tokens.view(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3).contiguous()


class ReducioDownBlock(nn.Module):
    def __init__(self, in_channels, out_channels, layers, dims, downsample, temporal, dropout, groups):
        super().__init__()
        self.block = nn.ModuleList(
            ReducioResnetBlock(in_channels if i == 0 else out_channels, out_channels, dims, dropout, groups)
            for i in range(layers)
        )
        self.downsample = ReducioDownsample(out_channels, dims, temporal) if downsample else None


class ReducioEncoderMidBlock(nn.Module):
    def __init__(self, channels, dims, heads, window_size, dropout, groups, second_block=True):
        super().__init__()
        self.block_1 = ReducioResnetBlock(channels, channels, dims, dropout, groups)
        self.attn_1 = ReducioSelfAttention(channels, dims, heads, window_size, groups)
        # The content encoder's second mid block exists in the checkpoint but never reaches an output: not built.
        self.block_2 = ReducioResnetBlock(channels, channels, dims, dropout, groups) if second_block else None


class ReducioEncoder(nn.Module):
    """The video encoder (`dims=3`): `(B, 3, T, H, W)` -> `(B, 2 * z_channels, T / 2^f_t, H / 2^(L-1), ...)`.

    Every level but the last halves H and W; the last `num_temporal_downsamples` of those also halve T.
    """

    def __init__(
        self,
        in_channels: int,
        z_channels: int,
        conv_in_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        num_temporal_downsamples: int,
        heads: int,
        window_size: int,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self.conv_in = nn.Conv3d(in_channels, conv_in_channels, 3, padding=1)
        channels = [conv_in_channels, *block_out_channels]
        self.down = nn.ModuleList(
            ReducioDownBlock(
                channels[i],
                channels[i + 1],
                layers_per_block,
                3,
                downsample=i < levels - 1,
                temporal=i >= levels - 1 - num_temporal_downsamples,
                dropout=dropout,
                groups=groups,
            )
            for i in range(levels)
        )
        width = block_out_channels[-1]
        self.mid = ReducioEncoderMidBlock(width, 3, heads, window_size, dropout, groups)
        self.norm_out = _group_norm(width, groups)
        self.conv_out = nn.Conv3d(width, 2 * z_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, stream: bool = False) -> torch.Tensor:
        """`stream`: whether the resnets compute their output a few frames at a time (`ReducioResnetBlock`)."""
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = checkpointed(self, block, h, stream)
            if level.downsample is not None:
                h = level.downsample(h)
        h = checkpointed(self, self.mid.block_1, h, stream)
        h = checkpointed(self, self.mid.attn_1, h)
        h = checkpointed(self, self.mid.block_2, h, stream)
        return self.conv_out(F.silu(self.norm_out(h)))

    def high_res_steps(self) -> list[TileStep]:
        """`(B, 3, T, H, W)` -> features at latent resolution, as steps that exact tiles run one at a time
        (`_tiling.tiled_in_layer_order`): `conv_in`, then every resnet and downsampler of the levels above latent
        resolution (all but the last)."""
        steps = [_tile_step(self.conv_in)]
        for level in self.down[:-1]:
            steps += [_tile_step(block) for block in level.block] + [_tile_step(level.downsample)]
        return steps

    def forward_low(self, h: torch.Tensor) -> torch.Tensor:
        """What follows `high_res_steps`, on whole frames: the last level's resnets, the mid block (its attention
        spans the frame), `norm_out` and `conv_out`."""
        for block in self.down[-1].block:
            h = block(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ReducioContentEncoder(nn.Module):
    """The 2D content-frame encoder: `(B, 3, H, W)` -> features, one per level (the output of its resnets, before
    its downsampler) plus the mid feature after self-attention: `len(block_out_channels) + 1` maps, the first at
    full resolution, each level halving H and W (the last level and the mid feature share a size)."""

    def __init__(
        self,
        in_channels: int,
        conv_in_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        heads: int,
        window_size: int,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, conv_in_channels, 3, padding=1)
        channels = [conv_in_channels, *block_out_channels]
        self.down = nn.ModuleList(
            ReducioDownBlock(channels[i], channels[i + 1], layers_per_block, 2, i < levels - 1, False, dropout, groups)
            for i in range(levels)
        )
        self.mid = ReducioEncoderMidBlock(
            block_out_channels[-1], 2, heads, window_size, dropout, groups, second_block=False
        )
        self.gradient_checkpointing = False

    def forward(self, frame: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = []
        h = self.conv_in(frame)
        for level in self.down:
            for block in level.block:
                h = checkpointed(self, block, h)
            features.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = checkpointed(self, self.mid.block_1, h)
        features.append(checkpointed(self, self.mid.attn_1, h))
        return tuple(features)


class ReducioDecoderMidBlock(nn.Module):
    def __init__(
        self, in_channels, channels, context_channels, num_frames, heads, head_dim, window_size, dropout, groups
    ):
        super().__init__()
        self.block_1 = ReducioResnetBlock(in_channels, channels, 3, dropout, groups)
        self.fusion = (
            ReducioFusionBlock(channels, context_channels, num_frames, head_dim, window_size, dropout)
            if context_channels
            else None
        )
        self.attn_1 = ReducioSelfAttention(channels, 3, heads, window_size, groups)
        self.block_2 = ReducioResnetBlock(channels, channels, 3, dropout, groups)


class ReducioUpBlock(nn.Module):
    """One decoder level: resnets, an optional fusion block, resnets, an optional upsampler."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        layers: int,
        context_channels: int,
        num_frames: int,
        upsample: bool,
        temporal: bool,
        head_dim: int,
        window_size: int,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        self.block_1 = nn.ModuleList(
            ReducioResnetBlock(in_channels if i == 0 else channels, channels, 3, dropout, groups)
            for i in range(layers)
        )
        self.fusion = (
            ReducioFusionBlock(channels, context_channels, num_frames, head_dim, window_size, dropout)
            if context_channels
            else None
        )
        self.block_2 = nn.ModuleList(ReducioResnetBlock(channels, channels, 3, dropout, groups) for _ in range(layers))
        self.upsample = ReducioUpsample(channels, temporal) if upsample else None


class ReducioDecoder(nn.Module):
    """The fusion decoder: latents `(B, z_channels, t, h, w)` + content features -> `(B, 3, T, H, W)`.

    `up[i]` works at 1 / 2^i of the output size (`up[0]` last); level i cross-attends to content feature
    `fusion_feature_index[i]` (-1: none) and, when `mid_fusion`, the mid block to the last (mid) content feature.
    Every level but 0 doubles H and W; the deepest `num_temporal_downsamples` levels also double T.
    """

    def __init__(
        self,
        out_channels: int,
        z_channels: int,
        conv_in_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        num_temporal_downsamples: int,
        num_frames: int,
        content_channels: tuple[int, ...],
        fusion_feature_index: tuple[int, ...],
        mid_fusion: bool,
        heads: int,
        head_dim: int,
        window_size: int,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        levels = len(block_out_channels)
        self.fusion_feature_index = tuple(fusion_feature_index)
        self.conv_in = nn.Conv3d(z_channels, conv_in_channels, 3, padding=1)
        latent_frames = num_frames // 2**num_temporal_downsamples
        self.mid = ReducioDecoderMidBlock(
            conv_in_channels,
            block_out_channels[-1],
            content_channels[-1] if mid_fusion else 0,
            latent_frames,
            heads,
            head_dim,
            window_size,
            dropout,
            groups,
        )
        up = []
        frames, width = latent_frames, block_out_channels[-1]
        for i in reversed(range(levels)):
            temporal = i >= levels - num_temporal_downsamples
            index = fusion_feature_index[i]
            context = content_channels[index] if index >= 0 else 0
            up.append(
                ReducioUpBlock(
                    width,
                    block_out_channels[i],
                    layers_per_block,
                    context,
                    frames,
                    i > 0,
                    temporal,
                    head_dim,
                    window_size,
                    dropout,
                    groups,
                )
            )
            width = block_out_channels[i]
            if i > 0 and temporal:
                frames *= 2
        self.up = nn.ModuleList(reversed(up))
        self.norm_out = _group_norm(block_out_channels[0], groups)
        self.conv_out = nn.Conv3d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor, features: tuple[torch.Tensor, ...], stream: bool = False) -> torch.Tensor:
        """`stream`: whether the resnets and upsamplers compute their output a few frames at a time (the autoencoder
        streams only when no graph is recorded, so the last SiLU may then overwrite the fresh GroupNorm output)."""
        h = self.conv_in(z)
        h = checkpointed(self, self.mid.block_1, h, stream)
        if self.mid.fusion is not None:
            h = checkpointed(self, self.mid.fusion, h, features[-1])
        h = checkpointed(self, self.mid.attn_1, h)
        h = checkpointed(self, self.mid.block_2, h, stream)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block_1:
                h = checkpointed(self, block, h, stream)
            if level.fusion is not None:
                h = checkpointed(self, level.fusion, h, features[self.fusion_feature_index[i]])
            for block in level.block_2:
                h = checkpointed(self, block, h, stream)
            if level.upsample is not None:
                h = level.upsample(h, stream)
        return self.conv_out(F.silu(self.norm_out(h), inplace=stream))

    def output_layers(self, h: torch.Tensor) -> torch.Tensor:
        """`norm_out`, SiLU and `conv_out`: `(B, C, T, H, W)` -> `(B, 3, T, H, W)`."""
        return self.conv_out(F.silu(self.norm_out(h)))

    def tile_steps(self, features: tuple[torch.Tensor, ...], frame_side: int) -> list[TileStep]:
        """The layers after the mid block as the steps of exact tiles (`_tiling.tiled_in_layer_order`), in order:
        resnets, upsamplers and, last, the output layers over tiles (local in space apart from their GroupNorms);
        each fusion block on whole frames, a frame at a time, since its windowed cross-attention places a query by
        where it is in the frame: its halo is the frame (`frame_side`, the output's larger side), so it runs once,
        untiled. Every step's input and output are step boundaries, kept where exact tiles keep them (on disk with
        `tile_offload_device="disk"`). A fusion step lets go of its content feature (from `features`) once it ran,
        before the full-resolution steps."""
        steps = []
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            steps += [_tile_step(block) for block in level.block_1]
            if level.fusion is not None:
                fusion = _FusionStep(level.fusion, features[self.fusion_feature_index[i]])
                steps.append(TileStep(fusion, frame_side, level.fusion))
            steps += [_tile_step(block) for block in level.block_2]
            if level.upsample is not None:
                steps.append(_tile_step(level.upsample))
        steps.append(TileStep(self.output_layers, _tile_reach(self.conv_out), self.norm_out))
        return steps


class _FusionStep:
    """A fusion block as a step of exact tiles: one call on whole frames, a frame at a time
    (`ReducioFusionBlock(by_frames=True)`), after which its content feature is released."""

    def __init__(self, fusion: ReducioFusionBlock, context: torch.Tensor):
        self.fusion, self.context = fusion, context

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.context is None:
            raise RuntimeError("A fusion step of exact tiles runs once: its content feature was released.")
        context, self.context = self.context, None
        return self.fusion(x, context, by_frames=True)


@dataclass
class ReducioTiledContent:
    """Content features computed tile by tile, as the original's tiled mode keeps them: `rows[i][j]` is the feature
    tuple of pixel tile (i, j), blended with its upper and left neighbours and NOT cropped. `decode` pairs latent
    tile (i, j) with it, as the original does."""

    rows: list[list[tuple[torch.Tensor, ...]]]

    def select(self, index: slice) -> ReducioTiledContent:
        """The same tiles for a slice of the batch."""
        return ReducioTiledContent([[tuple(f[index] for f in tile) for tile in row] for row in self.rows])


@dataclass(frozen=True)
class ReducioContentFeatures:
    """The content features of ONE 16-frame segment: what `encode_content(frame)` returns for the segment's content
    frame `(B, 3, H, W)` (its frame 7), and what `decode(content_features=...)` takes instead of that frame (one of
    these for a one-segment clip, a list of k of them, in order, for k segments).

    `maps` is the tuple of `len(content_block_out_channels) + 1` feature maps in the original's order: level i
    `(B, content_block_out_channels[i], H / 2^i, W / 2^i)` for i < L, then the mid feature, the size and width of
    the last level (released: 5 maps, 128 x H, 256 x H/2, 512 x H/4, 512 x H/8, 512 x H/8). With tiling enabled and
    a frame larger than one tile, `maps` is instead a `ReducioTiledContent` holding such a tuple per pixel tile
    (see `enable_tiling`).
    """

    maps: tuple[torch.Tensor, ...] | ReducioTiledContent

    @property
    def tiled(self) -> bool:
        return isinstance(self.maps, ReducioTiledContent)


class AutoencoderKLReducio(
    ModelMixin, AutoencoderMixin, ConfigMixin, FromOriginalCheckpointMixin, VideoAutoencoderMixin
):
    r"""Reducio-VAE (microsoft/Reducio-VAE): 16-frame clips to `4 x 32 x 32`-compressed latents (ft4) or
    `2 x 32 x 32` (ft2), decoded with the help of the clip's content frame.

    * `encode(x)`: `x` `(B, 3, T, H, W)` in [-1, 1], T = 16k, H and W multiples of 32 -> the RAW posterior over
      `(B, latent_channels, k * 16 / r_t, H / 32, W / 32)` (log-variance clamped to [-30, 20]); each 16-frame segment
      is encoded as an independent clip.
    * `encode_content(frame)`: the content frame `(B, 3, H, W)` -> its features, a `ReducioContentFeatures` (5 maps
      for the releases). The content frame of a clip is its frame `(T - 1) // 2` (index 7 of 16), of each segment
      for T = 16k.
    * `normalize_latents(z)`: **the latent normalisation** (`latent_normalization` in the docs of every model):
      `layer_norm(z)` over `(C, t, h, w)` of each 16-frame segment's latents, per sample, no affine, eps
      `latent_norm_eps` (1e-5). This is what Reducio-DiT is trained on, and what `decode` takes. It is not
      invertible: `denormalize_latents` is the identity, `latents_for_decode(z) = normalize_latents(z)`.
    * `decode(latents, content_frame=..., content_features=...)`: NORMALISED latents + the content frame(s) (or
      their features from `encode_content`; exactly one of the two) -> `(B, 3, 16k, H, W)`, unclamped.

    The defaults are the released ft4 model (`reducio-ft4-fs32-attn23.ckpt`); ft2 is `num_temporal_downsamples=1`.

    Args:
        in_channels / out_channels (`int`, defaults to 3): video channels.
        latent_channels (`int`, defaults to 16): posterior channels (the original `embed_dim`).
        z_channels (`int`, defaults to 16): encoder output / decoder input channels around the quant convs.
        conv_in_channels (`int`, defaults to 128): width of the video encoder's `conv_in` (original `ch`).
        block_out_channels (`tuple[int]`, defaults to `(128, 256, 256, 512, 512, 512)`): video encoder widths per
            level (`ch * ch_mult`); L levels compress H and W by `2^(L-1)`.
        decoder_block_out_channels (`tuple[int]`, optional): decoder widths per level (`ch_in * ch_mult`); defaults
            to `block_out_channels`. The decoder's `conv_in` is `block_out_channels[-1]` wide.
        layers_per_block (`int`, defaults to 2): resnets per encoder level; decoder levels have twice as many, split
            around their fusion block.
        num_temporal_downsamples (`int`, defaults to 2): the original `f_t` (ft4: 2, ft2: 1): the deepest levels
            that also halve / double time. Temporal compression `2^f_t`.
        num_frames (`int`, defaults to 16): the clip length (`temp_res`), fixed by the decoder's temporal tables.
        content_conv_in_channels (`int`, defaults to 128): width of the content encoder's `conv_in`.
        content_block_out_channels (`tuple[int]`, defaults to `(128, 256, 512, 512)`): content encoder widths.
        content_layers_per_block (`int`, defaults to 2): resnets per content encoder level.
        fusion_feature_index (`tuple[int]`, defaults to `(-1, -1, 2, 3, -1, -1)`): per decoder level (0 = highest
            resolution), the content feature it cross-attends to, or -1 (original `ch_fuse`).
        mid_fusion (`bool`, defaults to True): whether the decoder's mid block cross-attends to the mid content
            feature.
        attention_num_heads (`int`, defaults to 8): heads of the mid self-attention blocks.
        fusion_head_dim (`int`, defaults to 64): head width of the fusion cross-attention (`max(1, C // 64)` heads).
        window_size (`int`, defaults to 128): window of the decoder's cross-attention (and the video self-attention
            limit), in positions per side.
        content_window_size (`int`, defaults to 256): window of the content encoder's self-attention.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups (eps 1e-6).
        dropout (`float`, defaults to 0.0).
        latent_norm_eps (`float`, defaults to 1e-5): eps of the latent layer norm.
        force_upcast (`bool`, default False): whether float16 runs should be upcast to float32, as diffusers
            pipelines read it; False because the original decodes under float16 autocast.
        temporal_compression_ratio / spatial_compression_ratio (`int`, optional): derived; given values must agree.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ReducioResnetBlock", "ReducioSelfAttention", "ReducioFusionBlock"]
    _skip_layerwise_casting_patterns = ["norm", "pos_embed"]

    @property
    def _group_offload_block_modules(self) -> list[str]:
        """Block-level group offloading: every level's layers are called one by one (frame streaming, tiles, the
        fusion blocks), so each layer is offloaded on its own."""
        return block_offload_names(self, ["quant_conv", "post_quant_conv"], ["encoder", "decoder", "content_encoder"])

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        z_channels: int = 16,
        conv_in_channels: int = 128,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 512, 512),
        decoder_block_out_channels: tuple[int, ...] | None = None,
        layers_per_block: int = 2,
        num_temporal_downsamples: int = 2,
        num_frames: int = 16,
        content_conv_in_channels: int = 128,
        content_block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        content_layers_per_block: int = 2,
        fusion_feature_index: tuple[int, ...] = (-1, -1, 2, 3, -1, -1),
        mid_fusion: bool = True,
        attention_num_heads: int = 8,
        fusion_head_dim: int = 64,
        window_size: int = 128,
        content_window_size: int = 256,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        latent_norm_eps: float = 1e-5,
        force_upcast: bool = False,
        temporal_compression_ratio: int | None = None,
        spatial_compression_ratio: int | None = None,
    ):
        super().__init__()
        decoder_block_out_channels = tuple(decoder_block_out_channels or block_out_channels)
        self._check_layout(
            len(block_out_channels),
            decoder_block_out_channels,
            num_temporal_downsamples,
            num_frames,
            len(content_block_out_channels) + 1,
            fusion_feature_index,
        )
        register_compression_ratios(
            self,
            temporal=2**num_temporal_downsamples,
            spatial=2 ** (len(block_out_channels) - 1),
            temporal_compression_ratio=temporal_compression_ratio,
            spatial_compression_ratio=spatial_compression_ratio,
        )
        self.register_to_config(decoder_block_out_channels=decoder_block_out_channels)

        self.encoder = ReducioEncoder(
            in_channels,
            z_channels,
            conv_in_channels,
            tuple(block_out_channels),
            layers_per_block,
            num_temporal_downsamples,
            attention_num_heads,
            window_size,
            dropout,
            norm_num_groups,
        )
        self.content_encoder = ReducioContentEncoder(
            in_channels,
            content_conv_in_channels,
            tuple(content_block_out_channels),
            content_layers_per_block,
            attention_num_heads,
            content_window_size,
            dropout,
            norm_num_groups,
        )
        self.decoder = ReducioDecoder(
            out_channels,
            z_channels,
            block_out_channels[-1],
            decoder_block_out_channels,
            layers_per_block,
            num_temporal_downsamples,
            num_frames,
            (*content_block_out_channels, content_block_out_channels[-1]),
            tuple(fusion_feature_index),
            mid_fusion,
            attention_num_heads,
            fusion_head_dim,
            window_size,
            dropout,
            norm_num_groups,
        )
        self.quant_conv = nn.Conv3d(2 * z_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(latent_channels, z_channels, 1)

        self.use_slicing = False
        # Without autograd, the 3D resnets and upsamplers compute their output a few frames at a time (`_by_frames`):
        # same result, a fraction of the peak memory. Set False to run every layer on the whole clip.
        self.use_frame_streaming = True
        self.use_tiling = False
        # 256-px tiles every 192 px (smaller where the attention window is: a blended tile runs in one piece).
        limits = self.tiling_limits()
        self.tile_sample_min_height = self.tile_sample_min_width = limits.default_size
        self.tile_sample_stride_height = self.tile_sample_stride_width = limits.default_stride(limits.default_size)
        self.tile_exact, self.tile_offload_device = False, "auto"  # offload: exact tiles' step boundaries

    @staticmethod
    def _check_layout(levels, decoder_block_out_channels, temporal_downsamples, num_frames, features, fusion_index):
        """`features`: the number of content features (one per content level, plus the mid feature)."""
        if len(decoder_block_out_channels) != levels or len(fusion_index) != levels:
            raise ValueError(
                f"decoder_block_out_channels ({len(decoder_block_out_channels)}) and fusion_feature_index "
                f"({len(fusion_index)}) need one entry per level of block_out_channels ({levels})."
            )
        if not 0 <= temporal_downsamples <= levels - 1:
            raise ValueError(f"num_temporal_downsamples={temporal_downsamples} must be in [0, {levels - 1}].")
        temporal = 2**temporal_downsamples
        if num_frames % temporal:
            raise ValueError(f"num_frames={num_frames} must be a multiple of the temporal compression {temporal}.")
        bad = [index for index in fusion_index if not -1 <= index < features]
        if bad:
            raise ValueError(f"fusion_feature_index entries {bad} are not content features (0..{features - 1}) or -1.")

    # --- the package-wide contract -------------------------------------------------------------------------------

    @property
    def input_rule(self) -> InputRule:
        """T = 16k (k independent 16-frame clips), H and W multiples of 32."""
        frames = int(self.config.num_frames)
        return InputRule(
            int(self.config.temporal_compression_ratio),
            int(self.config.spatial_compression_ratio),
            first_num_frames=frames,
            frame_step=frames,
        )

    @property
    def latent_frames_per_segment(self) -> int:
        return int(self.config.num_frames) // int(self.config.temporal_compression_ratio)

    @property
    def latent_normalization(self) -> dict:
        return {
            "latent_norm_eps": float(self.config.latent_norm_eps),
            "formula": "layer_norm(z) over (C, t, h, w) of each 16-frame segment's latents, per sample, no affine; "
            "decode takes these normalised latents (not invertible)",
        }

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents `(B, C, k * t, h, w)` (t latent frames per 16-frame segment) -> layer-normalised latents: each
        sample's `(C, t, h, w)` block of each segment to zero mean and unit variance (no affine, eps 1e-5)."""
        segment = self.latent_frames_per_segment
        check_latents(
            z,
            latent_channels=self.config.latent_channels,
            frame_multiple=segment,
            name="z",
            description="raw posterior latents",
        )
        batch, channels, frames, height, width = z.shape
        count = frames // segment
        if count == 1:
            return F.layer_norm(z, z.shape[1:], eps=self.config.latent_norm_eps)
        blocks = z.view(batch, channels, count, segment, height, width).transpose(1, 2)
        blocks = F.layer_norm(blocks, blocks.shape[2:], eps=self.config.latent_norm_eps)
        return blocks.transpose(1, 2).reshape(z.shape)

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Identity: `decode` takes the normalised latents themselves (the layer norm has no inverse)."""
        return latents

    def latents_for_decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents -> what `decode` takes: `normalize_latents(z)`."""
        return self.normalize_latents(z)

    def content_frame_indices(self, num_frames: int) -> list[int]:
        """Indices of the content frames of a `num_frames`-frame clip: frame `(16 - 1) // 2 = 7` of each segment."""
        segment = int(self.config.num_frames)
        return [start + (segment - 1) // 2 for start in range(0, num_frames - segment + 1, segment)]

    def decode_conditions(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"content_frame": (B, 3, k, H, W)}`: the content frame of each of the k 16-frame segments of `video`."""
        self._check_video(video, "video")
        return {"content_frame": video[:, :, self.content_frame_indices(video.shape[2])]}

    # --- tiling ----------------------------------------------------------------------------------------------------

    def tiling_limits(self) -> TilingLimits:
        """What `enable_tiling` accepts: 256-px tiles every 192 px by default (`_DEFAULT_TILE`), at most the attention
        window (`window_size` latent positions per side) for blended tiles, which run the whole model on one tile."""
        spatial = self.config.spatial_compression_ratio
        largest = self.config.window_size * spatial
        return TilingLimits(
            "Reducio-VAE",
            spatial,
            min(_DEFAULT_TILE, largest),
            Fraction(4, 5),
            max_size=largest,
            frames_note=" (each 16-frame segment is one clip)",
        )

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_min_num_frames: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
        tile_sample_stride_num_frames: int | None = None,
        exact: bool = False,
    ) -> None:
        r"""Encode, compute content features and decode in spatial tiles, so that memory depends on the tile: blended
        tiles as the original's (default: its tiled results, not the untiled ones) or exact tiles (`exact=True`: equal
        to untiled up to float rounding, slower; attention and cross-attention run on whole latent frames, so frames
        past the attention window fail as untiled). The model card compares the modes.

        The original's `tile_sample_min_size = S`, `tile_overlap_factor = ov` are
        `enable_tiling(int(S * (1 + ov)), int(S * (1 + ov)), tile_sample_stride_height=S, tile_sample_stride_width=S)`:
        its released tiles (S = 256, ov = 0.25) are `enable_tiling(320, 320)`.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels, a multiple of 32 (default 256; blended
                tiles at most `window_size * 32`).
            tile_sample_min_width (`int`, *optional*): tile width in pixels, likewise.
            tile_sample_stride_height (`int`, *optional*): step between tiles, a multiple of 32 at most the height
                (default: 4/5 of it, rounded down). Exact tiles do not overlap: unset or equal to the height.
            tile_sample_stride_width (`int`, *optional*): the same for the width.
            tile_sample_min_num_frames, tile_sample_stride_num_frames: unset (each 16-frame segment is one clip).
            exact (`bool`, defaults to `False`): exact tiles instead of the original's blended tiles.

        Exact tiles keep the whole tensors between their layers where `vae.tile_offload_device` says: `"auto"`
        (default: on the CPU in temporary files; on an accelerator where the model runs while they fit, see
        `_tiling.AUTO_SPILL_SHARE`), None, a device (`"cpu"`), `"disk"` or a folder (`_tiling.tiled_in_layer_order`).
        """
        configure_tiling(
            self,
            exact,
            tile_sample_min_height=tile_sample_min_height,
            tile_sample_min_width=tile_sample_min_width,
            tile_sample_min_num_frames=tile_sample_min_num_frames,
            tile_sample_stride_height=tile_sample_stride_height,
            tile_sample_stride_width=tile_sample_stride_width,
            tile_sample_stride_num_frames=tile_sample_stride_num_frames,
        )

    def _tiles_needed(self, height: int, width: int) -> bool:
        """Whether a frame of `height x width` pixels takes the tiled path."""
        return self.use_tiling and (height > self.tile_sample_min_height or width > self.tile_sample_min_width)

    # --- checks ----------------------------------------------------------------------------------------------------

    def _check_video(self, x: torch.Tensor, name: str) -> None:
        rule = self.input_rule
        if not torch.compiler.is_compiling():
            check_video(x, in_channels=self.config.in_channels, spatial_multiple=rule.spatial_multiple, name=name)
        frames = x.shape[2]
        if frames < rule.first_num_frames or frames % rule.step:
            below, above = rule.nearest_num_frames(frames)
            nearest = f"{below} or {above}; e.g. use `x[:, :, :{below}]`" if frames > below else f"{below}"
            raise ValueError(
                f"`{name}` has {frames} frames, but Reducio-VAE takes clips of T = {rule.step}k frames (each 16-frame "
                f"segment is an independent clip; the original only accepts exactly 16 and fails on other counts). "
                f"Nearest valid frame counts: {nearest}."
            )

    def _check_frame(self, frame: torch.Tensor, name: str) -> None:
        spatial = self.config.spatial_compression_ratio
        if not isinstance(frame, torch.Tensor) or frame.ndim != 4 or frame.shape[1] != self.config.in_channels:
            shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise ValueError(
                f"`{name}` must be a content frame of shape (B, {self.config.in_channels}, H, W) in [-1, 1] (the "
                f"clip's frame (T - 1) // 2 = 7), got {shape}."
            )
        if not frame.is_floating_point():
            raise TypeError(f"`{name}` must be a floating point tensor in [-1, 1], got dtype {frame.dtype}.")
        check_not_empty(frame, name)
        if frame.shape[-2] % spatial or frame.shape[-1] % spatial:
            raise ValueError(
                f"`{name}` is {frame.shape[-2]}x{frame.shape[-1]}; H and W must be multiples of {spatial}."
            )
        check_finite(frame, name)

    def _streams_frames(self) -> bool:
        """Whether the blocks stream frames in this call: `use_frame_streaming`, without autograd (which would keep
        every step's tensors) and outside torch.compile (which traces one graph)."""
        return self.use_frame_streaming and not torch.is_grad_enabled() and not torch.compiler.is_compiling()

    # --- encoding --------------------------------------------------------------------------------------------------

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x, self._streams_frames()))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Moments of one 16-frame segment."""
        if self._tiles_needed(x.shape[-2], x.shape[-1]):
            return self.tiled_encode(x)
        return self._encode_moments(x)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        r"""Encode a video into its RAW posterior.

        Args:
            x: `(B, 3, T, H, W)` in [-1, 1], T = 16k (k independent 16-frame segments), H and W multiples of 32.

        Returns:
            `AutoencoderKLOutput(latent_dist)`: a `DiagonalGaussianDistribution` over
            `(B, latent_channels, k * 16 / r_t, H / 32, W / 32)` (r_t = 4 for ft4, 2 for ft2), log-variance clamped
            to [-30, 20]. Pass `normalize_latents(z)` of a sample or mode to `decode` and to Reducio-DiT.
        """
        self._check_video(x, "x")
        x = self._to_compute_dtype(x)
        segment = int(self.config.num_frames)
        items = x.split(1) if self.use_slicing and x.shape[0] > 1 else (x,)
        moments = torch.cat(
            [torch.cat([self._encode(part) for part in item.split(segment, dim=2)], dim=2) for item in items]
        )
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    @apply_forward_hook
    def encode_content(self, frame: torch.Tensor) -> ReducioContentFeatures:
        r"""The content encoder's features of a content frame (the clip's frame `(T - 1) // 2`).

        Args:
            frame: `(B, 3, H, W)` in [-1, 1], H and W multiples of 32.

        Returns:
            A `ReducioContentFeatures` (the feature maps of one 16-frame segment; tile by tile when blended tiling
            is enabled and the frame is larger than one tile; exact tiles use the whole frame's features, computed
            untiled: one 2D frame), what `decode(content_features=...)` takes.
        """
        self._check_frame(frame, "frame")
        frame = self._to_compute_dtype(frame)
        if self._tiles_needed(frame.shape[-2], frame.shape[-1]) and not self.tile_exact:
            return ReducioContentFeatures(self.tiled_encode_content(frame))
        if self.use_slicing and frame.shape[0] > 1:
            parts = [self.content_encoder(item) for item in frame.split(1)]
            return ReducioContentFeatures(tuple(torch.cat(maps) for maps in zip(*parts)))
        return ReducioContentFeatures(self.content_encoder(frame))

    # --- decoding --------------------------------------------------------------------------------------------------

    def _check_content_frame(self, frame: torch.Tensor, z: torch.Tensor, count: int) -> None:
        spatial = self.config.spatial_compression_ratio
        size = (z.shape[-2] * spatial, z.shape[-1] * spatial)
        one = isinstance(frame, torch.Tensor) and frame.ndim == 4 and count == 1
        what = (
            f"{count} content frame(s) of {size[0]}x{size[1]} pixels in [-1, 1]: (B, 3, H, W) for one 16-frame "
            "segment, (B, 3, k, H, W) for k"
        )
        channels = self.config.in_channels
        check_condition(
            frame, z, name="content_frame", channels=channels, size=size, frames=None if one else count, what=what
        )

    def _content_maps(
        self, maps, z: torch.Tensor, name: str, size: tuple[int, int] | None
    ) -> tuple[torch.Tensor, ...]:
        """One segment's (or one content tile's) feature maps, checked against the latents `z` and cast to the compute
        dtype. `size`: the pixels they describe (None for a tile: the size of its first map)."""
        widths = tuple(self.config.content_block_out_channels)
        channels = (*widths, widths[-1])
        if not isinstance(maps, (tuple, list)) or len(maps) != len(channels):
            got = f"{len(maps)} entries" if isinstance(maps, (tuple, list)) else type(maps).__name__
            raise ValueError(f"`{name}` must hold {len(channels)} feature maps (from `encode_content`), got {got}.")
        if size is None:
            size = tuple(maps[0].shape[-2:]) if isinstance(maps[0], torch.Tensor) else (0, 0)
        checked = []
        for level, (feature, width) in enumerate(zip(maps, channels)):
            factor = 2 ** min(level, len(widths) - 1)
            expected = (-(-size[0] // factor), -(-size[1] // factor))
            what = f"level {level} of the features of a {size[0]}x{size[1]} content frame, from `encode_content`"
            check_condition(feature, z, name=f"{name}[{level}]", channels=width, size=expected, what=what)
            checked.append(self._to_compute_dtype(feature))
        return tuple(checked)

    def _check_content_features(self, features, z: torch.Tensor, count: int) -> list:
        """`content_features` checked against the latents: the maps of each segment (tuples, or the tiles of a
        `ReducioTiledContent`), cast to the compute dtype."""
        if isinstance(features, ReducioContentFeatures):
            features = [features]
        if not isinstance(features, (list, tuple)) or not all(isinstance(f, ReducioContentFeatures) for f in features):
            raise TypeError(
                "`content_features` must be what `encode_content` returns (a `ReducioContentFeatures`) for a "
                f"one-segment clip, or a list of one per 16-frame segment; got {type(features).__name__}."
            )
        if len(features) != count:
            raise ValueError(f"`content_features` holds {len(features)} segments' features; the latents hold {count}.")
        spatial = self.config.spatial_compression_ratio
        size = (z.shape[-2] * spatial, z.shape[-1] * spatial)
        segments = []
        for index, feature in enumerate(features):
            name = "content_features.maps" if count == 1 else f"content_features[{index}].maps"
            if not feature.tiled:
                segments.append(self._content_maps(feature.maps, z, name, size))
                continue
            rows = [
                [self._content_maps(tile, z, f"{name}.rows[{i}][{j}]", None) for j, tile in enumerate(row)]
                for i, row in enumerate(feature.maps.rows)
            ]
            segments.append(ReducioTiledContent(rows))
        return segments

    def _decode(self, z: torch.Tensor, features) -> torch.Tensor:
        """One segment: normalised latents `(B, C, t, h, w)` + its content features (or its checked content frame
        `(B, 3, H, W)`, whose features are computed here) -> `(B, 3, 16, H, W)`."""
        spatial = self.config.spatial_compression_ratio
        if self._tiles_needed(z.shape[-2] * spatial, z.shape[-1] * spatial):
            return self.tiled_decode(z, features)
        if isinstance(features, torch.Tensor):
            features = self.content_encoder(self._to_compute_dtype(features))
        if isinstance(features, ReducioTiledContent):
            if len(features.rows) != 1 or len(features.rows[0]) != 1:
                raise ValueError("Tiled content features were given, but these latents are decoded in one piece.")
            features = features.rows[0][0]
        return self.decoder(self.post_quant_conv(z), tuple(features), self._streams_frames())

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        content_frame: torch.Tensor | None = None,
        content_features=None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple:
        r"""Decode NORMALISED latents (`normalize_latents` of a posterior sample or mode) with the content frame.

        Args:
            z: `(B, latent_channels, k * t, h, w)`, t = 16 / r_t latent frames per 16-frame segment.
            content_frame: the content frame, `(B, 3, 32 h, 32 w)` in [-1, 1] for one segment (the clip's frame
                `(T - 1) // 2`), or `(B, 3, k, 32 h, 32 w)` with the content frame of each of k segments (as
                `decode_conditions` returns).
            content_features: instead of `content_frame`, the `ReducioContentFeatures` that `encode_content`
                returned for it (a list of k of them, in order, for k segments); checked against the latents (batch,
                channels and size of every map, finite) and cast to the model's dtype. Exactly one of
                `content_frame` and `content_features` is required.

        Returns:
            `DecoderOutput(sample)` with `sample` `(B, 3, 16k, 32 h, 32 w)`, unclamped.
        """
        segment = self.latent_frames_per_segment
        check_latents(
            z,
            latent_channels=self.config.latent_channels,
            frame_multiple=segment,
            name="z",
            description="normalised latents, `normalize_latents` of a posterior sample or mode",
        )
        count = z.shape[2] // segment
        if (content_frame is None) == (content_features is None):
            raise ValueError(
                "decode needs exactly one of `content_frame` (the clip's frame (T - 1) // 2, shape (B, 3, H, W), or "
                "(B, 3, k, H, W) for k 16-frame segments) and `content_features` (from `encode_content`); "
                + ("both were given." if content_frame is not None else "neither was given.")
            )
        if content_frame is not None:
            self._check_content_frame(content_frame, z, count)
        else:
            segments = self._check_content_features(content_features, z, count)
        z = self._to_compute_dtype(z)  # content frames are cast by `encode_content`, features by their check
        outputs = []
        for index in range(count):
            if content_frame is None:
                features = segments[index]
            else:  # the frame: `_decode` computes its features, one segment (and with tiles one tile) at a time
                features = content_frame if content_frame.ndim == 4 else content_frame[:, :, index]
            part = z[:, :, index * segment : (index + 1) * segment]
            if self.use_slicing and z.shape[0] > 1:
                decoded = torch.cat(
                    [self._decode(part[b : b + 1], _select(features, slice(b, b + 1))) for b in range(z.shape[0])]
                )
            else:
                decoded = self._decode(part, features)
            outputs.append(decoded)
        decoded = torch.cat(outputs, dim=2) if count > 1 else outputs[0]
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    # --- tiles -----------------------------------------------------------------------------------------------------

    def tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """Moments `(B, 2 * latent_channels, t, H / 32, W / 32)` of one segment, tile by tile (see `enable_tiling`)."""
        if self.tile_exact:
            return self._exact_tiled_encode(x)
        spatial = self.config.spatial_compression_ratio
        size_h, size_w = self.tile_sample_min_height, self.tile_sample_min_width
        tops = list(range(0, x.shape[-2], self.tile_sample_stride_height))
        lefts = list(range(0, x.shape[-1], self.tile_sample_stride_width))
        tiles = (
            self._encode_moments(x[:, :, :, top : top + size_h, left : left + size_w])
            for top in tops
            for left in lefts
        )
        starts_h, starts_w = [top // spatial for top in tops], [left // spatial for left in lefts]
        size = (x.shape[-2] // spatial, x.shape[-1] // spatial)
        return stitch_tiles_as_they_come(tiles, starts_h, starts_w, size)

    def tiled_encode_content(self, frame: torch.Tensor) -> ReducioTiledContent:
        """Content features of `frame` `(B, 3, H, W)` per pixel tile, blended and uncropped (see `enable_tiling`)."""
        tiles = list(self._content_tiles(frame))
        columns = len(range(0, frame.shape[-1], self.tile_sample_stride_width))
        return ReducioTiledContent([tiles[start : start + columns] for start in range(0, len(tiles), columns)])

    def _content_tiles(self, frame: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
        """The blended content-feature tiles of `frame` `(B, 3, H, W)`, row-major, each computed when asked for and
        blended with its upper and left neighbours as the original blends its grid (`_tiling.blend_tiles_as_they_come`):
        a tiled decode holds one tile's features and the overlaps the next tiles blend with, not the whole grid."""
        size_h, size_w = self.tile_sample_min_height, self.tile_sample_min_width
        tops = list(range(0, frame.shape[-2], self.tile_sample_stride_height))
        lefts = list(range(0, frame.shape[-1], self.tile_sample_stride_width))
        tiles = (
            self.content_encoder(frame[:, :, top : top + size_h, left : left + size_w])
            for top in tops
            for left in lefts
        )
        # Feature k is at 1 / 2^k of the frame's size (the mid feature at the last level's).
        levels = len(self.config.content_block_out_channels)
        scales = tuple(Fraction(1, 2 ** min(k, levels - 1)) for k in range(levels + 1))
        return blend_tiles_as_they_come(tiles, tops, lefts, scales)

    def _tile_features(
        self, features, tops: list[int], lefts: list[int], frame_size: tuple[int, int]
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The content features each pixel tile (`tops x lefts`, row-major) is decoded with: from a content frame
        `(B, 3, H, W)`, its blended feature tiles computed one at a time (`_content_tiles`); from a
        `ReducioTiledContent`, its tiles; from whole-frame features, the part under each tile's pixels (not the
        original's tiled numbers)."""
        if isinstance(features, torch.Tensor):
            yield from self._content_tiles(self._to_compute_dtype(features))
            return
        if isinstance(features, ReducioTiledContent):
            if [len(row) for row in features.rows] != [len(lefts)] * len(tops):
                raise ValueError("The tiled content features do not have the tile grid of these latents.")
            for row in features.rows:
                yield from row
            return
        for top in tops:
            for left in lefts:
                out = []
                for feature in features:
                    scale_h, scale_w = feature.shape[-2] / frame_size[0], feature.shape[-1] / frame_size[1]
                    out.append(
                        feature[
                            ...,
                            int(top * scale_h) : int((top + self.tile_sample_min_height) * scale_h),
                            int(left * scale_w) : int((left + self.tile_sample_min_width) * scale_w),
                        ]
                    )
                yield tuple(out)

    def tiled_decode(self, z: torch.Tensor, features) -> torch.Tensor:
        """One segment's normalised latents decoded tile by tile with the matching content tiles (see
        `enable_tiling`). `features`: a content frame `(B, 3, H, W)` (its feature tiles are computed as the tiles are
        decoded), a `ReducioTiledContent`, or whole-frame features (each tile then reads the part under its pixels).
        Each decoded tile is blended into the output as it comes (`_tiling.stitch_tiles_as_they_come`): memory holds
        one tile, the overlaps later tiles blend with, and the output."""
        if self.tile_exact:
            return self._exact_tiled_decode(z, features)
        spatial = self.config.spatial_compression_ratio
        frame_size = (z.shape[-2] * spatial, z.shape[-1] * spatial)
        size_h, size_w = self.tile_sample_min_height // spatial, self.tile_sample_min_width // spatial
        tops = list(range(0, z.shape[-2], self.tile_sample_stride_height // spatial))
        lefts = list(range(0, z.shape[-1], self.tile_sample_stride_width // spatial))
        pixel_tops, pixel_lefts = [top * spatial for top in tops], [left * spatial for left in lefts]
        content = self._tile_features(features, pixel_tops, pixel_lefts, frame_size)
        stream = self._streams_frames()

        def decoded_tiles() -> Iterator[torch.Tensor]:
            for top, left in ((top, left) for top in tops for left in lefts):
                tile = self.post_quant_conv(z[:, :, :, top : top + size_h, left : left + size_w])
                yield self.decoder(tile, next(content), stream)

        return stitch_tiles_as_they_come(decoded_tiles(), tops, lefts, frame_size, scale=spatial)

    def _exact_tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """`tiled_encode` with exact tiles: the levels above latent resolution in tiles, one layer at a time with
        the GroupNorm statistics of the whole frame (`_tiling.tiled_in_layer_order`); the last level, the mid block
        (its attention spans the frame) and the output on whole frames."""
        core = (self.tile_sample_min_height, self.tile_sample_min_width)
        h = tiled_in_layer_order(self.encoder.high_res_steps(), x, core, self.tile_offload_device).to(x.device)
        return self.quant_conv(self.encoder.forward_low(h))

    def _exact_tiled_decode(self, z: torch.Tensor, features) -> torch.Tensor:
        """`tiled_decode` with exact tiles: the mid block (attention over the frame, at latent resolution) on whole
        frames, then every later layer one at a time (`ReducioDecoder.tile_steps`, `_tiling.tiled_in_layer_order`):
        the resnets, upsamplers and output layers over tiles with the GroupNorm statistics of the whole clip, each
        fusion block (cross-attention to the whole content feature) on whole frames a frame at a time, every tensor
        between two of them a step boundary kept as `tile_offload_device` says."""
        if isinstance(features, ReducioTiledContent):
            raise ValueError(
                "Exact tiles decode with the content features of the whole frame: pass `content_frame`, or the "
                "features `encode_content` returns with exact tiling on (not blended tiles' features)."
            )
        if isinstance(features, torch.Tensor):
            features = self.content_encoder(self._to_compute_dtype(features))
        decoder, spatial = self.decoder, self.config.spatial_compression_ratio
        mid = decoder.mid
        h = mid.block_1(decoder.conv_in(self.post_quant_conv(z)))
        if mid.fusion is not None:
            h = mid.fusion(h, features[-1])
        h = mid.block_2(mid.attn_1(h))
        steps = decoder.tile_steps(features, max(z.shape[-2:]) * spatial)
        del features  # each fusion step holds its own feature until it ran; the others are freed now
        core = (self.tile_sample_min_height // spatial, self.tile_sample_min_width // spatial)
        return tiled_in_layer_order(steps, h, core, self.tile_offload_device).to(h.device)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        r"""Encode `sample` `(B, 3, 16k, H, W)`, normalise the posterior's mode (or a sample drawn with `generator`
        when `sample_posterior`; the original samples with the global RNG), decode with each segment's content
        frame `(T - 1) // 2`."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(self.normalize_latents(z), **self.decode_conditions(sample)).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)


def _select(features, index: slice):
    """One segment's `features` (a content frame, a tuple of maps, or tiled features) for a slice of the batch."""
    if isinstance(features, torch.Tensor):
        return features[index]
    if isinstance(features, ReducioTiledContent):
        return features.select(index)
    return tuple(feature[index] for feature in features)
