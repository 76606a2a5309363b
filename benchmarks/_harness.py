"""Measure wall time and peak memory of one call in a fresh process, so that runs do not disturb each other.

Peak memory is the peak resident set size (VmHWM) of the child process during the measured call only: the
high-water mark is reset (Linux `/proc/self/clear_refs`) after the set-up, so weights and inputs already in
memory count, but allocations made before the call (e.g. while building the model) do not inflate it.
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
from collections.abc import Callable
from typing import Any


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


def _child(setup: Callable[..., Any], call: Callable[[Any], Any], kwargs: dict, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        state = setup(**kwargs)
        _reset_hwm()
        start = time.perf_counter()
        result = call(state)
        seconds = time.perf_counter() - start
        queue.put({"seconds": seconds, "peak_bytes": _read_hwm_bytes(), "result": result})
    except Exception as error:  # report, do not hang the parent
        queue.put({"error": f"{type(error).__name__}: {error}"})


def measure(
    setup: Callable[..., Any],
    call: Callable[[Any], Any],
    *,
    repeats: int = 1,
    threads: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run `call(setup(**kwargs))` in `repeats` fresh processes; return median seconds and max peak bytes.

    `setup` and `call` must be picklable (module-level functions). `call` may return a small picklable value
    (e.g. a checksum) that is passed back as `result`.
    """
    threads = threads or int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1))
    context = mp.get_context("spawn")
    runs = []
    for _ in range(repeats):
        queue = context.Queue()
        process = context.Process(target=_child, args=(setup, call, kwargs, threads, queue))
        process.start()
        outcome = queue.get()
        process.join()
        if "error" in outcome:
            return {"error": outcome["error"]}
        runs.append(outcome)
    return {
        "seconds": statistics.median(run["seconds"] for run in runs),
        "peak_bytes": max(run["peak_bytes"] for run in runs),
        "result": runs[-1]["result"],
        "repeats": repeats,
    }


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table (what the benchmark scripts print)."""
    widths = {column: max(len(column), *(len(str(row.get(column, ""))) for row in rows)) for column in columns}
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
