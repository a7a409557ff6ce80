"""pvd.frames: the one image decoder (data sets and video inputs alike) and the value-range conversions."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from pvd import frames
from pvd.data import datasets


def test_16_bit_files_keep_16_bits_in_data_sets_and_video_inputs(tmp_path):
    rgb = np.array([[[0, 257, 65535], [1000, 40000, 65534]]], dtype=np.uint16)  # (1, 2, 3)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1])
    decoded = frames.read_image(tmp_path / "deep.png")
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, rgb)
    tensor = datasets.read_frame(tmp_path / "deep.png")
    want = torch.from_numpy(rgb.astype(np.float64) / 65535 * 2 - 1).permute(2, 0, 1)
    torch.testing.assert_close(tensor.double(), want, rtol=0, atol=1e-6)
    assert np.array_equal(frames.to_8_bit(rgb), np.rint(rgb / 257).astype(np.uint8))


def test_8_bit_ranges_and_round_trip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    signed = frames.to_tensor(image)
    assert signed.shape == (3, 5, 7) and signed.min() >= -1 and signed.max() <= 1
    torch.testing.assert_close(frames.to_tensor(image, frames.UNIT_RANGE), frames.to_unit(signed), rtol=0, atol=1e-6)
    back = frames.quantize(signed).permute(1, 2, 0).numpy()
    assert np.array_equal(back, image)
    assert frames.to_unit(torch.tensor([-3.0, 3.0]), clamp=True).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="value_range"):
        frames.to_tensor(image, (1, 0))


def test_gray_files_warn_for_videos_and_convert_silently_for_data_sets(tmp_path):
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((4, 4), 90, dtype=np.uint8))
    with pytest.warns(UserWarning, match="gray"):
        assert frames.read_image(tmp_path / "gray.png").shape == (4, 4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert datasets.decode_frame(tmp_path / "gray.png").shape == (4, 4, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(frames.FrameError, match="bad.png"):
        datasets.decode_frame(tmp_path / "bad.png")
