"""Command line of the training: `pvd train --config NAME|FILE [--resume [CKPT]] [key=value ...]`.

Named configs (`gopro`, `dvd`, ...) are the TOML files in pvd/training/configs, shipped inside the package.
Under `torchrun --nproc_per_node N -m pvd.training.cli ...` (or `-m train.train` in a source checkout) every
process runs the same command; see `loop`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: present in an installed wheel too


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML training config: a path, or the name of a bundled one "
                             f"({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.toml')))})")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="resume from CKPT, or without a value from the latest checkpoint in run.out_dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides with TOML values, e.g. optim.lr=3e-4 data.root=/data/gopro")
    return parser


def config_path(name: str | None) -> Path | None:
    """`name` as given when it is a file, else the bundled pvd/training/configs/<name>.toml."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    return bundled if bundled.is_file() else path


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import train

    quiet = ["log.progress=false"] if getattr(args, "quiet", False) else []
    config = load_config(config_path(args.config), [*args.overrides, *quiet])
    if args.resume is not None:
        config.run.resume = args.resume
    result = train(config)
    if result.weights is not None:
        print(f"trained {result.step} steps; weights: {result.weights}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`pvd train ARGS` (errors reported as one line, as every pvd command does)."""
    from pvd.cli import main as pvd_main

    return pvd_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
