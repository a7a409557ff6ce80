"""The training loop: processes, data, the step loop, logging, validation, checkpoints and resume.

One function, `train(config)`, serves a single process and `torchrun` alike: with WORLD_SIZE > 1 in the
environment (or a process group already initialised by the caller) it joins the group (nccl on CUDA, gloo on
CPU), takes GPU LOCAL_RANK, wraps the trained network in DistributedDataParallel and splits every global batch
over the processes with a DistributedSampler. Rank 0 writes everything under `run.out_dir`:

    checkpoints/step_<N>.pt   training state (see `checkpoint`), every `log.checkpoint_every` steps and at the end
    model.safetensors         the final network (`pvd.weights`; stage 1 BIMNet, stage 2 BIMNet + PVDNet)
    scalars.csv               step, tag, value (train/loss, train/lr, train/grad_norm, val/...); TensorBoard too
    samples/step_<N>.png      validation sample: input | output | ground truth
    config.json               the resolved configuration

Data order and content are a function of (seed, epoch, position): clips come from `VideoClipDataset`, whose
crops and noise depend only on (seed, epoch, index), in the DistributedSampler order of the epoch. A checkpoint
records (epoch, batches done), so a resumed run continues with exactly the batches the straight run would
have seen. Checkpoints are taken between batches; resuming is exact when the checkpoint's step is at a
batch boundary (always so for the periodic ones, and for the final one when max_steps is a multiple of the
steps per batch).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from pvd import weights
from pvd._files import make_folder
from pvd.data.datasets import VideoClipDataset
from pvd.runtime import resolve_device
from pvd.sharding import Context

from . import checkpoint as ckpt
from .config import TrainConfig
from .logs import ScalarLog, save_panels
from .stages import Trainer, build_trainer, spread_indices

WEIGHTS_FILE = "model.safetensors"
SAMPLES_DIR = "samples"
CUBLAS_DETERMINISTIC = ":4096:8"


@dataclass(frozen=True)
class Processes(Context):
    """The training's processes (`pvd.sharding.Context`: rank, world_size, local_rank, distributed, is_main)."""

    owns_group: bool = False  # this call initialised the process group and destroys it at the end

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    model: torch.nn.Module  # unwrapped (BIMNet for stage 1, DeblurNet for stage 2)
    losses: list[float] = field(default_factory=list)  # this process's loss at every step of this call
    checkpoint: Path | None = None
    weights: Path | None = None


def _join_processes(device_kind: str) -> Processes:
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ResumableSampler(Sampler):
    """The DistributedSampler order of an epoch (shuffled with seed + epoch), from item `start` on."""

    def __init__(self, dataset, processes: Processes, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=processes.world_size, rank=processes.rank,
                                        shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return iter(list(self.inner)[self.start:])

    def __len__(self) -> int:
        return max(len(self.inner) - self.start, 0)


def _clip_dataset(config: TrainConfig, root: str, clip_frames: int, crop: int, training: bool) -> VideoClipDataset:
    """Training clips (stage 1: every consecutive pair; stage 2: the original's 3-frame window, consecutive clips
    sharing no step), or validation clips (consecutive runs of real frames, no noise)."""
    data = config.data
    if not training:
        context, stride = 0, None
    elif config.run.stage == "bimnet":
        context, stride = 0, data.stride or 1
    else:
        context, stride = 1, data.stride or None
    if config.run.stage == "bimnet":
        load_flow = True if training and config.loss.flow_epe_weight > 0 else None  # EPE logged when flows exist
    else:
        load_flow = False
    return VideoClipDataset(
        root, clip_frames, stride=stride, context=context, crop_size=(crop, crop) if crop else None,
        layout=data.layout or None, blurry_folder=data.blurry_folder or None, load_flow=load_flow,
        noise_sigma=data.noise_sigma if training else 0.0,
        noise_probability=data.noise_probability if training else 0.0, seed=config.run.seed)


def _validation_clips(config: TrainConfig) -> list[dict]:
    log = config.log
    dataset = _clip_dataset(config, config.data.val_root, log.val_frames, log.val_crop, training=False)
    return [dataset[i] for i in spread_indices(log.val_clips, len(dataset))]


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]."""
    return every > 0 and after // every > before // every


def _resume_path(config: TrainConfig, checkpoint_dir: Path) -> Path | None:
    resume = config.run.resume
    if not resume:
        return None
    if resume == "auto":
        return ckpt.latest_checkpoint(checkpoint_dir)
    return Path(resume)


def _training_state(trainer: Trainer, config: TrainConfig, epoch: int, batches_done: int,
                    processes: Processes) -> dict:
    return {**trainer.state_dict(), "stage": trainer.stage, "data": {"epoch": epoch, "batches_done": batches_done},
            "rng": ckpt.capture_rng_state(), "config": config.to_dict(), "world_size": processes.world_size}


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) the training described by `config`; see the module docstring."""
    device_kind = "cuda" if config.run.device == "cuda" or (
        config.run.device == "auto" and torch.cuda.is_available()) else "cpu"
    processes = _join_processes(device_kind)
    device = resolve_device(config.run.device, index=processes.local_rank)
    if config.data.batch_size % processes.world_size:
        raise ValueError(f"data.batch_size ({config.data.batch_size}) must be divisible by the number of "
                         f"processes ({processes.world_size})")
    if not config.data.root:
        raise ValueError("data.root is not set (the training data set folder)")
    batch_per_process = config.data.batch_size // processes.world_size
    out_dir = Path(config.run.out_dir)
    checkpoint_dir = out_dir / ckpt.CHECKPOINT_DIR
    was_deterministic = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled())
    if config.run.deterministic:  # exact on the CPU; on CUDA best effort (warns where no deterministic kernel)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    try:
        _seed_everything(config.run.seed)
        trainer = build_trainer(config, device, processes.distributed)
        dataset = _clip_dataset(config, config.data.root, config.data.clip_frames, config.data.crop, training=True)
        sampler = ResumableSampler(dataset, processes, config.run.seed)
        epoch, batches_done = 0, 0
        resume_from = _resume_path(config, checkpoint_dir)
        if resume_from is None and config.run.resume == "auto" and processes.is_main:
            print(f"run.resume='auto': no checkpoint in {checkpoint_dir}, starting from step 0")
        if resume_from is not None:
            state = ckpt.load_checkpoint(resume_from)
            if state["stage"] != trainer.stage:
                raise ValueError(f"checkpoint {str(resume_from)!r} is of stage {state['stage']!r}, "
                                 f"the config trains {trainer.stage!r}")
            trainer.load_state_dict(state)
            epoch, batches_done = state["data"]["epoch"], state["data"]["batches_done"]
            ckpt.restore_rng_state(state["rng"])
        val_clips = _validation_clips(config) if config.data.val_root and config.log.val_every else []
        return _run(config, trainer, dataset, sampler, val_clips, processes, device, epoch, batches_done,
                    batch_per_process, out_dir, checkpoint_dir, resumed=resume_from is not None)
    finally:
        torch.use_deterministic_algorithms(was_deterministic[0], warn_only=was_deterministic[1])
        if processes.owns_group:
            dist.destroy_process_group()


def _run(config: TrainConfig, trainer: Trainer, dataset, sampler: ResumableSampler, val_clips: list[dict],
         processes: Processes, device: torch.device, epoch: int, batches_done: int, batch_per_process: int,
         out_dir: Path, checkpoint_dir: Path, resumed: bool) -> TrainResult:
    run, log = config.run, config.log
    scalars = None
    if processes.is_main:
        make_folder(out_dir)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        scalars = ScalarLog(out_dir, tensorboard=log.tensorboard, keep_until_step=trainer.step if resumed else None)
    result = TrainResult(trainer.step, out_dir, trainer.model)
    progress = tqdm(total=run.max_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                    disable=not (processes.is_main and log.progress), desc=f"train {trainer.stage}")
    pending: list[dict[str, float]] = []
    last_saved = trainer.step if resumed else None
    try:
        while trainer.step < run.max_steps:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start=batches_done * batch_per_process)
            if len(sampler) == 0 and batches_done == 0:
                raise ValueError(f"data.root {config.data.root!r} gives no clip to process {processes.rank}")
            loader = DataLoader(dataset, batch_size=batch_per_process, sampler=sampler,
                                num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
            for batch in loader:
                before, started = trainer.step, time.perf_counter()
                records = trainer.train_clip(batch, run.max_steps)
                batches_done += 1
                result.losses.extend(r["loss"] for r in records)
                pending.extend(records)
                if records:
                    rate = len(records) / (time.perf_counter() - started)
                    progress.set_postfix(loss=f"{np.mean([r['loss'] for r in records]):.4g}",
                                         lr=f"{records[-1]['lr']:.3g}", steps_per_s=f"{rate:.3g}")
                    progress.update(len(records))
                # every log.every steps, and always the first and the last step (even when every > max_steps)
                log_now = pending and (_crossed(before, trainer.step, log.every) or before == 0
                                       or trainer.step >= run.max_steps)
                if scalars is not None and log_now:
                    scalars.write(trainer.step, {f"train/{name}": np.mean([r[name] for r in pending])
                                                 for name in pending[0]})
                if log_now:
                    pending.clear()
                if _crossed(before, trainer.step, log.checkpoint_every):
                    result.checkpoint = _save(config, trainer, epoch, batches_done, processes, checkpoint_dir)
                    last_saved = trainer.step
                if val_clips and _crossed(before, trainer.step, log.val_every):
                    _validate(trainer, val_clips, processes, scalars, out_dir)
                if trainer.step >= run.max_steps:
                    break
            else:
                epoch, batches_done = epoch + 1, 0
        if last_saved != trainer.step:
            result.checkpoint = _save(config, trainer, epoch, batches_done, processes, checkpoint_dir)
        if processes.is_main:
            result.weights = weights.save(trainer.model, out_dir / WEIGHTS_FILE, config=config.to_dict())
        processes.barrier()
    finally:
        progress.close()
        if scalars is not None:
            scalars.close()
    result.step = trainer.step
    return result


def _save(config: TrainConfig, trainer: Trainer, epoch: int, batches_done: int, processes: Processes,
          checkpoint_dir: Path) -> Path:
    path = ckpt.checkpoint_path(checkpoint_dir, trainer.step)
    if processes.is_main:
        state = _training_state(trainer, config, epoch, batches_done, processes)
        path = ckpt.save_checkpoint(checkpoint_dir, trainer.step, state, config.log.keep_last)
    processes.barrier()
    return path


def _validate(trainer: Trainer, clips: list[dict], processes: Processes, scalars: ScalarLog | None,
              out_dir: Path) -> None:
    if processes.is_main:
        values, panels = trainer.validate(clips)
        scalars.write(trainer.step, values)
        save_panels(out_dir / SAMPLES_DIR / f"step_{trainer.step:09d}.png", panels)
        tqdm.write(f"step {trainer.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    processes.barrier()
