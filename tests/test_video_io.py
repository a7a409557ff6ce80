"""Video input/output: frame folders, video files, 16-bit/gray/RGBA frames, errors, atomic writers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pvd import video_io
from pvd.video_io import VideoError, VideoWriter, find_videos


def _frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB uint8 frames (smooth so that lossy mp4 round trips stay close)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
        frames.append(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR))
    return frames


def _write_png(path, rgb: np.ndarray) -> None:
    """Write an RGB (or gray / RGBA given as is) frame with OpenCV, independent of pvd's writer."""
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = rgb[:, :, ::-1]
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[:, :, [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), rgb)


def _no_leftovers(directory) -> bool:
    return not any(p.name.startswith(".") and ".partial-" in p.name for p in directory.iterdir())


def test_frame_folder_round_trip_in_natural_order(tmp_path):
    frames = _frames(3, 10, 14)
    folder = tmp_path / "clip"
    folder.mkdir()
    for name, frame in zip(["f2.png", "f10.png", "f1.png"], [frames[1], frames[2], frames[0]]):
        _write_png(folder / name, frame)
    (folder / "notes.txt").write_text("not a frame")
    [video] = find_videos(folder)
    assert (video.name, video.width, video.height, video.frame_count, video.fps) == ("clip", 14, 10, 3, None)
    assert [p.name for p in video.frame_paths] == ["f1.png", "f2.png", "f10.png"]
    read = list(video)
    assert len(read) == 3
    for got, want in zip(read, frames):
        assert got.dtype == np.uint8 and got.shape == (10, 14, 3)
        np.testing.assert_array_equal(got, want)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 65536, size=(6, 8, 3), dtype=np.uint16)
    _write_png(tmp_path / "0.png", frame)
    [video] = find_videos(tmp_path)
    [read] = list(video)
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, frame)


def test_gray_and_rgba_become_rgb_with_a_warning(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    rgba = np.dstack([_frames(1, 6, 8)[0], np.full((6, 8), 7, np.uint8)])
    for name, frame in (("gray", gray), ("rgba", rgba)):
        (tmp_path / name).mkdir()
        _write_png(tmp_path / name / "0.png", frame)
    with pytest.warns(UserWarning, match="gray"):
        [read] = list(find_videos(tmp_path / "gray")[0])
    np.testing.assert_array_equal(read, np.dstack([gray] * 3))
    with pytest.warns(UserWarning, match="RGBA"):
        [read] = list(find_videos(tmp_path / "rgba")[0])
    np.testing.assert_array_equal(read, rgba[:, :, :3])


def test_folder_of_videos(tmp_path):
    for name, count in (("b", 2), ("a", 3)):
        (tmp_path / name).mkdir()
        for index, frame in enumerate(_frames(count, 8, 8, seed=count)):
            _write_png(tmp_path / name / f"{index}.jpg", frame)
    (tmp_path / "empty").mkdir()
    videos = find_videos(tmp_path)
    assert [(v.name, v.frame_count) for v in videos] == [("a", 3), ("b", 2)]


def test_mp4_round_trip_through_opencv(tmp_path):
    frames = _frames(4, 32, 48)
    target = tmp_path / "clip.mp4"
    with VideoWriter(video_path=target, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    assert target.is_file() and _no_leftovers(tmp_path)
    [video] = find_videos(target)
    assert (video.width, video.height, video.frame_count) == (48, 32, 4)
    assert video.fps == pytest.approx(12, abs=0.01)
    read = list(video)
    assert len(read) == 4
    for got, want in zip(read, frames):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 6  # lossy codec, smooth content


def test_png_writer_names_and_sixteen_bits(tmp_path):
    frame16 = np.random.default_rng(2).integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    with VideoWriter(frames_dir=tmp_path / "out", frame_names=["x", "y"]) as writer:
        writer.write(frame16)
        writer.write(frame16)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png", "y.png"]
    back = cv2.imread(str(tmp_path / "out" / "y.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(back, frame16)


def test_writer_error_leaves_no_partial_output(tmp_path):
    frames = _frames(2, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(frames_dir=tmp_path / "out", video_path=tmp_path / "out.mp4") as writer:
            writer.write(frames[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_overwrite_unless_asked(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.png").write_bytes(b"old")
    with pytest.raises(VideoError, match="already exists"):
        VideoWriter(frames_dir=tmp_path / "out")
    with VideoWriter(frames_dir=tmp_path / "out", overwrite=True) as writer:
        writer.write(_frames(1, 4, 4)[0])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["00000.png"]
    assert _no_leftovers(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(VideoError, match="nope"):
        find_videos(tmp_path / "nope")


def test_empty_folder(tmp_path):
    (tmp_path / "clip").mkdir()
    with pytest.raises(VideoError, match=r"clip.*empty"):
        find_videos(tmp_path / "clip")


def test_corrupt_frame_is_named(tmp_path):
    frames = _frames(3, 6, 6)
    for index, frame in enumerate(frames):
        _write_png(tmp_path / f"{index}.png", frame)
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    video = find_videos(tmp_path)[0]
    iterator = iter(video)
    next(iterator)
    with pytest.raises(VideoError, match=r"1\.png.*corrupt"):
        next(iterator)


def test_differing_frame_sizes_are_named(tmp_path):
    _write_png(tmp_path / "0.png", _frames(1, 6, 6)[0])
    _write_png(tmp_path / "1.png", _frames(1, 6, 8)[0])
    with pytest.raises(VideoError, match=r"1\.png.*differs"):
        list(find_videos(tmp_path)[0])


def test_corrupt_video_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(VideoError, match="bad.mp4"):
        list(find_videos(bad)[0])


def test_natural_key_orders_numbers_by_value():
    names = ["frame10.png", "frame9.png", "Frame1.png", "frame100.png"]
    assert sorted(names, key=video_io.natural_key) == ["Frame1.png", "frame9.png", "frame10.png", "frame100.png"]


def test_mp4_of_odd_size_is_padded_to_even_with_a_warning(tmp_path):
    frame = _frames(1, 7, 9)[0]
    with pytest.warns(UserWarning, match="even"):
        with VideoWriter(video_path=tmp_path / "odd.mp4") as writer:
            writer.write(frame)
            writer.write(frame)
    [video] = find_videos(tmp_path / "odd.mp4")
    assert (video.width, video.height) == (10, 8)
    assert len(list(video)) == 2
