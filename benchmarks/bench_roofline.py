"""Roofline: how close each model's encode and decode come to this machine's measured convolution throughput.

    python benchmarks/bench_roofline.py --models ivvae odvae opensora --frames 17 --size 128
    python benchmarks/bench_roofline.py --models reducio --frames 16 --size 128      # 16-frame clips
    python benchmarks/bench_roofline.py --models cascadev --frames 8 --size 128      # one DiT step + SVD decode
    python benchmarks/bench_roofline.py --models ivvae --dtypes float32 bfloat16     # + bf16 speed and PSNR
    python benchmarks/bench_roofline.py --models ivvae --baseline main               # + A/B against a git ref
    python benchmarks/bench_roofline.py --models ivvae --compile                     # + inductor-compiled speed
    python benchmarks/bench_roofline.py --quick                                      # tiny configs, seconds

Absolute seconds on a shared or throttled CPU vary from run to run; the ratio of the work a call does to what the
machine achieves on the model's own convolutions, measured in the same process and interleaved with the call, varies
much less. For every model (full-size released config, random weights, `--threads` threads) and each of encode and
decode, everything in ONE process:

* **GFLOP**: the call's floating-point work, counted by `torch.utils.flop_counter.FlopCounterMode` (2 per
  multiply-add; convolutions, matmuls and attention).
* **median s**: median wall time of `--repeats` calls.
* **conv peak**: the machine's fp32 throughput on the model's own dominant convolutions, i.e. the 2D (`aten.convolution`
  with a 4-d weight) and 3D (5-d weight) call configurations that carry the most FLOPs in the call, re-run alone on
  random tensors of exactly those shapes, interleaved with the model's calls (median of the same repeats). The
  larger of the two is the roofline. An sgemm (2048^3) is timed the same way as a machine reference.
* **achieved / peak**: the time the call would take at the machine's measured rates (its convolution FLOPs at the
  conv peak, its other FLOPs, matmuls and attention, at the sgemm rate) over its median time. For a convolutional
  VAE this is (GFLOP / median s) / conv peak within a few percent; for CascadeV, whose DiT is matmuls, it is the
  fair ceiling.
* **conv time, conv GFLOP/s**: the convolutions' share of the call's self time and their own throughput
  (`torch.profiler`, one profiled call), which separates "convolutions run slowly" from "time spent elsewhere".
* **top ops**: op types by self time (profiler), convolution kernels grouped as `conv`.

`--dtypes float32 bfloat16 float16` adds rows for the same weights in other dtypes: speed relative to float32
(interleaved in the same loop) and PSNR / max abs difference of the output against float32 (decode gets the float32
latents cast to the dtype, so its error is the decoder's alone). `--baseline REF` builds the model from its file at
git revision REF (e.g. `main`) with the same weights and times it interleaved with the working tree's code: the
speed ratio and the max abs difference of the outputs tell whether a change helps at identical output. `--compile`
adds the same weights with their submodules `torch.compile`d (inductor): first-call (compile) seconds, speed against
eager in the same loop, and where the compiled call spends its time (inductor's generated kernels vs the library
convolutions it calls).
Models that cannot be imported (not landed yet) are reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _harness import (  # noqa: E402
    add_device_argument,
    conv_probe,
    count_flops,
    format_table,
    matmul_probe,
    profile_op_types,
    timed,
)
from _tiny_configs import TINY_CONFIGS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelEntry:
    """Where a model lives: its class, the file its code is in (for `--baseline`) and a tiny config (`--quick`)."""

    class_name: str
    module: str
    tiny: dict[str, Any]
    # Full-size config changes that depend on the clip `(frames, size)`, and decode options of the measured call.
    sized: Callable[[int, int], dict[str, Any]] | None = None
    decode_options: dict[str, Any] = field(default_factory=dict)


MODELS = {
    # Two resnets per level (the release's count), so that bench_memory's activations are a measurable part of the peak.
    "ivvae": ModelEntry(
        "AutoencoderKLIVVAE", "diffusers_videovae.models.iv_vae", {**TINY_CONFIGS["ivvae"], "num_res_blocks": 2}
    ),
    "odvae": ModelEntry("AutoencoderKLODVAE", "diffusers_videovae.models.od_vae", TINY_CONFIGS["odvae"]),
    "opensora": ModelEntry(
        "AutoencoderKLOpenSora", "diffusers_videovae.models.opensora_vae", TINY_CONFIGS["opensora"]
    ),
    "reducio": ModelEntry("AutoencoderKLReducio", "diffusers_videovae.models.reducio_vae", TINY_CONFIGS["reducio"]),
    # The DiT window is set to the clip's latent size (no padding to the 1024-px training window, as
    # bench_cascadev.py does); decode is ONE denoising step then the SVD decoder (each further step repeats the DiT).
    "cascadev": ModelEntry(
        "AutoencoderCascadeV",
        "diffusers_videovae.models.cascadev",
        dict(
            previewer_hidden_channels=32,
            transformer_hidden_size=96,
            transformer_num_layers=2,
            transformer_num_attention_heads=4,
            transformer_sample_size=16,
            transformer_num_frames=4,
            svd_block_out_channels=(32, 32, 32, 32),  # the SVD decoder's GroupNorm has 32 groups
            svd_layers_per_block=1,
        ),
        sized=lambda frames, size: {"transformer_sample_size": size // 8},
        decode_options={"num_inference_steps": 1},
    ),
}
CHECKPOINT_MODULES = {name: name for name in ("ivvae", "odvae", "opensora", "reducio", "cascadev")}


# --- models --------------------------------------------------------------------------------------------------------


class NotAvailable(Exception):
    """A model that cannot be built here (not landed yet, or no tiny config); the message says why."""


def _model_class(name: str, module: str | None = None):
    entry = MODELS[name]
    try:
        return getattr(importlib.import_module(module or entry.module), entry.class_name)
    except (ImportError, AttributeError) as error:
        raise NotAvailable(f"not importable ({type(error).__name__}: {error})") from error


def released_config(name: str) -> dict[str, Any]:
    """Our config of the model's default release, from its checkpoint module (the class defaults otherwise)."""
    module_name = CHECKPOINT_MODULES.get(name)
    if module_name is None:
        return {}
    try:
        module = importlib.import_module(f"diffusers_videovae.checkpoints.{module_name}")
    except ImportError:
        return {}
    translate = getattr(module, "translate_config", None) or getattr(module, "convert_config", None)
    variants, default = getattr(module, "VARIANTS", None), getattr(module, "DEFAULT_VARIANT", None)
    if translate is None or not variants or default not in variants:
        return {}
    return dict(translate(variants[default]))


def build_model(name: str, quick: bool, frames: int, size: int) -> torch.nn.Module:
    """Seeded random weights, full-size released config (tiny with `quick`), eval mode, float32."""
    cls = _model_class(name)
    entry = MODELS[name]
    if quick and not entry.tiny:
        raise NotAvailable("no tiny config for --quick yet")
    config = entry.tiny if quick else {**released_config(name), **(entry.sized(frames, size) if entry.sized else {})}
    torch.manual_seed(0)
    return cls(**config).eval()


def baseline_model(name: str, model: torch.nn.Module, ref: str) -> torch.nn.Module:
    """The same model built from its file at git revision `ref`, with the same weights (for A/B timing)."""
    entry = MODELS[name]
    path = entry.module.replace(".", "/") + ".py"
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:{path}"], check=True, capture_output=True, text=True
    ).stdout
    package, _, stem = entry.module.rpartition(".")
    module_name = f"{package}._baseline_{stem}"
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=f"{ref}:{path}")
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[module_name] = module
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    baseline = getattr(module, entry.class_name).from_config(model.config).eval()
    baseline.load_state_dict(model.state_dict(), strict=True)
    return baseline


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def clip(frames: int, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A smooth random clip in [-1, 1] (1, 3, T, size, size)."""
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, frames, max(1, size // 8), max(1, size // 8), generator=generator)
    video = F.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=False)
    return (video * 2 - 1).to(dtype)


def stage_calls(
    model: torch.nn.Module, video: torch.Tensor, latents: torch.Tensor, decode_options: dict[str, Any] | None = None
) -> dict[str, Callable[[], Any]]:
    """The two measured calls: encode (posterior mode) and decode (of `latents`, the float32 encoding)."""
    dtype = next(model.parameters()).dtype
    x = video.to(dtype)
    z = model.latents_for_decode(latents).to(dtype)
    conditions = {key: value.to(dtype) for key, value in model.decode_conditions(x).items()}
    options = model.decode_kwargs(
        num_frames=video.shape[2], generator=torch.Generator().manual_seed(0), **(decode_options or {})
    )

    def encode():
        return model.encode(x).latent_dist.mode()

    def decode():
        if "generator" in options:  # a sampling decoder: the same noise in every call
            options["generator"].manual_seed(0)
        return model.decode(z, **conditions, **options).sample

    return {"encode": encode, "decode": decode}


# --- measurement ---------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    label: str
    call: Callable[[], Any]
    seconds: list[float] = field(default_factory=list)
    compiled: bool = False


def psnr(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of `actual` against `reference` over the reference's range (inf when equal)."""
    reference, actual = reference.double(), actual.double()
    mse = torch.mean((actual - reference) ** 2).item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def measure_stage(
    variants: list[Variant], repeats: int, matmul_size: int, profile_top: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Roofline numbers of `variants[0]` and, for the others, speed and output relative to it.

    The model's calls (all variants), its dominant 2D and 3D convolutions alone, and an sgemm are interleaved in
    every repeat, so that a slow period of a shared machine slows them all alike.
    """
    main = variants[0]
    flops, recorder, output = count_flops(main.call, keep_output=True)
    outputs = {main.label: output.float()}
    probes = {}
    for kind in ("2d", "3d"):
        call = recorder.dominant(kind)
        if call is not None:
            probe, probe_flops = conv_probe(call)
            probe()  # warm-up: oneDNN builds its kernel on the first call
            probes[kind] = (call, probe, probe_flops, [])
    matmul, matmul_flops = matmul_probe(matmul_size)
    matmul_seconds = []
    first_call = {}
    with torch.no_grad():
        for variant in variants[1:]:
            start = time.perf_counter()
            outputs[variant.label] = variant.call().float()  # warm-up (compiles), and the outputs compared below
            first_call[variant.label] = time.perf_counter() - start
    for _ in range(repeats):
        for variant in variants:
            variant.seconds.append(timed(variant.call))
        for _, probe, _, seconds in probes.values():
            seconds.append(timed(probe))
        matmul_seconds.append(timed(matmul))
    op_seconds = profile_op_types(main.call)

    seconds = statistics.median(main.seconds)
    conv_flops = sum(recorder.flops.values())
    peaks = {kind: flops_ / statistics.median(times) / 1e9 for kind, (_, _, flops_, times) in probes.items()}
    peak = max(peaks.values()) if peaks else math.nan
    sgemm = matmul_flops / statistics.median(matmul_seconds) / 1e9
    # The call's time at the measured rates: convolutions at the conv peak, everything else at the sgemm rate.
    ideal_seconds = conv_flops / peak / 1e9 + (flops - conv_flops) / sgemm / 1e9 if peaks else math.nan
    total_self = sum(op_seconds.values())
    conv_self = op_seconds.get("conv", 0.0)
    top = sorted(op_seconds.items(), key=lambda item: -item[1])[:profile_top]
    row = {
        "GFLOP": f"{flops / 1e9:.1f}",
        "median s": f"{seconds:.3g}",
        "GFLOP/s": f"{flops / seconds / 1e9:.1f}",
        "conv2d peak GFLOP/s": f"{peaks['2d']:.1f}" if "2d" in peaks else "-",
        "conv3d peak GFLOP/s": f"{peaks['3d']:.1f}" if "3d" in peaks else "-",
        "sgemm GFLOP/s": f"{sgemm:.1f}",
        "conv share of GFLOP": f"{conv_flops / flops:.0%}" if flops else "-",
        "achieved / peak": f"{ideal_seconds / seconds:.0%}" if peaks else "-",
        "conv calls": str(sum(recorder.calls.values())),
        "conv time": f"{conv_self / total_self:.0%}" if total_self else "-",
        "conv GFLOP/s": f"{conv_flops / conv_self / 1e9:.1f}" if conv_self else "-",
        "top ops (self time)": ", ".join(f"{name} {share / total_self:.0%}" for name, share in top),
        "dominant convs": "; ".join(call.describe() for call, _, _, _ in probes.values()),
    }
    reference = outputs[main.label]
    others = []
    for variant in variants[1:]:
        output = outputs[variant.label]
        top_ops = "-"
        if variant.compiled:  # where a compiled call spends its time (inductor's kernels vs the library convolutions)
            op_seconds = profile_op_types(variant.call)
            total = sum(op_seconds.values())
            ranked = sorted(op_seconds.items(), key=lambda item: -item[1])[:profile_top]
            top_ops = ", ".join(f"{name} {share / total:.0%}" for name, share in ranked)
        others.append(
            {
                "variant": variant.label,
                "first call s": f"{first_call[variant.label]:.3g}",
                "median s": f"{statistics.median(variant.seconds):.3g}",
                "top ops (self time)": top_ops,
                f"speed vs {main.label}": f"{seconds / statistics.median(variant.seconds):.2f}x",
                "max abs diff": f"{(output - reference).abs().max().item():.1e}",
                "PSNR dB": f"{psnr(output, reference):.1f}",
                "NaN/inf": "yes" if not torch.isfinite(output).all() else "no",
            }
        )
    return row, others


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILED = "float32 compiled (inductor)"


def compiled_copy(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """The model with its direct submodules compiled in place (`module.compile()`, inductor and its default mode
    unless `backend` says otherwise): what a user does to speed up encode/decode. The first call of each stage
    compiles (its time is reported)."""
    compiled = copy.deepcopy(model)
    for child in compiled.children():
        if any(True for _ in child.parameters()):
            child.compile(backend=backend)
    return compiled


def run_model(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    model = build_model(name, args.quick, args.frames, args.size)
    rule = model.input_rule
    # The smoke test takes the model's shortest clip of at least 5 frames (Reducio: 16).
    frames = rule.valid_num_frames(max(args.frames, rule.first_num_frames)) if args.quick else args.frames
    if rule.valid_num_frames(frames) != frames:
        raise NotAvailable(f"{frames} frames do not fit its frame rule ({rule.describe()})")
    video = clip(frames, args.size)
    with torch.no_grad():
        latents = model.encode(video).latent_dist.mode()
    models = {"float32": model}
    for dtype in args.dtypes:
        if dtype != "float32":
            # Every weight in the dtype (norms included): what `.to(dtype)` gives a user.
            with _quiet_diffusers():
                models[dtype] = copy.deepcopy(model).to(DTYPES[dtype])
    if args.baseline:
        models[f"float32 @ {args.baseline}"] = baseline_model(name, model, args.baseline)
    if args.compile:
        models[COMPILED] = compiled_copy(model)
    options = MODELS[name].decode_options
    calls = {label: stage_calls(m, video, latents, options) for label, m in models.items()}
    rows, others = [], []
    for stage in ("encode", "decode"):
        variants = [
            Variant(label, stage_calls_[stage], compiled=label == COMPILED) for label, stage_calls_ in calls.items()
        ]
        row, other = measure_stage(variants, args.repeats, args.matmul_size, args.top)
        rows.append({"model": name, "call": stage, **row})
        others += [{"model": name, "call": stage, **entry} for entry in other]
    return rows, others


ROOFLINE_COLUMNS = [
    "model",
    "call",
    "GFLOP",
    "median s",
    "GFLOP/s",
    "conv share of GFLOP",
    "conv2d peak GFLOP/s",
    "conv3d peak GFLOP/s",
    "achieved / peak",
    "conv time",
    "conv GFLOP/s",
    "conv calls",
    "sgemm GFLOP/s",
    "top ops (self time)",
]


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ivvae", "odvae", "opensora"], choices=sorted(MODELS))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model and stage (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --quick)")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=sorted(DTYPES))
    parser.add_argument("--baseline", default=None, help="git revision whose model code is timed A/B (e.g. main)")
    parser.add_argument(
        "--compile", action="store_true", help="also time the model with its submodules torch.compile'd (inductor)"
    )
    parser.add_argument("--top", type=int, default=4, help="op types listed by self time")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny configs, 5x32x32 clip (16 frames for Reducio), 1 repeat (smoke test)",
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        # The roofline divides by this CPU's own measured convolution and sgemm rates; gpu_check.py times devices.
        parser.error("bench_roofline.py measures the CPU only; on an accelerator run benchmarks/gpu_check.py --device")
    if args.quick:
        args.frames, args.size, args.repeats, args.matmul_size = 5, 32, 1, 256
    # One thread for the smoke test: on an oversubscribed machine two threads wait on each other at every op.
    args.threads = args.threads or (1 if args.quick else 2)
    torch.set_num_threads(args.threads)

    rows, others, missing = [], [], []
    for name in args.models:
        try:
            model_rows, model_others = run_model(name, args)
        except NotAvailable as reason:
            missing.append({"model": name, "call": "-", "top ops (self time)": str(reason)})
            continue
        rows += model_rows
        others += model_others
    print(
        f"\nRoofline, {'tiny' if args.quick else 'full-size released'} configs, random weights, float32, CPU, "
        f"{args.threads} threads, 1x3x{args.frames}x{args.size}x{args.size}, median of {args.repeats} "
        "(model calls, dominant convolutions and sgemm interleaved in one process):\n"
    )
    print(format_table(rows + missing, ROOFLINE_COLUMNS))
    print("\nDominant convolutions (their stand-alone throughput is the peak):")
    for row in rows:
        print(f"- {row['model']} {row['call']}: {row['dominant convs']}")
    if others:
        print("\nOther dtypes / code versions, interleaved with float32 in the same loop:\n")
        columns = ["model", "call", "variant", "first call s", "median s"]
        columns += [k for k in others[0] if k.startswith("speed vs")]
        print(format_table(others, [*columns, "max abs diff", "PSNR dB", "NaN/inf", "top ops (self time)"]))
    return {"roofline": rows, "missing": missing, "variants": others}


if __name__ == "__main__":
    main()
