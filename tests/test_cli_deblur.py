"""`pvd deblur` and `pvd convert`: outputs, the untrained-weights refusal, bad inputs, checkpoint conversion."""

from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pvd import stream, weights
from pvd.kernels import cpu
from pvd.cli import main
from pvd.nets import DeblurNet


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(autouse=True)
def no_default_weights(monkeypatch, tmp_path_factory):
    """Tests never pick up a real default checkpoint: they pass --weights or --allow-untrained."""
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", tmp_path_factory.mktemp("w") / "absent.safetensors")


class TinyModel(nn.Module):
    """Stand-in for the networks in tests about files: identity-plus-conv with the real interfaces."""

    def __init__(self):
        super().__init__()
        self.bimnet = _TinyFlow()
        self.pvdnet = _TinyDeblur()


class _TinyFlow(nn.Module):
    def forward(self, image1, image2):
        assert image1.shape[-1] % 32 == 0 and image1.shape[-2] % 32 == 0
        return torch.zeros(image1.shape[0], 2, image1.shape[2] // 2, image1.shape[3] // 2)


class _TinyDeblur(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(25, 3, 1)

    def forward(self, pixel_volume, prev, curr, next):  # noqa: A002
        return curr + 0.01 * self.conv(pixel_volume)


@pytest.fixture
def tiny_model(monkeypatch):
    model = TinyModel()
    monkeypatch.setattr(stream, "load_model", lambda *args, **kwargs: model)
    return model


def _frames(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), (width, height)) for _ in range(count)]


def _frame_folder(folder, count, height, width, seed=0):
    folder.mkdir(parents=True)
    for index, frame in enumerate(_frames(count, height, width, seed)):
        assert cv2.imwrite(str(folder / f"{index:03d}.png"), frame[:, :, ::-1])
    return folder


def _mp4(path, count, height, width):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for frame in _frames(count, height, width):
        writer.write(frame[:, :, ::-1].copy())
    writer.release()
    return path


def _video_shape(path):
    capture = cv2.VideoCapture(str(path))
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, frame.shape
    capture.release()
    return count, size


def _leftovers(directory):
    return [p.name for p in directory.rglob("*") if ".pvd-" in p.name]


def test_refuses_random_weights_without_allow_untrained(tmp_path, capsys):
    clip = _frame_folder(tmp_path / "clip", 2, 16, 16)
    assert main(["deblur", str(clip), "-o", str(tmp_path / "out")]) == 1
    assert "--allow-untrained" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_frame_folder_with_random_weights_keeps_count_size_and_names(tmp_path, capsys):
    clip = _frame_folder(tmp_path / "clip", 2, 20, 28)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="random"):
        rc = main(["deblur", str(clip), "-o", str(out), "--allow-untrained", "--format", "both", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "001.png"]
    for path in out.iterdir():
        assert cv2.imread(str(path)).shape == (20, 28, 3)
    assert _video_shape(tmp_path / "out.mp4") == (2, (20, 28, 3))
    assert _leftovers(tmp_path) == []


def test_mp4_input_with_weights_file_side_by_side(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = weights.save(DeblurNet(), tmp_path / "model.safetensors")
    video = _mp4(tmp_path / "clip.mp4", 3, 16, 24)
    out = tmp_path / "result.mp4"
    rc = main(["deblur", str(video), "-o", str(out), "--weights", str(checkpoint), "--side-by-side", "--quiet",
               "--device", "cpu", "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    assert _video_shape(out) == (3, (16, 48, 3))
    assert not (tmp_path / "result").exists()  # mp4 only


def test_python_api_on_a_folder_of_videos(tmp_path, tiny_model):
    _frame_folder(tmp_path / "in" / "b", 3, 12, 12, seed=1)
    _frame_folder(tmp_path / "in" / "a", 1, 9, 13, seed=2)
    with pytest.warns(UserWarning, match="even"):  # a's 13x9 frames get one padded pixel row/column in its mp4
        results = stream.deblur_video(tmp_path / "in", tmp_path / "out", format="both", progress=False)
    assert [(r.name, r.frames) for r in results] == [("a", 1), ("b", 3)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "a.mp4", "b", "b.mp4"]
    assert len(list((tmp_path / "out" / "b").iterdir())) == 3
    assert cv2.imread(str(tmp_path / "out" / "a" / "000.png")).shape == (9, 13, 3)


@pytest.mark.parametrize("job_pays_off", [False, True])
def test_the_compiled_kernels_serve_only_jobs_worth_their_start_up(tmp_path, tiny_model, monkeypatch, job_pays_off,
                                                                    compiled_pixel_volume_calls):
    """deblur_video counts the job's frames x pixels over all its videos (one image: its pixels) and runs the
    compiled pixel volume only from `cpu.COMPILED_MIN_JOB_PIXELS` on."""
    _frame_folder(tmp_path / "in" / "a", 3, 12, 16, seed=1)
    _frame_folder(tmp_path / "in" / "b", 2, 8, 8, seed=2)
    job_pixels = 3 * 12 * 16 + 2 * 8 * 8
    monkeypatch.setattr(cpu, "COMPILED_MIN_JOB_PIXELS", job_pixels + (0 if job_pays_off else 1))
    calls = compiled_pixel_volume_calls
    stream.deblur_video(tmp_path / "in", tmp_path / "out", progress=False)
    assert len(calls) == (5 if job_pays_off else 0)
    calls.clear()
    monkeypatch.setattr(cpu, "COMPILED_MIN_JOB_PIXELS", 12 * 16 + (0 if job_pays_off else 1))
    stream.deblur_video(tmp_path / "in" / "a" / "000.png", tmp_path / "one.png", progress=False)
    assert len(calls) == (1 if job_pays_off else 0)


def test_job_pixels_is_unknown_when_a_container_does_not_count_its_frames():
    video = types.SimpleNamespace
    assert stream._job_pixels([video(frame_count=3, width=16, height=12), video(frame_count=2, width=8, height=8)]) \
        == 3 * 12 * 16 + 2 * 8 * 8
    assert stream._job_pixels([video(frame_count=3, width=16, height=12), video(frame_count=0, width=8, height=8)]) \
        is None


def test_original_size_policy_output_is_the_multiple_of_4_crop(tmp_path, tiny_model):
    clip = _frame_folder(tmp_path / "clip", 2, 18, 23)
    stream.deblur_video(clip, tmp_path / "out", size_policy="original", progress=False)
    assert cv2.imread(str(tmp_path / "out" / "000.png")).shape == (16, 20, 3)


def test_existing_output_needs_overwrite(tmp_path, tiny_model, capsys):
    clip = _frame_folder(tmp_path / "clip", 1, 8, 8)
    (tmp_path / "out").mkdir()
    assert main(["deblur", str(clip), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["deblur", str(clip), "-o", str(tmp_path / "out"), "--quiet", "--overwrite"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["000.png"]


def _corrupt_last(folder):
    frames = sorted(folder.iterdir())
    frames[-1].write_bytes(b"not an image")


def _resize_last(folder):
    frames = sorted(folder.iterdir())
    assert cv2.imwrite(str(frames[-1]), np.zeros((6, 6, 3), np.uint8))


def _empty(folder):
    for frame in folder.iterdir():
        frame.unlink()


@pytest.mark.parametrize("spoil,message", [
    (None, "no such file"),
    (_corrupt_last, "003.png: corrupt"),
    (_resize_last, "003.png: frame size"),
    (_empty, "empty folder"),
])
@pytest.mark.parametrize("output_format", ["png", "both"])
def test_bad_input_leaves_no_partial_output(tmp_path, tiny_model, capsys, spoil, message, output_format):
    clip = tmp_path / "in" / "clip"
    _frame_folder(clip, 4, 8, 8)
    if spoil is None:
        clip = tmp_path / "in" / "missing"
    else:
        spoil(clip)
    out_parent = tmp_path / "results"
    out_parent.mkdir()
    rc = main(["deblur", str(clip), "-o", str(out_parent / "new" / "out"), "--format", output_format, "--quiet"])
    assert rc == 1
    assert message in capsys.readouterr().err
    assert list(out_parent.iterdir()) == []


def test_failure_in_a_later_video_removes_only_that_video(tmp_path, tiny_model):
    _frame_folder(tmp_path / "in" / "a", 2, 8, 8)
    _frame_folder(tmp_path / "in" / "b", 3, 8, 8)
    _corrupt_last(tmp_path / "in" / "b")
    with pytest.raises(ValueError, match="002.png"):
        stream.deblur_video(tmp_path / "in", tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]


def test_convert_an_original_checkpoint(tmp_path, capsys):
    torch.manual_seed(1)
    model = DeblurNet()
    original = {f"module.{DeblurNet.original_key(name)}": tensor for name, tensor in model.state_dict().items()}
    source = tmp_path / "PVDNet_DVD.pytorch"
    torch.save(original, source)
    target = tmp_path / "pvdnet_dvd.safetensors"
    assert main(["convert", str(source), str(target)]) == 0, capsys.readouterr().err
    loaded = weights.load(target)
    assert isinstance(loaded, DeblurNet) and not loaded.large
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    assert main(["convert", str(source), str(target)]) == 1  # exists
    assert main(["convert", str(tmp_path / "missing.pytorch"), str(tmp_path / "x.safetensors")]) == 1
    assert "missing.pytorch" in capsys.readouterr().err


def test_write_error_mid_video_leaves_no_partial_output(tmp_path, tiny_model, monkeypatch):
    from pvd import video_io

    clip = _frame_folder(tmp_path / "clip", 5, 8, 8)
    real_write = video_io.VideoWriter.write

    def failing_write(self, frame):
        if self.count == 2:
            raise OSError("disk full")
        real_write(self, frame)

    monkeypatch.setattr(video_io.VideoWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        stream.deblur_video(clip, tmp_path / "out" / "frames", format="both", progress=False)
    assert not (tmp_path / "out").exists()


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["folder", "inside", "video"])
def test_an_output_that_would_overwrite_the_input_is_refused_even_with_overwrite(tmp_path, tiny_model, capsys,
                                                                                layout):
    """`pvd deblur f/ -o f/ --overwrite` used to replace the input frames by the output."""
    if layout == "video":
        source = _mp4(tmp_path / "v.mp4", 2, 16, 16)
        target, before = source, source.read_bytes()
    else:
        source = _frame_folder(tmp_path / "f", 2, 16, 16)
        target = source if layout == "folder" else source / "deblurred"
        before = _snapshot(source)
    assert main(["deblur", str(source), "-o", str(target), "--overwrite", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "would overwrite the input" in error and "--overwrite" in error and error.count("\n") == 1
    assert (source.read_bytes() if layout == "video" else _snapshot(source)) == before


def test_two_inputs_mapped_to_one_output_are_refused_before_any_work(tmp_path, tiny_model, capsys):
    """`clip/` and `clip.mp4` both map to OUT/clip: refused up front, with or without --overwrite."""
    _frame_folder(tmp_path / "in" / "clip", 2, 16, 16)
    _mp4(tmp_path / "in" / "clip.mp4", 2, 16, 16)
    for extra in ([], ["--overwrite"]):
        assert main(["deblur", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet", *extra]) == 1
        error = capsys.readouterr().err
        assert "would both be written to" in error and "clip" in error
        assert not (tmp_path / "out").exists()


def test_a_single_image_gives_a_single_image(tmp_path, tiny_model, capsys):
    """`-o single.png` used to become a folder holding 000.png."""
    clip = _frame_folder(tmp_path / "clip", 1, 20, 28)
    for name in ("single.png", "single.jpg"):
        assert main(["deblur", str(clip / "000.png"), "-o", str(tmp_path / name), "--quiet"]) == 0, \
            capsys.readouterr().err
        assert (tmp_path / name).is_file() and cv2.imread(str(tmp_path / name)).shape == (20, 28, 3)
    assert main(["deblur", str(clip / "000.png"), "-o", str(tmp_path / "single.png"), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_a_quoted_glob_of_frames_is_one_video(tmp_path, tiny_model, capsys):
    clip = _frame_folder(tmp_path / "clip", 3, 12, 16)
    cv2.imwrite(str(clip / "notes.jpg"), np.zeros((12, 16, 3), np.uint8))  # not matched by *.png
    assert main(["deblur", str(clip / "*.png"), "-o", str(tmp_path / "out"), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000.png", "001.png", "002.png"]
    assert main(["deblur", str(tmp_path / "nothing" / "*.png"), "-o", str(tmp_path / "o2"), "--quiet"]) == 1
    assert "matches no frames" in capsys.readouterr().err


def test_a_data_set_root_given_to_deblur_points_to_eval(tmp_path, tiny_model, capsys):
    """A GoPro-layout root (<root>/<video>/blur_gamma/...) used to be called an 'empty folder'."""
    _frame_folder(tmp_path / "data" / "v1" / "blur_gamma", 2, 12, 12)
    _frame_folder(tmp_path / "data" / "v1" / "sharp", 2, 12, 12)
    assert main(["deblur", str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "pvd eval" in error and "blur_gamma" in error and "empty folder" not in error


def _truncated_avi(path, frames=10, keep=0.4):
    """An MJPG avi whose header announces `frames` frames, cut to its first `keep` of bytes."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_damaged_video_is_reported_and_refused_under_strict(tmp_path, tiny_model, capsys):
    """An avi announcing 10 frames of which 1 decodes used to give exit 0, 1 frame, no word of it."""
    video = _truncated_avi(tmp_path / "damaged.avi")
    with pytest.warns(UserWarning, match=r"only 1 of the 10 frames"):
        assert main(["deblur", str(video), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert "TRUNCATED: 1 of 10" in capsys.readouterr().out
    assert main(["deblur", str(video), "-o", str(tmp_path / "strict"), "--quiet", "--strict"]) == 1
    error = capsys.readouterr().err
    assert "only 1 of the 10 frames" in error and "--strict" in error
    assert not (tmp_path / "strict").exists() and _leftovers(tmp_path) == []
