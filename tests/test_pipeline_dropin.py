"""Drop-in check: a diffusion pipeline whose model_index.json names our VAE loads and runs with stock diffusers.

The pipeline folder holds our tiny IV-VAE (converted from the reference fixture) as `vae`, a tiny stock
`UNet2DModel` denoiser and a DDIM scheduler; `model_index.json` declares the VAE as
`["diffusers_videovae", "AutoencoderKLIVVAE"]`. The pipeline class lives in `tests/_dropin_pipeline.py` and is
loaded the way diffusers loads community pipelines (`custom_pipeline=`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import reference_dir
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import dynamic_modules_utils
from safetensors.torch import load_file

from diffusers_videovae import AutoencoderKLIVVAE, checkpoints

PIPELINE_FILE = Path(__file__).resolve().parent / "_dropin_pipeline.py"


@pytest.fixture(autouse=True)
def _isolated_module_cache(tmp_path, monkeypatch):
    # diffusers copies custom pipeline code into a module cache; keep it out of the user's ~/.cache.
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    reference = reference_dir("ivvae")
    folder = tmp_path_factory.mktemp("pipeline") / "tiny-video-pipeline"
    checkpoints.convert_to_folder(
        "ivvae",
        reference / "tiny_original.pth",
        folder / "vae",
        original_config=reference / "tiny_config.json",
        verbose=False,
    )
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=4,
        in_channels=8,
        out_channels=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).save_pretrained(folder / "denoiser")
    DDIMScheduler(num_train_timesteps=10).save_pretrained(folder / "scheduler")
    model_index = {
        "_class_name": "TinyVideoPipeline",
        "_diffusers_version": "0.35.0",
        "vae": ["diffusers_videovae", "AutoencoderKLIVVAE"],
        "denoiser": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder


def load_pipeline(folder: Path) -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(folder, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True)


def generate(pipeline: DiffusionPipeline, seed: int = 0):
    return pipeline(
        num_frames=5, height=32, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(seed)
    )


def test_diffusion_pipeline_loads_our_vae_as_a_component(pipeline_dir):
    pipeline = load_pipeline(pipeline_dir)
    assert type(pipeline.vae) is AutoencoderKLIVVAE
    assert isinstance(pipeline.denoiser, UNet2DModel)
    saved = load_file(str(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    state = pipeline.vae.state_dict()
    assert all(torch.equal(state[key], value) for key, value in saved.items())
    assert not pipeline.vae.training


def test_pipeline_runs_end_to_end_on_cpu(pipeline_dir):
    output = generate(load_pipeline(pipeline_dir))
    assert output.latents.shape == (1, 8, 2, 4, 4)
    assert output.frames.shape == (1, 3, 5, 32, 32)
    assert torch.isfinite(output.frames).all()
    assert output.frames.min() >= 0 and output.frames.max() <= 1


def test_pipeline_frames_are_the_vae_decoding_of_its_latents(pipeline_dir):
    pipeline = load_pipeline(pipeline_dir)
    output = generate(pipeline)
    vae = pipeline.vae
    raw = output.latents / vae.config.scaling_factor + vae.config.shift_factor
    with torch.no_grad():
        expected = (vae.decode(raw).sample / 2 + 0.5).clamp(0, 1)
    assert torch.equal(output.frames, expected)


def test_pipeline_is_reproducible_with_a_generator(pipeline_dir):
    pipeline = load_pipeline(pipeline_dir)
    assert torch.equal(generate(pipeline, seed=3).frames, generate(pipeline, seed=3).frames)


def test_pipeline_dtype_moves_reach_our_vae(pipeline_dir):
    pipeline = load_pipeline(pipeline_dir).to(torch.float64)
    assert pipeline.vae.dtype == torch.float64
    assert pipeline.denoiser.dtype == torch.float64


def test_a_pipeline_saved_by_diffusers_loads_again(pipeline_dir, tmp_path):
    pipeline = load_pipeline(pipeline_dir)
    pipeline.save_pretrained(tmp_path / "saved")
    reloaded = load_pipeline(tmp_path / "saved")
    assert type(reloaded.vae) is AutoencoderKLIVVAE
    assert torch.equal(generate(reloaded).frames, generate(pipeline).frames)
