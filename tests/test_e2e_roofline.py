"""bench/e2e.py's CPU roofline: the step's FLOP count (FlopCounterMode on meta tensors) against an independent
count of the convolutions the step runs (forward hooks, summing each layer's multiply-adds from its shapes),
and the roofline row built from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pvd.nets import DeblurNet

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def e2e():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("e2e", BENCH / "e2e.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def conv_gflop_by_hooks(height: int, width: int) -> float:
    """Multiply-adds x 2 of every convolution and transposed convolution of one step, in GFLOP (on meta tensors:
    only shapes matter)."""
    with torch.device("meta"):
        model = DeblurNet().eval()
    total = []

    def count(module, inputs, output):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input value meets out_channels/groups x kernel weights
            total.append(2 * inputs[0].numel() * module.out_channels // module.groups * kernel)
        else:  # each output value sums in_channels/groups x kernel products
            total.append(2 * output.numel() * module.in_channels // module.groups * kernel)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(count)
    frames = [torch.empty(1, 3, height, width, device="meta") for _ in range(4)]
    with torch.no_grad():
        model(*frames)
    return sum(total) / 1e9


def test_step_flop_count_runs_on_meta_and_matches_the_convolutions(e2e):
    height, width = 32, 64
    counted = e2e.step_gflop(height, width)
    convolutions = conv_gflop_by_hooks(height, width)
    # The FLOP counter also counts the correlation's matmuls (a few percent); convolutions dominate.
    assert convolutions <= counted <= 1.15 * convolutions


def test_roofline_row_is_the_step_time_over_the_flop_time(e2e):
    row = e2e.cpu_roofline_row(seconds_per_frame=2.0, conv_gflops=100.0, width=96, height=64, label="test")
    assert row["roofline_s"] == pytest.approx(row["step_gflop"] / 100.0, rel=1e-2)
    assert row["vs_roofline"] == pytest.approx(2.0 / row["roofline_s"], rel=1e-2)
