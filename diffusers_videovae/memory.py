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
"""Devices and memory: what is available, what a clip will need, what a block used, and tiling that follows.

from diffusers_videovae.memory import estimate_memory, choose_tiling, PeakMemory

estimate = estimate_memory(vae, (33, 720, 1280), torch.device("cpu"))
print(choose_tiling(vae, "auto", (33, 720, 1280), torch.device("cpu")))   # turns tiling on when needed
with PeakMemory(torch.device("cpu")) as peak:
    ...
print(peak.describe())
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil
import torch

__all__ = [
    "MemoryEstimate",
    "PeakMemory",
    "TILING_MODES",
    "accelerator_available",
    "available_memory_bytes",
    "choose_tiling",
    "enable_tiling",
    "estimate_memory",
    "gib",
]

# Fraction of the available memory an untiled run may use before `choose_tiling(..., "auto")` turns tiling on.
MEMORY_HEADROOM = 0.7
# Peak memory of a reconstruction / largest single layer's input + output (see `estimate_memory`).
ACTIVATION_FACTOR = 6
TILING_MODES = ("auto", "on", "exact", "off")


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 1024**3:.2f} GiB"


def accelerator_available() -> bool:
    """Whether torch sees a CUDA, XPU or MPS device (else accelerate must be told to run on CPU, with gloo)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def available_memory_bytes(device: torch.device | None = None) -> int:
    """Memory that could be allocated now: free CUDA memory on a CUDA device, else the OS's available memory."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


@dataclass
class MemoryEstimate:
    """Bytes of the largest activations an encode + decode needs, untiled and tiled, and what is available."""

    untiled: int
    tiled: int
    available: int

    def fits_untiled(self) -> bool:
        return self.untiled <= MEMORY_HEADROOM * self.available


def _largest_activation(model: torch.nn.Module, shape: tuple[int, int, int], device, dtype) -> int:
    """Largest (input + output) bytes of any single layer while reconstructing a clip of `shape`."""
    largest = 0

    def record(module, inputs, output):
        nonlocal largest
        size = sum(t.numel() * t.element_size() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        largest = max(largest, size)

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        sample = torch.zeros(1, 3, *shape, device=device, dtype=dtype)
        with torch.no_grad():
            model.autoencode(sample)
    finally:
        for handle in handles:
            handle.remove()
    return largest


def estimate_memory(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device) -> MemoryEstimate:
    """Extrapolate peak activation memory for a `(T, H, W)` clip from two tiny probe runs.

    Each probe records the largest single layer's input + output; two frame counts give how it grows with T
    (flat for models that encode in causal chunks), and it grows linearly with H * W for convolutional layers.
    Several activations are alive at once (residual branches, norms, caches, allocator slack): measured peaks of the
    tiny IV-VAE, OD-VAE and Open-Sora models on 17x256x256 were 2.4x to 6x the largest layer, so the result is 6x
    it, on the safe side. An estimate, meant to decide tiling, not to account bytes.
    """
    rule = model.input_rule
    dtype = next(model.parameters()).dtype
    side = 2 * rule.spatial_multiple
    # Probe lengths: valid frame counts one and two temporal groups past the shortest clip.
    group = -(-rule.temporal_compression // rule.step) * rule.step
    frames_a, frames_b = rule.first_num_frames + group, rule.first_num_frames + 2 * group
    was_tiling = getattr(model, "use_tiling", False)
    model.use_tiling = False
    try:
        at_a = _largest_activation(model, (frames_a, side, side), device, dtype)
        at_b = _largest_activation(model, (frames_b, side, side), device, dtype)
    finally:
        model.use_tiling = was_tiling
    per_frame = max(0.0, (at_b - at_a) / (frames_b - frames_a))

    def extrapolate(num_frames: int, height: int, width: int) -> int:
        at_probe_area = at_a + per_frame * max(0, num_frames - frames_a)
        return int(ACTIVATION_FACTOR * at_probe_area * (height * width) / (side * side))

    num_frames, height, width = shape
    tile_h = getattr(model, "tile_sample_min_height", None) or height
    tile_w = getattr(model, "tile_sample_min_width", None) or width
    tile_t = getattr(model, "tile_sample_min_num_frames", None) or num_frames
    return MemoryEstimate(
        untiled=extrapolate(num_frames, height, width),
        tiled=extrapolate(min(num_frames, tile_t), min(height, tile_h), min(width, tile_w)),
        available=available_memory_bytes(device),
    )


def enable_tiling(
    model: torch.nn.Module, mode: str, tile_size: int | None = None, shape: tuple[int, int, int] | None = None
) -> None:
    """Tiling `"on"` (the model's default tiles) or `"exact"` (tiles equal to untiled); `"off"` disables it.

    A custom `tile_size` (pixels) keeps the model's default overlap ratio. Checked against the model's
    `tiling_limits()` and, when the clip's `(T, H, W)` `shape` is given, against what the model can run untiled;
    errors name the command-line flags (`--tiling`, `--tile-size`).
    """
    if mode not in ("on", "exact", "off"):
        raise ValueError(f"tiling mode must be one of on, exact, off; got {mode!r}.")
    limits = model.tiling_limits()
    if tile_size is not None and mode != "off":
        if tile_size <= 0 or tile_size % limits.multiple:
            raise ValueError(f"--tile-size must be a positive multiple of {limits.multiple}, got {tile_size}.")
        if mode == "on" and limits.max_size is not None and tile_size > limits.max_size:
            raise ValueError(
                f"--tile-size {tile_size} is larger than {limits.name}'s largest tile ({limits.max_size} px, what it "
                f"runs in one piece): use --tile-size {limits.max_size} or smaller."
            )
    if shape is not None:
        _check_runs_in_one_piece(limits, mode, shape)
    if mode == "off":
        model.disable_tiling()
        return
    size = {} if tile_size is None else {"tile_sample_min_height": tile_size, "tile_sample_min_width": tile_size}
    model.enable_tiling(**size, exact=mode == "exact")


def _check_runs_in_one_piece(limits, mode: str, shape: tuple[int, int, int]) -> None:
    """Refuse, naming the flags, a frame larger than what the model runs in one piece (Reducio's attention
    window) without blended tiles, which are the only ones that cut the attention."""
    height, width = shape[1:]
    if limits.max_size is None or max(height, width) <= limits.max_size or mode == "on":
        return
    how = "untiled" if mode == "off" else "with exact tiles (their attention spans the whole frame)"
    raise ValueError(
        f"{limits.name} cannot run {height}x{width} frames {how}: its attention window covers at most "
        f"{limits.max_size} px per side. Use --tiling on --tile-size {min(limits.default_size, limits.max_size)} "
        "(blended tiles), or smaller frames (--size)."
    )


def choose_tiling(
    model: torch.nn.Module, mode: str, shape: tuple[int, int, int], device: torch.device, tile_size: int | None = None
) -> str:
    """Set the model's tiling for a `(T, H, W)` clip as `mode` says; returns a one-line explanation.

    `"auto"` turns tiles on when the frame is larger than the model runs in one piece (`tiling_limits().max_size`)
    or when `estimate_memory` says the untiled run would not fit; then the tile is the largest (from `tile_size` or
    the model's default, halved as needed) whose estimate fits.
    """
    if mode != "auto":
        enable_tiling(model, mode, tile_size, shape)
        return mode if tile_size is None or mode == "off" else f"{mode} ({tile_size} px tiles)"
    limits = model.tiling_limits()
    height, width = shape[1:]
    too_large = limits.max_size is not None and max(height, width) > limits.max_size
    estimate = estimate_memory(model, shape, device)
    if estimate.fits_untiled() and not too_large:
        enable_tiling(model, "off")
        return f"off (auto: untiled needs ~{gib(estimate.untiled)}, {gib(estimate.available)} available)"
    default = min(limits.default_size, limits.max_size or limits.default_size)
    size = tile_size or default
    base_area = min(height, model.tile_sample_min_height) * min(width, model.tile_sample_min_width)

    def tiled_bytes(side: int) -> float:
        return estimate.tiled * min(height, side) * min(width, side) / base_area

    while (
        tile_size is None and size > 2 * limits.multiple and tiled_bytes(size) > MEMORY_HEADROOM * estimate.available
    ):
        size = max(limits.multiple, size // 2 // limits.multiple * limits.multiple)
    enable_tiling(model, "on", size, shape)
    why = f"frames larger than {limits.max_size} px" if too_large else f"untiled needs ~{gib(estimate.untiled)}"
    return f"on (auto: {why}; {size} px tiles, ~{gib(tiled_bytes(size))}, {gib(estimate.available)} available)"


class PeakMemory:
    """Peak memory of a block: `torch.cuda.max_memory_allocated` on CUDA, else the process RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: "5" resets VmHWM to the current RSS, so the peak is this block's
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _rss_high_water_mark()

    def describe(self) -> str:
        what = "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process peak RSS"
        return f"{gib(self.peak)} ({what})"


def _rss_high_water_mark() -> int:
    # VmHWM (Linux) is the peak since the last reset in `PeakMemory.__enter__`; psutil does not expose it.
    try:
        with open("/proc/self/status") as handle:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", handle.read())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
