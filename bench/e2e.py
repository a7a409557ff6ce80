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

CPU: seconds per frame, fp32, eager, PVDNet only, over --cpu-frames frames (default 1); these rows say
device "cpu" and are never compared with GPU rows. In the same run the machine's conv throughput is measured
(ROOFLINE_CONV, a large channels_last 3x3 convolution, before and after the step) and the step's FLOP counted
(FlopCounterMode on meta tensors); bench/results/cpu_roofline.csv gets the step time over the time those FLOP
take at that throughput (`vs_roofline`), with --label.

`--clip demo`: the frames are the demo clip of `pvd demo` (camera shake over the bundled photograph) rendered
at --size; with the demo weights (`--weights weights/pvd_demo.safetensors`) `psnr_vs_fp32_db` then measures
bf16 on real content, and `psnr_vs_sharp_db` scores every configuration against the clip's sharp frames.

Eager configurations run before compiled ones; with `--time-limit` a configuration starts only while time is
left for it (bench/_budget.py). Rows are appended to bench/results/e2e.csv, each as soon as it is measured,
with the device and library versions (bench/_env.py). `--dry-run` (bench/gpu_check.py): 32x32, 1 frame, no
warm-up, every model, on CPU fp32 eager only (bf16 autocast and torch.compile need CUDA).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import TimeLimit, add_time_limit_argument  # noqa: E402
from _env import append_rows, describe_environment, env_columns, print_banner  # noqa: E402

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


def cpu_roofline_row(seconds_per_frame: float, conv_gflops: float, width: int, height: int, label: str) -> dict:
    """The CPU row of ROOFLINE_CSV: step time against the time the step's FLOP would take at conv throughput."""
    gflop = step_gflop(height, width)
    roofline_s = gflop / conv_gflops
    row = {"label": label, "size": f"{width}x{height}", "threads": torch.get_num_threads(),
           "seconds_per_frame": round(seconds_per_frame, 3), "step_gflop": round(gflop, 1),
           "conv_gflops": round(conv_gflops, 1), "roofline_s": round(roofline_s, 3),
           "vs_roofline": round(seconds_per_frame / roofline_s, 3)}
    print(f"CPU roofline ({label}): conv {row['conv_gflops']} GFLOP/s ({torch.get_num_threads()} threads), step "
          f"{row['step_gflop']} GFLOP -> {row['roofline_s']} s at that rate; measured {row['seconds_per_frame']} s "
          f"= {row['vs_roofline']}x the roofline")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="timed frames per configuration on the GPU")
    parser.add_argument("--warmup", type=int, default=3, help="untimed frames first (compilation included)")
    parser.add_argument("--cpu-frames", type=int, default=1, help="timed frames on the CPU")
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
        args.size, args.frames, args.cpu_frames, args.warmup = (DRY_RUN["size"], DRY_RUN["frames"],
                                                                DRY_RUN["frames"], DRY_RUN["warmup"])

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
    precisions = args.precisions.split(",") if on_gpu else ["fp32"]
    compiles = [c == "on" for c in args.compile.split(",")] if on_gpu else [False]
    count = max(args.frames if on_gpu else args.cpu_frames, 1)  # every frame is timed (the last one at flush)
    warmup = args.warmup if on_gpu else 0
    if not on_gpu:
        print(f"CPU run: fp32, eager, {', '.join(MODEL_NAMES[name] for name in models)}, {count} timed frame(s) of "
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
                                                                        width, height, args.label),
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


if __name__ == "__main__":
    sys.exit(main())
