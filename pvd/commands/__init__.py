"""Sub-commands of the `pvd` CLI, one module each (see pvd/cli.py): their one-line help texts and their
shared argument parsers. Commands return an exit status and raise ValueError / OSError for bad input
(pvd/cli.py prints those)."""

from __future__ import annotations

import argparse

HELP = {
    "synth": "render synthetic blurry videos with sharp frames and ground-truth flow",
    "deblur": "deblur a video file, a frame folder, or a folder of those",
    "convert": "convert an original PVDNet .pytorch checkpoint to pvd safetensors",
    "eval": "score a model on a data set with ground truth (PSNR/SSIM, plain and aligned)",
    "train": "train BIMNet (stage 1), PVDNet (stage 2) or both jointly from a TOML config",
    "demo": "deblur a short blurry clip of a bundled photograph and score it (demo_out/)",
}


# One example line per command, shown at the end of its --help.
EXAMPLES = {
    "synth": "pvd synth runs/synth --videos 64 --frames 12 --size 160x160 --exclude astronaut,coffee",
    "deblur": "pvd deblur my_video.mp4 -o my_video_deblurred.mp4",
    "convert": "pvd convert PVDNet_DVD.pytorch PVDNet_DVD.safetensors",
    "eval": "pvd eval /data/DVD/test -o runs/eval_dvd --weights PVDNet_DVD.safetensors --protocol paper",
    "train": "pvd train --config gopro data.root=/data/GOPRO/train model.bimnet_weights=BIMNet.pytorch",
    "demo": "pvd demo -o demo_out",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default and keeps the example line as written."""


def command_parser(subparsers, name: str, description: str) -> argparse.ArgumentParser:
    """The sub-command parser of `name`, as every command has it: its help line, description, defaults shown,
    an example, and --quiet (no progress bars; results and errors still print)."""
    parser = subparsers.add_parser(name, help=HELP[name], description=description,
                                   epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=_HelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars (results and errors still print)")
    return parser


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
    from pvd import runtime
    from pvd.nets.step import SIZE_POLICIES
    from pvd.weights import DEFAULT_WEIGHTS

    parser.add_argument("--weights", default=None,
                        help=f"checkpoint of the full model (pvd .safetensors, or an original .pytorch); "
                             f"default {DEFAULT_WEIGHTS}")
    parser.add_argument("--device", choices=runtime.DEVICES, default="auto")
    parser.add_argument("--precision", choices=runtime.PRECISIONS, default="auto",
                        help="PVDNet autocast precision (auto: bf16 on a GPU that has it or a CPU with native bf16 "
                             "(AVX512_BF16 / AMX), else fp32; fp16 only on GPUs)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="CPU threads of PyTorch (default: every CPU this process may use, OpenMP waiting "
                             "passively; 1 for frames under 160x160; see pvd/threads.py)")
    if size_policy:
        parser.add_argument("--size-policy", choices=SIZE_POLICIES, default="pad",
                            help="pad: any size, full frames out (default); original: the original code's "
                                 "multiple-of-4 crop and multiple-of-32 flow, for faithful comparison")
