"""Checkpoints: pvd's safetensors files, and conversion of the original PVDNet-repository state dicts.

A pvd checkpoint is a safetensors file of the model's state dict with string metadata:
    format        "pvd"
    architecture  "bimnet" | "pvdnet" | "pvdnet_large" | "deblurnet" (BIMNet + PVDNet or PVDNet-large)
    config        JSON text given to `save` (e.g. the training configuration), "null" when none
    pvd_version   the pvd version that wrote the file

API:
    save(model, path, config=None)                 write atomically (temp name, then rename)
    load(path, device="cpu", architecture=None)    -> model in eval mode, strictly checked
    load_into(model, path)                         fill an existing model, strictly checked
    load_state_dict_file(path, device="cpu")       -> Checkpoint(architecture, state_dict, config, pvd_version)
    build(architecture, state_dict=None)           -> model for `architecture` (loaded strictly if given)
    from_original(state_dict)                      -> (architecture, pvd state dict)
    convert_original(src, dst)                     original .pytorch file -> pvd checkpoint, returns arch
Every mismatch (wrong architecture, missing / unexpected / mis-shaped tensors) raises ValueError naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import pvd
from pvd._files import default_permissions
from pvd.nets import BIMNet, DeblurNet, PVDNet, PVDNetLarge

FORMAT = "pvd"
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "bimnet": BIMNet,
    "pvdnet": PVDNet,
    "pvdnet_large": PVDNetLarge,
    "deblurnet": DeblurNet,
}
# Original full checkpoints come from a DataParallel-wrapped model.
DATA_PARALLEL_PREFIX = "module."
# Prefixes of the two networks inside an original full checkpoint.
ORIGINAL_BIMNET_PREFIX = "BIMNet."
ORIGINAL_PVDNET_PREFIX = "PVDNet."
# A key that only the corresponding original (sub-)network has, for recognising a state dict.
ORIGINAL_BIMNET_MARKER = "moduleFeatures.moduleOne.0.weight"
ORIGINAL_PVDNET_MARKER = "PV_dec.0.weight"
# The first residual block beyond PVDNet's 12 exists only in PVDNet-large.
ORIGINAL_LARGE_MARKER = "RBs.12.0.weight"
LARGE_MARKER = "pvdnet.res_blocks.12.0.weight"  # the same inside a pvd DeblurNet state dict
# How many names an error message lists before summarising.
MAX_LISTED = 8


@dataclass
class Checkpoint:
    """A pvd checkpoint's content: architecture name, state dict, user config (or None), writer's version."""

    architecture: str
    state_dict: dict[str, torch.Tensor]
    config: object
    pvd_version: str


def architecture_of(model: nn.Module) -> str:
    """The architecture name of a pvd network instance ('bimnet', 'pvdnet', 'pvdnet_large', 'deblurnet')."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"not a pvd network: {type(model).__name__} (expected one of "
                     f"{', '.join(cls.__name__ for cls in ARCHITECTURES.values())})")


def save(model: nn.Module, path: str | os.PathLike, config=None) -> Path:
    """Write `model`'s state dict to `path` as a pvd safetensors checkpoint; returns the path.

    config: anything JSON-serialisable, stored as metadata (e.g. the training configuration).
    The file is written to a temporary name in the same folder, then renamed over `path`.
    """
    architecture = architecture_of(model)
    try:
        config_text = json.dumps(config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config must be JSON-serialisable: {error}") from None
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"format": FORMAT, "architecture": architecture, "config": config_text,
                "pvd_version": pvd.__version__}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=metadata)
        default_permissions(temp_name)  # after save_file, which writes the file 0600
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def load_state_dict_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a pvd checkpoint without building a model. Raises ValueError if `path` is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as file:
            metadata = file.metadata() or {}
            state_dict = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a safetensors file ({error}); an original PVDNet .pytorch "
                         f"checkpoint must be converted first (`pvd convert`)") from None
    if metadata.get("format") != FORMAT or "architecture" not in metadata:
        raise ValueError(f"{path} is a safetensors file without pvd metadata (format/architecture)")
    architecture = metadata["architecture"]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{path} has unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        config = json.loads(metadata.get("config", "null"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} has malformed config metadata: {error}") from None
    return Checkpoint(architecture, state_dict, config, metadata.get("pvd_version", "unknown"))


def load(path: str | os.PathLike, device: str | torch.device = "cpu", architecture: str | None = None) -> nn.Module:
    """Build the network stored in pvd checkpoint `path`, on `device`, in eval mode.

    architecture: when given, the file must hold that architecture (ValueError otherwise).
    """
    checkpoint = load_state_dict_file(path, device=device)
    if architecture is not None and checkpoint.architecture != architecture:
        raise ValueError(f"{path} holds architecture {checkpoint.architecture!r}, expected {architecture!r}")
    try:
        model = build(checkpoint.architecture, checkpoint.state_dict)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return model.to(device).eval()


def load_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy the tensors of pvd checkpoint `path` into `model` (same architecture, strict); returns model."""
    checkpoint = load_state_dict_file(path)
    expected = architecture_of(model)
    if checkpoint.architecture != expected:
        raise ValueError(f"{path} holds architecture {checkpoint.architecture!r}, but the model is {expected!r}")
    try:
        _load_strict(model, checkpoint.state_dict, expected)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return model


def build(architecture: str, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A network of `architecture`: randomly initialised, or holding `state_dict` (pvd names, strict).

    With a state dict the model is built without initialising (meta device) and takes the given tensors
    (cast to float32 where they are floating point; they may be shared with `state_dict`), on their
    device. For 'deblurnet' the PVDNet variant (normal or large) is read off the state dict.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if state_dict is None:
        return _new_model(architecture)
    with torch.device("meta"):
        model = _new_model(architecture, large=LARGE_MARKER in state_dict)
    problems = _mismatches(model, state_dict)
    if problems:
        raise ValueError(f"state dict does not match architecture {architecture!r}: {problems}")
    _check_finite(state_dict)
    tensors = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def from_original(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Convert a state dict of the original PVDNet repository to pvd names: -> (architecture, state dict).

    Accepts BIMNet (LiteFlowNet) alone, PVDNet or PVDNet-large alone, or a full model checkpoint with
    `BIMNet.*` and `PVDNet.*` keys; any of them may carry DataParallel's `module.` prefix. The architecture
    is recognised from the keys; the result holds exactly the tensors `build(architecture)` expects (the
    same tensor objects, renamed). Unknown, missing or mis-shaped tensors raise ValueError naming them.
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise ValueError("expected a non-empty state dict (name -> tensor)")
    stripped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is not a (name, tensor) pair")
        name = key.removeprefix(DATA_PARALLEL_PREFIX)
        if name in stripped:
            raise ValueError(f"state dict holds {name!r} both with and without the {DATA_PARALLEL_PREFIX!r} prefix")
        stripped[name] = tensor

    architecture = _original_architecture(stripped)
    with torch.device("meta"):  # names and shapes only, no memory
        template = _new_model(architecture, large=ORIGINAL_PVDNET_PREFIX + ORIGINAL_LARGE_MARKER in stripped)
    names = {type(template).original_key(name): name for name in template.state_dict()}
    converted = {names[key]: tensor for key, tensor in stripped.items() if key in names}
    unknown = [key for key in stripped if key not in names]
    problems = _mismatches(template, converted, extra_unexpected=unknown, describe=type(template).original_key)
    if problems:
        raise ValueError(f"not a valid original {architecture} state dict: {problems}")
    return architecture, converted


def convert_original(source: str | os.PathLike, destination: str | os.PathLike, config=None) -> str:
    """Convert an original PVDNet-repository checkpoint file (torch pickle) to a pvd checkpoint.

    Reads `source` with `torch.load(weights_only=True)` (a dict holding the state dict under
    'state_dict' or 'model' is unwrapped), converts with `from_original`, checks that the result loads
    strictly, and saves it to `destination`. Returns the architecture name.
    """
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"cannot read {source} as a PyTorch checkpoint: {_unpickling_problem(error)}") from None
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    architecture, state_dict = from_original(payload)
    save(build(architecture, state_dict), destination, config=config)
    return architecture


# ---- helpers -------------------------------------------------------------------------------------------

def _check_finite(state_dict: dict[str, torch.Tensor]) -> None:
    """Raise ValueError naming the tensors that hold NaN or infinite values (such weights output garbage)."""
    bad = [name for name, tensor in state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(f"non-finite values (NaN/inf) in {len(bad)} tensor(s): {_listing(bad)}")


def _unpickling_problem(error: Exception) -> str:
    """torch.load's failure in one line, without its advice to retry with weights_only=False (never safe here)."""
    text = str(error)
    if "Weights only load failed" in text:
        detail = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
        return ("it holds Python objects other than tensors, which pvd refuses to unpickle"
                + (f" ({detail.removeprefix('WeightsUnpickler error: ')})" if detail else ""))
    return text.splitlines()[0] if text else type(error).__name__


def _new_model(architecture: str, large: bool = False) -> nn.Module:
    """A freshly initialised network of `architecture`; `large` picks PVDNet-large inside a DeblurNet."""
    if architecture == "deblurnet":
        return DeblurNet(large=large)
    return ARCHITECTURES[architecture]()


def _original_architecture(state_dict: dict[str, torch.Tensor]) -> str:
    """Recognise an original (prefix-stripped) state dict: 'bimnet', 'pvdnet', 'pvdnet_large' or 'deblurnet'."""
    has_bimnet = any(key.startswith(ORIGINAL_BIMNET_PREFIX) for key in state_dict)
    has_pvdnet = any(key.startswith(ORIGINAL_PVDNET_PREFIX) for key in state_dict)
    if has_bimnet or has_pvdnet:
        if not (has_bimnet and has_pvdnet):
            missing = ORIGINAL_PVDNET_PREFIX if has_bimnet else ORIGINAL_BIMNET_PREFIX
            raise ValueError(f"full-model state dict lacks every {missing}* tensor")
        return "deblurnet"
    if ORIGINAL_BIMNET_MARKER in state_dict:
        return "bimnet"
    if ORIGINAL_PVDNET_MARKER in state_dict:
        return "pvdnet_large" if ORIGINAL_LARGE_MARKER in state_dict else "pvdnet"
    raise ValueError(f"unrecognised state dict: none of {ORIGINAL_BIMNET_PREFIX}*, {ORIGINAL_PVDNET_PREFIX}*, "
                     f"{ORIGINAL_BIMNET_MARKER!r} or {ORIGINAL_PVDNET_MARKER!r} is present "
                     f"(first keys: {_listing(list(state_dict))})")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor], extra_unexpected=(), describe=None) -> str:
    """'' when `state_dict` has exactly `model`'s tensors and shapes, else a description of the differences.

    describe(name) gives the name to print for a model tensor (e.g. its original key).
    """
    describe = describe or (lambda name: name)
    expected = model.state_dict()
    missing = [describe(name) for name in expected if name not in state_dict]
    unexpected = list(extra_unexpected) + [name for name in state_dict if name not in expected]
    misshaped = [f"{describe(name)} {tuple(state_dict[name].shape)} (expected {tuple(tensor.shape)})"
                 for name, tensor in expected.items()
                 if name in state_dict and state_dict[name].shape != tensor.shape]
    parts = []
    if missing:
        parts.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected tensors: {_listing(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped tensors: {_listing(misshaped)}")
    return "; ".join(parts)


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], architecture: str) -> None:
    problems = _mismatches(model, state_dict)
    if problems:
        raise ValueError(f"state dict does not match architecture {architecture!r}: {problems}")
    _check_finite(state_dict)
    model.load_state_dict(state_dict, strict=True)
