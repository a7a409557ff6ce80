"""Training checkpoints: atomic writes, keep-last-K rotation, latest lookup, and RNG state capture.

A training checkpoint `<out_dir>/checkpoints/step_<step>.pt` is a `torch.save`d dict of plain tensors and
Python values (loadable with `weights_only=True`): model / optimizer / scheduler state dicts, the step, the
data position (epoch, batches done in it), the RNG states (torch CPU and CUDA, numpy, Python `random`) and the
configuration. It is written under a temporary name in the same folder, then renamed (`os.replace`).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from pvd._files import atomic_file

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Training checkpoints in `directory`, oldest (smallest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """torch.save `obj` to a temporary file next to `path`, then rename it to `path`."""
    path = Path(path)
    with atomic_file(path) as temporary, temporary.open("wb") as file:
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    return path


def save_checkpoint(directory: str | os.PathLike, step: int, state: dict, keep_last: int) -> Path:
    """Write `state` as the checkpoint of `step` in `directory`, then delete all but the newest `keep_last`."""
    path = atomic_torch_save(state, checkpoint_path(directory, step))
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint onto the CPU. ValueError if `path` is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {error}") from None
    required = ("model", "optimizer", "scheduler", "step", "data", "rng", "stage")
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise ValueError(f"{str(path)!r} is not a pvd training checkpoint (needs keys {required})")
    return state


def capture_rng_state() -> dict:
    """The state of every random generator the training touches, as plain tensors and Python values."""
    mt_name, mt_keys, mt_pos, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": {"name": mt_name, "keys": torch.from_numpy(mt_keys.astype(np.int64)), "pos": int(mt_pos),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`."""
    torch.random.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
