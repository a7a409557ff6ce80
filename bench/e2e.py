"""End-to-end benchmark of the deblurring pipeline (BIMNet + pixel volume + PVDNet) at 1280x720.

    python bench/e2e.py [--frames 30] [--warmup 3] [--size 1280x720] [--models pvdnet,pvdnet_large]
                        [--precisions fp32,bf16] [--compile off,on] [--weights [MODEL=]PATH,...]
                        [--csv bench/results/e2e.csv] [--clip synthetic|demo] [--time-limit SECONDS] [--dry-run]

GPU: per-frame latency (median and p90 ms of one recurrent step, synchronised), frames/s over the timed run,
peak GPU memory, and for every non-fp32 or compiled configuration the PSNR of its outputs against the eager
fp32 outputs of the same model on the same frames (`psnr_vs_fp32_db`; recurrent drift included), for PVDNet and
PVDNet-large, fp32 and bf16, eager and torch.compile. "fp32" keeps PyTorch's defaults (cuDNN convolutions may
use TF32: column `tf32_conv`). Frames are synthetic (a smooth random picture panning across the clip) and
already on the GPU: decoding and encoding are not timed. Weights are random (seeded) unless --weights is given:
the speed does not depend on them, the PSNR column only partly does. `--weights pvdnet=PATH` gives one model
its checkpoint and leaves the others random.

CPU: seconds per frame, eager, PVDNet only, fp32 and (where the CPU has native bf16, `pvd.runtime`) bf16 autocast,
over --cpu-frames frames (default 1) after --cpu-warmup untimed ones (default 0: the process's first, cold step
is timed too); these rows say device "cpu" and are never compared with GPU rows. In the same run the machine's
conv throughput is measured (ROOFLINE_CONV, a large channels_last 3x3 convolution, before and after the step)
and the step's FLOP counted (FlopCounterMode on meta tensors); bench/results/cpu_roofline.csv gets the step time
over the time those FLOP take at that throughput (`vs_roofline`; for a bf16 row still the fp32 conv's
throughput), with --label and the precision.

`--clip demo`: the frames are the demo clip of `pvd demo` (camera shake over the bundled photograph) rendered
at --size; with the demo weights (`--weights weights/pvd_demo.safetensors`) `psnr_vs_fp32_db` then measures
bf16 on real content, and `psnr_vs_sharp_db` scores every configuration against the clip's sharp frames.

Eager configurations run before compiled ones; with `--time-limit` a configuration starts only while time is
left for it (bench/_budget.py). Rows are appended to bench/results/e2e.csv, each as soon as it is measured,
with the device and library versions (bench/_env.py). `--dry-run` (bench/gpu_check.py): 32x32, 1 frame, no
warm-up, every model, on CPU eager only (torch.compile needs CUDA).

    python bench/e2e.py tiling [--calibrate] [--peak 3840x2160 [--tile auto]] [--psnr]

Tiled inference on the CPU (`tiling_main`): the memory model's bytes per pixel, the peak resident memory of a
process running one 4K step with `--tile auto`, and the demo clip at 720p tiled vs untiled
(bench/results/tiling.csv).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import _startup  # noqa: F401 - before torch: the pvd CLI's process defaults
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import TimeLimit, add_time_limit_argument  # noqa: E402
from _env import append_rows, cpu_precisions, describe_environment, env_columns, print_banner  # noqa: E402

from pvd import weights as pvd_weights  # noqa: E402
from pvd.nets import DeblurNet  # noqa: E402
from pvd.stream import VideoDeblurrer  # noqa: E402

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "e2e.csv"
ROOFLINE_CSV = Path(__file__).resolve().parent / "results" / "cpu_roofline.csv"
MODEL_NAMES = {"pvdnet": "PVDNet", "pvdnet_large": "PVDNet-large"}
PAN_PIXELS_PER_FRAME = 3  # synthetic camera motion
PICTURE_GRID = 24  # the random picture is a bilinear upsampling of a grid this coarse, plus fine noise
CLIPS = ("synthetic", "demo")
DEMO_CLIP_SEED = 0
DRY_RUN = {"size": "32x32", "frames": 1, "warmup": 0}
# A configuration starts only with this much of --time-limit left (compiling the two networks takes long).
EAGER_RESERVE_S, COMPILE_RESERVE_S = 5.0, 60.0
COMPILE_MARGIN = 1.3  # a compiled configuration needs this times the slowest compiled warm-up seen so far


def synthetic_clip(count: int, height: int, width: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """`count` frames (1, 3, H, W) in [-1, 1]: a smooth random picture panning right, softly blurred."""
    generator = torch.Generator().manual_seed(seed)
    pan = PAN_PIXELS_PER_FRAME * count
    coarse = torch.rand(1, 3, PICTURE_GRID, PICTURE_GRID * 2, generator=generator)
    picture = F.interpolate(coarse, size=(height, width + pan), mode="bilinear", align_corners=False)
    picture = picture + 0.05 * torch.rand(picture.shape, generator=generator)
    picture = F.avg_pool2d(picture, 5, stride=1, padding=2).clamp(0, 1) * 2 - 1
    return [picture[..., :, t * PAN_PIXELS_PER_FRAME: t * PAN_PIXELS_PER_FRAME + width].to(device).contiguous()
            for t in range(count)]


def demo_clip(count: int, height: int, width: int,
              device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The blurry and sharp frames (1, 3, H, W) in [-1, 1] of `pvd demo`'s clip rendered at H x W."""
    from pvd import demo
    from pvd.frames import frame_to_tensor

    blurry, sharp, _ = demo.render_clip(demo.demo_settings(count, (height, width)), DEMO_CLIP_SEED)
    return ([frame_to_tensor(frame, device) for frame in blurry],
            [frame_to_tensor(frame, device) for frame in sharp])


def build_model(name: str, weights: str | None) -> DeblurNet:
    if weights:
        model = pvd_weights.load(weights)
        if (name == "pvdnet_large") != bool(getattr(model, "large", False)):
            raise SystemExit(f"{weights} does not hold {MODEL_NAMES[name]}")
        return model
    torch.manual_seed(0)
    return DeblurNet(large=name == "pvdnet_large")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two [-1, 1] images, on the [0, 1] scale after clamping."""
    mse = (((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(model, frames, device, precision: str, compile_: bool, warmup: int) -> dict:
    """Deblur `frames` (after `warmup` frames) and time each recurrent step. Returns timings and outputs."""
    deblurrer = VideoDeblurrer(model, device=device, precision=precision, compile=compile_)
    start = time.perf_counter()
    if warmup:
        for frame in frames[:warmup + 1]:  # also compiles; the first push runs no step
            deblurrer.push(frame)
        _sync(device)
        deblurrer.reset()
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    latencies, outputs = [], []
    deblurrer.push(frames[0])
    run_start = time.perf_counter()
    for frame in frames[1:]:
        step_start = time.perf_counter()
        out = deblurrer.push(frame)
        _sync(device)
        latencies.append(time.perf_counter() - step_start)
        outputs.append(out)
    step_start = time.perf_counter()
    outputs.append(deblurrer.flush())
    _sync(device)
    latencies.append(time.perf_counter() - step_start)
    total_s = time.perf_counter() - run_start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    latencies_ms = sorted(1000 * t for t in latencies)
    return {
        "median_ms": statistics.median(latencies_ms),
        "p90_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.9 * len(latencies_ms)))],
        "frames_per_s": len(outputs) / total_s,
        "seconds_per_frame": total_s / len(outputs),
        "peak_mem_mib": peak,
        "warmup_s": warmup_s,
        "outputs": outputs,
    }


# ---- CPU roofline: the machine's conv throughput, measured in the same run, against the step's FLOP count ----

# A large 3x3 convolution in channels_last: (batch, channels in, channels out, height, width).
ROOFLINE_CONV = (1, 128, 128, 256, 256)
ROOFLINE_RUNS = 5


def conv_throughput_gflops(runs: int = ROOFLINE_RUNS) -> float:
    """GFLOP/s (multiply and add = 2 FLOP) of ROOFLINE_CONV on the CPU with the current threads: median of `runs`."""
    batch, c_in, c_out, height, width = ROOFLINE_CONV
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, c_in, height, width).contiguous(memory_format=torch.channels_last)
    flop = 2 * batch * c_in * c_out * 9 * height * width
    times = []
    with torch.inference_mode():
        conv(x)  # warm-up (oneDNN primitive creation)
        for _ in range(runs):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return flop / statistics.median(times) / 1e9


def step_gflop(height: int, width: int, large: bool = False) -> float:
    """FLOP of one deblurring step at height x width (torch.utils.flop_counter on meta tensors: convolutions and
    matmuls, multiply and add = 2 FLOP), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = DeblurNet(large=large)
    frames = [torch.empty(1, 3, height, width, device="meta") for _ in range(4)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*frames)
    return counter.get_total_flops() / 1e9


def cpu_roofline_row(seconds_per_frame: float, conv_gflops: float, width: int, height: int, label: str,
                     precision: str = "fp32") -> dict:
    """The CPU row of ROOFLINE_CSV: step time against the time the step's FLOP would take at conv throughput
    (the fp32 ROOFLINE_CONV's, whatever the step's precision)."""
    gflop = step_gflop(height, width)
    roofline_s = gflop / conv_gflops
    row = {"label": label, "size": f"{width}x{height}", "threads": torch.get_num_threads(),
           "seconds_per_frame": round(seconds_per_frame, 3), "step_gflop": round(gflop, 1),
           "conv_gflops": round(conv_gflops, 1), "roofline_s": round(roofline_s, 3),
           "vs_roofline": round(seconds_per_frame / roofline_s, 3), "precision": precision}
    print(f"CPU roofline ({label}, {precision}): fp32 conv {row['conv_gflops']} GFLOP/s "
          f"({torch.get_num_threads()} threads), step "
          f"{row['step_gflop']} GFLOP -> {row['roofline_s']} s at that rate; measured {row['seconds_per_frame']} s "
          f"= {row['vs_roofline']}x the roofline")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="timed frames per configuration on the GPU")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (compilation included)")
    parser.add_argument("--cpu-frames", type=int, default=1, help="timed frames on the CPU")
    parser.add_argument("--cpu-warmup", type=int, default=0, help="untimed frames first on the CPU")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--models", default="pvdnet,pvdnet_large")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", default="off,on", help="off, on, or off,on")
    parser.add_argument("--weights", default=None,
                        help="pvd checkpoint for every model, or MODEL=PATH,... per model (else random weights)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--csv", default=str(RESULTS_CSV))
    parser.add_argument("--clip", default="synthetic", choices=CLIPS,
                        help="synthetic: a random picture panning; demo: pvd demo's clip at --size")
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU check of the machinery (scripts/gpu_check.sh)")
    add_time_limit_argument(parser)
    parser.add_argument("--roofline-csv", default=str(ROOFLINE_CSV), help="CPU: step time vs conv throughput")
    parser.add_argument("--label", default="", help="CPU: a label for the roofline row (e.g. before / after)")
    args = parser.parse_args(argv)
    limit = TimeLimit(args.time_limit)  # from here: rendering the clip and building the models count too
    if args.dry_run:
        args.size, args.frames, args.cpu_frames = DRY_RUN["size"], DRY_RUN["frames"], DRY_RUN["frames"]
        args.warmup = args.cpu_warmup = DRY_RUN["warmup"]

    width, height = (int(v) for v in args.size.lower().split("x"))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    on_gpu = device.type == "cuda"
    if not on_gpu and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("CPU run: the Triton interpreter would take hours at this size; using the CPU kernels (pvd.kernels.cpu)")
        os.environ["TRITON_INTERPRET"] = "0"  # pvd.kernels dispatch at call time
    env = describe_environment()
    print_banner(env)
    models = args.models.split(",") if on_gpu or args.dry_run else ["pvdnet"]
    precisions = args.precisions.split(",") if on_gpu else cpu_precisions(args.precisions.split(","))
    compiles = [c == "on" for c in args.compile.split(",")] if on_gpu else [False]
    count = max(args.frames if on_gpu else args.cpu_frames, 1)  # every frame is timed (the last one at flush)
    warmup = args.warmup if on_gpu else args.cpu_warmup
    if not on_gpu:
        print(f"CPU run: {', '.join(precisions)}, eager, {', '.join(MODEL_NAMES[name] for name in models)}, "
              f"{count} timed frame(s) of "
              f"{width}x{height}, CPU kernels (pvd.kernels.cpu) - report: seconds per frame (CPU, not a GPU number)")
    sharp = None
    if args.clip == "demo":
        frames, sharp = demo_clip(count, height, width, device)
    else:
        frames = synthetic_clip(count, height, width, device)

    checkpoints = weights_per_model(args.weights, models, parser)
    built = {name: build_model(name, checkpoints[name]) for name in models}
    reference_outputs: dict[str, list[torch.Tensor]] = {}
    rows, failures = 0, 0
    roofline = not (on_gpu or args.dry_run)  # CPU: the step against the conv throughput measured alongside
    cpu_conv_gflops = conv_throughput_gflops() if roofline else None  # before and after each step: their mean
    compile_s = COMPILE_RESERVE_S  # grows to the slowest compiled warm-up seen (compilation included)
    for compile_ in sorted(compiles):  # eager first: the PSNR reference, and compiling may not fit the limit
        for name in models:
            for precision in precisions:
                label = f"{MODEL_NAMES[name]} {precision} {'compiled' if compile_ else 'eager'}"
                if not limit.allows(compile_s if compile_ else EAGER_RESERVE_S):
                    limit.skip(label)
                    continue
                try:
                    result = run_config(built[name], frames, device, precision, compile_, warmup)
                except Exception as error:  # noqa: BLE001 - report and go on with the other configurations
                    print(f"{label}: FAILED: {type(error).__name__}: {error}")
                    failures += 1
                    continue
                if compile_:
                    compile_s = max(compile_s, COMPILE_MARGIN * result["warmup_s"])
                weights_label = Path(checkpoints[name]).name if checkpoints[name] else "random"
                row = _row(name, precision, compile_, result, reference_outputs, sharp, args.clip, weights_label,
                           f"{width}x{height}", on_gpu)
                append_rows(args.csv, [{**row, **env_columns(env)}])  # at once: a killed run keeps its rows
                rows += 1
                print(f"{label}: {row['median_ms']} ms/frame (p90 {row['p90_ms']}), {row['frames_per_s']} frames/s, "
                      f"peak {row['peak_mem_mib'] or '-'} MiB, PSNR vs fp32 {row['psnr_vs_fp32_db'] or '-'} dB"
                      + (f", vs sharp {row['psnr_vs_sharp_db']} dB" if sharp is not None else ""), flush=True)
                if roofline:
                    conv_gflops = statistics.median([cpu_conv_gflops, conv_throughput_gflops()])
                    append_rows(args.roofline_csv, [{**cpu_roofline_row(result["seconds_per_frame"], conv_gflops,
                                                                        width, height, args.label, precision),
                                                     **env_columns(env)}])
                if on_gpu:
                    torch.cuda.empty_cache()
    if rows:
        print(f"appended {rows} row(s) to {args.csv}")
    return 0 if rows and not failures else 1


def weights_per_model(spec: str | None, models: list[str], parser) -> dict[str, str | None]:
    """--weights: one PATH for every model, or MODEL=PATH entries (the models not named get random weights)."""
    if not spec:
        return dict.fromkeys(models)
    if "=" not in spec:
        return dict.fromkeys(models, spec)
    chosen: dict[str, str | None] = dict.fromkeys(models)
    for entry in spec.split(","):
        name, _, path = entry.partition("=")
        if name not in MODEL_NAMES or not path:
            parser.error(f"--weights: expected MODEL=PATH with MODEL one of {', '.join(MODEL_NAMES)}, got {entry!r}")
        if name in chosen:
            chosen[name] = path
    return chosen


def _row(name, precision, compile_, result, reference_outputs, sharp, clip, weights_label, size, on_gpu) -> dict:
    """The CSV row of one configuration; keeps the eager fp32 outputs of each model as its PSNR reference."""
    outputs = result.pop("outputs")
    if precision == "fp32" and not compile_:
        reference_outputs[name] = outputs
        psnr_db = ""
    elif name in reference_outputs:
        psnr_db = statistics.mean(psnr(a, b) for a, b in zip(outputs, reference_outputs[name]))
    else:
        psnr_db = ""
    sharp_db = statistics.mean(psnr(a, b) for a, b in zip(outputs, sharp)) if sharp is not None else ""
    return {
        "pipeline": MODEL_NAMES[name], "provider": "compile" if compile_ else "eager",
        "precision": precision, "size": size, "mode": "inference",
        "frames": len(outputs), "median_ms": round(result["median_ms"], 3),
        "p90_ms": round(result["p90_ms"], 3), "frames_per_s": round(result["frames_per_s"], 3),
        "seconds_per_frame": round(result["seconds_per_frame"], 4),
        "peak_mem_mib": "" if math.isnan(result["peak_mem_mib"]) else round(result["peak_mem_mib"], 1),
        "warmup_s": round(result["warmup_s"], 2),
        "psnr_vs_fp32_db": psnr_db if psnr_db == "" else round(psnr_db, 2),
        "weights": weights_label,
        "tf32_conv": torch.backends.cudnn.allow_tf32 if on_gpu else "",
        "clip": clip,
        "psnr_vs_sharp_db": sharp_db if sharp_db == "" else round(sharp_db, 2),
    }


# ---------------------------------------------------------------------------------------------- tiling (issue 14)

TILING_CSV = Path(__file__).resolve().parent / "results" / "tiling.csv"
TILING_TARGET_PEAK_GIB = 4.0  # peak memory of a 3840x2160 step with --tile auto
TILING_TARGET_PSNR_DB = 0.05  # |PSNR(tiled) - PSNR(untiled)| on the demo clip at 720p
TILING_COLUMNS = ("measure", "size", "tile", "plan_tile", "overlap", "flow_pixels", "frames", "bytes_per_pixel",
                  "peak_rss_mib", "estimated_mib", "psnr_untiled_db", "psnr_tiled_db", "psnr_diff_db",
                  "psnr_tiled_vs_untiled_db", "max_abs_diff_u8", "seconds", "seconds_untiled")


def _status_bytes(key: str) -> int:
    """A line of /proc/self/status in bytes (VmHWM: peak resident memory, VmRSS: current)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _tiling_child(args) -> int:
    """Run in a fresh process: one recurrent step of the streaming runner, print the process's peak RSS.

    `calibrate-bimnet` / `calibrate-pvdnet`: the growth of the peak over the loaded model for one network call.
    `step`: `VideoDeblurrer(tile=...)` on uint8 frames, as `pvd deblur` runs it.
    """
    import json

    import numpy as np

    from pvd import kernels
    from pvd.nets.step import estimate_flow
    from pvd.stream import VideoDeblurrer
    from pvd.weights import load_model

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = load_model(args.weights, device="cpu")
    result = {}
    with torch.inference_mode():
        if args.child.startswith("calibrate"):
            frames = [torch.rand(1, 3, height, width) * 2 - 1 for _ in range(4)]
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # reset VmHWM to the current RSS
            base = _status_bytes("VmRSS:")
            if args.child == "calibrate-bimnet":
                estimate_flow(model.bimnet, frames[1], frames[0])
            else:
                volume = kernels.pixel_volume(frames[3], torch.zeros(1, 2, height, width), frames[1], kernel_size=5)
                model.pvdnet(volume, frames[0], frames[1], frames[2])
            result["growth_bytes"] = _status_bytes("VmHWM:") - base
        else:
            deblurrer = VideoDeblurrer(model, device="cpu", tile=None if args.tile == "none" else args.tile,
                                       tile_overlap=args.overlap)
            rng = np.random.default_rng(0)
            frames = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(2)]
            calls = _stop_after(model.pvdnet, args.max_tiles)
            start = time.perf_counter()
            deblurrer.push(frames[0])
            try:
                out = deblurrer.push(frames[1])
                assert out.shape == frames[0].shape
            except _EnoughTiles:
                pass
            result["seconds"] = time.perf_counter() - start
            result["tiles_run"] = calls["count"]
            step = deblurrer.step_function
            plan = next(iter(step.plans.values())) if step is not None else None
            result.update(tile=plan.tile if plan else None, flow_pixels=plan.flow_pixels if plan else None,
                          estimated_bytes=plan.estimated_bytes if plan else None)
    result["peak_rss_bytes"] = _status_bytes("VmHWM:")
    print("RESULT " + json.dumps(result))
    return 0


class _EnoughTiles(Exception):
    """Raised by `_stop_after` to end a step early."""


def _stop_after(pvdnet, max_calls: int | None) -> dict:
    """Count PVDNet's calls (tiles); with max_calls, end the step after that many (the CPU is slow at 4K)."""
    calls = {"count": 0}
    forward = pvdnet.forward

    def counted(*inputs):
        if max_calls is not None and calls["count"] >= max_calls:
            raise _EnoughTiles
        calls["count"] += 1
        return forward(*inputs)

    pvdnet.forward = counted
    return calls


def _run_child(argv: list[str]) -> dict:
    import json
    import subprocess

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, __file__, "tiling", *argv], capture_output=True, text=True, env=env,
                          check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"child {argv} failed: {done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _demo_clip_psnr(args) -> list[dict]:
    """The demo clip (the bundled photograph, camera-shake blur) at --psnr-size: PSNR against the sharp frames of
    the untiled and the tiled outputs, and of the tiled against the untiled output."""
    from pvd import demo
    from pvd.stream import VideoDeblurrer, deblur_frames
    from pvd.weights import load_model

    width, height = (int(v) for v in args.psnr_size.lower().split("x"))
    blurry, sharp, _ = demo.render_clip(demo.demo_settings(args.psnr_frames, (height, width)), demo.DEFAULT_SEED)
    model = load_model(args.weights, device="cpu")

    def psnr_u8(a, b) -> float:
        mse = float(((a.astype("float64") - b.astype("float64")) ** 2).mean())
        return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)

    start = time.perf_counter()
    untiled = list(deblur_frames(model, blurry, device="cpu"))
    untiled_s = time.perf_counter() - start
    rows = []
    for tile in args.psnr_tiles.split(","):
        deblurrer = VideoDeblurrer(model, device="cpu", tile=tile, tile_overlap=args.overlap)
        start = time.perf_counter()
        tiled = list(deblurrer.run(blurry))
        seconds = time.perf_counter() - start
        plan = next(iter(deblurrer.step_function.plans.values()))
        pairs = list(zip(tiled, untiled))
        psnr_untiled = statistics.mean(psnr_u8(o, s) for o, s in zip(untiled, sharp))
        psnr_tiled = statistics.mean(psnr_u8(o, s) for o, s in zip(tiled, sharp))
        rows.append({"measure": "psnr_demo_clip", "size": f"{width}x{height}", "tile": tile,
                     "plan_tile": plan.tile or "whole", "overlap": plan.overlap, "frames": len(tiled),
                     "psnr_untiled_db": round(psnr_untiled, 4), "psnr_tiled_db": round(psnr_tiled, 4),
                     "psnr_diff_db": round(psnr_tiled - psnr_untiled, 4),
                     "psnr_tiled_vs_untiled_db": round(statistics.mean(psnr_u8(a, b) for a, b in pairs), 2),
                     "max_abs_diff_u8": int(max(abs(a.astype(int) - b.astype(int)).max() for a, b in pairs)),
                     "seconds": round(seconds, 1), "seconds_untiled": round(untiled_s, 1)})
        print(f"demo clip {width}x{height}, tile {tile} (plan {plan.tile}): PSNR untiled {psnr_untiled:.4f} dB, tiled "
              f"{psnr_tiled:.4f} dB, difference {psnr_tiled - psnr_untiled:+.4f} dB (target |d| < "
              f"{TILING_TARGET_PSNR_DB}); tiled vs untiled {rows[-1]['psnr_tiled_vs_untiled_db']} dB")
    return rows


def tiling_main(argv: list[str] | None = None) -> int:
    """`python bench/e2e.py tiling [--calibrate] [--peak 3840x2160] [--psnr]`: tiled inference on the CPU.

    --calibrate: bytes per pixel of BIMNet and of pixel volume + PVDNet (peak-RSS growth at 256^2 and 512^2);
    --peak SIZE: peak resident memory of a process running one step with --tile (default auto) at SIZE;
    --psnr: the demo clip at --psnr-size, untiled and with each of --psnr-tiles. Rows go to bench/results/tiling.csv.
    """
    parser = argparse.ArgumentParser(prog="e2e.py tiling", description=tiling_main.__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--peak", default=None, metavar="WxH")
    parser.add_argument("--psnr", action="store_true")
    parser.add_argument("--psnr-size", default="1280x720")
    parser.add_argument("--psnr-frames", type=int, default=3)
    parser.add_argument("--psnr-tiles", default="512,auto")
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--max-tiles", type=int, default=None,
                        help="--peak: end the step after this many tiles (all tiles have one size; the CPU is slow)")
    parser.add_argument("--weights", default=None, help="default: the bundled demo weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", default=str(TILING_CSV))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"
    if args.child:
        return _tiling_child(args)
    env = describe_environment()
    print_banner(env)
    common = ["--threads", str(args.threads)] + (["--weights", args.weights] if args.weights else [])
    rows = []
    if args.calibrate:
        for network in ("bimnet", "pvdnet"):
            growth = {side: _run_child(["--child", f"calibrate-{network}", "--size", f"{side}x{side}", *common])
                      ["growth_bytes"] for side in (256, 512)}
            slope = (growth[512] - growth[256]) / (512**2 - 256**2)
            rows.append({"measure": f"bytes_per_pixel_{network}", "size": "256x256..512x512",
                         "bytes_per_pixel": round(slope)})
            print(f"{network}: {slope:.0f} bytes per pixel (peak RSS growth {growth[256] / 2**20:.0f} MiB at 256^2, "
                  f"{growth[512] / 2**20:.0f} MiB at 512^2)")
    if args.peak:
        overlap = [] if args.overlap is None else ["--overlap", str(args.overlap)]
        limit = [] if args.max_tiles is None else ["--max-tiles", str(args.max_tiles)]
        result = _run_child(["--child", "step", "--size", args.peak, "--tile", args.tile, *overlap, *limit, *common])
        peak_gib = result["peak_rss_bytes"] / 2**30
        rows.append({"measure": "peak_rss_one_step", "size": args.peak, "tile": args.tile,
                     "plan_tile": result["tile"] or "whole", "flow_pixels": result["flow_pixels"] or "",
                     "peak_rss_mib": round(result["peak_rss_bytes"] / 2**20),
                     "estimated_mib": round(result["estimated_bytes"] / 2**20) if result["estimated_bytes"] else "",
                     "frames": f"1 step, {result['tiles_run']} tiles", "seconds": round(result["seconds"], 1)})
        print(f"{args.peak}, --tile {args.tile} (plan: tile {result['tile']}, BIMNet <= {result['flow_pixels']} px): "
              f"peak RSS of the whole process {peak_gib:.2f} GiB (target < {TILING_TARGET_PEAK_GIB} GiB), "
              f"{result['seconds']:.0f} s for one step ({result['tiles_run']} tiles run)")
    if args.psnr:
        rows += _demo_clip_psnr(args)
    if rows:
        append_rows(args.csv, [{**dict.fromkeys(TILING_COLUMNS, ""), **row, **env_columns(env)} for row in rows])
        print(f"appended {len(rows)} row(s) to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(tiling_main(sys.argv[2:]) if sys.argv[1:2] == ["tiling"] else main())
