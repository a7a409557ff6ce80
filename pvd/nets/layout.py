"""The memory format a network runs in, read from its weights (`model.to(memory_format=...)` sets it)."""

from __future__ import annotations

import torch
from torch import nn


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """torch.channels_last when the first 4-D parameter of `module` (a convolution's weight) is channels_last
    (and not also plain contiguous, as 1x1 kernels are), else torch.contiguous_format."""
    weight = next((p for p in module.parameters() if p.dim() == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
