# Copyright 2026 The diffusers-videovae contributors.
# IV-VAE was designed by Pingyu Wu, Kai Zhu, Yu Liu, Liming Zhao, Wei Zhai, Yang Cao and Zheng-Jun Zha
# ("Improved Video VAE for Latent Video Diffusion Model", CVPR 2025; original code and weights by
# Alibaba TongYi Vision Intelligence Lab, https://github.com/ali-vilab/iv-vae, MIT License).
# This is an independent re-implementation of that architecture for the diffusers API.
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
"""IV-VAE: a causal video VAE whose every feature map has a per-frame ("2D", keyframe) half and a temporal ("3D") half.

Layout notes for readers:

* The public API takes `(B, C, T, H, W)` videos; inside, blocks work "frame-major", on `(B, T, C, H, W)`, so that
  per-frame convolutions are plain batched 2D convolutions over `(B * T, C, H, W)` without copies.
* Every feature map has `2w` channels: channels `[0, w)` are the 2D half, `[w, 2w)` the 3D half.
* Time is processed causally in groups: the first frame alone, then groups of `temporal_compression_ratio` (4)
  frames. A 3x3x3 convolution sees, for each group, `[previous frame, the group's frames, a zero frame]`, so it
  looks one frame ahead inside a group and never across groups. The previous frame of the first group of a call
  comes from a cache carried between calls; that cache makes chunked processing of any length exact.
* The decoder produces two RGB images per frame; the output takes the 2D-half image for the first frame of every
  group and the 3D-half image for the other frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..loaders import FromOriginalCheckpointMixin
from ._common import VideoAutoencoderMixin, register_compression_ratios
from ._layers import checkpointed
from ._tiling import TileSpan, TilingLimits, check_latents, check_video, configure_tiling, halo_spans

# F.normalize clamps the L2 norm at this value (the original's normalisation).
NORM_EPS = 1e-12


# `in_place` (the blocks' argument): fresh intermediate tensors may be overwritten in place, which the autoencoder
# allows when no autograd graph is recorded (`AutoencoderKLIVVAE._in_place`). Same values, less memory.


def _silu(x: torch.Tensor, in_place: bool) -> torch.Tensor:
    return F.silu(x, inplace=in_place)


def _frames_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D convolution to every frame of `x: (B, T, C, H, W)` (frames are folded into the batch)."""
    return conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class IVVAESepRMSNorm(nn.Module):
    """RMS norm of each half separately: `x_half / max(||x_half||, 1e-12) * sqrt(w) * gamma` over channels.

    Args:
        half_width: `w`, the width of each half; the input has `2w` channels.
    """

    def __init__(self, half_width: int):
        super().__init__()
        self.half_width = half_width
        self.scale = half_width**0.5
        self.gamma = nn.Parameter(torch.ones(2 * half_width, 1, 1, 1))

    def forward(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """`x: (B, T, 2w, H, W)` -> same shape."""
        halves = x.unflatten(2, (2, self.half_width))
        # scale / norm is 1/w the size of x: one full-size multiplication instead of a division and another one.
        factor = self.scale / torch.linalg.vector_norm(halves, dim=3, keepdim=True).clamp_min(NORM_EPS)
        out = (halves * factor).flatten(2, 3)
        gamma = self.gamma.view(-1, 1, 1)
        return out.mul_(gamma) if in_place else out * gamma


class IVVAERMSNorm(nn.Module):
    """RMS norm over the last (channel) axis of attention tokens, times `sqrt(channels)` and `gamma`."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens: (N, L, C)` -> same shape."""
        return F.normalize(tokens, dim=-1, eps=NORM_EPS) * self.scale * self.gamma.flatten()


class IVVAECausalConv3d(nn.Conv3d):
    """3x3x3 convolution that is causal between groups of `group_size` frames and looks ahead inside a group.

    Output frame `i` reads input frames `[i - 1, i, i + 1]`, where frame `-1` is `previous` (the last input frame
    of the preceding call) and frame `i + 1` is replaced by zeros at the end of every group. A call with a single
    frame reads `[x0, x0, 0]` and ignores `previous`.

    The three temporal taps are stacked along channels and convolved with one 2D convolution over all frames
    (the same sums as a 3D convolution of each group padded as `[left, group, 0]`).
    """

    def __init__(self, in_channels: int, out_channels: int, group_size: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=(0, 1, 1))
        self.group_size = group_size

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """`x: (B, T, C, H, W)`, `previous: (B, C, H, W)` or None -> `(B, T, out_channels, H, W)`."""
        batch, num_frames, channels, height, width = x.shape
        size = self.group_size if num_frames > 1 else 1
        if num_frames > 1 and (num_frames % size or previous is None):
            raise ValueError(
                f"IVVAECausalConv3d needs a multiple of {size} frames and the previous frame after the first "
                f"call; got {num_frames} frames and previous={'missing' if previous is None else 'given'}."
            )
        taps = x.new_empty(batch, num_frames, 3, channels, height, width)
        taps[:, 0, 0] = x[:, 0] if num_frames == 1 else previous
        taps[:, 1:, 0] = x[:, :-1]
        taps[:, :, 1] = x
        taps[:, :-1, 2] = x[:, 1:]
        taps[:, size - 1 :: size, 2] = 0
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, 3 * channels, 3, 3)
        out = F.conv2d(taps.view(batch * num_frames, 3 * channels, height, width), weight, self.bias, padding=1)
        return out.view(batch, num_frames, self.out_channels, height, width)


class IVVAESepConv3d(nn.Module):
    """Two convolutions that both read all input channels: a per-frame 3x3 one (2D half of the output) and a
    group-causal 3x3x3 one (3D half of the output).

    Args:
        in_channels: all input channels (both halves).
        out_half_width: output channels of each half; the output has `2 * out_half_width` channels.
        group_size: frames per causal group of the 3D convolution.
    """

    def __init__(self, in_channels: int, out_half_width: int, group_size: int):
        super().__init__()
        self.conv_2d = nn.Conv2d(in_channels, out_half_width, 3, padding=1)
        self.conv_3d = IVVAECausalConv3d(in_channels, out_half_width, group_size)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """`x: (B, T, C_in, H, W)`, `previous: (B, C_in, H, W)` -> `(B, T, 2 * out_half_width, H, W)`."""
        return torch.cat([_frames_conv(self.conv_2d, x), self.conv_3d(x, previous)], dim=2)


class IVVAEResidualBlock(nn.Module):
    """Residual block with group-causal convolutions (half widths `in_width -> out_width`).

    `out = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`; the shortcut is a 1x1 convolution when the
    widths differ. Each of the two 3x3x3 convolutions keeps the last frame of its input as the cache.
    """

    def __init__(self, in_width: int, out_width: int, group_size: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = IVVAESepRMSNorm(in_width)
        self.conv1 = IVVAESepConv3d(2 * in_width, out_width, group_size)
        self.norm2 = IVVAESepRMSNorm(out_width)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = IVVAESepConv3d(2 * out_width, out_width, group_size)
        self.conv_shortcut = nn.Conv2d(2 * in_width, 2 * out_width, 1) if in_width != out_width else None

    def forward(
        self,
        x: torch.Tensor,
        previous1: torch.Tensor | None = None,
        previous2: torch.Tensor | None = None,
        in_place: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`x: (B, T, 2 * in_width, H, W)` and the two caches -> `(out, new cache 1, new cache 2)`."""
        shortcut = x if self.conv_shortcut is None else _frames_conv(self.conv_shortcut, x)
        h = _silu(self.norm1(x, in_place), in_place)
        cache1 = h[:, -1].clone()
        h = self.conv1(h, previous1)
        h = self.dropout(_silu(self.norm2(h, in_place), in_place))
        cache2 = h[:, -1].clone()
        h = self.conv2(h, previous2)
        return (h.add_(shortcut) if in_place else h + shortcut), cache1, cache2


class IVVAEResidualBlock2d(nn.Module):
    """Per-frame residual block (half widths `in_width -> out_width`); its convolutions mix both halves."""

    def __init__(self, in_width: int, out_width: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = IVVAESepRMSNorm(in_width)
        self.conv1 = nn.Conv2d(2 * in_width, 2 * out_width, 3, padding=1)
        self.norm2 = IVVAESepRMSNorm(out_width)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(2 * out_width, 2 * out_width, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(2 * in_width, 2 * out_width, 1) if in_width != out_width else None

    def forward(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """`x: (B, T, 2 * in_width, H, W)` -> `(B, T, 2 * out_width, H, W)`."""
        shortcut = x if self.conv_shortcut is None else _frames_conv(self.conv_shortcut, x)
        h = _frames_conv(self.conv1, _silu(self.norm1(x, in_place), in_place))
        h = self.dropout(_silu(self.norm2(h, in_place), in_place))
        h = _frames_conv(self.conv2, h)
        return h.add_(shortcut) if in_place else h + shortcut


class IVVAETokenConv(nn.Conv2d):
    """A 1x1 convolution (the original's layer and checkpoint keys) applied to tokens `(N, L, C_in)` as the
    per-token linear map it is -> `(N, L, C_out)`, so attention needs no transposes back to images."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens, self.weight.flatten(1), self.bias)


class IVVAEAttention(nn.Module):
    """Single-head spatial self-attention inside each frame, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = IVVAERMSNorm(channels)
        self.to_qkv = IVVAETokenConv(channels, 3 * channels)
        self.proj = IVVAETokenConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, C, H, W)` -> same shape."""
        batch, num_frames, channels, height, width = x.shape
        tokens = x.flatten(3).flatten(0, 1).transpose(1, 2)  # (B * T, H * W, C)
        qkv = self.to_qkv(self.norm(tokens))
        query, key, value = qkv.unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(query, key, value).squeeze(1)
        h = self.proj(h)
        return x + h.transpose(1, 2).reshape(batch, num_frames, channels, height, width)


class IVVAEAttentionBlock(nn.Module):
    """Separate attention for the 2D half and the 3D half (each `width` channels)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.attn_2d = IVVAEAttention(width)
        self.attn_3d = IVVAEAttention(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, 2 * width, H, W)` -> same shape."""
        half_2d, half_3d = x.split(self.width, dim=2)
        return torch.cat([self.attn_2d(half_2d), self.attn_3d(half_3d)], dim=2)


class IVVAETimeDownsampleConv(nn.Conv3d):
    """The (2, 1, 1) stride-2 temporal convolution of the downsampler's 3D half (the original's layer and keys),
    applied frame-major: frames 2t and 2t + 1 side by side along channels make it a 1x1 convolution."""

    def __init__(self, width: int):
        super().__init__(width, width, (2, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, C, H, W)`, T even -> `(B, T / 2, C, H, W)`."""
        batch, num_frames, channels, height, width = x.shape
        pairs = x.reshape(batch * num_frames // 2, 2 * channels, height, width)
        weight = self.weight.transpose(1, 2).reshape(self.out_channels, 2 * channels, 1, 1)
        out = F.conv2d(pairs, weight, self.bias)
        return out.view(batch, num_frames // 2, self.out_channels, height, width)


class IVVAETimeUpsampleConv(nn.Conv3d):
    """The 1x1x1 convolution `C -> 2C` of the upsampler's 3D half (the original's layer and keys), applied
    frame-major: output channels `[0, C)` become frame 2t and `[C, 2C)` frame 2t + 1."""

    def __init__(self, width: int):
        super().__init__(width, 2 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, C, H, W)` -> `(B, 2T, C, H, W)`."""
        batch, num_frames, channels, height, width = x.shape
        pairs = F.conv2d(x.flatten(0, 1), self.weight.flatten(2).unsqueeze(-1), self.bias)  # (B * T, 2C, H, W)
        return pairs.view(batch, 2 * num_frames, channels, height, width)


class IVVAEDownsample(nn.Module):
    """Halve H and W of each half (zero-pad right/bottom, 3x3 stride-2 convolution); with `temporal`, also halve T
    for calls with more than one frame: the 2D half keeps the even frames, the 3D half pairs frames with a
    (2, 1, 1) stride-2 convolution."""

    def __init__(self, width: int, temporal: bool):
        super().__init__()
        self.width = width
        self.conv_2d = nn.Conv2d(width, width, 3, stride=2)
        self.conv_3d = nn.Conv2d(width, width, 3, stride=2)
        self.time_conv = IVVAETimeDownsampleConv(width) if temporal else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, 2w, H, W)` -> `(B, T', 2w, H // 2, W // 2)`, `T' = T // 2` if temporal and `T > 1`."""
        half_2d, half_3d = x.split(self.width, dim=2)
        temporal = self.time_conv is not None and x.shape[1] > 1
        if temporal:
            # Per-frame convolutions: the frames the 2D half drops need not be computed.
            half_2d = half_2d[:, 0::2]
        half_2d = _frames_conv(self.conv_2d, F.pad(half_2d, (0, 1, 0, 1)))
        half_3d = _frames_conv(self.conv_3d, F.pad(half_3d, (0, 1, 0, 1)))
        if temporal:
            half_3d = self.time_conv(half_3d)
        return torch.cat([half_2d, half_3d], dim=2)


class IVVAEUpsample(nn.Module):
    """Double H and W of each half (nearest, then a 3x3 convolution `width -> width // 2`); with `temporal`, first
    double T (except for the first latent frame): the 2D half repeats each frame, the 3D half predicts two frames
    from each with a 1x1x1 convolution (`width -> 2 * width`: even frames, then odd frames)."""

    def __init__(self, width: int, temporal: bool):
        super().__init__()
        self.width = width
        self.conv_2d = nn.Conv2d(width, width // 2, 3, padding=1)
        self.conv_3d = nn.Conv2d(width, width // 2, 3, padding=1)
        self.time_conv = IVVAETimeUpsampleConv(width) if temporal else None

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        """`x: (B, T, 2w, H, W)` -> `(B, T', w, 2H, 2W)`, `T' = 2T` if temporal and not `first_chunk`."""
        half_2d, half_3d = x.split(self.width, dim=2)
        temporal = self.time_conv is not None and not first_chunk
        if temporal:
            half_3d = self.time_conv(half_3d)
        half_2d = _frames_conv(self.conv_2d, _upsample_frames(half_2d))
        half_3d = _frames_conv(self.conv_3d, _upsample_frames(half_3d))
        if temporal:
            # Per-frame convolution of a repeated frame: repeat after the convolution instead of before.
            half_2d = half_2d.repeat_interleave(2, dim=1)
        return torch.cat([half_2d, half_3d], dim=2)


def _upsample_frames(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x spatial upsampling of `x: (B, T, C, H, W)`."""
    return F.interpolate(x.flatten(0, 1), scale_factor=2.0, mode="nearest").unflatten(0, x.shape[:2])


class IVVAEPyramidHead(nn.Module):
    """The encoder's output head: six per-frame convolutions with growing dilation (1x1, then 3x3 with dilation
    1, 3, 6, 9, 12), each giving `[2D part | 3D part]`, regrouped as all 2D parts then all 3D parts and fused by a
    1x1 convolution into `out_channels`."""

    dilations = (1, 3, 6, 9, 12)

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.half = out_channels // 2
        self.branches = nn.ModuleList([nn.Conv2d(in_channels, out_channels, 1)])
        for dilation in self.dilations:
            self.branches.append(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation))
        self.proj = nn.Conv2d(len(self.branches) * out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, T, C, H, W)` -> `(B, T, out_channels, H, W)`."""
        frames = x.flatten(0, 1)
        outputs = [branch(frames).split(self.half, dim=1) for branch in self.branches]
        regrouped = [part_2d for part_2d, _ in outputs] + [part_3d for _, part_3d in outputs]
        return self.proj(torch.cat(regrouped, dim=1)).unflatten(0, x.shape[:2])


def _run_block(owner: nn.Module, block: nn.Module, x: torch.Tensor, in_place: bool) -> torch.Tensor:
    """A block without cache, through `owner`'s gradient checkpointing; residual blocks get `in_place`."""
    if isinstance(block, IVVAEResidualBlock2d):
        return checkpointed(owner, block, x, in_place)
    return checkpointed(owner, block, x)


def _run_cached_blocks(
    owner: nn.Module,
    blocks,
    x: torch.Tensor,
    cache: list[torch.Tensor] | None,
    new_cache: list[torch.Tensor],
    first_chunk: bool = False,
    in_place: bool = False,
) -> torch.Tensor:
    """Run `blocks` in order; each residual block reads its two caches from `cache` at the position its new caches
    take in `new_cache` (which it extends), so `cache` lists the caches of the previous chunk in the same order."""
    for block in blocks:
        if isinstance(block, IVVAEResidualBlock):
            start = len(new_cache)
            previous = (None, None) if cache is None else cache[start : start + 2]
            x, cache1, cache2 = checkpointed(owner, block, x, *previous, in_place)
            new_cache += [cache1, cache2]
        elif isinstance(block, IVVAEUpsample):
            x = block(x, first_chunk=first_chunk)
        else:
            x = _run_block(owner, block, x, in_place)
    return x


class IVVAEEncoder3d(nn.Module):
    """Video -> `2 * latent_channels` features per latent frame, for one causal chunk (1 frame, or groups of
    `temporal_compression` frames) given the cache of the previous chunk."""

    def __init__(
        self,
        base_dim: int,
        latent_channels: int,
        dim_mult: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = [base_dim * m for m in (1, *dim_mult)]
        num_levels = len(dim_mult)
        group_size = 2 ** sum(temporal_downsample)
        self.conv_in = IVVAESepConv3d(3, widths[0], group_size)
        blocks = []
        for level in range(num_levels):
            in_width, out_width = widths[level], widths[level + 1]
            for index in range(num_res_blocks):
                block_in = in_width if index == 0 else out_width
                if level < num_levels - 1:
                    blocks.append(IVVAEResidualBlock(block_in, out_width, group_size, dropout))
                else:
                    blocks.append(IVVAEResidualBlock2d(block_in, out_width, dropout))
                    blocks.append(IVVAEAttentionBlock(out_width))
            if level < num_levels - 1:
                blocks.append(IVVAEDownsample(out_width, temporal_downsample[level]))
                if temporal_downsample[level]:
                    group_size //= 2
            if level == num_levels - 2:
                blocks.append(IVVAEAttentionBlock(out_width))
        self.down_blocks = nn.ModuleList(blocks)
        # `down_blocks[:num_high_res_blocks]` (through the last spatial downsample) run at full to 1/4 resolution and
        # are purely local; the rest (attention first) run at 1/8 resolution. See `forward_high` / `forward_low`.
        self.num_high_res_blocks = 1 + max(i for i, b in enumerate(blocks) if isinstance(b, IVVAEDownsample))
        width = widths[-1]
        self.mid_blocks = nn.ModuleList(
            [
                IVVAEResidualBlock2d(width, width, dropout),
                IVVAEAttentionBlock(width),
                IVVAEResidualBlock2d(width, width, dropout),
            ]
        )
        self.norm_out = IVVAESepRMSNorm(width)
        self.conv_out = IVVAEPyramidHead(2 * width, 2 * latent_channels)
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None, in_place: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`x: (B, T, 3, H, W)` with `T = 1` (first chunk, `cache=None`) or a multiple of the temporal compression
        -> `(features (B, T', 2 * latent_channels, H / 8, W / 8), new cache)`."""
        x, new_cache = self.forward_high(x, cache, in_place=in_place)
        return self.forward_low(x, in_place), new_cache

    def forward_high(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None, in_place: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The high-resolution part: `conv_in` and the down blocks through the last spatial downsample.

        Every layer here is local in space (3x3 convolutions, per-pixel norms over channels, stride-2
        downsampling): an output pixel depends on input pixels at most `high_res_reach()` away, so spatial tiles
        with that halo give exact results. All the causal caches live here.

        `x: (B, T, 3, H, W)` -> `(features (B, T', C, H / 8, W / 8), new cache)`.
        """
        new_cache = [x[:, -1].clone()]
        x = self.conv_in(x, None if cache is None else cache[0])
        blocks = self.down_blocks[: self.num_high_res_blocks]
        x = _run_cached_blocks(self, blocks, x, cache, new_cache, in_place=in_place)
        return x, new_cache

    def forward_low(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """The 1/8-resolution part: attention, the last level, the middle and the pyramid head, per frame (global
        within each frame, no cache). `x: (B, T', C, h, w)` -> `(B, T', 2 * latent_channels, h, w)`."""
        for block in self.down_blocks[self.num_high_res_blocks :]:
            x = _run_block(self, block, x, in_place)
        for block in self.mid_blocks:
            x = block(x, in_place) if isinstance(block, IVVAEResidualBlock2d) else block(x)
        return self.conv_out(_silu(self.norm_out(x, in_place), in_place))

    def high_res_reach(self) -> int:
        """An upper bound, in input pixels, on how far beyond its own 8x8 footprint an output pixel of
        `forward_high` reads (`scale` is the input pixels per feature pixel at the current layer)."""
        reach, scale = 1, 1  # conv_in: 3x3
        for block in self.down_blocks[: self.num_high_res_blocks]:
            if isinstance(block, IVVAEResidualBlock):
                reach += 2 * scale  # two 3x3 convolutions (the shortcut is 1x1)
            elif isinstance(block, IVVAEDownsample):
                # 3x3 stride 2, padded right/bottom: output j reads inputs 2j..2j+2, one input pixel past its area.
                reach += scale
                scale *= 2
        return reach


class IVVAEDecoder3d(nn.Module):
    """`latent_channels` features per latent frame -> two RGB images per output frame (`[2D half | 3D half]`,
    6 channels), for one causal chunk of latent frames given the cache of the previous chunk."""

    def __init__(
        self,
        base_dim: int,
        latent_channels: int,
        dim_mult: tuple[int, ...],
        num_res_blocks: int,
        temporal_upsample: tuple[bool, ...],
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = [base_dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        num_levels = len(dim_mult)
        self.conv_in = nn.Conv2d(latent_channels, 2 * widths[0], 3, padding=1)
        self.mid_blocks = nn.ModuleList(
            [
                IVVAEResidualBlock2d(widths[0], widths[0], dropout),
                IVVAEAttentionBlock(widths[0]),
                IVVAEResidualBlock2d(widths[0], widths[0], dropout),
            ]
        )
        blocks = []
        group_size = 1
        for level in range(num_levels):
            # Upsampling convolutions halve the width, so later levels start from half the previous width.
            in_width = widths[level] if level == 0 else widths[level] // 2
            out_width = widths[level + 1]
            for index in range(num_res_blocks + 1):
                block_in = in_width if index == 0 else out_width
                if level == 0:
                    blocks.append(IVVAEResidualBlock2d(block_in, out_width, dropout))
                    blocks.append(IVVAEAttentionBlock(out_width))
                else:
                    blocks.append(IVVAEResidualBlock(block_in, out_width, group_size, dropout))
            if level < num_levels - 1:
                blocks.append(IVVAEUpsample(out_width, temporal_upsample[level]))
                if temporal_upsample[level]:
                    group_size *= 2
        self.up_blocks = nn.ModuleList(blocks)
        # `up_blocks[:num_low_res_blocks]` (before the first upsample) run at latent resolution with attention; the
        # rest are purely local and run at 2x to 8x. See `forward_low` / `forward_high`.
        self.num_low_res_blocks = min(i for i, b in enumerate(blocks) if isinstance(b, IVVAEUpsample))
        self.norm_out = IVVAESepRMSNorm(widths[-1])
        self.conv_out = IVVAESepConv3d(2 * widths[-1], 3, group_size)
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None, in_place: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`x: (B, t, latent_channels, h, w)`; `cache=None` for the first chunk, which must be the single first
        latent frame -> `(images (B, T, 6, 8h, 8w), new cache)` with `T = 1` for the first chunk, else `4t`."""
        return self.forward_high(self.forward_low(x, in_place), cache, in_place=in_place)

    def forward_low(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """The latent-resolution part: `conv_in`, the middle and the first level (residual blocks and attention),
        per frame (global within each frame, no cache). `x: (B, t, latent_channels, h, w)` -> `(B, t, C, h, w)`."""
        x = _frames_conv(self.conv_in, x)
        for block in self.mid_blocks:
            x = block(x, in_place) if isinstance(block, IVVAEResidualBlock2d) else block(x)
        for block in self.up_blocks[: self.num_low_res_blocks]:
            x = _run_block(self, block, x, in_place)
        return x

    def forward_high(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None, in_place: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The high-resolution part: the up blocks from the first upsample on, `norm_out` and `conv_out`.

        Every layer here is local in space (nearest upsampling, 3x3 convolutions, per-pixel norms over channels):
        an output pixel depends on latent pixels at most `high_res_reach()` output pixels away, so spatial tiles
        with that halo give exact results. All the causal caches live here.

        `x: (B, t, C, h, w)`, `cache=None` for the first chunk -> `(images (B, T, 6, 8h, 8w), new cache)`.
        """
        new_cache: list[torch.Tensor] = []
        blocks = self.up_blocks[self.num_low_res_blocks :]
        x = _run_cached_blocks(self, blocks, x, cache, new_cache, first_chunk=cache is None, in_place=in_place)
        x = _silu(self.norm_out(x, in_place), in_place)
        new_cache.append(x[:, -1].clone())
        x = self.conv_out(x, None if cache is None else cache[len(new_cache) - 1])
        return x, new_cache

    def high_res_reach(self, spatial_compression: int) -> int:
        """An upper bound, in output pixels, on how far beyond its own 8x8 area (one latent pixel) an output
        pixel of `forward_high` reads (`scale` is the output pixels per feature pixel at the current layer)."""
        reach, scale = 0, spatial_compression
        for block in self.up_blocks[self.num_low_res_blocks :]:
            if isinstance(block, IVVAEUpsample):
                scale //= 2  # nearest 2x copies a pixel inside its own area: no reach; then a 3x3 convolution
                reach += scale
            elif isinstance(block, IVVAEResidualBlock):
                reach += 2 * scale  # two 3x3 convolutions (the shortcut is 1x1)
        return reach + scale  # conv_out: 3x3


def _scales(tensor: torch.Tensor, height: int, width: int) -> tuple[int, int]:
    """Pixels per latent pixel of `tensor` (..., H, W) over a `height x width` latent area."""
    return tensor.shape[-2] // height, tensor.shape[-1] // width


def _tile_window(whole: torch.Tensor, row: TileSpan, column: TileSpan, size: tuple[int, int]) -> torch.Tensor:
    """The part of a whole-frame tensor (any resolution) that a tile reads, halo included (a view)."""
    scale_h, scale_w = _scales(whole, *size)
    return whole[..., row.start * scale_h : row.end * scale_h, column.start * scale_w : column.end * scale_w]


def _whole_frame_like(part: torch.Tensor, row: TileSpan, column: TileSpan, size: tuple[int, int]) -> torch.Tensor:
    """An empty whole-frame tensor at the resolution of a tile's tensor `part`."""
    scale_h, scale_w = _scales(part, row.end - row.start, column.end - column.start)
    return part.new_empty(*part.shape[:-2], size[0] * scale_h, size[1] * scale_w)


def _paste_core(whole: torch.Tensor, part: torch.Tensor, row: TileSpan, column: TileSpan) -> None:
    """Copy the core of a tile's tensor `part` into the whole-frame tensor `whole` (same resolution)."""
    scale_h, scale_w = _scales(part, row.end - row.start, column.end - column.start)
    whole[..., row.core_slice(scale_h), column.core_slice(scale_w)] = part[
        ..., row.core_in_tile(scale_h), column.core_in_tile(scale_w)
    ]


class AutoencoderKLIVVAE(
    ModelMixin, AutoencoderMixin, ConfigMixin, FromOriginalCheckpointMixin, VideoAutoencoderMixin
):
    r"""IV-VAE ("Improved Video VAE for Latent Video Diffusion Model", Wu et al., CVPR 2025): a causal video VAE
    with 4x temporal and 8x spatial compression, keyframe-based temporal compression (a per-frame 2D half and a
    temporal 3D half in every layer) and a pyramid of dilated convolutions before the latent.

    Inputs are videos `(B, 3, T, H, W)` in [-1, 1] with `T = 1 + 4k` (an image is `T = 1`) and H, W multiples of
    8; anything else raises a `ValueError` that names the nearest valid sizes (the original silently drops extra
    frames and floors H and W). Latents are `(B, latent_channels, 1 + k, H / 8, W / 8)`.

    `encode` returns the RAW posterior (`latent_dist.mean` / `.logvar`; diffusers' `DiagonalGaussianDistribution`
    clamps logvar to [-30, 20], the original does not clamp); `decode` takes RAW latents. Latent diffusion
    models use normalised latents:
        `latents = (latent_dist.sample() - shift_factor) * scaling_factor`, and
        `decode(latents / scaling_factor + shift_factor)`.

    Any length is processed exactly, chunk by chunk, with a cache of one frame per 3x3x3 convolution; memory
    therefore does not grow with T beyond the input and output. `enable_tiling` also splits the high-resolution
    stages into spatial tiles with exact halos (same results up to float rounding; see `enable_tiling`).

    Args:
        in_channels (`int`, defaults to 3): video channels; IV-VAE is RGB only.
        latent_channels (`int`, defaults to 16): `Z`, channels of the latent (the original's `z_dim`).
        base_dim (`int`, defaults to 64): `C`, half-width of the first level (the original's `dim`).
        dim_mult (`tuple[int]`, defaults to `(1, 2, 4, 4)`): width multipliers of the levels.
        num_res_blocks (`int`, defaults to 2): residual blocks per encoder level (decoder levels have one more).
        temporal_downsample (`tuple[bool]`, defaults to `(False, True, True)`): which encoder downsamples also
            halve time (the original's `temperal_downsample`); the decoder mirrors it.
        dropout (`float`, defaults to 0.0): dropout inside residual blocks (0 in every release).
        scaling_factor (`float`, defaults to 0.9697) and shift_factor (`float`, defaults to -0.1553): latent
            normalisation of the release (values of `ivvae_z16_dim64`; see the model card for the other variants).
        force_upcast (`bool`, defaults to False): whether float16 runs should be upcast to float32, as diffusers
            pipelines read it; False because the original's demo runs in bfloat16, not float32.
        temporal_compression_ratio (`int`, optional): derived, `2 ** sum(temporal_downsample)` (4); stored in the
            config for pipelines to read. Passing a different value raises.
        spatial_compression_ratio (`int`, optional): derived, `2 ** (len(dim_mult) - 1)` (8); stored likewise.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["IVVAEResidualBlock", "IVVAEResidualBlock2d", "IVVAEAttentionBlock"]
    _skip_layerwise_casting_patterns = ["norm"]
    # Block-level group offloading: module lists become groups; these modules (called directly, not through their
    # parent's forward, e.g. by the tiled stages) get their own, so that every layer is onloaded by a module it runs in.
    _group_offload_block_modules = [
        "encoder",
        "decoder",
        "quant_conv",
        "post_quant_conv",
        "conv_in",
        "norm_out",
        "conv_out",
    ]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        base_dim: int = 64,
        dim_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        temporal_downsample: tuple[bool, ...] = (False, True, True),
        dropout: float = 0.0,
        scaling_factor: float = 0.9697,
        shift_factor: float = -0.1553,
        force_upcast: bool = False,
        temporal_compression_ratio: int | None = None,
        spatial_compression_ratio: int | None = None,
    ):
        super().__init__()
        dim_mult, temporal_downsample = tuple(dim_mult), tuple(bool(t) for t in temporal_downsample)
        if in_channels != 3:
            raise ValueError(f"IV-VAE is an RGB model: in_channels must be 3, got {in_channels}.")
        if latent_channels % 2 or latent_channels < 2:
            raise ValueError(f"latent_channels must be even (a 2D half and a 3D half), got {latent_channels}.")
        if len(dim_mult) < 2 or len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(
                f"Need at least 2 levels and one temporal_downsample flag per downsample: got dim_mult={dim_mult}, "
                f"temporal_downsample={temporal_downsample}."
            )
        temporal = 2 ** sum(temporal_downsample)
        spatial = 2 ** (len(dim_mult) - 1)
        register_compression_ratios(
            self,
            temporal=temporal,
            spatial=spatial,
            temporal_compression_ratio=temporal_compression_ratio,
            spatial_compression_ratio=spatial_compression_ratio,
        )

        self.encoder = IVVAEEncoder3d(
            base_dim, latent_channels, dim_mult, num_res_blocks, temporal_downsample, dropout
        )
        # 1x1x1 convolutions; quant_conv's outputs are ordered [mean | logvar].
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, 1)
        self.decoder = IVVAEDecoder3d(
            base_dim, latent_channels, dim_mult, num_res_blocks, tuple(reversed(temporal_downsample)), dropout
        )

        self.use_slicing = False
        self.use_tiling = False
        # Temporal chunking is always on (it is exact); one frame group per call keeps activations small, like the
        # original's schedule. Tiling adds spatial tiles of at most `tile_sample_min_*` pixels, halo included, for
        # frames larger than that (`_tile_cores`); the halo is what the architecture reads (`tile_halo`).
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_stride_height = 256
        self.tile_sample_stride_width = 256
        self.tile_sample_min_num_frames = temporal
        self.tile_sample_stride_num_frames = temporal
        self.tile_offload_device = "auto"  # the other models' setting; nothing to offload here (see `enable_tiling`)

    def tiling_limits(self) -> TilingLimits:
        """What `enable_tiling` accepts: halo tiles (never overlapping) and temporal chunks of 4k frames."""
        spatial, temporal = self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        return TilingLimits(
            "IV-VAE", spatial, 256, None, frame_offset=0, frame_multiple=temporal, exact_frames=True, exact_only=True
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
        r"""Run the stages above 1/8 resolution in spatial tiles that read a halo, so that memory depends on the
        tile. IV-VAE's tiles are always exact (equal to untiled up to float rounding): `exact` may be True or False.
        Frames no larger than the tile run in one piece. The model card compares the tiling modes of the five models.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels, a multiple of 8 (default 256): what
                a tile reads, halo included, so a tile needs no more memory than a frame of that size untiled. A
                size under four halos keeps a core of `min(size, 2 * halo)` instead (see `_tile_cores`).
            tile_sample_min_width (`int`, *optional*): tile width in pixels, likewise (default 256).
            tile_sample_min_num_frames (`int`, *optional*): frames per temporal chunk after the first frame, a
                multiple of 4 (default 4).
            tile_sample_stride_height, tile_sample_stride_width, tile_sample_stride_num_frames (`int`, *optional*):
                unset or equal to the size: halo tiles and cache-carrying chunks do not overlap.
            exact (`bool`, defaults to `False`): accepted for the common signature; both values give exact tiles.

        `vae.tile_offload_device`, where the other models' exact tiles keep the whole tensors between their layers,
        is accepted and changes nothing here: IV-VAE's tiles run the whole tiled stage per tile and hold no such
        tensors, so there is nothing to offload.
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

    @property
    def tile_halo(self) -> dict[str, int]:
        """Halo of a spatial tile in latent pixels, `{"encode": ..., "decode": ...}`: the receptive field of the
        tiled (high-resolution) stages, rounded up to whole latent pixels."""
        spatial = self.config.spatial_compression_ratio
        return {
            "encode": -(-self.encoder.high_res_reach() // spatial),
            "decode": -(-self.decoder.high_res_reach(spatial) // spatial),
        }

    def _in_place(self) -> bool:
        """Whether the blocks may overwrite fresh intermediate tensors in this call: when no autograd graph is
        recorded (one that is would need them for the backward pass)."""
        return not torch.is_grad_enabled()

    def _frame_chunks(self, num_frames: int, frames_per_step: int) -> list[tuple[int, int]]:
        """`[(0, 1), (1, 1 + s), ...]`: the first frame alone, then chunks of `s = frames_per_step` frames."""
        chunks = [(0, 1)]
        for start in range(1, num_frames, frames_per_step):
            chunks.append((start, min(start + frames_per_step, num_frames)))
        return chunks

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (B, 3, T, H, W)` -> moments `(B, 2 * latent_channels, 1 + (T - 1) / 4, H / 8, W / 8)`."""
        _, _, _, height, width = x.shape
        if self.use_tiling and (height > self.tile_sample_min_height or width > self.tile_sample_min_width):
            return self.tiled_encode(x)
        frames = x.transpose(1, 2)  # the blocks work frame-major: (B, T, C, H, W)
        cache = None
        features = []
        for start, end in self._frame_chunks(frames.shape[1], self.tile_sample_min_num_frames):
            out, cache = self.encoder(frames[:, start:end], cache, self._in_place())
            features.append(out)
        return self.quant_conv(torch.cat(features, dim=1).transpose(1, 2))

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        r"""Encode a video into the RAW latent posterior.

        Args:
            x (`torch.Tensor`): `(B, 3, T, H, W)` in [-1, 1], `T = 1 + 4k`, H and W multiples of 8.
            return_dict (`bool`, defaults to `True`): return an `AutoencoderKLOutput` instead of a tuple.

        Returns:
            `AutoencoderKLOutput` whose `latent_dist` has mean/logvar `(B, latent_channels, 1 + k, H / 8, W / 8)`.
        """
        check_video(
            x,
            in_channels=self.config.in_channels,
            temporal_compression=self.config.temporal_compression_ratio,
            spatial_multiple=self.config.spatial_compression_ratio,
            name="x",
        )
        x = self._to_compute_dtype(x)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(x_slice) for x_slice in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """RAW latents `z: (B, Z, t, h, w)` -> video `(B, 3, 1 + 4(t - 1), 8h, 8w)`."""
        batch, _, num_latent_frames, height, width = z.shape
        spatial = self.config.spatial_compression_ratio
        if self.use_tiling and (
            height * spatial > self.tile_sample_min_height or width * spatial > self.tile_sample_min_width
        ):
            return self.tiled_decode(z)
        temporal = self.config.temporal_compression_ratio
        x = self.post_quant_conv(z).transpose(1, 2)  # frame-major: (B, t, Z, h, w)
        num_frames = 1 + temporal * (num_latent_frames - 1)
        sample = x.new_empty(batch, 3, num_frames, height * spatial, width * spatial)
        cache = None
        latents_per_step = max(1, self.tile_sample_min_num_frames // temporal)
        for start, end in self._frame_chunks(num_latent_frames, latents_per_step):
            images, cache = self.decoder(x[:, start:end], cache, self._in_place())  # (B, frames, 6, H, W)
            self._write_frames(sample, images, start, end)
        return sample

    def _write_frames(self, sample: torch.Tensor, images: torch.Tensor, start: int, end: int) -> None:
        """Write the decoder's images `(B, frames, 6, H, W)` of latent frames `[start, end)` into `sample`."""
        if start == 0:
            sample[:, :, 0] = images[:, 0, :3]
            return
        # Each group: the 2D-half image for its first frame, the 3D-half images for the others.
        temporal = self.config.temporal_compression_ratio
        groups = images.unflatten(1, (end - start, temporal))
        frames = torch.cat([groups[:, :, :1, :3], groups[:, :, 1:, 3:]], dim=2).flatten(1, 2)
        sample[:, :, 1 + temporal * (start - 1) : 1 + temporal * (end - 1)] = frames.transpose(1, 2)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Decode RAW latents into a video.

        Args:
            z (`torch.Tensor`): `(B, latent_channels, t, h, w)`, RAW latents (undo the normalisation first:
                `latents / scaling_factor + shift_factor`).
            return_dict (`bool`, defaults to `True`): return a `DecoderOutput` instead of a tuple.

        Returns:
            `DecoderOutput` with `sample: (B, 3, 1 + 4(t - 1), 8h, 8w)`, not clamped (clamp to [-1, 1] for display).
        """
        check_latents(z, latent_channels=self.config.latent_channels, name="z")
        z = self._to_compute_dtype(z)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(z_slice) for z_slice in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def _tile_cores(self, halo: int) -> tuple[int, int]:
        """Tile cores (height, width) in latent pixels, for tiles that read `halo` latent pixels on each side.

        A core is the tile size less a halo on each side, so that a tile reads at most the tile size and its
        activations are those of an untiled frame of that size (`enable_tiling`'s default, 256 px, bounds memory by
        what a 256 x 256 frame needs). A core is never below `min(size, 2 * halo)`: a tile smaller than four halos
        keeps a core of twice the halo (so a tile computes at most 4x its core's area), or the whole size when that
        is smaller, and then reads more than its size.
        """
        spatial = self.config.spatial_compression_ratio
        sizes = (self.tile_sample_min_height // spatial, self.tile_sample_min_width // spatial)
        return tuple(max(size - 2 * halo, min(size, 2 * halo)) for size in sizes)

    def _spatial_tiles(self, height: int, width: int, halo: int) -> list[tuple[TileSpan, TileSpan]]:
        """The tiles of an `height x width` latent frame as `(rows, columns)` spans in latent pixels."""
        core_height, core_width = self._tile_cores(halo)
        rows = halo_spans(height, core_height, halo)
        columns = halo_spans(width, core_width, halo)
        return [(row, column) for row in rows for column in columns]

    def _latent_chunks(self, chunks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The latent frames `[start, end)` of each frame chunk of `_frame_chunks`."""
        temporal = self.config.temporal_compression_ratio
        return [
            (0, 1) if start == 0 else (1 + (start - 1) // temporal, 1 + (end - 1) // temporal) for start, end in chunks
        ]

    def tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        r"""Encode with halo tiles: the high-resolution stages tile by tile, the rest on whole latent frames.

        Each tile runs through all frame chunks before the next one starts, with its own causal cache: a tile's
        cache is wrong near the tile border exactly where its own activations are (within the halo, never in
        the core), so the cache needs no whole-frame copy and memory stays that of one tile as frames grow. The
        cores go into whole-clip features at 1/8 resolution, whose attention, middle and pyramid head then run
        chunk by chunk on whole latent frames.

        Args:
            x (`torch.Tensor`): `(B, 3, T, H, W)`, already validated.

        Returns:
            moments `(B, 2 * latent_channels, 1 + (T - 1) / 4, H / 8, W / 8)`, equal to the untiled ones up to
            float rounding.
        """
        spatial = self.config.spatial_compression_ratio
        frames = x.transpose(1, 2)  # frame-major: (B, T, C, H, W)
        size = (x.shape[3] // spatial, x.shape[4] // spatial)
        chunks = self._frame_chunks(frames.shape[1], self.tile_sample_min_num_frames)
        latent_chunks = self._latent_chunks(chunks)
        high = None
        for row, column in self._spatial_tiles(*size, halo=self.tile_halo["encode"]):
            cache = None
            for (start, end), (first, last) in zip(chunks, latent_chunks):
                part, cache = self.encoder.forward_high(
                    _tile_window(frames[:, start:end], row, column, size), cache, in_place=self._in_place()
                )
                if high is None:
                    high = _whole_frame_like(part, row, column, size)
                    high = high.new_empty(high.shape[0], latent_chunks[-1][1], *high.shape[2:])
                _paste_core(high[:, first:last], part, row, column)
        features = [self.encoder.forward_low(high[:, first:last], self._in_place()) for first, last in latent_chunks]
        return self.quant_conv(torch.cat(features, dim=1).transpose(1, 2))

    def tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""Decode with halo tiles: the latent-resolution stages on whole latent frames, the upsampling stages tile
        by tile, each tile through all frame chunks with its own causal cache (see `tiled_encode`).

        Args:
            z (`torch.Tensor`): RAW latents `(B, Z, t, h, w)`, already validated.

        Returns:
            video `(B, 3, 1 + 4(t - 1), 8h, 8w)`, equal to the untiled one up to float rounding.
        """
        batch, _, num_latent_frames, height, width = z.shape
        spatial, temporal = self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        x = self.post_quant_conv(z).transpose(1, 2)  # frame-major: (B, t, Z, h, w)
        num_frames = 1 + temporal * (num_latent_frames - 1)
        sample = x.new_empty(batch, 3, num_frames, height * spatial, width * spatial)
        chunks = self._frame_chunks(num_latent_frames, max(1, self.tile_sample_min_num_frames // temporal))
        # Latent resolution: conv_in, middle and first level (attention) on whole latent frames, chunk by chunk,
        # written into one tensor (no second copy of the clip's features from a concatenation).
        low = None
        for start, end in chunks:
            part = self.decoder.forward_low(x[:, start:end], self._in_place())
            if low is None:
                low = part.new_empty(batch, num_latent_frames, *part.shape[2:])
            low[:, start:end] = part
            del part
        for row, column in self._spatial_tiles(height, width, halo=self.tile_halo["decode"]):
            cache = None
            core = (..., row.core_slice(spatial), column.core_slice(spatial))
            for start, end in chunks:
                # 2x to 8x, local layers only: this tile's window.
                images, cache = self.decoder.forward_high(
                    _tile_window(low[:, start:end], row, column, (height, width)), cache, in_place=self._in_place()
                )
                images = images[..., row.core_in_tile(spatial), column.core_in_tile(spatial)]
                self._write_frames(sample[core], images, start, end)
        return sample

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Encode then decode.

        Args:
            sample (`torch.Tensor`): `(B, 3, T, H, W)` in [-1, 1], `T = 1 + 4k`.
            sample_posterior (`bool`, defaults to `False`): decode a sample of the posterior instead of its mean
                (the original always samples).
            return_dict (`bool`, defaults to `True`): return a `DecoderOutput` instead of a tuple.
            generator (`torch.Generator`, optional): random generator for posterior sampling.
        """
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)


__all__ = ["AutoencoderKLIVVAE"]
