"""Quantitative evaluation: run a model over a data set with ground truth and score every frame.

    evaluate(data_root, output_dir, weights=..., ...) -> summary dict

For every video of a DVD / GoPro / synthetic data set (`pvd.data.datasets`, layouts "dvd" and "gopro"),
the model deblurs the frames in order (the clip recurrence of `pvd.nets.step`) and each output is scored against
its sharp frame with `pvd.metrics.frame_scores`:
- plain PSNR / SSIM: the original Python evaluation (whole frame, RGB, float output as it is);
- aligned PSNR / SSIM: the paper's MATLAB protocol (16-pixel border crop, least-squares intensity scale,
  integer DFT registration, luma, Gaussian SSIM, output stored as 8 bits).
The ground truth is cropped to the output's size (the 'original' size policy outputs the top-left
multiple-of-4 crop; the original evaluation crops both alike). The blurry input frame, cropped alike, is scored
the same way (`input_*`): the baseline that the deblurred output must beat.

Means, as the originals take them: plain over all scored frames of all videos (the Python evaluation);
aligned over all frames but each video's first (the MATLAB evaluation starts at frame 2). PSNR enters the means
capped at `PSNR_CAP_DB` (100 dB: identical frames score inf), and the summary counts the capped frames; a NaN
score (non-finite output) is an error. `seconds` is the
wall time of the pipeline call that produced the frame (GPU synchronised; frame decoding and scoring
excluded).

Outputs in `output_dir` (each written to a temporary name, then renamed):
- scores.csv: video, frame, index, psnr, ssim, psnr_aligned, ssim_aligned, input_psnr, input_ssim,
  input_psnr_aligned, input_ssim_aligned, seconds (one row per frame);
- summary.json: per-video and overall means, frame counts, timing, and the settings used;
- summary.md: the same as a Markdown table.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import itertools
import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch

import pvd

from . import metrics, sharding
from ._files import atomic_file, make_folder
from .data import datasets
from .frames import to_unit
from .nets import ZeroFlowModel
from .nets.step import Recurrence, bound_step, place
from .runtime import resolve_device, resolve_precision
from .weights import default_weights, load_model

SCORE_KEYS = ("psnr", "ssim", "psnr_aligned", "ssim_aligned")
INPUT_PREFIX = "input_"  # the same scores of the blurry input frame
INPUT_SCORE_KEYS = tuple(INPUT_PREFIX + key for key in SCORE_KEYS)
CSV_COLUMNS = ("video", "frame", "index") + SCORE_KEYS + INPUT_SCORE_KEYS + ("seconds",)
SCORES_NAME = "scores.csv"
SUMMARY_JSON_NAME = "summary.json"
SUMMARY_MD_NAME = "summary.md"
OUTPUT_NAMES = (SCORES_NAME, SUMMARY_JSON_NAME, SUMMARY_MD_NAME)
# The MATLAB evaluation scores frames 2..N of each video: frames before this index are left out of its mean.
FIRST_ALIGNED_INDEX = 1
GROUND_TRUTH_LAYOUTS = ("dvd", "gopro")
# `protocol="paper"`: the conditions of the original Python evaluation that produced the figures quoted for the
# official checkpoints (DVD 31.89 dB, GoPro 31.09 dB): fp32, frames cropped to a multiple of 4, the flow from
# the multiple-of-32 crop (zero beyond it), plain PSNR/SSIM (uniform 7x7 window) over all frames.
PROTOCOLS = {"default": {}, "paper": {"precision": "fp32", "size_policy": "original", "plain_ssim_window": "uniform"}}
# Identical frames score PSNR inf (and the aligned protocol's float round-off ~158 dB): in the means every PSNR
# is capped at this value, as common toolkits do, and the number of capped frames is reported (`<key>_capped`).
PSNR_CAP_DB = 100.0
PSNR_KEYS = tuple(key for key in SCORE_KEYS + INPUT_SCORE_KEYS if "psnr" in key)


def _check_limit(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _videos_with_ground_truth(data_root: Path, layout: str | None, blurry_folder: str | None):
    layout = datasets.detect_layout(data_root) if layout is None else layout
    if layout not in GROUND_TRUTH_LAYOUTS:
        raise ValueError(
            f"{data_root}: layout {layout!r} has no ground-truth frames; evaluation needs sharp frames "
            f"(DVD: <video>/input/ + <video>/GT/, GoPro: <video>/blur_gamma/ or blur/ + <video>/sharp/). "
            f"To deblur without ground truth use `pvd deblur {data_root} -o OUTPUT`")
    return layout, datasets.list_videos(data_root, layout, blurry_folder)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _json_number(value: float | None) -> float | None:
    """JSON has no inf/NaN: such values (identical frames give PSNR inf) are written as null."""
    return value if value is not None and math.isfinite(value) else None


def _aggregate(rows: list[dict]) -> dict:
    """Means of one video's (or all videos') rows, by the conventions of the module docstring."""
    aligned_rows = [row for row in rows if row["index"] >= FIRST_ALIGNED_INDEX]
    total_seconds = sum(row["seconds"] for row in rows)
    means = {"frames": len(rows), "aligned_frames": len(aligned_rows)}
    for key in SCORE_KEYS + INPUT_SCORE_KEYS:
        scored_rows = aligned_rows if key.endswith("_aligned") else rows
        values = [row[key] for row in scored_rows]
        if key in PSNR_KEYS:
            means[f"{key}_capped"] = sum(value >= PSNR_CAP_DB for value in values)
            values = [min(value, PSNR_CAP_DB) for value in values]
        means[key] = _json_number(_mean(values))
    means["seconds_per_frame"] = _json_number(total_seconds / len(rows)) if rows else None
    return means


def _format(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_summary(summary: dict) -> str:
    """The summary as Markdown: settings and one table row per video plus the overall means."""
    settings = summary["settings"]
    lines = [
        f"# Evaluation of {settings['weights'] or 'an in-memory model'} on {settings['data_root']}",
        "",
        f"Layout {settings['layout']}, device {settings['device']}, precision {settings['precision']}, "
        f"size policy {settings['size_policy']}, pvd {settings['pvd_version']}, {settings['date']}."
        + (" BIMNet replaced by a zero flow (pixel-volume ablation)." if settings.get("zero_flow") else ""),
        "Plain: whole frame, RGB, SSIM window " + settings["plain_ssim_window"] + " (all frames). Aligned: the "
        f"paper's MATLAB protocol ({settings['border']}-px crop, intensity fit, DFT registration, luma; each "
        "video's first frame excluded).",
        "",
        "| video | frames | PSNR | SSIM | PSNR aligned | SSIM aligned | s/frame |",
        "|---|---|---|---|---|---|---|",
    ]
    entries = [(name, scores) for name, scores in summary["videos"].items()] + [("**all**", summary["overall"])]
    for name, scores in entries:
        lines.append(f"| {name} | {scores['frames']} | {_format(scores['psnr'], 2)} | {_format(scores['ssim'], 4)} | "
                     f"{_format(scores['psnr_aligned'], 2)} | {_format(scores['ssim_aligned'], 4)} | "
                     f"{_format(scores['seconds_per_frame'], 3)} |")
    lines += ["", "The blurry input frames, scored alike (the baseline):", "",
              "| video | input PSNR | input SSIM | input PSNR aligned | input SSIM aligned | PSNR gain | "
              "PSNR gain aligned |", "|---|---|---|---|---|---|---|"]
    for name, scores in entries:
        gains = [None if scores[key] is None or scores[INPUT_PREFIX + key] is None
                 else scores[key] - scores[INPUT_PREFIX + key] for key in ("psnr", "psnr_aligned")]
        lines.append(f"| {name} | {_format(scores['input_psnr'], 2)} | {_format(scores['input_ssim'], 4)} | "
                     f"{_format(scores['input_psnr_aligned'], 2)} | {_format(scores['input_ssim_aligned'], 4)} | "
                     f"{_format(gains[0], 2)} | {_format(gains[1], 2)} |")
    capped = {key: summary["overall"].get(f"{key}_capped", 0) for key in PSNR_KEYS}
    if any(capped.values()):
        lines += ["", f"PSNR is capped at {PSNR_CAP_DB:g} dB in the means (identical frames score inf); capped "
                  "frames: " + ", ".join(f"{key} {count}" for key, count in capped.items() if count) + "."]
    return "\n".join(lines) + "\n"


def _score_video(recurrence: Recurrence, video: datasets.VideoFrames, limit_frames: int | None,
                 device: torch.device, score_options: dict, progress: bool, frame_sink=None) -> Iterable[dict]:
    """Deblur one video and yield a score row per frame, in order."""
    from tqdm import tqdm

    frame_count = len(video) if limit_frames is None else min(len(video), limit_frames)
    pending: dict[int, tuple[str, torch.Tensor]] = {}  # index -> (name, sharp) awaiting the output
    recurrence.reset()

    def scored(result, seconds: float) -> dict:
        index, blurry, output = result
        name, sharp = pending.pop(index)
        height, width = output.shape[-2:]
        truth = to_unit(sharp[..., :height, :width].to(device).unsqueeze(0))
        row = {"video": video.name, "frame": name, "index": index, "seconds": seconds}
        # The output is scored as it is, not clamped (the Python evaluation does so).
        row.update({key: value.item() for key, value in metrics.frame_scores(to_unit(output), truth,
                                                                             **score_options).items()})
        row.update({INPUT_PREFIX + key: value.item() for key, value in metrics.frame_scores(
            to_unit(blurry[..., :height, :width]), truth, **score_options).items()})
        broken = [key for key in SCORE_KEYS + INPUT_SCORE_KEYS if math.isnan(row[key])]
        if broken:
            source = "input frame" if all(key.startswith(INPUT_PREFIX) for key in broken) else "output"
            raise ValueError(f"{video.name}/{name}: the {source} scores NaN ({', '.join(broken)}): "
                             f"it holds non-finite values")
        if frame_sink is not None:  # --save-frames
            frame_sink(name, to_unit(output), to_unit(blurry[..., :height, :width]), truth)
        return row

    def timed(step, *args):
        _synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            result = step(*args)
        _synchronize(device)
        return result, time.perf_counter() - start

    with tqdm(total=frame_count, unit="frame", desc=video.name, disable=not progress, dynamic_ncols=True) as bar:
        frames = itertools.islice(datasets.iter_frames(video), frame_count)
        for pair in itertools.chain(frames, [None]):
            if pair is None:
                result, seconds = timed(recurrence.flush)
            else:
                pending[pair.index] = (pair.name, pair.sharp)
                result, seconds = timed(recurrence.push, pair.blurry.to(device).unsqueeze(0))
            if result is not None:
                yield scored(result, seconds)
                bar.update(1)


def evaluate(data_root: str | os.PathLike, output_dir: str | os.PathLike, *, model=None,
             weights: str | os.PathLike | None = None, allow_untrained: bool = False, large: bool = False,
             device: str | torch.device = "auto", precision: str = "auto", size_policy: str = "pad",
             layout: str | None = None, blurry_folder: str | None = None, limit_videos: int | None = None,
             limit_frames: int | None = None, plain_ssim_window: str = "uniform", border: int = metrics.EVAL_BORDER,
             zero_flow: bool = False, overwrite: bool = False, progress: bool = True,
             protocol: str = "default", save_frames: bool = False) -> dict:
    """Deblur and score the data set at `data_root`; write scores.csv, summary.json, summary.md to `output_dir`.

    model: a loaded `pvd.nets.DeblurNet`, else `pvd.weights.load_model(weights, allow_untrained=...,
    large=...)`. layout: "dvd" | "gopro" (detected when None). limit_videos / limit_frames: score only the
    first N videos / the first N frames of each. plain_ssim_window: "uniform" (the original Python
    evaluation) or "gaussian". zero_flow: replace BIMNet's flow by zero (`pvd.nets.ZeroFlowModel`; the
    pixel-volume ablation). protocol "paper" overrides precision, size_policy and plain_ssim_window with the
    original Python evaluation's conditions (`PROTOCOLS`). save_frames: also write each video's deblurred frames
    and blurry | deblurred | sharp side-by-sides (`pvd.eval_frames`). Under torchrun each process scores its
    share of the videos (`pvd.sharding`) and rank 0 writes the files, identical to one process's. Returns the
    summary (as in summary.json). Raises ValueError for a data set
    without ground truth, mismatched blurry / sharp frames, a weights file that is not a full model, or
    existing outputs without `overwrite`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    settings = {"precision": precision, "size_policy": size_policy, "plain_ssim_window": plain_ssim_window,
                **PROTOCOLS[protocol]}
    precision, size_policy, plain_ssim_window = (settings[key] for key in ("precision", "size_policy",
                                                                           "plain_ssim_window"))
    data_root, output_dir = Path(data_root), Path(output_dir)
    limit_videos = _check_limit("limit_videos", limit_videos)
    limit_frames = _check_limit("limit_frames", limit_frames)
    if plain_ssim_window not in ("uniform", "gaussian"):
        raise ValueError(f"plain_ssim_window must be 'uniform' or 'gaussian', got {plain_ssim_window!r}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    layout, videos = _videos_with_ground_truth(data_root, layout, blurry_folder)
    videos = videos[:limit_videos]
    video_order = [video.name for video in videos]
    videos = sharding.shard(videos, key=lambda video: video.name)  # hook: this rank's share under torchrun
    existing = [name for name in OUTPUT_NAMES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise ValueError(f"{output_dir} already holds {', '.join(existing)} (use overwrite=True / --overwrite)")

    dev = sharding.rank_device(resolve_device(device))
    autocast_dtype = resolve_precision(precision, dev)
    weights_used = str(weights) if weights is not None else None
    if model is None:
        model = load_model(weights, device=dev, allow_untrained=allow_untrained, large=large)
        if weights is None:
            weights_used = str(default_weights() or "random (untrained) weights")
    if zero_flow:
        model = ZeroFlowModel(model)
    model = place(model, dev)
    recurrence = Recurrence(bound_step(model, size_policy, autocast_dtype))
    score_options = {"border": border, "plain_ssim_window": plain_ssim_window}

    created_output_dir = not output_dir.exists()
    rows_by_video: dict[str, list[dict]] = {}
    try:
        make_folder(output_dir)  # an output under a file fails here, before any work
        for video in videos:
            rows = rows_by_video.setdefault(video.name, [])
            with _frame_saver(save_frames, output_dir, video.name, overwrite) as frame_sink:
                for row in _score_video(recurrence, video, limit_frames, dev, score_options, progress, frame_sink):
                    rows.append(row)
        # Under torchrun every rank scored its share; all rows are gathered in the order a single process
        # scores them, and rank 0 writes the files.
        with sharding.process_group(dev) as context:
            rows_by_video = sharding.merge_by_name(sharding.gather(rows_by_video, context), video_order)
        summary = {
            "overall": _aggregate([row for rows in rows_by_video.values() for row in rows]),
            "videos": {name: _aggregate(rows) for name, rows in rows_by_video.items()},
            "settings": {
                "data_root": str(data_root), "protocol": protocol, "layout": layout, "weights": weights_used,
                "model": type(model).__name__, "large_pvdnet": bool(getattr(model, "large", False)),
                "device": str(dev), "precision": precision, "size_policy": size_policy, "border": border,
                "plain_ssim_window": plain_ssim_window, "zero_flow": zero_flow, "limit_videos": limit_videos,
                "limit_frames": limit_frames,
                "pvd_version": pvd.__version__, "torch_version": torch.__version__,
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        }
        if context.is_main:
            with contextlib.ExitStack() as outputs:
                for name, text in ((SCORES_NAME, _csv_text(row for rows in rows_by_video.values() for row in rows)),
                                   (SUMMARY_JSON_NAME, json.dumps(summary, indent=2, allow_nan=False) + "\n"),
                                   (SUMMARY_MD_NAME, markdown_summary(summary))):
                    outputs.enter_context(atomic_file(output_dir / name)).write_text(text)
    except BaseException:
        if created_output_dir:  # a failed run leaves nothing behind (but the frames of videos it finished)
            for folder in (output_dir / "frames", output_dir / "side_by_side", output_dir):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
    return summary


def _csv_text(rows: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in CSV_COLUMNS})
    return buffer.getvalue()


def _frame_saver(save_frames: bool, output_dir: Path, video_name: str, overwrite: bool):
    """--save-frames: a context giving `sink(name, output, blurry, sharp)` that writes one video's frames
    (`pvd.eval_frames`); else a context giving None."""
    if not save_frames:
        return contextlib.nullcontext(None)
    from . import eval_frames
    return eval_frames.VideoFrameSaver(output_dir, video_name, overwrite=overwrite)
