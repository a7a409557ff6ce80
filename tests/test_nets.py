"""BIMNet, PVDNet and PVDNet-large: structure against the original state dicts, and forward semantics.

The forward tests compare pvd's networks, loaded through `pvd.weights.from_original`, with functional
forwards written here from the original's published arithmetic that read the *original* parameter
names directly (plain conv2d / grid_sample), so a wrong layer order, padding, activation or key mapping
makes them differ. Unless stated, they run the PyTorch reference kernels (TRITON_INTERPRET=0 on CPU:
the Triton interpreter would take minutes on whole networks); `test_bimnet_level_triton_path` covers the
Triton kernels inside a decoder level on the `device` fixture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pvd import kernels
from pvd.nets import BIMNet, DeblurNet, PVDNet, PVDNetLarge
from pvd.nets import bimnet as bimnet_module
from pvd.weights import from_original

ORIGINAL = json.loads((Path(__file__).parent / "data" / "original_state_dict_keys.json").read_text())
# Parameter counts of the original modules, as published (docs/semantics.md, section 2).
PUBLISHED_PARAMETERS = {"liteflownet": 5_381_969, "pvdnet": 5_132_579, "pvdnet_large": 17_979_811}
NETWORKS = {"liteflownet": BIMNet, "pvdnet": PVDNet, "pvdnet_large": PVDNetLarge}


@pytest.fixture
def reference_kernels(monkeypatch):
    """Run CPU tensors through the PyTorch reference kernels instead of the Triton interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def random_original_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under every original key of `arch`, scaled to keep activations O(1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in ORIGINAL[arch]["keys"].items():
        if key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) * math.sqrt(1.0 / fan_in)
    return state


# ---- structure ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(NETWORKS))
def test_parameter_counts_match_the_original(arch):
    model = NETWORKS[arch]()
    count = sum(p.numel() for p in model.parameters())
    assert count == PUBLISHED_PARAMETERS[arch] == ORIGINAL[arch]["parameters"]


@pytest.mark.parametrize("arch", list(NETWORKS))
def test_original_keys_are_a_bijection_with_matching_shapes(arch):
    with torch.device("meta"):
        model = NETWORKS[arch]()
    mapped = {model.original_key(name): list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert len(mapped) == len(model.state_dict())
    assert mapped == ORIGINAL[arch]["keys"]


def test_deblurnet_holds_both_networks():
    with torch.device("meta"):
        normal, large = DeblurNet(), DeblurNet(large=True)
    assert isinstance(normal.bimnet, BIMNet) and type(normal.pvdnet) is PVDNet and not normal.large
    assert isinstance(large.pvdnet, PVDNetLarge) and large.large
    keys = {large.original_key(name) for name in large.state_dict()}
    expected = {f"BIMNet.{k}" for k in ORIGINAL["liteflownet"]["keys"]}
    expected |= {f"PVDNet.{k}" for k in ORIGINAL["pvdnet_large"]["keys"]}
    assert keys == expected
    with pytest.raises(ValueError, match="contradicts"):
        DeblurNet(pvdnet=large.pvdnet, large=False)


# ---- functional forwards of the original, reading original keys -------------------------------------

def _conv(state, x, name, stride=1):
    weight = state[f"{name}.weight"]
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    return F.conv2d(x, weight, state.get(f"{name}.bias"), stride=stride, padding=padding)


def _up2(state, x, name):
    """Transposed 4x4 stride-2 conv, one group per channel when the weight has one input channel per group."""
    weight = state[f"{name}.weight"]
    groups = x.shape[1] if weight.shape[1] == 1 else 1
    return F.conv_transpose2d(x, weight, state.get(f"{name}.bias"), stride=2, padding=1, groups=groups)


def _grid_sample_warp(x, flow):
    """Backward warp by pixel flow through grid_sample on the normalised grid, as the original does."""
    _, _, height, width = x.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=x.dtype), torch.arange(width, dtype=x.dtype), indexing="ij")
    grid_x = (xs + flow[:, 0]) / ((width - 1) / 2) - 1
    grid_y = (ys + flow[:, 1]) / ((height - 1) / 2) - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def original_liteflownet(state, first, second):
    lrelu = lambda x: F.leaky_relu(x, 0.1)  # noqa: E731
    pyramid = ["moduleOne", "moduleTwo", "moduleThr", "moduleFou", "moduleFiv", "moduleSix"]

    def features(image):
        out, x = [], image
        for depth, name in enumerate(pyramid):
            index = 0
            while f"moduleFeatures.{name}.{index}.weight" in state:
                stride = 2 if depth > 0 and index == 0 else 1
                x = lrelu(_conv(state, x, f"moduleFeatures.{name}.{index}", stride))
                index += 2
            out.append(x)
        return out

    feats1, feats2 = features(first), features(second)
    images1, images2 = [first], [second]
    for depth in range(1, 6):
        size = feats1[depth].shape[2:]
        images1.append(F.interpolate(images1[-1], size=size, mode="bilinear", align_corners=False))
        images2.append(F.interpolate(images2[-1], size=size, mode="bilinear", align_corners=False))

    def main(x, prefix, count, last_activation):
        for step in range(count):
            x = _conv(state, x, f"{prefix}.{2 * step}")
            if step < count - 1 or last_activation:
                x = lrelu(x)
        return x

    flow = None
    for level in (6, 5, 4, 3, 2):
        depth, index = level - 1, level - 2
        scale = 20.0 / 2 ** (level - 1)
        f1, f2 = feats1[depth], feats2[depth]
        # Matching
        prefix = f"moduleMatching.{index}"
        g1, g2 = f1, f2
        if f"{prefix}.moduleFeat.0.weight" in state:
            g1, g2 = lrelu(_conv(state, g1, f"{prefix}.moduleFeat.0")), lrelu(_conv(state, g2, f"{prefix}.moduleFeat.0"))
        if flow is not None:
            flow = _up2(state, flow, f"{prefix}.moduleUpflow")
            g2 = _grid_sample_warp(g2, flow * scale)
        strided = f"{prefix}.moduleUpcorr.weight" in state
        cost = lrelu(kernels.reference.correlation(g1, g2, 3, 2 if strided else 1))
        if strided:
            cost = _up2(state, cost, f"{prefix}.moduleUpcorr")
        flow = (0.0 if flow is None else flow) + main(cost, f"{prefix}.moduleMain", 4, False)
        # Subpixel
        prefix = f"moduleSubpixel.{index}"
        g1, g2 = f1, f2
        if f"{prefix}.moduleFeat.0.weight" in state:
            g1, g2 = lrelu(_conv(state, g1, f"{prefix}.moduleFeat.0")), lrelu(_conv(state, g2, f"{prefix}.moduleFeat.0"))
        g2 = _grid_sample_warp(g2, flow * scale)
        flow = flow + main(torch.cat([g1, g2, flow], 1), f"{prefix}.moduleMain", 4, False)
        # Regularization
        prefix = f"moduleRegularization.{index}"
        diff = (images1[depth] - _grid_sample_warp(images2[depth], flow * scale)).pow(2).sum(1, True).sqrt()
        g1 = f1
        if f"{prefix}.moduleFeat.0.weight" in state:
            g1 = lrelu(_conv(state, g1, f"{prefix}.moduleFeat.0"))
        mean = flow.reshape(flow.shape[0], 2, -1).mean(2).reshape(flow.shape[0], 2, 1, 1)
        x = main(torch.cat([diff, flow - mean, g1], 1), f"{prefix}.moduleMain", 6, True)
        x = _conv(state, x, f"{prefix}.moduleDist.0")
        if f"{prefix}.moduleDist.1.weight" in state:
            x = _conv(state, x, f"{prefix}.moduleDist.1")
        dist = -x.pow(2)
        dist = (dist - dist.max(1, True)[0]).exp()
        k = int(round(math.sqrt(dist.shape[1])))
        components = []
        for c, name in enumerate(("moduleScaleX", "moduleScaleY")):
            unfolded = F.unfold(flow[:, c:c + 1], k, padding=k // 2).view_as(dist)
            components.append(_conv(state, dist * unfolded, f"{prefix}.{name}") / dist.sum(1, True))
        flow = torch.cat(components, 1)
    return flow * 20.0


def original_pvdnet(state, pixel_volume, prev, curr, nxt, blocks):
    relu = F.relu
    v = relu(_conv(state, relu(_conv(state, pixel_volume, "PV_dec.0")), "PV_dec.2"))
    i = relu(_conv(state, relu(_conv(state, torch.cat([curr, prev, nxt], 1), "img_dec.0")), "img_dec.2"))
    d0 = _conv(state, torch.cat([v, i], 1), "d0")
    d1 = _conv(state, relu(_conv(state, d0, "d1.0", stride=2)), "d1.2")
    temp = relu(_conv(state, relu(_conv(state, d1, "temp.0", stride=2)), "temp.2"))
    n = temp
    for b in range(blocks):
        n = n + relu(_conv(state, relu(_conv(state, n, f"RBs.{b}.0")), f"RBs.{b}.2"))
    n = relu(_conv(state, n, "RB_end.0")) + temp
    n = relu(_conv(state, relu(_up2(state, n, "dconv1") + d1), "dconv1_end.1"))
    n = relu(_conv(state, relu(_up2(state, n, "dconv2") + d0), "dconv2_end.1"))
    return curr + _conv(state, n, "end")


# ---- forward semantics ---------------------------------------------------------------------------------

def _loaded(arch, state):
    """pvd's network for `arch` holding the original-named `state`, through `from_original`."""
    name, converted = from_original(state)
    assert name == {"liteflownet": "bimnet"}.get(arch, arch)
    with torch.device("meta"):
        model = NETWORKS[arch]()
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def test_bimnet_matches_original_arithmetic(reference_kernels):
    state = random_original_state_dict("liteflownet")
    model = _loaded("liteflownet", state)
    # 64 x 64: the coarsest level is 2 x 2 (the original's normalised-grid warp divides by size - 1).
    # Batch of 2: per-sample statistics (the regularization's mean flow) must not mix samples.
    first = torch.rand(2, 3, 64, 64)
    second = torch.roll(first, shifts=(1, 2), dims=(2, 3)) + 0.05 * torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        flow = model(first, second)
        expected = original_liteflownet(state, first, second)
    assert flow.shape == (2, 2, 32, 32)  # level 2: half resolution
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero fields
    torch.testing.assert_close(flow, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, blocks, shape", [("pvdnet", 12, (2, 20, 28)), ("pvdnet_large", 24, (1, 12, 16))])
def test_pvdnet_matches_original_arithmetic(arch, blocks, shape):
    batch, height, width = shape
    state = random_original_state_dict(arch, seed=1)
    model = _loaded(arch, state)
    pixel_volume = torch.rand(batch, 25, height, width) * 2 - 1
    prev, curr, nxt = (torch.rand(batch, 3, height, width) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        out = model(pixel_volume, prev, curr, nxt)
        expected = original_pvdnet(state, pixel_volume, prev, curr, nxt, blocks)
    assert out.shape == (batch, 3, height, width)
    assert (expected - curr).abs().max() > 0.1
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_pvdnet_output_is_curr_plus_residual():
    model = PVDNet().eval()
    torch.nn.init.zeros_(model.to_residual.weight)
    torch.nn.init.zeros_(model.to_residual.bias)
    inputs = [torch.rand(1, 25, 8, 12)] + [torch.rand(1, 3, 8, 12) for _ in range(3)]
    with torch.no_grad():
        out = model(*inputs)
    torch.testing.assert_close(out, inputs[2], rtol=0, atol=0)


def test_bimnet_forward_shape_and_gradients(reference_kernels):
    model = BIMNet()
    first, second = torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 64)
    flow = model(first, second)
    assert flow.shape == (1, 2, 16, 32) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    flow.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bimnet_all_levels(reference_kernels):
    torch.manual_seed(0)
    model = BIMNet().eval()
    first, second = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        levels = model(first, second, all_levels=True)
        finest = model(first, second)
    assert sorted(levels) == [2, 3, 4, 5, 6]
    for level, flow in levels.items():
        assert flow.shape == (2, 2, 64 >> (level - 1), 96 >> (level - 1))
    torch.testing.assert_close(levels[2], finest, rtol=0, atol=0)
    assert not torch.equal(levels[3], torch.zeros_like(levels[3]))


def test_init_for_training_passes_a_constant_flow_through(reference_kernels):
    """After `init_for_training`: DC-free first filters; flow upsampling and Regularization keep a constant flow
    (away from borders)."""
    torch.manual_seed(0)
    model = BIMNet()
    bimnet_module.init_for_training(model)
    first = model.features.levels["level1"][0].weight
    torch.testing.assert_close(first.sum(dim=(1, 2, 3)), torch.zeros(first.shape[0]), rtol=0, atol=1e-5)
    assert first.std() > 0.01
    # features keep their scale down the pyramid (Xavier init shrinks them ~3x per level, see init_for_training)
    image = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        stds = [features.std().item() for features in model.features(image).values()]
    assert max(stds) / min(stds) < 4, stds
    flow = torch.tensor([0.3, -0.2]).view(1, 2, 1, 1).expand(1, 2, 8, 8).contiguous()
    upsampled = model.matching["level3"].upsample_flow(flow)
    assert upsampled.shape == (1, 2, 16, 16)
    torch.testing.assert_close(upsampled[..., 1:-1, 1:-1], flow[..., :1, :1].expand(1, 2, 14, 14), rtol=0, atol=1e-6)
    level = 4
    regularize = model.regularization[f"level{level}"]
    k = bimnet_module.KERNEL_SIZE[level]
    images = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    features = torch.rand(1, bimnet_module.FEATURE_CHANNELS[level], 8, 8)
    with torch.no_grad():
        smoothed = regularize(*images, features, flow)
    inner = slice(k // 2, 8 - k // 2)
    torch.testing.assert_close(smoothed[..., inner, inner], flow[..., inner, inner], rtol=1e-5, atol=1e-6)
    # PyTorch's default (or Xavier) init of the 1x1 combine convs does not: it scales the flow by a random sum
    default = BIMNet().regularization[f"level{level}"]
    with torch.no_grad():
        assert not torch.allclose(default(*images, features, flow)[..., inner, inner], flow[..., inner, inner],
                                  atol=1e-2)


def test_channels_last_matches_contiguous(reference_kernels):
    bimnet, pvdnet = BIMNet().eval(), PVDNet().eval()
    first, second = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    pv_inputs = [torch.rand(1, 25, 12, 16)] + [torch.rand(1, 3, 12, 16) for _ in range(3)]
    with torch.no_grad():
        flow = bimnet(first, second)
        out = pvdnet(*pv_inputs)
        bimnet.to(memory_format=torch.channels_last)
        pvdnet.to(memory_format=torch.channels_last)
        last = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
        flow_last = bimnet(last(first), last(second))
        out_last = pvdnet(*[last(x) for x in pv_inputs])
    torch.testing.assert_close(flow_last, flow, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_last, out, rtol=1e-4, atol=1e-5)


def test_bimnet_level_triton_path(device, monkeypatch):
    """One whole decoder level (stride-2 correlation, warps) on the Triton kernels vs the reference kernels."""
    level = 3
    channels = bimnet_module.FEATURE_CHANNELS[level]
    stages = [bimnet_module.Matching(level), bimnet_module.Subpixel(level), bimnet_module.Regularization(level)]
    f1, f2 = torch.randn(1, channels, 8, 8), torch.randn(1, channels, 8, 8)
    image1, image2 = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    coarse = torch.randn(1, 2, 4, 4)

    def run(dev):
        matching, subpixel, regularization = (stage.to(dev) for stage in stages)
        a, b, i1, i2 = (t.to(dev) for t in (f1, f2, image1, image2))
        with torch.no_grad():
            flow = matching(a, b, coarse.to(dev))
            flow = subpixel(a, b, flow)
            return regularization(i1, i2, a, flow).cpu()

    triton_flow = run(device)  # CUDA, or CPU under the interpreter (conftest sets TRITON_INTERPRET=1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reference_flow = run("cpu")
    assert reference_flow.abs().max() > 1e-3
    torch.testing.assert_close(triton_flow, reference_flow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 3, 48, 64), (1, 3, 64, 40)])
def test_bimnet_rejects_sizes_not_multiple_of_32(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        BIMNet()(torch.rand(shape), torch.rand(shape))


def test_bimnet_rejects_bad_inputs():
    model = BIMNet()
    with pytest.raises(ValueError, match="image2"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 0, 1, 2, 3], [0, 0, 2, 2, 1, 1, 3, 3], [3, 1, 2, 0, 3], [2], [0, 1, 2, 3]])
@pytest.mark.parametrize("channels_last", [False, True])
def test_take_rows_matches_indexing(rows, channels_last):
    """BIMNet's row gather for its `pairs` equals x[rows], forward and backward (repeated, reordered and
    single rows), and hands channels_last features a channels_last gradient."""
    torch.manual_seed(len(rows))
    x = torch.randn(4, 5, 3, 6, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad_out = torch.randn(len(rows), 5, 3, 6, dtype=torch.float64)
    results = []
    for take in (lambda t, r: bimnet_module._take_rows(t, bimnet_module._row_pieces(r, len(t))),
                 lambda t, r: t[torch.tensor(r)]):
        leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        out = take(leaf, rows)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad))
    (out, grad), (expected_out, expected_grad) = results
    assert torch.equal(out, expected_out)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    if channels_last:
        assert grad.is_contiguous(memory_format=torch.channels_last)


def test_bimnet_pairs_match_stacked_frames_and_reject_bad_rows(reference_kernels):
    torch.manual_seed(3)
    model = BIMNet().eval()
    frames1, frames2 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    rows1, rows2 = [0, 1, 0, 1], [0, 0, 1, 1]
    with torch.no_grad():
        paired = model(frames1, frames2, pairs=(rows1, torch.tensor(rows2)))
        stacked = model(frames1[rows1], frames2[rows2])
    torch.testing.assert_close(paired, stacked, rtol=1e-5, atol=1e-5)
    for bad in ([0, 2], [-1, 0], []):
        with pytest.raises(ValueError, match="row numbers in"):
            model(frames1, frames2, pairs=(bad, [0, 1]))


@pytest.mark.parametrize("level", [2, 3, 5])
def test_regularization_neighbours_match_per_image_unfold(level):
    """The k x k neighbourhood is gathered for the whole batch at once; it equals unfolding each image."""
    k = bimnet_module.KERNEL_SIZE[level]
    component = torch.randn(3, 1, 5, 7, dtype=torch.float64)
    expected = F.unfold(component, kernel_size=k, padding=k // 2).reshape(3, k * k, 5, 7)
    for layout in (torch.contiguous_format, torch.channels_last):
        neighbours = kernels.reference.neighbours(component, layout, k * k)
        assert torch.equal(neighbours, expected) and neighbours.is_contiguous(memory_format=layout)


@pytest.fixture
def compiled_smoothing_calls(spy) -> list:
    """Calls that reached the compiled flow smoothing (`cpu_native_smoothing`); skips without numba."""
    from pvd.kernels import cpu_native

    if not cpu_native.AVAILABLE:
        pytest.skip("numba is not installed: only the eager CPU ops can run")
    return spy(bimnet_module.cpu_native_smoothing, "smoothed_flow")


def smoothing_inputs(batch, k, height, width, dtype, ties=False):
    """distance (B, k*k, H, W) channels_last, flow (B, 2, H, W), weight (2, k*k), bias (2,). With ties, the
    largest logit -distance**2 is reached by two or three taps at a third of the pixels (equal or opposite
    distances, or zeros), where the max's gradient is shared."""
    distance = torch.randn(batch, k * k, height, width, dtype=torch.float64) * 1.5
    if ties:
        closest = distance.abs().argmin(dim=1, keepdim=True)
        value = distance.gather(1, closest)
        other = (closest + 1 + torch.randint(k * k - 1, closest.shape)) % (k * k)  # another tap
        sign = torch.where(torch.rand(value.shape) < 0.5, -1.0, 1.0).to(torch.float64)
        tied = torch.rand(value.shape) < 0.33
        distance = distance.scatter(1, other, torch.where(tied, sign * value, distance.gather(1, other)))
        zeros = torch.rand(value.shape) < 0.1  # three taps at exactly zero
        for tap in (closest, other, (other + 1) % (k * k)):
            distance = distance.scatter(1, tap, torch.where(zeros, 0.0, distance.gather(1, tap)))
    flow = torch.randn(batch, 2, height, width, dtype=torch.float64) * 3
    weight, bias = torch.randn(2, k * k, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    return [t.to(dtype) for t in (distance.contiguous(memory_format=torch.channels_last), flow, weight, bias)]


# (B, k, H, W): BIMNet's kernel sizes 7, 5 and 3; sizes no multiple of anything, single rows and columns
SMOOTHING_SHAPES = [(3, 7, 9, 11), (2, 5, 6, 1), (1, 3, 1, 1), (2, 3, 1, 7), (1, 7, 4, 3)]


@pytest.mark.parametrize("shape", SMOOTHING_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_compiled_smoothed_flow_matches_eager(shape, dtype, ties, compiled_smoothing_calls):
    """The compiled smoothing (one pass per pixel) against the tensor formulation in float64: the output and
    the gradients of distance, flow, weight and bias, also where several taps reach the max."""
    torch.manual_seed(sum(shape) + 7 * ties)
    inputs = smoothing_inputs(*shape, dtype, ties=ties)
    grad_out = torch.randn(shape[0], 2, *shape[2:], dtype=torch.float64)

    def run(function, tensors):
        leaves = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in tensors]
        out = function(*leaves)
        return (out, *torch.autograd.grad(out, leaves, grad_out.to(out.dtype)))

    expected = run(kernels.reference.smoothed_flow, [t.double() for t in inputs])
    actual = run(bimnet_module.smoothed_flow, inputs)
    assert len(compiled_smoothing_calls) == 1
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for name, a, e in zip(("out", "grad_distance", "grad_flow", "grad_weight", "grad_bias"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a.double(), e, atol=tol * scale, rtol=tol, msg=name)


def test_compiled_smoothed_flow_gradcheck(compiled_smoothing_calls):
    inputs = [t.requires_grad_() for t in smoothing_inputs(2, 3, 4, 5, torch.float64)]
    assert torch.autograd.gradcheck(bimnet_module.smoothed_flow, inputs)
    assert compiled_smoothing_calls


def test_smoothed_flow_takes_the_compiled_pass_only_where_allowed(compiled_smoothing_calls):
    from pvd.kernels import cpu

    distance, flow, weight, bias = smoothing_inputs(1, 3, 4, 5, torch.float32)
    with cpu.compiled_kernels(False):
        bimnet_module.smoothed_flow(distance, flow, weight, bias)
    assert compiled_smoothing_calls == []
    bimnet_module.smoothed_flow(distance.contiguous(), flow, weight, bias)  # NCHW distances too
    assert len(compiled_smoothing_calls) == 1


def test_bimnet_compiled_smoothing_matches_eager_in_training(reference_kernels, compiled_smoothing_calls,
                                                              monkeypatch):
    """A whole BIMNet forward and backward, float64, with the compiled smoothing and with the eager one."""
    from pvd.kernels import cpu

    model = BIMNet().double()
    first, second = torch.rand(2, 2, 3, 32, 32, dtype=torch.float64).unbind(0)
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(bimnet_module, "cpu_native_smoothing", None)  # would fail if called
            monkeypatch.setattr(cpu, "native_serves", lambda tensor: False)
        model.zero_grad()
        flow = model(first, second)
        flow.square().mean().backward()
        results.append([flow] + [p.grad.clone() for p in model.regularization.parameters()])
    assert len(compiled_smoothing_calls) == len(bimnet_module.LEVELS)
    for compiled, eager in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)


def test_pvdnet_rejects_bad_inputs():
    model = PVDNet()
    images = [torch.rand(1, 3, 8, 8) for _ in range(3)]
    with pytest.raises(ValueError, match="pixel_volume"):
        model(torch.rand(1, 9, 8, 8), *images)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 25, 10, 8), *[torch.rand(1, 3, 10, 8) for _ in range(3)])
    with pytest.raises(ValueError, match="next"):
        model(torch.rand(1, 25, 8, 8), images[0], images[1], torch.rand(1, 3, 8, 12))


def test_bimnet_runs_under_bfloat16_autocast(reference_kernels):
    # Under autocast the convolutions give bfloat16 flows while the resized images stay float32: the warps
    # must agree on one dtype instead of rejecting the mix.
    torch.manual_seed(0)
    net = BIMNet().eval()
    image1, image2 = torch.rand(2, 1, 3, 64, 64).unbind(0)
    with torch.no_grad():
        expected = net(image1, image2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            flow = net(image1, image2)
    assert flow.shape == expected.shape
    torch.testing.assert_close(flow.float(), expected, atol=0.05 * expected.abs().max().item() + 1e-3, rtol=0)
