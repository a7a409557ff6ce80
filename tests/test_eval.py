"""`pvd eval` / pvd.evaluate on tiny data sets written to tmp_path.

Most tests use an identity stand-in model (its output is the blurry frame itself), so the expected scores
are those of the blurry frames against the sharp ones, computed here from the image files. One test runs
the real (random) networks through the command line. PyTorch reference kernels throughout (speed).
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pvd import evaluate, metrics, weights
from pvd.kernels import reference
from pvd.cli import main
from pvd.nets import BIMNet, ZeroFlow

HEIGHT, WIDTH = 64, 80


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


class PassThrough(nn.Module):
    """PVDNet's interface; returns the current blurry frame unchanged."""

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        return curr.clone()


class IdentityModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.bimnet = ZeroFlow()
        self.pvdnet = PassThrough()
        self.anchor = nn.Parameter(torch.zeros(1))  # so .to(device) has something to move


class DimmingModel(IdentityModel):
    """Outputs the blurry frame darkened (in [-1, 1]: x -> x - 0.2), so output and input scores differ."""

    def __init__(self):
        super().__init__()
        self.pvdnet = Dimming()


class Dimming(nn.Module):
    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        return curr - 0.2


def test_input_scores_are_the_blurry_frames_not_the_output(tmp_path):
    written = write_gopro(tmp_path / "data", videos=1, frames=3)
    summary = evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=DimmingModel(), device="cpu",
                                progress=False)
    for row in read_scores(tmp_path / "out" / "scores.csv"):
        blurry, sharp = written[row["video"]][int(row["index"])]
        given = metrics.frame_scores(as_unit(blurry), as_unit(sharp))
        output = metrics.frame_scores(as_unit(blurry) - 0.1, as_unit(sharp))
        assert float(row["input_psnr"]) == pytest.approx(given["psnr"].item(), rel=1e-6)
        assert float(row["input_ssim_aligned"]) == pytest.approx(given["ssim_aligned"].item(), abs=1e-6)
        assert float(row["psnr"]) == pytest.approx(output["psnr"].item(), rel=1e-5)
        assert float(row["psnr"]) < float(row["input_psnr"]) - 1
    assert summary["overall"]["psnr"] < summary["overall"]["input_psnr"]


def smooth_frame(rng, height, width) -> np.ndarray:
    coarse = rng.random((height // 8, width // 8, 3)).astype(np.float32)
    return (cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).round().astype(np.uint8)


def write_gopro(root, videos=2, frames=4, height=HEIGHT, width=WIDTH, sharp_frames=None, seed=0):
    """<root>/<video>/{blur_gamma,sharp}/%05d.png; returns {video: [(blurry, sharp) uint8 RGB arrays]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for v in range(videos):
        name = f"video{v}"
        (root / name / "blur_gamma").mkdir(parents=True)
        (root / name / "sharp").mkdir(parents=True)
        pairs = []
        for f in range(frames):
            sharp = smooth_frame(rng, height, width)
            blurry = cv2.GaussianBlur(sharp, (5, 5), 1.5)
            cv2.imwrite(str(root / name / "blur_gamma" / f"{f:05d}.png"), cv2.cvtColor(blurry, cv2.COLOR_RGB2BGR))
            if sharp_frames is None or f < sharp_frames:
                cv2.imwrite(str(root / name / "sharp" / f"{f:05d}.png"), cv2.cvtColor(sharp, cv2.COLOR_RGB2BGR))
            pairs.append((blurry, sharp))
        written[name] = pairs
    return written


def as_unit(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).double() / 255


def read_scores(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_identity_model_scores_equal_the_blurry_frames_scores(tmp_path):
    written = write_gopro(tmp_path / "data")
    summary = evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=IdentityModel(), device="cpu",
                                progress=False)
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert list(rows[0]) == ["video", "frame", "index", "psnr", "ssim", "psnr_aligned", "ssim_aligned", "input_psnr",
                             "input_ssim", "input_psnr_aligned", "input_ssim_aligned", "seconds"]
    assert [(r["video"], r["frame"]) for r in rows] == [(v, f"{f:05d}") for v in written for f in range(4)]
    expected = {}
    for row in rows:
        blurry, sharp = written[row["video"]][int(row["index"])]
        scores = metrics.frame_scores(as_unit(blurry), as_unit(sharp))
        expected[(row["video"], int(row["index"]))] = scores
        for key, value in scores.items():
            assert float(row[key]) == pytest.approx(value.item(), rel=1e-6), key
            assert float(row[f"input_{key}"]) == pytest.approx(value.item(), rel=1e-6), key  # output == input
        assert float(row["seconds"]) > 0
    # Means: plain over every frame, aligned without each video's first frame.
    overall = summary["overall"]
    assert overall["frames"] == 8 and overall["aligned_frames"] == 6
    assert overall["psnr"] == pytest.approx(np.mean([s["psnr"].item() for s in expected.values()]), rel=1e-6)
    assert overall["ssim_aligned"] == pytest.approx(
        np.mean([s["ssim_aligned"].item() for (v, i), s in expected.items() if i > 0]), abs=1e-6)
    assert summary["videos"]["video1"]["psnr_aligned"] == pytest.approx(
        np.mean([s["psnr_aligned"].item() for (v, i), s in expected.items() if v == "video1" and i > 0]), rel=1e-6)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| video0 | 4 |" in markdown and "| **all** | 8 |" in markdown
    assert overall["input_psnr_aligned"] == pytest.approx(overall["psnr_aligned"], rel=1e-9)
    assert f"| **all** | {overall['input_psnr']:.2f} |" in markdown and "| 0.00 | 0.00 |" in markdown
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_limits_and_the_original_size_policy(tmp_path):
    written = write_gopro(tmp_path / "data", videos=3, frames=5, height=HEIGHT + 2, width=WIDTH + 3)
    summary = evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=IdentityModel(), device="cpu",
                                size_policy="original", limit_videos=2, limit_frames=3, progress=False)
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert [(r["video"], int(r["index"])) for r in rows] == [(v, i) for v in ("video0", "video1") for i in range(3)]
    assert summary["settings"]["limit_frames"] == 3 and summary["overall"]["frames"] == 6
    # The output is the multiple-of-4 crop: the ground truth is cropped alike before scoring.
    blurry, sharp = written["video1"][2]
    expected = metrics.frame_scores(as_unit(blurry[:HEIGHT, :WIDTH]), as_unit(sharp[:HEIGHT, :WIDTH]))
    assert float(rows[-1]["psnr_aligned"]) == pytest.approx(expected["psnr_aligned"].item(), rel=1e-6)
    assert float(rows[-1]["ssim"]) == pytest.approx(expected["ssim"].item(), abs=1e-6)
    assert float(rows[-1]["input_psnr_aligned"]) == pytest.approx(expected["psnr_aligned"].item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:running with random:UserWarning")
def test_command_line_with_random_networks(tmp_path, capsys):
    write_gopro(tmp_path / "data", videos=2, frames=3)
    code = main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--allow-untrained", "--device", "cpu",
                 "--limit-videos", "1", "--limit-frames", "2", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| **all** | 2 |" in captured.out
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert len(rows) == 2 and all(np.isfinite(float(r["psnr_aligned"])) for r in rows)
    # Existing outputs are kept unless --overwrite.
    code = main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--allow-untrained", "--quiet"])
    assert code == 1 and "--overwrite" in capsys.readouterr().err


def test_data_without_ground_truth_points_to_pvd_deblur(tmp_path, capsys):
    folder = tmp_path / "data" / "clip"
    folder.mkdir(parents=True)
    for f in range(2):
        cv2.imwrite(str(folder / f"{f}.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    code = main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--allow-untrained", "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and "no ground-truth" in error and "pvd deblur" in error
    assert not (tmp_path / "out").exists()


def test_mismatched_frame_counts_are_refused(tmp_path):
    write_gopro(tmp_path / "data", videos=1, frames=3, sharp_frames=2)
    with pytest.raises(ValueError, match="3 blurry frames .* 2 sharp"):
        evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=IdentityModel(), device="cpu", progress=False)


def test_weights_of_the_wrong_architecture_are_refused(tmp_path, capsys):
    write_gopro(tmp_path / "data", videos=1, frames=2)
    bimnet_file = weights.save(BIMNet(), tmp_path / "bimnet.safetensors")
    code = main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--weights", str(bimnet_file),
                 "--device", "cpu", "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and "BIMNet" in error and "full model" in error
    assert not (tmp_path / "out" / "scores.csv").exists()


@pytest.mark.parametrize("option, value", [("limit_frames", 0), ("limit_videos", -1), ("plain_ssim_window", "box")])
def test_bad_options_are_refused(tmp_path, option, value):
    write_gopro(tmp_path / "data", videos=1, frames=2)
    with pytest.raises(ValueError, match=option):
        evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=IdentityModel(), device="cpu",
                          progress=False, **{option: value})


class ConstantFlow(nn.Module):
    """BIMNet's interface: the same flow of (+3, -2) pixels everywhere."""

    def forward(self, image1, image2):
        batch, _, height, width = image1.shape
        return torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(batch, 2, height // 2, width // 2).clone()


class RecordingPassThrough(PassThrough):
    """PassThrough that keeps every (pixel_volume, curr) it is given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        self.calls.append((pixel_volume.clone(), curr.clone()))
        return curr.clone()


def test_zero_flow_ablation_feeds_zero_flow_pixel_volumes(tmp_path):
    """evaluate(zero_flow=True) builds the pixel volume from a zero flow, not from the model's BIMNet."""
    write_gopro(tmp_path / "data", videos=1, frames=3)
    for zero_flow in (True, False):
        model = IdentityModel()
        model.bimnet, model.pvdnet = ConstantFlow(), RecordingPassThrough()
        summary = evaluate.evaluate(tmp_path / "data", tmp_path / f"out_{zero_flow}", model=model, device="cpu",
                                    precision="fp32", zero_flow=zero_flow, progress=False)
        assert summary["settings"]["zero_flow"] is zero_flow
        assert ("zero flow" in (tmp_path / f"out_{zero_flow}" / "summary.md").read_text()) is zero_flow
        calls = model.pvdnet.calls
        assert len(calls) == 3
        for (_, previous_output), (pixel_volume, curr) in zip(calls[:-1], calls[1:]):
            flow = torch.zeros(1, 2, HEIGHT, WIDTH) if zero_flow else \
                torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, HEIGHT, WIDTH)
            expected = reference.pixel_volume(previous_output.double(), flow.double(), curr.double())
            torch.testing.assert_close(pixel_volume.double(), expected, atol=1e-5, rtol=0)


def test_paper_protocol_sets_the_original_evaluation_conditions(tmp_path, capsys):
    """--protocol paper = fp32, the 'original' size policy (multiple-of-4 frames, multiple-of-32 flow) and the
    uniform plain SSIM, whatever those options say; the scores equal a run with those settings spelled out."""
    write_gopro(tmp_path / "data", videos=1, frames=3, height=HEIGHT + 2, width=WIDTH + 3)
    common = {"model": IdentityModel(), "device": "cpu", "progress": False}
    paper = evaluate.evaluate(tmp_path / "data", tmp_path / "paper", protocol="paper", size_policy="pad",
                              plain_ssim_window="gaussian", **common)
    spelled = evaluate.evaluate(tmp_path / "data", tmp_path / "spelled", precision="fp32", size_policy="original",
                                plain_ssim_window="uniform", **common)
    default = evaluate.evaluate(tmp_path / "data", tmp_path / "default", **common)
    assert paper["settings"]["protocol"] == "paper" and default["settings"]["protocol"] == "default"
    for key in ("precision", "size_policy", "plain_ssim_window"):
        assert paper["settings"][key] == spelled["settings"][key]
    assert read_scores(tmp_path / "paper" / "scores.csv") != [] and \
        [r["psnr"] for r in read_scores(tmp_path / "paper" / "scores.csv")] == \
        [r["psnr"] for r in read_scores(tmp_path / "spelled" / "scores.csv")]
    # The default keeps every pixel (pad policy): other scores on this odd-sized clip.
    assert [r["psnr"] for r in read_scores(tmp_path / "default" / "scores.csv")] != \
        [r["psnr"] for r in read_scores(tmp_path / "paper" / "scores.csv")]
    with pytest.raises(ValueError, match="protocol"):
        evaluate.evaluate(tmp_path / "data", tmp_path / "x", protocol="matlab", **common)
    code = main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "cli"), "--allow-untrained", "--device", "cpu",
                 "--protocol", "paper", "--limit-frames", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["settings"]["size_policy"] == "original"


def test_identical_frames_are_capped_in_the_means_and_counted(tmp_path):
    """One identical frame (PSNR inf) must not blank the mean: PSNR enters the means capped at 100 dB."""
    written = write_gopro(tmp_path / "data", videos=1, frames=3)
    blurry, sharp = written["video0"][1]
    cv2.imwrite(str(tmp_path / "data" / "video0" / "blur_gamma" / "00001.png"), cv2.cvtColor(sharp, cv2.COLOR_RGB2BGR))
    summary = evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=IdentityModel(), device="cpu",
                                progress=False)
    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert math.isinf(float(rows[1]["psnr"]))  # the frame itself is reported as it is
    others = [float(rows[i]["psnr"]) for i in (0, 2)]
    overall = summary["overall"]
    assert overall["psnr"] == pytest.approx((others[0] + evaluate.PSNR_CAP_DB + others[1]) / 3)
    assert overall["psnr_capped"] == 1 and overall["input_psnr_capped"] == 1
    assert overall["psnr_aligned_capped"] == 1 and overall["psnr_aligned"] is not None
    assert float(rows[1]["psnr_aligned"]) >= evaluate.PSNR_CAP_DB  # identical up to round-off
    assert "capped at 100 dB" in (tmp_path / "out" / "summary.md").read_text()


class NaNModel(IdentityModel):
    def __init__(self):
        super().__init__()
        self.pvdnet = NaNOutput()


class NaNOutput(nn.Module):
    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        return curr * float("nan")


def test_a_nan_score_is_an_error_and_leaves_no_scores(tmp_path):
    write_gopro(tmp_path / "data", videos=1, frames=2)
    with pytest.raises(ValueError, match="video0/.*the output scores NaN.*non-finite"):
        evaluate.evaluate(tmp_path / "data", tmp_path / "out", model=NaNModel(), device="cpu", progress=False)
    assert not (tmp_path / "out").exists()  # no empty output folder left behind either
