"""Triton kernels of pvd with their PyTorch reference twins.

`correlation`, `warp` and `pixel_volume` validate their inputs, then run the Triton kernels on CUDA
tensors (and on CPU tensors when TRITON_INTERPRET=1) or the reference in `pvd.kernels.reference`.
"""

from . import reference
from .correlation import correlation
from .pixel_volume import pixel_volume
from .warp import warp

__all__ = ["correlation", "pixel_volume", "reference", "warp"]
