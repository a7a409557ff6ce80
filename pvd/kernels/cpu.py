"""Fast PyTorch implementations of the kernel ops for tensors outside the Triton path (CPU, or no Triton).

Same semantics, arguments and dtypes as the twins in `pvd.kernels.reference` (the tests' oracle), but built
for speed on a CPU; they are device-agnostic PyTorch and differentiable:

- `warp`: `F.grid_sample(bilinear, zeros, align_corners=True)` on the normalised grid, after the reference's
  sanitising (non-finite flow -> a point whose four taps are all outside; far coordinates clamped to a band
  where they still are). Values equal the reference up to the normalisation's rounding (~1e-7 relative).
  With numba, channels_last inputs of at least 16 channels take a compiled NHWC kernel (`cpu_native_warp`)
  that computes in pixels, as the reference does.
- `pixel_volume`: two compiled passes (`cpu_native`, numba: gray planes and encoded targets, then the gather)
  or, without numba (or outside `compiled_kernels`, for small jobs), an eager formulation (integer targets in a few tensor ops, one nearest `grid_sample`
  over the k*k shifted gray images and one `where`); bit-identical to the reference either way.
- `correlation`: on maps of at most 8x8 output pixels, one batched matmul of all pixel pairs; otherwise, with
  numba, compiled multiply-add loops along image rows (`cpu_native`); otherwise per
  displacement row a batched matmul over channels of x-tiles of f1 against the overlapping x-windows of f2
  (a strided view, no copy), with a custom backward of the same shape.
"""

from __future__ import annotations

import contextlib

import einops
import torch
import torch.nn.functional as F

from . import cpu_native, cpu_native_warp, reference
from .reference import acc_dtype

# Width (in output pixels) of the x-tiles of the correlation's batched matmul: (T x C) @ (C x (T + 2d)).
CORRELATION_TILE = 4
# Correlation maps of at most this many output pixels (8x8) pair every pixel with every pixel of the padded
# map in one batched matmul (`_correlation_of_all_pairs`): (Ho + 2d)(Wo + 2d) products per pixel where D*D are
# needed, 4x at 8x8 (d = 3).
# On such maps the compiled row loops run rows too short to vectorise. Measured on the development CPU,
# forward + backward for a batch of 32, compiled loops vs all pairs (1 thread / 2 threads):
#   8x8 with 96 channels: 8.2 / 5.0 vs 3.5 / 2.4 ms
#   4x4 with 128:         5.0 / 3.0 vs 0.8 / 0.9 ms
#   16x16 with 64:        12.5 / 7.3 vs 22.6 / 13.4 ms (hence the bound)
ALL_PAIRS_MAX_PIXELS = 64


# The compiled kernels cost a process ~0.3 s before their first result (numba sets up its compiler and loads the
# cached machine code), and a whole deblurring step gains little from them (measured on the development CPU at
# 256x256 and 1280x720: 4% and 3% per step on 2 threads, nothing measurable on 1). Inference jobs with fewer
# pixels than this in all (frames x height x width) therefore run the eager formulations (`compiled_kernels`).
COMPILED_MIN_JOB_PIXELS = 4_000_000

_compiled_allowed = True


def compiled_pays_off(job_pixels: int | None) -> bool:
    """Whether a job of `job_pixels` pixels in all (None: unknown) is worth the compiled kernels' start-up."""
    return job_pixels is None or job_pixels >= COMPILED_MIN_JOB_PIXELS


@contextlib.contextmanager
def compiled_kernels(allowed: bool):
    """Within the block the CPU ops use the compiled kernels (where numba is installed) only if `allowed`;
    e.g. `with compiled_kernels(compiled_pays_off(frames * height * width)): ...`. Process-wide, not per thread."""
    global _compiled_allowed
    previous, _compiled_allowed = _compiled_allowed, allowed
    try:
        yield
    finally:
        _compiled_allowed = previous


def native_serves(tensor: torch.Tensor) -> bool:
    """Whether the compiled kernels of `cpu_native` take an op whose inputs were all converted to tensor's dtype:
    numba installed and allowed (`compiled_kernels`), a CPU tensor, float32 or float64."""
    return (cpu_native.AVAILABLE and _compiled_allowed and tensor.device.type == "cpu"
            and tensor.dtype in (torch.float32, torch.float64))


# ------------------------------------------------------------------------------------------------ warp


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warp, as `reference.warp`: x (B, C, H, W), flow (B, 2, H, W) in pixels ->
    (B, C, H, W); taps outside the image contribute zero; non-finite flow gives zero output and gradient.

    The normalised grid is (pixel + flow) * 2 / (size - 1) - 1. A non-finite component becomes a point
    beyond -2 pixels (its four taps are outside, so it samples 0 with zero gradient: the reference's
    "non-finite -> 0", as one component outside puts every tap outside), and coordinates are clamped to a
    band beyond [-2, size + 1] pixels in both axes, where every tap is still outside.
    """
    _, _, height, width = x.shape
    dtype = x.dtype
    x, flow = x.to(acc_dtype(dtype)), flow.to(acc_dtype(dtype))
    if native_serves(x) and cpu_native_warp.serves(x):  # channels_last features: the compiled NHWC kernel
        return cpu_native_warp.warp(x, flow).to(dtype)
    if height < 2 or width < 2:  # the normalised grid divides by size - 1
        return reference.warp(x, flow).to(dtype)
    scale = _grid_scale(height, width, flow)
    band = 1.0 + 4.0 * max(2.0 / (width - 1), 2.0 / (height - 1))  # > 2 pixels beyond either border
    grid = torch.addcmul(_normalised_positions(height, width, flow), flow.permute(0, 2, 3, 1), scale)
    grid = torch.nan_to_num(grid, nan=-band, posinf=band, neginf=-band).clamp_(-band, band)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(dtype)


_GRID_CACHE: dict[tuple, torch.Tensor] = {}


def _grid_scale(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_tensor([2.0 / (width - 1), 2.0 / (height - 1)])


def _normalised_positions(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) pixel coordinates x, y normalised for grid_sample(align_corners=True); cached per size."""
    return _cached((height, width, like.dtype, like.device),
                   lambda: _pixel_positions(height, width, like) * _grid_scale(height, width, like) - 1.0)


def _cached(key: tuple, make) -> torch.Tensor:
    """make() once per key (sizes, dtype, device) in a small cache (cleared past 64 entries), made outside
    inference mode: a normal tensor that autograd may save later even when first made under inference_mode."""
    if key not in _GRID_CACHE:
        if len(_GRID_CACHE) > 64:
            _GRID_CACHE.clear()
        with torch.inference_mode(False):
            _GRID_CACHE[key] = make()
    return _GRID_CACHE[key]


def _pixel_positions(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) integer pixel coordinates x then y, in like's dtype and device."""
    ys = torch.arange(height, device=like.device, dtype=like.dtype)
    xs = torch.arange(width, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


# -------------------------------------------------------------------------------------------- pixel volume


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor, kernel_size: int = 5, *,
                 out_dtype: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """PVDNet pixel volume, bit-identical to `reference.pixel_volume` (see there for the definition):
    image, fill (B, 3 or 1, H, W); flow (B, 2, H, W) pixels -> (B, k*k, H, W), channel (i+h)*k + (j+h).
    Differentiable w.r.t. image and fill, not flow. out_dtype / channels_last: as `reference.pixel_volume`.

    With numba installed, the op is two compiled passes (`pvd.kernels.cpu_native`). Otherwise, eagerly:
    at every neighbour q one nearest-neighbour `grid_sample` at q's integer target reads all k*k candidates
    from the k*k shifted copies of the gray image (an unfold); a mask says which candidates are in the
    interior. Both are laid out on a grid padded by h, so that candidate (i, j) of pixel p, which belongs
    to q = p - (j, i), is a strided view; padding points sample outside (0) and count as valid, which gives
    the 0 of neighbours outside the image. One `where` with the fill writes the volume.
    """
    batch, _, height, width = flow.shape
    k, half = kernel_size, kernel_size // 2
    dtype = image.dtype
    image, fill = image.to(acc_dtype(dtype)), fill.to(acc_dtype(dtype))
    flow = flow.detach().to(acc_dtype(dtype))
    if native_serves(image) and kernel_size <= cpu_native.MAX_KERNEL_SIZE:
        out = cpu_native.pixel_volume(image, flow, fill, k)
        return reference.volume_format(out.to(dtype), out_dtype, channels_last)
    gray_image, gray_fill = reference.to_gray(image), reference.to_gray(fill)
    target_x, target_y = _pixel_volume_targets(flow, half)
    padded_h, padded_w = height + 2 * half, width + 2 * half

    # Candidate (i, j) of q is copy (j, i) of the unfold at (target_y + h, target_x + h).
    extended = F.pad(gray_image, (2 * half,) * 4)
    row = extended.shape[-1]
    shifted = extended.as_strided((batch, k, k, padded_h, padded_w), (extended.stride(0), row, 1, row, 1),
                                  extended.storage_offset()).reshape(batch, k * k, padded_h, padded_w)
    grid = flow.new_full((batch, padded_h, padded_w, 2), -4.0)  # padding: far outside -> 0
    grid[:, half:half + height, half:half + width, 0] = (target_x + half) * (2.0 / max(padded_w - 1, 1)) - 1.0
    grid[:, half:half + height, half:half + width, 1] = (target_y + half) * (2.0 / max(padded_h - 1, 1)) - 1.0
    candidates = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)

    offsets = torch.arange(-half, half + 1, device=flow.device).view(1, k, 1, 1)
    valid_x = (target_x.unsqueeze(1) + offsets >= 1) & (target_x.unsqueeze(1) + offsets <= width - 2)
    valid_y = (target_y.unsqueeze(1) + offsets >= 1) & (target_y.unsqueeze(1) + offsets <= height - 2)
    valid = torch.ones(batch, k, k, padded_h, padded_w, dtype=torch.bool, device=flow.device)  # (i, j) planes
    valid[..., half:half + height, half:half + width] = valid_x.unsqueeze(2) & valid_y.unsqueeze(1)

    # Plane (i, j) of pixel p reads q = p - (j, i): rows from 2h - j, columns from 2h - i (0-based i, j).
    plane = padded_h * padded_w
    start = 2 * half * padded_w + 2 * half
    candidates = candidates.as_strided((batch, k, k, height, width),
                                       (k * k * plane, plane - 1, k * plane - padded_w, padded_w, 1),
                                       candidates.storage_offset() + start)  # unfold order: (j, i) planes
    valid = valid.as_strided((batch, k, k, height, width),
                             (k * k * plane, k * plane - 1, plane - padded_w, padded_w, 1), start)
    out = torch.where(valid, candidates, gray_fill.unsqueeze(1))
    return reference.volume_format(out.view(batch, k * k, height, width).to(dtype), out_dtype, channels_last)


def _pixel_volume_targets(flow: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) integer-valued targets trunc(x + flow_x), trunc(y + flow_y) of every pixel, in flow's dtype.

    The reference's target arithmetic (same float ops, so the same integers), then clamped to
    [-h, size - 1 + h], where every candidate outside the interior [1, size - 2] stays outside; a non-finite
    flow (either component) takes the low end, whose candidates are all outside (the reference's
    "not finite -> fill").
    """
    _, _, height, width = flow.shape
    low = -half - 2.0
    xs = torch.arange(width, device=flow.device, dtype=flow.dtype)
    ys = torch.arange(height, device=flow.device, dtype=flow.dtype).view(height, 1)
    target_x = torch.nan_to_num(xs + flow[:, 0], nan=low, posinf=low, neginf=low)
    target_y = torch.nan_to_num(ys + flow[:, 1], nan=low, posinf=low, neginf=low)
    target_x = target_x.clamp_(low, width + half + 2.0).trunc_().clamp_(-half, width - 1 + half)
    target_y = target_y.clamp_(low, height + half + 2.0).trunc_().clamp_(-half, height - 1 + half)
    return target_x, target_y


# --------------------------------------------------------------------------------------------- correlation


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 3, stride: int = 1) -> torch.Tensor:
    """LiteFlowNet cost volume, as `reference.correlation`: f1, f2 (B, C, H, W) ->
    (B, D*D, ceil(H/s), ceil(W/s)), D = 2*max_displacement + 1, the mean over channels of f1 * shifted f2."""
    dtype = f1.dtype
    f1, f2 = f1.to(acc_dtype(dtype)), f2.to(acc_dtype(dtype))
    samples = f1[:, :, ::stride, ::stride], f2[:, :, ::stride, ::stride]
    if samples[0].shape[2] * samples[0].shape[3] <= ALL_PAIRS_MAX_PIXELS:
        return _correlation_of_all_pairs(*samples, max_displacement).to(dtype)
    if native_serves(f1):
        return cpu_native.correlation_of_samples(*samples, max_displacement).to(dtype)
    return _Correlation.apply(f1, f2, max_displacement, stride).to(dtype)


def _correlation_of_all_pairs(a: torch.Tensor, b: torch.Tensor, max_displacement: int) -> torch.Tensor:
    """The cost volume of the stride-grid samples a, b (B, C, Ho, Wo) from one batched matmul of every pixel of
    a against every pixel of b zero-padded by d, (B, Ho*Wo, (Ho+2d)*(Wo+2d)), of which each pixel's D*D
    displacements are gathered; autograd differentiates it. Worth it on small maps only (ALL_PAIRS_MAX_PIXELS)."""
    batch, channels, height, width = a.shape
    d = max_displacement
    products = torch.bmm(a.flatten(2).transpose(1, 2), F.pad(b, (d, d, d, d)).flatten(2))
    pairs = torch.gather(products, 2, _displacement_columns(height, width, d, a.device).expand(batch, -1, -1))
    return einops.rearrange(pairs / channels, "b (h w) dd -> b dd h w", h=height).contiguous()


def _displacement_columns(height: int, width: int, d: int, device: torch.device) -> torch.Tensor:
    """(1, H*W, D*D) int64: for output pixel (y, x) and displacement (dy, dx), the flat index (y + dy) * (W + 2d)
    + (x + dx) of the pixel it pairs with in the padded map (dy slow, dx fast, as the cost volume's channels)."""
    def make() -> torch.Tensor:
        size = 2 * d + 1
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                indexing="ij")
        dy, dx = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
        rows = ys.reshape(-1, 1) + dy.reshape(1, -1)
        return (rows * (width + 2 * d) + xs.reshape(-1, 1) + dx.reshape(1, -1)).unsqueeze(0)

    return _cached(("displacement columns", height, width, d, device), make)  # gather saves it for backward


class _CorrelationLayout:
    """Channels-last copies of the stride-grid samples, laid out so that matmuls need no further copy.

    a: (B, Ho, Wg, C), f1's samples in columns [0, Wo) (zeros beyond); g: (B, Ho + 2d + 1, Wg, C), f2's
    samples at rows/columns offset by d (zeros around, and one spare row so that the last x-window of the
    last row stays inside). Wg is a multiple of the tile T and >= Wo + 2d, so the window of tile n for
    displacement row r starts at flat pixel r*Wg + n*T of g and the windows of one row index are uniformly
    strided across image rows (a window running past a row's end only feeds outputs at x >= Wo).
    """

    def __init__(self, shape: torch.Size, max_displacement: int, stride: int, tile: int):
        batch, channels, height, width = shape
        d = max_displacement
        self.batch, self.channels, self.d, self.stride, self.tile = batch, channels, d, stride, tile
        self.size = 2 * d + 1
        self.out_h, self.out_w = -(-height // stride), -(-width // stride)
        self.width = -(-(self.out_w + 2 * d) // tile) * tile
        self.tiles = self.out_h * self.width // tile
        self.window = tile + 2 * d

    def samples(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, d = self.stride, self.d
        a = f1.new_zeros(self.batch, self.out_h, self.width, self.channels)
        a[:, :, :self.out_w] = f1[:, :, ::s, ::s].permute(0, 2, 3, 1)
        g = f2.new_zeros(self.batch, self.out_h + 2 * d + 1, self.width, self.channels)
        g[:, d:d + self.out_h, d:d + self.out_w] = f2[:, :, ::s, ::s].permute(0, 2, 3, 1)
        return a, g

    def tiles_of(self, a_item: torch.Tensor) -> torch.Tensor:
        """(tiles, T, C) view of one item of a."""
        return a_item.view(self.tiles, self.tile, self.channels)

    def windows(self, g_item: torch.Tensor, row: int, start: int = 0, length: int | None = None) -> torch.Tensor:
        """(tiles, length, C) view of one item of g: columns [start, start + length) of every tile's window
        for displacement row `row` (overlapping across tiles when length > T)."""
        length = self.window - start if length is None else length
        c = self.channels
        offset = g_item.storage_offset() + (row * self.width + start) * c
        return g_item.as_strided((self.tiles, length, c), (self.tile * c, c, 1), offset)

    def band(self, products: torch.Tensor) -> torch.Tensor:
        """(out_h, Wg/T, T, D) view of the diagonals of (tiles, T, T + 2d) tile products: [.., t, dx] = [.., t, t + dx]."""
        t, w = self.tile, self.window
        return products.as_strided((self.out_h, self.width // t, t, self.size), (self.width * w, t * w, w + 1, 1))


class _Correlation(torch.autograd.Function):
    """Cost volume by tiled batched matmuls; forward and backward of the same shape (see `_CorrelationLayout`)."""

    @staticmethod
    def forward(ctx, f1, f2, max_displacement, stride):
        layout = _CorrelationLayout(f1.shape, max_displacement, stride, CORRELATION_TILE)
        a, g = layout.samples(f1, f2)
        size = layout.size
        out = f1.new_empty(layout.batch, size, size, layout.out_h, layout.width // layout.tile, layout.tile)
        for item in range(layout.batch):
            tiles = layout.tiles_of(a[item])
            for row in range(size):
                products = torch.bmm(tiles, layout.windows(g[item], row).transpose(1, 2))
                out[item, row] = layout.band(products).permute(3, 0, 1, 2)
        ctx.save_for_backward(a, g)
        ctx.layout, ctx.input_shape = layout, f1.shape
        out = out.view(layout.batch, size * size, layout.out_h, layout.width)[..., :layout.out_w]
        return out / layout.channels

    @staticmethod
    def backward(ctx, grad_out):
        a, g = ctx.saved_tensors
        layout: _CorrelationLayout = ctx.layout
        size, t = layout.size, layout.tile
        grad = grad_out.new_zeros(layout.batch, size, size, layout.out_h, layout.width)
        grad[..., :layout.out_w] = grad_out.view(layout.batch, size, size, layout.out_h, layout.out_w)
        grad = grad.div_(layout.channels).view(layout.batch, size, size, layout.out_h, layout.width // t, t)
        grad_a, grad_g = torch.zeros_like(a), torch.zeros_like(g)
        grad_products = grad_out.new_zeros(layout.tiles, t, layout.window)
        for item in range(layout.batch):
            tiles, grad_tiles = layout.tiles_of(a[item]), layout.tiles_of(grad_a[item])
            for row in range(size):
                layout.band(grad_products).copy_(grad[item, row].permute(1, 2, 3, 0))
                grad_tiles.baddbmm_(grad_products, layout.windows(g[item], row))
                grad_windows = torch.bmm(grad_products.transpose(1, 2), tiles)  # (tiles, T + 2d, C)
                for start in range(0, layout.window, t):  # overlap-add, in non-overlapping column chunks
                    length = min(t, layout.window - start)
                    layout.windows(grad_g[item], row, start, length).add_(grad_windows[:, start:start + length])
        s, d = layout.stride, layout.d
        grad_f1 = grad_a.new_zeros(ctx.input_shape)
        grad_f1[:, :, ::s, ::s] = grad_a[:, :, :layout.out_w].permute(0, 3, 1, 2)
        grad_f2 = grad_g.new_zeros(ctx.input_shape)
        grad_f2[:, :, ::s, ::s] = grad_g[:, d:d + layout.out_h, d:d + layout.out_w].permute(0, 3, 1, 2)
        return grad_f1, grad_f2, None, None
