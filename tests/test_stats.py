"""`videovae stats`: the statistics of the latents `videovae encode` writes, in constant memory, on 1 or 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image

from diffusers_videovae import evaluation, stats
from diffusers_videovae.cli import main
from diffusers_videovae.latent_files import read_latents
from diffusers_videovae.loaders import load_model
from diffusers_videovae.video import synthetic_clip, write_video

FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A tiny IV-VAE (4 latent channels), three 13-frame clips and a list of their first 5 frames."""
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    root = tmp_path_factory.mktemp("stats")
    clips = [
        write_video(root / f"clip{seed}.mp4", synthetic_clip(13, 40, 56, seed=seed), fps=10, crf=10)
        for seed in range(3)
    ]
    listing = root / "clips.txt"
    listing.write_text("".join(f"{clip.name} 0 {FRAMES}\n" for clip in clips))
    torch.manual_seed(0)
    AutoencoderKLIVVAE(latent_channels=4, base_dim=4).save_pretrained(root / "model")
    return {"root": root, "clips": clips, "list": listing, "model": root / "model"}


def run_stats(data, output: Path, *extra) -> dict:
    options = ["-m", data["model"], "--data", data["list"], "-o", output, "--frames", FRAMES, "--size", SIZE]
    assert main(["stats", *map(str, options), "-q", *map(str, extra)]) == 0
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def encoded(data) -> torch.Tensor:
    """`(C, N)`: every latent value `videovae encode` writes for the same clips, per channel."""
    values = []
    for clip in data["clips"]:
        path = data["root"] / f"{clip.stem}.latents.safetensors"
        options = ["encode", clip, "-m", data["model"], "-o", path, "--frames", FRAMES, "--size", SIZE]
        assert main([str(option) for option in options]) == 0
        latents, _, _ = read_latents(path)
        values.append(latents.double().transpose(0, 1).reshape(latents.shape[1], -1))
    return torch.cat(values, dim=1)


@pytest.fixture(scope="module")
def single(data) -> dict:
    return run_stats(data, data["root"] / "stats.json")


def test_statistics_are_those_of_the_latents_videovae_encode_writes(single, encoded):
    assert single["count"] == encoded.shape[1]
    np.testing.assert_allclose(single["mean"], encoded.mean(1).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(single["std"], encoded.std(1, correction=0).numpy(), rtol=1e-10)
    assert single["min"] == encoded.amin(1).tolist() and single["max"] == encoded.amax(1).tolist()


def test_suggestion_follows_the_models_shift_and_scale_convention(single, encoded):
    suggested = single["suggested"]
    assert suggested["shift_factor"] == pytest.approx(float(encoded.mean()), rel=1e-10)
    assert suggested["scaling_factor"] == pytest.approx(1 / float(encoded.std(correction=0)), rel=1e-10)
    assert set(single["current"]) == {"scaling_factor", "shift_factor", "formula"}


def test_histogram_figure_is_written_beside_the_json(data, single):
    with Image.open(data["root"] / "stats.histograms.png") as image:
        assert image.width > 300 and image.height > 150
        assert np.asarray(image.convert("L")).std() > 10


def test_two_processes_give_the_statistics_of_one(data, single):
    output = data["root"] / "stats-2.json"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29573",
        "-m", "diffusers_videovae.stats", "-m", str(data["model"]), "--data", str(data["list"]), "-o", str(output),
        "--frames", str(FRAMES), "--size", str(SIZE), "-q", "--cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = json.loads(output.read_text())
    assert merged["count"] == single["count"]
    np.testing.assert_allclose(merged["mean"], single["mean"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(merged["std"], single["std"], rtol=1e-12)


def test_memory_does_not_grow_with_the_number_of_clips(data, monkeypatch):
    """No clip's latents outlive the next clip's encode, and the running state has the same size for 2 or 8 clips."""
    model = load_model(data["model"])
    sources = [stats.Window(clip, 0, FRAMES) for clip in data["clips"]]
    alive_at_each_encode, encoded = [], []
    original = evaluation.encode_video

    def encode_and_watch(model, video):
        alive_at_each_encode.append(sum(ref() is not None for ref in encoded))
        latents, conditions = original(model, video)
        encoded.append(weakref.ref(latents))
        return latents, conditions

    monkeypatch.setattr(evaluation, "encode_video", encode_and_watch)
    small = stats.latent_statistics(model, sources[:2], SIZE, progress=False)
    large = stats.latent_statistics(model, (sources * 3)[:8], SIZE, progress=False)
    assert alive_at_each_encode == [0] * 10
    assert large.count == 4 * small.count
    assert large.nbytes == small.nbytes


def test_running_statistics_stay_exact_far_from_zero_and_merge_like_one_pass():
    """Chan's update: latents offset by 1e6 with a spread of 1e-3 keep their std (a running sum of squares loses it)."""
    generator = np.random.default_rng(0)
    values = 1e6 + 1e-3 * generator.standard_normal((2, 3, 4000))  # (channels, clips, values)
    first, second = stats.RunningStats(2), stats.RunningStats(2)
    for clip in range(3):
        target = first if clip < 2 else second
        target.update(torch.from_numpy(values[:, clip]).reshape(1, 2, 4000))
    first.merge(second)
    flat = values.reshape(2, -1)
    np.testing.assert_allclose(first.std, flat.std(1), rtol=1e-6)
    np.testing.assert_allclose(first.mean, flat.mean(1), rtol=1e-15)
    assert first.count == flat.shape[1]


def test_histogram_range_doubles_without_losing_a_value():
    running = stats.RunningStats(1, bins=16)
    small = torch.tensor([-0.3, 0.1, 0.2, 0.9]).view(1, 1, 4)
    large = torch.tensor([-3.5, 2.5, 0.6]).view(1, 1, 3)
    running.update(small)
    assert running.limit[0] == 1.0
    running.update(large)
    assert running.limit[0] == 4.0
    every = torch.cat([small, large], dim=2).flatten().numpy()
    expected, _ = np.histogram(every, bins=16, range=(-4.0, 4.0))
    np.testing.assert_array_equal(running.histogram[0], expected)


def test_each_convention_gets_its_own_suggestion():
    running = stats.RunningStats(2)
    running.update(torch.tensor([[1.0, 3.0], [10.0, 14.0]]).view(1, 2, 2))  # channel means 2 and 12, stds 1 and 2
    per_channel = stats.suggest_normalization({"latents_mean": [0, 0], "latents_std": [1, 1]}, running)
    assert per_channel["latents_mean"] == [2.0, 12.0] and per_channel["latents_std"] == [1.0, 2.0]
    overall_std = float(np.std([1.0, 3.0, 10.0, 14.0]))
    shifted = stats.suggest_normalization({"scaling_factor": 1.0, "shift_factor": 0.0}, running)
    assert shifted["shift_factor"] == 7.0 and shifted["scaling_factor"] == pytest.approx(1 / overall_std)
    scaled = stats.suggest_normalization({"scaling_factor": 0.18215}, running)
    assert scaled["scaling_factor"] == pytest.approx(1 / overall_std) and "shift_factor" not in scaled
    layer_norm = stats.suggest_normalization({"latent_norm_eps": 1e-5, "formula": "layer_norm(z)"}, running)
    assert not set(layer_norm) & set(stats.CONFIG_KEYS) and "no constant applies" in layer_norm["note"]


def test_write_config_needs_overwrite_then_normalises_the_latents(data, tmp_path, encoded, capsys):
    folder = tmp_path / "model"
    shutil.copytree(data["model"], folder)
    before = (folder / "config.json").read_text()
    code = main(["stats", "-m", str(folder), "--data", str(data["list"]), "-o", str(tmp_path / "a.json"),
                 "--frames", str(FRAMES), "--size", str(SIZE), "-q", "--write-config", str(folder)])  # fmt: skip
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == before
    run_stats({**data, "model": folder}, tmp_path / "b.json", "--write-config", folder, "--overwrite")
    normalized = load_model(folder).normalize_latents(encoded.float().view(1, encoded.shape[0], -1)).double()
    assert float(normalized.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(normalized.std(correction=0)) == pytest.approx(1.0, abs=1e-5)


def test_reducio_gets_no_constant_and_its_config_is_not_written(tmp_path, monkeypatch, capsys):
    """Reducio layer-normalises each sample's latents: the suggestion says so, and --write-config refuses at once."""
    from conftest import reference_dir

    from diffusers_videovae import checkpoints

    folder = reference_dir("reducio")
    model = checkpoints.convert_to_folder(
        "reducio", folder / "tiny_original.ckpt", tmp_path / "reducio", original_config=folder / "tiny_config.yaml",
        verbose=False,
    )  # fmt: skip
    clip = write_video(tmp_path / "clip.mp4", synthetic_clip(16, 32, 32, seed=1), fps=10, crf=10)
    options = ["stats", "-m", str(model), "--data", str(clip), "--frames", "16", "--size", "32", "-q"]
    assert main([*options, "-o", str(tmp_path / "reducio.json")]) == 0
    result = json.loads((tmp_path / "reducio.json").read_text())
    assert not set(result["suggested"]) & set(stats.CONFIG_KEYS)
    assert "no constant applies" in result["suggested"]["note"]
    assert len(result["mean"]) == load_model(model).config.latent_channels

    monkeypatch.setattr(stats, "latent_statistics", lambda *a, **k: pytest.fail("computed before checking"))
    code = main([*options, "-o", str(tmp_path / "again.json"), "--write-config", str(model), "--overwrite"])
    assert code == 1 and "no normalisation constants" in capsys.readouterr().err


def test_an_input_is_never_an_output_even_with_overwrite(data, capsys):
    clip = data["clips"][0]
    before = clip.read_bytes()
    code = main(["stats", "-m", str(data["model"]), "--data", str(clip), "-o", str(clip), "--overwrite", "-q"])
    assert code == 1 and f"it is the same file as the input INPUT {clip}" in capsys.readouterr().err
    assert clip.read_bytes() == before
