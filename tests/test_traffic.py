"""The traffic meter (bench/_meter.py, bench/traffic.py) on kernels whose traffic is known by construction."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the meter runs Triton's interpreter on CPU")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meter():
    sys.path.insert(0, str(BENCH))
    try:
        yield _load("_meter")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def traffic(meter):
    sys.path.insert(0, str(BENCH))
    try:
        yield _load("traffic")
    finally:
        sys.path.remove(str(BENCH))


BLOCK = 128
SECTOR = 32
FLOAT = 4


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=ok), mask=ok)


@triton.jit
def _read_twice_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """Program p reads block p and block p+1 (wrapping): every block is read by two programs."""
    pid = tl.program_id(0)
    blocks = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    a = tl.load(x_ptr + pid * BLOCK + offs)
    b = tl.load(x_ptr + ((pid + 1) % blocks) * BLOCK + offs)
    tl.store(y_ptr + pid * BLOCK + offs, a + b)


@triton.jit
def _even_lanes_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    even = offs % 2 == 0
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=even, other=0.0))


@triton.jit
def _histogram_kernel(x_ptr, out_ptr, bins, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.atomic_add(out_ptr + offs % bins, tl.load(x_ptr + offs), sem="relaxed")


def test_copy_is_one_x(meter):
    n = 1000  # not a multiple of the block: the last program is masked
    x, y = torch.randn(n), torch.empty(n)
    with meter.TrafficMeter() as m:
        _copy_kernel[(triton.cdiv(n, BLOCK),)](x, y, n, BLOCK=BLOCK)
    assert torch.equal(x, y)
    (launch,) = m.launches
    assert launch.kernel == "_copy_kernel" and launch.grid == (8, 1, 1)
    ideal = 2 * n * FLOAT
    assert launch.requested_bytes == ideal
    assert launch.l2_bytes == ideal and launch.dram_bytes == ideal
    assert launch.atomics == 0
    assert launch.l2_sectors_by_tensor == {"x_ptr": n * FLOAT // SECTOR, "y_ptr": n * FLOAT // SECTOR}


def test_input_read_by_two_programs_is_two_x_l2_one_x_dram(meter):
    blocks = 6
    x, y = torch.randn(blocks * BLOCK), torch.empty(blocks * BLOCK)
    with meter.TrafficMeter() as m:
        _read_twice_kernel[(blocks,)](x, y, x.numel(), BLOCK=BLOCK)
    assert torch.equal(y, x + x.view(blocks, BLOCK).roll(-1, 0).reshape(-1))
    (launch,) = m.launches
    x_bytes = x.numel() * FLOAT
    assert launch.requested["load"] == 2 * x_bytes
    assert launch.l2_sectors["load"] * SECTOR == 2 * x_bytes
    assert launch.dram_sectors["load"] * SECTOR == x_bytes
    assert launch.l2_sectors["store"] == launch.dram_sectors["store"] == x_bytes // SECTOR


def test_only_masked_in_lanes_are_requested(meter):
    n = 4 * BLOCK
    x, y = torch.randn(n), torch.empty(n)
    with meter.TrafficMeter() as m:
        _even_lanes_kernel[(n // BLOCK,)](x, y, BLOCK=BLOCK)
    (launch,) = m.launches
    assert launch.requested["load"] == n // 2 * FLOAT
    # Every 32-byte sector holds even elements, so the sectors are those of a full read.
    assert launch.l2_sectors["load"] == launch.dram_sectors["load"] == n * FLOAT // SECTOR
    assert launch.requested["store"] == n * FLOAT


def test_atomics_per_output_element_and_host_passes(meter):
    n, bins = 8 * BLOCK, 64
    x = torch.randn(n)
    with meter.TrafficMeter() as m:
        out = torch.zeros(bins)  # a host pass: one write of the output
        _histogram_kernel[(n // BLOCK,)](x, out, bins, BLOCK=BLOCK)
    torch.testing.assert_close(out, x.view(-1, bins).sum(0))
    (launch,) = m.launches
    assert launch.atomics == n and launch.atomic_target_elements == bins
    assert launch.requested["atomic"] == n * FLOAT
    assert launch.dram_sectors["atomic"] == bins * FLOAT // SECTOR
    assert launch.l2_sectors["atomic"] == (n // BLOCK) * bins * FLOAT // SECTOR
    assert m.host_passes == [("zeros", bins * FLOAT)]
    # The patches are gone afterwards.
    with meter.TrafficMeter() as again:
        pass
    torch.zeros(3)
    assert again.host_passes == [] and "to" not in vars(torch.Tensor)


def test_correlation_through_the_meter(traffic):
    channels, height, width, stride = 6, 9, 11, 1
    case = traffic.Case(
        "correlation", "tiny", "test",
        lambda: {name: torch.randn(1, channels, height, width) for name in ("f1", "f2")},
        lambda f1, f2: traffic.correlation(f1, f2, 3, stride),
        ideal_forward=4 * (2 * channels * height * width + 49 * height * width),
        ideal_backward=4 * (49 * height * width + 4 * channels * height * width),
        sizing=traffic.Sizing(scale=1))
    forward, backward = traffic.measure_case(case, "test")
    assert forward["direction"] == "fwd" and backward["direction"] == "bwd"
    for row in (forward, backward):
        # Every needed element is read and every output element written at least once, and per-program
        # sectors can only add up to more than the launch's distinct sectors.
        assert row["requested_x"] >= 1.0 and row["dram_x"] >= 1.0
        assert row["l2_bytes"] >= row["dram_bytes"] > 0
    assert "correlation" in forward["launches"]
    table = traffic.format_table([forward, backward])
    assert "correlation" in table and "fwd" in table and "bwd" in table


def test_level_sizes_follow_bimnet(traffic):
    assert traffic.padded_frame() == (1280, 736)
    full, eighth = traffic.Sizing(scale=1), traffic.Sizing(scale=8)
    assert traffic.level_size(2, full, 2) == (640, 368) and traffic.level_size(6, full) == (40, 23)
    assert traffic.level_size(2, eighth, 2) == (80, 46)  # floor: 40x23 correlation grid pixels at stride 2
    assert traffic.level_size(5, eighth) == (40, 23)
    assert traffic.level_size(4, eighth.doubled()) == (40, 23) and traffic.level_size(2, eighth.doubled()) == (160, 92)
    strips = traffic.Sizing(rows=16)
    assert traffic.level_size(2, strips, 2) == (640, 32) and traffic.level_size(6, strips) == (40, 16)
    assert traffic.level_size(6, strips.doubled()) == (40, 23)  # never more than the real size
    assert traffic.level_channels(2) == 64 and traffic.level_channels(6) == 192


def test_report_puts_designs_side_by_side(tmp_path):
    import csv

    spec = importlib.util.spec_from_file_location("bench_report_traffic", BENCH / "report.py")
    report = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = report
    try:
        spec.loader.exec_module(report)
        columns = ["op", "direction", "level", "size", "design", "requested_x", "l2_x", "dram_x", "dram_host_x",
                   "atomics_per_output", "device", "triton", "date", "git"]
        rows = [
            ["correlation", "fwd", "L2", "1x64x46x80 s2", "legacy", 49.5, 80.2, 2.1, 2.1, 0, "cpu-interpreter",
             "3.9.0", "2026-01-01", "aaa"],
            ["correlation", "fwd", "L2", "1x64x46x80 s2", "tiled", 1.5, 2.5, 2.0, 2.0, 0, "cpu-interpreter",
             "3.9.0", "2026-01-02", "bbb"],
            # an older measurement of the same key loses to the newer one
            ["correlation", "fwd", "L2", "1x64x46x80 s2", "tiled", 9.0, 9.0, 9.0, 9.0, 0, "cpu-interpreter",
             "3.9.0", "2025-12-31", "ccc"],
            ["warp", "bwd", "L6 image", "1x3x23x40", "legacy", 2.2, 1.2, 1.0, 1.2, 3.5, "cpu-interpreter",
             "3.9.0", "2026-01-01", "aaa"],
        ]
        with (tmp_path / "traffic.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        markdown = report.build_report(tmp_path, plots=False).read_text()
    finally:
        sys.modules.pop(spec.name, None)
    assert "## Memory traffic" in markdown and "No results found" not in markdown
    table = [[cell.strip() for cell in line.strip("|").split("|")]
             for line in markdown.split("## Memory traffic", 1)[1].splitlines()
             if line.startswith("|") and not line.startswith("|---")]
    header, body = table[0], table[1:]
    assert header[:5] == ["op", "direction", "level", "size", "sizing"]
    assert header.index("legacy L2->SM x") < header.index("tiled L2->SM x")
    correlation = next(row for row in body if row[0] == "correlation")
    assert correlation[header.index("legacy L2->SM x")] == "80.2"
    assert correlation[header.index("tiled L2->SM x")] == "2.5"
    warp_row = next(row for row in body if row[0] == "warp")
    assert warp_row[header.index("legacy atomics/out")] == "3.5"
    assert warp_row[header.index("tiled L2->SM x")] == "-"
    assert "git bbb" in markdown and "git ccc" not in markdown
