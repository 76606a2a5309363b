"""One input check for every model (issue 18): the tensors and counts a public method takes are checked the same
way on all five models (`_tiling.check_video` / `check_latents` / `check_condition` / `check_positive_int`), with
one clear error, and other floating dtypes are cast by the package rule. Tiny random configs, CPU."""

from __future__ import annotations

import pytest
import torch
from _tiny_configs import TINY_CONFIGS

from diffusers_videovae import (
    AutoencoderCascadeV,
    AutoencoderKLIVVAE,
    AutoencoderKLODVAE,
    AutoencoderKLOpenSora,
    AutoencoderKLReducio,
)
from diffusers_videovae.models._tiling import check_condition, check_latents, check_positive_int

# name -> (class, tiny config, input video shape (B, 3, T, H, W))
TINY = {
    "ivvae": (AutoencoderKLIVVAE, TINY_CONFIGS["ivvae"], (2, 3, 5, 16, 16)),
    "odvae": (AutoencoderKLODVAE, TINY_CONFIGS["odvae"], (2, 3, 5, 16, 16)),
    "opensora": (AutoencoderKLOpenSora, TINY_CONFIGS["opensora"], (2, 3, 5, 16, 16)),
    "reducio": (AutoencoderKLReducio, TINY_CONFIGS["reducio"], (2, 3, 16, 16, 16)),
    "cascadev": (
        AutoencoderCascadeV,
        dict(
            with_previewer=False,
            transformer_hidden_size=96,
            transformer_num_layers=1,
            transformer_num_attention_heads=4,
            transformer_sample_size=16,
            transformer_num_frames=4,
            svd_block_out_channels=(32, 32, 32, 32),
            svd_layers_per_block=1,
        ),
        (2, 3, 2, 32, 32),
    ),
}
NAMES = list(TINY)
_MODELS: dict = {}


def _model(name: str):
    if name not in _MODELS:
        cls, config, _ = TINY[name]
        torch.manual_seed(0)
        model = cls(**config).eval()
        if name == "cascadev":
            model.set_progress_bar_config(disable=True)
        _MODELS[name] = model
    return _MODELS[name]


def _video(name: str) -> torch.Tensor:
    return torch.rand(*TINY[name][2], generator=torch.Generator().manual_seed(0)) * 2 - 1


def _decode_inputs(name: str) -> tuple[torch.Tensor, dict]:
    """What `decode` takes for the tiny clip of `name`: latents and the other arguments (conditions, options)."""
    model, video = _model(name), _video(name)
    with torch.no_grad():
        z = model.encode(video).latent_dist.mode()
    options = model.decode_kwargs(num_frames=video.shape[2], num_inference_steps=1, generator=None)
    return model.latents_for_decode(z), {**model.decode_conditions(video), **options}


def _decode(name: str, z: torch.Tensor, options: dict, seed: int = 0) -> torch.Tensor:
    if name == "cascadev":
        options = {**options, "generator": torch.Generator().manual_seed(seed)}
    with torch.no_grad():
        return _model(name).decode(z, **options).sample


def _first(options: dict, batch: slice) -> dict:
    return {key: value[batch] if isinstance(value, torch.Tensor) else value for key, value in options.items()}


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_reported_as_an_empty_batch_by_encode(name):
    video = _video(name)
    with pytest.raises(ValueError, match=r"`x` is an empty batch \(B = 0"):
        _model(name).encode(video[:0])


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_reported_as_an_empty_batch_by_decode(name):
    z, options = _decode_inputs(name)
    with pytest.raises(ValueError, match=r"`z` is an empty batch \(B = 0"):
        _decode(name, z[:0], _first(options, slice(0, 0)))


@pytest.mark.parametrize("name", NAMES)
def test_latents_with_nan_are_refused(name):
    z, options = _decode_inputs(name)
    z = z.clone()
    z[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`z` contains NaN or infinite values"):
        _decode(name, z, options)


@pytest.mark.parametrize("name", NAMES)
def test_latents_with_the_wrong_channel_count_are_refused(name):
    z, options = _decode_inputs(name)
    channels = z.shape[1]
    with pytest.raises(ValueError, match=rf"`z` must have shape \(B, {channels}, "):
        _decode(name, torch.cat([z, z[:, :1]], dim=1), options)


@pytest.mark.parametrize("name", NAMES)
def test_integer_latents_are_refused(name):
    z, options = _decode_inputs(name)
    with pytest.raises(TypeError, match="`z` must be a floating point tensor"):
        _decode(name, z.round().long(), options)


@pytest.mark.parametrize("name", NAMES)
def test_latents_of_another_float_dtype_are_cast_by_the_package_rule(name):
    z, options = _decode_inputs(name)
    expected = _decode(name, z, options)
    cast = _decode(name, z.double(), options)  # float32 values survive float64 exactly
    assert cast.dtype == expected.dtype == torch.float32
    assert torch.equal(cast, expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_without_data_passes_the_value_checks(name):
    z, _ = _decode_inputs(name)
    meta = torch.empty(z.shape, device="meta")
    check_latents(meta, latent_channels=z.shape[1], name="z")  # no values to read: shape checks only
    with pytest.raises(ValueError, match="must have shape"):
        check_latents(torch.empty(1, 1, 1, 1, device="meta"), latent_channels=z.shape[1])


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4", None])
def test_counts_must_be_positive_integers(value):
    with pytest.raises(ValueError, match=rf"`chunk_size` must be a positive integer, got {value!r}"):
        check_positive_int(value, "chunk_size")


def test_positive_integers_of_any_integer_type_are_accepted():
    import numpy as np

    assert check_positive_int(3, "n") == 3
    assert check_positive_int(np.int64(3), "n") == 3
    assert type(check_positive_int(np.int64(3), "n")) is int


@pytest.mark.parametrize("num_frames", [0, -5, 4.5, True])
def test_open_sora_num_frames_must_be_a_positive_integer(num_frames):
    z, _ = _decode_inputs("opensora")
    with pytest.raises(ValueError, match="`num_frames` must be a positive integer"):
        _decode("opensora", z, {"num_frames": num_frames})


def test_a_condition_is_checked_against_the_latents():
    z = torch.zeros(2, 4, 3, 2, 5)
    good = torch.zeros(2, 8, 16, 40)
    check_condition(good, z, name="c", channels=8, size=(16, 40))
    with pytest.raises(ValueError, match="`c` has batch 1, but the latents have batch 2"):
        check_condition(good[:1], z, name="c", channels=8, size=(16, 40))
    with pytest.raises(ValueError, match="`c` has 4 channels in dim 1, expected 8"):
        check_condition(good[:, :4], z, name="c", channels=8, size=(16, 40))
    with pytest.raises(ValueError, match=r"expected \(2, 8, 16, 40\)"):
        check_condition(good[..., :32], z, name="c", channels=8, size=(16, 40))
    with pytest.raises(ValueError, match=r"`c` must have shape \(2, 8, 3, 16, 40\)"):
        check_condition(good, z, name="c", channels=8, size=(16, 40), frames=3)
    with pytest.raises(TypeError, match="floating point"):
        check_condition(good.int(), z, name="c", channels=8, size=(16, 40))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_condition([1.0], z, name="c", channels=8, size=(16, 40))
    with pytest.raises(ValueError, match="NaN"):
        check_condition(torch.full_like(good, float("inf")), z, name="c", channels=8, size=(16, 40))
    check_condition(torch.empty(2, 8, 16, 40, device="meta"), z, name="c", channels=8, size=(16, 40))


def test_open_sora_latent_frame_count_takes_a_positive_integer():
    model = _model("opensora")
    assert model.num_latent_frames(17) == 5
    with pytest.raises(ValueError, match="`num_frames` must be a positive integer, got 0"):
        model.num_latent_frames(0)
