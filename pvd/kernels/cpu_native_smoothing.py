"""Compiled CPU flow smoothing (numba): the tail of BIMNet's regularization step in one pass per pixel, used by
`pvd.nets.bimnet.Regularization` where numba is installed and allowed (`pvd.kernels.cpu.native_serves`).

`smoothed_flow(distance, flow, weight, bias)`: distance (B, K, H, W) with K = k*k, flow (B, 2, H, W), weight
(2, K), bias (2,), one dtype (float32 or float64) -> (B, 2, H, W), contiguous; differentiable w.r.t. all four.
Per pixel and flow component c, with tap j = dy * k + dx reading the component at (y + dy - k//2, x + dx - k//2)
(zero outside the image):

    e_j = exp(-d_j**2 - max_i(-d_i**2)),   out_c = (sum_j weight[c, j] * e_j * flow_c[tap j] + bias[c]) / sum_j e_j

exactly its PyTorch twin `pvd.kernels.reference.smoothed_flow` (`Regularization`'s 1x1 `combine_x`/`combine_y`
convs give weight and bias), including the gradient through the max (shared evenly among tied taps, as `amax`'s
backward does).

PyTorch computes it as ~12 passes over (B, K, H, W) tensors forward and ~20 backward (square, amax, exp, sum,
unfold, products, the 1x1 convs), each a parallel region. Here each pixel's K taps are handled in one go; the
forward keeps the exponentials, their sums and its output for the backward. Measured on the development CPU, forward +
backward for a batch of 32, 2 threads, eager -> compiled: level 2 (K = 49, 32x32) 22-23 -> 11 ms, level 3
(K = 25, 16x16) 4.3-5.0 -> 1.7 ms, level 4 (8x8) 3.0-3.2 -> 0.6 ms; a whole stage-1 training step +2.5%
(median of 8 interleaved pairs). The exponentials take about 40% of the forward (scalar `exp`: numba has no
vector math library here).

Forward bands are rows of the batch (b * H + y); backward bands whole images, since a pixel's taps write into
its neighbours' flow gradient; each band sums its own weight and bias gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .cpu_native import AVAILABLE, bands, compiled, pixels_last, run_bands

MIN_ROWS_PER_THREAD = 8  # forward: smaller bands of batch rows are not worth a thread


@compiled
def _largest_logit(distances):
    """max_j l_j of a pixel's logits l_j = -distances[j]**2."""
    largest = -distances[0] * distances[0]
    for j in range(1, distances.shape[0]):
        largest = max(largest, -distances[j] * distances[j])
    return largest


@compiled
def _taps_inside(y, x_, kernel_size, height, width):
    """(first dy, stop dy, first dx, stop dx): the taps (dy, dx) of pixel (x_, y), at (y + dy - k//2,
    x_ + dx - k//2), that lie inside the image."""
    half = kernel_size // 2
    return (max(0, half - y), min(kernel_size, height + half - y),
            max(0, half - x_), min(kernel_size, width + half - x_))


@compiled
def _neighbours(flow, b, y, x_, kernel_size, into):
    """into[c, j]: flow component c at tap j of pixel (x_, y) of image b, 0 outside the image."""
    _, _, height, width = flow.shape
    half = kernel_size // 2
    into[:] = 0.0
    first_y, stop_y, first_x, stop_x = _taps_inside(y, x_, kernel_size, height, width)
    for dy in range(first_y, stop_y):
        for dx in range(first_x, stop_x):
            into[0, dy * kernel_size + dx] = flow[b, 0, y + dy - half, x_ + dx - half]
            into[1, dy * kernel_size + dx] = flow[b, 1, y + dy - half, x_ + dx - half]


@compiled
def _smooth_rows(distance, flow, weight, bias, kernel_size, row_start, row_stop, out, exponentials, totals):
    """out[b, :, y, x_] for the rows b * H + y in [row_start, row_stop), with what the backward needs: the
    exponentials e (B, H, W, K) and their sums (B, H, W). distance (B, H, W, K); flow, out (B, 2, H, W)."""
    _, height, width, count = distance.shape
    half = kernel_size // 2
    for row in range(row_start, row_stop):
        b = row // height
        y = row - b * height
        for x_ in range(width):
            distances, taps = distance[b, y, x_], exponentials[b, y, x_]
            largest = _largest_logit(distances)
            total = 0.0
            for j in range(count):
                taps[j] = math.exp(-distances[j] * distances[j] - largest)
                total += taps[j]
            totals[b, y, x_] = total
            first_y, stop_y, first_x, stop_x = _taps_inside(y, x_, kernel_size, height, width)
            for c in range(2):
                combined = bias[c]
                for dy in range(first_y, stop_y):
                    for dx in range(first_x, stop_x):
                        j = dy * kernel_size + dx
                        combined += weight[c, j] * (taps[j] * flow[b, c, y + dy - half, x_ + dx - half])
                out[b, c, y, x_] = combined * (1.0 / total)


@compiled
def _smooth_backward_images(grad_out, distance, flow, weight, out, exponentials, totals, kernel_size,
                            batch_start, batch_stop, grad_distance, grad_flow, grad_weight, grad_bias):
    """The gradients of images [batch_start, batch_stop), from the forward's out, exponentials and totals:
    grad_distance (B, H, W, K) written; grad_flow (B, 2, H, W), and this band's grad_weight (2, K) and
    grad_bias (2,), zeros on entry, accumulated."""
    _, height, width, count = distance.shape
    half = kernel_size // 2
    grad_logits = np.empty(count, distance.dtype)
    neighbours = np.empty((2, count), distance.dtype)
    for b in range(batch_start, batch_stop):
        for y in range(height):
            for x_ in range(width):
                distances, taps = distance[b, y, x_], exponentials[b, y, x_]
                _neighbours(flow, b, y, x_, kernel_size, neighbours)
                inverse = 1.0 / totals[b, y, x_]
                grad_x, grad_y = grad_out[b, 0, y, x_], grad_out[b, 1, y, x_]
                grad_combined_x = grad_x * inverse  # d loss / d (sum_j w e n + bias), per component
                grad_combined_y = grad_y * inverse
                # out = combined / total, so d loss / d total = -sum_c grad_out_c * out_c / total
                grad_total = -(grad_x * out[b, 0, y, x_] + grad_y * out[b, 1, y, x_]) * inverse
                grad_bias[0] += grad_combined_x
                grad_bias[1] += grad_combined_y
                grad_largest = 0.0
                for j in range(count):
                    tap = taps[j]
                    grad_tap = (grad_combined_x * weight[0, j] * neighbours[0, j]
                                + grad_combined_y * weight[1, j] * neighbours[1, j] + grad_total)
                    grad_logits[j] = grad_tap * tap
                    grad_largest -= grad_logits[j]
                    grad_weight[0, j] += grad_combined_x * tap * neighbours[0, j]
                    grad_weight[1, j] += grad_combined_y * tap * neighbours[1, j]
                first_y, stop_y, first_x, stop_x = _taps_inside(y, x_, kernel_size, height, width)
                for dy in range(first_y, stop_y):
                    for dx in range(first_x, stop_x):
                        j = dy * kernel_size + dx
                        grad_flow[b, 0, y + dy - half, x_ + dx - half] += grad_combined_x * weight[0, j] * taps[j]
                        grad_flow[b, 1, y + dy - half, x_ + dx - half] += grad_combined_y * weight[1, j] * taps[j]
                # the max's gradient, shared evenly by the taps that reach it (amax's backward)
                largest = _largest_logit(distances)
                ties = 0
                for j in range(count):
                    ties += -distances[j] * distances[j] == largest
                share = grad_largest / ties if ties else math.nan
                target = grad_distance[b, y, x_]
                for j in range(count):
                    grad_logit = grad_logits[j] + (share if -distances[j] * distances[j] == largest else 0.0)
                    target[j] = grad_logit * (-2.0 * distances[j])


class _SmoothedFlow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, distance, flow, weight, bias):
        distances = pixels_last(distance)
        flow, weight, bias = (t.detach().contiguous() for t in (flow, weight, bias))
        batch, height, width, count = distances.shape
        out, exponentials = torch.empty_like(flow), torch.empty_like(distances)
        totals = distances.new_empty((batch, height, width))
        arrays = (distances.numpy(), flow.numpy(), weight.numpy(), bias.numpy(), math.isqrt(count))
        run_bands(_smooth_rows, [(*arrays, start, stop, out.numpy(), exponentials.numpy(), totals.numpy())
                                 for start, stop in bands(batch * height, MIN_ROWS_PER_THREAD)])
        ctx.save_for_backward(distances, flow, weight, out, exponentials, totals)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        distances, flow, weight, out, exponentials, totals = ctx.saved_tensors
        image_bands = bands(distances.shape[0], 1)
        grad_distances, grad_flow = torch.empty_like(distances), torch.zeros_like(flow)
        grad_weights = torch.zeros((len(image_bands), *weight.shape), dtype=weight.dtype)
        grad_biases = torch.zeros((len(image_bands), 2), dtype=weight.dtype)
        arrays = (grad_out.contiguous().numpy(), distances.numpy(), flow.numpy(), weight.numpy(), out.numpy(),
                  exponentials.numpy(), totals.numpy(), math.isqrt(distances.shape[3]))
        run_bands(_smooth_backward_images,
                  [(*arrays, start, stop, grad_distances.numpy(), grad_flow.numpy(), grad_weights[n].numpy(),
                    grad_biases[n].numpy()) for n, (start, stop) in enumerate(image_bands)])
        return grad_distances.permute(0, 3, 1, 2), grad_flow, grad_weights.sum(0), grad_biases.sum(0)


def smoothed_flow(distance: torch.Tensor, flow: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """See the module docstring: CPU tensors of one dtype, float32 or float64, K a square number."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native_smoothing needs numba (pip install 'pvd[cpu]')")
    count = distance.shape[1]
    if math.isqrt(count) ** 2 != count or flow.shape[1] != 2 or weight.shape != (2, count) or bias.shape != (2,):
        raise ValueError(f"smoothed_flow: distance (B, k*k, H, W), flow (B, 2, H, W), weight (2, k*k) and bias "
                         f"(2,) expected, got {tuple(distance.shape)}, {tuple(flow.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    return _SmoothedFlow.apply(distance, flow, weight, bias)
