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
"""The `videovae compare` (several models, one report) and `videovae stats` (latent statistics) sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .loaders import TORCH_DTYPES

__all__ = ["register"]

MODEL_HELP = "Hub repo id, local diffusers folder, original checkpoint file, or ivvae-demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `compare` and `stats` to the `videovae` command line."""
    _add_compare(subparsers)
    from . import stats

    stats.register(subparsers)


def _add_compare(subparsers) -> None:
    sub = subparsers.add_parser(
        "compare",
        help="several models on the same clips: metrics.csv and an offline HTML report with figures",
        description="Reconstruct every clip with every model, exactly as `videovae eval` does (first --frames frames, "
        "short side --size, center square crop, posterior mode), and write DIR/metrics.csv and DIR/index.html.",
    )
    sub.add_argument("clips", nargs="+", metavar="CLIP", help="video files")
    sub.add_argument("-m", "--model", dest="models", action="append", required=True, help=MODEL_HELP + " (repeat)")
    sub.add_argument("-o", "--output-dir", required=True, metavar="DIR", help="report folder")
    sub.add_argument("--frames", type=int, default=17, help="frames per clip (default 17), fitted to each model")
    sub.add_argument("--size", type=int, default=256, help="short side in pixels (default 256)")
    sub.add_argument("--start", type=float, default=0.0, help="seconds to skip at the start")
    sub.add_argument("--lpips", action="store_true", help="also LPIPS, when its weights are on disk")
    sub.add_argument(
        "--steps", type=int, help="denoising steps of a diffusion decoder (default: the model's; others ignore it)"
    )
    sub.add_argument("--seed", type=int, default=0, help="seed of a diffusion decoder's noise (default 0)")
    sub.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="compute dtype")
    sub.add_argument("--tiling", choices=["on", "exact", "off"], default="off", help="tiling of every model")
    sub.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    sub.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    sub.add_argument("--overwrite", action="store_true", help="replace the files of an existing report")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from .cli import CLIError, load, resolve_device
    from .compare import check_new_outputs, compare_models, report_paths, write_report
    from .evaluation import EvalSettings
    from .memory import enable_tiling
    from .paths import check_output_dir

    names = [Path(clip).name for clip in args.clips]
    if len(set(names)) != len(names):
        raise CLIError(f"clips must have distinct file names (the report names them by file name): {names}")
    if len(set(args.models)) != len(args.models):
        raise CLIError(f"each model once, please: {args.models}")
    for clip in args.clips:
        if not Path(clip).is_file():
            raise CLIError(f"{clip} is not a file.")
    output_dir = check_output_dir(args.output_dir, "-o")
    check_new_outputs(list(report_paths(output_dir, args.clips).values()), args.clips, args.overwrite)
    device = resolve_device(args.device, args.threads)
    settings = EvalSettings(
        frames=args.frames,
        size=args.size,
        start=args.start,
        lpips=args.lpips,
        num_inference_steps=args.steps,
        seed=args.seed,
    )

    def load_one(spec: str) -> torch.nn.Module:
        return load(argparse.Namespace(model=spec, dtype=args.dtype), device)

    results = compare_models(
        args.models,
        args.clips,
        settings,
        load_one,
        prepare=lambda model: enable_tiling(model, args.tiling),
        progress=not args.quiet,
    )
    steps = f", {args.steps} decoder steps" if args.steps else ""
    note = (
        f"Settings: first {args.frames} frames from {args.start:g} s, short side {args.size}, center square crop, "
        f"each fitted to its model's frame rule; posterior mode; seed {args.seed}{steps}; {args.dtype} on {device}, "
        f"tiling {args.tiling}."
    )
    paths = write_report(results, output_dir, note=note)
    print(f"wrote {paths['csv']} and {paths['html']} ({len(results)} runs: {len(args.models)} models x "
          f"{len(args.clips)} clips)")  # fmt: skip
    return 0
