"""pvd.kernels.pixel_volume (Triton; the interpreter on CPU) against the float64 reference and a literal,
loop-based transcription of the original algorithm (gray candidates looked up where the neighbours' truncated
flows point, fill's gray near the border)."""

import pytest
import torch
import torch.nn.functional as F

from pvd.kernels import pixel_volume, reference
from pvd.kernels._common import use_triton

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # the original's RGB -> gray weights
# Flow values that overflow an int cast, or are not numbers: each must yield fill (or 0), never a bad read.
EXTREME_FLOWS = (1e6, -1e6, 1e30, -1e30, float("nan"), float("inf"), float("-inf"))

# (B, image channels, fill channels, H, W, kernel_size, dtype): no H*W a multiple of the 256-pixel block
# (17x16 spans two blocks); 1x1, tall and thin, wide and flat; RGB and gray inputs; k = 1, 3, 5, 7.
CASES = [
    (2, 3, 3, 7, 9, 5, torch.float64),
    (2, 3, 3, 7, 9, 5, torch.float32),
    (1, 3, 3, 1, 1, 3, torch.float64),
    (1, 3, 1, 1, 9, 3, torch.float32),
    (1, 1, 3, 11, 2, 7, torch.float64),
    (1, 1, 1, 6, 5, 1, torch.float32),
    (1, 3, 3, 17, 16, 3, torch.float64),
]

# Low precision: the gray values are computed in float32 and rounded once to the output dtype.
LOW_PRECISION_TOLERANCES = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_flow(batch, height, width, device, dtype=torch.float64, step=0.125, extreme_fraction=0.15):
    """Flows of a few pixels on a grid of `step` (exact in `dtype`, so x + flow is exact), some extreme."""
    flow = torch.round(torch.randn(batch, 2, height, width, device=device) * 3 / step) * step
    pick = torch.randint(len(EXTREME_FLOWS), flow.shape, device=device)
    extreme = torch.tensor(EXTREME_FLOWS, dtype=torch.float64, device=device)[pick]
    far = torch.rand(flow.shape, device=device) < extreme_fraction
    return torch.where(far, extreme, flow.double()).to(dtype)


def gray(x):
    """(B, 3 or 1, H, W) -> (B, H, W) gray, written out from the weights above."""
    if x.shape[1] == 1:
        return x[:, 0]
    return GRAY_WEIGHTS[0] * x[:, 0] + GRAY_WEIGHTS[1] * x[:, 1] + GRAY_WEIGHTS[2] * x[:, 2]


def transcribed_pixel_volume(image, flow, fill, kernel_size, to_int=lambda t: t.to(torch.int64)):
    """The original's algorithm step by step: one pass per offset (i, j), i along x (outer), j along y.

    Each pass: integer target of every pixel's own flow plus (i, j); clamp it into the image; nearest lookup;
    border mask where the unclamped target is off [1, W-2] x [1, H-2]; move lookup and mask from the
    neighbour q to p = q + (j, i) with zero padding; fill's gray where masked. `to_int` is the float -> int
    cast (truncation toward zero, like C's cast).
    """
    gray_image, gray_fill = gray(image.double()), gray(fill.double())
    batch, height, width = gray_fill.shape
    half = kernel_size // 2
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device), torch.arange(width, device=flow.device),
                            indexing="ij")
    flow = flow.double()
    finite = torch.isfinite(flow).all(dim=1)
    # The cast of a huge or non-finite value is undefined: park those far outside first (still masked).
    far = 1e9
    target_x = torch.where(finite, xs + flow[:, 0], -far).clamp(-far, far)
    target_y = torch.where(finite, ys + flow[:, 1], -far).clamp(-far, far)
    batch_index = torch.arange(batch, device=flow.device).view(batch, 1, 1)
    planes = []
    for i in range(-half, half + 1):
        for j in range(-half, half + 1):
            x0_unclamped = to_int(target_x) + i
            y0_unclamped = to_int(target_y) + j
            x0 = x0_unclamped.clamp(0, width - 1)
            y0 = y0_unclamped.clamp(0, height - 1)
            looked_up = gray_image[batch_index, y0, x0]
            mask = ((x0_unclamped < 1) | (x0_unclamped > width - 2) | (y0_unclamped < 1)
                    | (y0_unclamped > height - 2) | ~finite).double()
            mask = F.pad(mask, (half, half, half, half))[:, half - j:half - j + height, half - i:half - i + width]
            looked_up = F.pad(looked_up, (half, half, half, half))[:, half - j:half - j + height,
                                                                  half - i:half - i + width]
            planes.append(looked_up * (1 - mask) + gray_fill * mask)
    return torch.stack(planes, dim=1)


def forward_and_grads(fn, image, flow, fill, kernel_size, grad_out):
    """(out, grad_image, grad_fill) of fn at leaf copies of image and fill."""
    image = image.detach().requires_grad_()
    fill = fill.detach().requires_grad_()
    out = fn(image, flow, fill, kernel_size)
    return (out, *torch.autograd.grad(out, (image, fill), grad_out))


def test_triton_path_is_taken(device):
    assert use_triton(torch.zeros(1, device=device))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_c{}{}_{}x{}_k{}_{}".format(*c[:6], str(c[6])[6:]))
def test_forward_and_gradients_match_reference(device, case):
    batch, image_channels, fill_channels, height, width, kernel_size, dtype = case
    image = torch.rand(batch, image_channels, height, width, device=device, dtype=dtype) * 2 - 1
    fill = torch.rand(batch, fill_channels, height, width, device=device, dtype=dtype) * 2 - 1
    flow = random_flow(batch, height, width, device, dtype)
    grad_out = torch.randn(batch, kernel_size ** 2, height, width, device=device, dtype=dtype)
    expected = forward_and_grads(reference.pixel_volume, image.double(), flow.double(), fill.double(), kernel_size,
                                 grad_out.double())
    actual = forward_and_grads(pixel_volume, image, flow, fill, kernel_size, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name, a, e in zip(("out", "grad_image", "grad_fill"), actual, expected):
        assert a.dtype == dtype and a.shape == e.shape, name
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=tol, msg=name)


def test_matches_literal_transcription_of_the_original(device):
    """Targets that land on -2.5 .. -0.25 and W-2.5 .. W+0.5, where truncation and flooring disagree."""
    batch, height, width, kernel_size = 2, 7, 8, 5
    image = torch.rand(batch, 3, height, width, dtype=torch.float64, device=device) * 2 - 1
    fill = torch.rand(batch, 3, height, width, dtype=torch.float64, device=device) * 2 - 1
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    landing_x = torch.tensor([-2.5, -1.5, -0.5, -0.25, 0.5, 1.5, width - 2.5, width - 1.5, width - 0.5, width + 0.5],
                             dtype=torch.float64, device=device)
    landing_y = torch.tensor([-1.5, -0.5, -0.75, 0.5, height - 1.5, height - 0.5, height + 0.5], dtype=torch.float64,
                             device=device)
    flow_x = landing_x[torch.randint(len(landing_x), (batch, height, width), device=device)] - xs
    flow_y = landing_y[torch.randint(len(landing_y), (batch, height, width), device=device)] - ys
    flow = torch.stack([flow_x, flow_y], dim=1)
    flow = torch.where(torch.rand_like(flow) < 0.3, random_flow(batch, height, width, device), flow)
    expected = transcribed_pixel_volume(image, flow, fill, kernel_size)
    # The test can tell truncation from flooring on these flows.
    assert not torch.equal(expected, transcribed_pixel_volume(image, flow, fill, kernel_size, to_int=lambda t: torch.floor(t).to(torch.int64)))
    torch.testing.assert_close(pixel_volume(image, flow, fill, kernel_size), expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(reference.pixel_volume(image, flow, fill, kernel_size), expected, atol=1e-12,
                               rtol=1e-12)


@pytest.mark.parametrize("case", [c[:6] for c in CASES]
                         + [(3, 1, 3, 4, 13, 7), (2, 3, 3, 1, 1, 1), (2, 3, 3, 9, 8, 9)])
def test_reference_matches_literal_transcription(case):
    """The oracle itself, on CPU with no kernel: cheap, so more cases."""
    batch, image_channels, fill_channels, height, width, kernel_size = case
    image = torch.rand(batch, image_channels, height, width, dtype=torch.float64) * 2 - 1
    fill = torch.rand(batch, fill_channels, height, width, dtype=torch.float64) * 2 - 1
    flow = random_flow(batch, height, width, "cpu", step=0.25)
    torch.testing.assert_close(reference.pixel_volume(image, flow, fill, kernel_size),
                               transcribed_pixel_volume(image, flow, fill, kernel_size), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_and_non_finite_flows_use_fill(device, dtype):
    batch, height, width = 1, 4, len(EXTREME_FLOWS)
    image = torch.rand(batch, 3, height, width, device=device, dtype=dtype) * 2 - 1
    fill = torch.rand(batch, 3, height, width, device=device, dtype=dtype) * 2 - 1
    flow = torch.zeros(batch, 2, height, width, device=device, dtype=dtype)
    extreme = torch.tensor(EXTREME_FLOWS, device=device, dtype=dtype)
    flow[0, 0, 1] = extreme  # row 1: x component extreme; row 2: y component; the other rows have zero flow
    flow[0, 1, 2] = extreme
    out = pixel_volume(image, flow, fill, 1)
    expected_fill = gray(fill.double())[:, None]
    for row in (1, 2):
        torch.testing.assert_close(out[:, :, row].double(), expected_fill[:, :, row], atol=1e-6, rtol=1e-6)
    grad_out = torch.randn(batch, 9, height, width, device=device, dtype=dtype)
    actual = forward_and_grads(pixel_volume, image, flow, fill, 3, grad_out)
    expected = forward_and_grads(reference.pixel_volume, image.double(), flow.double(), fill.double(), 3,
                                 grad_out.double())
    torch.testing.assert_close(actual[0].double(), transcribed_pixel_volume(image, flow, fill, 3),
                               atol=1e-6, rtol=1e-6)
    for name, a, e in zip(("out", "grad_image", "grad_fill"), actual, expected):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), e, atol=1e-6, rtol=1e-6, msg=name)


def test_non_contiguous_inputs(device):
    base = torch.rand(2, 9, 8, 5, dtype=torch.float64, device=device) * 2 - 1
    image = base.permute(0, 1, 3, 2)[:, ::3]  # (2, 3, 5, 8), strided in every dimension
    fill = base.permute(0, 1, 3, 2)[:, 1:2]  # (2, 1, 5, 8)
    flow = random_flow(2, 8, 5, device, extreme_fraction=0.05).permute(0, 1, 3, 2)  # (2, 2, 5, 8)
    grad_out = torch.randn(2, 9, 8, 5, dtype=torch.float64, device=device).permute(0, 1, 3, 2)
    assert not any(t.is_contiguous() for t in (image, fill, flow, grad_out))
    expected = forward_and_grads(reference.pixel_volume, image.contiguous(), flow.contiguous(), fill.contiguous(), 3,
                                 grad_out.contiguous())
    actual = forward_and_grads(pixel_volume, image, flow, fill, 3, grad_out)
    for name, a, e in zip(("out", "grad_image", "grad_fill"), actual, expected):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12, msg=name)
    image_cl = image.float().contiguous(memory_format=torch.channels_last)
    flow_cl = flow.float().contiguous(memory_format=torch.channels_last)
    fill_cl = (torch.rand(2, 3, 5, 8, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pixel_volume(image_cl, flow_cl, fill_cl, 3),
                               reference.pixel_volume(image_cl.contiguous(), flow_cl.contiguous(),
                                                      fill_cl.contiguous(), 3), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("image_needs_grad, fill_needs_grad", [(True, False), (False, True), (True, True)])
def test_flow_gets_no_gradient(device, image_needs_grad, fill_needs_grad):
    image = (torch.rand(1, 3, 5, 6, dtype=torch.float64, device=device) * 2 - 1).requires_grad_(image_needs_grad)
    fill = (torch.rand(1, 3, 5, 6, dtype=torch.float64, device=device) * 2 - 1).requires_grad_(fill_needs_grad)
    flow = random_flow(1, 5, 6, device).requires_grad_()
    pixel_volume(image, flow, fill, 3).square().sum().backward()
    assert flow.grad is None or torch.count_nonzero(flow.grad) == 0
    assert (image.grad is not None) == image_needs_grad and (fill.grad is not None) == fill_needs_grad
    image_ref, fill_ref = image.detach().requires_grad_(), fill.detach().requires_grad_()
    reference.pixel_volume(image_ref, flow.detach(), fill_ref, 3).square().sum().backward()
    for name, leaf, ref in (("image", image, image_ref), ("fill", fill, fill_ref)):
        if leaf.grad is not None:
            torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-12, rtol=1e-12, msg=name)
    # Only the flow needs a gradient: the output still carries autograd, the flow gets nothing.
    flow.grad = None
    pixel_volume(image.detach(), flow, fill.detach(), 3).sum().backward()
    assert flow.grad is None or torch.count_nonzero(flow.grad) == 0


def test_gradcheck_through_triton(device):
    image = (torch.rand(1, 3, 4, 5, dtype=torch.float64, device=device) * 2 - 1).requires_grad_()
    fill = (torch.rand(1, 1, 4, 5, dtype=torch.float64, device=device) * 2 - 1).requires_grad_()
    flow = random_flow(1, 4, 5, device, extreme_fraction=0.1)
    assert torch.autograd.gradcheck(lambda i, f: pixel_volume(i, flow, f, 3), (image, fill), fast_mode=True)


@pytest.mark.parametrize("dtype, kernel_size", [(torch.float16, 5), (torch.bfloat16, 3)])
def test_low_precision_matches_reference(device, dtype, kernel_size):
    batch, height, width = 1, 6, 7
    image = (torch.rand(batch, 3, height, width, device=device) * 2 - 1).to(dtype)
    fill = (torch.rand(batch, 3, height, width, device=device) * 2 - 1).to(dtype)
    # Integers and halves are exact in both formats, so x + flow and its truncation are exact too.
    flow = random_flow(batch, height, width, device, dtype, step=0.5, extreme_fraction=0.1)
    grad_out = torch.randn(batch, kernel_size ** 2, height, width, device=device).to(dtype)
    expected = forward_and_grads(reference.pixel_volume, image.double(), flow.double(), fill.double(), kernel_size,
                                 grad_out.double())
    actual = forward_and_grads(pixel_volume, image, flow, fill, kernel_size, grad_out)
    tol = LOW_PRECISION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "grad_image", "grad_fill"), actual, expected):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), e, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("output", [{}, {"out_dtype": torch.bfloat16, "channels_last": True}],
                         ids=["default", "bf16_cl"])
def test_compiles_without_graph_breaks(device, output):
    backend = "inductor" if device == "cuda" else "eager"
    image = (torch.rand(1, 3, 5, 7, device=device) * 2 - 1).requires_grad_()
    fill = torch.rand(1, 3, 5, 7, device=device) * 2 - 1
    flow = random_flow(1, 5, 7, device, torch.float32)

    def step(image, flow, fill):
        return (pixel_volume(image, flow, fill, 3, **output).float() * 2).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss = compiled(image, flow, fill)
    loss.backward()
    torch.testing.assert_close(loss, step(image, flow, fill))
    expected_grad, = torch.autograd.grad(step(image, flow, fill), image)
    torch.testing.assert_close(image.grad, expected_grad)


def _inputs(device, image_shape=(1, 3, 4, 5), flow_shape=(1, 2, 4, 5), fill_shape=(1, 3, 4, 5), **dtypes):
    return (torch.zeros(image_shape, device=device, dtype=dtypes.get("image", torch.float32)),
            torch.zeros(flow_shape, device=device, dtype=dtypes.get("flow", torch.float32)),
            torch.zeros(fill_shape, device=device, dtype=dtypes.get("fill", torch.float32)))


@pytest.mark.parametrize("case, kernel_size, match", [
    (dict(image_shape=(3, 4, 5)), 5, "image must have 4 dimensions"),
    (dict(fill_shape=(1, 1, 3, 4, 5)), 5, "fill must have 4 dimensions"),
    (dict(image_shape=(1, 2, 4, 5)), 5, "image must have 1 or 3 channels"),
    (dict(fill_shape=(1, 4, 4, 5)), 5, "fill must have 1 or 3 channels"),
    (dict(flow_shape=(1, 3, 4, 5)), 5, "flow must have 2 channels"),
    (dict(flow_shape=(1, 2, 4, 6)), 5, "share batch, height and width"),
    (dict(fill_shape=(2, 3, 4, 5)), 5, "share batch, height and width"),
    (dict(fill_shape=(1, 3, 5, 5)), 5, "share batch, height and width"),
    (dict(flow=torch.float64), 5, "dtype"),
    (dict(fill=torch.float16), 5, "dtype"),
    (dict(image=torch.int32), 5, "dtype"),
    (dict(image_shape=(1, 3, 0, 5), flow_shape=(1, 2, 0, 5), fill_shape=(1, 3, 0, 5)), 5, "empty"),
    (dict(), 4, "kernel_size must be odd"),
    (dict(), 0, "kernel_size must be an integer"),
    (dict(), -3, "kernel_size must be an integer"),
    (dict(), 5.0, "kernel_size must be an integer"),
    (dict(), True, "kernel_size must be an integer"),
])
def test_invalid_input_raises(device, case, kernel_size, match):
    shapes = {k: v for k, v in case.items() if k.endswith("_shape")}
    dtypes = {k: v for k, v in case.items() if not k.endswith("_shape")}
    with pytest.raises(ValueError, match=match):
        pixel_volume(*_inputs(device, **shapes, **dtypes), kernel_size=kernel_size)


def test_non_tensor_input_raises(device):
    image, flow, fill = _inputs(device)
    with pytest.raises(ValueError, match="fill must be a torch.Tensor"):
        pixel_volume(image, flow, [[0.0]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_coordinates_beyond_256_pixels(device, dtype):
    # bfloat16 holds integers exactly only up to 256 (float16: 2048): targets must be formed in float32.
    width = 2100
    image = torch.randn(1, 1, 4, width, device=device).to(dtype)
    fill = torch.randn(1, 1, 4, width, device=device).to(dtype)
    flow = torch.zeros(1, 2, 4, width, device=device, dtype=dtype)
    out = pixel_volume(image, flow, fill, kernel_size=1)
    # Zero flow, k=1: the pixel itself inside the 1-pixel border, fill on the border.
    expected = fill.clone()
    expected[..., 1:-1, 1:-1] = image[..., 1:-1, 1:-1]
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(reference.pixel_volume(image, flow, fill, kernel_size=1), expected, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("image_channels", [3, 1])
def test_gray_computed_once_is_bit_identical_to_reference(device, dtype, image_channels):
    """The RGB image's gray plane is computed once per pixel (not once per candidate) in the same float32
    operations as the reference and rounded once to the output dtype to nearest even, as PyTorch casts: the
    volume matches the reference bit for bit."""
    batch, height, width, kernel_size = 2, 9, 11, 5
    image = (torch.rand(batch, image_channels, height, width, device=device) * 2 - 1).to(dtype)
    fill = (torch.rand(batch, 3, height, width, device=device) * 2 - 1).to(dtype)
    flow = random_flow(batch, height, width, device, dtype, step=0.5, extreme_fraction=0.05)
    out = pixel_volume(image, flow, fill, kernel_size)
    expected = reference.pixel_volume(image, flow, fill, kernel_size)
    assert out.dtype == dtype and torch.equal(out, expected)
    # Not vacuous: many candidates come from the image, and its gray is not exact in float32.
    gray_image = reference.to_gray(image.float())
    assert torch.isin(out, gray_image.to(dtype)).float().mean() > 0.25
    assert not torch.equal(gray_image.double(), reference.to_gray(image.double())) or image_channels == 1


# (image dtype, out_dtype, channels_last): the autocast outputs PVDNet consumes, and the other combinations.
OUTPUT_CASES = [
    (torch.float32, torch.bfloat16, True),
    (torch.float32, torch.float16, True),
    (torch.float32, torch.bfloat16, False),
    (torch.float32, None, True),
    (torch.float32, torch.float64, False),
    (torch.float64, torch.bfloat16, True),
    (torch.float64, torch.float16, False),
    (torch.bfloat16, torch.float32, True),
]


@pytest.mark.parametrize("dtype, out_dtype, channels_last", OUTPUT_CASES, ids=str)
@pytest.mark.parametrize("image_channels", [3, 1])
def test_out_dtype_and_channels_last_equal_the_cast(device, dtype, out_dtype, channels_last, image_channels):
    """out_dtype / channels_last give bit for bit `volume.to(out_dtype).contiguous(channels_last)`, in the
    same dtype and strides, on the Triton path and in the reference; gradients equal those of the cast."""
    batch, height, width, kernel_size = 2, 6, 9, 5
    image = (torch.rand(batch, image_channels, height, width, device=device) * 2 - 1).to(dtype)
    fill = (torch.rand(batch, 3, height, width, device=device) * 2 - 1).to(dtype)
    flow = random_flow(batch, height, width, device, dtype, step=0.5, extreme_fraction=0.1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def cast(fn):
        def volume(image, flow, fill, kernel_size):
            out = fn(image, flow, fill, kernel_size)
            return out.to(out_dtype or out.dtype).contiguous(memory_format=memory_format)
        return volume

    def direct(fn):
        return lambda image, flow, fill, kernel_size: fn(image, flow, fill, kernel_size, out_dtype=out_dtype,
                                                         channels_last=channels_last)

    # grad_out in a third layout (neither NCHW nor channels_last) and another dtype than the output.
    grad_out = torch.randn(batch, width, height, kernel_size ** 2, device=device).permute(0, 3, 2, 1)
    for fn in (pixel_volume, reference.pixel_volume):
        expected = forward_and_grads(cast(fn), image, flow, fill, kernel_size, grad_out)
        actual = forward_and_grads(direct(fn), image, flow, fill, kernel_size, grad_out)
        assert actual[0].dtype == (out_dtype or dtype) and actual[0].stride() == expected[0].stride()
        assert actual[0].is_contiguous(memory_format=memory_format)
        for name, a, e in zip(("out", "grad_image", "grad_fill"), actual, expected):
            assert a.dtype == e.dtype and torch.equal(a, e), name
    # The cast is not the identity here: the direct output really went through the requested rounding.
    if out_dtype in (torch.bfloat16, torch.float16) and dtype != out_dtype:
        assert not torch.equal(actual[0].to(dtype), pixel_volume(image, flow, fill, kernel_size))


def test_out_dtype_gradcheck(device):
    """Gradients through a float64 volume emitted channels_last (the layout the network's backward returns)."""
    image = (torch.rand(1, 3, 4, 5, dtype=torch.float64, device=device) * 2 - 1).requires_grad_()
    fill = (torch.rand(1, 3, 4, 5, dtype=torch.float64, device=device) * 2 - 1).requires_grad_()
    flow = random_flow(1, 4, 5, device, extreme_fraction=0.1)
    assert torch.autograd.gradcheck(lambda i, f: pixel_volume(i, flow, f, 3, out_dtype=torch.float64,
                                                              channels_last=True), (image, fill), fast_mode=True)


@pytest.mark.parametrize("keywords, match", [
    (dict(out_dtype=torch.int32), "out_dtype must be None or one of"),
    (dict(out_dtype="bf16"), "out_dtype must be None or one of"),
    (dict(channels_last=1), "channels_last must be True or False"),
])
def test_invalid_output_keywords_raise(device, keywords, match):
    with pytest.raises(ValueError, match=match):
        pixel_volume(*_inputs(device), **keywords)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rgb_image_gradient_is_the_gray_gradient_times_each_weight(device, dtype):
    """d out / d channel = weight x d out / d gray, multiplied in float32 and rounded once to the image dtype
    (exactly what multiplying the float32 gray gradient by each weight in PyTorch and casting gives)."""
    batch, height, width, kernel_size = 2, 7, 10, 5
    flow = random_flow(batch, height, width, device, torch.float32, step=0.5, extreme_fraction=0.1)
    fill = torch.rand(batch, 3, height, width, device=device) * 2 - 1
    grad_out = torch.randn(batch, kernel_size ** 2, height, width, device=device).to(dtype).float()  # exact in dtype
    gray_image = (torch.rand(batch, 1, height, width, device=device) * 2 - 1).requires_grad_()
    grad_gray, = torch.autograd.grad(pixel_volume(gray_image, flow, fill, kernel_size), gray_image, grad_out)
    image = (torch.rand(batch, 3, height, width, device=device) * 2 - 1).to(dtype).requires_grad_()
    grad_image, = torch.autograd.grad(pixel_volume(image, flow.to(dtype), fill.to(dtype), kernel_size), image,
                                      grad_out.to(dtype))
    expected = torch.cat([grad_gray * weight for weight in GRAY_WEIGHTS], dim=1).to(dtype)
    assert grad_image.dtype == dtype and torch.count_nonzero(expected) > 0
    assert torch.equal(grad_image, expected)
