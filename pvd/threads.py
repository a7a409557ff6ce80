"""How many CPU threads PyTorch uses: a default that does not oversubscribe the machine.

PyTorch's OpenMP threads busy-wait at every barrier. When another process holds a core, a thread that shares
it stalls the others: on this 2-core machine, 2 threads were up to 15x slower than 1 under load, and 30 frames
of 64x64 were slower with 2 threads than with 1 even when idle. The rule here:

    threads = CPUs available to this process (its affinity mask), at most PHYSICAL_THREAD_CAP, with OpenMP
              waiting passively (OMP_WAIT_POLICY=PASSIVE, set by the pvd CLI before torch loads; from Python call
              `pvd.process_env.apply_defaults()` before importing torch) so that threads sleep instead of spinning
              at barriers;
    frames smaller than SMALL_FRAME_PIXELS run on 1 thread (their ops are too small to split);
    inter-op threads: 1 (pvd runs one op at a time).

Measured on this 2-core machine, `pvd demo` (8 frames of 256x256) in seconds, 1 / 2 threads, OpenMP active /
passive waiting: idle 10.1 / 6.8 active, 9.7 / 7.2 passive; three busy loops on the 2 cores 19.9 / 27.9 active,
20.9 / 17.5 passive. Passive waiting with every CPU is the best of both (an earlier rule, CPUs minus the load
average, counted the machine's idle background load of ~1 and pvd's own previous runs, and ran 1 thread).

`configure(n)` applies an explicit count instead (the CLI's --threads); PYTORCH_NUM_THREADS / OMP_NUM_THREADS
in the environment also count as explicit. Nothing here runs on import: the Python API leaves torch's threads
alone unless `configure` is called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Frames below this many pixels (about 160x160) gain nothing from a second thread (measured: 64x64 frames
# ran slower with 2 threads than with 1 on a 2-core machine).
SMALL_FRAME_PIXELS = 160 * 160
PHYSICAL_THREAD_CAP = 64
THREAD_ENVIRONMENT = ("PYTORCH_NUM_THREADS", "OMP_NUM_THREADS")

_automatic = False  # whether `configure` chose the count (so a small frame may lower it)
_configured = 1


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(cpus: int | None = None) -> int:
    """The rule of the module docstring: the available CPUs, in [1, PHYSICAL_THREAD_CAP]."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(PHYSICAL_THREAD_CAP, cpus))


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads`, or to the environment's or `default_threads()` when None;
    inter-op threads to 1 (where still possible). Returns the intra-op count."""
    global _automatic, _configured
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    from_environment = next((os.environ[name] for name in THREAD_ENVIRONMENT if os.environ.get(name)), None)
    _automatic = threads is None and from_environment is None
    if threads is None:
        threads = torch.get_num_threads() if from_environment is not None else default_threads()
    torch.set_num_threads(threads)
    _configured = threads
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work has started: keep it
        pass
    return threads


def fit_to_frame(height: int, width: int) -> None:
    """1 thread for frames under SMALL_FRAME_PIXELS, the configured count otherwise, if `configure` chose the
    count automatically (else nothing changes)."""
    if _automatic:
        torch.set_num_threads(1 if height * width < SMALL_FRAME_PIXELS else _configured)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on 1 intra-op thread, then restore the count. For stretches of many small ops (an
    optimizer step over hundreds of parameters): with passive waiting, each op that torch splits over threads
    pays for waking the sleeping ones (about 45 us per op measured on the 2-core development machine, more than
    a 64K-element op takes on 1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
