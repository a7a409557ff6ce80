"""Measure a trained pvd model on held-out synthetic clips (the numbers behind `weights/README.md`).

For every video of a synthetic data set (`pvd synth`, GoPro layout with ground-truth flow), frames 2..N:
- PSNR/SSIM of the blurry input and of the deblurred output against the sharp frame (plain, whole frame);
- the same output with PVDNet fed a pixel volume built from a zero flow instead of BIMNet's (ablation:
  what the motion-compensated pixel volume buys);
- BIMNet's end-point error against the ground-truth flow on sharp pairs (S_t, S_{t-1}) and on the blurry
  pairs (B_t, B_{t-1}) that deblurring feeds it, and the zero-flow end-point error.

    python eval/measure_weights.py runs/synth_test --weights weights/pvd_demo.safetensors -o runs/measure

Writes `measure.json` and prints a Markdown table. Runs on the CPU reference kernels unless a GPU is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pvd import metrics
from pvd._files import atomic_file
from pvd.data import datasets
from pvd.frames import to_unit
from pvd.nets import ZeroFlowModel, run_clip
from pvd.nets.step import estimate_flow
from pvd.runtime import resolve_device
from pvd.training.losses import end_point_error
from pvd.weights import DEFAULT_WEIGHTS, load_model


def _unit(x: torch.Tensor) -> torch.Tensor:
    return to_unit(x, clamp=True)


@torch.inference_mode()
def measure(data_root: str, weights: str, device: str = "auto", limit_videos: int | None = None) -> dict:
    """The numbers of the module docstring, averaged over frames 2..N of every video. The clips are deblurred
    by `pvd.nets.run_clip` (the recurrence every user of the model shares: unclamped outputs fed back)."""
    device = resolve_device(device)
    model = load_model(weights, device=device)
    ablation = ZeroFlowModel(model)
    videos = datasets.list_videos(data_root)[:limit_videos]
    sums: dict[str, list[float]] = {key: [] for key in (
        "psnr_blurry", "ssim_blurry", "psnr_deblurred", "ssim_deblurred", "psnr_zero_flow_pv",
        "ssim_zero_flow_pv", "epe_bimnet", "epe_bimnet_blurry", "epe_zero_flow")}
    started = time.perf_counter()
    for video in videos:
        if video.sharp is None or video.flow is None:
            raise ValueError(f"{video.name}: needs sharp frames and ground-truth flow (a `pvd synth` data set)")
        blurry = [datasets.read_frame(p).unsqueeze(0).to(device) for p in video.blurry]
        sharp = [datasets.read_frame(p).unsqueeze(0).to(device) for p in video.sharp]
        clips = zip(run_clip(model, blurry), run_clip(ablation, blurry), strict=True)
        for (t, curr, deblurred), (_, _, zero_flow_pv) in clips:
            if t == 0:  # the paper's protocol scores frames 2..N
                continue
            outputs = {"deblurred": deblurred, "zero_flow_pv": zero_flow_pv}
            truth = torch.from_numpy(datasets.read_flow(video.flow[t])).unsqueeze(0).to(device)
            flow = estimate_flow(model.bimnet, sharp[t], sharp[t - 1])
            sums["epe_bimnet"].append(float(end_point_error(flow, truth)))
            blurry_flow = estimate_flow(model.bimnet, blurry[t], blurry[t - 1])
            sums["epe_bimnet_blurry"].append(float(end_point_error(blurry_flow, truth)))
            sums["epe_zero_flow"].append(float(end_point_error(torch.zeros_like(truth), truth)))
            reference = _unit(sharp[t])
            for name, image in (("blurry", curr), *outputs.items()):
                sums[f"psnr_{name}"].append(float(metrics.psnr(_unit(image), reference)))
                sums[f"ssim_{name}"].append(float(metrics.ssim(_unit(image), reference)))
    result = {key: sum(values) / len(values) for key, values in sums.items()}
    result.update(videos=len(videos), frames_scored=len(sums["epe_bimnet"]), device=str(device),
                  seconds=round(time.perf_counter() - started, 1), data_root=str(data_root), weights=str(weights))
    return result


def markdown(result: dict) -> str:
    rows = [
        ("blurry input", result["psnr_blurry"], result["ssim_blurry"]),
        ("PVDNet, pixel volume from BIMNet's flow", result["psnr_deblurred"], result["ssim_deblurred"]),
        ("PVDNet, pixel volume from a zero flow (ablation)", result["psnr_zero_flow_pv"], result["ssim_zero_flow_pv"]),
    ]
    lines = ["| frames | PSNR (dB) | SSIM |", "|---|---|---|"]
    lines += [f"| {name} | {p:.2f} | {s:.4f} |" for name, p, s in rows]
    lines += ["", "| flow | end-point error (px) |", "|---|---|",
              f"| BIMNet (sharp pairs) | {result['epe_bimnet']:.3f} |",
              f"| BIMNet (blurry pairs) | {result['epe_bimnet_blurry']:.3f} |",
              f"| zero flow | {result['epe_zero_flow']:.3f} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit-videos", type=int, default=None)
    parser.add_argument("-o", "--output", default=None, help="folder for measure.json")
    args = parser.parse_args(argv)
    result = measure(args.data_root, args.weights, args.device, args.limit_videos)
    print(markdown(result))
    print(f"\n{result['frames_scored']} frames of {result['videos']} videos on {result['device']} "
          f"in {result['seconds']} s")
    if args.output:
        with atomic_file(Path(args.output) / "measure.json") as temporary:
            temporary.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
