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
"""The tiling contract shared by the five models: one `enable_tiling` signature and meaning, exact tiles on Reducio
and CascadeV, and tiles chosen through the command line within each model's limits."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _tiny_configs import SMALL_TILING_CONFIGS, TINY_CONFIGS
from conftest import reference_dir

from diffusers_videovae import (
    AutoencoderCascadeV,
    AutoencoderKLIVVAE,
    AutoencoderKLODVAE,
    AutoencoderKLOpenSora,
    AutoencoderKLReducio,
    memory,
)
from diffusers_videovae.checkpoints import convert_to_folder
from diffusers_videovae.cli import main
from diffusers_videovae.memory import LiveTensorBytes
from diffusers_videovae.models import _tiling
from diffusers_videovae.models.od_vae import ODVAEAttention

SMALL = {
    "ivvae": (AutoencoderKLIVVAE, TINY_CONFIGS["ivvae"]),
    "odvae": (AutoencoderKLODVAE, TINY_CONFIGS["odvae"]),
    "opensora": (AutoencoderKLOpenSora, TINY_CONFIGS["opensora"]),
    "reducio": (AutoencoderKLReducio, SMALL_TILING_CONFIGS["reducio"]),
    "cascadev": (AutoencoderCascadeV, SMALL_TILING_CONFIGS["cascadev"]),
}
NAMES = list(SMALL)


def small(name: str) -> torch.nn.Module:
    cls, config = SMALL[name]
    torch.manual_seed(0)
    model = cls(**config).eval()
    with torch.no_grad():  # random weights with some spread in every layer (default inits leave zero biases)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str) -> None:
    worst, scale = float((actual - expected).abs().max()), float(expected.abs().max())
    assert actual.shape == expected.shape and worst <= tolerance * scale, (
        f"{name}: max abs difference {worst:.3e} > {tolerance:.0e} x max |untiled| {scale:.3e}"
    )


# --- one signature, one meaning ------------------------------------------------------------------------------------

# What `enable_tiling(32, 32)` gives: the stride of blended tiles follows the size with each model's default ratio
# (OD-VAE 224/256, Open-Sora 192/256, Reducio 256/320, CascadeV 192/256), rounded down to the model's multiple;
# IV-VAE's halo tiles never overlap.
STRIDE_OF_32 = {"ivvae": 32, "odvae": 24, "opensora": 24, "reducio": 24, "cascadev": 24}


@pytest.mark.parametrize("name", NAMES)
def test_a_tile_size_without_its_stride_gets_a_stride_derived_from_it(name):
    model = small(name)
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
    assert model.use_tiling
    assert (model.tile_sample_min_height, model.tile_sample_min_width) == (32, 32)
    assert (model.tile_sample_stride_height, model.tile_sample_stride_width) == (STRIDE_OF_32[name],) * 2
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, exact=True)
    assert model.tile_exact and model.tile_sample_stride_height == 32  # exact tiles do not overlap


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("ivvae", dict(tile_sample_min_height=32, tile_sample_stride_height=16), "stride_height=16 cannot be used"),
        ("ivvae", dict(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=4), "do not overlap"),
        ("odvae", dict(tile_sample_min_height=32, tile_sample_stride_height=16, exact=True), "cannot be used"),
        ("odvae", dict(tile_sample_min_num_frames=9, exact=True), "exact tiles are not cut in time"),
        ("opensora", dict(tile_sample_min_num_frames=8), "micro_frame_size"),
        ("reducio", dict(tile_sample_stride_num_frames=16), "not cut in time"),
        ("reducio", dict(tile_sample_min_height=64), "larger than Reducio-VAE's largest tile"),
        ("cascadev", dict(tile_sample_min_num_frames=4), "not cut in time"),
        ("cascadev", dict(tile_sample_min_height=60), "multiple of 8"),
        ("cascadev", dict(tile_sample_min_height=64, tile_sample_stride_height=96), "at most"),
        ("opensora", dict(exact="yes"), "True or False"),
    ],
)
def test_an_argument_a_model_cannot_use_is_refused(name, arguments, message):
    model = small(name)
    with pytest.raises(ValueError, match=message):
        model.enable_tiling(**arguments)
    assert not model.use_tiling


@pytest.mark.parametrize("name", NAMES)
def test_each_model_states_its_tile_limits(name):
    model = small(name)
    limits = model.tiling_limits()
    assert limits.multiple == model.input_rule.spatial_multiple or name == "cascadev"
    assert (model.tile_sample_min_height, model.tile_sample_stride_height) == (
        limits.default_size,
        limits.default_stride(limits.default_size),
    )
    if name == "reducio":  # a blended tile runs the whole model: at most the attention window, 8 x 8 latents
        assert limits.max_size == limits.default_size == 32


# --- exact tiles on Reducio and CascadeV -----------------------------------------------------------------------


@torch.no_grad()
def test_reducio_exact_tiles_encode_and_decode_like_untiled():
    """32x32 frames in 8-px tiles (4 x 4), each reading a 12-px halo: the windowed cross-attention of the
    decoder's level 1 (16x16 queries, 16x16 context in 8x8 windows) runs on whole frames, as untiled."""
    model = small("reducio")
    video = torch.rand(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    frame = video[:, :, 7]
    moments = model.encode(video).latent_dist.mean
    latents = model.normalize_latents(moments)
    decoded = model.decode(latents, content_frame=frame).sample
    model.enable_tiling(8, 8, exact=True)
    assert_relative(model.encode(video).latent_dist.mean, moments, 1e-4, "exact tiled encode")
    assert_relative(model.decode(latents, content_frame=frame).sample, decoded, 1e-4, "exact tiled decode")
    features = model.encode_content(frame)
    assert not features.tiled  # whole-frame features: what exact decoding reads
    assert_relative(model.decode(latents, content_features=features).sample, decoded, 1e-4, "from features")


@torch.no_grad()
def test_cascadev_exact_tiles_decode_svd_latents_like_untiled():
    """192x192 px in 64-px tiles (3 x 3) around a halo of 6 latent pixels."""
    model = small("cascadev")
    latents = torch.randn(1, 4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    untiled = model.decode_svd_latents(latents, chunk_size=1)
    model.enable_tiling(64, 64, exact=True)
    assert_relative(model.decode_svd_latents(latents, chunk_size=1), untiled, 1e-4, "exact tiled SVD decode")


@torch.no_grad()
def test_reducio_exact_tiles_run_through_leaf_level_group_offload(tmp_path):
    """Offloaded to disk, a layer run outside its hooks would compute garbage: exact tiles call layers as modules."""
    model = small("reducio")
    video = torch.rand(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    moments = model.encode(video).latent_dist.mean
    model.enable_group_offload(torch.device("cpu"), offload_type="leaf_level", offload_to_disk_path=str(tmp_path))
    model.enable_tiling(8, 8, exact=True)
    assert_relative(model.encode(video).latent_dist.mean, moments, 1e-4, "exact tiles, offloaded")


# --- halo tiles of a stage that rounds sizes up (CascadeV's encoder) -------------------------------------------


def _stride_8_stage() -> torch.nn.Sequential:
    """Three stride-2 convolutions: 45 x 61 px -> 6 x 8 (sizes rounded up, as padded strided convolutions do); an
    output pixel reads 7 input pixels beyond its own 8."""
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Conv2d(c, 4, 3, stride=2, padding=1) for c in (3, 4, 4))).eval()


@torch.no_grad()
def test_shared_group_norm_tiles_paste_a_stage_that_rounds_sizes_up():
    """With `scale=1/8`, 16-px cores of a 45 x 61 frame (3 x 4 tiles, those at the border ending between grid
    points) are pasted where the stage run in one piece puts them."""
    stage, x = _stride_8_stage(), torch.randn(1, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    tiles = []

    def counted(tile: torch.Tensor) -> torch.Tensor:
        tiles.append(tuple(tile.shape[-2:]))
        return stage(tile)

    tiled = _tiling.tiled_with_shared_group_norm(counted, x, stage, core=16, halo=8, scale=Fraction(1, 8))
    assert len(tiles) == 3 * 4 and all(height <= 32 and width <= 32 for height, width in tiles)
    assert_relative(tiled, stage(x), 1e-6, "stride-8 stage in tiles, sizes rounded up")


@torch.no_grad()
def test_tiles_of_a_stage_that_rounds_sizes_up_must_start_on_its_grid():
    stage, x = _stride_8_stage(), torch.randn(1, 3, 45, 61)
    with pytest.raises(ValueError, match="start on its grid"):
        _tiling.tiled_with_shared_group_norm(stage, x, stage, core=12, halo=8, scale=Fraction(1, 8))


@torch.no_grad()
def test_a_stage_that_rounds_sizes_up_cannot_share_group_norm_statistics():
    stage = torch.nn.Sequential(_stride_8_stage(), torch.nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="cannot share GroupNorm statistics"):
        _tiling.tiled_with_shared_group_norm(stage, torch.randn(1, 3, 45, 61), stage, 16, 8, scale=Fraction(1, 8))


# --- what exact tiles hold in memory ------------------------------------------------------------------------------


def _traced_peak(model: torch.nn.Module, call, *args) -> int:
    """Peak bytes of the tensors `call(*args)` creates, traced on `meta`. Unlike `memory.estimate_memory` this
    keeps PyTorch's own attention dispatch, so an unfused attention's `(H*W)^2` matrix is counted as on a CPU."""
    with torch.no_grad(), LiveTensorBytes() as live:
        call(*args)
    return live.peak


@pytest.mark.parametrize("op", ["encode", "decode"])
def test_odvae_exact_tiles_peak_below_untiled_on_a_frame_many_tiles_wide(op):
    """OD-VAE's attention tokens take the unfused CPU attention, whose whole-frame matrices set the untiled peak of
    a small model on a large frame (9 x 512 x 768: 64 x 96 latent pixels, 4 x 6 tiles of 128 px); exact tiles run
    it per frame and in query chunks, and their peak stays well below untiled (before: equal)."""
    with torch.device("meta"):
        model = AutoencoderKLODVAE(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
    model = torch.nn.Module.to(model, "meta").eval()
    if op == "encode":
        call, data = (lambda x: model.encode(x)), torch.zeros(1, 3, 9, 512, 768, device="meta")
    else:
        call, data = (lambda z: model.decode(z)), torch.zeros(1, 4, 3, 64, 96, device="meta")
    untiled = _traced_peak(model, call, data)
    model.enable_tiling(128, 128, exact=True)
    exact = _traced_peak(model, call, data)
    assert exact < 0.6 * untiled, f"{op}: exact tiles peak {exact / 2**20:.1f} MiB, untiled {untiled / 2**20:.1f} MiB"


def test_odvae_exact_encode_runs_its_per_frame_levels_one_frame_at_a_time():
    """The encoder's 2D stem, 2D resnets (per-frame GroupNorms) and 2D downsampler run one frame at a time, so the
    whole clip is held only from the first 3D layer on, at half resolution: 9 x 128 x 192 in 32-px tiles, traced
    peak 0.15 x untiled (0.45 x with every step over the whole clip)."""
    with torch.device("meta"):
        model = AutoencoderKLODVAE(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
    model = torch.nn.Module.to(model, "meta").eval()
    video = torch.zeros(1, 3, 9, 128, 192, device="meta")
    untiled = _traced_peak(model, model.encode, video)
    model.enable_tiling(32, 32, exact=True)
    exact = _traced_peak(model, model.encode, video)
    assert exact < 0.3 * untiled, f"exact tiles peak {exact / 2**20:.1f} MiB, untiled {untiled / 2**20:.1f} MiB"


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_odvae_attention_in_query_chunks_equals_whole_frames(chunk):
    """Every query still attends to all keys of its own frame, whatever the chunk (1024 covers a frame)."""
    torch.manual_seed(0)
    attention = ODVAEAttention(16, groups=4).eval()
    x = torch.randn(2, 16, 3, 5, 6)
    whole = attention(x)
    attention.query_chunk_size = chunk
    assert_relative(attention(x), whole, 1e-5, f"attention in chunks of {chunk} queries")


@torch.no_grad()
def test_exact_tiles_keep_step_boundaries_on_the_offload_device():
    """`offload_device` keeps each step's whole output there and returns the result there, equal to without it."""
    model = small("odvae")
    z = torch.randn(1, 4, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    model.enable_tiling(32, 32, exact=True)
    kept = model.decode(z).sample
    seen = []
    original = _tiling.tiled_with_shared_group_norm

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((kwargs.get("out_device"), out.device))
        return out

    model.tile_offload_device = "cpu"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_tiling, "tiled_with_shared_group_norm", spy)
        offloaded = model.decode(z).sample
    assert seen and all(wanted == torch.device("cpu") and device.type == "cpu" for wanted, device in seen), seen
    assert_relative(offloaded, kept, 1e-6, "exact tiles with offloaded step boundaries")


# --- exact tiles' step boundaries out of core (`tile_offload_device`) ---------------------------------------------


@pytest.fixture
def spills(monkeypatch) -> list:
    """Every `SpilledTensor` made while the test runs (a step boundary kept on disk)."""
    made = []

    class Recorded(_tiling.SpilledTensor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_tiling, "SpilledTensor", Recorded)
    return made


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the open files in /proc (Linux)")


def _open_files_in(folder: Path) -> list[str]:
    """The files in `folder` this process holds open; a spilled boundary has no name there (`/proc` shows where
    it lives, e.g. `folder/#123 (deleted)`)."""
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            pass  # the descriptor `iterdir` itself held
    return [link for link in links if link.startswith(f"{folder}/")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_spilled_tensor_reads_back_the_windows_written_to_it(tmp_path, dtype):
    clip = torch.randn(2, 3, 4, 10, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
    spilled = _tiling.SpilledTensor(clip.shape, dtype, tmp_path)
    for t in range(4):  # frame by frame, as the per-frame steps assemble a clip
        spilled[:, :, t : t + 1] = clip[:, :, t : t + 1]
    assert torch.equal(spilled[..., 2:7, 3:11], clip[..., 2:7, 3:11])
    spilled[..., :5, 6:] = clip[..., :5, 6:] * 2  # a tile's core
    expected = clip.clone()
    expected[..., :5, 6:] *= 2
    assert torch.equal(spilled.to("cpu"), expected)
    assert torch.equal(spilled[:, 1:, 2:3, :, 11:], expected[:, 1:, 2:3, :, 11:])
    frames = _tiling.SpilledTensor((3, 2, 8, 8), dtype, tmp_path)  # frames as the batch (N, C, H, W)
    frames[...] = clip[0, :2, :3, :8, :8].transpose(0, 1)
    assert torch.equal(frames[1:, :, 3:, :5], clip[0, :2, 1:3, 3:8, :5].transpose(0, 1))
    with pytest.raises(RuntimeError, match="gradients"):
        frames[...] = frames[...].requires_grad_()
    spilled.close()
    assert spilled.closed and list(tmp_path.iterdir()) == []


def test_tile_offload_device_takes_none_a_device_disk_a_folder_or_auto(tmp_path):
    assert _tiling.offload_place(None) is None and _tiling.offload_place("auto") == "auto"
    assert _tiling.offload_place("cpu") == torch.device("cpu")
    assert _tiling.offload_place("disk") == Path(tempfile.gettempdir())
    assert _tiling.offload_place(str(tmp_path)) == tmp_path == _tiling.offload_place(tmp_path)
    for wrong in ("dsik", str(tmp_path / "missing"), 3):
        with pytest.raises(ValueError, match="`tile_offload_device` must be None, 'auto', a device"):
            _tiling.offload_place(wrong)


def _exact_calls(name: str, model: torch.nn.Module) -> dict:
    """Calls whose exact tiles keep whole step boundaries, on small inputs several tiles wide, and the tile size."""
    generator = torch.Generator().manual_seed(0)
    if name == "odvae":
        video = torch.rand(1, 3, 5, 32, 64, generator=generator) * 2 - 1
        z = torch.randn(1, 4, 2, 8, 12, generator=generator)
        calls = {"encode": lambda: model.encode(video).latent_dist.mean, "decode": lambda: model.decode(z).sample}
        return {"tile": 16, "calls": calls}
    if name == "opensora":
        video = torch.rand(1, 3, 5, 32, 48, generator=generator) * 2 - 1
        z = torch.randn(1, 4, 2, 4, 6, generator=generator)
        calls = {"encode": lambda: model.encode(video).latent_dist.mode(), "decode": lambda: model.decode(z).sample}
        return {"tile": 16, "calls": calls}
    if name == "reducio":
        video = torch.rand(1, 3, 16, 32, 32, generator=generator) * 2 - 1
        z = torch.randn(1, 4, 4, 8, 8, generator=generator)
        calls = {
            "encode": lambda: model.encode(video).latent_dist.mean,
            "decode": lambda: model.decode(z, content_frame=video[:, :, 7]).sample,
        }
        return {"tile": 8, "calls": calls}
    latents = torch.randn(1, 4, 1, 24, 24, generator=generator)
    return {"tile": 64, "calls": {"SVD decode": lambda: model.decode_svd_latents(latents, chunk_size=1)}}


@torch.no_grad()
@pytest.mark.parametrize("name", ["odvae", "opensora", "reducio", "cascadev"])
def test_exact_tiles_spilled_to_disk_equal_untiled(name, tmp_path, spills):
    """`tile_offload_device` set to a folder: every step boundary goes to a file there (freed by the end of the
    call), and the result is the untiled one; the tiles compute the same as with boundaries in memory."""
    model = small(name)
    setting = _exact_calls(name, model)
    untiled = {call: run() for call, run in setting["calls"].items()}
    model.enable_tiling(setting["tile"], setting["tile"], exact=True)
    model.tile_offload_device = None
    in_memory = {call: run() for call, run in setting["calls"].items()}
    assert spills == []
    model.tile_offload_device = str(tmp_path)
    for call, run in setting["calls"].items():
        made = len(spills)
        spilled = run()
        assert len(spills) > made, f"{call}: no step boundary was spilled"
        assert_relative(spilled, untiled[call], 1e-4, f"{name} {call}, exact tiles spilled to disk")
        assert torch.equal(spilled, in_memory[call]), f"{call}: spilled and in-memory exact tiles differ"
    assert all(spill.closed for spill in spills) and list(tmp_path.iterdir()) == []


@torch.no_grad()
def test_auto_spills_step_boundaries_on_the_cpu_unless_the_temp_folder_is_a_ram_disk_or_full(
    monkeypatch, tmp_path, spills
):
    """On the CPU `"auto"` (the default) keeps exact tiles' step boundaries in the temp folder, so that their peak is
    one tile's step whatever the frame; in memory where that folder is a RAM disk or has no room, while they fit."""
    model = small("odvae")
    z = torch.randn(1, 4, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    model.enable_tiling(32, 32, exact=True)
    assert model.tile_offload_device == "auto"  # the default
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_tiling, "_ram_disk", lambda folder: None)
    spilled = model.decode(z).sample
    assert spills and all(spill.closed for spill in spills) and list(tmp_path.iterdir()) == []
    made = len(spills)
    monkeypatch.setattr(_tiling, "_ram_disk", lambda folder: "tmpfs")
    assert torch.equal(model.decode(z).sample, spilled) and len(spills) == made
    monkeypatch.setattr(_tiling, "_ram_disk", lambda folder: None)
    monkeypatch.setattr(_tiling.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    assert torch.equal(model.decode(z).sample, spilled) and len(spills) == made
    monkeypatch.setattr(_tiling, "available_memory_bytes", lambda device: 0)
    with pytest.raises(RuntimeError, match="set `tile_offload_device` to another folder"):
        model.decode(z)


@pytest.mark.parametrize(
    ("device", "free", "expected"),
    [
        ("cpu", {"cpu": 2**40, "disk": 2**22}, "folder"),  # the CPU spills whatever memory is free
        ("cpu", {"cpu": 2**40, "disk": 2**22 - 1}, None),  # unless that takes over a quarter of the free disk
        ("cuda", {"cuda": 2**40, "cpu": 2**40, "disk": 2**40}, None),  # an accelerator keeps what fits a quarter
        ("cuda", {"cuda": 2**20, "cpu": 2**40, "disk": 2**40}, "cpu"),  # then CPU memory
        ("cuda", {"cuda": 2**20, "cpu": 2**20, "disk": 2**40}, "folder"),  # then disk
    ],
)
def test_auto_places_a_boundary_by_the_device_the_tiles_run_on(monkeypatch, tmp_path, device, free, expected):
    """`"auto"` for a 1 MiB boundary. Tensors without data are placed as on the device a trace stands for
    (`traced_as`, what `estimate_memory` sets): a folder (counted as a spill) wherever that device would not hold it,
    never a real CPU tensor."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(_tiling, "_ram_disk", lambda folder: None)
    monkeypatch.setattr(_tiling, "available_memory_bytes", lambda where: free[where.type])
    monkeypatch.setattr(_tiling.shutil, "disk_usage", lambda folder: SimpleNamespace(free=free["disk"]))
    like = torch.zeros(1, device="meta")
    with memory.traced_as(torch.device(device)):
        place = _tiling._boundary_place("auto", like, 2**18)
    assert place == {None: None, "folder": tmp_path, "cpu": tmp_path}[expected]
    if device == "cpu":
        assert _tiling._boundary_place("auto", torch.zeros(1), 2**18) == place  # a CPU tensor with data alike
    with memory.traced_as(torch.device(device)):
        assert _tiling._boundary_place("auto", like.requires_grad_(), 2**18) is None  # a file carries no gradients


@needs_proc
@torch.no_grad()
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_spill_files_are_freed_after_the_call_and_after_an_exception_mid_way(tmp_path, error):
    model = small("odvae")
    z = torch.randn(1, 4, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    model.enable_tiling(16, 16, exact=True)
    model.tile_offload_device = str(tmp_path)
    open_files, steps = [], model.decoder.high_res_steps()

    def look(module, args, output):
        open_files.append(len(_open_files_in(tmp_path)))

    def stop(module, args, output):
        if len(open_files) == 3:  # the third tile of a step half-way through the stage
            raise error("stopped mid-way")

    handle = model.decoder.conv_out.register_forward_hook(look)
    model.decode(z)
    assert min(open_files) >= 1, "the last step's input should be on disk while it runs"
    assert _open_files_in(tmp_path) == [] and list(tmp_path.iterdir()) == []
    open_files.clear()
    middle = steps[len(steps) // 2].modules
    handles = [module.register_forward_hook(look) for module in (middle if isinstance(middle, list) else [middle])]
    handles += [module.register_forward_hook(stop) for module in (middle if isinstance(middle, list) else [middle])]
    with pytest.raises(error, match="mid-way") as caught:
        model.decode(z)
    assert open_files and min(open_files) >= 1
    # The traceback (kept here, as a notebook keeps the last one) still holds the call's frames.
    assert caught.tb is not None and _open_files_in(tmp_path) == [], "a spilled boundary outlived its call"
    for each in [handle, *handles]:
        each.remove()


def test_spilled_exact_tiles_hold_no_step_boundary_in_a_traced_run():
    """OD-VAE (32, 16, 16, 16), 5 frames, 32-px tiles, traced on `meta` at 64x64 and 128x128 (2 x 2 and 4 x 4
    tiles): with the step boundaries on disk the peak grows 1.13x (decode) and 1.11x (encode) for 4x the pixels
    (the decoded clip itself, and the latent-resolution layers); kept in memory, 2.9x and 3.1x."""
    with torch.device("meta"):
        model = AutoencoderKLODVAE(block_out_channels=(32, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
    model = torch.nn.Module.to(model, "meta").eval()
    model.enable_tiling(32, 32, exact=True)
    model.tile_offload_device = "disk"
    peaks = {}
    for size in (64, 128):
        video = torch.zeros(1, 3, 5, size, size, device="meta")
        z = torch.zeros(1, 4, 2, size // 8, size // 8, device="meta")
        peaks["encode", size] = _traced_peak(model, model.encode, video)
        peaks["decode", size] = _traced_peak(model, model.decode, z)
    for op in ("encode", "decode"):
        growth = peaks[op, 128] / peaks[op, 64]
        assert growth < 1.25, f"{op}: traced peak {growth:.2f}x at 4x the pixels with the boundaries on disk"


# --- tiles through the command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reducio_dir(tmp_path_factory) -> Path:
    """The tiny Reducio fixture converted to a diffusers folder: attention window 8 latent positions (64 px)."""
    ref = reference_dir("reducio")
    output = tmp_path_factory.mktemp("reducio") / "tiny-diffusers"
    original = ref / "tiny_original.ckpt"
    return convert_to_folder("reducio", original, output, original_config=ref / "tiny_config.yaml", verbose=False)


# 72x72 frames (16 of them, one Reducio clip): past the 64-px window, where untiled fails.
PAST_THE_WINDOW = ("--frames", 16, "--size", 72)


def test_cli_tiles_reducio_frames_past_its_attention_window(reducio_dir, tmp_path):
    """`videovae` as a user runs it: its tiles stay within the window (64-px tiles, the largest that fits)."""
    output = tmp_path / "r.mp4"
    script = Path(sys.executable).parent / "videovae"
    command = [script, "reconstruct", "-m", reducio_dir, "-o", output, *PAST_THE_WINDOW, "--tiling", "auto"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert output.is_file()
    assert "tiling on (auto: frames larger than 64 px; 64 px tiles" in result.stdout


def _reconstruct(capsys, reducio_dir, tmp_path, *options) -> tuple[int, str]:
    code = main(list(map(str, ["reconstruct", "-m", reducio_dir, "-o", tmp_path / "r.mp4", *options])))
    return code, capsys.readouterr().err


def test_cli_tiling_on_runs_reducio_frames_past_its_attention_window(capsys, reducio_dir, tmp_path):
    """`--tiling on` without a size: the default tile of such frames is within the window (in this process; the real
    command runs in the test above)."""
    code, err = _reconstruct(capsys, reducio_dir, tmp_path, *PAST_THE_WINDOW, "--tiling", "on")
    assert code == 0, err
    assert (tmp_path / "r.mp4").is_file()


@pytest.mark.parametrize("tiling", ["off", "exact"])
def test_cli_names_its_flags_when_reducio_frames_pass_the_window(capsys, reducio_dir, tmp_path, tiling):
    code, err = _reconstruct(capsys, reducio_dir, tmp_path, *PAST_THE_WINDOW, "--tiling", tiling)
    assert code != 0
    assert "--tiling on --tile-size 64" in err and "enable_tiling" not in err


def test_cli_refuses_a_tile_larger_than_reducio_runs_in_one_piece(capsys, reducio_dir, tmp_path):
    code, err = _reconstruct(capsys, reducio_dir, tmp_path, *PAST_THE_WINDOW, "--tiling", "on", "--tile-size", 72)
    assert code != 0 and "--tile-size 64 or smaller" in err


# -- blended tiles are stitched as they come --------------------------------------------------------------------------


def _traced_default_tile_decode(name: str, height: int, width: int) -> tuple[int, int]:
    """(peak bytes a default-tile decode of 5 frames creates, bytes of its output), traced on meta, 32-px tiles."""
    cls, config = SMALL[name]
    with torch.device("meta"):
        model = cls(**config).eval()
    model.enable_tiling(32, 32)
    spatial, temporal = model.config.spatial_compression_ratio, model.config.temporal_compression_ratio
    latents = torch.zeros(
        1, model.config.latent_channels, 1 + 4 // temporal, height // spatial, width // spatial, device="meta"
    )
    extra = {"num_frames": 5} if name == "opensora" else {}
    with torch.no_grad(), LiveTensorBytes() as live:
        out = model.decode(latents, **extra).sample
    return live.peak, out.numel() * out.element_size()


@pytest.mark.parametrize("name", ["odvae", "opensora"])
def test_default_tile_decode_holds_one_tile_and_the_output(name):
    """Each decoded tile is blended into the output as it comes (`_tiling.stitch_tiles_as_they_come`): a frame of
    5 x 6 tiles needs what one tile needs plus its output, not the grid of decoded tiles (about 1.8x the output
    with these overlaps), which a whole-grid stitch holds besides the output."""
    one_tile, _ = _traced_default_tile_decode(name, 32, 32)
    peak, output = _traced_default_tile_decode(name, 128, 160)
    assert peak <= 1.1 * one_tile + 1.25 * output, f"{peak / 2**20:.1f} MiB vs {one_tile / 2**20:.1f} + output"
