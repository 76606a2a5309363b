"""IV-VAE (`AutoencoderKLIVVAE`): parity with the original code, checkpoint conversion, long videos, input checks."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, ReferenceCases, assert_close, reference_dir

from diffusers_videovae.checkpoints import (
    CheckpointError,
    convert_original,
    load_original_model,
    run_conversion_script,
)
from diffusers_videovae.checkpoints import ivvae as ivvae_checkpoints
from diffusers_videovae.checkpoints._common import build_model
from diffusers_videovae.models import iv_vae
from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

PARITY_CASES = ["image", "video", "awkward", "decode_only"]
TINY_CONFIG = dict(latent_channels=8, base_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=2)


def run_converter(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / "conversion" / "convert_ivvae.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def run_converter_here(*args: str) -> subprocess.CompletedProcess:
    """What `conversion/convert_ivvae.py` runs (`run_conversion_script`), in this process: the script itself runs in
    `converted_dir`, and a fresh interpreter costs seconds of imports."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_conversion_script("ivvae", list(args))
    return subprocess.CompletedProcess(["convert_ivvae.py", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cases() -> ReferenceCases:
    return ReferenceCases("ivvae")


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    """CONTRACT.md step 1: the conversion script, exactly as a user runs it."""
    reference = reference_dir("ivvae")
    output = tmp_path_factory.mktemp("ivvae") / "tiny"
    result = run_converter(
        "--checkpoint",
        str(reference / "tiny_original.pth"),
        "--original-config",
        str(reference / "tiny_config.json"),
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def model(converted_dir) -> AutoencoderKLIVVAE:
    return AutoencoderKLIVVAE.from_pretrained(converted_dir).eval()


@pytest.fixture(scope="module")
def tiny_random() -> AutoencoderKLIVVAE:
    torch.manual_seed(0)
    return AutoencoderKLIVVAE(**TINY_CONFIG).eval()


def video(frames: int, height: int = 32, width: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=generator) * 2 - 1


def expected_tensors(cases: ReferenceCases, name: str) -> dict[str, float]:
    """Non-debug expected tensors of a case -> atol."""
    case = next(case for case in cases.meta["cases"] if case["name"] == name)
    return {key: spec["atol"] for key, spec in case["expected"].items() if not spec.get("debug")}


# --- parity with the original code -------------------------------------------------------------------------------


def test_parity_cases_cover_every_required_reference_case(cases):
    required = [case["name"] for case in cases.meta["cases"] if not case.get("optional")]
    assert sorted(required) == sorted(PARITY_CASES)


@pytest.mark.parametrize("name", PARITY_CASES)
@torch.no_grad()
def test_matches_original_outputs(device_model, device_cases, name):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    scaling, shift = model.config.scaling_factor, model.config.shift_factor
    expected = expected_tensors(cases, name)
    case = next(case for case in cases.meta["cases"] if case["name"] == name)
    actual: dict[str, torch.Tensor] = {}
    if case["kind"] == "decode":
        actual["recon"] = model.decode(cases[f"{name}.z"] / scaling + shift).sample
    else:
        x = cases[f"{name}.x"]
        # The original drops frames beyond 1 + 4k silently; we require a valid length (CONTRACT.md).
        x = x[:, :, : 1 + 4 * ((x.shape[2] - 1) // 4)]
        posterior = model.encode(x).latent_dist
        actual["posterior_mean"] = posterior.mean
        actual["posterior_logvar"] = posterior.logvar
        actual["latent_det"] = (posterior.mean - shift) * scaling
        actual["recon"] = model.decode(posterior.mean).sample
        if "sample_seed" in case:
            generator = torch.Generator().manual_seed(case["sample_seed"])
            actual["latent_sampled"] = (posterior.sample(generator=generator) - shift) * scaling
            actual["sample_eps"] = torch.randn(
                posterior.mean.shape, generator=torch.Generator().manual_seed(case["sample_seed"])
            )
    assert set(actual) == {key.split(".", 1)[1] for key in expected}
    for key, atol in expected.items():
        assert_close(actual[key.split(".", 1)[1]], cases[key], atol, key)


@torch.no_grad()
def test_from_single_file_gives_the_converted_model(model, cases):
    reference = reference_dir("ivvae")
    direct = AutoencoderKLIVVAE.from_single_file(
        reference / "tiny_original.pth", original_config=reference / "tiny_config.json"
    )
    for key, tensor in model.state_dict().items():
        assert torch.equal(direct.state_dict()[key], tensor), key
    x = cases["video.x"]
    assert torch.equal(direct(x).sample, model(x).sample)


def test_invalid_sizes_raise_where_the_original_floors(model, cases):
    # Optional case `spatial_not_mult8`: the original floors 20x28 to 16x24; we raise and name the valid sizes.
    with pytest.raises(ValueError, match=r"multiples of 8.*H in \(16, 24\), W in \(24, 32\)"):
        model.encode(cases["spatial_not_mult8.x"])


# --- checkpoints: every released layout, wrong files -------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(ivvae_checkpoints.VARIANTS))
def test_every_released_key_is_converted(variant):
    shapes = json.loads((reference_dir("ivvae") / f"keys_{variant}.json").read_text())
    # Uninitialised tensors: the right keys and shapes without touching ~1 GB of memory.
    original = {key: torch.empty(shape) for key, shape in shapes.items()}
    converted = ivvae_checkpoints.convert(ivvae_checkpoints.OriginalCheckpoint(state_dict=original))
    assert converted.variant == variant
    assert converted.dropped == {}
    model = build_model(AutoencoderKLIVVAE, converted)  # strict: no key missing or left over, every shape equal
    assert model.config.scaling_factor == ivvae_checkpoints.LATENT_NORMALIZATION[variant]["scaling_factor"]
    assert model.config.shift_factor == ivvae_checkpoints.LATENT_NORMALIZATION[variant]["shift_factor"]
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in original.values())


def test_default_config_is_the_z16_dim64_release():
    defaults = {name: p.default for name, p in inspect.signature(AutoencoderKLIVVAE.__init__).parameters.items()}
    release = ivvae_checkpoints.translate_config(ivvae_checkpoints.VARIANTS["ivvae_z16_dim64"])
    for key, value in release.items():
        assert (list(defaults[key]) if isinstance(value, list) else defaults[key]) == value, key


def test_config_exposes_compression_and_latent_channels(tiny_random):
    assert tiny_random.config.latent_channels == 8
    assert tiny_random.config.temporal_compression_ratio == 4
    assert tiny_random.config.spatial_compression_ratio == 8


def test_contradictory_compression_ratio_is_rejected():
    with pytest.raises(ValueError, match="temporal_compression_ratio"):
        AutoencoderKLIVVAE(**TINY_CONFIG, temporal_compression_ratio=8)


def test_checkpoint_of_another_variant_is_rejected_and_nothing_written(tmp_path):
    output = tmp_path / "out"
    result = run_converter_here(
        "--checkpoint",
        str(reference_dir("ivvae") / "tiny_original.pth"),
        "--variant",
        "ivvae_z16_dim64",
        "--output",
        str(output),
    )
    assert result.returncode != 0
    assert "does not match variant 'ivvae_z16_dim64'" in result.stderr
    assert not output.exists()


def test_checkpoint_of_another_model_is_rejected_and_nothing_written(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)}, other)
    output = tmp_path / "out"
    result = run_converter_here("--checkpoint", str(other), "--output", str(output))
    assert result.returncode != 0
    assert "is not an IV-VAE checkpoint" in result.stderr
    assert not output.exists()


def test_truncated_checkpoint_is_rejected_and_nothing_written(tmp_path):
    data = (reference_dir("ivvae") / "tiny_original.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    output = tmp_path / "out"
    with pytest.raises(CheckpointError):
        convert_original("ivvae", truncated)
    result = run_converter_here("--checkpoint", str(truncated), "--output", str(output))
    assert result.returncode != 0
    assert "truncated or corrupt" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()


def test_unknown_key_is_listed():
    original = torch.load(reference_dir("ivvae") / "tiny_original.pth", weights_only=True)
    original["encoder.extra.weight"] = torch.zeros(1)
    config = json.loads((reference_dir("ivvae") / "tiny_config.json").read_text())
    with pytest.raises(CheckpointError, match="encoder.extra.weight"):
        ivvae_checkpoints.convert(ivvae_checkpoints.OriginalCheckpoint(state_dict=original, original_config=config))


def test_custom_size_without_config_asks_for_it():
    with pytest.raises(CheckpointError, match="--original-config"):
        load_original_model(AutoencoderKLIVVAE, reference_dir("ivvae") / "tiny_original.pth")


# --- save / load -------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_save_and_load_round_trip(tiny_random, tmp_path):
    tiny_random.save_pretrained(tmp_path)
    loaded = AutoencoderKLIVVAE.from_pretrained(tmp_path).eval()
    public = lambda config: json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))  # noqa: E731
    assert public(loaded.config) == public(tiny_random.config)
    x = video(5, 16, 16)
    assert torch.equal(loaded(x).sample, tiny_random(x).sample)


# --- long videos, tiling, slicing --------------------------------------------------------------------------------


@torch.no_grad()
def test_temporal_chunks_equal_a_single_pass(tiny_random):
    x = video(13, 16, 24)
    tiny_random.tile_sample_min_num_frames = 12  # every group in one call
    single = tiny_random.encode(x).latent_dist.mean
    single_recon = tiny_random.decode(single).sample
    try:
        for frames in (4, 8):
            tiny_random.tile_sample_min_num_frames = frames
            chunked = tiny_random.encode(x).latent_dist.mean
            assert_close(chunked, single, 1e-5, f"latent, {frames}-frame chunks")
            assert_close(tiny_random.decode(single).sample, single_recon, 1e-5, f"video, {frames}-frame chunks")
    finally:
        tiny_random.tile_sample_min_num_frames = 4


TILED_VIDEO = dict(frames=9, height=96, width=128)  # 3 causal chunks (1 + 4 + 4 frames), latent 12 x 16
TILE_CORE = 32  # px: 3 x 4 tiles, each reading its core and a halo of 40 / 56 px, cut off inside the frame


def tiny_model_with_tile_counter(part: str) -> tuple[AutoencoderKLIVVAE, list[tuple[int, ...]]]:
    """A fresh tiny random model whose `<part>.forward_high` records the shape of every tile it is given."""
    torch.manual_seed(0)
    model = AutoencoderKLIVVAE(**TINY_CONFIG).eval()
    shapes = []
    module = getattr(model, part)
    high = module.forward_high

    def counted(x, cache=None, **options):
        shapes.append(tuple(x.shape))
        return high(x, cache, **options)

    module.forward_high = counted
    return model, shapes


def assert_tiles_were_used(shapes: list[tuple[int, ...]], height: int, width: int, chunks: int) -> None:
    tiles = len(shapes) // chunks
    assert len(shapes) == chunks * tiles and tiles == 3 * 4, len(shapes)
    assert all(shape[-2] * shape[-1] < height * width for shape in shapes), shapes


@torch.no_grad()
def test_spatially_tiled_encode_equals_untiled():
    model, shapes = tiny_model_with_tile_counter("encoder")
    x = video(**TILED_VIDEO)
    untiled = model.encode(x).latent_dist
    shapes.clear()
    model.enable_tiling(tile_sample_min_height=TILE_CORE, tile_sample_min_width=TILE_CORE)
    tiled = model.encode(x).latent_dist
    assert_tiles_were_used(shapes, TILED_VIDEO["height"], TILED_VIDEO["width"], chunks=3)
    for name, actual, expected in [("mean", tiled.mean, untiled.mean), ("logvar", tiled.logvar, untiled.logvar)]:
        assert_close(actual, expected, 1e-2, f"tiled encode {name}")  # the required tolerance
        # Halos cover the receptive field of the tiled stages, so tiles are exact up to float rounding.
        assert_close(actual, expected, 1e-4, f"tiled encode {name}, exact")


@torch.no_grad()
def test_spatially_tiled_decode_equals_untiled():
    model, shapes = tiny_model_with_tile_counter("decoder")
    latent_frames = 1 + (TILED_VIDEO["frames"] - 1) // 4
    z = torch.randn(1, 8, latent_frames, TILED_VIDEO["height"] // 8, TILED_VIDEO["width"] // 8)
    model.tile_sample_min_num_frames = 4
    untiled = model.decode(z).sample
    shapes.clear()
    model.enable_tiling(tile_sample_min_height=TILE_CORE, tile_sample_min_width=TILE_CORE)
    tiled = model.decode(z).sample
    assert_tiles_were_used(shapes, z.shape[-2], z.shape[-1], chunks=latent_frames)
    assert_close(tiled, untiled, 1e-2, "tiled decode")  # the required tolerance
    # Halos cover the receptive field of the tiled stages, so tiles are exact up to float rounding.
    assert_close(tiled, untiled, 1e-4, "tiled decode, exact")


def test_tile_halo_is_the_receptive_field_of_the_tiled_stages(tiny_random):
    # Encoder up to the last downsample, in input px: conv_in 1 + level 0 (4 convs) 4 + downsample 1
    # + level 1 8 + downsample 2 + level 2 16 + downsample 4 = 36 px -> 5 latent px.
    # Decoder from the first upsample, in output px: 4 + 3 blocks * 2 convs * 4 + 2 + 6 * 2 + 1 + 6 * 1
    # + conv_out 1 = 50 px -> 7 latent px.
    assert tiny_random.tile_halo == {"encode": 5, "decode": 7}


def test_tile_stride_is_always_the_core():
    model = AutoencoderKLIVVAE(**TINY_CONFIG)
    model.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=96)
    assert (model.tile_sample_stride_height, model.tile_sample_stride_width) == (64, 96)
    with pytest.raises(ValueError, match="tile_sample_stride_height=32 cannot be used"):
        model.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=96, tile_sample_stride_height=32)


def test_tiles_are_always_exact():
    model = AutoencoderKLIVVAE(**TINY_CONFIG)
    model.enable_tiling(exact=True)
    assert model.use_tiling and model.tile_exact
    model.enable_tiling(exact=False)
    assert model.tile_exact


@torch.no_grad()
def test_slicing_equals_batched(tiny_random):
    x = video(5, batch=2)
    batched = tiny_random(x).sample
    tiny_random.enable_slicing()
    try:
        assert_close(tiny_random(x).sample, batched, 1e-5, "sliced")  # batch size changes float rounding
    finally:
        tiny_random.disable_slicing()


# --- input checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (torch.zeros(1, 3, 11, 32, 32), ValueError, r"T = 1 \+ 4k.*9 or 13"),
        (torch.zeros(1, 3, 5, 36, 32), ValueError, "multiples of 8"),
        (torch.zeros(1, 3, 32, 32), ValueError, "5 dims"),
        (torch.zeros(1, 4, 5, 32, 32), ValueError, "3 channels"),
        (torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), TypeError, "floating point"),
        (torch.full((1, 3, 5, 32, 32), float("nan")), ValueError, "NaN"),
    ],
    ids=["frames", "height", "rank", "channels", "dtype", "nan"],
)
def test_bad_videos_are_rejected(tiny_random, x, error, message):
    with pytest.raises(error, match=message):
        tiny_random.encode(x)


def test_bad_latents_are_rejected(tiny_random):
    with pytest.raises(ValueError, match=r"\(B, 8, t, h, w\)"):
        tiny_random.decode(torch.zeros(1, 4, 2, 4, 4))


def test_invalid_tiling_settings_are_rejected():
    model = AutoencoderKLIVVAE(**TINY_CONFIG)
    with pytest.raises(ValueError, match="multiple of 8"):
        model.enable_tiling(tile_sample_min_height=30)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.enable_tiling(tile_sample_min_num_frames=6)


def test_blocks_overwrite_intermediates_only_when_the_autoencoder_records_no_graph(monkeypatch):
    model = AutoencoderKLIVVAE(**TINY_CONFIG).eval()
    x = video(frames=5, height=16, width=16)
    seen = []

    def recorded(tensor, in_place):
        seen.append(in_place)
        return silu(tensor, in_place)

    silu = iv_vae._silu
    monkeypatch.setattr(iv_vae, "_silu", recorded)
    for grad in (False, True):
        seen.clear()
        with torch.set_grad_enabled(grad):
            model.decode(model.encode(x).latent_dist.mode())
        assert seen and set(seen) == {not grad}
