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
"""The option groups `videovae` sub-commands share, the argparse types that check counts and sizes, and what every
sub-command does with them first (`resolve_device`, `load`, `CLIError`), so that sub-command modules never import
`cli.py`, which registers them.

Every count or size flag is parsed by `positive_int` (and `--crf` by `crf`), so `--frames 0` or `--steps -1` fails at
parse time with a message naming the flag, before a model loads.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import torch

from .loaders import TORCH_DTYPES
from .models._common import upcast_if_forced
from .releases_cli import add_source_arguments

__all__ = [
    "CLIError",
    "add_decoder_arguments",
    "add_model_arguments",
    "add_output_arguments",
    "add_reading_arguments",
    "add_tiling_arguments",
    "crf",
    "frames",
    "load",
    "parse_size",
    "positive_float",
    "positive_int",
    "resolve_device",
]

DEFAULT_FRAMES = 17
TILING_HELP = (
    "on: blended tiles, approximate (OD-VAE, Reducio: the original's tiled mode; IV-VAE's tiles are always exact); "
    "exact: tiles equal to untiled up to rounding, several times slower (Reducio past its attention window: on only)"
)


class CLIError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


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
    if upcast_if_forced(model):
        print("note: this model's config sets force_upcast: float16 was asked, it runs in float32", file=sys.stderr)
        args.dtype = "float32"
    args.model_resolved = spec
    if getattr(args, "quiet", False) and hasattr(model, "set_progress_bar_config"):
        model.set_progress_bar_config(disable=True)  # a diffusion decoder's own denoising bar
    return model.to(device or torch.device("cpu")).eval()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def crf(text: str) -> int:
    """argparse type: an x264 constant rate factor, 0 (lossless) to 51."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 51:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 (lossless) to 51, got {text!r}")
    return value


def frames(text: str) -> int | None:
    """argparse type of `--frames`: a positive integer, or `all` (None: every frame of the clip)."""
    return None if text.strip().lower() == "all" else positive_int(text)


def parse_size(text: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(group) for group in match.groups()) < 1:
        raise argparse.ArgumentTypeError(f"expected TxHxW of positive integers such as 17x256x256, got {text!r}")
    return tuple(int(group) for group in match.groups())


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = False, default_help: str = "") -> None:
    parser.add_argument(
        "-m",
        "--model",
        required=required,
        help="release name (videovae models), Hub repo id, local diffusers folder, original checkpoint file, or "
        "ivvae-demo" + default_help,
    )
    parser.add_argument("--model-type", help="model type of an original checkpoint file (detected when omitted)")
    parser.add_argument("--original-config", help="the original's own config file, for custom original checkpoints")
    add_source_arguments(parser)
    parser.add_argument(
        "--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="compute dtype (default float32)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")


def add_reading_arguments(parser: argparse.ArgumentParser, size_default: int | None = None) -> None:
    parser.add_argument(
        "--frames",
        type=frames,
        default=DEFAULT_FRAMES,
        help=f"read at most this many frames (default {DEFAULT_FRAMES}; `all` for the whole clip), trimmed to the "
        "model's frame rule",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        default=size_default,
        help=f"resize so the short side has this many pixels (default: {size_default or 'keep'})",
    )
    parser.add_argument("--start", type=float, default=0.0, help="seconds to skip at the start")
    parser.add_argument("--stride", type=positive_int, default=1, help="keep every n-th frame")
    parser.add_argument(
        "--fps", type=positive_float, help="resample to this frame rate (picks frames; exclusive with --stride)"
    )


def add_tiling_arguments(parser: argparse.ArgumentParser, auto: bool = False) -> None:
    if auto:
        choices, default = ["auto", "on", "exact", "off"], "auto"
        text = "auto: on when the clip would not fit in memory or model limits untiled (the run traced at its shape on `meta`; tiles within both); "
    else:
        choices, default, text = ["on", "exact", "off"], "off", ""
    parser.add_argument("--tiling", choices=choices, default=default, help=text + TILING_HELP)
    parser.add_argument(
        "--tile-size", type=positive_int, metavar="PX", help="tile size in pixels (default: the model's)"
    )


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=positive_int,
        help="denoising steps of a diffusion decoder (default: the model's; others ignore it)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the posterior sample, a diffusion decoder's noise, synthetic clips",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """`--overwrite` and `-q`, which every sub-command that writes files takes."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist (never an input: an output that is an input is always refused)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
