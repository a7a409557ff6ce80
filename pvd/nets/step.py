"""One recurrent deblurring step, and the clip runner that chains steps over a video.

One step (`deblur_step`; `DeblurNet.forward` runs it on the model's own networks), frames in [-1, 1]:

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

Mixed precision: PVDNet under bf16/fp16 autocast when asked; BIMNet and the flow stay fp32 (the pixel volume
truncates flow to whole pixels, and bf16 cannot represent pixel coordinates above 256 exactly); the pixel volume
is gathered in fp32 and emitted in PVDNet's autocast dtype and memory format (no separate cast pass).

The recurrence over a clip (`Recurrence`, `run_clip`), the one rule every user of the model follows (the
streaming deblurrer, training validation, `pvd eval`, eval/measure_weights.py): frame t is deblurred from the
blurry frames clamp(t-1), t, clamp(t+1) (indices clamped to the clip) and the previous step's output as the
network returned it (float, NOT clamped to [-1, 1], as the original evaluation feeds it back); the first
frame's previous output is the first blurry frame. See docs/semantics.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..frames import to_unit
from .layout import memory_format_of

SIZE_POLICIES = ("pad", "original")
FLOW_SIZE_MULTIPLE = 32  # BIMNet: five stride-2 stages
DEBLUR_SIZE_MULTIPLE = 4  # PVDNet: two stride-2 stages
PIXEL_VOLUME_KERNEL = 5  # 5 x 5 candidates = PVDNet's 25 input channels
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps")  # others (e.g. meta, for FLOP counting) have no autocast
CHANNELS_LAST_BY_DEFAULT = True  # `place`: the networks' memory format when the caller does not say
PAD_MODE = "replicate"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pad x (B, C, h, w) at the bottom and right to (B, C, height, width)."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode=PAD_MODE)


def check_size_policy(size_policy: str) -> None:
    """ValueError unless `size_policy` is one of SIZE_POLICIES."""
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")


def estimate_flow(bimnet, curr: torch.Tensor, prev: torch.Tensor, size_policy: str = "pad",
                  pairs: tuple[Sequence[int], Sequence[int]] | None = None) -> torch.Tensor:
    """Backward flow from curr to prev, (B, 2, H, W) float32 in full-resolution pixels (x then y).

    curr, prev: (B, 3, H, W) in [-1, 1]. "pad": BIMNet on the frames replicate-padded to multiples of 32, the
    flow resized to the padded size and cropped, so it covers every pixel. "original": BIMNet on the top-left
    multiple-of-32 crop, the flow resized to that crop and zero-padded back (zero everywhere when H or W < 32).
    Resizing is bilinear (align_corners=False) and keeps the flow values unscaled, as the original does.
    pairs = (rows1, rows2), P row numbers each: curr and prev hold distinct frames, flow p goes from
    curr[rows1[p]] to prev[rows2[p]] (BIMNet's `pairs`; it must be a BIMNet); the result is then (P, 2, H, W).
    """
    height, width = curr.shape[-2:]
    pairing = {} if pairs is None else {"pairs": pairs}
    if size_policy == "original":
        crop_h, crop_w = height - height % FLOW_SIZE_MULTIPLE, width - width % FLOW_SIZE_MULTIPLE
        if crop_h == 0 or crop_w == 0:
            count = curr.shape[0] if pairs is None else len(pairs[0])
            return curr.new_zeros((count, 2, height, width), dtype=torch.float32)
        flow = bimnet(to_unit(curr[..., :crop_h, :crop_w]), to_unit(prev[..., :crop_h, :crop_w]), **pairing)
        flow = F.interpolate(flow.float(), size=(crop_h, crop_w), mode="bilinear", align_corners=False)
        return F.pad(flow, (0, width - crop_w, 0, height - crop_h))
    padded_h, padded_w = _round_up(height, FLOW_SIZE_MULTIPLE), _round_up(width, FLOW_SIZE_MULTIPLE)
    flow = bimnet(_pad_bottom_right(to_unit(curr), padded_h, padded_w),
                  _pad_bottom_right(to_unit(prev), padded_h, padded_w), **pairing)
    flow = F.interpolate(flow.float(), size=(padded_h, padded_w), mode="bilinear", align_corners=False)
    return flow[..., :height, :width]


def output_size(height: int, width: int, size_policy: str = "pad") -> tuple[int, int]:
    """(height, width) of the deblurred frame for an input of height x width under `size_policy`."""
    check_size_policy(size_policy)
    if size_policy == "original":
        return height - height % DEBLUR_SIZE_MULTIPLE, width - width % DEBLUR_SIZE_MULTIPLE
    return height, width


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


def deblur_step(bimnet, pvdnet, prev: torch.Tensor, curr: torch.Tensor, next: torch.Tensor,  # noqa: A002
                deblurred_prev: torch.Tensor, size_policy: str = "pad",
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One recurrent deblurring step; returns the deblurred curr (B, 3, H', W') float32 in [-1, 1] (not clamped).

    bimnet, pvdnet: the two networks (or stand-ins / wrappers with their call signatures: e.g. a
    DistributedDataParallel PVDNet in training). prev, curr, next: blurry frames (B, 3, H, W) in [-1, 1];
    deblurred_prev: the previous output (the first blurry frame at the start), of size H x W or of the output
    size. size_policy "pad": H' x W' = H x W; "original": the multiple-of-4 crop (see the module docstring).
    autocast_dtype (torch.bfloat16 / torch.float16 / None): PVDNet's autocast precision. Runs with gradients
    unless called under torch.inference_mode / no_grad.
    """
    check_size_policy(size_policy)
    _check_step_inputs(prev, curr, next, deblurred_prev, size_policy)
    out_h, out_w = output_size(*curr.shape[-2:], size_policy)
    prev, curr, next, deblurred_prev = (x[..., :out_h, :out_w].float() for x in (prev, curr, next, deblurred_prev))

    flow = estimate_flow(bimnet, curr, prev, size_policy)

    # Emitted directly in the dtype and memory format PVDNet's first convolution consumes: no cast pass.
    volume = kernels.pixel_volume(deblurred_prev.contiguous(), flow.contiguous(), curr.contiguous(),
                                  kernel_size=PIXEL_VOLUME_KERNEL,
                                  out_dtype=_volume_dtype(curr.device, autocast_dtype),
                                  channels_last=_uses_channels_last(pvdnet))

    padded_h, padded_w = _round_up(out_h, DEBLUR_SIZE_MULTIPLE), _round_up(out_w, DEBLUR_SIZE_MULTIPLE)
    net_inputs = [_pad_bottom_right(x, padded_h, padded_w) for x in (volume, prev, curr, next)]
    if _uses_channels_last(pvdnet):
        net_inputs = [x.contiguous(memory_format=torch.channels_last) for x in net_inputs]
    autocast = (torch.autocast(device_type=curr.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    with autocast:
        out = pvdnet(*net_inputs)
    return out[..., :out_h, :out_w].float().contiguous()


def _volume_dtype(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype PVDNet's convolutions consume the pixel volume in: the autocast dtype when PVDNet runs under
    autocast (asked for here, or already enabled by the caller for this device), else None (float32)."""
    if autocast_dtype is not None:
        return autocast_dtype
    if device.type in AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _uses_channels_last(module) -> bool:
    return memory_format_of(module) == torch.channels_last


class ZeroFlow(nn.Module):
    """Stand-in for BIMNet that predicts no motion: (image1, image2) (B, 3, H, W) -> (B, 2, H/2, W/2) zeros.

    With it the pixel volume holds the previous output's own k x k neighbourhood: the ablation of what the
    motion-compensated pixel volume buys (`pvd.nets.ZeroFlowModel`, `pvd eval --zero-flow`).
    """

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image1.shape
        return image1.new_zeros((batch, 2, height // 2, width // 2))


# ------------------------------------------------------------------------------------------ the recurrence

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bound_step(model, size_policy: str = "pad", autocast_dtype: torch.dtype | None = None,
               compile: bool = False, step_function: Callable = None) -> Step:
    """step(prev, curr, next, deblurred_prev) of `model` (a `DeblurNet`, or anything holding `.bimnet` and
    `.pvdnet`) with its options bound; compile: both networks wrapped in torch.compile; step_function: another
    step with `deblur_step`'s signature (e.g. `pvd.tiling.TiledStep`), default `deblur_step`."""
    check_size_policy(size_policy)
    bimnet, pvdnet = model.bimnet, model.pvdnet
    if compile:
        bimnet, pvdnet = torch.compile(bimnet), torch.compile(pvdnet)
    return functools.partial(step_function or deblur_step, bimnet, pvdnet, size_policy=size_policy,
                             autocast_dtype=autocast_dtype)


def place(model, device: torch.device, channels_last: bool | None = None):
    """`model` moved to `device` in eval mode, its PVDNet (and on CPU its BIMNet) in channels_last memory format
    when asked (default: yes; measured on CPU at 640x352 fp32: PVDNet ~25%, BIMNet 10-15% faster); returns the
    model."""
    model = model.to(device).eval()
    if channels_last is None:
        channels_last = CHANNELS_LAST_BY_DEFAULT
    if channels_last:
        model.pvdnet.to(memory_format=torch.channels_last)
        if device.type == "cpu":
            model.bimnet.to(memory_format=torch.channels_last)
    return model


class Recurrence:
    """The recurrence over one clip (the rule in the module docstring), fed one frame at a time.

    step(prev, curr, next, deblurred_prev) -> deblurred curr: one deblurring step (`bound_step`).
    Frames: (B, 3, H, W) float tensors in [-1, 1] (B clips in lockstep).
    `push(frame)` returns (index, blurry, deblurred) of the frame before once its next frame is known, else None;
    `flush()` ends the clip with the last frame (its next frame is itself). Only a 3-frame window and the
    previous output are kept, so memory does not grow with the clip's length.
    """

    def __init__(self, step: Step):
        self.step = step
        self.reset()

    def reset(self) -> None:
        """Forget the clip: the next pushed frame starts a new one."""
        self._prev: torch.Tensor | None = None
        self._curr: torch.Tensor | None = None
        self._deblurred: torch.Tensor | None = None
        self.frames_in = 0
        self.frames_out = 0

    def push(self, frame: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        self.frames_in += 1
        if self._curr is None:
            self._prev = self._curr = self._deblurred = frame
            return None
        result = self._advance(next_frame=frame)
        self._prev, self._curr = self._curr, frame
        return result

    def flush(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        if self._curr is None:
            return None
        result = self._advance(next_frame=self._curr)
        self._prev = self._curr = self._deblurred = None
        return result

    def _advance(self, next_frame: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        self._deblurred = self.step(self._prev, self._curr, next_frame, self._deblurred)  # fed back unclamped
        index, self.frames_out = self.frames_out, self.frames_out + 1
        return index, self._curr, self._deblurred


def run_clip(model, frames: Iterable[torch.Tensor], *, size_policy: str = "pad",
             autocast_dtype: torch.dtype | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Deblur a clip: yields (index, blurry, deblurred) per frame, in order, streaming (see `Recurrence`).

    model: a `DeblurNet` (or anything holding `.bimnet` and `.pvdnet`). frames: (B, 3, H, W) tensors in [-1, 1]; deblurred: float32 (B, 3, H', W'), not
    clamped (H' x W' per `output_size`). Gradients are recorded unless called under no_grad / inference_mode.
    """
    recurrence = Recurrence(bound_step(model, size_policy, autocast_dtype))
    yield from drive(recurrence.push, recurrence.flush, frames)


def drive(push: Callable, flush: Callable, frames: Iterable) -> Iterator:
    """Push every frame, then flush; yields what they return, leaving out the Nones (a streaming clip runner)."""
    for frame in frames:
        result = push(frame)
        if result is not None:
            yield result
    result = flush()
    if result is not None:
        yield result
