# Copyright 2026 The diffusers-videovae contributors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The `videovae` command: try a VAE on a clip, measure it, convert and publish checkpoints.

Every sub-command is a parser with `set_defaults(func=...)`; `main` parses and calls `args.func(args)`.
MODEL arguments accept a Hub repo id, a local diffusers folder, or an ORIGINAL checkpoint file (read on the fly,
as `from_single_file` does). Errors a user can fix (bad file, bad size, unknown model) are printed as one line;
`--traceback` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .loaders import TORCH_DTYPES
from .video import InputRule, VideoReadError, available_memory_bytes, input_rule

LATENT_FORMAT = "diffusers-videovae-latents/1"
_SCALING_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
# Fraction of the available memory an untiled run may use before `--tiling auto` turns tiling on.
_MEMORY_HEADROOM = 0.7
# Peak memory of a reconstruction / largest single layer's input + output (see `estimate_memory`).
_ACTIVATION_FACTOR = 6


class CLIError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


# -- shared helpers ---------------------------------------------------------------------------------------------


def resolve_device(name: str, threads: int | None = None) -> torch.device:
    if threads is not None:
        if threads < 1:
            raise CLIError(f"--threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch sees no CUDA device.")
    return device


def load(args: argparse.Namespace, device: torch.device | None = None) -> torch.nn.Module:
    """The model named by `-m` (or the packaged demo model), in the requested dtype, on `device`."""
    from .loaders import DEMO_MODEL_DIR, load_model

    spec = getattr(args, "model", None)
    if spec is None:
        if not (DEMO_MODEL_DIR / "config.json").exists():
            raise CLIError(
                "No model given and the demo model is not installed in this package "
                f"({DEMO_MODEL_DIR}); pass one with -m (a Hub id, a diffusers folder, or an original checkpoint)."
            )
        spec = str(DEMO_MODEL_DIR)
    path = Path(spec)
    if not path.exists() and (
        spec.startswith((".", "/", "~")) or path.suffix in {".pth", ".pt", ".ckpt", ".safetensors"}
    ):
        raise CLIError(f"Model not found: {spec} (not a file or folder here; Hub ids look like owner/name).")
    dtype = TORCH_DTYPES[getattr(args, "dtype", "float32")]
    options = {}
    for name in ("model_type", "variant", "original_config"):
        if getattr(args, name, None):
            options[name] = getattr(args, name)
    model = load_model(spec, torch_dtype=dtype, **options)
    args.model_resolved = spec
    return model.to(device or torch.device("cpu")).eval()


def config_hash(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the model's public config: identifies the latent space latents belong to."""
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def scaling_of(model: torch.nn.Module) -> dict[str, Any]:
    """The latent normalisation constants in the config (what a pipeline applies to the raw latents)."""
    config = model.config
    return {key: _plain(config[key]) for key in _SCALING_KEYS if key in config and config[key] is not None}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _decode_kwargs(model: torch.nn.Module, num_frames: int) -> dict[str, int]:
    # Open-Sora's decode needs the clip's frame count (its latents do not determine it).
    return {"num_frames": num_frames} if "num_frames" in inspect.signature(model.decode).parameters else {}


def latent_shape(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """`(C, t, h, w)` of the latents of a `(T, H, W)` clip, from the model's ratios."""
    num_frames, height, width = shape
    rule = input_rule(model)
    if hasattr(model, "num_latent_frames"):
        latent_frames = model.num_latent_frames(num_frames)
    else:
        latent_frames = 1 + (num_frames - 1) // rule.temporal_compression
    return (
        int(model.config.latent_channels),
        latent_frames,
        height // rule.spatial_multiple,
        width // rule.spatial_multiple,
    )


def parse_size(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected TxHxW such as 17x256x256, got {text!r}")
    return tuple(int(group) for group in match.groups())


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 1024**3:.2f} GiB"


# -- memory: estimate before running, measure while running ---------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes of the largest activations an encode + decode needs, untiled and tiled."""

    untiled: int
    tiled: int
    available: int

    def fits_untiled(self) -> bool:
        return self.untiled <= _MEMORY_HEADROOM * self.available


def _largest_activation(model: torch.nn.Module, shape: tuple[int, int, int], device, dtype) -> int:
    """Largest (input + output) bytes of any single layer while reconstructing a clip of `shape`."""
    largest = 0

    def record(module, inputs, output):
        nonlocal largest
        size = sum(t.numel() * t.element_size() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        largest = max(largest, size)

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        sample = torch.zeros(1, 3, *shape, device=device, dtype=dtype)
        with torch.no_grad():
            z = model.encode(sample).latent_dist.mode()
            model.decode(z, **_decode_kwargs(model, shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return largest


def estimate_memory(model: torch.nn.Module, shape: tuple[int, int, int], device: torch.device) -> MemoryEstimate:
    """Extrapolate peak activation memory for a `(T, H, W)` clip from two tiny probe runs.

    Each probe records the largest single layer's input + output; two frame counts give how it grows with T
    (flat for models that encode in causal chunks), and it grows linearly with H * W for convolutional layers.
    Several activations are alive at once (residual branches, norms, caches, allocator slack): measured peaks of the
    tiny IV-VAE, OD-VAE and Open-Sora models on 17x256x256 were 2.4x to 6x the largest layer, so the result is 6x
    it, on the safe side. An estimate, meant to decide tiling, not to account bytes.
    """
    rule = input_rule(model)
    dtype = next(model.parameters()).dtype
    side = 2 * rule.spatial_multiple
    frames_a = 1 + rule.temporal_compression
    frames_b = 1 + 2 * rule.temporal_compression
    was_tiling = getattr(model, "use_tiling", False)
    model.use_tiling = False
    try:
        at_a = _largest_activation(model, (frames_a, side, side), device, dtype)
        at_b = _largest_activation(model, (frames_b, side, side), device, dtype)
    finally:
        model.use_tiling = was_tiling
    per_frame = max(0.0, (at_b - at_a) / (frames_b - frames_a))

    def extrapolate(num_frames: int, height: int, width: int) -> int:
        at_probe_area = at_a + per_frame * max(0, num_frames - frames_a)
        return int(_ACTIVATION_FACTOR * at_probe_area * (height * width) / (side * side))

    num_frames, height, width = shape
    tile_h = getattr(model, "tile_sample_min_height", None) or height
    tile_w = getattr(model, "tile_sample_min_width", None) or width
    tile_t = getattr(model, "tile_sample_min_num_frames", None) or num_frames
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        available = available_memory_bytes()
    return MemoryEstimate(
        untiled=extrapolate(num_frames, height, width),
        tiled=extrapolate(min(num_frames, tile_t), min(height, tile_h), min(width, tile_w)),
        available=available,
    )


class PeakMemory:
    """Peak memory of a block: `torch.cuda.max_memory_allocated` on CUDA, else the process RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: "5" resets VmHWM to the current RSS, so the peak is this block's
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _rss_high_water_mark()

    def describe(self) -> str:
        what = "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process peak RSS"
        return f"{gib(self.peak)} ({what})"


def _rss_high_water_mark() -> int:
    try:
        with open("/proc/self/status") as handle:
            match = re.search(r"VmHWM:\s+(\d+)\s+kB", handle.read())
        if match:
            return int(match.group(1)) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- reconstruction core (shared by reconstruct and eval) -------------------------------------------------------


@dataclass
class Reconstruction:
    video: torch.Tensor
    latents: torch.Tensor
    encode_seconds: float
    decode_seconds: float


@dataclass(frozen=True)
class Segment:
    """Frames `[start, stop)` of the clip; the first `overlap` frames (and latent frames) repeat the previous
    segment's last ones and are dropped from the output."""

    start: int
    stop: int
    overlap: int = 0


def plan_segments(num_frames: int, segment_frames: int | None, rule: InputRule) -> list[Segment]:
    """Split a clip into segments of at most `segment_frames` frames, each valid for the model.

    Causal models (`T = 1 + k n`) continue each segment from the previous segment's last frame, which is encoded
    again as the new segment's first frame and dropped from its output, so that the segments add up to the clip
    and every segment keeps the frame rule. Models that take any T get plain consecutive segments.
    """
    if not segment_frames or segment_frames >= num_frames:
        return [Segment(0, num_frames)]
    if (
        segment_frames < 1
        or rule.valid_num_frames(segment_frames) != segment_frames
        or (not rule.any_num_frames and segment_frames == 1)
    ):
        raise CLIError(
            f"--segment-frames {segment_frames} breaks the model's frame rule ({rule.describe()}); "
            f"use e.g. {1 + 4 * rule.temporal_compression}."
        )
    if rule.any_num_frames:
        return [
            Segment(start, min(start + segment_frames, num_frames)) for start in range(0, num_frames, segment_frames)
        ]
    segments = [Segment(0, segment_frames)]
    while segments[-1].stop < num_frames:
        start = segments[-1].stop - 1
        segments.append(Segment(start, min(start + segment_frames, num_frames), overlap=1))
    return segments


def reconstruct_video(
    model: torch.nn.Module,
    video: torch.Tensor,
    *,
    segment_frames: int | None = None,
    sample_posterior: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Reconstruction:
    """Encode then decode `video (1, 3, T, H, W)`, segment by segment, with a progress bar over the steps.

    Returns the reconstruction `(1, 3, T, H, W)` (float32, CPU) and the latents (posterior mode, or a sample).
    """
    from tqdm.auto import tqdm

    segments = plan_segments(video.shape[2], segment_frames, input_rule(model))
    bar = tqdm(total=2 * len(segments), desc="reconstruct", unit="step", disable=not progress, leave=False)
    # Models encode/decode in chunks and tiles internally; counting the calls of their encoder/decoder modules shows
    # progress inside a step without depending on a model's internals.
    calls = {"encoder": 0, "decoder": 0}
    handles = []
    for name in calls if progress else ():
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):

            def tick(*_, name=name):
                calls[name] += 1
                bar.set_postfix_str(f"{name} chunks/tiles {calls[name]}")

            handles.append(module.register_forward_hook(tick))
    try:
        return _run_segments(model, video, segments, sample_posterior, generator, bar)
    finally:
        for handle in handles:
            handle.remove()
        bar.close()


def _run_segments(model, video, segments, sample_posterior, generator, bar) -> Reconstruction:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    outputs, latents = [], []
    encode_seconds = decode_seconds = 0.0
    with torch.no_grad():
        for index, segment in enumerate(segments):
            frames = video[:, :, segment.start : segment.stop].to(device=device, dtype=dtype)
            where = f" segment {index + 1}/{len(segments)}" if len(segments) > 1 else ""
            bar.set_description(f"encode{where}")
            began = time.perf_counter()
            posterior = model.encode(frames).latent_dist
            z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
            _synchronize(device)
            encode_seconds += time.perf_counter() - began
            bar.update()
            bar.set_description(f"decode{where}")
            began = time.perf_counter()
            sample = model.decode(z, **_decode_kwargs(model, frames.shape[2])).sample
            _synchronize(device)
            decode_seconds += time.perf_counter() - began
            bar.update()
            outputs.append(sample[:, :, segment.overlap :].float().cpu())
            latents.append(z[:, :, segment.overlap :].cpu())
    return Reconstruction(torch.cat(outputs, dim=2), torch.cat(latents, dim=2), encode_seconds, decode_seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


TILING_HELP = (
    "on: the model's default tiles (OD-VAE: the original's tiled mode; approximate for OD-VAE and Open-Sora, whose "
    "GroupNorms see one tile); exact: tiles that share GroupNorm statistics and read halos, equal to untiled up to "
    "rounding but several times slower (IV-VAE tiles are always exact)"
)


def enable_tiling(model: torch.nn.Module, mode: str, tile_size: int | None = None) -> None:
    """`--tiling on` or `--tiling exact` (anything else leaves the model as it is), with `--tile-size` pixels.

    A custom tile size keeps the model's default overlap ratio (stride / size), rounded down to the spatial
    compression.
    """
    if mode not in ("on", "exact"):
        return
    sizes = {}
    if tile_size is not None:
        multiple = model.config.spatial_compression_ratio
        if tile_size <= 0 or tile_size % multiple:
            raise CLIError(f"--tile-size must be a positive multiple of {multiple}, got {tile_size}.")
        ratio = model.tile_sample_stride_height / model.tile_sample_min_height
        stride = max(multiple, int(tile_size * ratio) // multiple * multiple)
        for axis in ("height", "width"):
            sizes[f"tile_sample_min_{axis}"] = tile_size
            if mode == "on":  # exact tiles do not overlap: their stride is the tile size
                sizes[f"tile_sample_stride_{axis}"] = stride
    model.enable_tiling(**sizes, **({"exact": True} if mode == "exact" else {}))


def apply_tiling(
    model: torch.nn.Module, mode: str, shape: tuple[int, int, int], device: torch.device, tile_size: int | None = None
) -> str:
    """Turn tiling on or off as `--tiling` says; returns a one-line explanation."""
    if mode in ("on", "exact"):
        enable_tiling(model, mode, tile_size)
        return mode if tile_size is None else f"{mode} ({tile_size} px tiles)"
    if mode == "off":
        model.disable_tiling()
        return "off"
    estimate = estimate_memory(model, shape, device)
    fits = estimate.fits_untiled()
    if fits:
        model.disable_tiling()
    else:
        enable_tiling(model, "on", tile_size)
    return (
        f"{'off' if fits else 'on'} (auto: untiled needs ~{gib(estimate.untiled)}, tiled ~{gib(estimate.tiled)}, "
        f"{gib(estimate.available)} available)"
    )


def read_input(args: argparse.Namespace, rule: InputRule) -> tuple[torch.Tensor, float, str]:
    """The clip named by `args.input` fitted to the model, or a synthetic clip when there is none."""
    from .video import fit_to_rule, synthetic_clip

    if args.input is None:
        frames = rule.valid_num_frames(args.frames or 17)
        side = args.size or 128
        clip = fit_to_rule(synthetic_clip(num_frames=frames, height=side, width=side, seed=args.seed), rule)
        return clip, 25.0, "synthetic clip (no INPUT given)"
    video, fps = read_clip(args, rule)
    return video, fps, str(args.input)


def read_clip(args: argparse.Namespace, rule: InputRule) -> tuple[torch.Tensor, float]:
    """`args.input` read as the reading options (`--start`, `--frames`, `--stride`, `--fps`, `--size`) say."""
    from .video import read_video

    return read_video(
        args.input,
        start=args.start,
        num_frames=args.frames,
        stride=args.stride,
        fps=args.fps,
        size=args.size,
        rule=rule,
    )


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool = False, default_help: str = "") -> None:
    parser.add_argument(
        "-m",
        "--model",
        required=required,
        help="Hub repo id, local diffusers folder, or original checkpoint file" + default_help,
    )
    parser.add_argument("--model-type", help="model type of an original checkpoint file (detected when omitted)")
    parser.add_argument("--variant", help="released variant of an original checkpoint file (inferred when omitted)")
    parser.add_argument("--original-config", help="the original's own config file, for custom original checkpoints")
    parser.add_argument(
        "--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="compute dtype (default float32)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def _add_reading_arguments(parser: argparse.ArgumentParser, frames_default: int | None) -> None:
    parser.add_argument(
        "--frames",
        type=int,
        default=frames_default,
        help=f"read at most this many frames (default {frames_default or 'all'}), trimmed to the model's frame rule",
    )
    parser.add_argument("--size", type=int, help="resize so the short side has this many pixels (default: keep)")
    parser.add_argument("--start", type=float, default=0.0, help="seconds to skip at the start")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    parser.add_argument(
        "--fps", type=float, help="resample to this frame rate (picks frames; exclusive with --stride)"
    )


# -- sub-commands -----------------------------------------------------------------------------------------------


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .metrics import video_quality
    from .video import contact_sheet, side_by_side, write_video

    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    rule = input_rule(model)
    video, fps, source = read_input(args, rule)
    shape = tuple(video.shape[2:])
    plan_segments(shape[0], args.segment_frames, rule)  # a bad --segment-frames fails before any work
    tiling = apply_tiling(model, args.tiling, shape, device, args.tile_size)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with PeakMemory(device) as memory:
        result = reconstruct_video(
            model,
            video,
            segment_frames=args.segment_frames,
            sample_posterior=args.sample,
            generator=generator,
            progress=not args.quiet,
        )
    quality = video_quality(video, result.video, lpips=args.lpips)
    output = Path(args.output or _default_output(args.input))
    write_video(output, result.video, fps, crf=args.crf)
    latent = tuple(result.latents.shape)
    ratio = video.numel() / result.latents.numel()
    lines = [
        ("model", f"{type(model).__name__} ({args.model_resolved}), {args.dtype} on {device}, tiling {tiling}"),
        ("input", f"{source}: {shape[0]} frames {shape[1]}x{shape[2]} (HxW) at {fps:.3f} fps; {rule.describe()}"),
        (
            "latents",
            f"{latent}, compression {ratio:.1f}x in values (3x{shape[0]}x{shape[1]}x{shape[2]} -> "
            f"{'x'.join(map(str, latent[1:]))})",
        ),
        ("quality", quality.summary()),
        ("time", f"encode {result.encode_seconds:.2f} s, decode {result.decode_seconds:.2f} s"),
        ("peak memory", memory.describe()),
        ("wrote", str(output)),
    ]
    if args.compare:
        lines.append(
            ("wrote", f"{contact_sheet(video, result.video, args.compare)} (original | reconstruction | error)")
        )
    if args.side_by_side:
        path = write_video(args.side_by_side, side_by_side(video, result.video), fps, crf=args.crf)
        lines.append(("wrote", f"{path} (original | reconstruction)"))
    _print_lines(lines)
    return 0


def _default_output(input_path: str | None) -> str:
    return f"{Path(input_path).stem}.recon.mp4" if input_path else "synthetic.recon.mp4"


def _print_lines(lines: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"{label:<{width}}  {text}")


def cmd_encode(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    rule = input_rule(model)
    video, fps = read_clip(args, rule)
    enable_tiling(model, args.tiling, args.tile_size)
    with torch.no_grad():
        posterior = model.encode(video.to(device=device, dtype=next(model.parameters()).dtype)).latent_dist
        latents = posterior.mode().float().cpu().contiguous()
    num_frames, height, width = video.shape[2:]
    metadata = {
        "format": LATENT_FORMAT,
        "model": str(args.model_resolved),
        "class_name": type(model).__name__,
        "config_hash": config_hash(model),
        "scaling": json.dumps(scaling_of(model)),
        "latents": "raw posterior mode; normalise for a pipeline with the `scaling` constants",
        "fps": repr(float(fps)),
        "num_frames": str(num_frames),
        "height": str(height),
        "width": str(width),
        "shape": json.dumps(list(latents.shape)),
        "source": str(args.input),
        "diffusers_videovae_version": __version__,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents}, str(output), metadata=metadata)
    print(f"latents {tuple(latents.shape)} of {num_frames} frames {height}x{width} at {fps:.3f} fps -> {output}")
    return 0


def read_latents(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    """Latents and metadata written by `videovae encode`; a clear error for any other file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"Latent file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
            latents = handle.get_tensor("latents") if "latents" in keys else None
    except (SafetensorError, OSError, ValueError) as error:
        raise CLIError(f"{path} is not a safetensors file: {error}") from None
    if metadata.get("format") != LATENT_FORMAT or latents is None:
        raise CLIError(f"{path} was not written by `videovae encode` (no {LATENT_FORMAT} metadata).")
    return latents, metadata


def cmd_decode(args: argparse.Namespace) -> int:
    from .video import write_video

    latents, metadata = read_latents(args.input)
    if args.model is None:
        args.model = metadata["model"]
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    if type(model).__name__ != metadata["class_name"]:
        raise CLIError(f"These latents come from a {metadata['class_name']}, not a {type(model).__name__}.")
    if config_hash(model) != metadata["config_hash"] and not args.force:
        raise CLIError(
            f"These latents come from another {metadata['class_name']} configuration (config hash "
            f"{metadata['config_hash']}, this model has {config_hash(model)}); pass --force to decode anyway."
        )
    enable_tiling(model, args.tiling, args.tile_size)
    num_frames = int(metadata["num_frames"])
    with torch.no_grad():
        z = latents.to(device=device, dtype=next(model.parameters()).dtype)
        video = model.decode(z, **_decode_kwargs(model, num_frames)).sample.float().cpu()
    fps = float(metadata["fps"])
    path = write_video(args.output, video, fps, crf=args.crf)
    print(f"decoded {tuple(latents.shape)} -> {video.shape[2]} frames {video.shape[3]}x{video.shape[4]} -> {path}")
    return 0


@dataclass(frozen=True)
class EvalSettings:
    """How clips are read for `videovae eval` (printed with the table, as papers state their protocol)."""

    frames: int | None = 17
    size: int | None = 256
    start: float = 0.0
    stride: int = 1
    fps: float | None = None
    crop_square: bool = True
    lpips: bool = False

    def describe(self, rule: InputRule) -> str:
        return (
            f"frames {self.frames or 'all'} from {self.start:g} s, "
            f"{f'resampled to {self.fps:g} fps' if self.fps else f'stride {self.stride}'}; short side "
            f"{self.size or 'native'}{', center square crop' if self.crop_square else ''}; cropped to "
            f"{rule.describe()}; posterior mode; PSNR/SSIM per frame in RGB, averaged over frames then clips"
        )


def evaluate_clips(
    model: torch.nn.Module, clips: list[str | os.PathLike], settings: EvalSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """Reconstruct each clip as `settings` say; one row (clip, frames, size, psnr, ssim, lpips) per clip."""
    from .metrics import video_quality
    from .video import read_video

    rule = input_rule(model)
    rows = []
    for clip in clips:
        video, _ = read_video(
            clip,
            start=settings.start,
            num_frames=settings.frames,
            stride=settings.stride,
            fps=settings.fps,
            size=settings.size,
            rule=rule,
        )
        if settings.crop_square:
            side = min(video.shape[-2:]) // rule.spatial_multiple * rule.spatial_multiple
            top, left = (video.shape[-2] - side) // 2, (video.shape[-1] - side) // 2
            video = video[..., top : top + side, left : left + side]
        result = reconstruct_video(model, video, progress=progress)
        quality = video_quality(video, result.video, lpips=settings.lpips)
        rows.append(
            {
                "clip": Path(clip).name,
                "frames": video.shape[2],
                "size": f"{video.shape[3]}x{video.shape[4]}",
                "psnr": quality.psnr,
                "ssim": quality.ssim,
                "lpips": quality.lpips,
            }
        )
    return rows


def cmd_eval(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    enable_tiling(model, args.tiling, args.tile_size)
    settings = EvalSettings(
        frames=args.frames,
        size=args.size,
        start=args.start,
        stride=args.stride,
        fps=args.fps,
        crop_square=args.crop_square,
        lpips=args.lpips,
    )
    rows = evaluate_clips(model, args.clips, settings, progress=not args.quiet)
    header = (
        f"model {args.model_resolved} ({type(model).__name__}, {args.dtype}); {settings.describe(input_rule(model))}"
    )
    print(format_eval_table(rows, header))
    if args.csv:
        write_eval_csv(args.csv, rows)
        print(f"wrote {args.csv}")
    return 0


def _mean(values: list[float | None]) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def format_eval_table(rows: list[dict[str, Any]], settings: str) -> str:
    show_lpips = any(row["lpips"] is not None for row in rows)
    header = ["clip", "frames", "HxW", "PSNR (dB)", "SSIM"] + (["LPIPS"] if show_lpips else [])
    mean = {
        "clip": f"mean ({len(rows)} clips)",
        "frames": "",
        "size": "",
        "psnr": _mean([row["psnr"] for row in rows]),
        "ssim": _mean([row["ssim"] for row in rows]),
        "lpips": _mean([row["lpips"] for row in rows]),
    }
    table = []
    for row in [*rows, mean]:
        cells = [str(row["clip"]), str(row["frames"]), row["size"], f"{row['psnr']:.2f}", f"{row['ssim']:.4f}"]
        if show_lpips:
            cells.append("n/a" if row["lpips"] is None else f"{row['lpips']:.4f}")
        table.append(cells)
    widths = [max(len(cells[i]) for cells in [header, *table]) for i in range(len(header))]
    lines = [settings, "", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for number, cells in enumerate(table):
        if number == len(table) - 1:
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def write_eval_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", "frames", "height_x_width", "psnr", "ssim", "lpips"])
        for row in rows:
            writer.writerow(
                [
                    row["clip"],
                    row["frames"],
                    row["size"],
                    f"{row['psnr']:.4f}",
                    f"{row['ssim']:.6f}",
                    "" if row["lpips"] is None else f"{row['lpips']:.6f}",
                ]
            )
        writer.writerow(
            ["mean", "", "", f"{_mean([r['psnr'] for r in rows]):.4f}", f"{_mean([r['ssim'] for r in rows]):.6f}", ""]
        )


def cmd_info(args: argparse.Namespace) -> int:
    args.model = args.model_spec
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    rule = input_rule(model)
    num_frames, height, width = args.size
    valid_frames = rule.valid_num_frames(num_frames)
    height_fit = height // rule.spatial_multiple * rule.spatial_multiple
    width_fit = width // rule.spatial_multiple * rule.spatial_multiple
    if valid_frames < 1 or not height_fit or not width_fit:
        raise CLIError(f"--size {num_frames}x{height}x{width} is too small for this model ({rule.describe()}).")
    latent = latent_shape(model, (valid_frames, height_fit, width_fit))
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = estimate_memory(model, (valid_frames, height_fit, width_fit), device)
    ratio = 3 * valid_frames * height_fit * width_fit / math.prod(latent)
    fitted = (
        ""
        if (valid_frames, height_fit, width_fit) == tuple(args.size)
        else (f" (input {num_frames}x{height}x{width} fitted to the model)")
    )
    lines = [
        ("class", type(model).__name__),
        ("model", str(args.model_resolved)),
        ("variant", _variant_of(args.model_resolved, model)),
        ("parameters", f"{parameters / 1e6:.1f} M ({gib(weight_bytes)} as {args.dtype})"),
        (
            "compression",
            f"time {rule.temporal_compression}x, space {rule.spatial_multiple}x{rule.spatial_multiple}, "
            f"{model.config.latent_channels} latent channels; {rule.describe()}",
        ),
        ("latent normalisation", json.dumps(scaling_of(model)) or "none"),
        ("config hash", config_hash(model)),
        ("input", f"{valid_frames}x{height_fit}x{width_fit} (TxHxW){fitted}"),
        ("latents", f"(1, {', '.join(map(str, latent))}), {ratio:.1f}x fewer values"),
        (
            "memory estimate",
            f"untiled ~{gib(estimate.untiled)}, tiled ~{gib(estimate.tiled)} of activations "
            f"(+ {gib(weight_bytes)} weights); {gib(estimate.available)} available on {device}",
        ),
    ]
    _print_lines(lines)
    return 0


def _variant_of(spec: str, model: torch.nn.Module) -> str:
    if "variant" in model.config:
        return str(model.config["variant"])
    card = Path(spec) / "README.md"
    if card.is_file():
        match = re.search(r"- Variant: `([^`]+)`", card.read_text("utf-8"))
        if match:
            return match.group(1)
    return "not recorded"


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import conversion_main

    conversion_main(args.model_type, args.converter_args)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .checkpoints import push_folder

    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise CLIError(f"{folder} is not a diffusers model folder (no config.json).")
    push_folder(folder, args.repo_id, private=args.private)
    return 0


# -- the parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import caching, training
    from .checkpoints import MODEL_TYPES

    parser = argparse.ArgumentParser(
        prog="videovae",
        description="Video VAEs (IV-VAE, OD-VAE, Open-Sora 1.2) as diffusers models: try, measure, convert, publish.",
    )
    parser.add_argument("--version", action="version", version=f"diffusers-videovae {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = " (default: the small IV-VAE demo model shipped in the package)"
    sub = subparsers.add_parser(
        "reconstruct",
        help="encode + decode a clip, print PSNR/SSIM, latent shape, time, memory",
        description="Encode and decode a clip with a VAE and write the reconstruction. Without INPUT, a synthetic "
        "moving pattern (17 frames, 128x128 unless --frames/--size) is used.",
    )
    sub.add_argument("input", nargs="?", help="video file (any format av/FFmpeg reads); omit for a synthetic clip")
    _add_model_arguments(sub, default_help=demo)
    sub.add_argument("-o", "--output", help="reconstruction .mp4 (default: INPUT_STEM.recon.mp4)")
    sub.add_argument("--compare", metavar="PNG", help="also write a contact sheet: original | reconstruction | error")
    sub.add_argument("--side-by-side", metavar="MP4", help="also write original and reconstruction side by side")
    _add_reading_arguments(sub, frames_default=17)
    sub.add_argument(
        "--tiling",
        choices=["auto", "on", "exact", "off"],
        default="auto",
        help="auto: on when the clip would not fit in memory untiled (estimated from two tiny probe runs); "
        + TILING_HELP,
    )
    sub.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: the model's)")
    sub.add_argument(
        "--segment-frames",
        type=int,
        help="process long clips in segments of at most this many frames (following the frame rule; causal models "
        "continue each segment from the previous one's last frame); default: the whole clip at once",
    )
    sub.add_argument("--sample", action="store_true", help="sample the posterior instead of taking its mode")
    sub.add_argument("--seed", type=int, default=0, help="seed for --sample and the synthetic clip")
    sub.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 (lossless) to 51 (default 18)")
    sub.add_argument("--lpips", action="store_true", help="also LPIPS, when its weights are on disk")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(func=cmd_reconstruct)

    sub = subparsers.add_parser("encode", help="video -> latents.safetensors (raw latents + what decoding needs)")
    sub.add_argument("input", help="video file")
    _add_model_arguments(sub, required=True)
    sub.add_argument("-o", "--output", required=True, help="latents .safetensors")
    _add_reading_arguments(sub, frames_default=None)
    sub.add_argument("--tiling", choices=["on", "exact", "off"], default="off", help=TILING_HELP)
    sub.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: the model's)")
    sub.set_defaults(func=cmd_encode)

    sub = subparsers.add_parser("decode", help="latents.safetensors -> video .mp4")
    sub.add_argument("input", help="latents written by `videovae encode`")
    _add_model_arguments(sub, default_help=" (default: the model recorded in the latent file)")
    sub.add_argument("-o", "--output", required=True, help="video .mp4")
    sub.add_argument("--tiling", choices=["on", "exact", "off"], default="off", help=TILING_HELP)
    sub.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: the model's)")
    sub.add_argument("--crf", type=int, default=18, help="H.264 quality, 0 (lossless) to 51 (default 18)")
    sub.add_argument("--force", action="store_true", help="decode even if the model's config differs")
    sub.set_defaults(func=cmd_decode)

    sub = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM table over clips, the way papers report it",
        description="Reconstruct each clip and print PSNR/SSIM per clip and their mean. Defaults follow common "
        "video VAE evaluations: the first 17 frames, short side 256, center square crop (--no-crop-square to keep "
        "the aspect ratio).",
    )
    sub.add_argument("clips", nargs="+", help="video files")
    _add_model_arguments(sub, default_help=demo)
    _add_reading_arguments(sub, frames_default=17)
    sub.set_defaults(size=256)
    sub.add_argument(
        "--crop-square",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="center-crop a square of the short side (default on)",
    )
    sub.add_argument("--tiling", choices=["on", "exact", "off"], default="off", help=TILING_HELP)
    sub.add_argument("--tile-size", type=int, metavar="PX", help="tile size in pixels (default: the model's)")
    sub.add_argument("--csv", help="also write the table as CSV")
    sub.add_argument("--lpips", action="store_true", help="also LPIPS, when its weights are on disk")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(func=cmd_eval)

    sub = subparsers.add_parser("info", help="variant, compression, latent shape and memory estimate of a model")
    sub.add_argument("model_spec", metavar="MODEL", help="Hub repo id, local diffusers folder, or original checkpoint")
    sub.add_argument("--size", type=parse_size, default=(17, 256, 256), help="input TxHxW (default 17x256x256)")
    for flag, text in (
        ("--model-type", "model type of an original file"),
        ("--variant", "variant of an original file"),
        ("--original-config", "original config file"),
    ):
        sub.add_argument(flag, help=text)
    sub.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    sub.set_defaults(func=cmd_info)

    sub = subparsers.add_parser(
        "convert",
        help="original checkpoint -> diffusers folder (same as conversion/convert_<model>.py)",
        description="Convert an original release. Arguments after MODEL_TYPE go to the converter; see "
        "`videovae convert MODEL_TYPE --help`.",
    )
    sub.add_argument(
        "model_type",
        choices=sorted(MODEL_TYPES),
        metavar="MODEL_TYPE",
        help=f"one of {', '.join(sorted(MODEL_TYPES))}",
    )
    sub.add_argument(
        "converter_args",
        nargs=argparse.REMAINDER,
        help="--checkpoint FILE -o DIR [--variant V] [--push-to-hub REPO] ...",
    )
    sub.set_defaults(func=cmd_convert)

    sub = subparsers.add_parser("push", help="upload a converted folder to the Hugging Face Hub")
    sub.add_argument("folder", metavar="DIR", help="diffusers folder (config.json + weights + README.md)")
    sub.add_argument("repo_id", metavar="REPO", help="Hub repo id, e.g. you/ivvae-z16")
    sub.add_argument("--private", action="store_true", help="create the repo as private")
    sub.set_defaults(func=cmd_push)

    training.register(subparsers)
    caching.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("videovae: interrupted", file=sys.stderr)
        return 130
    except (CLIError, VideoReadError, ValueError, OSError, ImportError) as error:
        if args.traceback:
            raise
        print(f"videovae {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
