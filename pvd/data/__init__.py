"""Data: dataset loaders (`pvd.data.datasets`) and the synthetic blurry-video generator (`pvd.data.synth`).

`pvd.data.synth` is imported on demand (its built-in photographs need the optional scikit-image extra).
"""

from .datasets import (
    BIMNET_RANGE,
    PVDNET_RANGE,
    FramePair,
    VideoClipDataset,
    VideoFrames,
    clip_indices,
    detect_layout,
    iter_frames,
    list_videos,
    read_flow,
    read_frame,
)

__all__ = [
    "BIMNET_RANGE",
    "PVDNET_RANGE",
    "FramePair",
    "VideoClipDataset",
    "VideoFrames",
    "clip_indices",
    "detect_layout",
    "iter_frames",
    "list_videos",
    "read_flow",
    "read_frame",
]
