"""What tiling costs and what it changes: untiled vs default tiles vs exact tiles, per model, same weights.

    python benchmarks/bench_tiling.py                      # full-size configs, 1x3x9x256x256, 128-px tiles
    python benchmarks/bench_tiling.py --quick              # tiny configs (smoke test, seconds)
    python benchmarks/bench_tiling.py --models odvae --size 512 --tile 256

For each model (random seeded weights of its default = released config, saved once under `--workdir`), the clip is
encoded untiled; its latent mode is decoded untiled. Then the same encode and decode run with the model's default
tiling (`enable_tiling(h, w, stride_h=..., ...)` with the model's default overlap ratio, as `videovae --tiling on
--tile-size` sets it) and with exact tiling (`enable_tiling(..., exact=True)`; IV-VAE's tiles are always exact, so
it has one tiled row). Every measurement runs in a fresh process (`benchmarks/_harness.py`): seconds of the call
and the peak RSS during it (weights and inputs included). "max abs diff" and "PSNR" compare each tiled output with the untiled one (PSNR on [-1, 1] video, or on
the latent's own range for encodes): what the tiles change, not reconstruction quality.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import add_device_argument, format_table, measure, peak_cell  # noqa: E402

CLASSES = {
    "ivvae": "AutoencoderKLIVVAE",
    "odvae": "AutoencoderKLODVAE",
    "opensora": "AutoencoderKLOpenSora",
}
TINY = {
    "ivvae": {"base_dim": 8, "latent_channels": 4},
    "odvae": {"block_out_channels": (32, 64, 64, 64)},
    "opensora": {
        "block_out_channels": (32, 32, 64, 64),
        "temporal_filters": 32,
        "temporal_num_res_blocks": 1,
    },
}


def _class(name: str):
    import diffusers_videovae

    return getattr(diffusers_videovae, CLASSES[name])


def make_weights(name: str, path: Path, quick: bool) -> None:
    torch.manual_seed(0)
    _class(name)(**(TINY[name] if quick else {})).save_pretrained(path)


# -- measured calls (module level so that the spawned child can import them) ---------------------------------------


def setup(name: str, weights: str, op: str, mode: str, tile: int, frames: int, size: int, latents: str, out: str):
    from diffusers_videovae.memory import enable_tiling
    from diffusers_videovae.video import synthetic_clip

    model = _class(name).from_pretrained(weights).eval()
    with torch.no_grad():  # resident copies, so that peak RSS counts every weight
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()
    # What `videovae --tiling on|exact --tile-size` does: default tiles keep the model's overlap ratio.
    enable_tiling(model, {"default": "on", "exact": "exact"}.get(mode, "off"), tile)
    data = synthetic_clip(frames, size, size, seed=0) if op == "encode" else torch.load(latents)
    return {"model": model, "op": op, "data": data, "frames": frames, "out": out}


def call(state) -> str:
    model = state["model"]
    with torch.no_grad():
        if state["op"] == "encode":
            result = model.encode(state["data"]).latent_dist.mode()
        elif type(model).__name__ == "AutoencoderKLOpenSora":
            result = model.decode(state["data"], num_frames=state["frames"]).sample
        else:
            result = model.decode(state["data"]).sample
    torch.save(result, state["out"])
    return state["out"]


# -- driver ------------------------------------------------------------------------------------------------------


def _psnr(actual: torch.Tensor, reference: torch.Tensor) -> str:
    peak = float(reference.max() - reference.min()) / 2 if reference.abs().max() > 1.5 else 1.0
    mse = float((actual - reference).double().square().mean())
    return "inf" if mse == 0 else f"{10 * math.log10(4 * peak**2 / mse):.1f} dB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CLASSES), default=sorted(CLASSES))
    parser.add_argument("--frames", type=int, default=9, help="frames of the clip (1 + 4k)")
    parser.add_argument("--size", type=int, default=256, help="height and width of the clip")
    parser.add_argument("--tile", type=int, default=128, help="tile size in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/tiling_bench", help="weights and outputs go here")
    parser.add_argument("--quick", action="store_true", help="tiny configs, 5x64x64 clip, 32-px tiles")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.size, args.tile = 5, 64, 32
    work = Path(args.workdir) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)

    rows = []
    for name in args.models:
        weights = work / name
        if not (weights / "config.json").is_file():
            make_weights(name, weights, args.quick)
        modes = ["untiled", "tiled"] if name == "ivvae" else ["untiled", "default tiles", "exact"]
        outputs, seconds = {}, {}
        for op in ("encode", "decode"):
            for mode in modes:
                out = work / f"{name}_{op}_{mode.replace(' ', '_')}.pt"
                result = measure(
                    setup,
                    call,
                    device=args.device,
                    repeats=args.repeats,
                    threads=args.threads,
                    name=name,
                    weights=str(weights),
                    op=op,
                    mode="default" if mode in ("tiled", "default tiles") else mode,
                    tile=args.tile,
                    frames=args.frames,
                    size=args.size,
                    latents=str(work / f"{name}_encode_untiled.pt"),
                    out=str(out),
                )
                if "error" in result:
                    raise SystemExit(f"{name} {op} {mode}: {result['error']}")
                outputs[op, mode] = torch.load(out)
                seconds[op, mode] = result["seconds"]
                reference = outputs[op, "untiled"]
                row = {
                    "model": CLASSES[name],
                    "call": op,
                    "mode": mode if name != "ivvae" or mode == "untiled" else "tiled (always exact)",
                    "seconds": f"{result['seconds']:.1f}",
                    "peak RSS": peak_cell(result),
                }
                if mode != "untiled":
                    row["max abs diff vs untiled"] = f"{float((outputs[op, mode] - reference).abs().max()):.1e}"
                    row["PSNR vs untiled"] = _psnr(outputs[op, mode], reference)
                    row["time vs untiled"] = f"{seconds[op, mode] / seconds[op, 'untiled']:.1f}x"
                rows.append(row)
                print(row, flush=True)
    print()
    config = "tiny configs" if args.quick else "full-size default configs"
    print(
        f"Tiling, {config}, random weights, float32, CPU, {args.threads} threads, "
        f"1x3x{args.frames}x{args.size}x{args.size}, {args.tile}-px tiles, median of {args.repeats}"
    )
    columns = [
        "model",
        "call",
        "mode",
        "seconds",
        "time vs untiled",
        "peak RSS",
        "max abs diff vs untiled",
        "PSNR vs untiled",
    ]
    print(format_table(rows, columns))


if __name__ == "__main__":
    main()
