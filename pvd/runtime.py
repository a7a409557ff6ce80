"""Where and how the networks run: device choice and PVDNet's autocast precision (inference and training)."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """'auto' -> cuda when available, else cpu. ValueError for 'cuda' without a GPU or an unknown name.

    index: on CUDA, the GPU to use (made the current device; e.g. a process's LOCAL_RANK).
    """
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available")
    if device == "cuda" and index is not None:
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, fp16_fallback: bool = True) -> torch.dtype | None:
    """PVDNet's autocast dtype, None meaning fp32.

    'auto' on CUDA: bf16 where supported, else fp16 (or fp32 when not `fp16_fallback`, as training wants:
    fp16 training would need loss scaling). 'auto' on a CPU: bf16 where the CPU computes in bf16 natively
    (`cpu_has_native_bf16`: oneDNN's bf16 convolutions ran 2.5x faster than fp32 on the development CPU), else
    fp32. 'bf16' on a CPU is honoured (slow without native bf16); 'fp16' on a CPU is a ValueError.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision == "fp16" or (precision == "bf16" and device.type != "cpu"):
            raise ValueError(f"precision {precision!r} needs a CUDA device"
                             + ("; a CPU runs 'bf16' or 'fp32'" if device.type == "cpu" else ""))
        if precision == "auto":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
        return AUTOCAST_DTYPES[precision]
    if precision == "auto":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if fp16_fallback else None
    return AUTOCAST_DTYPES[precision]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AVX512_BF16 or AMX) that oneDNN's bf16 convolutions
    use; without them bf16 is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(torch.cpu, name, lambda: False)() for name in probes)
