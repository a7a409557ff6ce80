"""Video deblurring data sets on disk: layout detection, frame pairing, training clips, sequential reading.

Layouts (`<root>/<video>/...`, one folder per video, frames paired by file name, sorted naturally):
- ``"dvd"`` (Su et al.): ``input/*.jpg`` blurry with ``GT/*.jpg`` sharp;
- ``"gopro"`` (Nah et al.): ``blur_gamma/*.png`` (or ``blur/``) blurry with ``sharp/*.png``; the synthetic
  sets of `pvd.data.synth` use it too and add ``flow/*.npy`` (see `FLOW_FOLDER`);
- ``"frames"``: ``*.png|jpg`` directly in each video folder, blurry only (inference without ground truth).

Frames are decoded by `pvd.frames.read_image` (8-bit files as uint8, 16-bit ones as uint16) to RGB float32
tensors (3, H, W) mapped linearly from [0, 255] (or [0, 65535]) to `value_range`: (-1, 1) by default, the range
of PVDNet (x / 255 * 2 - 1); pass (0, 1) for BIMNet.

Training clips follow the original PVDNet loader: clip k of a video holds frames
``k*stride - context ... k*stride - context + clip_length - 1`` with indices clamped to the video, where the
``clip_length - 2*context`` frames in the middle (the recurrent steps) must all exist; defaults 15 frames,
13 steps, stride 13, context 1. One random crop per clip (shared by all its frames, blurry, sharp and flow),
no flips (the original uses none), and on each blurry frame independently, with probability 0.5, Gaussian noise
of sigma 1e-4 in [-1, 1] units, the result clipped to the range. Randomness comes from
``numpy.random.default_rng([seed, epoch, index])``, so items are reproducible in any worker and order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._files import natural_key, visible
from ..frames import SIGNED_RANGE, SILENT, UNIT_RANGE, check_value_range, read_image, to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FLOW_SUFFIX = ".npy"
FLOW_FOLDER = "flow"
# (blurry folders in order of preference, sharp folder) of the layouts with ground truth.
LAYOUT_FOLDERS = {
    "dvd": (("input",), "GT"),
    "gopro": (("blur_gamma", "blur"), "sharp"),
}
LAYOUTS = ("dvd", "gopro", "frames")
PVDNET_RANGE = SIGNED_RANGE
BIMNET_RANGE = UNIT_RANGE

# Training defaults of the original (configs/config_PVDNet.py): 3-frame window, 13 recurrent steps, 256x256 crops.
CLIP_LENGTH = 15
CONTEXT_FRAMES = 1
CROP_SIZE = (256, 256)
NOISE_SIGMA = 1e-4  # in units of the [-1, 1] range
NOISE_PROBABILITY = 0.5


@dataclass(frozen=True)
class VideoFrames:
    """The frame files of one video, in order; `sharp` is None without ground truth, `flow` None without flows.

    `flow[t]` (if any) holds the ground-truth flow from sharp frame t-1 to sharp frame t (see `pvd.data.synth`).
    """

    name: str
    blurry: tuple[Path, ...]
    sharp: tuple[Path, ...] | None = None
    flow: tuple[Path, ...] | None = None

    def __len__(self) -> int:
        return len(self.blurry)


@dataclass(frozen=True)
class FramePair:
    """Frame `index` of a video: blurry and sharp (None without ground truth) as (3, H, W) float32 tensors."""

    index: int
    name: str
    blurry: torch.Tensor
    sharp: torch.Tensor | None




def _files(folder: Path, suffixes: Sequence[str]) -> tuple[Path, ...]:
    found = [p for p in folder.iterdir() if p.is_file() and visible(p) and p.suffix.lower() in suffixes]
    return tuple(sorted(found, key=lambda p: natural_key(p.name)))


def _video_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"data root {str(root)!r} is not a folder")
    videos = sorted((p for p in root.iterdir() if p.is_dir() and visible(p)), key=lambda p: natural_key(p.name))
    if not videos:
        raise ValueError(f"data root {str(root)!r} holds no video folders (expected <root>/<video>/...)")
    return videos


def _video_layout(folder: Path) -> str | None:
    subfolders = {p.name for p in folder.iterdir() if p.is_dir()}
    for layout, (blurry_names, sharp_name) in LAYOUT_FOLDERS.items():
        if sharp_name in subfolders and any(name in subfolders for name in blurry_names):
            return layout
    if _files(folder, IMAGE_SUFFIXES):
        return "frames"
    return None


def detect_layout(root: str | os.PathLike) -> str:
    """The layout of the data set at `root`: "dvd", "gopro" or "frames" (see the module docstring).

    Raises ValueError if `root` has no video folders, a video folder matches no layout, or videos disagree.
    """
    found: dict[str, list[str]] = {}
    for folder in _video_folders(Path(root)):
        layout = _video_layout(folder)
        if layout is None:
            raise ValueError(f"video {folder.name!r} in {str(root)!r} matches no layout: expected input/ + GT/ "
                             f"(DVD), blur_gamma/ or blur/ + sharp/ (GoPro), or image files (frames)")
        found.setdefault(layout, []).append(folder.name)
    if len(found) > 1:
        detail = "; ".join(f"{layout}: {', '.join(names[:3])}" for layout, names in found.items())
        raise ValueError(f"videos in {str(root)!r} mix layouts ({detail})")
    return next(iter(found))


def _check_pairing(video: str, kind: str, reference: Sequence[Path], other: Sequence[Path],
                   reference_folder: Path, other_folder: Path) -> None:
    """Raise ValueError unless `other` pairs one to one, by file stem, with the blurry frames `reference`."""
    if len(reference) != len(other):
        raise ValueError(f"video {video!r}: {len(reference)} blurry frames in {str(reference_folder)!r} but "
                         f"{len(other)} {kind} files in {str(other_folder)!r}")
    for blurry_path, other_path in zip(reference, other):
        if blurry_path.stem != other_path.stem:
            raise ValueError(f"video {video!r}: blurry frame {blurry_path.name!r} pairs with {kind} file "
                             f"{other_path.name!r}; names must match")


def list_videos(root: str | os.PathLike, layout: str | None = None,
                blurry_folder: str | None = None) -> list[VideoFrames]:
    """The videos under `root` with their paired frame files, in natural order of video name.

    layout: one of LAYOUTS, detected by `detect_layout` when None. blurry_folder: for "gopro", the blurry
    folder to use ("blur_gamma" by default, else "blur"). Flow files (``<video>/flow/*.npy``) are listed when
    present. Raises ValueError naming the video when frame counts or names of blurry, sharp and flow differ.
    """
    root = Path(root)
    layout = detect_layout(root) if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    videos = []
    for folder in _video_folders(root):
        if layout == "frames":
            blurry_dir, sharp_dir = folder, None
        else:
            blurry_names, sharp_name = LAYOUT_FOLDERS[layout]
            if blurry_folder is not None:
                blurry_names = (blurry_folder,)
            blurry_dir = next((folder / n for n in blurry_names if (folder / n).is_dir()), None)
            if blurry_dir is None:
                raise ValueError(f"video {folder.name!r}: no blurry folder {' or '.join(blurry_names)} in "
                                 f"{str(folder)!r}")
            sharp_dir = folder / sharp_name
            if not sharp_dir.is_dir():
                raise ValueError(f"video {folder.name!r}: no sharp folder {str(sharp_dir)!r}")
        blurry = _files(blurry_dir, IMAGE_SUFFIXES)
        if not blurry:
            raise ValueError(f"video {folder.name!r}: no frames ({'/'.join(IMAGE_SUFFIXES)}) in {str(blurry_dir)!r}")
        sharp = None
        if sharp_dir is not None:
            sharp = _files(sharp_dir, IMAGE_SUFFIXES)
            _check_pairing(folder.name, "sharp", blurry, sharp, blurry_dir, sharp_dir)
        flow = None
        flow_dir = folder / FLOW_FOLDER
        if flow_dir.is_dir():
            flow = _files(flow_dir, (FLOW_SUFFIX,))
            _check_pairing(folder.name, "flow", blurry, flow, blurry_dir, flow_dir)
        videos.append(VideoFrames(folder.name, blurry, sharp, flow))
    return videos


def decode_frame(path: str | os.PathLike) -> np.ndarray:
    """An image file as an RGB array (H, W, 3), uint8 (uint16 for 16-bit files); gray and RGBA files are
    converted silently (`pvd.frames.read_image`)."""
    return read_image(path, warned=SILENT)


def read_frame(path: str | os.PathLike, value_range: Sequence[float] = PVDNET_RANGE) -> torch.Tensor:
    """An image file as a float32 RGB tensor (3, H, W) in `value_range` ((-1, 1) by default)."""
    return to_tensor(decode_frame(path), value_range)


def read_flow(path: str | os.PathLike) -> np.ndarray:
    """A flow file written by `pvd.data.synth`: float32 (2, H, W), channels (x, y) in pixels."""
    flow = np.load(os.fspath(path), allow_pickle=False)
    if flow.ndim != 3 or flow.shape[0] != 2 or flow.dtype != np.float32:
        raise ValueError(f"flow file {str(path)!r} must hold float32 (2, H, W), got {flow.dtype} {flow.shape}")
    return flow


def iter_frames(video: VideoFrames, value_range: Sequence[float] = PVDNET_RANGE) -> Iterator[FramePair]:
    """The frames of `video` in order as `FramePair`s (blurry, sharp or None), for evaluation and inference."""
    for index, blurry_path in enumerate(video.blurry):
        blurry = read_frame(blurry_path, value_range)
        sharp = None
        if video.sharp is not None:
            sharp = read_frame(video.sharp[index], value_range)
            if sharp.shape != blurry.shape:
                raise ValueError(f"video {video.name!r}: sharp frame {video.sharp[index].name!r} is "
                                 f"{tuple(sharp.shape[1:])} but blurry frame is {tuple(blurry.shape[1:])}")
        yield FramePair(index, blurry_path.stem, blurry, sharp)


def clip_indices(num_frames: int, clip_length: int = CLIP_LENGTH, stride: int | None = None,
                 context: int = CONTEXT_FRAMES) -> list[list[int]]:
    """Frame indices of the training clips of a video of `num_frames` frames (the original's sampling).

    Clip k covers frames k*stride - context ... k*stride - context + clip_length - 1, clamped to
    [0, num_frames - 1]; its `clip_length - 2*context` middle frames (the steps) must lie inside the video.
    stride defaults to the number of steps (consecutive clips then share no step).
    """
    steps = clip_length - 2 * context
    if context < 0 or steps < 1:
        raise ValueError(f"clip_length ({clip_length}) must exceed 2 * context ({context}), context >= 0")
    stride = steps if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    clips = []
    for first_step in range(0, num_frames - steps + 1, stride):
        start = first_step - context
        clips.append([min(max(i, 0), num_frames - 1) for i in range(start, start + clip_length)])
    return clips


class VideoClipDataset(Dataset):
    """Clips of consecutive frames for training, as dicts of tensors (see the module docstring for sampling).

    Item: ``blurry`` (N, 3, h, w) and, with ground truth, ``sharp`` (N, 3, h, w), float32 in `value_range`;
    with flows, ``flow`` (N-1, 2, h, w) float32 pixels, ``flow[i]`` taking sharp[i] to sharp[i+1]
    (``warp(sharp[i], flow[i]) ≈ sharp[i+1]``; zero where a clamped clip repeats a frame); ``frame_indices``
    (N,) int64; ``video`` name; ``is_first`` (the clip is its video's first).

    root: data set folder; layout: see `detect_layout` (detected when None); crop_size: (h, w) random crop or
    None for whole frames; load_flow: None loads flows when every video has them, True requires them.
    noise_sigma is in [-1, 1] units (scaled to `value_range`). Call `set_epoch` to draw new crops and noise.
    """

    def __init__(self, root: str | os.PathLike, clip_length: int = CLIP_LENGTH, *, stride: int | None = None,
                 context: int = CONTEXT_FRAMES, crop_size: tuple[int, int] | None = CROP_SIZE,
                 layout: str | None = None, blurry_folder: str | None = None, load_flow: bool | None = None,
                 noise_sigma: float = NOISE_SIGMA, noise_probability: float = NOISE_PROBABILITY,
                 value_range: Sequence[float] = PVDNET_RANGE, seed: int = 0):
        self.videos = list_videos(root, layout, blurry_folder)
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) < 1):
            raise ValueError(f"crop_size must be (height, width) of positive ints or None, got {crop_size!r}")
        if not 0.0 <= noise_probability <= 1.0 or noise_sigma < 0:
            raise ValueError(f"noise_probability must be in [0, 1] and noise_sigma >= 0, got "
                             f"{noise_probability}, {noise_sigma}")
        has_flow = [video.flow is not None for video in self.videos]
        if load_flow and not all(has_flow):
            missing = [video.name for video in self.videos if video.flow is None]
            raise ValueError(f"load_flow=True but video {missing[0]!r} has no {FLOW_FOLDER}/ folder")
        self.load_flow = all(has_flow) if load_flow is None else bool(load_flow)
        self.crop_size = None if crop_size is None else (int(crop_size[0]), int(crop_size[1]))
        self.noise_sigma = float(noise_sigma)
        self.noise_probability = float(noise_probability)
        self.value_range = check_value_range(value_range)
        self.seed = int(seed)
        self.epoch = 0
        self.clips: list[tuple[int, list[int]]] = []
        self._first_clip = set()
        for video_index, video in enumerate(self.videos):
            video_clips = clip_indices(len(video), clip_length, stride, context)
            if video_clips:
                self._first_clip.add(len(self.clips))
            self.clips.extend((video_index, indices) for indices in video_clips)
        if not self.clips:
            raise ValueError(f"no video under {str(root)!r} is long enough for a clip of {clip_length} frames "
                             f"(context {context})")

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops and noise of `epoch` (items are a function of seed, epoch and index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips)

    def _crop_box(self, video: VideoFrames, height: int, width: int, rng: np.random.Generator):
        if self.crop_size is None:
            return 0, 0, height, width
        crop_h, crop_w = self.crop_size
        if crop_h > height or crop_w > width:
            raise ValueError(f"video {video.name!r}: crop {crop_h}x{crop_w} is larger than its {height}x{width} "
                             f"frames")
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        return top, left, crop_h, crop_w

    def __getitem__(self, index: int) -> dict:
        video_index, frame_indices = self.clips[index]
        video = self.videos[video_index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        decoded: dict[tuple[str, int], np.ndarray] = {}

        def frame(kind: str, i: int) -> np.ndarray:
            if (kind, i) not in decoded:
                path = (video.blurry if kind == "blurry" else video.sharp)[i]
                image = decode_frame(path)
                if decoded and image.shape != next(iter(decoded.values())).shape:
                    raise ValueError(f"video {video.name!r}: frame {path.name!r} is {image.shape[:2]}, other "
                                     f"frames are {next(iter(decoded.values())).shape[:2]}")
                decoded[kind, i] = image
            return decoded[kind, i]

        height, width = frame("blurry", frame_indices[0]).shape[:2]
        top, left, crop_h, crop_w = self._crop_box(video, height, width, rng)
        rows, cols = slice(top, top + crop_h), slice(left, left + crop_w)

        low, high = self.value_range
        sigma = self.noise_sigma * (high - low) / 2.0
        blurry = []
        for i in frame_indices:
            tensor = to_tensor(frame("blurry", i)[rows, cols], self.value_range)
            if rng.random() < self.noise_probability:
                noise = torch.from_numpy(rng.normal(0.0, sigma, tensor.shape).astype(np.float32))
                tensor = (tensor + noise).clamp_(low, high)
            blurry.append(tensor)
        item = {
            "blurry": torch.stack(blurry),
            "frame_indices": torch.tensor(frame_indices, dtype=torch.int64),
            "video": video.name,
            "is_first": index in self._first_clip,
        }
        if video.sharp is not None:
            item["sharp"] = torch.stack([to_tensor(frame("sharp", i)[rows, cols], self.value_range)
                                         for i in frame_indices])
        if self.load_flow:
            flows = []
            for previous, current in zip(frame_indices[:-1], frame_indices[1:]):
                if current == previous:
                    flows.append(torch.zeros(2, crop_h, crop_w))
                    continue
                flow = read_flow(video.flow[current])
                if flow.shape[1:] != (height, width):
                    raise ValueError(f"video {video.name!r}: flow {video.flow[current].name!r} is "
                                     f"{flow.shape[1:]}, frames are {(height, width)}")
                flows.append(torch.from_numpy(np.ascontiguousarray(flow[:, rows, cols])))
            item["flow"] = torch.stack(flows)
        return item
