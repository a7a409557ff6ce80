"""Video input and output: video files and folders of frames in, PNG frames and/or mp4 out.

Inputs (`find_videos`):
- a video file (`.mp4`, `.avi`, `.mov`, `.mkv`, `.m4v`, decoded by OpenCV);
- a folder of frames (`.png`, `.jpg`, `.jpeg`, sorted naturally: `2.png` before `10.png`);
- a folder of such folders (and/or video files): one video per entry, in natural order.

Frames are streamed as RGB numpy arrays (H, W, 3), uint8, or uint16 for 16-bit PNGs, decoded by
`pvd.frames.read_image` (gray and RGBA inputs are converted to RGB with a warning). Bad input raises
`VideoError` (a ValueError) naming the file: missing path,
unreadable or corrupt frame, frame sizes differing inside one video, empty folder.

Outputs (`VideoWriter`) are written under temporary names next to their destination and renamed into place when
the video is complete; on error the temporaries are removed, so no partial output remains.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ._files import make_folder
from .frames import FrameError, read_image, to_8_bit, to_rgb

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_FPS = 30.0  # frame rate given to mp4 outputs of frame folders, which carry none
MP4_FOURCC = "mp4v"


VideoError = FrameError  # bad video input or output (a ValueError); the message names the offending file


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: 'f2.png' < 'f10.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "@")) and path.name != "Thumbs.db"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and _visible(path)


def _is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES and _visible(path)


@dataclass(frozen=True)
class Video:
    """One input video: metadata plus a streaming frame iterator (`frames()` or iteration).

    width, height: frame size in pixels; frame_count: number of frames (for video files the container's
    count, which some files get wrong: iteration yields what decodes); fps: frames per second (None for
    frame folders); frame_paths: the sorted frame files of a frame folder, else None.
    """

    name: str
    path: Path
    width: int
    height: int
    frame_count: int
    fps: float | None
    frame_paths: tuple[Path, ...] | None = None

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
        capture = _open_capture(self.path)
        warned: set = set()
        decoded = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                frame = to_rgb(frame, self.path, warned)
                self._check_size(frame, f"{self.path} (frame {decoded})")
                decoded += 1
                yield frame
        finally:
            capture.release()
        if decoded == 0:
            raise VideoError(f"{self.path}: no frame could be decoded (corrupt or unsupported video)")


def _open_capture(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path}: cannot open video (corrupt or unsupported format)")
    return capture


def open_video_file(path: str | os.PathLike) -> Video:
    """Metadata of a video file, read through OpenCV. Raises VideoError if it is missing or does not open."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    capture = _open_capture(path)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or None
    finally:
        capture.release()
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: video reports no frame size (corrupt or unsupported)")
    return Video(path.stem, path, width, height, max(count, 0), fps)


def open_frame_folder(path: str | os.PathLike) -> Video:
    """A folder of png/jpg frames as one video; the first frame gives the size. VideoError if it has no frames."""
    path = Path(path)
    if not path.is_dir():
        raise VideoError(f"{path}: no such folder")
    frame_paths = sorted((p for p in path.iterdir() if _is_image(p)), key=lambda p: natural_key(p.name))
    if not frame_paths:
        raise VideoError(f"{path}: folder holds no frames ({', '.join(IMAGE_SUFFIXES)})")
    height, width = read_image(frame_paths[0], warned={"gray", "alpha"}).shape[:2]
    return Video(path.name, path, width, height, len(frame_paths), None, tuple(frame_paths))


def find_videos(path: str | os.PathLike) -> list[Video]:
    """All videos at `path`: a video file, a lone image (one frame), a frame folder, or a folder of frame
    folders / video files (a folder holding frames is one video; its sub-folders are then ignored).

    Raises VideoError if the path is missing, or is a folder with neither frames nor videos.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [_single_image_video(path)]
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise VideoError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor a frame folder")
        return [open_video_file(path)]
    entries = sorted((p for p in path.iterdir() if _visible(p)), key=lambda p: natural_key(p.name))
    if any(_is_image(p) for p in entries):
        return [open_frame_folder(path)]
    videos = []
    for entry in entries:
        if entry.is_dir() and any(_is_image(p) for p in entry.iterdir()):
            videos.append(open_frame_folder(entry))
        elif _is_video_file(entry):
            videos.append(open_video_file(entry))
    if not videos:
        raise VideoError(f"{path}: empty folder: no frames ({', '.join(IMAGE_SUFFIXES)}), no videos "
                         f"({', '.join(VIDEO_SUFFIXES)}) and no sub-folders of frames")
    return videos


def _single_image_video(path: Path) -> Video:
    """A lone image as a one-frame video."""
    height, width = read_image(path, warned={"gray", "alpha"}).shape[:2]
    return Video(path.stem, path, width, height, 1, None, (path,))


# ----------------------------------------------------------------------------------------------------------- output


def _temporary_sibling(final: Path, suffix: str = "") -> Path:
    return final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _move_into_place(temporary: Path, final: Path, overwrite: bool) -> None:
    """Rename `temporary` to `final`; an existing `final` is replaced only when `overwrite`."""
    if final.exists():
        if not overwrite:
            raise VideoError(f"{final}: output already exists (pass overwrite=True / --overwrite to replace it)")
        old = _temporary_sibling(final, ".old")
        os.replace(final, old)
        os.replace(temporary, final)
        _remove(old)
    else:
        os.replace(temporary, final)


class VideoWriter:
    """Writes one video as PNG frames into `frames_dir` and/or as an mp4 (`mp4v`) at `video_path`.

    Use as a context manager: outputs go to hidden temporary siblings and are renamed into place on a clean
    exit; on an exception they are deleted. Frames: RGB (H, W, 3) uint8 or uint16 (PNG keeps 16 bits, the mp4
    gets 8), all of one size. `frame_names` (stems) names the PNGs, else 00000.png, 00001.png, ...
    The mp4 codec needs even frame sides: an odd side is padded by one replicated pixel (with a warning).
    """

    def __init__(self, frames_dir: str | os.PathLike | None = None, video_path: str | os.PathLike | None = None,
                 fps: float | None = None, frame_names: list[str] | None = None, overwrite: bool = False):
        if frames_dir is None and video_path is None:
            raise ValueError("VideoWriter needs frames_dir and/or video_path")
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        self.video_path = Path(video_path) if video_path is not None else None
        if self.video_path is not None and self.video_path.suffix.lower() != ".mp4":
            raise ValueError(f"{self.video_path}: video output must end in .mp4")
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.frame_names = frame_names
        self.overwrite = overwrite
        self.count = 0
        self._size: tuple[int, int] | None = None
        self._frames_tmp: Path | None = None
        self._video_tmp: Path | None = None
        self._mp4: cv2.VideoWriter | None = None
        for final in (self.frames_dir, self.video_path):
            if final is not None and final.exists() and not overwrite:
                raise VideoError(f"{final}: output already exists (pass overwrite=True / --overwrite to replace it)")

    def __enter__(self) -> VideoWriter:
        if self.frames_dir is not None:
            make_folder(self.frames_dir.parent)
            self._frames_tmp = _temporary_sibling(self.frames_dir)
            self._frames_tmp.mkdir()
        if self.video_path is not None:
            make_folder(self.video_path.parent)
            self._video_tmp = _temporary_sibling(self.video_path, ".mp4")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB frame (H, W, 3) uint8/uint16."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frames to write must be RGB (H, W, 3) uint8 or uint16, got {frame.shape} {frame.dtype}")
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame {self.count} has size {frame.shape[:2]}, earlier frames {self._size}")
        bgr = np.ascontiguousarray(frame[:, :, ::-1])
        if self._frames_tmp is not None:
            name = (self.frame_names[self.count] if self.frame_names and self.count < len(self.frame_names)
                    else f"{self.count:05d}")
            ok, encoded = cv2.imencode(".png", bgr)
            if not ok:
                raise VideoError(f"{self.frames_dir / (name + '.png')}: PNG encoding failed")
            encoded.tofile(self._frames_tmp / f"{name}.png")
        if self._video_tmp is not None:
            bgr = self._even_size(bgr)
            if self._mp4 is None:
                height, width = bgr.shape[:2]
                self._mp4 = cv2.VideoWriter(str(self._video_tmp), cv2.VideoWriter_fourcc(*MP4_FOURCC), self.fps,
                                            (width, height))
                if not self._mp4.isOpened():
                    raise VideoError(f"{self.video_path}: OpenCV cannot open an mp4 ({MP4_FOURCC}) writer")
            self._mp4.write(to_8_bit(bgr))
        self.count += 1

    def _even_size(self, frame: np.ndarray) -> np.ndarray:
        """mp4 (yuv420) frames need even sides: odd ones get one replicated row/column, with a warning."""
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if not (pad_h or pad_w):
            return frame
        if self.count == 0:
            height, width = frame.shape[:2]
            warnings.warn(f"{self.video_path}: mp4 needs even frame sides; {width}x{height} is padded to "
                          f"{width + pad_w}x{height + pad_h} (PNG frames keep the exact size)", stacklevel=3)
        return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")

    def commit(self) -> None:
        """Finish: move the outputs into place."""
        if self.count == 0:
            raise VideoError(f"{self.frames_dir or self.video_path}: no frame was written")
        if self._mp4 is not None:
            self._mp4.release()
            self._mp4 = None
        if self._frames_tmp is not None:
            _move_into_place(self._frames_tmp, self.frames_dir, self.overwrite)
            self._frames_tmp = None
        if self._video_tmp is not None:
            _move_into_place(self._video_tmp, self.video_path, self.overwrite)
            self._video_tmp = None

    def abort(self) -> None:
        """Drop every temporary output."""
        if self._mp4 is not None:
            self._mp4.release()
            self._mp4 = None
        for temporary in (self._frames_tmp, self._video_tmp):
            if temporary is not None:
                _remove(temporary)
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
