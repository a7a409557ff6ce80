"""`pvd` command line: a thin layer over the Python API.

Each sub-command lives in `pvd/commands/<name>.py`, which defines `add_parser(subparsers)`; the parser it
adds sets `func(args) -> int`. Modules are imported only when their command runs, so `pvd --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS = {
    # name: (module, one-line help)
    "synth": ("pvd.commands.synth", "render synthetic blurry videos with sharp frames and ground-truth flow"),
    "deblur": ("pvd.commands.deblur", "deblur a video file, a frame folder, or a folder of those"),
    "convert": ("pvd.commands.convert", "convert an original PVDNet .pytorch checkpoint to pvd safetensors"),
    "eval": ("pvd.commands.eval", "score a model on a data set with ground truth (PSNR/SSIM, plain and aligned)"),
    "train": ("pvd.commands.train", "train BIMNet (stage 1) or PVDNet (stage 2) from a TOML config"),
    "demo": ("pvd.commands.demo", "deblur a short blurry clip of a bundled photograph and score it (demo_out/)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="pvd", description="PVDNet video deblurring with Triton kernels.")
    parser.add_argument("--version", action="version", version=f"pvd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "threads"):  # the commands that run models (see pvd.commands.add_model_options)
        from . import threads

        threads.configure(args.threads)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
