# Copyright 2026 The diffusers-videovae contributors and the Open-Sora-Plan team (PKU-YuanGroup).
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
"""OD-VAE: the causal video VAE of Open-Sora-Plan v1.2.0 (`CausalVAEModel`), also able to run the v1.1.0 layout.

Original work: "OD-VAE: An Omni-dimensional Video Compressor for Improving Latent Video Diffusion Model"
(Chen et al., 2024, arXiv:2409.01199) and https://github.com/PKU-YuanGroup/Open-Sora-Plan (Apache-2.0).

Numerics that matter for parity with the original (see the model card):

* 3D blocks normalise with GroupNorm over the whole clip `(C/32, T, H, W)`: the model is *not* causal in practice
  and frames cannot be cached; 2D blocks run per frame on `(B*T, C, H, W)`.
* Causal convolutions prepend `kt - 1` copies of the first frame (not zeros); the 2x2x2 downsampler zero-pads
  right/bottom *before* that replication.
* The 2x2x2 upsampler interpolates frame 0 spatially only and the other frames jointly in time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
from ._common import VideoAutoencoderMixin, register_compression_ratios
from ._layers import checkpointed
from ._tiling import (
    TileStep,
    TilingLimits,
    check_latents,
    check_video,
    configure_tiling,
    stitch_blended_tiles,
    stitch_tiles_as_they_come,
    tiled_in_layer_order,
)

__all__ = ["AutoencoderKLODVAE"]

BLOCK_TYPES = ("resnet2d", "resnet3d")
CONV_IN_TYPES = ("conv2d", "causal_conv3d")
SPATIAL_DOWNSAMPLE_TYPES = ("downsample2d", "downsample3d_time2x")
TEMPORAL_DOWNSAMPLE_TYPES = ("time_res",)
SPATIAL_UPSAMPLE_TYPES = ("upsample2d", "upsample3d_time2x")
TEMPORAL_UPSAMPLE_TYPES = ("time_res",)


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W) in channels-last memory (faster 2D convolutions on CPU), for the blocks
    that work frame by frame."""
    batch, channels, frames, height, width = x.shape
    frames_last = x.permute(0, 2, 3, 4, 1).contiguous().view(batch * frames, height, width, channels)
    return frames_last.permute(0, 3, 1, 2)


def _from_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W), contiguous."""
    frames_total, channels, height, width = x.shape
    x = x.reshape(batch, frames_total // batch, channels, height, width).permute(0, 2, 1, 3, 4)
    return x.contiguous()


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ODVAECausalConv3d(nn.Module):
    """3D convolution, causal in time: `kt - 1` copies of the first frame are prepended, nothing is appended.

    Spatial padding is ordinary zero padding. The `nn.Conv3d` is stored as `.conv` (as in the original).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        kernel_size = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = kernel_size[0] - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=(0, *padding[1:]))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the first frame `kt - 1` times."""
        if not self.time_pad:
            return x
        return torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ODVAEResnetBlock2D(nn.Module):
    """Per-frame residual block on `(B*T, C, H, W)`: GroupNorm statistics per frame."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(shortcut)


class ODVAEResnetBlock3D(nn.Module):
    """Residual block with causal 3x3x3 convolutions; GroupNorm statistics over all frames of the clip."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = ODVAECausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ODVAECausalConv3d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = ODVAECausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h + shortcut


class ODVAEAttention(nn.Module):
    """Single-head self-attention over the H*W positions of each frame separately (the original `AttnBlock3DFix`).

    GroupNorm before it spans the whole clip. q, k, v and the output projection are 1x1x1 causal convolutions,
    i.e. per-position linear maps.

    `query_chunk_size` (set by exact tiles, None otherwise): attend one frame and that many queries at a time, each
    query still over all keys of its frame (the same result up to float rounding). Tokens are made contiguous in
    their channels: with another layout PyTorch's CPU attention falls back to its unfused form, which holds every
    frame's whole `(H*W)^2` attention matrix at once (at 720p, more than all the convolutions).
    """

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = ODVAECausalConv3d(channels, channels, 1)
        self.k = ODVAECausalConv3d(channels, channels, 1)
        self.v = ODVAECausalConv3d(channels, channels, 1)
        self.proj_out = ODVAECausalConv3d(channels, channels, 1)
        self.query_chunk_size: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            # (B, C, T, H, W) -> (B, T, H*W, C): one attention problem per frame.
            return t.permute(0, 2, 3, 4, 1).reshape(batch, frames, height * width, channels).contiguous()

        query, key, value = tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h))
        del h
        if self.query_chunk_size is None:
            h = F.scaled_dot_product_attention(query, key, value)
        else:
            h = torch.empty_like(query)
            for frame in range(frames):
                keys, values = key[:, frame : frame + 1], value[:, frame : frame + 1]
                for start in range(0, height * width, self.query_chunk_size):
                    rows = slice(start, start + self.query_chunk_size)
                    h[:, frame : frame + 1, rows] = F.scaled_dot_product_attention(
                        query[:, frame : frame + 1, rows], keys, values
                    )
        del query, key, value
        h = h.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(h)


class ODVAEDownsample2D(nn.Module):
    """Per-frame 2x spatial downsampling: zero-pad right and bottom by one, then a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ODVAEDownsample3D(nn.Module):
    """Joint 2x downsampling in T, H and W: zero-pad right/bottom, then a causal stride-2 3x3x3 convolution.

    T -> ceil(T / 2), H -> floor(H / 2), W -> floor(W / 2). The replicated first frames include the zero border.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ODVAECausalConv3d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class ODVAETimeDownsampleRes(nn.Module):
    """2x temporal downsampling (v1.1.0): `a * avg_pool_t(x) + (1 - a) * conv_t(x)` with `a = sigmoid(mix_factor)`.

    Both branches see the clip with two copies of the first frame prepended.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x = torch.cat([x[:, :, :1].expand(-1, -1, 2, -1, -1), x], dim=2)
        return alpha * F.avg_pool3d(x, (3, 1, 1), stride=(2, 1, 1)) + (1 - alpha) * self.conv(x)


class ODVAEUpsample2D(nn.Module):
    """Nearest-neighbour 2x spatial upsampling per frame, then a causal (1, 3, 3) convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ODVAECausalConv3d(channels, channels, (1, 3, 3), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


def _upsample_time2x(x: torch.Tensor, spatial: int) -> torch.Tensor:
    """Trilinear upsampling where frame 0 is only scaled in space and frames 1.. are doubled in time.

    T -> 1 + 2 (T - 1); H, W -> spatial * H, spatial * W.
    """
    if x.shape[2] == 1:
        return F.interpolate(x, scale_factor=(1, spatial, spatial), mode="trilinear")
    first = F.interpolate(x[:, :, :1], scale_factor=(1, spatial, spatial), mode="trilinear")
    rest = F.interpolate(x[:, :, 1:], scale_factor=(2, spatial, spatial), mode="trilinear")
    return torch.cat([first, rest], dim=2)


class ODVAEUpsample3D(nn.Module):
    """Joint 2x upsampling in T, H and W (trilinear, frame 0 kept out of the time interpolation), then a causal
    3x3x3 convolution. T -> 1 + 2 (T - 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ODVAECausalConv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_upsample_time2x(x, spatial=2))


class ODVAETimeUpsampleRes(nn.Module):
    """2x temporal upsampling (v1.1.0): `u = interp_t(x)`, then `a * u + (1 - a) * causal_conv(u)`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = ODVAECausalConv3d(channels, channels, 3, padding=1)
        self.mix_factor = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        x = _upsample_time2x(x, spatial=1)
        return alpha * x + (1 - alpha) * self.conv(x)


class ODVAEFrameConv2d(nn.Conv2d):
    """A 3x3 `nn.Conv2d` applied to every frame of `(B, C, T, H, W)` (the v1.2.0 encoder stem)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _from_frames(super().forward(_to_frames(x)), x.shape[0])


def _resnets(kind: str, in_channels: int, out_channels: int, count: int, dropout: float, groups: int) -> nn.ModuleList:
    block = {"resnet2d": ODVAEResnetBlock2D, "resnet3d": ODVAEResnetBlock3D}[kind]
    return nn.ModuleList(
        [block(in_channels if i == 0 else out_channels, out_channels, dropout, groups) for i in range(count)]
    )


RESNETS = (ODVAEResnetBlock2D, ODVAEResnetBlock3D)


def _run_parts(owner: nn.Module, parts: list[tuple[nn.Module, bool]], x: torch.Tensor) -> torch.Tensor:
    """Run `parts` (layer, per frame) of a level in order on `(B, C, T, H, W)`, folding the frames into the batch
    only where the layout changes; resnets go through `owner`'s gradient checkpointing."""
    batch, per_frame = x.shape[0], False
    for layer, frames in parts:
        if frames != per_frame:
            x, per_frame = (_to_frames(x) if frames else _from_frames(x, batch)), frames
        x = checkpointed(owner, layer, x) if isinstance(layer, RESNETS) else layer(x)
    return _from_frames(x, batch) if per_frame else x


def _part_reach(layer: nn.Module) -> int:
    """How far, in input pixels, beyond its own an output pixel of one level part reads: a 3x3 convolution 1,
    a resnet 2; a stride-2 downsampler 1, rounded up to 2 so that tiles stay aligned to its stride; a 2x upsampler
    then a 3x3 convolution 1 (nearest: the convolution reads one output pixel past the tile, 1/2 input pixel;
    trilinear: it clamps at a tile border, which the convolution spreads over 2 output pixels)."""
    return 2 if isinstance(layer, RESNETS + (ODVAEDownsample2D, ODVAEDownsample3D)) else 1


class ODVAEDownBlock(nn.Module):
    """One encoder level: its resnets (`block`), then its spatial (`downsample`) and temporal (`time_downsample`)
    downsamplers where the level has them. 2D resnets and the 2D downsampler run per frame: the frames are folded
    into the batch while they run."""

    def __init__(
        self,
        block_type: str,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        spatial_downsample: str | None,
        temporal_downsample: str | None,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        self.per_frame = block_type == "resnet2d"
        self.block = _resnets(block_type, in_channels, out_channels, num_layers, dropout, groups)
        downsamplers = {"downsample2d": ODVAEDownsample2D, "downsample3d_time2x": ODVAEDownsample3D}
        self.downsample = downsamplers[spatial_downsample](out_channels) if spatial_downsample else None
        self.time_downsample = ODVAETimeDownsampleRes(out_channels) if temporal_downsample else None
        self.gradient_checkpointing = False

    def parts(self) -> list[tuple[nn.Module, bool]]:
        """The level's layers in order, each with whether it runs per frame."""
        layers = [(resnet, self.per_frame) for resnet in self.block]
        if self.downsample is not None:
            layers.append((self.downsample, isinstance(self.downsample, ODVAEDownsample2D)))
        if self.time_downsample is not None:
            layers.append((self.time_downsample, False))
        return layers

    def forward(self, x: torch.Tensor, parts: slice = slice(None)) -> torch.Tensor:
        """`(B, C_in, T, H, W)` -> `(B, C_out, T', H', W')`. `parts` runs some of the level's `parts()` only (exact
        tiles run them one at a time, through this `forward` so that hooks on the level apply)."""
        return _run_parts(self, self.parts()[parts], x)


class ODVAEUpBlock(nn.Module):
    """One decoder level: its resnets (`block`), then its spatial (`upsample`) and temporal (`time_upsample`)
    upsamplers where the level has them. 2D resnets run per frame."""

    def __init__(
        self,
        block_type: str,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        spatial_upsample: str | None,
        temporal_upsample: str | None,
        dropout: float,
        groups: int,
    ):
        super().__init__()
        self.per_frame = block_type == "resnet2d"
        self.block = _resnets(block_type, in_channels, out_channels, num_layers, dropout, groups)
        upsamplers = {"upsample2d": ODVAEUpsample2D, "upsample3d_time2x": ODVAEUpsample3D}
        self.upsample = upsamplers[spatial_upsample](out_channels) if spatial_upsample else None
        self.time_upsample = ODVAETimeUpsampleRes(out_channels) if temporal_upsample else None
        self.gradient_checkpointing = False

    def parts(self) -> list[tuple[nn.Module, bool]]:
        """The level's layers in order, each with whether it runs per frame."""
        layers = [(resnet, self.per_frame) for resnet in self.block]
        return layers + [(layer, False) for layer in (self.upsample, self.time_upsample) if layer is not None]

    def forward(self, x: torch.Tensor, parts: slice = slice(None)) -> torch.Tensor:
        """`(B, C_in, T, H, W)` -> `(B, C_out, T', H', W')`. `parts` runs some of the level's `parts()` only (exact
        tiles run them one at a time, through this `forward` so that hooks on the level apply)."""
        return _run_parts(self, self.parts()[parts], x)


class ODVAEMidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ODVAEResnetBlock3D(channels, channels, dropout, groups)
        self.attn_1 = ODVAEAttention(channels, groups)
        self.block_2 = ODVAEResnetBlock3D(channels, channels, dropout, groups)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpointed(self, self.block_1, x)
        x = checkpointed(self, self.attn_1, x)
        return checkpointed(self, self.block_2, x)


def _resnet_reach(block: nn.ModuleList, scale: int) -> int:
    return 2 * scale * len(block)  # two 3x3 convolutions per resnet (the shortcut is 1x1)


class ODVAEEncoder(nn.Module):
    """`(B, 3, T, H, W)` -> `(B, 2 * z_channels, t, h, w)` (mean and log-variance before `quant_conv`)."""

    def __init__(
        self,
        in_channels: int,
        z_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        conv_in: str,
        block_types: tuple[str, ...],
        spatial_downsample: tuple[str | None, ...],
        temporal_downsample: tuple[str | None, ...],
        dropout: float,
        groups: int,
    ):
        super().__init__()
        channels = block_out_channels[0]
        if conv_in == "conv2d":
            self.conv_in = ODVAEFrameConv2d(in_channels, channels, 3, padding=1)
        else:
            self.conv_in = ODVAECausalConv3d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        for level, out_channels in enumerate(block_out_channels):
            self.down.append(
                ODVAEDownBlock(
                    block_types[level],
                    channels,
                    out_channels,
                    layers_per_block,
                    spatial_downsample[level],
                    temporal_downsample[level],
                    dropout,
                    groups,
                )
            )
            channels = out_channels
        self.mid = ODVAEMidBlock(channels, dropout, groups)
        self.norm_out = _group_norm(channels, groups)
        self.conv_out = ODVAECausalConv3d(channels, 2 * z_channels, 3, padding=1)
        # Levels through the last spatial downsampler run above latent resolution (exact tiling runs them in tiles).
        self.num_high_res_levels = 1 + max((i for i, kind in enumerate(spatial_downsample) if kind), default=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def high_res_steps(self) -> list[TileStep]:
        """`(B, 3, T, H, W)` -> features `(B, C, t, H / 8, W / 8)` as steps that exact tiles run one at a time:
        `conv_in`, then each part of the levels through the last spatial downsampler (local in space apart from
        their GroupNorms). The 2D stem, 2D resnets (GroupNorm statistics per frame) and 2D downsamplers are marked
        per frame: exact tiles run the first of them one frame at a time."""
        steps = [TileStep(self.conv_in, 1, self.conv_in, isinstance(self.conv_in, ODVAEFrameConv2d))]
        for stage in self.down[: self.num_high_res_levels]:
            for index, (layer, per_frame) in enumerate(stage.parts()):
                run = partial(stage, parts=slice(index, index + 1))
                steps.append(TileStep(run, _part_reach(layer), stage, per_frame))
        return steps

    def forward_low(self, h: torch.Tensor) -> torch.Tensor:
        """Features `(B, C, t, h, w)` -> `(B, 2 * z_channels, t', h, w)`: the latent-resolution levels, the mid
        block with its attention, `norm_out` and `conv_out`, on whole frames."""
        for stage in self.down[self.num_high_res_levels :]:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def high_res_reach(self) -> int:
        """An upper bound, in input pixels, on how far beyond its own footprint (8x8 input pixels for a latent
        pixel) an output pixel of `high_res_steps` reads; `scale` is input pixels per feature pixel at each layer."""
        reach, scale = 1, 1  # conv_in: 3x3
        for stage in self.down[: self.num_high_res_levels]:
            reach += _resnet_reach(stage.block, scale)
            if stage.downsample is not None:
                # 3x3 stride 2 after one pixel of padding right/bottom: output j reads inputs 2j..2j+2, one input
                # pixel past its own two (on the right / bottom side only; the halo is symmetric anyway).
                reach += scale
                scale *= 2
            if stage.time_downsample is not None:
                reach += scale  # its 3x3x3 convolution, padded 1 in space
        return reach


class ODVAEDecoder(nn.Module):
    """`(B, z_channels, t, h, w)` -> `(B, 3, T, H, W)`; levels are stored by index and run from the deepest."""

    def __init__(
        self,
        out_channels: int,
        z_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        block_types: tuple[str, ...],
        spatial_upsample: tuple[str | None, ...],
        temporal_upsample: tuple[str | None, ...],
        dropout: float,
        groups: int,
    ):
        super().__init__()
        channels = block_out_channels[-1]
        self.conv_in = ODVAECausalConv3d(z_channels, channels, 3, padding=1)
        self.mid = ODVAEMidBlock(channels, dropout, groups)
        stages = {}
        for level in reversed(range(len(block_out_channels))):
            stages[level] = ODVAEUpBlock(
                block_types[level],
                channels,
                block_out_channels[level],
                layers_per_block + 1,
                spatial_upsample[level],
                temporal_upsample[level],
                dropout,
                groups,
            )
            channels = block_out_channels[level]
        self.up = nn.ModuleList([stages[level] for level in range(len(block_out_channels))])
        self.norm_out = _group_norm(channels, groups)
        self.conv_out = ODVAECausalConv3d(channels, out_channels, 3, padding=1)
        # The deepest level with a spatial upsampler: its resnets still run at latent resolution, its upsamplers and
        # every level after it above (exact tiling runs those in tiles).
        self.first_upsampling_level = max((i for i, kind in enumerate(spatial_upsample) if kind), default=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid(h)
        for stage in reversed(self.up):
            h = stage(h)
        return self.output_layers(h)

    def forward_low(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, z_channels, t, h, w)` -> features `(B, C, t', h, w)`: `conv_in`, the mid block with its attention,
        the levels before the first spatial upsampler and that level's resnets, on whole frames."""
        h = self.mid(self.conv_in(z))
        for level in reversed(range(self.first_upsampling_level + 1, len(self.up))):
            h = self.up[level](h)
        if self.first_upsampling_level >= 0:
            stage = self.up[self.first_upsampling_level]
            h = stage(h, parts=slice(len(stage.block)))
        return h

    def output_layers(self, h: torch.Tensor) -> torch.Tensor:
        """`norm_out`, SiLU and `conv_out`: `(B, C, T, H, W)` -> `(B, 3, T, H, W)`."""
        return self.conv_out(F.silu(self.norm_out(h)))

    def high_res_steps(self) -> list[TileStep]:
        """Features `(B, C, t, h, w)` -> `(B, 3, T, 8 h, 8 w)`: the first spatial upsampler and everything after it,
        as steps that exact tiles run one at a time: each part of those levels (local in space apart from their
        GroupNorms), then the output layers."""
        steps = []
        for level in reversed(range(self.first_upsampling_level + 1)):
            stage = self.up[level]
            first = len(stage.block) if level == self.first_upsampling_level else 0
            for index, (layer, _) in enumerate(stage.parts()[first:], start=first):
                steps.append(TileStep(partial(stage, parts=slice(index, index + 1)), _part_reach(layer), stage))
        return steps + [TileStep(self.output_layers, 1, self.norm_out)]

    def high_res_stages(self) -> list[nn.Module]:
        """The levels `high_res_steps` run (the first upsampling level's resnets do not run there)."""
        return [self.up[level] for level in reversed(range(self.first_upsampling_level + 1))]

    def high_res_reach(self) -> int:
        """An upper bound, in output pixels, on how far beyond its own footprint an output pixel of `high_res_steps`
        reads; `scale` is output pixels per feature pixel at each layer (8 at latent resolution).

        Walking back from an output pixel, the pixels it depends on span an interval that grows by `scale` on each
        side per 3x3 convolution; a 2x upsampler also widens it to whole coarse pixels (nearest: at most one fine
        pixel per side) or, trilinear, by one coarse pixel (two fine pixels). The latent pixels read are then at
        most `ceil(reach / 8)` away from the output pixel's own.
        """
        stages = self.high_res_stages()
        scale = 2 ** sum(stage.upsample is not None for stage in stages)
        reach = 0
        for index, stage in enumerate(stages):
            if index > 0:
                reach += _resnet_reach(stage.block, scale)
            if isinstance(stage.upsample, ODVAEUpsample2D):
                scale //= 2
                reach += scale + scale  # nearest 2x (alignment), then a 3x3 convolution
            elif isinstance(stage.upsample, ODVAEUpsample3D):
                scale //= 2
                reach += 2 * scale + scale  # trilinear 2x (one coarse pixel), then a 3x3x3 convolution
            if stage.time_upsample is not None:
                reach += scale  # interpolation in time only, then a 3x3x3 convolution
        return reach + scale  # conv_out: 3x3


# Queries per attention call in exact tiles: a 1024 x (H*W) attention matrix, 56 MiB for a 720p latent frame.
EXACT_QUERY_CHUNK = 1024


@contextmanager
def _attention_in_chunks(attention: ODVAEAttention) -> Iterator[None]:
    """Run `attention` one frame and `EXACT_QUERY_CHUNK` queries at a time inside the block (exact tiles)."""
    previous, attention.query_chunk_size = attention.query_chunk_size, EXACT_QUERY_CHUNK
    try:
        yield
    finally:
        attention.query_chunk_size = previous


def _chunk_starts(size: int, length: int, stride: int) -> list[int]:
    """Starts of chunks `[s, s + length)` every `stride`, stopping at the first chunk that reaches `size`."""
    starts = []
    for start in range(0, size, stride):
        starts.append(start)
        if start + length >= size:
            break
    return starts


class AutoencoderKLODVAE(
    ModelMixin, AutoencoderMixin, ConfigMixin, FromOriginalCheckpointMixin, VideoAutoencoderMixin
):
    r"""OD-VAE, the 4x8x8 causal video VAE of Open-Sora-Plan v1.2.0 (and, by config, the v1.1.0 CausalVideoVAE).

    Video `(B, 3, T, H, W)` in [-1, 1] with `T = 1 + 4k` (an image is `T = 1`) and H, W multiples of 8 ->
    latent `(B, latent_channels, 1 + (T - 1) / 4, H / 8, W / 8)`. `encode` returns the RAW posterior; pipelines
    use `z * scaling_factor` (0.18215, no shift) and `decode(z / scaling_factor)`.

    The defaults are the released v1.2.0 config. Per-level module lists (index 0 = highest resolution) express the
    v1.1.0 layout too (`encoder_spatial_downsample=("downsample2d",) * 3 + (None,)`,
    `encoder_temporal_downsample=(None, "time_res", "time_res", None)`,
    `decoder_spatial_upsample=(None, "upsample2d", "upsample2d", "upsample2d")`,
    `decoder_temporal_upsample=(None, None, "time_res", "time_res")`).

    Args:
        in_channels (`int`, defaults to 3): video channels.
        out_channels (`int`, defaults to 3): decoded channels.
        latent_channels (`int`, defaults to 4): posterior channels (the original `embed_dim`).
        z_channels (`int`, defaults to 4): encoder output / decoder input channels around the quant convs.
        block_out_channels (`tuple[int]`, defaults to `(128, 256, 512, 512)`): channels per level
            (original `hidden_size * hidden_size_mult`); multiples of `norm_num_groups`.
        layers_per_block (`int`, defaults to 2): resnets per encoder level; the decoder uses one more.
        encoder_conv_in (`str`, defaults to `"conv2d"`): `"conv2d"` (per frame) or `"causal_conv3d"`.
        encoder_block_types (`tuple[str]`): `"resnet2d"` (per frame) or `"resnet3d"` (causal) per encoder level.
        encoder_spatial_downsample (`tuple[str | None]`): `"downsample2d"` (per-frame 2x), `"downsample3d_time2x"`
            (joint 2x2x2, causal) or `None` per level. The last level must have none.
        encoder_temporal_downsample (`tuple[str | None]`): `"time_res"` (v1.1.0 mixed avg-pool/conv 2x) or `None`.
        decoder_block_types (`tuple[str]`): as `encoder_block_types`, per decoder level.
        decoder_spatial_upsample (`tuple[str | None]`): `"upsample2d"` (nearest 2x + conv), `"upsample3d_time2x"`
            (trilinear 2x2x2 + causal conv) or `None` per level.
        decoder_temporal_upsample (`tuple[str | None]`): `"time_res"` (v1.1.0) or `None` per level.
        dropout (`float`, defaults to 0.0): dropout inside the resnets.
        use_quant_layer (`bool`, defaults to `True`): whether the 1x1x1 `quant_conv` / `post_quant_conv` exist.
        norm_num_groups (`int`, defaults to 32): GroupNorm groups (eps 1e-6 everywhere).
        scaling_factor (`float`, defaults to 0.18215): latent scale used by Open-Sora-Plan pipelines.
        force_upcast (`bool`, defaults to True): float16 runs are upcast to float32 (diffusers pipelines and
            `videovae --dtype float16` read it): the release is float32 and its reference runs are float32.
        temporal_compression_ratio / spatial_compression_ratio (`int`, optional): derived from the layout
            (4 and 8 for both releases); given values must agree with it.

    Tiling (`enable_tiling`) has two modes. The default follows the original's scheme (overlapping tiles blended
    at the seams, chunks in time), so tiled results equal the original's tiled results and memory stays flat as the
    clip grows; they are not the untiled results, because GroupNorm statistics become per tile and per chunk and the
    trilinear upsamplers clamp at tile borders. `enable_tiling(exact=True)` gives the untiled results up to float
    rounding instead: the layers above latent resolution run one level part (a resnet, an up- or downsampler) at a
    time over all tiles, each tile reading the few pixels around its core that the part needs, with GroupNorm
    statistics shared over all tiles (`_tiling.tiled_in_layer_order`; the encoder's per-frame layers one frame at a
    time); the rest runs on whole latent frames, its attention one frame and 1024 queries at a time. It costs about
    twice the untiled time and keeps the whole clip in time, so its memory grows with the number of frames and the
    frame size (below the untiled peak: one part's input and output); `tile_offload_device` keeps those whole
    tensors in CPU memory or on disk instead (by default on disk when the model runs on the CPU).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ODVAEResnetBlock3D", "ODVAEResnetBlock2D", "ODVAEAttention"]
    _skip_layerwise_casting_patterns = ["norm"]
    # Block-level group offloading: the level lists become groups; these modules (called directly by the exact
    # tiles, not through their parent's forward) get their own, so that every layer is onloaded by a module it runs in.
    _group_offload_block_modules = [
        "encoder",
        "decoder",
        "quant_conv",
        "post_quant_conv",
        "conv_in",
        "mid",
        "norm_out",
        "conv_out",
    ]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        z_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        encoder_conv_in: str = "conv2d",
        encoder_block_types: tuple[str, ...] = ("resnet2d", "resnet2d", "resnet3d", "resnet3d"),
        encoder_spatial_downsample: tuple[str | None, ...] = (
            "downsample2d",
            "downsample3d_time2x",
            "downsample3d_time2x",
            None,
        ),
        encoder_temporal_downsample: tuple[str | None, ...] = (None, None, None, None),
        decoder_block_types: tuple[str, ...] = ("resnet3d", "resnet3d", "resnet3d", "resnet3d"),
        decoder_spatial_upsample: tuple[str | None, ...] = (
            None,
            "upsample2d",
            "upsample3d_time2x",
            "upsample3d_time2x",
        ),
        decoder_temporal_upsample: tuple[str | None, ...] = (None, None, None, None),
        dropout: float = 0.0,
        use_quant_layer: bool = True,
        norm_num_groups: int = 32,
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
        temporal_compression_ratio: int | None = None,
        spatial_compression_ratio: int | None = None,
    ):
        super().__init__()
        temporal, spatial = self._check_layout(
            len(block_out_channels),
            block_out_channels,
            norm_num_groups,
            encoder_conv_in,
            encoder_block_types,
            encoder_spatial_downsample,
            encoder_temporal_downsample,
            decoder_block_types,
            decoder_spatial_upsample,
            decoder_temporal_upsample,
        )
        register_compression_ratios(
            self,
            temporal=temporal,
            spatial=spatial,
            temporal_compression_ratio=temporal_compression_ratio,
            spatial_compression_ratio=spatial_compression_ratio,
        )

        self.encoder = ODVAEEncoder(
            in_channels,
            z_channels,
            tuple(block_out_channels),
            layers_per_block,
            encoder_conv_in,
            tuple(encoder_block_types),
            tuple(encoder_spatial_downsample),
            tuple(encoder_temporal_downsample),
            dropout,
            norm_num_groups,
        )
        self.decoder = ODVAEDecoder(
            out_channels,
            z_channels,
            tuple(block_out_channels),
            layers_per_block,
            tuple(decoder_block_types),
            tuple(decoder_spatial_upsample),
            tuple(decoder_temporal_upsample),
            dropout,
            norm_num_groups,
        )
        if use_quant_layer:
            self.quant_conv = ODVAECausalConv3d(2 * z_channels, 2 * latent_channels, 1)
            self.post_quant_conv = ODVAECausalConv3d(latent_channels, z_channels, 1)
        elif z_channels != latent_channels:
            raise ValueError(
                f"Without quant layers z_channels ({z_channels}) must equal latent_channels ({latent_channels})."
            )
        else:
            self.quant_conv = None
            self.post_quant_conv = None

        self.use_slicing = False
        self.use_tiling = False
        # The original's `__init__` values (S=256, overlap 0.125) with the pipeline's 29-frame (8-latent) chunks.
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_min_num_frames = 29
        self.tile_sample_stride_height = 224
        self.tile_sample_stride_width = 224
        self.tile_sample_stride_num_frames = 28
        self.tile_exact = False
        self.tile_offload_device = "auto"  # where exact tiles keep their step boundaries (see `enable_tiling`)

    @staticmethod
    def _check_layout(
        levels,
        block_out_channels,
        groups,
        conv_in,
        encoder_blocks,
        encoder_spatial,
        encoder_temporal,
        decoder_blocks,
        decoder_spatial,
        decoder_temporal,
    ) -> tuple[int, int]:
        """Checks the per-level lists; returns the `(temporal, spatial)` compression they give."""
        lists = {
            "encoder_block_types": (encoder_blocks, BLOCK_TYPES),
            "encoder_spatial_downsample": (encoder_spatial, SPATIAL_DOWNSAMPLE_TYPES),
            "encoder_temporal_downsample": (encoder_temporal, TEMPORAL_DOWNSAMPLE_TYPES),
            "decoder_block_types": (decoder_blocks, BLOCK_TYPES),
            "decoder_spatial_upsample": (decoder_spatial, SPATIAL_UPSAMPLE_TYPES),
            "decoder_temporal_upsample": (decoder_temporal, TEMPORAL_UPSAMPLE_TYPES),
        }
        for name, (values, allowed) in lists.items():
            if len(values) != levels:
                raise ValueError(f"{name} has {len(values)} entries; block_out_channels has {levels} levels.")
            optional = name not in ("encoder_block_types", "decoder_block_types")
            for value in values:
                if value not in allowed and not (optional and value is None):
                    raise ValueError(
                        f"{name}: unknown entry {value!r}; expected one of {allowed}"
                        + (" or None." if optional else ".")
                    )
        if conv_in not in CONV_IN_TYPES:
            raise ValueError(f"encoder_conv_in must be one of {CONV_IN_TYPES}, got {conv_in!r}.")
        if encoder_spatial[-1] is not None or encoder_temporal[-1] is not None:
            raise ValueError("The last encoder level cannot downsample (the original computes and then ignores it).")
        if any(channels % groups for channels in block_out_channels):
            raise ValueError(
                f"block_out_channels {tuple(block_out_channels)} must be multiples of norm_num_groups={groups}."
            )
        spatial = 2 ** sum(kind is not None for kind in encoder_spatial)
        temporal = 2 ** (
            sum(kind == "downsample3d_time2x" for kind in encoder_spatial)
            + sum(kind is not None for kind in encoder_temporal)
        )
        up_spatial = 2 ** sum(kind is not None for kind in decoder_spatial)
        up_temporal = 2 ** (
            sum(kind == "upsample3d_time2x" for kind in decoder_spatial)
            + sum(kind is not None for kind in decoder_temporal)
        )
        if (spatial, temporal) != (up_spatial, up_temporal):
            raise ValueError(
                f"Encoder compresses {temporal}x{spatial}x{spatial} (TxHxW) but the decoder expands "
                f"{up_temporal}x{up_spatial}x{up_spatial}; the per-level lists do not match."
            )
        return temporal, spatial

    def tiling_limits(self) -> TilingLimits:
        """What `enable_tiling` accepts: 256-px tiles every 224 px, chunks of 29 frames every 28 (blended)."""
        spatial, temporal = self.config.spatial_compression_ratio, self.config.temporal_compression_ratio
        return TilingLimits(
            "OD-VAE", spatial, 256, Fraction(7, 8), frame_offset=1, frame_multiple=temporal, frames_overlap=True
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
        r"""Encode and decode in tiles, so that memory depends on the tile: the original's blended tiles (default,
        its tiled results, not the untiled ones) or exact tiles (`exact=True`: equal to untiled up to float
        rounding, slower, not cut in time). The model card compares the modes.

        The original's `tile_sample_min_size = S`, `tile_overlap_factor = f`, `tile_sample_min_size_t = n` are
        `enable_tiling(S, S, n, int(S * (1 - f)), int(S * (1 - f)), n - 1)`.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels, a multiple of 8 (default 256).
            tile_sample_min_width (`int`, *optional*): tile width in pixels, a multiple of 8 (default 256).
            tile_sample_min_num_frames (`int`, *optional*): frames per chunk, `1 + 4k` (default 29).
            tile_sample_stride_height (`int`, *optional*): step between tiles in pixels, a multiple of 8 at most
                the height (default: 7/8 of it). Exact tiles do not overlap: unset or equal to the height.
            tile_sample_stride_width (`int`, *optional*): the same for the width.
            tile_sample_stride_num_frames (`int`, *optional*): step between chunks, a multiple of 4 at most
                `tile_sample_min_num_frames - 1` (default: that). Exact tiles are not cut in time: unset.
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

    @property
    def tile_halo(self) -> dict[str, int]:
        """Halo of an exact tile, `{"encode": input pixels, "decode": latent pixels}`: the receptive field of the
        tiled layers (`high_res_reach`), rounded up to whole latent pixels (encode: to a multiple of 8 pixels, as
        the stride-2 downsamplers need tiles aligned to 8).

        Released v1.2.0 layout (`scale` = pixels per feature pixel, `r` = levels' resnets, 2 per encoder level,
        3 per decoder level, two 3x3 convolutions each):
        - encode: conv_in 1 + level 0 (2 r x 2 + downsample 1) + level 1 (2 r x 2 + 1) x 2 + level 2 (same) x 4
          = 1 + 5 + 10 + 20 = 36 px -> 40 px (5 latent pixels); v1.1.0: 36 + 4 + 8 (its level-1 and level-2
          time downsamplers, 3x3 at scales 4 and 8) = 48 px (6 latent pixels).
        - decode: level 3 upsampler (trilinear 2 + conv 1) x 4 + level 2 (3 r x 2) x 4 + its upsampler (2 + 1) x 2
          + level 1 (6) x 2 + its upsampler (nearest 1 + conv 1) x 1 + level 0 (6) x 1 + conv_out 1
          = 12 + 24 + 6 + 12 + 2 + 6 + 1 = 63 px -> 8 latent pixels.
        """
        spatial = self.config.spatial_compression_ratio
        return {
            "encode": -(-self.encoder.high_res_reach() // spatial) * spatial,
            "decode": -(-self.decoder.high_res_reach() // spatial),
        }

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        _, _, frames, height, width = x.shape
        if self.use_tiling and (
            height > self.tile_sample_min_height
            or width > self.tile_sample_min_width
            or (frames > self.tile_sample_min_num_frames and not self.tile_exact)
        ):
            return self.tiled_encode(x)
        return self._encode_moments(x)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        r"""Encode a video into its RAW posterior.

        Args:
            x: `(B, 3, T, H, W)` in [-1, 1], `T = 1 + 4k`, H and W multiples of 8.

        Returns:
            `AutoencoderKLOutput(latent_dist)` with a `DiagonalGaussianDistribution` over
            `(B, latent_channels, 1 + (T - 1) / 4, H / 8, W / 8)` (log-variance clamped to [-30, 20]).
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
            moments = torch.cat([self._encode(item) for item in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        _, _, frames, height, width = z.shape
        spatial = self.config.spatial_compression_ratio
        temporal = self.config.temporal_compression_ratio
        if self.use_tiling and (
            height > self.tile_sample_min_height // spatial
            or width > self.tile_sample_min_width // spatial
            or (frames > (self.tile_sample_min_num_frames - 1) // temporal + 1 and not self.tile_exact)
        ):
            return self.tiled_decode(z)
        return self._decode_latents(z)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        r"""Decode RAW latents (divide scaled latents by `scaling_factor` first).

        Args:
            z: `(B, latent_channels, t, h, w)`.

        Returns:
            `DecoderOutput(sample)` with `sample` of shape `(B, 3, 1 + 4 (t - 1), 8 h, 8 w)`, roughly in [-1, 1]
            (not clamped).
        """
        check_latents(z, latent_channels=self.config.latent_channels)
        z = self._to_compute_dtype(z)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(item) for item in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        r"""Moments `(B, 2 * latent_channels, t, h, w)` of `x` computed chunk by chunk in time, tile by tile in space
        (exact mode: tile by tile in space only, see `enable_tiling`)."""
        if self.tile_exact:
            return self._exact_tiled_encode(x)
        temporal = self.config.temporal_compression_ratio
        length, stride = self.tile_sample_min_num_frames, self.tile_sample_stride_num_frames
        overlap = (length - 1) // temporal + 1 - stride // temporal
        chunks = []
        for index, start in enumerate(_chunk_starts(x.shape[2], length, stride)):
            moments = self._tiled_encode_spatial(x[:, :, start : start + length])
            chunks.append(moments if index == 0 else moments[:, :, overlap:])
        return torch.cat(chunks, dim=2)

    def _tiled_encode_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Blended tiles every `stride` pixels (edge tiles are smaller), as the original."""
        spatial = self.config.spatial_compression_ratio
        tile_h, tile_w = self.tile_sample_min_height, self.tile_sample_min_width
        tops, lefts = (
            range(0, x.shape[3], self.tile_sample_stride_height),
            range(0, x.shape[4], self.tile_sample_stride_width),
        )
        tiles = [
            [self._encode_moments(x[:, :, :, top : top + tile_h, left : left + tile_w]) for left in lefts]
            for top in tops
        ]
        return stitch_blended_tiles(tiles, [t // spatial for t in tops], [w // spatial for w in lefts])

    def tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""Decode `z` chunk by chunk in time and tile by tile in space; memory stays flat as the clip grows
        (exact mode: tile by tile in space only, memory grows with T; see `enable_tiling`)."""
        if self.tile_exact:
            return self._exact_tiled_decode(z)
        temporal = self.config.temporal_compression_ratio
        length = (self.tile_sample_min_num_frames - 1) // temporal + 1
        stride = self.tile_sample_stride_num_frames // temporal
        overlap = temporal * (length - 1 - stride) + 1
        chunks = []
        for index, start in enumerate(_chunk_starts(z.shape[2], length, stride)):
            frames = self._tiled_decode_spatial(z[:, :, start : start + length])
            chunks.append(frames if index == 0 else frames[:, :, overlap:])
        return torch.cat(chunks, dim=2)

    def _tiled_decode_spatial(self, z: torch.Tensor) -> torch.Tensor:
        """Blended tiles every `stride / 8` latent pixels (edge tiles are smaller), as the original."""
        spatial = self.config.spatial_compression_ratio
        tile_h, tile_w = self.tile_sample_min_height // spatial, self.tile_sample_min_width // spatial
        tops = range(0, z.shape[3], self.tile_sample_stride_height // spatial)
        lefts = range(0, z.shape[4], self.tile_sample_stride_width // spatial)
        tiles = (
            self._decode_latents(z[:, :, :, top : top + tile_h, left : left + tile_w])
            for top in tops
            for left in lefts
        )
        size = (z.shape[3] * spatial, z.shape[4] * spatial)
        return stitch_tiles_as_they_come(tiles, list(tops), list(lefts), size, scale=spatial)

    def _exact_tiled_encode(self, x: torch.Tensor) -> torch.Tensor:
        """`tiled_encode` in exact mode: `(B, 3, T, H, W)` -> moments `(B, 2 * latent_channels, t, H / 8, W / 8)`."""
        h = tiled_in_layer_order(
            self.encoder.high_res_steps(),
            x,
            core=(self.tile_sample_min_height, self.tile_sample_min_width),
            offload_device=self.tile_offload_device,
        )
        with _attention_in_chunks(self.encoder.mid.attn_1):
            moments = self.encoder.forward_low(h.to(x.device))
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _exact_tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        """`tiled_decode` in exact mode: `(B, latent_channels, t, h, w)` -> `(B, 3, T, 8 h, 8 w)`."""
        spatial = self.config.spatial_compression_ratio
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        with _attention_in_chunks(self.decoder.mid.attn_1):
            h = self.decoder.forward_low(z)
        core = (self.tile_sample_min_height // spatial, self.tile_sample_min_width // spatial)
        return tiled_in_layer_order(self.decoder.high_res_steps(), h, core, offload_device=self.tile_offload_device)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple:
        r"""Encode and decode `sample` `(B, 3, T, H, W)`; with `sample_posterior` a latent is drawn with `generator`
        (the original's `forward` samples by default; ours uses the posterior mode unless asked)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
