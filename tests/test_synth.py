"""Synthetic video generator: determinism, layout, blur, and ground-truth flow checked by warping."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pvd.cli import main
from pvd.data import VideoClipDataset, detect_layout, list_videos
from pvd.data import synth
from pvd.kernels.reference import warp

SETTINGS = synth.SynthSettings(frames=4, height=40, width=56, subframes=5)
STATIC = synth.SynthSettings(frames=3, height=40, width=56, subframes=5, max_shift=0.0, max_rotation=0.0,
                             max_zoom=0.0, object_probability=0.0)


def textured_photo(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A photograph stand-in: RGB uint8 with detail at several scales."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for sigma in (1.0, 3.0, 9.0):
        noise = rng.normal(size=(height, width, 3)).astype(np.float32)
        image += cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    image = (image - image.min()) / (image.max() - image.min())
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for index, name in enumerate(("alpha", "beta", "gamma")):
        cv2.imwrite(str(folder / f"{name}.png"), textured_photo(index))
    return folder


@pytest.fixture(scope="module")
def photos(photo_folder) -> dict:
    return synth.load_photograph_folder(photo_folder)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255


def test_same_seed_same_files_other_seed_other_files(tmp_path, photos):
    first = all_files(synth.generate_dataset(tmp_path / "a", photos, 2, SETTINGS, seed=5))
    again = all_files(synth.generate_dataset(tmp_path / "b", photos, 2, SETTINGS, seed=5))
    other = all_files(synth.generate_dataset(tmp_path / "c", photos, 2, SETTINGS, seed=6))
    assert first == again
    assert first.keys() == other.keys()
    changed = [name for name in first if name.endswith(".png") and first[name] != other[name]]
    assert len(changed) == sum(name.endswith(".png") for name in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_layout_shapes_and_metadata(tmp_path, photos):
    out = synth.generate_dataset(tmp_path / "out", photos, 3, SETTINGS, seed=1, source="test")
    assert detect_layout(out) == "gopro"
    videos = list_videos(out)
    assert [v.name for v in videos] == ["synth_0000", "synth_0001", "synth_0002"]
    for video in videos:
        assert [p.name for p in video.blurry] == [f"{t:05d}.png" for t in range(SETTINGS.frames)]
        assert video.blurry[0].parent.name == "blur_gamma" and video.flow is not None
        for blurry_path, sharp_path, flow_path in zip(video.blurry, video.sharp, video.flow):
            assert cv2.imread(str(blurry_path)).shape == cv2.imread(str(sharp_path)).shape == (40, 56, 3)
            flow = np.load(flow_path)
            assert flow.dtype == np.float32 and flow.shape == (2, 40, 56)
        assert not np.load(video.flow[0]).any()
        assert np.abs(np.load(video.flow[1])).max() > 0.1
    metadata = json.loads((out / "synth.json").read_text())
    assert metadata["seed"] == 1 and metadata["photographs"] == ["alpha", "beta", "gamma"]
    assert metadata["settings"]["subframes"] == 5 and metadata["photograph_source"] == "test"
    assert [v["name"] for v in metadata["videos"]] == [v.name for v in videos]
    assert all(v["background"] in photos for v in metadata["videos"])
    item = VideoClipDataset(out, clip_length=3, crop_size=(32, 32))[0]
    assert item["flow"].shape == (2, 2, 32, 32) and item["sharp"].shape == (3, 3, 32, 32)


def test_blur_needs_motion(photos):
    rng = np.random.default_rng(0)
    for frame in synth.render_video(photos["alpha"], STATIC, rng):
        difference = np.abs(frame.blurry.astype(int) - frame.sharp.astype(int))
        assert difference.max() <= 1  # mean of identical sub-frames, up to rounding
        assert not frame.flow.any()
    moving = synth.SynthSettings(frames=3, height=40, width=56, subframes=7, max_shift=6.0, object_probability=0)
    for frame in list(synth.render_video(photos["alpha"], moving, np.random.default_rng(0)))[1:]:
        assert np.abs(frame.blurry.astype(float) - frame.sharp).mean() > 2.0
        # Averaging smooths: the blurry frame has less high-frequency energy than the sharp one.
        assert cv2.Laplacian(frame.blurry, cv2.CV_64F).var() < cv2.Laplacian(frame.sharp, cv2.CV_64F).var()


def warp_errors(previous: np.ndarray, current: np.ndarray, flow: np.ndarray, valid: np.ndarray):
    """Mean absolute error (in [0, 1] units) over `valid` of warp(previous, flow) and of previous itself."""
    previous, current = as_tensor(previous), as_tensor(current)
    warped = warp(previous, torch.from_numpy(flow)[None].double())
    mask = torch.from_numpy(valid)
    flow_error = (warped - current).abs().mean(dim=1)[0][mask].mean().item()
    zero_error = (previous - current).abs().mean(dim=1)[0][mask].mean().item()
    return flow_error, zero_error


def assert_no_better_shift(previous, current, flow, valid, step=0.3):
    """The flow is exact, not just close: shifting it by a fraction of a pixel only increases the error."""
    exact = warp_errors(previous, current, flow, valid)[0]
    for dx, dy in ((step, 0), (-step, 0), (0, step), (0, -step)):
        shifted = flow + np.array([dx, dy], np.float32)[:, None, None]
        assert warp_errors(previous, current, shifted, valid)[0] > exact, (dx, dy)


def test_flow_files_warp_previous_sharp_frame_onto_current(tmp_path, photos):
    settings = synth.SynthSettings(frames=4, height=48, width=64, subframes=5, object_probability=0.0)
    out = synth.generate_dataset(tmp_path / "out", photos, 2, settings, seed=3)
    for video in list_videos(out):
        sharp = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in video.sharp]
        for t in range(1, settings.frames):
            flow = np.load(video.flow[t])
            # Judge only pixels whose source point lies inside the previous frame (border occlusions).
            ys, xs = np.mgrid[0:48, 0:64]
            inside = ((xs + flow[0] >= 0) & (xs + flow[0] <= 63) & (ys + flow[1] >= 0) & (ys + flow[1] <= 47))
            assert inside.mean() > 0.6
            flow_error, zero_error = warp_errors(sharp[t - 1], sharp[t], flow, inside)
            assert zero_error > 0.02, "the camera barely moved: the check would be vacuous"
            assert flow_error < 0.2 * zero_error, (t, flow_error, zero_error)
            assert_no_better_shift(sharp[t - 1], sharp[t], flow, inside)
            # The opposite convention (forward flow) must fail.
            assert warp_errors(sharp[t - 1], sharp[t], -flow, inside)[0] > 0.5 * zero_error


def test_flow_with_moving_object(photos):
    settings = synth.SynthSettings(frames=4, height=64, width=64, subframes=5, object_probability=1.0,
                                   max_object_shift=6.0)
    frames = list(synth.render_video(photos["beta"], settings, np.random.default_rng(2), photos["gamma"]))
    for previous, current in zip(frames[:-1], frames[1:]):
        assert 0.3 < current.valid.mean() < 1.0  # borders and the object's outline are excluded
        # Object and background pixels are judged apart: the object is too small to matter in a global mean.
        for region in (current.on_object, ~current.on_object):
            judged = current.valid & region
            assert judged.sum() > 100
            flow_error, zero_error = warp_errors(previous.sharp, current.sharp, current.flow, judged)
            # The small object resamples its fine texture more coarsely, hence a looser bound than the files'.
            assert zero_error > 0.02 and flow_error < 0.3 * zero_error, (flow_error, zero_error)
            assert_no_better_shift(previous.sharp, current.sharp, current.flow, judged)


def test_photograph_selection():
    names = ["a", "b", "c"]
    assert synth.select_photographs(names) == names
    assert synth.select_photographs(names, include=["c", "a"]) == ["a", "c"]
    assert synth.select_photographs(names, exclude=["b"]) == ["a", "c"]
    with pytest.raises(ValueError, match="unknown.*zz"):
        synth.select_photographs(names, include=["zz"])
    with pytest.raises(ValueError, match="unknown.*zz"):
        synth.select_photographs(names, exclude=["zz"])
    with pytest.raises(ValueError, match="no photograph left"):
        synth.select_photographs(names, include=["a"], exclude=["a"])


def test_builtin_photographs():
    pytest.importorskip("skimage")
    names = synth.builtin_photograph_names()
    assert {"astronaut", "camera", "chelsea", "coffee", "rocket"} <= set(names)
    loaded = synth.load_builtin_photographs(["camera", "chelsea"])
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for image in loaded.values())
    with pytest.raises(ValueError, match="unknown"):
        synth.load_builtin_photographs(["not_a_photo"])


def test_bad_settings():
    with pytest.raises(ValueError, match="subframes"):
        synth.SynthSettings(subframes=0)
    with pytest.raises(ValueError, match="max_shift"):
        synth.SynthSettings(max_shift=-1.0)
    with pytest.raises(ValueError, match="object_probability"):
        synth.SynthSettings(object_probability=2.0)
    with pytest.raises(ValueError, match="RGB uint8"):
        next(synth.render_video(np.zeros((50, 50), np.uint8), SETTINGS, np.random.default_rng(0)))


def test_failed_run_leaves_nothing(tmp_path, photos, monkeypatch):
    calls = []

    def failing_write(path, rgb):
        calls.append(path)
        if len(calls) > 3:
            raise OSError("disk full")
        cv2.imwrite(str(path), rgb)

    monkeypatch.setattr(synth, "write_png", failing_write)
    with pytest.raises(OSError, match="disk full"):
        synth.generate_dataset(tmp_path / "out", photos, 1, SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, photo_folder, capsys):
    out = tmp_path / "set"
    args = ["synth", str(out), "--videos", "1", "--frames", "3", "--size", "32x40", "--subframes", "3",
            "--images", str(photo_folder), "--exclude", "beta", "--seed", "9"]
    assert main(args) == 0
    metadata = json.loads((out / "synth.json").read_text())
    assert metadata["photographs"] == ["alpha", "gamma"] and metadata["seed"] == 9
    assert metadata["settings"]["height"] == 32 and metadata["settings"]["width"] == 40
    assert len(list((out / "synth_0000" / "sharp").iterdir())) == 3
    capsys.readouterr()
    assert main(args) == 1  # one-line error, exit status 1, like every command
    error = capsys.readouterr().err
    assert "pvd synth: error:" in error and "already exists" in error
    assert main(args + ["--overwrite", "--photos", "alpha", "--exclude", ""]) == 0
    assert json.loads((out / "synth.json").read_text())["photographs"] == ["alpha"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    capsys.readouterr()
    assert main(["synth", "--list-photos", "--images", str(photo_folder)]) == 0
    assert capsys.readouterr().out.split() == ["alpha", "beta", "gamma"]
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "x"), "--size", "big"])
