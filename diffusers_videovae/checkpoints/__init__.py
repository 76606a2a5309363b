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
"""Reading ORIGINAL releases: one module per model, plus the conversion driver they all share.

Every `checkpoints/<model_type>.py` follows the protocol in `_protocol.py` (`CheckpointModule`); `MODEL_TYPES`
registers them. `conversion_main` is the command line of `conversion/convert_<model_type>.py` and of
`videovae convert`; `load_original_model` is what `from_single_file` and `load_model` call.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ._common import (
    TORCH_DTYPES,
    CheckpointError,
    ConvertedCheckpoint,
    OriginalCheckpoint,
    build_model,
    check_output_dir,
    file_sha256,
    load_state_dict_file,
    save_pretrained_atomic,
)

__all__ = [
    "MODEL_TYPES",
    "CheckpointError",
    "ConvertedCheckpoint",
    "OriginalCheckpoint",
    "TORCH_DTYPES",
    "conversion_main",
    "convert_original",
    "convert_to_folder",
    "detect_model_type",
    "get_checkpoint_module",
    "load_original_model",
    "render_model_card",
    "run_conversion_script",
]

# model type -> (module under diffusers_videovae.models, class name)
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "ivvae": ("iv_vae", "AutoencoderKLIVVAE"),
    "odvae": ("od_vae", "AutoencoderKLODVAE"),
    "opensora": ("opensora_vae", "AutoencoderKLOpenSora"),
    "reducio": ("reducio_vae", "AutoencoderKLReducio"),
    "cascadev": ("cascadev", "AutoencoderCascadeV"),
}


def get_checkpoint_module(model_type: str) -> ModuleType:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model type {model_type!r}; expected one of {sorted(MODEL_TYPES)}.")
    return importlib.import_module(f"{__name__}.{model_type}")


def get_model_class(model_type: str) -> type:
    module_name, class_name = MODEL_TYPES[model_type]
    return getattr(importlib.import_module(f"diffusers_videovae.models.{module_name}"), class_name)


def model_type_of_class(model_class: type) -> str:
    for model_type, (_, class_name) in MODEL_TYPES.items():
        if model_class.__name__ == class_name:
            return model_type
    raise ValueError(f"{model_class.__name__} has no original-checkpoint reader.")


def detect_model_type(state_dict: dict[str, torch.Tensor]) -> str:
    """The model type whose release layout `state_dict` has; a clear error when none or several match."""
    matches = _claimed_by(state_dict)
    if len(matches) != 1:
        what = "no supported model" if not matches else f"several models ({matches})"
        raise CheckpointError(
            f"Cannot tell which model this checkpoint belongs to: its keys match {what}. "
            f"Name the model type explicitly (one of {sorted(MODEL_TYPES)})."
        )
    return matches[0]


def _claimed_by(state_dict: dict[str, Any]) -> list[str]:
    """Every registered model type whose `looks_like` accepts `state_dict`."""
    matches = []
    for model_type in MODEL_TYPES:
        try:
            module = get_checkpoint_module(model_type)
        except ModuleNotFoundError:
            continue
        if module.looks_like(state_dict):
            matches.append(model_type)
    return matches


def _weights_files(checkpoint: Path) -> list[Path]:
    if checkpoint.is_file():
        return [checkpoint]
    if checkpoint.is_dir():
        return sorted(p for p in checkpoint.iterdir() if p.suffix in {".safetensors", ".pth", ".pt", ".bin", ".ckpt"})
    return []


def _other_model_error(model_type: str, checkpoint: Path, *state_dicts: dict[str, Any]) -> CheckpointError | None:
    """'This looks like an X checkpoint; use convert_x.py' when another supported model claims the checkpoint."""
    candidates = [state for state in state_dicts if state]
    for weights in _weights_files(checkpoint)[:1]:
        try:
            candidates.append(load_state_dict_file(weights))
        except CheckpointError:
            pass
    for state in candidates:
        others = [other for other in _claimed_by(state) if other != model_type]
        if others:
            module = get_checkpoint_module(others[0])
            return CheckpointError(
                f"{checkpoint} is not {_article(model_type)} checkpoint: this looks like {_article(others[0])} "
                f"checkpoint; use conversion/convert_{others[0]}.py (videovae convert {others[0]}) or "
                f"{module.CLASS_NAME}.from_single_file."
            )
    return None


def _article(model_type: str) -> str:
    name = get_checkpoint_module(model_type).MODEL_NAME
    return f"{'an' if name[0].upper() in 'AEIOU' else 'a'} {name}"


def convert_original(
    model_type: str,
    checkpoint: str | os.PathLike,
    *,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    **options: Any,
) -> ConvertedCheckpoint:
    """Read an original release file and convert it to our config + state dict (no model built yet)."""
    module = get_checkpoint_module(model_type)
    if variant is not None and variant not in module.VARIANTS:
        raise CheckpointError(
            f"Unknown {model_type} variant {variant!r}; released variants: {sorted(module.VARIANTS)}."
        )
    checkpoint = Path(checkpoint)
    try:
        original = module.read_original(checkpoint, original_config=original_config, **options)
    except CheckpointError as error:
        raise _other_model_error(model_type, checkpoint) or error from None
    if not module.looks_like(original.state_dict):
        raise _other_model_error(model_type, checkpoint, original.state_dict) or CheckpointError(
            f"{checkpoint} is not {_article(model_type)} checkpoint: none of the supported models "
            f"({', '.join(sorted(MODEL_TYPES))}) has its keys (first keys found: {sorted(original.state_dict)[:5]})."
        )
    converted = module.convert(original, variant=variant, **options)
    converted.info.setdefault("source_file", checkpoint.name)
    return converted


def load_original_model(
    model_class: type | None,
    checkpoint: str | os.PathLike,
    *,
    model_type: str | None = None,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
    **options: Any,
) -> torch.nn.Module:
    """Build our model straight from an original release file (what `from_single_file` calls)."""
    if model_type is None:
        if model_class is not None:
            model_type = model_type_of_class(model_class)
        else:
            model_type = detect_model_type(load_state_dict_file(checkpoint))
    converted = convert_original(model_type, checkpoint, variant=variant, original_config=original_config, **options)
    model_class = model_class or get_model_class(model_type)
    return build_model(model_class, converted, torch_dtype)


def render_model_card(converted: ConvertedCheckpoint, dtype: str = "float32", sha256: str | None = None) -> str:
    """The model's Hub card (`model_cards/<model_type>.md`) with a section describing this conversion."""
    from importlib.resources import files

    from huggingface_hub import ModelCard

    template = files("diffusers_videovae.model_cards").joinpath(f"{converted.model_type}.md").read_text("utf-8")
    card = ModelCard(template)
    lines = [
        "",
        "## This conversion",
        "",
        f"- Class: `diffusers_videovae.{converted.class_name}`",
        f"- Variant: `{converted.variant or 'custom'}`",
        f"- Source file: `{converted.info.get('source_file', 'unknown')}`"
        + (f" (sha256 `{sha256}`)" if sha256 else ""),
        f"- Stored dtype: `{dtype}`",
        f"- Original keys dropped on purpose: {len(converted.dropped)}",
    ]
    for key, reason in sorted(converted.dropped.items())[:20]:
        lines.append(f"  - `{key}`: {reason}")
    if len(converted.dropped) > 20:
        lines.append(f"  - ... and {len(converted.dropped) - 20} more")
    return str(card).rstrip() + "\n" + "\n".join(lines) + "\n"


def conversion_main(model_type: str, argv: list[str] | None = None) -> Path:
    """Command line: original release file(s) -> diffusers folder (config.json + safetensors + model card).

    Errors are raised (`videovae convert` and `run_conversion_script` print them as one line).
    """
    module = get_checkpoint_module(model_type)
    parser = argparse.ArgumentParser(
        prog=f"convert_{model_type}",
        description=f"Convert an original {module.MODEL_NAME} checkpoint ({module.ORIGINAL_REPO}) into a "
        "diffusers folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="original release file (or folder, where supported)")
    parser.add_argument(
        "--variant",
        default=None,
        help=f"released variant, one of {', '.join(sorted(module.VARIANTS))}; inferred from the checkpoint when "
        "omitted",
    )
    parser.add_argument("--original-config", default=None, help="the original's own config file (custom models)")
    parser.add_argument("--output", "-o", required=True, help="output folder (written atomically)")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="dtype of the stored weights")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this Hub repo"
    )
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output folder when it holds a previous conversion (nothing else is ever deleted)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="on an error, also print its full listing (e.g. every shape mismatch)"
    )
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    known = {
        "checkpoint",
        "variant",
        "original_config",
        "output",
        "dtype",
        "push_to_hub",
        "private",
        "overwrite",
        "verbose",
    }
    options = {key: value for key, value in vars(args).items() if key not in known}
    try:
        return convert_to_folder(
            model_type,
            args.checkpoint,
            args.output,
            variant=args.variant,
            original_config=args.original_config,
            dtype=args.dtype,
            push_to_hub=args.push_to_hub,
            private=args.private,
            overwrite=args.overwrite,
            **options,
        )
    except CheckpointError as error:
        if args.verbose and error.details:
            raise CheckpointError(f"{error}\n{error.details}") from None
        raise


def run_conversion_script(model_type: str, argv: list[str] | None = None) -> int:
    """`conversion/convert_<model_type>.py`: `conversion_main` with ordinary mistakes printed as one line.

    Returns the exit status: 0, 1 for an error (the message names the file or folder at fault), 130 when
    interrupted. Like `videovae convert`, it prints no traceback for these.
    """
    try:
        conversion_main(model_type, argv)
    except KeyboardInterrupt:
        print(f"convert_{model_type}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        print(f"convert_{model_type}: error: {error}", file=sys.stderr)
        return 1
    return 0


def convert_to_folder(
    model_type: str,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    dtype: str = "float32",
    push_to_hub: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
    **options: Any,
) -> Path:
    """Convert, check every key, save atomically with a model card, optionally push to the Hub.

    The output folder is checked before anything is read (see `check_output_dir`): a non-empty folder is replaced
    only with `overwrite` and only when it holds a previous conversion; the checkpoint itself is never replaced.
    """
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    sources = [path for path in (checkpoint, original_config) if path is not None]
    check_output_dir(output, overwrite=overwrite, protect=sources)
    converted = convert_original(model_type, checkpoint, variant=variant, original_config=original_config, **options)
    model = build_model(get_model_class(model_type), converted, TORCH_DTYPES[dtype])
    card = render_model_card(
        converted, dtype=dtype, sha256=file_sha256(checkpoint) if Path(checkpoint).is_file() else None
    )
    path = save_pretrained_atomic(model, output, model_card=card, overwrite=overwrite, protect=sources)
    if verbose:
        dropped = sorted(converted.dropped)
        named = (
            f" ({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}; reasons in README.md)"
            if dropped
            else ""
        )
        print(
            f"Converted {len(converted.state_dict)} tensors ({converted.variant or 'custom'} variant, {dtype}); "
            f"dropped {len(dropped)} original key(s) on purpose{named} -> {path}"
        )
    if push_to_hub:
        push_folder(path, push_to_hub, private=private)
    return path


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Upload a converted folder to the Hub with huggingface_hub (token from the usual HF_TOKEN / login)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload converted video VAE")
    print(f"Pushed {folder} to https://huggingface.co/{repo_id}")
    return str(commit)
