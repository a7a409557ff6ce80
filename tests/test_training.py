"""Training: configs, lr schedules, the blur-invariant loss, both stages learning on a fixed batch, the CLI.

Everything runs on the CPU with the PyTorch reference kernels (TRITON_INTERPRET=0: the interpreter would be
far too slow for training) on tiny synthetic clips written by `pvd.data.synth` (32x32 frames).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pvd import weights
from pvd.nets import step
from pvd.data import VideoClipDataset, synth
from pvd.training import load_config, stages
from pvd.training import losses as training_losses
from pvd.training.cli import CONFIG_DIR
from pvd.training.logs import read_scalars
from pvd.training.schedule import CosineRestarts, StepDecay, build_scheduler

SIZE = 32


@pytest.fixture(autouse=True)
def _reference_kernels_one_thread(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's few cores are shared; oversubscription only slows down
    yield
    torch.set_num_threads(threads)


def make_clips(root: Path, videos: int = 2, frames: int = 6, size: int = SIZE) -> Path:
    """A tiny GoPro-layout set with flows: a smooth random texture panned by `pvd.data.synth`."""
    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (5 * size, 5 * size),
                       interpolation=cv2.INTER_CUBIC)
    settings = synth.SynthSettings(frames=frames, height=size, width=size, subframes=3, max_shift=2.0,
                                   max_rotation=0.5, object_probability=0.0)
    return synth.generate_dataset(root, {"texture": photo}, videos, settings, seed=0)


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips") / "data")


def small_config(root: Path, out_dir: Path, stage: str = "pvdnet", *extra: str):
    return load_config(None, [
        f"run.stage='{stage}'", f"run.out_dir='{out_dir}'", "run.device='cpu'", "run.precision='fp32'",
        "model.bimnet_weights='random'", f"data.root='{root}'", f"data.crop={SIZE}", "data.batch_size=2",
        "data.num_workers=0", f"data.clip_frames={4 if stage == 'pvdnet' else 2}", "log.progress=false",
        "log.tensorboard=false", *extra])


# ---- config --------------------------------------------------------------------------------------------


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[run]\nstage = "bimnet"\nmax_steps = 10\n[optim]\nlr = 2e-4\n')
    config = load_config(path, ["optim.lr=3e-4", "schedule.periods=[5, 6]", "data.root=/some/where",
                                "optim.weight_decay=0", "run.compile=true"])
    assert config.run.stage == "bimnet" and config.run.max_steps == 10
    assert config.optim.lr == 3e-4 and config.optim.weight_decay == 0.0 and isinstance(config.optim.weight_decay, float)
    assert config.schedule.periods == [5, 6] and config.data.root == "/some/where" and config.run.compile is True
    with pytest.raises(ValueError, match="optim.lrr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="run.max_steps"):
        load_config(None, ["run.max_steps='many'"])
    with pytest.raises(ValueError, match="run.stage"):
        load_config(None, ["run.stage='stage3'"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["optim.lr"])
    assert load_config(None, ['loss.flow_pairs=["ss", "bb"]']).loss.flow_pairs == ["ss", "bb"]
    for pairs in ('[]', '["ss", "ss"]', '["sharp"]'):
        with pytest.raises(ValueError, match="loss.flow_pairs"):
            load_config(None, [f"loss.flow_pairs={pairs}"])


def test_paper_configs():
    """The shipped configs parse and hold the paper's recipe (docs/semantics.md, section 5)."""
    for name in ("dvd", "gopro", "gopro_large", "joint"):
        config = load_config(CONFIG_DIR / f"{name}.toml")
        assert config.run.stage == ("joint" if name == "joint" else "pvdnet") and config.run.max_steps == 600_000
        # the original's defaults: fp32, cosine annealing with restarts (step decay the alternative)
        assert config.run.precision == "fp32" and config.schedule.kind == "cosine_restarts"
        assert (config.data.crop, config.data.clip_frames, config.data.batch_size) == (256, 15, 8)
        assert (config.data.noise_sigma, config.data.noise_probability) == (1e-4, 0.5)
        assert (config.optim.lr, config.optim.betas, config.optim.weight_decay, config.optim.grad_clip) == \
            (1e-4, [0.9, 0.999], 0.01, 1.0)
        assert config.schedule.decay_steps == [400_000] and config.schedule.decay_rate == 0.25
        assert config.schedule.periods == [50_000, 100_000, 150_000, 150_000, 150_000]
        assert config.schedule.eta_min == 1e-7
        assert config.model.large == (name == "gopro_large")
    assert load_config(CONFIG_DIR / "dvd.toml").data.layout == "dvd"
    assert load_config(CONFIG_DIR / "bimnet.toml").run.stage == "bimnet"
    assert load_config(CONFIG_DIR / "joint.toml").model.bimnet_weights == ""  # BIMNet from Xavier init
    synth = load_config(CONFIG_DIR / "bimnet_synth.toml")  # the demo BIMNet's recipe (weights/README.md)
    assert synth.run.stage == "bimnet" and synth.loss.flow_epe_weight > 0 and synth.loss.flow_epe_multiscale
    assert load_config(CONFIG_DIR / "cpu_small.toml").run.device == "cpu"


# ---- schedules -----------------------------------------------------------------------------------------


def test_cosine_restarts_schedule():
    base, eta_min = 1e-4, 1e-7
    config = load_config(None, ["schedule.kind='cosine_restarts'"]).schedule
    factor = CosineRestarts(config.periods, eta_min / base)

    def lr(step: int) -> float:
        return base * factor(step)

    assert lr(0) == pytest.approx(base)
    assert lr(25_000) == pytest.approx((base + eta_min) / 2)
    assert lr(49_999) == pytest.approx(eta_min, abs=1e-10)
    for restart in (50_000, 150_000, 300_000, 450_000):  # periods 50k, 100k, 150k, 150k, 150k
        assert lr(restart) == pytest.approx(base)
        assert lr(restart - 1) < 2e-7
    assert lr(150_000 + 75_000) == pytest.approx((base + eta_min) / 2)
    assert lr(600_000) == pytest.approx(eta_min) and lr(10**7) == pytest.approx(eta_min)
    expected = eta_min + (base - eta_min) * (1 + math.cos(math.pi * 10_000 / 100_000)) / 2
    assert lr(60_000) == pytest.approx(expected)


def test_step_schedule_through_lambda_lr():
    decay = StepDecay([400_000], 0.25)
    assert decay(399_999) == 1.0 and decay(400_000) == 0.25 and decay(10**6) == 0.25
    config = load_config(None, ["schedule.kind='step'", "schedule.decay_steps=[3, 5]", "schedule.decay_rate=0.5"])
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_scheduler(optimizer, config.schedule)
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    restored = build_scheduler(torch.optim.SGD([parameter], lr=1.0), config.schedule)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == [0.25] and restored.last_epoch == 6


# ---- the blur-invariant loss ---------------------------------------------------------------------------


class MotionStub(nn.Module):
    """A fake BIMNet: half-resolution flow computed from both images, so every input pairing matters."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, image1, image2):
        difference = F.avg_pool2d(image1 - image2, 2)
        return self.scale * torch.cat([difference[:, :1] + 0.3, difference[:, 1:2] - 0.2], dim=1)


def _grid_sample_warp(image, flow):
    """Independent oracle of the warp: grid_sample with align_corners=True on a normalised grid."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=image.dtype), torch.arange(width, dtype=image.dtype),
                            indexing="ij")
    grid_x = 2 * (xs + flow[:, 0]) / (width - 1) - 1
    grid_y = 2 * (ys + flow[:, 1]) / (height - 1) - 1
    return F.grid_sample(image, torch.stack([grid_x, grid_y], dim=-1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def test_blur_invariant_loss_matches_definition():
    torch.manual_seed(1)
    bimnet = MotionStub()
    frames = [torch.rand(2, 3, SIZE, SIZE) * 2 - 1 for _ in range(4)]
    blurry_prev, blurry_curr, sharp_prev, sharp_curr = frames
    loss, parts = training_losses.blur_invariant_loss(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr)

    def unit(x):
        return (x + 1) / 2

    def term(curr, prev):
        flow = bimnet(unit(curr), unit(prev))
        flow = F.interpolate(flow, size=(SIZE, SIZE), mode="bilinear", align_corners=False)  # values unscaled
        warped = _grid_sample_warp(unit(sharp_prev), flow)
        mask = _grid_sample_warp(torch.ones_like(sharp_prev), flow)
        return ((warped - unit(sharp_curr) * mask) ** 2).sum() / mask.sum()

    expected = {"bb": term(blurry_curr, blurry_prev), "bs": term(sharp_curr, blurry_prev),
                "sb": term(blurry_curr, sharp_prev), "ss": term(sharp_curr, sharp_prev)}
    for pair, value in expected.items():
        assert parts[f"warp_{pair}"].item() == pytest.approx(value.item(), rel=1e-5)
    assert loss.item() == pytest.approx(torch.stack(list(expected.values())).mean().item(), rel=1e-5)
    assert len({round(v.item(), 6) for v in expected.values()}) == 4  # the pairings are distinguishable
    loss.backward()
    assert bimnet.scale.grad is not None and bimnet.scale.grad.abs() > 0

    gt_flow = torch.randn(2, 2, SIZE, SIZE)
    total, parts = training_losses.blur_invariant_loss(bimnet, blurry_prev, blurry_curr, sharp_prev, sharp_curr,
                                                       gt_flow=gt_flow, epe_weight=0.5)
    assert total.item() == pytest.approx(parts["flow"].item() + 0.5 * parts["epe"].item(), rel=1e-5)
    assert parts["epe"].item() > 0


class LevelsStub(MotionStub):
    """MotionStub that also answers `all_levels=True` with its flow average-pooled to five decoder levels."""

    def forward(self, image1, image2, all_levels=False):
        flow = super().forward(image1, image2)
        if not all_levels:
            return flow
        return {level: F.avg_pool2d(flow, 2 ** (level - 2)) for level in (2, 3, 4, 5, 6)}


def test_multiscale_end_point_error_by_hand():
    gt = torch.zeros(1, 2, 8, 8)
    gt[:, 0, :, :4] = 4.0  # left half moves 4 px right
    levels = {2: torch.zeros(1, 2, 4, 4), 3: torch.zeros(1, 2, 2, 2)}
    levels[3][:, 1] = 3.0  # 3 px down everywhere
    # level 2: area-downsampled truth is 4 on the left half -> mean EPE 2; level 3: |(4, -3)| = 5 left, 3 right
    expected = (2.0 + (5.0 + 3.0) / 2) / 2
    assert training_losses.multiscale_end_point_error(levels, gt).item() == pytest.approx(expected)


def test_blur_invariant_loss_multiscale_epe():
    torch.manual_seed(2)
    bimnet = LevelsStub()
    frames = [torch.rand(2, 3, SIZE, SIZE) * 2 - 1 for _ in range(4)]
    gt_flow = torch.randn(2, 2, SIZE, SIZE)
    plain_total, plain = training_losses.blur_invariant_loss(bimnet, *frames, gt_flow=gt_flow, epe_weight=0.5)
    total, parts = training_losses.blur_invariant_loss(bimnet, *frames, gt_flow=gt_flow, epe_weight=0.5,
                                                       multiscale=True)
    # the warp terms and the output EPE are those of the single-scale path; only the added term changes
    for key in ("flow", "epe", "epe_zero_flow"):
        assert parts[key].item() == pytest.approx(plain[key].item(), rel=1e-5)
    assert parts["epe_zero_flow"].item() == pytest.approx(gt_flow.norm(dim=1).mean().item(), rel=1e-6)
    curr, prev = training_losses._pair_batches(*frames)
    levels = bimnet((curr + 1) / 2, (prev + 1) / 2, all_levels=True)
    per_pair = [training_losses.multiscale_end_point_error({lv: f[i * 2:(i + 1) * 2] for lv, f in levels.items()},
                                                           gt_flow) for i in range(4)]
    assert parts["epe_levels"].item() == pytest.approx(torch.stack(per_pair).mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(parts["flow"].item() + 0.5 * parts["epe_levels"].item(), rel=1e-5)
    assert total.item() != pytest.approx(plain_total.item(), rel=1e-3)
    # a subset of the pairings: the same per-pair terms, averaged over the subset only
    sharp_only, sharp_parts = training_losses.blur_invariant_loss(bimnet, *frames, gt_flow=gt_flow, epe_weight=0.5,
                                                                  multiscale=True, pairs=("ss",))
    assert set(sharp_parts) == {"flow", "warp_ss", "epe", "epe_zero_flow", "epe_levels"}
    assert sharp_parts["warp_ss"].item() == pytest.approx(parts["warp_ss"].item(), rel=1e-5)
    assert sharp_parts["epe_levels"].item() == pytest.approx(per_pair[3].item(), rel=1e-5)
    assert sharp_only.item() == pytest.approx(parts["warp_ss"].item() + 0.5 * per_pair[3].item(), rel=1e-5)
    with pytest.raises(ValueError, match="flow pairs"):
        training_losses.blur_invariant_loss(bimnet, *frames, pairs=("sx",))
    with pytest.raises(ValueError, match="multiples of 32"):
        training_losses.blur_invariant_loss(bimnet, *[f[..., :24, :] for f in frames], gt_flow=gt_flow[..., :24, :],
                                            multiscale=True)


# ---- the two stages ------------------------------------------------------------------------------------


def _fixed_batch(root: Path, clip_frames: int, context: int, count: int = 2) -> dict:
    dataset = VideoClipDataset(root, clip_frames, context=context, stride=1, crop_size=(SIZE, SIZE), seed=3)
    items = [dataset[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in ("blurry", "sharp", "flow")}


def _stage2_clip_loss(trainer, batch) -> float:
    """Mean MSE of the recurrent steps of a clip, without updates."""
    blurry, sharp = batch["blurry"], batch["sharp"]
    prev_out, total = blurry[:, 0], []
    with torch.no_grad():
        for t in range(1, blurry.shape[1] - 1):
            out = trainer.model(blurry[:, t - 1], blurry[:, t], blurry[:, t + 1], prev_out)
            total.append(F.mse_loss(out, sharp[:, t]).item())
            prev_out = out
    return float(np.mean(total))


def test_stage2_learns_on_fixed_batch_with_frozen_bimnet(clips_root, tmp_path):
    config = small_config(clips_root, tmp_path, "pvdnet", "optim.lr=1e-3")
    torch.manual_seed(0)
    trainer = stages.build_trainer(config, torch.device("cpu"))
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert group["decoupled_weight_decay"] is True and group["weight_decay"] == 0.01
    assert group["betas"] == (0.9, 0.999)
    assert {id(p) for p in group["params"]} == {id(p) for p in trainer.model.pvdnet.parameters()}
    assert all(not p.requires_grad for p in trainer.model.bimnet.parameters())
    conv_biases = [m.bias for m in trainer.model.pvdnet.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(b) == 0 for b in conv_biases)  # Xavier init zeroes the biases

    bimnet_before = {k: v.clone() for k, v in trainer.model.bimnet.state_dict().items()}
    batch = _fixed_batch(clips_root, clip_frames=4, context=1)
    before = _stage2_clip_loss(trainer, batch)
    records = []
    for _ in range(3):
        records += trainer.train_clip(batch)
    after = _stage2_clip_loss(trainer, batch)
    assert trainer.step == 6 and len(records) == 6  # 2 recurrent steps per 4-frame clip
    assert after < 0.9 * before, (before, after)
    for key, value in trainer.model.bimnet.state_dict().items():
        assert torch.equal(value, bimnet_before[key]), f"frozen BIMNet changed: {key}"


def test_stage2_trains_pvdnet_under_bf16_autocast_on_cpu(clips_root, tmp_path):
    """run.precision='bf16' on a CPU: PVDNet's convolutions run in bf16, its parameters and gradients stay fp32,
    and the losses stay within bf16 rounding of fp32 training from the same start."""
    losses = {}
    for precision in ("fp32", "bf16"):
        config = small_config(clips_root, tmp_path / precision, "pvdnet", f"run.precision='{precision}'")
        torch.manual_seed(0)
        trainer = stages.build_trainer(config, torch.device("cpu"))
        assert trainer.autocast_dtype == (torch.bfloat16 if precision == "bf16" else None)
        conv = next(m for m in trainer.model.pvdnet.modules() if isinstance(m, nn.Conv2d))
        dtypes = set()
        conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        losses[precision] = [r["loss"] for r in trainer.train_clip(_fixed_batch(clips_root, clip_frames=4, context=1))]
        assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                   for p in trainer.model.pvdnet.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2) and losses["bf16"] != losses["fp32"]


def test_stage2_takes_bimnet_from_original_or_pvd_weights(clips_root, tmp_path):
    from pvd.nets import BIMNet

    torch.manual_seed(5)
    source = BIMNet()
    original = {BIMNet.original_key(key): value for key, value in source.state_dict().items()}
    torch.save(original, tmp_path / "BIMNet.pytorch")
    weights.save(source, tmp_path / "bimnet.safetensors")
    for name in ("BIMNet.pytorch", "bimnet.safetensors"):
        config = small_config(clips_root, tmp_path, "pvdnet", f"model.bimnet_weights='{tmp_path / name}'")
        trainer = stages.build_trainer(config, torch.device("cpu"))
        for key, value in source.state_dict().items():
            assert torch.equal(trainer.model.bimnet.state_dict()[key], value), (name, key)
    with pytest.raises(ValueError, match="bimnet_weights"):
        stages.build_trainer(small_config(clips_root, tmp_path, "pvdnet", "model.bimnet_weights=''"),
                             torch.device("cpu"))


def test_stage2_recurrence_feeds_detached_previous_output(clips_root, tmp_path, monkeypatch):
    config = small_config(clips_root, tmp_path, "pvdnet", "data.clip_frames=5")
    trainer = stages.build_trainer(config, torch.device("cpu"))
    batch = _fixed_batch(clips_root, clip_frames=5, context=1)
    calls = []
    real_step = step.deblur_step

    def recording_step(bimnet, pvdnet, prev, curr, next, deblurred_prev, **kwargs):  # noqa: A002
        out = real_step(bimnet, pvdnet, prev, curr, next, deblurred_prev, **kwargs)
        calls.append((prev, curr, next, deblurred_prev, out))
        return out

    monkeypatch.setattr(step, "deblur_step", recording_step)
    trainer.train_clip(batch)
    assert len(calls) == 3
    blurry = batch["blurry"]
    assert torch.equal(calls[0][3], blurry[:, 0])  # D_prev of the first step: the first blurry frame
    for t, (prev, curr, next_, deblurred_prev, out) in enumerate(calls, start=1):
        assert torch.equal(prev, blurry[:, t - 1]) and torch.equal(curr, blurry[:, t])
        assert torch.equal(next_, blurry[:, t + 1])
        assert out.requires_grad and not deblurred_prev.requires_grad
        if t > 1:
            assert torch.equal(deblurred_prev, calls[t - 2][4].detach())


def test_stage1_learns_on_fixed_batch(clips_root, tmp_path):
    # RAdam's first steps are plain momentum SGD (no adaptive scaling yet) and the blur-invariant gradients
    # of a freshly initialised BIMNet are tiny: a large lr (without weight decay) makes 3 steps show.
    config = small_config(clips_root, tmp_path, "bimnet", "optim.lr=2.0", "optim.weight_decay=0")
    trainer = stages.build_trainer(config, torch.device("cpu"))
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == \
        {id(p) for p in trainer.model.parameters()}
    batch = _fixed_batch(clips_root, clip_frames=2, context=0, count=1)

    def loss_now() -> float:
        with torch.no_grad():
            loss, _ = training_losses.blur_invariant_loss(trainer.model, batch["blurry"][:, 0], batch["blurry"][:, 1],
                                                          batch["sharp"][:, 0], batch["sharp"][:, 1])
        return loss.item()

    before = loss_now()
    records = []
    for _ in range(3):
        records += trainer.train_clip(batch)
    after = loss_now()
    assert trainer.step == 3 and "epe" in records[0] and "warp_ss" in records[0]
    assert after < 0.9 * before, (before, after)


def test_joint_stage_trains_both_networks_with_one_clip(clips_root, tmp_path):
    """The original's stage 1: both networks from Xavier init, image MSE + blur-invariant loss, one clip."""
    config = small_config(clips_root, tmp_path, "joint", "data.clip_frames=4", "optim.lr=1e-3",
                          "optim.grad_clip=0.5")
    torch.manual_seed(0)
    trainer = stages.build_trainer(config, torch.device("cpu"))
    assert {id(p) for p in trainer.optimizer.param_groups[0]["params"]} == \
        {id(p) for p in trainer.model.parameters()}  # one optimizer (and one clip) over BIMNet and PVDNet
    convs = [m for m in trainer.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs if m.bias is not None)  # Xavier init
    batch = _fixed_batch(clips_root, clip_frames=4, context=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    blurry, sharp = batch["blurry"], batch["sharp"]
    with torch.no_grad():  # the first step's loss, by its definition
        out = trainer.model(blurry[:, 0], blurry[:, 1], blurry[:, 2], blurry[:, 0])
        flow_loss, _ = training_losses.blur_invariant_loss(trainer.model.bimnet, blurry[:, 0], blurry[:, 1],
                                                           sharp[:, 0], sharp[:, 1])
        expected = F.mse_loss(out, sharp[:, 1]) + flow_loss
    records = trainer.train_clip(batch)
    assert len(records) == 2 and trainer.step == 2  # one optimizer step per recurrent step
    assert records[0]["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert records[0]["loss"] == pytest.approx(records[0]["image"] + records[0]["flow"], rel=1e-5)
    assert records[0]["grad_norm"] > 0
    changed = {k.split(".")[0] for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"bimnet", "pvdnet"}


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_trains_and_writes_outputs(clips_root, tmp_path):
    from pvd.cli import main

    out_dir = tmp_path / "run"
    code = main(["train", "--config", str(CONFIG_DIR / "cpu_small.toml"), f"data.root={clips_root}",
                 f"data.val_root={clips_root}", f"run.out_dir={out_dir}", f"data.crop={SIZE}",
                 f"log.val_crop={SIZE}", "data.clip_frames=4", "log.val_frames=3", "run.max_steps=4",
                 "log.every=2", "log.checkpoint_every=2", "log.val_every=4", "log.progress=false"])
    assert code == 0
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == ["step_000000002.pt", "step_000000004.pt"]
    model = weights.load(out_dir / "model.safetensors")
    assert type(model).__name__ == "DeblurNet"
    rows = read_scalars(out_dir / "scalars.csv")
    tags = {(step, tag) for step, tag, _ in rows}
    assert {(2, "train/loss"), (4, "train/loss"), (4, "val/psnr"), (4, "train/lr")} <= tags
    assert all(math.isfinite(value) for _, _, value in rows)
    sample = cv2.imread(str(out_dir / "samples" / "step_000000004.png"))
    assert sample.shape == (SIZE, 3 * SIZE, 3)
