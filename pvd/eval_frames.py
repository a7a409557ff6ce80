"""`pvd eval --save-frames`: the pictures beside the scores.

For each scored video, OUTPUT/frames/<video>/<frame>.png holds the deblurred frames (8-bit PNG, the output
clamped to [0, 1] and rounded) and OUTPUT/side_by_side/<video>/<frame>.png the labelled comparison
blurry | deblurred | sharp (each cropped to the output's size). A video's folders are written under temporary
names and renamed when the video is complete (`pvd._files.atomic_dir`); an existing folder is replaced only
with overwrite.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ._files import OutputExistsError, atomic_dir
from .frames import quantize, to_signed, write_png

FRAMES_FOLDER = "frames"
SIDE_BY_SIDE_FOLDER = "side_by_side"
LABELS = ("blurry", "deblurred", "sharp")


def _rgb_8_bit(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] (clamped) -> RGB (H, W, 3) uint8."""
    image = image[0] if image.dim() == 4 else image
    return quantize(to_signed(image.detach().float())).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class VideoFrameSaver:
    """Context manager for one video: `saver(name, deblurred, blurry, sharp)` (tensors (1, 3, H, W) in [0, 1])
    writes that frame's PNGs; the folders appear on a clean exit, and are removed on an error."""

    def __init__(self, output_dir: str | Path, video_name: str, overwrite: bool = False):
        output_dir = Path(output_dir)
        self.finals = (output_dir / FRAMES_FOLDER / video_name, output_dir / SIDE_BY_SIDE_FOLDER / video_name)
        self.overwrite = overwrite
        for final in self.finals:
            if final.exists() and not overwrite:
                raise OutputExistsError(f"{final}: already exists (use overwrite=True / --overwrite)")
        self._stack = contextlib.ExitStack()
        self.temporaries: tuple[Path, ...] = ()

    def __enter__(self) -> VideoFrameSaver:
        with contextlib.ExitStack() as stack:
            self.temporaries = tuple(stack.enter_context(atomic_dir(final, overwrite=self.overwrite))
                                     for final in self.finals)
            self._stack = stack.pop_all()
        return self

    def __call__(self, name: str, deblurred: torch.Tensor, blurry: torch.Tensor, sharp: torch.Tensor) -> None:
        from .demo import side_by_side

        panels = [_rgb_8_bit(x) for x in (blurry, deblurred, sharp)]
        write_png(self.temporaries[0] / f"{name}.png", panels[1])
        write_png(self.temporaries[1] / f"{name}.png", side_by_side(panels, LABELS))

    def __exit__(self, exc_type, exc, tb):
        return self._stack.__exit__(exc_type, exc, tb)
