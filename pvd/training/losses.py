"""Losses of the two training stages (original `models/trainers/trainer.py`).

Stage 1, the blur-invariant loss of BIMNet: for a pair of consecutive frames (blurry B, sharp S, t-1 -> t),

    w_bb = BIMNet(B_t, B_{t-1}), w_bs = BIMNet(S_t, B_{t-1}), w_sb = BIMNet(B_t, S_{t-1}), w_ss = BIMNet(S_t, S_{t-1})

(half-resolution flows resized bilinearly to the frame size without rescaling their values, `pipeline.
estimate_flow`), each warping S_{t-1}; with images in [0, 1] and mask = warp(ones, w) (no gradient):

    term(w) = sum((warp(S_{t-1}, w) - S_t * mask)^2) / sum(mask)          # sums over B, C, H, W
    loss    = mean of the four terms

This is the original's `MSE_sum(warped, gt * mask) / mask.sum()`: the target is masked, the warped image is not
(its zero-padded taps already fade it out at the border). Optional: the end-point error of the four flows
against a ground-truth flow. Stage 2: MSE between the deblurred frame and the sharp frame (both in [-1, 1]).
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F

from pvd import kernels, pipeline

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


def blur_invariant_flows(bimnet, blurry_prev: torch.Tensor, blurry_curr: torch.Tensor, sharp_prev: torch.Tensor,
                         sharp_curr: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four flows {bb, bs, sb, ss} (each (B, 2, H, W) float32 pixels) from one batched BIMNet call.

    Frames (B, 3, H, W) in [-1, 1]; BIMNet sees them in [0, 1] (`pipeline.estimate_flow`, size policy "pad").
    """
    curr = {"b": blurry_curr, "s": sharp_curr}
    prev = {"b": blurry_prev, "s": sharp_prev}
    prev_batch = torch.cat([prev[pair[0]] for pair in FLOW_PAIRS])
    curr_batch = torch.cat([curr[pair[1]] for pair in FLOW_PAIRS])
    flows = pipeline.estimate_flow(bimnet, curr_batch, prev_batch)
    per_pair = einops.rearrange(flows, "(n b) c h w -> n b c h w", n=len(FLOW_PAIRS))
    return dict(zip(FLOW_PAIRS, per_pair, strict=True))


def blur_invariant_loss(bimnet, blurry_prev: torch.Tensor, blurry_curr: torch.Tensor, sharp_prev: torch.Tensor,
                        sharp_curr: torch.Tensor, gt_flow: torch.Tensor | None = None,
                        epe_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-1 loss of one frame pair: (total, parts); frames (B, 3, H, W) in [-1, 1].

    parts: "flow" (mean of the four masked warp errors), "warp_<pair>" each term, and with `gt_flow`
    (B, 2, H, W) (`warp(S_{t-1}, gt_flow) ~ S_t`) "epe" (mean end-point error of the four flows), added to the
    total with weight `epe_weight`. All parts are detached.
    """
    flows = blur_invariant_flows(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr)
    unit_prev, unit_curr = (sharp_prev.float() + 1) / 2, (sharp_curr.float() + 1) / 2
    terms = {pair: masked_warp_error(flow, unit_prev, unit_curr) for pair, flow in flows.items()}
    total = torch.stack(list(terms.values())).mean()
    parts = {"flow": total.detach(), **{f"warp_{pair}": term.detach() for pair, term in terms.items()}}
    if gt_flow is not None:
        epe = torch.stack([end_point_error(flow, gt_flow.float()) for flow in flows.values()]).mean()
        parts["epe"] = epe.detach()
        if epe_weight:
            total = total + epe_weight * epe
    return total, parts


def deblur_loss(deblurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Stage-2 loss: mean squared error, both (B, 3, H, W) in [-1, 1]."""
    return F.mse_loss(deblurred.float(), sharp.float())
