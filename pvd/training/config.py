"""Training configuration: typed sections with the paper's defaults, read from TOML, overridable by `key=value`.

A config file has the sections below (every key optional; unknown keys are errors):

    [run]       stage ("bimnet" = stage 1 alone, "pvdnet" = stage 2, "joint" = the original's joint stage 1), out_dir, max_steps (optimizer steps), seed,
                device, precision, compile, channels_last, deterministic, resume
    [model]     large, bimnet_weights, init_weights, init_gain
    [data]      root, layout, blurry_folder, val_root, crop, clip_frames, stride, batch_size (global, over all
                processes), num_workers, noise_sigma, noise_probability
    [optim]     lr, betas, eps, weight_decay, grad_clip
    [schedule]  kind ("step" | "cosine_restarts" | "constant"), decay_steps, decay_rate, periods, eta_min
    [loss]      flow_epe_weight, flow_epe_multiscale, flow_pairs (stage 1: the (t-1, t) pairings, b blurry,
                s sharp; ["ss"] = supervised flow pre-training on sharp frames)
    [log]       every, checkpoint_every, keep_last, val_every, val_clips, val_frames, val_crop, tensorboard,
                progress

Overrides are dotted keys with TOML values: `optim.lr=3e-4`, `data.root=/data/gopro`,
`schedule.periods=[10, 20]`, `run.compile=true`; a value that is not valid TOML is taken as a string.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

STAGES = ("bimnet", "pvdnet", "joint")
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", "on", "off")
SCHEDULES = ("step", "cosine_restarts", "constant")
LAYOUTS = ("", "dvd", "gopro", "frames")
RANDOM_BIMNET = "random"  # model.bimnet_weights value for an untrained, frozen BIMNet (smoke tests only)


@dataclass
class RunConfig:
    stage: str = "pvdnet"
    out_dir: str = "runs/pvdnet"
    max_steps: int = 600_000  # optimizer steps (stage 2: 13 per 15-frame clip)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "fp32"  # "fp32" (as the original) | "bf16" (autocast) | "auto" (bf16 where native, else fp32)
    compile: bool = False  # torch.compile the trained network
    channels_last: str = "auto"  # networks' memory format: "auto" (channels_last on CPU only) | "on" | "off"
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    resume: str = ""  # "" | "auto" (latest checkpoint in out_dir) | path of a training checkpoint


@dataclass
class ModelConfig:
    large: bool = False  # stage 2: PVDNet-large
    bimnet_weights: str = ""  # stage 2: frozen BIMNet (pvd .safetensors or original .pytorch; "random")
    init_weights: str = ""  # start the trained network from these weights instead of a fresh init
    init_gain: float = 1.0  # gain of the fresh init (PVDNet: Xavier-uniform, original `config.wi`; BIMNet: Kaiming)


@dataclass
class DataConfig:
    root: str = ""
    layout: str = ""  # "" = detect
    blurry_folder: str = ""  # GoPro: "blur_gamma" (default) or "blur"
    val_root: str = ""  # "" = no validation
    crop: int = 256
    clip_frames: int = 15  # stage 2: 3-frame window + 13 recurrent steps; stage 1: >= 2 (pairs)
    stride: int = 0  # clip start stride in frames; 0 = the default of the stage
    batch_size: int = 8  # global batch, split over the processes
    num_workers: int = 4
    noise_sigma: float = 1e-4  # Gaussian noise on blurry inputs, in [-1, 1] units
    noise_probability: float = 0.5


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled (AdamW-style), as torch_optimizer's RAdam of the original
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class ScheduleConfig:
    kind: str = "cosine_restarts"  # the original's default (-LRS CA); "step" = its -LRS LD (x0.25 at 400k)
    decay_steps: list = field(default_factory=lambda: [400_000])
    decay_rate: float = 0.25
    periods: list = field(default_factory=lambda: [50_000, 100_000, 150_000, 150_000, 150_000])
    eta_min: float = 1e-7


@dataclass
class LossConfig:
    flow_epe_weight: float = 0.0  # stage 1: weight of the end-point error vs ground-truth flow (synthetic data)
    flow_epe_multiscale: bool = False  # stage 1: that EPE averaged over every decoder level (LiteFlowNet-style)
    flow_pairs: list[str] = field(default_factory=lambda: ["bb", "bs", "sb", "ss"])  # stage 1: pairings trained


@dataclass
class LogConfig:
    every: int = 50  # scalars (CSV, TensorBoard) every N steps
    checkpoint_every: int = 5_000  # steps; 0 = only at the end
    keep_last: int = 3
    val_every: int = 5_000  # steps; 0 = never
    val_clips: int = 4
    val_frames: int = 15
    val_crop: int = 256  # 0 = whole frames
    tensorboard: bool = True  # when the tensorboard package is installed
    progress: bool = True  # tqdm bar on rank 0


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_value(text: str):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value, current):
    """`value` converted to the type of the field's current value; ValueError when it does not fit."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        return value if isinstance(value, str) else str(value)
    elif isinstance(current, list) and isinstance(value, list):
        return list(value)
    raise ValueError(f"config key {key!r} expects a {type(current).__name__}, got {value!r}")


def _set(config: TrainConfig, key: str, value) -> None:
    section_name, _, name = key.partition(".")
    sections = {f.name for f in dataclasses.fields(config)}
    if section_name not in sections or not name:
        raise ValueError(f"unknown config key {key!r}: keys are <section>.<name>, sections {sorted(sections)}")
    section = getattr(config, section_name)
    names = {f.name for f in dataclasses.fields(section)}
    if name not in names:
        raise ValueError(f"unknown config key {key!r}; [{section_name}] has {sorted(names)}")
    setattr(section, name, _coerce(key, value, getattr(section, name)))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the TOML file at `path` (if any), then `overrides` ("section.key=value"); validated."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        with path.open("rb") as file:
            try:
                document = tomllib.load(file)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"config file {str(path)!r}: {error}") from None
        for section_name, table in document.items():
            if not isinstance(table, dict):
                raise ValueError(f"config file {str(path)!r}: top-level key {section_name!r} must be a [section]")
            for name, value in table.items():
                _set(config, f"{section_name}.{name}", value)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {override!r} must look like section.key=value")
        _set(config, key.strip(), _parse_value(text.strip()))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the first inconsistent setting."""
    run, data, optim, schedule, log = config.run, config.data, config.optim, config.schedule, config.log
    if run.stage not in STAGES:
        raise ValueError(f"run.stage must be one of {STAGES}, got {run.stage!r}")
    if run.precision not in PRECISIONS:
        raise ValueError(f"run.precision must be one of {PRECISIONS}, got {run.precision!r}")
    if run.channels_last not in CHANNELS_LAST:
        raise ValueError(f"run.channels_last must be one of {CHANNELS_LAST}, got {run.channels_last!r}")
    if run.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be 'auto', 'cpu' or 'cuda', got {run.device!r}")
    if run.max_steps < 1:
        raise ValueError(f"run.max_steps must be >= 1, got {run.max_steps}")
    if data.layout not in LAYOUTS:
        raise ValueError(f"data.layout must be one of {LAYOUTS}, got {data.layout!r}")
    min_frames = 2 if run.stage == "bimnet" else 3
    if data.clip_frames < min_frames:
        raise ValueError(f"data.clip_frames must be >= {min_frames} for stage {run.stage!r}, got {data.clip_frames}")
    if data.crop < 1 or data.batch_size < 1 or data.num_workers < 0 or data.stride < 0:
        raise ValueError("data.crop and data.batch_size must be >= 1, data.num_workers and data.stride >= 0")
    if not (0.0 <= data.noise_probability <= 1.0) or data.noise_sigma < 0:
        raise ValueError("data.noise_probability must be in [0, 1] and data.noise_sigma >= 0")
    if optim.lr <= 0 or optim.eps <= 0 or optim.weight_decay < 0 or optim.grad_clip < 0:
        raise ValueError("optim.lr and optim.eps must be > 0, optim.weight_decay and optim.grad_clip >= 0")
    if len(optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in optim.betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {optim.betas}")
    if schedule.kind not in SCHEDULES:
        raise ValueError(f"schedule.kind must be one of {SCHEDULES}, got {schedule.kind!r}")
    if schedule.kind == "cosine_restarts" and (not schedule.periods or min(schedule.periods) < 1):
        raise ValueError(f"schedule.periods must be a non-empty list of positive steps, got {schedule.periods}")
    if schedule.kind == "cosine_restarts" and not 0 <= schedule.eta_min <= optim.lr:
        raise ValueError(f"schedule.eta_min must be in [0, optim.lr], got {schedule.eta_min}")
    if schedule.kind == "step" and (any(s < 1 for s in schedule.decay_steps) or schedule.decay_rate <= 0):
        raise ValueError("schedule.decay_steps must be positive steps and schedule.decay_rate > 0")
    if log.every < 1 or log.checkpoint_every < 0 or log.keep_last < 1 or log.val_every < 0:
        raise ValueError("log.every and log.keep_last must be >= 1, log.checkpoint_every and log.val_every >= 0")
    if log.val_clips < 1 or log.val_frames < min_frames or log.val_crop < 0:
        raise ValueError(f"log.val_clips must be >= 1, log.val_frames >= {min_frames}, log.val_crop >= 0")
    if config.loss.flow_epe_weight < 0:
        raise ValueError("loss.flow_epe_weight must be >= 0")
    from .losses import check_pairs

    try:
        check_pairs(config.loss.flow_pairs)
    except ValueError as error:
        raise ValueError(f"loss.flow_pairs: {error}") from None
