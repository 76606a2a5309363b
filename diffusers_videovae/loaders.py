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
"""Loading models from anything a user has: a diffusers folder, a Hub id, or an ORIGINAL release file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoints._common import TORCH_DTYPES, load_state_dict_file

__all__ = [
    "BUILTIN_MODELS",
    "DEMO_MODEL_DIR",
    "TORCH_DTYPES",
    "FromOriginalCheckpointMixin",
    "load_model",
    "resolve_model_name",
]

# The small demo model shipped inside the package (trained by the project; see model_cards/ivvae-demo.md).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "ivvae-demo"
# Names `load_model` (and every `-m` option) resolves to a folder inside the package.
BUILTIN_MODELS: dict[str, Path] = {"ivvae-demo": DEMO_MODEL_DIR}
# What the Hub accepts as a repo id: `owner/name`, letters, digits, `-`, `_`, `.`, no `--` or `..`.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


class FromOriginalCheckpointMixin:
    """Adds `from_single_file`, diffusers' name for loading an original (non-diffusers) checkpoint file.

    diffusers' own `FromOriginalModelMixin` only knows diffusers' classes, so our models get this equivalent,
    backed by `diffusers_videovae.checkpoints` (the same code the conversion scripts use).
    """

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | os.PathLike,
        *,
        variant: str | None = None,
        original_config: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        **options: Any,
    ):
        """Build the model from an original release file, converting its keys on the fly.

        Args:
            pretrained_model_link_or_path: local path of the original checkpoint (nothing is downloaded).
            variant: released variant name; inferred from tensor shapes when omitted.
            original_config: the original's own config file, for custom (non-released) models.
            torch_dtype: cast the weights to this dtype.
            options: model-specific reading options (see the conversion script's `--help`).
        """
        from .checkpoints import load_original_model

        return load_original_model(
            cls,
            pretrained_model_link_or_path,
            variant=variant,
            original_config=original_config,
            torch_dtype=torch_dtype,
            **options,
        )


def load_model(
    model: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    model_type: str | None = None,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    subfolder: str | None = None,
    **options: Any,
):
    """Load any of our VAEs from a diffusers folder, a Hub repo id, or an original checkpoint file.

    The class is read from the folder's `config.json` (`_class_name`). For an original release (a file, or a folder
    such as OD-VAE's `config.json` + `checkpoint.ckpt` or Open-Sora's `config.json` + `model.safetensors`) the model
    type is `model_type` or detected from its keys. `model` may also name a built-in model (`BUILTIN_MODELS`); a name
    that is none of these nor a Hub repo id (`owner/name`) fails at once, without asking the Hub.
    """
    from . import checkpoints

    path = resolve_model_name(model)
    if path.exists():
        model = path
    if path.is_dir() and not _is_diffusers_folder(path / (subfolder or "")):
        # An original release saved as a folder (OD-VAE: config.json + checkpoint.ckpt; Open-Sora: a
        # transformers-style config.json + model.safetensors): its reader takes the folder itself.
        if model_type is None:
            weights = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".pth", ".pt", ".bin", ".ckpt"})
            if not weights:
                raise checkpoints.CheckpointError(
                    f"{path} is neither a diffusers-videovae folder (config.json naming one of our classes) nor a folder holding an "
                    "original checkpoint."
                )
            model_type = checkpoints.detect_model_type(load_state_dict_file(weights[0]))
    if path.is_file() or (path.is_dir() and not _is_diffusers_folder(path / (subfolder or ""))):
        return checkpoints.load_original_model(
            None,
            path,
            model_type=model_type,
            variant=variant,
            original_config=original_config,
            torch_dtype=torch_dtype,
            **options,
        ).eval()
    if path.is_dir():
        config_path = path / (subfolder or "") / "config.json"
        class_name = json.loads(config_path.read_text())["_class_name"]
    else:
        from huggingface_hub import hf_hub_download

        config_file = hf_hub_download(str(model), "config.json", subfolder=subfolder)
        class_name = json.loads(Path(config_file).read_text())["_class_name"]
    for known_type, (_, known_class) in checkpoints.MODEL_TYPES.items():
        if known_class == class_name:
            model_class = checkpoints.get_model_class(known_type)
            break
    else:
        raise ValueError(f"{model} holds a {class_name}, which is not a diffusers-videovae model.")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    return model_class.from_pretrained(str(model), **kwargs).eval()


def resolve_model_name(model: str | os.PathLike) -> Path:
    """`model` as a path: a built-in name becomes its folder; a name nothing can resolve raises a clear error."""
    name = os.fspath(model)
    path = Path(name)
    if path.exists():
        return path
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if is_plausible_hub_id(name):
        return path
    raise FileNotFoundError(
        f"{name!r} is not an existing folder or file, nor a Hub repo id (owner/name). Built-in models: "
        f"{', '.join(sorted(BUILTIN_MODELS))}."
    )


def is_plausible_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hub repo id (`owner/name`); says nothing about whether it exists."""
    return bool(_HUB_ID.fullmatch(name)) and "--" not in name and ".." not in name and not name.endswith(".")


def _is_diffusers_folder(path: Path) -> bool:
    """True when `path/config.json` is a diffusers config of one of OUR classes.

    Original releases can carry a diffusers-style config too (OD-VAE's names `CausalVAEModel`): those are read by
    their checkpoint reader, not by `from_pretrained`.
    """
    from .checkpoints import MODEL_TYPES

    try:
        class_name = json.loads((path / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return False
    return class_name in {name for _, name in MODEL_TYPES.values()}
