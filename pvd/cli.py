"""`pvd` command line: a thin layer over the Python API, and the one place that prints errors and warnings.

Each sub-command lives in `pvd/commands/<name>.py`, which defines `add_parser(subparsers)`; the parser it
adds sets `func(args) -> int`. Modules are imported only when their command runs, so `pvd --help` is fast.
Every command reports bad input the same way: a ValueError or OSError from the API becomes one line on
stderr, `pvd <command>: error: <message>`, and exit status 1; warnings print as `pvd <command>: warning: ...`.
Ctrl-C and SIGTERM print `pvd <command>: interrupted` and exit 130, leaving no partial output.
"""

from __future__ import annotations

from .process_env import apply_defaults

apply_defaults()  # passive OpenMP waiting (read by torch when it loads, so before any torch import), freed memory kept

import argparse  # noqa: E402
import importlib
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

from . import __version__
from .commands import HELP

MODULES = {name: f"pvd.commands.{name}" for name in HELP}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C


@contextmanager
def _one_line_warnings(prog: str):
    """Warnings shown while a command runs print as one line naming the command (no source line)."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"{prog}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (kill, a scheduler's stop) ends a command as Ctrl-C does: KeyboardInterrupt unwinds it, so the
    outputs being written are removed. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="pvd", description="PVDNet video deblurring with Triton kernels.")
    parser.add_argument("--version", action="version", version=f"pvd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, module in MODULES.items():
        if name == chosen:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=HELP[name])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "threads"):  # the commands that run models (see pvd.commands.add_model_options)
        from . import threads

        threads.configure(args.threads)
    prog = f"pvd {args.command}"
    try:
        with _one_line_warnings(prog), _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as error:  # bad input or options, unreadable input, unwritable
        # output, or an optional package the command needs (e.g. scikit-image for pvd synth) missing
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the outputs being written were removed on the way out
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
