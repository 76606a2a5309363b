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
"""Reconstruction quality: PSNR and SSIM per frame and per clip (scikit-image), LPIPS when available locally.

Conventions, the ones video VAE papers use:

* Frames are compared in RGB. Float videos are `(1, 3, T, H, W)` / `(3, T, H, W)` in [-1, 1] (data range 2);
  uint8 videos are `(T, H, W, 3)` (data range 255). Float values are clamped to [-1, 1] first, as when saving.
* PSNR and SSIM are computed per frame; the clip's value is the mean over its frames (identical frames give
  PSNR = inf).
* SSIM is Wang et al. (2004): Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03, population covariance, averaged
  over the three channels (`skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`). Frames must be at least 11 pixels on each side.
* LPIPS needs the `lpips` package and its backbone weights already on disk; nothing is downloaded. Otherwise
  `lpips_unavailable_reason()` says why and the value is reported as unavailable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "Quality",
    "frame_lpips",
    "frame_psnr",
    "frame_ssim",
    "lpips_unavailable_reason",
    "mean_psnr",
    "video_quality",
]

_SSIM_MIN_SIDE = 11  # the Gaussian window of sigma 1.5 is 11 pixels wide
# torchvision file names of the backbones LPIPS builds on.
_LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def _as_frames(video: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """-> `(T, H, W, 3)` array (float64 in [-1, 1] or uint8) and its data range."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        if video.dtype == torch.uint8:
            video = video.numpy()
        else:
            if video.ndim == 5:
                if video.shape[0] != 1:
                    raise ValueError(f"Expected one video (batch of 1), got shape {tuple(video.shape)}.")
                video = video[0]
            if video.ndim != 4 or video.shape[0] != 3:
                raise ValueError(
                    f"Expected a float video (1, 3, T, H, W) or (3, T, H, W) in [-1, 1], got {tuple(video.shape)}."
                )
            return video.double().clamp(-1, 1).permute(1, 2, 3, 0).numpy(), 2.0
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"Expected uint8 frames (T, H, W, 3), got shape {video.shape}.")
        return video, 255.0
    raise TypeError(
        "Expected a float tensor (1, 3, T, H, W) in [-1, 1] or uint8 frames (T, H, W, 3), "
        f"got {type(video).__name__} {getattr(video, 'dtype', '')}."
    )


def _pair(reference, test) -> tuple[np.ndarray, np.ndarray, float]:
    reference, range_ref = _as_frames(reference)
    test, range_test = _as_frames(test)
    if range_ref != range_test:
        raise TypeError("Both videos must be of the same kind: float in [-1, 1], or uint8.")
    if reference.shape != test.shape:
        raise ValueError(f"Videos differ in shape: {reference.shape} vs {test.shape} (T, H, W, 3).")
    return reference, test, range_ref


def frame_psnr(reference: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame, shape `(T,)`; `inf` where a frame is reproduced exactly."""
    reference, test, data_range = _pair(reference, test)
    values = []
    for ref_frame, test_frame in zip(reference, test):
        if np.array_equal(ref_frame, test_frame):
            values.append(math.inf)  # skimage would divide by zero and warn
        else:
            values.append(peak_signal_noise_ratio(ref_frame, test_frame, data_range=data_range))
    return np.asarray(values, dtype=np.float64)


def frame_ssim(reference: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray) -> np.ndarray:
    """SSIM of each frame (mean over RGB channels), shape `(T,)`; 1.0 for identical frames."""
    reference, test, data_range = _pair(reference, test)
    if min(reference.shape[1:3]) < _SSIM_MIN_SIDE:
        raise ValueError(
            f"SSIM needs frames of at least {_SSIM_MIN_SIDE}x{_SSIM_MIN_SIDE}, got {reference.shape[1:3]}."
        )
    return np.asarray(
        [
            structural_similarity(
                ref_frame,
                test_frame,
                data_range=data_range,
                channel_axis=-1,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for ref_frame, test_frame in zip(reference, test)
        ],
        dtype=np.float64,
    )


def mean_psnr(values: np.ndarray) -> float:
    """Mean of per-frame PSNR values (inf when every frame is exact; exact frames otherwise count as inf too)."""
    return float(np.mean(values)) if len(values) else math.nan


def lpips_unavailable_reason(net: str = "alex") -> str | None:
    """None when LPIPS can run offline with backbone `net`; otherwise why not."""
    if net not in _LPIPS_BACKBONE_FILES:
        return f"unknown LPIPS backbone {net!r}; expected one of {sorted(_LPIPS_BACKBONE_FILES)}"
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the `lpips` package is not installed (pip install lpips torchvision)"
    weights = Path(torch.hub.get_dir()) / "checkpoints" / _LPIPS_BACKBONE_FILES[net]
    if not weights.exists():
        return f"the {net} backbone weights are not on disk ({weights}); they are never downloaded at run time"
    return None


def frame_lpips(
    reference: torch.Tensor, test: torch.Tensor, net: str = "alex", batch_size: int = 8
) -> np.ndarray | None:
    """LPIPS distance of each frame (lower is better), or None when `lpips_unavailable_reason(net)` is not None."""
    if lpips_unavailable_reason(net) is not None:
        return None
    import lpips

    reference, test, data_range = _pair(reference, test)
    if data_range != 2.0:
        reference, test = reference / 127.5 - 1.0, test / 127.5 - 1.0
    metric = lpips.LPIPS(net=net, verbose=False).eval()
    to_tensor = lambda frames: torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2)  # noqa: E731
    values = []
    with torch.no_grad():
        for start in range(0, len(reference), batch_size):
            stop = start + batch_size
            values.append(metric(to_tensor(reference[start:stop]), to_tensor(test[start:stop])).flatten())
    return torch.cat(values).double().numpy()


@dataclass
class Quality:
    """Per-frame values and their clip means."""

    psnr_frames: np.ndarray
    ssim_frames: np.ndarray
    lpips_frames: np.ndarray | None = None
    lpips_unavailable: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def psnr(self) -> float:
        return mean_psnr(self.psnr_frames)

    @property
    def ssim(self) -> float:
        return float(np.mean(self.ssim_frames))

    @property
    def lpips(self) -> float | None:
        return None if self.lpips_frames is None else float(np.mean(self.lpips_frames))

    def summary(self) -> str:
        text = f"PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}"
        if self.lpips is not None:
            text += f", LPIPS {self.lpips:.4f}"
        elif self.lpips_unavailable:
            text += f", LPIPS unavailable ({self.lpips_unavailable})"
        return text


def video_quality(
    reference: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray, *, lpips: bool = False
) -> Quality:
    """PSNR and SSIM (and LPIPS when asked and available) of `test` against `reference`."""
    quality = Quality(psnr_frames=frame_psnr(reference, test), ssim_frames=frame_ssim(reference, test))
    if lpips:
        quality.lpips_unavailable = lpips_unavailable_reason()
        if quality.lpips_unavailable is None:
            quality.lpips_frames = frame_lpips(reference, test)
    return quality
