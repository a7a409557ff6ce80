"""`pvd convert IN.pytorch OUT.safetensors`: original PVDNet checkpoint -> pvd checkpoint (`pvd.weights`)."""

from __future__ import annotations

import argparse

from pvd.commands import command_parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "convert",
        description="Convert a checkpoint of the original PVDNet code (BIMNet.pytorch, PVDNet_DVD.pytorch, "
                    "PVDNet_nah.pytorch, PVDNet_large_nah.pytorch, ...) to a pvd safetensors checkpoint. "
                    "The file is read with torch.load(weights_only=True): no code in it is run.")
    parser.add_argument("source", help="original checkpoint (.pytorch / .pth)")
    parser.add_argument("destination", help="pvd checkpoint to write (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pvd import weights
    from pvd._files import missing_file

    source, destination = Path(args.source), Path(args.destination)
    if not source.is_file():
        raise ValueError(missing_file(source, "checkpoint file"))
    if destination.suffix != ".safetensors":
        raise ValueError(f"{destination}: the destination must end in .safetensors")
    if destination.exists() and not args.overwrite:
        raise ValueError(f"{destination}: already exists (pass --overwrite to replace it)")
    architecture = weights.convert_original(source, destination)
    print(f"{source} -> {destination} ({architecture})")
    return 0
