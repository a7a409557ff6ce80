"""`pvd train`: train BIMNet (stage 1) or PVDNet (stage 2) from a TOML config (see `pvd.training`)."""

from __future__ import annotations

from pvd.commands import command_parser
from pvd.training import cli


def add_parser(subparsers) -> None:
    parser = command_parser(
        subparsers, "train",
        description="Train BIMNet (stage 1), PVDNet (stage 2), or both jointly (the original's "
                                               "stage 1). Under torchrun every "
                                               "process runs the same command.")
    cli.add_arguments(parser)
    parser.set_defaults(func=cli.run)
