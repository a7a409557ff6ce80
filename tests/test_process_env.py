"""pvd.process_env: freed memory stays in the process (glibc), and the user's own allocator settings win."""

import os
import subprocess
import sys
import types

import pytest

# In a fresh process: allocate and free a 256 MiB tensor, then a 192 MiB one; report the heap mapping's size after
# each (MiB), and whether the setting was applied.
_PROBE = """
import sys
from pvd.process_env import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
import torch

def heap_mib():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(part, 16) for part in line.split()[0].split("-"))
            return (end - start) >> 20
    return 0

sizes = []
for mib in (256, 192):
    block = torch.ones(mib << 18)  # float32
    del block
    sizes.append(heap_mib())
print(applied, *sizes)
"""


def _probe(mode: str, **env) -> list[str]:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith("MALLOC_") and key not in ("GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")}
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _glibc() -> bool:
    import ctypes

    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="retaining freed memory is a glibc setting (Linux)")
def test_freed_tensors_stay_in_the_heap_and_are_reused():
    """The second tensor is smaller than the first: PyTorch's aligned allocations ask glibc for a few bytes more
    than the tensor, so a freed block is reused for certain only by a smaller request."""
    applied, first, second = _probe("retain")
    assert applied == "True"
    assert int(first) >= 256, "the freed 256 MiB tensor was handed back to the kernel"
    assert int(second) == int(first), "the 192 MiB tensor did not reuse the freed 256 MiB"
    # Without it, glibc maps so large a tensor on its own and unmaps it when freed: the heap stays small.
    applied, first, second = _probe("plain")
    assert applied == "False" and int(first) < 192 and int(second) < 192


@pytest.mark.skipif(not _glibc(), reason="retaining freed memory is a glibc setting (Linux)")
def test_the_users_allocator_settings_win():
    applied, first, second = _probe("retain", MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False" and int(first) < 192 and int(second) < 192


@pytest.mark.parametrize("variable, value", [("MALLOC_MMAP_THRESHOLD_", "131072"), ("MALLOC_TOP_PAD_", "0"),
                                             ("GLIBC_TUNABLES", "glibc.cpu.x86_shstk=on:glibc.malloc.tcache_count=0")])
def test_any_glibc_malloc_setting_leaves_the_allocator_alone(monkeypatch, variable, value):
    from pvd import process_env

    monkeypatch.setenv(variable, value)
    assert process_env.retain_freed_memory() is False


def test_other_glibc_tunables_do_not_count(monkeypatch):
    from pvd import process_env

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.x86_shstk=on")
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    # Stands in for glibc, so that this test process's allocator stays as it is.
    fake_libc = types.SimpleNamespace(gnu_get_libc_version=object(), mallopt=lambda parameter, value: 1)
    monkeypatch.setattr(process_env.ctypes, "CDLL", lambda name: calls.append(name) or fake_libc)
    assert process_env.retain_freed_memory() is (sys.platform.startswith("linux"))
    assert calls == ([None] if sys.platform.startswith("linux") else [])


def test_apply_defaults_keeps_the_users_values(monkeypatch):
    from pvd import process_env

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(process_env, "retain_freed_memory", lambda: True)
    process_env.apply_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
