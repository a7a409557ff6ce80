"""Resume: 2N steps straight == N steps, stop, resume, N more steps (deterministic CPU training).

Stage 2 with a cosine schedule whose lr changes every step, 2 steps per clip, 3 batches per epoch: the stop
falls mid-epoch and the run crosses an epoch boundary, so model, optimizer, scheduler, step and data position
must all come back exactly.
"""

from __future__ import annotations

import pytest
import torch
from test_training import SIZE, make_clips

from pvd.training import checkpoint as ckpt
from pvd.training import load_config, train

STEPS_PER_CLIP = 2
HALF = 4  # steps: 2 batches of the 3 per epoch


pytestmark = pytest.mark.usefixtures("cpu_kernels_one_thread")


def _config(root, out_dir, max_steps, *extra):
    return load_config(None, [
        "run.stage='pvdnet'", f"run.out_dir='{out_dir}'", "run.device='cpu'", "run.precision='fp32'",
        "run.deterministic=true", f"run.max_steps={max_steps}", "model.bimnet_weights='random'",
        f"data.root='{root}'", f"data.crop={SIZE}", "data.batch_size=2", "data.num_workers=0",
        f"data.clip_frames={STEPS_PER_CLIP + 2}", "schedule.kind='cosine_restarts'", "schedule.periods=[5, 7]",
        "schedule.eta_min=1e-6", "optim.lr=1e-3", "log.every=1", "log.checkpoint_every=0", "log.val_every=0",
        "log.progress=false", "log.tensorboard=false", *extra])


def test_resume_matches_straight_run(tmp_path):
    root = make_clips(tmp_path / "data")  # 2 videos x 3 clips of 2 steps -> 3 batches of 2 clips per epoch
    straight = train(_config(root, tmp_path / "straight", 2 * HALF))
    first = train(_config(root, tmp_path / "resumed", HALF))
    saved = ckpt.latest_checkpoint(tmp_path / "resumed" / ckpt.CHECKPOINT_DIR)
    assert saved is not None and saved.name == f"step_{HALF:09d}.pt"
    state = ckpt.load_checkpoint(saved)
    assert state["step"] == HALF and state["data"] == {"epoch": 0, "batches_done": HALF // STEPS_PER_CLIP}
    second = train(_config(root, tmp_path / "resumed", 2 * HALF, "run.resume='auto'"))

    assert straight.step == second.step == 2 * HALF
    assert first.losses + second.losses == straight.losses
    assert len(set(straight.losses)) == len(straight.losses)  # every step saw a new state
    straight_state, resumed_state = straight.model.state_dict(), second.model.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for key, value in straight_state.items():
        assert torch.equal(value, resumed_state[key]), key
    final_straight = ckpt.load_checkpoint(straight.checkpoint)
    final_resumed = ckpt.load_checkpoint(second.checkpoint)
    assert final_straight["scheduler"] == final_resumed["scheduler"]
    assert final_straight["data"] == final_resumed["data"] == {"epoch": 1, "batches_done": 1}
    assert final_straight["optimizer"]["state"].keys() == final_resumed["optimizer"]["state"].keys()
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in final_straight["optimizer"]["state"].values()]
    resumed_moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in final_resumed["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(moments, resumed_moments, strict=True))

    # Without the resume, the second half starts from scratch and does not reproduce the straight run.
    fresh = train(_config(root, tmp_path / "fresh", HALF))
    assert fresh.losses == first.losses
    assert not torch.equal(fresh.model.pvdnet.to_residual.weight, straight.model.pvdnet.to_residual.weight)


def test_resume_rejects_other_stage(tmp_path):
    root = make_clips(tmp_path / "data", videos=1, frames=4)
    train(_config(root, tmp_path / "run", 2))
    config = _config(root, tmp_path / "run", 4, "run.stage='bimnet'", "data.clip_frames=2", "run.resume='auto'")
    with pytest.raises(ValueError, match="stage 'pvdnet'"):
        train(config)


def test_resume_from_an_earlier_checkpoint_logs_each_step_once(tmp_path):
    """A run killed after its last checkpoint has logged steps beyond it: resuming drops those rows."""
    from pvd.training.logs import read_scalars

    root = make_clips(tmp_path / "data", videos=2, frames=STEPS_PER_CLIP + 2)
    out_dir = tmp_path / "run"
    train(_config(root, out_dir, 2 * STEPS_PER_CLIP, f"log.checkpoint_every={STEPS_PER_CLIP}", "log.keep_last=5"))
    checkpoint = out_dir / "checkpoints" / f"step_{STEPS_PER_CLIP:09d}.pt"
    assert checkpoint.is_file()
    train(_config(root, out_dir, 2 * STEPS_PER_CLIP, f"run.resume='{checkpoint}'"))
    keys = [(step, tag) for step, tag, _ in read_scalars(out_dir / "scalars.csv")]
    assert len(keys) == len(set(keys)), "a step was logged twice"
    assert {step for step, _ in keys} == {STEPS_PER_CLIP, 2 * STEPS_PER_CLIP}  # logged after each clip


def test_first_and_last_steps_are_logged_when_every_exceeds_max_steps(tmp_path):
    from pvd.training.logs import read_scalars

    root = make_clips(tmp_path / "data", videos=2, frames=STEPS_PER_CLIP + 2)
    train(_config(root, tmp_path / "run", 2 * STEPS_PER_CLIP, "log.every=1000"))
    steps = {step for step, tag, _ in read_scalars(tmp_path / "run" / "scalars.csv") if tag == "train/loss"}
    assert steps == {STEPS_PER_CLIP, 2 * STEPS_PER_CLIP}  # the first clip's steps, then the last
