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

Two kernel designs, chosen by the environment variable PVD_CORRELATION_KERNEL at each call:
- `tiled` (default): one program per TILE_H x TILE_W tile of grid pixels computes every displacement. Each
  thread owns one pixel; per channel it loads its f1 value once and reads the f2 window (the tile plus a halo of
  d grid steps) as DY_BLOCK row pointers with the dx shifts as constant offsets, accumulating a
  (DY_BLOCK, DX_PAD) block of displacements in registers. Lanes run along the pixels of a tile row, so every
  warp load reads one image row (at stride 2 its pixels are 2 elements apart). The backward tiles the same way
  and holds grad_out's (DY_BLOCK, DX_PAD) terms of its pixel in registers for the whole channel loop; it also
  writes the off-grid zeros, so the gradients need no separate zero fill.
- `legacy`: the first kernels (`pvd.kernels._correlation_legacy`), one program per (pixel block, displacement).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _correlation_legacy as legacy
from . import cpu  # the CPU fallback (outside the Triton interpreter)
from ._common import LazyTritonOp, check_correlation_args, tl_acc_dtype, use_triton

KERNEL_ENV = "PVD_CORRELATION_KERNEL"
KERNEL_DESIGNS = ("tiled", "legacy")
DEFAULT_DESIGN = "tiled"

# Tiled design: a tile is TILE_H rows of TILE_W grid pixels (lanes along a row, 32 pixels per warp). A pixel's
# DY_BLOCK x DX_PAD displacement slots (dx padded to a power of two) live in registers: at most SLOTS_PER_PIXEL
# (SLOTS_PER_PIXEL_FLOAT64 in float64); further dy rows go to further programs (forward) or passes (backward).
TILE_H = 8
TILE_W = 32
SLOTS_PER_PIXEL = 64
SLOTS_PER_PIXEL_FLOAT64 = 16
# Forward: 16 warps, so two warps share a pixel row band (each holds half the dy rows): 32 accumulators per
# thread. Backward: 8 warps, every displacement of a pixel in one thread (its sum over displacements stays
# in-thread, no cross-warp reduction inside the channel loop).
FORWARD_WARPS = 16
BACKWARD_WARPS = 8
# Integer arguments whose 16-divisibility the JIT must not assume: with it, the compiler would vectorise loads
# or stores 4 pixels per thread and lay the displacement block out across warps (or convert layouts through
# shared memory) instead of keeping one pixel per thread.
_FORWARD_NO_ALIGNMENT = ["C", "OUT_H", "OUT_W", *(f"stride_{t}{d}" for t in "12" for d in "bch")]
_BACKWARD_NO_ALIGNMENT = ["C", "H", "W", "OUT_H", "OUT_W", *(f"stride_{t}{d}" for t in "go" for d in "bch")]


def kernel_design() -> str:
    """The correlation kernel design in use: PVD_CORRELATION_KERNEL ('tiled', the default, or 'legacy')."""
    design = os.environ.get(KERNEL_ENV, "") or DEFAULT_DESIGN
    if design not in KERNEL_DESIGNS:
        raise ValueError(f"{KERNEL_ENV}={design!r} is not a correlation kernel design; "
                         f"use one of {', '.join(KERNEL_DESIGNS)}")
    return design


@triton.jit
def _displacement_block(y, x, OUT_H, OUT_W, group, MAX_DISP: tl.constexpr, DY_BLOCK: tl.constexpr,
                        DX_PAD: tl.constexpr, DIRECTION: tl.constexpr):
    """Displacement rows group*DY_BLOCK.. of the pixels (y, x) [TILE]: (row = dy + d [DY_BLOCK, 1, 1],
    col = dx + d [1, DX_PAD, 1], partner row [DY_BLOCK, 1, TILE] and column [1, DX_PAD, TILE] = pixel +
    DIRECTION * (dy, dx), mask [DY_BLOCK, DX_PAD, TILE] of the displacements that exist and stay inside)."""
    row = group * DY_BLOCK + tl.arange(0, DY_BLOCK)[:, None, None]
    col = tl.arange(0, DX_PAD)[None, :, None]
    py = y[None, None, :] + DIRECTION * (row - MAX_DISP)
    px = x[None, None, :] + DIRECTION * (col - MAX_DISP)
    valid = ((row <= 2 * MAX_DISP) & (col <= 2 * MAX_DISP) & (py >= 0) & (py < OUT_H) & (px >= 0) & (px < OUT_W)
             & ((y < OUT_H) & (x < OUT_W))[None, None, :])
    return row, col, py, px, valid


@triton.jit(do_not_specialize_on_alignment=_FORWARD_NO_ALIGNMENT)
def _correlation_forward_kernel(
    f1_ptr, f2_ptr, out_ptr,
    C, OUT_H, OUT_W,
    stride_1b, stride_1c, stride_1h, stride_1w,
    stride_2b, stride_2c, stride_2h, stride_2w,
    ACC: tl.constexpr, MAX_DISP: tl.constexpr, STRIDE: tl.constexpr, DY_BLOCK: tl.constexpr,
    DX_PAD: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
):
    """Cost volume into a contiguous (B, D*D, OUT_H, OUT_W) output in the inputs' dtype.

    Grid: (column tiles, row tiles, batch * row groups); a program computes displacement rows
    group*DY_BLOCK .. group*DY_BLOCK + DY_BLOCK - 1 (all of them when DY_BLOCK >= D) of one tile.
    """
    size: tl.constexpr = 2 * MAX_DISP + 1
    groups: tl.constexpr = (size + DY_BLOCK - 1) // DY_BLOCK
    batch = (tl.program_id(2) // groups).to(tl.int64)
    group = tl.program_id(2) % groups
    p = tl.arange(0, TILE_H * TILE_W)
    y = tl.program_id(1) * TILE_H + p // TILE_W
    x = tl.program_id(0) * TILE_W + p % TILE_W
    pixel_ok = (y < OUT_H) & (x < OUT_W)
    row, col, _, _, valid = _displacement_block(y, x, OUT_H, OUT_W, group, MAX_DISP, DY_BLOCK, DX_PAD, 1)
    f1_ptrs = f1_ptr + batch * stride_1b + (y * STRIDE) * stride_1h + (x * STRIDE) * stride_1w
    # f2 at the displaced pixel: the pixel's pointer, a per-dy row offset and a per-dx offset (a constant for
    # unit column stride), so each thread holds one pointer per dy row rather than one per displacement.
    f2_ptrs = f2_ptr + batch * stride_2b + (y * STRIDE) * stride_2h + (x * STRIDE) * stride_2w
    row_offset = ((row - MAX_DISP) * STRIDE) * stride_2h
    col_offset = ((col - MAX_DISP) * STRIDE) * stride_2w
    acc = tl.zeros([DY_BLOCK, DX_PAD, TILE_H * TILE_W], dtype=ACC)
    for c in range(0, C):
        a = tl.load(f1_ptrs + c * stride_1c, mask=pixel_ok, other=0.0).to(ACC)
        b = tl.load((f2_ptrs + c * stride_2c)[None, None, :] + row_offset + col_offset, mask=valid,
                    other=0.0).to(ACC)
        acc += a[None, None, :] * b
    plane = (batch * (size * size) + row * size + col) * (OUT_H * OUT_W)
    keep = (row < size) & (col < size) & pixel_ok[None, None, :]
    tl.store(out_ptr + plane + (y * OUT_W + x)[None, None, :], (acc / C).to(out_ptr.dtype.element_ty), mask=keep)


@triton.jit
def _backward_terms(grad_out_base, y, x, OUT_H, OUT_W, group,
                    stride_gc, stride_gh, stride_gw, stride_oh, stride_ow,
                    ACC: tl.constexpr, MAX_DISP: tl.constexpr, STRIDE: tl.constexpr, DY_BLOCK: tl.constexpr,
                    DX_PAD: tl.constexpr, WRT_F2: tl.constexpr):
    """grad_out's terms of pixels (y, x) for displacement rows of `group` [DY_BLOCK, DX_PAD, TILE] (0 where
    invalid), the partner's offset from `other_ptrs` split in a row part and a constant column part, the mask."""
    size: tl.constexpr = 2 * MAX_DISP + 1
    direction: tl.constexpr = -1 if WRT_F2 else 1
    row, col, py, px, valid = _displacement_block(y, x, OUT_H, OUT_W, group, MAX_DISP, DY_BLOCK, DX_PAD, direction)
    plane = (row * size + col) * stride_gc
    if WRT_F2:
        g_offset = py * stride_gh + px * stride_gw
    else:
        g_offset = (y * stride_gh + x * stride_gw)[None, None, :]
    g = tl.load(grad_out_base + plane + g_offset, mask=valid, other=0.0).to(ACC)
    row_offset = (direction * (row - MAX_DISP) * STRIDE) * stride_oh
    col_offset = (direction * (col - MAX_DISP) * STRIDE) * stride_ow
    return g, row_offset, col_offset, valid


@triton.jit(do_not_specialize_on_alignment=_BACKWARD_NO_ALIGNMENT)
def _correlation_backward_kernel(
    grad_out_ptr, other_ptr, grad_ptr,
    C, H, W, OUT_H, OUT_W,
    stride_gb, stride_gc, stride_gh, stride_gw,
    stride_ob, stride_oc, stride_oh, stride_ow,
    ACC: tl.constexpr, MAX_DISP: tl.constexpr, STRIDE: tl.constexpr, DY_BLOCK: tl.constexpr,
    DX_PAD: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, WRT_F2: tl.constexpr,
):
    """Gradient w.r.t. f1 (other = f2) or, with WRT_F2, w.r.t. f2 (other = f1) into a contiguous (B, C, H, W)
    buffer in the inputs' dtype, every entry written (zeros off the stride grid). Grid: (column tiles, row
    tiles, batch). With one row group grad_out is read once per tile; with several it is re-read per channel."""
    groups: tl.constexpr = (2 * MAX_DISP + DY_BLOCK) // DY_BLOCK  # ceil((2d + 1) / DY_BLOCK)
    batch = tl.program_id(2).to(tl.int64)
    p = tl.arange(0, TILE_H * TILE_W)
    y = tl.program_id(1) * TILE_H + p // TILE_W
    x = tl.program_id(0) * TILE_W + p % TILE_W
    pixel_ok = (y < OUT_H) & (x < OUT_W)
    grad_out_base = grad_out_ptr + batch * stride_gb
    other_ptrs = other_ptr + batch * stride_ob + (y * STRIDE) * stride_oh + (x * STRIDE) * stride_ow
    grad_ptrs = grad_ptr + batch * C * H * W + (y * STRIDE) * W + x * STRIDE
    if groups == 1:
        g, row_offset, col_offset, valid = _backward_terms(
            grad_out_base, y, x, OUT_H, OUT_W, 0, stride_gc, stride_gh, stride_gw, stride_oh,
            stride_ow, ACC, MAX_DISP, STRIDE, DY_BLOCK, DX_PAD, WRT_F2)
    for c in range(0, C):
        total = tl.zeros([TILE_H * TILE_W], dtype=ACC)
        for group in range(groups):
            if groups > 1:
                g, row_offset, col_offset, valid = _backward_terms(
                    grad_out_base, y, x, OUT_H, OUT_W, group, stride_gc, stride_gh, stride_gw,
                    stride_oh, stride_ow, ACC, MAX_DISP, STRIDE, DY_BLOCK, DX_PAD, WRT_F2)
            other = tl.load((other_ptrs + c * stride_oc)[None, None, :] + row_offset + col_offset, mask=valid,
                            other=0.0).to(ACC)
            total += tl.sum(tl.sum(g * other, axis=1), axis=0)
        channel_ptrs = grad_ptrs + c * H * W
        tl.store(channel_ptrs, (total / C).to(grad_ptr.dtype.element_ty), mask=pixel_ok)
        # The rest of each pixel's STRIDE x STRIDE block is off the grid: zero.
        for j in tl.static_range(1, STRIDE * STRIDE):
            inside = pixel_ok & (y * STRIDE + j // STRIDE < H) & (x * STRIDE + j % STRIDE < W)
            tl.store(channel_ptrs + (j // STRIDE) * W + j % STRIDE,
                     tl.zeros([TILE_H * TILE_W], dtype=grad_ptr.dtype.element_ty), mask=inside)


def _output_size(size: int, stride: int) -> int:
    return -(-size // stride)


def _displacement_blocks(dtype: torch.dtype, max_displacement: int) -> tuple[int, int]:
    """(DY_BLOCK, DX_PAD): DX_PAD = D rounded up to a power of two; DY_BLOCK as many dy rows as fit the slots."""
    size = 2 * max_displacement + 1
    dx_pad = triton.next_power_of_2(size)
    slots = SLOTS_PER_PIXEL_FLOAT64 if dtype == torch.float64 else SLOTS_PER_PIXEL
    return max(1, min(dx_pad, slots // dx_pad)), dx_pad


def _tiled_constexprs(dtype: torch.dtype, max_displacement: int, stride: int) -> dict:
    dy_block, dx_pad = _displacement_blocks(dtype, max_displacement)
    return {"ACC": tl_acc_dtype(dtype), "MAX_DISP": max_displacement, "STRIDE": stride, "DY_BLOCK": dy_block,
            "DX_PAD": dx_pad, "TILE_H": TILE_H, "TILE_W": TILE_W}


def _tiled_forward(f1, f2, max_displacement, stride, out) -> None:
    batch, channels = f1.shape[:2]
    out_h, out_w = out.shape[2:]
    constexprs = _tiled_constexprs(f1.dtype, max_displacement, stride)
    groups = triton.cdiv(2 * max_displacement + 1, constexprs["DY_BLOCK"])
    grid = (triton.cdiv(out_w, TILE_W), triton.cdiv(out_h, TILE_H), batch * groups)
    wrap_triton(_correlation_forward_kernel)[grid](
        f1, f2, out, channels, out_h, out_w, *f1.stride(), *f2.stride(), **constexprs, num_warps=FORWARD_WARPS)


def _tiled_backward(f1, f2, grad_out, max_displacement, stride, grad_f1, grad_f2) -> None:
    batch, channels, height, width = f1.shape
    out_h, out_w = grad_out.shape[2:]
    constexprs = _tiled_constexprs(f1.dtype, max_displacement, stride)
    grid = (triton.cdiv(out_w, TILE_W), triton.cdiv(out_h, TILE_H), batch)
    for grad, other, wrt_f2 in ((grad_f1, f2, False), (grad_f2, f1, True)):
        wrap_triton(_correlation_backward_kernel)[grid](
            grad_out, other, grad, channels, height, width, out_h, out_w, *grad_out.stride(), *other.stride(),
            **constexprs, WRT_F2=wrt_f2, num_warps=BACKWARD_WARPS)


@LazyTritonOp.define("pvd::correlation", mutates_args={})
def _correlation_op(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int, stride: int,
                    design: str) -> torch.Tensor:
    batch, _, height, width = f1.shape
    size = 2 * max_displacement + 1
    out = torch.empty((batch, size * size, _output_size(height, stride), _output_size(width, stride)),
                      device=f1.device, dtype=f1.dtype)
    (legacy.forward if design == "legacy" else _tiled_forward)(f1, f2, max_displacement, stride, out)
    return out


@LazyTritonOp.define("pvd::correlation_backward", mutates_args={})
def _correlation_backward_op(f1: torch.Tensor, f2: torch.Tensor, grad_out: torch.Tensor, max_displacement: int,
                             stride: int, design: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The tiled kernels write every entry; the legacy ones only the stride grid (off it the gradients are 0).
    allocate = torch.zeros if design == "legacy" and stride > 1 else torch.empty
    grad_f1 = allocate(f1.shape, device=f1.device, dtype=f1.dtype)
    grad_f2 = allocate(f1.shape, device=f1.device, dtype=f1.dtype)
    (legacy.backward if design == "legacy" else _tiled_backward)(
        f1, f2, grad_out, max_displacement, stride, grad_f1, grad_f2)
    return grad_f1, grad_f2


@_correlation_op.register_fake
def _(f1, f2, max_displacement, stride, design):
    batch, _, height, width = f1.shape
    size = 2 * max_displacement + 1
    return f1.new_empty((batch, size * size, _output_size(height, stride), _output_size(width, stride)))


@_correlation_backward_op.register_fake
def _(f1, f2, grad_out, max_displacement, stride, design):
    return (torch.empty_like(f1, memory_format=torch.contiguous_format),
            torch.empty_like(f2, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    f1, f2, max_displacement, stride, design = inputs
    ctx.save_for_backward(f1, f2)
    ctx.max_displacement = max_displacement
    ctx.stride = stride
    ctx.design = design


def _backward(ctx, grad_out):
    f1, f2 = ctx.saved_tensors
    grad_f1, grad_f2 = _correlation_backward_op(f1, f2, grad_out, ctx.max_displacement, ctx.stride, ctx.design)
    return grad_f1, grad_f2, None, None, None


_correlation_op.register_autograd(_backward, setup_context=_setup_context)
_correlation_op.register_now_if_servable()
_correlation_backward_op.register_now_if_servable()


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 3, stride: int = 1) -> torch.Tensor:
    """LiteFlowNet cost volume of features `f1`, `f2` (B, C, H, W): mean over channels of f1 * shifted f2.

    Returns (B, D*D, ceil(H/s), ceil(W/s)) in the inputs' dtype, D = 2*max_displacement + 1, s = stride;
    channel (dy+d)*D + (dx+d) holds displacement (dy, dx) in grid steps of s pixels, f2 zero outside the
    image. Differentiable w.r.t. f1 and f2. CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) run the
    Triton kernels of `kernel_design()`, other CPU tensors `cpu.correlation` (the fast CPU twin of
    `reference.correlation`).
    """
    max_displacement, stride = check_correlation_args(f1, f2, max_displacement, stride)
    if use_triton(f1):
        return _correlation_op(f1, f2, max_displacement, stride, kernel_design())
    return cpu.correlation(f1, f2, max_displacement, stride)
