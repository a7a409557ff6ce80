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


def test_the_cli_sets_the_process_defaults_before_torch_loads():
    """Passive OpenMP waiting: set by pvd.cli at import, before any torch import in a `pvd`
    process (checked in a fresh one), and a value the user set wins."""
    import os
    import subprocess
    import sys

    from pvd.process_env import DEFAULTS

    script = ("import os, sys; import pvd.cli; "
              "assert 'torch' not in sys.modules, 'torch loaded before the defaults were set'; "
              f"print(' '.join(os.environ[name] for name in {sorted(DEFAULTS)!r}))")
    env = {key: value for key, value in os.environ.items() if key not in DEFAULTS}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [DEFAULTS[name] for name in sorted(DEFAULTS)]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[sorted(DEFAULTS).index("OMP_WAIT_POLICY")] == "ACTIVE"


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


def test_single_thread_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.single_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.single_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


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
