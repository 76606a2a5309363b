# Copyright 2026 The diffusers-videovae contributors.
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
"""The few helpers that several video VAEs share: input checks, tile planning and seam blending.

Everything here is model-agnostic. A model file keeps its own tiling loop (it is part of reading that model top to
bottom) and calls these helpers for the parts that are the same everywhere.
"""

from __future__ import annotations

import torch

__all__ = [
    "blend",
    "check_latents",
    "check_video",
    "nearest_valid_num_frames",
    "tile_starts",
]


def nearest_valid_num_frames(num_frames: int, temporal_compression: int) -> tuple[int, int]:
    """The valid frame counts `1 + k * temporal_compression` just below and just above `num_frames`."""
    k = max(0, (num_frames - 1) // temporal_compression)
    below = 1 + k * temporal_compression
    above = below if below == num_frames else below + temporal_compression
    return below, above


def _nearest_multiples(size: int, multiple: int) -> tuple[int, int]:
    below = max(multiple, (size // multiple) * multiple)
    above = below if below == size else (size // multiple + 1) * multiple
    return below, above


def check_video(
    sample: torch.Tensor,
    *,
    in_channels: int = 3,
    temporal_compression: int | None = None,
    spatial_multiple: int | None = None,
    name: str = "sample",
) -> None:
    """Raise a clear error when `sample` is not a `(B, C, T, H, W)` video this model accepts.

    Args:
        sample: the video, `(B, in_channels, T, H, W)`, floating point, finite.
        in_channels: expected channel count (3 for RGB).
        temporal_compression: when given, T must be `1 + k * temporal_compression` (the causal frame rule).
        spatial_multiple: when given, H and W must be multiples of it.
        name: the argument name used in messages.
    """
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (B, {in_channels}, T, H, W), got {type(sample)}.")
    if sample.ndim != 5:
        hint = " Add the frame axis with `x.unsqueeze(2)` for images." if sample.ndim == 4 else ""
        raise ValueError(
            f"`{name}` must have shape (B, {in_channels}, T, H, W) (5 dims), got {tuple(sample.shape)}.{hint}"
        )
    if not sample.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating point tensor with values in [-1, 1], got dtype {sample.dtype}. "
            "Convert uint8 frames with `x.float() / 127.5 - 1`."
        )
    batch, channels, num_frames, height, width = sample.shape
    if channels != in_channels:
        raise ValueError(
            f"`{name}` must have {in_channels} channels in dim 1, layout (B, C, T, H, W); got shape "
            f"{tuple(sample.shape)}. If your tensor is (B, T, C, H, W), use `x.permute(0, 2, 1, 3, 4)`."
        )
    if min(batch, num_frames, height, width) == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(sample.shape)}.")
    if temporal_compression is not None and (num_frames - 1) % temporal_compression != 0:
        below, above = nearest_valid_num_frames(num_frames, temporal_compression)
        raise ValueError(
            f"`{name}` has {num_frames} frames, but this model needs T = 1 + {temporal_compression}k frames "
            f"(1, {1 + temporal_compression}, {1 + 2 * temporal_compression}, ...). "
            f"Nearest valid frame counts: {below} or {above}; e.g. use `x[:, :, :{below}]`."
        )
    if spatial_multiple is not None and (height % spatial_multiple or width % spatial_multiple):
        h_lo, h_hi = _nearest_multiples(height, spatial_multiple)
        w_lo, w_hi = _nearest_multiples(width, spatial_multiple)
        raise ValueError(
            f"`{name}` is {height}x{width} (HxW), but H and W must be multiples of {spatial_multiple}. "
            f"Nearest valid sizes: H in ({h_lo}, {h_hi}), W in ({w_lo}, {w_hi}); crop or resize first."
        )
    if not bool(torch.isfinite(sample).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def check_latents(latents: torch.Tensor, *, latent_channels: int, name: str = "z") -> None:
    """Raise a clear error when `latents` is not a `(B, latent_channels, t, h, w)` latent video."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape (B, {latent_channels}, t, h, w), got {type(latents)}."
        )
    if latents.ndim != 5 or latents.shape[1] != latent_channels:
        raise ValueError(
            f"`{name}` must have shape (B, {latent_channels}, t, h, w) (raw, unscaled latents), "
            f"got {tuple(latents.shape)}."
        )
    if not latents.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {latents.dtype}.")
    if min(latents.shape) == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(latents.shape)}.")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length `tile` every `stride` that cover `[0, size)` with no tile past the end.

    The last tile is moved back so that it ends exactly at `size` (so every tile has the full length when
    `size >= tile`); a size that fits in one tile gives `[0]`.
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive.")
    if stride > tile:
        raise ValueError(f"stride ({stride}) must not exceed the tile size ({tile}), or parts would be skipped.")
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def blend(previous: torch.Tensor, current: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the last `extent` entries of `previous` into the first `extent` entries of `current` along `dim`.

    Linear ramp as in diffusers' `blend_v` / `blend_h` / `blend_t`; `current` is returned modified in a copy.
    """
    extent = min(previous.shape[dim], current.shape[dim], extent)
    if extent <= 0:
        return current
    current = current.clone()
    shape = [1] * current.ndim
    shape[dim] = extent
    weight = (torch.arange(extent, device=current.device, dtype=current.dtype) / extent).reshape(shape)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head = current.narrow(dim, 0, extent)
    head.copy_(tail * (1 - weight) + head * weight)
    return current
