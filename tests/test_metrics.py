"""PSNR / SSIM / LPIPS in diffusers_videovae.metrics, checked against values known in closed form."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from diffusers_videovae.metrics import (
    frame_psnr,
    frame_ssim,
    lpips_unavailable_reason,
    video_quality,
)


def _clip(num_frames: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, num_frames, size, size, generator=generator) * 1.6 - 0.8


def test_identical_clips_give_infinite_psnr_and_ssim_one():
    video = _clip()
    quality = video_quality(video, video.clone())
    assert quality.psnr == math.inf
    assert np.all(quality.psnr_frames == math.inf)
    assert quality.ssim == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_gaussian_noise_matches_the_analytic_value():
    sigma = 0.05
    clean = torch.zeros(1, 3, 4, 64, 64)
    noisy = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    # Range [-1, 1] has peak-to-peak 2, so PSNR = 10 log10(2^2 / sigma^2) = 32.04 dB for MSE = sigma^2.
    expected = 10 * math.log10(4 / sigma**2)
    assert frame_psnr(clean, noisy) == pytest.approx(np.full(4, expected), abs=0.1)


def test_psnr_of_a_constant_offset_is_exact_for_float_and_uint8():
    video = _clip().double()
    # MSE = d^2 exactly, so PSNR = 20 log10(range / d).
    assert frame_psnr(video, video + 0.1) == pytest.approx(np.full(3, 20 * math.log10(2 / 0.1)), abs=1e-9)
    frames = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    assert frame_psnr(frames, frames + 1) == pytest.approx(np.full(2, 20 * math.log10(255)), abs=1e-9)


def test_ssim_of_flat_frames_is_the_luminance_term():
    first = np.full((2, 24, 24, 3), 100, dtype=np.uint8)
    second = np.full((2, 24, 24, 3), 110, dtype=np.uint8)
    # No variance: SSIM reduces to (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2.
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert frame_ssim(first, second) == pytest.approx(np.full(2, expected), abs=1e-9)


def test_ssim_falls_as_noise_grows():
    clean = _clip(num_frames=1)
    values = [
        float(
            frame_ssim(clean, clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2)))[0]
        )
        for sigma in (0.01, 0.05, 0.2)
    ]
    assert values[0] > values[1] > values[2]


def test_float_values_are_clamped_to_the_valid_range_before_comparison():
    video = torch.ones(1, 3, 1, 16, 16)
    assert frame_psnr(video, video + 0.5)[0] == math.inf


def test_videos_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        frame_psnr(_clip(num_frames=3), _clip(num_frames=2))


def test_mixing_float_and_uint8_videos_is_refused():
    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="same kind"):
        frame_psnr(_clip(), frames)


def test_ssim_refuses_frames_smaller_than_its_window():
    video = _clip(size=8)
    with pytest.raises(ValueError, match="at least 11x11"):
        frame_ssim(video, video)


def test_lpips_is_reported_unavailable_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    video = _clip()
    quality = video_quality(video, video + 0.01, lpips=True)
    assert quality.lpips is None
    assert "not installed" in quality.lpips_unavailable
    assert "LPIPS unavailable" in quality.summary()


def test_lpips_unavailable_reason_names_unknown_backbones():
    assert "unknown LPIPS backbone" in lpips_unavailable_reason("resnet")
