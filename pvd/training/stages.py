"""The two training stages: model set-up, one optimizer step per frame step, and validation.

`BIMNetTrainer` (stage 1) trains BIMNet alone with the blur-invariant loss: every consecutive frame pair
(t-1, t) of a clip is one optimizer step. `PVDNetTrainer` (stage 2) trains PVDNet (or PVDNet-large) with BIMNet
frozen: a clip of T frames gives T-2 recurrent steps (frame t = 1..T-2 with its neighbours t-1 and t+1), each
with its own optimizer step; the previous output is detached and starts as the first blurry frame.

Both: RAdam with decoupled weight decay, global grad-norm clipping, a LambdaLR stepped after every optimizer
step, a fresh init of the trained network (Xavier-uniform for PVDNet, `pvd.nets.bimnet.init_for_training` for
BIMNet), optional DistributedDataParallel and torch.compile. Stage 2
runs PVDNet under bf16 autocast on CUDA (BIMNet, flow and pixel volume stay fp32, as in `pvd.pipeline`).
Batches are the dicts of `pvd.data.datasets.VideoClipDataset` (frames in [-1, 1]).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pvd import kernels, metrics, pipeline, weights
from pvd.nets import BIMNet, DeblurNet, PVDNet, PVDNetLarge
from pvd.nets.bimnet import init_for_training as bimnet_init_for_training

from .config import RANDOM_BIMNET, TrainConfig
from .losses import blur_invariant_flows, blur_invariant_loss, deblur_loss, end_point_error, masked_warp_error
from .schedule import build_scheduler

ORIGINAL_SUFFIXES = (".pytorch", ".pth", ".pt")  # torch pickles of the original repository


def xavier_init(module: nn.Module, gain: float = 1.0) -> None:
    """Xavier-uniform weights and zero biases for every (transposed) convolution, as the original `init`."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def load_network(path: str | Path) -> nn.Module:
    """A network from a pvd checkpoint (.safetensors) or an original PVDNet-repository file (.pytorch/.pth/.pt)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix.lower() in ORIGINAL_SUFFIXES:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        architecture, converted = weights.from_original(state_dict)
        return weights.build(architecture, converted)
    return weights.load(path)


def load_bimnet(path: str | Path) -> BIMNet:
    """BIMNet from a stage-1 output, a full (DeblurNet) checkpoint, or the official `BIMNet.pytorch`."""
    network = load_network(path)
    if isinstance(network, DeblurNet):
        return network.bimnet
    if isinstance(network, BIMNet):
        return network
    raise ValueError(f"{path}: holds a {type(network).__name__}, not a BIMNet or a full model")


def load_pvdnet(path: str | Path, large: bool) -> PVDNet:
    """PVDNet / PVDNet-large from a pvd or original checkpoint (alone or inside a full model)."""
    network = load_network(path)
    if isinstance(network, DeblurNet):
        network = network.pvdnet
    if not isinstance(network, PVDNet) or isinstance(network, PVDNetLarge) != large:
        want = "PVDNetLarge" if large else "PVDNet"
        raise ValueError(f"{path}: holds a {type(network).__name__}, model.large={large} needs a {want}")
    return network


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for "bf16", and for "auto" on a CUDA device with bf16 support; None (fp32) otherwise."""
    if precision == "bf16":
        if device.type != "cuda":
            raise ValueError("run.precision='bf16' needs a CUDA device; the CPU trains in fp32")
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


class Trainer:
    """Shared machinery. Subclasses set `self.model` (what checkpoints hold) and `self.trained` (what learns)."""

    stage = ""

    def __init__(self, config: TrainConfig, device: torch.device, distributed: bool = False):
        self.config = config
        self.device = device
        self.autocast_dtype = autocast_dtype(config.run.precision, device)
        self.model, self.trained = self._build()
        self.model.to(device)
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
    pipeline runs it in fp32 anyway. run.precision='auto' means fp32 here, 'bf16' is refused.
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
                unit_prev, unit_curr = _to_unit(sharp[:, t - 1]), _to_unit(sharp[:, t])
                losses.append(torch.stack([masked_warp_error(f, unit_prev, unit_curr) for f in flows.values()]).mean())
                warped = kernels.warp(unit_prev, flows["bb"])
                psnrs.append(metrics.psnr(warped.clamp(0, 1), unit_curr).mean())
                if "flow" in clip:
                    gt = self._frames(clip, "flow")[t - 1].unsqueeze(0)
                    epes.append(torch.stack([end_point_error(f, gt) for f in flows.values()]).mean())
                if not panels:
                    panels = [blurry[0, t], warped[0] * 2 - 1, sharp[0, t]]
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
        blurry, sharp = self._frames(batch, "blurry"), self._frames(batch, "sharp")
        runner = SimpleNamespace(bimnet=self.model.bimnet, pvdnet=self.net)
        self.trained.train()
        deblurred_prev = blurry[:, 0]
        records = []
        for t in range(1, blurry.shape[1] - 1):
            if max_steps is not None and self.step >= max_steps:
                break
            out = pipeline.deblur_step(runner, blurry[:, t - 1], blurry[:, t], blurry[:, t + 1], deblurred_prev,
                                       autocast_dtype=self.autocast_dtype)
            records.append(self._optimizer_step(deblur_loss(out, sharp[:, t])))
            deblurred_prev = out.detach()
        return records

    @torch.no_grad()
    def validate(self, clips):
        """Recurrent deblurring of each whole clip (frame t uses clamp(t-1), t, clamp(t+1)); PSNR on frames 2..N."""
        model = self.model.eval()
        psnrs, panels = [], []
        for clip in clips:
            blurry = self._frames(clip, "blurry").unsqueeze(0)
            sharp = self._frames(clip, "sharp").unsqueeze(0)
            last = blurry.shape[1] - 1
            deblurred_prev = blurry[:, 0]
            for t in range(last + 1):
                out = pipeline.deblur_step(model, blurry[:, max(t - 1, 0)], blurry[:, t], blurry[:, min(t + 1, last)],
                                           deblurred_prev, autocast_dtype=self.autocast_dtype)
                deblurred_prev = out
                if t >= 1:
                    psnrs.append(metrics.psnr(_to_unit(out), _to_unit(sharp[:, t])).mean())
            if not panels:
                panels = [blurry[0, last], out[0].clamp(-1, 1), sharp[0, last]]
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
        out = pipeline.deblur_step(self.model, prev, curr, next_, deblurred_prev, autocast_dtype=self.autocast_dtype)
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
            network = load_network(model_config.init_weights)
            if not isinstance(network, DeblurNet) or isinstance(network.pvdnet, PVDNetLarge) != model_config.large:
                raise ValueError(f"{model_config.init_weights}: stage 'joint' starts from a full model "
                                 f"(BIMNet + {'PVDNetLarge' if model_config.large else 'PVDNet'}), "
                                 f"got a {type(network).__name__}")
            model.load_state_dict(network.state_dict())
        else:
            xavier_init(model, model_config.init_gain)
        return model, JointObjective(model, autocast_dtype(self.config.run.precision, self.device))

    def train_clip(self, batch, max_steps=None):
        blurry, sharp = self._frames(batch, "blurry"), self._frames(batch, "sharp")
        self.trained.train()
        deblurred_prev = blurry[:, 0]
        records = []
        for t in range(1, blurry.shape[1] - 1):
            if max_steps is not None and self.step >= max_steps:
                break
            out, image_loss, flow_loss, parts = self.net(blurry[:, t - 1], blurry[:, t], blurry[:, t + 1],
                                                         deblurred_prev, sharp[:, t - 1], sharp[:, t])
            record = self._optimizer_step(image_loss + flow_loss)
            record.update({"image": float(image_loss.detach()), **{name: float(v) for name, v in parts.items()}})
            records.append(record)
            deblurred_prev = out.detach()
        return records


TRAINERS = {cls.stage: cls for cls in (BIMNetTrainer, PVDNetTrainer, JointTrainer)}


def build_trainer(config: TrainConfig, device: torch.device, distributed: bool = False) -> Trainer:
    """The trainer of `config.run.stage`, its networks on `device` (initialised from the current torch RNG)."""
    return TRAINERS[config.run.stage](config, device, distributed)


def spread_indices(count: int, available: int) -> list[int]:
    """`count` indices spread evenly over range(available) (all of them when count >= available)."""
    if count >= available:
        return list(range(available))
    return sorted(set(np.linspace(0, available - 1, count).round().astype(int).tolist()))
