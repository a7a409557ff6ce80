"""Kernel benchmark: correlation, warp and pixel volume, forward and forward+backward, at the sizes PVDNet uses.

    python bench/kernels.py [--ops correlation warp pixel_volume] [--modes fwd fwd+bwd] [--quick | --full]
                            [--dtype float32] [--providers ...] [--csv bench/results/kernels.csv] [--no-csv]
                            [--label TEXT]
                            [--time-limit SECONDS] [--dry-run]

Sizes (batch 1): correlation and warp at every LiteFlowNet pyramid level of a 1280x720 pair -- level 2: 64 ch
at 640x360 (correlation stride 2), level 3: 64 ch at 320x180 (stride 2), levels 4-6: 96/128/192 ch at 160x90,
80x45, 40x23 (stride 1); max displacement 3. Pixel volume: one 1280x720 frame, 3-channel image and fill, 5x5.
`--quick` divides every height and width by QUICK_DIVISOR (the default on CPU). Flows are Gaussian, sigma
FLOW_SIGMA_PX pixels.

Providers: `pvd` (the Triton op; GPU only; for correlation every kernel design of pvd.kernels.correlation side by
side, rows labelled `pvd[tiled]` and `pvd[legacy]`), `cpu` (pvd.kernels.cpu, the CPU fallback), `reference` (pvd.kernels.reference), `grid_sample` (warp
through F.grid_sample on the normalised grid, as the original PVDNet does), `original_loop` (pixel volume: a port of the
original algorithm, 25 nearest-neighbour grid_sample lookups with zero-padded shifted masks). Every provider's
forward output is checked against `reference` before it is timed (column `check`).

GPU: `triton.testing.do_bench`, median ms (L2 flushed between runs). CPU: time.perf_counter median; only the
reference and baseline providers run and the rows say "CPU" in the device column. GB/s counts the minimal bytes
moved (each input element read once, each output written once; see `*_bytes` below); % of peak uses the data
sheet bandwidth of the GPU (bench/_env.py; columns peak_gbps, "unknown" for a GPU not in the table, and
pct_peak). Rows are appended to bench/results/kernels.csv after each case, so an interrupted run keeps them.

`--time-limit`: cases start only while time is left (bench/_budget.py). `--dry-run` (bench/gpu_check.py): tiny
sizes and channel counts, one timed run per measurement; on CPU under TRITON_INTERPRET=1 the pvd provider then
runs in the interpreter (a functional check, timings meaningless).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _startup  # noqa: F401 - before torch: the pvd CLI's process defaults
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import TimeLimit, add_time_limit_argument  # noqa: E402
from _env import (  # noqa: E402
    PATH_CPU_REFERENCE,
    PATH_INTERPRETER,
    append_rows,
    describe_environment,
    env_columns,
    print_banner,
    text_table,
)

from pvd.kernels import correlation, cpu, pixel_volume, reference, warp  # noqa: E402

correlation_module = importlib.import_module("pvd.kernels.correlation")

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "kernels.csv"
OPS = ("correlation", "warp", "pixel_volume")
MODES = ("fwd", "fwd+bwd")
PROVIDERS = ("pvd", "cpu", "reference", "grid_sample", "original_loop")
# Speed-ups are printed against these two providers.
REFERENCE_PROVIDER = "reference"
ORIGINAL_BASELINE = {"correlation": "reference", "warp": "grid_sample", "pixel_volume": "original_loop"}

FRAME_WIDTH, FRAME_HEIGHT = 1280, 720
# LiteFlowNet pyramid levels of a 1280x720 pair: (level, channels, width, height, correlation stride).
PYRAMID_LEVELS = ((2, 64, 640, 360, 2), (3, 64, 320, 180, 2), (4, 96, 160, 90, 1), (5, 128, 80, 45, 1),
                  (6, 192, 40, 23, 1))
MAX_DISPLACEMENT = 3
PIXEL_VOLUME_KERNEL = 5
AUTOCAST_DTYPE = torch.bfloat16  # PVDNet's autocast precision on the GPU
IMAGE_CHANNELS = 3
BATCH = 1
FLOW_SIGMA_PX = 4.0
QUICK_DIVISOR = 4
MIN_QUICK_SIZE = 8
# GPU timing (triton.testing.do_bench, milliseconds of warm-up and of measurement).
GPU_WARMUP_MS, GPU_REP_MS = 25, 100
# CPU timing: at least CPU_MIN_RUNS runs and CPU_MIN_SECONDS, at most CPU_MAX_RUNS runs.
CPU_MIN_RUNS, CPU_MAX_RUNS, CPU_MIN_SECONDS = 3, 20, 0.3
CPU_WARMUP_RUNS = 1
CPU_THREADS = 1
# Forward check against the reference: |a - b| <= atol * max(1, max|reference|) + rtol * |reference|.
CHECK_TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float64: (1e-10, 1e-10),
                   torch.float16: (2e-2, 1e-2), torch.bfloat16: (5e-2, 2e-2)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# --dry-run: a stride-2 and a stride-1 level and a frame, tiny, with a smaller displacement range and pixel-volume
# kernel (the interpreter's time grows with them); every provider and mode still runs.
DRY_RUN_LEVELS = ((2, 4, 20, 12, 2), (6, 8, 7, 5, 1))
DRY_RUN_FRAME = (24, 16)  # width, height
DRY_RUN_MAX_DISPLACEMENT = 1
DRY_RUN_PIXEL_VOLUME_KERNEL = 3
# A case starts only when at least this many seconds of --time-limit are left.
CASE_RESERVE_S = 2.0


# ---------------------------------------------------------------------------------------------------------------
# Baselines written after the original PVDNet code's algorithms.

_BASE_GRIDS: dict[tuple, torch.Tensor] = {}


def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, H, W) pixel coordinates x then y, cached per size as the original code caches its grid."""
    key = (height, width, device, dtype)
    if key not in _BASE_GRIDS:
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing="ij")
        _BASE_GRIDS[key] = torch.stack((xs, ys)).unsqueeze(0)
    return _BASE_GRIDS[key]


def _normalised(x: torch.Tensor, y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates (B, H, W) -> grid_sample grid (B, H, W, 2) in [-1, 1] (align_corners=True)."""
    return torch.stack((2.0 * x / (width - 1) - 1.0, 2.0 * y / (height - 1) - 1.0), dim=-1)


def grid_sample_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp via F.grid_sample (bilinear, zero padding, align_corners=True) on the normalised grid."""
    _, _, height, width = x.shape
    target = _base_grid(height, width, flow.device, flow.dtype) + flow
    grid = _normalised(target[:, 0], target[:, 1], height, width)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _shift_zero_padded(plane: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """shifted[..., y, x] = plane[..., y - dy, x - dx], zero outside; |dy|, |dx| <= pad. plane: (B, 1, H, W)."""
    height, width = plane.shape[-2:]
    padded = F.pad(plane, (pad, pad, pad, pad))
    return padded[..., pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def original_loop_pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor,
                               kernel_size: int | None = None) -> torch.Tensor:
    """The original PVDNet pixel-volume algorithm: one pass per offset (k*k passes), in plain PyTorch ops.

    image, fill: (B, 3, H, W); flow: (B, 2, H, W) pixels. Returns (B, k*k, H, W), channel (i+h)*k + (j+h).
    Per offset (i, j): integer targets trunc(grid + flow) + (i, j), clamped into the image, looked up with a
    nearest-neighbour grid_sample on normalised coordinates; targets outside [1, W-2] x [1, H-2] take the fill;
    value and mask are then shifted by (j, i) with zero padding (0 where the neighbour is off the image).
    """
    kernel_size = PIXEL_VOLUME_KERNEL if kernel_size is None else kernel_size  # read at call time (--dry-run)
    _, _, height, width = flow.shape
    half = kernel_size // 2
    red, green, blue = reference.GRAY_WEIGHTS
    gray_image = red * image[:, 0:1] + green * image[:, 1:2] + blue * image[:, 2:3]
    gray_fill = red * fill[:, 0:1] + green * fill[:, 1:2] + blue * fill[:, 2:3]
    target = _base_grid(height, width, flow.device, flow.dtype) + flow
    base_x = target[:, 0].to(torch.int32)  # rounds toward zero
    base_y = target[:, 1].to(torch.int32)
    planes = []
    for i in range(-half, half + 1):
        for j in range(-half, half + 1):
            x_unclamped, y_unclamped = base_x + i, base_y + j
            x = x_unclamped.clamp(0, width - 1).to(image.dtype)
            y = y_unclamped.clamp(0, height - 1).to(image.dtype)
            candidate = F.grid_sample(gray_image, _normalised(x, y, height, width), mode="nearest",
                                      padding_mode="zeros", align_corners=True)
            use_fill = ((x_unclamped < 1) | (x_unclamped > width - 2) | (y_unclamped < 1) | (y_unclamped > height - 2))
            use_fill = use_fill.unsqueeze(1).to(image.dtype)
            candidate = _shift_zero_padded(candidate, j, i, half)
            use_fill = _shift_zero_padded(use_fill, j, i, half)
            planes.append(candidate * (1 - use_fill) + gray_fill * use_fill)
    return torch.cat(planes, dim=1)


# ---------------------------------------------------------------------------------------------------------------
# Cases: inputs, providers and byte counts.

@dataclass
class Case:
    """One op at one size: how to make its inputs, which providers compute it, and the bytes it must move."""

    op: str
    size: str
    make_inputs: Callable[[torch.device, torch.dtype], dict]
    providers: dict[str, Callable[..., torch.Tensor]]
    differentiable: tuple[str, ...]
    forward_elements: int
    backward_elements: int
    notes: dict = field(default_factory=dict)
    # The case makes its inputs in fixed dtypes (not --dtype) and counts forward/backward_elements in bytes.
    counts_bytes: bool = False


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)


def _scaled(width: int, height: int, quick: bool) -> tuple[int, int]:
    if not quick:
        return width, height
    return max(width // QUICK_DIVISOR, MIN_QUICK_SIZE), max(height // QUICK_DIVISOR, MIN_QUICK_SIZE)


def _flow(batch, height, width, device, dtype, generator) -> torch.Tensor:
    return (FLOW_SIGMA_PX * torch.randn(batch, 2, height, width, generator=generator)).to(device, dtype)


def provider_base(name: str) -> str:
    """'pvd[tiled]' -> 'pvd': the provider a design-labelled provider belongs to."""
    return name.split("[", 1)[0]


def _correlation_with_design(design: str) -> Callable[..., torch.Tensor]:
    """pvd's correlation run with PVD_CORRELATION_KERNEL=design (the backward keeps the forward's design)."""
    def run(f1, f2, stride):
        previous = os.environ.get(correlation_module.KERNEL_ENV)
        os.environ[correlation_module.KERNEL_ENV] = design
        try:
            return correlation(f1, f2, MAX_DISPLACEMENT, stride)
        finally:
            if previous is None:
                del os.environ[correlation_module.KERNEL_ENV]
            else:
                os.environ[correlation_module.KERNEL_ENV] = previous
    return run


def correlation_cases(quick: bool) -> list[Case]:
    cases = []
    displacements = (2 * MAX_DISPLACEMENT + 1) ** 2
    for level, channels, full_width, full_height, stride in PYRAMID_LEVELS:
        width, height = _scaled(full_width, full_height, quick)
        out_h, out_w = _out_size(height, stride), _out_size(width, stride)

        def make(device, dtype, channels=channels, height=height, width=width, level=level):
            generator = torch.Generator().manual_seed(level)
            return {name: torch.randn(BATCH, channels, height, width, generator=generator).to(device, dtype)
                    for name in ("f1", "f2")}

        # Forward reads the f1 and f2 samples on the stride grid, writes the cost volume; backward reads the
        # cost-volume gradient and the samples again, writes both full-size feature gradients.
        forward = BATCH * (2 * channels * out_h * out_w + displacements * out_h * out_w)
        backward = BATCH * (displacements * out_h * out_w + 2 * channels * out_h * out_w + 2 * channels * height * width)
        cases.append(Case(
            "correlation", f"L{level} {BATCH}x{channels}x{height}x{width} s{stride}", make,
            {**{f"pvd[{name}]": lambda f1, f2, s=stride, run=_correlation_with_design(name): run(f1, f2, s)
                for name in correlation_module.KERNEL_DESIGNS},
             "reference": lambda f1, f2, s=stride: reference.correlation(f1, f2, MAX_DISPLACEMENT, s)},
            ("f1", "f2"), forward, backward))
    return cases


def warp_cases(quick: bool) -> list[Case]:
    cases = []
    for level, channels, full_width, full_height, _ in PYRAMID_LEVELS:
        width, height = _scaled(full_width, full_height, quick)

        def make(device, dtype, channels=channels, height=height, width=width, level=level):
            generator = torch.Generator().manual_seed(100 + level)
            return {"x": torch.randn(BATCH, channels, height, width, generator=generator).to(device, dtype),
                    "flow": _flow(BATCH, height, width, device, dtype, generator)}

        pixels = BATCH * height * width
        # Forward: read x and flow, write out. Backward: read grad_out, x and flow, write grad_x and grad_flow.
        forward = pixels * (2 * channels + 2)
        backward = pixels * (3 * channels + 4)
        cases.append(Case(
            "warp", f"L{level} {BATCH}x{channels}x{height}x{width}", make,
            {"pvd": warp, "reference": reference.warp, "grid_sample": grid_sample_warp},
            ("x", "flow"), forward, backward))
    return cases


def pixel_volume_cases(quick: bool) -> list[Case]:
    width, height = _scaled(FRAME_WIDTH, FRAME_HEIGHT, quick)

    def make(device, dtype):
        generator = torch.Generator().manual_seed(7)
        return {"image": (2 * torch.rand(BATCH, IMAGE_CHANNELS, height, width, generator=generator) - 1).to(device, dtype),
                "flow": _flow(BATCH, height, width, device, dtype, generator),
                "fill": (2 * torch.rand(BATCH, IMAGE_CHANNELS, height, width, generator=generator) - 1).to(device, dtype)}

    pixels = BATCH * height * width
    volume = PIXEL_VOLUME_KERNEL ** 2
    # Forward: read image, fill and flow, write the volume. Backward: read the volume gradient and the flow,
    # write the image and fill gradients.
    forward = pixels * (2 * IMAGE_CHANNELS + 2 + volume)
    backward = pixels * (volume + 2 + 2 * IMAGE_CHANNELS)
    plain = Case(
        "pixel_volume", f"{BATCH}x{IMAGE_CHANNELS}x{height}x{width} k{PIXEL_VOLUME_KERNEL}", make,
        {"pvd": lambda image, flow, fill: pixel_volume(image, flow, fill, PIXEL_VOLUME_KERNEL),
         "reference": lambda image, flow, fill: reference.pixel_volume(image, flow, fill, PIXEL_VOLUME_KERNEL),
         "original_loop": original_loop_pixel_volume},
        ("image", "fill"), forward, backward)

    # What PVDNet's first convolution consumes under autocast: float32 frames and flow in, the volume out in
    # bfloat16 channels_last. pvd emits it directly; the others pay the cast and layout copy after.
    def make_float32(device, dtype):
        return make(device, torch.float32)

    to_network = dict(out_dtype=AUTOCAST_DTYPE, channels_last=True)

    def cast_for_network(volume: torch.Tensor) -> torch.Tensor:
        return volume.to(AUTOCAST_DTYPE).contiguous(memory_format=torch.channels_last)

    in_bytes = torch.empty((), dtype=torch.float32).element_size() * pixels * (2 * IMAGE_CHANNELS + 2)
    out_bytes = torch.empty((), dtype=AUTOCAST_DTYPE).element_size() * pixels * volume
    grads_bytes = torch.empty((), dtype=torch.float32).element_size() * pixels * (2 + 2 * IMAGE_CHANNELS)
    autocast = Case(
        "pixel_volume", f"{BATCH}x{IMAGE_CHANNELS}x{height}x{width} k{PIXEL_VOLUME_KERNEL} -> bf16 channels_last",
        make_float32,
        {"pvd": lambda image, flow, fill: pixel_volume(image, flow, fill, PIXEL_VOLUME_KERNEL, **to_network),
         "reference": lambda image, flow, fill: reference.pixel_volume(image, flow, fill, PIXEL_VOLUME_KERNEL,
                                                                       **to_network),
         "original_loop": lambda image, flow, fill: cast_for_network(original_loop_pixel_volume(image, flow, fill))},
        ("image", "fill"), in_bytes + out_bytes, out_bytes + grads_bytes, counts_bytes=True)
    return [plain, autocast]


CASE_BUILDERS = {"correlation": correlation_cases, "warp": warp_cases, "pixel_volume": pixel_volume_cases}
# Provider `cpu`: the fast CPU ops of pvd.kernels.cpu (what the public ops run on CPU outside the interpreter).
CPU_OPS = {"correlation": lambda f1, f2, s: cpu.correlation(f1, f2, MAX_DISPLACEMENT, s),
           "warp": lambda x, flow: cpu.warp(x, flow),
           "pixel_volume": lambda image, flow, fill: cpu.pixel_volume(image, flow, fill, PIXEL_VOLUME_KERNEL)}


def with_cpu_provider(case: Case) -> Case:
    """`case` with the `cpu` provider added (the correlation's stride is read off the case's size label)."""
    op = CPU_OPS[case.op]
    if case.op == "correlation":
        stride = int(case.size.rsplit(" s", 1)[1])
        case.providers["cpu"] = lambda f1, f2, s=stride: op(f1, f2, s)
    else:
        case.providers["cpu"] = op
    return case


# ---------------------------------------------------------------------------------------------------------------
# Timing.

def _time_gpu(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=GPU_WARMUP_MS, rep=GPU_REP_MS, grad_to_none=grad_to_none,
                                         return_mode="median"))


def _time_cpu(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None) -> float:
    for _ in range(CPU_WARMUP_RUNS):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < CPU_MAX_RUNS and (len(times) < CPU_MIN_RUNS or time.perf_counter() - start < CPU_MIN_SECONDS):
        for tensor in grad_to_none or ():
            tensor.grad = None
        tick = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tick) * 1e3)
    return statistics.median(times)


def _check(output: torch.Tensor, expected: torch.Tensor) -> tuple[float, bool]:
    """(max |output - expected|, within CHECK_TOLERANCE)."""
    atol, rtol = CHECK_TOLERANCE[expected.dtype]
    output, expected = output.detach().double(), expected.detach().double()
    error = (output - expected).abs()
    scale = max(1.0, expected.abs().max().item())
    allowed = atol * scale + rtol * expected.abs()
    return error.max().item(), bool((error <= allowed).all().item())


@dataclass
class Measurement:
    op: str
    provider: str
    mode: str
    size: str
    median_ms: float
    gbps: float
    max_error: float
    check_ok: bool


def measure_case(case: Case, providers: list[str], modes: list[str], device: torch.device,
                 dtype: torch.dtype) -> list[Measurement]:
    """Check and time every requested provider of `case` in every mode."""
    timer = _time_gpu if device.type == "cuda" else _time_cpu
    element_bytes = 1 if case.counts_bytes else torch.empty((), dtype=dtype).element_size()
    inputs = case.make_inputs(device, dtype)
    with torch.no_grad():
        expected = case.providers[REFERENCE_PROVIDER](**inputs)
    results = []
    for provider in [name for wanted in providers for name in case.providers if provider_base(name) == wanted]:
        fn = case.providers[provider]
        with torch.no_grad():
            max_error, check_ok = _check(fn(**inputs), expected)
        for mode in modes:
            if mode == "fwd":
                def run(fn=fn, inputs=inputs):
                    with torch.no_grad():
                        return fn(**inputs)

                grads = None
                moved = case.forward_elements * element_bytes
            else:
                leaves = {name: tensor.detach().requires_grad_(name in case.differentiable)
                          for name, tensor in inputs.items()}
                grad_out = torch.randn_like(expected)

                def run(fn=fn, leaves=leaves, grad_out=grad_out):
                    fn(**leaves).backward(grad_out)

                grads = [leaves[name] for name in case.differentiable]
                moved = (case.forward_elements + case.backward_elements) * element_bytes
            median_ms = timer(run, grads)
            results.append(Measurement(case.op, provider, mode, case.size, median_ms, moved / (median_ms * 1e-3) / 1e9,
                                       max_error, check_ok))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Report.

def _speedup(results: list[Measurement], row: Measurement, baseline: str) -> str:
    base = next((r for r in results if (r.op, r.mode, r.size, r.provider) == (row.op, row.mode, row.size, baseline)),
                None)
    return f"{base.median_ms / row.median_ms:.3g}x" if base else "-"


def format_table(results: list[Measurement], peak_gbps: float | None, cpu: bool) -> str:
    header = ("op", "size", "mode", "provider", "median ms", "vs reference", "vs original", "GB/s", "% peak",
              "max|err|", "check")
    rows = [header]
    first_seen = {size: index for index, size in reversed(list(enumerate(r.size for r in results)))}
    ordered = sorted(results, key=lambda r: (OPS.index(r.op), first_seen[r.size], MODES.index(r.mode),
                                             PROVIDERS.index(provider_base(r.provider)), r.provider))
    for r in ordered:
        peak = f"{100 * r.gbps / peak_gbps:.1f}" if peak_gbps else "-"
        rows.append((r.op, r.size, r.mode, r.provider + (" (CPU)" if cpu else ""), f"{r.median_ms:.4g}",
                     _speedup(results, r, REFERENCE_PROVIDER), _speedup(results, r, ORIGINAL_BASELINE[r.op]),
                     f"{r.gbps:.4g}", peak, f"{r.max_error:.2g}", "ok" if r.check_ok else "MISMATCH"))
    return text_table(rows)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"sizes divided by {QUICK_DIVISOR} (default on CPU)")
    size.add_argument("--full", action="store_true", help="full sizes (default on GPU)")
    size.add_argument("--dry-run", action="store_true",
                      help="tiny sizes, one timed run each (the CPU dry run of scripts/gpu_check.sh)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--csv", default=str(RESULTS_CSV), help="results CSV to append to")
    parser.add_argument("--no-csv", action="store_true", help="do not write the results CSV")
    parser.add_argument("--label", default="", help="a `label` column for the rows (e.g. before / after)")
    parser.add_argument("--cpu-threads", type=int, default=CPU_THREADS,
                        help=f"torch threads on CPU (default {CPU_THREADS}: stable timings on a shared machine)")
    add_time_limit_argument(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# Hooks of bench/gpu_check.py: dry-run sizes, peak bandwidth columns, the summary line.

def _shrink_for_dry_run() -> None:
    """Swap the module's sizes for tiny ones and time each measurement once (--dry-run)."""
    global PYRAMID_LEVELS, FRAME_WIDTH, FRAME_HEIGHT, MAX_DISPLACEMENT, PIXEL_VOLUME_KERNEL
    global CPU_MIN_RUNS, CPU_MAX_RUNS, CPU_MIN_SECONDS, CPU_WARMUP_RUNS, GPU_WARMUP_MS, GPU_REP_MS
    PYRAMID_LEVELS = DRY_RUN_LEVELS
    FRAME_WIDTH, FRAME_HEIGHT = DRY_RUN_FRAME
    MAX_DISPLACEMENT, PIXEL_VOLUME_KERNEL = DRY_RUN_MAX_DISPLACEMENT, DRY_RUN_PIXEL_VOLUME_KERNEL
    CPU_MIN_RUNS = CPU_MAX_RUNS = 1
    CPU_MIN_SECONDS, CPU_WARMUP_RUNS = 0.0, 0
    GPU_WARMUP_MS, GPU_REP_MS = 1, 1


def peak_columns(gbps: float, env: dict) -> dict:
    """peak_gbps (data sheet; 'unknown' for a GPU not in bench/_env.py's table, '' on CPU) and pct_peak."""
    peak_gbps = env["peak_gbps"]
    if peak_gbps is None:
        return {"peak_gbps": "unknown" if env["device_type"] == "cuda" else "", "pct_peak": ""}
    return {"peak_gbps": f"{peak_gbps:.0f}", "pct_peak": f"{100 * gbps / peak_gbps:.3g}"}


def summary_line(results: list[Measurement], peak_gbps: float | None) -> str:
    """One line for bench/gpu_check.py: per op and pvd provider (e.g. each correlation design, 'pvd[tiled]'), the
    geometric-mean speed-up over the original code's algorithm across sizes and modes; pvd's best GB/s."""
    parts = []
    for op in OPS:
        pvd_providers = [r.provider for r in results if r.op == op and r.provider.split("[")[0] == "pvd"]
        for provider in dict.fromkeys(pvd_providers):
            ratios = []
            for r in results:
                if (r.op, r.provider) != (op, provider):
                    continue
                base = next((b for b in results if (b.op, b.mode, b.size, b.provider) ==
                             (op, r.mode, r.size, ORIGINAL_BASELINE[op])), None)
                if base is not None:
                    ratios.append(base.median_ms / r.median_ms)
            if ratios:
                mean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
                parts.append(f"{op} {provider} {mean:.3g}x vs {ORIGINAL_BASELINE[op]}")
    pvd_rows = [r for r in results if r.provider.split("[")[0] == "pvd"]
    if pvd_rows:
        best = max(pvd_rows, key=lambda r: r.gbps)
        peak = f" = {100 * best.gbps / peak_gbps:.0f}% of {peak_gbps:.0f}" if peak_gbps else ""
        parts.append(f"best {best.gbps:.4g} GB/s{peak} ({best.op} {best.provider} {best.mode} {best.size})")
    return "summary: " + ("; ".join(parts) if parts else "no pvd measurement")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    on_gpu = torch.cuda.is_available()
    interpreting = not on_gpu and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = DTYPES[args.dtype]
    if args.dry_run:
        _shrink_for_dry_run()
    quick = not args.dry_run and (args.quick or (not on_gpu and not args.full))
    if not on_gpu:
        if args.cpu_threads < 1:
            raise ValueError(f"--cpu-threads must be >= 1, got {args.cpu_threads}")
        torch.set_num_threads(args.cpu_threads)
    providers = list(args.providers)
    pvd_in_interpreter = interpreting and "pvd" in providers
    if on_gpu:
        env = describe_environment()
    else:
        env = describe_environment(path=PATH_INTERPRETER if pvd_in_interpreter else PATH_CPU_REFERENCE)
    print_banner(env)
    if not on_gpu and "pvd" in providers and not interpreting:
        providers.remove("pvd")
        print("GPU rows were not measured: no CUDA device, so the pvd Triton ops are skipped "
              "(only the reference and baseline providers run, on the CPU).")
    if pvd_in_interpreter:
        print("pvd provider: Triton interpreter on the CPU (TRITON_INTERPRET=1) - a functional check, its timings "
              "are meaningless")
    sizes = "dry run (tiny)" if args.dry_run else (f"quick (H and W / {QUICK_DIVISOR})" if quick else "full")
    print(f"sizes: {sizes}, dtype {args.dtype}, "
          f"timing: {'triton.testing.do_bench median' if on_gpu else 'time.perf_counter median (CPU)'}")

    limit = TimeLimit(args.time_limit)
    results: list[Measurement] = []
    start = time.perf_counter()
    for op in args.ops:
        for case in map(with_cpu_provider, CASE_BUILDERS[op](quick)):
            if not limit.allows(CASE_RESERVE_S):
                limit.skip(f"{case.op} {case.size}")
                continue
            measured = measure_case(case, providers, args.modes, device, dtype)
            if on_gpu:
                torch.cuda.empty_cache()  # the case's inputs are freed by now
            for r in measured:
                print(f"  {r.op:13s} {r.size:28s} {r.mode:8s} {r.provider:14s} {r.median_ms:10.4g} ms", flush=True)
            results.extend(measured)
            if measured and not args.no_csv:  # written per case: an interrupted run keeps what it measured
                columns = env_columns(env)
                append_rows(args.csv, [
                    {"op": r.op, "provider": r.provider, "mode": r.mode, "size": r.size,
                     "median_ms": f"{r.median_ms:.5g}", "gbps": f"{r.gbps:.4g}", **columns, "dtype": args.dtype,
                     **peak_columns(r.gbps, env), **({"label": args.label} if args.label else {})}
                    for r in measured])
    print()
    print(format_table(results, env["peak_gbps"], cpu=not on_gpu))
    if on_gpu and env["peak_gbps"] is None:
        print(f"peak bandwidth of {env['device']}: unknown (not in bench/_env.py's table), so no % of peak")
    print(f"\n{len(results)} measurements in {time.perf_counter() - start:.1f} s on {env['device']} ({env['path']})")
    print(summary_line(results, env["peak_gbps"]))
    mismatches = [r for r in results if not r.check_ok]
    for r in mismatches:
        print(f"MISMATCH: {r.provider} {r.op} {r.size}: max |error| {r.max_error:.3g} vs reference")
    if results and not args.no_csv:
        print(f"appended {len(results)} row(s) to {args.csv}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
