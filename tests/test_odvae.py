"""OD-VAE (`AutoencoderKLODVAE`, Open-Sora-Plan v1.2.0 CausalVideoVAE): parity, conversion, tiling, errors.

The tiny fixture in ../shared/reference/odvae was produced by the original Open-Sora-Plan v1.2.0 code; the model
under test is built by running the conversion script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, ReferenceCases, assert_close, reference_dir
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file

from diffusers_videovae.checkpoints import (
    CheckpointError,
    convert_original,
    convert_to_folder,
    run_conversion_script,
)
from diffusers_videovae.checkpoints._common import OriginalCheckpoint, build_model
from diffusers_videovae.checkpoints.odvae import VARIANTS, convert, looks_like, translate_config
from diffusers_videovae.models import _tiling, od_vae
from diffusers_videovae.models._tiling import halo_spans
from diffusers_videovae.models.od_vae import AutoencoderKLODVAE

ENCODE_CASES = ["image", "video", "awkward"]
SCRIPT = REPO_ROOT / "conversion" / "convert_odvae.py"


@pytest.fixture(scope="module")
def cases() -> ReferenceCases:
    return ReferenceCases("odvae")


@pytest.fixture(scope="module")
def tiny_files() -> tuple:
    ref = reference_dir("odvae")
    return ref / "tiny_original.ckpt", ref / "tiny_config.json"


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, tiny_files):
    checkpoint, config = tiny_files
    output = tmp_path_factory.mktemp("odvae") / "tiny-diffusers"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint",
            str(checkpoint),
            "--original-config",
            str(config),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def model(converted_dir) -> AutoencoderKLODVAE:
    return AutoencoderKLODVAE.from_pretrained(converted_dir).eval()


def _atol(cases: ReferenceCases, name: str) -> float:
    return next(case for case in cases.meta["cases"] if case["case"] == name)["suggested_atol"]


def _tiny(**overrides) -> AutoencoderKLODVAE:
    config = dict(block_out_channels=(32, 64, 32, 32), layers_per_block=1)
    config.update(overrides)
    torch.manual_seed(0)
    return AutoencoderKLODVAE(**config).eval()


def _tiling_arguments(original: dict) -> dict:
    """The original's tiling attributes (sizes, latent sizes, overlap factor) -> our `enable_tiling` arguments."""
    size, size_t = original["tile_sample_min_size"], original["tile_sample_min_size_t"]
    stride = int(size * (1 - original["tile_overlap_factor"]))
    # Our latent tile sizes are derived; the original's must be the consistent ones for the mapping to hold.
    assert original["tile_latent_min_size"] == size // 8
    assert original["tile_latent_min_size_t"] == (size_t - 1) // 4 + 1
    assert int(original["tile_latent_min_size"] * original["tile_overlap_factor"]) == (size - stride) // 8
    return dict(
        tile_sample_min_height=size,
        tile_sample_min_width=size,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
        tile_sample_min_num_frames=size_t,
        tile_sample_stride_num_frames=size_t - 1,
    )


# --- parity with the original's numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODE_CASES)
def test_encode_matches_original(device_model, device_cases, name):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        posterior = model.encode(cases[f"{name}.input"]).latent_dist
    assert_close(posterior.mean, cases[f"{name}.mean"], _atol(cases, name), f"{name}.mean")
    assert_close(posterior.logvar, cases[f"{name}.logvar"], _atol(cases, name), f"{name}.logvar")


@pytest.mark.parametrize("name", ENCODE_CASES)
def test_decode_of_mean_matches_original(device_model, device_cases, name):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        decoded = model.decode(cases[f"{name}.mean"]).sample
    assert_close(decoded, cases[f"{name}.decode_of_mean"], _atol(cases, name), f"{name}.decode_of_mean")


def test_decode_latent_matches_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        decoded = model.decode(cases["decode_latent.z"]).sample
    assert_close(decoded, cases["decode_latent.decode"], _atol(cases, "decode_latent"), "decode_latent.decode")


def test_posterior_std_and_sample_match_original(cases):
    posterior = DiagonalGaussianDistribution(cases["video.moments"])
    atol = _atol(cases, "sample")
    assert_close(posterior.std, cases["sample.std"], atol, "sample.std")
    assert_close(posterior.mean + posterior.std * cases["sample.eps"], cases["sample.z"], atol, "sample.z")


def test_tiled_encode_and_decode_match_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    case = next(case for case in cases.meta["cases"] if case["case"] == "tiled")
    atol = case["suggested_atol"]
    model.enable_tiling(**_tiling_arguments(case["tiling"]))
    try:
        with torch.no_grad():
            posterior = model.encode(cases["tiled.input"]).latent_dist
            decoded = model.decode(cases["tiled.mean"]).sample
    finally:
        model.disable_tiling()
    assert_close(posterior.mean, cases["tiled.mean"], atol, "tiled.mean")
    assert_close(posterior.logvar, cases["tiled.logvar"], atol, "tiled.logvar")
    assert_close(decoded, cases["tiled.decode_of_mean"], atol, "tiled.decode_of_mean")


def test_single_file_load_gives_the_same_model(model, tiny_files):
    checkpoint, config = tiny_files
    direct = AutoencoderKLODVAE.from_single_file(checkpoint, original_config=config)
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(direct.config) == public(model.config)
    converted = model.state_dict()
    for key, value in direct.state_dict().items():
        assert torch.equal(value, converted[key]), key


def test_converted_folder_has_model_card_and_config(converted_dir):
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLODVAE"
    assert config["scaling_factor"] == 0.18215
    assert (config["temporal_compression_ratio"], config["spatial_compression_ratio"]) == (4, 8)
    assert "OD-VAE" in (converted_dir / "README.md").read_text()


# --- released layouts: key coverage ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["v1.2.0", "v1.1.0"])
def test_released_keys_convert_with_nothing_missing_or_left_over(variant):
    shapes = json.loads((reference_dir("odvae") / f"keys_{variant}.json").read_text())
    original = OriginalCheckpoint(state_dict={key: torch.empty(shape, device="meta") for key, shape in shapes.items()})
    converted = convert(original, variant=variant)
    assert converted.dropped == {}
    with torch.device("meta"):
        built = AutoencoderKLODVAE(**converted.config)
    expected = {key: list(value.shape) for key, value in built.state_dict().items()}
    assert expected == {key: list(value.shape) for key, value in converted.state_dict.items()}
    assert sum(torch.Size(shape).numel() for shape in expected.values()) == sum(
        torch.Size(shape).numel() for shape in shapes.values()
    )


def test_default_config_is_the_v120_release():
    released = translate_config(VARIANTS["v1.2.0"])
    with torch.device("meta"):
        config = AutoencoderKLODVAE().config
    assert released == {
        key: list(value) if isinstance(value, tuple) else value for key, value in config.items() if key in released
    }


def test_v110_layout_runs_and_round_trips_shapes():
    model = _tiny(
        **translate_config(
            {**VARIANTS["v1.1.0"], "hidden_size": 32, "hidden_size_mult": [1, 2, 1, 1], "num_res_blocks": 1}
        )
    )
    with torch.no_grad():
        latent = model.encode(torch.rand(1, 3, 9, 16, 24) * 2 - 1).latent_dist.mode()
        decoded = model.decode(latent).sample
    assert latent.shape == (1, 4, 3, 2, 3)
    assert decoded.shape == (1, 3, 9, 16, 24)


def test_loss_keys_are_dropped_with_a_reason(tiny_files, tmp_path):
    checkpoint, config = tiny_files
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    path = tmp_path / "with_loss.ckpt"
    torch.save(
        {"state_dict": {**state, "loss.discriminator.main.0.weight": torch.zeros(2), "loss.logvar": torch.zeros(())}},
        path,
    )
    converted = convert_original("odvae", path, original_config=config)
    assert set(converted.dropped) == {"loss.discriminator.main.0.weight", "loss.logvar"}
    assert all("loss" in reason for reason in converted.dropped.values())


def test_ema_weights_are_chosen_by_default_and_flag_picks_the_others(tiny_files, tmp_path):
    checkpoint, config = tiny_files
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    ema = {f"module.{key}": value + 1 for key, value in state.items()}
    path = tmp_path / "train.ckpt"
    torch.save(
        {"state_dict": {"gen_model": state, "dics_model": {"w": torch.zeros(1)}}, "ema_state_dict": ema, "epoch": 3},
        path,
    )
    default = convert_original("odvae", path, original_config=config)
    non_ema = convert_original("odvae", path, original_config=config, weights="non-ema")
    key = "decoder.conv_out.conv.bias"
    assert torch.equal(default.state_dict[key], state[key] + 1)
    assert torch.equal(non_ema.state_dict[key], state[key])
    assert "ema_state_dict" in non_ema.dropped and "state_dict.dics_model" in non_ema.dropped


def test_conversion_script_accepts_the_release_folder_and_weights_flag(tiny_files, tmp_path):
    checkpoint, config = tiny_files
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(config.read_text())
    (folder / "checkpoint.ckpt").write_bytes(checkpoint.read_bytes())
    output = tmp_path / "out"
    # What the script runs, in this process (the `converted_dir` fixture runs the script itself).
    argv = ["--checkpoint", str(folder), "--weights", "non-ema", "--dtype", "bfloat16", "--output", str(output)]
    assert run_conversion_script("odvae", argv) == 0
    stored = load_file(str(output / "diffusion_pytorch_model.safetensors"))
    assert {tensor.dtype for tensor in stored.values()} == {torch.bfloat16}


# --- wrong or damaged checkpoints ------------------------------------------------------------------------------


def test_unknown_key_is_refused_and_nothing_is_written(tiny_files, tmp_path):
    checkpoint, config = tiny_files
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    path = tmp_path / "extra.ckpt"
    torch.save({"state_dict": {**state, "discriminator.weight": torch.zeros(1)}}, path)
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match="discriminator.weight"):
        convert_to_folder("odvae", path, output, original_config=config, verbose=False)
    assert not output.exists()


def test_random_state_dict_is_rejected(tmp_path):
    path = tmp_path / "random.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.randn(3, 3), "layer.bias": torch.randn(3)}}, path)
    with pytest.raises(CheckpointError):
        convert_to_folder("odvae", path, tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_another_models_checkpoint_is_rejected_and_nothing_is_written(tmp_path):
    other = reference_dir("ivvae") / "tiny_original.pth"
    with pytest.raises(CheckpointError):
        convert_to_folder("odvae", other, tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_other_layout_is_rejected_with_missing_and_mismatched_keys(tiny_files, tmp_path):
    # The v1.1.0 release layout read as v1.2.0: time_downsample keys are unknown to that model.
    shapes = json.loads((reference_dir("odvae") / "keys_v1.1.0.json").read_text())
    original = OriginalCheckpoint(state_dict={key: torch.zeros(shape, device="meta") for key, shape in shapes.items()})
    converted = convert(original, variant="v1.2.0")
    with pytest.raises(CheckpointError, match="does not fit"):
        build_model(AutoencoderKLODVAE, converted)


def test_tiny_checkpoint_does_not_pass_as_a_released_variant(tiny_files, tmp_path):
    checkpoint, _ = tiny_files
    with pytest.raises(CheckpointError, match="shape mismatch"):
        AutoencoderKLODVAE.from_single_file(checkpoint, variant="v1.2.0")


def test_truncated_file_is_rejected_and_nothing_is_written(tiny_files, tmp_path):
    checkpoint, config = tiny_files
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError):
        convert_to_folder("odvae", path, tmp_path / "out", original_config=config, verbose=False)
    assert not (tmp_path / "out").exists()


def test_config_with_buggy_attention_or_missing_fields_is_refused(tiny_files):
    _, config = tiny_files
    original = json.loads(config.read_text())
    with pytest.raises(CheckpointError, match="AttnBlock3DFix"):
        translate_config({**original, "encoder_attention": "AttnBlock3D"})
    del original["encoder_spatial_downsample"]
    with pytest.raises(CheckpointError, match="encoder_spatial_downsample"):
        translate_config(original)


def test_model_type_is_detected_from_the_keys(tiny_files):
    checkpoint, _ = tiny_files
    assert looks_like(torch.load(checkpoint, weights_only=True))
    assert not looks_like({"encoder.conv_in.weight": torch.zeros(1)})


# --- behaviour of the model -----------------------------------------------------------------------------------


def test_round_trip_shapes_and_posterior():
    model = _tiny()
    video = torch.rand(2, 3, 9, 16, 24) * 2 - 1
    with torch.no_grad():
        posterior = model.encode(video).latent_dist
        decoded = model.decode(posterior.mode()).sample
        forward = model(video).sample
    assert posterior.mean.shape == (2, 4, 3, 2, 3)
    assert decoded.shape == video.shape
    assert torch.equal(forward, decoded)


def test_sampling_uses_the_generator():
    model = _tiny()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        first = model(video, sample_posterior=True, generator=torch.Generator().manual_seed(1)).sample
        second = model(video, sample_posterior=True, generator=torch.Generator().manual_seed(1)).sample
        other = model(video, sample_posterior=True, generator=torch.Generator().manual_seed(2)).sample
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_logvar_is_clamped_like_diffusers():
    model = _tiny()
    with torch.no_grad():
        model.quant_conv.conv.bias[4:] = 100.0
        posterior = model.encode(torch.zeros(1, 3, 1, 16, 16)).latent_dist
    assert float(posterior.logvar.max()) == 20.0


def _pointwise_tiny() -> AutoencoderKLODVAE:
    """A tiny model whose convolutions only use their centre tap (current frame, centre pixel)."""
    model = _tiny()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                weight = module.weight
                tap = (slice(None), slice(None), *((weight.shape[2] - 1,) if weight.ndim == 5 else ()))
                tap += (weight.shape[-2] // 2, weight.shape[-1] // 2)
                centre = torch.zeros_like(weight)
                centre[tap] = torch.randn(centre[tap].shape, generator=generator) / weight.shape[1] ** 0.5
                weight.copy_(centre)
    return model


def test_original_mode_places_tiles_and_chunks_like_untiled_on_a_pointwise_model():
    """The default (original-compatible) tiling mode puts every tile, blend and crop in the right place
    (encode: 2x3 tiles x 2 chunks; decode: 2 chunks).

    With general weights this mode's output differs from the untiled output by design (GroupNorm statistics are
    per tile and per chunk, as in the original; `exact=True` is the mode that matches untiled, tested below). Here
    the model is pointwise in space-time and the input is a texture with a 16-pixel period, constant in time, that
    every tile and chunk covers in whole periods: the tiled result then equals the untiled one up to rounding, and
    any misplaced tile, blend or crop shows as an O(1) error. Spatially tiled *decoding* is left out: the trilinear
    2x2x2 upsamplers clamp at tile borders, an O(1) local difference the original has too (its tiled decode is
    checked against the fixture above).
    """
    model = _pointwise_tiny()
    texture = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video = texture.repeat(1, 1, 17, 4, 5)
    with torch.no_grad():
        latent = model.encode(video).latent_dist.mode()
        decoded = model.decode(latent).sample
        model.enable_tiling(48, 48, 9, 32, 32, 8)
        tiled_latent = model.encode(video).latent_dist.mode()
        model.enable_tiling(256, 256, 9, 256, 256, 8)
        chunked = model.decode(latent).sample
    assert_close(tiled_latent, latent, 1e-2, "tiled encode")
    assert_close(chunked, decoded, 1e-2, "chunked decode")


def test_original_mode_misplaced_tiles_would_be_detected():
    model = _pointwise_tiny()
    texture = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video = texture.repeat(1, 1, 9, 4, 5)
    with torch.no_grad():
        latent = model.encode(video).latent_dist.mode()
        model.enable_tiling(48, 48, 9, 24, 24, 8)  # 24-pixel stride: tiles no longer cover whole periods
        tiled_latent = model.encode(video).latent_dist.mode()
    assert float((tiled_latent - latent).abs().max()) > 1e-2


def test_slicing_gives_the_same_result():
    model = _tiny()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = model(video).sample
        model.enable_slicing()
        sliced = model(video).sample
    assert_close(sliced, whole, 1e-4, "sliced")


@pytest.mark.parametrize(
    "shape, error, message",
    [
        ((1, 3, 6, 16, 16), ValueError, "1 \\+ 4k"),
        ((1, 3, 5, 12, 16), ValueError, "multiples of 8"),
        ((1, 4, 5, 16, 16), ValueError, "3 channels"),
        ((3, 5, 16, 16), ValueError, "5 dims"),
    ],
)
def test_bad_video_is_refused_with_a_clear_message(shape, error, message):
    with pytest.raises(error, match=message):
        _tiny().encode(torch.zeros(shape))


def test_bad_latents_and_tiling_arguments_are_refused():
    model = _tiny()
    with pytest.raises(ValueError, match="raw, unscaled"):
        model.decode(torch.zeros(1, 8, 2, 2, 2))
    with pytest.raises(TypeError):
        model.encode(torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        model.enable_tiling(tile_sample_min_num_frames=10)
    with pytest.raises(ValueError, match="multiples of 8"):
        model.enable_tiling(tile_sample_min_height=100)


# --- exact tiling (`enable_tiling(exact=True)`) ---------------------------------------------------------------


def _exact_tiny(**overrides) -> AutoencoderKLODVAE:
    """A tiny random model with every layer type of the release (2D and 3D resnets, both downsamplers, both
    upsamplers, attention); 4 GroupNorm groups of 2 to 4 channels."""
    return _tiny(**{"block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4, **overrides})


def _ramp_video(frames: int, height: int, width: int) -> torch.Tensor:
    """Noise whose amplitude grows left to right, on a top-to-bottom ramp: every tile has other statistics."""
    noise = torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return (noise * torch.linspace(0.1, 1.0, width) + torch.linspace(-0.5, 0.5, height)[:, None]).clamp(-1, 1)


def _ramp_latents(frames: int, height: int, width: int) -> torch.Tensor:
    noise = torch.randn(1, 4, frames, height, width, generator=torch.Generator().manual_seed(2))
    return noise * torch.linspace(0.5, 2.0, width) + torch.linspace(-1.0, 1.0, height)[:, None]


@pytest.fixture
def stage_calls(monkeypatch) -> list[dict]:
    """Records each call of the layer-order tiler: the tiled stage's input shape and core, and for each of its
    steps the step input's shape, its core and its halo."""
    calls = []

    def spy_step(stage, x, modules, core, halo, **options):
        calls[-1]["steps"].append({"shape": tuple(x.shape), "core": core, "halo": halo})
        return tiled_with_shared_group_norm(stage, x, modules, core, halo, **options)

    def spy(steps, x, core, **options):
        calls.append({"shape": tuple(x.shape), "core": core, "steps": []})
        return tiled_in_layer_order(steps, x, core, **options)

    tiled_in_layer_order = od_vae.tiled_in_layer_order
    tiled_with_shared_group_norm = _tiling.tiled_with_shared_group_norm
    monkeypatch.setattr(od_vae, "tiled_in_layer_order", spy)
    monkeypatch.setattr(_tiling, "tiled_with_shared_group_norm", spy_step)
    return calls


def _tile_grid(call: dict) -> list[list]:
    """The tiles of the first step of one recorded call along height and width."""
    first = call["steps"][0]
    return [halo_spans(size, core, first["halo"]) for size, core in zip(first["shape"][-2:], first["core"])]


def _cut_inside(spans: list, size: int) -> int:
    """How many tiles along one axis stop inside the frame on at least one side (read less than the whole axis)."""
    return sum(span.start > 0 or span.end < size for span in spans)


def test_exact_tiled_encode_matches_untiled_within_1e_2_on_several_tiles(stage_calls):
    model = _exact_tiny()
    video = _ramp_video(5, 64, 96)
    with torch.no_grad():
        untiled = model.encode(video).latent_dist
        model.enable_tiling(16, 16, exact=True)
        tiled = model.encode(video).latent_dist
    # One tiled stage over the pixels: 16-pixel cores, 4 x 6 tiles, each cut inside the frame; each step reads
    # only its own few pixels around its core (the stage's receptive field is 24 pixels).
    assert len(stage_calls) == 1 and stage_calls[0]["shape"] == (1, 3, 5, 64, 96)
    rows, columns = _tile_grid(stage_calls[0])
    assert (len(rows), len(columns), model.tile_halo["encode"]) == (4, 6, 24)
    assert (_cut_inside(rows, 64), _cut_inside(columns, 96)) == (4, 6)
    assert max(step["halo"] for step in stage_calls[0]["steps"]) <= 2
    assert_close(tiled.mean, untiled.mean, 1e-2, "exact tiled encode: mean")
    assert_close(tiled.logvar, untiled.logvar, 1e-2, "exact tiled encode: logvar")
    assert_close(tiled.mean, untiled.mean, 1e-4, "exact tiled encode: mean, float rounding only")


def test_exact_tiled_decode_matches_untiled_within_1e_2_on_several_tiles(stage_calls):
    # One latent frame keeps this test fast (CPU 3D convolutions are slow); the encode test covers several frames.
    model = _exact_tiny()
    latents = _ramp_latents(1, 12, 16)
    with torch.no_grad():
        untiled = model.decode(latents).sample
        model.enable_tiling(32, 32, exact=True)
        tiled = model.decode(latents).sample
    # One tiled stage at latent resolution: 4-latent-pixel cores, 3 x 4 tiles, each cut inside the frame (a step
    # reads one or two pixels around its core; the stage's receptive field is 7 latent pixels).
    assert len(stage_calls) == 1 and stage_calls[0]["shape"][-2:] == (12, 16)
    rows, columns = _tile_grid(stage_calls[0])
    assert (len(rows), len(columns), model.tile_halo["decode"]) == (3, 4, 7)
    assert (_cut_inside(rows, 12), _cut_inside(columns, 16)) == (3, 4)
    assert max(step["halo"] for step in stage_calls[0]["steps"]) <= 2
    assert_close(tiled, untiled, 1e-2, "exact tiled decode")
    assert_close(tiled, untiled, 1e-4, "exact tiled decode, float rounding only")


def test_exact_tiled_decode_of_several_frames_with_rectangular_tiles(stage_calls):
    # Two latent frames take the temporal upsamplers' time branch and clip-wide GroupNorm statistics over 5 frames.
    model = _exact_tiny()
    latents = _ramp_latents(2, 6, 10)
    with torch.no_grad():
        untiled = model.decode(latents).sample
        model.enable_tiling(24, 32, exact=True)
        tiled = model.decode(latents).sample
    assert tiled.shape == (1, 3, 5, 48, 80)
    rows, columns = _tile_grid(stage_calls[0])
    assert (len(rows), len(columns)) == (2, 3)
    assert_close(tiled, untiled, 1e-4, "exact tiled decode, 5 frames, 24 x 32 px tiles")


def test_exact_tiles_need_the_whole_halo(monkeypatch):
    model = _exact_tiny()
    video, latents = _ramp_video(5, 64, 96), _ramp_latents(1, 12, 16)
    with torch.no_grad():
        untiled_mean = model.encode(video).latent_dist.mean
        untiled_sample = model.decode(latents).sample
        # Resnets read one pixel instead of two around their tiles' cores: the cores read wrong borders.
        part_reach = od_vae._part_reach
        monkeypatch.setattr(od_vae, "_part_reach", lambda layer: part_reach(layer) - isinstance(layer, od_vae.RESNETS))
        model.enable_tiling(16, 16, exact=True)
        short_mean = model.encode(video).latent_dist.mean
        model.enable_tiling(32, 32, exact=True)
        short_sample = model.decode(latents).sample
    assert float((short_mean - untiled_mean).abs().max()) > 1e-2
    assert float((short_sample - untiled_sample).abs().max()) > 1e-2


def test_exact_tile_halo_of_the_released_configs():
    with torch.device("meta"):
        released = AutoencoderKLODVAE()
        v110 = AutoencoderKLODVAE(**translate_config(VARIANTS["v1.1.0"]))
    # Encode, pixels (scale = input pixels per feature pixel; 2 resnets per level, two 3x3 convolutions each;
    # a downsampler reads one pixel past its own two): conv_in 1 + level 0 (4 + 1) x 1 + level 1 (4 + 1) x 2
    # + level 2 (4 + 1) x 4 = 36 -> 40 (a multiple of 8). v1.1.0 adds its time downsamplers (3x3) of level 1 (x 4)
    # and level 2 (x 8, tiled with the rest of its level): 48.
    assert released.encoder.high_res_reach() == 36
    assert v110.encoder.high_res_reach() == 48
    # Decode, output pixels (3 resnets per level): level-3 upsampler (trilinear 2 + conv 1) x 4 + level 2 (6) x 4
    # + its upsampler (2 + 1) x 2 + level 1 (6) x 2 + its nearest upsampler (1 + 1) x 1 + level 0 (6) x 1
    # + conv_out 1 = 12 + 24 + 6 + 12 + 2 + 6 + 1 = 63 -> ceil(63 / 8) = 8 latent pixels. v1.1.0: (nearest 1 + conv
    # 1) x 4 + time upsampler 1 x 4 + 24 + (1 + 1) x 2 + 1 x 2 + 12 + 2 + 6 + 1 = 63 as well.
    assert released.decoder.high_res_reach() == 63
    assert v110.decoder.high_res_reach() == 63
    assert released.tile_halo == {"encode": 40, "decode": 8}
    assert v110.tile_halo == {"encode": 48, "decode": 8}


def test_exact_tiling_matches_untiled_on_the_v110_layout(stage_calls):
    model = _exact_tiny(
        **translate_config(
            {**VARIANTS["v1.1.0"], "hidden_size": 8, "hidden_size_mult": [1, 2, 2, 2], "num_res_blocks": 1}
        )
    )
    video, latents = _ramp_video(5, 64, 96), _ramp_latents(1, 12, 16)
    with torch.no_grad():
        untiled_mean = model.encode(video).latent_dist.mean
        untiled_sample = model.decode(latents).sample
        model.enable_tiling(16, 16, exact=True)
        tiled_mean = model.encode(video).latent_dist.mean
        model.enable_tiling(32, 32, exact=True)
        tiled_sample = model.decode(latents).sample
    assert [model.tile_halo["encode"], model.tile_halo["decode"]] == [40, 7]
    assert [len(call["steps"]) > 1 for call in stage_calls] == [True, True]
    assert_close(tiled_mean, untiled_mean, 1e-4, "v1.1.0 exact tiled encode")
    assert_close(tiled_sample, untiled_sample, 1e-4, "v1.1.0 exact tiled decode")


def test_exact_tiling_arguments_are_checked_and_strides_follow_the_tile_size():
    model = _exact_tiny()
    with pytest.raises(ValueError, match="True or False"):
        model.enable_tiling(exact="yes")
    with pytest.raises(ValueError, match="tile_sample_stride_height=8 cannot be used"):
        model.enable_tiling(16, 16, None, 8, 8, exact=True)
    model.enable_tiling(16, 16, exact=True)
    assert (model.tile_sample_stride_height, model.tile_sample_stride_width, model.tile_exact) == (16, 16, True)
    model.enable_tiling()
    assert not model.tile_exact
    model.disable_tiling()
    assert not model.use_tiling


def test_exact_tiling_does_not_cut_time(stage_calls):
    model = _exact_tiny()
    video = _ramp_video(13, 16, 16)
    with torch.no_grad():
        untiled = model.encode(video).latent_dist.mean
        model.enable_tiling(16, 16, 5, 16, 16, 4)
        model.enable_tiling(exact=True)  # the 5-frame chunks set above apply in the default mode only
        tiled = model.encode(video).latent_dist.mean
    assert stage_calls == []
    assert torch.equal(tiled, untiled)
