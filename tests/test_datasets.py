"""Dataset loaders on tiny layouts written to tmp_path: layout detection, pairing errors, clips, crops, noise."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pvd.data import (BIMNET_RANGE, VideoClipDataset, clip_indices, detect_layout, iter_frames, list_videos,
                      read_frame)

HEIGHT, WIDTH = 20, 24


def pattern(frame: int, offset: int = 0) -> np.ndarray:
    """RGB uint8 (H, W, 3) whose pixels encode their position and the frame: R = x, G = y, B = frame + offset."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xs * 10, ys * 12, np.full_like(xs, 3 * frame + offset)], axis=-1).astype(np.uint8)


def write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_gopro(root: Path, frames: dict[str, int], blurry: str = "blur_gamma", flows: bool = False) -> None:
    """GoPro layout: blurry frames with B = 3t, sharp with B = 3t + 100; flow t filled with (t, -t)."""
    for video, count in frames.items():
        for t in range(count):
            write(root / video / blurry / f"{t:06d}.png", pattern(t))
            write(root / video / "sharp" / f"{t:06d}.png", pattern(t, 100))
            if flows:
                (root / video / "flow").mkdir(exist_ok=True)
                flow = np.stack([np.full((HEIGHT, WIDTH), t), np.full((HEIGHT, WIDTH), -t)]).astype(np.float32)
                np.save(root / video / "flow" / f"{t:06d}.npy", flow)


def make_dvd(root: Path, frames: dict[str, int]) -> None:
    for video, count in frames.items():
        for t in range(count):
            write(root / video / "input" / f"{t:05d}.jpg", pattern(t))
            write(root / video / "GT" / f"{t:05d}.jpg", pattern(t, 100))


def make_frames(root: Path, frames: dict[str, int]) -> None:
    for video, count in frames.items():
        for t in range(count):
            write(root / video / f"frame{t}.png", pattern(t))


def to_unit_range(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).double() / 255 * 2 - 1


# ------------------------------------------------------------------------------------------ layouts

def test_detect_layout(tmp_path):
    make_dvd(tmp_path / "dvd", {"a": 2})
    make_gopro(tmp_path / "gopro", {"a": 2, "b": 2})
    make_gopro(tmp_path / "gopro_blur", {"a": 2}, blurry="blur")
    make_frames(tmp_path / "frames", {"a": 2})
    assert detect_layout(tmp_path / "dvd") == "dvd"
    assert detect_layout(tmp_path / "gopro") == "gopro"
    assert detect_layout(tmp_path / "gopro_blur") == "gopro"
    assert detect_layout(tmp_path / "frames") == "frames"


def test_detect_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video folders"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "odd" / "clip7" / "stuff").mkdir(parents=True)
    with pytest.raises(ValueError, match="clip7"):
        detect_layout(tmp_path / "odd")
    make_dvd(tmp_path / "mixed", {"a": 1})
    make_frames(tmp_path / "mixed", {"b": 1})
    with pytest.raises(ValueError, match="mix layouts"):
        detect_layout(tmp_path / "mixed")


def test_list_videos_pairs_frames_in_natural_order(tmp_path):
    for t in (10, 2, 1):
        write(tmp_path / "v" / "blur_gamma" / f"{t}.png", pattern(t))
        write(tmp_path / "v" / "sharp" / f"{t}.png", pattern(t, 100))
    make_gopro(tmp_path, {"w": 3}, blurry="blur")
    videos = list_videos(tmp_path)
    assert [v.name for v in videos] == ["v", "w"]
    assert [p.name for p in videos[0].blurry] == ["1.png", "2.png", "10.png"]
    assert [p.parent.name for p in videos[0].sharp] == ["sharp"] * 3
    assert videos[1].blurry[0].parent.name == "blur" and videos[1].flow is None


def test_mismatched_names_fail_naming_the_video(tmp_path):
    make_gopro(tmp_path, {"good": 2, "bad_names": 2})
    (tmp_path / "bad_names" / "sharp" / "000001.png").rename(tmp_path / "bad_names" / "sharp" / "000009.png")
    with pytest.raises(ValueError, match=r"bad_names.*000001\.png.*000009\.png"):
        list_videos(tmp_path)


def test_mismatched_counts_fail_naming_the_video(tmp_path):
    make_dvd(tmp_path, {"bad_count": 3})
    (tmp_path / "bad_count" / "GT" / "00002.jpg").unlink()
    with pytest.raises(ValueError, match=r"bad_count.*3 blurry.*2 sharp"):
        list_videos(tmp_path)


def test_mismatched_flow_count_fails(tmp_path):
    make_gopro(tmp_path, {"vid": 3}, flows=True)
    (tmp_path / "vid" / "flow" / "000001.npy").unlink()
    with pytest.raises(ValueError, match=r"vid.*2 flow"):
        list_videos(tmp_path)


# ------------------------------------------------------------------------------------------ clips

def original_clip(first_step: int, clip_length: int, context: int, n: int) -> list[int]:
    return list(np.clip(np.arange(first_step - context, first_step - context + clip_length), 0, n - 1))


def test_clip_indices_follow_the_original_sampling():
    # Original: steps start at range(0, n - 13 + 1, 13); a clip is those 13 steps with one frame either side.
    for n in (12, 13, 14, 26, 30, 40):
        expected = [original_clip(s, 15, 1, n) for s in range(0, n - 13 + 1, 13)]
        assert clip_indices(n) == expected
    assert clip_indices(30)[0][:3] == [0, 0, 1]
    assert clip_indices(5, clip_length=2, stride=1, context=0) == [[0, 1], [1, 2], [2, 3], [3, 4]]
    with pytest.raises(ValueError):
        clip_indices(10, clip_length=2, context=1)


def test_clip_content_crop_and_range(tmp_path):
    make_gopro(tmp_path, {"a": 4, "b": 7})
    dataset = VideoClipDataset(tmp_path, clip_length=5, crop_size=(8, 10), noise_probability=0.0, seed=3)
    assert len(dataset) == len(clip_indices(4, 5)) + len(clip_indices(7, 5)) == 1 + 2
    for index in range(len(dataset)):
        item = dataset[index]
        blurry, sharp = item["blurry"], item["sharp"]
        assert blurry.shape == sharp.shape == (5, 3, 8, 10) and blurry.dtype == torch.float32
        assert item["is_first"] == (index in (0, 1))
        # The crop position, read back from the R (= 10 x) and G (= 12 y) channels, is the same for all frames.
        left = round(float((blurry[0, 0, 0, 0] + 1) / 2 * 255) / 10)
        top = round(float((blurry[0, 1, 0, 0] + 1) / 2 * 255) / 12)
        for i, frame_index in enumerate(item["frame_indices"].tolist()):
            rows, cols = slice(top, top + 8), slice(left, left + 10)
            expected_blurry = to_unit_range(pattern(frame_index)[rows, cols])
            expected_sharp = to_unit_range(pattern(frame_index, 100)[rows, cols])
            torch.testing.assert_close(blurry[i].double(), expected_blurry, atol=1e-6, rtol=0)
            torch.testing.assert_close(sharp[i].double(), expected_sharp, atol=1e-6, rtol=0)
    assert dataset[1]["frame_indices"].tolist() == [0, 0, 1, 2, 3]


def test_crops_vary_and_are_reproducible(tmp_path):
    make_gopro(tmp_path, {"a": 3})

    def corners(seed, epoch=0):
        dataset = VideoClipDataset(tmp_path, clip_length=3, crop_size=(4, 4), seed=seed)
        dataset.set_epoch(epoch)
        return [tuple(dataset[0]["blurry"][0, :2, 0, 0].tolist()) for _ in range(2)]

    first = corners(0)
    assert first[0] == first[1] and corners(0) == first
    draws = {corners(seed)[0] for seed in range(12)} | {corners(0, epoch)[0] for epoch in range(12)}
    assert len(draws) > 6  # 21 x 17 possible crops


def test_whole_frames_and_crop_too_large(tmp_path):
    make_gopro(tmp_path, {"tiny": 3})
    item = VideoClipDataset(tmp_path, clip_length=3, crop_size=None, noise_probability=0)[0]
    assert item["blurry"].shape == (3, 3, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=r"tiny.*larger"):
        VideoClipDataset(tmp_path, clip_length=3, crop_size=(HEIGHT + 1, 8))[0]
    with pytest.raises(ValueError, match="long enough"):
        VideoClipDataset(tmp_path, clip_length=9)


def test_noise_on_blurry_frames_only(tmp_path):
    make_gopro(tmp_path, {"a": 16})
    clean = VideoClipDataset(tmp_path, crop_size=None, noise_probability=0.0)[0]
    always = VideoClipDataset(tmp_path, crop_size=None, noise_probability=1.0)[0]
    half = VideoClipDataset(tmp_path, crop_size=None, seed=1)[0]
    assert torch.equal(always["sharp"], clean["sharp"])
    noise = always["blurry"] - clean["blurry"]
    inside = (clean["blurry"] > -1) & (clean["blurry"] < 1)  # values at the range limits are clipped
    assert 0.7e-4 < noise[inside].std() < 1.3e-4 and noise[inside].abs().max() < 1e-3
    assert always["blurry"].min() >= -1 and always["blurry"].max() <= 1
    noisy_frames = [(half["blurry"][i] != clean["blurry"][i]).any().item() for i in range(15)]
    assert 0 < sum(noisy_frames) < 15  # each frame draws its own coin (all equal: chance 2^-14)
    repeat = VideoClipDataset(tmp_path, crop_size=None, seed=1)[0]
    assert torch.equal(repeat["blurry"], half["blurry"])


def test_value_range_zero_one(tmp_path):
    make_gopro(tmp_path, {"a": 3})
    item = VideoClipDataset(tmp_path, clip_length=3, crop_size=None, noise_probability=0,
                            value_range=BIMNET_RANGE)[0]
    expected = torch.from_numpy(pattern(1)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["blurry"][2], expected, atol=1e-6, rtol=0)


def test_flows_follow_the_clip(tmp_path):
    make_gopro(tmp_path, {"a": 5}, flows=True)
    dataset = VideoClipDataset(tmp_path, clip_length=4, crop_size=(6, 6), noise_probability=0)
    assert dataset.load_flow
    item = dataset[0]
    assert item["frame_indices"].tolist() == [0, 0, 1, 2]
    flow = item["flow"]
    assert flow.shape == (3, 2, 6, 6)
    # Clamped repeat (0, 0) has zero flow; (0 -> 1) is file 1 = (1, -1); (1 -> 2) is file 2 = (2, -2).
    assert torch.equal(flow[0], torch.zeros(2, 6, 6))
    for i, t in ((1, 1), (2, 2)):
        assert torch.equal(flow[i, 0], torch.full((6, 6), float(t)))
        assert torch.equal(flow[i, 1], torch.full((6, 6), float(-t)))
    assert "flow" not in VideoClipDataset(tmp_path, clip_length=4, load_flow=False, crop_size=None)[0]


def test_load_flow_required_but_missing(tmp_path):
    make_gopro(tmp_path, {"noflow": 3})
    with pytest.raises(ValueError, match="noflow"):
        VideoClipDataset(tmp_path, clip_length=3, load_flow=True)


def test_dvd_jpeg_and_frames_layout(tmp_path):
    make_dvd(tmp_path / "dvd", {"a": 3})
    item = VideoClipDataset(tmp_path / "dvd", clip_length=3, crop_size=None, noise_probability=0)[0]
    expected = to_unit_range(pattern(2, 100)).float()
    assert (item["sharp"][2] - expected).abs().mean() < 0.05  # JPEG is lossy
    make_frames(tmp_path / "frames", {"a": 3})
    item = VideoClipDataset(tmp_path / "frames", clip_length=3, crop_size=(5, 5))[0]
    assert "sharp" not in item and item["blurry"].shape == (3, 3, 5, 5)


def test_works_with_a_dataloader(tmp_path):
    make_gopro(tmp_path, {"a": 5, "b": 5}, flows=True)
    dataset = VideoClipDataset(tmp_path, clip_length=3, crop_size=(8, 8))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["blurry"].shape == batch["sharp"].shape == (2, 3, 3, 8, 8)
    assert batch["flow"].shape == (2, 2, 2, 8, 8) and batch["video"] == ["a", "a"]


# ------------------------------------------------------------------------------------------ sequential reading

def test_iter_frames_in_order(tmp_path):
    make_gopro(tmp_path / "gopro", {"a": 3})
    make_frames(tmp_path / "frames", {"x": 2})
    video = list_videos(tmp_path / "gopro", layout="gopro")[0]
    pairs = list(iter_frames(video))
    assert [p.index for p in pairs] == [0, 1, 2] and [p.name for p in pairs] == ["000000", "000001", "000002"]
    for t, pair in enumerate(pairs):
        torch.testing.assert_close(pair.blurry.double(), to_unit_range(pattern(t)), atol=1e-6, rtol=0)
        assert torch.equal(pair.sharp, read_frame(tmp_path / "gopro" / "a" / "sharp" / f"{t:06d}.png"))
    no_truth = list(iter_frames(list_videos(tmp_path / "frames")[0]))
    assert len(no_truth) == 2 and no_truth[0].sharp is None


def test_unreadable_frame(tmp_path):
    make_frames(tmp_path, {"a": 1})
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        list(iter_frames(list_videos(tmp_path)[0]))
