"""pvd.kernels.correlation (Triton; the interpreter on CPU) against the float64 reference and a direct loop.

Most tests run both kernel designs (`design` fixture: PVD_CORRELATION_KERNEL=tiled, the default, and legacy).
"""

import importlib

import pytest
import torch

from pvd.kernels import correlation, reference
from pvd.kernels._common import use_triton

correlation_module = importlib.import_module("pvd.kernels.correlation")
legacy_module = importlib.import_module("pvd.kernels._correlation_legacy")
DESIGNS = ("tiled", "legacy")

# (B, C, H, W), max_displacement, stride. The legacy kernels tile 128 output pixels x 16 channels (8 in float64):
# 12 x 13 at stride 1 spans two pixel blocks, 19 and 21 channels span two channel blocks with a ragged tail.
# The tiled kernels cover 8 x 32 grid pixels per program: TILED_CASES below span several tiles in both
# directions with ragged edges. The interpreter is slow, so d = 3 (49 planes) runs on the smallest images.
CASES = [
    ((1, 3, 7, 9), 3, 1),
    ((1, 3, 6, 7), 3, 2),
    ((2, 2, 10, 7), 1, 3),
    ((2, 3, 5, 6), 0, 1),
    ((1, 2, 1, 1), 1, 1),     # 1 x 1 image: every displacement but (0, 0) falls outside
    ((1, 2, 13, 1), 1, 1),    # tall and thin
    ((1, 2, 1, 12), 1, 2),    # wide and flat
    ((1, 19, 4, 5), 1, 2),
    ((1, 21, 12, 13), 1, 1),
]
LOW_PRECISION_CASE = ((2, 19, 5, 6), 1, 1)
# Tiled design: 17 x 66 grid pixels at stride 1 = 3 x 3 tiles (rows 8 + 8 + 1, columns 32 + 32 + 2), 17 x 33
# at stride 2 = 3 x 2 tiles; d = 4 takes its dy rows in several passes (DY_BLOCK < 9), as float64 does at d = 3.
TILED_CASES = [
    ((1, 2, 17, 66), 3, 1),
    ((1, 2, 33, 66), 3, 2),
    ((2, 2, 9, 35), 4, 1),
    ((1, 2, 18, 40), 4, 2),
    ((1, 2, 10, 9), 2, 3),
    ((2, 3, 9, 33), 0, 1),
]

# Low precision: inputs and grad_out are rounded to the dtype before the float64 reference sees them and the
# kernels accumulate in float32, so only the final rounding of each output differs: allow two units of
# roundoff (relative), and the same absolute slack for values near zero (outputs here are O(0.1..1)).
LOW_PRECISION_TOLERANCE = {dtype: 2 * torch.finfo(dtype).eps for dtype in (torch.float16, torch.bfloat16)}
FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-12


def output_shape(shape, max_displacement, stride):
    batch, _, height, width = shape
    size = 2 * max_displacement + 1
    return batch, size * size, -(-height // stride), -(-width // stride)


def grads(fn, inputs, grad_out, max_displacement, stride):
    out = fn(*inputs, max_displacement, stride)
    return (out, *torch.autograd.grad(out, inputs, grad_out))


def to_leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_()


def check_against_reference(f1, f2, grad_out, max_displacement, stride, tol):
    """Forward, grad_f1 and grad_f2 of the Triton op vs the float64 reference on the same (rounded) values."""
    dtype = f1.dtype
    expected = grads(reference.correlation, (to_leaf(f1, torch.float64), to_leaf(f2, torch.float64)),
                     grad_out.double(), max_displacement, stride)
    actual = grads(correlation, (to_leaf(f1, dtype), to_leaf(f2, dtype)), grad_out, max_displacement, stride)
    for name, a, e in zip(("out", "grad_f1", "grad_f2"), actual, expected):
        assert a.dtype == dtype, name
        assert a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=tol, msg=name)


@pytest.fixture(params=DESIGNS)
def design(request, monkeypatch):
    """Runs the test with PVD_CORRELATION_KERNEL set to each kernel design."""
    monkeypatch.setenv(correlation_module.KERNEL_ENV, request.param)
    return request.param


def test_triton_path_is_taken(device):
    assert use_triton(torch.zeros(1, device=device))


def test_kernel_design_selection(device, monkeypatch):
    """The variable is read at each call: unset or empty means tiled; each design runs its own launcher."""
    launched = []
    for name, module, attribute in (("tiled", correlation_module, "_tiled_forward"),
                                    ("legacy", legacy_module, "forward"),
                                    ("tiled backward", correlation_module, "_tiled_backward"),
                                    ("legacy backward", legacy_module, "backward")):
        original = getattr(module, attribute)
        monkeypatch.setattr(module, attribute, lambda *args, _name=name, _original=original: (
            launched.append(_name), _original(*args))[1])
    f1 = torch.randn(1, 2, 4, 5, device=device, requires_grad=True)
    f2 = torch.randn(1, 2, 4, 5, device=device)
    monkeypatch.delenv(correlation_module.KERNEL_ENV, raising=False)
    assert correlation_module.kernel_design() == "tiled"
    correlation(f1, f2, 1, 1).sum().backward()
    monkeypatch.setenv(correlation_module.KERNEL_ENV, "")
    assert correlation_module.kernel_design() == "tiled"
    monkeypatch.setenv(correlation_module.KERNEL_ENV, "legacy")
    assert correlation_module.kernel_design() == "legacy"
    correlation(f1, f2, 1, 1).sum().backward()
    assert launched == ["tiled", "tiled backward", "legacy", "legacy backward"]


def test_unknown_kernel_design_raises(device, monkeypatch):
    monkeypatch.setenv(correlation_module.KERNEL_ENV, "fastest")
    with pytest.raises(ValueError, match="PVD_CORRELATION_KERNEL='fastest'"):
        correlation(torch.zeros(1, 2, 4, 5, device=device), torch.zeros(1, 2, 4, 5, device=device))


def test_matches_direct_loop(device, design):
    """The definition evaluated element by element, independent of the vectorised reference."""
    batch, channels, height, width, d, s = 1, 3, 5, 7, 2, 2
    f1 = torch.randn(batch, channels, height, width, dtype=torch.float64, device=device)
    f2 = torch.randn(batch, channels, height, width, dtype=torch.float64, device=device)
    out = correlation(f1, f2, d, s).cpu()
    size = 2 * d + 1
    assert out.shape == (batch, size * size, 3, 4)
    f1, f2 = f1.cpu(), f2.cpu()
    for b in range(batch):
        for y in range(out.shape[2]):
            for x in range(out.shape[3]):
                for dy in range(-d, d + 1):
                    for dx in range(-d, d + 1):
                        qy, qx = s * y + s * dy, s * x + s * dx
                        inside = 0 <= qy < height and 0 <= qx < width
                        value = (f1[b, :, s * y, s * x] * f2[b, :, qy, qx]).sum() / channels if inside else 0.0
                        assert abs(out[b, (dy + d) * size + (dx + d), y, x] - value) < 1e-12, (b, y, x, dy, dx)


@pytest.mark.parametrize("shape, max_displacement, stride", CASES)
def test_forward_and_gradients_match_reference_float32(device, design, shape, max_displacement, stride):
    f1 = torch.randn(shape, device=device)
    f2 = torch.randn(shape, device=device)
    grad_out = torch.randn(output_shape(shape, max_displacement, stride), device=device)
    check_against_reference(f1, f2, grad_out, max_displacement, stride, FLOAT32_TOLERANCE)


@pytest.mark.parametrize("shape, max_displacement, stride", [CASES[2], CASES[7]])
def test_forward_and_gradients_match_reference_float64(device, design, shape, max_displacement, stride):
    f1 = torch.randn(shape, dtype=torch.float64, device=device)
    f2 = torch.randn(shape, dtype=torch.float64, device=device)
    grad_out = torch.randn(output_shape(shape, max_displacement, stride), dtype=torch.float64, device=device)
    check_against_reference(f1, f2, grad_out, max_displacement, stride, FLOAT64_TOLERANCE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_reference(device, design, dtype):
    shape, max_displacement, stride = LOW_PRECISION_CASE
    f1 = torch.randn(shape, device=device).to(dtype)
    f2 = torch.randn(shape, device=device).to(dtype)
    grad_out = torch.randn(output_shape(shape, max_displacement, stride), device=device).to(dtype)
    check_against_reference(f1, f2, grad_out, max_displacement, stride, LOW_PRECISION_TOLERANCE[dtype])


def test_non_contiguous_inputs(device, design):
    base1 = torch.randn(2, 9, 8, 6, dtype=torch.float64, device=device)
    base2 = torch.randn(2, 6, 8, 3, dtype=torch.float64, device=device)
    f1 = base1.permute(0, 1, 3, 2)[:, ::3, :, 1:]  # (2, 3, 6, 7), strided in every dimension
    f2 = base2.permute(0, 3, 1, 2)[:, :, :, 1:]    # (2, 3, 6, 7)
    assert f1.shape == f2.shape == (2, 3, 6, 7)
    assert not f1.is_contiguous() and not f2.is_contiguous()
    d, s = 1, 2
    grad_out = torch.randn(2, 9, 4, 6, dtype=torch.float64, device=device).permute(0, 1, 3, 2)[:, :, ::2]
    assert grad_out.shape == output_shape(f1.shape, d, s) and not grad_out.is_contiguous()
    expected = grads(reference.correlation, (to_leaf(f1, torch.float64), to_leaf(f2, torch.float64)),
                     grad_out, d, s)
    actual = grads(correlation, (f1.detach().requires_grad_(), f2.detach().requires_grad_()), grad_out, d, s)
    for name, a, e in zip(("out", "grad_f1", "grad_f2"), actual, expected):
        torch.testing.assert_close(a, e, atol=FLOAT64_TOLERANCE, rtol=FLOAT64_TOLERANCE, msg=name)
    # channels_last f1 and a broadcast (stride-0) grad_out, as `out.sum().backward()` produces.
    f1_cl = torch.randn(1, 4, 6, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    f2_plain = torch.randn(1, 4, 6, 5, device=device, requires_grad=True)
    correlation(f1_cl, f2_plain, 1, 1).sum().backward()
    f1_ref, f2_ref = to_leaf(f1_cl, torch.float64), to_leaf(f2_plain, torch.float64)
    reference.correlation(f1_ref, f2_ref, 1, 1).sum().backward()
    torch.testing.assert_close(f1_cl.grad.double(), f1_ref.grad, atol=FLOAT32_TOLERANCE, rtol=FLOAT32_TOLERANCE)
    torch.testing.assert_close(f2_plain.grad.double(), f2_ref.grad, atol=FLOAT32_TOLERANCE, rtol=FLOAT32_TOLERANCE)


def test_backward_is_deterministic(device, design):
    f1 = torch.randn(1, 20, 9, 10, device=device, requires_grad=True)
    f2 = torch.randn(1, 20, 9, 10, device=device, requires_grad=True)
    grad_out = torch.randn(1, 9, 5, 5, device=device)
    first = grads(correlation, (f1, f2), grad_out, 1, 2)
    second = grads(correlation, (f1, f2), grad_out, 1, 2)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("max_displacement, stride", [(1, 1), (1, 2)])
def test_gradcheck_through_triton(device, design, max_displacement, stride):
    """Checks the Jacobian-vector products w.r.t. f1 and w.r.t. f2 (both inputs require grad)."""
    f1 = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    f2 = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: correlation(a, b, max_displacement, stride), (f1, f2),
                                    fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, max_displacement, stride", TILED_CASES)
def test_tiled_matches_reference_across_tiles(device, monkeypatch, dtype, shape, max_displacement, stride):
    """The tiled kernels on images spanning several tiles with ragged edges, batch > 1, d = 0..4, every dtype."""
    monkeypatch.setenv(correlation_module.KERNEL_ENV, "tiled")
    f1 = torch.randn(shape, device=device).to(dtype)
    f2 = torch.randn(shape, device=device).to(dtype)
    grad_out = torch.randn(output_shape(shape, max_displacement, stride), device=device).to(dtype)
    tolerance = {torch.float64: FLOAT64_TOLERANCE, torch.float32: FLOAT32_TOLERANCE, **LOW_PRECISION_TOLERANCE}
    check_against_reference(f1, f2, grad_out, max_displacement, stride, tolerance[dtype])


def test_tiled_backward_writes_every_entry(device):
    """The tiled backward fills its (uninitialised) gradient buffers itself: off the stride grid with zeros."""
    shape, max_displacement, stride = (2, 3, 10, 11), 1, 3
    f1 = torch.randn(shape, dtype=torch.float64, device=device)
    f2 = torch.randn(shape, dtype=torch.float64, device=device)
    grad_out = torch.randn(output_shape(shape, max_displacement, stride), dtype=torch.float64, device=device)
    grad_f1, grad_f2 = (torch.full(shape, float("nan"), dtype=torch.float64, device=device) for _ in range(2))
    correlation_module._tiled_backward(f1, f2, grad_out, max_displacement, stride, grad_f1, grad_f2)
    expected = grads(reference.correlation, (to_leaf(f1, torch.float64), to_leaf(f2, torch.float64)), grad_out,
                     max_displacement, stride)[1:]
    on_grid = torch.zeros(shape[2:], dtype=torch.bool, device=device)
    on_grid[::stride, ::stride] = True
    for name, actual, reference_grad in zip(("grad_f1", "grad_f2"), (grad_f1, grad_f2), expected):
        assert torch.all(actual[..., ~on_grid] == 0), name
        torch.testing.assert_close(actual, reference_grad, atol=FLOAT64_TOLERANCE, rtol=FLOAT64_TOLERANCE, msg=name)


def test_compiles_without_graph_breaks(device):
    backend = "inductor" if device == "cuda" else "eager"
    f1 = torch.randn(1, 3, 5, 7, device=device, requires_grad=True)
    f2 = torch.randn(1, 3, 5, 7, device=device, requires_grad=True)

    def step(f1, f2):
        return (torch.nn.functional.leaky_relu(correlation(f1, f2, 2, 2), 0.1) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss = compiled(f1, f2)
    loss.backward()
    torch.testing.assert_close(loss, step(f1, f2))
    expected = torch.autograd.grad(step(f1, f2), (f1, f2))
    torch.testing.assert_close(f1.grad, expected[0])
    torch.testing.assert_close(f2.grad, expected[1])


@pytest.mark.parametrize("case, match", [
    (lambda d: (torch.zeros(3, 4, 5, device=d), torch.zeros(3, 4, 5, device=d)), "f1 must have 4 dimensions"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(3, 4, 5, device=d)), "f2 must have 4 dimensions"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 2, 4, 5, device=d)), "same channel count"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 3, 4, 6, device=d)), "share batch, height"),
    (lambda d: (torch.zeros(2, 3, 4, 5, device=d), torch.zeros(1, 3, 4, 5, device=d)), "share batch, height"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 3, 4, 5, device=d).double()), "dtype"),
    (lambda d: (torch.zeros(1, 3, 4, 5, dtype=torch.int32, device=d),) * 2, "dtype"),
    (lambda d: (torch.zeros(1, 3, 0, 5, device=d),) * 2, "empty"),
    (lambda d: ([[0.0]], torch.zeros(1, 3, 4, 5, device=d)), "torch.Tensor"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d),) * 2 + (-1,), "max_displacement"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d),) * 2 + (1.5,), "max_displacement"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d),) * 2 + (True,), "max_displacement"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d),) * 2 + (3, 0), "stride"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d),) * 2 + (3, 2.0), "stride"),
])
def test_invalid_input_raises(device, case, match):
    with pytest.raises(ValueError, match=match):
        correlation(*case(device))
