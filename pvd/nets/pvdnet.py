"""PVDNet and PVDNet-large: deblur the current frame from its pixel volume and its neighbours.

Original `models/archs/PVDNet.py` and `PVDNet_large.py`. An encoder-decoder predicting a residual:

    pixel volume (25) -> 2 convs -> 64  \\
                                          cat (96) -> full (64, H) -> half (64, H/2) -> quarter (C, H/4)
    cat(curr, prev, next) (9) -> 2 convs -> 32  /
    quarter -> N residual blocks -> conv -> + quarter
            -> up x2 + half -> conv -> up x2 + full -> conv -> 5x5 conv -> residual (3)
    output = curr + residual

PVDNet: C = 128, N = 12. PVDNet-large: C = 192, N = 24. Module names are pvd's own; `original_key` maps
every parameter name to the original state-dict key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_VOLUME_CHANNELS = 25  # 5 x 5 candidates per pixel
VOLUME_FEATURES = 64
IMAGE_FEATURES = 32
CHANNELS = 64  # full- and half-resolution width
SIZE_MULTIPLE = 4  # two stride-2 stages


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class PVDNet(nn.Module):
    """Deblurs `curr` given its pixel volume and the neighbouring blurry frames.

    forward(pixel_volume, prev, curr, next): pixel_volume (B, 25, H, W) (gray values in [-1, 1]), prev /
    curr / next (B, 3, H, W) in [-1, 1], H and W multiples of 4. Returns the deblurred curr (B, 3, H, W),
    in [-1, 1] up to the network's residual (not clamped).
    """

    ARCHITECTURE = "pvdnet"

    @staticmethod
    def original_key(key: str) -> str:
        """The original PVDNet state-dict key of parameter `key` (see module-level `original_key`)."""
        return original_key(key)

    def __init__(self, res_channels: int = 128, num_res_blocks: int = 12):
        super().__init__()
        self.volume_encoder = nn.Sequential(
            _conv(PIXEL_VOLUME_CHANNELS, VOLUME_FEATURES, 3), nn.ReLU(inplace=True),
            _conv(VOLUME_FEATURES, VOLUME_FEATURES, 3), nn.ReLU(inplace=True))
        self.image_encoder = nn.Sequential(
            _conv(9, IMAGE_FEATURES, 3), nn.ReLU(inplace=True),
            _conv(IMAGE_FEATURES, IMAGE_FEATURES, 3), nn.ReLU(inplace=True))
        self.fuse = _conv(VOLUME_FEATURES + IMAGE_FEATURES, CHANNELS, 5)
        self.down_half = nn.Sequential(
            _conv(CHANNELS, CHANNELS, 5, stride=2), nn.ReLU(inplace=True),
            _conv(CHANNELS, CHANNELS, 5))
        self.down_quarter = nn.Sequential(
            _conv(CHANNELS, 2 * CHANNELS, 5, stride=2), nn.ReLU(inplace=True),
            _conv(2 * CHANNELS, res_channels, 5), nn.ReLU(inplace=True))
        self.res_blocks = nn.ModuleList(
            nn.Sequential(_conv(res_channels, res_channels, 3), nn.ReLU(inplace=True),
                          _conv(res_channels, res_channels, 3), nn.ReLU(inplace=True))
            for _ in range(num_res_blocks))
        self.res_end = nn.Sequential(_conv(res_channels, res_channels, 3), nn.ReLU(inplace=True))
        self.up_half = nn.ConvTranspose2d(res_channels, CHANNELS, 4, stride=2, padding=1)
        self.refine_half = _conv(CHANNELS, CHANNELS, 5)
        self.up_full = nn.ConvTranspose2d(CHANNELS, CHANNELS, 4, stride=2, padding=1)
        self.refine_full = _conv(CHANNELS, CHANNELS, 5)
        self.to_residual = _conv(CHANNELS, 3, 5)

    def forward(self, pixel_volume: torch.Tensor, prev: torch.Tensor, curr: torch.Tensor,
                next: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the frame after curr
        _check_inputs(pixel_volume, prev, curr, next)
        volume_features = self.volume_encoder(pixel_volume)
        image_features = self.image_encoder(torch.cat([curr, prev, next], dim=1))
        full = self.fuse(torch.cat([volume_features, image_features], dim=1))
        half = self.down_half(full)
        quarter = self.down_quarter(half)

        x = quarter
        for block in self.res_blocks:
            x = x + block(x)
        x = self.res_end(x) + quarter

        # In place on fresh conv outputs, which no backward reads: no new full-size tensor per sum.
        x = F.relu_(self.up_half(x).add_(half))
        x = F.relu_(self.refine_half(x))
        x = F.relu_(self.up_full(x).add_(full))
        x = F.relu_(self.refine_full(x))
        return self.to_residual(x).add_(curr)


class PVDNetLarge(PVDNet):
    """PVDNet with 24 residual blocks at 192 channels; same inputs and output as `PVDNet`."""

    ARCHITECTURE = "pvdnet_large"

    def __init__(self):
        super().__init__(res_channels=192, num_res_blocks=24)


def _check_inputs(pixel_volume, prev, curr, next) -> None:  # noqa: A002
    named = (("pixel_volume", pixel_volume, PIXEL_VOLUME_CHANNELS), ("prev", prev, 3), ("curr", curr, 3),
             ("next", next, 3))
    for name, tensor, channels in named:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[1] != channels:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"PVDNet: {name} must be a (B, {channels}, H, W) tensor, got {shape}")
    reference = (pixel_volume.shape[0], *pixel_volume.shape[2:])
    for name, tensor, _ in named[1:]:
        if (tensor.shape[0], *tensor.shape[2:]) != reference:
            raise ValueError(f"PVDNet: {name} {tuple(tensor.shape)} does not match pixel_volume "
                             f"{tuple(pixel_volume.shape)} in batch, height and width")
    height, width = pixel_volume.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(f"PVDNet: height and width must be positive multiples of {SIZE_MULTIPLE}, "
                         f"got {height}x{width}")


# ---- Original state-dict names -------------------------------------------------------------------------

_ORIGINAL_PREFIX = {
    "volume_encoder": "PV_dec",
    "image_encoder": "img_dec",
    "fuse": "d0",
    "down_half": "d1",
    "down_quarter": "temp",
    "res_blocks": "RBs",
    "res_end": "RB_end",
    "up_half": "dconv1",
    "refine_half": "dconv1_end.1",
    "up_full": "dconv2",
    "refine_full": "dconv2_end.1",
    "to_residual": "end",
}


def original_key(key: str) -> str:
    """The original PVDNet / PVDNet-large state-dict key of a PVDNet parameter name.

    volume_encoder <-> PV_dec, image_encoder <-> img_dec, fuse <-> d0, down_half <-> d1,
    down_quarter <-> temp, res_blocks <-> RBs, res_end <-> RB_end, up_half <-> dconv1,
    refine_half <-> dconv1_end.1, up_full <-> dconv2, refine_full <-> dconv2_end.1, to_residual <-> end
    (the rest of the name, e.g. `.0.weight`, is unchanged).
    """
    head, _, rest = key.partition(".")
    if head not in _ORIGINAL_PREFIX or not rest:
        raise ValueError(f"PVDNet has no parameter named {key!r}")
    return f"{_ORIGINAL_PREFIX[head]}.{rest}"
