"""Photographs for the synthetic data (`pvd.data.synth`): those bundled with scikit-image, or a folder of images,
as RGB uint8 arrays keyed by name; `select_photographs` keeps training and test photographs apart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pvd.frames import to_8_bit

from .datasets import IMAGE_SUFFIXES, decode_frame, natural_key

# scikit-image sample images used as photographs: name -> (loader in skimage.data, what it shows).
# All ship inside the scikit-image wheel (no download). Left out: the motion-blurred `clock`, the mostly black
# `hubble_deep_field` and `retina`, and the right image of the motorcycle stereo pair (a near duplicate).
BUILTIN_PHOTOGRAPHS = {
    "astronaut": ("astronaut", "portrait of an astronaut, colour"),
    "brick": ("brick", "brick wall texture, gray"),
    "camera": ("camera", "man with a camera, gray"),
    "chelsea": ("chelsea", "cat, colour"),
    "coffee": ("coffee", "cup of coffee, colour"),
    "coins": ("coins", "coins, gray"),
    "grass": ("grass", "grass texture, gray"),
    "gravel": ("gravel", "gravel texture, gray"),
    "immunohistochemistry": ("immunohistochemistry", "stained tissue micrograph, colour"),
    "moon": ("moon", "lunar surface, gray"),
    "motorcycle": ("stereo_motorcycle", "motorcycle (left stereo view), colour"),
    "rocket": ("rocket", "rocket launch, colour"),
}


def as_rgb(image: np.ndarray, name: str) -> np.ndarray:
    """A photograph as RGB uint8 (H, W, 3): gray repeated to 3 channels, alpha dropped; ValueError otherwise."""
    if image.dtype != np.uint8:
        raise ValueError(f"photograph {name!r} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"photograph {name!r} must be gray, RGB or RGBA, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def builtin_photograph_names() -> tuple[str, ...]:
    """Names of the photographs bundled with scikit-image that `load_builtin_photographs` offers."""
    return tuple(sorted(BUILTIN_PHOTOGRAPHS))


def load_builtin_photographs(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """RGB uint8 photographs from scikit-image (gray ones repeated to 3 channels), all of them by default.

    Needs scikit-image (`pip install 'pvd[data]'`). Raises ValueError for an unknown name.
    """
    names = builtin_photograph_names() if names is None else tuple(names)
    unknown = sorted(set(names) - set(BUILTIN_PHOTOGRAPHS))
    if unknown:
        raise ValueError(f"unknown photograph(s) {', '.join(unknown)}; available: "
                         f"{', '.join(builtin_photograph_names())}")
    try:
        from skimage import data as skimage_data
    except ImportError as error:
        raise ImportError("the built-in photographs need scikit-image: pip install 'pvd[data]' "
                          "(or pass a folder of images)") from error
    photos = {}
    for name in names:
        image = getattr(skimage_data, BUILTIN_PHOTOGRAPHS[name][0])()
        if isinstance(image, tuple):  # stereo_motorcycle -> (left, right, disparity)
            image = image[0]
        photos[name] = as_rgb(np.asarray(image), name)
    return photos


def load_photograph_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The images (png/jpg) of `folder` as RGB uint8 arrays, keyed by file stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"photograph folder {str(folder)!r} is not a folder")
    paths = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    if not paths:
        raise ValueError(f"photograph folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    photos = {}
    for path in paths:
        if path.stem in photos:
            raise ValueError(f"photograph folder {str(folder)!r} has two images named {path.stem!r}")
        photos[path.stem] = to_8_bit(decode_frame(path))
    return photos


def select_photographs(available: Sequence[str], include: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None) -> list[str]:
    """Sorted names from `available`: only `include` (all when None), minus `exclude`.

    Raises ValueError for a name that is not available or when nothing is left.
    """
    available = sorted(set(available))
    for label, names in (("include", include), ("exclude", exclude)):
        unknown = sorted(set(names or ()) - set(available))
        if unknown:
            raise ValueError(f"cannot {label} unknown photograph(s) {', '.join(unknown)}; available: "
                             f"{', '.join(available)}")
    chosen = [name for name in available if (include is None or name in include) and name not in (exclude or ())]
    if not chosen:
        raise ValueError("no photograph left after --photos/--exclude")
    return chosen
