"""The tiny random configs of the models, written once: tests and the benchmarks' `--quick` runs build them.

Each is the release's layer layout at widths that run in well under a second on a CPU. A test that needs another
shape overrides a field: `{**TINY_CONFIGS["odvae"], "layers_per_block": 2}`.
"""

from __future__ import annotations

from typing import Any

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "ivvae": dict(latent_channels=8, base_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=1),
    "odvae": dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1),
    # The release's layer types (attention in both mid blocks) at tiny widths.
    "opensora": dict(
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        temporal_filters=4,
        temporal_num_res_blocks=1,
        temporal_num_groups=2,
    ),
    # The tiny fixture's layout: 2 levels of fusion, attention windows that take effect at 32 px.
    "reducio": dict(
        latent_channels=4,
        z_channels=8,
        conv_in_channels=32,  # GroupNorm has 32 groups: 32 channels is the narrowest
        block_out_channels=(64, 32, 32, 32),
        layers_per_block=1,
        content_conv_in_channels=32,
        content_block_out_channels=(32, 64, 32),
        fusion_feature_index=(-1, 1, 2, -1),
        window_size=8,
        content_window_size=4,
    ),
}

# Smaller Reducio and CascadeV layouts for tiling (tests/test_tiling.py, `bench_exact_tiles.py --quick`): Reducio with
# 3 levels (4x) and an attention window of 8 latent positions, so frames up to 32 px run untiled; CascadeV with a
# one-layer DiT and a one-resnet SVD decoder.
SMALL_TILING_CONFIGS: dict[str, dict[str, Any]] = {
    "reducio": dict(
        latent_channels=4,
        z_channels=8,
        conv_in_channels=16,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        content_conv_in_channels=16,
        content_block_out_channels=(16, 16, 16),
        fusion_feature_index=(-1, 1, -1),
        attention_num_heads=2,
        fusion_head_dim=8,
        window_size=8,
        content_window_size=4,
        norm_num_groups=4,
    ),
    "cascadev": dict(
        with_previewer=False,
        transformer_hidden_size=72,
        transformer_num_layers=1,
        transformer_num_attention_heads=2,
        transformer_sample_size=8,
        svd_block_out_channels=(32, 32, 32, 32),
        svd_layers_per_block=1,
    ),
}
