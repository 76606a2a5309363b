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

import functools
import itertools
import math
import operator
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.utils import logging

from ..memory import available_memory_bytes, traced_device

__all__ = [
    "AUTO_SPILL_SHARE",
    "SpilledTensor",
    "TileSpan",
    "TileStep",
    "blend",
    "check_condition",
    "check_finite",
    "check_latents",
    "check_not_empty",
    "check_positive_int",
    "check_video",
    "configure_tiling",
    "TilingLimits",
    "blend_tile_grid",
    "halo_spans",
    "has_values",
    "nearest_valid_num_frames",
    "offload_place",
    "stitch_blended_tiles",
    "stitch_tiles_as_they_come",
    "blend_tiles_as_they_come",
    "tile_settings",
    "tile_starts",
    "tiled_in_layer_order",
    "tiled_with_shared_group_norm",
]

logger = logging.get_logger(__name__)


def nearest_valid_num_frames(num_frames: int, temporal_compression: int) -> tuple[int, int]:
    """The valid frame counts `1 + k * temporal_compression` just below and just above `num_frames`."""
    k = max(0, (num_frames - 1) // temporal_compression)
    below = 1 + k * temporal_compression
    above = below if below == num_frames else below + temporal_compression
    return below, above


def has_values(tensor: torch.Tensor) -> bool:
    """Whether `tensor` holds data that value checks can read: False for `meta` tensors, fake tensors and inside
    `torch.compile` (where a data-dependent check would break the graph). Shape checks run on every tensor; value
    checks (finite, ranges) only where this is True, so a model can be traced on the `meta` device."""
    if torch.compiler.is_compiling() or tensor.is_meta:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(tensor)


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise a clear error when `tensor` holds NaN or infinite values (skipped for tensors without data)."""
    if has_values(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def check_not_empty(tensor: torch.Tensor, name: str) -> None:
    """Raise a clear error for an empty batch (B = 0), and for a tensor with another empty dimension."""
    if tensor.shape[0] == 0:
        raise ValueError(f"`{name}` is an empty batch (B = 0, shape {tuple(tensor.shape)}): pass at least one item.")
    if min(tensor.shape) == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(tensor.shape)}.")


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
    _, channels, num_frames, height, width = sample.shape
    if channels != in_channels:
        raise ValueError(
            f"`{name}` must have {in_channels} channels in dim 1, layout (B, C, T, H, W); got shape "
            f"{tuple(sample.shape)}. If your tensor is (B, T, C, H, W), use `x.permute(0, 2, 1, 3, 4)`."
        )
    check_not_empty(sample, name)
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
    check_finite(sample, name)


def check_positive_int(value: object, name: str) -> int:
    """`value` as an `int` when it is a positive integer (a Python or NumPy int, not a bool or a float), else one
    clear error: counts and sizes such as `num_inference_steps`, `chunk_size` and `num_frames`."""
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number > 0:
            return number
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def check_latents(
    latents: torch.Tensor,
    *,
    latent_channels: int,
    frame_multiple: int | None = None,
    name: str = "z",
    description: str = "raw, unscaled latents",
) -> None:
    """Raise a clear error when `latents` is not a `(B, latent_channels, t, h, w)` latent video.

    Args:
        latents: the latents, floating point and finite (the value check is skipped for tensors without data).
        latent_channels: expected channel count (dim 1).
        frame_multiple: when given, t must be a multiple of it (a model that decodes fixed groups of latent frames).
        name: the argument name used in messages.
        description: what the latents are, for the shape message (e.g. "raw, unscaled latents").
    """
    frames = f"{frame_multiple}k" if frame_multiple else "t"
    layout = f"(B, {latent_channels}, {frames}, h, w)"
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {layout}, got {type(latents).__name__}.")
    if latents.ndim != 5 or latents.shape[1] != latent_channels:
        raise ValueError(f"`{name}` must have shape {layout} ({description}), got {tuple(latents.shape)}.")
    if not latents.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {latents.dtype}.")
    check_not_empty(latents, name)
    if frame_multiple and latents.shape[2] % frame_multiple:
        raise ValueError(
            f"`{name}` has {latents.shape[2]} latent frames, but this model decodes groups of {frame_multiple}: "
            f"t must be a multiple of {frame_multiple} (shape {tuple(latents.shape)})."
        )
    check_finite(latents, name)


@dataclass(frozen=True)
class TilingLimits:
    """What one model's `enable_tiling` accepts (its `tiling_limits()`), in sample pixels and frames.

    Attributes:
        name: the model's name, for messages.
        multiple: tile sizes and strides are positive multiples of it (the spatial compression).
        default_size: the default tile side in pixels.
        stride_ratio: default stride / size of blended tiles (a stride not given follows its size); None when the
            model has no blended tiles (its tiles never overlap).
        max_size: the largest tile side blended tiles may have (what one tile can run untiled), or None.
        frame_offset, frame_multiple: temporal chunks of `frame_offset + k * frame_multiple` frames (k >= 1);
            `frame_offset` None when the model has no temporal chunks.
        frames_overlap: temporal chunks overlap (default stride: size - frame_offset) instead of carrying a cache
            (stride = size).
        exact_frames: exact tiles are also chunked in time.
        exact_only: the model's only tiles are exact (`exact=False` gives them too).
        frames_note: why the model's tiles are not cut in time, added to the refusal of `*_num_frames` arguments.
    """

    name: str
    multiple: int
    default_size: int
    stride_ratio: Fraction | None
    max_size: int | None = None
    frame_offset: int | None = None
    frame_multiple: int = 1
    frames_overlap: bool = False
    exact_frames: bool = False
    exact_only: bool = False
    frames_note: str = ""

    def default_stride(self, size: int) -> int:
        """The stride of blended tiles of side `size`: `stride_ratio * size`, rounded down to `multiple`."""
        if self.stride_ratio is None:
            return size
        return max(self.multiple, int(size * self.stride_ratio) // self.multiple * self.multiple)


def tile_settings(limits: TilingLimits, current: dict[str, int], exact: bool, **given: int | None) -> dict[str, int]:
    """The tile attributes `enable_tiling(**given, exact=exact)` sets, checked against `limits` (one clear
    ValueError naming the argument otherwise).

    `current` holds the model's `tile_sample_*` attributes. A size not given keeps its current value; a stride not
    given follows its size (the model's default ratio, or the size itself where tiles do not overlap). An argument
    the model (or the chosen mode) cannot use raises instead of being ignored.
    """
    if not isinstance(exact, bool):
        raise ValueError(f"`exact` must be True or False, got {exact!r}.")
    exact = exact or limits.exact_only
    settings = {}
    for axis in ("height", "width"):
        size_name, stride_name = f"tile_sample_min_{axis}", f"tile_sample_stride_{axis}"
        size = current[size_name] if given.get(size_name) is None else int(given[size_name])
        stride = given.get(stride_name)
        if size <= 0 or size % limits.multiple:
            raise ValueError(
                f"{size_name} must be a positive multiple of {limits.multiple}, got {size} (tile sizes and strides "
                f"are multiples of {limits.multiple}, the spatial compression)."
            )
        if exact or limits.stride_ratio is None:
            if stride is not None and int(stride) != size:
                raise ValueError(
                    f"{limits.name}'s {'exact ' if limits.stride_ratio is not None else ''}tiles do not overlap (each "
                    f"reads a halo instead): {stride_name}={stride} cannot be used; leave it unset or equal to "
                    f"{size_name}={size}."
                )
            stride = size
        else:
            if limits.max_size is not None and size > limits.max_size:
                raise ValueError(
                    f"{size_name}={size} is larger than {limits.name}'s largest tile ({limits.max_size} px: "
                    f"{limits.name} cannot run a larger frame in one piece)."
                )
            stride = limits.default_stride(size) if stride is None else int(stride)
            if stride <= 0 or stride % limits.multiple or stride > size:
                raise ValueError(
                    f"{stride_name}={stride} must be a positive multiple of {limits.multiple}, at most "
                    f"{size_name}={size}."
                )
        settings[size_name], settings[stride_name] = size, stride
    settings.update(_frame_settings(limits, current, exact, given))
    return settings


def configure_tiling(model: nn.Module, exact: bool, **given: int | None) -> None:
    """`enable_tiling` of every model: check `given` against `model.tiling_limits()` (`tile_settings`), set the
    `tile_sample_*` attributes, `tile_exact` and `use_tiling`."""
    limits = model.tiling_limits()
    current = {name: getattr(model, name) for name in _TILE_ATTRIBUTES if hasattr(model, name)}
    settings = tile_settings(limits, current, exact, **given)
    for name, value in settings.items():
        setattr(model, name, value)
    model.tile_exact = exact or limits.exact_only
    model.use_tiling = True


_TILE_ATTRIBUTES = tuple(
    f"tile_sample_{kind}_{axis}" for kind in ("min", "stride") for axis in ("height", "width", "num_frames")
)


def _frame_settings(limits: TilingLimits, current: dict[str, int], exact: bool, given: dict) -> dict[str, int]:
    """The `*_num_frames` part of `tile_settings`."""
    size, stride = given.get("tile_sample_min_num_frames"), given.get("tile_sample_stride_num_frames")
    if limits.frame_offset is None or (exact and not limits.exact_frames):
        if size is not None or stride is not None:
            what = "tiles" if limits.frame_offset is None else "exact tiles"
            raise ValueError(
                f"{limits.name}'s {what} are not cut in time{limits.frames_note}: leave tile_sample_min_num_frames "
                "and tile_sample_stride_num_frames unset."
            )
        return {}
    offset, multiple = limits.frame_offset, limits.frame_multiple
    size = current["tile_sample_min_num_frames"] if size is None else int(size)
    if size < offset + multiple or (size - offset) % multiple:
        rule = f"{offset} + {multiple}k" if offset else f"a positive multiple of {multiple}"
        raise ValueError(f"tile_sample_min_num_frames={size} must be {rule} with k >= 1.")
    if not limits.frames_overlap:
        if stride is not None and int(stride) != size:
            raise ValueError(
                f"{limits.name}'s temporal chunks carry a causal cache and do not overlap: "
                "tile_sample_stride_num_frames must equal tile_sample_min_num_frames (or stay unset)."
            )
        return {"tile_sample_min_num_frames": size, "tile_sample_stride_num_frames": size}
    stride = size - offset if stride is None else int(stride)
    if stride <= 0 or stride % multiple or stride > size - offset:
        raise ValueError(
            f"tile_sample_stride_num_frames={stride} must be a positive multiple of {multiple} and at most "
            f"tile_sample_min_num_frames - {offset} = {size - offset}."
        )
    return {"tile_sample_min_num_frames": size, "tile_sample_stride_num_frames": stride}


def check_condition(
    condition: torch.Tensor,
    latents: torch.Tensor,
    *,
    name: str,
    channels: int,
    size: tuple[int, int],
    frames: int | None = None,
    what: str = "",
) -> None:
    """Raise a clear error when `condition`, a tensor that a decode takes besides `latents` (a content frame, a
    content feature map, an initial noise), does not fit them.

    It must be `(B, channels, H, W)`, or `(B, channels, frames, H, W)` when `frames` is given, with `B` the latents'
    batch and `(H, W) = size` (what the latents' `h, w` need, computed by the caller); floating point and finite
    (the value check is skipped for tensors without data). The caller casts it with `_to_compute_dtype`.

    Args:
        what: what the tensor is, for messages (e.g. "the SVD latent's noise").
    """
    batch = latents.shape[0]
    expected = (batch, channels, *(() if frames is None else (frames,)), *size)
    described = f" ({what})" if what else ""
    if not isinstance(condition, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape {expected}{described}, got {type(condition).__name__}."
        )
    got = tuple(condition.shape)
    if condition.ndim != len(expected):
        raise ValueError(f"`{name}` must have shape {expected}{described}, got {got}.")
    if not condition.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {condition.dtype}.")
    if got[0] != batch:
        raise ValueError(
            f"`{name}` has batch {got[0]}, but the latents have batch {batch}: expected shape {expected}."
        )
    if got[1] != channels:
        raise ValueError(f"`{name}` has {got[1]} channels in dim 1, expected {channels}: shape {expected}{described}.")
    if got[2:] != expected[2:]:
        raise ValueError(
            f"`{name}` of shape {got} does not fit latents of shape {tuple(latents.shape)}: expected {expected}"
            f"{described}."
        )
    check_finite(condition, name)


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


def blend_tile_grid(tiles: list[list], starts_h: list[int], starts_w: list[int], scale: int = 1) -> None:
    """Cross-fade every tile of a grid with its neighbours, in place, as diffusers' VAEs and the originals do.

    Tile `(i, j)` starts at `scale * (starts_h[i], starts_w[j])` in its own units. In diffusers' order, each tile is
    blended with the already blended tile above it, then with the one on its left, over their whole overlap
    (`blend` on the last two dimensions).
    """
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            if i > 0:
                above = tiles[i - 1][j]
                tile = blend(above, tile, scale * (starts_h[i - 1] - starts_h[i]) + above.shape[-2], dim=-2)
            if j > 0:
                left = row[j - 1]
                tile = blend(left, tile, scale * (starts_w[j - 1] - starts_w[j]) + left.shape[-1], dim=-1)
            row[j] = tile


def stitch_blended_tiles(
    tiles: list[list[torch.Tensor]], starts_h: list[int], starts_w: list[int], scale: int = 1
) -> torch.Tensor:
    """Assemble a grid of overlapping tiles into one tensor, cross-fading every overlap (the blended tiles of
    diffusers' VAEs and of the originals that tile).

    Tile `(i, j)` covers the output from `scale * (starts_h[i], starts_w[j])` (starts in input units, `scale`
    output units per input unit). The tiles are blended as `blend_tile_grid` does, then each keeps its part up to
    where the next tile starts (all of it for the last row / column): `stitch_tiles_as_they_come` on the grid,
    for tiles that are small or already made; tiles made one at a time go to that function directly.
    """
    size = (
        scale * (starts_h[-1] - starts_h[0]) + tiles[-1][0].shape[-2],
        scale * (starts_w[-1] - starts_w[0]) + tiles[0][-1].shape[-1],
    )
    return stitch_tiles_as_they_come((tile for row in tiles for tile in row), starts_h, starts_w, size, scale)


class TileSpan(NamedTuple):
    """One tile along one axis: it reads `[start, end)` and keeps its core `[core_start, core_end)`."""

    start: int
    end: int
    core_start: int
    core_end: int

    def core_slice(self, scale: int) -> slice:
        """The core in the stitched output, with `scale` output pixels per input pixel."""
        return slice(self.core_start * scale, self.core_end * scale)

    def core_in_tile(self, scale: int | Fraction) -> slice:
        """The core inside the tile's own tensor, which has `scale` pixels per input pixel (e.g. 1/8 in an encoder)."""
        lo, hi = (self.core_start - self.start) * scale, (self.core_end - self.start) * scale
        if int(lo) != lo or int(hi) != hi:
            raise RuntimeError(f"tile core [{self.core_start}, {self.core_end}) is not aligned at scale {scale}.")
        return slice(int(lo), int(hi))


def halo_spans(size: int, core: int, halo: int) -> list[TileSpan]:
    """Cores of `core` pixels covering `[0, size)` without overlap, each read with `halo` more pixels on both sides
    where the frame has them (a tile stops at the frame border, where the untiled model pads too)."""
    if core <= 0 or halo < 0:
        raise ValueError(f"core ({core}) must be positive and halo ({halo}) non-negative.")
    return [
        TileSpan(max(0, start - halo), min(size, start + core + halo), start, min(start + core, size))
        for start in range(0, size, core)
    ]


class _StatisticsTaken(Exception):
    """Ends a tile's pass once the GroupNorm being measured has seen its input."""


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def group_moments(x: torch.Tensor, groups: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean, sum of squared deviations) per (sample, group) of `x` (N, C, ...): moments computed in at least
    float32 (float64 for float64 input), returned in float64 (float32 on MPS) for merging."""
    grouped = x.reshape(x.shape[0], groups, -1)
    var, mean = torch.var_mean(grouped.to(_at_least_float32(x.dtype)), dim=-1, correction=0)
    count = grouped.shape[-1]
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    return count, mean.to(wide), var.to(wide) * count


def _merge_moments(a, b):
    """Chan et al.'s pairwise update of (count, mean, M2)."""
    if a is None:
        return b
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta.square() * (n_a * n_b / n)


def normalize_groups(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> torch.Tensor:
    """GroupNorm of `x` (N, C, ...) with the given per-(sample, group) mean and 1 / std, and affine `weight`/`bias`."""
    batch, channels = x.shape[:2]
    per_group = channels // num_groups
    wide = _at_least_float32(x.dtype)
    scale = rstd.to(wide).repeat_interleave(per_group, dim=1)
    shift = -mean.to(wide).repeat_interleave(per_group, dim=1) * scale
    if weight is not None:
        scale = scale * weight.to(wide)
        shift = shift * weight.to(wide)
    if bias is not None:
        shift = shift + bias.to(wide)
    shape = (batch, channels) + (1,) * (x.ndim - 2)
    return (x * scale.to(x.dtype).view(shape)).add_(shift.to(x.dtype).view(shape))


class _SharedGroupNorm(torch.overrides.TorchFunctionMode):
    """Replaces `F.group_norm` while one of the measured GroupNorm modules runs (`state["running"]`): records the
    moments of its input and stops the tile's pass, or normalises with the shared statistics.

    It works below the module's `forward`, on the `F.group_norm` call that `nn.GroupNorm.forward` makes, so whatever
    hooks wrap that `forward` (diffusers' `HookRegistry`, accelerate's `add_hook_to_module`: offloading, casting)
    still run around it and the weight and bias it sees are the ones those hooks moved or cast.
    """

    def __init__(self, state: dict, statistics: dict):
        super().__init__()
        self.state, self.statistics = state, statistics

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        module = self.state.get("running")
        if func is not F.group_norm or module is None:
            return func(*args, **kwargs)
        names = ("input", "num_groups", "weight", "bias", "eps")
        values = dict(zip(names, args), **kwargs)
        h, groups = values["input"], values["num_groups"]
        if module in self.statistics:
            return normalize_groups(h, groups, values.get("weight"), values.get("bias"), *self.statistics[module])
        if self.state["target"] not in (None, module):
            raise RuntimeError("GroupNorms ran in a different order in different tiles.")
        self.state["target"] = module
        row, column = self.state["tile"]
        scale_h = Fraction(h.shape[-2], row.end - row.start)
        scale_w = Fraction(h.shape[-1], column.end - column.start)
        part = h[..., row.core_in_tile(scale_h), column.core_in_tile(scale_w)]
        self.state["moments"] = _merge_moments(self.state["moments"], group_moments(part, groups))
        self.state["taken"] = True
        return h  # the pass stops when the module returns (after its hooks), see `tiled_with_shared_group_norm`


# --- where exact tiles keep their step boundaries -----------------------------------------------------------------

# `offload_device="auto"`. On the CPU a step boundary is spilled to the system's temp folder: plain file I/O costs a
# few percent of the tiles' time and keeps the peak at one tile's step whatever the frame (README, "Where exact tiles
# keep their step boundaries"); it stays in memory only where the folder is a RAM disk or the boundary would take more
# than this share of its free space (the step's input and output are on disk at once; the rest is for others). On an
# accelerator it stays there while it takes at most this share of the memory available (a round trip to CPU memory
# per step is a bus transfer of the whole boundary), then goes to CPU memory on the same terms, else to disk. A
# quarter leaves room for the step's input, one tile's activations and other processes.
AUTO_SPILL_SHARE = 0.25


def offload_place(value: object) -> torch.device | Path | str | None:
    """`offload_device` (a model's `tile_offload_device`) checked: None (where the tiles run), `"auto"`, a
    `torch.device`, or a folder (`Path`) for `"disk"` (the system's temp folder, `tempfile.gettempdir()`), a
    `pathlib.Path` or a string naming an existing folder. One clear error otherwise."""
    if value is None or value == "auto" or isinstance(value, torch.device):
        return value
    if isinstance(value, str) and value == "disk":
        return Path(tempfile.gettempdir())
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            pass
    if isinstance(value, (str, os.PathLike)) and Path(value).is_dir():
        return Path(value)
    raise ValueError(
        f"`tile_offload_device` must be None, 'auto', a device such as 'cpu', 'disk' or an existing folder; got "
        f"{value!r}."
    )


def _boundary_place(place: torch.device | Path | str | None, like: torch.Tensor, numel: int):
    """Where a step boundary of `numel` elements like `like` (a tile's output) is kept: None (beside `like`), a
    device, or a folder to spill it into. A tensor without data is not moved, but placed as on the device it stands
    for (`memory.traced_as`): a folder wherever that device would not hold it."""
    if isinstance(place, torch.device):
        return place if has_values(like) else None
    if place != "auto":
        return place
    if like.requires_grad:
        return None  # a file carries no gradients
    nbytes, folder = numel * like.element_size(), Path(tempfile.gettempdir())
    device = like.device if has_values(like) else traced_device()
    if device.type == "cpu":
        if _ram_disk(folder) is None and nbytes <= AUTO_SPILL_SHARE * shutil.disk_usage(folder).free:
            return folder
        candidates = [device]
    else:
        candidates = [device, torch.device("cpu")]
    for candidate in candidates:
        if nbytes <= AUTO_SPILL_SHARE * available_memory_bytes(candidate):
            if candidate == device:
                return None
            return candidate if has_values(like) else folder  # a trace counts only what the device reads back
    return folder


def _new_boundary(like: torch.Tensor, shape: tuple[int, ...], place) -> torch.Tensor | SpilledTensor:
    """An empty step boundary of `shape` with `like`'s dtype, kept as `_boundary_place` says."""
    where = _boundary_place(place, like, math.prod(shape))
    if isinstance(where, Path):
        if like.requires_grad:
            raise RuntimeError(
                "Exact tiles cannot spill step boundaries to disk while computing gradients (a file carries none): "
                "set `tile_offload_device` to None or 'auto', or run under `torch.no_grad()`."
            )
        return SpilledTensor(shape, like.dtype, where if has_values(like) else None, device=like.device)
    return like.new_empty(shape, device=where)


def _hold(tensor: torch.Tensor, place) -> torch.Tensor | SpilledTensor:
    """A finished whole `tensor` kept as `_boundary_place` says: itself, moved, or written to a spill file."""
    where = _boundary_place(place, tensor, tensor.numel())
    if isinstance(where, Path):
        held = _new_boundary(tensor, tuple(tensor.shape), where)
        held[...] = tensor
        return held
    return tensor if where is None else tensor.to(where)


def _close(boundary: object) -> None:
    if isinstance(boundary, SpilledTensor):
        boundary.close()


@functools.cache
def _ram_disk(folder: Path) -> str | None:
    """The file system type of `folder` when it is a RAM disk (tmpfs, as `/tmp` is on some systems, or ramfs), where
    a spill frees no memory; None otherwise, and where the mounts cannot be read (not Linux)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    path, best = folder.resolve(), ("", "")
    for line in mounts:
        fields = line.split()
        if len(fields) > 2:
            mount = fields[1].replace("\\040", " ")
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > len(best[0]):
                best = (mount, fields[2])
    return best[1] if best[1] in ("tmpfs", "ramfs") else None


@functools.cache
def _warn_if_ram_disk(folder: Path) -> None:
    """Spilling to a RAM disk frees no memory: say so, once per folder."""
    kind = _ram_disk(folder)
    if kind is not None:
        logger.warning(
            f"Exact tiles spill their step boundaries to {folder}, a RAM disk ({kind}): that frees no memory. "
            "Set `tile_offload_device` (or TMPDIR) to a folder on a disk."
        )


class SpilledTensor:
    """A step boundary of exact tiles kept in a temporary file instead of memory (`tiled_in_layer_order` with
    `offload_device="disk"` or a folder): written tile core by tile core, read tile window by tile window, so that
    the process holds one window at a time.

    `spilled[key]` reads a window into a new CPU tensor and `spilled[key] = value` writes one; `key` takes slices
    (step 1) and `...`, as tiles need. The file has no name (`tempfile.TemporaryFile`: unlinked when made on POSIX),
    so nothing is left behind even if the process is killed; `close()` frees its space. It is read and written with
    plain file I/O, not memory-mapped, so its pages are the OS's (reclaimable page cache), never the process's
    resident memory. In the file, frames and rows come first and batch and channels last: a tile's window is one
    contiguous run per frame and row.

    With `folder` None (a traced run on `meta`), nothing is written or read and a read allocates the window on
    `device`: what a trace (`memory.LiveTensorBytes`) should count for a spilled boundary.
    """

    def __init__(self, shape, dtype: torch.dtype, folder: Path | None, device: torch.device | str = "meta"):
        self.shape, self.dtype = torch.Size(shape), dtype
        if len(self.shape) < 4:
            raise ValueError(f"A spilled tile boundary is (N, C, ..., H, W), got shape {tuple(self.shape)}.")
        self.ndim = len(self.shape)
        self._order = (*range(2, self.ndim), 0, 1)  # file layout: frames, rows, columns, batch, channels
        self._inverse = tuple(self._order.index(dim) for dim in range(self.ndim))
        self._itemsize = torch.empty((), dtype=dtype).element_size()
        self.device = torch.device("cpu" if folder is not None else device)
        self._file = None
        if folder is not None:
            nbytes = self.shape.numel() * self._itemsize
            free = shutil.disk_usage(folder).free
            if nbytes > free:
                raise RuntimeError(
                    f"Exact tiles need {nbytes / 2**30:.2f} GiB in {folder} to spill a step boundary; "
                    f"{free / 2**30:.2f} GiB are free there: set `tile_offload_device` to another folder."
                )
            _warn_if_ram_disk(folder)
            self._file = tempfile.TemporaryFile(prefix="videovae-tiles-", dir=folder, buffering=0)
            try:  # reserve the space now: a full disk fails here, not after the tiles ran
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(self._file.fileno(), 0, nbytes)
                else:
                    self._file.truncate(nbytes)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Free the file's space (reads and writes fail afterwards)."""
        if self._file is not None:
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file is not None and self._file.closed

    def to(self, device: torch.device | str) -> torch.Tensor:
        """The whole tensor, read into memory on `device`."""
        return self[...].to(device)

    def __getitem__(self, key) -> torch.Tensor:
        bounds = self._bounds(key)
        window = [bounds[d][1] - bounds[d][0] for d in self._order]
        buffer = torch.empty(window, dtype=self.dtype, device=self.device)
        if self._file is not None:
            self._transfer(bounds, buffer, write=False)
        # Batch and channels to the front as one 2-D transpose, which PyTorch copies in cache-sized blocks (3x
        # faster here than the same permutation in 5-D).
        pixels = buffer.view(math.prod(window[:-2]), window[-2] * window[-1])
        return pixels.t().contiguous().view([window[self._inverse[d]] for d in range(self.ndim)])

    def __setitem__(self, key, value: torch.Tensor) -> None:
        bounds = self._bounds(key)
        if tuple(value.shape) != tuple(stop - start for start, stop in bounds):
            raise ValueError(f"Cannot write a tensor of shape {tuple(value.shape)} to {key!r} of {self.shape}.")
        if value.requires_grad:
            raise RuntimeError("A spilled tile boundary carries no gradients: run under `torch.no_grad()`.")
        stored = value.detach().to(self.dtype).permute(self._order).contiguous().to(self.device)
        if self._file is not None:
            self._transfer(bounds, stored, write=True)

    def _bounds(self, key) -> list[tuple[int, int]]:
        key = key if isinstance(key, tuple) else (key,)
        if any(item is Ellipsis for item in key):
            at = next(index for index, item in enumerate(key) if item is Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key += (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or not all(isinstance(item, slice) and item.step in (None, 1) for item in key):
            raise TypeError(f"A spilled tile boundary is indexed with slices of step 1 and `...`, got {key!r}.")
        bounds = []
        for item, size in zip(key, self.shape):
            start, stop, _ = item.indices(size)
            bounds.append((start, max(start, stop)))
        return bounds

    def _runs(self, bounds: list[tuple[int, int]]):
        """(offset, bytes) of each contiguous run of the window `bounds` in the file, in the file's order."""
        stored = [bounds[d] for d in self._order]
        sizes = [self.shape[d] for d in self._order]
        strides = [math.prod(sizes[d + 1 :]) * self._itemsize for d in range(self.ndim)]
        inner = self.ndim - 1  # the outermost dimension of the run; those inside it are read whole
        while inner > 0 and stored[inner] == (0, sizes[inner]):
            inner -= 1
        start, stop = stored[inner]
        length = (stop - start) * strides[inner]
        if length == 0:
            return
        for index in itertools.product(*(range(*bound) for bound in stored[:inner])):
            yield sum(i * stride for i, stride in zip(index, strides)) + start * strides[inner], length

    def _transfer(self, bounds: list[tuple[int, int]], buffer: torch.Tensor, write: bool) -> None:
        """Write the contiguous `buffer` (the window in the file's layout) to the file, or read it from there."""
        data = memoryview(buffer.view(-1).view(torch.uint8).numpy())
        position = 0
        for offset, length in self._runs(bounds):
            part = data[position : position + length]
            self._file.seek(offset)
            while part:
                done = self._file.write(part) if write else self._file.readinto(part)
                if not done:
                    raise OSError(f"The spilled tile boundary's file ended at byte {offset}.")
                part, offset = part[done:], offset + done
            position += length


def tiled_with_shared_group_norm(
    stage: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor | SpilledTensor,
    modules: nn.Module | list[nn.Module],
    core: int | tuple[int, int],
    halo: int,
    device: torch.device | str | None = None,
    out_device: torch.device | str | os.PathLike | None = None,
    scale: int | Fraction | None = None,
) -> torch.Tensor | SpilledTensor:
    r"""Run `stage` on spatial tiles of `x` so that the result equals `stage(x)` up to float rounding.

    Made for networks whose GroupNorms take statistics over whole frames or clips, where plain tiles see other
    statistics than the full input. Tiles here share the full input's statistics: every GroupNorm in `modules` is
    measured first, one after the other in execution order (a pass over all tiles that stops at that GroupNorm,
    accumulating its input's moments over the tile cores), and the last pass normalises every tile with those
    moments. Each tile reads `halo` input pixels beyond its core on every side, which must cover the stage's
    receptive field; cores are then exact and are pasted without blending.

    Cost: one partial pass per GroupNorm plus one full pass (each over the tiles with their halos), so several
    times the untiled compute; memory is that of one tile. Statistics are constants for autograd. When every tile
    would read the whole input (halo and core cover it), the stage simply runs once, untiled.

    Args:
        stage: `(N, C, ..., h, w) -> (N, C', ..., h', w')`, local in space apart from its GroupNorms; `h' / h` is
            the same for every input (e.g. 8 for an upsampling decoder, 1/8 for a downsampling encoder), or
            `h' = ceil(h * scale)` with `scale` given.
        x: the stage input (a tensor, or a `SpilledTensor`); tiling is over its last two dimensions.
        modules: the module(s) whose `nn.GroupNorm`s the stage calls.
        core, halo: tile core (one size, or `(height, width)`) and halo in input pixels; with a downsampling stage,
            multiples of its factor.
        device: where the tiles run (default: where `x` is); each tile is copied there from `x`.
        out_device: where the result is assembled: None (where the tiles run), a device, or as `offload_place`
            reads it `"disk"` / a folder (a `SpilledTensor` is returned, which the caller closes) or `"auto"`.
        scale: for a stage that rounds sizes up, its output pixels per input pixel: `ceil(h * scale)` output rows
            for `h` input rows (e.g. `Fraction(1, 8)` for stride-8 convolutions that pad a size that is not a
            multiple of 8). Tiles must then start on its grid (core and halo multiples of `1 / scale`); a core
            that ends at the border of `x` may end between grid points. Not with GroupNorms in `modules`.
            None: each tile's size must scale exactly.
    """
    modules = [modules] if isinstance(modules, nn.Module) else modules
    device = x.device if device is None else torch.device(device)
    out_place = offload_place(out_device)
    norms = list(dict.fromkeys(m for module in modules for m in module.modules() if isinstance(m, nn.GroupNorm)))
    if scale is not None and norms:
        # A GroupNorm's core window is found from its own layer's scale, which rounded sizes leave undefined.
        raise ValueError("Tiles of a stage that rounds sizes up (`scale`) cannot share GroupNorm statistics.")
    core_h, core_w = (core, core) if isinstance(core, int) else core
    rows, columns = halo_spans(x.shape[-2], core_h, halo), halo_spans(x.shape[-1], core_w, halo)
    tiles = [(row, column) for row in rows for column in columns]
    if all(span.start == 0 and span.end == x.shape[-2] for span in rows) and all(
        span.start == 0 and span.end == x.shape[-1] for span in columns
    ):
        return _hold(stage(x.to(device)), out_place)  # every tile would read the whole input: one untiled pass
    statistics: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}
    state: dict = {"running": None}

    # Torch's own module hooks (not `forward`, where diffusers and accelerate put theirs) say which GroupNorm runs.
    def enter(module: nn.GroupNorm, args) -> None:
        state["running"] = module

    def leave(module: nn.GroupNorm, args, output) -> None:
        state["running"] = None
        if state.pop("taken", False):
            raise _StatisticsTaken

    handles = [norm.register_forward_pre_hook(enter) for norm in norms]
    handles += [norm.register_forward_hook(leave) for norm in norms]
    try:
        with _SharedGroupNorm(state, statistics):
            while True:
                state.update(target=None, moments=None)
                out = _tile_pass(stage, x, tiles, device, out_place, state, scale)
                if state["target"] is None:
                    return out
                _close(out)  # not reached normally: a statistics pass stops every tile before it finishes
                count, mean, m2 = state["moments"]
                statistics[state["target"]] = (mean, torch.rsqrt(m2 / count + state["target"].eps))
    finally:
        for handle in handles:
            handle.remove()


def _tile_pass(stage, x, tiles: list, device: torch.device, out_place, state: dict, scale):
    """One pass of `tiled_with_shared_group_norm` over the tiles: None when every tile stopped at the GroupNorm
    being measured, else the stage's output assembled from the tiles' cores (closed again on an exception)."""
    out = None
    try:
        for row, column in tiles:
            state["tile"] = (row, column)
            try:
                part = stage(x[..., row.start : row.end, column.start : column.end].to(device))
            except _StatisticsTaken:
                continue
            height, out_rows, in_rows = _core_window(row, x.shape[-2], part.shape[-2], scale)
            width, out_columns, in_columns = _core_window(column, x.shape[-1], part.shape[-1], scale)
            if out is None:
                out = _new_boundary(part, (*part.shape[:-2], height, width), out_place)
            out[..., out_rows, out_columns] = part[..., in_rows, in_columns]
            del part
    except BaseException:
        _close(out)
        raise
    return out


def _core_window(span: TileSpan, size: int, tile_size: int, scale: int | Fraction | None) -> tuple[int, slice, slice]:
    """Along one axis of `size` input pixels: the stage output's size, where the core of the tile `span` goes in it,
    and where that core is in the tile's output of `tile_size` pixels (`tiled_with_shared_group_norm`'s `scale`)."""
    if scale is None:
        exact = Fraction(tile_size, span.end - span.start)
        whole = slice(int(span.core_start * exact), int(span.core_end * exact))
        return int(size * exact), whole, span.core_in_tile(exact)
    start, offset = span.core_start * Fraction(scale), (span.core_start - span.start) * Fraction(scale)
    if start.denominator != 1 or offset.denominator != 1 or tile_size != math.ceil((span.end - span.start) * scale):
        raise ValueError(
            f"A tile [{span.start}, {span.end}) with its core from {span.core_start} gave {tile_size} px: tiles of a "
            f"stage of scale {scale} (sizes rounded up) start on its grid and give ceil(size * {scale}) px."
        )
    end = math.ceil(span.core_end * scale)
    return math.ceil(size * scale), slice(int(start), end), slice(int(offset), int(offset) + end - int(start))


class TileStep(NamedTuple):
    """One step of a stage tiled in layer order (`tiled_in_layer_order`): `run` (module calls, local in space apart
    from the GroupNorms of `modules`) reads at most `halo` of its input pixels beyond an output pixel's own.
    `per_frame`: the step works on each frame (dim 2 of a video) alone, GroupNorm statistics included."""

    run: Callable[[torch.Tensor], torch.Tensor]
    halo: int
    modules: nn.Module | list[nn.Module]
    per_frame: bool = False


def tiled_in_layer_order(
    steps: list[TileStep],
    x: torch.Tensor,
    core: int | tuple[int, int],
    offload_device: torch.device | str | os.PathLike | None = None,
) -> torch.Tensor:
    r"""Run `steps` one after the other on spatial tiles of `x`, so that the result equals running them untiled
    up to float rounding: the exact tiles of a stage made of many GroupNorm layers, at a small multiple of the
    untiled compute.

    Each step runs over all tiles (`tiled_with_shared_group_norm`, with the step's own halo and GroupNorm
    statistics shared over all tiles) before the next one starts, and its tile cores are pasted into one whole
    output (a step boundary) that the next step cuts again. A halo is thus only the reach of one step (a few
    pixels), not of the whole stage, and a GroupNorm's statistics are measured by re-running at most the part of its
    own step before it (re-running the stage from its input for every GroupNorm costs one partial pass per
    GroupNorm instead). Memory: a step's whole input and output plus one tile's activations, below the untiled
    peak, which holds the same input and output and every activation in between at full size. The step boundaries
    grow with the frame (GroupNorm statistics span it, so a step must finish on every tile before the next starts);
    `offload_device` says where they live, so that the tiles' device holds one tile's activations (and the windows
    it reads) only.

    Args:
        steps: the stage, in order; a step's output may be smaller or larger than its input (down- or upsampling)
            by a factor that is the same for every input. Leading steps marked `per_frame` run one frame (dim 2)
            at a time, so that only the last of them holds a whole-clip output.
        x: the stage input; tiling is over its last two dimensions.
        core: tile core (one size, or `(height, width)`) in pixels of `x`; at each step it is scaled with the
            step's input, and must stay a whole number of pixels (a multiple of every downsampling factor).
        offload_device: where the step boundaries live (`offload_place`): None, where `x` is; a device (e.g.
            `"cpu"` while the tiles run on an accelerator; the result is returned there too; ignored for tensors
            without data, e.g. on `meta`); `"disk"` or a folder: in temporary files there (`SpilledTensor`), freed
            as soon as the next step has read them and when the call ends, also on an exception; `"auto"`: on the
            CPU on disk (in memory where the temp folder is a RAM disk or short of space), on an accelerator where
            `x` is while a boundary takes at most `AUTO_SPILL_SHARE` of the memory available there, else in CPU
            memory or on disk (`AUTO_SPILL_SHARE`'s comment says why). The tiles and, unless on a device, the
            result stay where `x` is.
    """
    place = offload_place(offload_device)
    result = place if isinstance(place, torch.device) and has_values(x) else None
    core = (core, core) if isinstance(core, int) else tuple(core)
    leading = next((index for index, step in enumerate(steps) if not step.per_frame), len(steps))
    if leading == 0 or x.ndim != 5 or x.shape[2] == 1:
        return _in_layer_order(steps, [x], core, x.shape[-2:], x.device, place, result)
    # The leading per-frame steps run one frame at a time: their whole inputs and outputs are one frame's, and only
    # their last output is assembled for the whole clip (in place, frame by frame), as any boundary is kept.
    h = None
    try:
        for index, frame in enumerate(x.split(1, dim=2)):
            out = _in_layer_order(steps[:leading], [frame], core, x.shape[-2:], x.device, place, result)
            if h is None:  # a boundary, unless the per-frame steps are all the stage
                whole = (*out.shape[:2], x.shape[2], *out.shape[3:])
                h = _new_boundary(out, whole, place if leading < len(steps) else result)
            h[:, :, index : index + 1] = out
            del out
    except BaseException:
        _close(h)
        raise
    holder = [h]
    del h  # the loop below frees it once the next step's output is complete
    return _in_layer_order(steps[leading:], holder, core, x.shape[-2:], x.device, place, result, owned=True)


def _in_layer_order(
    steps: list[TileStep],
    inputs: list,
    core: tuple[int, int],
    reference: tuple[int, int],
    device: torch.device,
    place,
    result,
    owned: bool = False,
) -> torch.Tensor:
    """`tiled_in_layer_order`'s loop over `steps`; `core` is in pixels of a `reference` (height, width) frame.
    Step boundaries are kept as `place` says, the last output as `result` does. `inputs` holds the input alone and
    is emptied, so that no reference outlives the first step's output; an `owned` input is a boundary of the
    caller's, closed here once read."""
    h = inputs.pop()
    core_h, core_w = core
    height, width = reference
    try:
        for index, step in enumerate(steps):
            cores = []
            for size, reference, length in ((h.shape[-2], height, core_h), (h.shape[-1], width, core_w)):
                scaled = Fraction(length) * Fraction(size, reference)
                if scaled.denominator != 1:
                    raise ValueError(
                        f"A tile core of {length} px is {scaled} px at a layer of {size} px: use a core that is a "
                        f"multiple of the stage's downsampling factor ({Fraction(reference, size)})."
                    )
                cores.append(int(scaled))
            out_device = result if index == len(steps) - 1 else place
            out = tiled_with_shared_group_norm(
                step.run, h, step.modules, tuple(cores), step.halo, device=device, out_device=out_device
            )
            if owned:
                _close(h)
            h, owned = out, True
            del out
        return h
    except BaseException:
        if owned:
            _close(h)
        raise


def blend_tiles_as_they_come(
    tiles: Iterable[tuple[torch.Tensor, ...]],
    starts_h: list[int],
    starts_w: list[int],
    scales: tuple[int | Fraction, ...] = (1,),
) -> Iterator[tuple[torch.Tensor, ...]]:
    """`blend_tile_grid` for tiles made one at a time: yields each tile of `tiles` (row-major, a tuple of maps per
    tile) blended with its upper and left neighbours, the same numbers as `blend_tile_grid` gives, while holding
    only what later tiles blend with: the bottom overlap of the previous row's tiles and the right overlap of the
    tile on the left (not the grid), so that memory does not grow with the frame.

    Map k of tile `(i, j)` starts at `scales[k] * (starts_h[i], starts_w[j])` in its own pixels (e.g. a feature
    pyramid's levels at 1, 1/2, 1/4 of the frame); each map is blended with the same map of its neighbours.
    """

    def overlap(size: int, starts: list[int], index: int, scale: int | Fraction) -> int:
        """Rows (columns) of a tile of `size` that the next tile along the axis blends with (0 for the last)."""
        if index + 1 >= len(starts):
            return 0
        step = scale * (starts[index + 1] - starts[index])
        if step != int(step):
            raise ValueError(f"A tile step of {starts[index + 1] - starts[index]} is {step} px at scale {scale}.")
        return max(0, min(size, size - int(step)))

    above: list[tuple[torch.Tensor | None, ...] | None] = [None] * len(starts_w)
    left: tuple[torch.Tensor | None, ...] | None = None
    count = 0
    for tile in tiles:  # not `enumerate`, whose reused result tuple would keep the unblended maps alive
        i, j = divmod(count, len(starts_w))
        if j == 0:
            left = None
        if len(tile) != len(scales):
            raise ValueError(f"A tile has {len(tile)} maps; {len(scales)} scales were given.")
        blended = []
        for k, part in enumerate(tile):
            if above[j] is not None and above[j][k] is not None:
                part = blend(above[j][k], part, above[j][k].shape[-2], dim=-2)
            if left is not None and left[k] is not None:
                part = blend(left[k], part, left[k].shape[-1], dim=-1)
            blended.append(part)
        del tile, part  # the unblended maps: only the blended ones are held while the caller uses them
        # Copies of the overlaps, so that the rest of the tile is freed once the caller is done with it.
        below = [overlap(p.shape[-2], starts_h, i, scale) for scale, p in zip(scales, blended)]
        right = [overlap(p.shape[-1], starts_w, j, scale) for scale, p in zip(scales, blended)]
        above[j] = tuple(p[..., -e:, :].clone() if e else None for p, e in zip(blended, below))
        left = tuple(p[..., -e:].clone() if e else None for p, e in zip(blended, right))
        count += 1
        yield tuple(blended)
        del blended
    if count != len(starts_h) * len(starts_w):
        raise ValueError(f"{count} tiles were given for a grid of {len(starts_h)} x {len(starts_w)}.")


def _one_map_each(tiles: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor]]:
    """Each tile as a one-map tuple; the tile is let go before the next is made (a generator expression would
    hold it while the next one is computed)."""
    for tile in tiles:
        yield (tile,)
        del tile


def stitch_tiles_as_they_come(
    tiles: Iterable[torch.Tensor],
    starts_h: list[int],
    starts_w: list[int],
    size: tuple[int, int],
    scale: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`stitch_blended_tiles` for tiles made one at a time (e.g. a generator that decodes each tile when asked):
    the same numbers, but each tile is blended (`blend_tiles_as_they_come`) and its kept part written into the
    output as soon as it comes, so that besides the output only the overlaps later tiles blend with are held, not
    the whole grid of tiles.

    `tiles`: row-major over the grid `starts_h x starts_w` (starts in input units, `scale` output units per input
    unit); `size`: the output's (height, width), where the last row and column of tiles end. `out`: where to
    write (e.g. a view of a larger tensor, or anything that takes `out[..., rows, columns] = tile`), returned;
    by default a new tensor.
    """
    columns = len(starts_w)
    blended = blend_tiles_as_they_come(_one_map_each(tiles), starts_h, starts_w, (scale,))
    index = 0
    for (tile,) in blended:  # not `enumerate`, whose reused result tuple would keep the previous tile alive
        i, j = divmod(index, columns)
        index += 1
        top, left = scale * (starts_h[i] - starts_h[0]), scale * (starts_w[j] - starts_w[0])
        keep_h = scale * (starts_h[i + 1] - starts_h[i]) if i + 1 < len(starts_h) else tile.shape[-2]
        keep_w = scale * (starts_w[j + 1] - starts_w[j]) if j + 1 < columns else tile.shape[-1]
        if out is None:
            out = tile.new_empty(*tile.shape[:-2], *size)
        if (i + 1 == len(starts_h) and top + keep_h != size[0]) or (j + 1 == columns and left + keep_w != size[1]):
            raise ValueError(f"The last tiles end at {top + keep_h} x {left + keep_w}, not at the output's {size}.")
        out[..., top : top + keep_h, left : left + keep_w] = tile[..., :keep_h, :keep_w]
        del tile
    return out
