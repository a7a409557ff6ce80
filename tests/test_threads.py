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


@pytest.mark.parametrize("cpus, expected", [(2, 2), (1, 1), (8, 8), (500, threads.PHYSICAL_THREAD_CAP)])
def test_default_threads_is_the_available_cpus_capped(cpus, expected):
    assert threads.default_threads(cpus=cpus) == expected


def test_the_cli_makes_openmp_wait_passively_before_torch_loads():
    """Set by pvd.cli at import, before any torch import in a `pvd` process (checked in a fresh one)."""
    import subprocess
    import sys

    script = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); import pvd.cli; "
              "assert 'torch' not in sys.modules, 'torch loaded before the policy was set'; "
              "print(os.environ['OMP_WAIT_POLICY'])")
    env = {key: value for key, value in __import__("os").environ.items() if key != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == threads.PASSIVE_WAIT[1]


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
