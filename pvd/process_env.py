"""Process-wide CPU settings that must be in place before the work starts: OpenMP's (read when torch loads)
and the C allocator's. The pvd CLI and the benchmarks apply them before importing torch; a value the user
already set in the environment wins.

- `OMP_WAIT_POLICY=PASSIVE`: OpenMP threads sleep at barriers instead of spinning, so a busy machine does not
  make pvd collapse (see `pvd.threads`).
- Freed memory stays in the process (`retain_freed_memory`, glibc only). A deblurring step frees and
  re-allocates the same large activations every frame. By default glibc maps each tensor over 32 MiB afresh and
  unmaps it when freed, so the kernel faults every frame's activations in again, page by page. Served from a
  heap that keeps what was freed, a 1280x720 step reuses the memory of the one before. Measured on the 2-core
  development machine, steady-state 720p step on 1 thread: 10.4 s → 9.1 s. The process keeps its peak memory
  until it exits, as a GPU caching allocator does, and glibc's heap fragments (see the README's CPU path for
  the resident sizes measured).

PyTorch's `THP_MEM_ALLOC_ENABLE=1` (transparent huge pages for large tensors) is not set: with the memory
retained it gained nothing in the steady state there, and made each process's first steps slower (11-15 s
instead of 10 s for the first 720p step), because fresh huge pages are expensive to fault in on that virtual
machine. Set it yourself where it pays.

From Python (a notebook), call `apply_defaults()` before the first `import torch` to get the same; `import pvd`
alone changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}

RETAINED_ALLOCATION_LIMIT = 1 << 30  # bytes: a single allocation larger than this is still mapped on its own
TRIM_THRESHOLD = 2**31 - 1  # bytes of free memory at the top of the heap before glibc gives any back (C int)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_GLIBC_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def apply_defaults() -> None:
    """Put DEFAULTS into os.environ where the variable is not set (effective only before torch loads) and
    retain freed memory (`retain_freed_memory`)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    retain_freed_memory()


def retain_freed_memory() -> bool:
    """Make glibc serve allocations up to RETAINED_ALLOCATION_LIMIT from its heap and keep freed heap memory
    (up to TRIM_THRESHOLD bytes) for reuse instead of unmapping it. Returns whether it was applied: not on
    other platforms or C libraries, nor when the environment already sets glibc's malloc thresholds
    (MALLOC_*_ variables, or `glibc.malloc.` in GLIBC_TUNABLES)."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _GLIBC_MALLOC_VARIABLES) or "glibc.malloc." in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAINED_ALLOCATION_LIMIT)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
