"""Measure wall time and peak memory of one call in a fresh process, so that runs do not disturb each other.

Peak memory is the peak resident set size (VmHWM) of the child process during the measured call only: the
high-water mark is reset (Linux `/proc/self/clear_refs`) after the set-up, so weights and inputs already in
memory count, but allocations made before the call (e.g. while building the model) do not inflate it. With
`device=` (every benchmark's `--device`), the set-up's modules and tensors are moved there, the peak accelerator
memory (`torch.cuda.max_memory_allocated`, reset after the set-up) is reported beside the RSS, and the device is
synchronised before each clock reading (`synchronize`, `Stopwatch`), so that times cover the queued kernels.

The roofline helpers at the end work in the calling process instead (`bench_roofline.py`): the FLOPs of a call and
its convolution configurations (`count_flops`, `ConvRecorder`), stand-alone probes of one convolution or an sgemm
(`conv_probe`, `matmul_probe`), self time per op type (`profile_op_types`) and `timed`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import multiprocessing as mp
import os
import statistics
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def _read_hwm_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def add_device_argument(parser) -> None:
    """`--device` (default cpu), the same option in every benchmark."""
    parser.add_argument(
        "--device", default="cpu", help="where models and clips run: cpu, cuda, cuda:1, xpu, mps (default cpu)"
    )


def synchronize(device: torch.device | str) -> None:
    """Wait for the kernels queued on `device` (a no-op on CPU): call before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_accelerator_peak(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "xpu":
        torch.xpu.reset_peak_memory_stats(device)


def accelerator_peak_bytes(device: torch.device | str) -> int | None:
    """Peak allocated accelerator memory since the last reset (`torch.cuda.max_memory_allocated`); None on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "xpu":
        return int(torch.xpu.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return None


class Stopwatch:
    """`with Stopwatch(device) as watch: ...; watch.seconds`: wall time of the block, the device synchronised at
    both ends, and the peak accelerator memory of the block (`watch.peak_bytes`, None on CPU)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = 0.0
        self.peak_bytes: int | None = None

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        reset_accelerator_peak(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        self.peak_bytes = accelerator_peak_bytes(self.device)


def to_device(state: Any, device: torch.device | str) -> Any:
    """Modules and tensors of a set-up's state (nested in tuples, lists and dicts) moved to `device`."""
    if isinstance(state, (torch.nn.Module, torch.Tensor)):
        return state.to(device)
    if isinstance(state, (tuple, list)):
        return type(state)(to_device(item, device) for item in state)
    if isinstance(state, dict):
        return {key: to_device(value, device) for key, value in state.items()}
    return state


def describe_peak(rss_bytes: int, accelerator_bytes: int | None) -> str:
    """`"1.20 GiB RSS"`, or `"3.10 GiB GPU, 1.20 GiB RSS"` when an accelerator ran."""
    rss = f"{gib(rss_bytes)} RSS"
    return rss if accelerator_bytes is None else f"{gib(accelerator_bytes)} GPU, {rss}"


def peak_cell(result: dict) -> str:
    """The peak of a `measure` result as a table cell: the RSS, and the accelerator's peak beside it when one ran."""
    return describe_peak(result["peak_bytes"], result.get("accelerator_peak_bytes"))


def _child(
    setup: Callable[..., Any], call: Callable[[Any], Any], kwargs: dict, threads: int, device: str, queue
) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        state = to_device(setup(**kwargs), device)
        _reset_hwm()
        with Stopwatch(device) as watch:
            result = call(state)
        queue.put(
            {
                "seconds": watch.seconds,
                "peak_bytes": _read_hwm_bytes(),
                "accelerator_peak_bytes": watch.peak_bytes,
                "result": result,
            }
        )
    except Exception as error:  # report, do not hang the parent
        queue.put({"error": f"{type(error).__name__}: {error}"})


def measure(
    setup: Callable[..., Any],
    call: Callable[[Any], Any],
    *,
    repeats: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """Run `call(setup(**kwargs))` in `repeats` fresh processes; return median seconds and max peak bytes.

    `setup` and `call` must be picklable (module-level functions). `call` may return a small picklable value
    (e.g. a checksum) that is passed back as `result`. On another `device`, the set-up's modules and tensors are
    moved there (`to_device`), and `accelerator_peak_bytes` is the peak accelerator memory of the call (None on CPU).
    """
    threads = threads or int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    context = mp.get_context("spawn")
    runs = []
    for _ in range(repeats):
        queue = context.Queue()
        process = context.Process(target=_child, args=(setup, call, kwargs, threads, str(device), queue))
        process.start()
        outcome = queue.get()
        process.join()
        if "error" in outcome:
            return {"error": outcome["error"]}
        runs.append(outcome)
    accelerator = [run["accelerator_peak_bytes"] for run in runs if run["accelerator_peak_bytes"] is not None]
    return {
        "seconds": statistics.median(run["seconds"] for run in runs),
        "peak_bytes": max(run["peak_bytes"] for run in runs),
        "accelerator_peak_bytes": max(accelerator) if accelerator else None,
        "result": runs[-1]["result"],
        "repeats": repeats,
    }


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table (what the benchmark scripts print); with no rows, its header alone."""
    widths = {column: max([len(column), *(len(str(row.get(column, ""))) for row in rows)]) for column in columns}
    header = "| " + " | ".join(column.ljust(widths[column]) for column in columns) + " |"
    rule = "|" + "|".join("-" * (widths[column] + 2) for column in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(column, "")).ljust(widths[column]) for column in columns) + " |")
    return "\n".join(lines)


SIDE_BY_SIDE_COLUMNS = ["ours s", "ours CPU s", "ours peak"]
ORIGINAL_COLUMNS = ["original s", "original CPU s", "original peak", "speed-up", "max abs diff"]


def side_by_side_row(summary: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Table cells of one measurement: ours, and the original beside it when it ran (speed-up, output difference).

    `summary[impl]` holds `seconds`, `cpu` (CPU seconds), `peak` (formatted) and `output` (a tensor).
    """
    ours = summary["ours"]
    row = {"ours s": f"{ours['seconds']:.2f}", "ours CPU s": f"{ours['cpu']:.1f}", "ours peak": ours["peak"]}
    if "original" in summary:
        original = summary["original"]
        row.update(
            {
                "original s": f"{original['seconds']:.2f}",
                "original CPU s": f"{original['cpu']:.1f}",
                "original peak": original["peak"],
                "speed-up": f"{original['seconds'] / ours['seconds']:.2f}x",
                "max abs diff": f"{abs(ours['output'] - original['output']).max():.1e}",
            }
        )
    return row


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the named packages (and their submodules) give empty modules of class `module_class`."""

    def __init__(self, names: tuple[str, ...], module_class: type[types.ModuleType]):
        self.names = names
        self.module_class = module_class

    def find_spec(self, fullname, path, target=None):
        if any(fullname == name or fullname.startswith(name + ".") for name in self.names):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = self.module_class(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def stub_imports(names: tuple[str, ...], module_class: type[types.ModuleType]) -> None:
    """Let an original repository import packages it needs only for I/O, logging or training, without them."""
    sys.meta_path.insert(0, _StubFinder(names, module_class))


# --- roofline measurements: FLOPs, convolutions, op types, interleaved timing (in-process) ------------------------


@dataclass(frozen=True)
class ConvCall:
    """One `aten.convolution` configuration: the shapes and settings that fix its cost."""

    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int
    channels_last: bool = False

    @property
    def kind(self) -> str:
        return f"{len(self.weight_shape) - 2}d"

    def describe(self) -> str:
        kernel = "x".join(map(str, self.weight_shape[2:]))
        extras = [f"stride {self.stride}"] if any(s != 1 for s in self.stride) else []
        extras += [f"dilation {self.dilation}"] if any(d != 1 for d in self.dilation) else []
        extras += ["transposed"] if self.transposed else []
        extras += [f"groups {self.groups}"] if self.groups != 1 else []
        extras += ["channels-last"] if self.channels_last else []
        return (
            f"conv{self.kind} {self.weight_shape[1] * self.groups}->{self.weight_shape[0]} k{kernel} on "
            f"{'x'.join(map(str, self.input_shape))}" + (f" ({', '.join(extras)})" if extras else "")
        )

    def run(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution(
            x,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.transposed,
            self.output_padding,
            self.groups,
        )


def _channels_last(x: torch.Tensor) -> bool:
    if x.dim() not in (4, 5) or x.is_contiguous():
        return False
    return x.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


class ConvRecorder(TorchDispatchMode):
    """Records every `aten.convolution` call of the code it wraps: FLOPs per configuration (`ConvCall`)."""

    def __init__(self):
        super().__init__()
        self.flops: dict[ConvCall, int] = defaultdict(int)
        self.calls: dict[ConvCall, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            x, weight, _, stride, padding, dilation, transposed, output_padding, groups = args
            key = ConvCall(
                tuple(x.shape),
                tuple(weight.shape),
                tuple(stride),
                tuple(padding),
                tuple(dilation),
                bool(transposed),
                tuple(output_padding),
                int(groups),
                _channels_last(x),
            )
            self.flops[key] += conv_flop_count(list(x.shape), list(weight.shape), list(out.shape), bool(transposed))
            self.calls[key] += 1
        return out

    def dominant(self, kind: str, min_share: float = 0.05) -> ConvCall | None:
        """The configuration of this kind ("2d" or "3d") that carries the most FLOPs, or None when there is none
        carrying at least `min_share` of all convolution FLOPs (a 1x1x1 projection is no measure of the machine)."""
        candidates = [call for call in self.flops if call.kind == kind]
        if not candidates:
            return None
        best = max(candidates, key=lambda call: self.flops[call])
        return best if self.flops[best] >= min_share * sum(self.flops.values()) else None


def count_flops(function: Callable[[], Any], keep_output: bool = False):
    """`(total FLOPs, convolutions)` of one call of `function` (also a warm-up); with `keep_output`,
    `(total FLOPs, convolutions, output)`."""
    recorder = ConvRecorder()
    with torch.no_grad(), FlopCounterMode(display=False) as counter, recorder:
        output = function()
    return (counter.get_total_flops(), recorder, output) if keep_output else (counter.get_total_flops(), recorder)


_CONV_OPS = ("conv", "mkldnn_convolution", "slow_conv", "_nnpack")


def alternated_runs(sides: list[str], repeats: int, run: Callable[[str], dict]) -> dict[str, list[dict]]:
    """`run(side)` `repeats` times per side, the sides alternating in every round, so that a change in machine load
    hits them alike. Returns each side's results in order."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side in sides:
            runs[side].append(run(side))
    return runs


def rss_bytes() -> int:
    """This process's resident memory now (Linux `/proc/self/status`), in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def _op_type(name: str) -> str:
    # A compiled graph's own generated code (the library calls it makes, convolutions, are listed apart).
    if name.startswith("## Call CompiledFxGraph"):
        return "inductor kernels"
    short = name.removeprefix("aten::")
    return "conv" if any(tag in short for tag in _CONV_OPS) else short


def profile_op_types(function: Callable[[], Any]) -> dict[str, float]:
    """Self CPU seconds per op type over one call of `function` (convolution kernels grouped as `conv`)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    seconds: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        seconds[_op_type(event.key)] += event.self_cpu_time_total / 1e6
    return dict(seconds)


def timed(function: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    with torch.no_grad(), Stopwatch(device) as watch:
        function()
    return watch.seconds


def conv_probe(call: ConvCall, dtype: torch.dtype = torch.float32) -> tuple[Callable[[], Any], int]:
    """A stand-alone run of one convolution configuration on random tensors (same memory format), and its FLOPs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(call.input_shape, generator=generator, dtype=dtype)
    weight = torch.randn(call.weight_shape, generator=generator, dtype=dtype)
    if call.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    out_shape = call.run(x[:1], weight).shape
    flops = conv_flop_count(
        list(call.input_shape), list(call.weight_shape), [x.shape[0], *out_shape[1:]], call.transposed
    )
    return (lambda: call.run(x, weight)), flops


def matmul_probe(size: int) -> tuple[Callable[[], Any], int]:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    return (lambda: a @ b), 2 * size**3
