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
"""IV-VAE's default tiles bound memory by the tile, and tiled calls leave the caller's tensors alone."""

from __future__ import annotations

import pytest
import torch
from _tiny_configs import TINY_CONFIGS

from diffusers_videovae.memory import LiveTensorBytes, _FusedAttention
from diffusers_videovae.models.iv_vae import AutoencoderKLIVVAE

# The release's layout (two residual blocks per level: halos of 40 px encoding, 56 px decoding) at tiny widths.
CONFIG = {**TINY_CONFIGS["ivvae"], "num_res_blocks": 2}
FRAMES = 5  # two causal chunks: the first frame, then a group of four


def traced_peak(model: AutoencoderKLIVVAE, op: str, height: int, width: int) -> int:
    """Peak bytes of the tensors an encode or decode creates, traced on `meta` (no arithmetic)."""
    latent_frames, spatial = 1 + (FRAMES - 1) // 4, model.config.spatial_compression_ratio
    with torch.no_grad(), LiveTensorBytes() as live, _FusedAttention():
        if op == "encode":
            model.encode(torch.zeros(1, 3, FRAMES, height, width, device="meta"))
        else:
            latents = torch.zeros(1, CONFIG["latent_channels"], latent_frames, height // spatial, width // spatial)
            model.decode(latents.to("meta"))
    return live.peak


@pytest.mark.parametrize("op", ["encode", "decode"])
def test_default_tiles_keep_the_peak_of_a_larger_frame_near_that_of_one_tile(op):
    """256 px (the default tile) runs in one piece; a 512 x 512 frame runs in tiles that read at most 256 px, halo
    included, so its peak exceeds the 256 x 256 one only by the whole-clip tensors at 1/8 resolution and the
    larger clip: 1.08x (encode) and 1.07x (decode) here; tiles whose core alone was 256 px reached 1.41x / 1.55x."""
    with torch.device("meta"):
        model = AutoencoderKLIVVAE(**CONFIG).eval()
    model.enable_tiling()
    ratio = traced_peak(model, op, 512, 512) / traced_peak(model, op, 256, 256)
    assert ratio <= 1.15, f"{op}: the 512 x 512 peak is {ratio:.2f}x the 256 x 256 one"


def test_tiles_read_at_most_the_tile_size_halo_included():
    model = AutoencoderKLIVVAE(**CONFIG)
    model.enable_tiling()  # 256 px = 32 latent px; halos of 5 (encode) and 7 (decode) latent px
    for direction, halo in model.tile_halo.items():
        tiles = model._spatial_tiles(90, 160, halo)  # a 720 x 1280 frame
        assert max(row.end - row.start for row, _ in tiles) == 32, direction
        assert max(column.end - column.start for _, column in tiles) == 32, direction
    assert model._tile_cores(model.tile_halo["decode"]) == (18, 18)  # 144 px
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=64)
    assert model._tile_cores(model.tile_halo["decode"]) == (4, 8)  # below four halos: the size is the core


@pytest.mark.parametrize("op", ["encode", "decode"])
@torch.no_grad()
def test_tiled_calls_leave_the_callers_tensor_unchanged(op):
    """Tiles read windows that are views of the caller's tensor; blocks overwrite intermediates in place under
    no_grad, never their input."""
    torch.manual_seed(0)
    model = AutoencoderKLIVVAE(**CONFIG).eval()
    model.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32)
    if op == "encode":
        given = torch.rand(1, 3, FRAMES, 64, 96) * 2 - 1
        before = given.clone()
        model.encode(given)
    else:
        given = torch.randn(1, CONFIG["latent_channels"], 2, 8, 12)
        before = given.clone()
        model.decode(given)
    assert torch.equal(given, before)
