"""Tiled inference: any frame size in bounded memory.

    deblur_step_tiled(bimnet, pvdnet, prev, curr, next, deblurred_prev, tile=512, overlap=32)  # as deblur_step
    VideoDeblurrer(model, tile="auto")       # a streaming deblurrer running its steps tiled (TiledStep)
    plan = auto_plan(height, width, device)  # the tile `auto` picks, from the free memory

One step, tiled:
1. Flow: BIMNet sees the whole frame. When the frame has more than `flow_pixels` pixels (default about 720p),
   both frames are downscaled (area) to fit, and BIMNet's flow is resized back bilinearly and its values scaled
   by the size ratio (flow is in pixels). Below that the flow is exactly the untiled one.
2. Per tile (tile x tile pixels, neighbours sharing `overlap` pixels; edge tiles shifted inward so every tile has
   the full size): the pixel volume is built on the tile grown by the largest flow inside it (at most
   MAX_FLOW_MARGIN pixels) plus the kernel radius, so its candidates are those of the whole frame, then cropped
   to the tile; PVDNet deblurs the tile.
3. Tiles are blended with linear ramps across the overlaps (weights normalised to sum to one), so a seam carries
   no tile-border artefact of PVDNet's zero padding.

Exactness: steps 1-2 match the untiled step (below the flow-pixel limit, for flows under MAX_FLOW_MARGIN);
PVDNet's outputs near a tile's border differ from the untiled ones because its convolutions see zero padding
there instead of the neighbouring pixels; the ramps give those pixels little weight (measured in README).

Memory model (`auto`): peak bytes ~ FIXED_BYTES + FRAME_BYTES_PER_PIXEL x frame pixels + the larger of
BIMNET_BYTES_PER_PIXEL x BIMNet pixels and PVDNET_BYTES_PER_PIXEL x tile pixels (BIMNet's activations are freed
before the tiles run), per batch element (measured on CPU, fp32: see `bench/e2e.py tiling`).
`auto` takes the largest tile (a multiple of TILE_MULTIPLE, at most MAX_AUTO_TILE) that fits in the free memory
(CUDA: torch.cuda.mem_get_info; CPU: MemAvailable of /proc/meminfo) times MEMORY_SAFETY, or a given budget.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import kernels
from .nets import step

DEFAULT_OVERLAP = 32  # pixels shared by neighbouring tiles
TILE_MULTIPLE = 32  # tile sides are multiples of this (PVDNet needs 4; 32 keeps BIMNet-size tiles tidy)
MIN_TILE = 64
MAX_AUTO_TILE = 1024  # larger tiles save little time and cost memory
DEFAULT_FLOW_PIXELS = 1280 * 736  # BIMNet runs on at most this many pixels (720p padded to 32) before downscaling
MIN_FLOW_PIXELS = 256 * 256
MAX_FLOW_MARGIN = 256  # pixels: flows longer than this read the fill value beyond the grown tile
MEMORY_SAFETY = 0.6  # fraction of the free memory `auto` plans to use
# Peak bytes per pixel (fp32, batch 1), measured as the growth of the peak resident memory of a CPU process
# between 256x256 and 512x512 (`bench/e2e.py tiling --calibrate`): BIMNet per (padded) input pixel, pixel
# volume + PVDNet per tile pixel. Whole-frame buffers (four frames, flow, blended output and weights, decoded
# and encoded frames in flight) are counted, not measured.
FRAME_BYTES_PER_PIXEL = 100
BIMNET_BYTES_PER_PIXEL = 1450
PVDNET_BYTES_PER_PIXEL = 1850
FIXED_BYTES = 400 * 2**20  # the process: libraries, weights, allocator slack
KERNEL_RADIUS = step.PIXEL_VOLUME_KERNEL // 2


@dataclass(frozen=True)
class TilePlan:
    """tile: side in pixels (None: whole frame); overlap: pixels; flow_pixels: BIMNet's pixel limit;
    estimated_bytes: the memory model's peak for this plan."""

    tile: int | None
    overlap: int
    flow_pixels: int
    estimated_bytes: int


def estimate_peak_bytes(height: int, width: int, tile: int | None, flow_pixels: int = DEFAULT_FLOW_PIXELS,
                        batch: int = 1) -> int:
    """The memory model's peak bytes of one tiled step on a height x width frame (see the module docstring)."""
    pixels = height * width
    tile_pixels = pixels if tile is None else min(tile, height) * min(tile, width)
    networks = max(BIMNET_BYTES_PER_PIXEL * min(pixels, flow_pixels), PVDNET_BYTES_PER_PIXEL * tile_pixels)
    return FIXED_BYTES + batch * (FRAME_BYTES_PER_PIXEL * pixels + networks)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory of `device`: CUDA from the driver; CPU: MemAvailable of /proc/meminfo (else 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def auto_plan(height: int, width: int, device: torch.device | str = "cpu", overlap: int = DEFAULT_OVERLAP,
              memory_budget: int | None = None, batch: int = 1) -> TilePlan:
    """The largest tile (multiple of TILE_MULTIPLE, <= MAX_AUTO_TILE) whose modelled peak fits the budget
    (default: MEMORY_SAFETY x the device's free memory); BIMNet's pixel limit shrinks first if even the
    smallest tile does not fit. ValueError when nothing fits."""
    device = torch.device(device)
    budget = int(MEMORY_SAFETY * free_memory_bytes(device)) if memory_budget is None else int(memory_budget)
    flow_pixels = DEFAULT_FLOW_PIXELS
    while flow_pixels >= MIN_FLOW_PIXELS:
        whole = estimate_peak_bytes(height, width, None, flow_pixels, batch)
        padded = _round_up(height, step.FLOW_SIZE_MULTIPLE) * _round_up(width, step.FLOW_SIZE_MULTIPLE)
        if max(height, width) <= MAX_AUTO_TILE and padded <= flow_pixels and whole <= budget:
            return TilePlan(None, overlap, flow_pixels, whole)
        tile = min(MAX_AUTO_TILE, _round_up(max(height, width), TILE_MULTIPLE))
        while tile >= max(MIN_TILE, 2 * overlap + TILE_MULTIPLE):
            peak = estimate_peak_bytes(height, width, tile, flow_pixels, batch)
            if peak <= budget:
                return TilePlan(tile, overlap, flow_pixels, peak)
            tile -= TILE_MULTIPLE
        flow_pixels //= 2
    raise ValueError(f"a {width}x{height} frame does not fit in {budget / 2**30:.2f} GiB even with "
                     f"{MIN_TILE}-pixel tiles")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `size` with at least `overlap` shared; the last tile is
    shifted to end at `size`. One tile (start 0) when size <= tile."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool, device) -> torch.Tensor:
    """(length,) blending weights: linear from ~0 to 1 over `overlap` pixels at a ramped end, 1 elsewhere."""
    weight = torch.ones(length, device=device)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        ramp = (torch.arange(ramp_len, device=device, dtype=torch.float32) + 0.5) / ramp_len
        if ramp_start:
            weight[:ramp_len] = ramp
        if ramp_end:
            weight[length - ramp_len:] = ramp.flip(0)
    return weight


def _check_tile(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE or tile % step.DEBLUR_SIZE_MULTIPLE:
        raise ValueError(f"tile must be an integer >= {MIN_TILE} and a multiple of {step.DEBLUR_SIZE_MULTIPLE}, "
                         f"got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"tile overlap must be an integer in 0..{tile // 2 - 1} for tile {tile}, got {overlap!r}")


def estimate_flow_bounded(bimnet, curr: torch.Tensor, prev: torch.Tensor, size_policy: str = "pad",
                          flow_pixels: int = DEFAULT_FLOW_PIXELS) -> torch.Tensor:
    """`step.estimate_flow` on frames of at most `flow_pixels` pixels (BIMNet's padded size): larger frames
    are downscaled (area) first, and the flow is resized back with its values scaled by the size ratios."""
    height, width = curr.shape[-2:]
    padded = _round_up(height, step.FLOW_SIZE_MULTIPLE) * _round_up(width, step.FLOW_SIZE_MULTIPLE)
    if padded <= flow_pixels:
        return step.estimate_flow(bimnet, curr, prev, size_policy)
    scale = math.sqrt(flow_pixels / padded)
    small_h, small_w = max(1, int(height * scale)), max(1, int(width * scale))
    small = [F.interpolate(x, size=(small_h, small_w), mode="area") for x in (curr, prev)]
    flow = step.estimate_flow(bimnet, small[0], small[1], "pad")
    flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    ratios = torch.tensor([width / small_w, height / small_h], device=flow.device, dtype=flow.dtype)
    return flow * ratios.view(1, 2, 1, 1)


def _tile_pixel_volume(deblurred_prev, flow, curr, top, left, tile_h, tile_w) -> torch.Tensor:
    """The pixel volume of one tile (B, 25, tile_h, tile_w), equal to the whole frame's crop: computed on the
    tile grown by its largest flow (<= MAX_FLOW_MARGIN) plus the kernel radius, then cropped."""
    height, width = curr.shape[-2:]
    near = (slice(None), slice(None), slice(max(0, top - KERNEL_RADIUS), top + tile_h + KERNEL_RADIUS),
            slice(max(0, left - KERNEL_RADIUS), left + tile_w + KERNEL_RADIUS))
    tile_flow = flow[near]  # the flows of the tile's pixels and of their kernel neighbours
    reach = torch.nan_to_num(tile_flow.abs(), nan=0.0, posinf=float(MAX_FLOW_MARGIN)).amax()
    margin = min(MAX_FLOW_MARGIN, int(math.ceil(reach.item()))) + KERNEL_RADIUS + 1
    y0, x0 = max(0, top - margin), max(0, left - margin)
    y1, x1 = min(height, top + tile_h + margin), min(width, left + tile_w + margin)
    window = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
    volume = kernels.pixel_volume(deblurred_prev[window].contiguous(), flow[window].contiguous(),
                                  curr[window].contiguous(), kernel_size=step.PIXEL_VOLUME_KERNEL)
    return volume[..., top - y0:top - y0 + tile_h, left - x0:left - x0 + tile_w]


def deblur_step_tiled(bimnet, pvdnet, prev: torch.Tensor, curr: torch.Tensor, next: torch.Tensor,  # noqa: A002
                      deblurred_prev: torch.Tensor, size_policy: str = "pad",
                      autocast_dtype: torch.dtype | None = None, *, tile: int = 512,
                      overlap: int = DEFAULT_OVERLAP, flow_pixels: int = DEFAULT_FLOW_PIXELS) -> torch.Tensor:
    """`step.deblur_step`, tiled (same arguments, same output shape and range; see the module docstring).

    tile: tile side in pixels (>= MIN_TILE, a multiple of 4); overlap: pixels shared by neighbours, blended;
    flow_pixels: BIMNet's pixel limit before it sees a downscaled frame.
    """
    step.check_size_policy(size_policy)
    step._check_step_inputs(prev, curr, next, deblurred_prev, size_policy)
    _check_tile(tile, overlap)
    out_h, out_w = step.output_size(*curr.shape[-2:], size_policy)
    prev, curr, next, deblurred_prev = (x[..., :out_h, :out_w].float() for x in (prev, curr, next, deblurred_prev))
    flow = estimate_flow_bounded(bimnet, curr, prev, size_policy, flow_pixels)

    channels_last = step._uses_channels_last(pvdnet)
    autocast = (torch.autocast(device_type=curr.device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    output = curr.new_zeros((curr.shape[0], 3, out_h, out_w))
    total_weight = curr.new_zeros((1, 1, out_h, out_w))
    rows, cols = tile_starts(out_h, tile, overlap), tile_starts(out_w, tile, overlap)
    tile_h, tile_w = min(tile, out_h), min(tile, out_w)
    for top in rows:
        weight_y = _ramp(tile_h, overlap, top > 0, top + tile_h < out_h, curr.device)
        for left in cols:
            weight_x = _ramp(tile_w, overlap, left > 0, left + tile_w < out_w, curr.device)
            volume = _tile_pixel_volume(deblurred_prev, flow, curr, top, left, tile_h, tile_w)
            crop = (Ellipsis, slice(top, top + tile_h), slice(left, left + tile_w))
            padded_h = _round_up(tile_h, step.DEBLUR_SIZE_MULTIPLE)
            padded_w = _round_up(tile_w, step.DEBLUR_SIZE_MULTIPLE)
            net_inputs = [step._pad_bottom_right(x, padded_h, padded_w)
                          for x in (volume, prev[crop], curr[crop], next[crop])]
            if channels_last:
                net_inputs = [x.contiguous(memory_format=torch.channels_last) for x in net_inputs]
            else:
                net_inputs = [x.contiguous() for x in net_inputs]
            with autocast:
                tile_out = pvdnet(*net_inputs)
            weight = (weight_y[:, None] * weight_x[None, :])[None, None]
            output[crop] += tile_out[..., :tile_h, :tile_w].float() * weight
            total_weight[crop] += weight
            del volume, net_inputs, tile_out
    return output / total_weight


def resolve(tile, overlap: int | None, height: int, width: int, device: torch.device,
            memory_budget: int | None = None, batch: int = 1) -> TilePlan:
    """A TilePlan from the user's `tile` (int, digit string, or 'auto') and `overlap` (None: DEFAULT_OVERLAP)."""
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    if isinstance(tile, str) and tile.strip().lower() == "auto":
        return auto_plan(height, width, device, overlap, memory_budget, batch)
    if isinstance(tile, str):
        if not tile.strip().isdigit():
            raise ValueError(f"tile must be a number of pixels or 'auto', got {tile!r}")
        tile = int(tile)
    _check_tile(tile, overlap)
    return TilePlan(tile, overlap, DEFAULT_FLOW_PIXELS,
                    estimate_peak_bytes(height, width, tile, DEFAULT_FLOW_PIXELS, batch))


class TiledStep:
    """A step function with `step.deblur_step`'s signature (for `step.bound_step(..., step_function=...)`) that
    plans its tiles from the first frame's size (and re-plans on a new size): the whole-frame
    `step.deblur_step` when the plan says no tiling. tile: int, digit string or 'auto'."""

    def __init__(self, tile, overlap: int | None = None, memory_budget: int | None = None):
        self.tile, self.overlap, self.memory_budget = tile, overlap, memory_budget
        if not (isinstance(tile, str) and tile.strip().lower() == "auto"):
            resolve(tile, overlap, 1, 1, torch.device("cpu"))  # checks the options before any work
        self.plans: dict[tuple, TilePlan] = {}

    def __call__(self, bimnet, pvdnet, prev, curr, next, deblurred_prev, size_policy="pad",  # noqa: A002
                 autocast_dtype=None) -> torch.Tensor:
        key = (tuple(curr.shape), curr.device)
        if key not in self.plans:
            self.plans[key] = resolve(self.tile, self.overlap, curr.shape[-2], curr.shape[-1], curr.device,
                                      self.memory_budget, curr.shape[0])
        plan = self.plans[key]
        if plan.tile is None:
            return step.deblur_step(bimnet, pvdnet, prev, curr, next, deblurred_prev, size_policy, autocast_dtype)
        return deblur_step_tiled(bimnet, pvdnet, prev, curr, next, deblurred_prev, size_policy, autocast_dtype,
                                 tile=plan.tile, overlap=plan.overlap, flow_pixels=plan.flow_pixels)


__all__ = ["TilePlan", "auto_plan", "deblur_step_tiled", "estimate_flow_bounded", "estimate_peak_bytes",
           "free_memory_bytes", "resolve", "tile_starts", "TiledStep"]
