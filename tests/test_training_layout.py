"""CPU training runs its networks in channels_last (`run.channels_last`, default "auto" = on CPU only) and
learns exactly what the default (contiguous) layout learns, up to the convolutions' summation order.

Runs on the CPU with the PyTorch kernels (TRITON_INTERPRET=0), one thread, on tiny random clips.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pvd.training import load_config, stages

SIZE = 32
BATCH = 2
LOSS_RTOL = 1e-4  # the losses of the two layouts; float32 convolutions summing in another order
PARAM_ATOL = 1e-5  # the trained weights after a few steps (their scale is ~0.1)
GRAD_ATOL = 1e-5  # gradients, relative to the largest gradient of the network


pytestmark = pytest.mark.usefixtures("cpu_kernels_one_thread")


def _config(stage: str, *extra: str):
    return load_config(None, [
        f"run.stage='{stage}'", "run.device='cpu'", "run.precision='fp32'", "model.bimnet_weights='random'",
        f"data.crop={SIZE}", f"data.batch_size={BATCH}", "optim.lr=1e-3", *extra])


def _clip(frames: int) -> dict:
    """Random smooth frames in [-1, 1]: blurry (B, T, 3, H, W) and a slightly shifted sharp clip."""
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(BATCH * frames, 3, 8, 8, generator=generator)
    frames_ = nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    blurry = (frames_ * 2 - 1).unflatten(0, (BATCH, frames))
    return {"blurry": blurry, "sharp": blurry.roll(1, dims=-1) * 0.9}


def _conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _is_channels_last(weight: torch.Tensor) -> bool:
    """channels_last and not also contiguous (as weights with one input channel or 1x1 taps are)."""
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _build(stage: str, layout: str) -> stages.Trainer:
    torch.manual_seed(0)
    return stages.build_trainer(_config(stage, f"run.channels_last='{layout}'"), torch.device("cpu"))


@pytest.mark.parametrize("stage, frames", [("pvdnet", 4), ("bimnet", 3)])
def test_cpu_training_is_channels_last_and_learns_as_contiguous(stage, frames):
    default, contiguous = _build(stage, "auto"), _build(stage, "off")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(default.model))
    assert sum(_is_channels_last(w) for w in _conv_weights(default.model)) > 10  # not only 1-channel weights
    assert all(w.is_contiguous() for w in _conv_weights(contiguous.model))
    for key, value in contiguous.model.state_dict().items():  # same init, only the layout differs
        assert torch.equal(default.model.state_dict()[key], value), key

    batch = _clip(frames)
    records_default = default.train_clip(batch) + default.train_clip(batch)
    records_contiguous = contiguous.train_clip(batch) + contiguous.train_clip(batch)
    assert len(records_default) == len(records_contiguous) == 2 * (frames - 2 if stage == "pvdnet" else frames - 1)
    for got, want in zip(records_default, records_contiguous):
        assert got["loss"] == pytest.approx(want["loss"], rel=LOSS_RTOL)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=LOSS_RTOL)
    assert records_default[-1]["loss"] != records_default[0]["loss"]  # it did train
    trained = contiguous.model.state_dict()
    for key, value in default.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=PARAM_ATOL, msg=key)


def test_checkpoints_move_between_layouts():
    default, contiguous = _build("pvdnet", "auto"), _build("pvdnet", "off")
    default.train_clip(_clip(3))
    contiguous.load_state_dict(default.state_dict())
    for key, value in default.model.state_dict().items():
        assert torch.equal(contiguous.model.state_dict()[key], value), key
    assert all(w.is_contiguous() for w in _conv_weights(contiguous.model))  # the layout stays its own
    assert contiguous.step == default.step == 1


def test_channels_last_setting_is_checked():
    assert not _build("pvdnet", "off").channels_last and _build("pvdnet", "on").channels_last
    assert stages._use_channels_last("auto", torch.device("cpu"))
    assert not stages._use_channels_last("auto", torch.device("cuda"))  # CUDA training keeps PyTorch's default
    with pytest.raises(ValueError, match="run.channels_last"):
        _config("pvdnet", "run.channels_last='yes'")


def test_bimnet_channels_last_gradients_match_contiguous():
    """BIMNet's layout guards (`cat_channels`, `grads_in`) change where copies happen, not what is computed:
    the blur-invariant loss and every parameter's gradient match the contiguous network's, and the
    gradients come back in the parameters' own layout."""
    from pvd.nets import BIMNet
    from pvd.nets.bimnet import init_for_training
    from pvd.training.losses import blur_invariant_loss

    torch.manual_seed(3)
    contiguous = BIMNet()
    init_for_training(contiguous)
    channels_last = BIMNet()
    channels_last.load_state_dict(contiguous.state_dict())
    channels_last.to(memory_format=torch.channels_last)
    frames = [torch.rand(1, 3, 2 * SIZE, 2 * SIZE) * 2 - 1 for _ in range(4)]  # every level larger than 1x1
    losses = {}
    for name, net in (("contiguous", contiguous), ("channels_last", channels_last)):
        loss, _ = blur_invariant_loss(net, *frames)
        loss.backward()
        losses[name] = loss.item()
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=LOSS_RTOL)
    grads = dict(contiguous.named_parameters())
    scale = max(p.grad.abs().max().item() for p in contiguous.parameters())
    for key, param in channels_last.named_parameters():
        want = grads[key].grad
        assert param.grad is not None and same_layout(param.grad, param), key
        # float32 summation order: the absolute error scales with the largest gradients upstream (a few
        # parameters' gradients nearly cancel, so a per-tensor relative bound would test noise)
        torch.testing.assert_close(param.grad, want, rtol=1e-3, atol=GRAD_ATOL * scale, msg=key)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal strides along every dimension longer than 1 (a size-1 dimension's stride never addresses memory;
    autograd's layout contract for gradients ignores it too)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


class _Opaque(nn.Module):
    """BIMNet behind a wrapper the loss does not recognise: it then stacks every pair's frames (no sharing)."""

    def __init__(self, bimnet: nn.Module):
        super().__init__()
        self.inner = bimnet

    def forward(self, image1, image2, all_levels=False):
        return self.inner(image1, image2, all_levels=all_levels)


@pytest.mark.parametrize("pairs", [("bb", "bs", "sb", "ss"), ("bb", "bs", "ss")])
def test_shared_pyramids_give_the_stacked_pairs_loss_and_gradients(pairs):
    """The four default pairings use each frame twice; BIMNet's `pairs` computes each frame's pyramid once.
    Loss (with the multi-scale EPE, which takes every level) and gradients equal the stacked pairs'."""
    from pvd.nets import BIMNet
    from pvd.nets.bimnet import init_for_training
    from pvd.training import losses

    torch.manual_seed(4)
    bimnet = BIMNet()
    init_for_training(bimnet)
    frames = [torch.rand(2, 3, SIZE, SIZE) * 2 - 1 for _ in range(4)]
    assert losses._shared_frames(*frames, pairs) is not None  # this pairing does share frames
    gt_flow = torch.randn(2, 2, SIZE, SIZE)
    results = []
    for net in (bimnet, _Opaque(bimnet)):
        bimnet.zero_grad()
        total, parts = losses.blur_invariant_loss(net, *frames, gt_flow=gt_flow, epe_weight=0.5, multiscale=True,
                                                  pairs=pairs)
        total.backward()
        results.append((parts, {key: p.grad.clone() for key, p in bimnet.named_parameters()}))
    (shared_parts, shared_grads), (stacked_parts, stacked_grads) = results
    for key, value in stacked_parts.items():
        assert shared_parts[key].item() == pytest.approx(value.item(), rel=1e-5), key
    scale = max(grad.abs().max().item() for grad in stacked_grads.values())
    for key, want in stacked_grads.items():
        # the pyramid sums each frame's two gradients before its backward, not after: float32 reordering
        torch.testing.assert_close(shared_grads[key], want, rtol=1e-3, atol=GRAD_ATOL * scale, msg=key)
    flows = losses.blur_invariant_flows(bimnet, *frames, pairs=pairs)
    stacked = losses.blur_invariant_flows(_Opaque(bimnet), *frames, pairs=pairs)
    for pair in pairs:
        torch.testing.assert_close(flows[pair], stacked[pair], rtol=1e-5, atol=1e-5)


def test_a_cat_led_by_one_channel_comes_out_channels_last_itself():
    """A single-channel NCHW tensor passes for channels_last, and torch.cat led by it comes out NCHW (a copy
    of the whole cat to convert it): BIMNet's cat gives that part channel stride 1 first."""
    from pvd.nets.layout import cat_channels

    cl = torch.channels_last
    brightness = torch.rand(2, 4, 9, 7).square().sum(dim=1, keepdim=True)  # (2, 1, 9, 7), NCHW strides
    flow = torch.rand(2, 2, 9, 7).contiguous(memory_format=cl)
    features = torch.rand(2, 5, 9, 7).contiguous(memory_format=cl)
    assert brightness.is_contiguous(memory_format=cl) and brightness.stride(1) != 1
    assert not torch.cat([brightness, flow, features], dim=1).is_contiguous(memory_format=cl)  # torch's own
    catted = torch.cat
    outputs = []

    def spy(tensors, dim=0):
        outputs.append(catted(tensors, dim))
        return outputs[-1]

    torch.cat = spy
    try:
        result = cat_channels([brightness, flow, features], cl)
    finally:
        torch.cat = catted
    assert outputs[0].is_contiguous(memory_format=cl) and result.data_ptr() == outputs[0].data_ptr()
    torch.testing.assert_close(result, catted([brightness, flow, features], dim=1), rtol=0, atol=0)
