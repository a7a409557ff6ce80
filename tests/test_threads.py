"""pvd.threads: the default thread count does not oversubscribe; --threads is validated and applied."""

import pytest
import torch

from pvd import threads
from pvd.commands import _positive_int


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, load, expected", [(2, 0.0, 2), (2, 1.0, 1), (2, 0.6, 1), (2, 17.5, 1),
                                                  (8, 2.4, 6), (1, 0.0, 1), (4, 0.4, 4)])
def test_default_threads_is_cpus_minus_load(cpus, load, expected):
    assert threads.default_threads(cpus=cpus, load=load) == expected


def test_available_cpus_follows_the_affinity_mask():
    import os

    if hasattr(os, "sched_getaffinity"):
        assert threads.available_cpus() == len(os.sched_getaffinity(0))
    assert threads.available_cpus() >= 1


def test_configure_explicit_and_small_frames(monkeypatch):
    for name in threads.THREAD_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert threads.configure(1) == 1 and torch.get_num_threads() == 1
    threads.fit_to_frame(64, 64)  # explicit count: frames do not change it
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "default_threads", lambda: 2)
    assert threads.configure(None) == 2 and torch.get_num_threads() == 2
    threads.fit_to_frame(64, 64)
    assert torch.get_num_threads() == 1
    threads.fit_to_frame(256, 256)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="threads must be >= 1"):
        threads.configure(0)


def test_environment_counts_as_explicit(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "default_threads", lambda: 2)
    assert threads.configure(None) == 1
    threads.fit_to_frame(512, 512)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_threads_option_rejects_non_positive(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        _positive_int(text)
    assert _positive_int("3") == 3
