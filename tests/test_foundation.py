"""The shared pieces every model relies on: input checks, tile planning, blending, safe checkpoint reading."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import assert_close

from diffusers_videovae.checkpoints._common import (
    CheckpointError,
    ConvertedCheckpoint,
    RenameRule,
    account_keys,
    build_model,
    check_output_dir,
    compare_with_model,
    load_state_dict_file,
    save_pretrained_atomic,
    unwrap_state_dict,
)
from diffusers_videovae.models._tiling import (
    blend,
    check_latents,
    check_video,
    halo_spans,
    nearest_valid_num_frames,
    tile_starts,
    tiled_with_shared_group_norm,
)

# ---------------------------------------------------------------- input checks


def test_check_video_accepts_a_valid_clip():
    check_video(torch.zeros(1, 3, 9, 16, 24), temporal_compression=4, spatial_multiple=8)


def test_check_video_names_the_frame_rule_and_nearest_valid_counts():
    with pytest.raises(ValueError, match=r"T = 1 \+ 4k.*Nearest valid frame counts: 9 or 13"):
        check_video(torch.zeros(1, 3, 11, 16, 16), temporal_compression=4)


def test_check_video_names_the_spatial_multiple_and_nearest_sizes():
    with pytest.raises(ValueError, match=r"multiples of 8.*H in \(16, 24\), W in \(24, 32\)"):
        check_video(torch.zeros(1, 3, 1, 20, 28), spatial_multiple=8)


@pytest.mark.parametrize(
    "tensor, error, message",
    [
        (torch.zeros(3, 9, 16, 16), ValueError, r"\(B, 3, T, H, W\) \(5 dims\)"),
        (torch.zeros(1, 4, 1, 16, 16), ValueError, "must have 3 channels"),
        (torch.zeros(1, 3, 1, 16, 16, dtype=torch.uint8), TypeError, "floating point"),
        (torch.full((1, 3, 1, 16, 16), float("nan")), ValueError, "NaN or infinite"),
        (torch.zeros(1, 3, 0, 16, 16), ValueError, "empty"),
    ],
)
def test_check_video_rejects_bad_input_clearly(tensor, error, message):
    with pytest.raises(error, match=message):
        check_video(tensor, temporal_compression=4, spatial_multiple=8)


def test_check_video_rejects_non_tensors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_video([[0.0]])


def test_check_latents_names_the_channel_count():
    with pytest.raises(ValueError, match=r"\(B, 16, t, h, w\)"):
        check_latents(torch.zeros(1, 8, 1, 4, 4), latent_channels=16)


def test_nearest_valid_num_frames():
    assert nearest_valid_num_frames(11, 4) == (9, 13)
    assert nearest_valid_num_frames(9, 4) == (9, 9)
    assert nearest_valid_num_frames(2, 4) == (1, 5)


# ---------------------------------------------------------------- tiles and blending


def test_tile_starts_cover_the_whole_extent_with_full_tiles():
    starts = tile_starts(100, 32, 24)
    assert starts == [0, 24, 48, 68]
    covered = torch.zeros(100, dtype=torch.bool)
    for start in starts:
        covered[start : start + 32] = True
    assert bool(covered.all())


def test_tile_starts_single_tile_when_it_fits():
    assert tile_starts(32, 32, 24) == [0]
    assert tile_starts(10, 32, 24) == [0]


def test_tile_starts_rejects_strides_that_skip_data():
    with pytest.raises(ValueError, match="must not exceed"):
        tile_starts(100, 16, 32)


def test_blend_is_a_linear_ramp_from_previous_to_current():
    previous = torch.zeros(1, 1, 1, 1, 8)
    current = torch.ones(1, 1, 1, 1, 8)
    out = blend(previous, current, extent=4, dim=-1)
    assert out.flatten().tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert current.flatten().tolist() == [1.0] * 8, "blend must not modify its input"


# ---------------------------------------------------------------- checkpoint reading


def test_load_state_dict_file_reads_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, tmp_path / "w.safetensors")
    torch.save(tensors, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load_state_dict_file(tmp_path / name)
        assert torch.equal(loaded["a.weight"], tensors["a.weight"])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_state_dict_file_never_executes_pickled_code(tmp_path, capsys, protocol):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"w": _Payload()}, handle, protocol=protocol)
    with pytest.raises(CheckpointError, match="never executes pickled code") as info:
        load_state_dict_file(path)
    assert "this must never run" not in capsys.readouterr().out
    # torch's own message advises re-running with weights_only=False, i.e. executing the pickle: never quoted.
    assert "weights_only" not in str(info.value) and "False" not in str(info.value)
    if protocol == 2:
        assert "(it asks for print)" in str(info.value)


def test_load_state_dict_file_rejects_truncated_files(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict_file(tmp_path / "cut.pth")


def test_load_state_dict_file_rejects_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(tmp_path / "empty.pth")


def test_unwrap_state_dict_finds_the_wrapper_and_strips_prefixes():
    loaded = {"ema_state_dict": {"module.a": torch.zeros(1), "module.b": torch.zeros(1)}, "epoch": 3}
    state, used = unwrap_state_dict(loaded, wrappers=("ema_state_dict", "state_dict"), strip_prefixes=("module.",))
    assert used == "ema_state_dict"
    assert sorted(state) == ["a", "b"]


def test_account_keys_renames_drops_and_lists_unknown_keys():
    original = {"enc.0.w": torch.zeros(1), "loss.disc.w": torch.zeros(1)}
    ours, dropped = account_keys(
        original, [RenameRule(r"enc\.(\d+)\.w", r"encoder.blocks.\1.weight")], {r"loss\..*": "training loss"}
    )
    assert list(ours) == ["encoder.blocks.0.weight"]
    assert dropped == {"loss.disc.w": "training loss"}
    with pytest.raises(CheckpointError, match=r"1 original key\(s\) are not known.*\n  mystery"):
        account_keys(
            {**original, "mystery": torch.zeros(1)}, [RenameRule(r"enc\.(\d+)\.w", r"x\1")], {r"loss\..*": ""}
        )


def test_compare_with_model_lists_missing_unexpected_and_mismatched():
    state = {"a": torch.zeros(2), "extra": torch.zeros(1), "b": torch.zeros(3)}
    with pytest.raises(CheckpointError) as info:
        compare_with_model(state, {"a": (2,), "b": (4,), "c": (1,)})
    text = str(info.value)
    assert "1 key(s) missing" in text and "c" in text
    assert "1 unexpected key(s)" in text and "extra" in text
    assert "b: checkpoint (3,) vs model (4,)" in text


def test_build_model_loads_strictly_and_casts():
    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class Tiny(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 2):
            super().__init__()
            self.proj = torch.nn.Linear(width, width)

    state = {"proj.weight": torch.eye(2), "proj.bias": torch.ones(2)}
    converted = ConvertedCheckpoint("tiny", "Tiny", {"width": 2}, state)
    model = build_model(Tiny, converted, torch.float16)
    assert model.proj.weight.dtype == torch.float16
    assert torch.equal(model.proj.bias.float(), torch.ones(2))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        build_model(Tiny, ConvertedCheckpoint("tiny", "Tiny", {"width": 3}, state))


def test_save_pretrained_atomic_leaves_nothing_on_failure(tmp_path):
    class Broken:
        def save_pretrained(self, path, **kwargs):
            (path / "partial.bin").write_bytes(b"x")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_atomic(Broken(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


class _Fine:
    """Saves like a diffusers model of ours: config.json naming our class + weights."""

    def save_pretrained(self, path, **kwargs):
        (path / "config.json").write_text('{"_class_name": "AutoencoderKLIVVAE"}')
        (path / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")


def test_save_pretrained_atomic_refuses_to_overwrite_by_default(tmp_path):
    save_pretrained_atomic(_Fine(), tmp_path / "out", model_card="old card")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_pretrained_atomic(_Fine(), tmp_path / "out")
    assert (tmp_path / "out" / "README.md").read_text() == "old card"
    save_pretrained_atomic(_Fine(), tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no staging or backup folder is left"


def test_save_pretrained_atomic_overwrite_never_deletes_files_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    save_pretrained_atomic(_Fine(), out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"Refusing to replace .*out: .*notes\.txt"):
        save_pretrained_atomic(_Fine(), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_save_pretrained_atomic_overwrite_refuses_a_folder_that_is_not_our_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(FileExistsError, match="'UNet2DModel', not a diffusers-videovae model"):
        save_pretrained_atomic(_Fine(), out, overwrite=True)
    assert (out / "config.json").read_text() == '{"_class_name": "UNet2DModel"}'


def test_save_pretrained_atomic_never_replaces_a_protected_source(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "original.safetensors").write_bytes(b"the original")
    with pytest.raises(FileExistsError, match="holds the checkpoint being converted"):
        save_pretrained_atomic(_Fine(), out, overwrite=True, protect=[out / "original.safetensors"])
    with pytest.raises(FileExistsError, match="holds the checkpoint being converted"):
        save_pretrained_atomic(_Fine(), out, overwrite=True, protect=[out])  # a release folder as the output
    assert (out / "original.safetensors").read_bytes() == b"the original"


def test_output_that_is_a_file_or_under_a_file_is_refused_by_name(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"file is a file, not a folder|exists and is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OSError, match=r"Cannot write output folder .*model: .*file is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "model")


def test_tile_cores_partition_the_frame_and_halos_stop_at_its_border():
    spans = halo_spans(16, 4, 5)
    assert [(span.core_start, span.core_end) for span in spans] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert [(span.start, span.end) for span in spans] == [(0, 9), (0, 13), (3, 16), (7, 16)]
    assert [(span.start, span.end, span.core_end) for span in halo_spans(10, 4, 2)][-1] == (6, 10, 10)


# ---------------------------------------------------------------- tiles that share GroupNorm statistics


class _PadConvDown(torch.nn.Module):
    """Zero-pad right/bottom, stride-2 3x3 conv: the downsampler of SD-style VAEs."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))


class _BilinearUp(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear"))


def _toy_encoder():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        _PadConvDown(8),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        _PadConvDown(8),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 4, 3, padding=1),
    )


def _toy_decoder():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        _BilinearUp(8),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        _BilinearUp(8),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 3, 3, padding=1),
    )


@torch.no_grad()
def test_shared_group_norm_tiles_equal_the_untiled_downsampling_stage():
    torch.manual_seed(0)
    encoder = _toy_encoder()
    # Inputs whose statistics differ from tile to tile: plain tiles would normalise each differently.
    x = torch.randn(2, 3, 48, 72) * torch.linspace(0.2, 3.0, 72) + torch.linspace(-1, 2, 48)[:, None]
    tiled = tiled_with_shared_group_norm(encoder, x, encoder, core=16, halo=16)  # 3 x 5 tiles
    assert_close(tiled, encoder(x), 1e-5, "tiled encoder stage")
    rectangles = tiled_with_shared_group_norm(encoder, x, encoder, core=(24, 16), halo=16)  # 2 x 5 tiles
    assert_close(rectangles, encoder(x), 1e-5, "tiled encoder stage, 24 x 16 cores")


@torch.no_grad()
def test_shared_group_norm_tiles_equal_the_untiled_upsampling_stage_on_frames_and_clips():
    torch.manual_seed(0)
    decoder = _toy_decoder()
    z = torch.randn(2, 4, 12, 18) * torch.linspace(0.5, 2.0, 18)
    assert_close(tiled_with_shared_group_norm(decoder, z, decoder, core=4, halo=4), decoder(z), 1e-5, "decoder")
    # (B, C, T, H, W): statistics over frames and pixels, as in clip-wide GroupNorms.
    block = torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU())
    clip = torch.randn(1, 4, 5, 20, 20) + torch.linspace(0, 3, 20)
    assert_close(tiled_with_shared_group_norm(block, clip, block, core=8, halo=2), block(clip), 1e-5, "clip")


@torch.no_grad()
def test_shared_group_norm_tiles_run_once_untiled_when_every_tile_reads_the_whole_input():
    encoder = _toy_encoder()
    calls = []

    def stage(x):
        calls.append(tuple(x.shape))
        return encoder(x)

    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(tiled_with_shared_group_norm(stage, x, encoder, core=16, halo=16), encoder(x))
    assert calls == [(1, 3, 32, 32)]


@torch.no_grad()
def test_shared_group_norm_tiles_need_a_halo_that_covers_the_receptive_field():
    torch.manual_seed(0)
    encoder = _toy_encoder()
    x = torch.randn(1, 3, 48, 48)
    # The toy encoder reaches 12 input pixels beyond its output; a 4-pixel halo is visibly wrong.
    short = tiled_with_shared_group_norm(encoder, x, encoder, core=16, halo=4)
    assert float((short - encoder(x)).abs().max()) > 1e-2


@torch.no_grad()
def test_shared_group_norm_tiles_restore_the_modules_afterwards():
    encoder = _toy_encoder()
    x = torch.randn(1, 3, 32, 32)
    tiled_with_shared_group_norm(encoder, x, encoder, core=16, halo=16)
    assert all("forward" not in module.__dict__ for module in encoder.modules())
    with pytest.raises(RuntimeError, match="not aligned"):
        tiled_with_shared_group_norm(encoder, x, encoder, core=10, halo=16)  # cores must be multiples of 4 here
    assert all("forward" not in module.__dict__ for module in encoder.modules())


def test_package_exports_are_lazy_and_complete():
    import diffusers_videovae

    assert diffusers_videovae.__version__
    assert {"AutoencoderKLIVVAE", "AutoencoderKLODVAE", "AutoencoderKLOpenSora", "load_model"} <= set(
        dir(diffusers_videovae)
    )
    with pytest.raises(AttributeError):
        diffusers_videovae.NotAThing  # noqa: B018
