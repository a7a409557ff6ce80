"""The networks of PVDNet: BIMNet (optical flow), PVDNet / PVDNet-large (deblurring), and `DeblurNet`.

`DeblurNet` holds the pair (`.bimnet`, `.pvdnet`), as the original full checkpoints do, and its forward is one
recurrent deblurring step (flow -> pixel volume -> PVDNet, `pvd.nets.step`); `run_clip` chains steps over a
clip. Every network's `original_key(name)` gives the original PVDNet-repository state-dict key of a parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from .bimnet import BIMNet
from .pvdnet import PVDNet, PVDNetLarge
from .step import ZeroFlow, deblur_step, run_clip

__all__ = ["BIMNet", "DeblurNet", "PVDNet", "PVDNetLarge", "ZeroFlow", "ZeroFlowModel", "run_clip"]


class DeblurNet(nn.Module):
    """The full PVDNet system: `bimnet` (flow) and `pvdnet` (deblurring); forward = one deblurring step.

    DeblurNet() / DeblurNet(large=True) builds fresh networks (PVDNet-large when large);
    DeblurNet(bimnet, pvdnet) wraps existing ones. Parameter names are `bimnet.<BIMNet name>` and
    `pvdnet.<PVDNet name>`; the original full checkpoints name them `[module.]BIMNet.<original>` and
    `[module.]PVDNet.<original>`.
    """

    ARCHITECTURE = "deblurnet"

    def __init__(self, bimnet: BIMNet | None = None, pvdnet: PVDNet | None = None, *, large: bool | None = None):
        super().__init__()
        if bimnet is not None and not isinstance(bimnet, BIMNet):
            raise ValueError(f"DeblurNet: bimnet must be a BIMNet, got {type(bimnet).__name__}")
        if pvdnet is not None and not isinstance(pvdnet, PVDNet):
            raise ValueError(f"DeblurNet: pvdnet must be a PVDNet or PVDNetLarge, got {type(pvdnet).__name__}")
        if pvdnet is not None and large is not None and isinstance(pvdnet, PVDNetLarge) != large:
            raise ValueError(f"DeblurNet: large={large} contradicts the given {type(pvdnet).__name__}")
        self.bimnet = bimnet if bimnet is not None else BIMNet()
        if pvdnet is None:
            pvdnet = PVDNetLarge() if large else PVDNet()
        self.pvdnet = pvdnet

    def forward(self, prev: torch.Tensor, curr: torch.Tensor, next: torch.Tensor,  # noqa: A002
                deblurred_prev: torch.Tensor, size_policy: str = "pad",
                autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Deblur `curr` (B, 3, H, W) in [-1, 1] given its blurry neighbours and the previous output; returns
        float32 (B, 3, H', W') in [-1, 1], not clamped. See `pvd.nets.step.deblur_step`."""
        return deblur_step(self.bimnet, self.pvdnet, prev, curr, next, deblurred_prev, size_policy, autocast_dtype)

    @property
    def large(self) -> bool:
        """Whether the deblurring network is PVDNet-large."""
        return isinstance(self.pvdnet, PVDNetLarge)

    @staticmethod
    def original_key(key: str) -> str:
        """The original full-checkpoint key (without `module.`) of parameter `key`."""
        component, _, rest = key.partition(".")
        if component == "bimnet":
            return f"BIMNet.{BIMNet.original_key(rest)}"
        if component == "pvdnet":
            return f"PVDNet.{PVDNet.original_key(rest)}"
        raise ValueError(f"DeblurNet has no parameter named {key!r}")


class ZeroFlowModel(DeblurNet):
    """The same PVDNet fed pixel volumes built from a zero flow: `model`'s PVDNet (shared, not copied) with
    BIMNet replaced by `ZeroFlow` (the pixel-volume ablation, `pvd eval --zero-flow`). Not a checkpoint
    architecture: save the wrapped model instead."""

    def __init__(self, model: DeblurNet):
        nn.Module.__init__(self)  # no BIMNet to build or check
        self.bimnet = ZeroFlow()
        self.pvdnet = model.pvdnet
