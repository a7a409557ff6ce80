"""Training logs: scalars to CSV (and TensorBoard when installed), and side-by-side PNG samples."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange

from pvd._files import default_permissions

SCALARS_FILE = "scalars.csv"
SCALAR_COLUMNS = ("step", "tag", "value")


class ScalarLog:
    """Appends (step, tag, value) rows to `<out_dir>/scalars.csv`; mirrors them to TensorBoard if asked and
    installed (`<out_dir>/tensorboard`). Use on one process (rank 0) only."""

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = True, keep_until_step: int | None = None):
        """keep_until_step: a run resumed from the checkpoint of that step drops the rows logged after it
        (a run killed after its last checkpoint logged them), so no step appears twice."""
        self.path = Path(out_dir) / SCALARS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and self.path.exists():
            _truncate_after(self.path, keep_until_step)
        new_file = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new_file:
            self._csv.writerow(SCALAR_COLUMNS)
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tensorboard = SummaryWriter(os.fspath(Path(out_dir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self._csv.writerow((step, tag, f"{float(value):.8g}"))
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(tag, float(value), step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _truncate_after(path: Path, step: int) -> None:
    """Rewrite the scalars CSV at `path` (atomically) without its rows of steps after `step`."""
    with path.open(newline="") as file:
        rows = [row for row in csv.reader(file)]
    kept = [rows[0]] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= step]
    if len(kept) == len(rows):
        return
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as file:
            csv.writer(file).writerows(kept)
        default_permissions(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """The rows of a scalars CSV as (step, tag, value)."""
    with Path(path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    return [(int(row["step"]), row["tag"], float(row["value"])) for row in rows]


def save_panels(path: str | os.PathLike, panels: list[torch.Tensor]) -> Path:
    """Write images (3, H, W) in [-1, 1] side by side (left to right) as an 8-bit RGB PNG, atomically."""
    if not panels or any(p.dim() != 3 or p.shape[0] != 3 or p.shape[1:] != panels[0].shape[1:] for p in panels):
        raise ValueError("save_panels needs (3, H, W) images of one size")
    row = torch.cat([p.detach().float().cpu() for p in panels], dim=2)
    rgb = ((row.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    bgr = np.ascontiguousarray(rearrange(rgb, "c h w -> h w c").numpy()[..., ::-1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(handle)
    default_permissions(temp_name)
    try:
        if not cv2.imwrite(temp_name, bgr):
            raise ValueError(f"cannot write PNG {str(path)!r}")
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
