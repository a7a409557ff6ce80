"""Triton kernels of pvd with their PyTorch reference twins.

`correlation`, `warp` and `pixel_volume` validate their inputs, then run the Triton kernels on CUDA
tensors (and on CPU tensors when TRITON_INTERPRET=1) or the reference in `pvd.kernels.reference`.
Without Triton (it ships Linux wheels only) they are those of `pvd.kernels.portable`: the references.
"""

from . import reference
from ._common import HAS_TRITON

if HAS_TRITON:
    from .correlation import correlation
    from .pixel_volume import pixel_volume
    from .warp import warp
else:  # macOS, Windows: same ops, PyTorch references on any device
    from .portable import correlation, pixel_volume, warp

__all__ = ["HAS_TRITON", "correlation", "pixel_volume", "reference", "warp"]
