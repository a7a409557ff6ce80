"""Streaming deblurring of videos: `VideoDeblurrer` (a clip pushed frame by frame), `deblur_frames` and
`deblur_video` (files and folders in, files and folders out, decoding and encoding in threads).

The recurrence is `pvd.nets.step.Recurrence` (frame t uses frames clamp(t-1), t, clamp(t+1) and the previous
output; the first frame's previous output is the first blurry frame); this module adds frame formats (numpy
uint8/uint16 or tensors, `pvd.frames`), device and precision (`pvd.runtime`) and file handling (`pvd.video_io`).
B clips run in lockstep when given (B, ...) frames. PVDNet runs under bf16/fp16 autocast on CUDA; BIMNet, the
flow and the pixel volume stay fp32; on a CPU, bf16 autocast when asked or, by default, where the CPU has native
bf16 (`pvd.runtime.resolve_precision`).
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import sharding, threads, video_io
from ._files import atomic_file
from .frames import FrameFormat, frame_to_tensor, tensor_to_frame, write_png
from .kernels import cpu as cpu_kernels
from .nets.step import Recurrence, bound_step, check_size_policy, drive, place
from .runtime import resolve_device, resolve_precision
from .weights import load_model

OUTPUT_FORMATS = ("png", "mp4", "both")
IO_QUEUE_DEPTH = 4  # frames decoded ahead / awaiting encoding, per video
IO_POLL_SECONDS = 0.1


class VideoDeblurrer:
    """Recurrent, streaming deblurring of one clip, or of B clips in lockstep.

    Feed frames in order with `push` (returns the output for the frame before, once its next frame is
    known, else None) and call `flush` at the end; or iterate `run(frames)`. Frames: numpy RGB uint8/uint16
    (H, W, 3) or (B, H, W, 3), or float tensors (3, H, W) / (B, 3, H, W) in [-1, 1]; outputs come back in the
    same format (numpy clamped and rounded; tensors float, not clamped, on the input's device). Only a
    3-frame window and the previous output are kept.

    model: a `pvd.nets.DeblurNet` or anything holding `.bimnet` and `.pvdnet` (moved to `device`, put in eval
    mode). precision: 'auto' | 'fp32' | 'bf16' | 'fp16' (fp16 only on CUDA; see `pvd.runtime.resolve_precision`).
    channels_last: the networks' memory format (`place`).
    compile: wrap both networks in torch.compile. tile, tile_overlap: tiled steps (`pvd.tiling.TiledStep`;
    an int, or 'auto'), None: whole frames.
    """

    def __init__(self, model, device: str | torch.device = "auto", precision: str = "auto",
                 size_policy: str = "pad", channels_last: bool | None = None, compile: bool = False,
                 tile=None, tile_overlap: int | None = None):
        check_size_policy(size_policy)
        self.device = resolve_device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.size_policy = size_policy
        self.model = model = place(model, self.device, channels_last)
        step_function = None
        if tile is not None:  # tiled steps, bounded memory for any frame size (pvd.tiling)
            from .tiling import TiledStep

            step_function = TiledStep(tile, tile_overlap)
        self.step_function = step_function  # None: whole-frame steps
        self._recurrence = Recurrence(bound_step(model, size_policy, self.autocast_dtype, compile, step_function))
        self.reset()

    def reset(self) -> None:
        """Forget the clip: the next pushed frame starts a new one."""
        self._format: FrameFormat | None = None
        self._recurrence.reset()

    @property
    def frames_in(self) -> int:
        return self._recurrence.frames_in

    @property
    def frames_out(self) -> int:
        return self._recurrence.frames_out

    @torch.inference_mode()
    def push(self, frame):
        """Add the next frame; returns the deblurred previous frame (None after the first frame)."""
        frame_format = FrameFormat.of(frame)
        tensor = frame_to_tensor(frame, self.device)
        if self._format is None:
            self._format = frame_format
            threads.fit_to_frame(*tensor.shape[-2:])  # small frames run faster on one thread
        elif (frame_format.kind, frame_format.shape) != (self._format.kind, self._format.shape):
            raise ValueError(f"frame {self.frames_in} has shape {frame_format.shape} ({frame_format.kind}), "
                             f"the clip's first frame {self._format.shape} ({self._format.kind})")
        return self._handed_back(self._recurrence.push(tensor))

    @torch.inference_mode()
    def flush(self):
        """Deblur the last pushed frame (its next frame is itself) and end the clip; None if nothing is pending."""
        out = self._handed_back(self._recurrence.flush())
        self._format = None
        return out

    def _handed_back(self, result):
        return None if result is None else tensor_to_frame(result[2], self._format)

    def run(self, frames: Iterable) -> Iterator:
        """Deblur a whole clip, streaming: yields one output per input frame, in order."""
        self.reset()
        yield from drive(self.push, self.flush, frames)


def deblur_frames(model, frames: Iterable, **options) -> Iterator:
    """Generator: deblurred frames of the clip `frames`, one per input, in order (see `VideoDeblurrer`).

    options: device, precision, size_policy, channels_last, compile.
    """
    yield from VideoDeblurrer(model, **options).run(frames)


# --------------------------------------------------------------------------------------------- video files


@dataclass
class VideoResult:
    """What `deblur_video` did for one input video."""

    name: str
    frames: int
    seconds: float
    outputs: list[Path] = field(default_factory=list)
    announced_frames: int | None = None  # a video file's frame count as its container states it

    @property
    def truncated(self) -> bool:
        """Fewer frames decoded than the container announces (damaged data, a lying header)."""
        return self.announced_frames is not None and self.frames < self.announced_frames

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _output_paths(output: Path, fmt: str, video: video_io.Video, single: bool) -> tuple[Path | None, Path | None]:
    """(frames_dir, mp4_path) for one video. Single video: frames go to OUTPUT (an .mp4 suffix stripped) and
    the mp4 to OUTPUT.mp4 (OUTPUT itself when it ends in .mp4); a collection: OUTPUT/<name>/ and OUTPUT/<name>.mp4.
    """
    if single:
        base = output.with_suffix("") if output.suffix.lower() == ".mp4" else output
    else:
        base = output / video.name
    frames_dir = base if fmt in ("png", "both") else None
    mp4_path = base.parent / f"{base.name}.mp4" if fmt in ("mp4", "both") else None
    return frames_dir, mp4_path


def deblur_video(input: str | os.PathLike, output: str | os.PathLike, *, model=None,  # noqa: A002
                 weights: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
                 size_policy: str = "pad", side_by_side: bool = False, format: str | None = None,  # noqa: A002
                 allow_untrained: bool = False, overwrite: bool = False, progress: bool = True,
                 compile: bool = False, crf: int = video_io.DEFAULT_CRF, fps: float | None = None,
                 tile=None, tile_overlap: int | None = None, strict: bool = False) -> list[VideoResult]:
    """Deblur every video at `input` (video file, frame folder, or folder of those) into `output`.

    format: 'png' (a folder of frames), 'mp4', or 'both'; default: 'mp4' if output ends in .mp4, else 'png'.
    Output names: see `_output_paths`. Each output has the input's frame count and size ('original' size
    policy: the multiple-of-4 crop; side_by_side: input | output, twice as wide). Outputs appear only when
    complete; on error no partial output remains (videos finished before it stay). model: a loaded model,
    else `load_model(weights, allow_untrained=...)`. crf: the h264 quality (`video_io.VideoWriter`); fps: the
    mp4's frame rate (default: the source's exact rate and timestamps, 30 for frame folders). tile,
    tile_overlap: tiled inference (`pvd.tiling`; None: whole frames). A video file that decodes to fewer frames
    than its container announces is written with a warning (`VideoResult.truncated`), or refused with strict
    (VideoError, its outputs removed). Under torchrun each process deblurs its
    share of the videos (`pvd.sharding`) on its own GPU. Returns one VideoResult per video (this process's).
    """
    input_path, output = Path(input), Path(output)
    check_size_policy(size_policy)
    fmt = format or ("mp4" if output.suffix.lower() == ".mp4" else "png")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if output.suffix.lower() in video_io.VIDEO_SUFFIXES and output.suffix.lower() != ".mp4":
        raise ValueError(f"{output}: video output is written as .mp4 only")
    videos = video_io.find_videos(input_path)
    if input_path.is_file() and input_path.suffix.lower() in video_io.IMAGE_SUFFIXES and \
            output.suffix.lower() in video_io.IMAGE_SUFFIXES:  # one image in, one image out
        return [_deblur_image(videos[0], output, model=model, weights=weights, device=device, precision=precision,
                              size_policy=size_policy, allow_untrained=allow_untrained, overwrite=overwrite,
                              compile=compile, tile=tile, tile_overlap=tile_overlap)]
    single = len(videos) == 1 and (videos[0].path.resolve() == input_path.resolve()
                                   or not input_path.exists())  # one video, or a glob of frames
    plans = [(video, *_output_paths(output, fmt, video, single)) for video in videos]
    _check_plans(plans)
    plans = sharding.shard(plans, key=lambda plan: plan[0].name)  # this process's share under torchrun
    for _, frames_dir, mp4_path in plans:
        for target in (frames_dir, mp4_path):
            if target is not None and target.exists() and not overwrite:
                raise video_io.VideoError(f"{target}: output already exists (use overwrite=True / --overwrite)")
    deblurrer = _deblurrer(model, weights, device, allow_untrained, precision=precision, size_policy=size_policy,
                           compile=compile, tile=tile, tile_overlap=tile_overlap)
    writer_options = {"crf": crf, "fps": fps}

    created = _missing_folders(output.parent if single else output)
    results = []
    try:
        with cpu_kernels.compiled_kernels(cpu_kernels.compiled_pays_off(_job_pixels(plan[0] for plan in plans))):
            for video, frames_dir, mp4_path in plans:
                results.append(_deblur_one(deblurrer, video, frames_dir, mp4_path, side_by_side, overwrite,
                                           progress, writer_options, strict))
    except BaseException:
        for folder in reversed(created):  # the folders this call created, if they stayed empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return results


def _job_pixels(videos: Iterable[video_io.Video]) -> int | None:
    """Frames x height x width summed over `videos`; None when a container does not say how many frames it has."""
    videos = list(videos)
    if any(video.frame_count <= 0 for video in videos):
        return None
    return sum(video.frame_count * video.width * video.height for video in videos)


def _deblurrer(model, weights, device, allow_untrained: bool, precision: str = "auto", **options) -> VideoDeblurrer:
    """The streaming deblurrer of `model`, else of `load_model(weights, allow_untrained=...)`, on this process's
    device (its own GPU under torchrun); a bad precision fails before any weights are read."""
    dev = sharding.rank_device(resolve_device(device))
    resolve_precision(precision, dev)
    if model is None:
        model = load_model(weights, device=dev, allow_untrained=allow_untrained)
    return VideoDeblurrer(model, device=dev, precision=precision, **options)


def _deblur_image(video: video_io.Video, output: Path, *, model, weights, device, precision, size_policy,
                  allow_untrained, overwrite, **options) -> VideoResult:
    """A lone image deblurred into the image file `output` (its format from the suffix), written atomically.
    With no neighbours, the image is its own previous and next frame. options: compile, tile, tile_overlap,
    as for videos."""
    _check_plans([(video, output, None)])
    if output.exists() and not overwrite:
        raise video_io.VideoError(f"{output}: output already exists (use overwrite=True / --overwrite)")
    deblurrer = _deblurrer(model, weights, device, allow_untrained, precision=precision, size_policy=size_policy,
                           **options)
    start = time.perf_counter()
    with cpu_kernels.compiled_kernels(cpu_kernels.compiled_pays_off(_job_pixels([video]))):
        (frame,) = deblurrer.run(video.frames())
    with atomic_file(output, overwrite=overwrite) as temporary:
        write_png(temporary, frame)  # OpenCV picks the format from the suffix (png, jpg, tif, ...)
    result = VideoResult(video.name, 1, time.perf_counter() - start)
    result.outputs = [output]
    return result


def _within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def _check_plans(plans: list) -> None:
    """Refuse, before any work and whatever --overwrite says, outputs that would destroy an input (an output
    equal to an input, containing it, or inside an input frame folder) and two inputs mapped to one output."""
    sources = [video.path.resolve() for video, _, _ in plans]
    claimed: dict[Path, Path] = {}
    for (video, *targets), source in zip(plans, sources):
        for target in (t for t in targets if t is not None):
            resolved = target.resolve()
            for other in sources:
                if _within(other, resolved) or (other.is_dir() and _within(resolved, other)):
                    raise ValueError(f"{target}: the output would overwrite the input {other} "
                                     f"(refused, even with --overwrite): choose another output")
            if resolved in claimed:
                raise ValueError(f"{claimed[resolved]} and {video.path} would both be written to {target}: "
                                 f"rename one of them (nothing was written)")
            claimed[resolved] = video.path


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for candidate in [folder, *folder.parents]:
        if candidate.exists():
            break
        missing.append(candidate)
    return missing[::-1]


def _deblur_one(deblurrer: VideoDeblurrer, video: video_io.Video, frames_dir, mp4_path, side_by_side: bool,
                overwrite: bool, progress: bool, writer_options: dict | None = None,
                strict: bool = False) -> VideoResult:
    """Deblur one video into its outputs; decoding and encoding run in threads, overlapping the networks."""
    from tqdm import tqdm

    pending_inputs: collections.deque = collections.deque()  # blurry frames awaiting their output (<= 2)

    decoded = _read_ahead(video.frames(), IO_QUEUE_DEPTH)

    def source():
        for frame in decoded:
            pending_inputs.append(frame)
            yield frame

    result = VideoResult(video.name, 0, 0.0)
    start = time.perf_counter()
    writer = video_io.VideoWriter(frames_dir, mp4_path, frame_names=video.frame_names, overwrite=overwrite,
                                  source=video, **(writer_options or {}))
    bar = tqdm(total=video.frame_count or None, unit="frame", desc=video.name, disable=not progress,
               dynamic_ncols=True)
    try:
        with writer, bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvd-write") as encoder:
            writes: collections.deque = collections.deque()
            for out in deblurrer.run(source()):
                blurry = pending_inputs.popleft()
                if side_by_side:
                    out = np.concatenate([blurry[: out.shape[0], : out.shape[1]], out], axis=1)
                writes.append(encoder.submit(writer.write, out))
                if len(writes) > IO_QUEUE_DEPTH:
                    writes.popleft().result()  # bounded memory; re-raises a write error here
                result.frames += 1
                bar.update(1)
            while writes:
                writes.popleft().result()
            if video.frame_paths is None and video.frame_count:  # a video file: did every frame decode?
                result.announced_frames = video.frame_count
                if result.truncated:
                    message = (f"{video.path}: only {result.frames} of the {video.frame_count} frames its container "
                               f"announces decoded (damaged or truncated video)")
                    if strict:
                        raise video_io.VideoError(message + "; refused under --strict")
                    warnings.warn(message, stacklevel=2)
    finally:
        decoded.close()  # stops the reading thread, also after an error
    result.seconds = time.perf_counter() - start
    result.outputs = writer.outputs
    return result


def _read_ahead(iterable: Iterable, depth: int) -> Iterator:
    """Iterate `iterable` in a worker thread, at most `depth` items ahead; its exceptions are raised here.

    Closing the returned generator early (an error downstream) stops the worker.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    finished = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=IO_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((finished, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put((finished, error))

    worker = threading.Thread(target=work, name="pvd-read", daemon=True)
    worker.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is finished:
                return
            yield item
    finally:
        stop.set()
        worker.join()
