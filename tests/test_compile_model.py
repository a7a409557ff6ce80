"""torch.compile(fullgraph=True) of a small model that chains the three custom ops, forward and backward.

Features -> correlation -> a flow head -> warp -> pixel volume -> loss. The inductor backend (which turns the
triton_op custom ops into calls of their Triton kernels inside the compiled graph) needs CUDA: inductor and
AOT autograd run the op bodies on fake tensors while tracing, which the Triton interpreter cannot do, so on
the CPU only the `eager` backend (Dynamo capture without graph breaks) is checked and the inductor test is
skipped with that reason.
"""

import pytest
import torch
from torch import nn

from pvd.kernels import correlation, pixel_volume, warp

MAX_DISPLACEMENT = 1
KERNEL_SIZE = 3
FEATURES = 4


class ThreeOps(nn.Module):
    """(B, 3, H, W) x 2 -> scalar; every parameter gets a gradient through a custom op."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, FEATURES, 3, padding=1)
        self.flow = nn.Conv2d((2 * MAX_DISPLACEMENT + 1) ** 2, 2, 3, padding=1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        cost = correlation(self.features(image1), self.features(image2), MAX_DISPLACEMENT, 1)
        flow = 2.0 * self.flow(nn.functional.leaky_relu(cost, 0.1))
        warped = warp(image2, flow)
        volume = pixel_volume(warped, flow, image1, KERNEL_SIZE)
        return (volume ** 2).mean() + (warped * image1).mean()


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_three_ops_compile_fullgraph(device, backend):
    if backend == "inductor" and device != "cuda":
        pytest.skip("inductor traces the Triton ops with fake tensors, which the Triton interpreter cannot run: "
                    "needs CUDA")
    torch.manual_seed(0)
    model = ThreeOps().to(device)
    images = [torch.rand(2, 3, 9, 13, device=device) * 2 - 1 for _ in range(2)]
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)

    loss = compiled(*images)
    loss.backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(*images)
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    for got, want in zip(compiled_grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
