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
"""Reading the CascadeV release (`ByteDance/CascadeV` + StableWurst's effnet/previewer + the SVD VAE).

* Variants: one, `s1024.effn-f32` (1024 px, effnet encoder, 1x32x32). Its original config
  (`configs/s1024.effn-f32.py` over PixArt-Sigma's `PixArt_xl2_internal.py`) is kept here as data.
* Files (four; the release has no single file):
  - `s1024.effn-f32.pth`: the DiT, `torch.save` of `{'state_dict', 'optimizer', 'scheduler', 'epoch'}` or of the bare
    state dict (both accepted; read with `weights_only=True`), keys without prefix (`x_embedder.*`, `blocks.N.*`);
  - `effnet_encoder.safetensors` (`--effnet`) and optionally `previewer.safetensors` (`--previewer`): flat state dicts
    in torchvision's layout, BatchNorm `num_batches_tracked` included (dropped here);
  - the SVD VAE folder (`--svd-vae`, stable-video-diffusion-img2vid-xt's `vae/`): diffusers'
    `AutoencoderKLTemporalDecoder` (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`).
* Keys: the files are read into one state dict, the side files' keys prefixed with `effnet_encoder.`, `previewer.` and
  `svd_vae.`; `RENAME_RULES` maps every key, `DROPPED` lists what is left out on purpose. The original loads the DiT
  non-strictly; here every key must be accounted for.
* Original configs (`--original-config`, python in the mmcv style) are read with `ast`, never executed.
"""

from __future__ import annotations

import argparse
import ast
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
    load_state_dict_file,
    read_config_text,
    read_json,
    unwrap_state_dict,
)

MODEL_TYPE = "cascadev"
MODEL_NAME = "CascadeV"
CLASS_NAME = "AutoencoderCascadeV"
ORIGINAL_REPO = "https://github.com/bytedance/CascadeV (commit c697b99)"

_RELEASE_STRIDES = [[1, 4], [4, 1]] * 4 + [None] * 4 + [[1, 4], [4, 1]] * 4 + [None] * 8

# What the release's config file sets (and the PixArt-Sigma base values it relies on), as data.
RELEASE_CONFIG: dict[str, Any] = {
    "image_size": 1024,
    "num_frames_per_video": 8,
    "sr_scale": 4,
    "encoder": "evae",
    "decoder": "tvae",
    "model": "PixArt_XL_2",
    "fp32_attention": True,
    "pe_interpolation": 2.0,
    "attn_strides": _RELEASE_STRIDES,
    "scale_factor": 0.13025,
    "train_sampling_steps": 1000,
}
# PixArt's registry entries the CascadeV configs name.
PIXART_MODELS: dict[str, dict[str, Any]] = {
    "PixArt_XL_2": {"depth": 28, "hidden_size": 1152, "patch_size": 2, "num_heads": 16, "mlp_ratio": 4.0},
}
# stable-video-diffusion-img2vid-xt/vae/config.json (AutoencoderKLTemporalDecoder).
SVD_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKLTemporalDecoder",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

VARIANTS: dict[str, dict[str, Any]] = {"s1024.effn-f32": RELEASE_CONFIG}
DEFAULT_VARIANT = "s1024.effn-f32"
# None for the effnet latent (scaling_factor 1.0: its BatchNorm standardises it); the DiT scales its condition and the
# SVD latents by 0.13025 internally.
LATENT_NORMALIZATION: dict[str, dict[str, Any]] = {"s1024.effn-f32": {"scaling_factor": 1.0}}

RENAME_RULES: list[RenameRule] = [
    RenameRule(r"x_embedder\.proj\.(weight|bias)", r"transformer.x_embedder.proj.\1"),
    RenameRule(r"t_embedder\.mlp\.0\.(weight|bias)", r"transformer.t_embedder.linear_1.\1"),
    RenameRule(r"t_embedder\.mlp\.2\.(weight|bias)", r"transformer.t_embedder.linear_2.\1"),
    RenameRule(r"t_block\.1\.(weight|bias)", r"transformer.t_block.1.\1"),
    RenameRule(
        r"blocks\.(\d+)\.(scale_shift_table|(?:attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))",
        r"transformer.blocks.\1.\2",
    ),
    RenameRule(r"final_layer\.(scale_shift_table|linear\.weight|linear\.bias)", r"transformer.final_layer.\1"),
    RenameRule(r"effnet_encoder\.((?:backbone|mapper)\..+)", r"encoder.\1"),
    RenameRule(r"previewer\.(blocks\..+)", r"previewer.\1"),
    RenameRule(r"svd_vae\.((?:encoder|decoder|quant_conv)\..+)", r"svd_vae.\1"),
]
DROPPED: dict[str, str] = {
    r"(?:effnet_encoder|previewer)\..*\.num_batches_tracked": "BatchNorm step counter (training bookkeeping only)",
    r"(?:base_model\.|model\.)?pos_embed": "fixed sin-cos table, recomputed (the original loader deletes it too)",
}
# Top-level entries of a training checkpoint besides the weights.
TRAINING_ENTRIES = ("optimizer", "scheduler", "epoch", "step", "lr_scheduler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--effnet", default=None, help="StableWurst effnet_encoder.safetensors (required)")
    parser.add_argument("--previewer", default=None, help="StableWurst previewer.safetensors (optional: preview())")
    parser.add_argument(
        "--svd-vae",
        dest="svd_vae",
        default=None,
        help="the SVD VAE folder (stable-video-diffusion-img2vid-xt/vae: config.json + safetensors; required)",
    )


def looks_like(state_dict: dict[str, torch.Tensor]) -> bool:
    """The CascadeV DiT layout: a PixArt patch embedder with adaLN-single and fused-qkv blocks, no text encoder."""
    return (
        "x_embedder.proj.weight" in state_dict
        and "t_block.1.weight" in state_dict
        and "blocks.0.attn.qkv.weight" in state_dict
        and not any(key.startswith(("y_embedder.", "spatial_vae.", "temporal_vae.")) for key in state_dict)
        and not any(".cross_attn." in key for key in state_dict)
    )


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """`s1024.effn-f32` when the DiT has the release's shapes (PixArt-XL/2, 20 -> 8 channels, 28 blocks)."""
    weight = state_dict.get("x_embedder.proj.weight")
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    if weight is not None and tuple(weight.shape) == (1152, 20, 2, 2) and depth == 28:
        return DEFAULT_VARIANT
    return None


def _literal(node: ast.AST) -> Any:
    """A config value: a literal, or `dict(key=literal, ...)` as mmcv configs write them."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    return ast.literal_eval(node)


def read_python_config(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level `name = value` assignments of an mmcv-style config, parsed (never executed).

    `_base_` files are not followed: values the file does not set come from the release's defaults.
    """
    path = Path(path)
    text = read_config_text(path)
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as error:
        raise CheckpointError(f"{path} is not a valid python config: {error}") from error
    config: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                try:
                    config[target.id] = _literal(statement.value)
                except (ValueError, TypeError, SyntaxError):
                    continue  # expressions (not literals) are not needed by the converter
    return config


def _read_original_config(path: str | os.PathLike) -> dict[str, Any]:
    if str(path).endswith(".json"):
        data = read_json(path)
        if "dit" in data and "pipeline" in data:  # the fixture's JSON form: constructor kwargs + pipeline values
            kwargs = data["dit"]["ctor_kwargs"]
            config = dict(data["pipeline"])
            config["model"] = "PixArt"
            config["model_kwargs"] = {
                key: kwargs[key] for key in ("patch_size", "depth", "hidden_size", "num_heads", "mlp_ratio")
            }
            return config
        return data
    return read_python_config(path)


def _read_svd_vae(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The SVD VAE's weights and config from its diffusers folder (or a weights file with config.json beside it)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        candidates = [
            folder / "diffusion_pytorch_model.safetensors",
            folder / "diffusion_pytorch_model.fp16.safetensors",
        ]
        weights = next((candidate for candidate in candidates if candidate.is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"{folder} holds no diffusion_pytorch_model[.fp16].safetensors (expected the SVD VAE folder, "
                "stable-video-diffusion-img2vid-xt/vae)."
            )
    else:
        weights = path
    config_file = folder / "config.json"
    config = read_json(config_file) if config_file.is_file() else dict(SVD_VAE_CONFIG)
    if config.get("_class_name", "AutoencoderKLTemporalDecoder") != "AutoencoderKLTemporalDecoder":
        raise CheckpointError(f"{config_file} is a {config.get('_class_name')}, not an AutoencoderKLTemporalDecoder.")
    return load_state_dict_file(weights), config


def read_original(
    path: str | os.PathLike,
    original_config: str | os.PathLike | None = None,
    effnet: str | os.PathLike | None = None,
    previewer: str | os.PathLike | None = None,
    svd_vae: str | os.PathLike | None = None,
    **options: Any,
) -> OriginalCheckpoint:
    """Open the DiT file and the three side files into one state dict (side files' keys prefixed)."""
    if effnet is None or svd_vae is None:
        raise CheckpointError(
            "CascadeV needs four files: the DiT (--checkpoint), StableWurst's effnet_encoder.safetensors (--effnet), "
            "the SVD VAE folder (--svd-vae) and optionally previewer.safetensors (--previewer). Missing: "
            + ", ".join(name for name, value in (("--effnet", effnet), ("--svd-vae", svd_vae)) if value is None)
        )
    loaded = load_state_dict_file(path)
    dit, wrapper = unwrap_state_dict(loaded, wrappers=("state_dict",))
    if not looks_like(dit):
        raise CheckpointError(
            f"{path} is not a CascadeV DiT checkpoint: expected `x_embedder.proj.weight`, `t_block.1.weight` and "
            f"`blocks.N.attn.qkv.*` keys; first keys found: {sorted(dit)[:8]}"
        )
    extra = sorted(key for key in loaded if wrapper is not None and key != wrapper)
    state_dict = dict(dit)
    for prefix, file in (("effnet_encoder.", effnet), ("previewer.", previewer)):
        if file is None:
            continue
        side = load_state_dict_file(file)
        expected = "backbone." if prefix == "effnet_encoder." else "blocks."
        if not any(key.startswith(expected) for key in side):
            raise CheckpointError(f"{file} is not a StableCascade {prefix[:-1]} file: no `{expected}*` keys.")
        state_dict.update({prefix + key: value for key, value in side.items()})
    svd_state, svd_config = _read_svd_vae(svd_vae)
    state_dict.update({"svd_vae." + key: value for key, value in svd_state.items()})
    config = _read_original_config(original_config) if original_config is not None else None
    return OriginalCheckpoint(
        state_dict=state_dict,
        original_config=config,
        source=str(path),
        info={
            "svd_config": svd_config,
            "wrapper": wrapper,
            "training_entries": extra,
            "previewer": previewer is not None,
        },
    )


def translate_config(original_config: dict[str, Any]) -> dict[str, Any]:
    """The original (mmcv) config -> our `AutoencoderCascadeV` config (DiT and pipeline fields)."""
    config = {**RELEASE_CONFIG, **original_config}
    if config.get("encoder") != "evae" or config.get("decoder") != "tvae":
        raise CheckpointError(
            f"Only the effnet encoder + SVD temporal decoder CascadeV is supported (encoder='evae', decoder='tvae'); "
            f"got encoder={config.get('encoder')!r}, decoder={config.get('decoder')!r}."
        )
    model = config.get("model")
    dims = dict(PIXART_MODELS.get(model, {}))
    dims.update(config.get("model_kwargs") or {})
    missing = {"depth", "hidden_size", "patch_size", "num_heads"} - set(dims)
    if missing:
        raise CheckpointError(f"Unknown DiT {model!r}: give its {sorted(missing)} in `model_kwargs`.")
    strides = [list(s) if s is not None else None for s in config["attn_strides"]]
    return {
        "transformer_hidden_size": int(dims["hidden_size"]),
        "transformer_num_layers": int(dims["depth"]),
        "transformer_num_attention_heads": int(dims["num_heads"]),
        "transformer_patch_size": int(dims["patch_size"]),
        "transformer_mlp_ratio": float(dims.get("mlp_ratio", 4.0)),
        "transformer_sample_size": int(config["image_size"]) // 8,
        "transformer_num_frames": int(config["num_frames_per_video"]),
        "transformer_pe_interpolation": float(config["pe_interpolation"]),
        "transformer_attn_strides": strides,
        "transformer_upcast_attention": bool(config.get("fp32_attention", True)),
        "sr_scale": int(config["sr_scale"]),
        "refiner_scale_factor": float(config["scale_factor"]),
        "scheduler_type": "euler_ancestral",
        "scheduler_config": {
            "num_train_timesteps": int(config.get("train_sampling_steps", 1000)),
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": "linear",
            "prediction_type": "epsilon",
        },
        "num_inference_steps": 8,
        "decode_chunk_size": 4,
        "scaling_factor": 1.0,
    }


def _svd_fields(svd: dict[str, Any]) -> dict[str, Any]:
    blocks = list(svd.get("block_out_channels", SVD_VAE_CONFIG["block_out_channels"]))
    if svd.get("in_channels", 3) != 3 or svd.get("out_channels", 3) != 3:
        raise CheckpointError("The SVD VAE must map RGB (3 channels) to latents and back.")
    if list(svd.get("down_block_types", ["DownEncoderBlock2D"] * len(blocks))) != ["DownEncoderBlock2D"] * len(blocks):
        raise CheckpointError("Only SVD VAEs with DownEncoderBlock2D blocks are supported.")
    return {
        "svd_block_out_channels": blocks,
        "svd_layers_per_block": int(svd.get("layers_per_block", 2)),
        "svd_latent_channels": int(svd.get("latent_channels", 4)),
        "svd_scaling_factor": float(svd.get("scaling_factor", 0.18215)),
        "svd_force_upcast": bool(svd.get("force_upcast", True)),
    }


def convert(original: OriginalCheckpoint, variant: str | None = None, **options: Any) -> ConvertedCheckpoint:
    """Map the four files' keys and the configs to `AutoencoderCascadeV`."""
    if original.original_config is not None and variant is not None:
        raise CheckpointError("Pass either --variant or --original-config, not both.")
    source = original.original_config if original.original_config is not None else VARIANTS[variant or DEFAULT_VARIANT]
    config = translate_config(source)
    config.update(_svd_fields(original.info.get("svd_config") or SVD_VAE_CONFIG))
    config["with_previewer"] = any(key.startswith("previewer.") for key in original.state_dict)
    state_dict, dropped = account_keys(original.state_dict, RENAME_RULES, DROPPED)
    for entry in original.info.get("training_entries", []):
        dropped[entry] = "training state stored beside the weights (top-level entry of the .pth)"
    state_dict = {key: value.float() if value.dtype == torch.float16 else value for key, value in state_dict.items()}
    detected = variant
    if detected is None:
        dit = {
            key: value
            for key, value in original.state_dict.items()
            if not re.match(r"(effnet_encoder|previewer|svd_vae)\.", key)
        }
        detected = infer_variant(dit)
        if (
            original.original_config is not None
            and detected is not None
            and translate_config(source) != translate_config(RELEASE_CONFIG)
        ):
            detected = None
    return ConvertedCheckpoint(
        model_type=MODEL_TYPE,
        class_name=CLASS_NAME,
        config=config,
        state_dict=state_dict,
        dropped=dropped,
        variant=detected,
        info=dict(original.info),
    )
