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

import contextlib
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = [
    "LiveTensorBytes",
    "MemoryEstimate",
    "PeakMemory",
    "TILING_MODES",
    "accelerator_available",
    "available_memory_bytes",
    "cgroup_memory_headroom",
    "choose_tiling",
    "enable_tiling",
    "estimate_memory",
    "gib",
    "meta_copy",
    "resident_bytes",
    "traced_as",
    "traced_device",
]

# Fraction of the available memory an untiled run may use before `choose_tiling(..., "auto")` turns tiling on.
MEMORY_HEADROOM = 0.7
TILING_MODES = ("auto", "on", "exact", "off")


def gib(num_bytes: float | None) -> str:
    """Bytes as GiB for messages; None (a run the model refuses, e.g. untiled past its limits) as "n/a"."""
    return "n/a" if num_bytes is None else f"{num_bytes / 1024**3:.2f} GiB"


def accelerator_available() -> bool:
    """Whether torch sees a CUDA, XPU or MPS device (else accelerate must be told to run on CPU, with gloo)."""
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def available_memory_bytes(device: torch.device | None = None) -> int:
    """Memory that could be allocated now: free memory on an accelerator whose backend reports it
    (`torch.cuda.mem_get_info`, `torch.xpu.mem_get_info`), else host memory: the smaller of the OS's available
    memory (psutil) and the headroom under this process's cgroup memory limit (`cgroup_memory_headroom`), since a
    container that goes past its limit is killed however much memory the host has free."""
    if device is not None and device.type not in ("cpu", "meta"):
        mem_get_info = getattr(getattr(torch, device.type, None), "mem_get_info", None)
        if mem_get_info is not None:
            return int(mem_get_info(device)[0])
    available = int(psutil.virtual_memory().available)
    headroom = cgroup_memory_headroom()
    return available if headroom is None else min(available, headroom)


# The device a run on `meta` stands for (`traced_as`): exact tiles' `"auto"` offload (`_tiling._boundary_place`)
# places the step boundaries of tensors without data as on it, so that a trace counts a boundary only where that
# device would hold it.
_TRACED_DEVICE = [torch.device("cpu")]


@contextlib.contextmanager
def traced_as(device: torch.device) -> Iterator[None]:
    """Within this block, tensors without data (a traced run on `meta`) stand for tensors on `device`."""
    _TRACED_DEVICE.append(torch.device(device))
    try:
        yield
    finally:
        _TRACED_DEVICE.pop()


def traced_device() -> torch.device:
    """The device tensors without data stand for (`traced_as`; the CPU outside it)."""
    return _TRACED_DEVICE[-1]


# Where the cgroup file systems are mounted (a v2 hierarchy, or v1 controllers in folders such as `memory/`) and
# which cgroup this process is in; module constants so that tests can point them at a fake tree.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit count (9223372036854771712); no real limit is near.
_CGROUP_V1_NO_LIMIT = 2**60


def cgroup_memory_headroom() -> int | None:
    """Bytes this process's cgroups let it allocate before their memory limit: the smallest headroom over its cgroup
    and the ancestors that have a limit, on cgroup v2 (`memory.max` - `memory.current`) and v1 (the memory
    controller's `memory.limit_in_bytes` - `memory.usage_in_bytes`). The inactive file cache (`memory.stat`) counts
    as headroom: the kernel reclaims it before it kills, as psutil's "available" counts the host's. None when no
    limit is known: no cgroup, no limit ("max", or v1's huge "no limit"), or any file that cannot be read."""
    try:
        lines = PROC_SELF_CGROUP.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if not controllers:  # "0::/path", the v2 hierarchy
            files = ("memory.max", "memory.current", "inactive_file")
            headrooms += _cgroup_headrooms(CGROUP_ROOT, path, *files)
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            headrooms += _cgroup_headrooms(CGROUP_ROOT / "memory", path, *files)
    return min(headrooms, default=None)


def _cgroup_headrooms(mount: Path, path: str, limit_file: str, usage_file: str, inactive_key: str) -> list[int]:
    """The headroom of each level that has a limit, from the cgroup at `path` up to the mount's root. In a container
    the mount's root is often the container's own cgroup while `path` names it as the host sees it (a folder that
    does not exist here): levels that cannot be read are skipped, and the root is always read."""
    parts = [part for part in path.split("/") if part]
    headrooms = []
    for depth in range(len(parts), -1, -1):
        folder = mount.joinpath(*parts[:depth])
        try:
            limit = (folder / limit_file).read_text(encoding="utf-8").strip()
            if limit == "max" or int(limit) >= _CGROUP_V1_NO_LIMIT:
                continue
            in_use = int((folder / usage_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        headrooms.append(max(0, int(limit) - max(0, in_use - _memory_stat(folder, inactive_key))))
    return headrooms


def _memory_stat(folder: Path, key: str) -> int:
    """One counter of the cgroup's `memory.stat` (0 when it cannot be read: no reclaimable memory assumed)."""
    try:
        for line in (folder / "memory.stat").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def resident_bytes(device: torch.device | None = None) -> int:
    """Memory in use now, what a run's peak starts from: `torch.cuda.memory_allocated` on CUDA (weights and inputs
    already there), else the process's resident set (interpreter, libraries, weights, inputs)."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return int(psutil.Process().memory_info().rss)


@dataclass
class MemoryEstimate:
    """Bytes an encode + decode needs on top of what is in use, untiled and tiled, and what is available.

    `untiled` / `tiled`: the peak of the tensors the run creates (activations, caches, outputs), traced at the real
    clip shape. `resident`: what was in use when estimated (`resident_bytes`), so `resident + untiled` is the
    predicted peak of the process (RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA).
    """

    untiled: int | None
    tiled: int
    available: int
    resident: int = 0

    def fits_untiled(self) -> bool:
        """False also when the model cannot run the clip untiled at all (`untiled` None)."""
        return self.untiled is not None and self.untiled <= MEMORY_HEADROOM * self.available

    def peak(self, tiled: bool = False) -> int:
        """The predicted peak of the process: what is resident plus the run's own tensors."""
        return self.resident + (self.tiled if tiled or self.untiled is None else self.untiled)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create while the mode is active and that are still alive; `peak` is
    the most at once.

    A storage counts from the op that returns it until the last tensor seen on it is garbage collected (weakref
    finalizers; storages are told apart by their C++ address while alive). Outputs that share an input's storage
    (views, in-place ops on tensors made outside) allocate nothing. Run on the `meta` device, this costs no memory
    and no arithmetic: what a run would allocate, at its real shape, in Python time per op.

    `conv_workspace`: count, during each convolution, the scratch space the CPU kernel (oneDNN) takes besides its
    output: measured on this project's CPU runs as the larger of the convolution's input and output
    (`CONV_WORKSPACE_NOTE`). Off, only the tensors ops return are counted (what the tests compare with real runs).
    """

    def __init__(self, conv_workspace: bool = False):
        super().__init__()
        self.conv_workspace = conv_workspace
        # storage address -> [bytes, tensors seen on it still alive, creation number]
        self._live: dict[int, list[int]] = {}
        self._created = 0
        self._frames: list[_Frame] = []  # module calls being recorded, innermost last (`_ModuleReplay`)
        self._window = 0  # the peak since the innermost recorded module call began
        self.current = 0
        self.peak = 0

    def _note(self, num_bytes: int) -> None:
        if num_bytes > self._window:
            self._window = num_bytes
            self.peak = max(self.peak, num_bytes)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.current -= entry[0]
            for frame in self._frames:
                if entry[2] < frame.created:
                    frame.pure = False  # a recorded call freed something made before it: not replayable

    def _created_at(self, tensor: torch.Tensor) -> int:
        entry = self._live.get(tensor.untyped_storage()._cdata)
        return -1 if entry is None else entry[2]

    def _check_reads(self, args, kwargs) -> None:
        """A recorded call that reads a tensor it neither made, took as an argument, nor owns (parameters) depends
        on state outside it: its record would not hold for another call with the same arguments."""
        for tensor in tree_flatten((args, kwargs))[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            created = self._created_at(tensor)
            for frame in reversed(self._frames):
                if created >= frame.created:
                    break
                if tensor.untyped_storage()._cdata not in frame.allowed:
                    frame.pure = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._frames:
            self._check_reads(args, kwargs)
        inputs = None
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self._live:
                if inputs is None:
                    leaves = tree_flatten((args, kwargs))[0]
                    inputs = {t.untyped_storage()._cdata for t in leaves if isinstance(t, torch.Tensor)}
                if key in inputs:
                    continue  # a view of, or an in-place op on, a tensor made outside the mode
                self._live[key] = [storage.nbytes(), 0, self._created]
                self._created += 1
                self.current += storage.nbytes()
                self._note(self.current)
            self._live[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        if self.conv_workspace and func is torch.ops.aten.convolution.default:
            self._note(self.current + max(_tensor_bytes(args[0]), _tensor_bytes(out)))
        return out


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


CONV_WORKSPACE_NOTE = (
    "CPU convolutions (oneDNN, float32) were measured to take scratch space about the size of the larger of their "
    "input and output (reordered copies) on top of the output; GroupNorm, activations, interpolation and fused "
    "attention took none."
)


class _FusedAttention(TorchFunctionMode):
    """On `meta`, `F.scaled_dot_product_attention` falls back to its math form, which materialises the attention
    matrix; CPUs and GPUs run a fused kernel that does not. The trace calls the fused CPU kernel's meta function
    instead (same output, no matrix), so it allocates what a real run does."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or kwargs.get("enable_gqa"):
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, **dict(zip(names, args))}
        bound.update(kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            bound["query"],
            bound["key"],
            bound["value"],
            bound["dropout_p"],
            bound["is_causal"],
            attn_mask=bound["attn_mask"],
            scale=bound["scale"],
        )[0]


@dataclass
class _Frame:
    """A module call being recorded: what it may read besides what it makes (its arguments' and its own
    parameters' storages), the creation number and live bytes when it began, and whether it stayed replayable."""

    allowed: set[int]
    created: int
    current: int
    outer_window: int
    pure: bool = True


_CONSTANTS = (type(None), bool, int, float, str, torch.dtype, torch.device)
_IMPURE = "impure"


@dataclass
class _Record:
    """What a pure module call did, as far as memory goes: the peak above the live bytes it began with, and its
    outputs (fresh storages, or views of its arguments), so that a later call with the same key needs no trace."""

    peak: int
    storages: list[tuple[int, torch.dtype, torch.device]]  # fresh storages: elements, dtype, device
    outputs: list[tuple]  # per output leaf: ("new", storage, view) | ("arg", leaf, view) | ("const", value)
    spec: object

    def replay(self, live: LiveTensorBytes, leaves: list) -> object:
        live._note(live.current + self.peak)
        made = [torch.empty(size, dtype=dtype, device=device) for size, dtype, device in self.storages]
        values = []
        for kind, where, *view in self.outputs:
            if kind == "const":
                values.append(where)
            elif kind == "new":
                values.append(made[where].as_strided(*view))
            else:
                size, stride, offset = view
                values.append(leaves[where].as_strided(size, stride, leaves[where].storage_offset() + offset))
        return tree_unflatten(values, self.spec)


def _call_key(module: torch.nn.Module, leaves: list, spec) -> tuple | None:
    """What a module call's allocations depend on: the module, its arguments' shapes, strides, dtypes, devices and
    which share a storage, and the non-tensor arguments; None when an argument is no plain value (not replayed).
    A storage offset is left out: a tile is a window of a whole frame, and offsets change no allocation."""
    if torch.overrides._get_current_function_mode_stack()[1:]:
        return None  # a function mode besides `_FusedAttention` (shared-GroupNorm tiles) changes what ops do
    parts: list = [id(module), module.training, torch.is_grad_enabled(), spec]
    storages: dict[int, int] = {}
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            alias = storages.setdefault(leaf.untyped_storage()._cdata, len(storages))
            parts.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device, alias))
        elif isinstance(leaf, _CONSTANTS):
            parts.append((type(leaf), leaf))
        else:
            return None
    return tuple(parts)


class _ModuleReplay(ModelHook):
    """Records each pure call of a module on the trace's `LiveTensorBytes` and replays the record when the same
    call (`_call_key`) comes again: tiles and frame chunks of one shape are traced once.

    Pure: the call read only its arguments, its own parameters and what it made; freed nothing made before it; and
    of what it made, only its outputs are alive when it returns. Then its memory effect is its peak above the start
    and its outputs, whatever runs around it, and the replay adds exactly that (`_Record.replay`)."""

    def __init__(self, tracer: _ReplayingTrace):
        super().__init__()
        self.tracer = tracer

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        live, forward = self.tracer.live, self.fn_ref.original_forward
        if live is None:
            return forward(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        key = _call_key(module, leaves, spec)
        key = key and (live.conv_workspace, key)  # a record holds for the trace settings it was made under
        record = self.tracer.records.get(key, _IMPURE) if key is not None else _IMPURE
        if record is not _IMPURE:
            self.tracer.replayed += 1
            return record.replay(live, leaves)
        if key is None or key in self.tracer.records:
            return forward(*args, **kwargs)
        allowed = {t.untyped_storage()._cdata for t in leaves if isinstance(t, torch.Tensor)}
        allowed.update(self.tracer.owned(module))
        frame = _Frame(allowed, live._created, live.current, live._window)
        live._frames.append(frame)
        live._window = live.current
        try:
            out = forward(*args, **kwargs)
        finally:
            live._frames.pop()
            peak, live._window = live._window, max(frame.outer_window, live._window)
        self.tracer.records[key] = _record(live, frame, peak, out, leaves)
        return out


def _record(live: LiveTensorBytes, frame: _Frame, peak: int, out, leaves: list) -> _Record | str:
    """The record of a finished call, or `_IMPURE` (see `_ModuleReplay`)."""
    if not frame.pure:
        return _IMPURE
    out_leaves, spec = tree_flatten(out)
    args = {}
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            args.setdefault(leaf.untyped_storage()._cdata, index)
    fresh: dict[int, int] = {}
    storages, outputs = [], []
    for leaf in out_leaves:
        if not isinstance(leaf, torch.Tensor):
            if not isinstance(leaf, _CONSTANTS):
                return _IMPURE
            outputs.append(("const", leaf))
            continue
        key = leaf.untyped_storage()._cdata
        view = (tuple(leaf.shape), leaf.stride(), leaf.storage_offset())
        if live._created_at(leaf) >= frame.created:
            if key not in fresh:
                fresh[key] = len(storages)
                storages.append((leaf.untyped_storage().nbytes(), leaf.dtype, leaf.device))
            elif storages[fresh[key]][1] != leaf.dtype:
                return _IMPURE
            outputs.append(("new", fresh[key], *view))
        elif key in args:
            offset = leaf.storage_offset() - leaves[args[key]].storage_offset()
            outputs.append(("arg", args[key], view[0], view[1], offset))
        else:
            return _IMPURE  # a view of a parameter or of something the caller did not pass
    if live.current - frame.current != sum(size for size, _, _ in storages):
        return _IMPURE  # something it made besides its outputs is still alive (kept on the side)
    elements = [(size // dtype.itemsize, dtype, device) for size, dtype, device in storages]
    return _Record(peak - frame.current, elements, outputs, spec)


class _ReplayingTrace:
    """`_ModuleReplay` hooks on every module of a `meta` copy that has children (a leaf is one op: nothing to
    save), sharing one table of records across the copy's traces (untiled, then tiled)."""

    def __init__(self, model: torch.nn.Module):
        self.live: LiveTensorBytes | None = None
        self.records: dict[tuple, _Record | str] = {}
        self.replayed = 0
        self._owned: dict[int, set[int]] = {}
        for module in model.modules():
            if module is not model and next(module.children(), None) is not None:
                HookRegistry.check_if_exists_or_initialize(module).register_hook(_ModuleReplay(self), "memory_replay")

    def owned(self, module: torch.nn.Module) -> set[int]:
        if id(module) not in self._owned:
            tensors = [*module.parameters(), *module.buffers()]
            self._owned[id(module)] = {t.untyped_storage()._cdata for t in tensors}
        return self._owned[id(module)]


# The types of a model's plain settings, which `meta_copy` carries over; devices and folders are forms of
# `tile_offload_device` (see `_tiling.offload_place`), which decides what a traced run counts.
_SETTING_TYPES = (bool, int, float, str, type(None), torch.device, os.PathLike)


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model (config, dtype, tiling and slicing settings) with every parameter and buffer on `meta`.

    Built from the config under `torch.device("meta")`: no weight is copied or initialised; the settings are the
    model's plain attributes (`use_tiling`, `tile_sample_*`, `use_slicing`, ...).
    """
    with torch.device("meta"):
        copy = type(model).from_config(model.config)
    # `.to("meta")` also moves what legacy constructors (`torch.Tensor([...])`) left on the CPU; nn.Module's own
    # `.to` casts without diffusers' warning about modules kept in float32 (a meta copy has no values to keep).
    copy = torch.nn.Module.to(copy, "meta", model.dtype).eval()
    for name, value in vars(model).items():
        if not name.startswith("_") and isinstance(value, _SETTING_TYPES):
            setattr(copy, name, value)
    return copy


def _traced_peak(
    model: torch.nn.Module,
    shape: tuple[int, int, int],
    conv_workspace: bool = False,
    tracer: _ReplayingTrace | None = None,
) -> int:
    """Peak bytes of the tensors an encode + decode of a `(1, 3, T, H, W)` clip creates, traced on `meta`; with a
    `tracer` (hooks on `model`), module calls that repeat are replayed from their first trace."""
    sample = torch.zeros(1, 3, *shape, device="meta", dtype=model.dtype)
    with torch.no_grad(), LiveTensorBytes(conv_workspace) as live, _FusedAttention():
        if tracer is not None:
            tracer.live = live
        try:
            if hasattr(model, "decode_svd_latents"):
                _cascadev_stages(model, sample)
            else:
                model.autoencode(sample)
        finally:
            if tracer is not None:
                tracer.live = None
    return live.peak


def _cascadev_stages(model: torch.nn.Module, sample: torch.Tensor) -> None:
    """CascadeV's decode steps a diffusers scheduler, which cannot run on `meta`: its stages run one by one with
    what a denoising step keeps alive (the effnet latent, the condition, the SVD latents and their noise)."""
    cascadev_decode_on_meta(model, model.encode(sample).latent_dist.mode())


def cascadev_decode_on_meta(model: torch.nn.Module, z: torch.Tensor) -> None:
    """CascadeV's decode of effnet latents `z` as stages that run on `meta`: one DiT step with the tensors a
    denoising step keeps alive, then the SVD decode (see `_cascadev_stages`)."""
    config = model.config
    batch, _, frames, height, width = z.shape
    svd_shape = (batch, config.svd_latent_channels, frames, height * config.sr_scale, width * config.sr_scale)
    state = [torch.zeros(svd_shape, device="meta") for _ in range(3)]  # latents, the step's noise, x0
    condition = torch.zeros(batch, frames, config.latent_channels, *svd_shape[-2:], device="meta")
    x_in = torch.zeros(frames, config.svd_latent_channels, *svd_shape[-2:], device="meta")
    model._predict_noise(x_in, condition[0], torch.zeros((), device="meta"))
    del condition, x_in, state
    model.decode_svd_latents(torch.zeros(svd_shape, device="meta"))


def estimate_memory(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device) -> MemoryEstimate:
    """What an encode + decode of a `(T, H, W)` clip will need, untiled and tiled, on top of what is in use.

    The run is traced at its real shape on a `meta` copy of the model (`LiveTensorBytes`): every tensor it creates
    is counted while alive, and the peak is taken. No data is touched, so the estimate of a 720p clip costs Python
    time per op, not memory or arithmetic; a module call that repeats with the same arguments' shapes (tiles, frame
    chunks, the untiled run's blocks in the tiled one) is traced once and replayed (`_ModuleReplay`), which gives
    the same peak. The tiled figure uses the model's tiles (the defaults when tiling is off). On the CPU each
    convolution's scratch space is counted (`CONV_WORKSPACE_NOTE`); not counted: other kernels' private workspaces
    (cuDNN's on a GPU), allocator rounding and fragmentation.
    """
    copy = meta_copy(model)
    tracer = _ReplayingTrace(copy)
    conv_workspace = device.type == "cpu"
    copy.disable_tiling()
    with traced_as(device):  # exact tiles' boundaries counted where `"auto"` would keep them on `device`
        try:
            untiled = _traced_peak(copy, shape, conv_workspace, tracer)
        except ValueError:  # the model refuses this clip untiled (e.g. frames past Reducio's attention window)
            untiled = None
        if not getattr(model, "use_tiling", False):
            copy.enable_tiling()
        else:
            copy.use_tiling = True
        tiled = _traced_peak(copy, shape, conv_workspace, tracer)
    return MemoryEstimate(
        untiled=untiled,
        tiled=tiled,
        available=available_memory_bytes(device),
        resident=resident_bytes(device),
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


def _tiled_peaks(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device):
    """`side -> bytes`: the traced peak of the run with `side`-px tiles (as `enable_tiling(..., "on", side)` sets
    them), each tile size traced once on one `meta` copy whose records all of them share."""
    copy = meta_copy(model)
    tracer = _ReplayingTrace(copy)
    peaks: dict[int, int] = {}

    def peak(side: int) -> int:
        if side not in peaks:
            enable_tiling(copy, "on", side)
            peaks[side] = _traced_peak(copy, shape, device.type == "cpu", tracer)
        return peaks[side]

    return peak


def choose_tiling(
    model: torch.nn.Module, mode: str, shape: tuple[int, int, int], device: torch.device, tile_size: int | None = None
) -> str:
    """Set the model's tiling for a `(T, H, W)` clip as `mode` says; returns a one-line explanation.

    `"auto"` turns tiles on when the frame is larger than the model runs in one piece (`tiling_limits().max_size`)
    or when `estimate_memory` says the untiled run would not fit; then the tile is the largest (from `tile_size` or
    the model's default, halved as needed) whose estimate, traced with that tile, fits.
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
    tiled_bytes = _tiled_peaks(model, shape, device)
    while (
        tile_size is None and size > 2 * limits.multiple and tiled_bytes(size) > MEMORY_HEADROOM * estimate.available
    ):
        size = max(limits.multiple, size // 2 // limits.multiple * limits.multiple)
    enable_tiling(model, "on", size, shape)
    if too_large:
        why = f"frames larger than {limits.max_size} px"
    elif estimate.untiled is None:
        why = "the model does not run this clip untiled"
    else:
        why = f"untiled needs ~{gib(estimate.untiled)}"
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
