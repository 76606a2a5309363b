"""`videovae train` and the clip datasets: two CPU processes (gloo), exact resume, freezing, clear errors."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from diffusers_videovae import datasets, training
from diffusers_videovae.video import synthetic_clip, write_video

NUM_FRAMES, SIZE = 5, 32


def tiny_config(path: Path) -> Path:
    """A config.json for a tiny IV-VAE (same structure as the releases, base width 4)."""
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    model = AutoencoderKLIVVAE(latent_channels=4, base_dim=4)
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["_class_name"] = type(model).__name__
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Three short synthetic clips on disk (two for training, one for validation) and a tiny model config."""
    root = tmp_path_factory.mktemp("train")
    for seed in range(3):
        write_video(root / f"clip{seed}.mp4", synthetic_clip(12, 40, 48, seed=seed), fps=10, crf=10)
    tiny_config(root / "tiny.json")
    return root


def flags(workspace: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--config", str(workspace / "tiny.json"),
        "--data", str(workspace / "clip0.mp4"), str(workspace / "clip1.mp4"),
        "--val-data", str(workspace / "clip2.mp4"),
        "--num-frames", str(NUM_FRAMES), "--height", str(SIZE), "--width", str(SIZE),
        "--short-side", "40", "--val-samples", "1", "--lr", "1e-3", "--log-every", "1",
        "--num-threads", "1", "--output-dir", str(output),
        *extra,
    ]  # fmt: skip


def args_for(workspace: Path, output: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    return parser.parse_args(flags(workspace, output, *extra))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def read_log(output: Path) -> list[dict[str, str]]:
    with (output / "log.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_training_on_two_cpu_processes_checkpoints_and_resumes(workspace, tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29561",
        "-m", "diffusers_videovae.training",
    ]  # fmt: skip
    options = flags(workspace, output, "--checkpoint-every", "2", "--val-every", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.run(
        command + options + ["--max-steps", "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 process(es)" in first.stdout + first.stderr
    assert (output / "checkpoints" / "step-000002" / "trainer_state.json").exists()
    assert (output / "checkpoints" / "step-000002" / "random_states_1.pkl").exists()  # written by rank 1

    second = subprocess.run(
        command + options + ["--max-steps", "4", "--resume", "latest"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming at step 2" in second.stdout + second.stderr
    rows = read_log(output)
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all(float(r["val_psnr"]) > 0 for r in rows if r["kind"] == "val")
    weights = load_file(str(output / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(workspace, tmp_path):
    options = ("--max-steps", "4", "--ema-decay", "0.9", "--lr-scheduler", "cosine")
    straight = training.train(args_for(workspace, tmp_path / "straight", *options))
    training.train(args_for(workspace, tmp_path / "split", *options, "--stop-at-step", "2"))
    resumed = training.train(args_for(workspace, tmp_path / "split", *options, "--resume", "latest"))
    a = load_file(str(straight / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_gradient_checkpointing_trains_to_the_same_weights(workspace, tmp_path):
    plain = training.train(args_for(workspace, tmp_path / "plain", "--max-steps", "1"))
    checkpointed = training.train(
        args_for(workspace, tmp_path / "ckpt", "--max-steps", "1", "--gradient-checkpointing")
    )
    a = load_file(str(plain / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(checkpointed / "diffusion_pytorch_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)


def test_bf16_mixed_precision_runs_on_cpu(workspace, tmp_path):
    output = training.train(args_for(workspace, tmp_path / "bf16", "--max-steps", "1", "--mixed-precision", "bf16"))
    rows = read_log(output.parent)
    assert rows[0]["kind"] == "train" and 0 < float(rows[0]["loss"]) < 10


def test_train_only_decoder_leaves_the_encoder_untouched(workspace, tmp_path):
    output = training.train(args_for(workspace, tmp_path / "dec", "--max-steps", "2", "--train-only", "decoder"))
    from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

    torch.manual_seed(0)
    initial = AutoencoderKLIVVAE.from_config(json.loads((workspace / "tiny.json").read_text())).state_dict()
    trained = load_file(str(output / "diffusion_pytorch_model.safetensors"))
    encoder_keys = [k for k in trained if k.startswith("encoder.")]
    decoder_keys = [k for k in trained if k.startswith("decoder.")]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(trained[k], initial[k]) for k in encoder_keys)
    assert any(not torch.equal(trained[k], initial[k]) for k in decoder_keys)


def test_frame_count_off_the_frame_rule_is_refused_with_the_nearest_valid_counts(workspace, tmp_path):
    with pytest.raises(ValueError, match=r"T = 1 \+ 4k.*5 or 9"):
        training.train(args_for(workspace, tmp_path / "bad", "--max-steps", "1", "--num-frames", "6"))


def test_crop_not_a_multiple_of_the_spatial_compression_is_refused(workspace, tmp_path):
    with pytest.raises(ValueError, match="multiple of the spatial compression 8"):
        training.train(args_for(workspace, tmp_path / "bad", "--max-steps", "1", "--height", "36"))


def test_a_model_folder_holding_foreign_files_is_refused_before_training(workspace, tmp_path, monkeypatch):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "notes.txt").write_text("the user's notes")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the output folder was checked")

    monkeypatch.setattr(training, "_prepare_model", refuse)
    with pytest.raises(FileExistsError, match=r"Refusing to replace .*model: .*notes\.txt"):
        training.train(args_for(workspace, tmp_path / "run", "--max-steps", "1"))
    assert (tmp_path / "run" / "model" / "notes.txt").read_text() == "the user's notes"


def test_unknown_part_to_train_is_refused(workspace, tmp_path):
    with pytest.raises(ValueError, match="No parameter .* matches 'decodr'"):
        training.train(args_for(workspace, tmp_path / "bad", "--max-steps", "1", "--train-only", "decodr"))


def test_perceptual_loss_without_local_lpips_weights_says_why(workspace, tmp_path):
    from diffusers_videovae.metrics import lpips_unavailable_reason

    if lpips_unavailable_reason("alex") is None:
        pytest.skip("LPIPS is available on this machine")
    with pytest.raises(RuntimeError, match="--perceptual-weight needs LPIPS.*never downloads"):
        training.train(args_for(workspace, tmp_path / "bad", "--max-steps", "1", "--perceptual-weight", "0.1"))


def test_train_subcommand_dispatches_through_func():
    parser = argparse.ArgumentParser()
    training.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", "c.json", "--data", "v.mp4", "-o", "out"])
    assert args.func is training._run_from_args


def test_dataset_sample_is_a_pure_function_of_seed_and_index(workspace):
    make = lambda seed: datasets.VideoClipDataset(workspace / "clip0.mp4", 5, 32, 32, short_side=40, seed=seed)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    assert a[7].shape == (3, 5, 32, 32)
    assert torch.equal(a[7], b[7])
    assert not torch.equal(a[7], c[7])
    assert a[7].min() >= -1 and a[7].max() <= 1


def test_list_file_gives_paths_relative_to_it_and_frame_ranges(workspace, tmp_path):
    listing = workspace / "list.txt"
    listing.write_text("# training clips\nclip0.mp4 2 9\nclip1.mp4\n")
    sources = datasets.list_sources(listing)
    assert sources == [
        datasets.VideoSource(workspace / "clip0.mp4", 2, 9),
        datasets.VideoSource(workspace / "clip1.mp4"),
    ]
    dataset = datasets.VideoClipDataset(listing, 5, 32, 32, short_side=40)
    assert [frames for frames, _, _ in dataset.shapes] == [7, 12]


def test_a_sample_is_the_window_of_its_frame_range(workspace, tmp_path):
    from diffusers_videovae.video import read_video

    listing = tmp_path / "one.txt"
    listing.write_text(f"{workspace / 'clip0.mp4'} 3 8\n")  # exactly one 5-frame window: frames 3-7
    dataset = datasets.VideoClipDataset(listing, 5, 40, 48, short_side=40, flip=False)
    whole, _ = read_video(workspace / "clip0.mp4")
    assert torch.equal(dataset[0], whole[0, :, 3:8])


def test_the_dataset_holds_no_decoded_video(workspace):
    """What every DataLoader worker and process receives: the file list and sizes, not the frames."""
    import pickle

    dataset = datasets.VideoClipDataset([workspace / "clip0.mp4", workspace / "clip1.mp4"], 5, 32, 32, short_side=40)
    assert len(pickle.dumps(dataset)) < 4096  # one 12x40x48 clip alone is 69,120 bytes of uint8


def test_missing_video_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4 does not exist"):
        datasets.list_sources(tmp_path / "nowhere.mp4")


def test_clips_longer_than_the_video_are_refused(workspace):
    with pytest.raises(ValueError, match="smaller than the requested clips of 17 frames"):
        datasets.VideoClipDataset(workspace / "clip0.mp4", 17, 32, 32, short_side=40)


def test_a_previous_run_is_continued_only_with_resume_and_replaced_only_with_overwrite(workspace, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.csv").write_text("the previous run's log")
    with pytest.raises(FileExistsError, match=r"holds a previous training run \(log\.csv\); pass --resume latest"):
        training.train(args_for(workspace, tmp_path / "run", "--max-steps", "1"))
    assert (tmp_path / "run" / "log.csv").read_text() == "the previous run's log"
    training.train(args_for(workspace, tmp_path / "run", "--max-steps", "1", "--overwrite"))
    assert {row["step"] for row in read_log(tmp_path / "run")} == {"1"}  # the old log is gone


def _saved_weights(checkpoint: Path) -> torch.Tensor:
    return load_file(next(checkpoint.glob("model*.safetensors")))["weight"]


def test_a_checkpoint_of_the_same_step_is_replaced_whole_and_never_lost(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from diffusers_videovae import paths

    accelerator = Accelerator(cpu=True)
    layer = accelerator.prepare(torch.nn.Linear(2, 2))
    with torch.no_grad():
        layer.weight.fill_(1.0)
    first = training.save_checkpoint(accelerator, tmp_path, step=3, keep=2)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    # Killed after the new folder is in place, before the old one (renamed aside) is removed: the new one is complete
    # and is what a resume finds; the old one is only a hidden leftover that the next write of that step removes.
    removed = []
    monkeypatch.setattr(
        paths, "_remove", lambda path: removed.append(path) or (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        training.save_checkpoint(accelerator, tmp_path, step=3, keep=2)
    assert training.list_checkpoints(tmp_path) == [first]
    assert torch.equal(_saved_weights(first), torch.full((2, 2), 2.0))
    assert len(removed) == 1 and removed[0].name.startswith(f".{first.name}.old-") and removed[0].is_dir()
    assert torch.equal(_saved_weights(removed[0]), torch.full((2, 2), 1.0))
    monkeypatch.undo()
    monkeypatch.setattr(paths, "process_is_alive", lambda pid: False)  # as after a real kill
    with torch.no_grad():
        layer.weight.fill_(3.0)
    assert training.save_checkpoint(accelerator, tmp_path, step=3, keep=2) == first
    assert torch.equal(_saved_weights(first), torch.full((2, 2), 3.0))
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]
