"""The first correlation kernels ("legacy" design), kept selectable until a GPU has timed them against the tiled
design of `pvd.kernels.correlation` (`PVD_CORRELATION_KERNEL=legacy`).

Forward: one program per (block of output pixels, displacement), so every f1 and f2 element is fetched once per
displacement. Backward: gather form, one program per (block of grid pixels, block of channels). Same semantics,
shapes and dtypes as `pvd.kernels.correlation.correlation`; the kernels are unchanged from the first version.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import tl_acc_dtype

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


def forward(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int, out: torch.Tensor) -> None:
    """Fill `out` (B, D*D, OUT_H, OUT_W), contiguous, with the cost volume of f1, f2 (B, C, H, W)."""
    batch, channels = f1.shape[:2]
    displacements, out_h, out_w = out.shape[1:]
    grid = (triton.cdiv(out_h * out_w, PIXEL_BLOCK) * displacements, batch)
    wrap_triton(_correlation_forward_kernel)[grid](
        f1, f2, out, channels, out_h, out_w, max_displacement, stride, *f1.stride(), *f2.stride(),
        ACC=tl_acc_dtype(f1.dtype), BLOCK_C=_channel_block(f1.dtype), BLOCK_P=PIXEL_BLOCK, num_warps=NUM_WARPS)


def backward(f1: torch.Tensor, f2: torch.Tensor, grad_out: torch.Tensor, max_displacement: int, stride: int,
             grad_f1: torch.Tensor, grad_f2: torch.Tensor) -> None:
    """Write the on-grid entries of grad_f1, grad_f2 (contiguous, B, C, H, W); off-grid ones are left as they are."""
    batch, channels, height, width = f1.shape
    out_h, out_w = grad_out.shape[2:]
    block_c = _channel_block(f1.dtype)
    grid = (triton.cdiv(out_h * out_w, PIXEL_BLOCK), triton.cdiv(channels, block_c), batch)
    for grad, other, wrt_f2 in ((grad_f1, f2, False), (grad_f2, f1, True)):
        wrap_triton(_correlation_backward_kernel)[grid](
            grad_out, other, grad, channels, height, width, out_h, out_w, max_displacement, stride,
            *grad_out.stride(), *other.stride(),
            ACC=tl_acc_dtype(f1.dtype), BLOCK_C=block_c, BLOCK_P=PIXEL_BLOCK, WRT_F2=wrt_f2,
            num_warps=NUM_WARPS)

