"""Training throughput: optimizer steps per second and peak memory of stage 2 (PVDNet, BIMNet frozen) and
stage 1 (BIMNet, blur-invariant loss), with the real trainers of `pvd.training`.

    python bench/train.py [--stages pvdnet,pvdnet_large,bimnet] [--precisions fp32,bf16] [--compile off,on]
                          [--batch 8] [--size 256] [--clip-frames 15] [--clips 3] [--warmup 1]
                          [--csv bench/results/train.csv] [--time-limit SECONDS] [--dry-run]

GPU (the paper setting): batch 8, 256x256 crops, 15-frame clips = 13 recurrent steps, one optimizer step per
frame step, fp32 and bf16 autocast (PVDNet only; BIMNet and the pixel volume stay fp32). Stage 1 uses the
same batch and crop size, one step per frame pair, fp32 only (BIMNet does not run under autocast).
"fp32" keeps PyTorch's defaults (cuDNN convolutions may use TF32: column `tf32_conv`). Timed: `--clips`
clips after `--warmup` untimed ones, synchronised; steps_per_s = timed steps / timed seconds. Peak memory
is `torch.cuda.max_memory_allocated` over the timed clips. Clips are synthetic (a smooth random picture panning
across the clip, the sharp frames a little crisper than the blurry ones), already on the device: data loading
is not timed. Weights are random (seeded); speed does not depend on them.

CPU: by default a tiny run (batch 2, 64x64, 4-frame clips, eager; fp32, and bf16 autocast for PVDNet where the CPU
has native bf16) that checks the machinery; its rows say "CPU" in the device column. Give the crops and batches of
a CPU recipe (e.g. --batch 4 --size 96) for a CPU training-speed measurement.

Rows are appended to the CSV as each configuration ends. `--time-limit` (bench/_budget.py): a configuration
starts only while time is left, and times fewer clips (at least one, column clips_timed) when its share of
the time left, measured by its warm-up clip, does not fit --clips. `--dry-run` (bench/gpu_check.py): batch 1,
32x32, 3-frame clips, one clip, no warm-up, stage 1 on blurry pairs only, PVDNet-large too when asked for,
fp32 eager.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import _startup  # noqa: F401 - before torch: the pvd CLI's process defaults
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _budget import TimeLimit, add_time_limit_argument  # noqa: E402
from _env import (  # noqa: E402
    PATH_CPU_REFERENCE,
    append_rows,
    cpu_precisions,
    describe_environment,
    env_columns,
    print_banner,
)

from pvd.training import load_config  # noqa: E402
from pvd.training.stages import build_trainer  # noqa: E402

RESULTS_CSV = Path(__file__).resolve().parent / "results" / "train.csv"
STAGE_SETTINGS = {  # bench name -> (run.stage, model.large)
    "pvdnet": ("pvdnet", False),
    "pvdnet_large": ("pvdnet", True),
    "bimnet": ("bimnet", False),
}
GPU_DEFAULTS = {"batch": 8, "size": 256, "clip_frames": 15, "clips": 3, "warmup": 1}
CPU_DEFAULTS = {"batch": 2, "size": 64, "clip_frames": 4, "clips": 1, "warmup": 1}
DRY_RUN_SETTINGS = {"batch": 1, "size": 32, "clip_frames": 3, "clips": 1, "warmup": 0}
DRY_RUN_OVERRIDES = ["loss.flow_pairs=['bb']"]  # stage 1 on one pairing instead of four: a quarter of the work
CONFIG_RESERVE_S = 5.0  # a configuration starts only with this much of --time-limit left
PAN_PIXELS_PER_FRAME = 3
PICTURE_GRID = 24
BYTES_PER_GIB = 2**30


def synthetic_batch(batch: int, frames: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """{"blurry", "sharp"}: (batch, frames, 3, size, size) in [-1, 1], a random picture panning right."""
    generator = torch.Generator().manual_seed(seed)
    pan = PAN_PIXELS_PER_FRAME * frames
    coarse = torch.rand(batch, 3, PICTURE_GRID, PICTURE_GRID * 2, generator=generator)
    picture = F.interpolate(coarse, size=(size, size + pan), mode="bilinear", align_corners=False)
    picture = picture + 0.05 * torch.rand(picture.shape, generator=generator)
    sharp = torch.stack([picture[..., t * PAN_PIXELS_PER_FRAME: t * PAN_PIXELS_PER_FRAME + size]
                         for t in range(frames)], dim=1)
    blurry = F.avg_pool2d(sharp.flatten(0, 1), 5, stride=1, padding=2).unflatten(0, (batch, frames))
    return {"blurry": (blurry.clamp(0, 1) * 2 - 1).to(device), "sharp": (sharp.clamp(0, 1) * 2 - 1).to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def affordable_clips(wanted: int, clip_s: float, share_s: float) -> int:
    """How many timed clips of `clip_s` seconds fit in `share_s` seconds: between 1 and `wanted`."""
    if clip_s <= 0 or math.isinf(share_s):
        return wanted
    return max(1, min(wanted, int(share_s // clip_s)))


def measure(name: str, precision: str, compile_: bool, args, device: torch.device,
            share_s: float = math.inf) -> dict:
    stage, large = STAGE_SETTINGS[name]
    clip_frames = args.clip_frames if stage == "pvdnet" else args.clip_frames - 1  # same step count per clip
    config = load_config(None, [
        f"run.stage='{stage}'", f"run.device='{device.type}'", f"run.precision='{precision}'",
        f"run.compile={'true' if compile_ else 'false'}", f"model.large={'true' if large else 'false'}",
        "model.bimnet_weights='random'", f"data.crop={args.size}", f"data.batch_size={args.batch}",
        f"data.clip_frames={clip_frames}", *(DRY_RUN_OVERRIDES if args.dry_run else [])])
    torch.manual_seed(0)
    trainer = build_trainer(config, device)
    batch = synthetic_batch(args.batch, clip_frames, args.size, device)
    warmup_start = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_clip(batch)
    _sync(device)
    clip_s = (time.perf_counter() - warmup_start) / args.warmup if args.warmup else 0.0
    clips = affordable_clips(args.clips, clip_s, share_s - (time.perf_counter() - warmup_start))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    records, started = [], time.perf_counter()
    for _ in range(clips):
        records += trainer.train_clip(batch)
    _sync(device)
    seconds = time.perf_counter() - started
    losses = [r["loss"] for r in records]
    peak = round(torch.cuda.max_memory_allocated(device) / BYTES_PER_GIB, 3) if device.type == "cuda" else ""
    row = {
        "bench": "train", "stage": stage, "model": name, "precision": precision, "compile": compile_,
        "batch": args.batch, "height": args.size, "width": args.size, "steps_per_clip": len(records) // clips,
        "clips_timed": clips, "steps_per_s": round(len(records) / seconds, 4),
        "ms_per_step": round(1000 * seconds / len(records), 2), "peak_mem_gib": peak,
        "loss_first": round(losses[0], 6), "loss_last": round(losses[-1], 6),
        "tf32_conv": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
    }
    print(f"{name:13s} {precision:5s} compile={compile_!s:5s} {row['steps_per_s']:8.3f} steps/s "
          f"{row['ms_per_step']:9.1f} ms/step  peak {peak if peak != '' else '-'} GiB  loss {losses[0]:.4g} -> "
          f"{losses[-1]:.4g}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="pvdnet,pvdnet_large,bimnet")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", default="off", help="off, on, or off,on")
    for key, gpu_default in GPU_DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"GPU default {gpu_default}, CPU default {CPU_DEFAULTS[key]}")
    parser.add_argument("--csv", default=str(RESULTS_CSV))
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU check of the machinery (scripts/gpu_check.sh)")
    add_time_limit_argument(parser)
    parser.add_argument("--label", default="", help="a `label` column for the rows (e.g. before / after; "
                                                     "use a CSV of its own: train.csv has no such column)")
    args = parser.parse_args(argv)

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda") if on_gpu else torch.device("cpu")
    defaults = DRY_RUN_SETTINGS if args.dry_run else (GPU_DEFAULTS if on_gpu else CPU_DEFAULTS)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGE_SETTINGS))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {sorted(STAGE_SETTINGS)}")
    precisions = [p for p in args.precisions.split(",") if p]
    compiles = [c == "on" for c in args.compile.split(",") if c]
    if not on_gpu:  # eager, PVDNet and BIMNet, the CPU kernels (pvd.kernels.cpu); bf16 only where the CPU has it
        os.environ["TRITON_INTERPRET"] = "0"
        precisions = cpu_precisions(precisions)
        compiles = [False]
        stages = [s for s in stages if s != "pvdnet_large" or args.dry_run]

    env = describe_environment(None if on_gpu else PATH_CPU_REFERENCE)
    print_banner(env)
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.clip_frames}-frame clips, {args.clips} timed clip(s) "
          f"after {args.warmup} warm-up")
    configs = [(name, precision, compile_) for name in stages for precision in precisions for compile_ in compiles
               # BIMNet trains in fp32 only (see pvd.training.stages.BIMNetTrainer)
               if STAGE_SETTINGS[name][0] != "bimnet" or precision == "fp32"]
    limit = TimeLimit(args.time_limit)
    rows = 0
    for index, (name, precision, compile_) in enumerate(configs):
        if not limit.allows(CONFIG_RESERVE_S):
            limit.skip(f"{name} {precision} compile={compile_}")
            continue
        share_s = limit.left() / (len(configs) - index)
        row = measure(name, precision, compile_, args, device, share_s)
        row = {**row, **env_columns(env)}
        append_rows(args.csv, [{"label": args.label, **row} if args.label else row])  # at once: a killed run keeps its rows
        rows += 1
    print(f"appended {rows} row(s) to {args.csv}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
