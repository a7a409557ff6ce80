"""BIMNet: the LiteFlowNet optical-flow network as vendored by PVDNet (original `models/archs/liteFlowNet.py`).

Reads top-down: a six-level feature pyramid for each frame, then a coarse-to-fine decoder from level 6
(1/32 resolution) to level 2 (1/2 resolution). Each level refines the flow three times:

1. `Matching`: upsample the coarser flow, warp the second frame's features by it, build a cost volume
   (correlation, max displacement 3) and regress a flow update from it.
2. `Subpixel`: warp again with the new flow and regress a residual from both features and the flow.
3. `Regularization`: a feature-driven local smoothing; each output flow component is a learned,
   softmax-weighted average of its k x k neighbourhood.

Flow units: inside the decoder the flow at level L is stored so that `flow * WARP_SCALE[L]` is the motion
in pixels of level L (level 2 is half resolution, so `flow * 20` is motion in full-resolution pixels).

Module names are pvd's own; `original_key` maps every parameter name to the original state-dict key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pvd import kernels
from pvd.kernels import cpu, cpu_native_smoothing, reference

from .layout import cat_channels, grads_in, memory_format_of

# Decoder levels, finest to coarsest. Level L has 1 / 2**(L-1) of the input resolution.
LEVELS = (2, 3, 4, 5, 6)
PYRAMID_LEVELS = (1, 2, 3, 4, 5, 6)
# Feature-pyramid channels per level.
FEATURE_CHANNELS = {1: 32, 2: 32, 3: 64, 4: 96, 5: 128, 6: 192}
# `flow * WARP_SCALE[L]` is the motion in pixels at level L.
WARP_SCALE = {2: 10.0, 3: 5.0, 4: 2.5, 5: 1.25, 6: 0.625}
# Size of the last conv of Matching/Subpixel and of the Regularization neighbourhood (k x k).
KERNEL_SIZE = {2: 7, 3: 5, 4: 5, 5: 3, 6: 3}
# Correlation stride; strided cost volumes are upsampled back by a transposed conv.
CORRELATION_STRIDE = {2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
MAX_DISPLACEMENT = 3
COST_CHANNELS = (2 * MAX_DISPLACEMENT + 1) ** 2  # 49
# Level 2 lifts its 32-channel features to 64 channels (1x1 conv) before matching and subpixel refinement.
LIFTED_CHANNELS = 64
# Subpixel input: cat(features 1, warped features 2, flow).
SUBPIXEL_IN_CHANNELS = {2: 130, 3: 130, 4: 194, 5: 258, 6: 386}
# Regularization input: cat(brightness error (1), mean-free flow (2), features (128, or 192 at level 6)).
REGULARIZATION_IN_CHANNELS = {2: 131, 3: 131, 4: 131, 5: 131, 6: 195}
# Levels 2-4 project features to 128 channels (1x1 conv) for Regularization.
REGULARIZATION_FEATURE_CHANNELS = 128
REGULARIZATION_PROJECTED_LEVELS = (2, 3, 4)
# Levels 2-4 factor the k x k distance conv into k x 1 then 1 x k.
SEPARABLE_DISTANCE_LEVELS = (2, 3, 4)
# Internal level-2 flow -> motion in pixels of the full-resolution input.
OUTPUT_SCALE = 20.0
NEGATIVE_SLOPE = 0.1
SIZE_MULTIPLE = 32
# `init_for_training`: scale of the last conv of the flow heads (small initial flow updates).
FLOW_HEAD_INIT_SCALE = 0.1


def _leaky_relu() -> nn.LeakyReLU:
    """In place: every one follows a conv (or the cost volume), whose output nothing else reads."""
    return nn.LeakyReLU(negative_slope=NEGATIVE_SLOPE, inplace=True)


def _conv_stack(channels: list[int], last_kernel: int, last_activation: bool) -> nn.Sequential:
    """Convs channels[0] -> channels[1] -> ..., each followed by LeakyReLU except, unless last_activation,
    the last one. All are 3x3 but the last, which is last_kernel x last_kernel ("same" padding throughout).

    Convs sit at the even indices of the Sequential, as in the original, so parameter indices match.
    """
    layers: list[nn.Module] = []
    pairs = list(zip(channels[:-1], channels[1:]))
    for index, (c_in, c_out) in enumerate(pairs):
        kernel = last_kernel if index == len(pairs) - 1 else 3
        layers.append(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))
        if index < len(pairs) - 1 or last_activation:
            layers.append(_leaky_relu())
    return nn.Sequential(*layers)


def cost_volume(f1: torch.Tensor, f2: torch.Tensor, stride: int) -> torch.Tensor:
    """Cost volume (B, 49, ceil(H/stride), ceil(W/stride)) with LiteFlowNet's max displacement of 3."""
    return kernels.correlation(f1, f2, max_displacement=MAX_DISPLACEMENT, stride=stride)


def _lift(level: int) -> nn.Conv2d | None:
    """The 1x1 conv lifting level-2 features to LIFTED_CHANNELS (None at the other levels)."""
    return nn.Conv2d(FEATURE_CHANNELS[level], LIFTED_CHANNELS, 1) if level == 2 else None


class FeaturePyramid(nn.Module):
    """Per-level features of one frame: (B, 3, H, W) -> [level 1 .. level 6], level L at H / 2**(L-1)."""

    def __init__(self):
        super().__init__()
        c = FEATURE_CHANNELS
        self.levels = nn.ModuleDict({
            "level1": nn.Sequential(nn.Conv2d(3, c[1], 7, padding=3), _leaky_relu()),
            "level2": nn.Sequential(
                nn.Conv2d(c[1], c[2], 3, stride=2, padding=1), _leaky_relu(),
                nn.Conv2d(c[2], c[2], 3, padding=1), _leaky_relu(),
                nn.Conv2d(c[2], c[2], 3, padding=1), _leaky_relu()),
            "level3": nn.Sequential(
                nn.Conv2d(c[2], c[3], 3, stride=2, padding=1), _leaky_relu(),
                nn.Conv2d(c[3], c[3], 3, padding=1), _leaky_relu()),
            "level4": nn.Sequential(
                nn.Conv2d(c[3], c[4], 3, stride=2, padding=1), _leaky_relu(),
                nn.Conv2d(c[4], c[4], 3, padding=1), _leaky_relu()),
            "level5": nn.Sequential(nn.Conv2d(c[4], c[5], 3, stride=2, padding=1), _leaky_relu()),
            "level6": nn.Sequential(nn.Conv2d(c[5], c[6], 3, stride=2, padding=1), _leaky_relu()),
        })

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        features = {}
        x = image
        for level in PYRAMID_LEVELS:
            x = self.levels[f"level{level}"](x)
            features[level] = x
        return features


class Matching(nn.Module):
    """Flow from a cost volume: (f1, f2, coarser flow or None) -> flow at this level (B, 2, h, w)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level
        self.feature_proj = _lift(level)
        self.upsample_flow = None
        if level != LEVELS[-1]:
            self.upsample_flow = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, groups=2, bias=False)
        self.upsample_cost = None
        if CORRELATION_STRIDE[level] > 1:
            self.upsample_cost = nn.ConvTranspose2d(COST_CHANNELS, COST_CHANNELS, 4, stride=2, padding=1,
                                                    groups=COST_CHANNELS, bias=False)
        self.flow_head = _conv_stack([COST_CHANNELS, 128, 64, 32, 2], KERNEL_SIZE[level], last_activation=False)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, coarse_flow: torch.Tensor | None) -> torch.Tensor:
        if self.feature_proj is not None:
            f1 = F.leaky_relu_(self.feature_proj(f1), NEGATIVE_SLOPE)
            f2 = F.leaky_relu_(self.feature_proj(f2), NEGATIVE_SLOPE)
        layout = memory_format_of(self.flow_head[0])
        f1, f2 = grads_in(layout, f1, f2)
        flow = None
        if coarse_flow is not None:
            flow = self.upsample_flow(coarse_flow)
            f2 = kernels.warp(f2, (flow * WARP_SCALE[self.level]).to(f2.dtype))
        cost = cost_volume(f1, f2, CORRELATION_STRIDE[self.level]).contiguous(memory_format=layout)
        cost = F.leaky_relu_(cost, NEGATIVE_SLOPE)
        if self.upsample_cost is not None:
            cost = self.upsample_cost(cost)
        update = self.flow_head(cost)
        return update if flow is None else flow + update


class Subpixel(nn.Module):
    """Flow residual from both features, the second warped by the current flow: -> refined flow (B, 2, h, w)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level
        self.feature_proj = _lift(level)
        self.flow_head = _conv_stack([SUBPIXEL_IN_CHANNELS[level], 128, 64, 32, 2], KERNEL_SIZE[level],
                                     last_activation=False)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        if self.feature_proj is not None:
            f1 = F.leaky_relu_(self.feature_proj(f1), NEGATIVE_SLOPE)
            f2 = F.leaky_relu_(self.feature_proj(f2), NEGATIVE_SLOPE)
        layout = memory_format_of(self.flow_head[0])
        f1, f2 = grads_in(layout, f1, f2)
        f2 = kernels.warp(f2, (flow * WARP_SCALE[self.level]).to(f2.dtype))
        return flow + self.flow_head(cat_channels([f1, f2, flow], layout))


class Regularization(nn.Module):
    """Feature-driven flow smoothing: each component becomes a weighted average of its k x k neighbours.

    The weights are an (unnormalised) softmax of -distance**2 over the k*k neighbours, with distances
    regressed from the brightness error, the mean-free flow and the first frame's features; a 1x1 conv
    per component combines the weighted neighbours, and its output (bias included) is divided by the
    softmax normaliser, exactly as in the original.
    """

    def __init__(self, level: int):
        super().__init__()
        self.level = level
        k = KERNEL_SIZE[level]
        neighbours = k * k
        self.feature_proj = None
        if level in REGULARIZATION_PROJECTED_LEVELS:
            self.feature_proj = nn.Conv2d(FEATURE_CHANNELS[level], REGULARIZATION_FEATURE_CHANNELS, 1)
        self.trunk = _conv_stack([REGULARIZATION_IN_CHANNELS[level], 128, 128, 64, 64, 32, 32], 3,
                                 last_activation=True)
        if level in SEPARABLE_DISTANCE_LEVELS:
            self.distance = nn.Sequential(
                nn.Conv2d(32, neighbours, (k, 1), padding=(k // 2, 0)),
                nn.Conv2d(neighbours, neighbours, (1, k), padding=(0, k // 2)))
        else:
            self.distance = nn.Sequential(nn.Conv2d(32, neighbours, k, padding=k // 2))
        self.combine_x = nn.Conv2d(neighbours, 1, 1)
        self.combine_y = nn.Conv2d(neighbours, 1, 1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, f1: torch.Tensor,
                flow: torch.Tensor) -> torch.Tensor:
        warped = kernels.warp(image2, (flow * WARP_SCALE[self.level]).to(image2.dtype))
        brightness_error = (image1 - warped).square().sum(dim=1, keepdim=True).sqrt().detach()
        mean_free_flow = flow - flow.mean(dim=(2, 3), keepdim=True)
        if self.feature_proj is not None:
            f1 = F.leaky_relu_(self.feature_proj(f1), NEGATIVE_SLOPE)
        layout = memory_format_of(self.trunk[0])
        f1, = grads_in(layout, f1)
        distance = self.distance(self.trunk(cat_channels([brightness_error, mean_free_flow, f1], layout)))
        weight = torch.cat([self.combine_x.weight, self.combine_y.weight]).flatten(1)  # (2, k*k)
        bias = torch.cat([self.combine_x.bias, self.combine_y.bias])
        return smoothed_flow(distance, flow, weight, bias)


def smoothed_flow(distance: torch.Tensor, flow: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """Regularization's last step (`reference.smoothed_flow` states it): on CPU with numba (`cpu.native_serves`)
    one compiled pass per pixel (`cpu_native_smoothing`), otherwise the tensor formulation. At level 2 (K = 49,
    32x32, a batch of 32), forward + backward on the development CPU, 2 threads: 22-23 ms eager, 11 ms compiled."""
    if cpu.native_serves(distance) and flow.dtype == weight.dtype == bias.dtype == distance.dtype:
        return cpu_native_smoothing.smoothed_flow(distance, flow, weight, bias)
    return reference.smoothed_flow(distance, flow, weight, bias)


class BIMNet(nn.Module):
    """LiteFlowNet optical flow from `image1` to `image2` (backward flow: image2 warped by it matches image1).

    forward(image1, image2): both (B, 3, H, W) in [0, 1] (no mean subtraction), H and W multiples of 32.
    Returns the level-2 flow (B, 2, H/2, W/2) in pixels of the *full-resolution* input (x then y), i.e.
    the internal flow times 20, as the original does; resize it to (H, W) without rescaling its values.
    (The original's normalised-grid warp divides by size - 1, which is 0 at level 6 when H or W is 32,
    so the original is ill-defined there (NaN in our grid_sample port); pvd's pixel-unit warp is not.)
    """

    ARCHITECTURE = "bimnet"

    @staticmethod
    def original_key(key: str) -> str:
        """The original LiteFlowNet state-dict key of parameter `key` (see module-level `original_key`)."""
        return original_key(key)

    def __init__(self):
        super().__init__()
        self.features = FeaturePyramid()
        self.matching = nn.ModuleDict({f"level{level}": Matching(level) for level in LEVELS})
        self.subpixel = nn.ModuleDict({f"level{level}": Subpixel(level) for level in LEVELS})
        self.regularization = nn.ModuleDict({f"level{level}": Regularization(level) for level in LEVELS})

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, all_levels: bool = False,
                pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | dict[int, torch.Tensor]:
        """all_levels=True: {level L: (B, 2, H / 2**(L-1), W / 2**(L-1))} for every decoder level, each in
        pixels of the full-resolution input (the internal flow of every level times 20; used for multi-scale
        supervision). Otherwise the level-2 flow (see the class docstring).

        pairs = (rows1, rows2), P row numbers each (ints or an int64 tensor): image1 and image2 hold distinct
        frames, and flow p (of P) goes from image1[rows1[p]] to image2[rows2[p]]; each frame's pyramid is then
        computed once however many pairs it is in (the blur-invariant loss pairs every frame twice)."""
        _check_images(image1, image2)
        features1 = self.features(image1)
        features2 = self.features(image2)
        images1 = _image_pyramid(image1, features1)
        images2 = _image_pyramid(image2, features2)
        if pairs is not None:
            pieces1, pieces2 = (_row_pieces(rows, image.shape[0]) for rows, image in zip(pairs, (image1, image2)))
            # only the decoder's levels: level 1 (full resolution, the largest) is not read past the pyramid
            features1, images1 = ({level: _take_rows(d[level], pieces1) for level in LEVELS}
                                  for d in (features1, images1))
            features2, images2 = ({level: _take_rows(d[level], pieces2) for level in LEVELS}
                                  for d in (features2, images2))
        flow = None
        flows = {}
        for level in reversed(LEVELS):
            name = f"level{level}"
            f1, f2 = features1[level], features2[level]
            flow = self.matching[name](f1, f2, flow)
            flow = self.subpixel[name](f1, f2, flow)
            flow = self.regularization[name](images1[level], images2[level], f1, flow)
            flows[level] = flow * OUTPUT_SCALE  # WARP_SCALE[L] * 2**(L-1) == OUTPUT_SCALE at every level
        return flows if all_levels else flows[LEVELS[0]]


def bilinear_upsampling_kernel(size: int = 4) -> torch.Tensor:
    """(size, size) kernel that makes a stride-2 transposed conv (padding 1) upsample bilinearly."""
    factor = (size + 1) // 2
    center = factor - 0.5 if size % 2 == 0 else factor - 1
    taps = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return torch.outer(taps, taps)


def init_for_training(bimnet: BIMNet, gain: float = 1.0) -> None:
    """Initialisation to train BIMNet from scratch, so that signals keep their scale through the pyramid and
    every stage starts by passing the flow through:

    - every conv: Kaiming-normal weights for LeakyReLU(0.1) (times `gain`), zero biases. (Xavier here makes
      the features shrink ~3x per level: level-4 cost volumes start near 1e-7, their gradients fall below
      Adam's epsilon, and training stalls at zero flow);
    - the first conv's filters zero-mean over their taps: BIMNet sees [0, 1] images without mean
      subtraction, and a brightness (DC) response would swamp the correlation's structure;
    - the last conv of every flow head (Matching, Subpixel): weights scaled by FLOW_HEAD_INIT_SCALE, so the
      initial updates are fractions of a pixel instead of random motion of tens of pixels;
    - the transposed convs that upsample flows and cost volumes: bilinear upsampling (as LiteFlowNet's
      bilinear filler), so the coarse flow reaches the next level intact;
    - Regularization's `combine_x`/`combine_y`: weights 1, bias 0, so each flow component starts as the
      softmax-weighted average of its neighbours (random weights scale and flip the flow at every level).
    """
    with torch.no_grad():
        for layer in bimnet.modules():
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(layer.weight, a=NEGATIVE_SLOPE, nonlinearity="leaky_relu")
                layer.weight.mul_(gain)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        first = bimnet.features.levels["level1"][0].weight
        first.sub_(first.mean(dim=(1, 2, 3), keepdim=True))
        for level in LEVELS:
            name = f"level{level}"
            for head in (bimnet.matching[name].flow_head, bimnet.subpixel[name].flow_head):
                head[-1].weight.mul_(FLOW_HEAD_INIT_SCALE)
            for upsample in (bimnet.matching[name].upsample_flow, bimnet.matching[name].upsample_cost):
                if upsample is not None:
                    upsample.weight.copy_(bilinear_upsampling_kernel(upsample.kernel_size[0]).expand_as(upsample.weight))
            for combine in (bimnet.regularization[name].combine_x, bimnet.regularization[name].combine_y):
                combine.weight.fill_(1.0)
                combine.bias.zero_()


def _image_pyramid(image: torch.Tensor, features: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The image at every pyramid level, each resized bilinearly from the one above (align_corners=False)."""
    images = {PYRAMID_LEVELS[0]: image}
    for above, level in zip(PYRAMID_LEVELS[:-1], PYRAMID_LEVELS[1:]):
        images[level] = F.interpolate(images[above], size=features[level].shape[2:], mode="bilinear",
                                      align_corners=False)
    return images


def _row_pieces(rows, count: int) -> tuple[list[int], list[int]]:
    """How `_take_rows` gathers `rows` (ints or an integer tensor; ValueError unless all are in [0, count)) from
    a tensor of `count` rows: (the sizes to split it into, the order in which to concatenate the pieces). The
    pieces are cut at the ends of the runs of consecutive rows, so each run is one or a few whole pieces."""
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else [int(row) for row in rows]
    if not rows or min(rows) < 0 or max(rows) >= count:
        raise ValueError(f"BIMNet: pairs must hold row numbers in [0, {count}), got {rows}")
    runs = []  # [start, stop) of the runs of consecutive rows, in order
    for row in rows:
        if runs and runs[-1][1] == row:
            runs[-1][1] += 1
        else:
            runs.append([row, row + 1])
    cuts = sorted({0, count, *(cut for run in runs for cut in run)})
    order = [piece for start, stop in runs for piece, cut in enumerate(cuts[:-1]) if start <= cut < stop]
    return [stop - start for start, stop in zip(cuts, cuts[1:])], order


def _take_rows(x: torch.Tensor, pieces: tuple[list[int], list[int]]) -> torch.Tensor:
    """x[rows] along dim 0 with `pieces = _row_pieces(rows, len(x))`: one split of x and one cat of its pieces,
    so that the backward adds each piece's gradients and keeps x's memory format. (Indexing's backward, an
    accumulating index_put, was 3-10x slower on CPU at training sizes and handed channels_last features a
    contiguous gradient.)"""
    sizes, order = pieces
    split = x.split(sizes)
    return torch.cat([split[piece] for piece in order])


def _check_images(image1, image2) -> None:
    for name, image in (("image1", image1), ("image2", image2)):
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"BIMNet: {name} must be a (B, 3, H, W) tensor, got {shape}")
    if image1.shape != image2.shape:
        raise ValueError(f"BIMNet: image1 {tuple(image1.shape)} and image2 {tuple(image2.shape)} differ in shape")
    height, width = image1.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(f"BIMNet: height and width must be positive multiples of {SIZE_MULTIPLE}, "
                         f"got {height}x{width}")


# ---- Original state-dict names -------------------------------------------------------------------------

_ORIGINAL_PYRAMID = {"level1": "moduleOne", "level2": "moduleTwo", "level3": "moduleThr",
                     "level4": "moduleFou", "level5": "moduleFiv", "level6": "moduleSix"}
_ORIGINAL_STAGE = {"matching": "moduleMatching", "subpixel": "moduleSubpixel",
                   "regularization": "moduleRegularization"}
_ORIGINAL_PART = {"feature_proj": "moduleFeat.0", "upsample_flow": "moduleUpflow", "upsample_cost": "moduleUpcorr",
                  "flow_head": "moduleMain", "trunk": "moduleMain", "distance": "moduleDist",
                  "combine_x": "moduleScaleX", "combine_y": "moduleScaleY"}


def original_key(key: str) -> str:
    """The original LiteFlowNet state-dict key of a BIMNet parameter name.

    features.levels.level{1..6}.<i>.*            <-> moduleFeatures.module{One,Two,Thr,Fou,Fiv,Six}.<i>.*
    {matching,subpixel,regularization}.level{L}   <-> module{Matching,Subpixel,Regularization}.{L-2}
      .feature_proj -> .moduleFeat.0, .upsample_flow -> .moduleUpflow, .upsample_cost -> .moduleUpcorr,
      .flow_head / .trunk -> .moduleMain, .distance -> .moduleDist, .combine_x/_y -> .moduleScaleX/Y
    """
    parts = key.split(".")
    if parts[:2] == ["features", "levels"] and len(parts) > 3 and parts[2] in _ORIGINAL_PYRAMID:
        return ".".join(["moduleFeatures", _ORIGINAL_PYRAMID[parts[2]], *parts[3:]])
    if len(parts) > 3 and parts[0] in _ORIGINAL_STAGE and parts[1].startswith("level") and parts[2] in _ORIGINAL_PART:
        index = int(parts[1].removeprefix("level")) - LEVELS[0]
        return ".".join([_ORIGINAL_STAGE[parts[0]], str(index), _ORIGINAL_PART[parts[2]], *parts[3:]])
    raise ValueError(f"BIMNet has no parameter named {key!r}")
