"""PVDNet pixel volume: Triton forward/backward kernels, launcher, and the `pvd::pixel_volume` custom op.

`pixel_volume(image, flow, fill, k)[b, (i+h)*k + (j+h), y, x]`, h = k // 2, offsets (i, j) in [-h, h]^2
(i along x, j along y): with q = (y - j, x - i) the neighbour whose flow is borrowed,
- 0 if q is outside the image;
- else with X0 = trunc(q.x + flow_x[q]) + i, Y0 = trunc(q.y + flow_y[q]) + j (trunc rounds toward zero):
  gray(image)[Y0, X0] if 1 <= X0 <= W-2 and 1 <= Y0 <= H-2 and the flow at q is finite, else gray(fill)[p].
gray = 0.2989 R + 0.5870 G + 0.1140 B in the accumulation dtype (a 1-channel input is used as is).

Kernels: `_gray_kernel` computes the image's gray plane once per pixel; the forward gathers one gray value
per candidate from it and writes a (pixels x candidates) tile, so that NCHW and channels_last outputs are
both stored contiguously, in any output dtype (rounded as PyTorch's cast would). The backward scatters
grad_out into a gray-gradient buffer with atomics and `_gray_grad_kernel` expands it to RGB.
Differentiable w.r.t. image and fill, not flow. Reference twin: `pvd.kernels.reference.pixel_volume`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import reference
from . import cpu  # the CPU fallback (outside the Triton interpreter)
from ._common import (
    LazyTritonOp,
    DEFAULT_KERNEL_SIZE,
    acc_dtype,
    check_pixel_volume_args,
    pixel_grid,
    tl_acc_dtype,
    use_triton,
)

BLOCK_PIXELS = 256  # backward: pixels per program
NUM_WARPS = 8
FORWARD_TILE = 1024  # forward: (pixel, candidate) pairs per program (candidates padded to a power of two)
FORWARD_WARPS = 8
FORWARD_TILE_W = 8  # forward: width of the pixel patch of a program (BLOCK // FORWARD_TILE_W rows)
GRAY_BLOCK = 512
GRAY_WARPS = 4

_GRAY_RED = tl.constexpr(reference.GRAY_WEIGHTS[0])
_GRAY_GREEN = tl.constexpr(reference.GRAY_WEIGHTS[1])
_GRAY_BLUE = tl.constexpr(reference.GRAY_WEIGHTS[2])


@triton.jit
def _gray_at(base, offset, stride_c, mask, CHANNELS: tl.constexpr, ACC: tl.constexpr):
    """Gray value (ACC) of the CHANNELS-channel (1 or 3) pixels at `offset` from `base`; 0 where masked."""
    if CHANNELS == 1:
        gray = tl.load(base + offset, mask=mask, other=0.0).to(ACC)
    else:
        gray = tl.load(base + offset, mask=mask, other=0.0).to(ACC) * _GRAY_RED
        gray += tl.load(base + stride_c + offset, mask=mask, other=0.0).to(ACC) * _GRAY_GREEN
        gray += tl.load(base + 2 * stride_c + offset, mask=mask, other=0.0).to(ACC) * _GRAY_BLUE
    return gray


@triton.jit
def _round(value, DTYPE: tl.constexpr):
    """value (float32, or float64 unless DTYPE is bfloat16) rounded to DTYPE to nearest even, as PyTorch casts.

    bfloat16 is rounded in integer arithmetic: the same result as the GPU's conversion instruction, also in
    the Triton interpreter (whose float32 -> bfloat16 cast truncates).
    """
    if DTYPE == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)  # NaN -> PyTorch's canonical bfloat16 NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return value.to(DTYPE)


@triton.jit
def _candidate(flow_base, py, px, in_range, step_x, step_y, H, W, stride_fc, stride_fh, stride_fw,
               HALF: tl.constexpr, ACC: tl.constexpr):
    """Candidate (step_x, step_y) of pixels (py, px): the neighbour q = p - offset (offset = step - HALF), the
    target (X0, Y0) that q's flow points to, shifted by the offset, and whether it is used.

    Used means q is inside, its flow finite and 1 <= X0 <= W-2, 1 <= Y0 <= H-2; otherwise fill is used
    (or 0 when q is outside). Returns (q_inside, target_x, target_y, used); the int32 coordinates are only
    meaningful where used.
    """
    offset_x = step_x - HALF
    offset_y = step_y - HALF
    qy = py - offset_y
    qx = px - offset_x
    q_inside = in_range & (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
    flow_offset = qy * stride_fh + qx * stride_fw
    flow_x = tl.load(flow_base + flow_offset, mask=q_inside, other=0.0).to(ACC)
    flow_y = tl.load(flow_base + stride_fc + flow_offset, mask=q_inside, other=0.0).to(ACC)
    # x - x is 0 for finite x, NaN for NaN and +-inf.
    finite = ((flow_x - flow_x) == 0) & ((flow_y - flow_y) == 0)
    base_x = tl.where(finite, qx.to(ACC) + flow_x, 0.0)
    base_y = tl.where(finite, qy.to(ACC) + flow_y, 0.0)
    # Clamp far-away targets into a band where every border decision is unchanged, before the int cast.
    base_x = tl.minimum(tl.maximum(base_x, -HALF - 2.0), W + HALF + 2.0)
    base_y = tl.minimum(tl.maximum(base_y, -HALF - 2.0), H + HALF + 2.0)
    # Float -> int conversion truncates toward zero, as the original's cast does.
    target_x = base_x.to(tl.int32) + offset_x
    target_y = base_y.to(tl.int32) + offset_y
    used = q_inside & finite & (target_x >= 1) & (target_x <= W - 2) & (target_y >= 1) & (target_y <= H - 2)
    return q_inside, target_x, target_y, used


@triton.jit
def _gray_kernel(
    image_ptr, gray_ptr,
    H, W,
    stride_ib, stride_ic, stride_ih, stride_iw,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """gray: contiguous (B, 1, H, W) ACC buffer, the gray value of each RGB pixel of image (computed once)."""
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    py = offs // W
    px = offs % W
    gray = _gray_at(image_ptr + batch * stride_ib, py * stride_ih + px * stride_iw, stride_ic, in_range, 3, ACC)
    tl.store(gray_ptr + batch * H * W + offs, gray, mask=in_range)


@triton.jit
def _pixel_volume_forward_kernel(
    gray_ptr, flow_ptr, fill_ptr, out_ptr,
    H, W,
    stride_gb, stride_gh, stride_gw,
    stride_fb, stride_fc, stride_fh, stride_fw,
    stride_pb, stride_pc, stride_ph, stride_pw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    FILL_CHANNELS: tl.constexpr, KERNEL_SIZE: tl.constexpr, CANDIDATES: tl.constexpr,
    ACC: tl.constexpr, VALUE_DTYPE: tl.constexpr, VIA_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
    TILE_W: tl.constexpr,
):
    """One program: BLOCK pixels (a BLOCK/TILE_W x TILE_W patch: its neighbours' flows and their targets
    overlap more than along a row) x all KERNEL_SIZE**2 candidates (CANDIDATES: that count rounded up to a
    power of two), written as one 2-D tile so that NCHW and channels_last outputs are both stored contiguously.

    gray: the 1-channel gray image (the `_gray_kernel` buffer, or a 1-channel image itself); strides g.
    f = flow, p = fill (the original's `pad`), o = out (any layout). Each value is rounded as
    `value.to(VALUE_DTYPE).to(VIA_DTYPE).to(out dtype)`, each to nearest even: the same roundings as casting
    the image-dtype volume to the output dtype in PyTorch.
    """
    HALF: tl.constexpr = KERNEL_SIZE // 2
    pid_tile = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    tiles_x = tl.cdiv(W, TILE_W)
    within = tl.arange(0, BLOCK)
    py = (pid_tile // tiles_x) * (BLOCK // TILE_W) + within // TILE_W
    px = (pid_tile % tiles_x) * TILE_W + within % TILE_W
    in_range = (py < H) & (px < W)
    fill_gray = _gray_at(fill_ptr + batch * stride_pb, py * stride_ph + px * stride_pw, stride_pc, in_range,
                         FILL_CHANNELS, ACC)
    channel = tl.arange(0, CANDIDATES)
    step_x = (channel // KERNEL_SIZE)[None, :]
    step_y = (channel % KERNEL_SIZE)[None, :]
    tile_mask = in_range[:, None] & (channel < KERNEL_SIZE * KERNEL_SIZE)[None, :]
    q_inside, target_x, target_y, used = _candidate(flow_ptr + batch * stride_fb, py[:, None], px[:, None],
                                                    tile_mask, step_x, step_y, H, W,
                                                    stride_fc, stride_fh, stride_fw, HALF, ACC)
    candidate = tl.load(gray_ptr + batch * stride_gb + target_y * stride_gh + target_x * stride_gw, mask=used,
                        other=0.0).to(ACC)
    value = tl.where(used, candidate, tl.where(q_inside, fill_gray[:, None], 0.0))
    value = _round(_round(value, VALUE_DTYPE).to(VIA_DTYPE), out_ptr.dtype.element_ty)
    out_offset = (py * stride_oh + px * stride_ow)[:, None] + channel[None, :] * stride_oc
    tl.store(out_ptr + batch * stride_ob + out_offset, value, mask=tile_mask)


@triton.jit
def _pixel_volume_backward_kernel(
    flow_ptr, grad_out_ptr, grad_image_gray_ptr, grad_fill_ptr,
    H, W,
    stride_fb, stride_fc, stride_fh, stride_fw,
    stride_gb, stride_gc, stride_gh, stride_gw,
    FILL_CHANNELS: tl.constexpr, KERNEL_SIZE: tl.constexpr,
    NEED_IMAGE_GRAD: tl.constexpr, NEED_FILL_GRAD: tl.constexpr,
    ACC: tl.constexpr, GRAD_VIA_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Gradients w.r.t. gray(image) and fill.

    grad_image_gray: contiguous (B, 1, H, W) ACC buffer, accumulated with atomics at each used target.
    grad_fill: contiguous (B, FILL_CHANNELS, H, W), written once per pixel (gray weights applied here).
    grad_out: any layout, any float dtype (rounded to the image dtype = flow's dtype through GRAD_VIA_DTYPE).
    """
    HALF: tl.constexpr = KERNEL_SIZE // 2
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    py = offs // W
    px = offs % W
    flow_base = flow_ptr + batch * stride_fb
    grad_out_base = grad_out_ptr + batch * stride_gb + py * stride_gh + px * stride_gw
    grad_image_gray_base = grad_image_gray_ptr + batch * H * W
    grad_fill_gray = tl.zeros([BLOCK], dtype=ACC)
    # Offsets along x loop at run time: fully unrolled, the 25 atomics made ptxas spill a few bytes (sm_80/sm_90a).
    for step_x in range(KERNEL_SIZE):
        for step_y in tl.static_range(KERNEL_SIZE):
            q_inside, target_x, target_y, used = _candidate(flow_base, py, px, in_range, step_x, step_y, H, W,
                                                            stride_fc, stride_fh, stride_fw, HALF, ACC)
            channel = step_x * KERNEL_SIZE + step_y
            grad = tl.load(grad_out_base + channel * stride_gc, mask=q_inside, other=0.0)
            if grad_out_ptr.dtype.element_ty != flow_ptr.dtype.element_ty:
                # A volume emitted in another dtype: round grad_out to the image dtype first, as the
                # backward of PyTorch's cast does.
                grad = _round(grad.to(GRAD_VIA_DTYPE), flow_ptr.dtype.element_ty)
            grad = grad.to(ACC)
            if NEED_IMAGE_GRAD:
                tl.atomic_add(grad_image_gray_base + target_y * W + target_x, grad, mask=used, sem="relaxed")
            if NEED_FILL_GRAD:
                grad_fill_gray += tl.where(used, 0.0, grad)
    if NEED_FILL_GRAD:
        _store_gray_gradient(grad_fill_ptr, grad_fill_ptr + batch * FILL_CHANNELS * H * W + offs, grad_fill_gray,
                             in_range, H, W, FILL_CHANNELS)


@triton.jit
def _store_gray_gradient(ptr, base, grad_gray, mask, H, W, CHANNELS: tl.constexpr):
    """Store d(loss)/d(image) from d(loss)/d(gray) at `base` of a contiguous (CHANNELS, H, W) plane set in ptr's
    dtype: the gray gradient itself for one channel, times each gray weight for RGB; rounded once."""
    out_ty = ptr.dtype.element_ty
    if CHANNELS == 1:
        tl.store(base, _round(grad_gray, out_ty), mask=mask)
    else:
        tl.store(base, _round(grad_gray * _GRAY_RED, out_ty), mask=mask)
        tl.store(base + H * W, _round(grad_gray * _GRAY_GREEN, out_ty), mask=mask)
        tl.store(base + 2 * H * W, _round(grad_gray * _GRAY_BLUE, out_ty), mask=mask)


@triton.jit
def _gray_grad_kernel(
    grad_gray_ptr, grad_image_ptr,
    H, W,
    IMAGE_CHANNELS: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_image: contiguous (B, IMAGE_CHANNELS, H, W) in its own dtype, from grad_gray (contiguous
    (B, 1, H, W), ACC): each channel's gray weight times grad_gray (d gray / d channel), rounded once."""
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    grad = tl.load(grad_gray_ptr + batch * H * W + offs, mask=in_range, other=0.0)
    _store_gray_gradient(grad_image_ptr, grad_image_ptr + batch * IMAGE_CHANNELS * H * W + offs, grad, in_range, H,
                         W, IMAGE_CHANNELS)


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _via(dtype: torch.dtype):
    """The type PyTorch converts through when casting to `dtype`: float64 stays, the rest go via float32
    (PyTorch rounds float64 to a 16-bit type through float32; the other steps are exact or single)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _store_dtypes(image_dtype: torch.dtype, out_dtype: torch.dtype) -> dict:
    """VALUE_DTYPE / VIA_DTYPE constexprs: the roundings of PyTorch's `volume.to(image_dtype).to(out_dtype)`."""
    return {"VALUE_DTYPE": _TL_DTYPES[image_dtype], "VIA_DTYPE": _via(out_dtype)}


def _candidates(kernel_size: int) -> int:
    return triton.next_power_of_2(kernel_size * kernel_size)


def _forward_patch(kernel_size: int) -> tuple[int, int]:
    """(pixels, patch width) of a forward program: FORWARD_TILE (pixel, candidate) pairs per program."""
    block = max(1, FORWARD_TILE // _candidates(kernel_size))
    return block, min(block, FORWARD_TILE_W)


def _gray_source(image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The 1-channel gray plane the forward gathers from and its (b, h, w) strides: a 1-channel image as is,
    else its gray image computed once per pixel by `_gray_kernel` into a contiguous ACC buffer."""
    if image.shape[1] == 1:
        return image, (image.stride(0), image.stride(2), image.stride(3))
    batch, _, height, width = image.shape
    gray = torch.empty((batch, 1, height, width), device=image.device, dtype=acc_dtype(image.dtype))
    wrap_triton(_gray_kernel)[pixel_grid(batch, height, width, GRAY_BLOCK)](
        image, gray, height, width, *image.stride(), ACC=tl_acc_dtype(image.dtype), BLOCK=GRAY_BLOCK,
        num_warps=GRAY_WARPS)
    return gray, (gray.stride(0), gray.stride(2), gray.stride(3))


@LazyTritonOp.define("pvd::pixel_volume", mutates_args={})
def _pixel_volume_op(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor, kernel_size: int,
                     out_dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    batch, _, height, width = image.shape
    out = _empty_volume(image, kernel_size, out_dtype, channels_last)
    gray, gray_strides = _gray_source(image)
    block, tile_w = _forward_patch(kernel_size)
    tiles = triton.cdiv(width, tile_w) * triton.cdiv(height, block // tile_w)
    wrap_triton(_pixel_volume_forward_kernel)[(tiles, batch)](
        gray, flow, fill, out, height, width, *gray_strides, *flow.stride(), *fill.stride(), *out.stride(),
        FILL_CHANNELS=fill.shape[1], KERNEL_SIZE=kernel_size, CANDIDATES=_candidates(kernel_size),
        ACC=tl_acc_dtype(image.dtype), **_store_dtypes(image.dtype, out_dtype), BLOCK=block, TILE_W=tile_w,
        num_warps=FORWARD_WARPS)
    return out


def _empty_volume(image: torch.Tensor, kernel_size: int, out_dtype: torch.dtype, channels_last: bool):
    batch, _, height, width = image.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((batch, kernel_size * kernel_size, height, width), device=image.device, dtype=out_dtype,
                       memory_format=memory_format)


@LazyTritonOp.define("pvd::pixel_volume_backward", mutates_args={})
def _pixel_volume_backward_op(flow: torch.Tensor, grad_out: torch.Tensor, kernel_size: int, image_channels: int,
                              fill_channels: int, need_image_grad: bool,
                              need_fill_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_image (B, image_channels, H, W), grad_fill (B, fill_channels, H, W)) in flow's dtype;
    a gradient that is not needed comes back as an empty (0,) tensor."""
    batch, _, height, width = flow.shape
    acc = acc_dtype(flow.dtype)
    grad_image_gray = torch.zeros((batch, 1, height, width) if need_image_grad else (0,), device=flow.device,
                                  dtype=acc)
    grad_fill = torch.empty((batch, fill_channels, height, width) if need_fill_grad else (0,), device=flow.device,
                            dtype=flow.dtype)
    wrap_triton(_pixel_volume_backward_kernel)[pixel_grid(batch, height, width, BLOCK_PIXELS)](
        flow, grad_out, grad_image_gray, grad_fill, height, width, *flow.stride(), *grad_out.stride(),
        FILL_CHANNELS=fill_channels, KERNEL_SIZE=kernel_size, NEED_IMAGE_GRAD=need_image_grad,
        NEED_FILL_GRAD=need_fill_grad, ACC=tl_acc_dtype(flow.dtype), GRAD_VIA_DTYPE=_via(flow.dtype),
        BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    if not need_image_grad or (image_channels == 1 and flow.dtype == acc):
        return grad_image_gray, grad_fill
    grad_image = torch.empty((batch, image_channels, height, width), device=flow.device, dtype=flow.dtype)
    wrap_triton(_gray_grad_kernel)[pixel_grid(batch, height, width, GRAY_BLOCK)](
        grad_image_gray, grad_image, height, width, IMAGE_CHANNELS=image_channels, BLOCK=GRAY_BLOCK,
        num_warps=GRAY_WARPS)
    return grad_image, grad_fill


@_pixel_volume_op.register_fake
def _(image, flow, fill, kernel_size, out_dtype, channels_last):
    return _empty_volume(image, kernel_size, out_dtype, channels_last)


@_pixel_volume_backward_op.register_fake
def _(flow, grad_out, kernel_size, image_channels, fill_channels, need_image_grad, need_fill_grad):
    batch, _, height, width = flow.shape
    grad_image = flow.new_empty((batch, image_channels, height, width) if need_image_grad else (0,))
    grad_fill = flow.new_empty((batch, fill_channels, height, width) if need_fill_grad else (0,))
    return grad_image, grad_fill


def _setup_context(ctx, inputs, output):
    image, flow, fill, kernel_size, _, _ = inputs
    ctx.save_for_backward(flow)
    ctx.kernel_size = kernel_size
    ctx.image_channels = image.shape[1]
    ctx.fill_channels = fill.shape[1]


def _backward(ctx, grad_out):
    flow, = ctx.saved_tensors
    need_image_grad, _, need_fill_grad = ctx.needs_input_grad[:3]
    if not (need_image_grad or need_fill_grad):
        return None, None, None, None, None, None
    grad_image, grad_fill = _pixel_volume_backward_op(flow, grad_out, ctx.kernel_size, ctx.image_channels,
                                                      ctx.fill_channels, need_image_grad, need_fill_grad)
    # The volume is piecewise constant in the flow: no gradient flows to it.
    return (grad_image if need_image_grad else None, None, grad_fill if need_fill_grad else None, None, None, None)


_pixel_volume_op.register_autograd(_backward, setup_context=_setup_context)
_pixel_volume_op.register_now_if_servable()
_pixel_volume_backward_op.register_now_if_servable()


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor,
                 kernel_size: int = DEFAULT_KERNEL_SIZE, *, out_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> torch.Tensor:
    """Pixel volume of PVDNet: the k*k gray candidates that each pixel's neighbours' flows point to.

    image: previous deblurred frame, fill: current blurry frame, both (B, 3 or 1, H, W) in [-1, 1];
    flow: (B, 2, H, W) in pixels (x then y); kernel_size k: odd integer >= 1. Returns (B, k*k, H, W) in
    image's dtype (see the module docstring for each channel's value). Differentiable w.r.t. image and
    fill, not flow. out_dtype / channels_last: emit the volume directly in that dtype / memory format, bit for
    bit `volume.to(out_dtype).contiguous(memory_format=torch.channels_last)` of the default output, in one pass
    (what PVDNet's first convolution consumes under autocast). CUDA tensors (and CPU tensors under
    TRITON_INTERPRET=1) run the Triton kernels, other CPU tensors `cpu.pixel_volume` (bit-identical to
    `reference.pixel_volume`).
    """
    kernel_size = check_pixel_volume_args(image, flow, fill, kernel_size, out_dtype, channels_last)
    if use_triton(image):
        return _pixel_volume_op(image, flow, fill, kernel_size, out_dtype or image.dtype, channels_last)
    return cpu.pixel_volume(image, flow, fill, kernel_size, out_dtype=out_dtype, channels_last=channels_last)
