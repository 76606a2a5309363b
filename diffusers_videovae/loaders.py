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

import functools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .checkpoints._common import TORCH_DTYPES, load_state_dict_file, read_json
from .model_cache import find_converted, load_entry, load_or_convert
from .releases import Source, find_release, is_release_name, releases_in_repo
from .sources import (
    WEIGHT_SUFFIXES,
    HubLink,
    MissingFileError,
    NotCachedError,
    SourceError,
    content_hash,
    file_identity,
    hub_file,
    match_file,
    modelscope_file,
    parse_hub_link,
    repo_files,
)

__all__ = [
    "BUILTIN_MODELS",
    "DEMO_MODEL_DIR",
    "TORCH_DTYPES",
    "FromOriginalCheckpointMixin",
    "load_model",
    "load_release",
    "resolve_dtype",
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
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **options: Any,
    ):
        """Build the model from an original release file, converting its keys on the fly.

        Args:
            pretrained_model_link_or_path: a local file, a Hub file link
                (`https://huggingface.co/<repo>/blob/<revision>/<path>`, `/resolve/` too, or `<owner>/<repo>/<path>`)
                or a release name (`reducio:ft4`, see `videovae models`). Hub files come through
                `huggingface_hub.hf_hub_download` (its cache and offline mode); their conversion is kept (see
                `model_cache`), so the second load reads a diffusers folder.
            variant: released variant name; inferred from tensor shapes when omitted.
            original_config: the original's own config file, for custom (non-released) models.
            dtype: cast the weights to this dtype (`torch_dtype`, its former name, still works, with a warning).
            revision, token, cache_dir, local_files_only: as for `huggingface_hub.hf_hub_download`.
            options: model-specific reading options (see the conversion script's `--help`).
        """
        from .checkpoints import load_original_model

        dtype = resolve_dtype(dtype, options.pop("torch_dtype", None))
        name = os.fspath(pretrained_model_link_or_path)
        hub = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
        if not Path(name).exists():
            if is_release_name(name):
                return load_release(
                    name,
                    model_class=cls,
                    dtype=dtype,
                    variant=variant,
                    original_config=original_config,
                    **hub,
                    **options,
                )
            link = parse_hub_link(name)
            if link is not None:
                return _load_hub_file(link, cls, None, dtype, variant, original_config, hub, options)
            if "://" in name:
                raise SourceError(
                    f"{name} is not a Hugging Face Hub file link; expected "
                    "https://huggingface.co/<owner>/<repo>/blob/<revision>/<path> (or a local file)."
                )
        return load_original_model(
            cls, name, variant=variant, original_config=original_config, torch_dtype=dtype, **options
        )


def resolve_dtype(dtype: torch.dtype | None, torch_dtype: torch.dtype | None) -> torch.dtype | None:
    """diffusers' rule for its renamed argument: `torch_dtype` still works, with diffusers' own warning."""
    if torch_dtype is None:
        return dtype
    if dtype is not None:
        raise ValueError(
            "You have passed both `dtype` and `torch_dtype`. Please only pass `dtype`, `torch_dtype` is deprecated."
        )
    # diffusers' `deprecate` itself refuses to run once diffusers reaches the removal version, so warn directly.
    warnings.warn(
        "`torch_dtype` is deprecated and will be removed in version 1.0.0. Please use `dtype` instead.",
        FutureWarning,
        stacklevel=3,
    )
    return torch_dtype


def dtype_kwargs(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    """The dtype argument for the installed diffusers' `from_pretrained` (`dtype` since 0.42, `torch_dtype` before)."""
    if dtype is None:
        return {}
    return {"dtype" if _diffusers_takes_dtype() else "torch_dtype": dtype}


@functools.cache
def _diffusers_takes_dtype() -> bool:
    import diffusers
    from packaging.version import Version

    return Version(Version(diffusers.__version__).base_version) >= Version("0.42")


def load_model(
    model: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    model_type: str | None = None,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **options: Any,
):
    """Load any of our VAEs from a release name, a diffusers folder, a Hub repo, or an original checkpoint.

    `model` may be:
    * a release name, `MODEL_TYPE:VARIANT` (`odvae:v1.2.0`; `videovae models` lists them): its files are fetched
      from where they are published and converted once (the conversion is kept, see `model_cache`);
    * a Hub repo id (`owner/name`, with `subfolder` / `revision`): our converted folders load with
      `from_pretrained`; a repo holding an ORIGINAL release (OD-VAE's `vae/config.json + checkpoint.ckpt`,
      Open-Sora's `config.json + model.safetensors`, Reducio's `.ckpt` files with `variant=`) is recognised from its
      files and converted;
    * a Hub file link (`https://huggingface.co/<repo>/blob/<revision>/<path>` or `<owner>/<repo>/<file.ckpt>`);
    * a local diffusers folder, original release folder or file, or a built-in name (`BUILTIN_MODELS`).
    A name that is none of these fails at once, without asking the Hub. `dtype` casts the weights (`torch_dtype`,
    its former name, still works with a deprecation warning); `token`, `cache_dir`, `local_files_only` go to
    huggingface_hub.
    """
    from . import checkpoints

    dtype = resolve_dtype(dtype, options.pop("torch_dtype", None))
    name = os.fspath(model)
    hub = {"revision": revision, "token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if not Path(name).exists():
        if is_release_name(name):
            return load_release(name, dtype=dtype, variant=variant, original_config=original_config, **hub, **options)
        link = parse_hub_link(name)
        if link is not None and (link.revision is not None or link.path.endswith(WEIGHT_SUFFIXES)):
            return _load_hub_file(link, None, model_type, dtype, variant, original_config, hub, options)
    path = resolve_model_name(model)
    if not path.exists():
        return _load_hub_repo(name, subfolder, model_type, dtype, variant, original_config, hub, options)
    model = path
    folder = path / (subfolder or "")
    if path.is_dir() and (folder / "config.json").is_file():
        read_json(folder / "config.json")  # a damaged config.json says so, not "keys match no supported model"
    if path.is_dir() and not _is_diffusers_folder(folder):
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
    if path.is_file() or (path.is_dir() and not _is_diffusers_folder(folder)):
        return checkpoints.load_original_model(
            None,
            path,
            model_type=model_type,
            variant=variant,
            original_config=original_config,
            torch_dtype=dtype,
            **options,
        ).eval()
    class_name = read_json(folder / "config.json")["_class_name"]
    model_class = _our_class(class_name, str(model))
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return model_class.from_pretrained(str(model), **kwargs, **dtype_kwargs(dtype)).eval()


def _our_class(class_name: str | None, where: str) -> type:
    from . import checkpoints

    for known_type, (_, known_class) in checkpoints.MODEL_TYPES.items():
        if known_class == class_name:
            return checkpoints.get_model_class(known_type)
    raise ValueError(f"{where} holds a {class_name}, which is not a diffusers-videovae model.")


# -- original releases fetched from their hosts ------------------------------------------------------------------


class NotFetchedError(SourceError):
    """A source file is neither cached nor fetchable now (offline); the message names it and the fix."""


def load_release(
    name: str,
    *,
    model_class: type | None = None,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    original_config: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **options: Any,
):
    """The release `name` (`MODEL_TYPE:VARIANT`, see `releases.RELEASES`): fetched, converted once, loaded.

    `revision` applies to the release's main repo; `original_config` replaces the config the release ships (for a
    custom model published under a release's file names).
    """
    from .checkpoints import CheckpointError, _article, get_model_class

    release = find_release(name)
    if variant is not None and variant != release.variant:
        raise CheckpointError(f"{name} is the {release.variant} variant; --variant {variant} contradicts it.")
    expected = get_model_class(release.model_type)
    if model_class is not None and not issubclass(model_class, expected):
        raise CheckpointError(f"{name} is {_article(release.model_type)} release: load it with {expected.__name__}.")
    hub = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only}
    try:
        fetched = _fetch_sources(release.sources, revision, release.main.repo, hub, fetch_hint=name)
    except NotFetchedError:
        kept = find_converted(_requested(name, original_config, options)) if revision is None else None
        if kept is None:
            raise
        return load_entry(kept, model_class or expected, dtype_kwargs(dtype))
    return _convert_cached(
        model_class or expected,
        release.model_type,
        release.variant,
        fetched,
        dtype,
        None,
        original_config,
        options,
        name,
    )


def _fetch_sources(
    sources: tuple[Source, ...], revision: str | None, main_repo: str, hub: dict[str, Any], fetch_hint: str
) -> list[tuple[Source, Path]]:
    """Every source file as a local path; offline without a cached copy: one line naming it and the fix."""
    fetched = []
    try:
        for source in sources:
            source_revision = revision if revision is not None and source.repo == main_repo else source.revision
            if source.host == "modelscope":
                path = modelscope_file(
                    source.repo,
                    source.path,
                    alternatives=source.alternatives,
                    revision=source_revision,
                    local_files_only=hub["local_files_only"],
                )
            else:
                file = source.path
                if "*" in file:
                    listing = repo_files(source.repo, revision=source_revision, **hub)
                    file = match_file(listing, source.path)
                    if file is None:
                        raise SourceError(f"Hub repo {source.repo} has no file matching {source.path!r}.")
                path = hub_file(source.repo, file, revision=source_revision, **hub)
            fetched.append((source, path))
    except NotCachedError as error:
        raise NotFetchedError(
            f"{error.what} is not in the local cache, and the host cannot be asked (HF_HUB_OFFLINE=1, "
            f"local_files_only, or no network). Fetch it once with network access (HF_HUB_OFFLINE unset): "
            f"videovae cache fetch {fetch_hint}"
        ) from None
    return fetched


def _convert_cached(
    model_class: type | None,
    model_type: str | None,
    variant: str | None,
    fetched: list[tuple[Source, Path]],
    dtype: torch.dtype | None,
    converter_variant: str | None,
    original_config: str | os.PathLike | None,
    options: dict[str, Any],
    requested: str,
):
    """Convert the fetched files (once: `model_cache`) and load the result in `dtype`.

    `requested` (what the user named: a release, a link, a repo) is recorded with the user's options, so that
    offline, a conversion whose originals were since removed from the Hub cache still loads by that name.
    """
    from .checkpoints import load_original_model

    paths: dict[str, list[Path]] = {}
    for source, path in fetched:
        paths.setdefault(source.role, []).append(path)
    reader = {role: _one_path(found) for role, found in paths.items()}
    checkpoint = reader.pop("checkpoint")
    if original_config is not None:
        reader["original_config"] = Path(original_config)
    identity = {
        "model_type": model_type,
        "variant": variant if original_config is None else None,
        "converter_variant": converter_variant,
        "sources": [[s.role, s.host, s.repo, s.path, file_identity(p)] for s, p in fetched],
        "options": {key: _option_identity(value) for key, value in sorted({**options, **reader}.items())},
        "requested": _requested(requested, original_config, options),
    }

    def build():
        return load_original_model(
            model_class, checkpoint, model_type=model_type, variant=converter_variant, **reader, **options
        )

    return load_or_convert(model_class, identity, build, dtype_kwargs(dtype))


def _requested(name: str, original_config: str | os.PathLike | None, options: dict[str, Any]) -> dict[str, Any]:
    given = {**options, **({"original_config": original_config} if original_config is not None else {})}
    return {"name": name, "options": {key: _option_identity(value) for key, value in sorted(given.items())}}


def _one_path(paths: list[Path]) -> Path:
    """A role's file: the weights file when a role has several (the SVD VAE's config.json lies beside it)."""
    weights = [path for path in paths if path.name.endswith(WEIGHT_SUFFIXES)]
    return (weights or paths)[0]


def _option_identity(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)) and Path(value).exists():
        path = Path(value)
        return file_identity(path) if "snapshots" in path.parts else content_hash(path)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _load_hub_file(
    link: HubLink,
    model_class: type | None,
    model_type: str | None,
    dtype: torch.dtype | None,
    variant: str | None,
    original_config: str | os.PathLike | None,
    hub: dict[str, Any],
    options: dict[str, Any],
):
    """One original checkpoint file on the Hub (`from_single_file`'s link forms)."""
    from .checkpoints import model_type_of_class

    revision = link.revision or hub["revision"]
    hub = {key: value for key, value in hub.items() if key != "revision"}
    source = Source("checkpoint", link.repo, link.path, revision=revision)
    fetched = _fetch_sources((source,), None, link.repo, hub, fetch_hint=_link_text(link))
    if model_type is None and model_class is not None:
        model_type = model_type_of_class(model_class)
    return _convert_cached(
        model_class, model_type, variant, fetched, dtype, variant, original_config, options, _link_text(link)
    )


def _link_text(link: HubLink) -> str:
    if link.revision:
        return f"https://huggingface.co/{link.repo}/blob/{link.revision}/{link.path}"
    return f"{link.repo}/{link.path}"


def _load_hub_repo(
    repo: str,
    subfolder: str | None,
    model_type: str | None,
    dtype: torch.dtype | None,
    variant: str | None,
    original_config: str | os.PathLike | None,
    hub: dict[str, Any],
    options: dict[str, Any],
):
    """A Hub repo: our converted folder (`from_pretrained`), a known release, or another original release."""
    from .checkpoints import CheckpointError

    hint = repo + (f" --subfolder {subfolder}" if subfolder else "") + (f" --variant {variant}" if variant else "")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    # Our converted folders first, as diffusers would: their config.json names one of our classes.
    try:
        config = read_json(hub_file(repo, prefix + "config.json", **hub))
    except (MissingFileError, NotCachedError):
        config = {}
    except CheckpointError:  # not JSON: fatal unless the repo holds a release we read without it
        if not releases_in_repo(repo, subfolder):
            raise
        config = {}
    if _is_our_class(config.get("_class_name")):
        model_class = _our_class(config["_class_name"], repo)
        kwargs = {key: value for key, value in hub.items() if value not in (None, False)}
        if subfolder:
            kwargs["subfolder"] = subfolder
        return model_class.from_pretrained(repo, **kwargs, **dtype_kwargs(dtype)).eval()
    try:
        files = repo_files(repo, **hub)
    except NotCachedError as error:
        raise SourceError(
            f"{error.what} is not in the local cache, and the Hub cannot be asked (HF_HUB_OFFLINE=1, "
            f"local_files_only, or no network). Fetch it once with network access (HF_HUB_OFFLINE unset): "
            f"videovae cache fetch {hint}"
        ) from None
    here = [name[len(prefix) :] for name in files if name.startswith(prefix)]
    if not here:
        raise SourceError(f"Hub repo {repo} has no folder {subfolder!r} (it holds: {', '.join(files[:12])}).")
    known = [r for r in releases_in_repo(repo, subfolder) if model_type in (None, r.model_type)]
    if known:
        chosen = [r for r in known if variant in (None, r.variant)]
        if len(chosen) != 1:
            names = ", ".join(r.variant for r in known)
            raise SourceError(
                f"Hub repo {repo} holds the releases {names}: pick one with variant= (--variant), "
                f"or name it as {known[0].model_type}:VARIANT."
            )
        return load_release(chosen[0].name, dtype=dtype, original_config=original_config, **hub, **options)
    return _load_unknown_original(repo, prefix, here, model_type, dtype, variant, original_config, hub, options)


def _load_unknown_original(
    repo: str,
    prefix: str,
    here: list[str],
    model_type: str | None,
    dtype: torch.dtype | None,
    variant: str | None,
    original_config: str | os.PathLike | None,
    hub: dict[str, Any],
    options: dict[str, Any],
):
    """A repo holding one original checkpoint (and maybe its config.json) that the release table does not list."""
    weights = [name for name in here if name.endswith(WEIGHT_SUFFIXES) and "/" not in name]
    where = f"{repo}/{prefix}" if prefix else repo
    if not weights:
        raise SourceError(
            f"Hub repo {where} holds neither a diffusers-videovae model nor an original checkpoint "
            f"(files: {', '.join(here[:12])})."
        )
    if len(weights) > 1:
        raise SourceError(
            f"Hub repo {where} holds several checkpoints ({', '.join(weights)}): name one as {repo}/{prefix}FILE."
        )
    sources = [Source("checkpoint", repo, prefix + weights[0], revision=hub["revision"])]
    if "config.json" in here and original_config is None:
        sources.append(Source("original_config", repo, prefix + "config.json", revision=hub["revision"]))
    fetch = {key: value for key, value in hub.items() if key != "revision"}
    fetched = _fetch_sources(tuple(sources), None, repo, fetch, fetch_hint=repo)
    return _convert_cached(None, model_type, variant, fetched, dtype, variant, original_config, options, where)


def _is_our_class(class_name: Any) -> bool:
    from .checkpoints import MODEL_TYPES

    return class_name in {name for _, name in MODEL_TYPES.values()}


def resolve_model_name(model: str | os.PathLike) -> Path:
    """`model` as a path: a built-in name becomes its folder; a name nothing can resolve raises a clear error.

    Release names (`odvae:v1.2.0`), Hub file links and Hub repo ids come back as they are (they exist nowhere
    locally); an unknown release name fails here, naming the known ones.
    """
    name = os.fspath(model)
    path = Path(name)
    if path.exists():
        return path
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    if is_release_name(name):
        find_release(name)
        return path
    if is_plausible_hub_id(name) or parse_hub_link(name) is not None and "://" in name:
        return path
    raise FileNotFoundError(
        f"{name!r} is not an existing folder or file, nor a Hub repo id (owner/name). Built-in models: "
        f"{', '.join(sorted(BUILTIN_MODELS))}; release names such as odvae:v1.2.0 are listed by `videovae models`."
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
