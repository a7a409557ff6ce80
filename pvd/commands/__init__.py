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


def add_model_options(parser: argparse.ArgumentParser, size_policy: bool = True) -> None:
    """The options that pick and run the model: --weights, --device, --precision (and --size-policy)."""
    from pvd import pipeline

    parser.add_argument("--weights", default=None,
                        help=f"pvd checkpoint of the full model (.safetensors); default {pipeline.DEFAULT_WEIGHTS}")
    parser.add_argument("--device", choices=pipeline.DEVICES, default="auto")
    parser.add_argument("--precision", choices=pipeline.PRECISIONS, default="auto",
                        help="PVDNet autocast precision on CUDA (auto: bf16 where supported); the CPU runs fp32")
    if size_policy:
        parser.add_argument("--size-policy", choices=pipeline.SIZE_POLICIES, default="pad",
                            help="pad: any size, full frames out (default); original: the original code's "
                                 "multiple-of-4 crop and multiple-of-32 flow, for faithful comparison")
