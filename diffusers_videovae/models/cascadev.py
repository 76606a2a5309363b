# Copyright 2026 The diffusers-videovae contributors.
# Based on CascadeV by ByteDance (https://github.com/bytedance/CascadeV, openrail++ weights), which builds on
# PixArt-Sigma (https://github.com/PixArt-alpha/PixArt-sigma, AGPL-3.0 code) and StableCascade's EfficientNet
# encoder and previewer (Stability AI). Re-implemented from their description; no code copied.
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
"""CascadeV: a 1x32x32 video autoencoder whose decoder is a diffusion model.

    encode  video (B, 3, T, H, W) --EfficientNet-V2-S per frame--> latent (B, 16, T, H/32, W/32)   deterministic
    decode  latent --bilinear x4, * 0.13025--> condition; a PixArt-style DiT denoises 4-channel SVD-VAE latents
            at H/8 x W/8 through a diffusers scheduler (EulerA, 8 steps) --> diffusers' SVD temporal decoder

The decode is stochastic: `generator` (or explicit `latents` / `step_noises`) decides the output.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import AutoencoderKLTemporalDecoder
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_outputs import AutoencoderKLOutput, Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from ..loaders import FromOriginalCheckpointMixin
from ._common import InputRule, VideoAutoencoderMixin, block_offload_names
from ._layers import checkpointed
from ._tiling import (
    TileStep,
    TilingLimits,
    check_condition,
    check_latents,
    check_positive_int,
    check_video,
    configure_tiling,
    stitch_tiles_as_they_come,
    tile_starts,
    tiled_in_layer_order,
    tiled_with_shared_group_norm,
)

# The released DiT's grid attention: `[temporal_splits, spatial_splits]` per block (None = full 3-D attention),
# indexed `block % len(...)`.
RELEASE_ATTN_STRIDES: tuple = (
    *([(1, 4), (4, 1)] * 4),
    *([None] * 4),
    *([(1, 4), (4, 1)] * 4),
    *([None] * 8),
)
# EfficientNet-V2-S stages after the stem: (block type, expand ratio, kernel, first stride, in, out, layers).
EFFNET_V2_S_STAGES = (
    ("fused", 1, 3, 1, 24, 24, 2),
    ("fused", 4, 3, 2, 24, 48, 4),
    ("fused", 4, 3, 2, 48, 64, 4),
    ("mb", 4, 3, 2, 64, 128, 6),
    ("mb", 6, 3, 1, 128, 160, 9),
    ("mb", 6, 3, 2, 160, 256, 15),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULERS = {
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
}


# -- EfficientNet-V2-S encoder and previewer (StableCascade), torchvision's key layout -------------------------------


class CascadeVFrozenBatchNorm2d(nn.Module):
    """BatchNorm that always uses its running statistics (the encoder and previewer are never trained here).

    Holds `running_mean` / `running_var` (and `weight` / `bias` when `affine`) but no `num_batches_tracked`.
    """

    def __init__(self, num_features: int, eps: float, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class CascadeVConvNormAct(nn.Sequential):
    """`0` conv (no bias, 'same' padding) -> `1` BatchNorm (eps 1e-3) [-> `2` SiLU], torchvision's Conv2dNormActivation."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act=True
    ):
        layers = [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            CascadeVFrozenBatchNorm2d(out_channels, eps=1e-3),
        ]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class CascadeVSqueezeExcitation(nn.Module):
    """Global average pool -> `fc1` (1x1, bias) -> SiLU -> `fc2` (1x1, bias) -> sigmoid, times the input."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(scale)


class CascadeVMBConv(nn.Module):
    """EfficientNet-V2 (Fused-)MBConv layer; the residual is added when the stride is 1 and the width unchanged."""

    def __init__(self, kind: str, expand: int, kernel: int, stride: int, in_channels: int, out_channels: int):
        super().__init__()
        hidden = in_channels * expand
        if kind == "fused" and expand == 1:
            layers = [CascadeVConvNormAct(in_channels, out_channels, kernel, stride)]
        elif kind == "fused":
            layers = [
                CascadeVConvNormAct(in_channels, hidden, kernel, stride),
                CascadeVConvNormAct(hidden, out_channels, 1, act=False),
            ]
        else:
            layers = [
                CascadeVConvNormAct(in_channels, hidden, 1),
                CascadeVConvNormAct(hidden, hidden, kernel, stride, groups=hidden),
                # The squeeze width follows the layer's input width, not the expanded one.
                CascadeVSqueezeExcitation(hidden, max(1, in_channels // 4)),
                CascadeVConvNormAct(hidden, out_channels, 1, act=False),
            ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class CascadeVEfficientNetEncoder(nn.Module):
    """StableCascade's `EfficientNetEncoder`: EfficientNet-V2-S features (`backbone`) + 1x1 conv to 16 channels and a
    non-affine BatchNorm (`mapper`). Frames `(N, 3, H, W)`, ImageNet-normalised -> `(N, 16, ceil(H/32), ceil(W/32))`.

    For tiles, `forward` is split in two: `forward_local` (the stem and the three Fused-MBConv stages, stride 8:
    convolutions and per-channel BatchNorms only, so an output pixel reads at most `local_halo` input pixels beyond
    its own 8) and `forward_global` (from the first squeeze-excitation on, whose average pool spans the frame).
    """

    local_stages = 4
    local_stride = 8
    # Reach of the local stages in input pixels: 1 (stem) + 2 x 2 (stage 1) + 2 + 3 x 4 (stage 2) + 4 + 3 x 8
    # (stage 3) = 47, rounded up to their stride so that tiles stay on the stride-8 grid.
    local_halo = 48

    def __init__(self, latent_channels: int = 16):
        super().__init__()
        stages: list[nn.Module] = [CascadeVConvNormAct(3, 24, 3, stride=2)]
        for kind, expand, kernel, stride, in_channels, out_channels, layers in EFFNET_V2_S_STAGES:
            stages.append(
                nn.Sequential(
                    *[
                        CascadeVMBConv(
                            kind,
                            expand,
                            kernel,
                            stride if i == 0 else 1,
                            in_channels if i == 0 else out_channels,
                            out_channels,
                        )
                        for i in range(layers)
                    ]
                )
            )
        stages.append(CascadeVConvNormAct(256, 1280, 1))
        self.backbone = nn.Sequential(*stages)
        self.mapper = nn.Sequential(
            nn.Conv2d(1280, latent_channels, 1, bias=False),
            CascadeVFrozenBatchNorm2d(latent_channels, eps=1e-5, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapper(self.backbone(x))

    def forward_local(self, x: torch.Tensor) -> torch.Tensor:
        """Frames `(N, 3, H, W)`, ImageNet-normalised -> features `(N, 64, ceil(H/8), ceil(W/8))`."""
        for stage in self.backbone[: self.local_stages]:
            x = stage(x)
        return x

    def forward_global(self, h: torch.Tensor) -> torch.Tensor:
        """`forward_local`'s features of whole frames -> the latent `(N, 16, ceil(H/32), ceil(W/32))`."""
        for stage in self.backbone[self.local_stages :]:
            h = stage(h)
        return self.mapper(h)


class CascadeVPreviewer(nn.Module):
    """StableCascade's `Previewer`: 16-channel latent `(N, 16, h, w)` -> RGB `(N, 3, 8h, 8w)` in about [0, 1]."""

    def __init__(self, latent_channels: int = 16, hidden_channels: int = 512, out_channels: int = 3):
        super().__init__()
        c = hidden_channels
        plan = [
            nn.Conv2d(latent_channels, c, 1),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ConvTranspose2d(c, c // 2, 2, stride=2),
            nn.Conv2d(c // 2, c // 2, 3, padding=1),
            nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
            nn.Conv2d(c // 4, c // 4, 3, padding=1),
            nn.ConvTranspose2d(c // 4, c // 4, 2, stride=2),
            nn.Conv2d(c // 4, c // 4, 3, padding=1),
        ]
        layers: list[nn.Module] = []
        for conv in plan:
            layers += [conv, nn.GELU(), CascadeVFrozenBatchNorm2d(conv.out_channels, eps=1e-5)]
        layers.append(nn.Conv2d(c // 4, out_channels, 1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


# -- the refinement DiT (CascadeV's patched PixArt) --------------------------------------------------------------


def _split_windows(x: torch.Tensor, grid: tuple[int, int, int], strides: tuple[int, int]) -> torch.Tensor:
    """(G, L*gh*gw, D) -> (G*ts*xs*xs, L/ts * gh/xs * gw/xs, D): contiguous chunks of frames x spatial windows."""
    frames, gh, gw = grid
    ts, xs = strides
    g, _, d = x.shape
    x = x.reshape(g, ts, frames // ts, xs, gh // xs, xs, gw // xs, d)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(g * ts * xs * xs, -1, d)


def _merge_windows(x: torch.Tensor, grid: tuple[int, int, int], strides: tuple[int, int]) -> torch.Tensor:
    """The inverse of `_split_windows`."""
    frames, gh, gw = grid
    ts, xs = strides
    d = x.shape[-1]
    x = x.reshape(-1, ts, xs, xs, frames // ts, gh // xs, gw // xs, d)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(-1, frames * gh * gw, d)


class CascadeVAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection (split q | k | v, head-major) and SDPA."""

    def __init__(self, dim: int, num_heads: int, upcast: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.upcast = upcast
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dtype = q.dtype
        if self.upcast:  # the release runs attention in fp32 inside its fp16 DiT
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(dtype)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class CascadeVFeedForward(nn.Module):
    """`fc1` -> GELU (tanh approximation) -> `fc2`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CascadeVTransformerBlock(nn.Module):
    """PixArt block with adaLN-single modulation, run on independent sub-sequences when `attn_strides` is set.

    `attn_strides = (ts, xs)` splits each group of L frames into `ts` runs of consecutive frames and each frame into
    `xs x xs` contiguous windows; `None` attends over the whole group (full 3-D attention).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attn_strides, upcast_attention: bool = True):
        super().__init__()
        self.attn_strides = tuple(attn_strides) if attn_strides is not None else None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = CascadeVAttention(dim, num_heads, upcast_attention)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = CascadeVFeedForward(dim, int(dim * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t3d: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x: (G, L*gh*gw, D) tokens of G groups; t3d: (G, 6D) modulation; grid: (L, gh, gw)."""
        groups, _, dim = x.shape
        modulation = self.scale_shift_table[None] + t3d.reshape(groups, 6, dim)
        if self.attn_strides is not None:
            x = _split_windows(x, grid, self.attn_strides)
            ts, xs = self.attn_strides
            modulation = modulation.repeat_interleave(ts * xs * xs, dim=0)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        x = x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
        if self.attn_strides is not None:
            x = _merge_windows(x, grid, self.attn_strides)
        return x


class CascadeVFinalLayer(nn.Module):
    """LayerNorm modulated by the per-frame timestep embedding (no SiLU, no t_block), then `linear` to patches."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)
        return self.linear(self.norm(x) * (1 + scale) + shift)


class CascadeVPatchEmbed(nn.Module):
    """`proj`: p x p conv with stride p, then flatten to tokens (row-major): (N, C, H, W) -> (N, H/p * W/p, D)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class CascadeVTransformer3DModel(ModelMixin, ConfigMixin):
    r"""CascadeV's refinement DiT (PixArt-Sigma patched for video): predicts the noise of SVD-VAE latents.

    `forward(hidden_states (N, in_channels, H, W), timestep (N,))` with N a multiple of `num_frames` (consecutive
    runs of `num_frames` frames form one group that attends jointly) -> `(N, out_channels, H, W)` (channels 0..3:
    the noise prediction, 4..7: the learned variance interpolation, unused at inference). The input channels are
    `[noisy latent (4) | condition (16)]`. `forward_windows` is what inference runs: windows of `num_frames`
    frames (stride `num_frames // 2`, linear cross-fades) and `sample_size` x `sample_size` spatial windows.

    Args:
        in_channels (`int`, default 20), out_channels (`int`, default 8): 4 latent + 16 condition channels in;
            4 noise + 4 variance channels out.
        hidden_size (`int`, default 1152), num_layers (`int`, default 28), num_attention_heads (`int`, default 16),
        patch_size (`int`, default 2), mlp_ratio (`float`, default 4.0): the PixArt-XL/2 transformer.
        sample_size (`int`, default 128): the training window in latent pixels (1024 px video).
        num_frames (`int`, default 8): frames per group (the release's `lats_per_vid`).
        pe_interpolation (`float`, default 2.0): spatial positions are divided by it in the sin-cos embedding.
        attn_strides (`list`): per block (indexed `i % len`), `[temporal_splits, spatial_splits]` or None.
        upcast_attention (`bool`, default True): compute attention in fp32 (the release's `fp32_attention`).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CascadeVTransformerBlock"]
    _skip_layerwise_casting_patterns = ["x_embedder", "t_embedder", "norm", "scale_shift_table"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 20,
        out_channels: int = 8,
        hidden_size: int = 1152,
        num_layers: int = 28,
        num_attention_heads: int = 16,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
        sample_size: int = 128,
        num_frames: int = 8,
        pe_interpolation: float = 2.0,
        attn_strides: tuple | list = RELEASE_ATTN_STRIDES,
        upcast_attention: bool = True,
    ):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}."
            )
        if (hidden_size // 3) % 2 or (hidden_size - hidden_size // 3) % 4:
            raise ValueError(
                f"hidden_size {hidden_size} cannot be split into the temporal and spatial sin-cos tables."
            )
        if num_frames < 2 or num_frames % 2:
            raise ValueError(f"num_frames must be even and >= 2 (windows move by num_frames // 2), got {num_frames}.")
        strides = [tuple(s) if s is not None else None for s in attn_strides] or [None]
        grid = sample_size // patch_size
        for s in strides:
            if s is not None and (num_frames % s[0] or grid % s[1]):
                raise ValueError(f"attn_strides {list(s)} do not divide {num_frames} frames x {grid}x{grid} tokens.")
        self.gradient_checkpointing = False
        self.x_embedder = CascadeVPatchEmbed(in_channels, hidden_size, patch_size)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embedder = TimestepEmbedding(256, hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.blocks = nn.ModuleList(
            [
                CascadeVTransformerBlock(
                    hidden_size, num_attention_heads, mlp_ratio, strides[i % len(strides)], upcast_attention
                )
                for i in range(num_layers)
            ]
        )
        self.final_layer = CascadeVFinalLayer(hidden_size, patch_size, out_channels)

    def pos_embed(self, grid: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
        """(1, L*gh*gw, D): `[temporal (D//3) | spatial (rest)]` sin-cos tables, tokens frame-major then row-major.

        Temporal: 1-D sin-cos of the frame index. Spatial: 1-D sin-cos of the column, then of the row, at positions
        `index / pe_interpolation`. Computed in float64 as the original, then cast.
        """
        frames, gh, gw = grid
        dim = self.config.hidden_size
        temporal_dim = dim // 3
        half = (dim - temporal_dim) // 2
        scale = self.config.pe_interpolation

        def table(size: int, width: int, divisor: float = 1.0) -> torch.Tensor:
            positions = torch.arange(size, device=device, dtype=torch.float32) / divisor
            return get_1d_sincos_pos_embed_from_grid(width, positions.double(), output_type="pt", dtype=torch.float64)

        temporal = table(frames, temporal_dim)[:, None, None].expand(frames, gh, gw, temporal_dim)
        cols = table(gw, half, scale)[None, None].expand(frames, gh, gw, half)
        rows = table(gh, half, scale)[None, :, None].expand(frames, gh, gw, half)
        return torch.cat([temporal, cols, rows], dim=-1).reshape(1, frames * gh * gw, dim).to(dtype)

    def _embed_timesteps(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.t_embedder(self.time_proj(timestep).to(dtype))

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor | float, return_dict: bool = True
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        r"""One denoising prediction.

        Args:
            hidden_states (`torch.Tensor`): `(N, in_channels, H, W)`, N a multiple of `num_frames`, H and W multiples
                of `patch_size` (the release only saw `sample_size` x `sample_size`: see `forward_windows`).
            timestep (`torch.Tensor` or `float`): `(N,)` scheduler timesteps in [0, num_train_timesteps), one per
                frame (a scalar applies to all). Blocks use each group's first-frame timestep, the final layer
                each frame's own.
        """
        frames, patch = self.config.num_frames, self.config.patch_size
        n, channels, height, width = hidden_states.shape
        if not torch.compiler.is_compiling():
            if channels != self.config.in_channels or n % frames or height % patch or width % patch:
                raise ValueError(
                    f"hidden_states must be (N, {self.config.in_channels}, H, W) with N a multiple of {frames} and H, W "
                    f"multiples of {patch}; got {tuple(hidden_states.shape)}."
                )
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        timestep = timestep.reshape(-1).expand(n) if timestep.numel() == 1 else timestep.reshape(n)
        gh, gw = height // patch, width // patch
        dim = self.config.hidden_size

        x = self.x_embedder(hidden_states)
        dtype = x.dtype
        t_emb = self._embed_timesteps(timestep, dtype)
        x = x.reshape(n // frames, frames * gh * gw, dim) + self.pos_embed((frames, gh, gw), x.device, dtype)
        t3d = self.t_block(self._embed_timesteps(timestep.reshape(-1, frames)[:, 0], dtype))
        grid = (frames, gh, gw)
        for block in self.blocks:
            x = checkpointed(self, block, x, t3d, grid)
        x = self.final_layer(x.reshape(n, gh * gw, dim), t_emb)
        out_channels = self.config.out_channels
        x = x.reshape(n, gh, gw, patch, patch, out_channels).permute(0, 5, 1, 3, 2, 4)
        out = x.reshape(n, out_channels, gh * patch, gw * patch)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    def window_starts(self, size: int) -> list[int]:
        """Spatial window offsets: every `round(0.75 * sample_size)`, the last one moved back to end at `size`."""
        window = self.config.sample_size
        if size < window:
            raise ValueError(f"size {size} is smaller than the DiT window {window}; pad first.")
        return tile_starts(size, window, round(0.75 * window))

    def frame_window_starts(self, num_frames: int) -> list[int]:
        """Temporal window starts: every `num_frames // 2` frames, the last one moved back to end at `num_frames`."""
        return tile_starts(num_frames, self.config.num_frames, self.config.num_frames // 2)

    def forward_windows(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The noise prediction of a whole clip `(T, in_channels, H, W)`, T >= num_frames, H, W >= sample_size.

        Temporal windows of `num_frames` frames every `num_frames // 2` are cross-faded linearly over their overlap
        (end points included: the first overlapped frame keeps the earlier window's value); spatial windows of
        `sample_size` (every `0.75 * sample_size`) overwrite each other (later windows win), as the original.
        Returns `(T, out_channels // 2, H, W)`: the noise half.
        """
        total, _, height, width = hidden_states.shape
        frames, window = self.config.num_frames, self.config.sample_size
        if total < frames or height < window or width < window:
            raise ValueError(
                f"forward_windows needs at least {frames} frames of {window}x{window}; got {tuple(hidden_states.shape)}."
            )
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(total)
        eps_channels = self.config.out_channels // 2
        out = hidden_states.new_zeros(total, eps_channels, height, width)
        rows, cols = self.window_starts(height), self.window_starts(width)
        last_end = 0
        for start in self.frame_window_starts(total):
            end = start + frames
            piece = hidden_states.new_zeros(frames, eps_channels, height, width)
            for r in rows:
                for c in cols:
                    x = hidden_states[start:end, :, r : r + window, c : c + window]
                    prediction = self(x, timestep[start:end]).sample[:, :eps_channels]
                    piece[:, :, r : r + window, c : c + window] = prediction.to(piece.dtype)
            overlap = last_end - start
            if overlap < 2:
                out[start:end] = piece
            else:
                # A ramp 0..1 over the shared frames, made on the output's device (no host tensor per window).
                weights = torch.ones(frames, device=out.device, dtype=torch.float32)
                weights[:overlap] = torch.arange(overlap, device=out.device, dtype=torch.float32) / (overlap - 1)
                weights = weights.to(out.dtype).reshape(-1, 1, 1, 1)
                out[start:end] = out[start:end] * (1.0 - weights) + piece * weights
            last_end = end
        return out


# -- the autoencoder --------------------------------------------------------------------------------------------


def _svd_temporal_half(resnet: nn.Module, indicator: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """What an SVD `SpatioTemporalResBlock` does after its spatial resnet: `h` `(n, C, H, W)` (the spatial
    resnet's output, n frames of one clip) through the temporal resnet and mixed with it (`time_mixer`)."""
    frames, (count, channels, height, width) = indicator.shape[-1], h.shape
    clip = h.reshape(count // frames, frames, channels, height, width).permute(0, 2, 1, 3, 4)
    mixed = resnet.time_mixer(
        x_spatial=clip, x_temporal=resnet.temporal_res_block(clip, None), image_only_indicator=indicator
    )
    return mixed.permute(0, 2, 1, 3, 4).reshape(count, channels, height, width)


class AutoencoderCascadeV(
    ModelMixin, AutoencoderMixin, ConfigMixin, FromOriginalCheckpointMixin, VideoAutoencoderMixin
):
    r"""CascadeV (ByteDance): EfficientNet encoder, a diffusion DiT refiner and the SVD temporal decoder.

    `encode(video (B, 3, T, H, W) in [-1, 1])` -> a zero-variance distribution whose mean is the effnet latent
    `(B, 16, T, ceil(H/32), ceil(W/32))` (frames are independent; any T, any H, W).
    `decode(z, num_inference_steps=8, generator=None, latents=None, step_noises=None)` -> `(B, 3, T, 32h, 32w)`:
    `refine` (diffusion over SVD latents conditioned on `z`), then diffusers' `AutoencoderKLTemporalDecoder` on
    independent chunks of `decode_chunk_size` frames (5 when T == 25, as the original). The output depends on the
    noise: pass a `generator` (or `latents` and `step_noises`) to reproduce it.

    What the release accepts and what this class lifts: the original needs T >= 8, T a multiple of 4 (or 25) and
    videos of at least 1024x1024. Here shorter clips are padded with copies of their last frame up to
    `transformer_num_frames` for the DiT, the last SVD chunk is padded the same way, and latents smaller than the
    DiT window are padded (edge replication) to it; the padding is cropped away afterwards. Results of padded
    inputs leave the training distribution (they are usable but not what the model was trained on).

    Latent normalisation: the effnet latents are standardised by the encoder's final BatchNorm; pipelines use them
    as they are (`scaling_factor` 1.0). The DiT internally scales the upsampled condition and the SVD latents by
    `refiner_scale_factor` (0.13025, SDXL's value); the SVD VAE's own 0.18215 is never used.

    Args:
        in_channels (`int`, default 3), latent_channels (`int`, default 16): RGB in, effnet latent channels.
        with_previewer (`bool`, default True): hold StableCascade's previewer (`preview(z)`).
        previewer_hidden_channels (`int`, default 512).
        transformer_* : the `CascadeVTransformer3DModel` config (`hidden_size`, `num_layers`,
            `num_attention_heads`, `patch_size`, `mlp_ratio`, `sample_size`, `num_frames`, `pe_interpolation`,
            `attn_strides`, `upcast_attention`).
        svd_block_out_channels (`tuple[int]`, default `(128, 256, 512, 512)`), svd_layers_per_block (`int`, default
            2), svd_latent_channels (`int`, default 4), svd_scaling_factor (`float`, 0.18215, unused),
            svd_force_upcast (`bool`): the `AutoencoderKLTemporalDecoder` config (kept for pipelines that read it;
            `decode_svd_latents` runs the decoder in the model's dtype, as the original runs it in fp16).
        sr_scale (`int`, default 4): condition upsampling (effnet grid -> SVD latent grid).
        refiner_scale_factor (`float`, default 0.13025): scale of the condition and of the diffusion variable.
        scheduler_type (`str`, default "euler_ancestral"): "euler_ancestral" (the release), "ddim" or
            "dpmsolver++" (diffusers' DPM-Solver++ 2nd order multistep).
        scheduler_config (`dict`, optional): extra arguments of the scheduler (the release: diffusers' defaults,
            1000 steps, linear betas 1e-4..0.02, epsilon prediction).
        num_inference_steps (`int`, default 8): the release's default step count.
        decode_chunk_size (`int`, default 4): frames per independent SVD decoder chunk (5 when T == 25).
        scaling_factor (`float`, default 1.0): pipelines' normalisation of the effnet latent (none).
        force_upcast (`bool`, default False): whether float16 runs should be upcast to float32, as diffusers
            pipelines read it; False because the original runs the DiT and the SVD decoder in float16.
        spatial_compression_ratio / temporal_compression_ratio: 32 and 1, stored for pipelines.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CascadeVTransformerBlock", "CascadeVMBConv"]
    # The effnet encoder (20 M parameters) stays in its dtype: the latent is what the whole decode is conditioned on.
    _skip_layerwise_casting_patterns = [r"^encoder\.", "norm", "x_embedder", "t_embedder", "scale_shift_table"]

    @property
    def _group_offload_block_modules(self) -> list[str]:
        """Block-level group offloading: the DiT's blocks and the encoder's stages stay groups; the SVD decoder,
        which `svd_vae.decode` calls directly and exact tiles run layer by layer, is offloaded layer by layer."""
        return block_offload_names(self, ["encoder", "previewer", "transformer"], ["svd_vae.decoder"])

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        with_previewer: bool = True,
        previewer_hidden_channels: int = 512,
        transformer_hidden_size: int = 1152,
        transformer_num_layers: int = 28,
        transformer_num_attention_heads: int = 16,
        transformer_patch_size: int = 2,
        transformer_mlp_ratio: float = 4.0,
        transformer_sample_size: int = 128,
        transformer_num_frames: int = 8,
        transformer_pe_interpolation: float = 2.0,
        transformer_attn_strides: tuple | list = RELEASE_ATTN_STRIDES,
        transformer_upcast_attention: bool = True,
        svd_block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        svd_layers_per_block: int = 2,
        svd_latent_channels: int = 4,
        svd_scaling_factor: float = 0.18215,
        svd_force_upcast: bool = True,
        sr_scale: int = 4,
        refiner_scale_factor: float = 0.13025,
        scheduler_type: str = "euler_ancestral",
        scheduler_config: dict | None = None,
        num_inference_steps: int = 8,
        decode_chunk_size: int = 4,
        scaling_factor: float = 1.0,
        force_upcast: bool = False,
        spatial_compression_ratio: int = 32,
        temporal_compression_ratio: int = 1,
    ):
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"CascadeV's EfficientNet encoder takes RGB (in_channels=3), got {in_channels}.")
        if scheduler_type not in SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {sorted(SCHEDULERS)}, got {scheduler_type!r}.")
        svd_factor = 2 ** (len(svd_block_out_channels) - 1)
        if spatial_compression_ratio != 8 * sr_scale or svd_factor * sr_scale != spatial_compression_ratio:
            raise ValueError(
                f"spatial_compression_ratio={spatial_compression_ratio} contradicts sr_scale={sr_scale} and the SVD "
                f"decoder's x{svd_factor} (their product must be 32, the effnet's stride)."
            )
        if temporal_compression_ratio != 1:
            raise ValueError("CascadeV encodes every frame: temporal_compression_ratio must be 1.")
        self.encoder = CascadeVEfficientNetEncoder(latent_channels)
        self.previewer = CascadeVPreviewer(latent_channels, previewer_hidden_channels) if with_previewer else None
        self.transformer = CascadeVTransformer3DModel(
            in_channels=svd_latent_channels + latent_channels,
            out_channels=2 * svd_latent_channels,
            hidden_size=transformer_hidden_size,
            num_layers=transformer_num_layers,
            num_attention_heads=transformer_num_attention_heads,
            patch_size=transformer_patch_size,
            mlp_ratio=transformer_mlp_ratio,
            sample_size=transformer_sample_size,
            num_frames=transformer_num_frames,
            pe_interpolation=transformer_pe_interpolation,
            attn_strides=transformer_attn_strides,
            upcast_attention=transformer_upcast_attention,
        )
        self.svd_vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(svd_block_out_channels),
            block_out_channels=tuple(svd_block_out_channels),
            layers_per_block=svd_layers_per_block,
            latent_channels=svd_latent_channels,
            scaling_factor=svd_scaling_factor,
            force_upcast=svd_force_upcast,
        )
        self.spatial_compression_ratio = spatial_compression_ratio
        self.temporal_compression_ratio = 1
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_stride_height = 192
        self.tile_sample_stride_width = 192
        self.tile_exact = False
        self.tile_offload_device = "auto"  # where exact tiles keep their step boundaries (see `enable_tiling`)
        self._progress_bar_config: dict[str, Any] = {}

    # -- configuration ----------------------------------------------------------------------------------------

    def tiling_limits(self) -> TilingLimits:
        """What `enable_tiling` accepts: tiles of 256 px (the SVD decoder's every 192 px), never cut in time."""
        factor = 2 ** (len(self.config.svd_block_out_channels) - 1)
        return TilingLimits(
            "CascadeV", factor, 256, Fraction(3, 4), frames_note=" (the SVD decoder's chunks are the model's own)"
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
        r"""Run the encoder and the SVD decoder in spatial tiles, so that their memory depends on the tile. The SVD
        decoder's tiles are blended (default, close to untiled) or exact (`exact=True`: equal to untiled up to float
        rounding, slower); the encoder's are exact in both modes (halo tiles of its high-resolution stages, the
        rest on whole frames at 1/8). The DiT runs on its own windows; the model card compares the modes.

        Args:
            tile_sample_min_height (`int`, *optional*): tile height in pixels, a multiple of 8 (default 256).
            tile_sample_min_width (`int`, *optional*): tile width in pixels, a multiple of 8 (default 256).
            tile_sample_stride_height (`int`, *optional*): step between the SVD decoder's blended tiles, a multiple
                of 8 at most the height (default: 3/4 of it). Exact tiles do not overlap: unset or equal to the height.
            tile_sample_stride_width (`int`, *optional*): the same for the width.
            tile_sample_min_num_frames, tile_sample_stride_num_frames: unset (time is not tiled).
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

    def progress_bar(self, iterable=None, total=None):
        """A tqdm bar over the denoising steps, configured by `set_progress_bar_config` (diffusers' convention).

        Labelled and not left on screen; hidden while another tqdm bar is open (e.g. a command's bar over clips),
        as a bar nested in another prints cursor-movement codes wherever the output is not a terminal.
        """
        config = {"desc": "CascadeV denoising", "leave": False, **self._progress_bar_config}
        if "disable" not in self._progress_bar_config and len(tqdm._instances) > 0:
            config["disable"] = True
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options of the denoising progress bar (tqdm's, e.g. `disable=True`), as diffusers pipelines take them."""
        self._progress_bar_config = kwargs

    def get_scheduler(self, scheduler_type: str | None = None):
        """A fresh diffusers scheduler of this model's type (or `scheduler_type`) and `scheduler_config`."""
        name = scheduler_type or self.config.scheduler_type
        if name not in SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {sorted(SCHEDULERS)}, got {name!r}.")
        options = dict(self.config.scheduler_config or {})
        if name == "dpmsolver++":
            options = {"algorithm_type": "dpmsolver++", "solver_order": 2, **options}
        return SCHEDULERS[name](**options)

    @property
    def input_rule(self) -> InputRule:
        """Any frame count, H and W multiples of 32 (padded internally where the release needed more)."""
        return InputRule(1, self.spatial_compression_ratio, frame_step=1)

    @property
    def latent_normalization(self) -> dict[str, Any]:
        return {
            "scaling_factor": self.config.scaling_factor,
            "formula": "z * scaling_factor (1.0: the effnet latent is already standardised by its BatchNorm)",
        }

    def decode_kwargs(
        self,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """`num_inference_steps` and `generator` when given (decode needs no frame count)."""
        options: dict[str, Any] = {}
        if num_inference_steps is not None:
            options["num_inference_steps"] = num_inference_steps
        if generator is not None:
            options["generator"] = generator
        return options

    # -- encoding ---------------------------------------------------------------------------------------------

    def _normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `(N, 3, H, W)` in [-1, 1] -> the encoder's input (ImageNet-normalised [0, 1], compute dtype)."""
        frames = self._to_compute_dtype(frames)
        mean = torch.tensor(IMAGENET_MEAN, device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=frames.device, dtype=frames.dtype).view(1, 3, 1, 1)
        return ((frames + 1) / 2 - mean) / std

    def _encoder_tile_core(self, size: int) -> int:
        """The core of an encoder tile of `size` px: the size less a halo on both sides, so that a tile reads at
        most `size` px (from 144 px on; smaller tiles keep a 48-px core and read 144 px)."""
        halo = self.encoder.local_halo
        return max(size - 2 * halo, halo)

    def _encode_frame_in_tiles(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame `(1, 3, H, W)` -> its latent `(1, 16, ceil(H/32), ceil(W/32))`, equal to `encoder(frame)` up to
        float rounding: the local stages run on halo tiles whose cores are pasted (no blending), the rest, whose
        squeeze-excitations pool the whole frame, on the assembled features at 1/8 of the frame."""
        encoder = self.encoder
        core = (
            self._encoder_tile_core(self.tile_sample_min_height),
            self._encoder_tile_core(self.tile_sample_min_width),
        )
        features = tiled_with_shared_group_norm(
            lambda tile: encoder.forward_local(self._normalize(tile)),
            frame,
            encoder,
            core,
            encoder.local_halo,
            scale=Fraction(1, encoder.local_stride),  # its strided convolutions round sizes up
        )
        return encoder.forward_global(features)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = x.shape
        if self.use_tiling and (height > self.tile_sample_min_height or width > self.tile_sample_min_width):
            # One frame at a time: the whole-frame features of the later stages are what grows with the frame.
            latents = [self._encode_frame_in_tiles(x[b, :, t][None]) for b in range(batch) for t in range(frames)]
        else:
            x = self._to_compute_dtype(x)
            frames_first = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, 3, height, width)
            # Frames are independent (BatchNorm uses running statistics): a few at a time bounds the activations.
            latents = [self.encoder(self._normalize(part)) for part in frames_first.split(8)]
        z = torch.cat(latents)
        return z.reshape(batch, frames, *z.shape[1:]).permute(0, 2, 1, 3, 4)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        r"""Encode a video into its effnet latent.

        Args:
            x (`torch.Tensor`): `(B, 3, T, H, W)` in [-1, 1]; any T, H, W (H, W multiples of 32 for a round trip).

        Returns:
            `latent_dist`: a `DiagonalGaussianDistribution` with zero variance (`deterministic=True`) whose mean and
            mode are the latent `(B, 16, T, ceil(H/32), ceil(W/32))`.
        """
        if not torch.compiler.is_compiling():
            check_video(x, in_channels=self.config.in_channels, name="x")
        if self.use_slicing and x.shape[0] > 1:
            z = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            z = self._encode(x)
        posterior = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def preview(self, z: torch.Tensor) -> torch.Tensor:
        """StableCascade's cheap preview: latent `(B, 16, T, h, w)` -> RGB `(B, 3, T, 8h, 8w)` in [-1, 1] (clamped)."""
        if self.previewer is None:
            raise RuntimeError("This model has no previewer weights (converted without --previewer).")
        check_latents(z, latent_channels=self.config.latent_channels, name="z", description="effnet latents")
        z = self._to_compute_dtype(z)
        batch, channels, frames, height, width = z.shape
        flat = z.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        rgb = torch.cat([self.previewer(part) for part in flat.split(8)])
        rgb = (2 * rgb - 1).clamp(-1, 1)
        return rgb.reshape(batch, frames, *rgb.shape[1:]).permute(0, 2, 1, 3, 4)

    # -- decoding ---------------------------------------------------------------------------------------------

    def _check_latents(self, z: torch.Tensor) -> None:
        check_latents(z, latent_channels=self.config.latent_channels, name="z", description="effnet latents")

    def _noises(
        self,
        z: torch.Tensor,
        steps: int,
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
        step_noises,
        ancestral: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The initial noise and (ancestral scheduler) one noise per step for latents `z`: the given ones, checked
        against `z`, else drawn from `generator` for the whole batch in this order (the initial noise, then step 0,
        1, ...), so that the same generator gives the same noises whether or not the batch is later sliced."""
        batch, _, frames, height, width = z.shape
        sr = self.config.sr_scale
        channels, size = self.config.svd_latent_channels, (height * sr, width * sr)
        shape = (batch, channels, frames, *size)
        hint = (
            f"the SVD latent's noise (B, {channels}, T, {sr}h, {sr}w); fixture noises stored as (T, {channels}, H, W) "
            f"become (1, {channels}, T, H, W) with `n.permute(1, 0, 2, 3)[None]`"
        )
        if step_noises is not None and not ancestral:
            raise ValueError("step_noises only apply to the ancestral (EulerA) scheduler; this one draws no noise.")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=z.device, dtype=torch.float32)
        check_condition(latents, z, name="latents", channels=channels, size=size, frames=frames, what=hint)
        if step_noises is None:
            if not ancestral:
                return latents, None
            draw = [
                randn_tensor(shape, generator=generator, device=z.device, dtype=torch.float32) for _ in range(steps)
            ]
            return latents, draw
        if not isinstance(step_noises, (list, tuple, torch.Tensor)):
            raise TypeError(
                f"step_noises must be a list of {steps} tensors of shape {shape}, got {type(step_noises).__name__}."
            )
        if len(step_noises) != steps:
            raise ValueError(f"step_noises needs one noise per step ({steps}), got {len(step_noises)}.")
        for i, noise in enumerate(step_noises):
            check_condition(noise, z, name=f"step_noises[{i}]", channels=channels, size=size, frames=frames, what=hint)
        return latents, list(step_noises)

    def _num_inference_steps(self, num_inference_steps: int | None) -> int:
        if num_inference_steps is None:
            return int(self.config.num_inference_steps)
        return check_positive_int(num_inference_steps, "num_inference_steps")

    def _pad_to_window(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """Pad (T, C, H, W) with edge copies to at least the DiT window: frames, rows, columns."""
        frames, window = self.config.transformer_num_frames, self.config.transformer_sample_size
        total, _, height, width = x.shape
        pad_t, pad_h, pad_w = max(0, frames - total), max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if pad_t:
            x = torch.cat([x, x[-1:].expand(pad_t, *x.shape[1:])])
        return x, pad_t, pad_h, pad_w

    def _predict_noise(self, x_in: torch.Tensor, condition: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """eps for one video: x_in (T, 4, H, W) scaled model input, condition (T, 16, H, W) -> (T, 4, H, W) fp32."""
        dtype = self.transformer.dtype
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            dtype = torch.float32  # storage-only dtypes (layerwise casting) compute in float32
        hidden = torch.cat([x_in, condition], dim=1)
        total, _, height, width = hidden.shape
        hidden, _, _, _ = self._pad_to_window(hidden)
        eps = self.transformer.forward_windows(hidden.to(dtype), timestep.float().expand(hidden.shape[0]))
        return eps[:total, :, :height, :width].float()

    def refine(
        self,
        z: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        step_noises: list[torch.Tensor] | torch.Tensor | None = None,
        scheduler=None,
    ) -> torch.Tensor:
        r"""Denoise SVD latents conditioned on the effnet latent `z`: the diffusion half of `decode`.

        Args:
            z (`torch.Tensor`): effnet latent `(B, 16, T, h, w)`.
            num_inference_steps (`int`, default `config.num_inference_steps` = 8).
            generator (`torch.Generator`, optional): draws `latents`, then one ancestral noise per step, each of the
                SVD latent's shape `(B, 4, T, 4h, 4w)`, in that order (when not given).
            latents (`torch.Tensor`, optional): the initial noise `(B, 4, T, 4h, 4w)`, before the scheduler's
                `init_noise_sigma` (as diffusers pipelines take `latents=`).
            step_noises (sequence of `torch.Tensor`, optional): `step_noises[i]` is the ancestral noise of step i
                (EulerA only; drawn at the last step too, where it is multiplied by 0).
            scheduler (optional): a diffusers scheduler instance to use instead of the configured one.

        Returns:
            The raw SVD latents `(B, 4, T, 4h, 4w)` (the diffusion variable divided by `refiner_scale_factor`), what
            the SVD decoder takes.
        """
        self._check_latents(z)
        steps = self._num_inference_steps(num_inference_steps)
        scheduler = scheduler or self.get_scheduler()
        ancestral = isinstance(scheduler, EulerAncestralDiscreteScheduler)
        latents, step_noises = self._noises(z, steps, generator, latents, step_noises, ancestral)
        batch, _, frames, height, width = z.shape
        sr, scale = self.config.sr_scale, self.config.refiner_scale_factor
        device = z.device

        # Condition: each effnet channel upsampled bilinearly, frame-major (T, 16, 4h, 4w) per video, times 0.13025.
        flat = z.float().permute(0, 2, 1, 3, 4).reshape(batch * frames, z.shape[1], height, width)
        condition = F.interpolate(flat, scale_factor=sr, mode="bilinear", align_corners=False) * scale
        condition = condition.reshape(batch, frames, *condition.shape[1:])

        scheduler.set_timesteps(steps, device=device)
        x = latents.float().to(device).permute(0, 2, 1, 3, 4) * scheduler.init_noise_sigma  # (B, T, 4, H, W)
        sigmas = scheduler.sigmas.float() if ancestral else None
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if ancestral:
                sigma = sigmas[i].to(device)
                x_in = x / ((sigma**2 + 1) ** 0.5)
            else:
                x_in = scheduler.scale_model_input(x, t)
            eps = torch.stack([self._predict_noise(x_in[b], condition[b], t) for b in range(batch)])
            if ancestral:
                # EulerAncestralDiscreteScheduler.step with its noise made explicit, so that runs can be replayed.
                noise = step_noises[i].float().to(device).permute(0, 2, 1, 3, 4)
                sigma_to = sigmas[i + 1].to(device)
                sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
                sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
                x0 = x - sigma * eps
                x = x + (x - x0) / sigma * (sigma_down - sigma) + noise * sigma_up
            else:
                x = scheduler.step(eps, t, x, generator=generator).prev_sample
        return (x / scale).permute(0, 2, 1, 3, 4).contiguous()

    def _svd_chunk_size(self, num_frames: int) -> int:
        return 5 if num_frames == 25 else self.config.decode_chunk_size

    def _svd_decode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """One chunk (n, 4, h, w) of raw SVD latents -> (n, 3, 8h, 8w), tiled when enabled and large enough."""
        factor = self.tiling_limits().multiple
        n, _, height, width = frames.shape
        if not self.use_tiling or (
            height * factor <= self.tile_sample_min_height and width * factor <= self.tile_sample_min_width
        ):
            return self.svd_vae.decode(frames, num_frames=n).sample
        if self.tile_exact:
            return self._svd_decode_exact(frames)
        tile_h, tile_w = self.tile_sample_min_height // factor, self.tile_sample_min_width // factor
        starts_h = tile_starts(height, tile_h, self.tile_sample_stride_height // factor)
        starts_w = tile_starts(width, tile_w, self.tile_sample_stride_width // factor)
        tiles = (
            self.svd_vae.decode(frames[..., h0 : h0 + tile_h, w0 : w0 + tile_w], num_frames=n).sample
            for h0 in starts_h
            for w0 in starts_w
        )
        return stitch_tiles_as_they_come(tiles, starts_h, starts_w, (height * factor, width * factor), scale=factor)

    def _svd_tile_steps(self, indicator: torch.Tensor) -> list[TileStep]:
        """The SVD decoder from its first upsampler on, as steps that exact tiles run one at a time
        (`_tiling.tiled_in_layer_order`), each with its reach in input pixels: an upsampler 1 (its 3x3 convolution
        after the nearest 2x reads one fine pixel past a tile, half an input pixel); a resnet's spatial half 2 (two
        3x3 convolutions, a 1x1 shortcut) and its temporal half 0 (3x1x1 convolutions and the per-pixel mix), two
        steps so that each re-runs only its own layers to measure its GroupNorms; the output layers 1 (`conv_out`)."""
        decoder = self.svd_vae.decoder
        steps = [TileStep(upsampler, 1, upsampler) for upsampler in decoder.up_blocks[0].upsamplers or ()]
        for block in decoder.up_blocks[1:]:
            for resnet in block.resnets:
                steps.append(TileStep(partial(resnet.spatial_res_block, temb=None), 2, resnet.spatial_res_block))
                steps.append(TileStep(partial(_svd_temporal_half, resnet, indicator), 0, resnet.temporal_res_block))
            steps += [TileStep(upsampler, 1, upsampler) for upsampler in block.upsamplers or ()]

        def output_layers(x: torch.Tensor) -> torch.Tensor:
            x = decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(x)))
            clip = decoder.time_conv_out(x.unsqueeze(0).transpose(1, 2))
            return clip.transpose(1, 2).squeeze(0)

        return steps + [TileStep(output_layers, 1, decoder.conv_norm_out)]

    def _svd_decode_exact(self, frames: torch.Tensor) -> torch.Tensor:
        """`svd_vae.decode(frames)` with the layers above latent resolution (from the first upsampler on) in tiles,
        one layer at a time with the GroupNorm statistics of the whole frame (`_tiling.tiled_in_layer_order`); the
        layers before, the mid block's attention over the frame included, run on whole latent frames."""
        decoder, factor = self.svd_vae.decoder, self.tiling_limits().multiple
        indicator = torch.zeros(1, frames.shape[0], dtype=frames.dtype, device=frames.device)
        h = decoder.mid_block(decoder.conv_in(frames), image_only_indicator=indicator)
        h = h.to(next(itertools.chain(decoder.up_blocks.parameters(), decoder.up_blocks.buffers())).dtype)
        for resnet in decoder.up_blocks[0].resnets:
            h = resnet(h, image_only_indicator=indicator)
        core = (self.tile_sample_min_height // factor, self.tile_sample_min_width // factor)
        steps = self._svd_tile_steps(indicator)
        return tiled_in_layer_order(steps, h, core, self.tile_offload_device).to(frames.device)

    def decode_svd_latents(self, latents: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Raw SVD latents `(B, 4, T, h, w)` -> video `(B, 3, T, 8h, 8w)`, in independent chunks of frames.

        Chunks of `chunk_size` frames (default: `decode_chunk_size` = 4, or 5 when T == 25, as the original); a
        shorter last chunk is padded with copies of its last frame (then cropped), so any T decodes.
        """
        check_latents(
            latents,
            latent_channels=self.config.svd_latent_channels,
            name="latents",
            description="raw SVD latents, as `refine` returns them",
        )
        batch, _, frames, _, _ = latents.shape
        if chunk_size is None:
            chunk = self._svd_chunk_size(frames)
        else:
            chunk = check_positive_int(chunk_size, "chunk_size")
        dtype = self.svd_vae.dtype
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            dtype = torch.float32  # storage-only dtypes (layerwise casting) compute in float32
        videos = []
        for b in range(batch):
            frames_first = latents[b].transpose(0, 1)
            decoded = []
            for start in range(0, frames, chunk):
                part = frames_first[start : start + chunk]
                count = part.shape[0]
                if count < chunk:
                    part = torch.cat([part, part[-1:].expand(chunk - count, *part.shape[1:])])
                decoded.append(self._svd_decode_frames(part.to(dtype))[:count].float())
            videos.append(torch.cat(decoded).transpose(0, 1))
        return torch.stack(videos)

    def _decode(self, z, num_inference_steps, generator, latents, step_noises) -> torch.Tensor:
        svd_latents = self.refine(z, num_inference_steps, generator, latents, step_noises)
        return self.decode_svd_latents(svd_latents)

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        step_noises: list[torch.Tensor] | torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Decode effnet latents: `refine` (diffusion, stochastic), then the SVD temporal decoder.

        Args:
            z (`torch.Tensor`): `(B, 16, T, h, w)` effnet latents.
            num_inference_steps, generator, latents, step_noises: see `refine`. The noises are drawn for the
                whole batch before it is sliced, so `generator` gives the same video with or without
                `enable_slicing()`.
            return_dict (`bool`): return a `DecoderOutput` (else a tuple).

        Returns:
            `sample`: `(B, 3, T, 32h, 32w)`, roughly in [-1, 1] (not clamped).
        """
        self._check_latents(z)
        if self.use_slicing and z.shape[0] > 1:
            steps = self._num_inference_steps(num_inference_steps)
            ancestral = self.config.scheduler_type == "euler_ancestral"
            latents, step_noises = self._noises(z, steps, generator, latents, step_noises, ancestral)
            parts = []
            for b in range(z.shape[0]):
                noises = [n[b : b + 1] for n in step_noises] if step_noises is not None else None
                parts.append(self._decode(z[b : b + 1], steps, generator, latents[b : b + 1], noises))
            decoded = torch.cat(parts)
        else:
            decoded = self._decode(z, num_inference_steps, generator, latents, step_noises)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        num_inference_steps: int | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""Reconstruct `sample (B, 3, T, H, W)`: encode (deterministic), then decode with `generator`'s noise.

        The decoded video is cropped back to `H x W` (a size that is not a multiple of 32 is padded by the encoder).
        """
        z = self.encode(sample).latent_dist.mode()
        decoded = self.decode(z, num_inference_steps=num_inference_steps, generator=generator).sample
        decoded = decoded[..., : sample.shape[-2], : sample.shape[-1]]
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
