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
"""Converted once: original releases fetched from a host are converted on first use and kept as diffusers folders.

An entry is keyed by what was converted (model type, the source files' Hub etags or commits, reading options, the
package version), so a new upload or a new converter gives a new entry. Entries live in `$VIDEOVAE_CACHE` or
`$HF_HOME/diffusers-videovae/converted`; each is written into a temporary folder and renamed into place under a file
lock (two processes converting the same release wait for each other), and carries a manifest (`videovae-cache.json`:
every file's size) written last: an entry without it, or whose files' sizes differ, is damaged and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["MANIFEST", "cache_root", "clear_cache", "find_converted", "list_entries", "load_entry", "load_or_convert"]

MANIFEST = "videovae-cache.json"
_FORMAT = 1


def cache_root() -> Path:
    """Where converted models are kept: `$VIDEOVAE_CACHE`, else `$HF_HOME/diffusers-videovae/converted`."""
    if os.environ.get("VIDEOVAE_CACHE"):
        return Path(os.environ["VIDEOVAE_CACHE"]).expanduser()
    from huggingface_hub import constants

    home = os.environ.get("HF_HOME") or constants.HF_HOME
    return Path(home).expanduser() / "diffusers-videovae" / "converted"


def entry_key(identity: dict[str, Any]) -> str:
    from . import __version__

    payload = json.dumps({"format": _FORMAT, "version": __version__, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _read_manifest(entry: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == _FORMAT else None


def is_complete(entry: Path) -> bool:
    """The manifest is there and every file it lists has its recorded size."""
    manifest = _read_manifest(entry)
    if manifest is None or not manifest.get("files"):
        return False
    for name, size in manifest["files"].items():
        file = entry / name
        if not file.is_file() or file.stat().st_size != size:
            return False
    return True


def _write_entry(entry: Path, build: Callable[[], torch.nn.Module], identity: dict[str, Any]) -> None:
    staging = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        model = build()
        model.save_pretrained(staging, safe_serialization=True)
        files = {p.relative_to(staging).as_posix(): p.stat().st_size for p in staging.rglob("*") if p.is_file()}
        manifest = {"format": _FORMAT, "created": time.time(), "source": identity, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        if entry.exists():  # damaged: we hold the lock, nobody else writes it
            shutil.rmtree(entry)
        staging.rename(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_or_convert(
    model_class: type | None,
    identity: dict[str, Any],
    build: Callable[[], torch.nn.Module],
    from_pretrained_kwargs: dict[str, Any],
) -> torch.nn.Module:
    """`from_pretrained` of the cached conversion of `identity`, converting with `build()` first when needed.

    `identity` names the sources (JSON-able); `build` converts them (called at most once, under the lock).
    `model_class` None: the class named by the entry's config.json.
    """
    from filelock import FileLock

    root = cache_root()
    name = f"{identity.get('model_type') or 'original'}-{identity.get('variant') or 'custom'}-{entry_key(identity)}"
    entry = root / name
    lock = root / f".{name}.lock"
    if not is_complete(entry):
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            if not is_complete(entry):
                _write_entry(entry, build, identity)
    try:
        return load_entry(entry, model_class, from_pretrained_kwargs)
    except (OSError, ValueError, RuntimeError):
        # Same sizes but unreadable content (a damaged header): rebuild once.
        with FileLock(str(lock)):
            (entry / MANIFEST).unlink(missing_ok=True)
            _write_entry(entry, build, identity)
        return load_entry(entry, model_class, from_pretrained_kwargs)


def load_entry(entry: Path, model_class: type | None, kwargs: dict[str, Any]) -> torch.nn.Module:
    """`from_pretrained` of an entry; `model_class` None: the class its config.json names."""
    if model_class is None:
        from .checkpoints import MODEL_TYPES, get_model_class

        class_name = json.loads((entry / "config.json").read_text())["_class_name"]
        model_type = next(known for known, (_, name) in MODEL_TYPES.items() if name == class_name)
        model_class = get_model_class(model_type)
    return model_class.from_pretrained(str(entry), **kwargs).eval()


def find_converted(requested: dict[str, Any]) -> Path | None:
    """The newest complete entry made for `requested` (a name and the user's options), or None."""
    found = [
        (manifest.get("created", 0), entry)
        for entry, manifest, _ in list_entries()
        if manifest is not None and manifest["source"].get("requested") == requested and is_complete(entry)
    ]
    return max(found)[1] if found else None


def list_entries(root: Path | None = None) -> list[tuple[Path, dict[str, Any] | None, int]]:
    """Our entries (folders with our manifest, or staging folders of ours), with their manifest and size in bytes."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        manifest = _read_manifest(entry) if entry.is_dir() else None
        if manifest is not None or (entry.is_dir() and entry.name.startswith(".tmp-")):
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            found.append((entry, manifest, size))
    return found


def clear_cache(root: Path | None = None) -> tuple[int, int]:
    """Remove our entries only (not a conversion under way); returns (entries removed, bytes freed)."""
    root = root or cache_root()
    removed = freed = 0
    for entry, _, size in list_entries(root):
        if _staging_of_a_live_process(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
        freed += size
    # Lock files stay: removing one that another process holds would let a third one in.
    return removed, freed


def _staging_of_a_live_process(entry: Path) -> bool:
    from .paths import process_is_alive

    parts = entry.name.split("-")
    return (
        entry.name.startswith(".tmp-") and len(parts) >= 3 and parts[-2].isdigit() and process_is_alive(int(parts[-2]))
    )
