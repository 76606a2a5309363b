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
"""Several VAEs on the same clips, side by side: `videovae compare`.

Every model reconstructs every clip through `evaluation.evaluate_clip`, the code `videovae eval` runs, so the numbers
are eval's for the same settings. The report is a folder that opens offline:

    metrics.csv          one row per model and clip (quality, cost, compression)
    index.html           the table, then per clip: PSNR per frame, frame strips with a zoomed crop, error heat maps
    figures/*.png        the figures the page shows (matplotlib, Agg)

    from diffusers_videovae.compare import compare_models, write_report
    from diffusers_videovae.evaluation import EvalSettings

    results = compare_models(["ivvae-demo", "you/odvae"], ["a.mp4", "b.mp4"], EvalSettings(frames=17, size=256))
    write_report(results, "report")   # metrics.csv, index.html, figures/
"""

from __future__ import annotations

import csv
import gc
import html
import io
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .evaluation import EvalSettings, evaluate_clip

__all__ = [
    "CSV_COLUMNS",
    "ClipResult",
    "check_new_outputs",
    "compare_models",
    "model_label",
    "report_paths",
    "write_file_atomic",
    "write_report",
]

CSV_COLUMNS = [
    "model",
    "clip",
    "frames",
    "height_x_width",
    "psnr",
    "ssim",
    "lpips",
    "encode_s",
    "decode_s",
    "peak_gib",
    "compression",
    "latent_shape",
]
# Frames shown in the strips, as fractions of the clip: first, middle, last.
STRIP_POSITIONS = (0.0, 0.5, 1.0)


@dataclass
class ClipResult:
    """One model on one clip: the CSV row, per-frame PSNR and what the figures need (not whole videos)."""

    model: str
    clip: str
    row: dict[str, object]
    psnr_frames: np.ndarray
    frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Frame index -> (original, reconstruction) as uint8 `(H, W, 3)`."""
    error_map: np.ndarray | None = None
    """`(H, W)`: mean absolute error over frames and channels, in 8-bit levels."""


def model_label(spec: str, specs: Sequence[str]) -> str:
    """The short name of a model in the report: a folder's or file's name unless two models would share it."""
    short = Path(spec.rstrip("/")).name or spec
    others = [Path(other.rstrip("/")).name for other in specs if other != spec]
    return spec if short in others else short


def _strip_indices(num_frames: int) -> list[int]:
    return sorted({round(position * (num_frames - 1)) for position in STRIP_POSITIONS})


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """`(3, H, W)` in [-1, 1] -> uint8 `(H, W, 3)`."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _clip_result(label: str, evaluation, indices: list[int], peak: int) -> ClipResult:
    video, reconstruction = evaluation.video, evaluation.reconstruction
    latents = reconstruction.latents
    row = dict(evaluation.row)
    row.update(
        model=label,
        encode_s=reconstruction.encode_seconds,
        decode_s=reconstruction.decode_seconds,
        peak_gib=peak / 1024**3,
        compression=video.numel() / latents.numel(),
        latent_shape="x".join(str(size) for size in latents.shape[1:]),
    )
    restored = reconstruction.video.clamp(-1, 1)
    frames = {
        index: (_to_uint8(video[0, :, index]), _to_uint8(restored[0, :, index]))
        for index in sorted({min(index, video.shape[2] - 1) for index in indices})
    }
    error = ((restored - video).abs().mean(dim=(0, 1, 2)) * 127.5).numpy()
    return ClipResult(label, str(row["clip"]), row, np.asarray(evaluation.quality.psnr_frames), frames, error)


def compare_models(
    models: Sequence[str],
    clips: Sequence[str | os.PathLike],
    settings: EvalSettings,
    load: Callable[[str], torch.nn.Module] | None = None,
    *,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    progress: bool = True,
) -> list[ClipResult]:
    """Reconstruct every clip with every model (`evaluate_clip`, as `videovae eval`); one result per pair.

    `load(spec)` returns a model on its device (default: `loaders.load_model`, float32 on the CPU); `prepare(model)`
    sets it up (e.g. tiling). Models run one after the other, each released before the next is loaded.
    """
    from tqdm.auto import tqdm

    from .loaders import load_model
    from .memory import PeakMemory

    load = load or load_model

    results: list[ClipResult] = []
    indices: dict[str, list[int]] = {}
    bar = tqdm(total=len(models) * len(clips), desc="compare", unit="run", disable=not progress)
    try:
        for spec in models:
            label = model_label(spec, models)
            model = load(spec)
            if prepare is not None:
                prepare(model)
            device = next(model.parameters()).device
            for clip in clips:
                bar.set_description(f"{label} | {Path(clip).name}")
                with PeakMemory(device) as memory:
                    evaluation = evaluate_clip(model, clip, settings, progress=False)
                # The first model fixes which frames the strips show, so every model shows the same frames.
                chosen = indices.setdefault(str(clip), _strip_indices(evaluation.video.shape[2]))
                results.append(_clip_result(label, evaluation, chosen, memory.peak))
                del evaluation
                bar.update()
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        bar.close()
    return results


# -- the report -------------------------------------------------------------------------------------------------


def _slug(index: int, clip: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(clip).stem).strip("-") or "clip"
    return f"{index + 1:02d}-{stem[:40]}"


def report_paths(output_dir: str | os.PathLike, clips: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Every file a report on `clips` writes, by role (`csv`, `html`, `psnr:<n>`, `strips:<n>`, `errors:<n>`)."""
    output_dir = Path(output_dir)
    paths = {"csv": output_dir / "metrics.csv", "html": output_dir / "index.html"}
    for index, clip in enumerate(clips):
        slug = _slug(index, str(clip))
        for kind in ("psnr", "strips", "errors"):
            paths[f"{kind}:{index}"] = output_dir / "figures" / f"{kind}-{slug}.png"
    return paths


def check_new_outputs(
    outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike], overwrite: bool
) -> None:
    """Before any compute, the package's one output check (`paths.check_outputs`) on every `compare` / `stats`
    output: writable, not the same file as an input (links included) nor as another output, and new unless
    `overwrite`. Raises `paths.OutputPathError` (an `OSError`) naming the path."""
    from .paths import check_outputs

    check_outputs([(path, "output") for path in outputs], [(path, "INPUT") for path in inputs], overwrite=overwrite)


def write_file_atomic(path: Path, data: bytes) -> Path:
    """Every file of `compare` and `stats` goes through `paths.atomic_output`: a temporary name, then a rename."""
    from .paths import atomic_output

    with atomic_output(path) as staging:
        staging.write_bytes(data)
    return Path(path)


def _format(value: object, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


_DIGITS = {"psnr": 4, "ssim": 6, "lpips": 6, "encode_s": 3, "decode_s": 3, "peak_gib": 3, "compression": 2}


def _csv_bytes(results: Sequence[ClipResult]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for result in results:
        row = {**result.row, "height_x_width": result.row["size"]}
        writer.writerow([_format(row[column], _DIGITS.get(column, 0)) for column in CSV_COLUMNS])
    return buffer.getvalue().encode()


def _figure(**options):
    # matplotlib's object API renders with Agg without touching pyplot's global backend or figure list.
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **options)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _psnr_figure(results: Sequence[ClipResult], clip: str) -> bytes:
    figure = _figure(figsize=(7, 3))
    axes = figure.subplots()
    for result in results:
        values = np.where(np.isfinite(result.psnr_frames), result.psnr_frames, np.nan)
        axes.plot(np.arange(len(values)), values, marker="o", markersize=3, label=result.model)
    axes.set(xlabel="frame", ylabel="PSNR (dB)", title=f"{clip}: PSNR per frame")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


def _common_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


def _zoom_box(errors: list[np.ndarray], side: int) -> tuple[int, int]:
    """Top-left corner of the `side` x `side` window where the models' mean error is largest."""
    error = np.mean(errors, axis=0)
    total = np.pad(error.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    window = total[side:, side:] - total[:-side, side:] - total[side:, :-side] + total[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(window)), window.shape)
    return int(top), int(left)


def _strips_figure(results: Sequence[ClipResult], clip: str) -> bytes:
    """One row per strip frame: original | each model, then the same zoomed crop of each (where errors are largest)."""
    from matplotlib.patches import Rectangle

    height = min(min(r.frames[i][0].shape[0] for i in r.frames) for r in results)
    width = min(min(r.frames[i][0].shape[1] for i in r.frames) for r in results)
    indices = list(results[0].frames)
    side = max(8, min(height, width) // 4)
    images = 1 + len(results)
    figure = _figure(figsize=(1.9 * 2 * images, 2.1 * len(indices)))
    axes = figure.subplots(len(indices), 2 * images, squeeze=False)
    for row, index in enumerate(indices):
        original = _common_crop(results[0].frames[index][0], height, width)
        shown = [_common_crop(r.frames[min(index, max(r.frames))][1], height, width) for r in results]
        errors = [np.abs(image.astype(np.float32) - original).mean(-1) for image in shown]
        top, left = _zoom_box(errors, side)
        names = ["original"] + [r.model for r in results]
        psnr = [""] + [f", {r.psnr_frames[min(index, len(r.psnr_frames) - 1)]:.2f} dB" for r in results]
        for column, image in enumerate([original, *shown]):
            full, zoom = axes[row, column], axes[row, images + column]
            full.imshow(image)
            full.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="yellow", lw=1.2))
            full.set_title(f"{names[column]}{psnr[column]}\nframe {index}", fontsize=7)
            zoom.imshow(image[top : top + side, left : left + side], interpolation="nearest")
            zoom.set_title(f"zoom: {names[column]}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{clip}: frames and zoomed crops", fontsize=10)
    return _png(figure)


def _errors_figure(results: Sequence[ClipResult], clip: str) -> bytes:
    height = min(r.error_map.shape[0] for r in results)
    width = min(r.error_map.shape[1] for r in results)
    maps = [_common_crop(r.error_map, height, width) for r in results]
    top = max(float(np.percentile(np.concatenate([m.ravel() for m in maps]), 99)), 1e-6)
    figure = _figure(figsize=(2.6 * len(results) + 0.8, 2.8))
    axes = figure.subplots(1, len(results), squeeze=False)
    for axis, result, error in zip(axes[0], results, maps):
        image = axis.imshow(error, cmap="inferno", vmin=0, vmax=top)
        axis.set_title(f"{result.model}\nmean {error.mean():.2f}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=list(axes[0]), label="|error| (8-bit levels), mean over frames", shrink=0.9)
    figure.suptitle(f"{clip}: error heat maps", fontsize=10)
    return _png(figure)


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td.t{text-align:left}"
    "img{max-width:100%;display:block;margin:0.5em 0 1.5em}.row{display:flex;flex-wrap:wrap;gap:1em;"
    "align-items:flex-start}.row img{max-width:49%}"
)


def _html(results: Sequence[ClipResult], clips: Sequence[str], paths: dict[str, Path], title: str, note: str) -> bytes:
    root = paths["html"].parent
    escape = html.escape
    head = "".join(f"<th>{escape(column)}</th>" for column in CSV_COLUMNS)
    body = []
    for result in results:
        row = {**result.row, "height_x_width": result.row["size"]}
        cells = [
            f"<td{' class=t' if column in ('model', 'clip') else ''}>"
            f"{escape(_format(row[column], min(_DIGITS.get(column, 0), 4)))}</td>"
            for column in CSV_COLUMNS
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{_STYLE}</style>",
        f"</head><body><h1>{escape(title)}</h1><p>Models: {escape(', '.join(dict.fromkeys(r.model for r in results)))}"
        f". PSNR/SSIM as <code>videovae eval</code> computes them; peak memory as <code>videovae reconstruct</code> "
        f"reports it; <a href='metrics.csv'>metrics.csv</a>.</p><p>{escape(note)}</p>",
        f"<table><tr>{head}</tr>{''.join(body)}</table>",
    ]
    for index, clip in enumerate(clips):
        figures = {}
        for kind, alt in (("psnr", "PSNR per frame"), ("strips", "frame strips"), ("errors", "error heat maps")):
            source = paths[f"{kind}:{index}"].relative_to(root).as_posix()
            figures[kind] = f"<img src='{escape(source)}' alt='{escape(f'{clip}: {alt}')}'>"
        parts.append(
            f"<h2>{escape(clip)}</h2><div class='row'>{figures['psnr']}{figures['errors']}</div>{figures['strips']}"
        )
    parts.append("</body></html>")
    return "\n".join(parts).encode()


def write_report(
    results: Sequence[ClipResult], output_dir: str | os.PathLike, title: str = "videovae compare", note: str = ""
) -> dict[str, Path]:
    """`metrics.csv`, the figures and `index.html` (last, so a page exists only with its figures); returns paths."""
    clips = list(dict.fromkeys(result.clip for result in results))
    paths = report_paths(output_dir, clips)
    write_file_atomic(paths["csv"], _csv_bytes(results))
    for index, clip in enumerate(clips):
        mine = [result for result in results if result.clip == clip]
        write_file_atomic(paths[f"psnr:{index}"], _psnr_figure(mine, clip))
        write_file_atomic(paths[f"strips:{index}"], _strips_figure(mine, clip))
        write_file_atomic(paths[f"errors:{index}"], _errors_figure(mine, clip))
    write_file_atomic(paths["html"], _html(results, clips, paths, title, note))
    return paths
