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
"""Reading Reducio-VAE releases (microsoft/Reducio-VAE).

* Variants: `ft4` (`reducio-ft4-fs32-attn23.ckpt`, temporal factor 4, the one Reducio-DiT uses) and `ft2`
  (`reducio-ft2-fs32-attn23.ckpt`, factor 2), both in the Hub repo `microsoft/Reducio-VAE`. Naming trap: "ft4" is
  `f_t: 2` in the original yaml (factor 2**f_t = 4) and "ft2" is `f_t: 1`. The `_1024px` yamls build the same
  networks (they only switch tiling on).
* Files: lightning `.ckpt` files `{'state_dict': ...}` (or a bare state dict), read with
  `torch.load(weights_only=True)`; a leading `module.` on every key is stripped, as the original loader does.
* Keys: `encoder_3d.*` -> `encoder.*`, `encoder_2d.*` -> `content_encoder.*`, the decoder's `fuse.0` blocks ->
  `fusion`, `to_out.0` -> `to_out`; the rest keeps its name. Dropped on purpose, with the reason reported: `loss.*`
  (training loss) and the content encoder's `mid.block_2` / `norm_out` (computed by the original, never used).
  The original loads with `strict=False` (a wrong key silently keeps random weights); here any other key, or a
  missing one, stops the conversion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ._common import (
    CheckpointError,
    ConvertedCheckpoint,
    OriginalCheckpoint,
    RenameRule,
    account_keys,
    load_state_dict_file,
    read_config_text,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "reducio"
MODEL_NAME = "Reducio-VAE"
CLASS_NAME = "AutoencoderKLReducio"
ORIGINAL_REPO = "microsoft/Reducio-VAE"


def _released(f_t: int) -> dict[str, Any]:
    """`model.params` of `configs/autoencoder/reducio_kl_ft{4,2}_fs32_z16_attn23.yaml` (network fields only)."""
    return {
        "embed_dim": 16,
        "enable_2d": True,
        "tile_overlap_factor": 0.25,
        "tile_sample_min_size": 256,
        "ddconfig_2d": {
            "ch": 128,
            "z_channels": 4,
            "out_ch": 3,
            "resolution": 256,
            "in_channels": 3,
            "ch_mult": [1, 2, 4, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [],
            "dropout": 0.0,
            "out_z": False,
        },
        "ddconfig": {
            "ch": 128,
            "ch_in": 128,
            "f_t": f_t,
            "out_ch": 3,
            "z_channels": 16,
            "resolution": 256,
            "in_channels": 3,
            "temp_res": 16,
            "ch_mult": [1, 2, 2, 4, 4, 4],
            "ch_fuse": [-1, -1, 2, 3, -1, -1],
            "fuse_type": "attn",
            "num_res_blocks": 2,
            "attn_resolutions": [],
            "use_3d_conv": True,
            "upsample_first": True,
            "fuse_mid": True,
            "pos_embed_mode": "t",
            "window_size": 128,
        },
    }


VARIANTS: dict[str, dict[str, Any]] = {"ft4": _released(2), "ft2": _released(1)}
DEFAULT_VARIANT = "ft4"
# No scale or shift: latents are layer-normalised (over C, t, h, w per 16-frame segment) by the model itself.
LATENT_NORMALIZATION: dict[str, dict[str, Any]] = {name: {"latent_norm_eps": 1e-5} for name in VARIANTS}

RENAME_RULES = [
    RenameRule(r"encoder_3d\.(.+)", r"encoder.\1"),
    RenameRule(r"encoder_2d\.(.+)", r"content_encoder.\1"),
    RenameRule(
        r"decoder\.(mid|up\.\d+)\.fuse\.0\.attn\.to_out\.0\.(weight|bias)", r"decoder.\1.fusion.attn.to_out.\2"
    ),
    RenameRule(r"decoder\.(mid|up\.\d+)\.fuse\.0\.(.+)", r"decoder.\1.fusion.\2"),
    RenameRule(r"(decoder\.(?:conv_in|conv_out|norm_out|mid|up)\..+)", r"\1"),
    RenameRule(r"((?:quant_conv|post_quant_conv)\.(?:weight|bias))", r"\1"),
]
DROPPED: dict[str, str] = {
    r"loss\..+": "training loss (LPIPS, discriminator, logvar)",
    r"encoder_2d\.mid\.block_2\..+": "content encoder's second mid block: computed by the original, never used",
    r"encoder_2d\.norm_out\..+": "content encoder's output norm: computed by the original, never used",
}

# Original settings this package implements; another value is refused with its name.
_SUPPORTED = {
    "ddconfig": {
        "fuse_type": "attn",
        "use_3d_conv": True,
        "upsample_first": True,
        "pos_embed_mode": "t",
        "norm_type": "layer",
        "is_tanh_gating": False,
        "use_conv_shortcut": False,
        "upsample_mode": "interpolate",
        "tanh_out": False,
        "resamp_with_conv": True,
        "enable_fuse": True,
        "double_z": True,
    },
    "ddconfig_2d": {"out_z": False, "resamp_with_conv": True},
    "params": {"enable_2d": True, "mode": "full"},
}


def read_original(
    path: str | os.PathLike, original_config: str | os.PathLike | dict | None = None, **_: Any
) -> OriginalCheckpoint:
    """Open a released `.ckpt` (or any torch / safetensors file of the same keys) without executing pickle code."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            raise CheckpointError(
                f"Expected one .ckpt (or .safetensors) file in {path}, found {[p.name for p in found]}."
            )
        path = found[0]
    loaded = load_state_dict_file(path)
    state, wrapper = unwrap_state_dict(loaded, wrappers=("state_dict",), strip_prefixes=("module.",))
    set_aside = {}
    if wrapper is not None:
        set_aside = {name: f"top-level entry not used (weights: {wrapper})" for name in loaded if name != wrapper}
    if isinstance(original_config, (str, os.PathLike)):
        original_config = read_yaml(original_config)
    return OriginalCheckpoint(
        state_dict=state,
        original_config=original_config,
        source=str(path),
        info={"wrapping": wrapper or "flat", "set_aside": set_aside},
    )


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The original's yaml (`model: {target, params}`) -> its `model.params` (or the file itself if it is params)."""
    import yaml

    text = read_config_text(path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path} is not valid YAML: {error}") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"].get("params", {})
    if not isinstance(loaded, dict) or "ddconfig" not in loaded or "ddconfig_2d" not in loaded:
        raise CheckpointError(
            f"{path} is not a Reducio-VAE config: expected `model.params` with `ddconfig` and `ddconfig_2d` "
            "(as in configs/autoencoder/reducio_kl_ft4_fs32_z16_attn23.yaml)."
        )
    return loaded


def _window(value: Any, default: int, field: str) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    values = list(value)
    if len(values) != 2 or values[0] != values[1]:
        raise CheckpointError(f"{field}={value!r}: only square windows are supported.")
    return int(values[0])


def translate_config(original: dict[str, Any]) -> dict[str, Any]:
    """The original's `model.params` (`embed_dim`, `ddconfig`, `ddconfig_2d`) -> `AutoencoderKLReducio` arguments."""
    try:
        dd, dd2 = dict(original["ddconfig"]), dict(original["ddconfig_2d"])
        embed_dim = int(original["embed_dim"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(
            f"The original config lacks {error}; it needs embed_dim, ddconfig and ddconfig_2d."
        ) from error
    defaults = {"ddconfig": {"norm_type": "layer", "is_tanh_gating": False, "use_conv_shortcut": False}}
    for section, supported in _SUPPORTED.items():
        values = {"ddconfig": dd, "ddconfig_2d": dd2, "params": original}[section]
        for field, expected in supported.items():
            value = values.get(field, defaults.get(section, {}).get(field, expected))
            if value != expected:
                raise CheckpointError(f"{section}.{field}={value!r} is not supported (only {expected!r}).")
    levels = len(dd["ch_mult"])
    if dd.get("f_s", levels - 1) != levels - 1:
        raise CheckpointError(f"ddconfig.f_s={dd['f_s']} is not supported (only len(ch_mult) - 1 = {levels - 1}).")
    if dd.get("fuse_mid") and dd.get("fuse_mid_type") not in (None, "attn"):
        raise CheckpointError(f"ddconfig.fuse_mid_type={dd['fuse_mid_type']!r} is not supported (only attention).")
    for field in ("attn_resolutions",):
        if dd.get(field) or dd2.get(field):
            logger.warning("Ignoring %s: the original ignores it too.", field)
    levels_2d = len(dd2["ch_mult"])
    # The original builds the mid fusion only when the video and content pyramids differ in depth (or on request);
    # it reads `ddconfig_2d['f_s']` under a misspelt guard, so the content depth is always len(ch_mult) - 1.
    mid_fusion = bool(dd.get("fuse_mid", False)) and (levels - 1 != levels_2d - 1 or dd.get("fuse_mid_type") == "attn")
    ch, ch_in, ch_2d = int(dd["ch"]), int(dd.get("ch_in") or dd["ch"]), int(dd2["ch"])
    return {
        "in_channels": int(dd["in_channels"]),
        "out_channels": int(dd["out_ch"]),
        "latent_channels": embed_dim,
        "z_channels": int(dd["z_channels"]),
        "conv_in_channels": ch,
        "block_out_channels": [ch * m for m in dd["ch_mult"]],
        "decoder_block_out_channels": [ch_in * m for m in dd["ch_mult"]],
        "layers_per_block": int(dd["num_res_blocks"]),
        "num_temporal_downsamples": int(dd.get("f_t", 0)),
        "num_frames": int(dd.get("temp_res", 16)),
        "content_conv_in_channels": ch_2d,
        "content_block_out_channels": [ch_2d * m for m in dd2["ch_mult"]],
        "content_layers_per_block": int(dd2["num_res_blocks"]),
        "fusion_feature_index": [int(i) for i in dd.get("ch_fuse", [-1] * levels)],
        "mid_fusion": mid_fusion,
        "window_size": _window(dd.get("window_size"), 256, "ddconfig.window_size"),
        "content_window_size": _window(dd2.get("window_size"), 256, "ddconfig_2d.window_size"),
        "dropout": float(dd.get("dropout", 0.0)),
        "latent_norm_eps": 1e-5,  # fixed in the original's latent layer norm, not in its config
    }


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """`ft4` or `ft2` from the two tensors that differ (the last encoder downsampler's kernel depth and the mid fusion
    block's temporal table); None for a layout that is neither release."""
    down = state_dict.get("encoder_3d.down.3.downsample.conv.weight")
    table = state_dict.get("decoder.mid.fuse.0.pos_embed")
    if down is None or table is None or tuple(down.shape[:2]) != (512, 512):
        return None
    shapes = (tuple(down.shape), tuple(table.shape))
    if shapes == ((512, 512, 3, 3, 3), (1, 4, 1, 512)):
        return "ft4"
    if shapes == ((512, 512, 1, 3, 3), (1, 8, 1, 512)):
        return "ft2"
    return None


def convert(original: OriginalCheckpoint, variant: str | None = None, **_: Any) -> ConvertedCheckpoint:
    """Original keys and config -> our state dict (float32) and config; dropped keys reported with their reason."""
    if original.original_config is not None:
        config = translate_config(original.original_config)
        matches = [name for name, released in VARIANTS.items() if translate_config(released) == config]
        if variant is not None and variant not in matches:
            raise CheckpointError(f"--variant {variant} was given, but the original config describes another model.")
        variant = matches[0] if matches else None
    else:
        variant = variant or infer_variant(original.state_dict)
        if variant is None:
            raise CheckpointError(
                "This checkpoint is not one of the released Reducio-VAE variants (ft4, ft2), judging by its tensor "
                "shapes: give its original yaml with --original-config (or name --variant if you are sure)."
            )
        config = translate_config(VARIANTS[variant])
    state_dict, dropped = account_keys(original.state_dict, RENAME_RULES, DROPPED)
    state_dict = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    dropped.update(original.info.get("set_aside", {}))
    loss = [key for key in dropped if key.startswith("loss.")]
    if loss:
        logger.warning("Dropped %d training-loss key(s) (loss.*): not part of the autoencoder.", len(loss))
    return ConvertedCheckpoint(
        model_type=MODEL_TYPE,
        class_name=CLASS_NAME,
        config=config,
        state_dict=state_dict,
        dropped=dropped,
        variant=variant,
        info={"wrapping": original.info.get("wrapping")},
    )


def looks_like(state_dict: dict[str, Any]) -> bool:
    """True for the Reducio-VAE layout: a 3D and a 2D encoder and a decoder with fusion blocks."""
    if isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    keys = {key[len("module.") :] if key.startswith("module.") else key for key in state_dict}
    return {"encoder_3d.conv_in.weight", "encoder_2d.conv_in.weight", "decoder.conv_in.weight"} <= keys and any(
        ".fuse.0.pos_embed" in key for key in keys
    )
