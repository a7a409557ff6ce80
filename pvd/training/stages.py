"""The two training stages: model set-up, one optimizer step per frame step, and validation.

`BIMNetTrainer` (stage 1) trains BIMNet alone with the blur-invariant loss: every consecutive frame pair
(t-1, t) of a clip is one optimizer step. `PVDNetTrainer` (stage 2) trains PVDNet (or PVDNet-large) with BIMNet
frozen: a clip of T frames gives T-2 recurrent steps (frame t = 1..T-2 with its neighbours t-1 and t+1), each
with its own optimizer step; the previous output is detached and starts as the first blurry frame.

Both: RAdam with decoupled weight decay, global grad-norm clipping, a LambdaLR stepped after every optimizer
step, a fresh init of the trained network (Xavier-uniform for PVDNet, `pvd.nets.bimnet.init_for_training` for
BIMNet), optional DistributedDataParallel and torch.compile, and on CPU the networks in channels_last
(`run.channels_last`; checkpoints and weights do not depend on it). Stage 2 runs PVDNet under bf16 autocast
when asked (`run.precision`; "auto" means bf16 on a CUDA device that has it or a CPU with native bf16, see
`pvd.runtime.resolve_precision`; BIMNet, flow and pixel volume stay fp32, as in `pvd.nets.step`) and validates
with the clip recurrence every user of the model shares (`pvd.nets.run_clip`).
Batches are the dicts of `pvd.data.datasets.VideoClipDataset` (frames in [-1, 1]).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pvd import kernels, metrics, threads, weights
from pvd.frames import to_signed, to_unit
from pvd.nets import BIMNet, DeblurNet, PVDNet, PVDNetLarge, run_clip
from pvd.nets import step as deblurring
from pvd.nets.bimnet import init_for_training as bimnet_init_for_training
from pvd.runtime import resolve_precision

from .config import RANDOM_BIMNET, TrainConfig
from .losses import blur_invariant_flows, blur_invariant_loss, deblur_loss, end_point_error, masked_warp_error
from .schedule import build_scheduler

def xavier_init(module: nn.Module, gain: float = 1.0) -> None:
    """Xavier-uniform weights and zero biases for every (transposed) convolution, as the original `init`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def load_bimnet(path: str | Path) -> BIMNet:
    """BIMNet from a stage-1 output, a full (DeblurNet) checkpoint, or the official `BIMNet.pytorch`."""
    return weights.load_network(path, expect="bimnet")


def load_pvdnet(path: str | Path, large: bool) -> PVDNet:
    """PVDNet / PVDNet-large (model.large) from a pvd or original checkpoint (alone or inside a full model)."""
    return weights.load_network(path, expect="pvdnet_large" if large else "pvdnet")


def _use_channels_last(setting: str, device: torch.device) -> bool:
    """run.channels_last: "on", "off", or "auto": on for CPU training (where the convolutions, forward and
    backward, run 10-25% faster in it) unless `pvd.nets.step.CHANNELS_LAST_BY_DEFAULT` is off, as inference
    places the networks; off on CUDA, whose training keeps PyTorch's default layout."""
    return setting == "on" or (setting == "auto" and device.type == "cpu" and deblurring.CHANNELS_LAST_BY_DEFAULT)


class Trainer:
    """Shared machinery. Subclasses set `self.model` (what checkpoints hold) and `self.trained` (what learns)."""

    stage = ""

    def __init__(self, config: TrainConfig, device: torch.device, distributed: bool = False):
        self.config = config
        self.device = device
        # "auto": bf16 autocast on a CUDA device or CPU that has it; fp32 otherwise (fp16 would need loss scaling)
        self.autocast_dtype = resolve_precision(config.run.precision, device, fp16_fallback=False)
        self.model, self.trained = self._build()
        self.model.to(device)
        self.channels_last = _use_channels_last(config.run.channels_last, device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.trained
        if distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.trained, device_ids=device_ids)
        if config.run.compile:
            self.net = torch.compile(self.net)
        optim = config.optim
        self.optimizer = torch.optim.RAdam(self.trained.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                           eps=optim.eps, weight_decay=optim.weight_decay,
                                           decoupled_weight_decay=True)
        self.scheduler = build_scheduler(self.optimizer, config.schedule)
        self.step = 0

    def _build(self) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _optimizer_step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward, clip, step the optimizer and the schedule; returns this step's scalars."""
        lr = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.optim.grad_clip or math.inf
        with threads.single_thread() if self.device.type == "cpu" else contextlib.nullcontext():
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trained.parameters(), max_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}

    def _frames(self, batch: dict, key: str) -> torch.Tensor:
        return batch[key].to(self.device, dtype=torch.float32, non_blocking=True)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    def train_clip(self, batch: dict, max_steps: int | None = None) -> list[dict[str, float]]:
        """Train on one batch of clips, one optimizer step per frame step (stopping at `max_steps`)."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, clips: list[dict]) -> tuple[dict[str, float], list[torch.Tensor]]:
        """(mean scalars, [input, output, ground truth] images (3, H, W) in [-1, 1] of the first clip)."""
        raise NotImplementedError


class BIMNetTrainer(Trainer):
    """Stage 1: BIMNet with the blur-invariant loss (plus `loss.flow_epe_weight` x EPE against GT flow).

    Always fp32: BIMNet does not run under autocast (its warps would mix bf16 flows with fp32 images), and the
    deblurring runs it in fp32 anyway. run.precision='auto' means fp32 here, 'bf16' is refused.
    """

    stage = "bimnet"

    def __init__(self, config: TrainConfig, device: torch.device, distributed: bool = False):
        if config.run.precision == "bf16":
            raise ValueError("stage 'bimnet' trains in fp32 (BIMNet does not run under autocast); "
                             "set run.precision to 'auto' or 'fp32'")
        super().__init__(config, device, distributed)
        self.autocast_dtype = None

    def _build(self):
        if self.config.model.init_weights:
            bimnet = load_bimnet(self.config.model.init_weights)
        else:
            bimnet = BIMNet()
            bimnet_init_for_training(bimnet, self.config.model.init_gain)
        return bimnet, bimnet

    def train_clip(self, batch, max_steps=None):
        blurry, sharp = self._frames(batch, "blurry"), self._frames(batch, "sharp")
        gt_flow = self._frames(batch, "flow") if "flow" in batch else None
        self.trained.train()
        records = []
        for t in range(1, blurry.shape[1]):
            if max_steps is not None and self.step >= max_steps:
                break
            loss, parts = blur_invariant_loss(
                self.net, blurry[:, t - 1], blurry[:, t], sharp[:, t - 1], sharp[:, t],
                gt_flow=None if gt_flow is None else gt_flow[:, t - 1], epe_weight=self.config.loss.flow_epe_weight,
                multiscale=self.config.loss.flow_epe_multiscale, pairs=tuple(self.config.loss.flow_pairs))
            record = self._optimizer_step(loss)
            record.update({name: float(value) for name, value in parts.items()})
            records.append(record)
        return records

    @torch.no_grad()
    def validate(self, clips):
        bimnet = self.model.eval()
        losses, psnrs, epes, panels = [], [], [], []
        for clip in clips:
            blurry = self._frames(clip, "blurry").unsqueeze(0)
            sharp = self._frames(clip, "sharp").unsqueeze(0)
            for t in range(1, blurry.shape[1]):
                flows = blur_invariant_flows(bimnet, blurry[:, t - 1], blurry[:, t], sharp[:, t - 1], sharp[:, t])
                unit_prev, unit_curr = to_unit(sharp[:, t - 1], clamp=True), to_unit(sharp[:, t], clamp=True)
                losses.append(torch.stack([masked_warp_error(f, unit_prev, unit_curr) for f in flows.values()]).mean())
                warped = kernels.warp(unit_prev, flows["bb"])
                psnrs.append(metrics.psnr(warped.clamp(0, 1), unit_curr).mean())
                if "flow" in clip:
                    gt = self._frames(clip, "flow")[t - 1].unsqueeze(0)
                    epes.append(torch.stack([end_point_error(f, gt) for f in flows.values()]).mean())
                if not panels:
                    panels = [blurry[0, t], to_signed(warped[0]), sharp[0, t]]
        self.trained.train()
        scalars = {"val/flow_loss": float(torch.stack(losses).mean()),
                   "val/warp_psnr": float(torch.stack(psnrs).mean())}
        if epes:
            scalars["val/epe"] = float(torch.stack(epes).mean())
        return scalars, panels


class PVDNetTrainer(Trainer):
    """Stage 2: PVDNet (PVDNet-large with `model.large`) with BIMNet frozen; MSE against the sharp frame."""

    stage = "pvdnet"

    def _build(self):
        model_config = self.config.model
        if not model_config.bimnet_weights:
            raise ValueError(f"stage 'pvdnet' needs model.bimnet_weights: a stage-1 output, a full checkpoint or "
                             f"the official BIMNet.pytorch ('{RANDOM_BIMNET}' for an untrained BIMNet, smoke "
                             f"tests only)")
        bimnet = BIMNet() if model_config.bimnet_weights == RANDOM_BIMNET else load_bimnet(model_config.bimnet_weights)
        bimnet.requires_grad_(False).eval()
        if model_config.init_weights:
            pvdnet = load_pvdnet(model_config.init_weights, model_config.large)
        else:
            pvdnet = PVDNetLarge() if model_config.large else PVDNet()
            xavier_init(pvdnet, model_config.init_gain)
        return DeblurNet(bimnet, pvdnet), pvdnet

    def train_clip(self, batch, max_steps=None):
        return self._recurrent_steps(batch, max_steps, self._step)

    def _step(self, blurry, sharp, t, deblurred_prev):
        """One optimizer step at recurrent step t: (output, record)."""
        out = deblurring.deblur_step(self.model.bimnet, self.net, blurry[:, t - 1], blurry[:, t], blurry[:, t + 1],
                                     deblurred_prev, autocast_dtype=self.autocast_dtype)
        return out, self._optimizer_step(deblur_loss(out, sharp[:, t]))

    def _recurrent_steps(self, batch, max_steps, step):
        """The clip's recurrent steps t = 1..T-2 in order, each `step(blurry, sharp, t, deblurred_prev)` ->
        (output, record); the previous output fed back detached, the first blurry frame at the start."""
        blurry, sharp = self._frames(batch, "blurry"), self._frames(batch, "sharp")
        self.trained.train()
        deblurred_prev = blurry[:, 0]
        records = []
        for t in range(1, blurry.shape[1] - 1):
            if max_steps is not None and self.step >= max_steps:
                break
            out, record = step(blurry, sharp, t, deblurred_prev)
            records.append(record)
            deblurred_prev = out.detach()
        return records

    @torch.no_grad()
    def validate(self, clips):
        """Recurrent deblurring of each whole clip (`pvd.nets.run_clip`); PSNR on frames 2..N."""
        model = self.model.eval()
        psnrs, panels = [], []
        for clip in clips:
            blurry = self._frames(clip, "blurry").unsqueeze(0)
            sharp = self._frames(clip, "sharp").unsqueeze(0)
            frames = blurry.unbind(1)
            for t, _, out in run_clip(model, frames, autocast_dtype=self.autocast_dtype):
                if t >= 1:
                    psnrs.append(metrics.psnr(to_unit(out, clamp=True), to_unit(sharp[:, t], clamp=True)).mean())
            if not panels:
                panels = [frames[-1][0], out[0].clamp(-1, 1), sharp[0, -1]]
        self.trained.train()
        return {"val/psnr": float(torch.stack(psnrs).mean())}, panels


class JointObjective(nn.Module):
    """One recurrent step of joint training as a module (so DistributedDataParallel sees both networks):
    returns (output, image loss, blur-invariant loss, its detached parts)."""

    def __init__(self, model: DeblurNet, autocast_dtype: torch.dtype | None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def forward(self, prev, curr, next_, deblurred_prev, sharp_prev, sharp_curr):
        out = deblurring.deblur_step(self.model.bimnet, self.model.pvdnet, prev, curr, next_, deblurred_prev,
                                     autocast_dtype=self.autocast_dtype)
        flow_loss, parts = blur_invariant_loss(self.model.bimnet, prev, curr, sharp_prev, sharp_curr)
        return out, deblur_loss(out, sharp_curr), flow_loss, parts


class JointTrainer(PVDNetTrainer):
    """The original's stage 1: BIMNet and PVDNet trained together from Xavier init (`model.init_gain`).

    Each recurrent step of a clip (as stage 2) takes one optimizer step on
    MSE(output, S_t) + the mean of the four blur-invariant warp terms of the (t-1, t) pair, with one
    gradient-norm clip over the parameters of both networks. The pixel volume passes no gradient to the flow,
    so BIMNet learns from the blur-invariant terms only; they run in fp32 (PVDNet under the run's autocast).
    """

    stage = "joint"

    def _build(self):
        model_config = self.config.model
        model = DeblurNet(BIMNet(), PVDNetLarge() if model_config.large else PVDNet())
        if model_config.init_weights:
            network = weights.load_network(model_config.init_weights, expect="deblurnet")
            if isinstance(network.pvdnet, PVDNetLarge) != model_config.large:
                raise ValueError(f"{model_config.init_weights}: model.large={model_config.large} needs "
                                 f"{'PVDNetLarge' if model_config.large else 'PVDNet'} inside the full model")
            model.load_state_dict(network.state_dict())
        else:
            xavier_init(model, model_config.init_gain)
        return model, JointObjective(model, self.autocast_dtype)

    def _step(self, blurry, sharp, t, deblurred_prev):
        out, image_loss, flow_loss, parts = self.net(blurry[:, t - 1], blurry[:, t], blurry[:, t + 1],
                                                     deblurred_prev, sharp[:, t - 1], sharp[:, t])
        record = self._optimizer_step(image_loss + flow_loss)
        record.update({"image": float(image_loss.detach()), **{name: float(v) for name, v in parts.items()}})
        return out, record


TRAINERS = {cls.stage: cls for cls in (BIMNetTrainer, PVDNetTrainer, JointTrainer)}


def build_trainer(config: TrainConfig, device: torch.device, distributed: bool = False) -> Trainer:
    """The trainer of `config.run.stage`, its networks on `device` (initialised from the current torch RNG)."""
    return TRAINERS[config.run.stage](config, device, distributed)


def spread_indices(count: int, available: int) -> list[int]:
    """`count` indices spread evenly over range(available) (all of them when count >= available)."""
    if count >= available:
        return list(range(available))
    return sorted(set(np.linspace(0, available - 1, count).round().astype(int).tolist()))
