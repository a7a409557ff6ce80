"""`pvd demo`: the promised files and their sizes, scores recomputed from the written PNGs, the refusal without
weights, --overwrite, repeatability, and (once they exist) the bundled weights.

The networks run with the PyTorch reference kernels (TRITON_INTERPRET=0): the interpreter is too slow for them.
"""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch

from pvd import demo, runtime, stream, weights
from pvd.kernels import cpu
from pvd.cli import main
from pvd.weights import DEFAULT_WEIGHTS

FRAMES = 3
HEIGHT, WIDTH = 48, 64  # not square, so a swapped height and width shows
SEED = 3


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def no_default_weights(monkeypatch, tmp_path_factory):
    """The default checkpoint is absent, whether or not the real one has been trained."""
    absent = tmp_path_factory.mktemp("weights") / "absent.safetensors"
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", absent)
    return absent


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One untrained `pvd demo` at a tiny size: (output folder, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("cli") / "demo_out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "0")
        patch.setattr(weights, "DEFAULT_WEIGHTS", tmp_path_factory.mktemp("w") / "absent.safetensors")
        code, stdout, stderr = _run_cli(["demo", "-o", str(out), "--allow-untrained", "--frames", str(FRAMES),
                                         "--size", f"{HEIGHT}x{WIDTH}", "--seed", str(SEED), "--quiet"])
    return out, code, stdout, stderr


def _read_rgb(path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _frames(folder) -> list[np.ndarray]:
    return [_read_rgb(path) for path in sorted(folder.glob("*.png"))]


def _mp4_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _numpy_psnr(result: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((result.astype(np.float64) / 255 - reference.astype(np.float64) / 255) ** 2)
    return float(10 * np.log10(1.0 / mse))


def test_demo_writes_every_promised_file_with_the_right_sizes(cli_run):
    out, code, _, stderr = cli_run
    assert code == 0, stderr
    names = [f"{index:05d}.png" for index in range(FRAMES)]
    for folder in ("blurry", "sharp", "deblurred"):
        assert sorted(p.name for p in (out / folder).iterdir()) == names
        for frame in _frames(out / folder):
            assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
    video = _mp4_frames(out / "deblurred.mp4")
    assert len(video) == FRAMES
    assert all(frame.shape == (HEIGHT, WIDTH, 3) for frame in video)

    # side_by_side.png: a label bar above blurry | deblurred | sharp of the middle frame, pixel for pixel.
    side = _read_rgb(out / "side_by_side.png")
    assert side.shape[1] == 3 * WIDTH and HEIGHT < side.shape[0] <= 2 * HEIGHT
    middle = FRAMES // 2
    panels = side[-HEIGHT:]
    for column, folder in enumerate(("blurry", "deblurred", "sharp")):
        expected = _read_rgb(out / folder / names[middle])
        np.testing.assert_array_equal(panels[:, column * WIDTH:(column + 1) * WIDTH], expected)
    labels = side[:-HEIGHT]
    assert labels.std() > 0, "the label bar holds no text"

    results = json.loads((out / "results.json").read_text())
    assert (results["frames"], results["height"], results["width"], results["seed"]) == (FRAMES, HEIGHT, WIDTH, SEED)
    assert results["device"] == str(runtime.resolve_device("auto"))
    assert results["untrained"] is True and results["weights"] is None
    # Nothing else next to the output: the temporary folder was renamed, not left behind.
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_reported_scores_match_a_recomputation_from_the_written_pngs(cli_run):
    from skimage.metrics import structural_similarity

    out, code, stdout, _ = cli_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    sharp, blurry, deblurred = (_frames(out / folder) for folder in ("sharp", "blurry", "deblurred"))
    for kind, frames in (("blurry", blurry), ("deblurred", deblurred)):
        psnrs = [_numpy_psnr(frame, reference) for frame, reference in zip(frames, sharp, strict=True)]
        ssims = [structural_similarity(frame / 255.0, reference / 255.0, channel_axis=2, data_range=1.0)
                 for frame, reference in zip(frames, sharp, strict=True)]
        np.testing.assert_allclose(results["per_frame"][f"psnr_{kind}"], psnrs, rtol=0, atol=1e-9)
        np.testing.assert_allclose(results["per_frame"][f"ssim_{kind}"], ssims, rtol=0, atol=1e-9)
        assert results[f"psnr_{kind}"] == pytest.approx(np.mean(psnrs), abs=1e-9)
        assert results[f"ssim_{kind}"] == pytest.approx(np.mean(ssims), abs=1e-9)
        # The printed table shows the same means.
        row = next(line for line in stdout.splitlines() if line.startswith("blurry input" if kind == "blurry"
                                                                          else "deblurred"))
        assert row.split()[-2:] == [f"{np.mean(psnrs):.2f}", f"{np.mean(ssims):.4f}"]
    # A real blur, and the network did change the frames.
    assert all(np.isfinite(_numpy_psnr(b, s)) and _numpy_psnr(b, s) < 40 for b, s in zip(blurry, sharp, strict=True))
    assert any(not np.array_equal(b, d) for b, d in zip(blurry, deblurred, strict=True))
    assert "elapsed" in stdout and results["device"] in stdout


def test_untrained_run_says_so_loudly(cli_run):
    _, code, stdout, stderr = cli_run
    assert code == 0
    assert "UNTRAINED" in stdout and "MEANINGLESS" in stderr


def test_refuses_without_weights_and_writes_nothing(no_default_weights, tmp_path):
    out = tmp_path / "demo_out"
    code, _, stderr = _run_cli(["demo", "-o", str(out), "--frames", "2", "--size", "32x32", "--quiet"])
    assert code == 1
    assert "--allow-untrained" in stderr and str(no_default_weights) in stderr and "do not exist" in stderr
    assert list(tmp_path.iterdir()) == [], "a refused demo left files behind"
    with pytest.raises(weights.UntrainedModelError, match="--allow-untrained"):
        demo.run_demo(out, frames=2, size=(32, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("job_pays_off", [False, True])
def test_a_small_demo_skips_the_compiled_kernels(no_default_weights, tmp_path, monkeypatch, job_pays_off,
                                                 compiled_pixel_volume_calls):
    """Outside the interpreter the demo runs the compiled CPU kernels only when its frames x pixels reach
    `cpu.COMPILED_MIN_JOB_PIXELS` (their start-up costs more than a small job gains)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    frames, size = 2, (32, 32)
    monkeypatch.setattr(cpu, "COMPILED_MIN_JOB_PIXELS", frames * size[0] * size[1] + (0 if job_pays_off else 1))
    calls = compiled_pixel_volume_calls
    with pytest.warns(UserWarning, match="UNTRAINED"):
        demo.run_demo(tmp_path / "out", frames=frames, size=size, allow_untrained=True, device="cpu")
    assert len(calls) == (frames if job_pays_off else 0)
    assert cpu.native_serves(torch.zeros(1))  # the switch is back after the run


def test_bad_arguments_raise_value_errors(no_default_weights, tmp_path):
    for frames, size in ((0, (32, 32)), (2, (4, 32)), (2, (32,))):
        with pytest.raises(ValueError):
            demo.run_demo(tmp_path / "out", frames=frames, size=size, allow_untrained=True)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_semantics_and_repeatability(no_default_weights, tmp_path):
    out = tmp_path / "demo_out"
    options = {"frames": 2, "size": (32, 32), "seed": SEED, "allow_untrained": True}
    with pytest.warns(UserWarning, match="UNTRAINED"):
        first = demo.run_demo(out, **options)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(first))
    first_frames = {folder: _frames(out / folder) for folder in ("blurry", "sharp", "deblurred")}
    marker = out / "marker.txt"
    marker.write_text("from an earlier run")

    with pytest.raises(ValueError, match="already exists"):
        demo.run_demo(out, **options)
    code, _, stderr = _run_cli(["demo", "-o", str(out), "--allow-untrained", "--frames", "2", "--size", "32x32",
                                "--quiet"])
    assert code == 1 and "already exists" in stderr
    assert marker.exists(), "a refused run touched the existing output"

    with pytest.warns(UserWarning, match="UNTRAINED"):
        demo.run_demo(out, overwrite=True, **options)
    assert not marker.exists(), "--overwrite kept a file of the old output"
    for folder, frames in first_frames.items():  # same seed, same frames
        again = _frames(out / folder)
        assert len(again) == len(frames) == 2
        for old, new in zip(frames, again, strict=True):
            np.testing.assert_array_equal(old, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_out"]

    # The seed is used: another one draws another camera motion.
    with pytest.warns(UserWarning, match="UNTRAINED"):
        demo.run_demo(tmp_path / "other", **{**options, "seed": SEED + 1})
    assert not np.array_equal(_frames(tmp_path / "other" / "blurry")[0], first_frames["blurry"][0])


def test_bundled_photograph_loads_without_scikit_image():
    photograph = demo.load_photograph()
    assert photograph.dtype == np.uint8 and photograph.ndim == 3 and photograph.shape[2] == 3
    assert min(photograph.shape[:2]) >= 256
    assert photograph.std() > 20  # a real picture, not a flat placeholder


def test_bundled_weights_load():
    assert weights.load_state_dict_file(DEFAULT_WEIGHTS).architecture == "deblurnet"
    model = weights.load_model(DEFAULT_WEIGHTS, device="cpu")
    frame = np.full((32, 32, 3), 128, dtype=np.uint8)
    frame[8:24, 8:24] = 200
    outputs = list(stream.deblur_frames(model, [frame], device="cpu"))
    assert len(outputs) == 1 and outputs[0].shape == frame.shape and outputs[0].dtype == np.uint8
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in model.parameters())
