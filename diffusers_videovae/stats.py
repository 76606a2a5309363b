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
"""Per-channel statistics of a model's latents on a data set, and the normalisation they suggest: `videovae stats`.

Clips are windows of `--frames` frames cut one after the other from each video (files, folders or `.txt` lists, as
`cache-latents` takes them), decoded one window at a time at a short side of at most `--size`, center-cropped to the
model's spatial multiple, and encoded to the posterior mode (the raw latents `videovae encode` writes). Each clip is
folded into a running state (count, mean and sum of squared deviations per channel in float64, merged with Chan et
al.'s parallel update; min, max; a histogram whose range doubles when a value falls outside it), so memory does not
depend on the number of clips. Processes started with `accelerate launch` take every n-th clip and their states are
merged the same way.

    accelerate launch --num_processes 4 -m diffusers_videovae.stats -m MODEL --data videos/ -o stats.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .loaders import TORCH_DTYPES

if TYPE_CHECKING:
    from .datasets import VideoSource
    from .models._common import InputRule

__all__ = ["RunningStats", "add_arguments", "latent_statistics", "plan_windows", "register", "suggest_normalization"]

HISTOGRAM_BINS = 1024  # over [-limit, limit]; a multiple of 4 so that doubling the range merges bin pairs exactly


class RunningStats:
    """Per-channel count, mean, squared deviations (float64), min, max and histogram of latents, in O(channels).

    `update(z)` folds in latents `(B, C, ...)`; `merge(other)` folds in another state (another process's). Both use
    the pairwise update of Chan, Golub and LeVeque, which stays accurate where a running sum of squares cancels.
    """

    def __init__(self, channels: int, bins: int = HISTOGRAM_BINS):
        if bins % 4:
            raise ValueError(f"bins must be a multiple of 4, got {bins}.")
        self.count = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.min = np.full(channels, np.inf)
        self.max = np.full(channels, -np.inf)
        self.histogram = np.zeros((channels, bins), dtype=np.int64)
        self.limit = np.zeros(channels)
        """Histogram range `[-limit, limit]` of each channel (a power of two; 0 until a value other than 0)."""

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in (self.mean, self.m2, self.min, self.max, self.histogram, self.limit))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        return np.sqrt(self.m2 / max(self.count, 1))

    def _fold(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total

    def _widen(self, limits: np.ndarray) -> None:
        """Grow each channel's histogram range to cover `limits`: its first range is the smallest power of two that
        does, later ones double it, merging bin pairs (so counts stay exact)."""
        bins = self.histogram.shape[1]
        for channel in np.flatnonzero(limits > self.limit):
            limit = float(limits[channel])
            if self.limit[channel] == 0.0:
                self.limit[channel] = 2.0 ** math.ceil(math.log2(limit))
                continue
            while limit > self.limit[channel]:
                merged = self.histogram[channel].reshape(bins // 2, 2).sum(-1)
                self.histogram[channel] = 0
                self.histogram[channel, bins // 4 : 3 * bins // 4] = merged
                self.limit[channel] *= 2

    def _add_histogram(self, values: torch.Tensor) -> None:
        bins = self.histogram.shape[1]
        limit = torch.from_numpy(np.where(self.limit > 0, self.limit, 1.0))[:, None]
        index = ((values + limit) * (bins / (2 * limit))).floor().long().clamp_(0, bins - 1)
        counts = torch.zeros(self.channels, bins, dtype=torch.int64)
        counts.scatter_add_(1, index, torch.ones_like(index))
        self.histogram += counts.numpy()

    def update(self, latents: torch.Tensor) -> None:
        """Fold in latents `(B, C, ...)` (any dtype and device; reduced in float64 on the CPU)."""
        if latents.ndim < 2 or latents.shape[1] != self.channels:
            raise ValueError(f"expected latents (B, {self.channels}, ...), got {tuple(latents.shape)}.")
        values = latents.detach().to("cpu", torch.float64).transpose(0, 1).reshape(self.channels, -1)
        if not torch.isfinite(values).all():
            raise ValueError("the latents hold NaN or inf values; the model or its input is broken.")
        mean = values.mean(1)
        self._fold(values.shape[1], mean.numpy(), ((values - mean[:, None]) ** 2).sum(1).numpy())
        self.min = np.minimum(self.min, values.amin(1).numpy())
        self.max = np.maximum(self.max, values.amax(1).numpy())
        self._widen(values.abs().amax(1).numpy())
        self._add_histogram(values)

    def merge(self, other: RunningStats) -> None:
        """Fold in another state of the same channels (e.g. another process's)."""
        if other.count == 0:
            return
        if other.channels != self.channels:
            raise ValueError(f"cannot merge statistics of {other.channels} channels into {self.channels}.")
        other = other.copy()
        limit = np.maximum(self.limit, other.limit)
        self._widen(limit)
        other._widen(limit)
        self._fold(other.count, other.mean, other.m2)
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.histogram += other.histogram

    def copy(self) -> RunningStats:
        twin = RunningStats(self.channels, self.histogram.shape[1])
        twin.__dict__.update({key: np.copy(value) for key, value in self.__dict__.items()})
        twin.count = self.count
        return twin

    def overall(self) -> tuple[float, float]:
        """Mean and population standard deviation over all channels together."""
        pooled = RunningStats(1)
        for channel in range(self.channels):
            pooled._fold(self.count, self.mean[channel : channel + 1], self.m2[channel : channel + 1])
        return float(pooled.mean[0]), float(pooled.std[0])


def suggest_normalization(latent_normalization: dict[str, Any], stats: RunningStats) -> dict[str, Any]:
    """The normalisation that gives these latents zero mean and unit variance, in the model's own convention.

    `latent_normalization` is `model.latent_normalization`: per-channel `latents_mean` / `latents_std` when the
    model uses them; else `shift_factor` and `scaling_factor` over all channels; else `scaling_factor` alone
    (`1 / std`, the Stable Diffusion convention: no shift); a model without these constants (Reducio: a layer norm
    of each sample) gets none, and the reason.
    """
    mean, std = stats.overall()
    if "latents_mean" in latent_normalization:
        return {
            "latents_mean": stats.mean.tolist(),
            "latents_std": stats.std.tolist(),
            "formula": "(z - latents_mean) / latents_std  (per channel)",
        }
    if "shift_factor" in latent_normalization:
        return {"shift_factor": mean, "scaling_factor": 1.0 / std, "formula": "(z - shift_factor) * scaling_factor"}
    if "scaling_factor" in latent_normalization:
        return {
            "scaling_factor": 1.0 / std,
            "formula": "z * scaling_factor",
            "note": f"this model's convention has no shift: scaled latents keep a mean of {mean / std:.4f}",
        }
    return {
        "formula": latent_normalization.get("formula", ""),
        "note": "no constant applies: this model normalises each sample's latents by their own statistics "
        "(model.normalize_latents); train on those normalised latents",
    }


# -- the data -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Frames `[start, stop)` of one video."""

    path: Path
    start: int
    stop: int


def plan_windows(
    sources: Sequence[VideoSource], num_frames: int, rule: InputRule, num_clips: int | None = None, seed: int = 0
) -> list[Window]:
    """Consecutive windows of `num_frames` frames of every source (`cache-latents`' clips with no overlap);
    `num_clips` of them drawn at random with `seed`."""
    from .caching import plan_clips
    from .video import count_frames

    if rule.valid_num_frames(num_frames) != num_frames:
        below, above = rule.nearest_num_frames(num_frames)
        raise ValueError(
            f"--frames {num_frames} breaks the model's frame rule ({rule.describe()}); use {below} or {above}."
        )
    windows = []
    for source in sources:
        total = count_frames(source.path)
        available = (total if source.end is None else min(source.end, total)) - source.start
        for start, stop in plan_clips(available, num_frames, None, rule):
            windows.append(Window(source.path, source.start + start, source.start + stop))
    if not windows:
        raise ValueError(f"no video holds {num_frames} frames; use a smaller --frames.")
    if num_clips is not None and num_clips < len(windows):
        chosen = np.random.default_rng(seed).choice(len(windows), size=num_clips, replace=False)
        windows = [windows[index] for index in sorted(chosen)]
    return windows


def read_window(window: Window, size: int | None, rule: InputRule) -> torch.Tensor:
    """`(1, 3, T, H, W)` in [-1, 1]: the window decoded at a short side of at most `size`, center-cropped."""
    from .video import from_uint8, read_frames

    frames = read_frames(window.path, window.start, window.stop, size)
    if frames.shape[0] != window.stop - window.start:
        raise ValueError(f"{window.path}: frames {window.start}-{window.stop - 1} could not all be decoded.")
    height, width = frames.shape[1:3]
    multiple = rule.spatial_multiple
    crop_h, crop_w = height // multiple * multiple, width // multiple * multiple
    if not crop_h or not crop_w:
        raise ValueError(
            f"{window.path}: frames of {width}x{height} are smaller than the spatial multiple {multiple}."
        )
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return from_uint8(frames[:, top : top + crop_h, left : left + crop_w])


def latent_statistics(
    model: torch.nn.Module, windows: list[Window], size: int | None, progress: bool = True
) -> RunningStats:
    """Statistics of the posterior mode of every window (this process's share when several run)."""
    from tqdm.auto import tqdm

    from .evaluation import encode_video

    stats = RunningStats(int(model.config.latent_channels))
    for window in tqdm(windows, desc="stats", unit="clip", disable=not progress):
        latents, _ = encode_video(model, read_window(window, size, model.input_rule))
        stats.update(latents)
        del latents
    return stats


# -- outputs ------------------------------------------------------------------------------------------------------


def histogram_png(stats: RunningStats, max_bars: int = 64) -> bytes:
    """One panel per channel: the histogram over the channel's [min, max] and the normal of its mean and std."""
    import io

    from matplotlib.figure import Figure

    columns = min(4, stats.channels)
    rows = -(-stats.channels // columns)
    figure = Figure(figsize=(3 * columns, 2.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    bins = stats.histogram.shape[1]
    for channel, axis in enumerate(axes.flat):
        if channel >= stats.channels:
            axis.axis("off")
            continue
        counts = stats.histogram[channel]
        limit = stats.limit[channel] or 1.0  # a channel that is exactly 0 everywhere
        edges = np.linspace(-limit, limit, bins + 1)
        used = np.flatnonzero(counts)
        first, last = used[0], used[-1] + 1
        group = -(-(last - first) // max_bars)
        last = first + -(-(last - first) // group) * group
        grouped = np.pad(counts, (0, max(0, last - bins)))[first:last].reshape(-1, group).sum(1)
        grouped_edges = np.linspace(
            edges[first], edges[first] + (last - first) * (edges[1] - edges[0]), len(grouped) + 1
        )
        density = grouped / (grouped.sum() * np.diff(grouped_edges))
        axis.stairs(density, grouped_edges, fill=True, alpha=0.6)
        mean, std = stats.mean[channel], stats.std[channel]
        x = np.linspace(grouped_edges[0], grouped_edges[-1], 200)
        if std > 0:
            axis.plot(x, np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)), "k--", lw=0.8)
        axis.set_title(f"channel {channel}: mean {mean:.3f}, std {std:.3f}", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle(f"latent values per channel ({stats.count} values each); dashed: normal of the same mean and std")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def statistics_json(stats: RunningStats, model: torch.nn.Module, details: dict[str, Any]) -> dict[str, Any]:
    mean, std = stats.overall()
    return {
        **details,
        "model_class": type(model).__name__,
        "latents": "raw posterior mode, as `videovae encode` writes them",
        "count": stats.count,
        "mean": stats.mean.tolist(),
        "std": stats.std.tolist(),
        "min": stats.min.tolist(),
        "max": stats.max.tolist(),
        "all_channels": {"mean": mean, "std": std},
        "current": model.latent_normalization,
        "suggested": suggest_normalization(model.latent_normalization, stats),
    }


CONFIG_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std")


def check_config_folder(folder: str | os.PathLike, model: torch.nn.Module) -> Path:
    """The `config.json` of a converted folder of this model's class whose normalisation has constants."""
    from .paths import check_output_file

    path = check_output_file(Path(folder) / "config.json", "--write-config")
    if not path.is_file():
        raise FileNotFoundError(f"--write-config {folder}: no config.json there (a converted diffusers folder).")
    class_name = json.loads(path.read_text()).get("_class_name")
    if class_name != type(model).__name__:
        raise ValueError(f"--write-config {folder} holds a {class_name}, not a {type(model).__name__}.")
    if not any(key in model.latent_normalization for key in CONFIG_KEYS):
        raise ValueError(f"--write-config: {type(model).__name__} has no normalisation constants to write.")
    return path


def write_config(path: Path, suggested: dict[str, Any], overwrite: bool) -> list[str]:
    """Write the suggested constants into `config.json`; a changed value only with `overwrite`. Returns the changes."""
    from .compare import write_file_atomic

    config = json.loads(path.read_text())
    updates = {key: suggested[key] for key in CONFIG_KEYS if key in suggested}
    changed = [key for key, value in updates.items() if config.get(key) != value]
    held = [key for key in changed if config.get(key) is not None]
    if held and not overwrite:
        raise FileExistsError(
            f"{path} has {', '.join(f'{key} {config[key]}' for key in held)}; pass --overwrite to replace "
            f"{'it' if len(held) == 1 else 'them'} with the suggested values."
        )
    config.update(updates)
    write_file_atomic(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return changed


# -- the command --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `videovae stats` options."""
    parser.add_argument(
        "-m", "--model", required=True, help="Hub repo id, diffusers folder, original checkpoint, or ivvae-demo"
    )
    parser.add_argument(
        "--data", nargs="+", required=True, help="video files, folders or .txt lists (`path [start end]`)"
    )
    parser.add_argument("-o", "--output", required=True, help="statistics .json (histograms: beside it, .png)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: 17 fitted to the model's frame rule)")
    parser.add_argument("--size", type=int, help="short side at most this many pixels (default: as stored)")
    parser.add_argument("--num-clips", type=int, help="use this many clips drawn at random (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --num-clips draw")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="compute dtype")
    parser.add_argument("--tiling", choices=["on", "exact", "off"], default="off", help="encode with tiles")
    parser.add_argument("--write-config", metavar="FOLDER", help="write the suggestion into FOLDER/config.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output or config value")
    parser.add_argument("--cpu", action="store_true", help="encode on CPU even when a GPU is present")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `stats` sub-command to the `videovae` command line."""
    parser = subparsers.add_parser(
        "stats",
        help="per-channel latent statistics on a data set and the normalisation they suggest (accelerate)",
        description=__doc__.split("\n\n")[0] + " Start with `accelerate launch` for several processes.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _outputs(args: argparse.Namespace, sources: list[VideoSource]) -> tuple[Path, Path]:
    from .compare import check_new_outputs

    output = Path(args.output)
    figure = output.with_name(f"{output.stem}.histograms.png")
    inputs = [source.path for source in sources] + [path for path in args.data if Path(path).is_file()]
    check_new_outputs([output, figure], inputs, args.overwrite)
    return output, figure


def run(args: argparse.Namespace) -> int:
    """Run `videovae stats`: outputs checked first, clips split over processes, states merged on the main one."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from .cli import load
    from .datasets import list_sources
    from .memory import accelerator_available, enable_tiling

    sources = list_sources(args.data)
    output, figure = _outputs(args, sources)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = PartialState(cpu=args.cpu or not accelerator_available())
    model = load(argparse.Namespace(model=args.model, dtype=args.dtype), state.device)
    enable_tiling(model, args.tiling)
    config = check_config_folder(args.write_config, model) if args.write_config else None
    rule = model.input_rule
    frames = args.frames or rule.valid_num_frames(17) or rule.first_num_frames
    windows = plan_windows(sources, frames, rule, args.num_clips, args.seed)
    with state.split_between_processes(windows) as mine:
        stats = latent_statistics(model, mine, args.size, progress=not args.quiet and state.is_local_main_process)
    parts = gather_object([stats])
    if state.is_main_process:
        for part in parts[1:]:
            parts[0].merge(part)
        details = {"model": args.model, "clips": len(windows), "frames": frames, "size": args.size}
        result = statistics_json(parts[0], model, details)
        from .compare import write_file_atomic

        write_file_atomic(output, (json.dumps(result, indent=1) + "\n").encode())
        write_file_atomic(figure, histogram_png(parts[0]))
        print(f"{len(windows)} clips, {parts[0].count} values per channel -> {output}, {figure}")
        print(f"suggested: {json.dumps(result['suggested'])}")
        if config is not None:
            changed = write_config(config, result["suggested"], args.overwrite)
            print(f"{config}: {', '.join(changed) or 'nothing'} changed")
    state.wait_for_everyone()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m diffusers_videovae.stats ...` (what `accelerate launch -m` runs)."""
    parser = argparse.ArgumentParser(prog="videovae stats", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
