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
"""`videovae models` (the release table) and `videovae cache` (converted releases: fetch, list, clear).

Also the Hub options every `-m` takes (`--subfolder`, `--revision`, `--variant`), shared by the sub-commands.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_source_arguments", "register", "source_options"]


def add_source_arguments(parser: argparse.ArgumentParser, variant: bool = True) -> None:
    """`--subfolder`, `--revision` (and `--variant`) for a sub-command that takes a model."""
    parser.add_argument("--subfolder", help="folder inside the Hub repo or local folder that holds the model")
    parser.add_argument("--revision", help="Hub branch, tag or commit (default: the repo's main branch)")
    if variant:
        parser.add_argument("--variant", help="released variant (e.g. ft2 for microsoft/Reducio-VAE); else inferred")


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `load_model` keywords the parsed source options ask for."""
    names = ("model_type", "variant", "original_config", "subfolder", "revision")
    return {name: getattr(args, name) for name in names if getattr(args, name, None)}


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def cmd_models(args: argparse.Namespace) -> int:
    from .releases import RELEASES

    rows = [("NAME", "SIZE", "LICENCE", "COMPRESSION", "WHERE")]
    for release in RELEASES.values():
        main = release.main
        where = f"{main.host}:{main.repo}/{main.path}"
        extra = len({(s.host, s.repo) for s in release.sources}) - 1
        if extra:
            where += f" (+{extra} repos)"
        rows.append((release.name, release.size, release.license, release.compression, where))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if args.verbose:
        for release in RELEASES.values():
            print(f"\n{release.name}")
            for source in release.sources:
                gated = " (gated: accept its licence on the Hub and log in)" if source.gated else ""
                pinned = f"@{source.revision}" if source.revision else ""
                print(f"  {source.role:<16} {source.host}:{source.repo}{pinned}/{source.path}{gated}")
            if release.notes:
                print(f"  note: {release.notes}")
    else:
        print("\nLoad one with load_model(NAME) or `-m NAME`; `videovae models -v` lists every file.")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .model_cache import cache_root, clear_cache, list_entries

    if args.action == "fetch":
        from .loaders import load_model

        if not args.model:
            raise ValueError(
                "videovae cache fetch needs a MODEL (a release name such as odvae:v1.2.0, or a Hub repo)."
            )
        model = load_model(args.model, **source_options(args))
        print(f"{args.model}: {type(model).__name__} ready (converted models in {cache_root()})")
        return 0
    if args.action == "clear":
        removed, freed = clear_cache()
        print(f"removed {removed} converted model(s), {_gib(freed)}, from {cache_root()}")
        return 0
    entries = list_entries()
    print(f"converted models in {cache_root()}: {len(entries)}")
    for entry, manifest, size in entries:
        state = "complete" if manifest else "incomplete"
        print(f"  {entry.name}  {_gib(size)}  {state}")
    return 0


def register(subparsers) -> None:
    sub = subparsers.add_parser("models", help="the original releases that load by name (MODEL_TYPE:VARIANT)")
    sub.add_argument("-v", "--verbose", action="store_true", help="also every file, repo and licence note")
    sub.set_defaults(func=cmd_models)

    sub = subparsers.add_parser(
        "cache",
        help="converted releases: fetch one, list them, clear them",
        description="Releases loaded by name are converted once and kept (in $VIDEOVAE_CACHE or "
        "$HF_HOME/diffusers-videovae/converted). The downloaded originals stay in the Hub / ModelScope caches.",
    )
    sub.add_argument("action", choices=("fetch", "list", "clear"), help="fetch MODEL, list, or clear our entries")
    sub.add_argument("model", nargs="?", metavar="MODEL", help="for fetch: a release name or Hub repo")
    sub.add_argument("--model-type", help="model type of an original checkpoint (detected when omitted)")
    sub.add_argument("--original-config", help="the original's own config file, for custom checkpoints")
    add_source_arguments(sub)
    sub.set_defaults(func=cmd_cache)
