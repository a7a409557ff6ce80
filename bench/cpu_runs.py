"""Whole-command CPU timings: `pvd demo`, and `pvd deblur` of a small clip at several thread counts (the thread rule).

    python bench/cpu_runs.py demo    [--label after] [--root REPO] [--repeats 2] [--precision fp32]
    python bench/cpu_runs.py threads [--label after] [--root REPO] [--threads 1,2,auto] [--hog]

Each command runs as a subprocess of the pvd checkout at --root (default: this one; another checkout, e.g. an
older commit, gives the "before" rows), interleaved over --repeats; wall seconds are appended to
bench/results/cpu_runs.csv with --label. `threads`: 30 frames of 64x64 (synthetic, written once) deblurred with
--threads N (or the automatic default: "auto"; a checkout without --threads ignores it); --hog runs a busy
Python loop on one core meanwhile (the loaded-machine case).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _env import append_rows, describe_environment, env_columns  # noqa: E402

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "cpu_runs.csv"
CLIP_FRAMES, CLIP_SIZE = 30, 64
HOG = "while True: pass"


def _pvd(root: Path, args: list[str]) -> list[str]:
    """argv running `pvd ARGS` from the checkout at root (its pvd first on sys.path)."""
    code = f"import sys; sys.path.insert(0, {str(root)!r}); from pvd.cli import main; sys.exit(main({args!r}))"
    return [sys.executable, "-c", code]


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _write_clip(folder: Path) -> None:
    import cv2

    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur((rng.random((CLIP_SIZE, CLIP_SIZE + 2 * CLIP_FRAMES, 3)) * 255).astype(np.uint8),
                               (5, 5), 2)
    for t in range(CLIP_FRAMES):
        cv2.imwrite(str(folder / f"{t:03d}.png"), picture[:, 2 * t:2 * t + CLIP_SIZE])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("demo", "threads"))
    parser.add_argument("--label", default="")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", default="1,2,auto")
    parser.add_argument("--hog", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("--precision", default=None, help="demo: passed as --precision (default: the checkout's own)")
    parser.add_argument("--csv", default=str(RESULTS_CSV))
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    env = describe_environment()
    rows = []
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if args.hog else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if args.what == "demo":
                precision = [] if args.precision is None else ["--precision", args.precision]
                name = "pvd demo" + ("" if args.precision is None else f" --precision {args.precision}")
                configs = {name: ["demo", "--out", str(tmp / "demo"), "--overwrite", "--quiet", *precision]}
            else:
                (tmp / "clip").mkdir()
                _write_clip(tmp / "clip")
                configs = {}
                for count in args.threads.split(","):
                    extra = [] if count == "auto" else ["--threads", count]
                    configs[f"deblur {CLIP_FRAMES}x{CLIP_SIZE}x{CLIP_SIZE} threads={count}"] = [
                        "deblur", str(tmp / "clip"), "-o", str(tmp / f"out_{count}"), "--overwrite", "--quiet",
                        *extra]
            for _ in range(args.repeats):
                for name, command in configs.items():
                    seconds = _timed(_pvd(root, command))
                    print(f"{args.label:20s} {name:40s} hog={args.hog!s:5s} {seconds:8.2f} s", flush=True)
                    rows.append({"label": args.label, "run": name, "hog": args.hog, "seconds": round(seconds, 3),
                                 **env_columns(env)})
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    append_rows(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
