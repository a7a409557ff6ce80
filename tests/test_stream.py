"""The deblurring step and its clip runner (size policies, the recurrence), the streaming deblurrer (frame
formats), Triton vs reference.

Most tests use small stand-in networks (checking the size multiples the real ones need) and the PyTorch
reference kernels (TRITON_INTERPRET=0); the real networks run at tiny sizes, and one end-to-end test runs the
Triton kernels (the interpreter on CPU) against the reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pvd import frames as pvd_frames
from pvd import kernels, runtime, weights
from pvd.nets import DeblurNet
from pvd.nets.step import deblur_step, estimate_flow, output_size
from pvd.stream import VideoDeblurrer, deblur_frames


class StandInBIMNet(nn.Module):
    """(B,3,H,W) x 2 in [0,1], H, W multiples of 32 -> half-resolution flow x 20, like BIMNet."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, image1, image2):
        if image1.shape[-2] % 32 or image1.shape[-1] % 32:
            raise ValueError(f"stand-in BIMNet needs multiples of 32, got {tuple(image1.shape)}")
        return F.avg_pool2d(self.conv(torch.cat([image1, image2], dim=1)), 2) * 20


class ConstantFlowBIMNet(nn.Module):
    def __init__(self, flow_x: float, flow_y: float):
        super().__init__()
        self.flow = (flow_x, flow_y)

    def forward(self, image1, image2):
        batch, _, height, width = image1.shape
        assert height % 32 == 0 and width % 32 == 0
        flow = torch.tensor(self.flow, dtype=image1.dtype).view(1, 2, 1, 1)
        return flow.expand(batch, 2, height // 2, width // 2).clone()


class StandInPVDNet(nn.Module):
    """PVDNet's interface: curr + a residual from (pv, prev, curr, next); H, W multiples of 4."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(25 + 9, 3, 3, padding=1)

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        if curr.shape[-2] % 4 or curr.shape[-1] % 4:
            raise ValueError(f"stand-in PVDNet needs multiples of 4, got {tuple(curr.shape)}")
        return curr + 0.1 * self.conv(torch.cat([pixel_volume, curr, prev, next], dim=1))


class StandInModel(nn.Module):
    def __init__(self, bimnet=None, pvdnet=None):
        super().__init__()
        self.bimnet = bimnet if bimnet is not None else StandInBIMNet()
        self.pvdnet = pvdnet if pvdnet is not None else StandInPVDNet()


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    """Every test takes the PyTorch reference kernels unless it sets TRITON_INTERPRET itself."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _frames(count, height, width, batch=1):
    return [torch.rand(batch, 3, height, width) * 2 - 1 for _ in range(count)]


SIZES = [(36, 52), (35, 47), (20, 24), (7, 5)]


@pytest.mark.parametrize("height,width", SIZES)
def test_pad_policy_returns_the_input_size(height, width):
    model = StandInModel()
    prev, curr, nxt = _frames(3, height, width, batch=2)
    out = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, prev, size_policy="pad")
    assert out.shape == (2, 3, height, width) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("height,width", SIZES[:3])
def test_original_policy_crops_to_a_multiple_of_4(height, width):
    model = StandInModel()
    prev, curr, nxt = _frames(3, height, width)
    out = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, prev, size_policy="original")
    assert out.shape == (1, 3, height - height % 4, width - width % 4)
    # The cropped output can be fed back as the previous output.
    again = deblur_step(model.bimnet, model.pvdnet, curr, nxt, nxt, out, size_policy="original")
    assert again.shape == out.shape


def test_original_policy_rejects_frames_without_a_multiple_of_4_crop():
    prev, curr, nxt = _frames(3, 3, 9)
    with pytest.raises(ValueError, match="pad"):
        deblur_step(StandInBIMNet(), StandInPVDNet(), prev, curr, nxt, prev, size_policy="original")


def test_policies_agree_when_the_size_is_a_multiple_of_32():
    model = StandInModel()
    prev, curr, nxt, deblurred = _frames(4, 32, 64)
    pad = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, size_policy="pad")
    original = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, size_policy="original")
    torch.testing.assert_close(pad, original, rtol=0, atol=0)


def test_flow_is_resized_without_rescaling_and_zero_beyond_the_original_crop():
    bimnet = ConstantFlowBIMNet(3.0, -2.0)
    prev, curr = _frames(2, 40, 70)
    original = estimate_flow(bimnet, curr, prev, "original")
    assert original.shape == (1, 2, 40, 70)
    expected = torch.zeros(1, 2, 40, 70)
    expected[:, 0, :32, :64] = 3.0
    expected[:, 1, :32, :64] = -2.0
    torch.testing.assert_close(original, expected)
    padded = estimate_flow(bimnet, curr, prev, "pad")
    torch.testing.assert_close(padded, torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 40, 70))
    tiny = estimate_flow(bimnet, *_frames(2, 20, 70), "original")
    assert torch.count_nonzero(tiny) == 0  # no multiple-of-32 crop along H: flow zero everywhere


def test_pad_policy_matches_networks_run_on_the_padded_frames_by_hand():
    """`pad` equals: flow from replicate-padded frames, PV at true size, PVDNet on replicate-padded inputs."""
    model = StandInModel()
    prev, curr, nxt, deblurred = _frames(4, 13, 18)
    flow_input = [F.pad((x + 1) / 2, (0, 32 - 18, 0, 32 - 13), mode="replicate") for x in (curr, prev)]
    flow = F.interpolate(model.bimnet(*flow_input), size=(32, 32), mode="bilinear", align_corners=False)
    volume = kernels.reference.pixel_volume(deblurred, flow[..., :13, :18], curr)
    net_input = [F.pad(x, (0, 2, 0, 3), mode="replicate") for x in (volume, prev, curr, nxt)]
    expected = model.pvdnet(*net_input)[..., :13, :18]
    torch.testing.assert_close(deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred), expected)


@pytest.mark.parametrize("size_policy", ["pad", "original"])
def test_real_networks_on_odd_and_small_frames(size_policy):
    torch.manual_seed(0)
    model = DeblurNet().eval()
    for height, width in ((35, 47), (20, 24)):
        prev, curr, nxt = _frames(3, height, width)
        with torch.inference_mode():
            out = model(prev, curr, nxt, prev, size_policy=size_policy)
        assert out.shape[-2:] == output_size(height, width, size_policy)
        assert torch.isfinite(out).all()


class RecordingPVDNet(StandInPVDNet):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        out = super().forward(pixel_volume, prev, curr, next)
        self.calls.append((prev[0, 0, 0, 0].item(), curr[0, 0, 0, 0].item(), next[0, 0, 0, 0].item(), out))
        return out


@pytest.mark.parametrize("count", [1, 2, 4])
def test_recurrence_uses_clamped_neighbours_and_the_previous_output(count, monkeypatch):
    pvdnet = RecordingPVDNet()
    model = StandInModel(pvdnet=pvdnet)
    previous_outputs = []

    def recording_pixel_volume(image, flow, fill, kernel_size=5, **output):
        previous_outputs.append(image.clone())
        return kernels.reference.pixel_volume(image, flow, fill, kernel_size, **output)

    monkeypatch.setattr(kernels, "pixel_volume", recording_pixel_volume)
    frames = [torch.full((1, 3, 8, 12), value / 10) for value in range(count)]
    outputs = list(deblur_frames(model, frames, device="cpu"))
    assert len(outputs) == count
    clamp = lambda t: min(max(t, 0), count - 1)  # noqa: E731
    expected = [(clamp(t - 1) / 10, t / 10, clamp(t + 1) / 10) for t in range(count)]
    seen = [value for call in pvdnet.calls for value in call[:3]]
    assert seen == pytest.approx([value for triple in expected for value in triple])
    torch.testing.assert_close(previous_outputs[0], frames[0])  # first previous output: first blurry frame
    for t in range(1, count):
        torch.testing.assert_close(previous_outputs[t], outputs[t - 1])
    for out, call in zip(outputs, pvdnet.calls):
        torch.testing.assert_close(out, call[3])


def test_runner_streams_an_endless_source():
    consumed = []

    def endless():
        for index in itertools.count():
            consumed.append(index)
            yield torch.rand(3, 8, 8) * 2 - 1

    outputs = list(itertools.islice(deblur_frames(StandInModel(), endless(), device="cpu"), 3))
    assert len(outputs) == 3 and outputs[0].shape == (3, 8, 8)
    assert len(consumed) == 4  # frame t is produced as soon as frame t+1 is read


def test_batch_of_clips_matches_clips_run_one_by_one():
    model = StandInModel()
    clip_a, clip_b = _frames(3, 12, 20), _frames(3, 12, 20)
    batched = list(deblur_frames(model, [torch.cat([a, b]) for a, b in zip(clip_a, clip_b)], device="cpu"))
    alone_a = list(deblur_frames(model, clip_a, device="cpu"))
    alone_b = list(deblur_frames(model, clip_b, device="cpu"))
    for both, a, b in zip(batched, alone_a, alone_b):
        torch.testing.assert_close(both, torch.cat([a, b]))


@pytest.mark.parametrize("dtype,batched", [(np.uint8, False), (np.uint16, False), (np.uint8, True)])
def test_numpy_frames_come_back_as_numpy(dtype, batched):
    shape = (2, 9, 11, 3) if batched else (9, 11, 3)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype) for _ in range(2)]
    outputs = list(deblur_frames(StandInModel(), frames, device="cpu"))
    assert [(o.shape, o.dtype) for o in outputs] == [(shape, np.dtype(dtype))] * 2


def test_numpy_and_tensor_paths_agree():
    model = StandInModel()
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8) for _ in range(3)]
    as_uint8 = list(deblur_frames(model, frames, device="cpu"))
    as_float = list(deblur_frames(model, [pvd_frames.frame_to_tensor(f, torch.device("cpu"))[0] for f in frames],
                                  device="cpu"))
    for u8, fl in zip(as_uint8, as_float):
        want = ((fl.clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 0).numpy()
        assert np.abs(u8.astype(np.float64) - want).max() <= 0.5 + 1e-4


def test_frame_size_change_inside_a_clip_is_refused():
    deblurrer = VideoDeblurrer(StandInModel(), device="cpu")
    deblurrer.push(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        deblurrer.push(torch.zeros(3, 8, 12))


def test_bad_options():
    with pytest.raises(ValueError, match="size_policy"):
        VideoDeblurrer(StandInModel(), device="cpu", size_policy="crop")
    with pytest.raises(ValueError, match="CUDA"):
        VideoDeblurrer(StandInModel(), device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        runtime.resolve_precision("int8", torch.device("cpu"))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_auto_is_bf16_only_with_native_bf16(native, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == (torch.bfloat16 if native else None)
    assert runtime.resolve_precision("auto", cpu, fp16_fallback=False) == (torch.bfloat16 if native else None)
    assert runtime.resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: honoured either way
    assert runtime.resolve_precision("fp32", cpu) is None


def test_cpu_bf16_runs_pvdnet_under_autocast_and_stays_close_to_fp32():
    """precision='bf16' on the CPU: PVDNet's convolutions compute in bf16 (BIMNet's stay fp32); the output is
    within bf16 rounding of the fp32 one."""
    torch.manual_seed(0)
    model = DeblurNet().eval()
    seen = {}
    first_conv = {"pvdnet": next(m for m in model.pvdnet.modules() if isinstance(m, nn.Conv2d)),
                  "bimnet": next(m for m in model.bimnet.modules() if isinstance(m, nn.Conv2d))}
    for name, conv in first_conv.items():
        conv.register_forward_hook(
            lambda module, inputs, output, name=name: seen.setdefault(name, set()).add(output.dtype))
    frames = [torch.rand(3, 32, 40) * 2 - 1 for _ in range(3)]
    outputs = {precision: list(VideoDeblurrer(model, device="cpu", precision=precision).run(frames))
               for precision in ("fp32", "bf16")}
    assert seen == {"pvdnet": {torch.float32, torch.bfloat16}, "bimnet": {torch.float32}}
    for fp32, bf16 in zip(outputs["fp32"], outputs["bf16"], strict=True):
        assert bf16.dtype == torch.float32
        torch.testing.assert_close(bf16, fp32, atol=5e-2, rtol=0)
        assert not torch.equal(bf16, fp32)


def test_triton_path_matches_the_reference_path(device, monkeypatch):
    """End to end on a 32x32 clip: Triton kernels (interpreter on CPU) vs the CPU kernels (pvd.kernels.cpu)."""
    from pvd.kernels import cpu

    torch.manual_seed(0)
    model = DeblurNet().eval()
    frames = [torch.rand(1, 3, 32, 32) * 2 - 1 for _ in range(2)]
    reference_calls = []
    original_reference = cpu.pixel_volume

    def counting_reference(*args, **kwargs):
        reference_calls.append(1)
        return original_reference(*args, **kwargs)

    monkeypatch.setattr(cpu, "pixel_volume", counting_reference)
    with torch.inference_mode():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        reference = model(frames[0], frames[1], frames[1], frames[0])
        assert len(reference_calls) == 1
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        model_on_device = model.to(device)
        triton = model_on_device(*(f.to(device) for f in (frames[0], frames[1], frames[1], frames[0])))
        assert len(reference_calls) == 1, "the Triton run fell back to the reference kernels"
    torch.testing.assert_close(triton.cpu(), reference, rtol=1e-4, atol=1e-4)


def test_packaged_demo_weights_are_the_repository_weights():
    """A wheel carries pvd/assets/pvd_demo.safetensors (package data); in the repository it links to weights/."""
    assert weights.REPOSITORY_WEIGHTS.is_file()
    assert weights.PACKAGED_WEIGHTS.resolve() == weights.REPOSITORY_WEIGHTS.resolve()
    assert weights.DEFAULT_WEIGHTS == weights.REPOSITORY_WEIGHTS


class VolumeFormatPVDNet(StandInPVDNet):
    """Records the dtype and layout the pixel volume arrives in and whether autocast is on inside."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        self.seen.append((pixel_volume.dtype, pixel_volume.is_contiguous(memory_format=torch.channels_last),
                          pixel_volume.is_contiguous(), torch.is_autocast_enabled("cpu")))
        return super().forward(pixel_volume, prev, curr, next)


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_volume_arrives_in_the_dtype_and_layout_pvdnet_consumes(autocast_dtype, channels_last, monkeypatch):
    """Under autocast the volume is emitted in the autocast dtype, channels_last when PVDNet's weights are:
    no cast or layout copy left between the kernel and the first convolution. Same result as before."""
    pvdnet = VolumeFormatPVDNet()
    if channels_last:
        pvdnet.to(memory_format=torch.channels_last)
    model = StandInModel(pvdnet=pvdnet)
    prev, curr, nxt, deblurred = _frames(4, 12, 16)
    out = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, autocast_dtype=autocast_dtype)
    assert pvdnet.seen == [(autocast_dtype or torch.float32, channels_last, not channels_last,
                            autocast_dtype is not None)]
    # The float32 volume cast by hand gives the same step output (the direct emission is bit-identical).
    original_pixel_volume = kernels.pixel_volume
    asked = []

    def float32_volume(image, flow, fill, kernel_size=5, **output):
        asked.append(output)
        return original_pixel_volume(image, flow, fill, kernel_size)

    monkeypatch.setattr(kernels, "pixel_volume", float32_volume)
    expected = deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, autocast_dtype=autocast_dtype)
    assert asked == [{"out_dtype": autocast_dtype, "channels_last": channels_last}]
    assert torch.equal(out, expected)
    # Autocast enabled by the caller (no autocast_dtype given) is honoured the same way.
    pvdnet.seen.clear()
    monkeypatch.setattr(kernels, "pixel_volume", original_pixel_volume)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred)
    assert pvdnet.seen[0][0] == torch.bfloat16
