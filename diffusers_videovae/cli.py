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

A thin layer: each sub-command parses its arguments, checks every output path, calls the library
(`evaluation`, `memory`, `latent_files`, `video`, `metrics`, `checkpoints`) and prints. MODEL arguments accept a
Hub repo id, a local diffusers folder, an ORIGINAL checkpoint file (read on the fly, as `from_single_file` does), or
the built-in `ivvae-demo`. Errors a user can fix (bad file, bad size, unknown model, unwritable output) are printed
as one line; `--traceback` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

from . import __version__
from .cli_args import (
    DEFAULT_FRAMES,
    add_decoder_arguments,
    add_model_arguments,
    add_output_arguments,
    add_reading_arguments,
    add_tiling_arguments,
    crf,
    parse_size,
    positive_int,
)
from .loaders import TORCH_DTYPES
from .releases_cli import add_source_arguments
from .video import VIDEO_FORMATS

VIDEO_SUFFIXES = "/".join(VIDEO_FORMATS)


class CLIError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


# -- shared helpers ---------------------------------------------------------------------------------------------


def resolve_device(name: str, threads: int | None = None) -> torch.device:
    if threads is not None:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch sees no CUDA device.")
    return device


def _model_spec(spec: str | None) -> str:
    """`-m` as a path or Hub id (the packaged demo model when absent); impossible names fail at once (`load_model`'s
    own name resolution, which never asks the Hub for them)."""
    from .loaders import DEMO_MODEL_DIR, resolve_model_name

    if spec is None and not (DEMO_MODEL_DIR / "config.json").exists():
        raise CLIError(
            "No model given and the demo model is not installed in this package "
            f"({DEMO_MODEL_DIR}); pass one with -m (a Hub id, a diffusers folder, or an original checkpoint)."
        )
    path = resolve_model_name(spec or "ivvae-demo")
    return str(path) if path.exists() else spec  # release names and Hub links stay as typed


def load(args: argparse.Namespace, device: torch.device | None = None) -> torch.nn.Module:
    """The model named by `-m` (or the packaged demo model), in the requested dtype, on `device`."""
    from .loaders import load_model
    from .releases_cli import source_options

    spec = _model_spec(getattr(args, "model", None))
    dtype = TORCH_DTYPES[getattr(args, "dtype", "float32")]
    model = load_model(spec, dtype=dtype, **source_options(args))
    args.model_resolved = spec
    if getattr(args, "quiet", False) and hasattr(model, "set_progress_bar_config"):
        model.set_progress_bar_config(disable=True)  # a diffusion decoder's own denoising bar
    return model.to(device or torch.device("cpu")).eval()


def check_outputs(args: argparse.Namespace, outputs: list, inputs: list, videos=(), images=(), latents=()) -> None:
    """Refuse, before any compute, outputs that must not be written (`paths.check_outputs`: unwritable, the same
    file as an input or as another output, existing without --overwrite) and outputs of a format we cannot write.

    `outputs` / `inputs` are `(path, option)` pairs; a local `-m` model and `--original-config` are inputs too.
    `videos`, `images` and `latents` name the options whose files are videos, PNG images and latents files.
    """
    from .paths import check_outputs as check_paths
    from .video import check_image_output, check_video_output

    for name, option in (("model", "-m"), ("original_config", "--original-config")):
        path = getattr(args, name, None)
        if path is not None and Path(path).exists():  # a local file, not a Hub id
            inputs = [*inputs, (path, option)]
    check_paths(outputs, inputs, overwrite=args.overwrite)
    for path, option in outputs:
        if path is None:
            continue
        if option in videos:
            check_video_output(path, option, args.crf)
        elif option in images:
            check_image_output(path, option)
        elif option in latents and Path(path).suffix.lower() != ".safetensors":
            raise CLIError(f"Cannot write {option} {path}: a latents file must end in .safetensors.")


def _print_lines(lines: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        print(f"{label:<{width}}  {text}")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def read_input(args: argparse.Namespace, rule) -> tuple[torch.Tensor, float, str]:
    """The clip named by `args.input` fitted to the model, or a synthetic clip when there is none."""
    from .video import fit_to_rule, synthetic_clip

    if args.input is None:
        frames = rule.valid_num_frames(args.frames or DEFAULT_FRAMES) or rule.first_num_frames
        side = args.size or 128
        clip = fit_to_rule(synthetic_clip(num_frames=frames, height=side, width=side, seed=args.seed), rule)
        return clip, 25.0, "synthetic clip (no INPUT given)"
    video, fps = read_clip(args, rule)
    return video, fps, str(args.input)


def read_clip(args: argparse.Namespace, rule) -> tuple[torch.Tensor, float]:
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


# -- sub-commands -----------------------------------------------------------------------------------------------


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .evaluation import plan_segments, reconstruct_video
    from .memory import PeakMemory, choose_tiling
    from .metrics import video_quality

    output = args.output or _default_output(args.input)
    check_outputs(
        args,
        [(output, "-o"), (args.compare, "--compare"), (args.side_by_side, "--side-by-side")],
        [(args.input, "INPUT")],
        videos=("-o", "--side-by-side"),
        images=("--compare",),
    )
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    rule = model.input_rule
    video, fps, source = read_input(args, rule)
    shape = tuple(video.shape[2:])
    plan_segments(shape[0], args.segment_frames, rule)  # a bad --segment-frames fails before any work
    tiling = choose_tiling(model, args.tiling, shape, device, args.tile_size)
    with PeakMemory(device) as memory:
        result = reconstruct_video(
            model,
            video,
            segment_frames=args.segment_frames,
            sample_posterior=args.sample,
            generator=_generator(device, args.seed),
            num_inference_steps=args.steps,
            progress=not args.quiet,
        )
    quality = video_quality(video, result.video, lpips=args.lpips)
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
    ]
    _print_lines(lines)
    return _write_reconstruction_files(args, output, video, result.video, fps)


def _write_reconstruction_files(args, output, video, reconstruction, fps) -> int:
    """Write the reconstruction and the optional comparisons; a failed write is reported and the rest still run."""
    from .video import contact_sheet, side_by_side, write_video

    writers = [(output, "", lambda: write_video(output, reconstruction, fps, crf=args.crf))]
    if args.compare:
        writers.append(
            (
                args.compare,
                " (original | reconstruction | error)",
                lambda: contact_sheet(video, reconstruction, args.compare),
            )
        )
    if args.side_by_side:
        writers.append(
            (
                args.side_by_side,
                " (original | reconstruction)",
                lambda: write_video(args.side_by_side, side_by_side(video, reconstruction), fps, crf=args.crf),
            )
        )
    failures = 0
    for path, note, write in writers:
        try:
            write()
        except OSError as error:
            failures += 1
            print(f"videovae reconstruct: error: could not write {path}: {error}", file=sys.stderr)
            continue
        print(f"{'wrote':<11}  {path}{note}")
    return 1 if failures else 0


def _default_output(input_path: str | None) -> str:
    return f"{Path(input_path).stem}.recon.mp4" if input_path else "synthetic.recon.mp4"


def cmd_encode(args: argparse.Namespace) -> int:
    from .evaluation import encode_video
    from .latent_files import save_latents
    from .memory import enable_tiling

    check_outputs(args, [(args.output, "-o")], [(args.input, "INPUT")], latents=("-o",))
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    video, fps = read_clip(args, model.input_rule)
    enable_tiling(model, args.tiling, args.tile_size, tuple(video.shape[2:]))
    latents, conditions = encode_video(model, video)
    num_frames, height, width = video.shape[2:]
    path = save_latents(
        args.output,
        model,
        latents,
        conditions,
        num_frames=num_frames,
        height=height,
        width=width,
        fps=fps,
        source=str(args.input),
        model_id=str(args.model_resolved),
    )
    print(f"latents {tuple(latents.shape)} of {num_frames} frames {height}x{width} at {fps:.3f} fps -> {path}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .evaluation import decode_latents
    from .latent_files import check_latents_match, read_latents
    from .memory import enable_tiling
    from .video import write_video

    outputs = {"outputs": [(args.output, "-o")], "inputs": [(args.input, "INPUT")], "videos": ("-o",)}
    check_outputs(args, **outputs)
    latents, conditions, metadata = read_latents(args.input)
    if args.model is None:
        args.model = metadata["model"]
        check_outputs(args, **outputs)  # the recorded model, when a local file, is an input too
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    check_latents_match(model, latents, conditions, metadata, force=args.force)
    shape = tuple(int(metadata[key]) for key in ("num_frames", "height", "width"))
    enable_tiling(model, args.tiling, args.tile_size, shape)
    video = decode_latents(
        model,
        latents,
        conditions,
        num_frames=int(metadata["num_frames"]),
        num_inference_steps=args.steps,
        generator=_generator(device, args.seed),
    )
    path = write_video(args.output, video.float().cpu(), float(metadata["fps"]), crf=args.crf)
    print(f"decoded {tuple(latents.shape)} -> {video.shape[2]} frames {video.shape[3]}x{video.shape[4]} -> {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalSettings, evaluate_clips, format_eval_table, write_eval_csv
    from .memory import enable_tiling

    check_outputs(args, [(args.csv, "--csv")], [(clip, "CLIP") for clip in args.clips])
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
        num_inference_steps=args.steps,
        seed=args.seed,
    )
    rows = evaluate_clips(model, args.clips, settings, progress=not args.quiet)
    header = (
        f"model {args.model_resolved} ({type(model).__name__}, {args.dtype}); {settings.describe(model.input_rule)}"
    )
    print(format_eval_table(rows, header))
    if args.csv:
        print(f"wrote {write_eval_csv(args.csv, rows)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .latent_files import config_hash, latent_shape
    from .memory import estimate_memory, gib

    args.model = args.model_spec
    device = resolve_device(args.device, args.threads)
    model = load(args, device)
    rule = model.input_rule
    num_frames, height, width = args.size
    fitted = (
        rule.valid_num_frames(num_frames),
        height // rule.spatial_multiple * rule.spatial_multiple,
        width // rule.spatial_multiple * rule.spatial_multiple,
    )
    if min(fitted) < 1:
        raise CLIError(f"--size {num_frames}x{height}x{width} is too small for this model ({rule.describe()}).")
    latent = latent_shape(model, fitted)
    parameters = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    estimate = estimate_memory(model, fitted, device)
    ratio = 3 * math.prod(fitted) / math.prod(latent)
    note = "" if fitted == tuple(args.size) else f" (input {num_frames}x{height}x{width} fitted to the model)"
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
        ("latent normalisation", json.dumps(model.latent_normalization)),
        ("config hash", config_hash(model)),
        ("input", f"{'x'.join(map(str, fitted))} (TxHxW){note}"),
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
    if re.fullmatch(r"\w+:[\w.-]+", spec):  # a release name, MODEL_TYPE:VARIANT
        return spec.split(":", 1)[1]
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


def _add_reconstruct(subparsers, demo: str) -> None:
    sub = subparsers.add_parser(
        "reconstruct",
        help="encode + decode a clip, print PSNR/SSIM, latent shape, time, memory",
        description="Encode and decode a clip with a VAE and write the reconstruction. Without INPUT, a synthetic "
        f"moving pattern ({DEFAULT_FRAMES} frames, 128x128 unless --frames/--size) is used.",
    )
    sub.add_argument("input", nargs="?", help="video file (any format av/FFmpeg reads); omit for a synthetic clip")
    add_model_arguments(sub, default_help=demo)
    sub.add_argument("-o", "--output", help=f"reconstruction video, {VIDEO_SUFFIXES} (default: INPUT_STEM.recon.mp4)")
    sub.add_argument("--compare", metavar="PNG", help="also write a contact sheet: original | reconstruction | error")
    sub.add_argument("--side-by-side", metavar="MP4", help="also write original and reconstruction side by side")
    add_output_arguments(sub)
    add_reading_arguments(sub)
    add_tiling_arguments(sub, auto=True)
    sub.add_argument(
        "--segment-frames",
        type=positive_int,
        help="process long clips in segments of at most this many frames (following the frame rule; causal models "
        "continue each segment from the previous one's last frame); default: the whole clip at once",
    )
    sub.add_argument("--sample", action="store_true", help="sample the posterior instead of taking its mode")
    add_decoder_arguments(sub)
    sub.add_argument("--crf", type=crf, default=18, help="H.264 quality, 0 (lossless) to 51 (default 18)")
    sub.add_argument("--lpips", action="store_true", help="also LPIPS, when its weights are on disk")
    sub.set_defaults(func=cmd_reconstruct)


def _add_encode_decode(subparsers) -> None:
    sub = subparsers.add_parser("encode", help="video -> latents.safetensors (raw latents + what decoding needs)")
    sub.add_argument("input", help="video file")
    add_model_arguments(sub, required=True)
    sub.add_argument("-o", "--output", required=True, help="latents .safetensors")
    add_output_arguments(sub)
    add_reading_arguments(sub)
    add_tiling_arguments(sub)
    sub.set_defaults(func=cmd_encode)

    sub = subparsers.add_parser("decode", help="latents.safetensors -> video .mp4")
    sub.add_argument("input", help="latents written by `videovae encode`")
    add_model_arguments(sub, default_help=" (default: the model recorded in the latent file)")
    sub.add_argument("-o", "--output", required=True, help=f"video, {VIDEO_SUFFIXES}")
    add_output_arguments(sub)
    add_tiling_arguments(sub)
    add_decoder_arguments(sub)
    sub.add_argument("--crf", type=crf, default=18, help="H.264 quality, 0 (lossless) to 51 (default 18)")
    sub.add_argument("--force", action="store_true", help="decode even if the model's config differs")
    sub.set_defaults(func=cmd_decode)


def _add_eval(subparsers, demo: str) -> None:
    sub = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM table over clips, the way papers report it",
        description="Reconstruct each clip and print PSNR/SSIM per clip and their mean. Defaults follow common "
        "video VAE evaluations: the first 17 frames, short side 256, center square crop (--no-crop-square to keep "
        "the aspect ratio).",
    )
    sub.add_argument("clips", nargs="+", help="video files")
    add_model_arguments(sub, default_help=demo)
    add_reading_arguments(sub, size_default=256)
    sub.add_argument(
        "--crop-square",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="center-crop a square of the short side (default on)",
    )
    add_tiling_arguments(sub)
    add_decoder_arguments(sub)
    sub.add_argument("--csv", help="also write the table as CSV")
    add_output_arguments(sub)
    sub.add_argument("--lpips", action="store_true", help="also LPIPS, when its weights are on disk")
    sub.set_defaults(func=cmd_eval)


def _add_info(subparsers) -> None:
    sub = subparsers.add_parser("info", help="variant, compression, latent shape and memory estimate of a model")
    sub.add_argument(
        "model_spec", metavar="MODEL", help="release name, Hub repo id, diffusers folder, or original file"
    )
    sub.add_argument("--size", type=parse_size, default=(17, 256, 256), help="input TxHxW (default 17x256x256)")
    for flag, text in (("--model-type", "model type of an original file"), ("--original-config", "original config")):
        sub.add_argument(flag, help=text)
    add_source_arguments(sub)
    sub.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    sub.set_defaults(func=cmd_info)


def _add_convert_push(subparsers) -> None:
    from .checkpoints import MODEL_TYPES

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


def build_parser() -> argparse.ArgumentParser:
    from . import caching, compare_cli, releases_cli, training

    parser = argparse.ArgumentParser(
        prog="videovae",
        description="Video VAEs (IV-VAE, OD-VAE, Open-Sora 1.2, Reducio-VAE, CascadeV) as diffusers models: try, "
        "measure, convert, publish. Outputs are never an input, replace a file only with --overwrite, and are "
        "written under a temporary name, then renamed.",
    )
    parser.add_argument("--version", action="version", version=f"diffusers-videovae {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = " (default: the small IV-VAE demo model shipped in the package)"
    _add_reconstruct(subparsers, demo)
    _add_encode_decode(subparsers)
    _add_eval(subparsers, demo)
    _add_info(subparsers)
    _add_convert_push(subparsers)
    training.register(subparsers)
    caching.register(subparsers)
    releases_cli.register(subparsers)
    compare_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .video import VideoReadError

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
