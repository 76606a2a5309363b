# Copyright 2026 The diffusers-videovae contributors.
# Based on the Open-Sora 1.2 video autoencoder by the HPC-AI Tech team (https://github.com/hpcaitech/Open-Sora),
# released under the Apache License, Version 2.0. Re-implemented from its description; no code copied.
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
"""Open-Sora 1.2 VAE: diffusers' `AutoencoderKL` (SDXL VAE) per frame, then a MAGVIT-v2-style temporal VAE.

Video `(B, 3, T, H, W)` in [-1, 1] -> spatial latents `(B, 4, T, H/8, W/8)` (frame by frame, times 0.18215) ->
temporal latents `(B, 4, T', H/8, W/8)`, computed on independent chunks of `micro_frame_size` (17) frames, each
chunk giving `ceil(n / 4)` latent frames (5 for a full chunk).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UpDecoderBlock2D
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor

from ..loaders import FromOriginalCheckpointMixin
from ._common import InputRule, VideoAutoencoderMixin, register_compression_ratios
from ._layers import NearestUpsampleConvMixin, checkpointed
from ._tiling import (
    TileStep,
    TilingLimits,
    check_latents,
    check_positive_int,
    check_video,
    configure_tiling,
    stitch_blended_tiles,
    stitch_tiles_as_they_come,
    tile_starts,
    tiled_in_layer_order,
)

SDXL_DOWN_BLOCKS = ("DownEncoderBlock2D",) * 4
SDXL_UP_BLOCKS = ("UpDecoderBlock2D",) * 4


class OpenSoraCausalConv3d(nn.Module):
    """3D convolution that is causal in time: `kt - stride` zero frames in front, zero 'same' padding in space.

    The wrapped `nn.Conv3d` is `self.conv` (checkpoint keys end in `.conv.weight`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        temporal_stride: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.time_pad = kernel_size - temporal_stride
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            stride=(temporal_stride, 1, 1),
            padding=(0, kernel_size // 2, kernel_size // 2),
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad > 0:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
        return self.conv(x)


class OpenSoraResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut. No conv biases, GroupNorm eps 1e-5.

    GroupNorm statistics span the whole chunk (all frames), so the block is not causal although its convs are.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels, eps=1e-5)
        self.conv1 = OpenSoraCausalConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, out_channels, eps=1e-5)
        self.conv2 = OpenSoraCausalConv3d(out_channels, out_channels, 3, bias=False)
        self.conv_shortcut = (
            OpenSoraCausalConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x


def _depth_to_time(x: torch.Tensor) -> torch.Tensor:
    """(B, 2C, T, H, W) -> (B, C, 2T, H, W), channel 2c + s of frame t -> channel c of frame 2t + s."""
    batch, channels, frames, height, width = x.shape
    x = x.reshape(batch, channels // 2, 2, frames, height, width).transpose(2, 3)
    return x.reshape(batch, channels // 2, 2 * frames, height, width)


class OpenSoraTemporalDownBlock(nn.Module):
    """`num_layers` residual blocks, then (optionally) a causal 3x3x3 conv with temporal stride 2 (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, num_groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                OpenSoraResidualBlock(in_channels if i == 0 else out_channels, out_channels, num_groups)
                for i in range(num_layers)
            ]
        )
        self.downsampler = (
            OpenSoraCausalConv3d(out_channels, out_channels, 3, temporal_stride=2) if downsample else None
        )
        self.gradient_checkpointing = False

    def parts(self) -> list[nn.Module]:
        """The block's layers in order: its residual blocks, then its downsampler."""
        return [*self.resnets, *([] if self.downsampler is None else [self.downsampler])]

    def forward(self, x: torch.Tensor, parts: slice = slice(None)) -> torch.Tensor:
        """`parts` runs some of `parts()` only (exact tiles run them one at a time, through this `forward` so that
        hooks on the block apply)."""
        for layer in self.parts()[parts]:
            x = checkpointed(self, layer, x) if isinstance(layer, OpenSoraResidualBlock) else layer(x)
        return x


class OpenSoraTemporalUpBlock(nn.Module):
    """`num_layers` residual blocks, then (optionally) a causal conv to twice the channels and depth-to-time.

    Depth-to-time: channel `2c + s` of frame `t` becomes channel `c` of frame `2t + s`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, num_groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                OpenSoraResidualBlock(in_channels if i == 0 else out_channels, out_channels, num_groups)
                for i in range(num_layers)
            ]
        )
        self.upsampler = OpenSoraCausalConv3d(out_channels, 2 * out_channels, 3) if upsample else None
        self.gradient_checkpointing = False

    def parts(self) -> list[nn.Module]:
        """The block's layers in order: its residual blocks, then its upsampler (followed by depth-to-time)."""
        return [*self.resnets, *([] if self.upsampler is None else [self.upsampler])]

    def forward(self, x: torch.Tensor, parts: slice = slice(None)) -> torch.Tensor:
        """`parts` runs some of `parts()` only (exact tiles run them one at a time, through this `forward` so that
        hooks on the block apply)."""
        for layer in self.parts()[parts]:
            x = checkpointed(self, layer, x) if isinstance(layer, OpenSoraResidualBlock) else layer(x)
            x = _depth_to_time(x) if layer is self.upsampler else x
        return x


def _reach(layer: nn.Module) -> int:
    """How far, in input pixels, beyond its own an output pixel of a layer that exact tiles run as one step reads:
    a residual block two 3x3(x3) convolutions (shortcuts are 1x1), a convolution its padding; a spatial down block
    its resnets and a stride-2 downsampler (1, rounded up to 2 so that tiles stay aligned to its stride), an up
    block its resnets and a nearest 2x upsampler with its 3x3 convolution (1)."""
    if isinstance(layer, OpenSoraResidualBlock):
        return 2
    if isinstance(layer, DownEncoderBlock2D):
        return 2 * len(layer.resnets) + (2 if layer.downsamplers is not None else 0)
    if isinstance(layer, UpDecoderBlock2D):
        return 2 * len(layer.resnets) + (1 if layer.upsamplers is not None else 0)
    return (layer.conv if isinstance(layer, OpenSoraCausalConv3d) else layer).padding[-1]


def _layer_step(layer: nn.Module) -> TileStep:
    return TileStep(layer, _reach(layer), layer)


def _part_steps(block: nn.Module) -> list[TileStep]:
    """One exact-tile step per part of a temporal block, each through the block's `forward`."""
    return [
        TileStep(partial(block, parts=slice(index, index + 1)), _reach(layer), block)
        for index, layer in enumerate(block.parts())
    ]


class OpenSoraTemporalEncoder(nn.Module):
    """(B, Cio, T, h, w), T a multiple of the time factor -> (B, 2L, T / factor, h, w)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        num_groups: int,
    ):
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        self.conv_in = OpenSoraCausalConv3d(in_channels, filters, 3, bias=False)
        self.down_blocks = nn.ModuleList()
        previous = filters
        for level, width in enumerate(widths):
            downsample = level < len(widths) - 1 and temporal_downsample[level]
            self.down_blocks.append(OpenSoraTemporalDownBlock(previous, width, num_res_blocks, num_groups, downsample))
            previous = width
        self.mid_resnets = nn.ModuleList(
            [OpenSoraResidualBlock(widths[-1], widths[-1], num_groups) for _ in range(num_res_blocks)]
        )
        self.norm_out = nn.GroupNorm(num_groups, widths[-1], eps=1e-5)
        self.conv_out = OpenSoraCausalConv3d(widths[-1], out_channels, 1)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        for resnet in self.mid_resnets:
            x = checkpointed(self, resnet, x)
        return self.output_layers(x)

    def output_layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(x)))

    def tile_steps(self) -> list[TileStep]:
        """`forward` as steps that exact tiles run one at a time (see `_tiling.tiled_in_layer_order`)."""
        steps = [_layer_step(self.conv_in)]
        for block in self.down_blocks:
            steps += _part_steps(block)
        steps += [_layer_step(resnet) for resnet in self.mid_resnets]
        return steps + [TileStep(self.output_layers, _reach(self.conv_out), self.norm_out)]


class OpenSoraTemporalDecoder(nn.Module):
    """(B, L, t, h, w) -> (B, Cio, t * factor, h, w)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        num_groups: int,
    ):
        super().__init__()
        widths = [filters * m for m in channel_multipliers]
        self.conv_in = OpenSoraCausalConv3d(in_channels, widths[-1], 3)
        self.mid_resnets = nn.ModuleList(
            [OpenSoraResidualBlock(widths[-1], widths[-1], num_groups) for _ in range(num_res_blocks)]
        )
        # up_blocks[0] works at the coarsest level (widths[-1]); the upsampler of level i undoes downsampler i - 1.
        self.up_blocks = nn.ModuleList()
        previous = widths[-1]
        for level in reversed(range(len(widths))):
            upsample = level > 0 and temporal_downsample[level - 1]
            self.up_blocks.append(
                OpenSoraTemporalUpBlock(previous, widths[level], num_res_blocks, num_groups, upsample)
            )
            previous = widths[level]
        self.norm_out = nn.GroupNorm(num_groups, widths[0], eps=1e-5)
        self.conv_out = OpenSoraCausalConv3d(widths[0], out_channels, 3)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for resnet in self.mid_resnets:
            x = checkpointed(self, resnet, x)
        for block in self.up_blocks:
            x = block(x)
        return self.output_layers(x)

    def output_layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(x)))

    def tile_steps(self) -> list[TileStep]:
        """`forward` as steps that exact tiles run one at a time (see `_tiling.tiled_in_layer_order`)."""
        steps = [_layer_step(self.conv_in)] + [_layer_step(resnet) for resnet in self.mid_resnets]
        for block in self.up_blocks:
            steps += _part_steps(block)
        return steps + [TileStep(self.output_layers, _reach(self.conv_out), self.norm_out)]


class OpenSoraTemporalVAE(nn.Module):
    """The temporal stage on one chunk: front zero padding to a multiple of the time factor, encoder, quant conv."""

    def __init__(
        self,
        in_channels: int,
        latent_embed_dim: int,
        latent_channels: int,
        filters: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        temporal_downsample: tuple[bool, ...],
        num_groups: int,
    ):
        super().__init__()
        args = (filters, tuple(channel_multipliers), num_res_blocks, tuple(temporal_downsample), num_groups)
        self.time_factor = 2 ** sum(bool(flag) for flag in temporal_downsample)
        self.encoder = OpenSoraTemporalEncoder(in_channels, 2 * latent_embed_dim, *args)
        self.quant_conv = OpenSoraCausalConv3d(2 * latent_embed_dim, 2 * latent_channels, 1)
        self.post_quant_conv = OpenSoraCausalConv3d(latent_channels, latent_embed_dim, 1)
        self.decoder = OpenSoraTemporalDecoder(latent_embed_dim, in_channels, *args)

    def pad_time(self, x: torch.Tensor) -> torch.Tensor:
        """Zero frames in front, up to a multiple of the time factor."""
        pad = -x.shape[2] % self.time_factor
        return F.pad(x, (0, 0, 0, 0, pad, 0)) if pad else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cio, n, h, w) -> moments (B, 2E, ceil(n / factor), h, w); zero frames are prepended, not appended."""
        return self.quant_conv(self.encoder(self.pad_time(x)))

    def encode_steps(self) -> list[TileStep]:
        """`encode` as steps that exact tiles run one at a time."""
        return [TileStep(self.pad_time, 0, []), *self.encoder.tile_steps(), _layer_step(self.quant_conv)]

    def decode_steps(self) -> list[TileStep]:
        """`decode` without its last frame crop, as steps that exact tiles run one at a time."""
        return [_layer_step(self.post_quant_conv), *self.decoder.tile_steps()]

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, E, t, h, w) -> (B, Cio, num_frames, h, w): the first `factor * t - num_frames` frames are dropped."""
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, x.shape[2] - num_frames :]


class OpenSoraUpsampleConv2d(NearestUpsampleConvMixin, nn.Conv2d):
    """The 3x3 convolution of an `Upsample2D` layer, taking the LOW-resolution input: nearest x2 upsampling then
    this convolution, computed as four 2x2 convolutions on the low-resolution input (`NearestUpsampleConvMixin`:
    16 instead of 36 multiply-adds per output pixel group, equal up to float rounding, with or without autograd).
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x: (N, C, h, w)` -> `(N, C_out, 2h, 2w)`."""
        return self.upsample_then_convolve(x, (True, True), ((1, 1), (1, 1)))


class OpenSoraNearestUpsample2D(nn.Module):
    """Stands in for the `Upsample2D` layers of the spatial decoder (same `conv` keys): nearest x2, then a 3x3
    convolution, both done by `conv` (`OpenSoraUpsampleConv2d`) on the low-resolution input."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = OpenSoraUpsampleConv2d(channels, out_channels)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.conv(x)


class OpenSoraPosterior(DiagonalGaussianDistribution):
    """The temporal posterior. `sample(generator)` draws one noise tensor per temporal chunk, in chunk order.

    That is how the original draws its noise (`torch.randn(chunk_mean.shape)` per chunk), so a seeded generator
    reproduces its samples; with a single chunk it is the same as diffusers' `DiagonalGaussianDistribution`.
    """

    def __init__(self, parameters: torch.Tensor, chunk_sizes: list[int] | None = None):
        super().__init__(parameters)
        self.chunk_sizes = chunk_sizes or [parameters.shape[2]]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, channels, _, height, width = self.mean.shape
        noise = [
            randn_tensor(
                (batch, channels, size, height, width),
                generator=generator,
                device=self.parameters.device,
                dtype=self.parameters.dtype,
            )
            for size in self.chunk_sizes
        ]
        return self.mean + self.std * torch.cat(noise, dim=2)


class _FrameRows:
    """Rows `start .. start + count` of a temporal chunk's batch-major frames (row `r` is frame `first + r % n` of
    clip `r // n`) as one `(count, C, H, W)` target that decoded frames are written into: `target[key] = rows`
    writes into `video (B, C, T, H, W)` through views, also when the rows span two clips of the batch."""

    def __init__(self, video: torch.Tensor, first: int, n: int, start: int, count: int):
        self.views = []
        while count > 0:
            clip, frame = divmod(start, n)
            length = min(count, n - frame)
            self.views.append(video[clip, :, first + frame : first + frame + length].transpose(0, 1))
            start, count = start + length, count - length

    def __setitem__(self, key, rows: torch.Tensor) -> None:
        offset = 0
        for view in self.views:
            view[key] = rows[offset : offset + view.shape[0]]
            offset += view.shape[0]


class AutoencoderKLOpenSora(
    ModelMixin, AutoencoderMixin, ConfigMixin, FromOriginalCheckpointMixin, VideoAutoencoderMixin
):
    r"""The Open-Sora 1.2 video VAE (`VideoAutoencoderPipeline`): SDXL `AutoencoderKL` per frame + temporal VAE.

    `sample (B, 3, T, H, W)` in [-1, 1], any `T >= 1`, `H` and `W` multiples of 8 -> latents
    `(B, 4, T', H / 8, W / 8)` with `T' = 5 * (T // 17) + ceil((T % 17) / 4)` (chunked, `micro_frame_size=17`) or
    `ceil(T / 4)` (`micro_frame_size=None`).

    Latent normalisation (what pipelines apply to the raw latents `z` that `encode` returns and `decode` takes):
    `z_normalised = (z - latents_mean) / latents_std`, per channel (the release's `shift` / `scale`).

    `encode(x).latent_dist` is the temporal posterior. By default the spatial stage uses its posterior mean; the
    original samples in both stages, which `encode(x, sample_spatial=True, generator=g)` followed by
    `.latent_dist.sample(generator=g)` reproduces draw for draw (noise of the original's global RNG after
    `torch.manual_seed(s)` = noise of `torch.Generator().manual_seed(s)`), with tiling and slicing off.

    Decoding needs the clip's frame count: `T'` latent frames can come from several `T` (e.g. 7 latents from 22 to
    25 frames). `decode(z)` without `num_frames` assumes the smallest, `17k + 4j + 1` (exact for images, for
    `T = 17k`, and for `T = 17k + 4j + 1`); pass `num_frames=T` for other lengths. Inconsistent values are rejected.

    Spatial tiling bounds memory for large frames: `enable_tiling(exact=True)` gives the untiled result up to float
    rounding (the tiled stages run one block or layer at a time over all tiles, each tile reading the few pixels
    around its core that the step needs, with GroupNorm statistics shared over all tiles; attention runs on whole
    latent frames) at a few times the compute; the default blended tiles are fast but approximate. Time is never
    tiled. See `enable_tiling`.

    Args:
        in_channels / out_channels (`int`, defaults 3): image channels.
        spatial_latent_channels (`int`, default 4): channels of the spatial (per-frame) latents.
        block_out_channels (`tuple[int]`, default `(128, 256, 512, 512)`): widths of the spatial `AutoencoderKL`.
        down_block_types / up_block_types (`tuple[str]`): the spatial `AutoencoderKL` blocks (SDXL: 4 each).
        layers_per_block (`int`, default 2), norm_num_groups (`int`, default 32), act_fn (`str`, default "silu"),
        mid_block_add_attention (`bool`, default True): the rest of the spatial `AutoencoderKL` config.
        spatial_scaling_factor (`float`, default 0.18215): spatial latents are `0.18215 * posterior`, not 0.13025.
        force_upcast (`bool`, default True): float16 runs are upcast to float32 (diffusers pipelines and
            `videovae --dtype float16` read it): the spatial half is the SDXL VAE, whose own config sets it.
        spatial_micro_batch_size (`int`, default 4): frames per spatial micro-batch, as in the original: one
            noise draw each, and the spatial mid block (attention) runs on them together; the high-resolution
            layers run one frame at a time (frames are independent there), which bounds memory to one frame's.
        temporal_filters (`int`, default 128), temporal_channel_multipliers (`tuple[int]`, default `(1, 2, 2, 4)`),
        temporal_num_res_blocks (`int`, default 4), temporal_downsample (`tuple[bool]`, default
        `(False, True, True)`), temporal_num_groups (`int`, default 32): the temporal VAE.
        temporal_latent_embed_dim (`int`, default 4): encoder output / decoder input channels (L).
        latent_channels (`int`, default 4): channels of the temporal posterior (E).
        micro_frame_size (`int` or `None`, default 17): frames per independent temporal chunk; `None` = one chunk.
        latents_mean / latents_std (`tuple[float]`): per-channel normalisation, see above.
        spatial_compression_ratio / temporal_compression_ratio (`int`, optional): derived from the architecture
            (8 and 4 for the release) and stored in the config for pipelines; a contradicting value is an error.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["OpenSoraResidualBlock"]
    _skip_layerwise_casting_patterns = ["norm"]
    # Block-level group offloading: module lists become groups; these modules (called directly, not through their
    # parent's forward) get their own, so that every layer is onloaded by a module it runs in.
    _group_offload_block_modules = [
        "spatial_vae",
        "temporal_vae",
        "encoder",
        "decoder",
        "quant_conv",
        "post_quant_conv",
        "conv_in",
        "mid_block",
        "conv_norm_out",
        "norm_out",
        "conv_out",
    ]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        spatial_latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        down_block_types: tuple[str, ...] = SDXL_DOWN_BLOCKS,
        up_block_types: tuple[str, ...] = SDXL_UP_BLOCKS,
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        spatial_scaling_factor: float = 0.18215,
        spatial_micro_batch_size: int = 4,
        temporal_filters: int = 128,
        temporal_channel_multipliers: tuple[int, ...] = (1, 2, 2, 4),
        temporal_num_res_blocks: int = 4,
        temporal_downsample: tuple[bool, ...] = (False, True, True),
        temporal_num_groups: int = 32,
        temporal_latent_embed_dim: int = 4,
        latent_channels: int = 4,
        micro_frame_size: int | None = 17,
        latents_mean: tuple[float, ...] = (-0.10, 0.34, 0.27, 0.98),
        latents_std: tuple[float, ...] = (3.85, 2.32, 2.33, 3.06),
        force_upcast: bool = True,
        spatial_compression_ratio: int | None = None,
        temporal_compression_ratio: int | None = None,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if len(down_block_types) != levels or len(up_block_types) != levels:
            raise ValueError(
                f"block_out_channels has {levels} levels, but down_block_types has {len(down_block_types)} and "
                f"up_block_types {len(up_block_types)}: give one block type per level in each."
            )
        if len(temporal_downsample) != len(temporal_channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample has {len(temporal_downsample)} entries; it needs one per temporal level but "
                f"the last ({len(temporal_channel_multipliers) - 1}, from temporal_channel_multipliers)."
            )
        if len(latents_mean) != latent_channels or len(latents_std) != latent_channels:
            raise ValueError(
                f"latents_mean ({len(latents_mean)} values) and latents_std ({len(latents_std)}) need one value per "
                f"latent channel (latent_channels={latent_channels})."
            )
        if spatial_micro_batch_size < 1:
            raise ValueError(f"spatial_micro_batch_size must be >= 1, got {spatial_micro_batch_size}.")
        self.spatial_vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=spatial_latent_channels,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )
        for block in self.spatial_vae.decoder.up_blocks:
            if block.upsamplers is not None:
                conv = block.upsamplers[0].conv
                block.upsamplers[0] = OpenSoraNearestUpsample2D(conv.in_channels, conv.out_channels)
        self.temporal_vae = OpenSoraTemporalVAE(
            spatial_latent_channels,
            temporal_latent_embed_dim,
            latent_channels,
            temporal_filters,
            tuple(temporal_channel_multipliers),
            temporal_num_res_blocks,
            tuple(temporal_downsample),
            temporal_num_groups,
        )
        # Derived values, stored in the config so that pipelines and `input_rule` can read them.
        register_compression_ratios(
            self,
            temporal=self.temporal_vae.time_factor,
            spatial=2 ** (len(block_out_channels) - 1),
            temporal_compression_ratio=temporal_compression_ratio,
            spatial_compression_ratio=spatial_compression_ratio,
        )
        self.spatial_compression_ratio = self.config.spatial_compression_ratio
        self.temporal_compression_ratio = self.config.temporal_compression_ratio

        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_stride_height = 192
        self.tile_sample_stride_width = 192
        self.tile_exact = False
        self.tile_offload_device = "auto"  # where exact tiles keep their step boundaries (see `enable_tiling`)

    def tiling_limits(self) -> TilingLimits:
        """What `enable_tiling` accepts: 256-px tiles every 192 px, never cut in time."""
        return TilingLimits(
            "Open-Sora",
            self.spatial_compression_ratio,
            256,
            Fraction(3, 4),
            frames_note=" (its micro_frame_size chunks are part of the model's numbers)",
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
        r"""Encode and decode in spatial tiles, so that memory depends on the tile: blended tiles (default,
        approximate: each tile has its own GroupNorm statistics) or exact tiles (`exact=True`: equal to untiled up
        to float rounding, slower). The original has no tiling; the model card compares the modes.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels, a multiple of 8 (default 256).
            tile_sample_min_width (`int`, *optional*): tile width in pixels, a multiple of 8 (default 256).
            tile_sample_stride_height (`int`, *optional*): step between tiles in pixels, a multiple of 8 at most
                the height (default: 3/4 of it). Exact tiles do not overlap: unset or equal to the height.
            tile_sample_stride_width (`int`, *optional*): the same for the width.
            tile_sample_min_num_frames, tile_sample_stride_num_frames: unset (time is never tiled: the temporal
                chunks of `micro_frame_size` frames are the model's own).
            exact (`bool`, defaults to `False`): exact tiles instead of blended ones.

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
        """Halo that an exact tile reads beyond its core on every side, in its stage's input pixels.

        `{"encode": px, "decode": latent px, "temporal_encode": latent px, "temporal_decode": latent px}`: the
        receptive field of the tiled stages (spatial encoder up to its mid block, spatial decoder from its up
        blocks on, whole temporal encoder and decoder), a conservative upper bound rounded up to whole pixels of
        the stage's output (8 px for the encoder, whose cores must stay aligned to its 8x downsampling).
        """
        factor = self.spatial_compression_ratio
        encoder, decoder = self.spatial_vae.encoder, self.spatial_vae.decoder
        # Spatial encoder, in input pixels beyond an output pixel's own 8x8 area (`scale`: input px per feature
        # px). Release: conv_in 1 + [2 resnets x 2 convs x 1 + down 1] + [2 x 2 x 2 + 2] + [2 x 2 x 4 + 4]
        # + [2 x 2 x 8] = 68 -> 72 px.
        reach, scale = 1, 1  # conv_in, 3x3
        for block in encoder.down_blocks:
            reach += 2 * scale * len(block.resnets)  # two 3x3 convs per resnet (shortcuts are 1x1)
            if block.downsamplers is not None:
                reach += scale  # 3x3 stride 2 padded right/bottom: reads one feature past its own two
                scale *= 2
        encode = -(-reach // factor) * factor
        # Spatial decoder, in output pixels beyond a latent pixel's own 8x8 area (`scale`: output px per feature
        # px). Release: [3 resnets x 2 convs x 8 + up 4] + [3 x 2 x 4 + 2] + [3 x 2 x 2 + 1] + [3 x 2 x 1]
        # + conv_out 1 = 98 px -> 13 latent px.
        reach, scale = 0, factor
        for block in decoder.up_blocks:
            reach += 2 * scale * len(block.resnets)
            if block.upsamplers is not None:
                scale //= 2  # nearest x2 copies a pixel inside its own area; then a 3x3 conv
                reach += scale
        reach += scale  # conv_out, 3x3
        decode = -(-reach // factor)

        # Temporal VAE, at latent resolution: a chain of causal convs (shortcuts are 1x1x1), each reaching its
        # spatial padding. Release encoder: conv_in 1 + 16 level resnets x 2 + 2 time downsamplers
        # + 4 mid resnets x 2 = 43; decoder: conv_in 1 + 4 mid x 2 + 16 x 2 + 2 upsamplers + conv_out 1 = 44.
        def chain_reach(module: nn.Module) -> int:
            return sum(m.conv.padding[-1] for m in module.modules() if isinstance(m, OpenSoraCausalConv3d))

        return {
            "encode": encode,
            "decode": decode,
            "temporal_encode": chain_reach(self.temporal_vae.encoder),
            "temporal_decode": chain_reach(self.temporal_vae.decoder),
        }

    # -- frame bookkeeping ------------------------------------------------------------------------------------

    def _chunk_frames(self, num_frames: int) -> list[int]:
        """Frame counts of the independent temporal chunks of a `num_frames` clip."""
        size = self.config.micro_frame_size or num_frames
        return [min(size, num_frames - start) for start in range(0, num_frames, size)]

    @property
    def input_rule(self) -> InputRule:
        """Any frame count (chunks of `micro_frame_size`); `decode` needs `num_frames` unless T is recoverable."""
        return InputRule(
            self.temporal_compression_ratio,
            self.spatial_compression_ratio,
            frame_step=1,
            decode_needs_num_frames=True,
        )

    def num_latent_frames(self, num_frames: int) -> int:
        """`T'` for a clip of `num_frames` frames (5 per full chunk of 17, `ceil(n / 4)` for a last chunk of n)."""
        num_frames = check_positive_int(num_frames, "num_frames")
        factor = self.temporal_compression_ratio
        return sum(math.ceil(n / factor) for n in self._chunk_frames(num_frames))

    def num_frames_range(self, num_latent_frames: int) -> tuple[int, int]:
        """The smallest and largest clip lengths that encode to `num_latent_frames` latent frames."""
        factor, size = self.temporal_compression_ratio, self.config.micro_frame_size
        if size is None:
            return factor * (num_latent_frames - 1) + 1, factor * num_latent_frames
        per_chunk = math.ceil(size / factor)
        full, last = divmod(num_latent_frames - 1, per_chunk)
        last += 1
        return size * full + factor * (last - 1) + 1, size * full + min(factor * last, size)

    # -- encoding ---------------------------------------------------------------------------------------------

    def _spatial_moments(self, frames: Sequence[torch.Tensor], exact_tiles: bool = False) -> torch.Tensor:
        """N frames (1, 3, H, W) (views of the clip: no copy of the micro-batch is made) -> moments
        (N, 8, H/8, W/8) of the spatial `AutoencoderKL`.

        diffusers' `Encoder.forward` and `AutoencoderKL._encode` (0.42.1: same submodules, same order, no dtype
        casts), split after the down blocks: `conv_in` and the down blocks run one frame at a time (frames are
        independent; this bounds the activations to one frame's), in exact tiles with `exact_tiles`; the mid block
        (attention) and the output layers run on all N latent frames at once, as the original's micro-batch.
        """
        vae, encoder = self.spatial_vae, self.spatial_vae.encoder

        def high_resolution(h: torch.Tensor) -> torch.Tensor:
            h = encoder.conv_in(h)
            for block in encoder.down_blocks:
                h = checkpointed(encoder, block, h)
            return h

        def low_resolution(h: torch.Tensor) -> torch.Tensor:
            h = checkpointed(encoder, encoder.mid_block, h)
            h = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
            return vae.quant_conv(h) if vae.quant_conv is not None else h

        if exact_tiles:
            # Whole down blocks per step: block-level group offloading onloads a block in its own forward. Frames
            # are independent in every layer (GroupNorm and attention per frame), so the mid block runs one frame
            # at a time too: its attention then holds one frame's tokens.
            steps = [_layer_step(encoder.conv_in)] + [_layer_step(block) for block in encoder.down_blocks]
            core = (self.tile_sample_min_height, self.tile_sample_min_width)
            offload = self.tile_offload_device
            return torch.cat(
                [
                    low_resolution(tiled_in_layer_order(steps, frame, core, offload).to(frame.device))
                    for frame in frames
                ]
            )
        return low_resolution(torch.cat([high_resolution(frame) for frame in frames]))

    def _spatial_encode(
        self, x: torch.Tensor, sample_spatial: bool, generator: torch.Generator | None, exact_tiles: bool = False
    ) -> torch.Tensor:
        """(B, 3, T, H, W) -> spatial latents (B, 4, T, H/8, W/8), frames taken batch-major in micro-batches."""
        batch, _, num_frames, height, width = x.shape
        factor = self.spatial_compression_ratio
        out = x.new_empty(batch, self.config.spatial_latent_channels, num_frames, height // factor, width // factor)
        rows = batch * num_frames
        step = self.config.spatial_micro_batch_size
        for start in range(0, rows, step):
            index = range(start, min(start + step, rows))
            frames = [x[row // num_frames, :, row % num_frames].unsqueeze(0) for row in index]
            dist = DiagonalGaussianDistribution(self._spatial_moments(frames, exact_tiles))
            del frames
            latents = dist.sample(generator=generator) if sample_spatial else dist.mode()
            latents = latents * self.config.spatial_scaling_factor
            for offset, row in enumerate(index):
                out[row // num_frames, :, row % num_frames] = latents[offset]
        return out

    def _latent_tile_core(self) -> tuple[int, int]:
        """The core of an exact tile in latent pixels, (height, width)."""
        factor = self.spatial_compression_ratio
        return self.tile_sample_min_height // factor, self.tile_sample_min_width // factor

    def _temporal_encode(self, x_z: torch.Tensor, exact_tiles: bool = False) -> torch.Tensor:
        """One chunk of spatial latents (B, 4, n, h, w) -> temporal moments (B, 2E, ceil(n / 4), h, w)."""
        if not exact_tiles:
            return self.temporal_vae.encode(x_z)
        steps = self.temporal_vae.encode_steps()
        return tiled_in_layer_order(steps, x_z, self._latent_tile_core(), self.tile_offload_device).to(x_z.device)

    def _encode(
        self,
        x: torch.Tensor,
        sample_spatial: bool = False,
        generator: torch.Generator | None = None,
        exact_tiles: bool = False,
    ) -> torch.Tensor:
        """(B, 3, T, H, W) -> temporal moments (B, 2E, T', H/8, W/8), chunk by chunk."""
        x_z = self._spatial_encode(x, sample_spatial, generator, exact_tiles)
        moments, start = [], 0
        for n in self._chunk_frames(x_z.shape[2]):
            moments.append(self._temporal_encode(x_z[:, :, start : start + n], exact_tiles))
            start += n
        return torch.cat(moments, dim=2)

    def _encode_maybe_tiled(self, x: torch.Tensor, sample_spatial: bool, generator: torch.Generator | None):
        height, width = x.shape[-2:]
        if self.use_tiling and (height > self.tile_sample_min_height or width > self.tile_sample_min_width):
            return self.tiled_encode(x, sample_spatial, generator)
        return self._encode(x, sample_spatial, generator)

    @apply_forward_hook
    def encode(
        self,
        x: torch.Tensor,
        return_dict: bool = True,
        sample_spatial: bool = False,
        generator: torch.Generator | None = None,
    ) -> AutoencoderKLOutput | tuple[OpenSoraPosterior]:
        r"""Encode a video into the (raw, unnormalised) temporal posterior.

        Args:
            x (`torch.Tensor`): `(B, 3, T, H, W)` in [-1, 1]; any `T >= 1`; `H`, `W` multiples of 8.
            return_dict (`bool`): return an `AutoencoderKLOutput` (else a tuple).
            sample_spatial (`bool`, default False): sample the per-frame posteriors (the original's behaviour)
                instead of taking their means. Noise is drawn from `generator`, one `(frames, 4, h, w)` draw per
                spatial micro-batch over the batch-major frame axis.
            generator (`torch.Generator`, optional): the source of that noise.

        Returns:
            `latent_dist`: an `OpenSoraPosterior` over `(B, 4, T', H/8, W/8)`; `.mode()` is deterministic,
            `.sample(generator)` draws one noise tensor per temporal chunk (the original's order).
        """
        check_video(x, in_channels=self.config.in_channels, spatial_multiple=self.spatial_compression_ratio, name="x")
        x = self._to_compute_dtype(x)
        chunk_sizes = [math.ceil(n / self.temporal_compression_ratio) for n in self._chunk_frames(x.shape[2])]
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode_maybe_tiled(part, sample_spatial, generator) for part in x.split(1)])
        else:
            moments = self._encode_maybe_tiled(x, sample_spatial, generator)
        posterior = OpenSoraPosterior(moments, chunk_sizes)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # -- decoding ---------------------------------------------------------------------------------------------

    def _temporal_decode(self, z: torch.Tensor, num_frames: int, exact_tiles: bool = False) -> torch.Tensor:
        """One chunk of raw latents (B, E, t, h, w) -> spatial latents (B, 4, num_frames, h, w), times 0.18215."""
        if not exact_tiles:
            return self.temporal_vae.decode(z, num_frames)
        steps = self.temporal_vae.decode_steps()
        x = tiled_in_layer_order(steps, z, self._latent_tile_core(), self.tile_offload_device).to(z.device)
        return x[:, :, x.shape[2] - num_frames :]

    def _spatial_decode(self, latents: torch.Tensor, exact_tiles: bool = False) -> torch.Tensor:
        """Spatial latents (N, 4, h, w), unscaled -> frames (N, 3, 8h, 8w) by the spatial `AutoencoderKL`."""
        return torch.cat(list(self._spatial_decode_frames(latents, exact_tiles)))

    def _spatial_decode_frames(self, latents: torch.Tensor, exact_tiles: bool = False) -> Iterator[torch.Tensor]:
        """Spatial latents (N, 4, h, w), unscaled -> the N frames (1, 3, 8h, 8w), one at a time.

        diffusers' `AutoencoderKL._decode` and `Decoder.forward` (0.42.1: same submodules, same order, no dtype
        casts), split after the mid block: `post_quant_conv`, `conv_in` and the mid block (attention) run on all N
        latent frames at once; the up blocks and output layers one frame at a time (in exact tiles with
        `exact_tiles`), which bounds the activations to one frame's.
        """
        vae, decoder = self.spatial_vae, self.spatial_vae.decoder

        def low_resolution(h: torch.Tensor) -> torch.Tensor:
            h = vae.post_quant_conv(h) if vae.post_quant_conv is not None else h
            return checkpointed(decoder, decoder.mid_block, decoder.conv_in(h), None)

        def high_resolution(h: torch.Tensor) -> torch.Tensor:
            for block in decoder.up_blocks:
                h = checkpointed(decoder, block, h, None)
            return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))

        if exact_tiles:
            steps = [_layer_step(block) for block in decoder.up_blocks]  # whole blocks, as when encoding

            def output_layers(h: torch.Tensor) -> torch.Tensor:
                return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h)))

            steps.append(TileStep(output_layers, 1, decoder.conv_norm_out))
            core, offload = self._latent_tile_core(), self.tile_offload_device
            # One frame at a time from the mid block on (frames are independent there), as when encoding.
            for frame in latents.split(1):
                yield tiled_in_layer_order(steps, low_resolution(frame), core, offload)
            return
        for frame in low_resolution(latents).split(1):
            yield high_resolution(frame)

    def _spatial_latent_chunks(self, z: torch.Tensor, num_frames: int, exact_tiles: bool = False):
        """Raw latents (B, E, T', h, w) -> per temporal chunk, `(first frame, frames n, rows)`: the chunk's
        unscaled spatial latents as rows (B * n, 4, h, w), batch-major (the order of the spatial micro-batches)."""
        batch = z.shape[0]
        per_chunk = math.ceil(num_frames / self.temporal_compression_ratio)
        if self.config.micro_frame_size is not None:
            per_chunk = math.ceil(self.config.micro_frame_size / self.temporal_compression_ratio)
        frame = 0
        for index, n in enumerate(self._chunk_frames(num_frames)):
            x_z = self._temporal_decode(z[:, :, index * per_chunk : (index + 1) * per_chunk], n, exact_tiles)
            x_z = x_z / self.config.spatial_scaling_factor
            rows = x_z.transpose(1, 2).reshape(batch * n, *x_z.shape[1:2], *x_z.shape[-2:])
            del x_z  # `rows` is a copy
            yield frame, n, rows
            del rows
            frame += n

    def _decode(self, z: torch.Tensor, num_frames: int, exact_tiles: bool = False) -> torch.Tensor:
        """Raw latents (B, E, T', h, w) -> frames (B, 3, num_frames, 8h, 8w): per temporal chunk, then per frame
        micro-batch, each written into the output as it is decoded."""
        batch, _, _, height, width = z.shape
        factor = self.spatial_compression_ratio
        out = z.new_empty(batch, self.config.out_channels, num_frames, height * factor, width * factor)
        step = self.config.spatial_micro_batch_size
        for frame, n, rows in self._spatial_latent_chunks(z, num_frames, exact_tiles):
            for start in range(0, rows.shape[0], step):
                row = start
                for decoded in self._spatial_decode_frames(rows[start : start + step], exact_tiles):
                    _FrameRows(out, frame, n, row, 1)[...] = decoded
                    row += 1
                    del decoded  # before the next frame is decoded
            del rows
        return out

    def _decode_maybe_tiled(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        factor = self.spatial_compression_ratio
        height, width = z.shape[-2:]
        if self.use_tiling and (
            height * factor > self.tile_sample_min_height or width * factor > self.tile_sample_min_width
        ):
            return self.tiled_decode(z, num_frames)
        return self._decode(z, num_frames)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, num_frames: int | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Decode raw latents (undo the pipeline normalisation first: `z = z_normalised * latents_std + latents_mean`).

        Args:
            z (`torch.Tensor`): `(B, 4, T', h, w)` raw latents.
            num_frames (`int`, optional): the clip's frame count. `None` assumes the smallest count giving `T'`
                latents (`17k + 4j + 1`; exact for images and multiples of 17). Must be consistent with `T'`.
            return_dict (`bool`): return a `DecoderOutput` (else a tuple).

        Returns:
            `sample`: `(B, 3, num_frames, 8h, 8w)`, roughly in [-1, 1] (not clamped).
        """
        check_latents(z, latent_channels=self.config.latent_channels)
        z = self._to_compute_dtype(z)
        low, high = self.num_frames_range(z.shape[2])
        if num_frames is None:
            num_frames = low
        elif not low <= check_positive_int(num_frames, "num_frames") <= high:
            raise ValueError(
                f"num_frames={num_frames} does not fit {z.shape[2]} latent frames: clips of {low} to {high} frames "
                f"encode to {z.shape[2]} latent frames (micro_frame_size={self.config.micro_frame_size})."
            )
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode_maybe_tiled(part, num_frames) for part in z.split(1)])
        else:
            decoded = self._decode_maybe_tiled(z, num_frames)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    # -- tiling -----------------------------------------------------------------------------------------------

    def tiled_encode(
        self, x: torch.Tensor, sample_spatial: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) -> moments (B, 2E, T', H/8, W/8), both stages run on spatial tiles (see `enable_tiling`)."""
        if self.tile_exact:
            return self._encode(x, sample_spatial, generator, exact_tiles=True)
        factor = self.spatial_compression_ratio
        height, width = x.shape[-2] // factor, x.shape[-1] // factor
        tile_h, tile_w = self.tile_sample_min_height // factor, self.tile_sample_min_width // factor
        starts_h = tile_starts(height, tile_h, self.tile_sample_stride_height // factor)
        starts_w = tile_starts(width, tile_w, self.tile_sample_stride_width // factor)
        tiles = [
            [
                self._encode(
                    x[..., h * factor : (h + tile_h) * factor, w * factor : (w + tile_w) * factor],
                    sample_spatial,
                    generator,
                )
                for w in starts_w
            ]
            for h in starts_h
        ]
        return stitch_blended_tiles(tiles, starts_h, starts_w)

    def tiled_decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Raw latents (B, E, T', h, w) -> frames (B, 3, num_frames, 8h, 8w), decoded in spatial tiles.

        Blended tiles: per temporal chunk, the temporal VAE decodes every tile (latent-sized results); then, one
        frame micro-batch at a time, the spatial decoder decodes it on every tile and each decoded tile is blended
        into the output as it comes. The same numbers as decoding each tile whole and blending the clips, while
        memory holds the output, one tile's activations and the overlaps of one micro-batch's tiles.
        """
        if self.tile_exact:
            return self._decode(z, num_frames, exact_tiles=True)
        factor = self.spatial_compression_ratio
        batch, _, _, height, width = z.shape
        tile_h, tile_w = self.tile_sample_min_height // factor, self.tile_sample_min_width // factor
        starts_h = tile_starts(height, tile_h, self.tile_sample_stride_height // factor)
        starts_w = tile_starts(width, tile_w, self.tile_sample_stride_width // factor)
        size = (height * factor, width * factor)
        out = z.new_empty(batch, self.config.out_channels, num_frames, *size)
        step = self.config.spatial_micro_batch_size
        tiles = [
            self._spatial_latent_chunks(z[..., h : h + tile_h, w : w + tile_w], num_frames)
            for h in starts_h
            for w in starts_w
        ]
        for chunk in zip(*tiles):  # one temporal chunk of every tile
            frame, n = chunk[0][:2]
            rows = [latents for _, _, latents in chunk]
            del chunk
            for start in range(0, batch * n, step):
                target = _FrameRows(out, frame, n, start, min(step, batch * n - start))
                decoded = (self._spatial_decode(tile[start : start + step]) for tile in rows)
                stitch_tiles_as_they_come(decoded, starts_h, starts_w, size, scale=factor, out=target)
            del rows
        return out

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Reconstruct `sample (B, 3, T, H, W)`; `sample_posterior=True` samples both stages as the original does."""
        posterior = self.encode(sample, sample_spatial=sample_posterior, generator=generator).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_frames=sample.shape[2], return_dict=return_dict)
