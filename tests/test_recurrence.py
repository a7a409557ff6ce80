"""The one clip recurrence: the streaming deblurrer, training validation, `pvd eval` and eval/measure_weights.py
run the same steps on one clip, bit for bit, and follow the documented feedback rule (unclamped outputs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from pvd import evaluate, weights
from pvd.data import datasets, synth
from pvd.nets import DeblurNet, ZeroFlowModel, run_clip, step
from pvd.stream import VideoDeblurrer
from pvd.training import load_config
from pvd.training.stages import build_trainer

from test_synth import textured_photo  # tests/ is on sys.path (pytest rootdir-relative import)

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "measure_weights.py"
FRAMES, SIZE = 4, 32


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def recorded(model) -> list:
    """Attach a recorder to `model`'s PVDNet: every call's inputs (pixel volume, prev, curr, next) and output."""
    calls: list = []
    model.pvdnet.register_forward_hook(
        lambda module, inputs, output: calls.append([x.detach().clone() for x in (*inputs, output)]))
    return calls


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A one-video synthetic data set (with flows) and the checkpoint of a random model."""
    root = tmp_path_factory.mktemp("recurrence")
    photos = {name: textured_photo(seed) for seed, name in enumerate(("alpha", "beta"))}
    settings = synth.SynthSettings(frames=FRAMES, height=SIZE, width=SIZE, subframes=3, object_probability=0.0)
    data = synth.generate_dataset(root / "synth", photos, videos=1, settings=settings, seed=1)
    torch.manual_seed(7)
    model = DeblurNet()
    with torch.no_grad():  # brighten the output, so that it leaves [-1, 1] where the frames are bright
        [layer for layer in model.pvdnet.modules() if isinstance(layer, nn.Conv2d)][-1].bias.fill_(0.5)
    path = weights.save(model, root / "model.safetensors")
    video = datasets.list_videos(data)[0]
    blurry = [datasets.read_frame(p) for p in video.blurry]
    sharp = [datasets.read_frame(p) for p in video.sharp]
    return data, path, blurry, sharp


def test_the_four_users_run_the_same_recurrence(clip, tmp_path, monkeypatch):
    data, path, blurry, sharp = clip
    # One memory format and one precision for every user (the streaming deblurrer and pvd eval would otherwise
    # switch the networks to channels_last, whose convolutions round differently, and on a CPU with native bf16
    # run PVDNet under bf16 autocast): this test is about the recurrence rule.
    monkeypatch.setattr(step, "CHANNELS_LAST_BY_DEFAULT", False)
    frames = [frame.unsqueeze(0) for frame in blurry]

    model = weights.load_model(path)
    reference = recorded(model)
    with torch.no_grad():
        outputs = [out for _, _, out in run_clip(model, frames)]
    assert len(reference) == len(outputs) == FRAMES
    # The rule: frame t's pixel volume is built from the previous output as returned, NOT clamped; this random
    # model returns values outside [-1, 1], so a clamping user would differ below.
    assert any(out.abs().max() > 1 for out in outputs[:-1])

    streaming = recorded(model := weights.load_model(path))
    list(VideoDeblurrer(model, device="cpu", precision="fp32").run(blurry))

    scoring = recorded(model := weights.load_model(path))
    evaluate.evaluate(data, tmp_path / "eval", model=model, device="cpu", precision="fp32", border=0,
                      progress=False)

    config = load_config(None, ["run.stage='pvdnet'", "run.device='cpu'", "run.precision='fp32'",
                                f"model.bimnet_weights='{path}'", f"model.init_weights='{path}'",
                                f"data.root='{data}'", f"run.out_dir='{tmp_path / 'train'}'"])
    trainer = build_trainer(config, torch.device("cpu"))
    validating = recorded(trainer.model)
    trainer.validate([{"blurry": torch.stack(blurry), "sharp": torch.stack(sharp)}])

    spec = importlib.util.spec_from_file_location("measure_weights", SCRIPT)
    measure_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_weights)
    measuring: list = []

    def load_recorded(*args, **kwargs):
        loaded = weights.load_model(*args, **kwargs)
        loaded.pvdnet.register_forward_hook(
            lambda module, inputs, output: measuring.append([x.detach().clone() for x in (*inputs, output)]))
        return loaded

    monkeypatch.setattr(measure_weights, "load_model", load_recorded)
    # The ablation gets its own PVDNet (loaded again, without a recorder): the recorder sees the model's steps only.
    monkeypatch.setattr(measure_weights, "ZeroFlowModel", lambda loaded: ZeroFlowModel(weights.load_model(path)))
    measure_weights.measure(str(data), str(path), device="cpu")

    for name, calls in (("VideoDeblurrer", streaming), ("pvd eval", scoring), ("training validation", validating),
                        ("measure_weights", measuring)):
        assert len(calls) == len(reference), name
        for t, (seen, expected) in enumerate(zip(calls, reference)):
            for got, want in zip(seen, expected, strict=True):
                assert torch.equal(got, want), f"{name} differs from run_clip at frame {t}"


def test_clamped_feedback_would_be_told_apart(clip):
    """The check above can fail: a recurrence feeding back clamped outputs builds other pixel volumes."""
    _, path, blurry, _ = clip
    model = weights.load_model(path)
    frames = [frame.unsqueeze(0) for frame in blurry]
    with torch.no_grad():
        outputs = [out for _, _, out in run_clip(model, frames)]
        clamped, previous = [], frames[0]
        for t in range(FRAMES):
            neighbours = frames[max(t - 1, 0)], frames[t], frames[min(t + 1, FRAMES - 1)]
            previous = model(*neighbours, previous).clamp(-1, 1)
            clamped.append(previous)
    assert torch.equal(outputs[0].clamp(-1, 1), clamped[0])
    assert not all(torch.equal(out.clamp(-1, 1), other) for out, other in zip(outputs, clamped))
