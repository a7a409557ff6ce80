"""Memory-traffic meter of pvd's Triton kernels, run on CPU in Triton's interpreter (no GPU needed).

    python bench/traffic.py [--ops correlation,warp,pixel_volume] [--scale N | --rows R] [--out CSV] [--no-csv]
                            [--no-pair] [--designs legacy,tiled] [--label NAME]

The figures in bench/results/traffic.csv come from `--rows 16` (about 20 minutes on a loaded 2-core CPU) and
the default `--scale 8` (about 13 minutes).

Every public op of `pvd.kernels` runs forward and backward on CPU tensors with TRITON_INTERPRET=1 while
`bench/_meter.py` records each load, store and atomic of each kernel launch. Per op and direction (all launches
of the forward, then all of the backward) it prints, as multiples of the op's *ideal* bytes:
- `req x`: requested bytes (masked-in lanes x element size);
- `L2 x`: modelled L2<->SM bytes, the sum over program instances of the distinct 32-byte sectors each touches;
- `DRAM x`: modelled DRAM bytes, the distinct 32-byte sectors the launch touches (per access kind);
- `+host x`: DRAM bytes plus the tensor passes the op's Python code runs between kernels (zero fills, casts,
  `torch.cat`; one read of each input and one write of the output each);
- `atomics/out`: atomic lanes per element of the tensors the atomics accumulate into.
The model assumes perfect reuse inside a program instance (its L1) and none between instances (each instance
fetches its sectors from L2; the L2 holds everything, so DRAM sees each sector once per launch).

Ideal bytes (float32): every input element the op needs read once, every output element written once.
- correlation forward: f1 and f2 on the stride grid only (ceil(H/s) x ceil(W/s) pixels: at stride 2 only a
  quarter of each feature map is needed), the (2d+1)^2-channel cost volume. Backward: the cost-volume gradient,
  f1 and f2 on the grid; both full-size feature gradients (zeros off the grid included) written once. At
  stride 2 a 32-byte sector of a row holds 4 grid and 4 off-grid floats, so reading f1/f2 in NCHW costs at least
  2x their grid bytes: a stride-2 correlation cannot reach 1.0x on the inputs.
- warp forward: x, flow, out. Backward: x, flow, grad_out read; grad_x, grad_flow written.
- pixel volume forward: image, flow, fill, the k*k-channel volume. Backward: flow and grad_out read, grad_image
  and grad_fill written. `to PVDNet bf16`: what feeds PVDNet's first convolution under bf16 autocast in
  channels_last: the forward plus the cast/copy of the float32 NCHW volume to bf16 channels_last (`.to`, a host
  pass), against image, flow and fill read once and the volume written once as bf16. When `pixel_volume` accepts
  `out_dtype=` and `channels_last=`, the direct emission is measured too (design `<label>+direct`).

Shapes are the network's at a 1280x720 frame (padded to 1280x736 as the pipeline pads to multiples of 32):
BIMNet level L has 1/2**(L-1) of the frame; correlation (max displacement 3) on the level's feature channels
(level 2 lifted 32 -> 64), stride 2 at levels 2-3, 1 at 4-6; the feature warps (Matching at levels 2-5,
Subpixel at 2-6) on the same channels; the Regularization image warp on 3 channels; the pixel volume on the frame
(3-channel image and fill, 2-channel flow, k = 5). The interpreter is slow, so shapes are cut down: with --rows R
to strips of the real width and R rows (R stride-grid rows for the correlation), which keeps the geometry of
kernels that tile pixels in 1-D runs along rows exact; else each side is divided by --scale (default 8), never
below the level-6 size 40x23 (in correlation grid pixels). One shape (correlation at level 5) is also measured
at twice the size (twice the rows, or both sides doubled) to show how much the ratios depend on size. Flows are
smooth random fields (a coarse Gaussian field upsampled), a few pixels in amplitude.

Correlation designs: each design in --designs runs in a child process with PVD_CORRELATION_KERNEL set to it;
rows are labelled with the design `pvd.kernels.correlation` reports (`kernel_design()`, `design()` or `DESIGN`;
"legacy" when it reports none) and a design already measured is skipped. Warp and pixel-volume rows carry --label
(default "current"). Rows are appended to bench/results/traffic.csv; `bench/report.py` turns them into REPORT.md's
traffic table (designs side by side).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (pvd imports it)

import argparse  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _env import (  # noqa: E402
    PATH_INTERPRETER, append_rows, describe_environment, env_columns, print_banner, text_table)
from _meter import TrafficMeter  # noqa: E402

from pvd.kernels import correlation, pixel_volume, warp  # noqa: E402
from pvd.nets import bimnet  # noqa: E402
from pvd.nets.pvdnet import PIXEL_VOLUME_CHANNELS  # noqa: E402

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "traffic.csv"
OPS = ("correlation", "warp", "pixel_volume")
DEVICE_LABEL = "cpu-interpreter"
DESIGN_VARIABLE = "PVD_CORRELATION_KERNEL"
DEFAULT_DESIGNS = ("legacy", "tiled")
DEFAULT_LABEL = "current"
FRAME_WIDTH, FRAME_HEIGHT = 1280, 720
DEFAULT_SCALE = 8
MIN_GRID_WIDTH, MIN_GRID_HEIGHT = 40, 23  # level 6 of the padded 1280x720 frame
PAIR_LEVEL = 5  # this correlation shape is also measured at twice the size (Sizing.doubled)
BATCH = 1
DTYPE = torch.float32
FLOW_SIGMA_PX = 3.0
FLOW_SMOOTHING = 8  # the random flow field is drawn at 1/FLOW_SMOOTHING resolution and upsampled
KERNEL_SIZE = int(round(PIXEL_VOLUME_CHANNELS ** 0.5))
IMAGE_CHANNELS = 3
DISPLACEMENTS = (2 * bimnet.MAX_DISPLACEMENT + 1) ** 2
BF16_PATH = "to PVDNet bf16"


def padded_frame() -> tuple[int, int]:
    """(width, height) of the frame BIMNet sees: 1280x720 padded to multiples of bimnet.SIZE_MULTIPLE."""
    multiple = bimnet.SIZE_MULTIPLE
    return -(-FRAME_WIDTH // multiple) * multiple, -(-FRAME_HEIGHT // multiple) * multiple


@dataclass(frozen=True)
class Sizing:
    """How a real shape is cut down for the interpreter: with `rows`, a strip of the real width and `rows` rows
    (stride-grid rows for the correlation); else each side divided by `scale`, at least the level-6 size
    MIN_GRID_WIDTH x MIN_GRID_HEIGHT (in stride-grid pixels) and at most the real size."""

    scale: int = DEFAULT_SCALE
    rows: int | None = None

    def shrink(self, width: int, height: int, stride: int = 1) -> tuple[int, int]:
        if self.rows:
            return width, min(height, self.rows * stride)
        return (max(int(width // self.scale), min(width, MIN_GRID_WIDTH * stride)),
                max(int(height // self.scale), min(height, MIN_GRID_HEIGHT * stride)))

    def doubled(self) -> Sizing:
        """Twice the rows of a strip, or both sides twice as long."""
        return Sizing(rows=2 * self.rows) if self.rows else Sizing(scale=self.scale / 2)

    def __str__(self) -> str:
        return f"full width, {self.rows} rows" if self.rows else f"1/{self.scale:g}"


def level_size(level: int, sizing: Sizing, stride: int = 1) -> tuple[int, int]:
    """(width, height) of BIMNet level `level` of the padded 1280x720 frame, cut down by `sizing`."""
    width, height = padded_frame()
    return sizing.shrink(width >> (level - 1), height >> (level - 1), stride)


def level_channels(level: int) -> int:
    return bimnet.LIFTED_CHANNELS if level == 2 else bimnet.FEATURE_CHANNELS[level]


def smooth_flow(height: int, width: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """(1, 2, H, W) smooth random flow in pixels: a coarse Gaussian field upsampled bilinearly."""
    coarse = sigma * torch.randn(BATCH, 2, -(-height // FLOW_SMOOTHING) + 1, -(-width // FLOW_SMOOTHING) + 1,
                                 generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True).to(DTYPE)


@dataclass
class Case:
    """One op at one shape: inputs, how to run it, and the ideal bytes of its forward and backward."""

    op: str
    level: str
    size: str
    make_inputs: Callable[[], dict[str, torch.Tensor]]
    run: Callable[..., torch.Tensor]
    ideal_forward: int
    ideal_backward: int
    sizing: Sizing


def correlation_cases(sizing: Sizing, pair: bool) -> list[Case]:
    shapes = [(level, sizing) for level in bimnet.LEVELS] + ([(PAIR_LEVEL, sizing.doubled())] if pair else [])
    cases = []
    for level, level_sizing in shapes:
        stride = bimnet.CORRELATION_STRIDE[level]
        channels = level_channels(level)
        width, height = level_size(level, level_sizing, stride)
        grid = -(-width // stride) * -(-height // stride)
        element = DTYPE.itemsize

        def make(channels=channels, width=width, height=height, level=level):
            generator = torch.Generator().manual_seed(level)
            return {name: torch.randn(BATCH, channels, height, width, generator=generator, dtype=DTYPE)
                    for name in ("f1", "f2")}

        cases.append(Case(
            "correlation", f"L{level}", f"{BATCH}x{channels}x{height}x{width} s{stride}", make,
            lambda f1, f2, stride=stride: correlation(f1, f2, bimnet.MAX_DISPLACEMENT, stride),
            ideal_forward=element * BATCH * (2 * channels * grid + DISPLACEMENTS * grid),
            ideal_backward=element * BATCH * (DISPLACEMENTS * grid + 2 * channels * grid
                                              + 2 * channels * height * width),
            sizing=level_sizing))
    return cases


def warp_cases(sizing: Sizing, pair: bool) -> list[Case]:
    cases = []
    for level in bimnet.LEVELS:
        width, height = level_size(level, sizing)
        for channels, what in ((level_channels(level), "features"), (IMAGE_CHANNELS, "image")):
            def make(channels=channels, width=width, height=height, level=level):
                generator = torch.Generator().manual_seed(100 + level)
                return {"x": torch.randn(BATCH, channels, height, width, generator=generator, dtype=DTYPE),
                        "flow": smooth_flow(height, width, FLOW_SIGMA_PX, generator)}

            pixels = BATCH * height * width
            cases.append(Case(
                "warp", f"L{level} {what}", f"{BATCH}x{channels}x{height}x{width}", make, warp,
                ideal_forward=DTYPE.itemsize * pixels * (2 * channels + 2),
                ideal_backward=DTYPE.itemsize * pixels * (3 * channels + 4), sizing=sizing))
    return cases


def _pixel_volume_inputs(width: int, height: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {"image": 2 * torch.rand(BATCH, IMAGE_CHANNELS, height, width, generator=generator, dtype=DTYPE) - 1,
            "flow": smooth_flow(height, width, FLOW_SIGMA_PX, generator),
            "fill": 2 * torch.rand(BATCH, IMAGE_CHANNELS, height, width, generator=generator, dtype=DTYPE) - 1}


def pixel_volume_cases(sizing: Sizing, pair: bool) -> list[Case]:
    width, height = sizing.shrink(FRAME_WIDTH, FRAME_HEIGHT)
    pixels = BATCH * height * width
    return [Case(
        "pixel_volume", "frame", f"{BATCH}x{IMAGE_CHANNELS}x{height}x{width} k{KERNEL_SIZE}",
        lambda: _pixel_volume_inputs(width, height),
        lambda image, flow, fill: pixel_volume(image, flow, fill, KERNEL_SIZE),
        ideal_forward=DTYPE.itemsize * pixels * (2 * IMAGE_CHANNELS + 2 + KERNEL_SIZE ** 2),
        ideal_backward=DTYPE.itemsize * pixels * (KERNEL_SIZE ** 2 + 2 + 2 * IMAGE_CHANNELS), sizing=sizing)]


CASE_BUILDERS = {"correlation": correlation_cases, "warp": warp_cases, "pixel_volume": pixel_volume_cases}
DIFFERENTIABLE = {"correlation": ("f1", "f2"), "warp": ("x", "flow"), "pixel_volume": ("image", "fill")}


def traffic_row(meter: TrafficMeter, ideal: int) -> dict:
    """Figures of all launches recorded by `meter`, as bytes and as multiples of `ideal` bytes."""
    launches = meter.launches
    requested = sum(launch.requested_bytes for launch in launches)
    l2 = sum(launch.l2_bytes for launch in launches)
    dram = sum(launch.dram_bytes for launch in launches)
    host = meter.host_bytes
    atomics = sum(launch.atomics for launch in launches)
    targets = sum(launch.atomic_target_elements for launch in launches if launch.atomics)
    by_tensor: dict[str, int] = {}
    for launch in launches:
        for name, sectors in launch.l2_sectors_by_tensor.items():
            by_tensor[name] = by_tensor.get(name, 0) + sectors
    total_sectors = sum(by_tensor.values()) or 1
    return {
        "launches": " ".join(f"{launch.kernel}[{'x'.join(map(str, launch.grid))}]" for launch in launches),
        "ideal_bytes": ideal, "requested_bytes": requested, "l2_bytes": l2, "dram_bytes": dram, "host_bytes": host,
        "requested_x": round(requested / ideal, 3), "l2_x": round(l2 / ideal, 3), "dram_x": round(dram / ideal, 3),
        "dram_host_x": round((dram + host) / ideal, 3), "atomics": atomics,
        "atomics_per_output": round(atomics / targets, 3) if targets else 0.0,
        "l2_by_tensor": " ".join(f"{name}:{100 * sectors / total_sectors:.0f}%"
                                 for name, sectors in sorted(by_tensor.items(), key=lambda item: -item[1])),
        "host_passes": " ".join(f"{name}:{moved}" for name, moved in meter.host_passes),
    }


def measure_case(case: Case, design: str) -> list[dict]:
    """Forward and backward rows of `case` (and the bf16 paths into PVDNet for the pixel volume)."""
    inputs = case.make_inputs()
    leaves = {name: tensor.requires_grad_(name in DIFFERENTIABLE[case.op]) for name, tensor in inputs.items()}
    base = {"op": case.op, "level": case.level, "size": case.size, "design": design, "dtype": "float32",
            "sizing": str(case.sizing)}
    with TrafficMeter() as forward:
        out = case.run(**leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(11), dtype=out.dtype)
    with TrafficMeter() as backward:
        out.backward(grad_out)
    rows = [{**base, "direction": "fwd", **traffic_row(forward, case.ideal_forward)},
            {**base, "direction": "bwd", **traffic_row(backward, case.ideal_backward)}]
    if case.op == "pixel_volume":
        rows += _pixel_volume_bf16_rows(case, base)
    return rows


def _pixel_volume_bf16_rows(case: Case, base: dict) -> list[dict]:
    """The volume as PVDNet's first conv consumes it under bf16 autocast: bf16, channels_last."""
    inputs = case.make_inputs()
    channels = KERNEL_SIZE ** 2
    pixels = inputs["flow"][:, 0].numel()
    ideal = sum(t.numel() * t.element_size() for t in inputs.values()) + pixels * channels * torch.bfloat16.itemsize
    with torch.no_grad(), TrafficMeter() as cast:
        volume = pixel_volume(inputs["image"], inputs["flow"], inputs["fill"], KERNEL_SIZE)
        volume.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    rows = [{**base, "direction": BF16_PATH, **traffic_row(cast, ideal)}]
    parameters = inspect.signature(pixel_volume).parameters
    if "out_dtype" in parameters and "channels_last" in parameters:
        with torch.no_grad(), TrafficMeter() as direct:
            volume = pixel_volume(inputs["image"], inputs["flow"], inputs["fill"], KERNEL_SIZE,
                                  out_dtype=torch.bfloat16, channels_last=True)
        if volume.dtype != torch.bfloat16 or not volume.is_contiguous(memory_format=torch.channels_last):
            raise RuntimeError(f"pixel_volume(out_dtype=bf16, channels_last=True) returned {volume.dtype}, "
                               f"strides {volume.stride()}")
        rows.append({**base, "design": base["design"] + "+direct", "direction": BF16_PATH,
                     **traffic_row(direct, ideal)})
    return rows


def correlation_design() -> str:
    """The correlation design `pvd.kernels.correlation` reports (`kernel_design()`, `design()` or `DESIGN`),
    "legacy" when it reports none (the kernels before the tiled redesign)."""
    module = importlib.import_module("pvd.kernels.correlation")
    for name in ("kernel_design", "design", "DESIGN"):
        value = getattr(module, name, None)
        value = value() if callable(value) else value
        if isinstance(value, str) and value:
            return value
    return "legacy"


def measure(ops, sizing: Sizing, pair: bool, label: str, log=print) -> list[dict]:
    """Rows of every case of `ops` in this process (correlation labelled with this process's design)."""
    rows = []
    for op in ops:
        design = correlation_design() if op == "correlation" else label
        for case in CASE_BUILDERS[op](sizing, pair):
            start = time.perf_counter()
            measured = measure_case(case, design)
            log(f"  {op:13s} {case.level:12s} {case.size:22s} {design:10s} {time.perf_counter() - start:6.1f} s",
                flush=True)
            rows.extend(measured)
    return rows


def measure_designs(designs, sizing: Sizing, pair: bool) -> list[dict]:
    """Correlation rows of each design, each measured in a child process with PVD_CORRELATION_KERNEL set."""
    rows: list[dict] = []
    for design in designs:
        with tempfile.TemporaryDirectory() as folder:
            result = Path(folder) / "rows.json"
            skip = sorted({row["design"] for row in rows})
            command = [sys.executable, str(Path(__file__).resolve()), "--ops", "correlation", "--scale",
                       str(sizing.scale), "--child-json", str(result), "--skip-designs", ",".join(skip)]
            command += ([f"--rows={sizing.rows}"] if sizing.rows else []) + ([] if pair else ["--no-pair"])
            subprocess.run(command, env={**os.environ, DESIGN_VARIABLE: design}, check=True)
            child_rows = json.loads(result.read_text())
        if not child_rows:
            print(f"  correlation: {DESIGN_VARIABLE}={design} runs a design already measured; skipped", flush=True)
        rows.extend(child_rows)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("op", "direction", "level", "size", "design", "req x", "L2 x", "DRAM x", "+host x", "atomics/out")
    lines = [header]
    for row in rows:
        lines.append((row["op"], row["direction"], row["level"], row["size"], row["design"],
                      f"{row['requested_x']:.2f}", f"{row['l2_x']:.2f}", f"{row['dram_x']:.2f}",
                      f"{row['dram_host_x']:.2f}", f"{row['atomics_per_output']:.2f}"))
    return text_table(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE,
                        help=f"divide every size by this (default {DEFAULT_SCALE})")
    parser.add_argument("--rows", type=int, default=None,
                        help="instead of --scale: strips of the real width with this many rows (grid rows)")
    parser.add_argument("--out", default=str(RESULTS_CSV), help="CSV to append the rows to")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument("--no-pair", action="store_true", help="skip the twice-the-size correlation shape")
    parser.add_argument("--designs", default=",".join(DEFAULT_DESIGNS),
                        help=f"values of {DESIGN_VARIABLE} to measure the correlation under")
    parser.add_argument("--label", default=DEFAULT_LABEL, help="design label of the warp and pixel-volume rows")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--skip-designs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown or not args.ops:
        parser.error(f"--ops: unknown op(s) {unknown}; choose from {', '.join(OPS)}")
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    if args.rows is not None and args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    args.sizing = Sizing(scale=args.scale, rows=args.rows)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(1)
    if args.child_json:  # one correlation design, in a child process (see measure_designs)
        skip = set(filter(None, args.skip_designs.split(",")))
        rows = [] if correlation_design() in skip else measure(args.ops, args.sizing, not args.no_pair, args.label)
        Path(args.child_json).write_text(json.dumps(rows))
        return 0
    env = describe_environment(path=PATH_INTERPRETER)
    print_banner(env)
    print(f"traffic meter: sizes {args.sizing}, float32, batch {BATCH}; figures are multiples of the ideal bytes",
          flush=True)
    start = time.perf_counter()
    rows = []
    if "correlation" in args.ops:
        designs = [d.strip() for d in args.designs.split(",") if d.strip()]
        rows += measure_designs(designs, args.sizing, not args.no_pair)
    rows += measure([op for op in args.ops if op != "correlation"], args.sizing, not args.no_pair, args.label)
    print()
    print(format_table(rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s (Triton interpreter, CPU)")
    if not args.no_csv:
        columns = {**env_columns(env), "device": DEVICE_LABEL, "git": env["git"]}
        append_rows(args.out, [{**row, **columns} for row in rows])
        print(f"appended {len(rows)} row(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
