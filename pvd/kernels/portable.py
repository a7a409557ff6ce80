"""The kernel ops where Triton is not installed (it ships Linux wheels only): same arguments, same checks,
the PyTorch references of `pvd.kernels.reference` on any device. `pvd.kernels` exports these then."""

from __future__ import annotations

import torch

from . import reference
from ._common import DEFAULT_KERNEL_SIZE, check_correlation_args, check_pixel_volume_args, check_warp_args


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 3, stride: int = 1) -> torch.Tensor:
    """`pvd.kernels.correlation.correlation` without Triton: validated, then `reference.correlation`."""
    max_displacement, stride = check_correlation_args(f1, f2, max_displacement, stride)
    return reference.correlation(f1, f2, max_displacement, stride)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`pvd.kernels.warp.warp` without Triton: validated, then `reference.warp`."""
    check_warp_args(x, flow)
    return reference.warp(x, flow)


def pixel_volume(image: torch.Tensor, flow: torch.Tensor, fill: torch.Tensor,
                 kernel_size: int = DEFAULT_KERNEL_SIZE, *, out_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> torch.Tensor:
    """`pvd.kernels.pixel_volume.pixel_volume` without Triton: validated, then `reference.pixel_volume`."""
    kernel_size = check_pixel_volume_args(image, flow, fill, kernel_size, out_dtype, channels_last)
    return reference.pixel_volume(image, flow, fill, kernel_size, out_dtype=out_dtype, channels_last=channels_last)
