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

`check_outputs` refuses, in one `OutputPathError` (an `OSError`) naming the option and the path, every output that
cannot or must not be written: a folder, a read-only file, a path under a file, the same file as an input (symlinks
and hard links included), two outputs naming one file, and an existing file without `--overwrite`. A command calls
it first, so it fails in a second instead of after minutes of encoding.

`atomic_output(path)` is the one way we write a file or folder: the caller writes to the temporary name it yields
(`.NAME.tmp-<pid>-<hex>` in the same folder); on success it is renamed into place with the permissions any other
tool would give it (`0o666 & ~umask`), on an error, Ctrl-C or SIGTERM it is removed. A process killed at any instant
leaves the old file or the complete new one at the final path; its temporary is removed by the next write there.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "OutputPathError",
    "atomic_output",
    "check_output_dir",
    "check_output_file",
    "check_outputs",
    "file_mode",
    "process_is_alive",
    "publish",
    "publish_folder",
    "raise_on_sigterm",
    "remove_stale_temporaries",
    "same_file",
    "temporary_name",
]

PathOption = tuple["str | os.PathLike | None", str]
"""An output or input as the command line names it: `(path, option)`, e.g. `("out.mp4", "-o")`."""


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same inode when both exist (hard links, symlinks), else the same
    resolved path (an output that does not exist yet, or a dangling symlink to the other)."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_outputs(
    outputs: Sequence[PathOption], inputs: Sequence[PathOption] = (), overwrite: bool = False
) -> list[Path]:
    """Refuse, before any compute, every `(path, option)` output that must not be written; returns the given ones.

    Besides `check_output_file`'s checks: an output that is the same file as an input, two outputs naming one file,
    and an existing output without `overwrite` (`--overwrite`). Entries whose path is None are skipped.
    """
    given = [(Path(path), option) for path, option in outputs if path is not None]
    sources = [(Path(path), option) for path, option in inputs if path is not None]
    for number, (path, option) in enumerate(given):
        for source, name in sources:
            if same_file(path, source):
                raise OutputPathError(
                    f"Refusing to write {option} {path}: it is the same file as the input {name} {source}; "
                    "choose another output name."
                )
        for other, other_option in given[:number]:
            if same_file(path, other):
                raise OutputPathError(
                    f"Refusing to write {option} {path}: {other_option} {other} names the same file; give each "
                    "output its own name."
                )
        check_output_file(path, option)
        if path.exists() and not overwrite:
            raise OutputPathError(f"{option} {path} already exists; pass --overwrite to replace it.")
    return [path for path, _ in given]


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


def temporary_name(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh name `.NAME.<kind>-<pid>-<hex>` beside `path` (same folder, so renaming it into place is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _temporary_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-f]{{8}}")


def process_is_alive(pid: int) -> bool:
    """Whether the process `pid` (named in a temporary's name) still runs; another user's process counts as alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (files or folders) that killed writes of `path` left beside it; returns them.

    Only names of our own pattern (`.NAME.tmp-<pid>-<hex>`, `.NAME.old-<pid>-<hex>`) are touched, and only when the
    process whose pid is in the name is no longer running.
    """
    path = Path(path).absolute()
    if not path.parent.is_dir():
        return []
    pattern = _temporary_pattern(path.name)
    removed = []
    for item in path.parent.iterdir():
        match = pattern.fullmatch(item.name)
        if match and not process_is_alive(int(match["pid"])):
            _remove(item)
            removed.append(item)
    return removed


@contextlib.contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `SystemExit(143)` inside, so `finally` blocks remove temporaries; the old handler after.

    Only where SIGTERM would otherwise kill the process outright (the default handler, in the main thread): a
    handler the application installed (or an outer `raise_on_sigterm`) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def publish_folder(staging: Path, final: Path) -> None:
    """Move the finished folder `staging` to `final`; an old `final` is renamed aside first and removed only once
    the new one is in place, so a kill at any instant leaves a complete folder on disk."""
    mode = file_mode()
    for item in staging.rglob("*"):
        if item.is_file() and not item.is_symlink():
            item.chmod(mode)
    if final.exists():
        old = temporary_name(final, "old")
        final.rename(old)
        staging.rename(final)
        _remove(old)
    else:
        staging.rename(final)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary name beside `path` to write to; rename it into place when the block succeeds.

    On an exception, Ctrl-C or SIGTERM the temporary is removed and `path` is untouched (the old file, if any, stays).
    With `folder=True` the temporary is an empty folder, which replaces the folder at `path` (if any) as a whole.
    The parent folder is created, temporaries left by killed writes of `path` are removed, and files get the
    user's umask permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    with raise_on_sigterm():
        staging = temporary_name(path)
        if folder:
            staging.mkdir()
        try:
            yield staging
            if folder:
                publish_folder(staging, path)
            else:
                publish(staging, path)
        except BaseException:
            _remove(staging)
            raise
