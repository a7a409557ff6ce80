"""Losses of the two training stages (original `models/trainers/trainer.py`).

Stage 1, the blur-invariant loss of BIMNet: for a pair of consecutive frames (blurry B, sharp S, t-1 -> t),

    w_bb = BIMNet(B_t, B_{t-1}), w_bs = BIMNet(S_t, B_{t-1}), w_sb = BIMNet(B_t, S_{t-1}), w_ss = BIMNet(S_t, S_{t-1})

(half-resolution flows resized bilinearly to the frame size without rescaling their values,
`pvd.nets.step.estimate_flow`), each warping S_{t-1}; with images in [0, 1] and mask = warp(ones, w) (no gradient):

    term(w) = sum((warp(S_{t-1}, w) - S_t * mask)^2) / sum(mask)          # sums over B, C, H, W
    loss    = mean of the four terms

This is the original's `MSE_sum(warped, gt * mask) / mask.sum()`: the target is masked, the warped image is not
(its zero-padded taps already fade it out at the border). Optional: the end-point error of the four flows
against a ground-truth flow, either of the output flow alone or averaged over every decoder level
(multi-scale, as LiteFlowNet is trained: each level's flow against the area-downsampled ground truth).
Stage 2: MSE between the deblurred frame and the sharp frame (both in [-1, 1]).
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F

from pvd import kernels
from pvd.frames import to_unit
from pvd.nets import BIMNet, step

FLOW_PAIRS = ("bb", "bs", "sb", "ss")  # original names: (source of frame t-1, source of frame t), b blurry, s sharp
MIN_MASK_SUM = 1e-8  # a flow that sends every pixel outside gives 0 / 0 in the original; here 0


def masked_warp_error(flow: torch.Tensor, sharp_prev: torch.Tensor, sharp_curr: torch.Tensor) -> torch.Tensor:
    """sum((warp(sharp_prev, flow) - sharp_curr * mask)^2) / sum(mask), mask = warp(ones, flow) (no grad).

    flow: (B, 2, H, W) pixels; sharp_prev, sharp_curr: (B, 3, H, W) in [0, 1]. Returns a 0-dim float32 tensor.
    """
    warped = kernels.warp(sharp_prev, flow)
    with torch.no_grad():
        mask = kernels.warp(torch.ones_like(sharp_prev), flow)
    return (warped - sharp_curr * mask).square().sum() / mask.sum().clamp_min(MIN_MASK_SUM)


def end_point_error(flow: torch.Tensor, gt_flow: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance (pixels) between flows (B, 2, H, W). Returns a 0-dim tensor."""
    return (flow - gt_flow).square().sum(dim=1).sqrt().mean()


def multiscale_end_point_error(level_flows: dict[int, torch.Tensor], gt_flow: torch.Tensor) -> torch.Tensor:
    """Mean over levels of the EPE of each level's flow (B, 2, h, w) against `gt_flow` (B, 2, H, W) area-
    downsampled to (h, w); all in full-resolution pixels, so the values are not rescaled. Returns a 0-dim tensor.
    """
    errors = [end_point_error(flow.float(), F.interpolate(gt_flow.float(), size=flow.shape[-2:], mode="area"))
              for flow in level_flows.values()]
    return torch.stack(errors).mean()


def check_pairs(pairs) -> tuple[str, ...]:
    """`pairs` as a tuple of distinct names from FLOW_PAIRS (ValueError otherwise)."""
    pairs = tuple(pairs)
    if not pairs or len(set(pairs)) != len(pairs) or any(pair not in FLOW_PAIRS for pair in pairs):
        raise ValueError(f"flow pairs must be distinct names from {FLOW_PAIRS}, got {list(pairs)}")
    return pairs


def _pair_batches(blurry_prev, blurry_curr, sharp_prev, sharp_curr,
                  pairs: tuple[str, ...] = FLOW_PAIRS) -> tuple[torch.Tensor, torch.Tensor]:
    """(curr batch, prev batch), (len(pairs) * B, 3, H, W): the pairs stacked along the batch."""
    curr = {"b": blurry_curr, "s": sharp_curr}
    prev = {"b": blurry_prev, "s": sharp_prev}
    return (torch.cat([curr[pair[1]] for pair in pairs]), torch.cat([prev[pair[0]] for pair in pairs]))


def _shared_frames(blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs: tuple[str, ...]):
    """(curr frames, prev frames, (rows1, rows2)) for BIMNet's `pairs`: each kind of frame once (K * B, 3, H, W),
    the pairs as lists of row numbers into them; None when no frame is in two pairs, or the kinds differ in number."""
    curr_kinds = list(dict.fromkeys(pair[1] for pair in pairs))
    prev_kinds = list(dict.fromkeys(pair[0] for pair in pairs))
    if len(curr_kinds) == len(pairs) or len(curr_kinds) != len(prev_kinds):
        return None
    curr = {"b": blurry_curr, "s": sharp_curr}
    prev = {"b": blurry_prev, "s": sharp_prev}
    batch = blurry_curr.shape[0]
    rows1 = [batch * curr_kinds.index(pair[1]) + row for pair in pairs for row in range(batch)]
    rows2 = [batch * prev_kinds.index(pair[0]) + row for pair in pairs for row in range(batch)]
    return (torch.cat([curr[kind] for kind in curr_kinds]), torch.cat([prev[kind] for kind in prev_kinds]),
            (rows1, rows2))


def _takes_pairs(bimnet) -> bool:
    """Whether `bimnet` is a BIMNet (also inside torch.compile / DistributedDataParallel), which takes `pairs`."""
    for wrapper_attribute in ("_orig_mod", "module"):
        bimnet = getattr(bimnet, wrapper_attribute, bimnet)
    return isinstance(bimnet, BIMNet)


def _pair_flows(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs: tuple[str, ...],
                flow_of) -> torch.Tensor:
    """flow_of(bimnet, curr batch, prev batch, **pairing) for the stacked `pairs`, each frame's BIMNet pyramid
    computed once when BIMNet can share it (every frame is in two of the four default pairings)."""
    shared = _shared_frames(blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs) if _takes_pairs(bimnet) else None
    if shared is None:
        return flow_of(bimnet, *_pair_batches(blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs))
    curr_frames, prev_frames, rows = shared
    return flow_of(bimnet, curr_frames, prev_frames, pairs=rows)


def _split_pairs(flows: torch.Tensor, pairs: tuple[str, ...] = FLOW_PAIRS) -> dict[str, torch.Tensor]:
    per_pair = einops.rearrange(flows, "(n b) c h w -> n b c h w", n=len(pairs))
    return dict(zip(pairs, per_pair, strict=True))


def blur_invariant_flows(bimnet, blurry_prev: torch.Tensor, blurry_curr: torch.Tensor, sharp_prev: torch.Tensor,
                         sharp_curr: torch.Tensor, pairs: tuple[str, ...] = FLOW_PAIRS) -> dict[str, torch.Tensor]:
    """The flows {pair: (B, 2, H, W) float32 pixels} of `pairs` (default all four: bb, bs, sb, ss) from one
    batched BIMNet call (a BIMNet computes the pyramid of a frame shared by two pairs once). Frames (B, 3, H, W) in [-1, 1]; BIMNet sees them in [0, 1] (`step.estimate_flow`,
    size policy "pad").
    """
    pairs = check_pairs(pairs)
    flows = _pair_flows(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs, step.estimate_flow)
    return _split_pairs(flows, pairs)


def blur_invariant_flow_levels(bimnet, blurry_prev: torch.Tensor, blurry_curr: torch.Tensor,
                               sharp_prev: torch.Tensor, sharp_curr: torch.Tensor, pairs: tuple[str, ...] = FLOW_PAIRS
                               ) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, torch.Tensor]]]:
    """As `blur_invariant_flows`, plus every decoder level's flow per pair: ({pair: (B, 2, H, W)},
    {pair: {level: (B, 2, h, w)}}). H and W must be multiples of 32 (training crops are not padded)."""
    height, width = sharp_curr.shape[-2:]
    if height % step.FLOW_SIZE_MULTIPLE or width % step.FLOW_SIZE_MULTIPLE:
        raise ValueError(f"the multi-scale end-point error needs frames whose height and width are multiples of "
                         f"{step.FLOW_SIZE_MULTIPLE} (set data.crop accordingly), got {height}x{width}")
    pairs = check_pairs(pairs)

    def all_levels(net, curr, prev, **pairing):
        return net(to_unit(curr.float()), to_unit(prev.float()), all_levels=True, **pairing)

    levels = _pair_flows(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs, all_levels)
    finest = F.interpolate(levels[min(levels)].float(), size=(height, width), mode="bilinear", align_corners=False)
    level_flows = {level: _split_pairs(flow, pairs) for level, flow in levels.items()}
    per_pair_levels = {pair: {level: level_flows[level][pair] for level in levels} for pair in pairs}
    return _split_pairs(finest, pairs), per_pair_levels


def blur_invariant_loss(bimnet, blurry_prev: torch.Tensor, blurry_curr: torch.Tensor, sharp_prev: torch.Tensor,
                        sharp_curr: torch.Tensor, gt_flow: torch.Tensor | None = None,
                        epe_weight: float = 0.0, multiscale: bool = False, pairs: tuple[str, ...] = FLOW_PAIRS
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-1 loss of one frame pair: (total, parts); frames (B, 3, H, W) in [-1, 1].

    parts: "flow" (mean of the masked warp errors), "warp_<pair>" each term, and with `gt_flow` (B, 2, H, W)
    (`warp(S_{t-1}, gt_flow) ~ S_t`) "epe" (mean end-point error of the flows, added to the total with weight
    `epe_weight`) and "epe_zero_flow" (the baseline: mean |gt_flow|). With `multiscale` (and `gt_flow`) the
    added term is instead the multi-scale EPE over every decoder level ("epe_levels"); "epe" stays the output
    flow's. `pairs` restricts the loss to a subset of the four pairings, e.g. ("ss",) for supervised flow
    pre-training on sharp frames (a pvd recipe for synthetic data with ground-truth flow; the original trains
    BIMNet from Xavier init, jointly with PVDNet, on all four pairings).
    All parts are detached.
    """
    level_flows = None
    if multiscale and gt_flow is not None:
        flows, level_flows = blur_invariant_flow_levels(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr,
                                                        pairs)
    else:
        flows = blur_invariant_flows(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr, pairs)
    unit_prev, unit_curr = to_unit(sharp_prev.float()), to_unit(sharp_curr.float())
    terms = {pair: masked_warp_error(flow, unit_prev, unit_curr) for pair, flow in flows.items()}
    total = torch.stack(list(terms.values())).mean()
    parts = {"flow": total.detach(), **{f"warp_{pair}": term.detach() for pair, term in terms.items()}}
    if gt_flow is not None:
        epe = torch.stack([end_point_error(flow, gt_flow.float()) for flow in flows.values()]).mean()
        parts["epe"] = epe.detach()
        parts["epe_zero_flow"] = end_point_error(torch.zeros_like(gt_flow.float()), gt_flow.float()).detach()
        if level_flows is not None:
            epe = torch.stack([multiscale_end_point_error(levels, gt_flow) for levels in level_flows.values()]).mean()
            parts["epe_levels"] = epe.detach()
        if epe_weight:
            total = total + epe_weight * epe
    return total, parts


def deblur_loss(deblurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Stage-2 loss: mean squared error, both (B, 3, H, W) in [-1, 1]."""
    return F.mse_loss(deblurred.float(), sharp.float())
