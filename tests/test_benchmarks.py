"""The roofline benchmark: what it counts, and that its smoke run reports every model, landed or not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_roofline  # noqa: E402
import bench_tiling  # noqa: E402
from _harness import count_flops, format_table  # noqa: E402


def test_flop_count_and_dominant_convolution_of_a_known_layer():
    conv2d = torch.nn.Conv2d(4, 6, 3, padding=1)
    conv3d = torch.nn.Conv3d(2, 2, 1)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(1, 2, 1, 2, 2)

    flops, convolutions = count_flops(lambda: (conv2d(x), conv3d(y)))

    # 2 FLOPs per multiply-add: 2 images x 8 x 8 outputs x 6 channels x (4 x 3 x 3) taps; the 1x1x1 conv: 2 x 4 x 2 x 2.
    assert flops == 2 * (2 * 8 * 8 * 6 * 4 * 9) + 2 * (4 * 2 * 2)
    dominant = convolutions.dominant("2d")
    assert (dominant.input_shape, dominant.weight_shape, dominant.padding) == ((2, 4, 8, 8), (6, 4, 3, 3), (1, 1))
    assert convolutions.dominant("3d") is None  # 0.02% of the FLOPs: no measure of the machine's peak


def test_table_of_no_rows_is_its_header():
    # A benchmark whose every run was skipped (e.g. `bench_opensora.py --skip-128 --frames-720p 0`) prints the header.
    assert format_table([], ["model", "peak"]).splitlines() == ["| model | peak |", "|-------|------|"]
    assert format_table([{"model": "odvae"}], ["model"]).splitlines()[2] == "| odvae |"


@pytest.fixture(scope="module")
def quick_run():
    """One smoke run (tiny IV-VAE, float32 and bfloat16) plus a model that cannot be imported."""
    patch = pytest.MonkeyPatch()
    patch.setitem(
        bench_roofline.MODELS,
        "ghost",
        bench_roofline.ModelEntry("AutoencoderKLGhost", "diffusers_videovae.models.no_such_model", {}),
    )
    threads = torch.get_num_threads()
    try:
        yield bench_roofline.main(["--quick", "--models", "ivvae", "ghost", "--dtypes", "float32", "bfloat16"])
    finally:
        torch.set_num_threads(threads)
        patch.undo()


def test_quick_run_reports_each_call_and_names_models_that_are_not_available(quick_run):
    rows = {(row["model"], row["call"]): row for row in quick_run["roofline"]}
    assert set(rows) == {("ivvae", "encode"), ("ivvae", "decode")}
    for row in rows.values():
        assert float(row["GFLOP"]) > 0 and float(row["median s"]) > 0
        assert float(row["conv2d peak GFLOP/s"]) > 0
        assert row["achieved / peak"].endswith("%") and row["conv time"].endswith("%")
        assert "conv " in row["top ops (self time)"]
    assert [entry["model"] for entry in quick_run["missing"]] == ["ghost"]
    assert "not importable" in quick_run["missing"][0]["top ops (self time)"]


def test_bfloat16_is_compared_with_float32(quick_run):
    variants = {(row["call"], row["variant"]): row for row in quick_run["variants"]}
    assert set(variants) == {("encode", "bfloat16"), ("decode", "bfloat16")}
    for row in variants.values():
        # bfloat16 keeps 8 bits of mantissa: the outputs differ, but far less than the signal.
        assert 0 < float(row["max abs diff"]) < 0.5
        assert 25 < float(row["PSNR dB"]) < 90
        assert row["NaN/inf"] == "no"


def test_compiled_variant_is_timed_against_eager_with_its_compile_time(monkeypatch):
    # dynamo's eager backend (inductor's code generation takes minutes on this machine): what is checked here is the
    # plumbing, a compiled copy whose every call goes through dynamo, timed and compared with the eager model.
    compiled = []
    calls: dict[str, int] = {}

    def counted(name, compiled_call):
        def call(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return compiled_call(*args, **kwargs)

        return call

    def compiled_copy(model):
        copy = build_compiled_copy(model, backend="eager")
        for name, child in copy.named_children():
            if getattr(child, "_compiled_call_impl", None) is not None:
                compiled.append(name)
                # Still through dynamo: the compiled call is wrapped, and a module's call takes it when it is set.
                child._compiled_call_impl = counted(name, child._compiled_call_impl)
        return copy

    build_compiled_copy = bench_roofline.compiled_copy
    monkeypatch.setattr(bench_roofline, "compiled_copy", compiled_copy)
    threads = torch.get_num_threads()
    torch._dynamo.reset()
    try:
        result = bench_roofline.main(["--quick", "--models", "odvae", "--compile"])
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    assert {"encoder", "decoder"} <= set(compiled)
    # Every timed, profiled and compared call of the compiled variant went through the compiled modules (whether
    # dynamo's own profiler rows rank among the top ops depends on the machine's load, so they are not the check).
    assert calls.get("encoder", 0) >= 2 and calls.get("decoder", 0) >= 2, calls
    variants = {(row["call"], row["variant"]): row for row in result["variants"]}
    assert set(variants) == {(call, bench_roofline.COMPILED) for call in ("encode", "decode")}
    for row in variants.values():
        assert float(row["first call s"]) > 0 and row["speed vs float32"].endswith("x")
        assert float(row["max abs diff"]) < 1e-4
        assert row["top ops (self time)"]


def _in_process(setup, call, *, repeats, threads, device="cpu", **kwargs):
    """`_harness.measure` without its fresh processes (seconds each on a busy machine); the peak is a stand-in."""
    try:
        state = setup(**kwargs)
        start = time.perf_counter()
        result = call(state)
    except Exception as error:  # as the harness reports a failed child
        return {"error": f"{type(error).__name__}: {error}"}
    return {"seconds": time.perf_counter() - start, "peak_bytes": 2**30, "result": result, "repeats": repeats}


def test_quick_tiling_run_compares_untiled_default_and_exact_tiles_and_frame_sizes(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_tiling, "measure", _in_process)
    # Reducio stands for a model without an exact mode, whether or not it has one by now.
    monkeypatch.setattr(bench_tiling, "accepts_exact", lambda model: "Reducio" not in type(model).__name__)
    threads = torch.get_num_threads()
    try:
        args = ["--quick", "--models", "odvae", "reducio", "--sizes", "64", "32x64", "--workdir", str(tmp_path)]
        result = bench_tiling.main(args)
    finally:
        torch.set_num_threads(threads)
    modes = {(row["model"], row["call"], row["mode"]): row for row in result["modes"]}
    assert set(modes) == {
        (m, c, mode) for m in ("odvae", "reducio") for c in ("encode", "decode") for mode in bench_tiling.MODES
    }
    for call in ("encode", "decode"):
        untiled, default, exact = (modes["odvae", call, mode] for mode in bench_tiling.MODES)
        assert untiled["max abs diff vs untiled"] == "-" and untiled["vs untiled"] == "1.0x"
        assert float(default["max abs diff vs untiled"]) > 1e-3  # the original's blended tiles
        assert float(exact["max abs diff vs untiled"]) < 1e-4
        assert float(exact["seconds"]) > 0 and exact["peak RSS"] == "1.00 GiB"
        assert modes["reducio", call, "exact tiles"]["seconds"] == "n/a"
        assert float(modes["reducio", call, "default tiles"]["seconds"]) > 0
    memory = {(row["model"], row["call"], row["tiles"]): row for row in result["memory"]}
    assert len(memory) == 2 * 2 * 2
    assert memory["odvae", "decode", "exact"]["32x64"] == "1.00 GiB"
    assert memory["odvae", "decode", "exact"]["growth"] == "1.00x"
    assert memory["reducio", "encode", "exact"]["64x64"] == "n/a"
    assert memory["reducio", "encode", "default"]["growth"] == "1.00x"


def test_traced_tiling_table_prints_growth_with_and_without_the_weights():
    """`--traced` rows: the growth of the call's tensors, and the same with the model's float32 weights added to
    every peak (what a process's peak RSS counts)."""
    result = bench_tiling.main(["--quick", "--traced", "--skip-modes", "--models", "opensora", "--sizes", "32", "64"])
    config = bench_tiling.model_config("opensora", True, {})
    weights = sum(p.numel() * 4 for p in bench_tiling._class("opensora")(**config).parameters())
    rows = {(row["call"], row["tiles"]): row for row in result["memory"]}
    assert rows["decode", "untiled"]["growth"] == rows["decode", "untiled"]["with weights"] == "n/a"
    peaks = [bench_tiling.traced_peaks("opensora", config, "default tiles", 5, (side, side)) for side in (32, 64)]
    for call in ("encode", "decode"):
        row = rows[call, "default"]
        assert row["weights"] == f"{weights / 2**30:.2f} GiB"
        small, large = (peak[call] for peak in peaks)
        assert row["growth"] == f"{max(small, large) / small:.2f}x"
        assert row["with weights"] == f"{(max(small, large) + weights) / (small + weights):.2f}x"


# --- gpu_check.py: the accelerator table, smoke-tested on the CPU so that it is ready for its first GPU run --------


def test_gpu_check_quick_reports_every_dtype_against_cpu_float32():
    import gpu_check

    threads = torch.get_num_threads()
    try:
        rows = gpu_check.main(["--device", "cpu", "--quick", "--models", "odvae", "cascadev"])
    finally:
        torch.set_num_threads(threads)
    cells = {(row["model"], row["clip"].endswith("tiled"), row["dtype"]): row for row in rows}
    assert set(cells) == {
        (model, tiled, dtype)
        for model in ("odvae", "cascadev")
        for tiled in (False, True)
        for dtype in ("float32", "bfloat16", "float16")
    }
    for (_, _, dtype), row in cells.items():
        assert row["NaN/inf"] == "no"
        assert float(row["encode s"]) > 0 and float(row["decode s"]) > 0 and row["peak"].endswith("GiB RSS")
        video_diff = float(row["video max diff"])
        if dtype == "float32":  # the same code on the same CPU: the reference itself
            assert video_diff == 0.0
        else:  # 8 (bfloat16) or 11 (float16) bits of mantissa: visible, far below the signal
            assert 0 < video_diff < 0.5


def _gpu_session(tmp_path: Path, test_args: str, check_args: str) -> subprocess.CompletedProcess:
    """scripts/gpu_session.sh on the CPU with this interpreter, nothing packed, its logs in `tmp_path / "out"`."""
    (tmp_path / "packed").mkdir(exist_ok=True)
    environment = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": sys.executable,
        "PACKED": str(tmp_path / "packed"),
        "OUT": str(tmp_path / "out"),
        "TEST_ARGS": test_args,
        "GPU_CHECK_ARGS": check_args,
    }
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_session.sh"
    return subprocess.run(["bash", str(script)], env=environment, capture_output=True, text=True, timeout=600)


def test_gpu_session_script_runs_its_steps_and_reports_a_failed_one(tmp_path):
    """The prepared first GPU run, on the CPU: the environment, a parity test on the device under test and the GPU
    check, each logged; a step that fails makes the session fail."""
    chosen = "-k 'test_encode_matches_original and odvae'"
    result = _gpu_session(tmp_path, chosen, "--quick --models odvae --dtypes float32 --clips small")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    logs = {name: (tmp_path / "out" / f"{name}.log").read_text() for name in ("env", "tests", "gpu_check")}
    assert "torch" in logs["env"] and "diffusers" in logs["env"]
    assert " passed" in logs["tests"] and "failed" not in logs["tests"]
    assert "| odvae | 5x32x32 | float32 |" in logs["gpu_check"].replace("  ", " ").replace("  ", " ")
    for name in ("env", "tests", "gpu_check"):
        assert f"=== {name} exit status 0" in result.stdout
    failing = _gpu_session(tmp_path, chosen, "--quick --models no-such-model")
    assert failing.returncode == 1 and "=== gpu_check exit status 2" in failing.stdout


@pytest.mark.parametrize("model", ["reducio", "cascadev"])
def test_exact_tiles_benchmark_compares_layer_order_with_untiled(model):
    import bench_exact_tiles

    threads = torch.get_num_threads()
    try:
        rows = bench_exact_tiles.main(["--quick", "--model", model])
    finally:
        torch.set_num_threads(threads)
    calls = {"reducio": {"encode", "decode"}, "cascadev": {"SVD decode"}}[model]
    assert {row["call"] for row in rows} == calls
    for call in calls:
        modes = {row["mode"]: row for row in rows if row["call"] == call}
        assert set(modes) == set(bench_exact_tiles.SIDES[:3])  # untiled, the former exact tiles, layer order
        for exact in (modes[bench_exact_tiles.SIDES[1]], modes[bench_exact_tiles.SIDES[2]]):
            assert 0 < float(exact["max abs diff vs untiled"]) < 1e-4 * float(exact["max abs untiled"])
            assert float(exact["seconds"]) > 0 and exact["vs untiled"].endswith("x")


# Side-by-side benchmarks against the original code: `measure` (a fresh process per call) is replaced by a stand-in
# in which the original takes twice our time and memory and its outputs differ from ours by 0.5 everywhere. Per
# benchmark: its arguments, and cells that one row of its table must hold.
SIDE_BY_SIDE = {
    "bench_ivvae": (["--skip-long"], [("diffusers-videovae", "1.00"), ("original (ali-vilab/iv-vae)", "5.0e-01 / 5.0e-01")]),
    "bench_opensora": (["--frames-720p", "0"], [("| ours ", "encode", "5.0e-01", "2.00x", "0.50x"), ("| original v1.2.0", "2.0")]),
    "bench_odvae": (["--skip-long"], [("| encode 1x3x17x128x128", "1.00", "2.00", "2.00x", "5.0e-01"), ("| decode 1x4x5x16x16", "2.00x")]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SIDE_BY_SIDE))
def test_side_by_side_benchmark_prints_the_original_beside_ours(name, monkeypatch, tmp_path, capsys):
    import importlib

    import numpy as np

    bench = importlib.import_module(name)
    calls = []

    def measure(setup, call, **kwargs):
        original = setup.__name__ == "setup_original" or kwargs.get("impl") == "original"
        calls.append(("original" if original else "ours", kwargs.get("stage") or kwargs.get("op") or kwargs["task"]))
        output = np.full((1, 2, 2), 0.5 if original else 0.0, dtype=np.float32)
        if "out" in kwargs:
            torch.save(torch.from_numpy(output), kwargs["out"])
        result = (output, 0, 1.0) if name == "bench_odvae" else output
        seconds, peak = (2.0, 2**31) if original else (1.0, 2**30)
        return {"seconds": seconds, "peak_bytes": peak, "accelerator_peak_bytes": None, "result": result}

    monkeypatch.setattr(bench, "measure", measure)
    for writer in ("write_weights", "make_our_weights", "make_original_weights"):
        if hasattr(bench, writer):
            monkeypatch.setattr(bench, writer, lambda *args: str(tmp_path / "weights"))
    argv, expected_rows = SIDE_BY_SIDE[name]
    workdir = ["--workdir", str(tmp_path)] if name == "bench_opensora" else []  # the others use a temp folder
    bench.main([*argv, *workdir, "--original-repo", str(tmp_path / "original_checkout")])
    if name == "bench_ivvae":
        assert calls == [("ours", "encode"), ("ours", "decode"), ("original", "encode"), ("original", "decode")]
    else:
        assert calls == [("ours", "encode"), ("original", "encode"), ("ours", "decode"), ("original", "decode")]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    for cells in expected_rows:
        assert any(all(cell in line for cell in cells) for line in table), (cells, table)
