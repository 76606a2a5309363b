"""Memory estimate against the measured peak: `estimate_memory` (traced on `meta`) vs a real encode + decode.

    python benchmarks/bench_memory.py                               # full-size configs, 256 and 512, CPU
    python benchmarks/bench_memory.py --models ivvae --sizes 256    # one model, one size
    python benchmarks/bench_memory.py --quick                       # tiny configs, seconds (smoke test)
    python benchmarks/bench_memory.py --device cuda                 # max_memory_allocated instead of RSS

Each row runs in a fresh process (`benchmarks/_harness.py`): the model (released config, random weights; CascadeV's
DiT window set to the clip's latent size, one denoising step) and the clip are built, `estimate_memory` predicts the
peak (what is resident + the traced peak of the run's tensors; its CPU seconds, untiled + tiled traces, are the
`trace CPU s` column), then the high-water mark is reset and the reconstruction runs. Measured: the peak RSS of the
process on CPU, `torch.cuda.max_memory_allocated` on CUDA.
Clips: 17 frames (16 for Reducio, 8 for CascadeV), untiled and tiled with the model's default tiles.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import add_device_argument, format_table, gib, measure  # noqa: E402
from bench_roofline import MODELS, _model_class, released_config  # noqa: E402

FRAMES = {"ivvae": 17, "odvae": 17, "opensora": 17, "reducio": 16, "cascadev": 8}
COLUMNS = [
    "model",
    "clip",
    "tiling",
    "estimate",
    "measured peak",
    "estimate / measured",
    "resident",
    "traced",
    "trace CPU s",
]


def build(name: str, quick: bool, frames: int, size: int) -> torch.nn.Module:
    """Seeded random weights: the tiny config with `quick`, else the released config (CascadeV's DiT window set to
    the clip's latent size, as bench_roofline does: the release's 128 window would be padded on a small clip)."""
    entry = MODELS[name]
    config = (
        dict(entry.tiny) if quick else {**released_config(name), **(entry.sized(frames, size) if entry.sized else {})}
    )
    torch.manual_seed(0)
    model = _model_class(name)(**config).eval()
    if hasattr(model, "set_progress_bar_config"):
        model.set_progress_bar_config(disable=True)
    return model


def reconstruct(model: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        options = {"num_inference_steps": 1} if hasattr(model, "decode_svd_latents") else {}
        posterior = model.encode(clip).latent_dist
        z = posterior.mode()
        return model.decode(z, **model.decode_conditions(clip), **model.decode_kwargs(clip.shape[2]), **options).sample


def setup(name: str, quick: bool, frames: int, size: int, tiled: bool, target: str):
    from diffusers_videovae.memory import estimate_memory

    device = torch.device(target)
    model = build(name, quick, frames, size).to(device)
    if tiled:
        model.enable_tiling()
    clip = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    start = time.process_time()
    estimate = estimate_memory(model, (frames, size, size), device)
    seconds = time.process_time() - start  # untiled + tiled traces: what `--tiling auto` waits for
    traced = estimate.tiled if tiled else estimate.untiled
    return model, clip, {"resident": estimate.resident, "traced": traced, "seconds": seconds}


def call(state) -> dict:
    model, clip, estimate = state
    reconstruct(model, clip)
    return estimate


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(FRAMES), choices=list(FRAMES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--tiling", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny configs, 64x64 clips (smoke test)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [64]
    rows = []
    for name in args.models:
        frames = FRAMES[name]
        for size in args.sizes:
            for tiling in args.tiling:
                outcome = measure(
                    setup,
                    call,
                    threads=args.threads,
                    device=args.device,
                    target=args.device,
                    name=name,
                    quick=args.quick,
                    frames=frames,
                    size=size,
                    tiled=tiling == "on",
                )
                row = {"model": name, "clip": f"{frames}x{size}x{size}", "tiling": tiling}
                if "error" in outcome:
                    rows.append({**row, "estimate": outcome["error"][:80]})
                    print(rows[-1], flush=True)
                    continue
                measured = outcome["accelerator_peak_bytes"] if args.device != "cpu" else outcome["peak_bytes"]
                resident, traced = outcome["result"]["resident"], outcome["result"]["traced"]
                row.update(
                    {
                        "estimate": gib(resident + traced),
                        "measured peak": gib(measured),
                        "estimate / measured": f"{(resident + traced) / measured:.2f}",
                        "resident": gib(resident),
                        "traced": gib(traced),
                        "trace CPU s": f"{outcome['result']['seconds']:.1f}",
                        "ratio": (resident + traced) / measured,
                    }
                )
                rows.append(row)
                print({k: v for k, v in row.items() if k != "ratio"}, flush=True)
    what = "torch.cuda.max_memory_allocated" if args.device != "cpu" else "peak RSS"
    print(
        f"\nMemory estimate vs measured ({what}), {'tiny' if args.quick else 'full-size released'} configs, random "
        f"weights, float32, {args.device}, one fresh process per row:\n"
    )
    print(format_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
