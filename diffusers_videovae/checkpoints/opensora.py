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
"""Reading the Open-Sora 1.2 VAE release (`hpcai-tech/OpenSora-VAE-v1.2`).

* Variants: one, `v1.2` (the `OpenSoraVAE_V1_2` factory). Its spatial stage is the SDXL VAE config as shipped by
  PixArt-Sigma (`PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`, subfolder `vae`); that config is kept here as
  data because nothing is downloaded. The weights all come from the Open-Sora file.
* File: a transformers `save_pretrained` folder (`config.json` + `model.safetensors`) or the bare safetensors
  file; a flat float32 state dict with `scale`, `shift`, `spatial_vae.module.*` and `temporal_vae.*`.
* Keys: `spatial_vae.module.<AutoencoderKL key>` -> `spatial_vae.<same>`; `temporal_vae.*` renamed to our block
  names (`RENAME_RULES`), after one handler that renumbers the decoder's levels coarsest first as ours run
  (`_decoder_levels_coarsest_first`); `scale` / `shift` are `DROPPED` from the weights because they become the
  config's `latents_std` / `latents_mean`.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
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

MODEL_TYPE = "opensora"
MODEL_NAME = "Open-Sora 1.2 VAE"
CLASS_NAME = "AutoencoderKLOpenSora"
ORIGINAL_REPO = "https://github.com/hpcaitech/Open-Sora (tag v1.2.0)"

PIXART_SDXL_VAE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"

# `vae/config.json` of PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers: the SDXL VAE architecture.
SDXL_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# What `OpenSoraVAE_V1_2()` builds (its kwargs override the hub config.json).
RELEASE_CONFIG: dict[str, Any] = {
    "model_type": "VideoAutoencoderPipeline",
    "vae_2d": {
        "type": "VideoAutoencoderKL",
        "from_pretrained": PIXART_SDXL_VAE,
        "subfolder": "vae",
        "micro_batch_size": 4,
    },
    "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
    "micro_frame_size": 17,
    "shift": [-0.10, 0.34, 0.27, 0.98],
    "scale": [3.85, 2.32, 2.33, 3.06],
    "cal_loss": False,
    "freeze_vae_2d": False,
}

VARIANTS: dict[str, dict[str, Any]] = {"v1.2": RELEASE_CONFIG}
DEFAULT_VARIANT = "v1.2"
# `(z - latents_mean) / latents_std` per channel (the spatial stage's factor 0.18215 is inside the model).
LATENT_NORMALIZATION: dict[str, dict[str, list[float]]] = {
    "v1.2": {"latents_mean": RELEASE_CONFIG["shift"], "latents_std": RELEASE_CONFIG["scale"]}
}

# Defaults of the original `VAE_Temporal` class, and what the `VAE_Temporal_SD` factory fixes.
_TEMPORAL_DEFAULTS = {
    "in_out_channels": 4,
    "latent_embed_dim": 4,
    "embed_dim": 4,
    "filters": 128,
    "num_res_blocks": 4,
    "channel_multipliers": [1, 2, 2, 4],
    "temporal_downsample": [True, True, False],
    "num_groups": 32,
    "activation_fn": "swish",
}
_TEMPORAL_SD = {
    "in_out_channels": 4,
    "latent_embed_dim": 4,
    "embed_dim": 4,
    "filters": 128,
    "num_res_blocks": 4,
    "channel_multipliers": [1, 2, 2, 4],
    "temporal_downsample": [False, True, True],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spatial-config",
        default=None,
        help="config.json of the spatial AutoencoderKL (default: the SDXL VAE config of the release, built in; "
        "or `<vae_2d.from_pretrained>/<subfolder>/config.json` next to --original-config when it exists)",
    )


def looks_like(state_dict: dict[str, torch.Tensor]) -> bool:
    return (
        "scale" in state_dict
        and "shift" in state_dict
        and any(key.startswith("spatial_vae.module.") for key in state_dict)
        and any(key.startswith("temporal_vae.") for key in state_dict)
    )


def _resolve_spatial_config(
    pipeline_config: dict[str, Any], config_dir: Path | None, spatial_config: str | os.PathLike | None
) -> dict[str, Any]:
    if spatial_config is not None:
        return read_json(spatial_config)
    vae_2d = pipeline_config.get("vae_2d") or {}
    source = vae_2d.get("from_pretrained")
    if source in (None, PIXART_SDXL_VAE):
        return dict(SDXL_VAE_CONFIG)
    # The original resolves a relative path from its working directory: try the config's folder and its parent.
    for base in (config_dir, config_dir.parent) if config_dir is not None else ():
        candidate = base / source / (vae_2d.get("subfolder") or "") / "config.json"
        if candidate.is_file():
            return read_json(candidate)
    raise CheckpointError(
        f"The spatial VAE of this checkpoint comes from {source!r}, whose config is not known here. "
        "Pass its AutoencoderKL config.json with --spatial-config (spatial_config=...)."
    )


def read_original(
    path: str | os.PathLike,
    original_config: str | os.PathLike | None = None,
    spatial_config: str | os.PathLike | None = None,
    **options: Any,
) -> OriginalCheckpoint:
    """Open the release folder (`config.json` + `model.safetensors`) or the bare weights file."""
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{path} has no model.safetensors (expected the Open-Sora release folder).")
        if original_config is None and (path / "config.json").is_file():
            original_config = path / "config.json"
        path = weights
    state_dict, _ = unwrap_state_dict(load_state_dict_file(path), wrappers=())  # the release file is flat
    config = read_json(original_config) if original_config is not None else None
    config_dir = Path(original_config).resolve().parent if original_config is not None else None
    spatial = _resolve_spatial_config(config or RELEASE_CONFIG, config_dir, spatial_config)
    return OriginalCheckpoint(
        state_dict=state_dict, original_config=config, source=str(path), info={"spatial_config": spatial}
    )


def _temporal_hyperparameters(vae_temporal: dict[str, Any]) -> dict[str, Any]:
    kind = vae_temporal.get("type")
    kwargs = {k: v for k, v in vae_temporal.items() if k not in ("type", "from_pretrained")}
    if kind == "VAE_Temporal_SD":
        fixed = set(kwargs) & set(_TEMPORAL_SD)
        if fixed:
            raise CheckpointError(f"VAE_Temporal_SD fixes {sorted(fixed)}; the config cannot set them.")
        params = {**_TEMPORAL_DEFAULTS, **_TEMPORAL_SD, **kwargs}
    elif kind == "VAE_Temporal":
        params = {**_TEMPORAL_DEFAULTS, **kwargs}
    else:
        raise CheckpointError(f"Unknown temporal VAE type {kind!r}; expected VAE_Temporal_SD or VAE_Temporal.")
    unknown = set(params) - set(_TEMPORAL_DEFAULTS)
    if unknown:
        raise CheckpointError(f"Unknown temporal VAE arguments {sorted(unknown)}.")
    if params["activation_fn"] != "swish":
        raise CheckpointError(f"Only the swish activation is supported, got {params['activation_fn']!r}.")
    return params


_RESNET = r"(norm1|norm2|conv1|conv2)\.(.+)"
# Original key -> ours, for the decoder once its levels are numbered coarsest first (`_decoder_levels_coarsest_first`).
RENAME_RULES: list[RenameRule] = [
    RenameRule(r"spatial_vae\.module\.(.+)", r"spatial_vae.\1"),
    RenameRule(r"temporal_vae\.(quant_conv|post_quant_conv)\.conv\.(weight|bias)", r"temporal_vae.\1.conv.\2"),
    RenameRule(r"temporal_vae\.encoder\.conv_in\.conv\.weight", "temporal_vae.encoder.conv_in.conv.weight"),
    RenameRule(r"temporal_vae\.encoder\.conv2\.conv\.(weight|bias)", r"temporal_vae.encoder.conv_out.conv.\1"),
    RenameRule(r"temporal_vae\.decoder\.conv1\.conv\.(weight|bias)", r"temporal_vae.decoder.conv_in.conv.\1"),
    RenameRule(r"temporal_vae\.decoder\.conv_out\.conv\.(weight|bias)", r"temporal_vae.decoder.conv_out.conv.\1"),
    RenameRule(r"temporal_vae\.(encoder|decoder)\.norm1\.(weight|bias)", r"temporal_vae.\1.norm_out.\2"),
    RenameRule(
        r"temporal_vae\.(encoder|decoder)\.res_blocks\.(\d+)\." + _RESNET, r"temporal_vae.\1.mid_resnets.\2.\3.\4"
    ),
    RenameRule(
        r"temporal_vae\.encoder\.block_res_blocks\.(\d+)\.(\d+)\." + _RESNET,
        r"temporal_vae.encoder.down_blocks.\1.resnets.\2.\3.\4",
    ),
    RenameRule(
        r"temporal_vae\.encoder\.block_res_blocks\.(\d+)\.(\d+)\.conv3\.(.+)",
        r"temporal_vae.encoder.down_blocks.\1.resnets.\2.conv_shortcut.\3",
    ),
    RenameRule(
        r"temporal_vae\.encoder\.conv_blocks\.(\d+)\.conv\.(weight|bias)",
        r"temporal_vae.encoder.down_blocks.\1.downsampler.conv.\2",
    ),
    RenameRule(
        r"temporal_vae\.decoder\.block_res_blocks\.(\d+)\.(\d+)\." + _RESNET,
        r"temporal_vae.decoder.up_blocks.\1.resnets.\2.\3.\4",
    ),
    RenameRule(
        r"temporal_vae\.decoder\.block_res_blocks\.(\d+)\.(\d+)\.conv3\.(.+)",
        r"temporal_vae.decoder.up_blocks.\1.resnets.\2.conv_shortcut.\3",
    ),
    RenameRule(
        r"temporal_vae\.decoder\.conv_blocks\.(\d+)\.conv\.(weight|bias)",
        r"temporal_vae.decoder.up_blocks.\1.upsampler.conv.\2",
    ),
]
DROPPED: dict[str, str] = {
    "shift": "stored in the config as `latents_mean`",
    "scale": "stored in the config as `latents_std`",
}


def _decoder_levels_coarsest_first(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """Renumber the original decoder's levels as our up blocks run.

    The original lists them finest first: `block_res_blocks.<level>` and `conv_blocks.<level - 1>` (the upsampler
    that ends level `level`, for level >= 1) both belong to our up block `num_levels - 1 - level`.
    """
    prefix = re.compile(r"temporal_vae\.decoder\.(block_res_blocks|conv_blocks)\.(\d+)\.")

    def renumber(match: re.Match) -> str:
        level = int(match[2]) + (1 if match[1] == "conv_blocks" else 0)
        return f"temporal_vae.decoder.{match[1]}.{num_levels - 1 - level}."

    return {prefix.sub(renumber, key, count=1): value for key, value in state_dict.items()}


def _normalisation(state_dict: dict[str, torch.Tensor], name: str, configured: list[float]) -> list[float]:
    """The buffer's values; the config's decimals when they are the same float32 numbers (readable config.json)."""
    tensor = state_dict[name]
    if tensor.is_meta:  # shape-only checks (e.g. key coverage of a release listing)
        return [float(v) for v in configured] if isinstance(configured, list) else [float(configured)] * tensor.numel()
    values = tensor.detach().float().flatten()
    nice = torch.tensor([float(v) for v in configured], dtype=torch.float32) if isinstance(configured, list) else None
    if nice is not None and nice.shape == values.shape and torch.equal(nice, values):
        return [float(v) for v in configured]
    return [float(v) for v in values.tolist()]


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """`v1.2` when the widths of both stages are the release's (SDXL spatial VAE, 128 temporal filters), else None."""
    if not looks_like(state_dict):
        return None
    spatial = state_dict.get("spatial_vae.module.encoder.conv_in.weight")
    temporal = state_dict.get("temporal_vae.encoder.conv_in.conv.weight")
    if spatial is None or temporal is None:
        return None
    release = (SDXL_VAE_CONFIG["block_out_channels"][0], _TEMPORAL_SD["filters"])
    return DEFAULT_VARIANT if (spatial.shape[0], temporal.shape[0]) == release else None


def translate_config(original_config: dict[str, Any], spatial_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The original pipeline config (+ its spatial AutoencoderKL config) -> `AutoencoderKLOpenSora` arguments.

    `latents_mean` / `latents_std` come from the config's `shift` / `scale`; `convert` replaces them with the
    checkpoint's own buffers when those differ.
    """
    temporal = _temporal_hyperparameters(original_config.get("vae_temporal") or {})
    spatial = spatial_config or SDXL_VAE_CONFIG
    if spatial.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise CheckpointError(f"The spatial VAE must be an AutoencoderKL, got {spatial.get('_class_name')!r}.")
    if spatial.get("latent_channels", 4) != temporal["in_out_channels"]:
        raise CheckpointError("The spatial latent channels and the temporal VAE's in_out_channels differ.")
    if not (spatial.get("use_quant_conv", True) and spatial.get("use_post_quant_conv", True)):
        raise CheckpointError("Spatial VAEs without quant/post-quant convs are not supported.")
    vae_2d = original_config.get("vae_2d") or {}
    shift = original_config.get("shift", RELEASE_CONFIG["shift"])
    scale = original_config.get("scale", RELEASE_CONFIG["scale"])
    return {
        "in_channels": spatial.get("in_channels", 3),
        "out_channels": spatial.get("out_channels", 3),
        "spatial_latent_channels": spatial.get("latent_channels", 4),
        "block_out_channels": list(spatial["block_out_channels"]),
        "down_block_types": list(spatial["down_block_types"]),
        "up_block_types": list(spatial["up_block_types"]),
        "layers_per_block": spatial.get("layers_per_block", 1),
        "norm_num_groups": spatial.get("norm_num_groups", 32),
        "act_fn": spatial.get("act_fn", "silu"),
        "mid_block_add_attention": spatial.get("mid_block_add_attention", True),
        "spatial_scaling_factor": 0.18215,
        "spatial_micro_batch_size": vae_2d.get("micro_batch_size") or 4,
        "temporal_filters": temporal["filters"],
        "temporal_channel_multipliers": list(temporal["channel_multipliers"]),
        "temporal_num_res_blocks": temporal["num_res_blocks"],
        "temporal_downsample": [bool(flag) for flag in temporal["temporal_downsample"]],
        "temporal_num_groups": temporal["num_groups"],
        "temporal_latent_embed_dim": temporal["latent_embed_dim"],
        "latent_channels": temporal["embed_dim"],
        "micro_frame_size": original_config.get("micro_frame_size"),
        "latents_mean": [float(v) for v in shift] if isinstance(shift, list) else shift,
        "latents_std": [float(v) for v in scale] if isinstance(scale, list) else scale,
    }


def convert(original: OriginalCheckpoint, variant: str | None = None, **options: Any) -> ConvertedCheckpoint:
    """Map the pipeline config + state dict to `AutoencoderKLOpenSora`'s config and keys."""
    spatial = original.info.get("spatial_config") or SDXL_VAE_CONFIG
    variant, config = resolve_variant(
        original,
        variant,
        model_type=MODEL_TYPE,
        variants=VARIANTS,
        translate_config=lambda pipeline: translate_config(pipeline, spatial),
        default=DEFAULT_VARIANT,
    )
    pipeline = original.original_config or VARIANTS[variant]
    embed_dim = config["latent_channels"]
    config["latents_mean"] = _normalisation(
        original.state_dict, "shift", pipeline.get("shift", RELEASE_CONFIG["shift"])
    )
    config["latents_std"] = _normalisation(
        original.state_dict, "scale", pipeline.get("scale", RELEASE_CONFIG["scale"])
    )
    if len(config["latents_mean"]) != embed_dim or len(config["latents_std"]) != embed_dim:
        raise CheckpointError(
            f"`shift`/`scale` need {embed_dim} values, got {len(config['latents_mean'])}/{len(config['latents_std'])}."
        )

    renumbered = _decoder_levels_coarsest_first(original.state_dict, len(config["temporal_channel_multipliers"]))
    state_dict, dropped = account_keys(renumbered, RENAME_RULES, DROPPED)
    return finish_conversion(original, MODEL_TYPE, config, state_dict, dropped, variant)
