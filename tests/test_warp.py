"""pvd.kernels.warp (Triton; the interpreter on CPU) against the float64 reference and F.grid_sample."""

import pytest
import torch
import torch.nn.functional as F

from pvd.kernels import reference, warp
from pvd.kernels._common import use_triton

# (B, C, H, W): none a multiple of the 256-pixel block; 1x1, tall and thin, wide and flat.
SHAPES = [(2, 3, 7, 9), (1, 1, 1, 1), (1, 2, 13, 1), (3, 2, 1, 11), (2, 4, 17, 5)]

# Low precision: inputs are rounded to the dtype, the sample position too, so compare loosely.
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def random_flow(batch, height, width, device, dtype=torch.float64, scale=3.0):
    """Flows mostly within a few pixels, some far outside the image."""
    flow = torch.randn(batch, 2, height, width, dtype=dtype, device=device) * scale
    far = torch.rand(batch, 1, height, width, device=device) < 0.15
    return torch.where(far, flow * 1e4, flow)


def grads(fn, inputs, grad_out):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad_out))


def to_leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_()


def test_triton_path_is_taken(device):
    assert use_triton(torch.zeros(1, device=device))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_match_reference(device, shape, dtype):
    batch, channels, height, width = shape
    x = torch.randn(shape, dtype=torch.float64, device=device)
    flow = random_flow(batch, height, width, device)
    grad_out = torch.randn(shape, dtype=torch.float64, device=device)
    expected = grads(reference.warp, (to_leaf(x, torch.float64), to_leaf(flow, torch.float64)), grad_out)
    actual = grads(warp, (to_leaf(x, dtype), to_leaf(flow, dtype)), grad_out.to(dtype))
    tol = 1e-12 if dtype == torch.float64 else TOLERANCES[dtype]
    for name, a, e in zip(("out", "grad_x", "grad_flow"), actual, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_matches_reference(device, dtype):
    shape = (2, 3, 6, 10)
    x = torch.randn(shape, device=device).to(dtype)
    # Quarter-pixel flows are exact in both formats, so only the arithmetic differs.
    flow = (torch.randint(-12, 12, (2, 2, 6, 10), device=device) / 4).to(dtype)
    grad_out = torch.randn(shape, device=device).to(dtype)
    expected = grads(reference.warp, (to_leaf(x, torch.float64), to_leaf(flow, torch.float64)), grad_out.double())
    actual = grads(warp, (to_leaf(x, dtype), to_leaf(flow, dtype)), grad_out)
    tol = TOLERANCES[dtype]
    for name, a, e in zip(("out", "grad_x", "grad_flow"), actual, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, atol=tol * 4, rtol=tol, msg=name)


def test_matches_grid_sample(device):
    batch, channels, height, width = 2, 3, 8, 11
    x = torch.randn(batch, channels, height, width, dtype=torch.float64, device=device)
    flow = torch.randn(batch, 2, height, width, dtype=torch.float64, device=device) * 4
    xs = torch.linspace(-1, 1, width, dtype=torch.float64, device=device).view(1, 1, width).expand(batch, height, width)
    ys = torch.linspace(-1, 1, height, dtype=torch.float64, device=device).view(1, height, 1).expand(batch, height, width)
    grid = torch.stack([xs + flow[:, 0] * 2 / (width - 1), ys + flow[:, 1] * 2 / (height - 1)], dim=-1)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(warp(x, flow), expected, atol=1e-12, rtol=1e-12)


def test_non_contiguous_inputs(device):
    base = torch.randn(2, 9, 8, 5, dtype=torch.float64, device=device)
    x = base.permute(0, 1, 3, 2)[:, ::3]  # (2, 3, 5, 8), strided in every dimension
    flow_base = torch.randn(2, 8, 5, 4, dtype=torch.float64, device=device) * 2
    flow = flow_base.permute(0, 3, 2, 1)[:, 1:3]  # (2, 2, 5, 8)
    assert not x.is_contiguous() and not flow.is_contiguous()
    grad_out = torch.randn(2, 3, 5, 8, dtype=torch.float64, device=device)
    expected = grads(reference.warp, (to_leaf(x, torch.float64), to_leaf(flow, torch.float64)), grad_out)
    x_leaf, flow_leaf = x.detach().requires_grad_(), flow.detach().requires_grad_()
    actual = grads(warp, (x_leaf, flow_leaf), grad_out.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)
    x_cl = torch.randn(1, 4, 6, 7, device=device).to(memory_format=torch.channels_last)
    flow_cl = torch.randn(1, 2, 6, 7, device=device)
    torch.testing.assert_close(warp(x_cl, flow_cl), reference.warp(x_cl.contiguous(), flow_cl))


def test_non_finite_flow_gives_zero_and_zero_gradient(device):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=device)
    flow = torch.zeros(1, 2, 5, 6, dtype=torch.float64, device=device)
    bad = [(0, 1, 1, float("nan")), (1, 2, 2, float("inf")), (0, 3, 4, float("-inf")), (0, 0, 0, 1e300)]
    for channel, y, x_pos, value in bad:
        flow[0, channel, y, x_pos] = value
    x_leaf, flow_leaf = x.clone().requires_grad_(), flow.clone().requires_grad_()
    out = warp(x_leaf, flow_leaf)
    out.backward(torch.ones_like(out))
    for _, y, x_pos, _ in bad:
        assert torch.all(out[0, :, y, x_pos] == 0)
        assert torch.all(flow_leaf.grad[0, :, y, x_pos] == 0)
    assert torch.isfinite(out).all() and torch.isfinite(x_leaf.grad).all() and torch.isfinite(flow_leaf.grad).all()
    # Elsewhere the flow is zero: identity.
    keep = torch.ones(5, 6, dtype=torch.bool, device=device)
    for _, y, x_pos, _ in bad:
        keep[y, x_pos] = False
    torch.testing.assert_close(out[0][:, keep], x[0][:, keep])


def test_gradcheck_through_triton(device):
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    # Keep sample positions away from integer grid lines, where bilinear interpolation has kinks.
    flow = (torch.randint(-3, 3, (2, 2, 3, 4), device=device) + 0.25 + 0.5 * torch.rand(2, 2, 3, 4, device=device))
    flow = flow.double().requires_grad_()
    assert torch.autograd.gradcheck(warp, (x, flow), fast_mode=True)


def test_compiles_without_graph_breaks(device):
    backend = "inductor" if device == "cuda" else "eager"
    x = torch.randn(1, 3, 5, 7, device=device, requires_grad=True)
    flow = torch.randn(1, 2, 5, 7, device=device)

    def step(x, flow):
        return (warp(x, flow) * 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss = compiled(x, flow)
    loss.backward()
    torch.testing.assert_close(loss, step(x, flow))
    expected_grad, = torch.autograd.grad(step(x, flow), x)
    torch.testing.assert_close(x.grad, expected_grad)


@pytest.mark.parametrize("case, match", [
    (lambda d: (torch.zeros(3, 4, 5, device=d), torch.zeros(1, 2, 4, 5, device=d)), "x must have 4 dimensions"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 3, 4, 5, device=d)), "flow must have 2 channels"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 2, 4, 6, device=d)), "share batch, height and width"),
    (lambda d: (torch.zeros(2, 3, 4, 5, device=d), torch.zeros(1, 2, 4, 5, device=d)), "share batch, height and width"),
    (lambda d: (torch.zeros(1, 3, 4, 5, device=d), torch.zeros(1, 2, 4, 5, device=d).double()), "dtype"),
    (lambda d: (torch.zeros(1, 3, 4, 5, dtype=torch.int32, device=d), torch.zeros(1, 2, 4, 5, device=d)), "dtype"),
    (lambda d: (torch.zeros(1, 3, 0, 5, device=d), torch.zeros(1, 2, 0, 5, device=d)), "empty"),
    (lambda d: ([[0.0]], torch.zeros(1, 2, 4, 5, device=d)), "torch.Tensor"),
])
def test_invalid_input_raises(device, case, match):
    with pytest.raises(ValueError, match=match):
        warp(*case(device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_coordinates_beyond_256_pixels(device, dtype):
    # bfloat16 holds integers exactly only up to 256 (float16: 2048): sample positions must be formed in float32.
    x = torch.randn(1, 2, 2, 2100, device=device).to(dtype)
    flow = torch.zeros(1, 2, 2, 2100, device=device, dtype=dtype)
    flow[:, 0] = 1.0
    expected = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=-1)
    torch.testing.assert_close(warp(x, flow), expected, atol=0, rtol=0)
    torch.testing.assert_close(reference.warp(x, flow), expected, atol=0, rtol=0)
