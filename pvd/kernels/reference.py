"""Pure-PyTorch twins of the Triton kernels, and of the compiled CPU step of BIMNet's regularization.

Vectorised, differentiable through autograd and exact in float64: they serve CPU tensors (outside the
Triton interpreter) and are the oracle of the tests. Semantics: docs/semantics.md section 1, restated in
each docstring. Inputs are NCHW; no validation happens here (the public ops in `pvd.kernels` validate). As the
kernels do, they compute in float32 (float64 for float64 inputs) and return the inputs' dtype: in float16 or
bfloat16 a pixel coordinate above 256 or 2048 is not even representable.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights used by the original pixel volume (MATLAB's rgb2gray).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 3, stride: int = 1) -> torch.Tensor:
    """LiteFlowNet cost volume.

    f1, f2: (B, C, H, W). Returns (B, D*D, ceil(H/s), ceil(W/s)), D = 2*max_displacement + 1, with
    out[b, (dy+d)*D + (dx+d), y, x] = mean_c f1[b, c, s*y, s*x] * f2[b, c, s*y + s*dy, s*x + s*dx]
    and f2 taken as zero outside the image (dy is the slow index of the channel, dx the fast one).
    """
    d, s = max_displacement, stride
    size = 2 * d + 1
    dtype = f1.dtype
    f1, f2 = f1.to(acc_dtype(dtype)), f2.to(acc_dtype(dtype))
    _, channels, height, width = f1.shape
    out_h, out_w = -(-height // s), -(-width // s)
    pad = d * s
    f2_padded = F.pad(f2, (pad, pad, pad, pad))
    f1_sampled = f1[:, :, ::s, ::s]
    planes = []
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            top, left = pad + s * dy, pad + s * dx
            f2_shifted = f2_padded[:, :, top:top + s * out_h:s, left:left + s * out_w:s]
            planes.append((f1_sampled * f2_shifted).sum(dim=1))
    assert len(planes) == size * size
    return (torch.stack(planes, dim=1) / channels).to(dtype)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the references and the kernels: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pixel_grid(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer pixel coordinates (1, H, W) of x and y on flow's device, in flow's dtype."""
    _, _, height, width = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1).expand(1, height, width)
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width).expand(1, height, width)
    return xs, ys


def _gather_plane(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W); index: (B, H, W) flat indices into H*W. Returns (B, C, H, W)."""
    batch, channels, height, width = x.shape
    flat_index = index.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return torch.gather(x.reshape(batch, channels, height * width), 2, flat_index).view(batch, channels, height, width)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warp: out[b, c, y, x] = x sampled at (x + flow[b, 0, y, x], y + flow[b, 1, y, x]).

    x: (B, C, H, W); flow: (B, 2, H, W) in pixels. Each of the four bilinear taps that falls outside the
    image contributes zero (`grid_sample(..., padding_mode="zeros", align_corners=True)` semantics).
    Non-finite flow gives zero output and zero gradient.
    """
    _, _, height, width = x.shape
    dtype = x.dtype
    x, flow = x.to(acc_dtype(dtype)), flow.to(acc_dtype(dtype))
    xs, ys = _pixel_grid(flow)
    finite = torch.isfinite(flow).all(dim=1)
    # Clamp far-away coordinates to a band where every tap is still outside: values stay exact.
    sample_x = torch.where(finite, xs + flow[:, 0], torch.zeros_like(xs)).clamp(-2.0, width + 1.0)
    sample_y = torch.where(finite, ys + flow[:, 1], torch.zeros_like(ys)).clamp(-2.0, height + 1.0)
    x0 = torch.floor(sample_x)
    y0 = torch.floor(sample_y)
    wx1 = sample_x - x0
    wy1 = sample_y - y0
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    out = x.new_zeros(x.shape)
    for tap_x, tap_y, weight in ((x0, y0, wx0 * wy0), (x0 + 1, y0, wx1 * wy0),
                                 (x0, y0 + 1, wx0 * wy1), (x0 + 1, y0 + 1, wx1 * wy1)):
        inside = finite & (tap_x >= 0) & (tap_x <= width - 1) & (tap_y >= 0) & (tap_y <= height - 1)
        index = (tap_y.clamp(0, height - 1) * width + tap_x.clamp(0, width - 1)).long()
        weight = torch.where(inside, weight, torch.zeros_like(weight))
        out = out + _gather_plane(x, index) * weight.unsqueeze(1)
    return out.to(dtype)


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) gray with GRAY_WEIGHTS; a (B, 1, H, W) input is returned as is."""
    if image.shape[1] == 1:
        return image
    r, g, b = image.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _shift(plane: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """shifted[..., y, x] = plane[..., y - dy, x - dx], zero where that falls outside. plane: (B, 1, H, W)."""
    height, width = plane.shape[-2:]
    padded = F.pad(plane, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top:top + height, left:left + width]


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor, kernel_size: int = 5, *,
                 out_dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """PVDNet pixel volume: the k*k gray candidates of `image` that the flows of each pixel's neighbours point to.

    image: previous deblurred frame, fill: current blurry frame, both (B, 3 or 1, H, W) in [-1, 1];
    flow: (B, 2, H, W) in pixels. Returns (B, k*k, H, W). For pixel p = (y, x) and offset (i, j) in
    [-h, h]^2 (h = k // 2; i along x, j along y) channel (i+h)*k + (j+h) holds, with q = (y - j, x - i):
    0 if q is outside the image; else with X0 = trunc(q.x + flow_x[q]) + i, Y0 = trunc(q.y + flow_y[q]) + j:
    gray(fill)[p] if X0 < 1 or X0 > W-2 or Y0 < 1 or Y0 > H-2 or the flow at q is not finite,
    gray(image)[Y0, X0] otherwise. Differentiable w.r.t. image and fill, not flow. The result is in image's
    dtype, then cast to out_dtype (if given) and made channels_last (if asked).
    """
    _, _, height, width = flow.shape
    half = kernel_size // 2
    dtype = image.dtype
    gray_image = to_gray(image.to(acc_dtype(dtype)))
    gray_fill = to_gray(fill.to(acc_dtype(dtype)))
    flow = flow.detach().to(acc_dtype(dtype))
    xs, ys = _pixel_grid(flow)
    finite = torch.isfinite(flow).all(dim=1)
    # trunc toward zero, after clamping to a band that keeps every border decision unchanged.
    base_x = torch.where(finite, xs + flow[:, 0], torch.zeros_like(xs)).clamp(-half - 2.0, width + half + 2.0).trunc()
    base_y = torch.where(finite, ys + flow[:, 1], torch.zeros_like(ys)).clamp(-half - 2.0, height + half + 2.0).trunc()
    inside_image = torch.ones_like(gray_fill)
    planes = []
    for i in range(-half, half + 1):
        for j in range(-half, half + 1):
            target_x = base_x + i
            target_y = base_y + j
            valid = finite & (target_x >= 1) & (target_x <= width - 2) & (target_y >= 1) & (target_y <= height - 2)
            index = (target_y.clamp(0, height - 1) * width + target_x.clamp(0, width - 1)).long()
            candidate = _gather_plane(gray_image, index)
            # Values and masks live at the neighbour q; move them to p = q + (j, i).
            candidate = _shift(candidate, j, i)
            use_candidate = _shift(valid.unsqueeze(1).to(gray_fill.dtype), j, i)
            q_inside = _shift(inside_image, j, i)
            planes.append(torch.where(use_candidate > 0, candidate, torch.where(q_inside > 0, gray_fill, 0.0)))
    return volume_format(torch.cat(planes, dim=1).to(dtype), out_dtype, channels_last)


def volume_format(volume: torch.Tensor, out_dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    """The pixel volume in the dtype (None: unchanged) and memory format asked for (one cast, one copy)."""
    if out_dtype is not None:
        volume = volume.to(out_dtype)
    return volume.contiguous(memory_format=torch.channels_last) if channels_last else volume


def smoothed_flow(distance: torch.Tensor, flow: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """BIMNet's regularization step: distance (B, k*k, h, w), flow (B, 2, h, w), the combining 1x1 convs' weight
    (2, k*k) and bias (2,) -> flow (B, 2, h, w). Each component becomes (sum_j weight[c, j] * e_j * its tap j,
    plus bias[c]) / sum_j e_j, with e_j = exp(-distance_j**2 - the max over the taps of -distance**2); tap
    j = dy * k + dx is the k x k neighbour (dy, dx), zero outside. Computed in the layout of `distance`."""
    layout = torch.channels_last if distance.dim() == 4 and distance.stride(1) == 1 else torch.contiguous_format
    logits = -distance.square()
    weights = torch.exp(logits - logits.amax(dim=1, keepdim=True))  # (B, k*k, h, w), unnormalised
    normaliser = weights.sum(dim=1, keepdim=True).reciprocal()
    taps = distance.shape[1]
    components = [F.conv2d(weights * neighbours(flow[:, c:c + 1], layout, taps),
                           weight[c].view(1, taps, 1, 1), bias[c:c + 1]) * normaliser for c in range(2)]
    return torch.cat(components, dim=1)


def neighbours(component: torch.Tensor, layout: torch.memory_format, taps: int) -> torch.Tensor:
    """(B, 1, h, w) -> (B, k*k, h, w) in `layout`, k*k = taps: zero-padded k x k neighbourhood, channel dy * k + dx."""
    k = math.isqrt(taps)
    # The batch as channels of one image: unfold's CPU kernel starts a parallel region per image, each
    # costing more than the image's work with passive OpenMP waiting (1.5 ms per call on 2 threads).
    patches = F.unfold(einops.rearrange(component, "b 1 h w -> 1 b h w"), kernel_size=k, padding=k // 2)
    out = einops.rearrange(patches, "1 (b kk) (h w) -> b kk h w", kk=taps, h=component.shape[2])
    return out.contiguous(memory_format=layout)
