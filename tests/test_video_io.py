"""Video input/output: frame folders, video files (PyAV: h264, exact rates, timestamps, audio, rotation,
metadata), 16-bit/gray/RGBA frames, errors, atomic writers, and running without PyAV."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from pvd import av_codec, video_io
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
    return not any(p.name.startswith(".") and ".pvd-" in p.name for p in directory.iterdir())


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


def test_mp4_round_trip(tmp_path):
    frames = _frames(4, 96, 128)  # large enough for 4:2:0 chroma to hold smooth colours
    target = tmp_path / "clip.mp4"
    with VideoWriter(video_path=target, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    assert target.is_file() and _no_leftovers(tmp_path)
    [video] = find_videos(target)
    assert (video.width, video.height, video.frame_count) == (128, 96, 4)
    assert video.fps == pytest.approx(12, abs=0.01) and video.rate == 12
    read = list(video)
    assert len(read) == 4
    for got, want in zip(read, frames):
        assert got.shape == want.shape
        assert _psnr(got, want) > 38  # h264 at CRF 17 (visually lossless) on smooth content
    with av.open(str(target)) as container:
        context = container.streams.video[0].codec_context
        assert (context.name, context.pix_fmt) == ("h264", "yuv420p")


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


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


AUDIO_RATE = 16000
AUDIO_FRAME = 1024


def _make_source(path, frames, pts, time_base, rotation=0, title="my clip"):
    """A source file written with PyAV directly: h264 video at the given timestamps, a 1 s aac tone, a title."""
    out = av.open(str(path), "w")
    out.metadata["title"] = title
    video = out.add_stream("libx264", rate=Fraction(24000, 1001))
    video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
    video.codec_context.time_base = video.time_base = time_base
    if rotation:
        video.set_display_rotation(rotation)
    audio = out.add_stream("aac", rate=AUDIO_RATE)
    audio.layout = "mono"
    for frame, stamp in zip(frames, pts):
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        picture.pts, picture.time_base = stamp, time_base
        for packet in video.encode(picture):
            out.mux(packet)
    for packet in video.encode(None):
        out.mux(packet)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(AUDIO_RATE) / AUDIO_RATE)).astype(np.float32)[None]
    for start in range(0, AUDIO_RATE, AUDIO_FRAME):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + AUDIO_FRAME]), format="flt",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = AUDIO_RATE, start
        for packet in audio.encode(chunk):
            out.mux(packet)
    for packet in audio.encode(None):
        out.mux(packet)
    out.close()


def _timestamps_seconds(path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]


def _audio_payloads(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def test_variable_rate_source_keeps_timestamps_audio_rotation_and_metadata(tmp_path):
    frames = _frames(6, 96, 128)
    stamps_ms = [0, 40, 90, 200, 230, 400]  # irregular: a variable-rate clip
    source_path = tmp_path / "phone.mp4"
    _make_source(source_path, frames, stamps_ms, Fraction(1, 1000), rotation=90)
    [video] = find_videos(source_path)
    target = tmp_path / "out.mp4"
    decoded = list(video)
    with VideoWriter(video_path=target, fps=video.fps, source=video) as writer:
        for frame in decoded:
            writer.write(255 - frame)  # any processing: the pictures differ, the timing must not
    assert _timestamps_seconds(target) == pytest.approx([t / 1000 for t in stamps_ms], abs=1e-6)
    audio = _audio_payloads(target)
    assert audio and audio == _audio_payloads(source_path)  # copied packet for packet
    with av.open(str(target)) as container:
        assert container.metadata.get("title") == "my clip"
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert next(container.decode(video=0)).rotation == 90
    for got, want in zip(find_videos(target)[0], decoded):
        assert _psnr(got, 255 - want) > 38


def test_ntsc_rates_are_exact(tmp_path):
    assert av_codec.rate_from_fps(23.976) == Fraction(24000, 1001)
    assert av_codec.rate_from_fps(29.97) == Fraction(30000, 1001)
    assert av_codec.rate_from_fps(25) == 25 and av_codec.rate_from_fps(12.5) == Fraction(25, 2)
    target = tmp_path / "film.mp4"
    with VideoWriter(video_path=target, fps=23.976) as writer:
        for frame in _frames(5, 16, 16):
            writer.write(frame)
    [video] = find_videos(target)
    assert video.rate == Fraction(24000, 1001)
    assert _timestamps_seconds(target)[4] == pytest.approx(4 * 1001 / 24000, abs=1e-6)


def test_crf_sets_quality_and_is_checked(tmp_path):
    rng = np.random.default_rng(3)  # gray noise: no chroma, so 4:2:0 subsampling loses nothing
    noisy = [np.repeat(rng.integers(16, 236, size=(64, 64, 1), dtype=np.uint8), 3, axis=2) for _ in range(3)]
    sizes, quality = {}, {}
    for crf in (0, 40):
        target = tmp_path / f"crf{crf}.mp4"
        with VideoWriter(video_path=target, crf=crf) as writer:
            for frame in noisy:
                writer.write(frame)
        sizes[crf] = target.stat().st_size
        quality[crf] = min(_psnr(a, b) for a, b in zip(find_videos(target)[0], noisy))
    assert sizes[0] > 3 * sizes[40] and quality[0] > 40 > quality[40] + 10
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(video_path=tmp_path / "x.mp4", crf=60)


def test_image_formats_and_sixteen_bit_tiff(tmp_path):
    frame = _frames(1, 6, 8)[0]
    deep = np.random.default_rng(4).integers(0, 65536, size=(6, 8, 3), dtype=np.uint16)
    for suffix in ("bmp", "webp", "tif"):
        (tmp_path / suffix).mkdir()
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if suffix == "webp" else []  # 101: lossless WebP
        assert cv2.imwrite(str(tmp_path / suffix / f"0.{suffix}"), frame[:, :, ::-1], params)
        [read] = list(find_videos(tmp_path / suffix)[0])
        np.testing.assert_array_equal(read, frame)
    _write_png(tmp_path / "deep.tiff", deep)
    [read] = list(find_videos(tmp_path / "deep.tiff")[0])
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, deep)


def test_without_pyav_video_files_are_refused_and_frames_still_work(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    with VideoWriter(video_path=target) as writer:
        writer.write(_frames(1, 8, 8)[0])
    monkeypatch.setattr(av_codec, "HAS_AV", False)
    with pytest.raises(VideoError, match=r"clip\.mp4.*pip install av"):
        find_videos(target)
    with pytest.raises(VideoError, match="pip install av"):
        VideoWriter(video_path=tmp_path / "only.mp4")
    with pytest.warns(UserWarning, match="not written.*pip install av"):
        writer = VideoWriter(frames_dir=tmp_path / "frames", video_path=tmp_path / "both.mp4")
    with writer:
        writer.write(_frames(1, 8, 8)[0])
    assert writer.outputs == [tmp_path / "frames"] and not (tmp_path / "both.mp4").exists()
    assert len(list(find_videos(tmp_path / "frames")[0])) == 1
