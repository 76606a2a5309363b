"""`videovae cache-latents`: two CPU processes, a corrupt video, an interrupted run resumed without loss or duplicates."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors import safe_open

from diffusers_videovae import caching
from diffusers_videovae.video import read_video, synthetic_clip, write_video

NUM_FRAMES, STRIDE, NUM_VIDEO_FRAMES = 5, 4, 13  # three clips per video: frames 0-4, 4-8, 8-12


def launch(*options: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29562",
        "-m", "diffusers_videovae.caching", *options,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three short clips, one corrupt file (a real mp4 cut in half) and a tiny IV-VAE folder."""
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    root = tmp_path_factory.mktemp("cache")
    videos = root / "videos"
    videos.mkdir()
    for seed in range(3):
        write_video(videos / f"clip{seed}.mp4", synthetic_clip(NUM_VIDEO_FRAMES, 32, 48, seed=seed), fps=10)
    whole = (videos / "clip0.mp4").read_bytes()
    (videos / "broken.mp4").write_bytes(whole[: len(whole) // 2])
    torch.manual_seed(0)
    AutoencoderKLIVVAE(latent_channels=4, base_dim=4).save_pretrained(root / "model")
    return root


def cache_options(dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--data", str(dataset / "videos"), "-m", str(dataset / "model"), "-o", str(output),
        "--num-frames", str(NUM_FRAMES), "--frame-stride", str(STRIDE), "--shard-size", "2", "--num-threads", "1",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def resumed(dataset) -> dict:
    """An interrupted two-process run (each process stops after one clip, one shard write killed midway), then the
    same command again."""
    output = dataset / "latents"
    first = launch(*cache_options(dataset, output, "--max-clips", "1"))
    clips_after_interruption = json.loads((output / "index.json").read_text())["num_clips"]
    (output / ".shard-0123456789abcdef.safetensors.tmp-999").write_bytes(b"half a shard")
    second = launch(*cache_options(dataset, output))
    return {"output": output, "first": first, "second": second, "clips_after_interruption": clips_after_interruption}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import PartialState

    PartialState._reset_state()
    yield
    PartialState._reset_state()


def expected_clips(dataset: Path) -> set[tuple[str, int, int]]:
    return {
        (str(dataset / "videos" / f"clip{seed}.mp4"), start, start + NUM_FRAMES)
        for seed in range(3)
        for start in range(0, NUM_VIDEO_FRAMES - NUM_FRAMES + 1, STRIDE)
    }


def test_interrupted_run_kept_what_it_finished(resumed):
    assert resumed["clips_after_interruption"] == 2  # one clip per process


def test_resumed_run_indexes_every_clip_exactly_once(dataset, resumed):
    index = caching.read_index(resumed["output"])
    found = [(c["path"], c["frame_start"], c["frame_end"]) for c in index["clips"]]
    assert len(found) == len(set(found)) == index["num_clips"]
    assert set(found) == expected_clips(dataset)


def test_resumed_run_skips_the_clips_already_cached(resumed):
    output = resumed["second"].stdout + resumed["second"].stderr
    assert "Cached 9 clips" in output
    shards = list(resumed["output"].glob("shard-*.safetensors"))
    stored = []
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            stored.extend(handle.keys())
    assert len(stored) == len(set(stored)) == 2 * 9  # each clip's mean and its normalised form


def test_corrupt_video_is_reported_and_does_not_stop_the_run(resumed):
    failed = json.loads((resumed["output"] / "failed.json").read_text())
    assert [Path(item["path"]).name for item in failed] == ["broken.mp4"]
    assert "broken.mp4" in failed[0]["error"]
    assert "failed: " in resumed["second"].stdout


def test_stored_latents_are_the_posterior_means_of_the_clips(dataset, resumed):
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    model = AutoencoderKLIVVAE.from_pretrained(dataset / "model").eval()
    index = caching.read_index(resumed["output"])
    clip = next(c for c in index["clips"] if c["path"].endswith("clip1.mp4") and c["frame_start"] == 4)
    video, _ = read_video(clip["path"])
    with torch.no_grad():
        expected = model.encode(video[:, :, clip["frame_start"] : clip["frame_end"]]).latent_dist.mean[0]
    with safe_open(str(resumed["output"] / clip["shard"]), framework="pt") as handle:
        stored = handle.get_tensor(clip["tensor"])
        normalized = handle.get_tensor(clip["normalized"])
    assert list(stored.shape) == clip["latent_shape"] == [4, 2, 4, 6]
    torch.testing.assert_close(stored, expected, rtol=0, atol=1e-5)
    # What a diffusion model trains on: the config's (z - shift_factor) * scaling_factor of the mean.
    config = json.loads((dataset / "model" / "config.json").read_text())
    expected_normalized = (expected - config["shift_factor"]) * config["scaling_factor"]
    torch.testing.assert_close(normalized, expected_normalized, rtol=0, atol=1e-5)


def test_index_records_the_model_and_its_latent_normalisation(dataset, resumed):
    index = caching.read_index(resumed["output"])
    assert index["model_id"] == str(dataset / "model")
    assert index["model_class"] == "AutoencoderKLIVVAE"
    normalization = index["latent_normalization"]
    assert normalization["formula"] == "(z - shift_factor) * scaling_factor"
    assert {"scaling_factor", "shift_factor"} <= normalization.keys()


def parse(options: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    caching.add_arguments(parser)
    return parser.parse_args(options)


def test_a_folder_holding_another_models_latents_is_refused(dataset, resumed, tmp_path):
    other = tmp_path / "other-model"
    (other).mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (other / name).write_bytes((dataset / "model" / name).read_bytes())
    options = cache_options(dataset, resumed["output"])
    options[options.index("-m") + 1] = str(other)
    with pytest.raises(ValueError, match="already holds latents of model"):
        caching.cache_latents(parse(options))


def test_clip_length_off_the_frame_rule_is_refused(dataset, tmp_path):
    options = cache_options(dataset, tmp_path / "out")
    options[options.index("--num-frames") + 1] = "6"
    with pytest.raises(ValueError, match=r"T = 1 \+ 4k.*nearest: 5 or 9"):
        caching.cache_latents(parse(options))


def test_cache_latents_subcommand_dispatches_through_func():
    parser = argparse.ArgumentParser()
    caching.register(parser.add_subparsers())
    args = parser.parse_args(["cache-latents", "--data", "v", "-m", "m", "-o", "out"])
    assert args.func is caching._run_from_args


def test_shards_and_index_follow_the_umask(resumed):
    umask = os.umask(0)
    os.umask(umask)
    files = [*resumed["output"].glob("shard-*.safetensors"), resumed["output"] / "index.json"]
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~umask for path in files)


def test_an_output_folder_that_is_a_file_is_refused_before_loading_the_model(dataset, tmp_path, monkeypatch):
    from diffusers_videovae import loaders

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the output folder is unusable")

    monkeypatch.setattr(loaders, "load_model", refuse)
    blocker = tmp_path / "latents"
    blocker.write_text("mine")
    with pytest.raises(OSError, match=f"Cannot use --output-dir {blocker}: it is a file, not a folder."):
        caching.cache_latents(parse(cache_options(dataset, blocker)))
    assert blocker.read_text() == "mine"


def test_decode_conditions_are_cached_beside_the_latents(dataset, tmp_path, monkeypatch):
    """A model whose decode needs tensors from the clip (Reducio's content frames) gets them stored per clip."""
    from diffusers_videovae import loaders
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    class ContentFramesVAE(AutoencoderKLIVVAE):
        def decode_conditions(self, video):
            return {"content": video[:, :, :1]}

    model = ContentFramesVAE.from_pretrained(dataset / "model").eval()
    monkeypatch.setattr(loaders, "load_model", lambda *args, **kwargs: model)
    options = cache_options(dataset, tmp_path / "out")
    options[options.index("--data") + 1] = str(dataset / "videos" / "clip1.mp4")
    caching.cache_latents(parse(options))
    index = caching.read_index(tmp_path / "out")
    clip = next(c for c in index["clips"] if c["frame_start"] == 4)
    assert clip["conditions"] == {"content": clip["tensor"].replace(".mean", ".content")}
    video, _ = read_video(clip["path"])
    with safe_open(str(tmp_path / "out" / clip["shard"]), framework="pt") as handle:
        stored = handle.get_tensor(clip["conditions"]["content"])
    assert torch.equal(stored, video[0, :, 4:5])
