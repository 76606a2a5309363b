"""Dataset latent caching (`videovae cache-latents`). Placeholder: filled by the caching work."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cache-latents` sub-command to the `videovae` command line."""
