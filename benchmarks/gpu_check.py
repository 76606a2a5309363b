"""One table for all five models on an accelerator: precision, speed and memory of float32, bfloat16 and float16.

    python benchmarks/gpu_check.py --device cuda                  # full-size configs, random weights
    python benchmarks/gpu_check.py --device cuda --clips small    # 17x256x256 only (a short first run)
    python benchmarks/gpu_check.py --device cpu --quick           # tiny configs, small clips (CI smoke test)

For every model and clip, the model (seeded random weights) runs once in float32 on the CPU: the reference. Then, on
`--device`, in float32, bfloat16 and float16: encode, then decode of its own latent, each timed with the device
synchronised, and the peak memory of both (`torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS on CPU).
Columns: the max abs difference of the latent and of the video to the CPU float32 reference, whether any value is
NaN or infinite, the seconds, the peak. Clips: `small` 17x256x256 untiled (16 frames for Reducio, 8 for CascadeV);
`720p` 17x720x1280 with the model's default tiles. CascadeV decodes with one denoising step and its DiT window set to
the clip's latent size (bench_roofline's sizing; the release's 128 window would pad a small clip). With `--quick`:
tiny configs, a 5x32x32 clip untiled and a 5x64x96 clip in 64-px tiles (16 frames for Reducio, 4 for CascadeV).
A model whose run fails (out of memory, an unsupported dtype) gets its error in the row, and the others still run.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Stopwatch, add_device_argument, format_table, gib  # noqa: E402
from bench_roofline import MODELS, NotAvailable, build_model  # noqa: E402

from diffusers_videovae.memory import PeakMemory  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FRAMES = {"ivvae": 17, "odvae": 17, "opensora": 17, "reducio": 16, "cascadev": 8}
QUICK_FRAMES = {"ivvae": 5, "odvae": 5, "opensora": 5, "reducio": 16, "cascadev": 4}
QUICK_TILES = dict(tile_sample_min_height=64, tile_sample_min_width=64)  # each model's own stride for that size
COLUMNS = ["model", "clip", "dtype", "latent max diff", "video max diff", "NaN/inf", "encode s", "decode s", "peak"]


@dataclass(frozen=True)
class Clip:
    label: str
    frames: int
    height: int
    width: int
    tiles: dict | None  # None: untiled; {}: the model's default tiles; else enable_tiling's arguments


def clips_for(name: str, quick: bool, which: list[str]) -> list[Clip]:
    frames = (QUICK_FRAMES if quick else FRAMES)[name]
    small = Clip("small", frames, 32, 32, None) if quick else Clip("small", frames, 256, 256, None)
    large = Clip("720p", frames, 64, 96, QUICK_TILES) if quick else Clip("720p", frames, 720, 1280, {})
    return [clip for clip in (small, large) if clip.label in which]


def reconstruct(name: str, model: torch.nn.Module, video: torch.Tensor, device: torch.device) -> dict:
    """Encode (posterior mode), then decode that latent; seconds of each and the peak memory of both."""
    decode_options = dict(MODELS[name].decode_options)
    if "num_inference_steps" in decode_options:
        decode_options["generator"] = torch.Generator().manual_seed(0)  # the same noise on every device
    conditions = model.decode_conditions(video)
    options = {**model.decode_kwargs(num_frames=video.shape[2]), **decode_options}
    with torch.no_grad(), PeakMemory(device) as memory:
        with Stopwatch(device) as encoding:
            z = model.encode(video).latent_dist.mode()
        with Stopwatch(device) as decoding:
            sample = model.decode(z, **conditions, **options).sample
    # Each stopwatch resets the accelerator's peak: the run's peak is the larger of the two.
    accelerator = [p for p in (encoding.peak_bytes, decoding.peak_bytes) if p is not None]
    peak = f"{gib(max(accelerator))} GPU" if accelerator else f"{gib(memory.peak)} RSS"
    return {
        "z": z.float().cpu(),
        "video": sample.float().cpu(),
        "encode": encoding.seconds,
        "decode": decoding.seconds,
        "peak": peak,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    finite = torch.isfinite(a)
    return f"{float((a[finite] - b[finite]).abs().max()):.1e}" if bool(finite.any()) else "-"


def check_model(name: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    for clip in clips_for(name, args.quick, args.clips):
        label = f"{clip.frames}x{clip.height}x{clip.width}" + (" tiled" if clip.tiles is not None else "")
        row = {"model": name, "clip": label}
        try:
            model = build_model(name, args.quick, clip.frames, min(clip.height, clip.width))
        except NotAvailable as reason:
            rows.append({**row, "dtype": "-", "latent max diff": str(reason)})
            continue
        if hasattr(model, "set_progress_bar_config"):
            model.set_progress_bar_config(disable=True)
        if clip.tiles is not None:
            model.enable_tiling(**clip.tiles)
        generator = torch.Generator().manual_seed(0)
        video = torch.rand(1, 3, clip.frames, clip.height, clip.width, generator=generator) * 2 - 1
        reference = reconstruct(name, model, video, torch.device("cpu"))
        for dtype_name in args.dtypes:
            device = torch.device(args.device)
            entry = {**row, "dtype": dtype_name}
            try:
                run = torch.nn.Module.to(copy.deepcopy(model), device, DTYPES[dtype_name])
                result = reconstruct(name, run, video.to(device, DTYPES[dtype_name]), device)
            except Exception as error:  # out of memory, an unsupported dtype: reported in its row
                rows.append({**entry, "latent max diff": f"{type(error).__name__}: {str(error)[:60]}"})
                continue
            finally:
                run = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            bad = not (bool(torch.isfinite(result["z"]).all()) and bool(torch.isfinite(result["video"]).all()))
            entry.update(
                {
                    "latent max diff": _max_diff(result["z"], reference["z"]),
                    "video max diff": _max_diff(result["video"], reference["video"]),
                    "NaN/inf": "YES" if bad else "no",
                    "encode s": f"{result['encode']:.2f}",
                    "decode s": f"{result['decode']:.2f}",
                    "peak": result["peak"],
                }
            )
            rows.append(entry)
            print(entry, flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help="tiny configs and small clips (CI smoke test)")
    parser.add_argument("--models", nargs="+", default=list(FRAMES), choices=list(FRAMES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--clips", nargs="+", default=["small", "720p"], choices=["small", "720p"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --quick)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or (1 if args.quick else threads))
    try:
        rows = [row for name in args.models for row in check_model(name, args)]
    finally:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(
        f"\nGPU check on {where}: {'tiny' if args.quick else 'full-size released'} configs, random weights; "
        "differences to float32 on the CPU:\n"
    )
    print(format_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
