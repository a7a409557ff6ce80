"""`pvd demo`: deblur a short synthetic clip of a bundled, held-out photograph and score it.

The clip is rendered in memory by the synthetic-blur generator (`pvd.data.synth.render_video`: a camera
shaking over `pvd/assets/astronaut.jpg`, blurry frames averaged over the exposure in linear light, sharp
frames at mid-exposure), deblurred with the bundled weights (`pvd.weights.DEFAULT_WEIGHTS`), and scored
against its sharp frames with the plain protocol of `pvd eval` (whole-frame RGB PSNR; SSIM with the 7x7
uniform window), for the blurry input and for the output.

Output folder (written under a temporary name next to it, renamed when complete):

    OUT/blurry/00000.png ...     blurry input frames (RGB, 8-bit)
    OUT/sharp/00000.png ...      ground-truth sharp frames
    OUT/deblurred/00000.png ...  deblurred frames
    OUT/deblurred.mp4            the deblurred frames as a video
    OUT/side_by_side.png         the middle frame: blurry input | deblurred | sharp, with a label bar above
    OUT/results.json             what `run_demo` returns

Everything but timings is a function of the photograph, the seed, the sizes and the weights: runs repeat
exactly on one device.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch

from . import metrics, video_io
from ._files import atomic_dir
from .data import synth
from .frames import UINT8_MAX, read_image, write_png
from .kernels import cpu as cpu_kernels
from .runtime import resolve_device, resolve_precision
from .stream import VideoDeblurrer
from .weights import default_weights, load_model

PHOTOGRAPH_NAME = "astronaut.jpg"
DEFAULT_OUT_DIR = "demo_out"
DEFAULT_FRAMES = 8
DEFAULT_SIZE = (256, 256)  # (height, width)
DEFAULT_SEED = 0
FPS = 10.0  # frame rate of the mp4; the clip is short
BLURRY_FOLDER = "blurry"
SHARP_FOLDER = "sharp"
DEBLURRED_FOLDER = "deblurred"
VIDEO_FILE = "deblurred.mp4"
SIDE_BY_SIDE_FILE = "side_by_side.png"
RESULTS_FILE = "results.json"
SSIM_WINDOW = "uniform"  # the plain protocol of `pvd eval` (the original Python evaluation)

# Side-by-side labels: white Hershey text on a dark bar above the panels (the panels stay untouched).
LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_MAX_SCALE = 0.6
LABEL_MIN_SCALE = 0.2
LABEL_SCALE_STEP = 0.05
LABEL_MARGIN = 4  # pixels around the text
LABEL_THICKNESS = 1
LABEL_COLOUR = (255, 255, 255)  # RGB
LABEL_BAR_COLOUR = (32, 32, 32)

def load_photograph() -> np.ndarray:
    """The bundled photograph, RGB uint8 (512, 512, 3)."""
    with resources.as_file(resources.files("pvd") / "assets" / PHOTOGRAPH_NAME) as path:
        return read_image(path)


def render_clip(settings: synth.SynthSettings, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Blurry and sharp RGB uint8 frames (H, W, 3) of one camera-shake clip over the bundled photograph.

    Returns (blurry, sharp, info): info holds the synthesis settings and the drawn peak camera speed.
    """
    info: dict = {}
    rendered = list(synth.render_video(load_photograph(), settings, np.random.default_rng(seed), info=info))
    info["settings"] = asdict(settings)
    return [frame.blurry for frame in rendered], [frame.sharp for frame in rendered], info


def _as_unit_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 frames (H, W, 3) -> (T, 3, H, W) float64 in [0, 1]."""
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return stacked.to(torch.float64) / UINT8_MAX


def score(frames: Sequence[np.ndarray], sharp: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Per-frame plain PSNR (dB, RGB, whole frame) and SSIM (7x7 uniform window) of uint8 frames vs sharp."""
    result, reference = _as_unit_tensor(frames), _as_unit_tensor(sharp)
    return {"psnr": metrics.psnr(result, reference).tolist(),
            "ssim": metrics.ssim(result, reference, window=SSIM_WINDOW).tolist()}


def _label_bar(text: str, width: int, height: int) -> np.ndarray:
    """A (height, width, 3) uint8 bar with `text` centred, shrunk to fit the width."""
    bar = np.empty((height, width, 3), dtype=np.uint8)
    bar[:] = LABEL_BAR_COLOUR
    scale = _label_scale(text, width)
    (text_width, text_height), _ = cv2.getTextSize(text, LABEL_FONT, scale, LABEL_THICKNESS)
    origin = (max(0, (width - text_width) // 2), (height + text_height) // 2)
    cv2.putText(bar, text, origin, LABEL_FONT, scale, LABEL_COLOUR, LABEL_THICKNESS, cv2.LINE_AA)
    return bar


def _label_scale(text: str, width: int) -> float:
    """Largest font scale (down to the minimum) at which `text` fits `width` with margins."""
    scale = LABEL_MAX_SCALE
    while scale > LABEL_MIN_SCALE:
        text_width = cv2.getTextSize(text, LABEL_FONT, scale, LABEL_THICKNESS)[0][0]
        if text_width + 2 * LABEL_MARGIN <= width:
            break
        scale -= LABEL_SCALE_STEP
    return max(scale, LABEL_MIN_SCALE)


def side_by_side(panels: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Panels (H, W, 3) uint8 side by side, each under a label bar: -> (bar + H, len * W, 3) uint8."""
    width = panels[0].shape[1]
    bar_height = max(
        cv2.getTextSize(label, LABEL_FONT, _label_scale(label, width), LABEL_THICKNESS)[0][1] for label in labels
    ) + 2 * LABEL_MARGIN + LABEL_THICKNESS
    columns = [np.concatenate([_label_bar(label, width, bar_height), panel])
               for panel, label in zip(panels, labels, strict=True)]
    return np.concatenate(columns, axis=1)


def _write_frames(folder: Path, frames: Sequence[np.ndarray]) -> None:
    folder.mkdir()
    for index, frame in enumerate(frames):
        write_png(folder / f"{index:05d}.png", frame)


def demo_settings(frames: int, size: tuple[int, int]) -> synth.SynthSettings:
    """The synthesis settings of the demo clip (the generator's defaults but for length and size); ValueError
    for a bad frame count or size."""
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    return synth.SynthSettings(frames=frames, height=height, width=width)


def run_demo(out_dir: str | os.PathLike = DEFAULT_OUT_DIR, weights: str | os.PathLike | None = None,
             device: str = "auto", frames: int = DEFAULT_FRAMES, size: tuple[int, int] = DEFAULT_SIZE,
             seed: int = DEFAULT_SEED, *, allow_untrained: bool = False, overwrite: bool = False,
             precision: str = "auto", progress: bool = False) -> dict:
    """Render, deblur and score the demo clip; write `out_dir` (see the module docstring); return the results.

    weights: a checkpoint of the full model; default `pvd.weights.DEFAULT_WEIGHTS`. When that is missing:
    `pvd.weights.UntrainedModelError` (a ValueError), unless allow_untrained (seeded random weights, with
    `load_model`'s warning; results["untrained"] is then True). device: 'auto' | 'cpu' | 'cuda'. size: (height, width).
    An existing out_dir raises ValueError unless overwrite; nothing is written before everything succeeded.

    Returns a dict: out_dir, files, device, weights, untrained, frames, height, width, seed, photograph,
    synthesis (settings, camera peak shift), psnr_blurry / psnr_deblurred (dB) and ssim_blurry /
    ssim_deblurred (means over frames), per_frame (the per-frame lists), seconds (total wall time),
    deblur_seconds (the networks, all frames).
    """
    start = time.perf_counter()
    settings = demo_settings(frames, size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    dev = resolve_device(device)
    resolve_precision(precision, dev)
    weights_used = Path(weights) if weights is not None else default_weights()
    untrained = weights_used is None
    model = load_model(weights, device=dev, allow_untrained=allow_untrained)

    blurry, sharp, info = render_clip(settings, seed)
    deblur_start = time.perf_counter()
    deblurrer = VideoDeblurrer(model, device=dev, precision=precision)
    outputs = deblurrer.run(blurry)
    if progress:
        from tqdm import tqdm
        outputs = tqdm(outputs, total=frames, desc="demo", unit="frame", dynamic_ncols=True)
    with cpu_kernels.compiled_kernels(cpu_kernels.compiled_pays_off(frames * settings.height * settings.width)):
        deblurred = list(outputs)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    deblur_seconds = time.perf_counter() - deblur_start

    blurry_scores, deblurred_scores = score(blurry, sharp), score(deblurred, sharp)
    middle = frames // 2
    output_label = "deblurred (RANDOM weights)" if untrained else "deblurred"
    comparison = side_by_side([blurry[middle], deblurred[middle], sharp[middle]],
                              ["blurry input", output_label, "sharp"])
    results = {
        "out_dir": str(out),
        "files": {"blurry": BLURRY_FOLDER, "sharp": SHARP_FOLDER, "deblurred": DEBLURRED_FOLDER,
                  "video": VIDEO_FILE, "side_by_side": SIDE_BY_SIDE_FILE, "results": RESULTS_FILE},
        "device": str(dev),
        "weights": None if untrained else str(weights_used),
        "untrained": untrained,
        "frames": frames,
        "height": settings.height,
        "width": settings.width,
        "seed": seed,
        "photograph": PHOTOGRAPH_NAME,
        "middle_frame": middle,
        "synthesis": info,
        "psnr_blurry": float(np.mean(blurry_scores["psnr"])),
        "psnr_deblurred": float(np.mean(deblurred_scores["psnr"])),
        "ssim_blurry": float(np.mean(blurry_scores["ssim"])),
        "ssim_deblurred": float(np.mean(deblurred_scores["ssim"])),
        "per_frame": {"psnr_blurry": blurry_scores["psnr"], "psnr_deblurred": deblurred_scores["psnr"],
                      "ssim_blurry": blurry_scores["ssim"], "ssim_deblurred": deblurred_scores["ssim"]},
        "deblur_seconds": deblur_seconds,
    }
    _write_output(out, overwrite, blurry, sharp, deblurred, comparison, results, start)
    return results


def _write_output(out: Path, overwrite: bool, blurry, sharp, deblurred, comparison, results: dict,
                  start: float) -> None:
    """Write every file into a temporary sibling of `out`, then rename it to `out` (replacing it if allowed)."""
    with atomic_dir(out, overwrite=overwrite) as temporary:
        _write_frames(temporary / BLURRY_FOLDER, blurry)
        _write_frames(temporary / SHARP_FOLDER, sharp)
        with video_io.VideoWriter(temporary / DEBLURRED_FOLDER, temporary / VIDEO_FILE, fps=FPS) as writer:
            for frame in deblurred:
                writer.write(frame)
        write_png(temporary / SIDE_BY_SIDE_FILE, comparison)
        results["seconds"] = time.perf_counter() - start
        (temporary / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
