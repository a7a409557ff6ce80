"""Bilinear backward warp: Triton forward/backward kernels, launcher, and the `pvd::warp` custom op.

`warp(x, flow)[b, c, y, x] = x[b, c]` sampled bilinearly at `(x + flow[b, 0, y, x], y + flow[b, 1, y, x])`
(pixels); every tap outside the image contributes 0, exactly
`F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)`. A non-finite flow
vector gives 0 and zero gradients. Reference twin: `pvd.kernels.reference.warp`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import cpu  # the CPU fallback (outside the Triton interpreter)
from ._common import (
    LazyTritonOp,
    acc_dtype,
    check_warp_args,
    pixel_grid,
    tl_acc_dtype,
    use_triton,
)

BLOCK_PIXELS = 256
NUM_WARPS = 4
# The backward runs one pixel per thread (BLOCK_PIXELS == 32 * BACKWARD_WARPS). With more pixels than threads
# Triton vectorises the unit-stride loads (grad_out, flow) two per thread but keeps the gathered atomics at one
# per thread, and converts between those layouts through shared memory inside the channel loop (16 block-wide
# barriers per channel at sm_90a, 111 registers). One pixel per thread gives every load, atomic and the
# grad_flow accumulator the same layout: no conversion, no barrier in the loop, 40 registers (fp32, sm_90a).
WARP_SIZE = 32
BACKWARD_WARPS = BLOCK_PIXELS // WARP_SIZE


@triton.jit
def _bilinear_taps(flow_base, offs, in_range, H, W, stride_fc, stride_fh, stride_fw, ACC: tl.constexpr):
    """Sample position of each pixel in `offs` as the top-left tap (x0, y0) and the fractional weights."""
    py = offs // W
    px = offs % W
    flow_offset = py * stride_fh + px * stride_fw
    flow_x = tl.load(flow_base + flow_offset, mask=in_range, other=0.0).to(ACC)
    flow_y = tl.load(flow_base + stride_fc + flow_offset, mask=in_range, other=0.0).to(ACC)
    # x - x is 0 for finite x, NaN for NaN and +-inf.
    finite = ((flow_x - flow_x) == 0) & ((flow_y - flow_y) == 0)
    sample_x = tl.where(finite, px.to(ACC) + flow_x, -2.0)
    sample_y = tl.where(finite, py.to(ACC) + flow_y, -2.0)
    # Far-away samples are clamped into a band where all four taps are still outside (exact, no overflow).
    sample_x = tl.minimum(tl.maximum(sample_x, -2.0), W + 1.0)
    sample_y = tl.minimum(tl.maximum(sample_y, -2.0), H + 1.0)
    x0f = tl.floor(sample_x)
    y0f = tl.floor(sample_y)
    frac_x = sample_x - x0f
    frac_y = sample_y - y0f
    return x0f.to(tl.int32), y0f.to(tl.int32), frac_x, frac_y


@triton.jit
def _corner_masks(x0, y0, in_range, H, W):
    """Which of the four taps (x0|x0+1, y0|y0+1), ordered 00, 01 (x+1), 10 (y+1), 11, lie inside the image."""
    ok_x0 = (x0 >= 0) & (x0 < W)
    ok_x1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    ok_y0 = in_range & (y0 >= 0) & (y0 < H)
    ok_y1 = in_range & (y0 + 1 >= 0) & (y0 + 1 < H)
    return ok_y0 & ok_x0, ok_y0 & ok_x1, ok_y1 & ok_x0, ok_y1 & ok_x1


@triton.jit
def _corner_weights(frac_x, frac_y):
    """Bilinear weights of the four taps, in the order of `_corner_masks`."""
    return (1.0 - frac_x) * (1.0 - frac_y), frac_x * (1.0 - frac_y), (1.0 - frac_x) * frac_y, frac_x * frac_y


@triton.jit
def _corner_offsets(x0, y0, stride_h, stride_w):
    """Element offsets of the four taps in a plane with the given strides, in the order of `_corner_masks`."""
    top = y0 * stride_h
    bottom = top + stride_h
    left = x0 * stride_w
    right = left + stride_w
    return top + left, top + right, bottom + left, bottom + right


@triton.jit
def _warp_forward_kernel(
    x_ptr, flow_ptr, out_ptr,
    C, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_fb, stride_fc, stride_fh, stride_fw,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    x0, y0, frac_x, frac_y = _bilinear_taps(flow_ptr + batch * stride_fb, offs, in_range, H, W,
                                            stride_fc, stride_fh, stride_fw, ACC)
    m00, m01, m10, m11 = _corner_masks(x0, y0, in_range, H, W)
    w00, w01, w10, w11 = _corner_weights(frac_x, frac_y)
    o00, o01, o10, o11 = _corner_offsets(x0, y0, stride_xh, stride_xw)
    x_base = x_ptr + batch * stride_xb
    out_base = out_ptr + batch * C * H * W + offs
    for c in range(C):
        plane = x_base + c * stride_xc
        value = w00 * tl.load(plane + o00, mask=m00, other=0.0).to(ACC)
        value += w01 * tl.load(plane + o01, mask=m01, other=0.0).to(ACC)
        value += w10 * tl.load(plane + o10, mask=m10, other=0.0).to(ACC)
        value += w11 * tl.load(plane + o11, mask=m11, other=0.0).to(ACC)
        tl.store(out_base + c * H * W, value.to(out_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _warp_backward_kernel(
    x_ptr, flow_ptr, grad_out_ptr, grad_x_ptr, grad_flow_ptr,
    C, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_fb, stride_fc, stride_fh, stride_fw,
    stride_gb, stride_gc, stride_gh, stride_gw,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_x (accumulated with atomics into a contiguous ACC buffer) and grad_flow (contiguous, ACC).

    Launch with BLOCK == 32 * num_warps (one pixel per thread; see BACKWARD_WARPS). Taps, weights and masks
    are set up once; the channel loop loads grad_out and the four taps and scatters four atomics into grad_x;
    each pixel owns its flow gradient, accumulated in registers and stored once after the loop.
    """
    pid_pixels = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs = pid_pixels * BLOCK + tl.arange(0, BLOCK)
    in_range = offs < H * W
    x0, y0, frac_x, frac_y = _bilinear_taps(flow_ptr + batch * stride_fb, offs, in_range, H, W,
                                            stride_fc, stride_fh, stride_fw, ACC)
    m00, m01, m10, m11 = _corner_masks(x0, y0, in_range, H, W)
    w00, w01, w10, w11 = _corner_weights(frac_x, frac_y)
    o00, o01, o10, o11 = _corner_offsets(x0, y0, stride_xh, stride_xw)
    # grad_x is a contiguous (B, C, H, W) buffer.
    g00, g01, g10, g11 = _corner_offsets(x0, y0, W, 1)
    py = offs // W
    px = offs % W
    x_base = x_ptr + batch * stride_xb
    grad_out_base = grad_out_ptr + batch * stride_gb + py * stride_gh + px * stride_gw
    grad_x_base = grad_x_ptr + batch * C * H * W
    grad_fx = tl.zeros([BLOCK], dtype=ACC)
    grad_fy = tl.zeros([BLOCK], dtype=ACC)
    for c in range(C):
        g = tl.load(grad_out_base + c * stride_gc, mask=in_range, other=0.0).to(ACC)
        plane = x_base + c * stride_xc
        v00 = tl.load(plane + o00, mask=m00, other=0.0).to(ACC)
        v01 = tl.load(plane + o01, mask=m01, other=0.0).to(ACC)
        v10 = tl.load(plane + o10, mask=m10, other=0.0).to(ACC)
        v11 = tl.load(plane + o11, mask=m11, other=0.0).to(ACC)
        grad_fx += g * ((v01 - v00) * (1.0 - frac_y) + (v11 - v10) * frac_y)
        grad_fy += g * ((v10 - v00) * (1.0 - frac_x) + (v11 - v01) * frac_x)
        grad_plane = grad_x_base + c * H * W
        tl.atomic_add(grad_plane + g00, g * w00, mask=m00, sem="relaxed")
        tl.atomic_add(grad_plane + g01, g * w01, mask=m01, sem="relaxed")
        tl.atomic_add(grad_plane + g10, g * w10, mask=m10, sem="relaxed")
        tl.atomic_add(grad_plane + g11, g * w11, mask=m11, sem="relaxed")
    grad_flow_base = grad_flow_ptr + batch * 2 * H * W + offs
    tl.store(grad_flow_base, grad_fx, mask=in_range)
    tl.store(grad_flow_base + H * W, grad_fy, mask=in_range)


@LazyTritonOp.define("pvd::warp", mutates_args={})
def _warp_op(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    out = torch.empty((batch, channels, height, width), device=x.device, dtype=x.dtype)
    wrap_triton(_warp_forward_kernel)[pixel_grid(batch, height, width, BLOCK_PIXELS)](
        x, flow, out, channels, height, width, *x.stride(), *flow.stride(),
        ACC=tl_acc_dtype(x.dtype), BLOCK=BLOCK_PIXELS, num_warps=NUM_WARPS)
    return out


@LazyTritonOp.define("pvd::warp_backward", mutates_args={})
def _warp_backward_op(x: torch.Tensor, flow: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = x.shape
    acc = acc_dtype(x.dtype)
    grad_x = torch.zeros((batch, channels, height, width), device=x.device, dtype=acc)
    grad_flow = torch.empty((batch, 2, height, width), device=x.device, dtype=acc)
    wrap_triton(_warp_backward_kernel)[pixel_grid(batch, height, width, BLOCK_PIXELS)](
        x, flow, grad_out, grad_x, grad_flow, channels, height, width,
        *x.stride(), *flow.stride(), *grad_out.stride(),
        ACC=tl_acc_dtype(x.dtype), BLOCK=BLOCK_PIXELS, num_warps=BACKWARD_WARPS)
    return grad_x.to(x.dtype), grad_flow.to(flow.dtype)


@_warp_op.register_fake
def _(x, flow):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@_warp_backward_op.register_fake
def _(x, flow, grad_out):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(flow, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    x, flow = inputs
    ctx.save_for_backward(x, flow)


def _backward(ctx, grad_out):
    x, flow = ctx.saved_tensors
    grad_x, grad_flow = _warp_backward_op(x, flow, grad_out)
    return grad_x, grad_flow


_warp_op.register_autograd(_backward, setup_context=_setup_context)
_warp_op.register_now_if_servable()
_warp_backward_op.register_now_if_servable()


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warp of `x` (B, C, H, W) by `flow` (B, 2, H, W) in pixels (x then y); zero padding.

    Returns (B, C, H, W) in x's dtype. Differentiable w.r.t. x and flow. CUDA tensors (and CPU tensors
    under TRITON_INTERPRET=1) run the Triton kernels, other CPU tensors `cpu.warp` (`grid_sample`, equal to
    `reference.warp`).
    """
    check_warp_args(x, flow)
    if use_triton(x):
        return _warp_op(x, flow)
    return cpu.warp(x, flow)
