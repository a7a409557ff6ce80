"""LiteFlowNet cost volume: Triton forward/backward kernels, launcher, and the `pvd::correlation` custom op.

`correlation(f1, f2, d, s)[b, (dy+d)*D + (dx+d), y, x] = (1/C) * sum_c f1[b, c, s*y, s*x] * f2[b, c, s*y + s*dy,
s*x + s*dx]` for (dy, dx) in [-d, d]^2, D = 2*d + 1, f2 taken as 0 outside the image; the output is
(B, D*D, ceil(H/s), ceil(W/s)). Reference twin: `pvd.kernels.reference.correlation`.

Both f1 and f2 are only read on the stride grid (rows and columns that are multiples of s), so the kernels
work in grid units: output pixel p reads f1 at s*p and f2 at s*(p + disp), and a grid position k lies inside
the image exactly when 0 <= k < ceil(size/s). The backward runs in gather form (no atomics, deterministic):
    grad_f1[c, s*p] = (1/C) * sum_disp grad_out[disp, p] * f2[c, s*(p + disp)]
    grad_f2[c, s*q] = (1/C) * sum_disp grad_out[disp, q - disp] * f1[c, s*(q - disp)]
with the terms whose grid position falls outside the output dropped, and both gradients zero off the grid.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import reference
from . import cpu  # the CPU fallback (outside the Triton interpreter)
from ._common import (
    CompileSpec,
    check_correlation_args,
    pointer_type,
    tl_acc_dtype,
    use_triton,
)

# Forward: one program per (block of BLOCK_P output pixels, displacement); it walks the channels BLOCK_C at a
# time. Each thread owns one pixel and the BLOCK_C channels of the chunk, so the channel sum stays in-thread.
# Backward: one program per (block of BLOCK_P grid pixels, BLOCK_C channels), summing over displacements.
# float64 tiles take half the channels to keep register use moderate (no spills on sm_80 / sm_90a).
PIXEL_BLOCK = 128
CHANNEL_BLOCK = 16
CHANNEL_BLOCK_FLOAT64 = 8
NUM_WARPS = 4


@triton.jit
def _correlation_forward_kernel(
    f1_ptr, f2_ptr, out_ptr,
    C, OUT_H, OUT_W, MAX_DISP, STRIDE,
    stride_1b, stride_1c, stride_1h, stride_1w,
    stride_2b, stride_2c, stride_2h, stride_2w,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Cost volume into a contiguous (B, D*D, OUT_H, OUT_W) output in the inputs' dtype.

    Program axis 0 enumerates (pixel block, displacement) with the displacement fastest, so programs
    running side by side read the same f1 block and overlapping f2 windows (cache reuse); axis 1 is the batch.
    """
    size = 2 * MAX_DISP + 1
    num_displacements = size * size
    pid = tl.program_id(0)
    pid_pixels = pid // num_displacements
    displacement = pid % num_displacements
    batch = tl.program_id(1).to(tl.int64)
    num_pixels = OUT_H * OUT_W
    offs = pid_pixels * BLOCK_P + tl.arange(0, BLOCK_P)
    in_range = offs < num_pixels
    out_y = offs // OUT_W
    out_x = offs % OUT_W
    # f2 position in grid units; it is inside the image exactly when it lies inside the output grid.
    f2_y = out_y + displacement // size - MAX_DISP
    f2_x = out_x + displacement % size - MAX_DISP
    f2_ok = in_range & (f2_y >= 0) & (f2_y < OUT_H) & (f2_x >= 0) & (f2_x < OUT_W)
    f1_offset = (out_y * STRIDE) * stride_1h + (out_x * STRIDE) * stride_1w
    f2_offset = (f2_y * STRIDE) * stride_2h + (f2_x * STRIDE) * stride_2w
    f1_base = f1_ptr + batch * stride_1b + f1_offset[:, None]
    f2_base = f2_ptr + batch * stride_2b + f2_offset[:, None]
    channels = tl.arange(0, BLOCK_C)
    products = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for channel_start in range(0, C, BLOCK_C):
        chunk = channel_start + channels
        chunk_ok = chunk[None, :] < C
        f1_chunk = tl.load(f1_base + chunk[None, :] * stride_1c, mask=in_range[:, None] & chunk_ok, other=0.0)
        f2_chunk = tl.load(f2_base + chunk[None, :] * stride_2c, mask=f2_ok[:, None] & chunk_ok, other=0.0)
        products += f1_chunk.to(ACC) * f2_chunk.to(ACC)
    value = tl.sum(products, axis=1) / C
    out_offset = (batch * num_displacements + displacement) * num_pixels + offs
    tl.store(out_ptr + out_offset, value.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _correlation_backward_kernel(
    grad_out_ptr, other_ptr, grad_ptr,
    C, H, W, OUT_H, OUT_W, MAX_DISP, STRIDE,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, WRT_F2: tl.constexpr,
):
    """Gradient w.r.t. f1 (other = f2) or, with WRT_F2, w.r.t. f2 (other = f1), on the stride grid.

    For grid pixel p and displacement k the partner grid position is p + k (the f2 pixel read by output p)
    for grad_f1 and p - k (the output pixel that read f2 at p) for grad_f2; the term reads other at the
    partner and grad_out at output p (grad_f1) or at the partner (grad_f2). grad is a contiguous
    (B, C, H, W) buffer in the inputs' dtype; off-grid entries are left to the caller (zeros).
    """
    if WRT_F2:
        direction = -1
    else:
        direction = 1
    pid_pixels = tl.program_id(0)
    pid_channels = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    size = 2 * MAX_DISP + 1
    offs = pid_pixels * BLOCK_P + tl.arange(0, BLOCK_P)
    in_range = offs < OUT_H * OUT_W
    grid_y = offs // OUT_W
    grid_x = offs % OUT_W
    channels = pid_channels * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_ok = channels[None, :] < C
    grad_out_base = grad_out_ptr + batch * stride_gb
    other_base = other_ptr + batch * stride_ob + channels[None, :] * stride_oc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for dy_index in range(size):
        partner_y = grid_y + direction * (dy_index - MAX_DISP)
        row_ok = in_range & (partner_y >= 0) & (partner_y < OUT_H)
        for dx_index in range(size):
            partner_x = grid_x + direction * (dx_index - MAX_DISP)
            ok = row_ok & (partner_x >= 0) & (partner_x < OUT_W)
            if WRT_F2:
                grad_out_offset = partner_y * stride_gh + partner_x * stride_gw
            else:
                grad_out_offset = grid_y * stride_gh + grid_x * stride_gw
            grad_out_plane = grad_out_base + (dy_index * size + dx_index) * stride_gc
            g = tl.load(grad_out_plane + grad_out_offset, mask=ok, other=0.0).to(ACC)
            other_offset = (partner_y * STRIDE) * stride_oh + (partner_x * STRIDE) * stride_ow
            other = tl.load(other_base + other_offset[:, None], mask=ok[:, None] & channel_ok, other=0.0)
            acc += g[:, None] * other.to(ACC)
    grad_offset = ((grid_y * STRIDE) * W + grid_x * STRIDE)[:, None] + channels[None, :] * (H * W)
    tl.store(grad_ptr + batch * C * H * W + grad_offset, (acc / C).to(grad_ptr.dtype.element_ty),
             mask=in_range[:, None] & channel_ok)



def _channel_block(dtype: torch.dtype) -> int:
    return CHANNEL_BLOCK_FLOAT64 if dtype == torch.float64 else CHANNEL_BLOCK


def _output_size(size: int, stride: int) -> int:
    return -(-size // stride)


@triton_op("pvd::correlation", mutates_args={})
def _correlation_op(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int) -> torch.Tensor:
    batch, channels, height, width = f1.shape
    size = 2 * max_displacement + 1
    out_h, out_w = _output_size(height, stride), _output_size(width, stride)
    out = torch.empty((batch, size * size, out_h, out_w), device=f1.device, dtype=f1.dtype)
    grid = (triton.cdiv(out_h * out_w, PIXEL_BLOCK) * size * size, batch)
    wrap_triton(_correlation_forward_kernel)[grid](
        f1, f2, out, channels, out_h, out_w, max_displacement, stride, *f1.stride(), *f2.stride(),
        ACC=tl_acc_dtype(f1.dtype), BLOCK_C=_channel_block(f1.dtype), BLOCK_P=PIXEL_BLOCK, num_warps=NUM_WARPS)
    return out


@triton_op("pvd::correlation_backward", mutates_args={})
def _correlation_backward_op(f1: torch.Tensor, f2: torch.Tensor, grad_out: torch.Tensor, max_displacement: int,
                             stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = f1.shape
    out_h, out_w = _output_size(height, stride), _output_size(width, stride)
    # Off the stride grid both gradients are zero; on it the kernels write every entry.
    allocate = torch.empty if stride == 1 else torch.zeros
    grad_f1 = allocate((batch, channels, height, width), device=f1.device, dtype=f1.dtype)
    grad_f2 = allocate((batch, channels, height, width), device=f1.device, dtype=f1.dtype)
    block_c = _channel_block(f1.dtype)
    grid = (triton.cdiv(out_h * out_w, PIXEL_BLOCK), triton.cdiv(channels, block_c), batch)
    for grad, other, wrt_f2 in ((grad_f1, f2, False), (grad_f2, f1, True)):
        wrap_triton(_correlation_backward_kernel)[grid](
            grad_out, other, grad, channels, height, width, out_h, out_w, max_displacement, stride,
            *grad_out.stride(), *other.stride(),
            ACC=tl_acc_dtype(f1.dtype), BLOCK_C=block_c, BLOCK_P=PIXEL_BLOCK, WRT_F2=wrt_f2,
            num_warps=NUM_WARPS)
    return grad_f1, grad_f2


@_correlation_op.register_fake
def _(f1, f2, max_displacement, stride):
    batch, _, height, width = f1.shape
    size = 2 * max_displacement + 1
    return f1.new_empty((batch, size * size, _output_size(height, stride), _output_size(width, stride)))


@_correlation_backward_op.register_fake
def _(f1, f2, grad_out, max_displacement, stride):
    return (torch.empty_like(f1, memory_format=torch.contiguous_format),
            torch.empty_like(f2, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    f1, f2, max_displacement, stride = inputs
    ctx.save_for_backward(f1, f2)
    ctx.max_displacement = max_displacement
    ctx.stride = stride


def _backward(ctx, grad_out):
    f1, f2 = ctx.saved_tensors
    grad_f1, grad_f2 = _correlation_backward_op(f1, f2, grad_out, ctx.max_displacement, ctx.stride)
    return grad_f1, grad_f2, None, None


_correlation_op.register_autograd(_backward, setup_context=_setup_context)


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 3, stride: int = 1) -> torch.Tensor:
    """LiteFlowNet cost volume of features `f1`, `f2` (B, C, H, W): mean over channels of f1 * shifted f2.

    Returns (B, D*D, ceil(H/s), ceil(W/s)) in the inputs' dtype, D = 2*max_displacement + 1, s = stride;
    channel (dy+d)*D + (dx+d) holds displacement (dy, dx) in grid steps of s pixels, f2 zero outside the
    image. Differentiable w.r.t. f1 and f2. CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) run the
    Triton kernels, other CPU tensors `reference.correlation`.
    """
    max_displacement, stride = check_correlation_args(f1, f2, max_displacement, stride)
    if use_triton(f1):
        return _correlation_op(f1, f2, max_displacement, stride)
    return cpu.correlation(f1, f2, max_displacement, stride)


def compile_specs() -> list[CompileSpec]:
    """Every kernel/launch configuration this module can launch, for the ahead-of-time compile check."""
    specs = []
    grid_args = {name: "i32" for name in ("OUT_H", "OUT_W", "MAX_DISP", "STRIDE")}
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        ptr = pointer_type(dtype)
        blocks = {"ACC": tl_acc_dtype(dtype), "BLOCK_C": _channel_block(dtype), "BLOCK_P": PIXEL_BLOCK}
        forward_strides = {f"stride_{t}{d}": "i32" for t in "12" for d in "bchw"}
        specs.append(CompileSpec(
            "correlation_forward", _correlation_forward_kernel, dtype,
            {"f1_ptr": ptr, "f2_ptr": ptr, "out_ptr": ptr, "C": "i32", **grid_args, **forward_strides},
            blocks, NUM_WARPS))
        backward_strides = {f"stride_{t}{d}": "i32" for t in "go" for d in "bchw"}
        for wrt_f2 in (False, True):
            specs.append(CompileSpec(
                f"correlation_backward_{'f2' if wrt_f2 else 'f1'}", _correlation_backward_kernel, dtype,
                {"grad_out_ptr": ptr, "other_ptr": ptr, "grad_ptr": ptr, "C": "i32", "H": "i32", "W": "i32",
                 **grid_args, **backward_strides},
                {**blocks, "WRT_F2": wrt_f2}, NUM_WARPS))
    return specs
