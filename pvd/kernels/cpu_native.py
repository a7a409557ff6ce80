"""Compiled CPU kernels (numba) for the pixel volume and the correlation, used when numba is installed.

Optional dependency (`pip install "pvd[cpu]"`): without numba, `pvd.kernels.cpu` keeps its eager PyTorch
formulations. Each kernel is compiled once per dtype (float32, float64) and cached on disk by numba. Work is
split into bands (image rows, or channels) across `torch.get_num_threads()` Python threads, as numba releases
the GIL; a band never writes where another one does.

Pixel volume (`pixel_volume`): image, fill (B, 3 or 1, H, W), flow (B, 2, H, W) pixels -> (B, k*k, H, W),
channel (i + h) k + (j + h), h = k // 2; differentiable w.r.t. image and fill. The whole op, as the Triton
kernel does it: one pass makes the two gray planes and encodes each pixel's target (its canvas index and which
of its candidates are inside), with the reference's float operations in its order (no fused multiply-adds), so
the output is bit-identical; then one gather pass writes every output once. Every eager formulation makes
several full passes over the k*k planes (gather, mask, select). The backward gives each thread its own
gradient image and sums them.

Correlation (`correlation_of_samples`): the cost volume of `pvd.kernels.cpu.correlation` on the stride-grid
samples a, b (B, C, Ho, Wo) of f1 and f2 -> (B, D*D, Ho, Wo), D = 2d + 1: the mean over channels of a * (b
shifted by the displacement, zero outside). For each image row, each (channel block, displacement) pair is one
multiply-add loop along the row (left to LLVM to vectorise) into the row's D*D accumulator rows, a contiguous
block that stays in L1 while the channels stream through, four channels per pass. Forward bands are image rows,
backward bands channels. Measured against alternatives on the development CPU: flat row chunks sized for L2
were slower forward and no faster backward; tiled batched matmuls (the eager fallback) were 1.3-2.5x slower at
the stride-1 levels; accumulating in the output's own rows was 3-5x slower at 32x32 and 64x64 (see
`_correlate`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from . import reference

try:
    import numba
except ImportError:  # optional: pvd.kernels.cpu falls back to its eager PyTorch formulation
    numba = None

AVAILABLE = numba is not None
MIN_ROWS_PER_THREAD = 32  # pixel volume: smaller row bands are not worth a thread
MIN_CHANNELS_PER_THREAD = 8  # correlation backward
MAX_KERNEL_SIZE = 15  # pixel volume: the 2k bits of `_prepare`'s code fit an int32


def compiled(function):
    # fastmath "contract" only: fused multiply-adds, no reassociation and no assumptions about NaN or inf.
    return numba.njit(cache=True, nogil=True, fastmath={"contract"})(function) if AVAILABLE else function


def _compiled_exact(function):
    # IEEE arithmetic as written (no fused multiply-adds): for values that must equal PyTorch's bit for bit.
    return numba.njit(cache=True, nogil=True)(function) if AVAILABLE else function


@_compiled_exact
def _prepare(image, fill, flow, gray_weights, positions, kernel_size, canvas, gray_fill, base, code):
    """One pass over the pixels: gray(image) into the canvas interior (its 2h margins stay 0), gray(fill), and
    each pixel q's target encoded: base[q], the flat canvas index of trunc(q + flow[q]) (clamped to
    [-h, size - 1 + h], where every border decision stays the same; a non-finite component takes -h, whose
    candidates are all outside); code[q], bit (i + h) set where target_x + i lies in [1, W - 2] and bit
    (k + j + h) where target_y + j lies in [1, H - 2], i, j in [-h, h].

    The float operations are the reference's, in its order and dtype (gray = w_r r + w_g g + w_b b, target =
    position + flow), compiled without contraction into fused multiply-adds: bit-identical values."""
    batch, _, height, width = flow.shape
    half = kernel_size // 2
    margin = 2 * half
    canvas_width = canvas.shape[2]
    low, x_high, y_high = -half - 2.0, width + half + 2.0, height + half + 2.0
    w_r, w_g, w_b = gray_weights[0], gray_weights[1], gray_weights[2]
    for b in range(batch):
        for y in range(height):
            canvas_row, gray_fill_row = canvas[b, y + margin], gray_fill[b, y]
            flow_x_row, flow_y_row, base_row, code_row = flow[b, 0, y], flow[b, 1, y], base[b, y], code[b, y]
            if image.shape[1] == 3:
                red, green, blue = image[b, 0, y], image[b, 1, y], image[b, 2, y]
                for x in range(width):
                    canvas_row[x + margin] = w_r * red[x] + w_g * green[x] + w_b * blue[x]
            else:
                canvas_row[margin:margin + width] = image[b, 0, y]
            if fill.shape[1] == 3:
                red, green, blue = fill[b, 0, y], fill[b, 1, y], fill[b, 2, y]
                for x in range(width):
                    gray_fill_row[x] = w_r * red[x] + w_g * green[x] + w_b * blue[x]
            else:
                gray_fill_row[:] = fill[b, 0, y]
            position_y = positions[y]
            for x in range(width):
                target_x, target_y = positions[x] + flow_x_row[x], position_y + flow_y_row[x]
                tx = min(max(int(min(max(target_x, low), x_high)), -half), width - 1 + half) \
                    if np.isfinite(target_x) else -half
                ty = min(max(int(min(max(target_y, low), y_high)), -half), height - 1 + half) \
                    if np.isfinite(target_y) else -half
                base_row[x] = (ty + margin) * canvas_width + tx + margin
                code_row[x] = _inside_bits(tx, width, half) | (_inside_bits(ty, height, half) << kernel_size)


@_compiled_exact
def _inside_bits(target, size, half):
    """Bit (i + h) set for each i in [-h, h] with target + i in [1, size - 2] (a contiguous run of bits)."""
    first, last = max(1 - target, -half), min(size - 2 - target, half)
    return ((1 << (last - first + 1)) - 1) << (first + half) if first <= last else 0


@compiled
def _gather(canvas, gray_fill, base, code, kernel_size, row_start, row_stop, out):
    """Rows [row_start, row_stop) of out (B, k*k, H, W). canvas: gray_image zero-padded by 2h on every side;
    base, code: `_prepare`'s.

    out[b, c, y, x], c = (i + h) k + (j + h): 0 where the neighbour q = (y - j, x - i) is off the image, else
    the gray value at q's target + (j, i) if that lies in the interior [1, W - 2] x [1, H - 2], else
    gray_fill[b, y, x]. Unsigned indices: no wrap-around checks; the value is selected, not branched on."""
    batch, height, width = gray_fill.shape
    half = kernel_size // 2
    canvas_width = canvas.shape[2]
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
                    bases, codes = base[b, source_y], code[b, source_y]
                    shift_x, shift_y, offset = i + half, kernel_size + j + half, j * canvas_width + i
                    for x in range(x_start, x_stop):
                        q = np.uintp(x - i)
                        inside = (codes[q] >> shift_x) & (codes[q] >> shift_y) & 1
                        value = flat[np.uintp(bases[q] + offset)]
                        row[np.uintp(x)] = value if inside else fill_row[np.uintp(x)]


@compiled
def _scatter(grad_out, base, code, kernel_size, row_start, row_stop, grad_canvas, grad_fill):
    """The adjoint of `_gather` for output rows [row_start, row_stop): each gradient value is added where its
    output value was read (grad_canvas, padded like the canvas, or grad_fill)."""
    batch, height, width = grad_fill.shape
    half = kernel_size // 2
    canvas_width = grad_canvas.shape[2]
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
                    bases, codes = base[b, source_y], code[b, source_y]
                    shift_x, shift_y, offset = i + half, kernel_size + j + half, j * canvas_width + i
                    for x in range(x_start, x_stop):
                        q = np.uintp(x - i)
                        if (codes[q] >> shift_x) & (codes[q] >> shift_y) & 1:
                            flat[np.uintp(bases[q] + offset)] += row[np.uintp(x)]
                        else:
                            fill_row[np.uintp(x)] += row[np.uintp(x)]


_POOL: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):  # a forked child (e.g. a DataLoader worker) has none of the pools' threads
    os.register_at_fork(after_in_child=_POOL.clear)


def bands(length: int, minimum: int) -> list[tuple[int, int]]:
    """[start, stop) bands covering range(length), one per thread (torch.get_num_threads()), each at least
    `minimum` long (fewer bands where length is short)."""
    count = max(1, min(torch.get_num_threads(), length // minimum))
    edges = [length * n // count for n in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _row_bands(height: int) -> list[tuple[int, int]]:
    return bands(height, MIN_ROWS_PER_THREAD)


def run_bands(function, calls: list[tuple]) -> None:
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
    """image (B, 3 or 1, H, W), fill (B, 3 or 1, H, W), flow (B, 2, H, W), one float dtype -> (B, k*k, H, W)."""

    @staticmethod
    def forward(ctx, image, fill, flow, kernel_size):
        batch, _, height, width = flow.shape
        margin = 2 * (kernel_size // 2)
        canvas = flow.new_zeros(batch, height + 2 * margin, width + 2 * margin)
        gray_fill = flow.new_empty(batch, height, width)
        base = torch.empty(batch, height, width, dtype=torch.int32)
        code = torch.empty_like(base)
        gray_weights = flow.new_tensor(reference.GRAY_WEIGHTS)
        positions = torch.arange(max(height, width), dtype=flow.dtype)
        _prepare(*(_array(t) for t in (image, fill, flow, gray_weights, positions)), kernel_size,
                 *(t.numpy() for t in (canvas, gray_fill, base, code)))
        out = flow.new_empty(batch, kernel_size * kernel_size, height, width)
        arrays = [t.numpy() for t in (canvas, gray_fill, base, code)]
        run_bands(_gather, [(*arrays, kernel_size, start, stop, out.numpy()) for start, stop in _row_bands(height)])
        ctx.save_for_backward(base, code, gray_weights)
        ctx.kernel_size, ctx.canvas_shape = kernel_size, canvas.shape
        ctx.channels = image.shape[1], fill.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        base, code, gray_weights = ctx.saved_tensors
        row_bands = _row_bands(base.shape[1])
        grad_canvases = [grad_out.new_zeros(ctx.canvas_shape) for _ in row_bands]  # one per thread: no races
        grad_gray_fill = grad_out.new_zeros(base.shape)
        arrays = (_array(grad_out), base.numpy(), code.numpy(), ctx.kernel_size)
        run_bands(_scatter, [(*arrays, start, stop, grad_canvas.numpy(), grad_gray_fill.numpy())
                             for (start, stop), grad_canvas in zip(row_bands, grad_canvases)])
        grad_canvas = grad_canvases[0]
        for other in grad_canvases[1:]:
            grad_canvas += other
        margin = 2 * (ctx.kernel_size // 2)
        grad_gray_image = grad_canvas[:, margin:grad_canvas.shape[1] - margin, margin:grad_canvas.shape[2] - margin]
        return (_gray_adjoint(grad_gray_image, ctx.channels[0], gray_weights),
                _gray_adjoint(grad_gray_fill, ctx.channels[1], gray_weights), None, None)


def _gray_adjoint(grad_gray: torch.Tensor, channels: int, gray_weights: torch.Tensor) -> torch.Tensor:
    """(B, H, W) gradient of the gray plane -> (B, channels, H, W) gradient of the image it was made from."""
    grad_gray = grad_gray.unsqueeze(1)
    return grad_gray * gray_weights.view(1, 3, 1, 1) if channels == 3 else grad_gray.contiguous()


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def pixels_last(tensor: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> its (B, H, W, C) view, copied only where that view is not contiguous (channels_last
    tensors are not copied): for the kernels that read each pixel's channels as one contiguous vector."""
    return tensor.detach().permute(0, 2, 3, 1).contiguous()


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """See the module docstring: CPU tensors of one dtype, float32 or float64; kernel_size <= MAX_KERNEL_SIZE."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native needs numba (pip install 'pvd[cpu]')")
    if kernel_size > MAX_KERNEL_SIZE:
        raise ValueError(f"kernel_size {kernel_size} > {MAX_KERNEL_SIZE}: use pvd.kernels.cpu.pixel_volume")
    return _PixelVolume.apply(image, fill, flow.detach(), kernel_size)


# --------------------------------------------------------------------------------------------- correlation


CHANNEL_BLOCK = 4  # correlation forward: channels per pass over the accumulator rows (the loop is written out for 4)


@compiled
def _correlate(a, g, max_displacement, row_start, row_stop, out):
    """out[b, dy, dx, y, x] = mean over channels of a[b, c, y, x] * g[b, c, y + dy, x + dx] for image rows
    [row_start, row_stop). a (B, C, Ho, Wo); g (B, C, Ho + 2d, Wo + 2d); out (B, D, D, Ho, Wo), written once.

    The D*D rows of image row y accumulate in a contiguous scratch block (D, D, Wo), which stays in L1, and are
    scaled by 1 / C into out at the end: out's own rows lie Ho*Wo apart, which for power-of-two sizes maps them
    all onto the same L1 sets (3-5x slower at 32x32 and 64x64). Each pass over the block adds CHANNEL_BLOCK
    channels (pairwise), so the block is loaded and stored once per CHANNEL_BLOCK channels, not per channel."""
    batch, channels, _, width = a.shape
    size = 2 * max_displacement + 1
    scale = 1.0 / channels
    block = np.empty((size, size, width), dtype=a.dtype)
    for b in range(batch):
        for y in range(row_start, row_stop):
            block[:] = 0
            c = 0
            while c + CHANNEL_BLOCK <= channels:
                a0, a1, a2, a3 = a[b, c, y], a[b, c + 1, y], a[b, c + 2, y], a[b, c + 3, y]
                for dy in range(size):
                    g0, g1, g2, g3 = g[b, c, y + dy], g[b, c + 1, y + dy], g[b, c + 2, y + dy], g[b, c + 3, y + dy]
                    for dx in range(size):
                        row = block[dy, dx]
                        for x in range(width):
                            row[x] += ((a0[x] * g0[x + dx] + a1[x] * g1[x + dx])
                                       + (a2[x] * g2[x + dx] + a3[x] * g3[x + dx]))
                c += CHANNEL_BLOCK
            for c in range(c, channels):
                a0 = a[b, c, y]
                for dy in range(size):
                    g0 = g[b, c, y + dy]
                    for dx in range(size):
                        row = block[dy, dx]
                        for x in range(width):
                            row[x] += a0[x] * g0[x + dx]
            for dy in range(size):
                for dx in range(size):
                    row, out_row = block[dy, dx], out[b, dy, dx, y]
                    for x in range(width):
                        out_row[x] = row[x] * scale


@compiled
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
        run_bands(_correlate, [(*arrays, start, stop, out_array) for start, stop in bands(height, 1)])
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
        run_bands(_correlate_backward, [(*arrays, start, stop, grad_a.numpy(), grad_g.numpy())
                                        for start, stop in bands(channels, MIN_CHANNELS_PER_THREAD)])
        return grad_a, grad_g, None


def correlation_of_samples(a: torch.Tensor, b: torch.Tensor, max_displacement: int) -> torch.Tensor:
    """See the module docstring: a, b (B, C, Ho, Wo) the stride-grid samples of f1 and f2, CPU tensors of one
    dtype, float32 or float64 -> (B, D*D, Ho, Wo)."""
    if not AVAILABLE:
        raise RuntimeError("pvd.kernels.cpu_native needs numba (pip install 'pvd[cpu]')")
    d = max_displacement
    return _Correlation.apply(a.contiguous(), F.pad(b, (d, d, d, d)), d)
