"""Process-wide CPU settings that PyTorch reads from the environment once (OpenMP's when torch loads, the
allocator's at its first large allocation); the pvd CLI and the benchmarks apply them before importing torch.
A value already in the environment wins.

- `OMP_WAIT_POLICY=PASSIVE`: OpenMP threads sleep at barriers instead of spinning, so a busy machine does not
  make pvd collapse (see `pvd.threads`).
- `THP_MEM_ALLOC_ENABLE=1`: PyTorch's CPU allocator asks for transparent huge pages (madvise) for large
  tensors. Without it every fresh activation of a 1280x720 frame is faulted in 4 KiB page by page: on the
  2-core development machine allocating and filling a 92 MB tensor took 40.6 ms instead of 7.2 ms, and one
  720p deblurring step 13.2 s instead of 7.6 s. No effect where the kernel's transparent huge pages are
  disabled (`/sys/kernel/mm/transparent_hugepage/enabled` = never).

From Python (a notebook), call `apply_defaults()` before the first `import torch` to get the same; `import pvd`
alone changes nothing.
"""

from __future__ import annotations

import os

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def apply_defaults() -> None:
    """Put DEFAULTS into os.environ where the variable is not set; effective only before torch loads."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
