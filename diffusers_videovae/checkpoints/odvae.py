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
"""Reading Open-Sora-Plan CausalVideoVAE releases (OD-VAE v1.2.0, CausalVideoVAE v1.1.0).

* Variants: `v1.2.0` (`LanguageBind/Open-Sora-Plan-v1.2.0`, `vae/config.json` + `vae/checkpoint.ckpt`) and
  `v1.1.0` (`LanguageBind/Open-Sora-Plan-v1.1.0`, `vae/config.json` + a diffusers-style weights file).
* Files: the release folder, or a bare `.ckpt` / `.pt` / `.bin` / `.safetensors`, read without executing pickles.
  Wrappings understood (as the original `init_from_ckpt`): `ema_state_dict` (keys carry `module.`),
  `state_dict`, `state_dict["gen_model"]`, or a flat dict. EMA weights are used when present unless
  `weights="non-ema"` (`--weights non-ema`).
* Keys: our modules keep the original names (including the extra `.conv` level of causal convolutions), so the
  map is the identity on the VAE's keys; `loss.*` (v1.1-era training loss) is dropped on purpose and anything
  else unknown is refused. The config translation turns the original's class-name strings into our layout.
"""

from __future__ import annotations

import argparse
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
    entries_set_aside,
    finish_conversion,
    load_state_dict_file,
    nested_mapping,
    read_json,
    resolve_variant,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "odvae"
MODEL_NAME = "OD-VAE (Open-Sora-Plan CausalVideoVAE)"
CLASS_NAME = "AutoencoderKLODVAE"
ORIGINAL_REPO = "PKU-YuanGroup/Open-Sora-Plan"

_COMMON = {
    "hidden_size": 128,
    "z_channels": 4,
    "hidden_size_mult": [1, 2, 4, 4],
    "attn_resolutions": [],
    "dropout": 0.0,
    "resolution": 256,
    "double_z": True,
    "embed_dim": 4,
    "num_res_blocks": 2,
    "q_conv": "CausalConv3d",
    "encoder_conv_in": "Conv2d",
    "encoder_conv_out": "CausalConv3d",
    "encoder_attention": "AttnBlock3DFix",
    "encoder_resnet_blocks": ["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"],
    "encoder_mid_resnet": "ResnetBlock3D",
    "decoder_conv_in": "CausalConv3d",
    "decoder_conv_out": "CausalConv3d",
    "decoder_attention": "AttnBlock3DFix",
    "decoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "decoder_mid_resnet": "ResnetBlock3D",
}

# The released original configs (constructor arguments of the original `CausalVAEModel`).
VARIANTS: dict[str, dict[str, Any]] = {
    "v1.2.0": {
        **_COMMON,
        "encoder_spatial_downsample": ["Downsample", "Spatial2xTime2x3DDownsample", "Spatial2xTime2x3DDownsample", ""],
        "encoder_temporal_downsample": ["", "", "", ""],
        "decoder_spatial_upsample": [
            "",
            "SpatialUpsample2x",
            "Spatial2xTime2x3DUpsample",
            "Spatial2xTime2x3DUpsample",
        ],
        "decoder_temporal_upsample": ["", "", "", ""],
        "use_quant_layer": True,
    },
    "v1.1.0": {
        **_COMMON,
        "encoder_spatial_downsample": ["Downsample", "Downsample", "Downsample", ""],
        "encoder_temporal_downsample": ["", "TimeDownsampleRes2x", "TimeDownsampleRes2x", ""],
        "decoder_spatial_upsample": ["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
        "decoder_temporal_upsample": ["", "", "TimeUpsampleRes2x", "TimeUpsampleRes2x"],
    },
}
DEFAULT_VARIANT = "v1.2.0"
# `z * scaling_factor` for both releases (no shift).
LATENT_NORMALIZATION: dict[str, dict[str, float]] = {name: {"scaling_factor": 0.18215} for name in VARIANTS}

# The original class's constructor defaults: a config.json that omits a field gets these (many differ from the
# releases, so a missing field silently builds another model in the original; here it is named in the error).
ORIGINAL_DEFAULTS: dict[str, Any] = {
    **_COMMON,
    "encoder_conv_in": "CausalConv3d",
    "encoder_attention": "AttnBlock3D",
    "encoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "encoder_spatial_downsample": ["SpatialDownsample2x"] * 3 + [""],
    "encoder_temporal_downsample": ["", "TimeDownsample2x", "TimeDownsample2x", ""],
    "decoder_attention": "AttnBlock3D",
    "decoder_spatial_upsample": ["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
    "decoder_temporal_upsample": ["", "", "TimeUpsample2x", "TimeUpsample2x"],
    "use_quant_layer": True,
}
# Fields the original configs carry that do not describe the network (v1.1 training settings, diffusers metadata).
_IGNORED_FIELDS = {
    "lr",
    "loss_type",
    "loss_params",
    "resolution",
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
}

_CAUSAL_CONV = {"CausalConv3d", "CausalConv3d_GC"}
_RESNETS = {"ResnetBlock2D": "resnet2d", "ResnetBlock3D": "resnet3d", "ResnetBlock3D_GC": "resnet3d"}
_CONV_IN = {"Conv2d": "conv2d", "CausalConv3d": "causal_conv3d", "CausalConv3d_GC": "causal_conv3d"}
_SPATIAL_DOWN = {"": None, "Downsample": "downsample2d", "Spatial2xTime2x3DDownsample": "downsample3d_time2x"}
_TEMPORAL_DOWN = {"": None, "TimeDownsampleRes2x": "time_res"}
_SPATIAL_UP = {"": None, "SpatialUpsample2x": "upsample2d", "Spatial2xTime2x3DUpsample": "upsample3d_time2x"}
_TEMPORAL_UP = {"": None, "TimeUpsampleRes2x": "time_res"}

# Our module tree keeps the original names, so every VAE key maps to itself; these patterns say which are VAE keys.
RENAME_RULES: list[RenameRule] = [
    RenameRule(r"((?:encoder|decoder)\.(?:conv_in|conv_out|norm_out|mid|down|up)\..+)", r"\1"),
    RenameRule(r"((?:quant_conv|post_quant_conv)\.conv\.(?:weight|bias))", r"\1"),
]
DROPPED: dict[str, str] = {
    r"(?:.+\.)?loss\..+": "training loss module (LPIPS / discriminator / logvar) saved with v1.1-era models"
}

# Where the weights sit in a training checkpoint, in the original loader's order of preference (`module.` of the
# EMA wrapper is stripped); a flat file is the state dict itself.
_WRAPPERS = {
    "ema": ("ema_state_dict", "state_dict.gen_model", "state_dict"),
    "non-ema": ("state_dict.gen_model", "state_dict"),
}
_FOLDER_WEIGHTS = (
    "*.ckpt",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "*.safetensors",
    "*.pt",
    "*.pth",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        choices=sorted(_WRAPPERS),
        default="ema",
        help="which weights of a training checkpoint to convert: 'ema' (default, as the original loader: "
        "`ema_state_dict` when present) or 'non-ema' (`state_dict` / `state_dict['gen_model']`)",
    )


def _find_weights_file(folder: Path) -> Path:
    for pattern in _FOLDER_WEIGHTS:
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            raise CheckpointError(
                f"{folder} holds several weight files matching {pattern!r}: {[p.name for p in found]}; pass one file."
            )
        if found:
            return found[0]
    raise CheckpointError(f"No weights file in {folder} (looked for {', '.join(_FOLDER_WEIGHTS)}).")


def read_original(
    path: str | os.PathLike,
    original_config: str | os.PathLike | dict | None = None,
    weights: str = "ema",
    **_: Any,
) -> OriginalCheckpoint:
    """Open a release folder (`config.json` + weights) or a bare weights file, without executing pickle code."""
    if weights not in _WRAPPERS:
        raise CheckpointError(f"weights must be one of {sorted(_WRAPPERS)}, got {weights!r}.")
    path = Path(path)
    if path.is_dir():
        if original_config is None and (path / "config.json").exists():
            original_config = path / "config.json"
        path = _find_weights_file(path)
    loaded = load_state_dict_file(path)
    if weights == "non-ema" and not any(nested_mapping(loaded, name) for name in _WRAPPERS["non-ema"]):
        if nested_mapping(loaded, "ema_state_dict"):
            raise CheckpointError(f"--weights non-ema was asked, but {path} holds only `ema_state_dict`.")
    state, used = unwrap_state_dict(loaded, wrappers=_WRAPPERS[weights], strip_prefixes=("module.",))
    if isinstance(original_config, (str, os.PathLike)):
        original_config = read_json(original_config)
    return OriginalCheckpoint(
        state_dict=state,
        original_config=original_config,
        source=str(path),
        info={"wrapping": used or "flat", "set_aside": entries_set_aside(loaded, used)},
    )


def _translate(names: list[str], table: dict[str, Any], field: str) -> list[Any]:
    unknown = [name for name in names if name not in table]
    if unknown:
        raise CheckpointError(
            f"{field}: module(s) {unknown} are not supported (known: {sorted(k for k in table if k)})."
        )
    return [table[name] for name in names]


def translate_config(original: dict[str, Any]) -> dict[str, Any]:
    """The original `CausalVAEModel` config (class names as strings) -> `AutoencoderKLODVAE` arguments."""
    unknown = sorted(set(original) - set(ORIGINAL_DEFAULTS) - _IGNORED_FIELDS)
    if unknown:
        logger.warning("Ignoring original config fields that do not describe the network: %s", unknown)
    missing = sorted(set(ORIGINAL_DEFAULTS) - set(original) - {"use_quant_layer"})
    if missing:
        raise CheckpointError(
            f"The original config lacks {missing}; the original code would then use its class defaults "
            f"(e.g. {{{', '.join(f'{k!r}: {ORIGINAL_DEFAULTS[k]!r}' for k in missing[:3])}}}), which differ from "
            "the releases. Give a complete config.json or name the released --variant."
        )
    config = {**ORIGINAL_DEFAULTS, **original}
    for field in ("q_conv", "encoder_conv_out", "decoder_conv_in", "decoder_conv_out"):
        if config[field] not in _CAUSAL_CONV:
            raise CheckpointError(f"{field}={config[field]!r} is not supported (only CausalConv3d).")
    for field in ("encoder_attention", "decoder_attention"):
        if config[field] != "AttnBlock3DFix":
            raise CheckpointError(
                f"{field}={config[field]!r} is not supported: only 'AttnBlock3DFix' (per-frame attention, used by "
                "both releases) is implemented; 'AttnBlock3D' mixes channels and frames."
            )
    for field in ("encoder_mid_resnet", "decoder_mid_resnet"):
        if _RESNETS.get(config[field]) != "resnet3d":
            raise CheckpointError(f"{field}={config[field]!r} is not supported (only ResnetBlock3D).")
    if not config["double_z"]:
        raise CheckpointError("double_z=False (no log-variance) is not a KL autoencoder; not supported.")
    levels = len(config["hidden_size_mult"])
    resolutions = {config["resolution"] // 2**level for level in range(levels)}
    if set(config["attn_resolutions"]) & resolutions:
        raise CheckpointError(
            f"attn_resolutions={config['attn_resolutions']} (attention inside levels) is not supported."
        )
    return {
        "latent_channels": config["embed_dim"],
        "z_channels": config["z_channels"],
        "block_out_channels": [config["hidden_size"] * mult for mult in config["hidden_size_mult"]],
        "layers_per_block": config["num_res_blocks"],
        "encoder_conv_in": _translate([config["encoder_conv_in"]], _CONV_IN, "encoder_conv_in")[0],
        "encoder_block_types": _translate(config["encoder_resnet_blocks"], _RESNETS, "encoder_resnet_blocks"),
        "encoder_spatial_downsample": _translate(
            config["encoder_spatial_downsample"], _SPATIAL_DOWN, "encoder_spatial_downsample"
        ),
        "encoder_temporal_downsample": _translate(
            config["encoder_temporal_downsample"], _TEMPORAL_DOWN, "encoder_temporal_downsample"
        ),
        "decoder_block_types": _translate(config["decoder_resnet_blocks"], _RESNETS, "decoder_resnet_blocks"),
        "decoder_spatial_upsample": _translate(
            config["decoder_spatial_upsample"], _SPATIAL_UP, "decoder_spatial_upsample"
        ),
        "decoder_temporal_upsample": _translate(
            config["decoder_temporal_upsample"], _TEMPORAL_UP, "decoder_temporal_upsample"
        ),
        "dropout": config["dropout"],
        "use_quant_layer": bool(config["use_quant_layer"]),
        "scaling_factor": LATENT_NORMALIZATION[DEFAULT_VARIANT]["scaling_factor"],
    }


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """`v1.1.0` when the temporal res-downsamplers are present, `v1.2.0` otherwise; None for another layout."""
    if not looks_like(state_dict):
        return None
    return "v1.1.0" if any(".time_downsample." in key for key in state_dict) else "v1.2.0"


def convert(original: OriginalCheckpoint, variant: str | None = None, **_: Any) -> ConvertedCheckpoint:
    """Original keys and config -> our state dict (float32) and config; `loss.*` dropped with its reason."""
    variant, config = resolve_variant(
        original,
        variant,
        model_type=MODEL_TYPE,
        variants=VARIANTS,
        translate_config=translate_config,
        infer_variant=infer_variant,
        unknown="Not an OD-VAE checkpoint: its keys have neither release layout.",
    )
    state_dict, dropped = account_keys(original.state_dict, RENAME_RULES, DROPPED)
    info = {"wrapping": original.info.get("wrapping")}
    return finish_conversion(original, MODEL_TYPE, config, state_dict, dropped, variant, info)


def looks_like(state_dict: dict[str, Any]) -> bool:
    """True for the CausalVideoVAE layout: causal-conv attention projections and a causal decoder stem."""
    for wrapper in ("ema_state_dict", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    if isinstance(state_dict.get("gen_model"), dict):
        state_dict = state_dict["gen_model"]
    keys = {key.replace("module.", "") for key in state_dict}
    return {
        "encoder.mid.attn_1.q.conv.weight",
        "decoder.conv_in.conv.weight",
        "decoder.mid.attn_1.proj_out.conv.weight",
    } <= keys
