# Copyright 2026 The diffusers-videovae contributors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""CascadeV: parity with the original's fixtures (through the conversion script), key coverage, API and features."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from _cascadev_weights import hashed_state_dict
from accelerate import init_empty_weights
from conftest import REPO_ROOT, ReferenceCases, assert_close, reference_dir
from safetensors.torch import save_file

from diffusers_videovae import AutoencoderCascadeV, CascadeVTransformer3DModel
from diffusers_videovae.checkpoints import CheckpointError, convert_to_folder, get_checkpoint_module
from diffusers_videovae.checkpoints._common import OriginalCheckpoint, compare_with_model
from diffusers_videovae.checkpoints._protocol import check_checkpoint_module
from diffusers_videovae.checkpoints.cascadev import convert, read_original, read_python_config
from diffusers_videovae.memory import LiveTensorBytes, _ReplayingTrace

EFFNET_CASES = ["effnet_image", "effnet_video", "effnet_awkward"]


@pytest.fixture(scope="module")
def cases() -> ReferenceCases:
    return ReferenceCases("cascadev")


def _atol(cases: ReferenceCases, case: str, tensor: str) -> float:
    meta = cases.meta["cases"][case]["tensors"][tensor]
    if "rtol_of_max" in meta:  # refined latents are large: the tolerance is relative to max|expected|
        return meta["rtol_of_max"] * float(cases[tensor].abs().max())
    return meta["atol"]


def _check(cases: ReferenceCases, case: str, tensor: str, actual: torch.Tensor) -> None:
    assert_close(actual, cases[tensor], _atol(cases, case, tensor), tensor)


def _frames_to_video(noise: torch.Tensor) -> torch.Tensor:
    """Fixture noises are frame-major (T, 4, H, W); our API takes (1, 4, T, H, W)."""
    return noise.permute(1, 0, 2, 3)[None]


@pytest.fixture(scope="module")
def side_files(tmp_path_factory) -> dict[str, str]:
    """The StableWurst effnet / previewer files, rebuilt from the fixture's hash (checksums verified)."""
    ref = reference_dir("cascadev")
    folder = tmp_path_factory.mktemp("cascadev-side")
    paths = {}
    for name in ("effnet_encoder", "previewer"):
        paths[name] = str(folder / f"{name}.safetensors")
        save_file(hashed_state_dict(ref / f"weights_{name}.json", verify=True), paths[name])
    return paths


@pytest.fixture(scope="module")
def tiny_args(side_files) -> list[str]:
    ref = reference_dir("cascadev")
    return [
        "--checkpoint",
        str(ref / "tiny_original.pth"),
        "--original-config",
        str(ref / "tiny_config.py"),
        "--effnet",
        side_files["effnet_encoder"],
        "--previewer",
        side_files["previewer"],
        "--svd-vae",
        str(ref / "tiny_svd_vae"),
    ]


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, tiny_args):
    output = tmp_path_factory.mktemp("cascadev") / "tiny-diffusers"
    script = REPO_ROOT / "conversion" / "convert_cascadev.py"
    result = subprocess.run(
        [sys.executable, str(script), *tiny_args, "--output", str(output)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "dropped 119 original key(s)" in result.stdout  # 111 effnet + 8 previewer num_batches_tracked
    return output


@pytest.fixture(scope="module")
def model(converted_dir) -> AutoencoderCascadeV:
    model = AutoencoderCascadeV.from_pretrained(converted_dir).eval()
    model.set_progress_bar_config(disable=True)
    return model


# -- the fixture weights --------------------------------------------------------------------------------------------


def test_hash_generator_reproduces_the_listed_checksums():
    ref = reference_dir("cascadev")
    state = hashed_state_dict(ref / "weights_previewer.json", verify=True)
    listing = json.loads((ref / "weights_previewer.json").read_text())["tensors"]
    first = listing[0]
    assert abs(float(state[first["key"]].double().sum()) - first["sum"]) < 1e-9
    with pytest.raises(AssertionError, match="hash generator is wrong"):
        broken = ref / "weights_previewer.json"
        meta = json.loads(broken.read_text())
        meta["tensors"][0]["sum"] += 1e-3
        path = REPO_ROOT / ".pytest-cascadev-broken.json"
        try:
            path.write_text(json.dumps(meta))
            hashed_state_dict(path, verify=True)
        finally:
            path.unlink(missing_ok=True)


# -- parity with the original ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", EFFNET_CASES)
def test_encode_matches_original_effnet(device_model, device_cases, case):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        posterior = model.encode(cases[f"{case}.video"]).latent_dist
    _check(cases, case, f"{case}.latent", posterior.mean)
    assert torch.equal(posterior.mode(), posterior.mean)
    assert float(posterior.std.abs().max()) == 0.0


def test_effnet_stages_match_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x = ((cases["effnet_image.video"][:, :, 0] + 1) / 2 - mean) / std
    assert_close(x, cases["effnet_image.normalized_input"], 1e-6, "normalized_input")
    with torch.no_grad():
        for index, stage in enumerate(model.encoder.backbone):
            x = stage(x)
            assert_close(x, cases[f"effnet_image.backbone_stage{index}"], 1e-4, f"stage {index}")
        assert_close(model.encoder.mapper[0](x), cases["effnet_image.mapper_conv"], 1e-4, "mapper conv")


def test_preview_matches_original_previewer(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        _check(cases, "previewer", "previewer.video", model.preview(cases["previewer.latent"]))


@pytest.mark.parametrize("case", ["dit_single", "dit_varied_t"])
def test_dit_forward_matches_original(device_model, device_cases, case):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        out = model.transformer(cases[f"{case}.x"], cases[f"{case}.t"]).sample
    _check(cases, case, f"{case}.out", out)


def test_dit_blocks_use_the_groups_first_timestep_and_the_final_layer_each_frames(model, cases):
    t = cases["dit_varied_t.t"]
    dit = model.transformer
    with torch.no_grad():
        t_emb = dit._embed_timesteps(t, torch.float32)
        t3d = dit.t_block(dit._embed_timesteps(t.reshape(-1, 4)[:, 0], torch.float32))
    assert_close(t_emb, cases["dit_varied_t.t_emb"], 2e-5, "t_emb")
    assert_close(t3d, cases["dit_varied_t.t3d_block"], 2e-5, "t3d")


def test_tiny_pos_embed_matches_original(model, cases):
    assert_close(model.transformer.pos_embed((4, 8, 8)), cases["dit.pos_embed"], 1e-6, "pos_embed")


def test_release_pos_embed_split_is_derived_from_hidden_size(cases):
    with init_empty_weights():
        dit = CascadeVTransformer3DModel()  # release dims (1152 = 384 temporal + 768 spatial)
    _check(cases, "release_pos_embed", "release.pos_embed_grid2_lats8", dit.pos_embed((8, 2, 2)))


def test_dit_windows_match_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        out = model.transformer.forward_windows(cases["dit_windows.x"], cases["dit_windows.t"])
    assert model.transformer.frame_window_starts(7) == [0, 2, 3]
    assert model.transformer.window_starts(24) == [0, 8] and model.transformer.window_starts(20) == [0, 4]
    _check(cases, "dit_windows", "dit_windows.out", out)


def test_refine_euler_ancestral_matches_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    noises = [_frames_to_video(n) for n in cases["refine_EulerA.step_noises"]]
    with torch.no_grad():
        out = model.refine(
            cases["refine.lr_latent"],
            num_inference_steps=8,
            latents=_frames_to_video(cases["refine.init_noise"]),
            step_noises=noises,
        )
    _check(cases, "refine_EulerA", "refine_EulerA.out", out)


def test_refine_ddim_matches_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        out = model.refine(
            cases["refine.lr_latent"],
            num_inference_steps=5,
            latents=_frames_to_video(cases["refine.init_noise"]),
            scheduler=model.get_scheduler("ddim"),
        )
    _check(cases, "refine_DDIM", "refine_DDIM.out", out)


def test_scheduler_sigmas_and_timesteps_are_the_originals(model, cases):
    scheduler = model.get_scheduler()
    scheduler.set_timesteps(8)
    assert_close(scheduler.timesteps, cases["refine_EulerA.timesteps"], 0.0, "timesteps")
    assert_close(scheduler.sigmas, cases["refine_EulerA.sigmas"], 1e-5, "sigmas")  # float32 rounding
    assert float(scheduler.init_noise_sigma) == pytest.approx(157.4072723388672, rel=1e-7)


@pytest.mark.parametrize("case,chunk", [("tvae_decode_slice4", 4), ("tvae_decode_slice5", 5)])
def test_svd_chunked_decode_matches_original(device_model, device_cases, case, chunk):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    with torch.no_grad():
        video = model.decode_svd_latents(cases[f"{case}.latent"], chunk_size=chunk)
    _check(cases, case, f"{case}.video", video)


def test_end_to_end_matches_original(device_model, device_cases):
    model, cases = device_model, device_cases  # on VIDEOVAE_TEST_DEVICE
    noises = [_frames_to_video(n) for n in cases["e2e.step_noises"]]
    init = _frames_to_video(cases["e2e.init_noise"])
    with torch.no_grad():
        z = model.encode(cases["e2e.video"]).latent_dist.mean
        refined = model.refine(z, num_inference_steps=8, latents=init, step_noises=noises)
        video = model.decode(z, num_inference_steps=8, latents=init, step_noises=noises).sample
    _check(cases, "e2e", "e2e.effnet_latent", z)
    _check(cases, "e2e", "e2e.refined_latent", refined)
    _check(cases, "e2e", "e2e.video_out", video)


# -- conversion -------------------------------------------------------------------------------------------------------


def test_checkpoint_module_follows_the_protocol():
    assert check_checkpoint_module(get_checkpoint_module("cascadev")) == []


def _listing(name: str) -> dict[str, list[int]]:
    return json.loads((reference_dir("cascadev") / f"keys_{name}.json").read_text())["keys"]


def test_every_release_key_converts_to_a_model_key_of_the_right_shape():
    """All four release files (full size, on the meta device): every key mapped or dropped, every shape right."""
    state = {key: torch.empty(shape, device="meta") for key, shape in _listing("s1024.effn-f32").items()}
    for prefix, name in (("effnet_encoder.", "effnet_encoder"), ("previewer.", "previewer"), ("svd_vae.", "svd_vae")):
        state.update({prefix + key: torch.empty(shape, device="meta") for key, shape in _listing(name).items()})
    svd_config = json.loads((reference_dir("cascadev") / "keys_svd_vae.json").read_text())["config"]
    original = OriginalCheckpoint(state_dict=state, info={"svd_config": svd_config})
    converted = convert(original)
    assert converted.variant == "s1024.effn-f32"
    assert converted.config["transformer_num_layers"] == 28 and converted.config["transformer_hidden_size"] == 1152
    assert len(converted.dropped) == 111 + 8
    assert all(key.endswith("num_batches_tracked") for key in converted.dropped)
    with init_empty_weights():
        ours = AutoencoderCascadeV(**converted.config)
    compare_with_model(converted.state_dict, {key: tuple(value.shape) for key, value in ours.state_dict().items()})
    assert len(converted.state_dict) == 263 + 784 - 111 + 58 - 8 + 374


def test_release_config_is_built_in():
    with init_empty_weights():
        default = AutoencoderCascadeV()
    module = get_checkpoint_module("cascadev")
    translated = module.translate_config(module.RELEASE_CONFIG)
    for key, value in translated.items():
        if key not in ("scheduler_config",):
            expected = (
                [list(v) if v is not None else None for v in default.config[key]]
                if key.endswith("attn_strides")
                else default.config[key]
            )
            assert value == expected, key


def test_original_python_config_is_parsed_not_executed(tmp_path):
    config = tmp_path / "evil.py"
    marker = tmp_path / "executed"
    config.write_text(f"import os\nos.system('touch {marker}')\nimage_size = 128\nmodel_kwargs = dict(depth=5)\n")
    parsed = read_python_config(config)
    assert parsed == {"image_size": 128, "model_kwargs": {"depth": 5}}
    assert not marker.exists()


@pytest.fixture()
def stand_in_effnet(tmp_path) -> str:
    """A one-tensor effnet file: enough for tests of the DiT file's reading (the effnet keys only get renamed)."""
    path = tmp_path / "effnet_stand_in.safetensors"
    save_file({"backbone.0.0.weight": torch.ones(24, 3, 3, 3)}, str(path))
    return str(path)


def test_raw_state_dict_layout_converts_like_the_training_layout(tmp_path, model, stand_in_effnet):
    ref = reference_dir("cascadev")
    training = torch.load(ref / "tiny_original.pth", weights_only=True)
    raw = tmp_path / "raw.pth"
    torch.save(training["state_dict"], raw)
    with_state = tmp_path / "with_optimizer.pth"
    torch.save({"state_dict": training["state_dict"], "optimizer": {"lr": 1.0}, "epoch": 3}, with_state)
    kwargs = {"original_config": ref / "tiny_config.py", "effnet": stand_in_effnet, "svd_vae": ref / "tiny_svd_vae"}
    raw_converted = convert(read_original(raw, **kwargs))
    training_converted = convert(read_original(with_state, **kwargs))
    assert "optimizer" in training_converted.dropped and "epoch" in training_converted.dropped
    assert "optimizer" not in raw_converted.dropped
    transformer_keys = [key for key in raw_converted.state_dict if key.startswith("transformer.")]
    assert len(transformer_keys) == len(training["state_dict"])
    for key in raw_converted.state_dict:
        assert torch.equal(raw_converted.state_dict[key], training_converted.state_dict[key]), key
    for key in transformer_keys + ["svd_vae.decoder.conv_out.weight"]:
        assert torch.equal(raw_converted.state_dict[key], model.state_dict()[key]), key
    assert not raw_converted.config["with_previewer"]


def test_pickled_code_is_never_executed(tmp_path, tiny_args):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": CheckpointError("pickled object")}, evil)
    options = dict(zip(tiny_args[0::2], tiny_args[1::2]))
    with pytest.raises(CheckpointError, match="never executes"):
        read_original(evil, effnet=options["--effnet"], svd_vae=options["--svd-vae"])


def test_missing_side_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="--effnet, --svd-vae"):
        read_original(reference_dir("cascadev") / "tiny_original.pth")


def test_missing_dit_key_is_reported_and_nothing_written(tmp_path, tiny_args):
    training = torch.load(reference_dir("cascadev") / "tiny_original.pth", weights_only=True)
    del training["state_dict"]["blocks.2.mlp.fc1.bias"]
    broken = tmp_path / "broken.pth"
    torch.save(training, broken)
    options = dict(zip(tiny_args[0::2], tiny_args[1::2]))
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"transformer\.blocks\.2\.mlp\.fc1\.bias"):
        convert_to_folder(
            "cascadev",
            broken,
            output,
            original_config=options["--original-config"],
            effnet=options["--effnet"],
            svd_vae=options["--svd-vae"],
            verbose=False,
        )
    assert not output.exists()


def test_tiny_file_without_its_config_is_rejected_as_another_variant(tmp_path, stand_in_effnet):
    ref = reference_dir("cascadev")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        convert_to_folder(
            "cascadev",
            ref / "tiny_original.pth",
            tmp_path / "out",
            effnet=stand_in_effnet,
            svd_vae=ref / "tiny_svd_vae",
            verbose=False,
        )
    assert not (tmp_path / "out").exists()


def test_from_single_file_equals_the_conversion_script(model, side_files):
    ref = reference_dir("cascadev")
    direct = AutoencoderCascadeV.from_single_file(
        ref / "tiny_original.pth",
        original_config=ref / "tiny_config.py",
        effnet=side_files["effnet_encoder"],
        previewer=side_files["previewer"],
        svd_vae=ref / "tiny_svd_vae",
    )
    expected = model.state_dict()
    assert direct.state_dict().keys() == expected.keys()
    for key, value in direct.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_transformer_save_and_reload_round_trip_is_exact(model, cases, tmp_path):
    model.transformer.save_pretrained(tmp_path / "dit")
    again = CascadeVTransformer3DModel.from_pretrained(tmp_path / "dit").eval()
    x, t = cases["dit_single.x"], cases["dit_single.t"]
    with torch.no_grad():
        assert torch.equal(again(x, t).sample, model.transformer(x, t).sample)


# -- API ------------------------------------------------------------------------------------------------------------


def _latent(frames: int = 4, height: int = 4, width: int = 4, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def test_decode_is_reproducible_with_a_seed_and_depends_on_it(model):
    z = _latent()
    with torch.no_grad():
        a = model.decode(z, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).sample
        b = model.decode(z, num_inference_steps=2, generator=torch.Generator().manual_seed(1)).sample
        c = model.decode(z, num_inference_steps=2, generator=torch.Generator().manual_seed(2)).sample
    assert a.shape == (1, 3, 4, 128, 128)
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-2


def test_generator_draws_the_initial_noise_then_one_noise_per_step(model):
    z = _latent()
    generator = torch.Generator().manual_seed(5)
    shape = (1, 4, 4, 16, 16)
    latents = torch.randn(shape, generator=generator)
    noises = [torch.randn(shape, generator=generator) for _ in range(3)]
    with torch.no_grad():
        drawn = model.refine(z, 3, generator=torch.Generator().manual_seed(5))
        given = model.refine(z, 3, latents=latents, step_noises=noises)
    assert torch.equal(drawn, given)


def test_decode_runs_refine_then_the_svd_decoder(model):
    z = _latent()
    with torch.no_grad():
        refined = model.refine(z, 2, generator=torch.Generator().manual_seed(3))
        video = model.decode(z, 2, generator=torch.Generator().manual_seed(3)).sample
    assert refined.shape == (1, 4, 4, 16, 16)
    assert torch.equal(video, model.decode_svd_latents(refined))


def test_progress_bar_follows_diffusers_convention(model, monkeypatch):
    seen = []
    original = model.progress_bar

    def spy(iterable=None, total=None):
        seen.append(len(iterable))
        return original(iterable, total)

    monkeypatch.setattr(model, "progress_bar", spy)
    with torch.no_grad():
        model.refine(_latent(), 3, generator=torch.Generator().manual_seed(0))
    assert seen == [3]
    assert original(range(2)).disable  # set_progress_bar_config(disable=True) reaches tqdm


def test_mixin_contract(model):
    assert model.input_rule.describe() == "any T, H and W multiples of 32"
    generator = torch.Generator()
    assert model.decode_kwargs(num_frames=5) == {}
    assert model.decode_kwargs(num_frames=5, num_inference_steps=3, generator=generator) == {
        "num_inference_steps": 3,
        "generator": generator,
    }
    assert model.latent_normalization["scaling_factor"] == 1.0
    video = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        recon, posterior = model.autoencode(video, generator=torch.Generator().manual_seed(0))
        again, _ = model.autoencode(video, generator=torch.Generator().manual_seed(0))
    assert recon.shape == video.shape and torch.equal(recon, again)
    assert posterior.mean.shape == (1, 16, 2, 2, 2)


def test_scheduler_is_selectable(model):
    assert type(model.get_scheduler()).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(model.get_scheduler("ddim")).__name__ == "DDIMScheduler"
    dpm = model.get_scheduler("dpmsolver++")
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    with torch.no_grad():
        out = model.refine(_latent(), 3, generator=torch.Generator().manual_seed(0), scheduler=dpm)
    assert torch.isfinite(out).all()


# -- what the release could not do ----------------------------------------------------------------------------------


def test_short_clips_and_odd_frame_counts_decode(model):
    with torch.no_grad():
        for frames in (1, 3, 6):
            out = model.decode(_latent(frames), 2, generator=torch.Generator().manual_seed(0)).sample
            assert out.shape == (1, 3, frames, 128, 128) and torch.isfinite(out).all()


def test_last_svd_chunk_is_padded_and_earlier_chunks_unchanged(model):
    latents = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        six = model.decode_svd_latents(latents)
        four = model.decode_svd_latents(latents[:, :, :4])
        padded = model.decode_svd_latents(torch.cat([latents, latents[:, :, -1:].expand(-1, -1, 2, -1, -1)], 2))
    assert torch.equal(six[:, :, :4], four)
    assert torch.equal(six, padded[:, :, :6])


def test_videos_smaller_than_the_dit_window_decode(model):
    with torch.no_grad():
        out = model.decode(_latent(4, 2, 3), 2, generator=torch.Generator().manual_seed(0)).sample
    assert out.shape == (1, 3, 4, 64, 96) and torch.isfinite(out).all()


# -- memory and dtype -----------------------------------------------------------------------------------------------


def test_tiles_larger_than_the_frame_change_nothing(model):
    latents = torch.randn(1, 4, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.decode_svd_latents(latents)
        model.enable_tiling(tile_sample_min_height=128, tile_sample_min_width=128)
        try:
            same = model.decode_svd_latents(latents)
            model.enable_tiling(
                tile_sample_min_height=48,
                tile_sample_min_width=48,
                tile_sample_stride_height=32,
                tile_sample_stride_width=32,
            )
            tiled = model.decode_svd_latents(latents)
        finally:
            model.disable_tiling()
    assert torch.equal(plain, same)
    assert tiled.shape == plain.shape
    # Latent tiles of 6 every 4: rows [0, 2], columns [0, 4, 6]; pixels [0:16, 0:32] belong to the first tile only.
    with torch.no_grad():
        first = model.decode_svd_latents(latents[..., :6, :6])
    assert torch.equal(tiled[..., :16, :32], first[..., :16, :32])
    assert not torch.equal(tiled, plain)


def test_tiled_decode_stitches_tiles_where_they_do_not_overlap(model):
    latents = torch.randn(1, 4, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    model.enable_tiling(
        tile_sample_min_height=64, tile_sample_min_width=48, tile_sample_stride_height=64, tile_sample_stride_width=48
    )
    try:
        with torch.no_grad():
            tiled = model.decode_svd_latents(latents)
    finally:
        model.disable_tiling()
    with torch.no_grad():
        corner = model.decode_svd_latents(latents[..., :8, 6:12])
    assert torch.equal(tiled[..., :64, 48:96], corner)


def _relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@torch.no_grad()
def test_exact_svd_tiles_run_each_layer_once_per_tile_with_its_own_halo(model):
    """Tiles in layer order, 96 x 96 px in 32-px tiles (3 x 3): the last resnet's spatial half runs over the tiles
    once, plus once more up to its second GroupNorm to measure it, and its temporal half likewise (first
    convolutions 2 calls per tile, second ones 1), where re-running the stage from its input for every GroupNorm ran
    them once per later GroupNorm of the stage."""
    latents = torch.randn(1, 4, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    expected = model.decode_svd_latents(latents, chunk_size=2)
    resnet = model.svd_vae.decoder.up_blocks[-1].resnets[-1]
    convolutions = {
        "spatial conv1": resnet.spatial_res_block.conv1,
        "spatial conv2": resnet.spatial_res_block.conv2,
        "temporal conv1": resnet.temporal_res_block.conv1,
        "temporal conv2": resnet.temporal_res_block.conv2,
    }
    counts = dict.fromkeys(convolutions, 0)
    handles = [
        conv.register_forward_hook(lambda module, args, output, name=name: counts.update({name: counts[name] + 1}))
        for name, conv in convolutions.items()
    ]
    model.enable_tiling(32, 32, exact=True)
    try:
        tiled = model.decode_svd_latents(latents, chunk_size=2)
    finally:
        model.disable_tiling()
        for handle in handles:
            handle.remove()
    assert counts == {"spatial conv1": 18, "spatial conv2": 9, "temporal conv1": 18, "temporal conv2": 9}
    assert _relative_difference(tiled, expected) <= 1e-4


@torch.no_grad()
def test_exact_svd_tiles_need_each_steps_whole_halo(model, monkeypatch):
    """The fixture's SVD decoder is sensitive to a halo one pixel short: each spatial resnet's 2 pixels are needed,
    so the parity tests would catch a step that reads too little."""
    from diffusers_videovae.models import cascadev

    latents = torch.randn(1, 4, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    expected = model.decode_svd_latents(latents, chunk_size=2)
    in_layer_order = cascadev.tiled_in_layer_order

    def short_halos(steps, x, core, offload_device=None):
        return in_layer_order([step._replace(halo=min(step.halo, 1)) for step in steps], x, core, offload_device)

    monkeypatch.setattr(cascadev, "tiled_in_layer_order", short_halos)
    model.enable_tiling(32, 32, exact=True)
    try:
        tiled = model.decode_svd_latents(latents, chunk_size=2)
    finally:
        model.disable_tiling()
    assert _relative_difference(tiled, expected) > 1e-2


@torch.no_grad()
def test_exact_svd_tiles_run_through_leaf_level_group_offload(converted_dir, tmp_path):
    """Offloaded to disk, a layer run outside its hooks would compute garbage: exact tiles call layers as modules."""
    offloaded = AutoencoderCascadeV.from_pretrained(converted_dir).eval()
    latents = torch.randn(1, 4, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    expected = offloaded.decode_svd_latents(latents, chunk_size=2)
    offloaded.enable_group_offload(torch.device("cpu"), offload_type="leaf_level", offload_to_disk_path=str(tmp_path))
    offloaded.enable_tiling(32, 32, exact=True)
    assert _relative_difference(offloaded.decode_svd_latents(latents, chunk_size=2), expected) <= 1e-4


# -- encoder tiles and what tiles keep in memory ---------------------------------------------------------------------

# 2 frames of 200 x 264 px in 160-px tiles: cores of 64 px (160 less a 48-px halo on both sides), 4 x 5 tiles.
ENCODER_CLIP = (1, 3, 2, 200, 264)


def _encoder_clip(shape: tuple[int, ...] = ENCODER_CLIP) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.mark.parametrize("exact", [False, True], ids=["default", "exact"])
@pytest.mark.parametrize(
    ("size", "tile", "latent"),
    [
        ((200, 264), 160, (7, 9)),
        # Not multiples of 8: the stride-8 stages round 197 x 250 up to 25 x 32, in the tiles at the border too.
        ((197, 250), 160, (7, 8)),
        # Larger than the 64-px tile, but its 48-px cores with their 48-px halos read the whole frame: one piece.
        ((90, 70), 64, (3, 3)),
    ],
    ids=["multiple-of-8", "not-multiple-of-8", "one-tile-reads-the-frame"],
)
@torch.no_grad()
def test_encoder_tiles_equal_untiled(model, exact, size, tile, latent):
    """The encoder's tiles are exact in both modes: the local stages in halo tiles, the squeeze-excitation stages on
    the whole frame (the fixture's effnet weights are sensitive to a halo of 40 px: 6e-3 relative)."""
    video = _encoder_clip((*ENCODER_CLIP[:3], *size))
    untiled = model.encode(video).latent_dist.mode()
    model.enable_tiling(tile, tile, exact=exact)
    try:
        tiled = model.encode(video).latent_dist.mode()
    finally:
        model.disable_tiling()
    assert tiled.shape == untiled.shape == (1, 16, 2, *latent)
    assert _relative_difference(tiled, untiled) <= 1e-4


@torch.no_grad()
def test_encoder_tiles_read_at_most_the_tile_size_and_pool_whole_frames(model):
    """Every window the stem reads is at most 160 px (4 x 5 per frame); the first squeeze-excitation stage sees
    each whole frame's features once (ceil(200 / 8) x ceil(264 / 8))."""
    windows, pooled = [], []
    hooks = [
        model.encoder.backbone[0].register_forward_pre_hook(lambda module, args: windows.append(args[0].shape)),
        model.encoder.backbone[4].register_forward_pre_hook(lambda module, args: pooled.append(args[0].shape)),
    ]
    model.enable_tiling(160, 160)
    try:
        model.encode(_encoder_clip())
    finally:
        model.disable_tiling()
        for hook in hooks:
            hook.remove()
    assert len(windows) == 2 * 4 * 5
    assert max(shape[-2] for shape in windows) == max(shape[-1] for shape in windows) == 160
    assert pooled == [torch.Size([1, 64, 25, 33])] * 2


@torch.no_grad()
def test_encoder_tiles_run_through_leaf_level_group_offload(converted_dir, tmp_path):
    """Offloaded to disk, a layer run outside its hooks would compute garbage: the tiles call layers as modules."""
    offloaded = AutoencoderCascadeV.from_pretrained(converted_dir).eval()
    video = _encoder_clip()[:, :, :1]
    expected = offloaded.encode(video).latent_dist.mode()
    offloaded.enable_group_offload(torch.device("cpu"), offload_type="leaf_level", offload_to_disk_path=str(tmp_path))
    offloaded.enable_tiling(160, 160)
    assert _relative_difference(offloaded.encode(video).latent_dist.mode(), expected) <= 1e-4


def test_default_tile_is_256_px_every_192():
    with torch.device("meta"):
        model = AutoencoderCascadeV(with_previewer=False, transformer_num_layers=1, svd_block_out_channels=(32,) * 4)
    assert model.tiling_limits().default_size == 256
    model.enable_tiling()
    sizes = [
        getattr(model, f"tile_sample_{kind}_{axis}") for kind in ("min", "stride") for axis in ("height", "width")
    ]
    assert sizes == [256, 256, 192, 192]


def _traced_peaks(model: AutoencoderCascadeV, tracer, size: int) -> tuple[int, int]:
    """Peak bytes of the tensors an encode of 8 frames and the SVD decode of their latents create, traced on meta
    (repeated module calls, tiles, replayed from their first trace, as `memory.estimate_memory` does)."""
    calls = (
        lambda: model.encode(torch.zeros(1, 3, 8, size, size, device="meta")),
        lambda: model.decode_svd_latents(torch.zeros(1, 4, 8, size // 8, size // 8, device="meta")),
    )
    peaks = []
    with torch.no_grad():
        for call in calls:
            with LiveTensorBytes() as live:
                tracer.live = live
                call()
            tracer.live = None
            peaks.append(live.peak)
    return peaks[0], peaks[1]


@pytest.mark.parametrize("tiled", [True, False], ids=["default tiles", "untiled"])
def test_default_tiles_bound_the_traced_peak_of_the_released_encoder_and_svd_decoder(tiled):
    """Released encoder and SVD decoder, 8 frames, traced on meta: with default tiles the peak at 512 x 512 stays
    within 1.25x of 256 x 256 for the encode and for the SVD decode (untiled: 4.0x both)."""
    with torch.device("meta"):
        model = AutoencoderCascadeV(with_previewer=False, transformer_num_layers=1)
    model = torch.nn.Module.to(model, "meta").eval()
    tracer = _ReplayingTrace(model)
    if tiled:
        model.enable_tiling()
    (encode_256, decode_256), (encode_512, decode_512) = (_traced_peaks(model, tracer, size) for size in (256, 512))
    growth = {"encode": encode_512 / encode_256, "SVD decode": decode_512 / decode_256}
    assert {call: ratio <= 1.25 for call, ratio in growth.items()} == {"encode": tiled, "SVD decode": tiled}, growth


def test_slicing_gives_the_same_result(model):
    z = _latent(batch=2)
    latents = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    noises = [torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(i + 2)) for i in range(2)]
    video = torch.rand(2, 3, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        plain = model.decode(z, 2, latents=latents, step_noises=noises).sample
        encoded = model.encode(video).latent_dist.mean
        model.enable_slicing()
        try:
            sliced = model.decode(z, 2, latents=latents, step_noises=noises).sample
            encoded_sliced = model.encode(video).latent_dist.mean
        finally:
            model.disable_slicing()
    assert_close(sliced, plain, 1e-5, "sliced decode")
    assert_close(encoded_sliced, encoded, 1e-4, "sliced encode")  # latents up to ~10: batch-size rounding


def test_bfloat16_decode_is_finite(converted_dir):
    model = AutoencoderCascadeV.from_pretrained(converted_dir, torch_dtype=torch.bfloat16).eval()
    model.set_progress_bar_config(disable=True)
    video = torch.rand(1, 3, 4, 128, 128) * 2 - 1  # float32 input: encode casts it to the model's dtype
    with torch.no_grad():
        z = model.encode(video).latent_dist.mean
        out = model.decode(z, 8, generator=torch.Generator().manual_seed(0)).sample
    assert torch.isfinite(z).all() and torch.isfinite(out).all()
    assert out.shape == (1, 3, 4, 128, 128)


# -- diffusers features on the DiT ------------------------------------------------------------------------------------


def _dit_inputs(cases):
    return cases["dit_varied_t.x"], cases["dit_varied_t.t"]


def test_layerwise_casting_fp8_is_finite_and_close(model, cases):
    dit = copy.deepcopy(model.transformer)
    x, t = _dit_inputs(cases)
    with torch.no_grad():
        plain = dit(x, t).sample
        dit.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        cast = dit(x, t).sample
    assert dit.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert torch.isfinite(cast).all()
    assert float((cast - plain).abs().max()) < 0.1 * float(plain.abs().max())


def test_layerwise_casting_fp8_of_the_whole_model_keeps_the_encoder_and_decodes_finite(converted_dir):
    model = AutoencoderCascadeV.from_pretrained(converted_dir).eval()
    model.set_progress_bar_config(disable=True)
    video = torch.rand(1, 3, 4, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = model.encode(video).latent_dist.mean
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
        z_cast = model.encode(video).latent_dist.mean
        out = model.decode(z_cast, 2, generator=torch.Generator().manual_seed(0)).sample
    assert model.transformer.blocks[0].mlp.fc1.weight.dtype == torch.float8_e4m3fn
    assert model.svd_vae.decoder.conv_in.weight.dtype == torch.float8_e4m3fn
    assert torch.equal(z_cast, z)
    assert torch.isfinite(out).all() and out.shape == (1, 3, 4, 128, 128)


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_equals_plain(model, cases, offload_type):
    dit = copy.deepcopy(model.transformer)
    x, t = _dit_inputs(cases)
    with torch.no_grad():
        plain = dit(x, t).sample
        options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
        dit.enable_group_offload(torch.device("cpu"), offload_type=offload_type, **options)
        offloaded = dit(x, t).sample
    assert torch.equal(offloaded, plain)


def test_dit_compiles_without_graph_breaks_and_matches_eager(model, cases):
    dit = copy.deepcopy(model.transformer)
    x, t = _dit_inputs(cases)
    with torch.no_grad():
        eager = dit(x, t).sample
        explanation = torch._dynamo.explain(dit)(x, t)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        torch._dynamo.reset()
        compiled = torch.compile(dit, fullgraph=True, backend="aot_eager")(x, t).sample
    assert_close(compiled, eager, 1e-4, "compiled DiT")


def test_gradient_checkpointing_gives_the_same_gradients(model, cases):
    dit = copy.deepcopy(model.transformer).train()
    x, t = _dit_inputs(cases)
    dit(x, t).sample.square().mean().backward()
    plain = dit.blocks[1].attn.qkv.weight.grad.clone()
    dit.zero_grad()
    dit.enable_gradient_checkpointing()
    calls = []
    checkpoint = dit._gradient_checkpointing_func
    dit._gradient_checkpointing_func = lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs)
    dit(x, t).sample.square().mean().backward()
    assert len(calls) == len(dit.blocks)  # every DiT block ran under checkpointing
    assert_close(dit.blocks[1].attn.qkv.weight.grad, plain, 1e-6, "checkpointed gradient")


# -- bad inputs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,error,message",
    [
        (torch.zeros(1, 3, 64, 64), ValueError, "5 dims"),
        (torch.zeros(1, 4, 2, 64, 64), ValueError, "3 channels"),
        (torch.zeros(1, 3, 2, 64, 64, dtype=torch.uint8), TypeError, "floating point"),
        (torch.full((1, 3, 2, 64, 64), float("nan")), ValueError, "NaN"),
    ],
)
def test_bad_video_is_rejected(model, bad, error, message):
    with pytest.raises(error, match=message):
        model.encode(bad)


def test_bad_latents_and_noises_are_rejected(model):
    with pytest.raises(ValueError, match=r"\(B, 16, t, h, w\)"):
        model.decode(torch.zeros(1, 4, 4, 16, 16))
    with pytest.raises(ValueError, match=r"`latents` must have shape \(1, 4, 4, 16, 16\)"):
        model.refine(_latent(), 2, latents=torch.zeros(4, 4, 16, 16))
    with pytest.raises(ValueError, match="one noise per step"):
        model.refine(_latent(), 2, step_noises=[torch.zeros(1, 4, 4, 16, 16)])
    with pytest.raises(ValueError, match="only apply to the ancestral"):
        model.refine(_latent(), 1, step_noises=[torch.zeros(1, 4, 4, 16, 16)], scheduler=model.get_scheduler("ddim"))
    with pytest.raises(ValueError, match="multiple of 4"):
        model.transformer(torch.zeros(3, 20, 16, 16), torch.zeros(3))


# -- the command line -----------------------------------------------------------------------------------------------


def test_videovae_train_fine_tunes_the_dit_alone(tmp_path, converted_dir):
    """`videovae train --train-only transformer`: one step through the sampler and the SVD decoder changes DiT
    weights only (the effnet, the SVD VAE and the previewer stay as converted)."""
    from safetensors.torch import load_file

    from diffusers_videovae import training
    from diffusers_videovae.video import synthetic_clip, write_video

    write_video(tmp_path / "clip.mp4", synthetic_clip(4, 64, 64, seed=0), fps=10, crf=10)
    argv = ["--data", str(tmp_path / "clip.mp4"), "-m", str(converted_dir), "--output-dir", str(tmp_path / "run")]
    argv += ["--num-frames", "4", "--height", "64", "--width", "64", "--max-steps", "1", "--lr", "1e-3"]
    argv += ["--train-only", "transformer", "--kl-weight", "0", "--num-threads", "1"]
    assert training.main(argv) == 0
    before = load_file(str(converted_dir / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "diffusion_pytorch_model.safetensors"))
    assert after.keys() == before.keys()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("transformer.") for key in changed)


# -- input checks (issue 18) ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_step_counts_must_be_positive_integers(model, steps):
    with pytest.raises(ValueError, match="`num_inference_steps` must be a positive integer"):
        model.decode(_latent(), num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="`num_inference_steps` must be a positive integer"):
        model.refine(_latent(), steps, generator=torch.Generator().manual_seed(0))


def test_svd_chunk_size_must_be_a_positive_integer(model):
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer, got -1"):
        model.decode_svd_latents(torch.zeros(1, 4, 4, 8, 8), chunk_size=-1)


def test_forward_crops_the_padding_back_to_the_input_size(model):
    video = torch.rand(1, 3, 2, 60, 50, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = model(video, generator=torch.Generator().manual_seed(0), num_inference_steps=1).sample
        padded = model.decode(
            model.encode(video).latent_dist.mode(), 1, generator=torch.Generator().manual_seed(0)
        ).sample
    assert padded.shape == (1, 3, 2, 64, 64)
    assert out.shape == video.shape
    assert torch.equal(out, padded[..., :60, :50])


def test_sliced_decode_with_a_generator_gives_the_same_video(model):
    # The noise of the whole batch is drawn before slicing, so slicing changes no number: the decode of each item
    # already runs on its own (per-item DiT and SVD loops), hence an exact comparison.
    z = _latent(batch=2)
    with torch.no_grad():
        plain = model.decode(z, 2, generator=torch.Generator().manual_seed(7)).sample
        model.enable_slicing()
        try:
            sliced = model.decode(z, 2, generator=torch.Generator().manual_seed(7)).sample
        finally:
            model.disable_slicing()
    assert float((plain[0] - plain[1]).abs().max()) > 1e-2  # the two items got different noise
    assert torch.equal(sliced, plain)


def test_diffusers_enable_disable_slicing_semantics_hold(model):
    # diffusers' AutoencoderTesterMixin.test_enable_disable_slicing: forward with `generator=torch.manual_seed(0)`,
    # with and without slicing, must agree (diffusers allows 0.5), and be equal again after disabling.
    video = torch.rand(2, 3, 2, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        plain = model(video, return_dict=False, generator=torch.manual_seed(0), num_inference_steps=2)[0]
        model.enable_slicing()
        try:
            sliced = model(video, return_dict=False, generator=torch.manual_seed(0), num_inference_steps=2)[0]
        finally:
            model.disable_slicing()
        again = model(video, return_dict=False, generator=torch.manual_seed(0), num_inference_steps=2)[0]
    # The encoder's batched convolutions round differently from one item at a time (~5e-6 here); the noise is the
    # same, so the videos agree to that rounding (before the fix: up to 0.95 apart).
    assert_close(sliced, plain, 1e-4, "sliced forward")
    assert torch.equal(again, plain)


def test_sliced_decode_checks_the_noise_batch_before_slicing(model):
    model.enable_slicing()
    try:
        with pytest.raises(ValueError, match="`latents` has batch 1, but the latents have batch 2"):
            model.decode(_latent(batch=2), 2, latents=torch.zeros(1, 4, 4, 16, 16))
    finally:
        model.disable_slicing()


def test_empty_batch_is_reported_as_an_empty_batch(model):
    with pytest.raises(ValueError, match="empty batch"):
        model.decode(torch.zeros(0, 16, 4, 4, 4))


@pytest.mark.parametrize("where", ["latents", "step_noises"])
def test_nan_in_given_noises_is_refused(model, where):
    noise = torch.zeros(1, 4, 4, 16, 16)
    noise[0, 0, 0, 0, 0] = float("nan")
    noises = {"latents": noise} if where == "latents" else {"step_noises": [torch.zeros_like(noise), noise]}
    with pytest.raises(ValueError, match="NaN"):
        model.decode(_latent(), 2, **noises)


def test_step_noises_that_are_not_tensors_are_refused(model):
    with pytest.raises(TypeError, match=r"`step_noises\[0\]` must be a torch.Tensor of shape \(1, 4, 4, 16, 16\)"):
        model.decode(_latent(), 2, step_noises=[1, 2])
    with pytest.raises(TypeError, match="step_noises must be a list of 2 tensors"):
        model.decode(_latent(), 2, step_noises=3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_preview_casts_its_latents_like_decode(model, dtype):
    z = _latent()
    with torch.no_grad():
        expected = model.preview(z)
        cast = model.preview(z.to(dtype))
    assert cast.dtype == torch.float32
    assert_close(cast, expected, 0.1 if dtype == torch.bfloat16 else 1e-6, f"preview of {dtype} latents")


def test_denoising_bar_is_labelled_and_hidden_inside_another_bar(model):
    from tqdm.auto import tqdm

    model.set_progress_bar_config()
    try:
        alone = model.progress_bar(range(2))
        assert alone.desc == "CascadeV denoising" and not alone.disable and not alone.leave
        alone.close()
        with tqdm(total=1, disable=False) as outer:
            inner = model.progress_bar(range(2))
            assert inner.disable and outer is not None
    finally:
        model.set_progress_bar_config(disable=True)
