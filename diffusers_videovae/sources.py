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
"""Fetching original release files from where they are published: the Hugging Face Hub and ModelScope.

Files come through each host's own client and cache (`huggingface_hub.hf_hub_download`, `modelscope`'s
`snapshot_download`), so their offline modes, tokens and progress bars apply. Every failure a user can fix (gated repo,
wrong repo or file, offline without a cached copy, ModelScope not installed) becomes one `SourceError` line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

__all__ = ["HubLink", "SourceError", "file_identity", "hub_file", "modelscope_file", "parse_hub_link", "repo_files"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_URL = re.compile(
    r"(?:https?://)?(?:huggingface\.co|hf\.co)/(?P<repo>[\w.-]+/[\w.-]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<path>.+)"
)
_REPO_PATH = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<path>[^:]+)")


class SourceError(OSError):
    """A release file cannot be had (gated, missing, offline, ...); the message says what to do, in one line."""


class NotCachedError(SourceError):
    """Offline (HF_HUB_OFFLINE=1, `local_files_only`, or no network) and the file is not in the local cache."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class MissingFileError(SourceError):
    """The repo exists but has no such file."""


@dataclass(frozen=True)
class HubLink:
    """`https://huggingface.co/<repo>/blob/<revision>/<path>` (or `/resolve/`) or `<owner>/<repo>/<path>`."""

    repo: str
    path: str
    revision: str | None = None


def parse_hub_link(text: str) -> HubLink | None:
    """The Hub file that `text` names, or None when it is no Hub file link (then it is a path or a repo id)."""
    match = _URL.fullmatch(text)
    if match:
        return HubLink(match["repo"], unquote(match["path"]), unquote(match["revision"]))
    if "://" in text:
        return None
    match = _REPO_PATH.fullmatch(text)
    if match and ".." not in match["path"].split("/") and not text.startswith(("./", "/")):
        return HubLink(match["repo"], match["path"])
    return None


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _translate_hub_error(error: Exception, repo: str, path: str | None, revision: str | None) -> SourceError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    what = f"{repo}/{path}" if path else repo
    if isinstance(error, GatedRepoError):
        return SourceError(
            f"{repo} is a gated repo: accept its licence at https://huggingface.co/{repo} and log in "
            "(`hf auth login` or the HF_TOKEN environment variable)."
        )
    if isinstance(error, RepositoryNotFoundError):
        return SourceError(f"No Hub repo {repo!r} (or it is private: log in with `hf auth login`).")
    if isinstance(error, RevisionNotFoundError):
        return SourceError(f"Hub repo {repo} has no revision {revision!r}.")
    if isinstance(error, LocalEntryNotFoundError):
        return NotCachedError(f"{what}{at}")
    if isinstance(error, EntryNotFoundError):
        return MissingFileError(f"Hub repo {repo} has no file {path!r}{at}.")
    return SourceError(f"Cannot fetch {what}{at} from the Hub: {error}")


def hub_file(
    repo: str,
    path: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """One file of a Hub repo, through `hf_hub_download` (its cache, offline mode and progress bars)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo,
                path,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
    except (HfHubHTTPError, FileNotFoundError, ValueError, OSError) as error:
        raise _translate_hub_error(error, repo, path, revision) from None


def _snapshot_folder(repo: str, revision: str | None, cache_dir: str | os.PathLike | None) -> Path | None:
    """The cached snapshot of `repo` at `revision`, laid out as huggingface_hub lays it, or None."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    revision = revision or "main"
    commit = revision
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        ref = root / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    folder = root / "snapshots" / commit
    return folder if folder.is_dir() else None


def repo_files(
    repo: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> list[str]:
    """The files of a Hub repo: asked of the Hub online, read from the cached snapshot offline."""
    if local_files_only or is_offline():
        folder = _snapshot_folder(repo, revision, cache_dir)
        if folder is None:
            raise NotCachedError(f"{repo}{f' at revision {revision!r}' if revision else ''}")
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return sorted(huggingface_hub.list_repo_files(repo, revision=revision, token=token))
    except (HfHubHTTPError, ValueError, OSError) as error:
        raise _translate_hub_error(error, repo, None, revision) from None


def match_file(files: list[str], pattern: str) -> str | None:
    """The one file of `files` that `pattern` names (exact, or a `*` pattern); None when there is none."""
    if "*" not in pattern:
        return pattern if pattern in files else None
    found = sorted(name for name in files if fnmatch.fnmatchcase(name, pattern))
    safe = [name for name in found if name.endswith(".safetensors")]
    return (safe or found or [None])[0]


def modelscope_file(
    repo: str,
    path: str,
    *,
    alternatives: tuple[str, ...] = (),
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """One file of a ModelScope model repo, through `modelscope.snapshot_download` (its own cache)."""
    try:
        import modelscope
    except ImportError:
        raise SourceError(
            f"{repo} is hosted on ModelScope: install its client with `pip install diffusers-videovae[modelscope]`."
        ) from None
    candidates = (path, *alternatives)
    try:
        folder = modelscope.snapshot_download(
            repo,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_files_only=local_files_only or is_offline(),
            allow_file_pattern=list(candidates),  # the older name: accepted by every modelscope 1.x
        )
    except (OSError, ValueError, RuntimeError) as error:
        if local_files_only or is_offline():
            raise NotCachedError(f"modelscope:{repo}/{path}") from None
        raise SourceError(f"Cannot fetch {path} from ModelScope repo {repo}: {error}") from None
    for candidate in candidates:
        if (Path(folder) / candidate).is_file():
            return Path(folder) / candidate
    if local_files_only or is_offline():
        raise NotCachedError(f"modelscope:{repo}/{path}")
    raise SourceError(f"ModelScope repo {repo} has no file {path!r} (looked for {', '.join(candidates)}).")


def file_identity(path: Path) -> str:
    """What a downloaded file is, for the conversion cache: its Hub etag (blob name) or commit, else size and time."""
    real = path.resolve()
    if real.parent.name == "blobs":
        return "etag:" + real.name
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            return "commit:" + "/".join(parts[index + 1 :])
    stat = real.stat()
    return f"file:{real}:{stat.st_size}:{stat.st_mtime_ns}"


def content_hash(path: Path) -> str:
    """sha256 of a small local file (a user's config) or of every file in a folder, for the cache key."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
