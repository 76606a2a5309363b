"""What exact tiles cost, before and after tiling in layer order: untiled vs exact tiles, on one model's calls.

    python benchmarks/bench_exact_tiles.py                     # OD-VAE decode, release config, 9x128x128, 64-px tiles
    python benchmarks/bench_exact_tiles.py --model reducio     # Reducio encode and decode, mid-size config
    python benchmarks/bench_exact_tiles.py --model cascadev    # CascadeV's SVD decode, mid-size config
    python benchmarks/bench_exact_tiles.py --model reducio --quick   # tiny config (seconds)

Models and sizes (defaults; `--frames`, `--size`, `--tile`, `--config` change them):
* `odvae`: the release config, decode of a 9x128x128 clip's latents, 64-px tiles;
* `reducio`: `MID_SIZE["reducio"]` (the release's layout at a quarter of its widths), encode of a 16x256x256 clip
  and decode of its latents with a content frame, 64-px tiles;
* `cascadev`: `MID_SIZE["cascadev"]` (the release's SVD decoder at a quarter of its widths), `decode_svd_latents` of
  one 4-frame chunk of 32x32 latents (256x256 px), 64-px tiles.

Three ways to run each call with the same random weights and inputs, alternated in one process (`alternated_runs`,
so that a change in machine load hits them alike): untiled; exact tiles as before (`tiled_with_shared_group_norm`
over each whole tiled stage with its receptive-field halo: one partial pass over the tiles per GroupNorm, then a
full one); exact tiles now (`tiled_in_layer_order`: one layer at a time over all tiles, each with its own small
halo); with `--spill`, exact tiles now with their step boundaries in temporary files (`tile_offload_device="disk"`;
the other exact sides keep them in memory). Prints median seconds and CPU seconds, their ratio to untiled, the
largest difference to untiled and, with `--traced`, for all of them (`--skip-before` or not) the FLOPs of each call and the peak of the tensors it creates,
traced on the meta device (`FlopCounterMode`, `memory.LiveTensorBytes`: no arithmetic; attention as the fused
kernels allocate it; weights and inputs do not count; an estimate of the tensors' share of the peak, not a
measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _harness import alternated_runs, format_table  # noqa: E402
from _tiny_configs import SMALL_TILING_CONFIGS  # noqa: E402

SIDES = ("untiled", "exact, stage per GroupNorm (before)", "exact, layer order (now)")
SPILLED = "exact, layer order, spilled to disk"  # with --spill: step boundaries in temporary files

# Mid-size configs: the released layouts with a quarter of their widths (GroupNorms of 32 groups still fit).
MID_SIZE = {
    "odvae": {},
    "reducio": dict(
        conv_in_channels=32,
        block_out_channels=(32, 64, 64, 128, 128, 128),
        content_conv_in_channels=32,
        content_block_out_channels=(32, 64, 128, 128),
    ),
    # The small tiling layout's DiT, the released SVD decoder's layers (2 resnets per level) at a quarter of its widths.
    "cascadev": {
        **SMALL_TILING_CONFIGS["cascadev"],
        "svd_block_out_channels": (32, 64, 128, 128),
        "svd_layers_per_block": 2,
    },
}
QUICK = {
    "odvae": dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4),
    "reducio": SMALL_TILING_CONFIGS["reducio"],
    "cascadev": SMALL_TILING_CONFIGS["cascadev"],
}
# (frames, size, tile) by default and with --quick.
SIZES = {"odvae": (9, 128, 64), "reducio": (16, 256, 64), "cascadev": (4, 256, 64)}
QUICK_SIZES = {"odvae": (5, 64, 16), "reducio": (16, 32, 8), "cascadev": (4, 192, 64)}


def _odvae_stage_per_group_norm(model, z: torch.Tensor) -> torch.Tensor:
    """OD-VAE's exact decode before layer order: the whole stage re-run from its input for every GroupNorm."""
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


def _whole_stage_halo(steps) -> int:
    """The halo Reducio and CascadeV gave a whole tiled stage before layer order, in the stage's input pixels: the
    sum of its layers' reaches, each at its own scale (a downsampler counted 1: one pixel past its own two), rounded
    up to a multiple of the stage's downsampling."""
    from diffusers.models.upsampling import Upsample2D

    from diffusers_videovae.models.reducio_vae import ReducioDownsample, ReducioUpsample

    reach, scale = Fraction(0), Fraction(1)  # scale: stage input pixels per pixel of the step's input
    for step in steps:
        if isinstance(step.modules, ReducioDownsample):
            reach, scale = reach + scale, scale * 2
        elif isinstance(step.modules, (ReducioUpsample, Upsample2D)):
            reach, scale = reach + scale, scale / 2
        else:
            reach += step.halo * scale
    multiple = max(scale, 1)
    return int(math.ceil(reach / multiple) * multiple)


@contextlib.contextmanager
def _stage_per_group_norm(module):
    """Inside: `module`'s exact tiles as before layer order (each list of steps run as one stage by
    `tiled_with_shared_group_norm`, with the whole stage's halo)."""
    from diffusers_videovae.models import reducio_vae
    from diffusers_videovae.models._tiling import tiled_with_shared_group_norm

    def one_stage(steps, x: torch.Tensor, core) -> torch.Tensor:
        def stage(h: torch.Tensor) -> torch.Tensor:
            for step in steps:
                h = step.run(h)
            return h

        modules = [step.modules for step in steps]
        return tiled_with_shared_group_norm(stage, x, modules, core, _whole_stage_halo(steps))

    def whole_stage(steps, x: torch.Tensor, core, offload_device=None) -> torch.Tensor:
        # Before layer order, boundaries stayed in memory (offload_device unused) and Reducio's fusion blocks ran on
        # the whole clip between the tiled stages: a fusion step splits the steps into stages.
        stage: list = []
        for step in steps:
            if isinstance(step.run, reducio_vae._FusionStep):
                x = step.run(one_stage(stage, x, core) if stage else x)
                stage = []
            else:
                stage.append(step)
        return one_stage(stage, x, core) if stage else x

    layer_order = module.tiled_in_layer_order
    module.tiled_in_layer_order = whole_stage
    try:
        yield
    finally:
        module.tiled_in_layer_order = layer_order


def _build(name: str, config: dict):
    from diffusers_videovae import AutoencoderCascadeV, AutoencoderKLODVAE, AutoencoderKLReducio

    classes = {"odvae": AutoencoderKLODVAE, "reducio": AutoencoderKLReducio, "cascadev": AutoencoderCascadeV}
    torch.manual_seed(0)
    model = classes[name](**config).eval()
    with torch.no_grad():  # random weights with some spread in every layer (default inits leave zero biases)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def _calls(name: str, frames: int, size: int) -> dict[str, tuple[Callable, Callable]]:
    """Per call: `(inputs(model, device), run(model, side, *inputs))`."""
    from diffusers_videovae.models import cascadev, reducio_vae

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(1)

    if name == "odvae":

        def latents(model, device):
            shape = (1, model.config.latent_channels, 1 + (frames - 1) // 4, size // 8, size // 8)
            return (torch.randn(shape, generator=generator()).to(device),)

        def decode(model, side, z):
            return _odvae_stage_per_group_norm(model, z) if side == SIDES[1] else model.decode(z).sample

        return {"decode": (latents, decode)}
    if name == "reducio":

        def video(model, device):
            return ((torch.rand(1, 3, frames, size, size, generator=generator()) * 2 - 1).to(device),)

        def reducio_latents(model, device):
            spatial, temporal = model.config.spatial_compression_ratio, model.config.temporal_compression_ratio
            shape = (1, model.config.latent_channels, frames // temporal, size // spatial, size // spatial)
            frame = torch.rand(1, 3, size, size, generator=generator()) * 2 - 1
            return torch.randn(shape, generator=generator()).to(device), frame.to(device)

        def encode(model, side, x):
            with _stage_per_group_norm(reducio_vae) if side == SIDES[1] else contextlib.nullcontext():
                return model.encode(x).latent_dist.mean

        def reducio_decode(model, side, z, frame):
            with _stage_per_group_norm(reducio_vae) if side == SIDES[1] else contextlib.nullcontext():
                return model.decode(z, content_frame=frame).sample

        return {"encode": (video, encode), "decode": (reducio_latents, reducio_decode)}

    def svd_latents(model, device):
        shape = (1, model.config.svd_latent_channels, frames, size // 8, size // 8)
        return (torch.randn(shape, generator=generator()).to(device),)

    def svd_decode(model, side, z):
        with _stage_per_group_norm(cascadev) if side == SIDES[1] else contextlib.nullcontext():
            return model.decode_svd_latents(z, chunk_size=frames)

    return {"SVD decode": (svd_latents, svd_decode)}


def _set_side(model, side: str, tile: int) -> None:
    if side == SIDES[0]:
        model.disable_tiling()
    else:
        model.enable_tiling(tile, tile, exact=True)
        model.tile_offload_device = "disk" if side == SPILLED else None


def _traced(model, calls, tile: int, sides: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, int]]:
    """`(peak bytes, FLOPs)` of the tensors each call creates and the arithmetic it does, per side, traced on `meta`
    (see the module docstring): the old exact tiles too, whose run at full cost can take most of an hour."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffusers_videovae.memory import LiveTensorBytes, _FusedAttention, meta_copy

    copy, traced = meta_copy(model), {}
    for call, (inputs, run) in calls.items():
        tensors = inputs(copy, "meta")
        for side in sides:
            _set_side(copy, side, tile)
            with torch.no_grad(), FlopCounterMode(display=False) as flops:
                with LiveTensorBytes() as live, _FusedAttention():
                    run(copy, side, *tensors)
            traced[call, side] = (live.peak, flops.get_total_flops())
    return traced


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SIZES), default="odvae")
    parser.add_argument("--frames", type=int, help="frames of the clip (OD-VAE 1 + 4k, Reducio 16, CascadeV any)")
    parser.add_argument("--size", type=int, help="height and width of the clip in pixels")
    parser.add_argument("--tile", type=int, help="tile size in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", type=json.loads, help="config (JSON) instead of the model's default one")
    parser.add_argument("--traced", action="store_true", help="also each call's traced peak of tensors and FLOPs")
    parser.add_argument("--skip-before", action="store_true", help="do not time the old exact tiles (slow)")
    parser.add_argument("--quick", action="store_true", help="tiny config and sizes, 1 repeat")
    parser.add_argument("--spill", action="store_true", help="also exact tiles with their step boundaries on disk")
    args = parser.parse_args(argv)
    name = args.model
    frames, size, tile = QUICK_SIZES[name] if args.quick else SIZES[name]
    frames, size, tile = args.frames or frames, args.size or size, args.tile or tile
    config = args.config if args.config is not None else (QUICK if args.quick else MID_SIZE)[name]
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    model = _build(name, config)
    calls = _calls(name, frames, size)
    all_sides = (*SIDES, SPILLED) if args.spill else SIDES
    sides = [side for side in all_sides if not (args.skip_before and side == SIDES[1])]
    traced = _traced(model, calls, tile, all_sides) if args.traced else {}
    inputs = {call: make(model, "cpu") for call, (make, _) in calls.items()}
    outputs = {}

    def run(key: tuple[str, str]) -> dict:
        call, side = key
        _set_side(model, side, tile)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            outputs[key] = calls[call][1](model, side, *inputs[call])
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}

    keys = [(call, side) for call in calls for side in sides]
    runs = alternated_runs(keys, repeats, run)
    rows = []
    for call in calls:
        base_seconds = statistics.median(r["seconds"] for r in runs[call, SIDES[0]])
        base_cpu = statistics.median(r["cpu"] for r in runs[call, SIDES[0]])
        for side in all_sides if traced else sides:
            row = {"call": call, "mode": side}
            if (call, side) in runs:
                seconds = statistics.median(r["seconds"] for r in runs[call, side])
                cpu = statistics.median(r["cpu"] for r in runs[call, side])
                difference = float((outputs[call, side] - outputs[call, SIDES[0]]).abs().max())
                row.update(
                    {
                        "seconds": f"{seconds:.2f}",
                        "vs untiled": f"{seconds / base_seconds:.1f}x",
                        "CPU seconds": f"{cpu:.2f}",
                        "CPU vs untiled": f"{cpu / base_cpu:.1f}x",
                        "max abs diff vs untiled": f"{difference:.1e}",
                        "max abs untiled": f"{float(outputs[call, SIDES[0]].abs().max()):.1e}",
                    }
                )
            else:
                row.update(dict.fromkeys(["seconds", "vs untiled", "CPU seconds", "CPU vs untiled"], "not run"))
            if traced:
                peak, flops = traced[call, side]
                row["traced peak MiB"] = f"{peak / 2**20:.0f}"
                row["GFLOPs"] = f"{flops / 1e9:.1f}"
                row["FLOPs vs untiled"] = f"{flops / traced[call, SIDES[0]][1]:.1f}x"
            rows.append(row)
    described = json.dumps(config) if config else "release config"
    print(
        f"{name}, {'tiny config' if args.quick else 'config'} {described}, random weights, float32, CPU, "
        f"{args.threads} thread(s), {frames} frames of {size}x{size} px, {tile}-px exact tiles, median of "
        f"{repeats} alternated run(s)"
    )
    print("(CPU seconds: this process's CPU time, which a machine shared with other work changes less than seconds)")
    columns = list(rows[0])
    print(format_table(rows, columns))
    return rows


if __name__ == "__main__":
    main()
