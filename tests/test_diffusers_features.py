"""diffusers' memory and speed features on every model: layerwise casting, group offloading, offload hooks during
exact tiling, torch.compile, and the input dtype rule. Each test runs a tiny random config of the three models."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from _tiny_configs import SMALL_TILING_CONFIGS, TINY_CONFIGS
from conftest import assert_close

from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE
from diffusers_videovae.models.od_vae import AutoencoderKLODVAE
from diffusers_videovae.models.opensora_vae import AutoencoderKLOpenSora

# name -> (tiny config, input video shape (B, 3, T, H, W))
TINY = {
    "ivvae": (AutoencoderKLIVVAE, TINY_CONFIGS["ivvae"], (1, 3, 5, 16, 16)),
    "odvae": (AutoencoderKLODVAE, TINY_CONFIGS["odvae"], (1, 3, 5, 16, 16)),
    "opensora": (AutoencoderKLOpenSora, TINY_CONFIGS["opensora"], (1, 3, 5, 16, 16)),
}
NAMES = list(TINY)
ALL_NAMES = [*NAMES, "reducio", "cascadev"]


def tiny(name: str):
    cls, config, _ = TINY[name]
    torch.manual_seed(0)
    model = cls(**config).eval()
    # Random weights with realistic spread in every layer (default inits leave some biases at zero).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def tiny_video(name: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*TINY[name][2], generator=generator) * 2 - 1


def _casting_skipped(model, name: str) -> bool:
    patterns = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$", *model._skip_layerwise_casting_patterns)
    return any(re.search(pattern, name) for pattern in patterns)


def _round_weights_like_layerwise_casting(model, storage_dtype: torch.dtype):
    """A copy of `model` whose conv / linear weights went through `storage_dtype` and back: what a model under
    layerwise casting computes with, when every layer really casts its weights."""
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    rounded = copy.deepcopy(model)
    skipped: list[str] = []
    for name, module in rounded.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skipped):
            continue
        if name and _casting_skipped(rounded, name):
            skipped.append(name)
            continue
        if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.copy_(parameter.to(storage_dtype).float())
    return rounded


def _run(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    posterior = model.encode(x).latent_dist
    z = posterior.mode()
    extra = {"num_frames": x.shape[2]} if isinstance(model, AutoencoderKLOpenSora) else {}
    return z, model.decode(z, **extra).sample


# --- layerwise casting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_layerwise_casting_computes_with_every_cast_weight(name, storage_dtype):
    model, x = tiny(name), tiny_video(name)
    plain_z, plain = _run(model, x)
    expected_z, expected = _run(_round_weights_like_layerwise_casting(model, storage_dtype), x)
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    assert any(p.dtype == storage_dtype for p in model.parameters())
    z, sample = _run(model, x)
    assert torch.isfinite(sample).all() and sample.dtype == torch.float32
    # Exactly what the model computes with weights rounded to the storage dtype: every layer casts its own weights.
    assert_close(z, expected_z, 1e-5, "latents")
    assert_close(sample, expected, 1e-5, "sample")
    if storage_dtype == torch.float16:
        # ... and close to the float32 model when the storage keeps 11 bits of mantissa (random tiny models amplify
        # the coarser bfloat16 / float8 weight rounding too much for a bound that means anything).
        for actual, reference in ((z, plain_z), (sample, plain)):
            assert float((actual - reference).norm() / reference.norm()) < 0.05


# The encoding half of each model: what a decoder fine-tune keeps frozen, and may store in float8.
ENCODER_PARTS = {
    "ivvae": ("encoder", "quant_conv"),
    "odvae": ("encoder", "quant_conv"),
    "opensora": ("spatial_vae.encoder", "spatial_vae.quant_conv", "temporal_vae.encoder", "temporal_vae.quant_conv"),
}


@pytest.mark.parametrize("name", NAMES)
def test_decoder_training_step_with_a_float8_encoder(name):
    """diffusers' casting hooks put weights back into storage after each forward, so no backward pass can go
    through a cast layer (diffusers' own AutoencoderKL fails alike). A decoder fine-tune with the frozen encoder
    stored in float8 has no backward through it: the step runs and gives the gradients of the rounded encoder."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    model, x = tiny(name).train(), tiny_video(name)
    reference = copy.deepcopy(model)
    for part in ENCODER_PARTS[name]:
        with torch.no_grad():  # what the hook stores in float8: every conv / linear layer, norms left out
            for layer_name, layer in reference.get_submodule(part).named_modules():
                if isinstance(layer, _GO_LC_SUPPORTED_PYTORCH_LAYERS) and "norm" not in layer_name:
                    for parameter in layer.parameters():
                        parameter.copy_(parameter.to(torch.float8_e4m3fn).float())
        apply_layerwise_casting(
            model.get_submodule(part),
            storage_dtype=torch.float8_e4m3fn,
            compute_dtype=torch.float32,
            skip_modules_pattern=("norm",),
        )
    gradients = []
    for vae in (model, reference):
        for part in ENCODER_PARTS[name]:
            vae.get_submodule(part).requires_grad_(False)
        vae.zero_grad()
        reconstruction, _ = vae.autoencode(x)
        (reconstruction - x).abs().mean().backward()
        gradients.append({n: p.grad for n, p in vae.named_parameters() if p.requires_grad})
    assert any(p.dtype == torch.float8_e4m3fn for p in model.parameters())
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for key, grad in gradients[0].items():
        assert torch.isfinite(grad).all(), key
        assert_close(grad, gradients[1][key], 1e-5, key)


# --- group offloading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_group_offload_equals_the_plain_model(name, offload_type, tmp_path):
    model, x = tiny(name), tiny_video(name)
    expected_z, expected = _run(model, x)
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    # Offloading to disk replaces every offloaded weight by an uninitialised tensor until its group is onloaded, so
    # a layer that runs without its hook onloading it computes with garbage, even though both devices are the CPU.
    model.enable_group_offload(
        torch.device("cpu"), offload_type=offload_type, offload_to_disk_path=str(tmp_path), **options
    )
    z, sample = _run(model, x)
    assert_close(z, expected_z, 1e-6, "latents")
    assert_close(sample, expected, 1e-6, "sample")


def _model_and_call(name: str, tiling: str):
    """A tiny model of any of the five with `tiling` ("off", "default" or "exact" tiles, several tiles wide) and a
    call that encodes and decodes through the public methods, as users do (not `forward`, so that no hook on the
    autoencoder itself onloads what `encode` and `decode` run)."""
    from diffusers_videovae.models.cascadev import AutoencoderCascadeV
    from diffusers_videovae.models.reducio_vae import AutoencoderKLReducio

    exact = tiling == "exact"
    if name in TINY:
        model, x = tiny(name), torch.rand(1, 3, 5, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
        tiles = {"default": (16, 16), "exact": (16, 16)}

        def call():
            return _run(model, x)

    elif name == "reducio":
        torch.manual_seed(0)
        model = AutoencoderKLReducio(**TINY_CONFIGS["reducio"]).eval()
        x = torch.rand(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        tiles = {"default": (24, 24, None, 16, 16), "exact": (16, 16)}

        def call():
            z = model.normalize_latents(model.encode(x).latent_dist.mode())
            return z, model.decode(z, content_frame=x[:, :, 8]).sample

    else:
        torch.manual_seed(0)
        model = AutoencoderCascadeV(**SMALL_TILING_CONFIGS["cascadev"]).eval()
        x = torch.rand(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        tiles = {"default": (32, 32), "exact": (32, 32)}

        def call():
            z = model.encode(x).latent_dist.mode()
            return z, model.decode(z, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).sample

        if name != "cascadev":
            raise ValueError(name)
    if name not in TINY:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
    if tiling != "off":
        model.enable_tiling(*tiles[tiling], exact=exact)
    return model, call


# Block-level groups are onloaded by their first module's call: a layer that tiles, frame chunks or a method other
# than `forward` call directly needs a group of its own (`_group_offload_block_modules`), or it runs on the
# uninitialised tensors that offloading to disk leaves in place of its weights.
# (Untiled IV-VAE, OD-VAE and Open-Sora: `test_group_offload_equals_the_plain_model`.)
OFFLOAD_CASES = [
    (name, "block_level", tiling)
    for name in ALL_NAMES
    for tiling in (("default", "exact") if name in TINY else ("off", "default", "exact"))
] + [(name, "leaf_level", "off") for name in ("reducio", "cascadev")]


@pytest.mark.parametrize(("name", "offload_type", "tiling"), OFFLOAD_CASES)
@torch.no_grad()
def test_group_offload_to_disk_through_encode_and_decode(name, offload_type, tiling, tmp_path):
    model, call = _model_and_call(name, tiling)
    expected_z, expected = call()
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    model.enable_group_offload(
        torch.device("cpu"), offload_type=offload_type, offload_to_disk_path=str(tmp_path), **options
    )
    z, sample = call()
    assert_close(z, expected_z, 1e-6, "latents")
    assert_close(sample, expected, 1e-6, "sample")


# --- hooks on GroupNorms during exact tiling -------------------------------------------------------------------------


def _norm_stage() -> tuple[torch.nn.Module, list[torch.nn.GroupNorm]]:
    torch.manual_seed(0)
    stage = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GroupNorm(2, 8),
        torch.nn.SiLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.GroupNorm(4, 8),
    )
    with torch.no_grad():
        for norm in (stage[1], stage[4]):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return stage, [stage[1], stage[4]]


@torch.no_grad()
def test_exact_tiles_run_group_norms_through_their_hooks_and_keep_them():
    from accelerate.hooks import ModelHook as AccelerateHook
    from accelerate.hooks import add_hook_to_module
    from diffusers.hooks import HookRegistry, ModelHook

    from diffusers_videovae.models._tiling import tiled_with_shared_group_norm

    calls = {"accelerate": 0, "diffusers": 0}

    class CountingAccelerateHook(AccelerateHook):
        def pre_forward(self, module, *args, **kwargs):
            calls["accelerate"] += 1
            return args, kwargs

    class ScalingDiffusersHook(ModelHook):
        """Doubles the GroupNorm's output, so a pass that skips the hook gives other numbers."""

        def post_forward(self, module, output):
            calls["diffusers"] += 1
            return output * 2

    stage, (first, second) = _norm_stage()
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    add_hook_to_module(first, CountingAccelerateHook())
    HookRegistry.check_if_exists_or_initialize(second).register_hook(ScalingDiffusersHook(), "scaling")
    hooked_forwards = (first.__dict__["forward"], second.__dict__["forward"])
    expected = stage(x)
    calls.update(accelerate=0, diffusers=0)

    tiled = tiled_with_shared_group_norm(stage, x, stage, core=8, halo=3)

    assert_close(tiled, expected, 1e-5, "exact tiles with hooked GroupNorms")
    num_tiles = 3 * 5
    # Every tile's call of each GroupNorm went through its hook: measured (1 pass for the first norm, 1 for the
    # second), then normalising (the second norm's pass and the final pass for the first; the final for the second).
    assert calls == {"accelerate": 3 * num_tiles, "diffusers": 2 * num_tiles}
    assert (first.__dict__["forward"], second.__dict__["forward"]) == hooked_forwards
    calls.update(accelerate=0, diffusers=0)
    assert_close(stage(x), expected, 0, "hooks still in place after tiling")
    assert calls == {"accelerate": 1, "diffusers": 1}


@pytest.mark.parametrize("name", ["odvae", "opensora"])
@torch.no_grad()
def test_exact_tiling_under_leaf_level_group_offload_equals_untiled(name, tmp_path):
    model = tiny(name)
    x = torch.rand(1, 3, 5, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _, expected = _run(model, x)
    model.enable_group_offload(torch.device("cpu"), offload_type="leaf_level", offload_to_disk_path=str(tmp_path))
    model.enable_tiling(16, 16, exact=True)
    _, tiled = _run(model, x)
    assert_close(tiled, expected, 1e-4, "exact tiles, leaf-level group offload")


# --- torch.compile -------------------------------------------------------------------------------------------------

# The submodules a user compiles (`module.compile()`): the ones the model calls through their forward.
COMPILED_SUBMODULES = {
    "ivvae": ("encoder", "decoder"),
    "odvae": ("encoder", "decoder"),
    "opensora": ("temporal_vae.encoder", "temporal_vae.decoder", "spatial_vae.decoder.up_blocks.0"),
}


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_forward_compiles_in_one_graph_and_matches_eager(name):
    torch._dynamo.reset()
    model, x = tiny(name), tiny_video(name)
    expected = model(x).sample
    # fullgraph=True raises at the first graph break (as `torch._dynamo.explain(model)(x).graph_break_count > 0`
    # would show); the "eager" backend runs the captured graph without code generation, which keeps the test fast.
    # (aot_eager fails on CPU for diffusers' own AutoencoderKL too, in its GroupNorm on channels-last input.)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    assert_close(compiled(x).sample, expected, 1e-4, "compiled forward")


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_compiled_encoder_and_decoder_match_eager(name):
    torch._dynamo.reset()
    model, x = tiny(name), tiny_video(name)
    expected_z, expected = _run(model, x)
    for path in COMPILED_SUBMODULES[name]:
        model.get_submodule(path).compile(fullgraph=True, backend="eager")
    z, sample = _run(model, x)
    assert_close(z, expected_z, 1e-4, "latents, compiled submodules")
    assert_close(sample, expected, 1e-4, "sample, compiled submodules")


# --- gradient checkpointing ------------------------------------------------------------------------------------------


def _count_checkpointed_blocks(model) -> list[str]:
    """Wrap every `_gradient_checkpointing_func` the model set: the returned list names each block it checkpoints."""
    calls: list[str] = []
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):

            def counted(block, *args, _checkpoint=module._gradient_checkpointing_func, **kwargs):
                calls.append(type(block).__name__)
                return _checkpoint(block, *args, **kwargs)

            module._gradient_checkpointing_func = counted
    return calls


# Blocks that every forward of the tiny models must checkpoint (the residual blocks at least).
CHECKPOINTED_BLOCKS = {
    "ivvae": {"IVVAEResidualBlock", "IVVAEResidualBlock2d", "IVVAEAttentionBlock"},
    "odvae": {"ODVAEResnetBlock2D", "ODVAEResnetBlock3D", "ODVAEAttention"},
    "opensora": {"OpenSoraResidualBlock", "DownEncoderBlock2D", "UpDecoderBlock2D", "UNetMidBlock2D"},
}


@pytest.mark.parametrize("name", NAMES)
def test_gradient_checkpointing_runs_and_gives_the_same_gradients(name):
    model, x = tiny(name).train(), tiny_video(name)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(x).sample.square().mean().backward()
        return {key: p.grad.clone() for key, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.enable_gradient_checkpointing()
    calls = _count_checkpointed_blocks(model)
    checkpointed = gradients()
    assert CHECKPOINTED_BLOCKS[name] <= set(calls), f"checkpointed: {sorted(set(calls))}"
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for key, grad in plain.items():
        assert_close(checkpointed[key], grad, 1e-6, key)


# --- input dtype and configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_inputs_are_cast_to_the_model_dtype(name):
    model, x = tiny(name), tiny_video(name)
    expected_z, expected = _run(model, x)
    z, sample = _run(model, x.double())
    assert z.dtype == sample.dtype == torch.float32
    assert_close(z, expected_z, 1e-6, "latents of a float64 input")
    assert_close(sample, expected, 1e-6, "sample of a float64 input")
    model.to(torch.bfloat16)
    z, sample = _run(model, x)  # float32 input to a bfloat16 model
    assert z.dtype == sample.dtype == torch.bfloat16
    assert torch.isfinite(sample).all()
    assert float((sample.float() - expected).norm() / expected.norm()) < 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block_out_channels=(8, 8)), "block_out_channels has 2 levels, but down_block_types has 4"),
        (dict(up_block_types=("UpDecoderBlock2D",) * 3), "up_block_types 3"),
        (dict(temporal_downsample=(True,)), "temporal_downsample has 1 entries"),
        (dict(latents_std=(1.0, 1.0)), "one value per latent channel"),
    ],
)
def test_inconsistent_open_sora_config_is_refused(overrides, message):
    config = {**TINY["opensora"][1], **overrides}
    with pytest.raises(ValueError, match=message):
        AutoencoderKLOpenSora(**config)


# --- Open-Sora's spatial stage is diffusers' AutoencoderKL -----------------------------------------------------------


@torch.no_grad()
def test_open_sora_spatial_stage_computes_what_installed_diffusers_computes():
    """`_spatial_moments` / `_spatial_decode` re-run diffusers' `Encoder` / `Decoder.forward` in pieces (frame by
    frame, our folded upsampler): an upgrade of diffusers that changes those forwards must show up here."""
    from diffusers import AutoencoderKL

    model = tiny("opensora")
    reference = AutoencoderKL.from_config(model.spatial_vae.config).eval()
    reference.load_state_dict(model.spatial_vae.state_dict(), strict=True)
    frames = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = torch.randn(3, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    assert_close(
        model._spatial_moments(frames.split(1)), reference.encode(frames).latent_dist.parameters, 1e-5, "encode"
    )
    assert_close(model._spatial_decode(latents), reference.decode(latents).sample, 1e-5, "decode")


# --- what a plain enable_tiling() gives ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@torch.no_grad()
def test_plain_enable_tiling_is_each_models_documented_default(name):
    """IV-VAE: exact tiles (its only mode); OD-VAE and Open-Sora: the blended tiles, `exact=True` on request."""
    model = tiny(name)
    x = torch.rand(1, 3, 5, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    _, untiled = _run(model, x)
    model.enable_tiling(
        tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=16, tile_sample_stride_width=16
    )
    assert model.use_tiling
    _, plain = _run(model, x)
    difference = float((plain - untiled).abs().max())
    if name == "ivvae":
        assert difference < 1e-4 and model.tile_exact  # its only tiles: `exact=False` gives them too
    else:
        assert not model.tile_exact and difference > 1e-3  # blended tiles are not the untiled result
        model.enable_tiling(exact=True)
        assert model.tile_exact
        _, exact = _run(model, x)
        assert_close(exact, untiled, 1e-4, "exact tiles")
