"""Test set-up: without a GPU the Triton kernels run on CPU tensors through the Triton interpreter.

PVD_TEST_DEVICE picks the device of the `device` fixture (where the Triton-path tests run):
- unset or "auto": "cuda" when a GPU is present, else "cpu" under the interpreter;
- "cuda": the GPU, with the interpreter off; the session stops at once when CUDA is not available (so a GPU
  check can never pass on the CPU by mistake);
- "cpu": the interpreter on CPU tensors, even on a GPU machine.
TRITON_INTERPRET must be set before triton (and so pvd) is imported, hence here at the top.
"""

import os

DEVICE_ENV = "PVD_TEST_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda")

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

_REQUESTED = os.environ.get(DEVICE_ENV, "").strip().lower() or "auto"
_DEVICE = "cuda" if _REQUESTED == "cuda" or (_REQUESTED == "auto" and _HAS_CUDA) else "cpu"

if _REQUESTED == "cuda":
    os.environ["TRITON_INTERPRET"] = "0"
elif _REQUESTED == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
elif not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    if _REQUESTED not in DEVICE_CHOICES:
        raise pytest.UsageError(f"{DEVICE_ENV}={_REQUESTED!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if _REQUESTED == "cuda" and not _HAS_CUDA:
        raise pytest.UsageError(f"{DEVICE_ENV}=cuda but torch.cuda.is_available() is False: no GPU to test on")


def pytest_report_header(config):
    interpret = os.environ.get("TRITON_INTERPRET", "")
    return f"pvd test device: {_DEVICE} ({DEVICE_ENV}={_REQUESTED}, TRITON_INTERPRET={interpret})"


@pytest.fixture(scope="session")
def device() -> str:
    """Where the Triton path runs: 'cuda' or 'cpu' (under the interpreter); see PVD_TEST_DEVICE above."""
    return _DEVICE


@pytest.fixture
def cpu_kernels_one_thread(monkeypatch):
    """The networks on the CPU kernels (not the slow interpreter), on one thread; torch's threads restored after."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spy(monkeypatch):
    """spy(owner, name) -> a list that gets the positional arguments of every call of owner.name, which still
    runs (undone after the test)."""
    def wrap(owner, name: str) -> list:
        calls = []
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
        return calls
    return wrap


@pytest.fixture
def compiled_pixel_volume_calls(spy) -> list:
    """A list that gets one entry per call of the compiled CPU pixel volume (`pvd.kernels.cpu_native`), which
    still runs; the test is skipped without numba."""
    from pvd.kernels import cpu_native

    if not cpu_native.AVAILABLE:
        pytest.skip("numba is not installed: only the eager CPU ops can run")
    return spy(cpu_native, "pixel_volume")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
