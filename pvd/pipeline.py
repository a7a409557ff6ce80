"""The PVDNet deblurring pipeline: one recurrent step, a streaming video runner, and `deblur_video`.

One step (original `models/trainers/trainer.py: DeblurNet.forward`), frames in [-1, 1]:

    flow = BIMNet((curr+1)/2, (prev+1)/2), resized bilinearly to the frame size, values NOT rescaled
    pv   = pixel_volume(deblurred_prev, flow, fill=curr)           # (B, 25, H, W)
    out  = PVDNet(pv, prev, curr, next)                            # (B, 3, H, W)

Size policies (BIMNet wants H, W multiples of 32, PVDNet multiples of 4):
- "pad" (default): any size, no lost border. BIMNet sees both frames replicate-padded at the bottom/right to
  the next multiple of 32 and its flow is resized to that padded size and cropped back, so every pixel gets a
  real flow; the pixel volume is built at the true size; PVDNet sees its inputs replicate-padded to the next
  multiple of 4 and its output is cropped back. The output has exactly the input size.
  (Replicate, not reflect: it works for any pad width, also on frames smaller than the pad.)
- "original": the original evaluation, for faithful comparison. Frames are cropped (top-left anchored) to
  the largest multiple of 4; BIMNet sees the largest multiple-of-32 crop, and the flow is zero beyond it
  (all zero when a side is under 32 px). The output has the cropped size (H - H % 4, W - W % 4).

Video: frame t uses frames clamp(t-1), t, clamp(t+1) and the previous output; the first frame's previous
output is the first blurry frame. `VideoDeblurrer` streams (a 3-frame window, memory independent of the video
length) and runs B clips in lockstep when given (B, ...) frames. Mixed precision: PVDNet under bf16/fp16
autocast on CUDA; BIMNet, the flow and the pixel volume stay fp32 (the pixel volume truncates flow to whole
pixels, and bf16 cannot even represent pixel coordinates above 256 exactly). CPU runs fp32.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from . import kernels, video_io

SIZE_POLICIES = ("pad", "original")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_FORMATS = ("png", "mp4", "both")
FLOW_SIZE_MULTIPLE = 32  # BIMNet: five stride-2 stages
DEBLUR_SIZE_MULTIPLE = 4  # PVDNet: two stride-2 stages
PIXEL_VOLUME_KERNEL = 5  # 5 x 5 candidates = PVDNet's 25 input channels
PAD_MODE = "replicate"
UINT8_MAX = 255
UINT16_MAX = 65535
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# The bundled demo weights: weights/ of a source checkout, else the copy an installed wheel carries in pvd/assets
# (in the repository pvd/assets/pvd_demo.safetensors is a link to weights/pvd_demo.safetensors).
REPOSITORY_WEIGHTS = PACKAGE_ROOT / "weights" / "pvd_demo.safetensors"
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "pvd_demo.safetensors"
DEFAULT_WEIGHTS = REPOSITORY_WEIGHTS if REPOSITORY_WEIGHTS.is_file() else PACKAGED_WEIGHTS
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
IO_QUEUE_DEPTH = 4  # frames decoded ahead / awaiting encoding, per video
IO_POLL_SECONDS = 0.1


class UntrainedModelError(ValueError):
    """No trained weights were found and random ones were not allowed."""


# ------------------------------------------------------------------------------------------------- one step


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad x (B, C, h, w) at the bottom and right to (B, C, height, width)."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode=PAD_MODE)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (BIMNet's input range)."""
    return (x + 1) / 2


def estimate_flow(bimnet, curr: torch.Tensor, prev: torch.Tensor, size_policy: str = "pad") -> torch.Tensor:
    """Backward flow from curr to prev, (B, 2, H, W) float32 in full-resolution pixels (x then y).

    curr, prev: (B, 3, H, W) in [-1, 1]. "pad": BIMNet on the frames replicate-padded to multiples of 32, the
    flow resized to the padded size and cropped, so it covers every pixel. "original": BIMNet on the top-left
    multiple-of-32 crop, the flow resized to that crop and zero-padded back (zero everywhere when H or W < 32).
    Resizing is bilinear (align_corners=False) and keeps the flow values unscaled, as the original does.
    """
    height, width = curr.shape[-2:]
    if size_policy == "original":
        crop_h, crop_w = height - height % FLOW_SIZE_MULTIPLE, width - width % FLOW_SIZE_MULTIPLE
        if crop_h == 0 or crop_w == 0:
            return curr.new_zeros((curr.shape[0], 2, height, width), dtype=torch.float32)
        flow = bimnet(_to_unit(curr[..., :crop_h, :crop_w]), _to_unit(prev[..., :crop_h, :crop_w]))
        flow = F.interpolate(flow.float(), size=(crop_h, crop_w), mode="bilinear", align_corners=False)
        return F.pad(flow, (0, width - crop_w, 0, height - crop_h))
    padded_h, padded_w = _round_up(height, FLOW_SIZE_MULTIPLE), _round_up(width, FLOW_SIZE_MULTIPLE)
    flow = bimnet(_pad_bottom_right(_to_unit(curr), padded_h, padded_w),
                  _pad_bottom_right(_to_unit(prev), padded_h, padded_w))
    flow = F.interpolate(flow.float(), size=(padded_h, padded_w), mode="bilinear", align_corners=False)
    return flow[..., :height, :width]


def output_size(height: int, width: int, size_policy: str = "pad") -> tuple[int, int]:
    """(height, width) of the deblurred frame for an input of height x width under `size_policy`."""
    _check_policy(size_policy)
    if size_policy == "original":
        return height - height % DEBLUR_SIZE_MULTIPLE, width - width % DEBLUR_SIZE_MULTIPLE
    return height, width


def _check_policy(size_policy: str) -> None:
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")


def _check_step_inputs(prev, curr, next_, deblurred_prev, size_policy) -> None:
    named = (("prev", prev), ("curr", curr), ("next", next_), ("deblurred_prev", deblurred_prev))
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[1] != 3:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"deblur_step: {name} must be a (B, 3, H, W) tensor, got {shape}")
        if not tensor.is_floating_point():
            raise ValueError(f"deblur_step: {name} must be a floating tensor in [-1, 1], got {tensor.dtype}")
    for name, tensor in named[:2]:
        if tensor.shape != next_.shape:
            raise ValueError(f"deblur_step: {name} {tuple(tensor.shape)} and next {tuple(next_.shape)} differ")
    height, width = curr.shape[-2:]
    allowed = {(height, width), output_size(height, width, size_policy)}
    if deblurred_prev.shape[0] != curr.shape[0] or tuple(deblurred_prev.shape[-2:]) not in allowed:
        raise ValueError(f"deblur_step: deblurred_prev {tuple(deblurred_prev.shape)} does not match the frames "
                         f"{tuple(curr.shape)} (nor their {size_policy!r} output size)")
    if size_policy == "original" and (height < DEBLUR_SIZE_MULTIPLE or width < DEBLUR_SIZE_MULTIPLE):
        raise ValueError(f"deblur_step: a {height}x{width} frame has no multiple-of-{DEBLUR_SIZE_MULTIPLE} crop; "
                         f"use size_policy='pad'")


def deblur_step(model, prev: torch.Tensor, curr: torch.Tensor, next: torch.Tensor,  # noqa: A002
                deblurred_prev: torch.Tensor, size_policy: str = "pad",
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One recurrent deblurring step; returns the deblurred curr (B, 3, H', W') float32 in [-1, 1] (not clamped).

    model: has `.bimnet` and `.pvdnet` (e.g. `pvd.nets.DeblurNet`). prev, curr, next: blurry frames
    (B, 3, H, W) in [-1, 1]; deblurred_prev: the previous output (the first blurry frame at the start),
    of size H x W or of the output size. size_policy "pad": H' x W' = H x W; "original": the multiple-of-4
    crop (see the module docstring). autocast_dtype (torch.bfloat16 / torch.float16 / None): PVDNet's
    autocast precision. Runs with gradients unless called under torch.inference_mode / no_grad.
    """
    _check_policy(size_policy)
    _check_step_inputs(prev, curr, next, deblurred_prev, size_policy)
    out_h, out_w = output_size(*curr.shape[-2:], size_policy)
    prev, curr, next, deblurred_prev = (x[..., :out_h, :out_w].float() for x in (prev, curr, next, deblurred_prev))

    flow = estimate_flow(model.bimnet, curr, prev, size_policy)
    # Emitted directly in the dtype and memory format PVDNet's first convolution consumes: no cast pass.
    volume = kernels.pixel_volume(deblurred_prev.contiguous(), flow.contiguous(), curr.contiguous(),
                                  kernel_size=PIXEL_VOLUME_KERNEL,
                                  out_dtype=_volume_dtype(curr.device, autocast_dtype),
                                  channels_last=_uses_channels_last(model.pvdnet))

    padded_h, padded_w = _round_up(out_h, DEBLUR_SIZE_MULTIPLE), _round_up(out_w, DEBLUR_SIZE_MULTIPLE)
    net_inputs = [_pad_bottom_right(x, padded_h, padded_w) for x in (volume, prev, curr, next)]
    if _uses_channels_last(model.pvdnet):
        net_inputs = [x.contiguous(memory_format=torch.channels_last) for x in net_inputs]
    autocast = (torch.autocast(device_type=curr.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    with autocast:
        out = model.pvdnet(*net_inputs)
    return out[..., :out_h, :out_w].float().contiguous()


def _volume_dtype(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype PVDNet's convolutions consume the pixel volume in: the autocast dtype when PVDNet runs under
    autocast (asked for here, or already enabled by the caller for this device), else None (float32)."""
    if autocast_dtype is not None:
        return autocast_dtype
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _uses_channels_last(module) -> bool:
    weight = next((p for p in module.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()


# ----------------------------------------------------------------------------------------- device, precision


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu. ValueError for 'cuda' without a GPU or an unknown name."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """PVDNet's autocast dtype: None (fp32) on CPU; 'auto' on CUDA -> bf16 where supported, else fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision {precision!r} needs a CUDA device; the CPU runs fp32")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return AUTOCAST_DTYPES[precision]


# ------------------------------------------------------------------------------------------- frame formats


@dataclass(frozen=True)
class _FrameFormat:
    """How a caller's frames look, so outputs can be handed back alike."""

    kind: str  # "numpy" (uint8/uint16 RGB, HWC) or "tensor" (float NCHW in [-1, 1])
    batched: bool
    dtype: object
    device: torch.device | None
    shape: tuple


def _frame_format(frame) -> _FrameFormat:
    if isinstance(frame, np.ndarray):
        if frame.dtype not in (np.uint8, np.uint16) or frame.ndim not in (3, 4) or frame.shape[-1] != 3:
            raise ValueError(f"numpy frames must be RGB (H, W, 3) or (B, H, W, 3) uint8/uint16, "
                             f"got {frame.shape} {frame.dtype}")
        return _FrameFormat("numpy", frame.ndim == 4, frame.dtype, None, frame.shape)
    if isinstance(frame, torch.Tensor):
        if not frame.is_floating_point() or frame.dim() not in (3, 4) or frame.shape[-3] != 3:
            raise ValueError(f"tensor frames must be float (3, H, W) or (B, 3, H, W) in [-1, 1], "
                             f"got {tuple(frame.shape)} {frame.dtype}")
        return _FrameFormat("tensor", frame.dim() == 4, frame.dtype, frame.device, tuple(frame.shape))
    raise ValueError(f"frames must be numpy arrays or torch tensors, got {type(frame).__name__}")


def frame_to_tensor(frame, device: torch.device) -> torch.Tensor:
    """numpy RGB uint8/uint16 (H, W, 3) / (B, H, W, 3), or a float tensor (3, H, W) / (B, 3, H, W) in [-1, 1]
    -> float32 (B, 3, H, W) in [-1, 1] on `device`."""
    if isinstance(frame, np.ndarray):
        scale = UINT8_MAX if frame.dtype == np.uint8 else UINT16_MAX
        array = frame if frame.dtype == np.uint8 else frame.astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        tensor = tensor.float() / scale * 2 - 1
        tensor = tensor.unsqueeze(0) if tensor.dim() == 3 else tensor
        return tensor.permute(0, 3, 1, 2).contiguous()
    tensor = frame.to(device=device, dtype=torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 3 else tensor


def tensor_to_frame(tensor: torch.Tensor, like: _FrameFormat):
    """Deblurred (B, 3, H, W) in [-1, 1] -> the caller's format (numpy clamped and rounded; tensors unclamped)."""
    if like.kind == "tensor":
        out = tensor.to(device=like.device, dtype=like.dtype)
        return out if like.batched else out[0]
    scale = UINT8_MAX if like.dtype == np.uint8 else UINT16_MAX
    values = ((tensor.clamp(-1, 1) + 1) / 2 * scale).round().permute(0, 2, 3, 1)
    array = values.to(torch.int32).cpu().numpy().astype(like.dtype)
    return array if like.batched else array[0]


# ------------------------------------------------------------------------------------------------- streaming


class VideoDeblurrer:
    """Recurrent, streaming deblurring of one clip, or of B clips in lockstep.

    Feed frames in order with `push` (returns the output for the frame before, once its next frame is
    known, else None) and call `flush` at the end; or iterate `run(frames)`. Frames: numpy RGB uint8/uint16
    (H, W, 3) or (B, H, W, 3), or float tensors (3, H, W) / (B, 3, H, W) in [-1, 1]; outputs come back in the
    same format (numpy clamped and rounded; tensors float, not clamped, on the input's device). Only a
    3-frame window and the previous output are kept.

    model: has `.bimnet` and `.pvdnet` (moved to `device`, put in eval mode). precision: 'auto' | 'fp32' |
    'bf16' | 'fp16' (autocast only on CUDA). channels_last: PVDNet in channels_last (default: on CUDA).
    compile: wrap both networks in torch.compile.
    """

    def __init__(self, model, device: str | torch.device = "auto", precision: str = "auto",
                 size_policy: str = "pad", channels_last: bool | None = None, compile: bool = False):
        _check_policy(size_policy)
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.size_policy = size_policy
        model = model.to(self.device).eval()
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        if channels_last:
            model.pvdnet.to(memory_format=torch.channels_last)
        self.model = model
        self._nets = SimpleNamespace(bimnet=model.bimnet, pvdnet=model.pvdnet)
        if compile:
            self._nets = SimpleNamespace(bimnet=torch.compile(model.bimnet), pvdnet=torch.compile(model.pvdnet))
        self.step_function = deblur_step  # hook: `pvd.tiling.install` puts a tiled step with the same contract here
        self.reset()

    def reset(self) -> None:
        """Forget the clip: the next pushed frame starts a new one."""
        self._format: _FrameFormat | None = None
        self._prev: torch.Tensor | None = None
        self._curr: torch.Tensor | None = None
        self._deblurred: torch.Tensor | None = None
        self.frames_in = 0
        self.frames_out = 0

    @torch.inference_mode()
    def push(self, frame):
        """Add the next frame; returns the deblurred previous frame (None after the first frame)."""
        frame_format = _frame_format(frame)
        if self._format is None:
            self._format = frame_format
        elif (frame_format.kind, frame_format.shape) != (self._format.kind, self._format.shape):
            raise ValueError(f"frame {self.frames_in} has shape {frame_format.shape} ({frame_format.kind}), "
                             f"the clip's first frame {self._format.shape} ({self._format.kind})")
        tensor = frame_to_tensor(frame, self.device)
        self.frames_in += 1
        if self._curr is None:
            self._prev = self._curr = self._deblurred = tensor
            return None
        out = self._step(next_frame=tensor)
        self._prev, self._curr = self._curr, tensor
        return out

    @torch.inference_mode()
    def flush(self):
        """Deblur the last pushed frame (its next frame is itself) and end the clip; None if nothing is pending."""
        if self._curr is None:
            return None
        out = self._step(next_frame=self._curr)
        self._format = self._prev = self._curr = self._deblurred = None
        return out

    def _step(self, next_frame: torch.Tensor):
        deblurred = self.step_function(self._nets, self._prev, self._curr, next_frame, self._deblurred,
                                self.size_policy, self.autocast_dtype)
        self._deblurred = deblurred
        self.frames_out += 1
        return tensor_to_frame(deblurred, self._format)

    def run(self, frames: Iterable) -> Iterator:
        """Deblur a whole clip, streaming: yields one output per input frame, in order."""
        self.reset()
        for frame in frames:
            out = self.push(frame)
            if out is not None:
                yield out
        out = self.flush()
        if out is not None:
            yield out


def deblur_frames(model, frames: Iterable, **options) -> Iterator:
    """Generator: deblurred frames of the clip `frames`, one per input, in order (see `VideoDeblurrer`).

    options: device, precision, size_policy, channels_last, compile.
    """
    yield from VideoDeblurrer(model, **options).run(frames)


# ---------------------------------------------------------------------------------------------------- models


class ZeroFlow(torch.nn.Module):
    """Stand-in for BIMNet that predicts no motion: (image1, image2) (B, 3, H, W) -> (B, 2, H/2, W/2) zeros.

    With it the pixel volume holds the previous output's own k x k neighbourhood: the ablation of what the
    motion-compensated pixel volume buys (`ZeroFlowModel`, `pvd eval --zero-flow`).
    """

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image1.shape
        return image1.new_zeros((batch, 2, height // 2, width // 2))


class ZeroFlowModel(torch.nn.Module):
    """The same PVDNet fed pixel volumes built from a zero flow: `model`'s PVDNet (shared, not copied) with
    BIMNet replaced by `ZeroFlow`; `.bimnet`, `.pvdnet`, and `.large` as the model's."""

    def __init__(self, model):
        super().__init__()
        self.bimnet = ZeroFlow()
        self.pvdnet = model.pvdnet
        self.large = bool(getattr(model, "large", False))


def load_model(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               allow_untrained: bool = False, large: bool = False):
    """The full model (`.bimnet`, `.pvdnet`) from `weights`, else from DEFAULT_WEIGHTS if present.

    Without any weights file raises UntrainedModelError, unless allow_untrained: then a randomly
    initialised `DeblurNet(large=large)` (seeded, so runs repeat) is returned with a warning.
    """
    from . import weights as weights_module
    from .nets import DeblurNet

    device = resolve_device(device)
    path = Path(weights) if weights is not None else (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None)
    if path is None:
        if not allow_untrained:
            raise UntrainedModelError(
                f"no trained weights: {DEFAULT_WEIGHTS} does not exist; pass --weights PATH (convert an original "
                f"checkpoint with `pvd convert`), or --allow-untrained to run random weights (output is garbage)")
        warnings.warn("running with random (untrained) weights: the output is not deblurred", stacklevel=2)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            model = DeblurNet(large=large)
        finally:
            torch.random.set_rng_state(generator_state)
        return model.to(device).eval()
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    model = weights_module.load(path, device=device)
    if not (hasattr(model, "bimnet") and hasattr(model, "pvdnet")):
        raise ValueError(f"{path}: holds a {type(model).__name__}; deblurring needs a full model "
                         f"(BIMNet + PVDNet, `pvd.nets.DeblurNet`)")
    return model.eval()


# --------------------------------------------------------------------------------------------- video files


@dataclass
class VideoResult:
    """What `deblur_video` did for one input video."""

    name: str
    frames: int
    seconds: float
    outputs: list[Path] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _output_paths(output: Path, fmt: str, video: video_io.Video, single: bool) -> tuple[Path | None, Path | None]:
    """(frames_dir, mp4_path) for one video. Single video: frames go to OUTPUT (an .mp4 suffix stripped) and
    the mp4 to OUTPUT.mp4 (OUTPUT itself when it ends in .mp4); a collection: OUTPUT/<name>/ and OUTPUT/<name>.mp4.
    """
    if single:
        base = output.with_suffix("") if output.suffix.lower() == ".mp4" else output
    else:
        base = output / video.name
    frames_dir = base if fmt in ("png", "both") else None
    mp4_path = base.parent / f"{base.name}.mp4" if fmt in ("mp4", "both") else None
    return frames_dir, mp4_path


def deblur_video(input: str | os.PathLike, output: str | os.PathLike, *, model=None,  # noqa: A002
                 weights: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 size_policy: str = "pad", side_by_side: bool = False, format: str | None = None,  # noqa: A002
                 allow_untrained: bool = False, overwrite: bool = False, progress: bool = True,
                 compile: bool = False, crf: int = video_io.DEFAULT_CRF, fps: float | None = None,
                 tile=None, tile_overlap: int | None = None) -> list[VideoResult]:
    """Deblur every video at `input` (video file, frame folder, or folder of those) into `output`.

    format: 'png' (a folder of frames), 'mp4', or 'both'; default: 'mp4' if output ends in .mp4, else 'png'.
    Output names: see `_output_paths`. Each output has the input's frame count and size ('original' size
    policy: the multiple-of-4 crop; side_by_side: input | output, twice as wide). Outputs appear only when
    complete; on error no partial output remains (videos finished before it stay). model: a loaded model,
    else `load_model(weights, allow_untrained=...)`. crf: the h264 quality (`video_io.VideoWriter`); fps: the
    mp4's frame rate (default: the source's exact rate and timestamps, 30 for frame folders). tile,
    tile_overlap: tiled inference (`pvd.tiling`; None: whole frames). Returns one VideoResult per video.
    """
    input_path, output = Path(input), Path(output)
    _check_policy(size_policy)
    fmt = format or ("mp4" if output.suffix.lower() == ".mp4" else "png")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if output.suffix.lower() in video_io.VIDEO_SUFFIXES and output.suffix.lower() != ".mp4":
        raise ValueError(f"{output}: video output is written as .mp4 only")
    videos = video_io.find_videos(input_path)
    single = len(videos) == 1 and videos[0].path.resolve() == input_path.resolve()
    # --- hook (issue 14): under torchrun each rank deblurs its share of the videos, on its own GPU
    from . import sharding
    videos = sharding.shard(videos, key=lambda video: video.name)
    plans = [(video, *_output_paths(output, fmt, video, single)) for video in videos]
    for _, frames_dir, mp4_path in plans:
        for target in (frames_dir, mp4_path):
            if target is not None and target.exists() and not overwrite:
                raise video_io.VideoError(f"{target}: output already exists (use overwrite=True / --overwrite)")
    dev = sharding.rank_device(resolve_device(device))
    resolve_precision(precision, dev)
    if model is None:
        model = load_model(weights, device=dev, allow_untrained=allow_untrained)
    deblurrer = VideoDeblurrer(model, device=dev, precision=precision, size_policy=size_policy, compile=compile)
    # --- hook (issue 14): tiled steps (`pvd.tiling` sets `deblurrer.step_function`)
    if tile is not None:
        from . import tiling
        tiling.install(deblurrer, tile=tile, overlap=tile_overlap)
    writer_options = {"crf": crf, "fps": fps}

    created = _missing_folders(output.parent if single else output)
    results = []
    try:
        for video, frames_dir, mp4_path in plans:
            results.append(_deblur_one(deblurrer, video, frames_dir, mp4_path, side_by_side, overwrite, progress,
                                       writer_options))
    except BaseException:
        for folder in reversed(created):  # the folders this call created, if they stayed empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return results


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    return missing[::-1]


def _deblur_one(deblurrer: VideoDeblurrer, video: video_io.Video, frames_dir, mp4_path, side_by_side: bool,
                overwrite: bool, progress: bool, writer_options: dict | None = None) -> VideoResult:
    """Deblur one video into its outputs; decoding and encoding run in threads, overlapping the networks."""
    from tqdm import tqdm

    pending_inputs: collections.deque = collections.deque()  # blurry frames awaiting their output (<= 2)

    decoded = _read_ahead(video.frames(), IO_QUEUE_DEPTH)

    def source():
        for frame in decoded:
            pending_inputs.append(frame)
            yield frame

    result = VideoResult(video.name, 0, 0.0)
    start = time.perf_counter()
    writer_options = dict(writer_options or {})
    writer = video_io.VideoWriter(frames_dir, mp4_path, fps=writer_options.pop("fps", None),
                                  frame_names=video.frame_names, overwrite=overwrite, source=video,
                                  **writer_options)
    bar = tqdm(total=video.frame_count or None, unit="frame", desc=video.name, disable=not progress,
               dynamic_ncols=True)
    try:
        with writer, bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvd-write") as encoder:
            writes: collections.deque = collections.deque()
            for out in deblurrer.run(source()):
                blurry = pending_inputs.popleft()
                if side_by_side:
                    out = np.concatenate([blurry[: out.shape[0], : out.shape[1]], out], axis=1)
                writes.append(encoder.submit(writer.write, out))
                if len(writes) > IO_QUEUE_DEPTH:
                    writes.popleft().result()  # bounded memory; re-raises a write error here
                result.frames += 1
                bar.update(1)
            while writes:
                writes.popleft().result()
    finally:
        decoded.close()  # stops the reading thread, also after an error
    result.seconds = time.perf_counter() - start
    result.outputs = writer.outputs
    return result


def _read_ahead(iterable: Iterable, depth: int) -> Iterator:
    """Iterate `iterable` in a worker thread, at most `depth` items ahead; its exceptions are raised here.

    Closing the returned generator early (an error downstream) stops the worker.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    finished = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=IO_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((finished, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put((finished, error))

    worker = threading.Thread(target=work, name="pvd-read", daemon=True)
    worker.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is finished:
                return
            yield item
    finally:
        stop.set()
        worker.join()
