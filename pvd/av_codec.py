"""Video files through PyAV (FFmpeg): decoding any container, encoding h264 with the source's audio and timing.

    probe(path) -> VideoInfo              # size, exact frame rate, frame count, time base (no decoding)
    decode(path) -> Iterator[ndarray]     # RGB (H, W, 3) uint8, or uint16 for sources of more than 8 bits
    H264Encoder(path, rate=..., crf=..., source=...)   # .encode(frame), .close(); .abort() on error

The encoder writes h264 (libx264) in yuv420p, BT.709, tagged as such. With `source` (the input video file) it
keeps the source's presentation timestamps (variable frame rates survive), copies its audio streams packet for
packet (no re-encoding) interleaved by time, copies the container and stream metadata, and the rotation the
source's display matrix asks players for. yuv420p needs even frame sides: an odd side is padded by one
replicated row/column (PNG outputs keep the exact size).

PyAV is optional: `HAS_AV` is False when it is not installed, and callers turn video-file features off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    import av
    HAS_AV = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAS_AV in the tests
    av = None
    HAS_AV = False

MISSING_AV_MESSAGE = "video files need PyAV (pip install av); frame folders still work"
CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
DEFAULT_CRF = 17  # visually lossless for h264
PRESET = "medium"
NTSC_DENOMINATOR = 1001  # 24000/1001 = 23.976, 30000/1001 = 29.97, 60000/1001 = 59.94
HIGH_BIT_DEPTH = 8  # sources above this many bits per component decode to 16-bit RGB
METADATA_SKIPPED = ("encoder", "major_brand", "minor_version", "compatible_brands", "handler_name", "vendor_id",
                    "creation_time", "duration", "rotate")


class CodecError(ValueError):
    """A video file cannot be read or written; the message names it."""


def require_av() -> None:
    if not HAS_AV:
        raise CodecError(MISSING_AV_MESSAGE)


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's first video stream says, without decoding.

    rate: exact average frame rate (e.g. 24000/1001) or None; frame_count: the container's count (0 when
    unknown; some files get it wrong), else estimated from the duration.
    """

    width: int
    height: int
    frame_count: int
    rate: Fraction | None


def rate_from_fps(fps: float) -> Fraction:
    """Frames per second -> an exact rate: the NTSC rates (23.976, 29.97, 59.94) become n*1000/1001."""
    if fps <= 0 or not np.isfinite(fps):
        raise ValueError(f"frame rate must be positive, got {fps}")
    ntsc = round(fps * NTSC_DENOMINATOR / 1000)
    if abs(fps - ntsc * 1000 / NTSC_DENOMINATOR) < 5e-3 and abs(fps - ntsc) > 5e-3:
        return Fraction(ntsc * 1000, NTSC_DENOMINATOR)
    return Fraction(fps).limit_denominator(NTSC_DENOMINATOR)


def _open_input(path: Path):
    require_av()
    try:
        container = av.open(str(path), "r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise CodecError(f"{path}: cannot open video (corrupt or unsupported format: {error})") from error
    if not container.streams.video:
        container.close()
        raise CodecError(f"{path}: holds no video stream")
    return container


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, exact rate and frame count of the first video stream of `path`. CodecError if it does not open."""
    path = Path(path)
    with _open_input(path) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = stream.frames
        if not count and rate and stream.duration and stream.time_base:
            count = round(float(stream.duration * stream.time_base * rate))
    if not width or not height:
        raise CodecError(f"{path}: video reports no frame size (corrupt or unsupported)")
    return VideoInfo(int(width), int(height), int(count or 0), Fraction(rate) if rate else None)


def _rgb(frame) -> np.ndarray:
    """A decoded frame -> RGB (H, W, 3): uint8, or uint16 when the source has more than 8 bits per component."""
    deep = any(component.bits > HIGH_BIT_DEPTH for component in frame.format.components)
    colorspace = "itu709" if int(frame.colorspace) == 1 else None  # AVCOL_SPC_BT709, else FFmpeg's default
    return frame.to_ndarray(format="rgb48le" if deep else "rgb24", src_colorspace=colorspace)


def decode(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of the first video stream of `path` in presentation order, as RGB numpy arrays.

    The pixels are as stored: players may rotate them by the display matrix, which `H264Encoder` copies.
    CodecError on a file that does not open or whose data is corrupt.
    """
    path = Path(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield _rgb(frame)
        except av.error.FFmpegError as error:
            raise CodecError(f"{path}: corrupt video data ({error})") from error
    finally:
        container.close()


class _Source:
    """What the encoder takes over from the input file: timestamps, audio packets, metadata, rotation."""

    def __init__(self, path: Path):
        self.path = path
        with _open_input(path) as container:
            stream = container.streams.video[0]
            self.time_base = stream.time_base
            self.metadata = {k: v for k, v in container.metadata.items() if k.lower() not in METADATA_SKIPPED}
            self.video_metadata = {k: v for k, v in stream.metadata.items() if k.lower() not in METADATA_SKIPPED}
            self.rotation = self._rotation(container)
        with _open_input(path) as container:  # packets only: the timestamps of every frame, without decoding
            self.pts = sorted(p.pts for p in container.demux(container.streams.video[0]) if p.pts is not None)
        self._audio_container = None
        self._audio_packets: Iterator | None = None
        self._pending_audio = None

    @staticmethod
    def _rotation(container) -> int:
        try:
            frame = next(container.decode(video=0))
        except (StopIteration, av.error.FFmpegError):
            return 0
        return int(round(frame.rotation or 0))

    def frame_pts(self, index: int, previous: int | None, step: int) -> int:
        """The source's timestamp of frame `index` (strictly increasing; extrapolated past the source's end)."""
        pts = self.pts[index] if index < len(self.pts) else None
        if pts is None:
            pts = (previous + step) if previous is not None else 0
        if previous is not None and pts <= previous:
            pts = previous + 1
        return pts

    def add_audio(self, output) -> None:
        """Add the source's audio streams to `output` as copies (same codec and parameters)."""
        container = av.open(str(self.path), "r")
        streams = list(container.streams.audio)
        if not streams:
            container.close()
            return
        self._audio_container = container
        self._map = {}
        for stream in streams:
            try:
                out = output.add_stream_from_template(stream)
            except (ValueError, av.error.FFmpegError) as error:
                warnings.warn(f"{self.path}: audio stream {stream.index} ({stream.codec_context.name}) cannot be "
                              f"copied into mp4, dropped ({error})", stacklevel=4)
                continue
            out.metadata.update({k: v for k, v in stream.metadata.items() if k.lower() not in METADATA_SKIPPED})
            self._map[stream.index] = out
        self._audio_packets = container.demux(*[s for s in streams if s.index in self._map]) if self._map else None

    def mux_audio_until(self, output, seconds: float | None) -> None:
        """Copy audio packets up to `seconds` (all remaining when None) into `output`, keeping their timestamps."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio
            self._pending_audio = None
            if packet is None:
                packet = next(self._audio_packets, None)
                if packet is None:
                    self.close()
                    return
            if packet.dts is None or packet.size == 0:  # demuxer flush packets
                continue
            if seconds is not None and packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending_audio = packet
                return
            packet.stream = self._map[packet.stream_index]
            output.mux(packet)

    def close(self) -> None:
        if self._audio_container is not None:
            self._audio_container.close()
        self._audio_container = self._audio_packets = self._pending_audio = None


class H264Encoder:
    """Encode RGB frames (H, W, 3) uint8/uint16 into an h264 mp4 at `path` (created; caller renames it).

    rate: frames per second as an exact Fraction (timestamps are frame numbers / rate unless `source`);
    crf: x264 constant rate factor (0 lossless .. 51; 17 visually lossless); source: the input video file whose
    timestamps, audio, metadata and rotation are kept. `label` names the output in warnings and errors.
    """

    def __init__(self, path: str | os.PathLike, rate: Fraction, crf: int = DEFAULT_CRF,
                 source: str | os.PathLike | None = None, label: str | None = None):
        require_av()
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
        self.path = Path(path)
        self.label = label or str(self.path)
        self.rate = Fraction(rate)
        self.crf = crf
        self.source = _Source(Path(source)) if source is not None else None
        self.count = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._last_pts: int | None = None

    def _start(self, height: int, width: int) -> None:
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            warnings.warn(f"{self.label}: h264 ({PIXEL_FORMAT}) needs even frame sides; {width}x{height} is padded "
                          f"to {width + pad_w}x{height + pad_h} (PNG frames keep the exact size)", stacklevel=4)
        self._size = (height, width)
        self._container = av.open(str(self.path), "w", format="mp4")
        stream = self._container.add_stream(CODEC, rate=self.rate,
                                            options={"crf": str(self.crf), "preset": PRESET})
        stream.width, stream.height = width + pad_w, height + pad_h
        stream.pix_fmt = PIXEL_FORMAT
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
        context.color_range = 1  # limited ("tv") range
        stream.thread_type = "AUTO"
        source = self.source
        if source is not None:
            stream.codec_context.time_base = source.time_base
            stream.time_base = source.time_base
            self._container.metadata.update(source.metadata)
            stream.metadata.update(source.video_metadata)
            if source.rotation:
                stream.set_display_rotation(source.rotation)
            source.add_audio(self._container)
        else:
            stream.codec_context.time_base = 1 / self.rate
        self._stream = stream

    def encode(self, frame: np.ndarray) -> None:
        """Append one RGB frame (H, W, 3) uint8/uint16 (16 bits are rounded to 8)."""
        if self._container is None:
            self._start(*frame.shape[:2])
        pad_h, pad_w = self._stream.height - frame.shape[0], self._stream.width - frame.shape[1]
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                             format="rgb24" if frame.dtype == np.uint8 else "rgb48le")
        picture = picture.reformat(format=PIXEL_FORMAT, dst_colorspace="itu709")
        time_base = self._stream.codec_context.time_base
        if self.source is not None:
            step = max(1, round(1 / (self.rate * time_base)))
            pts = self.source.frame_pts(self.count, self._last_pts, step)
        else:
            pts = self.count
        picture.pts, picture.time_base = pts, time_base
        self._last_pts = pts
        self._mux(self._stream.encode(picture))
        if self.source is not None:
            self.source.mux_audio_until(self._container, float(pts * time_base))
        self.count += 1

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder, copy the remaining audio and finish the file."""
        if self._container is None:
            return
        self._mux(self._stream.encode(None))
        if self.source is not None:
            self.source.mux_audio_until(self._container, None)
        self._container.close()
        self._container = None

    def abort(self) -> None:
        """Close without finishing (the caller deletes the file)."""
        if self.source is not None:
            self.source.close()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the half-written file is deleted anyway
                pass
            self._container = None
