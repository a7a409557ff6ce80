"""Tiled inference (pvd.tiling): per-tile pixel volumes equal the whole frame's, blending is exact for a network
without spatial context, BIMNet's bounded size, the `auto` plan, option checks, and the runner hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pvd import kernels, tiling
from pvd.nets import step
from pvd.stream import VideoDeblurrer, deblur_frames
from pvd.cli import main
from pvd.nets import DeblurNet


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the reference pixel volume: fast, and the kernels are tested apart


class ConvBIMNet(nn.Module):
    """BIMNet's interface: (B,3,H,W) x 2, H, W multiples of 32 -> (B, 2, H/2, W/2), moderate flows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 2, 5, padding=2)
        self.seen = []

    def forward(self, image1, image2):
        assert image1.shape[-2] % 32 == 0 and image1.shape[-1] % 32 == 0
        self.seen.append(tuple(image1.shape[-2:]))
        return F.avg_pool2d(self.conv(torch.cat([image1, image2], dim=1)), 2) * 8


class ConstantBIMNet(nn.Module):
    """Flow (3, -2) in pixels of whatever it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, image1, image2):
        batch, _, height, width = image1.shape
        self.seen.append((height, width))
        return torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(batch, 2, height // 2, width // 2).clone()


class PointwisePVDNet(nn.Module):
    """PVDNet's interface without spatial context (1x1 convolutions): tiling must not change its output."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(25 + 9, 16, 1)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        assert curr.shape[-2] % 4 == 0 and curr.shape[-1] % 4 == 0
        return curr + self.out(torch.tanh(self.mix(torch.cat([pixel_volume, prev, curr, next], dim=1))))


class Model(nn.Module):
    def __init__(self, bimnet, pvdnet):
        super().__init__()
        self.bimnet, self.pvdnet = bimnet, pvdnet


def _frames(count, height, width, batch=1):
    return [torch.rand(batch, 3, height, width) * 2 - 1 for _ in range(count)]


def test_tile_pixel_volume_equals_the_whole_frames_crop():
    height, width = 70, 90
    deblurred, curr = _frames(2, height, width, batch=2)
    flow = torch.randn(2, 2, height, width) * 6
    flow[0, 0, 10, 10] = float("nan")
    flow[1, 1, 50, 60] = float("inf")
    flow[0, 0, 30:34, 40:44] = 500.0  # beyond the frame: the fill value, tiled or not
    whole = kernels.pixel_volume(deblurred, flow, curr, kernel_size=5)
    for top, left, tile_h, tile_w in ((0, 0, 32, 32), (20, 30, 36, 40), (38, 58, 32, 32), (0, 0, 70, 90)):
        tile = tiling._tile_pixel_volume(deblurred, flow, curr, top, left, tile_h, tile_w)
        torch.testing.assert_close(tile, whole[..., top:top + tile_h, left:left + tile_w], rtol=0, atol=0)


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "policy"),
                         [(100, 150, 64, 16, "pad"), (97, 131, 64, 8, "pad"), (97, 131, 64, 0, "original"),
                          (40, 200, 96, 24, "pad")])
def test_blended_tiles_equal_the_untiled_step_for_a_network_without_spatial_context(height, width, tile, overlap,
                                                                                    policy):
    model = Model(ConvBIMNet(), PointwisePVDNet()).eval()
    prev, curr, nxt, deblurred = _frames(4, height, width, batch=2)
    with torch.inference_mode():
        untiled = step.deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, size_policy=policy)
        tiled = tiling.deblur_step_tiled(model.bimnet, model.pvdnet, prev, curr, nxt, deblurred, size_policy=policy, tile=tile,
                                         overlap=overlap)
    assert tiled.shape == untiled.shape
    torch.testing.assert_close(tiled, untiled, rtol=1e-5, atol=1e-5)


def test_one_tile_covering_the_frame_is_the_untiled_step_for_the_real_networks():
    model = DeblurNet().eval()
    prev, curr, nxt = _frames(3, 40, 52)
    with torch.inference_mode():
        untiled = step.deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, prev)
        tiled = tiling.deblur_step_tiled(model.bimnet, model.pvdnet, prev, curr, nxt, prev, tile=64, overlap=8)
    torch.testing.assert_close(tiled, untiled, rtol=1e-5, atol=1e-5)


def test_real_networks_tiled_stay_close_away_from_nothing_but_seams():
    """Random-weight PVDNet, 2x2 tiles: finite, the input's size, and close to the untiled output."""
    model = DeblurNet().eval()
    prev, curr, nxt = _frames(3, 96, 112)
    with torch.inference_mode():
        untiled = step.deblur_step(model.bimnet, model.pvdnet, prev, curr, nxt, prev)
        tiled = tiling.deblur_step_tiled(model.bimnet, model.pvdnet, prev, curr, nxt, prev, tile=64, overlap=24)
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert (tiled - untiled).abs().mean() < 0.1 * (untiled - curr).abs().mean() + 1e-3


def test_bimnet_sees_at_most_flow_pixels_and_the_flow_is_rescaled():
    bimnet = ConstantBIMNet()
    curr, prev = _frames(2, 200, 300)
    flow = tiling.estimate_flow_bounded(bimnet, curr, prev, flow_pixels=64 * 96)
    (seen_h, seen_w), = bimnet.seen
    assert seen_h * seen_w <= 64 * 96
    small_h, small_w = int(200 * (64 * 96 / (224 * 320)) ** 0.5), int(300 * (64 * 96 / (224 * 320)) ** 0.5)
    assert flow.shape == (1, 2, 200, 300)
    torch.testing.assert_close(flow[0, 0], torch.full((200, 300), 3.0 * 300 / small_w))
    torch.testing.assert_close(flow[0, 1], torch.full((200, 300), -2.0 * 200 / small_h))
    exact = tiling.estimate_flow_bounded(bimnet, curr, prev, flow_pixels=224 * 320)
    torch.testing.assert_close(exact, step.estimate_flow(bimnet, curr, prev))


def test_tile_starts_cover_the_frame_with_the_overlap():
    for size, tile, overlap in ((100, 64, 16), (64, 64, 8), (50, 64, 8), (1000, 256, 32)):
        starts = tiling.tile_starts(size, tile, overlap)
        covered = torch.zeros(size, dtype=torch.bool)
        for start in starts:
            covered[start:start + tile] = True
            assert start >= 0 and min(start + tile, size) <= size
        assert covered.all() and starts == sorted(set(starts))
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_auto_plan_fits_the_budget():
    gib = 2**30
    plan = tiling.auto_plan(2160, 3840, memory_budget=4 * gib)
    assert plan.tile is not None and plan.estimated_bytes <= 4 * gib
    assert tiling.auto_plan(2160, 3840, memory_budget=100 * gib).tile == tiling.MAX_AUTO_TILE
    small = tiling.auto_plan(2160, 3840, memory_budget=int(1.5 * gib))
    assert small.tile < plan.tile or small.flow_pixels < plan.flow_pixels
    assert tiling.auto_plan(256, 256, memory_budget=4 * gib).tile is None  # fits whole
    with pytest.raises(ValueError, match="does not fit"):
        tiling.auto_plan(2160, 3840, memory_budget=2**20)
    assert tiling.free_memory_bytes(torch.device("cpu")) > 0


def test_bad_tile_options():
    with pytest.raises(ValueError, match="tile must be"):
        tiling.resolve("big", None, 100, 100, torch.device("cpu"))
    with pytest.raises(ValueError, match="tile must be"):
        tiling.resolve(30, None, 100, 100, torch.device("cpu"))
    with pytest.raises(ValueError, match="overlap"):
        tiling.resolve(64, 32, 100, 100, torch.device("cpu"))
    assert tiling.resolve("128", 16, 100, 100, torch.device("cpu")).tile == 128


def test_a_deblurrer_runs_tiled_steps_through_the_hook():
    model = Model(ConvBIMNet(), PointwisePVDNet()).eval()
    frames = [f[0] for f in _frames(4, 90, 120)]
    untiled = list(deblur_frames(model, frames))
    deblurrer = VideoDeblurrer(model, device="cpu", tile=64, tile_overlap=16)
    tiled = list(deblurrer.run(frames))
    assert len(tiled) == 4
    for a, b in zip(tiled, untiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cli_refuses_a_bad_tile_in_one_line(tmp_path, capsys):
    import cv2
    import numpy as np

    (tmp_path / "clip").mkdir()
    cv2.imwrite(str(tmp_path / "clip" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    code = main(["deblur", str(tmp_path / "clip"), "-o", str(tmp_path / "out"), "--tile", "huge",
                 "--allow-untrained", "--quiet", "--device", "cpu"])
    assert code == 1
    assert "tile must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_single_image_takes_and_checks_the_tile_options(tmp_path, capsys, spy):
    """One image in, one image out: --tile runs tiled steps (bounded memory for a large photo), and a bad --tile
    or --tile-overlap is refused in one line, as for videos (both used to be ignored silently)."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "photo.png"), np.random.default_rng(0).integers(0, 256, (70, 90, 3), np.uint8))
    common = ["--allow-untrained", "--quiet", "--device", "cpu"]
    for bad, message in ((["--tile", "-3"], "tile must be"), (["--tile", "huge"], "tile must be"),
                         (["--tile", "64", "--tile-overlap", "40"], "overlap")):
        assert main(["deblur", str(tmp_path / "photo.png"), "-o", str(tmp_path / "bad.png"), *bad, *common]) == 1
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
        assert not (tmp_path / "bad.png").exists()
    tiled_steps = spy(tiling, "deblur_step_tiled")
    assert main(["deblur", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.png"), "--tile", "64",
                 "--tile-overlap", "16", *common]) == 0, capsys.readouterr().err
    assert len(tiled_steps) == 1 and cv2.imread(str(tmp_path / "out.png")).shape == (70, 90, 3)


def test_cli_deblurs_tiled_into_h264_with_crf_and_fps(tmp_path):
    import av
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "clip").mkdir()
    for index in range(3):
        frame = cv2.GaussianBlur(rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8), (5, 5), 1.0)
        cv2.imwrite(str(tmp_path / "clip" / f"{index}.png"), frame)
    code = main(["deblur", str(tmp_path / "clip"), "-o", str(tmp_path / "out"), "--format", "both", "--tile", "64",
                 "--tile-overlap", "16", "--crf", "20", "--fps", "12", "--allow-untrained", "--quiet",
                 "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate, stream.frames) == ("h264", 12, 3)
        assert (stream.codec_context.width, stream.codec_context.height) == (90, 70)
