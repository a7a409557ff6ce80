"""Shared plumbing of the kernel modules: dispatch, input validation, dtype helpers. Imports without Triton."""

from __future__ import annotations

import os

import torch

from .reference import acc_dtype  # noqa: F401  (one accumulation rule for references and kernels)

# Triton ships Linux wheels only; elsewhere pvd runs the PyTorch references (`pvd.kernels.portable`).
try:
    import triton  # noqa: F401
except ImportError:
    HAS_TRITON = False
else:
    HAS_TRITON = True

DEFAULT_KERNEL_SIZE = 5  # pixel volume: PVDNet's k x k candidates
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """True when `TRITON_INTERPRET=1`: Triton kernels then run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels serve `tensor`: CUDA tensors always, CPU tensors under the interpreter."""
    if not HAS_TRITON:
        return False
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and interpreting()


class LazyTritonOp:
    """A `torch.library.triton_op` that is registered (with its fake and autograd rules) when first called, or at
    once by `register_now_if_servable()` where Triton can serve tensors (a CUDA build, or the interpreter).

    Registering a triton_op imports torch's compiler stack (about 1 s); a CPU-only process that never runs a
    Triton kernel (the CPU ops serve its tensors) skips that. Usage mirrors triton_op's:
    `@LazyTritonOp.define(name, mutates_args={})`, then `op.register_fake(fn)`, `op.register_autograd(...)`.
    """

    def __init__(self, name: str, function, mutates_args):
        self.name, self.function, self.mutates_args = name, function, mutates_args
        self._fake = self._autograd = self._op = None

    @classmethod
    def define(cls, name: str, mutates_args):
        return lambda function: cls(name, function, mutates_args)

    def register_fake(self, function):
        self._fake = function
        return function

    def register_autograd(self, backward, setup_context) -> None:
        self._autograd = (backward, setup_context)

    def op(self):
        """The registered custom op (registering it now if needed)."""
        if self._op is None:
            from torch.library import triton_op

            op = triton_op(self.name, mutates_args=self.mutates_args)(self.function)
            if self._fake is not None:
                op.register_fake(self._fake)
            if self._autograd is not None:
                op.register_autograd(self._autograd[0], setup_context=self._autograd[1])
            self._op = op
        return self._op

    def __call__(self, *args):
        return self.op()(*args)

    def register_now_if_servable(self) -> None:
        """Register at import where Triton kernels can run (so torch.compile sees an ordinary custom op): under the
        interpreter, or with a CUDA/ROCm build of torch (asked of the build, not the driver: no CUDA call at import)."""
        gpu_build = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
        if HAS_TRITON and (interpreting() or gpu_build):
            self.op()


def check_tensor(name: str, tensor, ndim: int, channels: int | tuple[int, ...] | None = None) -> None:
    """Raise ValueError unless `tensor` is a floating tensor of rank `ndim` (and the given channel count)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (B, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} has dtype {tensor.dtype}; supported: float16, bfloat16, float32, float64")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else channels
        if tensor.shape[1] not in allowed:
            want = " or ".join(str(c) for c in allowed)
            raise ValueError(f"{name} must have {want} channels, got shape {tuple(tensor.shape)}")
    if any(s == 0 for s in tensor.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")


def check_same(names: tuple[str, str], a: torch.Tensor, b: torch.Tensor, *, batch_hw: bool = True,
               channels: bool = False) -> None:
    """Raise ValueError unless `a` and `b` agree in device, dtype, and batch/height/width (and channels)."""
    na, nb = names
    if a.device != b.device:
        raise ValueError(f"{na} is on {a.device} but {nb} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{na} has dtype {a.dtype} but {nb} has dtype {b.dtype}")
    if batch_hw and (a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]):
        raise ValueError(f"{na} {tuple(a.shape)} and {nb} {tuple(b.shape)} must share batch, height and width")
    if channels and a.shape[1] != b.shape[1]:
        raise ValueError(f"{na} {tuple(a.shape)} and {nb} {tuple(b.shape)} must have the same channel count")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return `value` as int, raising ValueError unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_warp_args(x, flow) -> None:
    """Validate the arguments of `warp` (ValueError naming the problem)."""
    check_tensor("x", x, 4)
    check_tensor("flow", flow, 4, channels=2)
    check_same(("x", "flow"), x, flow)


def check_correlation_args(f1, f2, max_displacement, stride) -> tuple[int, int]:
    """Validate the arguments of `correlation`; returns (max_displacement, stride) as ints."""
    check_tensor("f1", f1, 4)
    check_tensor("f2", f2, 4)
    check_same(("f1", "f2"), f1, f2, channels=True)
    return check_positive_int("max_displacement", max_displacement, minimum=0), check_positive_int("stride", stride)


def check_pixel_volume_args(image, flow, fill, kernel_size, out_dtype=None, channels_last=False) -> int:
    """Validate the arguments of `pixel_volume`; returns kernel_size as an int."""
    if out_dtype is not None and out_dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"out_dtype must be None or one of float16, bfloat16, float32, float64, got {out_dtype!r}")
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
    check_tensor("image", image, 4, channels=(1, 3))
    check_tensor("flow", flow, 4, channels=2)
    check_tensor("fill", fill, 4, channels=(1, 3))
    check_same(("image", "flow"), image, flow)
    check_same(("image", "fill"), image, fill)
    kernel_size = check_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    return kernel_size


def tl_acc_dtype(dtype: torch.dtype):
    """The Triton twin of `acc_dtype`, passed to the kernels as their `ACC` constexpr."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def pixel_grid(batch: int, height: int, width: int, block: int) -> tuple[int, int]:
    """Launch grid of a kernel with one program per `block` pixels of an (H, W) plane and one per batch item."""
    return (-(-height * width // block), batch)
