"""PVDNet pixel volume: Triton forward/backward kernels, launcher, and the `pvd::pixel_volume` custom op.

`pixel_volume(image, flow, fill, k)[b, (i+h)*k + (j+h), y, x]`, h = k // 2, offsets (i, j) in [-h, h]^2
(i along x, j along y): with q = (y - j, x - i) the neighbour whose flow is borrowed,
- 0 if q is outside the image;
- else with X0 = trunc(q.x + flow_x[q]) + i, Y0 = trunc(q.y + flow_y[q]) + j (trunc rounds toward zero):
  gray(image)[Y0, X0] if 1 <= X0 <= W-2 and 1 <= Y0 <= H-2 and the flow at q is finite, else gray(fill)[p].
gray = 0.2989 R + 0.5870 G + 0.1140 B is computed inside the kernels (a 1-channel input is used as is).
Differentiable w.r.t. image and fill, not flow. Reference twin: `pvd.kernels.reference.pixel_volume`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import reference
from . import cpu  # the CPU fallback (outside the Triton interpreter)
from ._common import (
    DEFAULT_KERNEL_SIZE,
    CompileSpec,
    acc_dtype,
    check_pixel_volume_args,
    pointer_type,
    tl_acc_dtype,
    use_triton,
)

BLOCK_PIXELS = 256
NUM_WARPS = 8

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
def _pixel_volume_forward_kernel(
    image_ptr, flow_ptr, fill_ptr, out_ptr,
    H, W,
    stride_ib, stride_ic, stride_ih, stride_iw,
    stride_fb, stride_fc, stride_fh, stride_fw,
    stride_pb, stride_pc, stride_ph, stride_pw,
    IMAGE_CHANNELS: tl.constexpr, FILL_CHANNELS: tl.constexpr, KERNEL_SIZE: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """out: contiguous (B, KERNEL_SIZE**2, H, W). Strides: i = image, f = flow, p = fill (the original's `pad`)."""
    HALF: tl.constexpr = KERNEL_SIZE // 2
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    py = offs // W
    px = offs % W
    image_base = image_ptr + batch * stride_ib
    flow_base = flow_ptr + batch * stride_fb
    fill_gray = _gray_at(fill_ptr + batch * stride_pb, py * stride_ph + px * stride_pw, stride_pc, in_range,
                         FILL_CHANNELS, ACC)
    out_base = out_ptr + batch * (KERNEL_SIZE * KERNEL_SIZE) * H * W + offs
    for step_x in tl.static_range(KERNEL_SIZE):
        for step_y in tl.static_range(KERNEL_SIZE):
            q_inside, target_x, target_y, used = _candidate(flow_base, py, px, in_range, step_x, step_y, H, W,
                                                            stride_fc, stride_fh, stride_fw, HALF, ACC)
            candidate = _gray_at(image_base, target_y * stride_ih + target_x * stride_iw, stride_ic, used,
                                 IMAGE_CHANNELS, ACC)
            value = tl.where(used, candidate, tl.where(q_inside, fill_gray, 0.0))
            channel = step_x * KERNEL_SIZE + step_y
            tl.store(out_base + channel * H * W, value.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _pixel_volume_backward_kernel(
    flow_ptr, grad_out_ptr, grad_image_gray_ptr, grad_fill_ptr,
    H, W,
    stride_fb, stride_fc, stride_fh, stride_fw,
    stride_gb, stride_gc, stride_gh, stride_gw,
    FILL_CHANNELS: tl.constexpr, KERNEL_SIZE: tl.constexpr,
    NEED_IMAGE_GRAD: tl.constexpr, NEED_FILL_GRAD: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Gradients w.r.t. gray(image) and fill.

    grad_image_gray: contiguous (B, 1, H, W) ACC buffer, accumulated with atomics at each used target.
    grad_fill: contiguous (B, FILL_CHANNELS, H, W), written once per pixel (gray weights applied here).
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
            grad = tl.load(grad_out_base + channel * stride_gc, mask=q_inside, other=0.0).to(ACC)
            if NEED_IMAGE_GRAD:
                tl.atomic_add(grad_image_gray_base + target_y * W + target_x, grad, mask=used, sem="relaxed")
            if NEED_FILL_GRAD:
                grad_fill_gray += tl.where(used, 0.0, grad)
    if NEED_FILL_GRAD:
        grad_fill_base = grad_fill_ptr + batch * FILL_CHANNELS * H * W + offs
        out_ty = grad_fill_ptr.dtype.element_ty
        if FILL_CHANNELS == 1:
            tl.store(grad_fill_base, grad_fill_gray.to(out_ty), mask=in_range)
        else:
            tl.store(grad_fill_base, (grad_fill_gray * _GRAY_RED).to(out_ty), mask=in_range)
            tl.store(grad_fill_base + H * W, (grad_fill_gray * _GRAY_GREEN).to(out_ty), mask=in_range)
            tl.store(grad_fill_base + 2 * H * W, (grad_fill_gray * _GRAY_BLUE).to(out_ty), mask=in_range)




def _grid(batch: int, height: int, width: int):
    return (triton.cdiv(height * width, BLOCK_PIXELS), batch)


@triton_op("pvd::pixel_volume", mutates_args={})
def _pixel_volume_op(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor, kernel_size: int) -> torch.Tensor:
    batch, image_channels, height, width = image.shape
    out = torch.empty((batch, kernel_size * kernel_size, height, width), device=image.device, dtype=image.dtype)
    wrap_triton(_pixel_volume_forward_kernel)[_grid(batch, height, width)](
        image, flow, fill, out, height, width, *image.stride(), *flow.stride(), *fill.stride(),
        IMAGE_CHANNELS=image_channels, FILL_CHANNELS=fill.shape[1], KERNEL_SIZE=kernel_size,
        ACC=tl_acc_dtype(image.dtype), BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return out


@triton_op("pvd::pixel_volume_backward", mutates_args={})
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
    wrap_triton(_pixel_volume_backward_kernel)[_grid(batch, height, width)](
        flow, grad_out, grad_image_gray, grad_fill, height, width, *flow.stride(), *grad_out.stride(),
        FILL_CHANNELS=fill_channels, KERNEL_SIZE=kernel_size, NEED_IMAGE_GRAD=need_image_grad,
        NEED_FILL_GRAD=need_fill_grad, ACC=tl_acc_dtype(flow.dtype), BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    if need_image_grad and image_channels == 3:
        # d gray / d channel is the channel's gray weight.
        grad_image_gray = torch.cat([grad_image_gray * weight for weight in reference.GRAY_WEIGHTS], dim=1)
    return grad_image_gray.to(flow.dtype), grad_fill


@_pixel_volume_op.register_fake
def _(image, flow, fill, kernel_size):
    batch, _, height, width = image.shape
    return image.new_empty((batch, kernel_size * kernel_size, height, width))


@_pixel_volume_backward_op.register_fake
def _(flow, grad_out, kernel_size, image_channels, fill_channels, need_image_grad, need_fill_grad):
    batch, _, height, width = flow.shape
    grad_image = flow.new_empty((batch, image_channels, height, width) if need_image_grad else (0,))
    grad_fill = flow.new_empty((batch, fill_channels, height, width) if need_fill_grad else (0,))
    return grad_image, grad_fill


def _setup_context(ctx, inputs, output):
    image, flow, fill, kernel_size = inputs
    ctx.save_for_backward(flow)
    ctx.kernel_size = kernel_size
    ctx.image_channels = image.shape[1]
    ctx.fill_channels = fill.shape[1]


def _backward(ctx, grad_out):
    flow, = ctx.saved_tensors
    need_image_grad, _, need_fill_grad, _ = ctx.needs_input_grad
    if not (need_image_grad or need_fill_grad):
        return None, None, None, None
    grad_image, grad_fill = _pixel_volume_backward_op(flow, grad_out, ctx.kernel_size, ctx.image_channels,
                                                      ctx.fill_channels, need_image_grad, need_fill_grad)
    # The volume is piecewise constant in the flow: no gradient flows to it.
    return (grad_image if need_image_grad else None, None, grad_fill if need_fill_grad else None, None)


_pixel_volume_op.register_autograd(_backward, setup_context=_setup_context)


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor,
                 kernel_size: int = DEFAULT_KERNEL_SIZE) -> torch.Tensor:
    """Pixel volume of PVDNet: the k*k gray candidates that each pixel's neighbours' flows point to.

    image: previous deblurred frame, fill: current blurry frame, both (B, 3 or 1, H, W) in [-1, 1];
    flow: (B, 2, H, W) in pixels (x then y); kernel_size k: odd integer >= 1. Returns (B, k*k, H, W) in
    image's dtype (see the module docstring for each channel's value). Differentiable w.r.t. image and
    fill, not flow. CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) run the Triton kernels, other
    CPU tensors `reference.pixel_volume`.
    """
    kernel_size = check_pixel_volume_args(image, flow, fill, kernel_size)
    if use_triton(image):
        return _pixel_volume_op(image, flow, fill, kernel_size)
    return cpu.pixel_volume(image, flow, fill, kernel_size)


def _stride_args(*tensors: str) -> dict:
    """Signature entries of the stride arguments of the given tensor letters, in kernel order."""
    return {f"stride_{t}{d}": "i32" for t in tensors for d in "bchw"}


def compile_specs() -> list[CompileSpec]:
    """Every kernel/launch configuration pvd launches, for the ahead-of-time compile check.

    All dtypes with RGB and gray inputs at PVDNet's kernel size 5, the backward for each gradient subset;
    other kernel sizes and mixed RGB/gray inputs are compiled on first use.
    """
    specs = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        ptr = pointer_type(dtype)
        acc_ptr = pointer_type(acc_dtype(dtype))
        for channels in (3, 1):
            specs.append(CompileSpec(
                f"pixel_volume_forward_c{channels}", _pixel_volume_forward_kernel, dtype,
                {"image_ptr": ptr, "flow_ptr": ptr, "fill_ptr": ptr, "out_ptr": ptr, "H": "i32", "W": "i32",
                 **_stride_args("i", "f", "p")},
                {"IMAGE_CHANNELS": channels, "FILL_CHANNELS": channels, "KERNEL_SIZE": DEFAULT_KERNEL_SIZE,
                 "ACC": tl_acc_dtype(dtype), "BLOCK": BLOCK_PIXELS}, NUM_WARPS))
            for need_image_grad, need_fill_grad in ((True, True), (True, False), (False, True)):
                specs.append(CompileSpec(
                    f"pixel_volume_backward_c{channels}_image{int(need_image_grad)}_fill{int(need_fill_grad)}",
                    _pixel_volume_backward_kernel, dtype,
                    {"flow_ptr": ptr, "grad_out_ptr": ptr, "grad_image_gray_ptr": acc_ptr, "grad_fill_ptr": ptr,
                     "H": "i32", "W": "i32", **_stride_args("f", "g")},
                    {"FILL_CHANNELS": channels, "KERNEL_SIZE": DEFAULT_KERNEL_SIZE,
                     "NEED_IMAGE_GRAD": need_image_grad, "NEED_FILL_GRAD": need_fill_grad,
                     "ACC": tl_acc_dtype(dtype), "BLOCK": BLOCK_PIXELS}, NUM_WARPS))
    return specs
