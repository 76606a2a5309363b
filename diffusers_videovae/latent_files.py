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
"""Latents files (`videovae encode` / `videovae decode`): raw latents plus everything decoding them needs.

A latents file is a safetensors file holding `latents` (the raw posterior mode, `(1, C, t, h, w)`),
`latents_normalized` (`model.normalize_latents(latents)`: what a diffusion model trains on), one tensor per
decode condition of the model (`condition.<name>`, e.g. Reducio's content frames; none for most models), and
metadata: the model, its class and config hash, the latent normalisation, fps and the clip's `(T, H, W)`.

    save_latents("z.safetensors", vae, z, conditions, num_frames=17, height=256, width=256, fps=25.0)
    latents, conditions, metadata = read_latents("z.safetensors")
    check_latents_match(vae, latents, conditions, metadata)   # same model, and a frame count its shape allows
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from . import __version__
from .paths import atomic_output

__all__ = [
    "LATENT_FORMAT",
    "LatentsFileError",
    "check_latents_match",
    "config_hash",
    "latent_shape",
    "num_latent_frames",
    "read_latents",
    "save_latents",
]

LATENT_FORMAT = "diffusers-videovae-latents/1"
_CONDITION_PREFIX = "condition."


class LatentsFileError(ValueError):
    """A latents file that cannot be decoded (not ours, or inconsistent with itself or the model)."""


def config_hash(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the model's public config: identifies the latent space latents belong to."""
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def num_latent_frames(model: torch.nn.Module, num_frames: int) -> int:
    """Latent frames of a valid `num_frames`-frame clip (the model's `num_latent_frames` when it has one)."""
    if hasattr(model, "num_latent_frames"):
        return int(model.num_latent_frames(num_frames))
    rule = model.input_rule
    if rule.first_num_frames == 1:  # causal: the first frame alone, then one latent frame per group
        return 1 + (num_frames - 1) // rule.temporal_compression
    return num_frames // rule.temporal_compression


def latent_shape(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """`(C, t, h, w)` of the latents of a valid `(T, H, W)` clip."""
    num_frames, height, width = shape
    multiple = model.input_rule.spatial_multiple
    channels = int(model.config.latent_channels)
    return channels, num_latent_frames(model, num_frames), height // multiple, width // multiple


def save_latents(
    path: str | os.PathLike,
    model: torch.nn.Module,
    latents: torch.Tensor,
    conditions: dict[str, torch.Tensor],
    *,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    source: str = "",
    model_id: str = "",
) -> Path:
    """Write a latents file atomically (temporary name, then rename), with the user's umask."""
    from safetensors.torch import save_file

    tensors = {
        "latents": latents.float().cpu().contiguous(),
        "latents_normalized": model.normalize_latents(latents).float().cpu().contiguous(),
    }
    for name, tensor in conditions.items():
        tensors[_CONDITION_PREFIX + name] = tensor.cpu().contiguous()
    metadata = {
        "format": LATENT_FORMAT,
        "model": model_id,
        "class_name": type(model).__name__,
        "config_hash": config_hash(model),
        "scaling": json.dumps(model.latent_normalization),
        "latents": "raw posterior mode; `latents_normalized` is what a diffusion model trains on (`scaling`)",
        "conditions": json.dumps(sorted(conditions)),
        "fps": repr(float(fps)),
        "num_frames": str(num_frames),
        "height": str(height),
        "width": str(width),
        "shape": json.dumps(list(latents.shape)),
        "source": source,
        "diffusers_videovae_version": __version__,
    }
    path = Path(path)
    with atomic_output(path) as staging:
        save_file(tensors, str(staging), metadata=metadata)
    return path


def read_latents(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, str]]:
    """`(latents, conditions, metadata)` of a file written by `save_latents`; a clear error for any other file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LatentsFileError(f"Latent file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise LatentsFileError(f"{path} is not a safetensors file: {error}") from None
    if metadata.get("format") != LATENT_FORMAT or "latents" not in tensors:
        raise LatentsFileError(f"{path} was not written by `videovae encode` (no {LATENT_FORMAT} metadata).")
    _check_fps(path, metadata.get("fps"))
    conditions = {
        key[len(_CONDITION_PREFIX) :]: value for key, value in tensors.items() if key.startswith(_CONDITION_PREFIX)
    }
    return tensors["latents"], conditions, metadata


def _check_fps(path: Path, text: str | None) -> None:
    try:
        fps = float(text)
    except (TypeError, ValueError):
        fps = math.nan
    if not math.isfinite(fps) or fps <= 0:
        raise LatentsFileError(
            f"{path} records the frame rate fps={text!r}; a latents file needs a finite fps > 0 (encode the clip "
            "again with `videovae encode`)."
        )


def check_latents_match(
    model: torch.nn.Module,
    latents: torch.Tensor,
    conditions: dict[str, torch.Tensor],
    metadata: dict[str, str],
    force: bool = False,
) -> None:
    """Raise `LatentsFileError` when the file's latents cannot be decoded by `model` as the file says.

    Checks the model class, the config hash (skipped with `force`), the decode conditions, and that the recorded
    `num_frames` is a valid clip length whose latents have the stored shape.
    """
    name = metadata.get("class_name", "?")
    if type(model).__name__ != name:
        raise LatentsFileError(f"These latents come from a {name}, not a {type(model).__name__}.")
    if config_hash(model) != metadata.get("config_hash") and not force:
        raise LatentsFileError(
            f"These latents come from another {name} configuration (config hash {metadata.get('config_hash')}, this "
            f"model has {config_hash(model)}); pass --force to decode anyway."
        )
    rule = model.input_rule
    try:
        num_frames, height, width = (int(metadata[key]) for key in ("num_frames", "height", "width"))
    except (KeyError, ValueError):
        raise LatentsFileError("The latents file does not record the clip's num_frames, height and width.") from None
    if latents.ndim != 5:
        raise LatentsFileError(f"Latents must be (B, C, t, h, w), the file holds shape {tuple(latents.shape)}.")
    if rule.valid_num_frames(num_frames) != num_frames:
        raise LatentsFileError(
            f"The latents file records num_frames={num_frames}, which breaks the model's frame rule ({rule.describe()})."
        )
    expected = latent_shape(model, (num_frames, height, width))
    if tuple(latents.shape[1:]) != expected:
        raise LatentsFileError(
            f"The latents file records a clip of {num_frames}x{height}x{width} (TxHxW), whose latents would be "
            f"{expected} (C, t, h, w), but it holds latents of shape {tuple(latents.shape[1:])}: the file is "
            "inconsistent."
        )
    # Conditions were written from the model's own decode_conditions: the same names must come back.
    expected_names = set(json.loads(metadata.get("conditions", "[]")))
    if set(conditions) != expected_names:
        raise LatentsFileError(
            f"The latents file should hold the decode conditions {sorted(expected_names)}, it holds {sorted(conditions)}."
        )
