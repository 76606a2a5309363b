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
"""Output paths: checked before any compute, written through a temporary name, created with the user's umask.

`check_output_file` / `check_output_dir` raise one `OutputPathError` (an `OSError`) naming the path and what is
wrong with it, so a command fails in a second instead of after minutes of encoding. `publish` moves a finished
temporary file into place with the permissions any other tool would give it (`0o666 & ~umask`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OutputPathError", "check_output_dir", "check_output_file", "file_mode", "publish", "staging_path"]


class OutputPathError(OSError):
    """An output path that cannot be written; the message names it and says why."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_folder_writable(path: Path, folder: Path, what: str) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputPathError(f"Cannot write {what} {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"Cannot write {what} {path}: the folder {existing} is read-only or not ours to write.")


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise `OutputPathError` unless `path` can be created or overwritten as a file; returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"Cannot write {what} {path}: it is a folder.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"Cannot write {what} {path}: the file is read-only.")
    _check_folder_writable(path, path.parent, what)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise `OutputPathError` unless `path` is, or can be created as, a folder we can write in."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"Cannot use {what} {path}: it is a file, not a folder.")
    _check_folder_writable(path, path, what)
    return path


def staging_path(path: str | os.PathLike) -> Path:
    """A temporary name beside `path` (same folder, so `publish` is an atomic rename)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def file_mode() -> int:
    """The permissions any tool gives a new file under the user's umask (`0o666 & ~umask`)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def publish(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Give `staging` the permissions of a file created under the user's umask, then rename it to `final`."""
    os.chmod(staging, file_mode())
    os.replace(staging, final)
    return Path(final)
