"""Sub-commands of the `pvd` CLI, one module each (see pvd/cli.py), and their shared argument parsers."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '256x256') -> (height, width), for argparse `type=`."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x256, got {text!r}") from None
    return height, width
