"""Many processes for many videos (pvd.sharding): the split, and two CPU processes (gloo) running `pvd eval`
and `pvd deblur` as torchrun would, against one process; `pvd eval --save-frames`.

The processes are spawned with `torch.multiprocessing` and join through the environment variables torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_ddp import _free_port
from test_eval import write_gopro

from pvd import sharding, stream
from pvd.cli import main

WORLD_SIZE = 2
TIMING_KEYS = ("seconds", "seconds_per_frame", "date")


@pytest.fixture(autouse=True)
def _reference_kernels_one_thread(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # inherited by the spawned processes
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shards_are_disjoint_complete_sorted_and_deterministic():
    names = ["clip10", "clip2", "clip1", "b", "a"]
    shards = [sharding.shard(names, key=str, context=sharding.Context(rank, 3, rank)) for rank in range(3)]
    assert shards == [["a", "clip2"], ["b", "clip10"], ["clip1"]]  # natural order a b clip1 clip2 clip10, dealt
    assert sharding.shard(names, key=str, context=sharding.Context(0, 1, 0)) == ["a", "b", "clip1", "clip2",
                                                                                "clip10"]
    with pytest.raises(ValueError, match="share the name"):
        sharding.shard(["a", "a"], key=str, context=sharding.Context(0, 1, 0))


def test_context_from_the_environment(monkeypatch):
    assert sharding.current() == sharding.Context(0, 1, 0) and not sharding.current().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = sharding.current()
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (3, 4, 1, False)
    assert sharding.rank_device(torch.device("cpu"), context) == torch.device("cpu")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        sharding.current()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="not an integer"):
        sharding.current()


def _frame_folders(root, count=3, frames=3, size=(36, 44)):
    rng = np.random.default_rng(5)
    for video in range(count):
        folder = root / f"clip{video}"
        folder.mkdir(parents=True)
        for index in range(frames):
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.GaussianBlur(image, (5, 5), 1.0))


def _worker(rank: int, data: str, videos: str, out: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = main(["eval", data, "-o", os.path.join(out, "eval"), "--allow-untrained", "--device", "cpu", "--quiet",
                 "--save-frames"])
    assert code == 0
    results = stream.deblur_video(videos, os.path.join(out, "deblur"), allow_untrained=True, device="cpu",
                                    progress=False)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump([result.name for result in results], handle)


def _scores(path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(handle)]


def _summary(path) -> dict:
    summary = json.loads(path.read_text())
    for part in [summary["overall"], *summary["videos"].values()]:
        part.pop("seconds_per_frame")
    summary["settings"].pop("date")
    return summary


def test_two_processes_score_and_deblur_like_one(tmp_path):
    data, videos = tmp_path / "data", tmp_path / "videos"
    write_gopro(data, videos=3, frames=3)
    _frame_folders(videos)
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    sharded.mkdir()
    mp.spawn(_worker, args=(str(data), str(videos), str(sharded), _free_port()), nprocs=WORLD_SIZE, join=True)

    assert main(["eval", str(data), "-o", str(single / "eval"), "--allow-untrained", "--device", "cpu", "--quiet",
                 "--save-frames"]) == 0
    stream.deblur_video(videos, single / "deblur", allow_untrained=True, device="cpu", progress=False)

    # eval: one set of files (rank 0), the same scores and summary as one process (timing and date aside)
    assert _scores(sharded / "eval" / "scores.csv") == _scores(single / "eval" / "scores.csv")
    assert len(_scores(single / "eval" / "scores.csv")) == 9
    assert _summary(sharded / "eval" / "summary.json") == _summary(single / "eval" / "summary.json")
    assert sorted(os.listdir(sharded / "eval")) == sorted(os.listdir(single / "eval"))
    for kind in ("frames", "side_by_side"):
        assert sorted(os.listdir(sharded / "eval" / kind)) == ["video0", "video1", "video2"]
        for video in ("video0", "video1", "video2"):
            for name in sorted(os.listdir(single / "eval" / kind / video)):
                a = cv2.imread(str(sharded / "eval" / kind / video / name))
                b = cv2.imread(str(single / "eval" / kind / video / name))
                np.testing.assert_array_equal(a, b)

    # deblur: the videos split between the ranks, every output written once and equal to one process's
    shares = [json.loads((sharded / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    assert shares == [["clip0", "clip2"], ["clip1"]]
    assert sorted(os.listdir(sharded / "deblur")) == ["clip0", "clip1", "clip2"]
    for video in ("clip0", "clip1", "clip2"):
        for name in sorted(os.listdir(single / "deblur" / video)):
            np.testing.assert_array_equal(cv2.imread(str(sharded / "deblur" / video / name)),
                                          cv2.imread(str(single / "deblur" / video / name)))


def test_eval_save_frames_writes_deblurred_frames_and_side_by_sides(tmp_path):
    write_gopro(tmp_path / "data", videos=1, frames=2)  # 64x80
    out = tmp_path / "out"
    assert main(["eval", str(tmp_path / "data"), "-o", str(out), "--allow-untrained", "--device", "cpu", "--quiet",
                 "--save-frames"]) == 0
    frames = sorted(os.listdir(out / "frames" / "video0"))
    assert frames == ["00000.png", "00001.png"]
    deblurred = cv2.imread(str(out / "frames" / "video0" / "00001.png"))[:, :, ::-1]
    comparison = cv2.imread(str(out / "side_by_side" / "video0" / "00001.png"))[:, :, ::-1]
    sharp = cv2.imread(str(tmp_path / "data" / "video0" / "sharp" / "00001.png"))[:, :, ::-1]
    blurry = cv2.imread(str(tmp_path / "data" / "video0" / "blur_gamma" / "00001.png"))[:, :, ::-1]
    assert deblurred.shape == (64, 80, 3) and comparison.shape[1] == 3 * 80
    panels = comparison[-64:]  # under the label bars
    np.testing.assert_array_equal(panels[:, :80], blurry)
    np.testing.assert_array_equal(panels[:, 80:160], deblurred)
    np.testing.assert_array_equal(panels[:, 160:], sharp)
    assert not any(".pvd-" in p.name for p in (out / "frames").iterdir())
    # the saved frame is the output that was scored: its PSNR against the sharp frame matches the row's to 8 bits
    with open(out / "scores.csv", newline="") as handle:
        row = list(csv.DictReader(handle))[1]
    mse = np.mean((deblurred.astype(np.float64) - sharp) ** 2) / 255**2
    assert 10 * np.log10(1 / mse) == pytest.approx(float(row["psnr"]), abs=0.1)
    (tmp_path / "out2" / "frames" / "video0").mkdir(parents=True)  # a video's frames exist already
    assert main(["eval", str(tmp_path / "data"), "-o", str(tmp_path / "out2"), "--allow-untrained", "--device", "cpu",
                 "--quiet", "--save-frames"]) == 1
