"""Reducio-VAE speed and memory: our `AutoencoderKLReducio` against the original `ReducioVAE`.

    python benchmarks/bench_reducio.py                                     # ours only
    python benchmarks/bench_reducio.py --original-repo /tmp/Reducio-VAE    # also the original, same weights
    python benchmarks/bench_reducio.py --quick                             # tiny config, seconds (smoke test)
    python benchmarks/bench_reducio.py --traced-memory [--original-repo ...]  # peak tensor memory, no compute

Rows: the full-size released ft4 config with random weights (seeded, shared by both implementations), fp32, on a
1x3x16x256x256 clip: encode (the 3D encoder plus the content encoder on the content frame, what a caller needs
before decoding) and decode (normalised 1x16x4x8x8 latents + the content frame). Each measurement runs in a fresh
process (`benchmarks/_harness.py`): median seconds of `--repeats` runs and the peak RSS of the call (weights and
inputs count, model construction does not). The last column is the max abs difference of the two outputs.

`--traced-memory` runs both implementations on fake tensors (`FakeTensorMode`, no arithmetic, seconds) under
torch's `MemTracker` and prints the peak of live tensor bytes (weights + activations) for 16x256x256 and for a
tiled 16x1024x1024 decode: an estimate of the tensors' share of the peak (no allocator overhead, interpreter or
kernel workspaces), not a measurement; on the original at 16x256x256 it gives 10.0 GiB against the 10.3 GiB RSS
measured in SPEC.md.

`--original-repo` is a checkout of microsoft/Reducio-VAE (commit b460c07; not part of this project, never
committed). Only `ldm/models/reducio_vae.py` and the modules it imports run; training-only imports
(pytorch_lightning, taming's LPIPS) get stand-ins, the loss is replaced by an empty module, and
`xformers.ops.memory_efficient_attention` (CUDA only) by exact softmax attention, as in the project's reference
harness (SPEC.md). It needs `einops` and Pillow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    ORIGINAL_COLUMNS,
    SIDE_BY_SIDE_COLUMNS,
    add_device_argument,
    alternated_runs,
    format_table,
    gib,
    measure,
    peak_cell,
    rss_bytes,
    side_by_side_row,
    stub_imports,
)

# A small layout with the released grammar (fusion at two levels, a mid fusion), for --quick.
TINY = dict(
    conv_in_channels=32,
    block_out_channels=[64, 32, 32, 32],
    decoder_block_out_channels=[64, 32, 32, 32],
    layers_per_block=1,
    content_conv_in_channels=32,
    content_block_out_channels=[32, 64, 32],
    fusion_feature_index=[-1, 1, 2, -1],
    latent_channels=4,
    z_channels=8,
    window_size=8,
    content_window_size=4,
)
TINY_ORIGINAL = dict(
    embed_dim=4,
    ddconfig=dict(ch=32, ch_in=32, ch_mult=[2, 1, 1, 1], ch_fuse=[-1, 1, 2, -1], num_res_blocks=1, z_channels=8,
                  window_size=8),
    ddconfig_2d=dict(ch=32, ch_mult=[1, 2, 1], window_size=4),
)  # fmt: skip
_STUBS = ("pytorch_lightning", "taming", "xformers")


class NoLoss(torch.nn.Module):
    """Stands in for the original's training loss (LPIPS + discriminator), which inference never calls."""

    disc_loss_scale = 1.0

    def __init__(self, **_):
        super().__init__()


def _exact_attention(q, k, v, attn_bias=None):
    """`xformers.ops.memory_efficient_attention` on `(B, N, d)` inputs, as exact softmax attention."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return weights @ v


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "LightningModule":
            return torch.nn.Module
        if name == "memory_efficient_attention":
            return _exact_attention
        if name == "ops":
            return self
        return type(
            name, (torch.nn.Module,), {"__init__": lambda self, *args, **kwargs: torch.nn.Module.__init__(self)}
        )


def original_class(repo: str):
    """`ReducioVAE` from a microsoft/Reducio-VAE checkout."""
    if not (Path(repo) / "ldm" / "models" / "reducio_vae.py").exists():
        raise SystemExit(f"{repo} is not a Reducio-VAE checkout (no ldm/models/reducio_vae.py).")
    stub_imports(_STUBS, _Stub)
    sys.path.insert(0, str(Path(repo)))
    from ldm.models.reducio_vae import ReducioVAE

    return ReducioVAE


def _original_params(quick: bool) -> dict:
    from diffusers_videovae.checkpoints.reducio import VARIANTS

    params = {key: dict(value) if isinstance(value, dict) else value for key, value in VARIANTS["ft4"].items()}
    if quick:
        params["embed_dim"] = TINY_ORIGINAL["embed_dim"]
        params["ddconfig"].update(TINY_ORIGINAL["ddconfig"])
        params["ddconfig_2d"].update(TINY_ORIGINAL["ddconfig_2d"])
    return params


def _config(quick: bool) -> dict:
    from diffusers_videovae.checkpoints.reducio import translate_config

    return translate_config(_original_params(quick))


def write_weights(path: Path, quick: bool) -> None:
    """Random weights in the ORIGINAL key layout (what both implementations load)."""
    from safetensors.torch import save_file

    from diffusers_videovae.models.reducio_vae import AutoencoderKLReducio

    torch.manual_seed(0)
    model = AutoencoderKLReducio(**_config(quick))
    original = {_original_key(key): value.contiguous() for key, value in model.state_dict().items()}
    # The content encoder's unused second mid block and output norm: random, never read by either.
    width = _config(quick)["content_block_out_channels"][-1]
    dims = (3, 3)
    for name, shape in {
        "mid.block_2.norm1.weight": (width,),
        "mid.block_2.norm1.bias": (width,),
        "mid.block_2.conv1.weight": (width, width, *dims),
        "mid.block_2.conv1.bias": (width,),
        "mid.block_2.norm2.weight": (width,),
        "mid.block_2.norm2.bias": (width,),
        "mid.block_2.conv2.weight": (width, width, *dims),
        "mid.block_2.conv2.bias": (width,),
        "norm_out.weight": (width,),
        "norm_out.bias": (width,),
    }.items():
        original[f"encoder_2d.{name}"] = torch.randn(shape) * 0.02
    save_file(original, str(path))


def _original_key(key: str) -> str:
    """Our key -> the original's (the inverse of `checkpoints/reducio.py`'s rename table)."""
    if key.startswith("encoder."):
        return "encoder_3d." + key[len("encoder.") :]
    if key.startswith("content_encoder."):
        return "encoder_2d." + key[len("content_encoder.") :]
    key = key.replace(".fusion.attn.to_out.", ".fuse.0.attn.to_out.0.")
    return key.replace(".fusion.", ".fuse.0.")


def setup(impl: str, weights: str, quick: bool, original_repo: str | None, task: str, side: int):
    from safetensors.torch import load_file

    state = load_file(weights)
    if impl == "ours":
        from diffusers_videovae.checkpoints._common import OriginalCheckpoint
        from diffusers_videovae.checkpoints.reducio import convert
        from diffusers_videovae.models.reducio_vae import AutoencoderKLReducio

        # Built, then weights copied in, exactly like the original below, so both start with all weights resident.
        model = AutoencoderKLReducio(**_config(quick))
        model.load_state_dict(convert(OriginalCheckpoint(state, _original_params(quick))).state_dict)
    else:
        params = _original_params(quick)
        model = original_class(original_repo)(
            lossconfig={"target": "bench_reducio.NoLoss"}, ddconfig=params["ddconfig"],
            ddconfig_2d=params["ddconfig_2d"], embed_dim=params["embed_dim"],
        )  # fmt: skip
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"original: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval().requires_grad_(False)
    config = _config(quick)
    generator = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 16, side, side, generator=generator) * 2 - 1
    down = 2 ** (len(config["block_out_channels"]) - 1)
    latent_shape = (
        1,
        config["latent_channels"],
        16 // 2 ** config["num_temporal_downsamples"],
        side // down,
        side // down,
    )
    latents = torch.nn.functional.layer_norm(torch.randn(latent_shape, generator=generator), latent_shape[1:])
    return impl, model, task, video, latents


def call(state):
    """Run the task; return its output, the resident memory just before, and the CPU seconds."""
    impl, model, task, video, latents = state
    frame = video[:, :, 7]
    start = rss_bytes()
    cpu_start = time.process_time()
    with torch.no_grad():
        if task == "encode":
            if impl == "ours":
                output = model.encode(video).latent_dist.mean
                model.encode_content(frame)
            else:
                output = model.encode_3d(video).mean
                model.encode_2d(frame)
        elif impl == "ours":
            output = model.decode(latents, content_frame=frame).sample
        else:
            output = model.decode(latents, model.encode_2d(frame))
    return output.cpu().numpy().copy(), start, time.process_time() - cpu_start


def _peak(result: dict) -> str:
    """Peak RSS of the call, and in brackets the part above the RSS at its start (activations and outputs)."""
    return f"{peak_cell(result)} ({gib(result['peak_bytes'] - result['result'][1])} above start)"


def traced_peak(impl: str, task: str, side: int, original_repo: str | None, tiled: bool) -> float:
    """Peak live tensor bytes (GiB) of one call of the full ft4 config on fake tensors (see the module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            # no gradient hooks: the weights do not require gradients at inference
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

        # Only the global peak is wanted: no per-module statistics (which refuse modules called once per tile).
        def _pre_fw_hook(self, module, inputs):
            pass

        def _post_fw_hook(self, module, inputs, outputs):
            pass

    from diffusers_videovae.models.reducio_vae import AutoencoderKLReducio

    with FakeTensorMode():
        if impl == "ours":
            model = AutoencoderKLReducio(**_config(False))  # its value checks skip fake tensors (`has_values`)
            if tiled:
                model.enable_tiling(320, 320)  # the original's released tiles, 320 px every 256
        else:
            params = _original_params(False)
            model = original_class(original_repo)(
                lossconfig={"target": "bench_reducio.NoLoss"}, ddconfig=params["ddconfig"],
                ddconfig_2d=params["ddconfig_2d"], embed_dim=params["embed_dim"],
            )  # fmt: skip
        model.eval().requires_grad_(False)
        video = torch.rand(1, 3, 16, side, side) * 2 - 1
        frame = video[:, :, 7].contiguous()
        latents = torch.randn(1, 16, 4, side // 32, side // 32)
        tracker = Tracker()
        tracker.track_external(model, video, frame, latents)
        with tracker, torch.no_grad():
            if impl == "ours" and task == "encode":
                model.encode(video)
                model.encode_content(frame)
            elif impl == "ours":
                model.decode(latents, content_frame=frame)
            elif task == "encode":
                model.encode_3d(video, use_tiling=tiled)
                model.encode_2d(frame, use_tiling=tiled)
            else:
                model.decode(latents, model.encode_2d(frame, use_tiling=tiled), use_tiling=tiled)
        peak = tracker.get_tracker_snapshot("peak")
    return max(values["Total"] for values in peak.values()) / 2**30


def traced_memory_table(original_repo: str | None) -> None:
    rows = []
    for task, side, tiled in (("encode", 256, False), ("decode", 256, False), ("decode", 1024, True)):
        row = {
            "task": f"{task} 1x3x16x{side}x{side}" + (" (tiled, 320/256)" if tiled else ""),
            "ours": f"{traced_peak('ours', task, side, None, tiled):.2f} GiB",
        }
        if original_repo:
            row["original"] = f"{traced_peak('original', task, side, original_repo, tiled):.2f} GiB"
        rows.append(row)
    print("\nReducio-VAE, full-size ft4 config: traced peak of live tensors (weights included), fake tensors\n")
    print(format_table(rows, ["task", "ours"] + (["original"] if original_repo else [])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-repo", default=None, help="microsoft/Reducio-VAE checkout to compare against")
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the issue asks)")
    parser.add_argument("--quick", action="store_true", help="tiny config and a 32x32 clip (smoke test)")
    parser.add_argument(
        "--tasks", nargs="+", choices=("encode", "decode"), default=["encode", "decode"], help="rows to measure"
    )
    parser.add_argument("--size", type=int, default=256, help="height and width of the clip (multiple of 32)")
    parser.add_argument(
        "--traced-memory", action="store_true", help="only the traced peak tensor memory (fake tensors, no compute)"
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.traced_memory:
        if args.original_repo:
            original_class(args.original_repo)
        traced_memory_table(args.original_repo)
        return
    side = 32 if args.quick else args.size

    with tempfile.TemporaryDirectory(prefix="bench_reducio_") as folder:
        weights = Path(folder) / "weights.safetensors"
        write_weights(weights, args.quick)
        common = dict(weights=str(weights), quick=args.quick, original_repo=args.original_repo, side=side)
        impls = ["ours"] + (["original"] if args.original_repo else [])
        rows = []
        for task in args.tasks:
            runs = alternated_runs(
                impls,
                args.repeats,
                lambda impl, task=task: measure(
                    setup, call, repeats=1, threads=args.threads, device=args.device, impl=impl, task=task, **common
                ),
            )
            for impl, results in runs.items():
                for result in results:
                    if "error" in result:
                        raise SystemExit(f"{impl} {task}: {result['error']}")
            summary = {
                impl: {
                    "seconds": statistics.median(r["seconds"] for r in results),
                    "cpu": statistics.median(r["result"][2] for r in results),
                    "peak": _peak(max(results, key=lambda r: r["peak_bytes"])),
                    "output": results[-1]["result"][0],
                }
                for impl, results in runs.items()
            }
            rows.append({"task": f"{task} 1x3x16x{side}x{side}", **side_by_side_row(summary)})
        columns = ["task", *SIDE_BY_SIDE_COLUMNS, *(ORIGINAL_COLUMNS if args.original_repo else [])]
        print(
            f"\nReducio-VAE, {'tiny' if args.quick else 'full-size ft4'} config, random weights, fp32, CPU, "
            f"{args.threads} threads, median of {args.repeats}\n"
        )
        print(format_table(rows, columns))


if __name__ == "__main__":
    main()
