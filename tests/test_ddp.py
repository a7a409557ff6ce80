"""DistributedDataParallel: two CPU processes (gloo) train stage 2 and end with identical weights.

The processes are spawned with `torch.multiprocessing` and join through the same environment variables
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so `train` takes its torchrun path.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from test_training import SIZE, make_clips

from pvd.training import load_config, stages, train
from pvd.training.loop import _seed_everything

WORLD_SIZE = 2
STEPS = 4


@pytest.fixture(autouse=True)
def _reference_kernels_one_thread(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # inherited by the spawned processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(root, out_dir):
    return load_config(None, [
        "run.stage='pvdnet'", f"run.out_dir='{out_dir}'", "run.device='cpu'", "run.precision='fp32'",
        f"run.max_steps={STEPS}", "model.bimnet_weights='random'", f"data.root='{root}'", f"data.crop={SIZE}",
        f"data.batch_size={WORLD_SIZE}", "data.num_workers=0", "data.clip_frames=4", "optim.lr=1e-3",
        "log.every=1", "log.checkpoint_every=2", "log.val_every=0", "log.progress=false", "log.tensorboard=false"])


def _worker(rank: int, root: str, out_dir: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(_config(root, out_dir))
    torch.save({"state": result.model.state_dict(), "losses": result.losses, "step": result.step},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_processes_end_with_identical_weights(tmp_path):
    root = make_clips(tmp_path / "data")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    mp.spawn(_worker, args=(str(root), str(out_dir), _free_port()), nprocs=WORLD_SIZE, join=True)

    results = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    assert [r["step"] for r in results] == [STEPS] * WORLD_SIZE
    assert results[0]["losses"] != results[1]["losses"]  # each process trained on its own clips
    for key, value in results[0]["state"].items():
        assert torch.equal(value, results[1]["state"][key]), key

    _seed_everything(0)
    initial = stages.build_trainer(_config(root, out_dir), torch.device("cpu")).model.state_dict()
    changed = [key for key, value in results[0]["state"].items() if not torch.equal(value, initial[key])]
    assert changed and all(key.startswith("pvdnet.") for key in changed)  # trained PVDNet, frozen BIMNet

    checkpoint = torch.load(out_dir / "checkpoints" / f"step_{STEPS:09d}.pt", weights_only=True)
    assert checkpoint["world_size"] == WORLD_SIZE
    for key, value in checkpoint["model"].items():
        assert torch.equal(value, results[0]["state"][key]), key

    # The processes split each global batch (DistributedSampler) and DDP averages their gradients, so one
    # process with the whole batch takes the same steps, up to float rounding.
    single = train(_config(root, tmp_path / "single")).model.state_dict()
    for key, value in single.items():
        torch.testing.assert_close(results[0]["state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
