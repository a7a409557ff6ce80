"""Compiled CPU warp (numba) for channels_last feature maps, used by `pvd.kernels.cpu.warp` where numba is
installed and x is channels_last with at least MIN_CHANNELS channels (BIMNet's features when it runs, or
trains, in channels_last).

`warp(x, flow)`: x (B, C, H, W) channels_last, flow (B, 2, H, W) pixels, one dtype (float32 or float64) ->
(B, C, H, W) channels_last; differentiable w.r.t. x and flow. The semantics of `reference.warp`, computed as
the Triton kernel does, in pixels: sample (x + flow_x, y + flow_y) clamped to [-2, W + 1] x [-2, H + 1],
bilinear taps outside the image contribute zero, non-finite flow gives zero output and zero gradient.

In channels_last a pixel's channels are contiguous, so every bilinear tap is one contiguous vector of C values:
the forward is four multiply-adds of C-vectors per output pixel, the backward four of them into the tapped
pixels of grad_x plus four dot products for the flow gradient. `F.grid_sample` (the other path) works in
NCHW: it copies channels_last input to NCHW, and its output and gradients come back NCHW, to be copied again.
Measured on the development CPU (a batch of 32, forward + backward with those copies, 2 / 1 threads): 32
channels of 32x32, 8.4-8.8 -> 4.4-4.6 ms / 14.5 -> 9.3 ms; 64 of 16x16, 3.7-4.2 -> 1.1 ms / 6.3 -> 2.7 ms. For
3-channel images it was slower (4.9 -> 6.4 ms at 64x64, 2 threads), hence MIN_CHANNELS.

Forward bands are rows of the batch (b * H + y); backward bands whole images, since the taps of an image's
pixels write anywhere in that image's grad_x.
"""

from __future__ import annotations

import math

import torch

from .cpu_native import AVAILABLE, bands, compiled, pixels_last, run_bands

MIN_CHANNELS = 16  # fewer channels: `F.grid_sample` on NCHW is faster (see the module docstring)
MIN_ROWS_PER_THREAD = 8  # forward: smaller bands of batch rows are not worth a thread


@compiled
def _cell(x_, y, flow_x, flow_y, width, height):
    """(defined, left, top, frac_x, frac_y): the sample point of pixel (x_, y) clamped to [-2, W + 1] x [-2, H + 1]
    (where all four taps are outside, so the clamp changes no value and no gradient), its top-left tap and its
    fractional offsets; defined False for a non-finite flow."""
    if not (math.isfinite(flow_x) and math.isfinite(flow_y)):
        return False, 0, 0, 0.0, 0.0
    sample_x = min(max(x_ + flow_x, -2.0), width + 1.0)
    sample_y = min(max(y + flow_y, -2.0), height + 1.0)
    left, top = math.floor(sample_x), math.floor(sample_y)
    return True, int(left), int(top), sample_x - left, sample_y - top


@compiled
def _tap(tap, left, top, frac_x, frac_y, width, height):
    """(inside, tap_y, tap_x, weight_x, weight_y) of bilinear tap 0-3 (dy = tap // 2, dx = tap % 2)."""
    dy, dx = tap // 2, tap % 2
    tap_y, tap_x = top + dy, left + dx
    inside = 0 <= tap_y <= height - 1 and 0 <= tap_x <= width - 1
    return inside, tap_y, tap_x, frac_x if dx else 1.0 - frac_x, frac_y if dy else 1.0 - frac_y


@compiled
def _warp_rows(x, flow, row_start, row_stop, out):
    """out[b, y, x_, :] for the rows b * H + y in [row_start, row_stop). x, out (B, H, W, C); flow (B, 2, H, W)."""
    _, height, width, channels = x.shape
    for row in range(row_start, row_stop):
        b = row // height
        y = row - b * height
        for x_ in range(width):
            target = out[b, y, x_]
            for c in range(channels):
                target[c] = 0.0
            defined, left, top, frac_x, frac_y = _cell(x_, y, flow[b, 0, y, x_], flow[b, 1, y, x_], width, height)
            if not defined:
                continue
            for tap in range(4):
                inside, tap_y, tap_x, weight_x, weight_y = _tap(tap, left, top, frac_x, frac_y, width, height)
                if inside:
                    weight, source = weight_x * weight_y, x[b, tap_y, tap_x]
                    for c in range(channels):
                        target[c] += weight * source[c]


@compiled
def _warp_backward_images(grad_out, x, flow, batch_start, batch_stop, grad_x, grad_flow):
    """grad_x (B, H, W, C; zeros on entry) and grad_flow (B, 2, H, W) of the images [batch_start, batch_stop)."""
    _, height, width, channels = x.shape
    for b in range(batch_start, batch_stop):
        for y in range(height):
            for x_ in range(width):
                grad_flow[b, 0, y, x_] = 0.0
                grad_flow[b, 1, y, x_] = 0.0
                defined, left, top, frac_x, frac_y = _cell(x_, y, flow[b, 0, y, x_], flow[b, 1, y, x_], width,
                                                           height)
                if not defined:
                    continue
                grad = grad_out[b, y, x_]
                grad_sample_x = 0.0
                grad_sample_y = 0.0
                for tap in range(4):
                    inside, tap_y, tap_x, weight_x, weight_y = _tap(tap, left, top, frac_x, frac_y, width, height)
                    if not inside:
                        continue
                    weight = weight_x * weight_y
                    source, target = x[b, tap_y, tap_x], grad_x[b, tap_y, tap_x]
                    for c in range(channels):
                        target[c] += weight * grad[c]
                    dot = 0.0
                    for c in range(channels):
                        dot += grad[c] * source[c]
                    # d weight / d sample: +-weight_y along x, +-weight_x along y (the sign: which tap)
                    grad_sample_x += (1.0 if tap % 2 else -1.0) * weight_y * dot
                    grad_sample_y += (1.0 if tap // 2 else -1.0) * weight_x * dot
                grad_flow[b, 0, y, x_] = grad_sample_x
                grad_flow[b, 1, y, x_] = grad_sample_y


class _Warp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, flow):
        pixels, flow = pixels_last(x), flow.detach().contiguous()
        out = torch.empty_like(pixels)
        rows = pixels.shape[0] * pixels.shape[1]
        run_bands(_warp_rows, [(pixels.numpy(), flow.numpy(), start, stop, out.numpy())
                               for start, stop in bands(rows, MIN_ROWS_PER_THREAD)])
        ctx.save_for_backward(pixels, flow)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        pixels, flow = ctx.saved_tensors
        grad_pixels, grad_flow = torch.zeros_like(pixels), torch.empty_like(flow)
        arrays = (pixels_last(grad_out).numpy(), pixels.numpy(), flow.numpy())
        run_bands(_warp_backward_images, [(*arrays, start, stop, grad_pixels.numpy(), grad_flow.numpy())
                                          for start, stop in bands(pixels.shape[0], 1)])
        return grad_pixels.permute(0, 3, 1, 2), grad_flow


def serves(x: torch.Tensor) -> bool:
    """Whether x's layout suits this kernel: channels_last (channel stride 1, pixels contiguous) with at least
    MIN_CHANNELS channels."""
    return x.dim() == 4 and x.shape[1] >= MIN_CHANNELS and x.permute(0, 2, 3, 1).is_contiguous()


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """See the module docstring: CPU tensors of one dtype, float32 or float64."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native_warp needs numba (pip install 'pvd[cpu]')")
    return _Warp.apply(x, flow)
