"""Frames: image decoding, value ranges, and numpy <-> tensor conversion.

Value ranges: integer frames (uint8, or uint16 for 16-bit images) map linearly onto a float range, [-1, 1]
for PVDNet (x / max * 2 - 1, max = 255 or 65535) and [0, 1] for BIMNet and the metrics; `to_unit` /
`to_signed` convert between the two float ranges and `quantize` goes back to integers (clamped, rounded).

Decoding (`read_image`, the one decoder of data sets and video inputs): an image file -> RGB (H, W, 3),
uint8 for 8-bit files and uint16 for 16-bit ones (16 bits are kept; `to_8_bit` reduces them, rounding
x / 257). Gray and RGBA files become RGB (alpha dropped), with a warning unless silenced. A missing,
unreadable or corrupt file raises `FrameError` (a ValueError) naming it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

UINT8_MAX = 255
UINT16_MAX = 65535
UINT16_TO_UINT8 = UINT16_MAX / UINT8_MAX  # 257
SIGNED_RANGE = (-1.0, 1.0)  # PVDNet's
UNIT_RANGE = (0.0, 1.0)  # BIMNet's and the metrics'
SILENT = frozenset({"gray", "alpha"})  # `read_image(warned=SILENT)`: convert gray / RGBA files without warning


class FrameError(ValueError):
    """A frame that cannot be read or used; the message names the file."""


# ---------------------------------------------------------------------------------------------- value ranges


def to_unit(x: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """[-1, 1] -> [0, 1]: (x + 1) / 2, clamped to [0, 1] when `clamp`."""
    unit = (x + 1) / 2
    return unit.clamp(0, 1) if clamp else unit


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: x * 2 - 1."""
    return x * 2 - 1


def max_value(dtype) -> int:
    """The white level of an integer frame type: 255 for uint8, 65535 for uint16."""
    if np.dtype(dtype) == np.uint8:
        return UINT8_MAX
    if np.dtype(dtype) == np.uint16:
        return UINT16_MAX
    raise FrameError(f"unsupported pixel type {np.dtype(dtype)} (8- or 16-bit frames only)")


def quantize(x: torch.Tensor, dtype=np.uint8) -> torch.Tensor:
    """[-1, 1] -> integer levels of `dtype` (uint8 / uint16) as an int32 tensor: clamped, scaled, rounded."""
    return ((x.clamp(-1, 1) + 1) / 2 * max_value(dtype)).round().to(torch.int32)


def check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    """(low, high) as floats; ValueError unless low < high."""
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {tuple(value_range)}")
    return low, high


def to_tensor(frame: np.ndarray, value_range: Sequence[float] = SIGNED_RANGE,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Integer RGB (..., H, W, 3) uint8/uint16 -> float32 (..., 3, H, W) on `device`, mapped linearly from
    [0, max] to `value_range` (the integers are moved to `device` first, then converted there)."""
    low, high = check_value_range(value_range)
    scale = max_value(frame.dtype)
    array = frame if frame.dtype == np.uint8 else frame.astype(np.int32)  # torch has no uint16 arithmetic
    chw = torch.from_numpy(np.ascontiguousarray(array)).to(device).movedim(-1, -3).to(torch.float32)
    return chw * ((high - low) / scale) + low


def to_8_bit(frame: np.ndarray) -> np.ndarray:
    """uint16 frame -> uint8 (x / 257, rounded); uint8 returned as is."""
    if frame.dtype == np.uint8:
        return frame
    return np.clip(np.rint(frame.astype(np.float32) / UINT16_TO_UINT8), 0, UINT8_MAX).astype(np.uint8)


# -------------------------------------------------------------------------------------------------- decoding


def to_rgb(frame: np.ndarray, source, warned: set | frozenset = frozenset()) -> np.ndarray:
    """OpenCV frame (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA, uint8/uint16 -> (H, W, 3) RGB, same dtype.

    Gray and RGBA conversions warn once per kind not yet in `warned` (a set: the kind is added to it).
    """
    if frame.dtype not in (np.uint8, np.uint16):
        raise FrameError(f"{source}: unsupported pixel type {frame.dtype} (8- or 16-bit frames only)")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        _warn_once(warned, "gray", f"{source}: gray frames converted to RGB")
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        _warn_once(warned, "alpha", f"{source}: RGBA frames converted to RGB (alpha dropped)")
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    raise FrameError(f"{source}: unsupported frame shape {frame.shape}")


def _warn_once(warned, kind: str, message: str) -> None:
    if kind not in warned:
        warnings.warn(message, stacklevel=4)
        warned.add(kind)


def read_image(path: str | os.PathLike, warned: set | frozenset | None = None) -> np.ndarray:
    """One image file -> RGB (H, W, 3) uint8 or uint16 (see the module docstring). FrameError if missing,
    unreadable or corrupt. warned: the conversion warnings already given (None: warn on every file)."""
    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: no such frame file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise FrameError(f"{path}: cannot read frame ({error})") from error
    frame = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if frame is None:
        raise FrameError(f"{path}: corrupt or unreadable image")
    return to_rgb(frame, path, set() if warned is None else warned)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB (H, W, 3) uint8/uint16 frame as a PNG (another image format where the suffix says so, e.g.
    .jpg, .tif); OSError if it cannot be written."""
    if not cv2.imwrite(os.fspath(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {str(path)!r}")


# ----------------------------------------------------------------------------------- caller's frame formats


@dataclass(frozen=True)
class FrameFormat:
    """How a caller's frames look, so outputs can be handed back alike."""

    kind: str  # "numpy" (uint8/uint16 RGB, HWC) or "tensor" (float NCHW in [-1, 1])
    batched: bool
    dtype: object
    device: torch.device | None
    shape: tuple

    @classmethod
    def of(cls, frame) -> FrameFormat:
        """The format of `frame`; ValueError for anything but the two accepted kinds."""
        if isinstance(frame, np.ndarray):
            if frame.dtype not in (np.uint8, np.uint16) or frame.ndim not in (3, 4) or frame.shape[-1] != 3:
                raise ValueError(f"numpy frames must be RGB (H, W, 3) or (B, H, W, 3) uint8/uint16, "
                                 f"got {frame.shape} {frame.dtype}")
            return cls("numpy", frame.ndim == 4, frame.dtype, None, frame.shape)
        if isinstance(frame, torch.Tensor):
            if not frame.is_floating_point() or frame.dim() not in (3, 4) or frame.shape[-3] != 3:
                raise ValueError(f"tensor frames must be float (3, H, W) or (B, 3, H, W) in [-1, 1], "
                                 f"got {tuple(frame.shape)} {frame.dtype}")
            return cls("tensor", frame.dim() == 4, frame.dtype, frame.device, tuple(frame.shape))
        raise ValueError(f"frames must be numpy arrays or torch tensors, got {type(frame).__name__}")


def frame_to_tensor(frame, device: torch.device) -> torch.Tensor:
    """numpy RGB uint8/uint16 (H, W, 3) / (B, H, W, 3), or a float tensor (3, H, W) / (B, 3, H, W) in [-1, 1]
    -> float32 (B, 3, H, W) in [-1, 1] on `device`."""
    if isinstance(frame, np.ndarray):
        tensor = to_tensor(frame, SIGNED_RANGE, device)
        return (tensor.unsqueeze(0) if tensor.dim() == 3 else tensor).contiguous()
    tensor = frame.to(device=device, dtype=torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 3 else tensor


def tensor_to_frame(tensor: torch.Tensor, like: FrameFormat):
    """Deblurred (B, 3, H, W) in [-1, 1] -> the caller's format (numpy clamped and rounded; tensors unclamped)."""
    if like.kind == "tensor":
        out = tensor.to(device=like.device, dtype=like.dtype)
        return out if like.batched else out[0]
    array = quantize(tensor, like.dtype).permute(0, 2, 3, 1).cpu().numpy().astype(like.dtype)
    return array if like.batched else array[0]
