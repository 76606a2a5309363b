"""Fine-tuning / training of any diffusers-videovae model (`videovae train`). Placeholder: filled by the training work."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` sub-command to the `videovae` command line."""
