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
"""What every original-release reader shares: safe file opening, strict key accounting, building and saving.

Each `checkpoints/<model>.py` module answers three questions with the help of this file:

* which released variants exist (`VARIANTS`, the original configs as data, and `DEFAULT_VARIANT`);
* how an original file is opened and unwrapped (`read_original(path, ...) -> OriginalCheckpoint`);
* how its keys and config become ours (`convert(original, variant=None, ...) -> ConvertedCheckpoint`).

Nothing outside `checkpoints/` knows original key names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "ConvertedCheckpoint",
    "OriginalCheckpoint",
    "RenameRule",
    "account_keys",
    "build_model",
    "file_sha256",
    "load_state_dict_file",
    "save_pretrained_atomic",
    "unwrap_state_dict",
]


class CheckpointError(ValueError):
    """An original checkpoint cannot be read or converted (wrong model, wrong variant, unknown or missing keys)."""


@dataclass
class OriginalCheckpoint:
    """An original release file, opened and unwrapped, with the original's own config when one was given/found."""

    state_dict: dict[str, torch.Tensor]
    original_config: dict[str, Any] | None = None
    source: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConvertedCheckpoint:
    """The result of `convert`: our class's config, our state dict, and the original keys dropped on purpose."""

    model_type: str
    class_name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    variant: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenameRule:
    """`re.fullmatch(pattern, original_key)` -> `re.sub`-style `replacement` giving our key."""

    pattern: str
    replacement: str

    def apply(self, key: str) -> str | None:
        match = re.fullmatch(self.pattern, key)
        return None if match is None else match.expand(self.replacement)


_SAFE_SUFFIXES = (".safetensors",)
_TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Open a `.safetensors` file or a `torch.save` file **without executing any pickle code**.

    Torch files are read with `torch.load(weights_only=True)`: only tensors and plain containers are accepted.
    Any failure (missing, truncated, not a checkpoint, a pickle that needs code) raises `CheckpointError`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"Expected a checkpoint file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    if path.suffix in _SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises several error types for damaged files
            raise CheckpointError(f"Cannot read {path} as safetensors (truncated or corrupt?): {error}") from error
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        # mmap needs the zip format; legacy torch files fall back to a plain (still weights-only) read.
        if "mmap" not in str(error):
            raise CheckpointError(
                f"Cannot read {path} as a torch checkpoint (truncated or corrupt?): {error}"
            ) from error
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as inner:
            raise CheckpointError(f"Cannot read {path} as a torch checkpoint: {inner}") from inner
    except Exception as error:
        hint = ""
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            hint = " It contains pickled Python objects, which this package never executes."
        raise CheckpointError(
            f"Cannot read {path} as a torch checkpoint.{hint} ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    return dict(loaded)


def unwrap_state_dict(
    loaded: Mapping[str, Any], wrappers: Sequence[str] = ("state_dict",), strip_prefixes: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the tensor mapping inside a loaded file: the file itself, or the first of `wrappers` present.

    Returns the state dict (with `strip_prefixes` removed where every key has them) and the wrapper used.
    """
    used = None
    state = loaded
    for wrapper in wrappers:
        if isinstance(loaded.get(wrapper), Mapping):
            state, used = loaded[wrapper], wrapper
            break
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"No tensors found (looked at the top level and in {list(wrappers)}); top-level keys: "
            f"{sorted(loaded)[:20]}"
        )
    for prefix in strip_prefixes:
        if all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
    return tensors, used


def _format_keys(keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {shown}{more}"


def account_keys(
    original: Mapping[str, torch.Tensor],
    rules: Sequence[RenameRule],
    drop: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename every original key with the first matching rule; drop keys matching `drop` patterns on purpose.

    Args:
        original: the original state dict.
        rules: rename rules, tried in order; a key matched by none is an error.
        drop: `{pattern: reason}`; keys that fully match a pattern are dropped and reported with the reason.

    Returns:
        `(our_state_dict, dropped)` where `dropped` maps each dropped original key to its reason.

    Raises:
        CheckpointError listing every original key that is neither renamed nor dropped.
    """
    drop = dict(drop or {})
    ours: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        reason = next((why for pattern, why in drop.items() if re.fullmatch(pattern, key)), None)
        if reason is not None:
            dropped[key] = reason
            continue
        new_key = next((name for rule in rules if (name := rule.apply(key)) is not None), None)
        if new_key is None:
            unknown.append(key)
            continue
        if new_key in ours:
            raise CheckpointError(f"Two original keys map to the same key {new_key!r} (second: {key!r}).")
        ours[new_key] = tensor
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} original key(s) are not known to this converter:{_format_keys(unknown)}"
        )
    return ours, dropped


def compare_with_model(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Sequence[int]]) -> None:
    """Raise `CheckpointError` listing missing keys, unexpected keys and shape mismatches against `expected`."""
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key])}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint:{_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s):{_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):{_format_keys(mismatched)}")
    if problems:
        raise CheckpointError(
            "The converted checkpoint does not fit the model built from its config (another variant or another "
            "model?).\n" + "\n".join(problems)
        )


def build_model(
    model_class: type[torch.nn.Module], converted: ConvertedCheckpoint, torch_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """Instantiate `model_class(**converted.config)` without allocating, check every key/shape, load strictly."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_class(**converted.config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    compare_with_model(converted.state_dict, expected)
    state_dict = converted.state_dict
    if torch_dtype is not None:
        state_dict = {
            key: value.to(torch_dtype) if value.is_floating_point() else value for key, value in state_dict.items()
        }
    else:
        state_dict = {key: value.contiguous() for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    # Non-persistent buffers are in no state dict, so under init_empty_weights they would stay on the meta device:
    # models must register every tensor they need as a parameter or persistent buffer.
    leftovers = [
        name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta
    ]
    if leftovers:
        raise CheckpointError(f"Tensors left uninitialised after loading: {leftovers[:10]}")
    return model.eval()


def save_pretrained_atomic(
    model: Any,
    output_dir: str | os.PathLike,
    *,
    model_card: str | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    safe_serialization: bool = True,
) -> Path:
    """`model.save_pretrained` into a temporary sibling folder, then rename it into place.

    Nothing is left half-written: on any error the temporary folder is removed and `output_dir` is untouched.
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=safe_serialization)
        if model_card is not None:
            (staging / "README.md").write_text(model_card, encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        if output_dir.exists():
            backup = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            output_dir.rename(backup)
            staging.rename(output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise CheckpointError(f"Config file not found: {path}") from error
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
