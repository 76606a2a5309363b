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
"""Reading the ORIGINAL IV-VAE release (ali-vilab/iv-vae, `models/vae3d.py`, weights on ModelScope).

* Variants: four `ivvae_z{Z}_dim{C}.pth` files, all with the same layout; only the latent channels `Z`, the base
  width `C` and the latent scaling constants (hard-coded in the original's `IV_VAE` factory) differ.
* File: a plain `torch.save`d state dict (no wrapper, no prefix, nothing to drop), read with `weights_only=True`.
* Keys: a rename table (`RENAME_RULES`; nothing is `DROPPED`) plus one handler: pairs of 1x1 convolutions that read the same input
  (`conv_2d` + `conv_3d` of the original's kernel-1 `Sep_Conv3d`) become one convolution in our model, and the
  latent projection's outputs are reordered to `[mean | logvar]`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from ._common import (
    CheckpointError,
    ConvertedCheckpoint,
    OriginalCheckpoint,
    RenameRule,
    account_keys,
    finish_conversion,
    load_state_dict_file,
    read_json,
    resolve_variant,
    unwrap_state_dict,
)

MODEL_TYPE = "ivvae"
MODEL_NAME = "IV-VAE"
CLASS_NAME = "AutoencoderKLIVVAE"
ORIGINAL_REPO = "https://github.com/ali-vilab/iv-vae"

# Latent normalisation of each release (the original's IV_VAE factory): `(z - shift_factor) * scaling_factor`.
LATENT_NORMALIZATION: dict[str, dict[str, float]] = {
    "ivvae_z4_dim64": {"scaling_factor": 1.3196, "shift_factor": 0.1250},
    "ivvae_z8_dim64": {"scaling_factor": 1.0940, "shift_factor": -0.0322},
    "ivvae_z16_dim64": {"scaling_factor": 0.9697, "shift_factor": -0.1553},
    "ivvae_z16_dim96": {"scaling_factor": 0.7619, "shift_factor": -0.0483},
}


def _original_config(z_dim: int, dim: int, variant: str) -> dict[str, Any]:
    return {
        "z_dim": z_dim,
        "dim": dim,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        "scale_factor": LATENT_NORMALIZATION[variant]["scaling_factor"],
        "shift_factor": LATENT_NORMALIZATION[variant]["shift_factor"],
    }


# Variant name -> the original's `VAutoencoder3d` keyword arguments.
VARIANTS: dict[str, dict[str, Any]] = {
    name: _original_config(z_dim, dim, name)
    for name, (z_dim, dim) in {
        "ivvae_z4_dim64": (4, 64),
        "ivvae_z8_dim64": (8, 64),
        "ivvae_z16_dim64": (16, 64),
        "ivvae_z16_dim96": (16, 96),
    }.items()
}
DEFAULT_VARIANT = "ivvae_z16_dim64"

# Original config key -> our config key (`attn_scales` must be empty: no release uses it, and we do not build it).
CONFIG_NAMES = {
    "z_dim": "latent_channels",
    "dim": "base_dim",
    "dim_mult": "dim_mult",
    "num_res_blocks": "num_res_blocks",
    "temperal_downsample": "temporal_downsample",
    "dropout": "dropout",
    "scale_factor": "scaling_factor",
    "shift_factor": "shift_factor",
}

# Keys that identify the release layout (used to detect the model type of a bare file and to infer the variant).
_BASE_WIDTH_KEY = "encoder.conv1.conv_2d.weight"  # (C, 3, 3, 3)
_LATENT_KEY = "conv1.conv_2d.weight"  # (Z, 2Z, 1, 1)
_SIGNATURE_KEYS = (
    _BASE_WIDTH_KEY,
    _LATENT_KEY,
    "encoder.head.2.PAC_conv.conv.weight",
    "decoder.head.2.conv_3d.weight",
)

_P = r"(?P<p>weight|bias)"
_H = r"(?P<h>2d|3d)"
# Leaves inside the original's flat block lists (`downsamples.N`, `upsamples.N`, `middle.N`).
_BLOCK_LEAVES = [
    (r"residual\.0\.gamma", "norm1.gamma"),
    (r"residual\.3\.gamma", "norm2.gamma"),
    (rf"residual\.2\.conv_{_H}\.{_P}", r"conv1.conv_\g<h>.\g<p>"),  # 3D block
    (rf"residual\.6\.conv_{_H}\.{_P}", r"conv2.conv_\g<h>.\g<p>"),
    (rf"residual\.2\.conv\.{_P}", r"conv1.\g<p>"),  # 2D block
    (rf"residual\.6\.conv\.{_P}", r"conv2.\g<p>"),
    (rf"shortcut\.conv\.{_P}", r"conv_shortcut.\g<p>"),
    (rf"Attention_{_H}\.norm\.gamma", r"attn_\g<h>.norm.gamma"),
    (rf"Attention_{_H}\.(?P<m>to_qkv|proj)\.{_P}", r"attn_\g<h>.\g<m>.\g<p>"),
    (rf"resample_{_H}\.1\.{_P}", r"conv_\g<h>.\g<p>"),
    (rf"time_conv\.{_P}", r"time_conv.\g<p>"),
]
_BLOCK_LISTS = {
    "encoder.downsamples": "encoder.down_blocks",
    "encoder.middle": "encoder.mid_blocks",
    "decoder.upsamples": "decoder.up_blocks",
    "decoder.middle": "decoder.mid_blocks",
}
_PAC_BRANCHES = ["0", "1", "3", "6", "9", "12"]  # PAC_<dilation>, in the order the original concatenates them

RENAME_RULES: list[RenameRule] = [
    RenameRule(rf"encoder\.conv1\.conv_{_H}\.{_P}", r"encoder.conv_in.conv_\g<h>.\g<p>"),
    RenameRule(r"encoder\.head\.0\.gamma", "encoder.norm_out.gamma"),
    *[
        RenameRule(rf"encoder\.head\.2\.PAC_{branch}\.conv\.{_P}", rf"encoder.conv_out.branches.{index}.\g<p>")
        for index, branch in enumerate(_PAC_BRANCHES)
    ],
    RenameRule(rf"encoder\.head\.2\.PAC_conv\.conv\.{_P}", r"encoder.conv_out.proj.\g<p>"),
    RenameRule(rf"decoder\.conv1\.conv\.{_P}", r"decoder.conv_in.\g<p>"),
    RenameRule(r"decoder\.head\.0\.gamma", "decoder.norm_out.gamma"),
    RenameRule(rf"decoder\.head\.2\.conv_{_H}\.{_P}", r"decoder.conv_out.conv_\g<h>.\g<p>"),
    *[
        RenameRule(rf"{re.escape(original)}\.(?P<i>\d+)\.{leaf}", rf"{ours}.\g<i>.{target}")
        for original, ours in _BLOCK_LISTS.items()
        for leaf, target in _BLOCK_LEAVES
    ],
]
# The release files hold the VAE only: every key is converted.
DROPPED: dict[str, str] = {}

# Kernel-1 Sep_Conv3d pairs (`<prefix>.conv_2d` + `<prefix>.conv_3d`) -> one 1x1x1 convolution of ours.
_FUSED_PAIRS = [
    (r"conv1", "quant_conv"),
    (r"conv2", "post_quant_conv"),
    (r"(?P<list>encoder\.downsamples|decoder\.upsamples)\.(?P<i>\d+)\.shortcut", None),
]


def looks_like(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when `state_dict` has the original IV-VAE release layout."""
    return all(key in state_dict for key in _SIGNATURE_KEYS)


def read_original(
    path: str | os.PathLike, original_config: str | os.PathLike | None = None, **options: Any
) -> OriginalCheckpoint:
    """Open an original `.pth` (or a safetensors copy) safely; `original_config` is a JSON of `VAutoencoder3d`'s
    keyword arguments (needed only for non-released sizes)."""
    loaded = load_state_dict_file(path)
    state_dict, wrapper = unwrap_state_dict(loaded, wrappers=("state_dict",), strip_prefixes=("module.",))
    config = read_json(original_config) if original_config is not None else None
    return OriginalCheckpoint(
        state_dict=state_dict, original_config=config, source=str(path), info={"wrapper": wrapper}
    )


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The released variant whose (latent channels, base width) match the tensor shapes, or None."""
    if not looks_like(state_dict):
        return None
    base_width = state_dict[_BASE_WIDTH_KEY].shape[0]
    latent_channels = state_dict[_LATENT_KEY].shape[0]
    for name, config in VARIANTS.items():
        if (config["z_dim"], config["dim"]) == (latent_channels, base_width):
            return name
    return None


def translate_config(original_config: dict[str, Any]) -> dict[str, Any]:
    """The original's `VAutoencoder3d` keyword arguments -> our `AutoencoderKLIVVAE` config."""
    unknown = sorted(set(original_config) - set(CONFIG_NAMES) - {"attn_scales"})
    if unknown:
        raise CheckpointError(f"Unknown keys in the original IV-VAE config: {unknown}")
    if list(original_config.get("attn_scales", [])):
        raise CheckpointError(
            f"attn_scales={original_config['attn_scales']} is not supported (every release uses [])."
        )
    config = {ours: original_config[name] for name, ours in CONFIG_NAMES.items() if name in original_config}
    for key in ("dim_mult", "temporal_downsample"):
        if key in config:
            config[key] = list(config[key])
    return config


def _fuse_pairs(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Kernel-1 `conv_2d` + `conv_3d` pairs -> our single convolutions; returns them and the keys consumed."""
    fused: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for key in state_dict:
        for pattern, target in _FUSED_PAIRS:
            match = re.fullmatch(rf"{pattern}\.conv_2d\.(?P<p>weight|bias)", key)
            if match is None:
                continue
            param = match.group("p")
            prefix = key[: -len(f".conv_2d.{param}")]
            partner = f"{prefix}.conv_3d.{param}"
            if partner not in state_dict:
                raise CheckpointError(f"{key} has no matching {partner} in the checkpoint.")
            half_2d, half_3d = state_dict[key], state_dict[partner]
            if param == "weight" and target is None:
                half_3d = half_3d.squeeze(2)  # residual shortcuts are per-frame: (O, I, 1, 1)
            elif param == "weight":
                half_2d = half_2d.unsqueeze(2)  # latent projections are (O, I, 1, 1, 1) convolutions
            if target == "quant_conv":
                # Original output [2D (Z) | 3D (Z)]; mean = first halves of both, logvar = second halves of both.
                z = half_2d.shape[0] // 2
                tensor = torch.cat([half_2d[:z], half_3d[:z], half_2d[z:], half_3d[z:]])
            else:
                tensor = torch.cat([half_2d, half_3d])
            if target is None:
                ours_list = _BLOCK_LISTS[match.group("list")]
                target_key = f"{ours_list}.{match.group('i')}.conv_shortcut.{param}"
            else:
                target_key = f"{target}.{param}"
            fused[target_key] = tensor
            consumed.update((key, partner))
    return fused, consumed


def convert(original: OriginalCheckpoint, variant: str | None = None, **options: Any) -> ConvertedCheckpoint:
    """Original state dict (+ config) -> our config and state dict.

    The variant is `variant`, else the one the original config names by its sizes, else inferred from tensor
    shapes. A checkpoint whose shapes belong to another variant than `variant` is rejected.
    """
    state_dict = original.state_dict
    if not looks_like(state_dict):
        missing = [key for key in _SIGNATURE_KEYS if key not in state_dict]
        raise CheckpointError(f"Not an IV-VAE checkpoint: it lacks the release keys {missing}.")
    shapes = (state_dict[_LATENT_KEY].shape[0], state_dict[_BASE_WIDTH_KEY].shape[0])
    # The two tensors that tell the variants apart are read here, so a wrong --variant is named before any build.
    inferred = infer_variant(state_dict)
    if variant in VARIANTS and inferred != variant:
        raise CheckpointError(
            f"The checkpoint does not match variant {variant!r}: its tensors have latent channels "
            f"{shapes[0]} and base width {shapes[1]}"
            + (f", which is variant {inferred!r}." if inferred else ", which is no released variant.")
        )
    variant, config = resolve_variant(
        original,
        variant,
        model_type=MODEL_TYPE,
        variants=VARIANTS,
        translate_config=translate_config,
        infer_variant=infer_variant,
        unknown=f"This IV-VAE checkpoint matches no released variant (latent channels {shapes[0]}, base width "
        f"{shapes[1]}); pass the original's config with --original-config (original_config=...).",
    )

    fused, consumed = _fuse_pairs(state_dict)
    renamed, dropped = account_keys({k: v for k, v in state_dict.items() if k not in consumed}, RENAME_RULES, DROPPED)
    overlap = set(renamed) & set(fused)
    if overlap:
        raise CheckpointError(f"Keys produced twice by the conversion: {sorted(overlap)}")
    info = {"fused_original_keys": len(consumed)}
    return finish_conversion(original, MODEL_TYPE, config, {**renamed, **fused}, dropped, variant, info)
