"""The networks of PVDNet: BIMNet (optical flow), PVDNet / PVDNet-large (deblurring), and `DeblurNet`.

`DeblurNet` only holds the pair (`.bimnet`, `.pvdnet`), as the original full checkpoints do; the
deblurring step that runs them (flow -> pixel volume -> PVDNet) lives in `pvd.pipeline`.
Every network's `original_key(name)` gives the original PVDNet-repository state-dict key of a parameter.
"""

from __future__ import annotations

from torch import nn

from .bimnet import BIMNet
from .pvdnet import PVDNet, PVDNetLarge

__all__ = ["BIMNet", "DeblurNet", "PVDNet", "PVDNetLarge"]


class DeblurNet(nn.Module):
    """Container of the full PVDNet system: `bimnet` (flow) and `pvdnet` (deblurring).

    DeblurNet() / DeblurNet(large=True) builds fresh networks (PVDNet-large when large);
    DeblurNet(bimnet, pvdnet) wraps existing ones. It has no forward: see `pvd.pipeline`.
    Parameter names are `bimnet.<BIMNet name>` and `pvdnet.<PVDNet name>`; the original full checkpoints
    name them `[module.]BIMNet.<original>` and `[module.]PVDNet.<original>`.
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
