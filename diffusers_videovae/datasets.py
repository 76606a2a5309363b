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
"""Video clip datasets for training and latent caching.

A *source* is one video file, optionally restricted to a frame range. Sources are given as a file, a folder
(every video file inside, recursively), or a list file (`.txt`, one source per line: `path [start end]`, `#`
comments; relative paths are relative to the list file). Frame ranges are half-open, `[start, end)`.

`VideoClipDataset` decodes each source once, at a reduced resolution, into memory (uint8), then serves random
windows of `num_frames` frames and `height` x `width` crops as float tensors `(3, T, H, W)` in [-1, 1]. Sample `i`
is a pure function of `(seed, i)`, so a training run on any number of processes is reproducible and resumable
without data-loader state.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoClipDataset",
    "VideoSource",
    "decode_frames",
    "list_sources",
    "to_model_range",
]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")


@dataclass(frozen=True)
class VideoSource:
    """One video file and the frame range `[start, end)` to use from it (`end=None`: to the last frame)."""

    path: Path
    start: int = 0
    end: int | None = None

    def __str__(self) -> str:
        if self.start == 0 and self.end is None:
            return str(self.path)
        return f"{self.path}[{self.start}:{'' if self.end is None else self.end}]"


def _parse_list_file(list_file: Path) -> list[VideoSource]:
    sources = []
    for number, raw in enumerate(list_file.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (1, 3):
            raise ValueError(f"{list_file}:{number}: expected `path` or `path start end`, got {raw!r}.")
        path = Path(fields[0]).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        if len(fields) == 1:
            sources.append(VideoSource(path))
        else:
            start, end = int(fields[1]), int(fields[2])
            if not 0 <= start < end:
                raise ValueError(
                    f"{list_file}:{number}: frame range must satisfy 0 <= start < end, got {start} {end}."
                )
            sources.append(VideoSource(path, start, end))
    return sources


def list_sources(inputs: str | os.PathLike | Iterable[str | os.PathLike | VideoSource]) -> list[VideoSource]:
    """Expand files, folders and `.txt` list files into a sorted-per-input list of `VideoSource`s.

    Raises `FileNotFoundError` for a missing path and `ValueError` when nothing is found.
    """
    if isinstance(inputs, (str, os.PathLike, VideoSource)):
        inputs = [inputs]
    sources: list[VideoSource] = []
    for item in inputs:
        if isinstance(item, VideoSource):
            sources.append(item)
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            sources.extend(VideoSource(p) for p in found)
        elif path.is_file() and path.suffix.lower() == ".txt":
            sources.extend(_parse_list_file(path))
        elif path.is_file():
            sources.append(VideoSource(path))
        else:
            raise FileNotFoundError(
                f"{path} does not exist (expected a video file, a folder of videos or a .txt list)."
            )
    if not sources:
        raise ValueError(
            f"No video files found in {[str(i) for i in inputs]} (extensions: {', '.join(VIDEO_EXTENSIONS)})."
        )
    return sources


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # Even sizes keep swscale's chroma handling exact; the crop later picks the model's multiple anyway.
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def decode_frames(
    path: str | os.PathLike,
    start: int = 0,
    end: int | None = None,
    short_side: int | None = None,
) -> torch.Tensor:
    """Decode frames `[start, end)` of a video as uint8 `(T, H, W, 3)` RGB, resized so that min(H, W) <= short_side.

    Resizing happens in the decoder (area filter), so a long high-resolution clip never sits in memory at full
    size. Raises `ValueError` when the file holds no decodable video frames in that range.
    """
    import av

    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream.")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = None
        for index, frame in enumerate(container.decode(stream)):
            if index < start:
                continue
            if end is not None and index >= end:
                break
            if size is None:
                size = _scaled_size(frame.width, frame.height, short_side)
            frames.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA"))
    if not frames:
        raise ValueError(f"{path} has no decodable video frames in range [{start}, {end}).")
    return torch.from_numpy(np.stack(frames))


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` -> float32 `(3, T, H, W)` in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


class VideoClipDataset(torch.utils.data.Dataset):
    """Random `(3, num_frames, height, width)` clips in [-1, 1] cut from a set of videos held in memory.

    Args:
        sources: files, folders, `.txt` list files or `VideoSource`s (see `list_sources`).
        num_frames: frames per clip; must follow the model's frame rule (e.g. `1 + 4k`), checked by the caller.
        height, width: crop size in pixels.
        short_side: each video is first resized so that its shorter side is at most this many pixels.
        random_scale: additionally resize each sampled window by a random factor in `[random_scale, 1]` before
            cropping (1 disables it), which shows the model the same content at several scales.
        flip: random horizontal flips.
        length: the number of samples one pass over the dataset yields (`__len__`); sampling is with replacement.
        seed: sample `i` depends only on `(seed, i)`.
    """

    def __init__(
        self,
        sources: str | os.PathLike | Sequence[str | os.PathLike | VideoSource],
        num_frames: int = 9,
        height: int = 64,
        width: int = 64,
        short_side: int | None = 144,
        random_scale: float = 1.0,
        flip: bool = True,
        length: int = 1_000_000,
        seed: int = 0,
    ):
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"num_frames, height and width must be positive, got {num_frames}, {height}, {width}.")
        if not 0 < random_scale <= 1:
            raise ValueError(f"random_scale must be in (0, 1], got {random_scale}.")
        self.sources = list_sources(sources)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.random_scale, self.flip, self.length, self.seed = random_scale, flip, length, seed
        self.clips: list[torch.Tensor] = []
        for source in self.sources:
            clip = decode_frames(source.path, source.start, source.end, short_side)
            t, h, w, _ = clip.shape
            if t < num_frames or h < height or w < width:
                raise ValueError(
                    f"{source} decodes to {t} frames of {h}x{w} (short side {short_side}), smaller than the "
                    f"requested clips of {num_frames} frames of {height}x{width}."
                )
            self.clips.append(clip)
        # Longer videos are sampled proportionally more often.
        weights = np.array([len(c) - num_frames + 1 for c in self.clips], dtype=np.float64)
        self.clip_weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(index)])
        clip = self.clips[int(rng.choice(len(self.clips), p=self.clip_weights))]
        t, h, w, _ = clip.shape
        t0 = int(rng.integers(0, t - self.num_frames + 1))
        scale = float(rng.uniform(self.random_scale, 1.0)) if self.random_scale < 1 else 1.0
        scale = max(scale, self.height / h, self.width / w)
        ch, cw = min(h, round(self.height / scale)), min(w, round(self.width / scale))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = to_model_range(clip[t0 : t0 + self.num_frames, y0 : y0 + ch, x0 : x0 + cw])
        if (ch, cw) != (self.height, self.width):
            window = torch.nn.functional.interpolate(
                window, size=(self.height, self.width), mode="bilinear", antialias=True, align_corners=False
            ).clamp_(-1, 1)
        if self.flip and rng.random() < 0.5:
            window = window.flip(-1)
        return window.contiguous()
