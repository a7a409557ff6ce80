"""Evaluate a model on a data set with ground truth: the same as `pvd eval ARGS...` (see `pvd eval --help`).

    python eval/evaluate.py DATA_ROOT -o OUTPUT [--weights W.safetensors] [--limit-videos N] [--limit-frames N]

The logic lives in `pvd.evaluate` (deblurring + scoring) and `pvd.metrics` (the two PSNR/SSIM protocols).
"""

import sys

from pvd.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
