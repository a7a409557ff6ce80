"""The pixel volume on the CPU as one compiled pass per direction (numba), used when numba is installed.

`pixel_volume_from_targets(gray_image, gray_fill, target_x, target_y, k)` is the gather at the heart of
`pvd.kernels.cpu.pixel_volume`: gray_image, gray_fill (B, H, W) float32 or float64; target_x, target_y
(B, H, W) int32, each pixel's integer target trunc(position + flow) already clamped to [-h, size - 1 + h]
(h = k // 2; the clamp keeps every "candidate outside the interior [1, size - 2]" outside) -> (B, k*k, H, W) in
gray_image's dtype, channel (i + h) k + (j + h); differentiable w.r.t. both gray planes. Each output value is
one selected gray value (no arithmetic), so the result is bit-identical to the reference's; the backward adds
each gradient value to the gray value it was selected from.

Why native code: the volume is a 25-way gather per pixel. Every eager PyTorch formulation makes several full
passes over the 25 planes (gather, mask, select); this one reads each neighbour's target and writes each
output once. The forward splits image rows across `torch.get_num_threads()` Python threads (numba releases
the GIL); the backward gives each thread its own gradient image and sums them. Compiled once per dtype and
cached on disk by numba. Optional dependency (`pip install "pvd[cpu]"`): without numba, `pvd.kernels.cpu`
keeps its eager formulation.
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
MIN_ROWS_PER_THREAD = 32  # smaller row bands are not worth a thread


def _compiled(function):
    return numba.njit(cache=True, nogil=True)(function) if AVAILABLE else function


@_compiled
def _gather(canvas, gray_fill, target_x, target_y, kernel_size, row_start, row_stop, out):
    """Rows [row_start, row_stop) of out (B, k*k, H, W). canvas: gray_image zero-padded by 2h on every side.

    out[b, c, y, x], c = (i + h) k + (j + h): 0 where the neighbour q = (y - j, x - i) is off the image, else
    the gray value at q's target + (j, i) if that lies in the interior [1, W - 2] x [1, H - 2], else
    gray_fill[b, y, x]. Unsigned indices and compares: no wrap-around checks, no branches on the data."""
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
                        q = np.uintp(x - i)
                        inside = has_interior & (np.uint32(targets_x[q] + i - 1) <= x_limit) & \
                            (np.uint32(targets_y[q] + j - 1) <= y_limit)
                        value = flat[np.uintp(targets_y[q] * canvas_width + targets_x[q] + offset)]
                        row[np.uintp(x)] = value if inside else fill_row[np.uintp(x)]


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
                        q = np.uintp(x - i)
                        inside = has_interior & (np.uint32(targets_x[q] + i - 1) <= x_limit) & \
                            (np.uint32(targets_y[q] + j - 1) <= y_limit)
                        if inside:
                            flat[np.uintp(targets_y[q] * canvas_width + targets_x[q] + offset)] += row[np.uintp(x)]
                        else:
                            fill_row[np.uintp(x)] += row[np.uintp(x)]


_POOL: dict[int, ThreadPoolExecutor] = {}


def _row_bands(height: int) -> list[tuple[int, int]]:
    """[start, stop) image-row bands, one per thread (torch.get_num_threads(), at most height / 32)."""
    count = max(1, min(torch.get_num_threads(), height // MIN_ROWS_PER_THREAD))
    edges = [height * n // count for n in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _run_bands(function, calls: list[tuple]) -> None:
    """function(*arguments) for every tuple of calls, on a thread each (the first on this one)."""
    if len(calls) == 1:
        function(*calls[0])
        return
    pool = _POOL.setdefault(len(calls), ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="pvd-pv"))
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
