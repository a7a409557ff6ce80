"""Wall-clock limit of one benchmark run, shared by bench/kernels.py, bench/e2e.py and bench/train.py.

    limit = TimeLimit(args.time_limit)            # seconds, None = no limit
    for config in configs:
        if not limit.allows(estimated_seconds):   # start a measurement only while time is left for it
            limit.skip(label)                     # prints "time limit: skipped <label> (...)"
            continue

A benchmark under a limit degrades by measuring fewer configurations, never by running over: each
configuration is checked before it starts (bench/gpu_check.py reads the "time limit: skipped" lines).
"""

from __future__ import annotations

import argparse
import math
import time

SKIP_PREFIX = "time limit: skipped"


class TimeLimit:
    """Seconds left of a wall-clock limit that starts when the object is made (no limit when `seconds` is None)."""

    def __init__(self, seconds: float | None):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"the time limit must be > 0 seconds, got {seconds}")
        self.seconds = seconds
        self.start = time.monotonic()
        self.skipped: list[str] = []

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.monotonic() - self.start)

    def allows(self, needed_s: float = 0.0) -> bool:
        """Whether a measurement expected to take `needed_s` seconds still fits."""
        return self.left() > needed_s

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        print(f"{SKIP_PREFIX} {what} ({max(self.left(), 0.0):.0f} s of {self.seconds:.0f} s left)", flush=True)


def add_time_limit_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="stop starting new measurements when less time than they need is left "
                             "(default: no limit)")
