"""Learning-rate schedules of PVDNet's training, as `LambdaLR` factors of the step (optimizer steps taken).

- "cosine_restarts" (the default, as the original's command-line default `-LRS CA`): consecutive cosine
  periods (50k, 100k, 150k, 150k, 150k), each restarting at the base lr and annealing to eta_min (1e-7);
  after the last period the lr stays at eta_min.
- "step" (the original's alternative `-LRS LD`): lr * rate ** (number of decay steps <= step); its setting
  is x0.25 at 400k.
- "constant".
The factors are small picklable callables, so the scheduler's state_dict round-trips through checkpoints.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import ScheduleConfig


class StepDecay:
    """factor(step) = rate ** (number of milestones <= step)."""

    def __init__(self, milestones: list[int], rate: float):
        self.milestones = sorted(int(m) for m in milestones)
        self.rate = float(rate)

    def __call__(self, step: int) -> float:
        return self.rate ** bisect.bisect_right(self.milestones, step)


class CosineRestarts:
    """Cosine annealing from 1 to `floor` over each period in turn, restarting at 1; `floor` after the last."""

    def __init__(self, periods: list[int], floor: float):
        self.periods = [int(p) for p in periods]
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        start = 0
        for period in self.periods:
            if step < start + period:
                progress = (step - start) / period
                return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
            start += period
        return self.floor


class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def lr_factor(config: ScheduleConfig, base_lr: float):
    """The multiplicative lr factor of `config` as a function of the step."""
    if config.kind == "step":
        return StepDecay(config.decay_steps, config.decay_rate)
    if config.kind == "cosine_restarts":
        return CosineRestarts(config.periods, config.eta_min / base_lr)
    if config.kind == "constant":
        return Constant()
    raise ValueError(f"unknown schedule kind {config.kind!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig) -> LambdaLR:
    """A LambdaLR over `optimizer` (one lr for all groups), stepped once per optimizer step."""
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lr_factor(config, base_lr))
