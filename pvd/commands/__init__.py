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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser, size_policy: bool = True) -> None:
    """The options that pick and run the model: --weights, --device, --precision, --threads (and --size-policy).
    `pvd.cli` applies --threads (`pvd.threads.configure`) before the command runs."""
    from pvd import pipeline

    parser.add_argument("--weights", default=None,
                        help=f"pvd checkpoint of the full model (.safetensors); default {pipeline.DEFAULT_WEIGHTS}")
    parser.add_argument("--device", choices=pipeline.DEVICES, default="auto")
    parser.add_argument("--precision", choices=pipeline.PRECISIONS, default="auto",
                        help="PVDNet autocast precision on CUDA (auto: bf16 where supported); the CPU runs fp32")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads of PyTorch (default: the CPUs this process may use minus the machine's "
                             "load, 1 for frames under 160x160; see pvd/threads.py)")
    if size_policy:
        parser.add_argument("--size-policy", choices=pipeline.SIZE_POLICIES, default="pad",
                            help="pad: any size, full frames out (default); original: the original code's "
                                 "multiple-of-4 crop and multiple-of-32 flow, for faithful comparison")
