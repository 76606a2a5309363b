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
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "ConvertedCheckpoint",
    "OriginalCheckpoint",
    "RenameRule",
    "TORCH_DTYPES",
    "account_keys",
    "build_model",
    "check_output_dir",
    "entries_set_aside",
    "nested_mapping",
    "file_sha256",
    "load_state_dict_file",
    "remove_stale_temp_dirs",
    "save_pretrained_atomic",
    "unwrap_state_dict",
]


# The dtype names every `--dtype` option of the package accepts.
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """An original checkpoint cannot be read or converted (wrong model, wrong variant, unknown or missing keys).

    The message is what a user reads first (one line where a long listing would bury the fix); `details`, when
    set, is the full listing behind it (the converters print it with `--verbose`).
    """

    def __init__(self, message: str, details: str | None = None):
        super().__init__(message)
        self.details = details


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
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            # mmap needs the zip format; legacy torch files fall back to a plain (still weights-only) read.
            if "mmap" not in str(error):
                raise
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise _unreadable_torch_file(path, error) from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    return dict(loaded)


def _unreadable_torch_file(path: Path, error: Exception) -> CheckpointError:
    """Our one-line reason why `torch.load(weights_only=True)` refused `path`.

    torch's own message for a pickle that needs code advises re-running with `weights_only=False`, which would
    execute that code: it is never quoted, only the name of the object the file asked for.
    """
    text = str(error)
    if "weights_only" in text or "Weights only load failed" in text or "Unsupported global" in text:
        asked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it asks for {asked.group(1)})" if asked else ""
        return CheckpointError(
            f"{path} contains pickled Python objects{what}; this package reads only tensors and never executes "
            "pickled code. Get the weights as safetensors, or re-save only the tensors from a trusted environment."
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return CheckpointError(f"Cannot read {path} as a torch checkpoint (truncated or corrupt?): {first_line}")


def unwrap_state_dict(
    loaded: Mapping[str, Any], wrappers: Sequence[str] = ("state_dict",), strip_prefixes: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the tensor mapping inside a loaded file: the first of `wrappers` present (non-empty), else the file.

    A wrapper may be a dotted path into nested mappings (`"state_dict.gen_model"`). Returns the state dict (with
    `strip_prefixes` removed where every key has them) and the wrapper used (None: the file itself).
    """
    used = None
    state = loaded
    for wrapper in wrappers:
        found = nested_mapping(loaded, wrapper)
        if found:
            state, used = found, wrapper
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


def nested_mapping(loaded: Mapping[str, Any], dotted: str) -> Mapping[str, Any] | None:
    value: Any = loaded
    for name in dotted.split("."):
        value = value.get(name) if isinstance(value, Mapping) else None
    return value if isinstance(value, Mapping) else None


def entries_set_aside(loaded: Mapping[str, Any], wrapper: str | None) -> dict[str, str]:
    """The entries of a wrapped file that `unwrap_state_dict` did not use (reported as dropped on purpose)."""
    if wrapper is None:
        return {}
    set_aside = {}
    parts = wrapper.split(".")
    level: Mapping[str, Any] = loaded
    for depth, name in enumerate(parts):
        for other in level:
            if other != name:
                where = ".".join([*parts[:depth], str(other)])
                set_aside[where] = f"not part of the converted weights ({wrapper})"
        level = level[name]
    return set_aside


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
    reference = model.state_dict()
    source = converted.info.get("source_file") or "the checkpoint"
    try:
        compare_with_model(converted.state_dict, {key: tuple(value.shape) for key, value in reference.items()})
    except CheckpointError as error:
        if converted.variant is None:  # the user's own config: the listing is what they need to fix it
            raise
        raise _variant_mismatch(converted, source, error) from None
    _check_float_weights(converted.state_dict, reference, source)
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


def _variant_mismatch(converted: ConvertedCheckpoint, source: str, error: CheckpointError) -> CheckpointError:
    """One line for weights that do not fit the released variant they were read as (most often a custom model
    converted without its config), with the full listing of `error` as details."""
    listing = str(error).split("\n", 1)[-1]
    counts = [line.split(":")[0] for line in listing.splitlines() if not line.startswith("  ")]
    first = [line.strip() for line in listing.splitlines() if line.startswith("  ") and "..." not in line][:2]
    return CheckpointError(
        f"{source} does not fit the model of the released {converted.model_type} variant "
        f"{converted.variant!r} that was tried ({'; '.join(counts)}; e.g. {'; '.join(first)}). A custom model needs "
        "its original config: pass --original-config (original_config=...); another release: --variant "
        "(variant=...). A conversion with --verbose lists every mismatch.",
        details=listing,
    )


def _check_float_weights(
    state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str
) -> None:
    """Refuse integer (or bool) tensors where the model has floating point weights, naming the first keys."""
    wrong = [
        f"{key} ({state_dict[key].dtype})"
        for key in sorted(state_dict)
        if key in reference
        and reference[key].is_floating_point()
        and not (state_dict[key].is_floating_point() or state_dict[key].is_complex())
    ]
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"{source} holds integer tensors where the model has floating point weights: {', '.join(wrong[:3])}"
            f"{more}; this is not a float checkpoint of this model (quantised or damaged?)."
        )


# What a conversion (or `save_pretrained`) of ours writes into a model folder: only these may be replaced.
_OUR_FILE_PATTERNS = (
    r"config\.json",
    r"README\.md",
    r"diffusion_pytorch_model(?:-\d{5}-of-\d{5})?\.safetensors",
    r"diffusion_pytorch_model\.safetensors\.index\.json",
)


def _our_model_class_names() -> set[str]:
    from . import MODEL_TYPES  # the registry imports this file: read it when called, not at import time

    return {class_name for _, class_name in MODEL_TYPES.values()}


def _is_previous_model_of_ours(folder: Path) -> tuple[bool, str]:
    """Whether `folder` holds only what one of our conversions writes; if not, why not (for the error)."""
    strangers = sorted(
        item.name
        for item in folder.iterdir()
        if not (item.is_file() and any(re.fullmatch(pattern, item.name) for pattern in _OUR_FILE_PATTERNS))
    )
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        return False, f"it holds files that a conversion does not write ({shown})"
    try:
        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return False, "it has no readable config.json of a diffusers-videovae model"
    if class_name not in _our_model_class_names():
        return False, f"its config.json describes a {class_name!r}, not a diffusers-videovae model"
    return True, ""


def check_output_dir(
    output_dir: str | os.PathLike, *, overwrite: bool = False, protect: Sequence[str | os.PathLike] = ()
) -> Path:
    """Refuse, before any work, an output folder we must not write or replace; returns its absolute path.

    A non-empty folder is replaced only with `overwrite` and only when it holds a previous model of ours
    (`config.json` naming one of our classes, our safetensors, a `README.md` card). `protect` lists the inputs
    (e.g. the checkpoint being converted): the output may neither be, nor contain, nor sit inside one of them.
    """
    output_dir = Path(output_dir).absolute()
    for source in protect:
        source, real_output = Path(source).resolve(), output_dir.resolve()  # through symlinks
        if source == real_output or real_output in source.parents:
            raise FileExistsError(
                f"Refusing to write {output_dir}: it holds the checkpoint being converted ({source}); "
                "choose another output folder."
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"Output {output_dir} exists and is a file, not a folder; choose another path.")
    from ..paths import check_output_dir as check_writable_dir

    check_writable_dir(output_dir, "output folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace a previous "
                "conversion there."
            )
        ours, why = _is_previous_model_of_ours(output_dir)
        if not ours:
            raise FileExistsError(
                f"Refusing to replace {output_dir}: {why}. --overwrite only replaces a previous diffusers-videovae "
                "model; move those files or choose another output folder."
            )
    return output_dir


def remove_stale_temp_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Remove the staging folders an interrupted save of `output_dir` left beside it; returns what was removed.

    The package's one rule (`paths.remove_stale_temporaries`): only names of our own pattern
    (`.<name>.tmp-<pid>-<hex>` / `.<name>.old-<pid>-<hex>`) are touched, and only when the process that wrote them
    (its pid is in the name) is no longer running.
    """
    from ..paths import remove_stale_temporaries

    return remove_stale_temporaries(output_dir)


def _make_sibling_dir(output_dir: Path, kind: str) -> Path:
    """A new folder `.<name>.<kind>-<pid>-<hex>` beside `output_dir`, created with the user's umask."""
    from ..paths import temporary_name

    while True:
        path = temporary_name(output_dir, kind)
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


def _apply_umask(staging: Path) -> None:
    """Give the files we staged the modes of any file the user creates (some writers make them owner-only)."""
    from ..paths import file_mode

    mode = file_mode()
    for item in staging.rglob("*"):
        if item.is_file() and not item.is_symlink():
            item.chmod(mode)


def _remove_previous_model(folder: Path) -> None:
    """Delete the files of a previous model of ours (checked by `check_output_dir`) and then the folder itself."""
    for item in folder.iterdir():
        if item.is_file() and any(re.fullmatch(pattern, item.name) for pattern in _OUR_FILE_PATTERNS):
            item.unlink()
    try:
        folder.rmdir()
    except OSError:
        logger.warning("Left %s in place: something other than a converted model appeared in it.", folder)


def save_pretrained_atomic(
    model: Any,
    output_dir: str | os.PathLike,
    *,
    model_card: str | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
    safe_serialization: bool = True,
    protect: Sequence[str | os.PathLike] = (),
) -> Path:
    """`model.save_pretrained` into a temporary sibling folder, then rename it into place.

    Nothing is left half-written: on any error (SIGTERM included) the temporary folder is removed and `output_dir`
    is untouched; staging folders that a killed run left behind are removed first. `overwrite` replaces only a
    previous model of ours (see `check_output_dir`); files and folders are created with the user's umask.
    """
    from ..paths import raise_on_sigterm, temporary_name

    output_dir = check_output_dir(output_dir, overwrite=overwrite, protect=protect)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(output_dir)
    with raise_on_sigterm():
        staging = _make_sibling_dir(output_dir, "tmp")
        try:
            model.save_pretrained(staging, safe_serialization=safe_serialization)
            if model_card is not None:
                (staging / "README.md").write_text(model_card, encoding="utf-8")
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text, encoding="utf-8")
            _apply_umask(staging)
            if output_dir.exists():
                check_output_dir(output_dir, overwrite=overwrite, protect=protect)  # nothing new appeared meanwhile
                backup = temporary_name(output_dir, "old")
                output_dir.rename(backup)
                staging.rename(output_dir)
                _remove_previous_model(backup)
            else:
                staging.rename(output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return output_dir


def read_config_text(path: str | os.PathLike) -> str:
    """The text of an original config file, or a `CheckpointError` naming the file (missing, a folder, not UTF-8)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"Config file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"Expected a config file, got a folder: {path}") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"Config file {path} is not UTF-8 text (byte {error.start}: {error.object[error.start : error.start + 1]!r}"
            "); --original-config takes the original's json, yaml or python config, saved as UTF-8."
        ) from None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    text = read_config_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
