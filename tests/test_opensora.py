"""Open-Sora 1.2 VAE (`AutoencoderKLOpenSora`): parity with the original's own numbers, conversion, tiling, errors.

The tiny fixture in ../shared/reference/opensora was produced by the original Open-Sora v1.2.0 code; the model
under test is built by running the conversion script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from _tiny_configs import TINY_CONFIGS
from accelerate import init_empty_weights
from conftest import REPO_ROOT, TEST_DEVICE, ReferenceCases, assert_close, reference_dir
from safetensors.torch import load_file, save_file

from diffusers_videovae.checkpoints import CheckpointError, conversion_main, convert_to_folder
from diffusers_videovae.checkpoints._common import OriginalCheckpoint, compare_with_model
from diffusers_videovae.checkpoints.opensora import convert as convert_opensora
from diffusers_videovae.checkpoints.opensora import read_original
from diffusers_videovae.memory import LiveTensorBytes
from diffusers_videovae.models import opensora_vae
from diffusers_videovae.models.opensora_vae import AutoencoderKLOpenSora

CASE_NAMES = ["image", "video17", "awkward22", "nochunk22", "chunks25"]


@pytest.fixture(scope="module")
def cases() -> ReferenceCases:
    return ReferenceCases("opensora")


@pytest.fixture(scope="module")
def tiny_args() -> list[str]:
    ref = reference_dir("opensora")
    return [
        "--checkpoint",
        str(ref / "tiny_original" / "model.safetensors"),
        "--original-config",
        str(ref / "tiny_original" / "config.json"),
        "--spatial-config",
        str(ref / "tiny_spatial_vae" / "vae" / "config.json"),
    ]


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, tiny_args):
    output = tmp_path_factory.mktemp("opensora") / "tiny-diffusers"
    script = REPO_ROOT / "conversion" / "convert_opensora.py"
    result = subprocess.run(
        [sys.executable, str(script), *tiny_args, "--output", str(output)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def model(converted_dir) -> AutoencoderKLOpenSora:
    return AutoencoderKLOpenSora.from_pretrained(converted_dir).eval()


def _case(cases: ReferenceCases, name: str) -> dict:
    return next(case for case in cases.meta["cases"] if case["name"] == name)


def _check(cases: ReferenceCases, name: str, key: str, actual: torch.Tensor) -> None:
    tolerance = _case(cases, name)["expected"][f"{name}.{key}"]["suggested_max_abs_tol"]
    assert_close(actual, cases[f"{name}.{key}"], tolerance, f"{name}.{key}")


@pytest.fixture()
def case_model(device_model, cases, request):
    """The converted model (on VIDEOVAE_TEST_DEVICE) with the case's `micro_frame_size` (`nochunk22` runs unchunked,
    as in the original)."""
    model = device_model
    name = request.param
    previous = model.config.micro_frame_size
    model.register_to_config(micro_frame_size=_case(cases, name)["micro_frame_size"])
    yield name, model
    model.register_to_config(micro_frame_size=previous)


def _input(cases, name):
    return cases[_case(cases, name)["input"]["tensor"]].to(TEST_DEVICE)


def _normalise(model, z):
    mean = torch.tensor(model.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(model.config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
    return (z - mean) / std


# -- parity with the original --------------------------------------------------------------------------------


@pytest.mark.parametrize("case_model", CASE_NAMES, indirect=True)
def test_spatial_stage_matches_original(case_model, cases):
    name, model = case_model
    x = _input(cases, name)
    batch, _, frames, height, width = x.shape
    with torch.no_grad():
        dist = model.spatial_vae.encode(x.transpose(1, 2).reshape(batch * frames, 3, height, width)).latent_dist
        x_z = model._spatial_encode(x, sample_spatial=False, generator=None)
        rec = model.spatial_vae.decode(x_z.transpose(1, 2).flatten(0, 1) / model.config.spatial_scaling_factor).sample

    def layout(t):
        return t.reshape(batch, frames, *t.shape[1:]).transpose(1, 2)

    _check(cases, name, "spatial_mean", layout(dist.mean))
    _check(cases, name, "spatial_logvar", layout(dist.logvar))
    _check(cases, name, "x_z_mode", x_z)
    _check(cases, name, "x_spatial_rec", layout(rec))


@pytest.mark.parametrize("case_model", CASE_NAMES, indirect=True)
def test_encode_posterior_matches_original(case_model, cases):
    name, model = case_model
    with torch.no_grad():
        posterior = model.encode(_input(cases, name)).latent_dist
    _check(cases, name, "temporal_mean", posterior.mean)
    _check(cases, name, "temporal_logvar", posterior.logvar)
    _check(cases, name, "z_mode", _normalise(model, posterior.mode()))


@pytest.mark.parametrize("case_model", CASE_NAMES, indirect=True)
def test_decode_matches_original(case_model, cases):
    name, model = case_model
    z = cases[f"{name}.temporal_mean"]
    num_frames = _case(cases, name)["num_frames"]
    with torch.no_grad():
        x_rec = model.decode(z, num_frames=num_frames).sample
        # The temporal stage alone, chunk by chunk, as handed to the spatial decoder.
        per_chunk = len(_case(cases, name)["temporal_decode_num_frames"])
        sizes = model._chunk_frames(num_frames)
        step = z.shape[2] if per_chunk == 1 else 5
        x_z = torch.cat(
            [model.temporal_vae.decode(z[:, :, i * step : (i + 1) * step], n) for i, n in enumerate(sizes)], dim=2
        )
    assert sizes == _case(cases, name)["temporal_decode_num_frames"]
    _check(cases, name, "x_z_rec", x_z)
    _check(cases, name, "x_rec", x_rec)


@pytest.mark.parametrize("case_model", CASE_NAMES, indirect=True)
def test_two_stage_sampling_reproduces_original_noise(case_model, cases):
    name, model = case_model
    seed = _case(cases, name)["sample_seed"]
    x = _input(cases, name)
    with torch.no_grad():
        x_z = model._spatial_encode(x, sample_spatial=True, generator=torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        posterior = model.encode(x, sample_spatial=True, generator=generator).latent_dist
        z = posterior.sample(generator=generator)
    _check(cases, name, "x_z_sample", x_z)
    _check(cases, name, "z_sample", _normalise(model, z))


@pytest.mark.parametrize("case_model", CASE_NAMES, indirect=True)
def test_latent_frame_count_matches_original(case_model, cases):
    name, model = case_model
    case = _case(cases, name)
    assert model.num_latent_frames(case["num_frames"]) == case["latent_size_get_latent_size"][0]
    low, high = model.num_frames_range(case["latent_size_get_latent_size"][0])
    assert low <= case["num_frames"] <= high


def test_from_single_file_equals_conversion_script(model, tiny_args):
    ref = reference_dir("opensora")
    direct = AutoencoderKLOpenSora.from_single_file(
        ref / "tiny_original" / "model.safetensors",
        original_config=ref / "tiny_original" / "config.json",
        spatial_config=ref / "tiny_spatial_vae" / "vae" / "config.json",
    )

    def public(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}

    assert public(direct.config) == public(model.config)
    expected = model.state_dict()
    for key, value in direct.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_release_folder_is_read_with_its_config():
    ref = reference_dir("opensora")
    original = read_original(ref / "tiny_original")
    assert original.original_config["vae_temporal"]["filters"] == 8
    assert original.info["spatial_config"]["block_out_channels"] == [16, 24, 32, 32]


# -- decode without num_frames --------------------------------------------------------------------------------


def test_decode_without_num_frames_recovers_17k_plus_4j_plus_1(model, cases):
    # awkward22: 22 = 17 + 4 + 1 frames, the smallest length giving 7 latents, so the default is exact.
    with torch.no_grad():
        x_rec = model.decode(cases["awkward22.temporal_mean"]).sample
    _check(cases, "awkward22", "x_rec", x_rec)


def test_decode_without_num_frames_assumes_the_shortest_clip(model, cases):
    # chunks25: 25 frames also give 7 latents; without num_frames the decoder returns 22 (documented).
    with torch.no_grad():
        assert model.decode(cases["chunks25.temporal_mean"]).sample.shape[2] == 22


def test_decode_rejects_inconsistent_num_frames(model, cases):
    with pytest.raises(ValueError, match="22 to 25 frames"):
        model.decode(cases["chunks25.temporal_mean"], num_frames=30)


def test_image_round_trip_keeps_one_frame(model, cases):
    with torch.no_grad():
        assert model(cases["image.x"]).sample.shape == cases["image.x"].shape


# -- checkpoint keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("listing", ["keys_v1.2.json", "keys_tiny.json"])
def test_every_release_key_converts_to_a_model_key_of_the_right_shape(listing):
    ref = reference_dir("opensora")
    shapes = json.loads((ref / listing).read_text())
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    state_dict["shift"] = torch.tensor([-0.10, 0.34, 0.27, 0.98]).view(1, 4, 1, 1, 1)
    state_dict["scale"] = torch.tensor([3.85, 2.32, 2.33, 3.06]).view(1, 4, 1, 1, 1)
    if listing == "keys_tiny.json":
        config = json.loads((ref / "tiny_original" / "config.json").read_text())
        spatial = json.loads((ref / "tiny_spatial_vae" / "vae" / "config.json").read_text())
        checkpoint = OriginalCheckpoint(state_dict, config, info={"spatial_config": spatial})
    else:
        checkpoint = OriginalCheckpoint(state_dict)
    converted = convert_opensora(checkpoint)
    assert set(converted.dropped) == {"scale", "shift"}
    assert len(converted.state_dict) == len(shapes) - 2
    with init_empty_weights():
        reference = AutoencoderKLOpenSora(**converted.config)
    compare_with_model(converted.state_dict, {k: tuple(v.shape) for k, v in reference.state_dict().items()})
    if listing == "keys_v1.2.json":
        assert converted.variant == "v1.2"
        assert converted.config["latents_mean"] == pytest.approx([-0.10, 0.34, 0.27, 0.98])


def test_save_and_reload_round_trip_is_exact(model, tmp_path, cases):
    model.save_pretrained(tmp_path)
    reloaded = AutoencoderKLOpenSora.from_pretrained(tmp_path).eval()
    x = cases["chunks25.x"]
    with torch.no_grad():
        assert torch.equal(model.encode(x).latent_dist.mean, reloaded.encode(x).latent_dist.mean)


def test_conversion_writes_model_card_and_dtype(tmp_path, tiny_args):
    # In-process this time: the module fixture already runs the script as a subprocess.
    output = tmp_path / "fp16"
    conversion_main("opensora", [*tiny_args, "--output", str(output), "--dtype", "float16"])
    weights = load_file(str(output / "diffusion_pytorch_model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    card = (output / "README.md").read_text()
    assert "library_name: diffusers" in card and "This conversion" in card


def test_wrong_model_checkpoint_is_rejected_and_nothing_written(tmp_path):
    bad = tmp_path / "other.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(bad))
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match="not an Open-Sora 1.2 VAE checkpoint"):
        convert_to_folder("opensora", bad, output, verbose=False)
    assert not output.exists()


def test_truncated_checkpoint_is_rejected_and_nothing_written(tmp_path):
    data = (reference_dir("opensora") / "tiny_original" / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    output = tmp_path / "out"
    with pytest.raises(CheckpointError):
        convert_to_folder("opensora", bad, output, verbose=False)
    assert not output.exists()


def test_missing_key_is_reported(tmp_path):
    ref = reference_dir("opensora")
    state_dict = load_file(str(ref / "tiny_original" / "model.safetensors"))
    del state_dict["temporal_vae.decoder.conv_out.conv.bias"]
    bad = tmp_path / "model.safetensors"
    save_file(state_dict, str(bad))
    with pytest.raises(CheckpointError, match="decoder.conv_out.conv.bias"):
        convert_to_folder(
            "opensora",
            bad,
            tmp_path / "out",
            original_config=ref / "tiny_original" / "config.json",
            verbose=False,
        )
    assert not (tmp_path / "out").exists()


def test_bare_tiny_file_without_config_is_rejected_as_another_variant(tmp_path):
    ref = reference_dir("opensora")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        convert_to_folder("opensora", ref / "tiny_original" / "model.safetensors", tmp_path / "out", verbose=False)


# -- tiling, slicing, gradient checkpointing --------------------------------------------------------------------


def test_tile_blending_reassembles_overlapping_crops_exactly():
    """The stitcher puts every tile at its offset and cross-fades overlaps: crops of one tensor give it back."""
    from diffusers_videovae.models._tiling import stitch_blended_tiles, tile_starts

    full = torch.randn(1, 2, 3, 11, 13)
    starts_h, starts_w = tile_starts(11, 4, 3), tile_starts(13, 5, 3)
    tiles = [[full[..., h : h + 4, w : w + 5] for w in starts_w] for h in starts_h]
    assert_close(stitch_blended_tiles(tiles, starts_h, starts_w), full, 1e-6, "stitched")


def test_tiled_decode_equals_untiled_decode_of_each_tile_where_tiles_do_not_overlap(model):
    """64x96 px frames, 32 px tiles, stride 24: the corners covered by one tile only are that tile's decode."""
    z = torch.randn(1, 4, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.enable_tiling(32, 32, None, 24, 24)
        try:
            tiled = model.decode(z).sample
        finally:
            model.disable_tiling()
        top_left = model.decode(z[..., :4, :4]).sample
        bottom_right = model.decode(z[..., 4:, 8:]).sample
    assert tiled.shape == (1, 3, 5, 64, 96)
    assert_close(tiled[..., :24, :24], top_left[..., :24, :24], 1e-6, "top-left tile")
    # Latent tile starts: rows (0, 3, 4), columns (0, 3, 6, 8); the last tile alone covers rows 56.. and columns 80..
    assert_close(tiled[..., 56:, 80:], bottom_right[..., 24:, 16:], 1e-6, "bottom-right tile")


def test_tiled_encode_equals_untiled_encode_of_each_tile_where_tiles_do_not_overlap(model):
    x = torch.rand(1, 3, 5, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        model.enable_tiling(32, 32, None, 24, 24)
        try:
            tiled = model.encode(x).latent_dist.mean
        finally:
            model.disable_tiling()
        top_left = model.encode(x[..., :32, :32]).latent_dist.mean
    assert tiled.shape == (1, 4, 2, 8, 12)
    assert_close(tiled[..., :3, :3], top_left[..., :3, :3], 1e-6, "top-left tile")


def test_tiles_larger_than_the_frame_change_nothing(model, cases):
    x = cases["awkward22.x"]
    with torch.no_grad():
        expected = model.encode(x).latent_dist.mean
        model.enable_tiling(256, 256, None, 192, 192)
        try:
            tiled = model.encode(x).latent_dist.mean
        finally:
            model.disable_tiling()
    assert torch.equal(tiled, expected)


def test_temporal_tiling_is_not_configurable(model):
    with pytest.raises(ValueError, match="micro_frame_size"):
        model.enable_tiling(tile_sample_min_num_frames=8)


def test_slicing_gives_the_same_result(model, cases):
    x = cases["video17.x"]
    with torch.no_grad():
        expected = model.encode(x).latent_dist.mean
        model.enable_slicing()
        try:
            sliced = model.encode(x).latent_dist.mean
        finally:
            model.disable_slicing()
    assert_close(sliced, expected, 1e-5, "sliced encode")


# -- bad inputs ---------------------------------------------------------------------------------------------------


def test_spatial_size_not_multiple_of_8_is_rejected(model):
    # The original silently floors 20x36 to 16x32; we say what is wrong instead.
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 3, 20, 36))


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.zeros(1, 3, 16, 16), ValueError),
        (torch.zeros(1, 4, 1, 16, 16), ValueError),
        (torch.zeros(1, 3, 1, 16, 16, dtype=torch.int64), TypeError),
        (torch.full((1, 3, 1, 16, 16), float("nan")), ValueError),
    ],
    ids=["4d", "channels", "integer", "nan"],
)
def test_bad_video_is_rejected(model, bad, error):
    with pytest.raises(error):
        model.encode(bad)


def test_bad_latents_are_rejected(model):
    with pytest.raises(ValueError, match=r"\(B, 4, t, h, w\)"):
        model.decode(torch.zeros(1, 8, 2, 4, 4))


def test_any_frame_count_is_accepted(model):
    with torch.no_grad():
        for frames in (2, 6, 18):
            assert model(torch.zeros(1, 3, frames, 16, 16)).sample.shape[2] == frames


def test_tiled_decode_blends_the_decode_of_each_tile_exactly(model):
    """Default tiles are decoded one frame micro-batch at a time and blended into the output as they come: the
    same numbers as decoding every latent crop whole and blending the clips, also with two clips in the batch
    (5 frames each: the second micro-batch holds frames of both clips)."""
    from diffusers_videovae.models._tiling import stitch_blended_tiles, tile_starts

    z = torch.randn(2, 4, 2, 12, 16, generator=torch.Generator().manual_seed(0))
    starts_h, starts_w = tile_starts(12, 4, 3), tile_starts(16, 4, 3)
    with torch.no_grad():
        model.enable_tiling(32, 32)
        try:
            tiled = model.decode(z, num_frames=5).sample
        finally:
            model.disable_tiling()
        tiles = [[model.decode(z[..., h : h + 4, w : w + 4], num_frames=5).sample for w in starts_w] for h in starts_h]
    assert tiled.shape == (2, 3, 5, 96, 128)
    assert torch.equal(tiled, stitch_blended_tiles(tiles, starts_h, starts_w, scale=8))


def _traced_default_tile_decode(height: int, width: int) -> tuple[int, int]:
    """(peak bytes of the tensors a default-tile decode of 9 frames creates, bytes of its output), traced on meta:
    32-px tiles, the tiny config at the release's ratios of spatial widths (1:2:4:4), so that a tile's activations
    outweigh its 3-channel output as at full size."""
    with torch.device("meta"):
        model = AutoencoderKLOpenSora(**{**TINY_CONFIGS["opensora"], "block_out_channels": (16, 32, 64, 64)}).eval()
    model.enable_tiling(32, 32)
    z = torch.zeros(1, 4, model.num_latent_frames(9), height // 8, width // 8, device="meta")
    with torch.no_grad(), LiveTensorBytes() as live:
        out = model.decode(z, num_frames=9).sample
    return live.peak, out.numel() * out.element_size()


def test_tiled_decode_holds_the_output_once_and_one_tile():
    """A frame of 3 x 4 tiles needs its output plus what decoding one tile's frame needs (with the blending of a
    frame micro-batch): no whole-clip temporary, no decoded tile kept while the next is decoded, and overlaps of
    4 frames only, not of the clip (before: the output plus 1.73 one-tile decodes; now 1.19)."""
    one_tile, _ = _traced_default_tile_decode(32, 32)
    peak, output = _traced_default_tile_decode(64, 96)
    assert peak <= output + 1.25 * one_tile, f"{peak / 2**20:.2f} MiB: {output / 2**20:.2f} + {one_tile / 2**20:.2f}"


# -- exact tiling (shared GroupNorm statistics) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_random_model() -> AutoencoderKLOpenSora:
    """Random weights, the release's layer types (attention in both mid blocks) at tiny widths."""
    torch.manual_seed(0)
    return AutoencoderKLOpenSora(**TINY_CONFIGS["opensora"]).eval()


def _ramp_video(frames: int = 5, height: int = 96, width: int = 128) -> torch.Tensor:
    """Noise whose scale and offset change across the frame, so that every tile has other statistics."""
    noise = torch.randn(1, 3, frames, height, width, generator=torch.Generator().manual_seed(0))
    return (noise * torch.linspace(0.2, 1.5, width) + torch.linspace(-0.5, 0.5, height)[:, None]).clamp(-1, 1)


class _CallCounter:
    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


def _num_group_norms(*modules: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.GroupNorm) for module in modules for m in module.modules())


@pytest.fixture()
def exact_tiles(tiny_random_model):
    """32 px tiles: 96x128 px frames (12x16 latent px) give 3 x 4 tiles in every tiled stage."""
    tiny_random_model.enable_tiling(32, 32, exact=True)
    yield tiny_random_model
    tiny_random_model.disable_tiling()


def test_exact_tiled_encode_matches_untiled_encode(exact_tiles):
    model, x = exact_tiles, _ramp_video()
    spatial = _CallCounter(model.spatial_vae.encoder.conv_in)
    temporal = _CallCounter(model.temporal_vae.encoder.conv_in)
    with torch.no_grad():
        # Spatial posteriors sampled, as in the original: the same noise per micro-batch, tiled or not.
        tiled = model.encode(x, sample_spatial=True, generator=torch.Generator().manual_seed(1)).latent_dist
        model.disable_tiling()
        untiled = model.encode(x, sample_spatial=True, generator=torch.Generator().manual_seed(1)).latent_dist
    spatial.handle.remove()
    temporal.handle.remove()
    # The tiled stages run in layer order over 3 x 4 tiles: `conv_in`, a step without GroupNorm, once per tile
    # (the spatial VAE frame by frame, 5 frames; the temporal VAE once, its steps reading one or two latent pixels
    # around 4-pixel cores). Untiled adds one call each.
    assert spatial.calls == 5 * 12 + 5
    assert model.tile_halo["temporal_encode"] == 13
    assert temporal.calls == 12 + 1
    assert untiled.mean.abs().max() > 0.5
    assert_close(tiled.mean, untiled.mean, 1e-2, "exact tiled encode, mean")
    assert_close(tiled.mean, untiled.mean, 1e-4, "exact tiled encode, mean")
    assert_close(tiled.logvar, untiled.logvar, 1e-4, "exact tiled encode, logvar")


def test_exact_tiled_decode_matches_untiled_decode(exact_tiles):
    model = exact_tiles
    z = torch.randn(1, 4, 2, 12, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 2, 16)
    spatial = _CallCounter(model.spatial_vae.decoder.conv_out)
    temporal = _CallCounter(model.temporal_vae.decoder.conv_in)
    with torch.no_grad():
        tiled = model.decode(z, num_frames=5).sample
        model.disable_tiling()
        untiled = model.decode(z, num_frames=5).sample
    spatial.handle.remove()
    temporal.handle.remove()
    decoder = model.spatial_vae.decoder
    # conv_out comes after the last GroupNorm: it runs in the last pass only, once per tile (3 x 4 latent tiles
    # of 4 latent px) and frame (5); the temporal decoder's conv_in (no GroupNorm) once per tile.
    assert _num_group_norms(decoder.up_blocks, decoder.conv_norm_out) > 0
    assert spatial.calls == 5 * 12 + 5
    assert temporal.calls == 12 + 1
    assert untiled.abs().max() > 0.5
    assert_close(tiled, untiled, 1e-2, "exact tiled decode")
    assert_close(tiled, untiled, 1e-4, "exact tiled decode")


@torch.no_grad()
def test_exact_tiled_temporal_stages_match_untiled_on_frames_wider_than_their_halo(exact_tiles):
    # 12x40 latent frames: 3 x 10 tiles of 4 latent px, most of which stop inside the frame (13-px halo).
    model = exact_tiles
    x_z = torch.randn(1, 4, 5, 12, 40, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.2, 2, 40)
    z = torch.randn(1, 4, 2, 12, 40, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.2, 2, 40)
    encoder = _CallCounter(model.temporal_vae.encoder.conv_in)
    tiled_moments = model._temporal_encode(x_z, exact_tiles=True)
    encoder.handle.remove()
    assert _num_group_norms(model.temporal_vae.encoder) > 0
    assert encoder.calls == 30  # a step of its own, without GroupNorm: once per tile
    assert_close(tiled_moments, model._temporal_encode(x_z), 1e-4, "exact tiled temporal encode")
    tiled_frames = model._temporal_decode(z, 5, exact_tiles=True)
    assert_close(tiled_frames, model._temporal_decode(z, 5), 1e-4, "exact tiled temporal decode")


@pytest.mark.parametrize(
    "direction, layer",
    [
        ("encode", "DownEncoderBlock2D"),
        ("encode", "OpenSoraResidualBlock"),
        ("decode", "UpDecoderBlock2D"),
        ("decode", "OpenSoraResidualBlock"),
    ],
)
def test_exact_tiles_need_their_halo(exact_tiles, monkeypatch, direction, layer):
    model = exact_tiles
    x = _ramp_video()
    z = torch.randn(1, 4, 2, 12, 16, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            return model.encode(x).latent_dist.mean if direction == "encode" else model.decode(z, num_frames=5).sample

    exact = run()
    # The spatial blocks or the temporal residual blocks read two pixels less around their tiles' cores.
    reach = opensora_vae._reach
    monkeypatch.setattr(opensora_vae, "_reach", lambda m: reach(m) - 2 * (type(m).__name__ == layer))
    short = run()
    assert float((short - exact).abs().max()) > 1e-2


def test_tile_halo_of_the_release_config():
    with init_empty_weights():
        model = AutoencoderKLOpenSora()
    # encode, input px: conv_in 1 + [2 resnets x 2 convs x 1 + downsample 1] + [2 x 2 x 2 + 2] + [2 x 2 x 4 + 4]
    #   + [2 x 2 x 8] = 68, rounded up to a multiple of 8 (the encoder's downsampling) = 72.
    # decode, output px: [3 resnets x 2 convs x 8 + upsample 4] + [3 x 2 x 4 + 2] + [3 x 2 x 2 + 1] + [3 x 2 x 1]
    #   + conv_out 1 = 98, rounded up to latent px = 13.
    # temporal_encode, latent px: conv_in 1 + 16 resnets x 2 + 2 time downsamplers + 4 mid resnets x 2 = 43.
    # temporal_decode, latent px: conv_in 1 + 4 mid resnets x 2 + 16 x 2 + 2 upsamplers + conv_out 1 = 44.
    assert model.tile_halo == {"encode": 72, "decode": 13, "temporal_encode": 43, "temporal_decode": 44}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exact": "yes"}, "True or False"),
        ({"tile_sample_min_height": 60, "tile_sample_min_width": 60, "exact": True}, "multiple of 8"),
        ({"tile_sample_min_num_frames": 17, "exact": True}, "micro_frame_size"),
    ],
    ids=["not-bool", "not-multiple-of-8", "temporal"],
)
def test_exact_tiling_refuses_bad_arguments(tiny_random_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_random_model.enable_tiling(**kwargs)


def test_exact_tiles_do_not_overlap_and_blended_tiles_stay_available(tiny_random_model):
    model = tiny_random_model
    with pytest.raises(ValueError, match="tile_sample_stride_height=32 cannot be used"):
        model.enable_tiling(64, 64, None, 32, 32, exact=True)
    model.enable_tiling(64, 64, exact=True)
    assert model.use_tiling and model.tile_exact
    assert (model.tile_sample_min_height, model.tile_sample_stride_height) == (64, 64)
    model.enable_tiling(64, 64, None, 48, 48)
    assert not model.tile_exact
    assert (model.tile_sample_min_width, model.tile_sample_stride_width) == (64, 48)
    model.disable_tiling()
    assert not model.use_tiling


def test_upsampler_phase_form_gives_the_two_step_output_and_gradients():
    # With autograd on (training), the spatial decoder's upsampler runs the same phase form as at inference: its
    # output and every gradient equal nearest x2 upsampling followed by the 3x3 convolution.
    torch.manual_seed(0)
    conv = opensora_vae.OpenSoraUpsampleConv2d(4, 6)
    x = torch.randn(2, 4, 5, 7, requires_grad=True)
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    phase = (out.detach(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    x.grad = conv.weight.grad = conv.bias.grad = None
    reference = torch.nn.functional.conv2d(
        torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1
    )
    reference.backward(grad)
    expected = (reference.detach(), x.grad, conv.weight.grad, conv.bias.grad)
    assert out.shape == (2, 6, 10, 14)
    for got, want in zip(phase, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
