"""How many CPU threads PyTorch uses: a default that does not oversubscribe the machine.

PyTorch's own default (one thread per core) collapses when the cores are busy: on a 2-core machine with one
core taken by another process, 2 threads made a run about 15x slower than 1, because every parallel region
waits for the thread that shares a core. The rule here:

    threads = CPUs available to this process (its affinity mask) minus the machine's load (the 1-minute
              load average, rounded), at least 1 and at most PHYSICAL_THREAD_CAP;
    frames smaller than SMALL_FRAME_PIXELS run on 1 thread (their ops are too small to split);
    inter-op threads: 1 (pvd runs one op at a time).

`configure(n)` applies an explicit count instead (the CLI's --threads); PYTORCH_NUM_THREADS / OMP_NUM_THREADS
in the environment also count as explicit. Nothing here runs on import: the Python API leaves torch's threads
alone unless `configure` is called.
"""

from __future__ import annotations

import os

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


def machine_load() -> float:
    """The 1-minute load average (runnable processes), 0 where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """The rule of the module docstring: available CPUs minus the load, in [1, PHYSICAL_THREAD_CAP]."""
    cpus = available_cpus() if cpus is None else cpus
    load = machine_load() if load is None else load
    return max(1, min(PHYSICAL_THREAD_CAP, cpus - int(round(load)), cpus))


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
