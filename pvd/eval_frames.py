"""`pvd eval --save-frames`: the pictures beside the scores.

For each scored video, OUTPUT/frames/<video>/<frame>.png holds the deblurred frames (8-bit PNG, the output
clamped to [0, 1] and rounded) and OUTPUT/side_by_side/<video>/<frame>.png the labelled comparison
blurry | deblurred | sharp (each cropped to the output's size). A video's folders are written under temporary
names and renamed when the video is complete; an existing folder is replaced only with overwrite.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from .video_io import VideoError, _move_into_place, _remove, _temporary_sibling

FRAMES_FOLDER = "frames"
SIDE_BY_SIDE_FOLDER = "side_by_side"
LABELS = ("blurry", "deblurred", "sharp")
UINT8_MAX = 255


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] (clamped) -> RGB (H, W, 3) uint8."""
    image = image[0] if image.dim() == 4 else image
    return (image.detach().float().clamp(0, 1) * UINT8_MAX).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise VideoError(f"{path}: PNG encoding failed")
    encoded.tofile(path)


class VideoFrameSaver:
    """Context manager for one video: `saver(name, deblurred, blurry, sharp)` (tensors (1, 3, H, W) in [0, 1])
    writes that frame's PNGs; the folders appear on a clean exit, and are removed on an error."""

    def __init__(self, output_dir: str | Path, video_name: str, overwrite: bool = False):
        output_dir = Path(output_dir)
        self.finals = (output_dir / FRAMES_FOLDER / video_name, output_dir / SIDE_BY_SIDE_FOLDER / video_name)
        self.overwrite = overwrite
        for final in self.finals:
            if final.exists() and not overwrite:
                raise VideoError(f"{final}: already exists (use overwrite=True / --overwrite)")
        self.temporaries: tuple[Path, ...] = ()

    def __enter__(self) -> VideoFrameSaver:
        temporaries = []
        for final in self.finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            temporary = _temporary_sibling(final)
            temporary.mkdir()
            temporaries.append(temporary)
        self.temporaries = tuple(temporaries)
        return self

    def __call__(self, name: str, deblurred: torch.Tensor, blurry: torch.Tensor, sharp: torch.Tensor) -> None:
        from .demo import side_by_side

        panels = [to_uint8(x) for x in (blurry, deblurred, sharp)]
        _write_png(self.temporaries[0] / f"{name}.png", panels[1])
        _write_png(self.temporaries[1] / f"{name}.png", side_by_side(panels, LABELS))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for temporary, final in zip(self.temporaries, self.finals):
                _move_into_place(temporary, final, self.overwrite)
        else:
            for temporary in self.temporaries:
                _remove(temporary)
