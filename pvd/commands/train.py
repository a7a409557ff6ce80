"""`pvd train`: train BIMNet (stage 1) or PVDNet (stage 2) from a TOML config (see `pvd.training`)."""

from __future__ import annotations

from pvd.training import cli


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train BIMNet or PVDNet from a TOML config",
                                   description="Train BIMNet (stage 1), PVDNet (stage 2) or both jointly (the original's stage 1). Under torchrun every "
                                               "process runs the same command.")
    cli.add_arguments(parser)
    parser.set_defaults(func=cli.run)
