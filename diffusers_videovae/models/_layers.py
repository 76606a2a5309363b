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
"""Layers and calls that several models build the same way: the gradient-checkpointed block call and the
"nearest 2x upsample, then 3-tap convolution" computed on the low-resolution input."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NearestUpsampleConvMixin", "checkpointed"]


def checkpointed(owner: nn.Module, block: nn.Module, *args: Any) -> Any:
    """`block(*args)`, through diffusers' gradient checkpointing when `owner` has it on and autograd records.

    `owner` is a module with a `gradient_checkpointing` attribute, which `ModelMixin.enable_gradient_checkpointing`
    switches on together with `owner._gradient_checkpointing_func` (as diffusers' `Encoder` / `Decoder` run their
    blocks). The block is recomputed in the backward pass, so it must be pure: everything it reads comes in `args`.
    """
    if torch.is_grad_enabled() and owner.gradient_checkpointing:
        return owner._gradient_checkpointing_func(block, *args)
    return block(*args)


def _fold_taps(weight: torch.Tensor, phase: int, dim: int) -> torch.Tensor:
    """The 3 taps of `weight` along `dim` -> the 2 taps that output phase `phase` of a nearest 2x upsampling applies
    to the low-resolution input: phase 0 reads pixels (i - 1, i) with (k0, k1 + k2), phase 1 reads (i, i + 1) with
    (k0 + k1, k2)."""
    first, middle, last = weight.unbind(dim)
    pair = (first, middle + last) if phase == 0 else (first + middle, last)
    return torch.stack(pair, dim)


_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class NearestUpsampleConvMixin:
    """For an `nn.Conv2d` / `nn.Conv3d` subclass with a kernel of 3 and stride 1: nearest 2x upsampling of some of its
    dimensions, then this convolution, computed on the input BEFORE upsampling (the upsampled tensor never exists).

    Each output pixel of "upsample, then 3-tap convolution" sees only 2 distinct input pixels along an upsampled
    dimension, so the output splits into 2 phases per upsampled dimension, each a 2-tap convolution of the input whose
    kernel sums the taps that read the same pixel (2.25x fewer multiply-adds for 2 dimensions, 3.4x for 3). Equal to
    the two-step form up to float rounding. The phase kernels are folded from this module's own `weight` on every
    call (a pass over the weights, small next to the convolution), so hooks that cast or move the weight apply.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    out_channels: int

    def upsample_then_convolve(
        self, x: torch.Tensor, upsampled: Sequence[bool], padding: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """`x: (N, C, *sizes)` -> `conv(pad(interpolate(x)))` with one entry of `upsampled` (whether that dimension
        is doubled) and of `padding` (zeros `(before, after)`, in input pixels) per dimension of `sizes`.

        Along a dimension of size `s` padded by `(b, a)`, the output has `s + b + a - 2` pixels, twice that when the
        dimension is upsampled: padding `(1, 1)` is the usual 'same' padding; other values let a caller convolve a
        slice of `x` that carries its neighbours.
        """
        batch, sizes = x.shape[0], x.shape[2:]
        x = F.pad(x, [side for pad in reversed(padding) for side in pad])
        kept = [size + before + after - 2 for size, (before, after) in zip(sizes, padding)]
        out_sizes = [2 * n if up else n for n, up in zip(kept, upsampled)]
        out = x.new_empty(batch, self.out_channels, *out_sizes)
        convolve = _CONVOLUTIONS[len(sizes)]
        for phases in itertools.product(*((0, 1) if up else (None,) for up in upsampled)):
            kernel = self.weight
            reads, writes = [slice(None)] * 2, [slice(None)] * 2
            for dim, (phase, n) in enumerate(zip(phases, kept)):
                if phase is None:
                    reads.append(slice(None))
                    writes.append(slice(None))
                else:
                    kernel = _fold_taps(kernel, phase, dim + 2)
                    reads.append(slice(phase, phase + n + 1))
                    writes.append(slice(phase, None, 2))
            # One phase at a time: one phase's output is the only temporary.
            out[tuple(writes)] = convolve(x[tuple(reads)], kernel, self.bias)
        return out
