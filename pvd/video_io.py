"""Video input and output: video files and folders of frames in, PNG frames and/or h264 mp4 out.

Inputs (`find_videos`):
- a video file (any FFmpeg container: `.mp4`, `.mov`, `.mkv`, `.avi`, `.webm`, ..., decoded by PyAV);
- a folder of frames (png/jpg/jpeg/bmp/tif/tiff/webp, read by OpenCV, sorted naturally: `2.png` before `10.png`);
- a folder of such folders (and/or video files): one video per entry, in natural order.

Frames are streamed as RGB numpy arrays (H, W, 3), uint8, or uint16 for 16-bit PNG/TIFF frames and video of more
than 8 bits; gray and RGBA inputs are converted to RGB with a warning. Without PyAV (`av_codec.HAS_AV` False)
video files are refused with a one-line message and frame folders still work. Bad input raises `VideoError` (a
ValueError) naming the file: missing path, unreadable or corrupt frame, frame sizes differing inside one video,
empty folder.

Outputs (`VideoWriter`): PNG frames (16-bit kept) and/or an h264 mp4 (`pvd.av_codec.H264Encoder`: CRF 17 by
default, the source's exact rate and timestamps, its audio copied, metadata and rotation kept). They are written
under temporary names next to their destination and renamed into place when the video is complete; on error the
temporaries are removed, so no partial output remains.
"""

from __future__ import annotations

import contextlib
import glob
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fractions import Fraction

import cv2
import numpy as np

from . import av_codec
from ._files import atomic_dir, atomic_file, natural_key, visible
from .frames import FrameError, read_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv", ".mxf", ".y4m")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 30.0  # frame rate given to mp4 outputs of frame folders, which carry none
DEFAULT_CRF = av_codec.DEFAULT_CRF


VideoError = FrameError  # bad video input or output (a ValueError); the message names the offending file




def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and visible(path)


def _is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and visible(path)


@dataclass(frozen=True)
class Video:
    """One input video: metadata plus a streaming frame iterator (`frames()` or iteration).

    width, height: frame size in pixels; frame_count: number of frames (for video files the container's
    count, which some files get wrong: iteration yields what decodes); fps: frames per second (None for
    frame folders); frame_paths: the sorted frame files of a frame folder, else None; rate: the exact frame
    rate of a video file (e.g. Fraction(24000, 1001)), else None.
    """

    name: str
    path: Path
    width: int
    height: int
    frame_count: int
    fps: float | None
    frame_paths: tuple[Path, ...] | None = None
    rate: Fraction | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.height, self.width

    @property
    def frame_names(self) -> list[str] | None:
        """Stems of the frame files (unique) for naming outputs alike, else None."""
        if self.frame_paths is None:
            return None
        stems = [p.stem for p in self.frame_paths]
        return stems if len(set(stems)) == len(stems) else None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.frames()

    def frames(self) -> Iterator[np.ndarray]:
        """Yield RGB frames (H, W, 3) uint8/uint16 one at a time; VideoError on a bad or differently sized frame."""
        if self.frame_paths is not None:
            yield from self._folder_frames()
        else:
            yield from self._file_frames()

    def _check_size(self, frame: np.ndarray, source: str) -> None:
        if frame.shape[:2] != (self.height, self.width):
            raise VideoError(f"{source}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the video's "
                             f"{self.width}x{self.height} (all frames of a video must have one size)")

    def _folder_frames(self) -> Iterator[np.ndarray]:
        warned: set = set()
        for path in self.frame_paths:
            frame = read_image(path, warned)
            self._check_size(frame, str(path))
            yield frame

    def _file_frames(self) -> Iterator[np.ndarray]:
        decoded = 0
        try:
            for frame in av_codec.decode(self.path):
                self._check_size(frame, f"{self.path} (frame {decoded})")
                decoded += 1
                yield frame
        except av_codec.CodecError as error:
            raise VideoError(str(error)) from error
        if decoded == 0:
            raise VideoError(f"{self.path}: no frame could be decoded (corrupt or unsupported video)")


def open_video_file(path: str | os.PathLike) -> Video:
    """Metadata of a video file, read through PyAV. VideoError if it is missing, does not open, or PyAV is
    not installed."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        info = av_codec.probe(path)
    except av_codec.CodecError as error:
        raise VideoError(f"{path}: {error}" if str(path) not in str(error) else str(error)) from error
    fps = float(info.rate) if info.rate else None
    return Video(path.stem, path, info.width, info.height, max(info.frame_count, 0), fps, None, info.rate)


def open_frame_folder(path: str | os.PathLike) -> Video:
    """A folder of png/jpg frames as one video; the first frame gives the size. VideoError if it has no frames."""
    path = Path(path)
    if not path.is_dir():
        raise VideoError(f"{path}: no such folder")
    frame_paths = sorted((p for p in path.iterdir() if _is_image(p)), key=lambda p: natural_key(p.name))
    if not frame_paths:
        raise VideoError(f"{path}: folder holds no frames ({', '.join(IMAGE_SUFFIXES)})")
    return _frames_video(path.name, path, frame_paths)


def _frames_video(name: str, path: Path, frame_paths: list[Path]) -> Video:
    """Image files, in order, as one video named `name`; the first frame gives the size."""
    height, width = read_image(frame_paths[0], warned={"gray", "alpha"}).shape[:2]
    return Video(name, path, width, height, len(frame_paths), None, tuple(frame_paths))


def _glob_videos(pattern: str) -> list[Video]:
    """A quoted glob ('frames/*.png', 'clips/*.mp4'): its images as one video (named after their folder), or
    each matched video file / frame folder. VideoError when it matches nothing usable."""
    matches = sorted((Path(m) for m in glob.glob(pattern)), key=lambda p: natural_key(str(p)))
    images = [m for m in matches if _is_image(m)]
    if images:
        if len(images) != len(matches):
            raise VideoError(f"{pattern}: matches images and other files; give a pattern of frames only")
        return [_frames_video(images[0].parent.name or "frames", images[0].parent, images)]
    videos = [video for m in matches for video in find_videos(m) if _is_video_file(m) or m.is_dir()]
    if not videos:
        raise VideoError(f"{pattern}: matches no frames ({', '.join(IMAGE_SUFFIXES)}), videos or frame folders")
    return videos


def find_videos(path: str | os.PathLike) -> list[Video]:
    """All videos at `path`: a video file, a lone image (one frame), a frame folder, or a folder of frame
    folders / video files (a folder holding frames is one video; its sub-folders are then ignored).

    Raises VideoError if the path is missing, or is a folder with neither frames nor videos.
    """
    path = Path(path)
    if not path.exists() and glob.has_magic(str(path)):
        return _glob_videos(str(path))
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [_single_image_video(path)]
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise VideoError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor a frame folder")
        return [open_video_file(path)]
    entries = sorted((p for p in path.iterdir() if visible(p)), key=lambda p: natural_key(p.name))
    if any(_is_image(p) for p in entries):
        return [open_frame_folder(path)]
    videos = []
    for entry in entries:
        if entry.is_dir() and any(_is_image(p) for p in entry.iterdir()):
            videos.append(open_frame_folder(entry))
        elif _is_video_file(entry):
            videos.append(open_video_file(entry))
    if not videos:
        nested = next((sub for entry in entries if entry.is_dir() for sub in sorted(entry.iterdir())
                       if sub.is_dir() and any(_is_image(p) for p in sub.iterdir())), None)
        if nested is not None:  # e.g. a DVD / GoPro data set root: <root>/<video>/<blurry|sharp>/frames
            raise VideoError(f"{path}: holds no frames or videos itself but frame folders one level deeper "
                             f"(e.g. {nested}): a data set with ground truth is scored with `pvd eval`; to "
                             f"deblur, point at a folder of frames or of videos (e.g. {nested})")
        raise VideoError(f"{path}: empty folder: no frames ({', '.join(IMAGE_SUFFIXES)}), no videos "
                         f"({', '.join(VIDEO_SUFFIXES)}) and no sub-folders of frames")
    return videos


def _single_image_video(path: Path) -> Video:
    """A lone image as a one-frame video."""
    height, width = read_image(path, warned={"gray", "alpha"}).shape[:2]
    return Video(path.stem, path, width, height, 1, None, (path,))


# ----------------------------------------------------------------------------------------------------------- output


class VideoWriter:
    """Writes one video as PNG frames into `frames_dir` and/or as an h264 mp4 at `video_path`.

    Use as a context manager: outputs go to hidden temporary siblings and are renamed into place on a clean
    exit; on an exception they are deleted. Frames: RGB (H, W, 3) uint8 or uint16 (PNG keeps 16 bits, the mp4
    gets 8), all of one size. `frame_names` (stems) names the PNGs, else 00000.png, 00001.png, ...
    The mp4: h264 yuv420p at `crf` (17: visually lossless); frame rate `fps` (a float, 23.976 meaning
    24000/1001), else `source`'s exact rate, else DEFAULT_FPS; `source` (the input `Video`, when a video file)
    also gives the timestamps, the audio (copied), metadata and rotation. yuv420p needs even frame sides: an odd
    side is padded by one replicated pixel (with a warning). Without PyAV the mp4 is left out with a warning
    when PNG frames are written, and refused (VideoError) when it is the only output. `outputs` lists what is
    written.
    """

    def __init__(self, frames_dir: str | os.PathLike | None = None, video_path: str | os.PathLike | None = None,
                 fps: float | None = None, frame_names: list[str] | None = None, overwrite: bool = False,
                 crf: int = DEFAULT_CRF, source: Video | None = None):
        if frames_dir is None and video_path is None:
            raise ValueError("VideoWriter needs frames_dir and/or video_path")
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        self.video_path = Path(video_path) if video_path is not None else None
        if self.video_path is not None and self.video_path.suffix.lower() != ".mp4":
            raise ValueError(f"{self.video_path}: video output must end in .mp4")
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
        if fps is not None and not (float(fps) > 0 and np.isfinite(float(fps))):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if self.video_path is not None and not av_codec.HAS_AV:
            if self.frames_dir is None:
                raise VideoError(f"{self.video_path}: {av_codec.MISSING_AV_MESSAGE}")
            warnings.warn(f"{self.video_path} not written: {av_codec.MISSING_AV_MESSAGE}", stacklevel=2)
            self.video_path = None
        source_file = source is not None and source.frame_paths is None
        if source_file and fps and source.rate is not None and abs(float(source.rate) - float(fps)) > 1e-3:
            warnings.warn(f"{self.video_path or self.frames_dir}: fps {fps} replaces the source's "
                          f"{float(source.rate):.3f}: frames are retimed, the source's audio and timestamps are not "
                          f"kept", stacklevel=2)
            source_file = False
        if fps:
            self.rate = av_codec.rate_from_fps(float(fps))
            if source_file and source.rate is not None and abs(float(source.rate) - float(fps)) < 1e-3:
                self.rate = source.rate  # the exact fraction behind a float like 23.976
        else:
            self.rate = source.rate if source_file and source.rate else av_codec.rate_from_fps(DEFAULT_FPS)
        self.fps = float(self.rate)
        self.crf = crf
        self.source_path = source.path if source_file else None
        self.frame_names = frame_names
        self.overwrite = overwrite
        self.count = 0
        self._size: tuple[int, int] | None = None
        self._frames_tmp: Path | None = None
        self._video_tmp: Path | None = None
        self._encoder: av_codec.H264Encoder | None = None
        self._outputs = contextlib.ExitStack()
        for final in (self.frames_dir, self.video_path):
            if final is not None and final.exists() and not overwrite:
                raise VideoError(f"{final}: output already exists (pass overwrite=True / --overwrite to replace it)")

    @property
    def outputs(self) -> list[Path]:
        """The output paths this writer produces (the frame folder and/or the mp4)."""
        return [p for p in (self.frames_dir, self.video_path) if p is not None]

    def __enter__(self) -> VideoWriter:
        with contextlib.ExitStack() as stack:
            if self.frames_dir is not None:
                self._frames_tmp = stack.enter_context(atomic_dir(self.frames_dir, overwrite=self.overwrite))
            if self.video_path is not None:
                self._video_tmp = stack.enter_context(atomic_file(self.video_path, overwrite=self.overwrite))
            self._outputs = stack.pop_all()
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB frame (H, W, 3) uint8/uint16."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames to write must be RGB (H, W, 3) uint8 or uint16, got {frame.shape} {frame.dtype}")
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame {self.count} has size {frame.shape[:2]}, earlier frames {self._size}")
        if self._frames_tmp is not None:
            name = (self.frame_names[self.count] if self.frame_names and self.count < len(self.frame_names)
                    else f"{self.count:05d}")
            ok, encoded = cv2.imencode(".png", np.ascontiguousarray(frame[:, :, ::-1]))
            if not ok:
                raise VideoError(f"{self.frames_dir / (name + '.png')}: PNG encoding failed")
            encoded.tofile(self._frames_tmp / f"{name}.png")
        if self._video_tmp is not None:
            if self._encoder is None:
                self._encoder = av_codec.H264Encoder(self._video_tmp, self.rate, crf=self.crf,
                                                     source=self.source_path, label=str(self.video_path))
            try:
                self._encoder.encode(frame)
            except av_codec.av.error.FFmpegError as error:
                raise VideoError(f"{self.video_path}: encoding failed ({error})") from error
        self.count += 1

    def commit(self) -> None:
        """Finish: move the outputs into place."""
        if self.count == 0:
            raise VideoError(f"{self.frames_dir or self.video_path}: no frame was written")
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        self._outputs.close()  # atomic_dir / atomic_file rename the temporaries into place
        self._frames_tmp = self._video_tmp = None

    def abort(self) -> None:
        """Drop every temporary output."""
        if self._encoder is not None:
            self._encoder.abort()
            self._encoder = None
        aborted = VideoError("aborted")
        self._outputs.__exit__(VideoError, aborted, None)  # the temporaries are removed, the outputs untouched
        self._frames_tmp = self._video_tmp = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
