"""Synthetic blurry videos with ground-truth sharp frames and optical flow, rendered from still photographs.

Each video pans a virtual camera over one photograph along a smooth random trajectory (translation, rotation
about the frame centre, zoom), optionally with a foreground object (an elliptic patch of another photograph)
moving on its own. Every output frame t is rendered at K sub-frame times spread over the whole frame interval,
``t + (j + 0.5) / K - 0.5`` for j = 0..K-1 (in frame units); the blurry frame is their mean in linear light
(8-bit values decoded with gamma 2.2, as the ``blur_gamma`` frames of the GoPro set), the sharp frame is the
frame at time t (the middle sub-frame when K is odd). Rendering uses `cv2.warpAffine` (bilinear) and every
motion is an affine map, so the flow between sharp frames is exact and computed in closed form.

Flow convention (``flow/%05d.npy``): float32 (2, H, W), channel 0 = x, channel 1 = y, in pixels, the backward
flow of frame t such that ``sharp_t(p) = sharp_{t-1}(p + flow_t(p))``, i.e.
``pvd.kernels.warp(sharp_{t-1}, flow_t) ≈ sharp_t`` (what ``BIMNet(S_t, S_{t-1})`` estimates); it fails only
where a point is occluded or leaves the frame. ``flow_0`` is zero (frame 0 mapped onto itself).

Output (GoPro layout, readable by `pvd.data.datasets`): ``OUT/<video>/blur_gamma/%05d.png``,
``OUT/<video>/sharp/%05d.png``, ``OUT/<video>/flow/%05d.npy`` and ``OUT/synth.json`` (settings, seed,
photographs). Everything is a function of the settings, the seed and the photographs: the same inputs give
byte-identical files. The folder is written under a temporary name and renamed when complete.

Photographs: those bundled with scikit-image (optional extra ``data``; `builtin_photograph_names`) or any
folder of images (`load_photograph_folder`); keep training and test photographs apart with
`select_photographs` (``--photos`` / ``--exclude``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pvd._files import atomic_dir, make_folder
from pvd.frames import write_png

from .datasets import FLOW_FOLDER
from .photographs import (BUILTIN_PHOTOGRAPHS, as_rgb, builtin_photograph_names,  # noqa: F401 - re-exported
                          load_builtin_photographs, load_photograph_folder, select_photographs)

FORMAT_NAME = "pvd-synth"
FORMAT_VERSION = 1
BLURRY_FOLDER = "blur_gamma"
SHARP_FOLDER = "sharp"
METADATA_FILE = "synth.json"
FRAME_NAME = "{:05d}"
VIDEO_NAME = "synth_{:04d}"
FLOW_CONVENTION = ("float32 (2, H, W), channels (x, y) in pixels: sharp_t(p) = sharp_{t-1}(p + flow_t(p)), "
                   "i.e. warp(sharp_{t-1}, flow_t) ~= sharp_t; flow_0 = 0")

# Trajectories: each motion parameter is drift * u + sum of WAVE_COUNT sinusoids of random frequency (u in frames),
# rescaled so that its peak speed over the video equals a random fraction of the configured maximum.
WAVE_COUNT = 3
WAVE_FREQUENCIES = (0.02, 0.2)  # cycles per frame
CAMERA_SPEED_FRACTION = (0.25, 1.0)  # peak camera speed as a fraction of max_shift
PHOTO_DOWNSCALE = (1.0, 2.0)  # preferred photograph pixels per output pixel (capped by what the trajectory allows)
PHOTO_MARGIN = 3  # resized-photograph pixels kept free around every rendered view
OBJECT_SIZE = (0.25, 0.45)  # object height as a fraction of min(H, W)
OBJECT_ASPECT = (0.7, 1.4)  # object width / height
OBJECT_SOURCE_SCALE = (1.2, 2.5)  # short side of the resized object photograph / object size
OBJECT_START = (0.3, 0.7)  # object centre at time 0, as a fraction of the frame size
LAYER_TOLERANCE = 0.01  # mask values within this of 0 or 1 count as pure background or object


@dataclass(frozen=True)
class SynthSettings:
    """What `render_video` draws. Speeds are peaks over a video, per output frame; each video draws its own
    peaks uniformly below them (the camera's translation between 25% and 100% of max_shift)."""

    frames: int = 24
    height: int = 256
    width: int = 256
    subframes: int = 9
    max_shift: float = 8.0  # camera translation, output pixels per frame
    max_rotation: float = 1.0  # camera rotation, degrees per frame
    max_zoom: float = 0.01  # camera zoom, relative change of scale per frame
    object_probability: float = 0.5  # chance that a video has a moving foreground object
    max_object_shift: float = 8.0  # object translation, output pixels per frame
    gamma: float = 2.2

    def __post_init__(self):
        for name in ("frames", "height", "width", "subframes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if min(self.height, self.width) < 8:
            raise ValueError(f"frames must be at least 8x8 pixels, got {self.height}x{self.width}")
        for name in ("max_shift", "max_rotation", "max_zoom", "max_object_shift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.max_zoom >= 0.5:
            raise ValueError(f"max_zoom must be < 0.5 (relative change per frame), got {self.max_zoom}")
        if not 0.0 <= self.object_probability <= 1.0:
            raise ValueError(f"object_probability must be in [0, 1], got {self.object_probability}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma must be > 0, got {self.gamma}")


@dataclass
class SynthFrame:
    """One rendered frame: blurry and sharp RGB uint8 (H, W, 3); flow float32 (2, H, W) from sharp t-1 to t;
    valid bool (H, W): where the flow holds (the previous position is inside the frame and not occluded);
    on_object bool (H, W): pixels of the sharp frame showing the foreground object (coverage >= 0.5)."""

    blurry: np.ndarray
    sharp: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    on_object: np.ndarray


@dataclass
class _Wave:
    """g(u) = drift * u + sum_k amplitude_k * sin(2 pi frequency_k u + phase_k), u in frames."""

    drift: float
    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator) -> _Wave:
        frequencies = rng.uniform(*WAVE_FREQUENCIES, size=WAVE_COUNT)
        # Amplitudes drawn so that every term contributes a rate of order 1.
        amplitudes = rng.normal(size=WAVE_COUNT) / (2 * np.pi * frequencies)
        return cls(float(rng.normal()), amplitudes, frequencies, rng.uniform(0, 2 * np.pi, size=WAVE_COUNT))

    def value(self, u: np.ndarray) -> np.ndarray:
        angles = 2 * np.pi * np.multiply.outer(u, self.frequencies) + self.phases
        return self.drift * u + (self.amplitudes * np.sin(angles)).sum(axis=-1)

    def rate(self, u: np.ndarray) -> np.ndarray:
        angles = 2 * np.pi * np.multiply.outer(u, self.frequencies) + self.phases
        return self.drift + (self.amplitudes * 2 * np.pi * self.frequencies * np.cos(angles)).sum(axis=-1)

    def scale(self, factor: float) -> None:
        self.drift *= factor
        self.amplitudes = self.amplitudes * factor


def _random_motion(rng: np.random.Generator, dims: int, peak: float, times: np.ndarray) -> list[_Wave]:
    """`dims` waves whose joint rate has Euclidean norm `peak` at its maximum over `times`."""
    waves = [_Wave.random(rng) for _ in range(dims)]
    rates = np.stack([wave.rate(times) for wave in waves])
    current = float(np.sqrt((rates ** 2).sum(axis=0)).max())
    for wave in waves:
        wave.scale(peak / current if current > 0 else 0.0)
    return waves


def _translation(x, y) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _rotation_scale(angle: float, scale: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_times(frames: int, subframes: int) -> tuple[np.ndarray, np.ndarray]:
    """Sharp times (T,) = 0..T-1 and sub-frame times (T, K) = t + (j + 0.5)/K - 0.5, in frame units."""
    sharp = np.arange(frames, dtype=np.float64)
    offsets = (np.arange(subframes, dtype=np.float64) + 0.5) / subframes - 0.5
    return sharp, sharp[:, None] + offsets[None, :]


class _Camera:
    """Maps output pixels to photograph pixels at any time: A(u) = offset @ T(u) @ R(u) S(u) @ T(-centre)."""

    def __init__(self, rng: np.random.Generator, settings: SynthSettings, times: np.ndarray):
        speed = rng.uniform(*CAMERA_SPEED_FRACTION) * settings.max_shift
        self.shift = _random_motion(rng, 2, speed, times)
        self.angle = _random_motion(rng, 1, math.radians(rng.uniform(0, 1) * settings.max_rotation), times)[0]
        self.log_scale = _random_motion(rng, 1, math.log1p(rng.uniform(0, 1) * settings.max_zoom), times)[0]
        self.centre = ((settings.width - 1) / 2, (settings.height - 1) / 2)
        self.offset = np.eye(3)
        self.peaks = {"shift": speed}

    def view_to_world(self, u: float) -> np.ndarray:
        u_array = np.asarray(u, dtype=np.float64)
        shift = _translation(float(self.shift[0].value(u_array)), float(self.shift[1].value(u_array)))
        turn = _rotation_scale(float(self.angle.value(u_array)), math.exp(float(self.log_scale.value(u_array))))
        return shift @ turn @ _translation(-self.centre[0], -self.centre[1])

    def matrix(self, u: float) -> np.ndarray:
        """3x3 map from output pixel coordinates to (resized) photograph pixel coordinates at time u."""
        return self.offset @ self.view_to_world(u)


class _ForegroundObject:
    """An elliptic patch with its own motion; O(u) maps patch pixels to output pixels."""

    def __init__(self, rng: np.random.Generator, settings: SynthSettings, photo_linear: np.ndarray,
                 times: np.ndarray):
        side = min(settings.height, settings.width)
        height = max(4, round(rng.uniform(*OBJECT_SIZE) * side))
        width = max(4, min(round(height * rng.uniform(*OBJECT_ASPECT)), settings.width - 2))
        source_scale = rng.uniform(*OBJECT_SOURCE_SCALE) * max(height, width) / min(photo_linear.shape[:2])
        source = _resize(photo_linear, source_scale)
        top = int(rng.integers(0, source.shape[0] - height + 1))
        left = int(rng.integers(0, source.shape[1] - width + 1))
        self.patch = np.ascontiguousarray(source[top:top + height, left:left + width])
        ys, xs = np.mgrid[0:height, 0:width]
        centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
        inside = ((xs - centre_x) / (width / 2 - 1)) ** 2 + ((ys - centre_y) / (height / 2 - 1)) ** 2 <= 1
        self.mask = inside.astype(np.float32)
        self.patch_centre = (centre_x, centre_y)
        self.start = (rng.uniform(*OBJECT_START) * settings.width, rng.uniform(*OBJECT_START) * settings.height)
        speed = rng.uniform(*CAMERA_SPEED_FRACTION) * settings.max_object_shift
        self.shift = _random_motion(rng, 2, speed, times)
        self.angle = _random_motion(rng, 1, math.radians(rng.uniform(0, 2) * settings.max_rotation), times)[0]
        self.peaks = {"shift": speed}

    def matrix(self, u: float) -> np.ndarray:
        """3x3 map from patch pixel coordinates to output pixel coordinates at time u."""
        u_array = np.asarray(u, dtype=np.float64)
        position = _translation(self.start[0] + float(self.shift[0].value(u_array)),
                                self.start[1] + float(self.shift[1].value(u_array)))
        turn = _rotation_scale(float(self.angle.value(u_array)), 1.0)
        return position @ turn @ _translation(-self.patch_centre[0], -self.patch_centre[1])


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by `factor` (output / input size), area-averaging when shrinking, bicubic when enlarging."""
    height, width = image.shape[:2]
    size = (max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return np.clip(cv2.resize(image, size, interpolation=interpolation), 0.0, 1.0)


def _fit_photograph(camera: _Camera, photo_linear: np.ndarray, settings: SynthSettings, all_times: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Resize the photograph so that every view of the trajectory lies inside it, and place the trajectory.

    Returns the resized photograph; sets camera.offset (world -> resized photograph pixels).
    """
    corners = np.array([[0, 0, 1], [settings.width - 1, 0, 1], [0, settings.height - 1, 1],
                        [settings.width - 1, settings.height - 1, 1]], dtype=np.float64).T
    points = np.concatenate([(camera.view_to_world(u) @ corners)[:2] for u in all_times], axis=1)
    low, high = points.min(axis=1), points.max(axis=1)
    extent = high - low  # world units = output pixels at zoom 1
    photo_height, photo_width = photo_linear.shape[:2]
    # photograph pixels per world unit: at most what keeps the whole trajectory (plus margins) inside.
    largest = min(photo_width / (extent[0] + 2 * PHOTO_MARGIN + 2), photo_height / (extent[1] + 2 * PHOTO_MARGIN + 2))
    downscale = min(rng.uniform(*PHOTO_DOWNSCALE), largest)
    resized = _resize(photo_linear, 1.0 / downscale)
    room = np.array([resized.shape[1], resized.shape[0]], dtype=np.float64) - 1 - extent - 2 * PHOTO_MARGIN
    if room.min() < 0:  # cannot happen with the bound above; kept as a guard against rounding
        raise ValueError(f"trajectory extent {extent} does not fit the photograph {resized.shape[:2]}")
    start = PHOTO_MARGIN + rng.uniform(0, 1, size=2) * room - low
    camera.offset = _translation(start[0], start[1])
    return resized


def _warp_affine(image: np.ndarray, output_to_source: np.ndarray, size: tuple[int, int],
                 border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """Bilinear sample of `image` at output_to_source @ (x, y, 1) for every output pixel; size = (W, H)."""
    return cv2.warpAffine(image, output_to_source[:2].astype(np.float64), size,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0)


def _affine_flow(matrix: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(2, H, W) displacement matrix @ (x, y, 1) - (x, y) for the pixel grids xs, ys."""
    return np.stack([matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] - xs,
                     matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] - ys])


def to_linear(image: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 RGB -> float32 linear light in [0, 1] (x / 255) ** gamma."""
    return np.power(image.astype(np.float32) / 255.0, gamma, dtype=np.float32)


def gamma_encode(linear: np.ndarray, gamma: float) -> np.ndarray:
    """float linear light -> uint8 RGB, round(255 * clip(x, 0, 1) ** (1 / gamma))."""
    encoded = np.power(np.clip(linear, 0.0, 1.0), 1.0 / gamma)
    return np.floor(encoded * 255.0 + 0.5).astype(np.uint8)


def render_video(background: np.ndarray, settings: SynthSettings, rng: np.random.Generator,
                 foreground: np.ndarray | None = None, info: dict | None = None) -> Iterator[SynthFrame]:
    """Render one video from RGB uint8 photographs, frame by frame (see the module docstring).

    background: photograph the camera pans over; foreground: photograph the moving object is cut from (no
    object when None). rng draws every random choice. `info`, when given, receives the drawn peak speeds.
    """
    for name, photo in (("background", background), ("foreground", foreground)):
        if photo is not None and (photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3):
            raise ValueError(f"{name} photograph must be RGB uint8 (H, W, 3), got {photo.dtype} {photo.shape}")
    size = (settings.width, settings.height)
    sharp_times, sub_times = frame_times(settings.frames, settings.subframes)
    all_times = np.concatenate([sharp_times, sub_times.ravel()])

    camera = _Camera(rng, settings, all_times)
    photo = _fit_photograph(camera, to_linear(background, settings.gamma), settings, all_times, rng)
    moving_object = None
    if foreground is not None:
        moving_object = _ForegroundObject(rng, settings, to_linear(foreground, settings.gamma), all_times)
    if info is not None:
        info["camera_peak_shift"] = camera.peaks["shift"]
        info["object_peak_shift"] = None if moving_object is None else moving_object.peaks["shift"]

    def render(u: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Linear-light frame (H, W, 3) at time u, and the object's coverage (H, W) or None."""
        frame = _warp_affine(photo, camera.matrix(u), size)
        if moving_object is None:
            return frame, None
        output_to_patch = np.linalg.inv(moving_object.matrix(u))
        coverage = _warp_affine(moving_object.mask, output_to_patch, size, cv2.BORDER_CONSTANT)
        patch = _warp_affine(moving_object.patch, output_to_patch, size, cv2.BORDER_CONSTANT)
        return frame * (1 - coverage[..., None]) + patch * coverage[..., None], coverage

    ys, xs = np.mgrid[0:settings.height, 0:settings.width].astype(np.float64)
    previous_coverage = None
    for t in range(settings.frames):
        blurry = np.mean([render(float(u))[0] for u in sub_times[t]], axis=0)
        sharp, coverage = render(float(sharp_times[t]))
        if t == 0:
            flow = np.zeros((2, settings.height, settings.width))
            valid = np.ones((settings.height, settings.width), dtype=bool)
        else:
            # Background: sharp_{t-1}(q) = P(A_{t-1} q) equals sharp_t(p) = P(A_t p) at q = A_{t-1}^-1 A_t p.
            flow = _affine_flow(np.linalg.inv(camera.matrix(t - 1)) @ camera.matrix(t), xs, ys)
            if moving_object is not None:
                # Object: the patch point O_t^-1 p was at q = O_{t-1} O_t^-1 p.
                object_motion = moving_object.matrix(t - 1) @ np.linalg.inv(moving_object.matrix(t))
                object_flow = _affine_flow(object_motion, xs, ys)
                flow = np.where(coverage[None] >= 0.5, object_flow, flow)
            target_x, target_y = xs + flow[0], ys + flow[1]
            valid = ((target_x >= 0) & (target_x <= settings.width - 1)
                     & (target_y >= 0) & (target_y <= settings.height - 1))
            if moving_object is not None:
                before = cv2.remap(previous_coverage, target_x.astype(np.float32), target_y.astype(np.float32),
                                   cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                both_object = (coverage >= 1 - LAYER_TOLERANCE) & (before >= 1 - LAYER_TOLERANCE)
                both_background = (coverage <= LAYER_TOLERANCE) & (before <= LAYER_TOLERANCE)
                valid &= both_object | both_background
        previous_coverage = coverage
        on_object = np.zeros(valid.shape, dtype=bool) if coverage is None else coverage >= 0.5
        yield SynthFrame(gamma_encode(blurry, settings.gamma), gamma_encode(sharp, settings.gamma),
                         flow.astype(np.float32), valid, on_object)


# --------------------------------------------------------------------------------------------------- writing

@dataclass
class _VideoPlan:
    name: str
    background: str
    foreground: str | None
    seed: list[int] = field(default_factory=list)


def _plan_video(index: int, seed: int, names: list[str], object_probability: float,
                rng: np.random.Generator) -> _VideoPlan:
    background = names[int(rng.integers(len(names)))]
    foreground = None
    if rng.random() < object_probability:
        others = [name for name in names if name != background] or names
        foreground = others[int(rng.integers(len(others)))]
    return _VideoPlan(VIDEO_NAME.format(index), background, foreground, [seed, index])


def generate_dataset(out: str | os.PathLike, photographs: Mapping[str, np.ndarray], videos: int,
                     settings: SynthSettings, seed: int = 0, *, source: str = "scikit-image",
                     overwrite: bool = False, progress: bool = False) -> Path:
    """Render `videos` videos into `out` (GoPro layout with flows, see the module docstring); returns `out`.

    photographs: name -> RGB uint8 image, the backgrounds and objects to draw from; source: where they came
    from (recorded in synth.json). Video i draws everything from numpy's generator seeded with [seed, i].
    An existing `out` is replaced only with overwrite=True. Files appear only when all are written.
    """
    if isinstance(videos, bool) or not isinstance(videos, int) or videos < 1:
        raise ValueError(f"videos must be a positive integer, got {videos!r}")
    if not photographs:
        raise ValueError("no photographs to render from")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"output {str(out)!r} already exists (pass overwrite=True / --overwrite to replace it)")
    make_folder(out.parent)
    names = sorted(photographs)
    photos = {name: as_rgb(np.asarray(photographs[name]), name) for name in names}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "settings": asdict(settings),
        "photograph_source": source,
        "photographs": names,
        "layout": {"blurry": BLURRY_FOLDER, "sharp": SHARP_FOLDER, "flow": FLOW_FOLDER,
                   "frame_name": FRAME_NAME + ".png|.npy"},
        "flow_convention": FLOW_CONVENTION,
        "videos": [],
    }
    with atomic_dir(out, overwrite=overwrite) as temporary:
        indices = range(videos)
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc="synth", unit="video")
        for index in indices:
            rng = np.random.default_rng([seed, index])
            plan = _plan_video(index, seed, names, settings.object_probability, rng)
            info = asdict(plan)
            folders = [temporary / plan.name / sub for sub in (BLURRY_FOLDER, SHARP_FOLDER, FLOW_FOLDER)]
            for folder in folders:
                folder.mkdir(parents=True)
            foreground = None if plan.foreground is None else photos[plan.foreground]
            frames = render_video(photos[plan.background], settings, rng, foreground, info)
            for t, frame in enumerate(frames):
                stem = FRAME_NAME.format(t)
                write_png(folders[0] / f"{stem}.png", frame.blurry)
                write_png(folders[1] / f"{stem}.png", frame.sharp)
                np.save(folders[2] / f"{stem}.npy", frame.flow)
            metadata["videos"].append(info)
        (temporary / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out
