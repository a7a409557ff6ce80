"""pvd.kernels.cpu (the fast CPU ops) against the float64 PyTorch references of pvd.kernels.reference:
values and gradients, odd shapes, batch > 1, non-contiguous inputs, far and non-finite flows; and the public
ops dispatching to them on CPU outside the interpreter."""

import pytest
import torch

from pvd import kernels
from pvd.kernels import cpu, cpu_native, cpu_native_warp, reference

EXTREME_FLOWS = (1e6, -1e6, 1e30, -1e30, float("nan"), float("inf"), float("-inf"))
FLOAT64_TOL = 1e-12
FLOAT32_TOL = 1e-5


def flows_with_extremes(batch, height, width, dtype, scale=4.0, extreme_fraction=0.15):
    """Gaussian flows of a few pixels (some reaching outside), a fraction replaced by huge or non-finite values."""
    flow = torch.randn(batch, 2, height, width, dtype=torch.float64) * scale
    extreme = torch.tensor(EXTREME_FLOWS, dtype=torch.float64)[torch.randint(len(EXTREME_FLOWS), flow.shape)]
    return torch.where(torch.rand(flow.shape) < extreme_fraction, extreme, flow).to(dtype)


def grads(fn, inputs, wrt, grad_out):
    leaves = [x.detach().clone().requires_grad_(i in wrt) for i, x in enumerate(inputs)]
    out = fn(*leaves)
    return (out, *torch.autograd.grad(out, [leaves[i] for i in wrt], grad_out))


# ------------------------------------------------------------------------------------------------------- warp

WARP_SHAPES = [(2, 3, 7, 9), (1, 5, 17, 16), (3, 2, 2, 2), (1, 4, 1, 6), (2, 2, 5, 1), (1, 1, 1, 1)]


@pytest.mark.parametrize("shape", WARP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_warp_matches_reference(shape, dtype):
    batch, channels, height, width = shape
    x = torch.randn(shape, dtype=dtype)
    flow = flows_with_extremes(batch, height, width, dtype)
    grad_out = torch.randn(shape, dtype=dtype)
    expected = grads(reference.warp, (x.double(), flow.double()), (0, 1), grad_out.double())
    actual = grads(cpu.warp, (x, flow), (0, 1), grad_out)
    tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
    for name, a, e in zip(("out", "grad_x", "grad_flow"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        # float32: the normalised grid rounds coordinates by ~W * eps pixels, so the flow gradient (a sum of
        # value differences, up to ~10 here) is exact to ~1e-6 of its largest value.
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a.double(), e, atol=tol * scale, rtol=tol, msg=name)


def test_warp_far_and_non_finite_flow_give_zero_and_zero_gradient():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    values = torch.tensor(EXTREME_FLOWS + (7.5, -9.0), dtype=torch.float64)
    flow = values[torch.randint(len(values), (2, 2, 6, 7))].requires_grad_()
    out = cpu.warp(x, flow)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(flow.grad, torch.zeros_like(flow))


def test_warp_non_contiguous_and_channels_last():
    x = torch.randn(2, 9, 4, 11, dtype=torch.float64).transpose(1, 2)[:, ::2]  # (2, 2, 9, 11) strided
    flow = torch.randn(2, 11, 9, 2, dtype=torch.float64).permute(0, 3, 2, 1) * 3
    assert not x.is_contiguous() and not flow.is_contiguous()
    torch.testing.assert_close(cpu.warp(x, flow), reference.warp(x, flow), atol=FLOAT64_TOL, rtol=FLOAT64_TOL)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cpu.warp(x_cl, flow), reference.warp(x, flow), atol=FLOAT64_TOL, rtol=FLOAT64_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_warp_low_precision_computes_in_float32(dtype):
    x, flow = torch.randn(1, 3, 6, 8).to(dtype), (torch.randn(1, 2, 6, 8) * 3).to(dtype)
    out = cpu.warp(x, flow)
    assert out.dtype == dtype
    expected = reference.warp(x, flow)  # float32 inside, rounded once: equal up to one rounding step
    torch.testing.assert_close(out.float(), expected.float(), atol=torch.finfo(dtype).eps * 4, rtol=torch.finfo(dtype).eps)


def test_warp_gradcheck():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    flow = (torch.randn(2, 2, 5, 6, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(cpu.warp, (x, flow))


@pytest.fixture
def nhwc_warp_calls(spy):
    """Calls (their arguments) that reached the compiled channels_last warp (`cpu_native_warp.warp`); skips
    without numba."""
    if not cpu_native.AVAILABLE:
        pytest.skip("numba is not installed: only the eager CPU ops can run")
    return spy(cpu_native_warp, "warp")


def shapes_of_x(calls: list) -> list:
    return [args[0].shape for args in calls]


# (B, C, H, W): channel counts at and above MIN_CHANNELS, sizes that are no multiple of anything, single rows
NHWC_WARP_SHAPES = [(3, 16, 7, 9), (2, 19, 5, 1), (1, 33, 1, 6), (2, 16, 2, 2), (1, 17, 12, 13)]


@pytest.mark.parametrize("shape", NHWC_WARP_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_warp_matches_reference(shape, dtype, nhwc_warp_calls):
    """Channels_last features take the compiled NHWC kernel: values and both gradients equal the float64
    reference, with far and non-finite flows, and the gradient of x comes back channels_last."""
    torch.manual_seed(sum(shape))
    batch, _, height, width = shape
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flow = flows_with_extremes(batch, height, width, dtype, extreme_fraction=0.25)
    flow = flow.contiguous(memory_format=torch.channels_last)  # as BIMNet's flows: channel stride 1
    grad_out = torch.randn(shape, dtype=dtype)
    expected = grads(reference.warp, (x.double(), flow.double()), (0, 1), grad_out.double())
    leaf_x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    leaf_flow = flow.detach().clone().requires_grad_()
    out = cpu.warp(leaf_x, leaf_flow)
    actual = (out, *torch.autograd.grad(out, (leaf_x, leaf_flow), grad_out))
    assert shapes_of_x(nhwc_warp_calls) == [shape]
    tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
    for name, a, e in zip(("out", "grad_x", "grad_flow"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(a.double(), e, atol=tol * scale, rtol=tol, msg=name)
    assert actual[1].is_contiguous(memory_format=torch.channels_last)


def test_channels_last_warp_gradcheck(nhwc_warp_calls):
    x = torch.randn(2, 16, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    flow = torch.randn(2, 2, 4, 5, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(cpu.warp, (x.requires_grad_(), flow.requires_grad_()))
    assert nhwc_warp_calls


def test_warp_takes_the_nhwc_kernel_only_for_channels_last_features(nhwc_warp_calls):
    flow = torch.randn(2, 2, 6, 7)
    for x in (torch.randn(2, 32, 6, 7),  # NCHW
              torch.randn(2, 8, 6, 7).contiguous(memory_format=torch.channels_last),  # too few channels
              torch.randn(2, 32, 6, 14).contiguous(memory_format=torch.channels_last)[..., ::2]):  # strided
        torch.testing.assert_close(cpu.warp(x, flow), reference.warp(x, flow), atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
    assert nhwc_warp_calls == []
    features = torch.randn(2, 32, 6, 7).contiguous(memory_format=torch.channels_last)
    with cpu.compiled_kernels(False):
        cpu.warp(features, flow)
    assert nhwc_warp_calls == []
    cpu.warp(features, flow)
    assert shapes_of_x(nhwc_warp_calls) == [features.shape]


# ----------------------------------------------------------------------------------------------- pixel volume

# (B, image channels, fill channels, H, W, kernel_size)
PIXEL_VOLUME_CASES = [(2, 3, 3, 7, 9, 5), (1, 3, 3, 1, 1, 3), (1, 3, 1, 1, 9, 3), (1, 1, 3, 11, 2, 7),
                      (1, 1, 1, 6, 5, 1), (3, 3, 3, 17, 16, 3), (2, 3, 3, 9, 8, 9)]


def run_on_path(request, monkeypatch, spy, entry: str):
    """Make pvd.kernels.cpu take the compiled path (numba, pvd.kernels.cpu_native) or the eager fallback, as
    request.param says, and check at the end that it took it (a spy on cpu_native's entry point)."""
    if request.param == "native" and not cpu_native.AVAILABLE:
        pytest.skip("numba is not installed: only the eager CPU ops can run")
    monkeypatch.setattr(cpu_native, "AVAILABLE", request.param == "native")
    calls = spy(cpu_native, entry)
    yield request.param
    assert bool(calls) == (request.param == "native"), f"the CPU op did not take the {request.param} path"


@pytest.fixture(params=["native", "eager"])
def pixel_volume_path(request, monkeypatch, spy):
    yield from run_on_path(request, monkeypatch, spy, "pixel_volume")


@pytest.fixture(params=["native", "eager", "all_pairs"])
def correlation_path(request, monkeypatch, spy):
    """The correlation on one path for maps of every size: the compiled loops, the eager tiles (no map takes the
    all-pairs matmul), or the all-pairs matmul (every map takes it); checked at the end by a spy."""
    if request.param != "all_pairs":
        monkeypatch.setattr(cpu, "ALL_PAIRS_MAX_PIXELS", 0)
        yield from run_on_path(request, monkeypatch, spy, "correlation_of_samples")
        return
    monkeypatch.setattr(cpu, "ALL_PAIRS_MAX_PIXELS", 10**9)
    calls = spy(cpu, "_correlation_of_all_pairs")
    yield request.param
    assert calls, "the correlation did not take the all-pairs path"


@pytest.mark.parametrize(("height", "width", "stride", "all_pairs"),
                         [(8, 8, 1, True), (16, 15, 2, True), (9, 8, 1, False), (17, 16, 2, False)])
def test_correlation_takes_all_pairs_on_maps_of_at_most_64_pixels(height, width, stride, all_pairs, spy):
    calls = spy(cpu, "_correlation_of_all_pairs")
    f1, f2 = torch.randn(2, 1, 3, height, width, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(cpu.correlation(f1, f2, 3, stride), reference.correlation(f1, f2, 3, stride),
                               atol=FLOAT64_TOL, rtol=FLOAT64_TOL)
    assert bool(calls) == all_pairs


def test_all_pairs_index_made_under_inference_mode_serves_autograd_later():
    """The cached displacement index must be a normal tensor: gather saves it for backward."""
    f1, f2 = torch.randn(2, 1, 3, 5, 7).unbind(0)
    with torch.inference_mode():
        cpu.correlation(f1, f2, 3, 1)
    f1.requires_grad_()
    cpu.correlation(f1, f2, 3, 1).sum().backward()
    assert f1.grad is not None


@pytest.mark.parametrize("case", PIXEL_VOLUME_CASES, ids=lambda c: "b{}_c{}{}_{}x{}_k{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.usefixtures("pixel_volume_path")
def test_pixel_volume_is_bit_identical_to_reference(case, dtype):
    batch, image_channels, fill_channels, height, width, kernel_size = case
    image = torch.rand(batch, image_channels, height, width, dtype=dtype) * 2 - 1
    fill = torch.rand(batch, fill_channels, height, width, dtype=dtype) * 2 - 1
    flow = flows_with_extremes(batch, height, width, dtype, scale=3.0)
    grad_out = torch.randn(batch, kernel_size ** 2, height, width, dtype=dtype)

    def run(fn):
        return grads(lambda a, f, b: fn(a, f, b, kernel_size), (image, flow, fill), (0, 2), grad_out)

    expected, actual = run(reference.pixel_volume), run(cpu.pixel_volume)
    assert torch.equal(actual[0], expected[0])  # a selection of the same gray values: exact
    for name, a, e in zip(("grad_image", "grad_fill"), actual[1:], expected[1:]):
        assert a.dtype == dtype and a.shape == e.shape, name
        tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL  # sums in another order
        torch.testing.assert_close(a, e, atol=tol, rtol=tol, msg=name)


@pytest.mark.usefixtures("pixel_volume_path")
def test_pixel_volume_border_targets_and_non_contiguous_inputs():
    """Targets on and around the [1, W-2] x [1, H-2] border, where truncation and flooring disagree."""
    batch, height, width = 2, 7, 8
    image = torch.rand(batch, 3, width, height).transpose(2, 3) * 2 - 1  # non-contiguous
    fill = torch.rand(batch, 3, height, width).contiguous(memory_format=torch.channels_last) * 2 - 1
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    landing_x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.0, 1.5, width - 2.5, width - 2.0, width - 1.5, width + 0.5])
    landing_y = torch.tensor([-1.5, -0.75, 0.5, 1.0, height - 2.0, height - 1.5, height + 0.5])
    flow_x = landing_x[torch.randint(len(landing_x), (batch, height, width))] - xs
    flow_y = landing_y[torch.randint(len(landing_y), (batch, height, width))] - ys
    flow = torch.stack([flow_x, flow_y], dim=1)
    assert torch.equal(cpu.pixel_volume(image, flow, fill, 5), reference.pixel_volume(image, flow, fill, 5))


@pytest.mark.usefixtures("pixel_volume_path")
def test_pixel_volume_is_not_differentiable_in_flow():
    image, fill = torch.rand(1, 3, 5, 6, requires_grad=True), torch.rand(1, 3, 5, 6, requires_grad=True)
    flow = torch.randn(1, 2, 5, 6, requires_grad=True)
    cpu.pixel_volume(image, flow, fill, 3).sum().backward()
    assert flow.grad is None and image.grad.abs().sum() > 0 and fill.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("pixel_volume_path")
def test_pixel_volume_low_precision(dtype):
    image, fill = (torch.rand(2, 3, 6, 7) * 2 - 1).to(dtype), (torch.rand(2, 3, 6, 7) * 2 - 1).to(dtype)
    flow = (torch.randn(2, 2, 6, 7) * 3).to(dtype)
    out = cpu.pixel_volume(image, flow, fill, 5)
    assert out.dtype == dtype and torch.equal(out, reference.pixel_volume(image, flow, fill, 5))


@pytest.mark.skipif(not cpu_native.AVAILABLE, reason="numba is not installed")
def test_native_pixel_volume_splits_rows_across_threads():
    """Row bands on several threads (forward) and per-thread gradient images summed (backward) give the
    reference's values and gradients."""
    batch, height, width = 2, 2 * cpu_native.MIN_ROWS_PER_THREAD + 5, 13
    image = torch.rand(batch, 3, height, width, dtype=torch.float64) * 2 - 1
    fill = torch.rand(batch, 3, height, width, dtype=torch.float64) * 2 - 1
    flow = flows_with_extremes(batch, height, width, torch.float64, scale=6.0)
    grad_out = torch.randn(batch, 25, height, width, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert len(cpu_native._row_bands(height)) == 2
        actual = grads(lambda a, f, b: cpu.pixel_volume(a, f, b, 5), (image, flow, fill), (0, 2), grad_out)
    finally:
        torch.set_num_threads(threads)
    expected = grads(lambda a, f, b: reference.pixel_volume(a, f, b, 5), (image, flow, fill), (0, 2), grad_out)
    assert torch.equal(actual[0], expected[0])
    for a, e in zip(actual[1:], expected[1:]):
        torch.testing.assert_close(a, e, atol=FLOAT64_TOL, rtol=FLOAT64_TOL)


# ------------------------------------------------------------------------------------------------ correlation

# (B, C, H, W, max_displacement, stride): sizes not multiples of the tile, strides 1-3, windows wider than
# the image, one pixel.
CORRELATION_CASES = [(2, 5, 7, 9, 3, 1), (1, 3, 11, 6, 3, 2), (2, 4, 1, 1, 2, 1), (1, 2, 5, 13, 1, 3),
                     (1, 3, 4, 4, 3, 2), (3, 6, 9, 17, 4, 1), (1, 7, 10, 3, 0, 1)]


@pytest.mark.parametrize("case", CORRELATION_CASES, ids=lambda c: "b{}_c{}_{}x{}_d{}_s{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.usefixtures("correlation_path")
def test_correlation_matches_reference(case, dtype):
    batch, channels, height, width, d, s = case
    f1, f2 = torch.randn(2, batch, channels, height, width, dtype=dtype).unbind(0)
    size = 2 * d + 1
    grad_out = torch.randn(batch, size * size, -(-height // s), -(-width // s), dtype=dtype)

    def run(fn, a, b, g):
        return grads(lambda x, y: fn(x, y, d, s), (a, b), (0, 1), g)

    expected = run(reference.correlation, f1.double(), f2.double(), grad_out.double())
    actual = run(cpu.correlation, f1, f2, grad_out)
    tol = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_TOL
    for name, a, e in zip(("out", "grad_f1", "grad_f2"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=tol, msg=name)


@pytest.mark.usefixtures("correlation_path")
def test_correlation_non_contiguous_inputs():
    f1 = torch.randn(2, 4, 10, 11, dtype=torch.float64).transpose(1, 2)[:, ::2]  # (2, 5, 4, 11) strided
    assert not f1.is_contiguous()
    f2 = torch.randn(2, 5, 4, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cpu.correlation(f1, f2, 3, 2), reference.correlation(f1, f2, 3, 2),
                               atol=FLOAT64_TOL, rtol=FLOAT64_TOL)


@pytest.mark.parametrize("d, s", [(3, 1), (2, 2)])
@pytest.mark.usefixtures("correlation_path")
def test_correlation_gradcheck(d, s):
    f1 = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(2, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cpu.correlation(a, b, d, s), (f1, f2), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("correlation_path")
def test_correlation_low_precision(dtype):
    f1, f2 = (torch.randn(2, 1, 6, 5, 7) * 0.5).to(dtype).unbind(0)
    out = cpu.correlation(f1, f2, 2, 1)
    assert out.dtype == dtype
    tol = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(out.double(), reference.correlation(f1.double(), f2.double(), 2, 1), atol=tol, rtol=tol)


# ------------------------------------------------------------------------------------------------------ dispatch

@pytest.mark.skipif(not cpu_native.AVAILABLE or not hasattr(__import__("os"), "fork"), reason="numba, fork")
def test_native_kernels_run_in_a_forked_child_after_the_parent_used_its_threads():
    """The thread pools do not survive a fork (their threads stay in the parent): a child must get new ones."""
    import multiprocessing

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        f1 = torch.randn(1, 2 * cpu_native.MIN_CHANNELS_PER_THREAD, 9, 8)  # > ALL_PAIRS_MAX_PIXELS: compiled
        cpu.correlation(f1, f1, 1, 1)  # the parent starts a pool's thread
        child = multiprocessing.get_context("fork").Process(target=cpu.correlation, args=(f1, f1, 1, 1))
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0, "the forked child hung or failed running a native kernel"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not cpu_native.AVAILABLE, reason="numba is not installed")
def test_native_correlation_splits_rows_and_channels_across_threads():
    """Forward bands of image rows and backward bands of channels on several threads give the reference's values
    and gradients."""
    f1 = torch.randn(2, 2 * cpu_native.MIN_CHANNELS_PER_THREAD + 3, 9, 11, dtype=torch.float64)
    f2 = torch.randn_like(f1)
    grad_out = torch.randn(2, 25, 9, 11, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert len(cpu_native.bands(f1.shape[1], cpu_native.MIN_CHANNELS_PER_THREAD)) == 2
        actual = grads(lambda a, b: cpu.correlation(a, b, 2, 1), (f1, f2), (0, 1), grad_out)
    finally:
        torch.set_num_threads(threads)
    expected = grads(lambda a, b: reference.correlation(a, b, 2, 1), (f1, f2), (0, 1), grad_out)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=FLOAT64_TOL, rtol=FLOAT64_TOL)


@pytest.mark.usefixtures("correlation_path")
def test_correlation_output_can_be_modified_in_place_under_autograd():
    """LiteFlowNet applies an in-place leaky ReLU to the cost volume: the output must not be a view."""
    f1, f2 = torch.randn(1, 4, 6, 7, requires_grad=True), torch.randn(1, 4, 6, 7, requires_grad=True)
    torch.nn.functional.leaky_relu_(cpu.correlation(f1, f2, 2, 1), 0.1).sum().backward()
    assert f1.grad is not None and f2.grad is not None


@pytest.mark.usefixtures("pixel_volume_path")
def test_pixel_volume_output_can_be_modified_in_place_under_autograd():
    image, fill = torch.rand(1, 3, 5, 6, requires_grad=True), torch.rand(1, 3, 5, 6, requires_grad=True)
    cpu.pixel_volume(image, torch.randn(1, 2, 5, 6), fill, 3).mul_(2).sum().backward()
    assert image.grad is not None and fill.grad is not None


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build registers the ops at import, by design")
def test_a_cpu_only_process_registers_the_triton_ops_only_when_they_run():
    """Outside the interpreter and with a CPU build of torch, importing and running the ops on CPU tensors loads none of
    torch's compiler stack (registering a triton_op costs ~1 s of imports); the op registers on first use."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "import pvd.kernels as k\n"
        "x, flow = torch.randn(1, 3, 6, 7), torch.randn(1, 2, 6, 7)\n"
        "k.correlation(x, x, 1, 1); k.warp(x, flow); k.pixel_volume(x, flow, x)\n"
        "assert 'torch._dynamo' not in sys.modules, 'the compiler stack was loaded'\n"
        "assert not hasattr(torch.ops.pvd, 'correlation')\n"
        "sys.modules['pvd.kernels.correlation']._correlation_op.op()\n"
        "assert hasattr(torch.ops.pvd, 'correlation')\n")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def test_public_ops_run_the_cpu_ops_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    calls = []
    for name in ("warp", "correlation", "pixel_volume"):
        original = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    x, flow = torch.randn(1, 3, 6, 8), torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(kernels.warp(x, flow), reference.warp(x, flow))
    torch.testing.assert_close(kernels.correlation(x, x, 2, 1), reference.correlation(x, x, 2, 1))
    assert torch.equal(kernels.pixel_volume(x, flow, x), reference.pixel_volume(x, flow, x, 5))
    assert calls == ["warp", "correlation", "pixel_volume"]


def test_compiled_kernels_switch_routes_the_ops_and_restores(monkeypatch):
    """`compiled_kernels(False)` sends the CPU ops to the eager formulations inside the block only; the
    choice by job size is `compiled_pays_off` (unknown size: compiled)."""
    if not cpu_native.AVAILABLE:
        pytest.skip("numba is not installed: only the eager CPU ops can run")
    calls = []
    for entry in ("pixel_volume", "correlation_of_samples"):
        native = getattr(cpu_native, entry)
        monkeypatch.setattr(cpu_native, entry, lambda *a, _native=native, _entry=entry: calls.append(_entry)
                            or _native(*a))
    x, flow = torch.randn(1, 3, 9, 8), torch.randn(1, 2, 9, 8)  # 72 pixels > ALL_PAIRS_MAX_PIXELS

    def run():
        calls.clear()
        out = cpu.pixel_volume(x, flow, x, 5), cpu.correlation(x, x, 2, 1)
        return list(calls), out

    compiled_calls, compiled = run()
    with cpu.compiled_kernels(False):
        eager_calls, eager = run()
        with cpu.compiled_kernels(True):
            assert run()[0] == ["pixel_volume", "correlation_of_samples"]
        assert run()[0] == []
    assert compiled_calls == ["pixel_volume", "correlation_of_samples"] and eager_calls == []
    assert run()[0] == compiled_calls  # restored after the block
    assert torch.equal(eager[0], compiled[0])
    torch.testing.assert_close(eager[1], compiled[1])
    assert cpu.compiled_pays_off(None) and cpu.compiled_pays_off(cpu.COMPILED_MIN_JOB_PIXELS)
    assert not cpu.compiled_pays_off(cpu.COMPILED_MIN_JOB_PIXELS - 1)


def test_warp_grid_cache_serves_inference_and_autograd_alike():
    x, flow = torch.randn(1, 2, 5, 7), torch.randn(1, 2, 5, 7)
    cpu._GRID_CACHE.clear()
    with torch.inference_mode():
        cpu.warp(x, flow)
    x.requires_grad_()
    cpu.warp(x, flow).sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(reference.warp(x, flow).sum(), x)[0])
