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
"""Reconstruction and evaluation of any diffusers-videovae model, as `videovae reconstruct` / `eval` run them.

Everything goes through the model's own answers (`input_rule`, `decode_conditions`, `latents_for_decode`,
`decode_kwargs`), so a model with a diffusion decoder or extra decode inputs needs nothing here:

    from diffusers_videovae.evaluation import EvalSettings, evaluate_clips, format_eval_table, reconstruct_video

    result = reconstruct_video(vae, video, segment_frames=33, num_inference_steps=4, generator=g)
    rows = evaluate_clips(vae, ["a.mp4", "b.mp4"], EvalSettings(frames=17, size=256))
    print(format_eval_table(rows, "my settings"))
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .models._common import InputRule

if TYPE_CHECKING:
    from .metrics import Quality

__all__ = [
    "ClipEvaluation",
    "EvalSettings",
    "Reconstruction",
    "Segment",
    "encode_video",
    "evaluate_clip",
    "evaluate_clips",
    "format_eval_table",
    "plan_segments",
    "reconstruct_video",
    "write_eval_csv",
]


@dataclass
class Reconstruction:
    video: torch.Tensor
    """`(1, 3, T, H, W)` float32 on the CPU."""
    latents: torch.Tensor
    """Raw posterior latents (mode, or a sample), CPU."""
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
    """Split a valid `num_frames`-frame clip into segments of at most `segment_frames` frames, each valid too.

    * models that take any T: consecutive segments;
    * models whose clips are whole groups (`T = n k`, `first_num_frames == frame_step`): independent consecutive
      segments of multiples of the group;
    * causal models (`T = 1 + n k`): each segment continues from the previous segment's last frame, which is
      encoded again as the new segment's first frame and dropped from its output, so the segments add up to the
      clip and every segment keeps the frame rule.
    """
    if not segment_frames or segment_frames >= num_frames:
        return [Segment(0, num_frames)]
    independent = rule.any_num_frames or rule.first_num_frames == rule.step
    causal = rule.first_num_frames == 1 and not rule.any_num_frames
    if not (independent or causal):
        raise ValueError(f"Segments are not supported for this model's frame rule ({rule.describe()}).")
    if (
        segment_frames < 1
        or rule.valid_num_frames(segment_frames) != segment_frames
        or (causal and segment_frames == 1)
    ):
        example = rule.first_num_frames + 4 * rule.step if causal else 4 * rule.step
        raise ValueError(
            f"--segment-frames {segment_frames} breaks the model's frame rule ({rule.describe()}); use e.g. {example}."
        )
    if independent:
        return [
            Segment(start, min(start + segment_frames, num_frames)) for start in range(0, num_frames, segment_frames)
        ]
    segments = [Segment(0, segment_frames)]
    while segments[-1].stop < num_frames:
        start = segments[-1].stop - 1
        segments.append(Segment(start, min(start + segment_frames, num_frames), overlap=1))
    return segments


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def encode_video(model: torch.nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Raw posterior mode of `video (1, 3, T, H, W)` and the decode conditions the model needs besides it.

    The clip is cast to the model's device and dtype (a bfloat16 model takes bfloat16 input).
    """
    device, dtype = _model_device_dtype(model)
    frames = video.to(device=device, dtype=dtype)
    with torch.no_grad():
        latents = model.encode(frames).latent_dist.mode()
        conditions = model.decode_conditions(frames)
    return latents, conditions


def decode_latents(
    model: torch.nn.Module,
    latents: torch.Tensor,
    conditions: dict[str, torch.Tensor] | None = None,
    *,
    num_frames: int | None = None,
    num_inference_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Raw posterior latents (+ decode conditions) -> `(1, 3, T, H, W)` frames, in the model's dtype and device."""
    device, dtype = _model_device_dtype(model)
    z = latents.to(device=device, dtype=dtype)
    conditions = {
        name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in (conditions or {}).items()
    }
    options = model.decode_kwargs(num_frames=num_frames, num_inference_steps=num_inference_steps, generator=generator)
    with torch.no_grad():
        return model.decode(model.latents_for_decode(z), **conditions, **options).sample


def reconstruct_video(
    model: torch.nn.Module,
    video: torch.Tensor,
    *,
    segment_frames: int | None = None,
    sample_posterior: bool = False,
    generator: torch.Generator | None = None,
    num_inference_steps: int | None = None,
    progress: bool = True,
) -> Reconstruction:
    """Encode then decode `video (1, 3, T, H, W)` in [-1, 1], segment by segment, with a progress bar.

    `generator` drives the posterior sample (`sample_posterior`) and a diffusion decoder's noise, so a fixed seed
    gives the same reconstruction; `num_inference_steps` reaches a diffusion decoder (ignored by the others).
    Returns the reconstruction (float32, CPU), the raw latents and the encode / decode seconds.
    """
    from tqdm.auto import tqdm

    segments = plan_segments(video.shape[2], segment_frames, model.input_rule)
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
        return _run_segments(model, video, segments, sample_posterior, generator, num_inference_steps, bar)
    finally:
        for handle in handles:
            handle.remove()
        bar.close()


def _run_segments(model, video, segments, sample_posterior, generator, num_inference_steps, bar) -> Reconstruction:
    device, dtype = _model_device_dtype(model)
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
            conditions = model.decode_conditions(frames)
            _synchronize(device)
            encode_seconds += time.perf_counter() - began
            bar.update()
            bar.set_description(f"decode{where}")
            began = time.perf_counter()
            sample = decode_latents(
                model,
                z,
                conditions,
                num_frames=frames.shape[2],
                num_inference_steps=num_inference_steps,
                generator=generator,
            )
            _synchronize(device)
            decode_seconds += time.perf_counter() - began
            bar.update()
            outputs.append(sample[:, :, segment.overlap :].float().cpu())
            latents.append(z[:, :, segment.overlap :].cpu())
    return Reconstruction(torch.cat(outputs, dim=2), torch.cat(latents, dim=2), encode_seconds, decode_seconds)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- evaluation over clips --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """How clips are read for an evaluation (printed with the table, as papers state their protocol)."""

    frames: int | None = 17
    size: int | None = 256
    start: float = 0.0
    stride: int = 1
    fps: float | None = None
    crop_square: bool = True
    lpips: bool = False
    num_inference_steps: int | None = None
    seed: int = 0

    def describe(self, rule: InputRule) -> str:
        steps = f"; {self.num_inference_steps} decoder steps, seed {self.seed}" if self.num_inference_steps else ""
        return (
            f"frames {self.frames or 'all'} from {self.start:g} s, "
            f"{f'resampled to {self.fps:g} fps' if self.fps else f'stride {self.stride}'}; short side "
            f"{self.size or 'native'}{', center square crop' if self.crop_square else ''}; cropped to "
            f"{rule.describe()}; posterior mode{steps}; PSNR/SSIM per frame in RGB, averaged over frames then clips"
        )


def read_eval_clip(path: str | os.PathLike, settings: EvalSettings, rule: InputRule) -> torch.Tensor:
    """A clip read and cropped as `settings` say, fitted to `rule`."""
    from .video import read_video

    video, _ = read_video(
        path,
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
    return video


@dataclass
class ClipEvaluation:
    """One clip's evaluation: its table row, the clip as the model saw it, the reconstruction, per-frame quality."""

    row: dict[str, Any]
    """clip, frames, size, psnr, ssim, lpips: one row of `evaluate_clips`."""
    video: torch.Tensor
    """`(1, 3, T, H, W)` in [-1, 1]: the clip read and cropped as the settings say."""
    reconstruction: Reconstruction
    quality: Quality
    """Per-frame PSNR / SSIM (/ LPIPS) and their means."""


def evaluate_clip(
    model: torch.nn.Module, clip: str | os.PathLike, settings: EvalSettings, progress: bool = True
) -> ClipEvaluation:
    """Read and reconstruct one clip as `settings` say and measure it (what `evaluate_clips` does per clip)."""
    from .metrics import video_quality

    video = read_eval_clip(clip, settings, model.input_rule)
    device, _ = _model_device_dtype(model)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    result = reconstruct_video(
        model, video, generator=generator, num_inference_steps=settings.num_inference_steps, progress=progress
    )
    quality = video_quality(video, result.video, lpips=settings.lpips)
    row = {
        "clip": Path(clip).name,
        "frames": video.shape[2],
        "size": f"{video.shape[3]}x{video.shape[4]}",
        "psnr": quality.psnr,
        "ssim": quality.ssim,
        "lpips": quality.lpips,
    }
    return ClipEvaluation(row, video, result, quality)


def evaluate_clips(
    model: torch.nn.Module, clips: list[str | os.PathLike], settings: EvalSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """Reconstruct each clip as `settings` say; one row (clip, frames, size, psnr, ssim, lpips) per clip."""
    return [evaluate_clip(model, clip, settings, progress).row for clip in clips]


def _mean(values: list[float | None]) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def format_eval_table(rows: list[dict[str, Any]], settings: str) -> str:
    """The rows of `evaluate_clips` and their mean as a plain-text table, under a line of settings."""
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


def write_eval_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """The rows of `evaluate_clips` and their mean as CSV, written atomically with the user's umask."""
    from .paths import atomic_output

    path = Path(path)
    with atomic_output(path) as staging, open(staging, "w", newline="") as handle:
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
        psnr, ssim = _mean([r["psnr"] for r in rows]), _mean([r["ssim"] for r in rows])
        writer.writerow(["mean", "", "", f"{psnr:.4f}", f"{ssim:.6f}", ""])
    return path
