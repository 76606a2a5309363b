"""Drop-in check: stock diffusers loads our VAE as a pipeline component, and it computes what a direct load does.

The pipeline folder holds our tiny IV-VAE (converted from the reference fixture) as `vae`, a tiny stock
`UNet2DModel` denoiser and a DDIM scheduler; `model_index.json` declares the VAE as
`["diffusers_videovae", "AutoencoderKLIVVAE"]`. The pipeline class lives in `tests/_dropin_pipeline.py` and is
loaded the way diffusers loads community pipelines (`custom_pipeline=`). What is checked is what our package could
get wrong: that diffusers' component loader resolves our library and class (the `ModelMixin` name it looks up in
`diffusers_videovae`), that the component it builds has our weights, dtype and numbers, and that a pipeline saved
by diffusers names our VAE again.
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


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def reconstruct(vae: AutoencoderKLIVVAE, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = vae.encode(video.to(vae.dtype)).latent_dist.mode()
        return z, vae.decode(z).sample


def test_diffusers_resolves_our_library_and_class(pipeline_dir):
    pipeline = load_pipeline(pipeline_dir)
    assert type(pipeline.vae) is AutoencoderKLIVVAE
    assert isinstance(pipeline.denoiser, UNet2DModel)
    assert not pipeline.vae.training
    assert pipeline.vae.config._class_name == "AutoencoderKLIVVAE"


def test_the_component_has_the_weights_and_numbers_of_a_direct_load(pipeline_dir, clip):
    component = load_pipeline(pipeline_dir).vae
    direct = AutoencoderKLIVVAE.from_pretrained(pipeline_dir / "vae").eval()
    saved = load_file(str(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    state = component.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[key], value) for key, value in saved.items())
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(component.config) == public(direct.config)
    for ours, reference in zip(reconstruct(component, clip), reconstruct(direct, clip)):
        assert torch.equal(ours, reference)


def test_torch_dtype_given_to_the_pipeline_reaches_our_vae(pipeline_dir, clip):
    pipeline = DiffusionPipeline.from_pretrained(
        pipeline_dir, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True, torch_dtype=torch.bfloat16
    )
    direct = AutoencoderKLIVVAE.from_pretrained(pipeline_dir / "vae", torch_dtype=torch.bfloat16).eval()
    assert pipeline.vae.dtype == torch.bfloat16
    for ours, reference in zip(reconstruct(pipeline.vae, clip), reconstruct(direct, clip)):
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, reference)


def test_pipeline_frames_are_our_decoding_of_its_latents(pipeline_dir):
    output = generate(load_pipeline(pipeline_dir))
    direct = AutoencoderKLIVVAE.from_pretrained(pipeline_dir / "vae").eval()
    raw = output.latents / direct.config.scaling_factor + direct.config.shift_factor  # the documented formula
    with torch.no_grad():
        expected = (direct.decode(raw).sample / 2 + 0.5).clamp(0, 1)
    assert output.frames.shape == (1, 3, 5, 32, 32)
    torch.testing.assert_close(output.frames, expected, rtol=0, atol=1e-6)


def test_a_pipeline_saved_by_diffusers_names_our_vae_and_keeps_its_numbers(pipeline_dir, tmp_path, clip):
    pipeline = load_pipeline(pipeline_dir)
    pipeline.save_pretrained(tmp_path / "saved")
    model_index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    # diffusers writes the defining module of a class from a library it does not know (`_fetch_class_library_tuple`).
    assert model_index["vae"] == ["diffusers_videovae.models.iv_vae", "AutoencoderKLIVVAE"]
    reloaded = AutoencoderKLIVVAE.from_pretrained(tmp_path / "saved" / "vae").eval()
    for ours, reference in zip(reconstruct(reloaded, clip), reconstruct(pipeline.vae, clip)):
        assert torch.equal(ours, reference)
    assert type(load_pipeline(tmp_path / "saved").vae) is AutoencoderKLIVVAE
