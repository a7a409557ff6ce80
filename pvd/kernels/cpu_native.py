"""Compiled CPU kernels (numba) for the pixel volume and the correlation, used when numba is installed.

Optional dependency (`pip install "pvd[cpu]"`): without numba, `pvd.kernels.cpu` keeps its eager PyTorch
formulations. Each kernel is compiled once per dtype (float32, float64) and cached on disk by numba. Work is
split into bands (image rows, or channels) across `torch.get_num_threads()` Python threads, as numba releases
the GIL; a band never writes where another one does.

Pixel volume (`pixel_volume_from_targets`): the gather at the heart of `pvd.kernels.cpu.pixel_volume`.
gray_image, gray_fill (B, H, W); target_x, target_y (B, H, W) int32, each pixel's integer target
trunc(position + flow) already clamped to [-h, size - 1 + h] (h = k // 2; the clamp keeps every "candidate
outside the interior [1, size - 2]" outside) -> (B, k*k, H, W), channel (i + h) k + (j + h); differentiable
w.r.t. both gray planes. Each output value is one selected gray value (no arithmetic): bit-identical to the
reference. Every eager formulation makes several full passes over the k*k planes (gather, mask, select); this
one reads each neighbour's target and writes each output once. The backward gives each thread its own
gradient image and sums them.

Correlation (`correlation_of_samples`): the cost volume of `pvd.kernels.cpu.correlation` on the stride-grid
samples a, b (B, C, Ho, Wo) of f1 and f2 -> (B, D*D, Ho, Wo), D = 2d + 1: the mean over channels of a * (b
shifted by the displacement, zero outside). For each image row, each (channel, displacement) pair is one
multiply-add loop along the row (vectorised by LLVM) into the row's D*D output rows, which stay in L1 while
the channels stream through. Forward bands are image rows, backward bands channels. Measured against
alternatives on the development CPU: flat row chunks sized for L2 were slower forward and no faster
backward; tiled batched matmuls (the eager fallback) were 1.3-2.5x slower at the stride-1 levels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

try:
    import numba
except ImportError:  # optional: pvd.kernels.cpu falls back to its eager PyTorch formulation
    numba = None

AVAILABLE = numba is not None
MIN_ROWS_PER_THREAD = 32  # pixel volume: smaller row bands are not worth a thread
MIN_CHANNELS_PER_THREAD = 8  # correlation backward


def _compiled(function):
    # fastmath "contract" only: fused multiply-adds, no reassociation and no assumptions about NaN or inf.
    return numba.njit(cache=True, nogil=True, fastmath={"contract"})(function) if AVAILABLE else function


@_compiled
def _candidate(targets_x, targets_y, q, i, j, x_limit, y_limit, has_interior, canvas_width, offset):
    """(inside, flat canvas index) of candidate (i, j) of neighbour q of one row: its target + (j, i) lies in
    the interior [1, W - 2] x [1, H - 2] (unsigned compares: u(c - 1) <= size - 3), and where it sits in the
    canvas (offset = the canvas margin and the (j, i) shift)."""
    inside = has_interior & (np.uint32(targets_x[q] + i - 1) <= x_limit) & (np.uint32(targets_y[q] + j - 1) <= y_limit)
    return inside, np.uintp(targets_y[q] * canvas_width + targets_x[q] + offset)


@_compiled
def _gather(canvas, gray_fill, target_x, target_y, kernel_size, row_start, row_stop, out):
    """Rows [row_start, row_stop) of out (B, k*k, H, W). canvas: gray_image zero-padded by 2h on every side.

    out[b, c, y, x], c = (i + h) k + (j + h): 0 where the neighbour q = (y - j, x - i) is off the image, else
    the gray value at q's target + (j, i) if that lies in the interior [1, W - 2] x [1, H - 2], else
    gray_fill[b, y, x]. Unsigned indices: no wrap-around checks; the value is selected, not branched on."""
    batch, height, width = gray_fill.shape
    half = kernel_size // 2
    canvas_width = canvas.shape[2]
    x_limit, y_limit = np.uint32(max(width - 3, 0)), np.uint32(max(height - 3, 0))  # u(c - 1) <= size - 3
    has_interior = width >= 3 and height >= 3  # the interior [1, size - 2] exists   <=>  1 <= c <= size - 2
    for b in range(batch):
        flat = canvas[b].ravel()
        for y in range(row_start, row_stop):
            fill_row = gray_fill[b, y]
            for i in range(-half, half + 1):
                x_start = min(max(i, 0), width)  # [x_start, x_stop): the columns whose neighbour x - i exists
                x_stop = max(min(width + i, width), x_start)
                for j in range(-half, half + 1):
                    row = out[b, (i + half) * kernel_size + (j + half), y]
                    source_y = y - j
                    if source_y < 0 or source_y >= height:
                        row[:] = 0
                        continue
                    row[:x_start] = 0
                    row[x_stop:] = 0
                    targets_x, targets_y = target_x[b, source_y], target_y[b, source_y]
                    offset = (j + 2 * half) * canvas_width + i + 2 * half
                    for x in range(x_start, x_stop):
                        inside, index = _candidate(targets_x, targets_y, np.uintp(x - i), i, j, x_limit, y_limit,
                                                   has_interior, canvas_width, offset)
                        row[np.uintp(x)] = flat[index] if inside else fill_row[np.uintp(x)]


@_compiled
def _scatter(grad_out, target_x, target_y, kernel_size, row_start, row_stop, grad_canvas, grad_fill):
    """The adjoint of `_gather` for output rows [row_start, row_stop): each gradient value is added where its
    output value was read (grad_canvas, padded like the canvas, or grad_fill)."""
    batch, height, width = grad_fill.shape
    half = kernel_size // 2
    canvas_width = grad_canvas.shape[2]
    x_limit, y_limit = np.uint32(max(width - 3, 0)), np.uint32(max(height - 3, 0))
    has_interior = width >= 3 and height >= 3
    for b in range(batch):
        flat = grad_canvas[b].ravel()
        for y in range(row_start, row_stop):
            fill_row = grad_fill[b, y]
            for i in range(-half, half + 1):
                x_start = min(max(i, 0), width)
                x_stop = max(min(width + i, width), x_start)
                for j in range(-half, half + 1):
                    source_y = y - j
                    if source_y < 0 or source_y >= height:
                        continue
                    row = grad_out[b, (i + half) * kernel_size + (j + half), y]
                    targets_x, targets_y = target_x[b, source_y], target_y[b, source_y]
                    offset = (j + 2 * half) * canvas_width + i + 2 * half
                    for x in range(x_start, x_stop):
                        inside, index = _candidate(targets_x, targets_y, np.uintp(x - i), i, j, x_limit, y_limit,
                                                   has_interior, canvas_width, offset)
                        if inside:
                            flat[index] += row[np.uintp(x)]
                        else:
                            fill_row[np.uintp(x)] += row[np.uintp(x)]


_POOL: dict[int, ThreadPoolExecutor] = {}


def _bands(length: int, minimum: int) -> list[tuple[int, int]]:
    """[start, stop) bands covering range(length), one per thread (torch.get_num_threads()), each at least
    `minimum` long (fewer bands where length is short)."""
    count = max(1, min(torch.get_num_threads(), length // minimum))
    edges = [length * n // count for n in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _row_bands(height: int) -> list[tuple[int, int]]:
    return _bands(height, MIN_ROWS_PER_THREAD)


def _run_bands(function, calls: list[tuple]) -> None:
    """function(*arguments) for every tuple of calls, on a thread each (the first on this one)."""
    if len(calls) == 1:
        function(*calls[0])
        return
    pool = _POOL.get(len(calls))
    if pool is None:
        pool = _POOL[len(calls)] = ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="pvd-cpu")
    pending = [pool.submit(function, *arguments) for arguments in calls[1:]]
    function(*calls[0])
    for future in pending:
        future.result()


class _PixelVolume(torch.autograd.Function):
    @staticmethod
    def forward(ctx, canvas, gray_fill, target_x, target_y, kernel_size):
        batch, height, width = gray_fill.shape
        out = gray_fill.new_empty(batch, kernel_size * kernel_size, height, width)
        arrays = [_array(t) for t in (canvas, gray_fill, target_x, target_y)]
        _run_bands(_gather, [(*arrays, kernel_size, start, stop, out.numpy()) for start, stop in _row_bands(height)])
        ctx.save_for_backward(target_x, target_y)
        ctx.kernel_size, ctx.canvas_shape = kernel_size, canvas.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        target_x, target_y = ctx.saved_tensors
        bands = _row_bands(target_x.shape[1])
        grad_canvases = [grad_out.new_zeros(ctx.canvas_shape) for _ in bands]  # one per thread: no races
        grad_fill = grad_out.new_zeros(target_x.shape)
        arrays = (_array(grad_out), _array(target_x), _array(target_y), ctx.kernel_size)
        _run_bands(_scatter, [(*arrays, start, stop, grad_canvas.numpy(), grad_fill.numpy())
                              for (start, stop), grad_canvas in zip(bands, grad_canvases)])
        grad_canvas = grad_canvases[0]
        for other in grad_canvases[1:]:
            grad_canvas += other
        return grad_canvas, grad_fill, None, None, None


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def pixel_volume_from_targets(gray_image: torch.Tensor, gray_fill: torch.Tensor, target_x: torch.Tensor,
                              target_y: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """See the module docstring. CPU tensors; gray planes of one dtype, float32 or float64; targets int32."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native needs numba (pip install 'pvd[cpu]')")
    margin = 2 * (kernel_size // 2)
    canvas = F.pad(gray_image, (margin, margin, margin, margin))
    return _PixelVolume.apply(canvas, gray_fill, target_x, target_y, kernel_size)


# --------------------------------------------------------------------------------------------- correlation


@_compiled
def _correlate(a, g, max_displacement, row_start, row_stop, out):
    """out[b, dy, dx, y, x] = mean over channels of a[b, c, y, x] * g[b, c, y + dy, x + dx] for image rows
    [row_start, row_stop). a (B, C, Ho, Wo); g (B, C, Ho + 2d, Wo + 2d); out (B, D, D, Ho, Wo), written
    without being read first (the first channel assigns, the last one scales by 1 / C)."""
    batch, channels, _, width = a.shape
    size = 2 * max_displacement + 1
    scale = 1.0 / channels
    for b in range(batch):
        for y in range(row_start, row_stop):
            for c in range(channels):  # the D*D output rows of image row y stay in L1 while channels stream
                a_row = a[b, c, y]
                for dy in range(size):
                    g_row = g[b, c, y + dy]
                    for dx in range(size):
                        out_row = out[b, dy, dx, y]
                        if c == 0:
                            for x in range(width):
                                out_row[x] = a_row[x] * g_row[x + dx]
                        else:
                            for x in range(width):
                                out_row[x] += a_row[x] * g_row[x + dx]
                        if c == channels - 1:
                            for x in range(width):
                                out_row[x] *= scale


@_compiled
def _correlate_backward(grad_out, a, g, max_displacement, channel_start, channel_stop, grad_a, grad_g):
    """The adjoint of `_correlate` for channels [channel_start, channel_stop); grad_out (B, D, D, Ho, Wo);
    grad_a, grad_g (shaped as a, g) start at zero."""
    batch, _, height, width = a.shape
    size = 2 * max_displacement + 1
    for b in range(batch):
        for c in range(channel_start, channel_stop):
            for y in range(height):
                a_row, grad_a_row = a[b, c, y], grad_a[b, c, y]
                for dy in range(size):
                    g_row, grad_g_row = g[b, c, y + dy], grad_g[b, c, y + dy]
                    for dx in range(size):
                        grad_row = grad_out[b, dy, dx, y]
                        for x in range(width):
                            grad_a_row[x] += grad_row[x] * g_row[x + dx]
                        for x in range(width):
                            grad_g_row[x + dx] += grad_row[x] * a_row[x]


class _Correlation(torch.autograd.Function):
    """a (B, C, Ho, Wo), g (B, C, Ho + 2d, Wo + 2d) -> (B, D*D, Ho, Wo)."""

    @staticmethod
    def forward(ctx, a, g, max_displacement):
        batch, channels, height, width = a.shape
        size = 2 * max_displacement + 1
        out = a.new_empty(batch, size * size, height, width)  # not a view: callers may modify it in place
        arrays = (_array(a), _array(g), max_displacement)
        out_array = out.numpy().reshape(batch, size, size, height, width)
        _run_bands(_correlate, [(*arrays, start, stop, out_array) for start, stop in _bands(height, 1)])
        ctx.save_for_backward(a, g)
        ctx.max_displacement = max_displacement
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, g = ctx.saved_tensors
        batch, channels, height, width = a.shape
        size = 2 * ctx.max_displacement + 1
        grad_out = (grad_out / channels).reshape(batch, size, size, height, width)
        grad_a, grad_g = torch.zeros_like(a), torch.zeros_like(g)
        arrays = (_array(grad_out), _array(a), _array(g), ctx.max_displacement)
        _run_bands(_correlate_backward, [(*arrays, start, stop, grad_a.numpy(), grad_g.numpy())
                                         for start, stop in _bands(channels, MIN_CHANNELS_PER_THREAD)])
        return grad_a, grad_g, None


def correlation_of_samples(a: torch.Tensor, b: torch.Tensor, max_displacement: int) -> torch.Tensor:
    """See the module docstring: a, b (B, C, Ho, Wo) the stride-grid samples of f1 and f2, CPU tensors of one
    dtype, float32 or float64 -> (B, D*D, Ho, Wo)."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native needs numba (pip install 'pvd[cpu]')")
    d = max_displacement
    return _Correlation.apply(a.contiguous(), F.pad(b, (d, d, d, d)), d)
