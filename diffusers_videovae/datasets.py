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

`VideoClipDataset` reads only the headers up front (frame count and size of each source); each sample decodes just
its window of `num_frames` frames, at a reduced resolution, with `video.read_frames`, so no process holds the
videos in memory and a `DataLoader`'s workers decode in parallel. Samples are random windows and
`height` x `width` crops as float tensors `(3, T, H, W)` in [-1, 1]. Sample `i` is a pure function of
`(seed, i)`, so a training run on any number of processes is reproducible and resumable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .video import count_frames, downscaled_size, from_uint8, probe_video, read_frames

__all__ = ["VIDEO_EXTENSIONS", "VideoClipDataset", "VideoSource", "list_sources"]

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


class VideoClipDataset(torch.utils.data.Dataset):
    """Random `(3, num_frames, height, width)` clips in [-1, 1] cut from a set of videos, decoded per sample.

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
        self.short_side = short_side
        self.random_scale, self.flip, self.length, self.seed = random_scale, flip, length, seed
        # (frames, height, width) of each source as its windows are decoded.
        self.shapes = [self._shape(source) for source in self.sources]
        # Longer videos are sampled proportionally more often.
        weights = np.array([t - num_frames + 1 for t, _, _ in self.shapes], dtype=np.float64)
        self.clip_weights = weights / weights.sum()

    def _shape(self, source: VideoSource) -> tuple[int, int, int]:
        info = probe_video(source.path)
        total = count_frames(source.path)
        t = min(total, source.end if source.end is not None else total) - source.start
        w, h = downscaled_size(info.width, info.height, self.short_side)
        if t < self.num_frames or h < self.height or w < self.width:
            raise ValueError(
                f"{source} decodes to {max(t, 0)} frames of {h}x{w} (short side {self.short_side}), smaller than the "
                f"requested clips of {self.num_frames} frames of {self.height}x{self.width}."
            )
        return t, h, w

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(index)])
        which = int(rng.choice(len(self.sources), p=self.clip_weights))
        source = self.sources[which]
        t, h, w = self.shapes[which]
        t0 = int(rng.integers(0, t - self.num_frames + 1))
        scale = float(rng.uniform(self.random_scale, 1.0)) if self.random_scale < 1 else 1.0
        scale = max(scale, self.height / h, self.width / w)
        ch, cw = min(h, round(self.height / scale)), min(w, round(self.width / scale))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        first = source.start + t0
        frames = read_frames(source.path, first, first + self.num_frames, self.short_side)
        if frames.shape[0] != self.num_frames:
            raise ValueError(
                f"{source}: frames {first}-{first + self.num_frames - 1} could not all be decoded (got "
                f"{frames.shape[0]}); the file is shorter than its header says."
            )
        window = from_uint8(frames[:, y0 : y0 + ch, x0 : x0 + cw])[0]
        if (ch, cw) != (self.height, self.width):
            window = torch.nn.functional.interpolate(
                window, size=(self.height, self.width), mode="bilinear", antialias=True, align_corners=False
            ).clamp_(-1, 1)
        if self.flip and rng.random() < 0.5:
            window = window.flip(-1)
        return window.contiguous()
