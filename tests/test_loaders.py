"""`load_model`: one entry point for converted folders and original release files or folders."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import reference_dir

from diffusers_videovae import AutoencoderKLODVAE, load_model
from diffusers_videovae.checkpoints import CheckpointError
from diffusers_videovae.loaders import DEMO_MODEL_DIR


def test_load_model_reads_an_original_odvae_release_folder(tmp_path):
    # The release layout: <folder>/config.json + <folder>/checkpoint.ckpt (Open-Sora-Plan v1.2.0 `vae/`).
    source = reference_dir("odvae")
    shutil.copy(source / "tiny_original.ckpt", tmp_path / "checkpoint.ckpt")
    shutil.copy(source / "tiny_config.json", tmp_path / "config.json")
    model = load_model(tmp_path)
    reference = AutoencoderKLODVAE.from_single_file(
        source / "tiny_original.ckpt", original_config=source / "tiny_config.json"
    )
    assert isinstance(model, AutoencoderKLODVAE)
    assert not model.training
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_load_model_round_trips_a_converted_folder(tmp_path):
    source = reference_dir("odvae")
    model = AutoencoderKLODVAE.from_single_file(
        source / "tiny_original.ckpt", original_config=source / "tiny_config.json"
    )
    model.save_pretrained(tmp_path / "converted")
    loaded = load_model(tmp_path / "converted", torch_dtype=torch.bfloat16)
    assert isinstance(loaded, AutoencoderKLODVAE)
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_load_model_rejects_a_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(CheckpointError, match="neither a diffusers-videovae folder"):
        load_model(tmp_path)


def _no_hub(*args, **kwargs):
    raise AssertionError("the Hub must not be asked")


@pytest.mark.parametrize("name", ["demo-typo", "ivvae demo", "./no/such/folder", "a/b/c"])
def test_a_name_that_is_no_path_nor_hub_id_fails_at_once_naming_the_built_in_models(monkeypatch, name):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_hub)
    with pytest.raises(FileNotFoundError, match=r"nor a Hub repo id \(owner/name\)\. Built-in models: ivvae-demo"):
        load_model(name)


def test_a_built_in_name_loads_the_packaged_model():
    model = load_model("ivvae-demo")
    reference = load_model(DEMO_MODEL_DIR)
    assert type(model).__name__ == "AutoencoderKLIVVAE"
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_a_plausible_hub_id_still_goes_to_the_hub(monkeypatch):
    import huggingface_hub

    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(OSError, match="offline"):
        load_model("someone/ivvae-z16")
    assert asked == [("someone/ivvae-z16", "config.json")]
