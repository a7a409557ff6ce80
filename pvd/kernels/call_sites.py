"""The call sites of pvd's kernels: one variant table per op, at the network's real shapes.

`correlation_sites()`, `warp_sites()` and `pixel_volume_sites()` list where the network calls each op, with the
shapes, dtype and memory layout of its arguments for a 1280x720 frame pair: BIMNet on the multiple-of-32 crop
1280x704 (size policy "original") and on the padded 1280x736 (policy "pad", the default), its training crop
(256x256, backward too), and the pixel volume at 1280x720; plus one row per other dtype/layout a caller of
the API can pass (bf16, fp16, a misaligned odd-sized fp32 view, float64 on generic strided views).
`all_sites()` repeats every row once per kernel design an op offers; `run_site` calls the public op (and its
backward) on fresh CPU tensors of that site. `pvd.kernels.launch_capture` runs them with the launches
intercepted. The BIMNet constants are restated here (the kernels import nothing from the networks);
tests/test_compile_check.py checks them against `pvd.nets.bimnet`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A 1280x720 frame pair; BIMNet needs multiples of 32 (crop or pad), its levels 2-6 are 1/2 .. 1/32 of that.
FRAME_HEIGHT, FRAME_WIDTH = 720, 1280
FLOW_SIZES = {"original 1280x704 crop": (704, 1280), "pad 1280x736": (736, 1280)}
TRAINING_CROP = 256  # train/configs: data.crop of the BIMNet and PVDNet stages
TRAINING_BATCH = 2  # batch does not enter any kernel argument but the batch stride; kept small
# BIMNet (pvd.nets.bimnet; tests/test_compile_check.py checks these against it).
LEVELS = (2, 3, 4, 5, 6)
MATCHING_CHANNELS = {2: 64, 3: 64, 4: 96, 5: 128, 6: 192}  # level 2 is lifted from 32 to 64 channels
CORRELATION_STRIDE = {2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
MAX_DISPLACEMENT = 3
IMAGE_CHANNELS = 3
PIXEL_VOLUME_KERNEL = 5


def level_size(size: tuple[int, int], level: int) -> tuple[int, int]:
    """(h, w) of BIMNet level `level` for an input (H, W), multiples of 32: halved level - 1 times."""
    return size[0] >> (level - 1), size[1] >> (level - 1)


# ---------------------------------------------------------------------------------------- variant tables


@dataclass(frozen=True)
class Layout:
    """How an argument tensor sits in memory. kind: 'contiguous'; 'misaligned' (a [..., 1:] view: 4-byte offset,
    row stride W+1); 'strided' (a [..., 1::2] view: column stride 2, offset); 'channel_slice' (channels
    [start, start+C) of a `total`-channel tensor, e.g. the gradient of a torch.cat input); 'row_crop' (the top
    rows of a `total`-row tensor, e.g. a flow cropped from its padded size)."""

    kind: str = "contiguous"
    total: int = 0
    start: int = 0

    def make(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        b, c, h, w = shape
        if self.kind == "contiguous":
            return torch.empty(shape, dtype=dtype)
        if self.kind == "misaligned":
            return torch.empty((b, c, h, w + 1), dtype=dtype)[..., 1:]
        if self.kind == "strided":
            return torch.empty((b, c, h, 2 * w + 1), dtype=dtype)[..., 1::2]
        if self.kind == "channel_slice":
            return torch.empty((b, self.total, h, w), dtype=dtype)[:, self.start:self.start + c]
        if self.kind == "row_crop":
            return torch.empty((b, c, self.total, w), dtype=dtype)[:, :, :h]
        raise ValueError(f"unknown layout {self.kind!r}")


CONTIGUOUS = Layout()
MISALIGNED = Layout("misaligned")
STRIDED = Layout("strided")


@dataclass(frozen=True)
class Site:
    """One call site: `op` ('correlation' | 'warp' | 'pixel_volume') on (batch, channels, height, width)
    inputs of `dtype`. backward: also run the backward with a `grad_layout` gradient. `extra`: the op's
    keyword arguments (max_displacement/stride, kernel_size, ...). `layout` applies to the main inputs,
    `flow_layout` to a flow."""

    name: str
    op: str
    batch: int
    channels: int
    height: int
    width: int
    dtype: torch.dtype = torch.float32
    backward: bool = False
    extra: dict = field(default_factory=dict)
    layout: Layout = CONTIGUOUS
    flow_layout: Layout = CONTIGUOUS
    grad_layout: Layout = CONTIGUOUS
    env: dict = field(default_factory=dict)  # environment variables set around the call (e.g. a kernel design)


def _levels(size: tuple[int, int], first: int = LEVELS[0]):
    return [(level, *level_size(size, level)) for level in LEVELS if level >= first]


def _api_rows(op: str, channels: int, size: tuple[int, int], extra: dict) -> list[Site]:
    """Rows for what a caller of the API may pass beyond the network: bf16/fp16 at a network shape, a
    misaligned odd-sized fp32 view, and float64 (the tests) on fully generic strided views."""
    rows = [Site(f"API {str(dtype).removeprefix('torch.')}", op, 1, channels, *size, dtype=dtype, backward=True,
                 extra=extra) for dtype in (torch.bfloat16, torch.float16)]
    rows.append(Site("API fp32 misaligned odd-size view", op, 2, channels if channels <= 3 else 5, 37, 45,
                     backward=True, extra=extra, layout=MISALIGNED, flow_layout=MISALIGNED, grad_layout=MISALIGNED))
    rows.append(Site("API float64 (tests), generic strided view", op, 2, channels if channels <= 3 else 5, 37, 45,
                     dtype=torch.float64, backward=True, extra=extra, layout=STRIDED, flow_layout=STRIDED,
                     grad_layout=STRIDED))
    return rows


def correlation_sites() -> list[Site]:
    """BIMNet's cost volumes: Matching at levels 2-6 (f1, f2 of MATCHING_CHANNELS, stride per level)."""
    rows = []
    for policy, size in FLOW_SIZES.items():
        rows += [Site(f"BIMNet L{level} matching, {policy}", "correlation", 1, MATCHING_CHANNELS[level], h, w,
                      extra={"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[level]})
                 for level, h, w in _levels(size)]
    rows += [Site(f"BIMNet L{level} matching, training crop {TRAINING_CROP}", "correlation", TRAINING_BATCH,
                  MATCHING_CHANNELS[level], h, w, backward=True,
                  extra={"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[level]})
             for level, h, w in _levels((TRAINING_CROP, TRAINING_CROP))]
    size = level_size(FLOW_SIZES["pad 1280x736"], 2)
    return rows + _api_rows("correlation", MATCHING_CHANNELS[2], size,
                            {"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[2]})


def warp_sites() -> list[Site]:
    """BIMNet's warps: features in Matching (levels 2-5; level 6 has no coarser flow) and Subpixel (2-6),
    the image in Regularization (2-6, forward only: its result is detached); the training loss warps."""
    rows = []
    crop = (TRAINING_CROP, TRAINING_CROP)
    for policy, size, batch, backward in [*[(p, s, 1, False) for p, s in FLOW_SIZES.items()],
                                          (f"training crop {TRAINING_CROP}", crop, TRAINING_BATCH, True)]:
        for level, h, w in _levels(size):
            c = MATCHING_CHANNELS[level]
            if level != LEVELS[-1]:
                rows.append(Site(f"BIMNet L{level} matching, {policy}", "warp", batch, c, h, w, backward=backward))
            # Subpixel: the warped features are the middle block of cat(f1, warped f2, flow).
            rows.append(Site(f"BIMNet L{level} subpixel, {policy}", "warp", batch, c, h, w, backward=backward,
                             grad_layout=Layout("channel_slice", total=2 * c + 2, start=c)))
            rows.append(Site(f"BIMNet L{level} regularization, {policy}", "warp", batch, IMAGE_CHANNELS, h, w))
    rows.append(Site(f"training blur-invariant loss, crop {TRAINING_CROP}", "warp", 4 * TRAINING_BATCH,
                     IMAGE_CHANNELS, *crop, backward=True))
    # Validation on whole frames: the flow is the 720-row crop of BIMNet's padded 736-row output.
    rows.append(Site("training validation warp, 1280x720", "warp", 1, IMAGE_CHANNELS, FRAME_HEIGHT, FRAME_WIDTH,
                     flow_layout=Layout("row_crop", total=FLOW_SIZES["pad 1280x736"][0])))
    size = level_size(FLOW_SIZES["pad 1280x736"], 2)
    return rows + _api_rows("warp", MATCHING_CHANNELS[2], size, {})


def pixel_volume_sites() -> list[Site]:
    """The deblurring step's pixel volume (image = previous output, fill = current frame, RGB, k = 5), at
    1280x720 and at the PVDNet training crop. pvd never needs its gradient (no input requires grad there);
    the API rows run the backward."""
    extra = {"kernel_size": PIXEL_VOLUME_KERNEL}
    rows = [Site("deblur step 1280x720", "pixel_volume", 1, IMAGE_CHANNELS, FRAME_HEIGHT, FRAME_WIDTH, extra=extra),
            Site(f"PVDNet training crop {TRAINING_CROP}", "pixel_volume", TRAINING_BATCH, IMAGE_CHANNELS,
                 TRAINING_CROP, TRAINING_CROP, extra=extra),
            Site("API gray (1-channel) 1280x720", "pixel_volume", 1, 1, FRAME_HEIGHT, FRAME_WIDTH, backward=True,
                 extra=extra)]
    return rows + _output_format_rows(extra) + _api_rows("pixel_volume", IMAGE_CHANNELS, (FRAME_HEIGHT, FRAME_WIDTH),
                                                         extra)


def _output_format_rows(extra: dict) -> list[Site]:
    """Where `pixel_volume` offers `out_dtype` / `channels_last`, the deblur step asks for the volume in the
    format PVDNet's first convolution consumes: channels_last on CUDA, bf16 under autocast."""
    from pvd import kernels

    offered = inspect.signature(kernels.pixel_volume).parameters
    if "out_dtype" not in offered or "channels_last" not in offered:
        return []
    return [Site(f"deblur step 1280x720, {name}", "pixel_volume", 1, IMAGE_CHANNELS, FRAME_HEIGHT, FRAME_WIDTH,
                 extra={**extra, **keywords})
            for name, keywords in (("channels_last", {"channels_last": True}),
                                   ("bf16 channels_last (PVDNet under autocast)",
                                    {"out_dtype": torch.bfloat16, "channels_last": True}))]


def op_designs(op: str) -> list[dict]:
    """One environment per kernel design of `op`: a kernel module that names its selection variable
    `KERNEL_ENV` and its choices `KERNEL_DESIGNS` (e.g. PVD_CORRELATION_KERNEL) has every site run once per design."""
    module = importlib.import_module(f"pvd.kernels.{op}")
    variable, designs = getattr(module, "KERNEL_ENV", None), getattr(module, "KERNEL_DESIGNS", None)
    return [{variable: design} for design in designs] if variable and designs else [{}]


def all_sites() -> list[Site]:
    """Every row of the three tables, once per kernel design of its op."""
    sites = correlation_sites() + warp_sites() + pixel_volume_sites()
    designs = {op: op_designs(op) for op in {site.op for site in sites}}
    return [dataclasses.replace(site, env=env, name=site.name + "".join(f" ({k}={v})" for k, v in env.items()))
            for site in sites for env in designs[site.op]]


def run_site(site: Site, phase: Callable = lambda name: contextlib.nullcontext()) -> None:
    """Call the public op of `site` on fresh tensors, then its backward if `site.backward`; `phase("forward")`
    and `phase("backward")` are entered around each (context managers)."""
    from pvd import kernels

    shape = (site.batch, site.channels, site.height, site.width)
    flow_shape = (site.batch, 2, site.height, site.width)
    make = site.layout.make
    if site.op == "correlation":
        inputs = [make(shape, site.dtype), make(shape, site.dtype)]
        call = lambda f1, f2: kernels.correlation(f1, f2, **site.extra)  # noqa: E731
    elif site.op == "warp":
        inputs = [make(shape, site.dtype), site.flow_layout.make(flow_shape, site.dtype)]
        call = lambda x, flow: kernels.warp(x, flow, **site.extra)  # noqa: E731
    elif site.op == "pixel_volume":
        inputs = [make(shape, site.dtype), site.flow_layout.make(flow_shape, site.dtype), make(shape, site.dtype)]
        call = lambda image, flow, fill: kernels.pixel_volume(image, flow, fill, **site.extra)  # noqa: E731
    else:
        raise ValueError(f"unknown op {site.op!r}")
    if site.backward:
        for tensor in inputs:
            tensor.requires_grad_(True)
    saved = {name: os.environ.get(name) for name in site.env}
    os.environ.update(site.env)
    try:
        with phase("forward"):
            out = call(*inputs)
        if site.backward:
            grad = site.grad_layout.make(tuple(out.shape), out.dtype)
            with phase("backward"):
                out.backward(grad)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
