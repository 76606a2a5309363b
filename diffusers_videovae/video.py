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
"""Reading and writing video files with `av`, and fitting clips to what a model accepts.

Tensors here follow the models' layout: `(B, 3, T, H, W)` float in [-1, 1]. Every problem with an input file
(missing, not a video, audio only, no frames, corrupt or truncated stream, absurd size) raises one
`VideoReadError` (a `ValueError`) whose message says what is wrong with which file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .memory import available_memory_bytes
from .models._common import InputRule

__all__ = [
    "InputRule",
    "VideoInfo",
    "VideoReadError",
    "VIDEO_FORMATS",
    "check_clip_size",
    "check_image_output",
    "check_video_output",
    "contact_sheet",
    "fit_to_rule",
    "from_uint8",
    "probe_video",
    "count_frames",
    "downscaled_size",
    "read_frames",
    "read_video",
    "side_by_side",
    "synthetic_clip",
    "to_uint8",
    "write_video",
]

# Larger than any real camera or codec level (H.264 level 6.2 tops out at 8192x4320); such a header is damaged or
# crafted, and decoding it would allocate gigabytes per frame.
MAX_SIDE = 16384
# Containers that hold the H.264 stream `write_video` makes, by file extension (the extension decides the format).
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
VIDEO_CODEC = "libx264"


class VideoReadError(ValueError):
    """A video file that cannot be used: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class VideoInfo:
    """What a file's header says about its first video stream."""

    path: Path
    width: int
    height: int
    num_frames: int
    """Frame count declared by the container; 0 when the container does not say."""
    fps: float
    duration: float
    """Seconds; 0.0 when unknown."""
    codec: str


def check_clip_size(
    rule: InputRule,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    names: tuple[str, str, str] = ("--num-frames", "--height", "--width"),
) -> None:
    """Raise a ValueError naming the frame rule (and the nearest valid counts) or the spatial multiple."""
    if num_frames is not None and rule.valid_num_frames(num_frames) != num_frames:
        below, above = rule.nearest_num_frames(num_frames)
        raise ValueError(
            f"{names[0]} {num_frames} does not follow the model's frame rule ({rule.describe()}); "
            f"nearest: {below} or {above}."
        )
    for name, size in ((names[1], height), (names[2], width)):
        if size is not None and (size <= 0 or size % rule.spatial_multiple):
            raise ValueError(
                f"{name} {size} must be a positive multiple of the spatial compression {rule.spatial_multiple}."
            )


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoReadError(f"Video file not found: {path}")
    if path.is_dir():
        raise VideoReadError(f"{path} is a folder, not a video file.")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes).")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as error:
        raise VideoReadError(
            f"{path} is not a video file that av/FFmpeg can read (it may be truncated or of another type): "
            f"{error.strerror or error}"
        ) from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams at all"]
        raise VideoReadError(f"{path} has no video stream (it contains: {', '.join(kinds)}).")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoReadError(f"{path}: the video stream has no valid frame size ({width}x{height}).")
    if max(width, height) > MAX_SIDE:
        raise VideoReadError(
            f"{path}: frame size {width}x{height} is absurd (over {MAX_SIDE} pixels on a side); the file is damaged "
            "or not a real video."
        )
    return stream


def _fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    return float(rate) if rate else 25.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Header information of a file's first video stream, without decoding it."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        return VideoInfo(
            path=path,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            num_frames=int(stream.frames or 0),
            fps=_fps(stream),
            duration=duration,
            codec=stream.codec_context.name,
        )


def _resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def downscaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """`(width, height)` with the short side brought down to `short_side` (never up), as `read_frames` decodes."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    return _resized_size(width, height, short_side)


def _check_read_options(start: float, num_frames: int | None, stride: int, fps: float | None, size: int | None):
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}.")
    if fps is not None and (fps <= 0 or stride != 1):
        raise ValueError("fps must be > 0 and cannot be combined with stride.")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if size is not None and not 1 <= size <= MAX_SIDE:
        raise ValueError(f"size (short side) must be between 1 and {MAX_SIDE}, got {size}.")
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}.")


def _crop_size(path: Path, width: int, height: int, rule: InputRule | None) -> tuple[int, int]:
    """`(crop_h, crop_w)`: the frame size cut down to the rule's spatial multiple."""
    if rule is None:
        return height, width
    crop_h = height // rule.spatial_multiple * rule.spatial_multiple
    crop_w = width // rule.spatial_multiple * rule.spatial_multiple
    if crop_h == 0 or crop_w == 0:
        raise VideoReadError(
            f"{path}: frames of {width}x{height} are smaller than this model's spatial multiple "
            f"({rule.spatial_multiple}); use a larger --size."
        )
    return crop_h, crop_w


def _frame_budget(path: Path, expected: int, crop_h: int, crop_w: int, max_bytes: int | None) -> int:
    """How many frames of this size fit in the allowed memory; raises when the expected ones do not."""
    budget = max_bytes if max_bytes is not None else int(0.8 * available_memory_bytes())
    frame_bytes = 3 * crop_h * crop_w * 4
    if expected * frame_bytes > budget:
        raise VideoReadError(
            f"{path}: {expected} frames of {crop_w}x{crop_h} need {expected * frame_bytes / 1024**3:.1f} GiB as "
            f"float32, more than the {budget / 1024**3:.1f} GiB allowed; read fewer frames (num_frames / --frames) "
            "or smaller ones (size / --size)."
        )
    return max(1, budget // frame_bytes)


def _check_complete(path: Path, declared: int, source_fps: float, last_time: float | None, start: float) -> None:
    """Refuse a stream that ends well before the frame count its header declares (a truncated file)."""
    if not declared or last_time is None:
        return
    decoded = round(last_time * source_fps) + 1  # source frames up to the last one decoded
    if decoded < declared - max(1, declared // 100):
        where = f" (reading from {start:g} s)" if start else ""
        raise VideoReadError(
            f"{path} is truncated: the header declares {declared} frames but the stream ends after frame {decoded}"
            f"{where}."
        )


def read_video(
    path: str | os.PathLike,
    *,
    start: float = 0.0,
    num_frames: int | None = None,
    stride: int = 1,
    fps: float | None = None,
    size: int | None = None,
    rule: InputRule | None = None,
    max_bytes: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Decode a video file into a model input.

    Args:
        path: any file av/FFmpeg can decode.
        start: seconds to skip at the beginning.
        num_frames: at most this many frames (after `stride` / `fps` selection); all when None.
        stride: keep every `stride`-th frame. Exclusive with `fps`.
        fps: resample to this frame rate by picking the nearest earlier frame (no interpolation).
        size: resize so that the short side is `size` pixels (area filter), keeping the aspect ratio.
        rule: when given, center-crop H and W down to multiples of `rule.spatial_multiple` and drop trailing frames
            down to the nearest valid frame count (`model.input_rule` gives it).
        max_bytes: refuse clips whose float32 tensor would be larger (default: 80% of available memory).

    Returns:
        `(video, fps)`: `video` is `(1, 3, T, H, W)` float32 in [-1, 1]; `fps` is the frame rate of the returned
        frames. A stream that ends before the frame count its header declares raises `VideoReadError`.
    """
    path = Path(path)
    _check_read_options(start, num_frames, stride, fps, size)
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        source_fps = _fps(stream)
        width, height = _resized_size(stream.codec_context.width, stream.codec_context.height, size)
        crop_h, crop_w = _crop_size(path, width, height, rule)
        declared = int(stream.frames or 0)
        expected = num_frames or (math.ceil(declared / stride) if declared else 0)
        if fps is not None and declared:
            expected = num_frames or math.ceil(declared * fps / source_fps)
        # Streams that do not declare their length are checked while decoding.
        max_frames = _frame_budget(path, expected, crop_h, crop_w, max_bytes)
        frames, last_time = _decode_frames(
            container, stream, path, start, num_frames, stride, fps, width, height, max_frames
        )
    if not frames:
        where = f" after {start} s" if start else ""
        raise VideoReadError(f"{path} has a video stream but no frames could be decoded{where}.")
    _check_complete(path, declared, source_fps, last_time, start)
    video = torch.from_numpy(np.stack(frames))  # (T, H, W, 3) uint8
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    video = video[:, top : top + crop_h, left : left + crop_w]
    if rule is not None:
        keep = rule.valid_num_frames(video.shape[0])
        if keep == 0:
            raise VideoReadError(f"{path}: no frames left to fit the model's frame rule ({rule.describe()}).")
        video = video[:keep]
    out_fps = fps if fps is not None else source_fps / stride
    return from_uint8(video), float(out_fps)


def read_frames(
    path: str | os.PathLike, start: int = 0, end: int | None = None, short_side: int | None = None
) -> torch.Tensor:
    """Frames `[start, end)` (frame indices) of a video as uint8 `(T, H, W, 3)` RGB.

    With `short_side`, frames whose short side is longer are resized down to it (area filter, in the decoder, so a
    long high-resolution clip never sits in memory at full size); smaller ones are kept as they are. Seeks to the
    first frame, so a window late in a long video costs about as much as one at its start.
    """
    path = Path(path)
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"frame range must satisfy 0 <= start < end, got [{start}, {end}).")
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        width, height = downscaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        source_fps = _fps(stream)
        count = None if end is None else end - start
        # Half a frame before frame `start`: frame times are rounded to the stream's time base.
        seconds = max(0.0, (start - 0.5) / source_fps)
        frames, _ = _decode_frames(container, stream, path, seconds, count, 1, None, width, height, 10**9)
    if not frames:
        raise VideoReadError(f"{path} has no decodable video frames in range [{start}, {end}).")
    return torch.from_numpy(np.stack(frames))


def count_frames(path: str | os.PathLike) -> int:
    """Frames of a file's first video stream: the header's count, or the packets counted without decoding."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_frames(
    container, stream, path, start, num_frames, stride, fps, width, height, max_frames
) -> tuple[list[np.ndarray], float | None]:
    """The selected frames, and the time of the last frame the stream gave when it ended (None if we stopped)."""
    frames: list[np.ndarray] = []
    if start > 0 and stream.time_base is not None:
        try:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:
            container.seek(0, stream=stream)
    index = 0
    next_time = start
    last_time = None
    try:
        for frame in container.decode(stream):
            time = float(frame.time) if frame.time is not None else index / _fps(stream)
            last_time = time
            if time < start - 1e-6:
                continue
            if fps is not None:
                if time + 1e-6 < next_time:
                    continue
                next_time += 1.0 / fps
            elif index % stride:
                index += 1
                continue
            index += 1
            frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
            frames.append(frame.to_ndarray())
            if num_frames is not None and len(frames) >= num_frames:
                return frames, None
            if len(frames) > max_frames:
                raise VideoReadError(
                    f"{path}: more than {max_frames} frames of {width}x{height} would not fit in the memory allowed; "
                    "read fewer frames (num_frames / --frames) or smaller ones (size / --size)."
                )
    except av.FFmpegError as error:
        raise VideoReadError(
            f"{path} is corrupt or truncated: decoding failed after {len(frames)} frame(s) "
            f"({error.strerror or error})."
        ) from None
    return frames, last_time


def fit_to_rule(video: torch.Tensor, rule: InputRule) -> torch.Tensor:
    """Center-crop `(B, C, T, H, W)` to multiples of the spatial multiple and drop trailing frames to a valid T."""
    *_, num_frames, height, width = video.shape
    crop_h = height // rule.spatial_multiple * rule.spatial_multiple
    crop_w = width // rule.spatial_multiple * rule.spatial_multiple
    keep = rule.valid_num_frames(num_frames)
    if min(crop_h, crop_w, keep) == 0:
        raise ValueError(f"A video of shape {tuple(video.shape)} is too small for this model ({rule.describe()}).")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return video[:, :, :keep, top : top + crop_h, left : left + crop_w]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """`(1, 3, T, H, W)` or `(3, T, H, W)` in [-1, 1] -> `(T, H, W, 3)` uint8 (values clamped, rounded)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"Expected a single video (batch of 1), got shape {tuple(video.shape)}.")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"Expected a video of shape (1, 3, T, H, W) or (3, T, H, W), got {tuple(video.shape)}.")
    pixels = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def from_uint8(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 -> `(1, 3, T, H, W)` float32 in [-1, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}.")
    return (frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0).unsqueeze(0).contiguous()


def check_video_output(path: str | os.PathLike, option: str = "output", crf: int = 18) -> str:
    """The container format `write_video` uses for `path` (from its extension); a ValueError naming `option` and
    the path when the extension, the encoder or `crf` cannot make that file. Cheap: call it before any compute."""
    path = Path(path)
    container = VIDEO_FORMATS.get(path.suffix.lower())
    if container is None:
        raise ValueError(
            f"Cannot write {option} {path}: unknown video format {path.suffix or '(no extension)'!r}; use one of "
            f"{', '.join(VIDEO_FORMATS)}."
        )
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be between 0 (lossless) and 51, got {crf}.")
    try:
        av.codec.Codec(VIDEO_CODEC, "w")
    except (av.FFmpegError, ValueError):
        raise ValueError(f"Cannot write {option} {path}: this FFmpeg build has no {VIDEO_CODEC} encoder.") from None
    return container


def check_image_output(path: str | os.PathLike, option: str = "output") -> None:
    """A ValueError naming `option` unless `path` ends in .png (the format `contact_sheet` writes)."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"Cannot write {option} {path}: it must be a .png file (a PNG image is written).")


def write_video(
    path: str | os.PathLike,
    video: torch.Tensor | np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Write H.264 (libx264, yuv420p) video playable everywhere, through a temporary name (`paths.atomic_output`).

    Args:
        path: output file; its extension picks the container (`VIDEO_FORMATS`: .mp4, .m4v, .mov, .mkv, .avi).
        video: `(1, 3, T, H, W)` / `(3, T, H, W)` in [-1, 1], or `(T, H, W, 3)` uint8.
        fps: frame rate to store (the input's, to keep timing).
        crf: x264 constant rate factor: 0 is lossless, 18 visually lossless, 23 x264's default, 51 worst.
        preset: x264 speed/size preset.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes). An interrupted write leaves the previous file.
    """
    from .paths import atomic_output

    container_format = check_video_output(path, "path", crf)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps}.")
    frames = video if isinstance(video, np.ndarray) else to_uint8(video)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"Expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}.")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_output(path) as staging, av.open(str(staging), mode="w", format=container_format) as container:
        stream = container.add_stream(VIDEO_CODEC, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def side_by_side(original: torch.Tensor, reconstruction: torch.Tensor, gap: int = 4) -> np.ndarray:
    """Original | reconstruction next to each other: `(T, H, 2W + gap, 3)` uint8 for `write_video`."""
    left, right = to_uint8(original), to_uint8(reconstruction)
    if left.shape != right.shape:
        raise ValueError(f"Videos differ in shape: {left.shape} vs {right.shape}.")
    spacer = np.zeros((*left.shape[:2], gap, 3), dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=2)


def contact_sheet(
    original: torch.Tensor,
    reconstruction: torch.Tensor,
    path: str | os.PathLike,
    *,
    num_frames: int = 4,
    error_gain: float = 5.0,
    gap: int = 4,
) -> Path:
    """PNG with one row per sampled frame: original | reconstruction | |error| x `error_gain`.

    The error column shows the absolute difference, amplified so that small errors are visible (white = an error
    of `1 / error_gain` of the full range or more).
    """
    from PIL import Image, ImageDraw

    check_image_output(path, "path")
    left, right = to_uint8(original), to_uint8(reconstruction)
    if left.shape != right.shape:
        raise ValueError(f"Videos differ in shape: {left.shape} vs {right.shape}.")
    total, height, width, _ = left.shape
    picks = np.unique(np.linspace(0, total - 1, num=min(num_frames, total)).round().astype(int))
    header = 14
    sheet = Image.new("RGB", (3 * width + 2 * gap, header + len(picks) * (height + gap) - gap), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(("original", "reconstruction", f"|error| x{error_gain:g}")):
        draw.text((column * (width + gap) + 2, 1), label, fill=(255, 255, 255))
    for row, index in enumerate(picks):
        error = np.abs(left[index].astype(np.float32) - right[index].astype(np.float32)) * error_gain
        tiles = (left[index], right[index], np.clip(error, 0, 255).astype(np.uint8))
        for column, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (column * (width + gap), header + row * (height + gap)))
    from .paths import atomic_output

    path = Path(path)
    with atomic_output(path) as staging:
        sheet.save(staging, format="PNG")
    return path


def synthetic_clip(num_frames: int = 17, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth moving pattern `(1, 3, T, H, W)` in [-1, 1], for trying a model without a video file."""
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(3, generator=generator) * 2 * math.pi
    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1)
    channels = [
        torch.sin(2 * math.pi * (x * 2 + t * 0.05) + phase[0]) * torch.cos(2 * math.pi * y),
        torch.sin(2 * math.pi * (y * 3 - t * 0.04) + phase[1]),
        torch.cos(2 * math.pi * ((x + y) * 1.5 + t * 0.03) + phase[2]),
    ]
    video = torch.stack([channel.expand(num_frames, height, width) for channel in channels])
    return (video * 0.8).unsqueeze(0).contiguous()
