"""How much the mp4 loses: h264 (pvd's writer, PyAV) vs the old OpenCV mp4v writer, against the PNG frames.

    python bench/video_codec.py FRAME_FOLDER [--crf 17] [--fps 30]
    python bench/video_codec.py --demo-clip 1280x720 [--frames 8]   # the demo clip's blurry frames, rendered

Writes both mp4s to a temporary folder, decodes them back (PyAV) and prints the mean PSNR (dB, RGB, 8 bits)
of the decoded frames against the PNGs and the file sizes. The PNGs are what `pvd deblur --format both` writes
beside the mp4 (lossless): score from those.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvd import video_io  # noqa: E402
from pvd.frames import to_8_bit  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def measure(frames: list[np.ndarray], crf: int, fps: float) -> dict:
    """Encode `frames` (RGB uint8, even sides) both ways; PSNR of the decoded frames and sizes in bytes."""
    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        h264, mp4v = Path(folder) / "h264.mp4", Path(folder) / "mp4v.mp4"
        with video_io.VideoWriter(video_path=h264, fps=fps, crf=crf) as writer:
            for frame in frames:
                writer.write(frame)
        opencv = cv2.VideoWriter(str(mp4v), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for frame in frames:
            opencv.write(np.ascontiguousarray(frame[:, :, ::-1]))
        opencv.release()
        result = {}
        for name, path in (("h264", h264), ("mp4v", mp4v)):
            decoded = list(video_io.find_videos(path)[0])
            assert len(decoded) == len(frames), (name, len(decoded))
            scores = [psnr(d[:height, :width], f) for d, f in zip(decoded, frames)]
            result[name] = {"psnr_db": statistics.mean(scores), "min_psnr_db": min(scores),
                            "bytes": path.stat().st_size}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="folder of PNG frames (e.g. a `pvd deblur` output)")
    parser.add_argument("--demo-clip", default=None, metavar="WxH", help="render the demo clip at this size instead")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--crf", type=int, default=video_io.DEFAULT_CRF)
    parser.add_argument("--fps", type=float, default=video_io.DEFAULT_FPS)
    args = parser.parse_args(argv)
    if args.demo_clip:
        from pvd import demo

        width, height = (int(v) for v in args.demo_clip.lower().split("x"))
        frames, _, _ = demo.render_clip(demo.demo_settings(args.frames, (height, width)), demo.DEFAULT_SEED)
        label = f"demo clip (blurry frames) {width}x{height}"
    elif args.folder:
        frames = list(video_io.find_videos(args.folder)[0])
        label = args.folder
    else:
        parser.error("give a FRAME_FOLDER or --demo-clip WxH")
    frames = [to_8_bit(f)[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    result = measure(frames, args.crf, args.fps)
    height, width = frames[0].shape[:2]
    print(f"{label}: {len(frames)} frames {width}x{height}")
    for name, values in result.items():
        print(f"  {name:5s}: mean PSNR {values['psnr_db']:.2f} dB (min {values['min_psnr_db']:.2f}) vs the PNGs, "
              f"{values['bytes']} bytes")
    print(f"  h264 / mp4v size: {result['h264']['bytes'] / result['mp4v']['bytes']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
