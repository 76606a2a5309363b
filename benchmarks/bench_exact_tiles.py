"""What exact tiles cost, before and after tiling in layer order: OD-VAE decode, untiled vs exact tiles.

    python benchmarks/bench_exact_tiles.py                 # full-size release config, 9x128x128, 64-px tiles
    python benchmarks/bench_exact_tiles.py --quick         # tiny config (seconds)

Three ways to decode the same latents with the same random weights, alternated in one process (`alternated_runs`,
so a change in machine load hits them alike): untiled; exact tiles as before (`tiled_with_shared_group_norm` over
the whole high-resolution stage with its receptive-field halo: one partial pass over the tiles per GroupNorm, then
a full one); exact tiles now (`tiled_in_layer_order`: one step at a time over all tiles, each with its own small
halo). Prints median seconds, the ratio to untiled and the largest difference to untiled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import alternated_runs, format_table  # noqa: E402


def _stage_per_group_norm(model, z: torch.Tensor) -> torch.Tensor:
    """The exact decode before layer order: the whole stage re-run from its input for every GroupNorm."""
    from diffusers_videovae.models._tiling import tiled_with_shared_group_norm

    spatial = model.config.spatial_compression_ratio
    h = model.decoder.forward_low(model.post_quant_conv(z))
    core = (model.tile_sample_min_height // spatial, model.tile_sample_min_width // spatial)
    steps = model.decoder.high_res_steps()

    def stage(h: torch.Tensor) -> torch.Tensor:
        for step in steps:
            h = step.run(h)
        return h

    norms = [*model.decoder.high_res_stages(), model.decoder.norm_out]
    return tiled_with_shared_group_norm(stage, h, norms, core, model.tile_halo["decode"])


def main(argv: list[str] | None = None) -> None:
    from diffusers_videovae import AutoencoderKLODVAE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=9, help="frames of the decoded clip (1 + 4k)")
    parser.add_argument("--size", type=int, default=128, help="height and width of the decoded clip")
    parser.add_argument("--tile", type=int, default=64, help="tile size in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=json.loads, default={}, help="config overrides (JSON), e.g. a mid-size model")
    parser.add_argument("--quick", action="store_true", help="tiny config, 5x64x64, 16-px tiles, 1 repeat")
    args = parser.parse_args(argv)
    config = args.config
    if args.quick:
        args.frames, args.size, args.tile, args.repeats = 5, 64, 16, 1
        config = {"block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoencoderKLODVAE(**config).eval()
    z = torch.randn(1, model.config.latent_channels, 1 + (args.frames - 1) // 4, args.size // 8, args.size // 8)

    def untiled() -> torch.Tensor:
        model.disable_tiling()
        return model.decode(z).sample

    def before() -> torch.Tensor:
        model.enable_tiling(args.tile, args.tile, exact=True)
        return _stage_per_group_norm(model, z)

    def after() -> torch.Tensor:
        model.enable_tiling(args.tile, args.tile, exact=True)
        return model.decode(z).sample

    sides = {"untiled": untiled, "exact, stage per GroupNorm (before)": before, "exact, layer order (now)": after}
    outputs = {}

    def run(side: str) -> dict:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            outputs[side] = sides[side]()
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}

    runs = alternated_runs(list(sides), args.repeats, run)
    seconds = {side: statistics.median(r["seconds"] for r in results) for side, results in runs.items()}
    cpu = {side: statistics.median(r["cpu"] for r in results) for side, results in runs.items()}
    rows = [
        {
            "decode": side,
            "seconds": f"{seconds[side]:.2f}",
            "vs untiled": f"{seconds[side] / seconds['untiled']:.1f}x",
            "CPU seconds": f"{cpu[side]:.2f}",
            "CPU vs untiled": f"{cpu[side] / cpu['untiled']:.1f}x",
            "max abs diff vs untiled": f"{float((outputs[side] - outputs['untiled']).abs().max()):.1e}",
        }
        for side in sides
    ]
    print(
        f"OD-VAE decode, {'tiny config' if args.quick else 'release config'}"
        f"{' with ' + json.dumps(config) if config and not args.quick else ''}, random weights, float32, CPU, "
        f"{args.threads} thread(s), 1x3x{args.frames}x{args.size}x{args.size}, {args.tile}-px exact tiles, "
        f"median of {args.repeats} alternated runs"
    )
    print("(CPU seconds: this process's CPU time, which a machine shared with other work changes less than seconds)")
    columns = ["decode", "seconds", "vs untiled", "CPU seconds", "CPU vs untiled", "max abs diff vs untiled"]
    print(format_table(rows, columns))


if __name__ == "__main__":
    main()
