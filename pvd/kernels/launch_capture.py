"""The kernel builds pvd really launches: run the public ops with every Triton launch intercepted.

`capture_launches()` calls `pvd.kernels.correlation`, `warp` and `pixel_volume` (forward and, where
gradients flow, backward) on CPU tensors of the network's shapes, listed per op in one variant table
(`correlation_sites()`, `warp_sites()`, `pixel_volume_sites()`); `build_of(launch, arch)` turns each launch
into the build the JIT would compile. While it runs, `JITFunction.run` (and, for
autotuned kernels, `Autotuner.run`, every config) records each launch and returns without executing
anything, and TRITON_INTERPRET reads 1 so the ops take their Triton path for CPU tensors. The kernel objects
must be JITFunctions, i.e. pvd imported with TRITON_INTERPRET unset or 0 (`compile_check` re-runs itself so).

From each launch the specialisation Triton's JIT computes is derived with Triton's own binder
(`create_function_from_signature` + the backend's `parse_attr`), for a `GPUTarget("cuda", arch, 32)`:
- a pointer whose address is a multiple of 16 bytes gets `tt.divisibility = 16`;
- an int argument gets `tt.divisibility = 16` when it is a multiple of 16 (0 included), becomes the
  constant 1 when it equals 1, and is i64 outside the int32 range; bools are u1, floats fp32;
- `do_not_specialize` / `do_not_specialize_on_alignment` parameters are left generic.
`rule_specialization` restates these rules (the fallback where Triton's binder is not importable; the tests
check both agree). CPU allocations are 64-byte aligned and CUDA's 512-byte aligned, and views keep their byte
offset, so a CPU tensor specialises exactly as its CUDA twin.

The shapes are those of a 1280x720 frame pair: BIMNet on the multiple-of-32 crop 1280x704 (size policy
"original") and on the padded 1280x736 (policy "pad", the default), its training crop (256x256, backward
too), and the pixel volume at 1280x720. Other dtypes and layouts a caller of the API can pass are one row each.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A 1280x720 frame pair; BIMNet needs multiples of 32 (crop or pad), its levels 2-6 are 1/2 .. 1/32 of that.
FRAME_HEIGHT, FRAME_WIDTH = 720, 1280
FLOW_SIZES = {"original 1280x704 crop": (704, 1280), "pad 1280x736": (736, 1280)}
TRAINING_CROP = 256  # train/configs: data.crop of the BIMNet and PVDNet stages
TRAINING_BATCH = 2  # batch does not enter any kernel argument but the batch stride; kept small
# BIMNet (pvd.nets.bimnet; tests/test_compile_check.py checks these against it).
LEVELS = (2, 3, 4, 5, 6)
MATCHING_CHANNELS = {2: 64, 3: 64, 4: 96, 5: 128, 6: 192}  # level 2 is lifted from 32 to 64 channels
CORRELATION_STRIDE = {2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
MAX_DISPLACEMENT = 3
IMAGE_CHANNELS = 3
PIXEL_VOLUME_KERNEL = 5


def level_size(size: tuple[int, int], level: int) -> tuple[int, int]:
    """(h, w) of BIMNet level `level` for an input (H, W), multiples of 32: halved level - 1 times."""
    return size[0] >> (level - 1), size[1] >> (level - 1)


# ---------------------------------------------------------------------------------------- variant tables


@dataclass(frozen=True)
class Layout:
    """How an argument tensor sits in memory. kind: 'contiguous'; 'misaligned' (a [..., 1:] view: 4-byte offset,
    row stride W+1); 'strided' (a [..., 1::2] view: column stride 2, offset); 'channel_slice' (channels
    [start, start+C) of a `total`-channel tensor, e.g. the gradient of a torch.cat input); 'row_crop' (the top
    rows of a `total`-row tensor, e.g. a flow cropped from its padded size)."""

    kind: str = "contiguous"
    total: int = 0
    start: int = 0

    def make(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        b, c, h, w = shape
        if self.kind == "contiguous":
            return torch.empty(shape, dtype=dtype)
        if self.kind == "misaligned":
            return torch.empty((b, c, h, w + 1), dtype=dtype)[..., 1:]
        if self.kind == "strided":
            return torch.empty((b, c, h, 2 * w + 1), dtype=dtype)[..., 1::2]
        if self.kind == "channel_slice":
            return torch.empty((b, self.total, h, w), dtype=dtype)[:, self.start:self.start + c]
        if self.kind == "row_crop":
            return torch.empty((b, c, self.total, w), dtype=dtype)[:, :, :h]
        raise ValueError(f"unknown layout {self.kind!r}")


CONTIGUOUS = Layout()
MISALIGNED = Layout("misaligned")
STRIDED = Layout("strided")


@dataclass(frozen=True)
class Site:
    """One call site: `op` ('correlation' | 'warp' | 'pixel_volume') on (batch, channels, height, width)
    inputs of `dtype`. backward: also run the backward with a `grad_layout` gradient. `extra`: the op's
    keyword arguments (max_displacement/stride, kernel_size, ...). `layout` applies to the main inputs,
    `flow_layout` to a flow."""

    name: str
    op: str
    batch: int
    channels: int
    height: int
    width: int
    dtype: torch.dtype = torch.float32
    backward: bool = False
    extra: dict = field(default_factory=dict)
    layout: Layout = CONTIGUOUS
    flow_layout: Layout = CONTIGUOUS
    grad_layout: Layout = CONTIGUOUS


def _levels(size: tuple[int, int], first: int = LEVELS[0]):
    return [(level, *level_size(size, level)) for level in LEVELS if level >= first]


def _api_rows(op: str, channels: int, size: tuple[int, int], extra: dict) -> list[Site]:
    """Rows for what a caller of the API may pass beyond the network: bf16/fp16 at a network shape, a
    misaligned odd-sized fp32 view, and float64 (the tests) on fully generic strided views."""
    rows = [Site(f"API {str(dtype).removeprefix('torch.')}", op, 1, channels, *size, dtype=dtype, backward=True,
                 extra=extra) for dtype in (torch.bfloat16, torch.float16)]
    rows.append(Site("API fp32 misaligned odd-size view", op, 2, channels if channels <= 3 else 5, 37, 45,
                     backward=True, extra=extra, layout=MISALIGNED, flow_layout=MISALIGNED, grad_layout=MISALIGNED))
    rows.append(Site("API float64 (tests), generic strided view", op, 2, channels if channels <= 3 else 5, 37, 45,
                     dtype=torch.float64, backward=True, extra=extra, layout=STRIDED, flow_layout=STRIDED,
                     grad_layout=STRIDED))
    return rows


def correlation_sites() -> list[Site]:
    """BIMNet's cost volumes: Matching at levels 2-6 (f1, f2 of MATCHING_CHANNELS, stride per level)."""
    rows = []
    for policy, size in FLOW_SIZES.items():
        rows += [Site(f"BIMNet L{level} matching, {policy}", "correlation", 1, MATCHING_CHANNELS[level], h, w,
                      extra={"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[level]})
                 for level, h, w in _levels(size)]
    rows += [Site(f"BIMNet L{level} matching, training crop {TRAINING_CROP}", "correlation", TRAINING_BATCH,
                  MATCHING_CHANNELS[level], h, w, backward=True,
                  extra={"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[level]})
             for level, h, w in _levels((TRAINING_CROP, TRAINING_CROP))]
    size = level_size(FLOW_SIZES["pad 1280x736"], 2)
    return rows + _api_rows("correlation", MATCHING_CHANNELS[2], size,
                            {"max_displacement": MAX_DISPLACEMENT, "stride": CORRELATION_STRIDE[2]})


def warp_sites() -> list[Site]:
    """BIMNet's warps: features in Matching (levels 2-5; level 6 has no coarser flow) and Subpixel (2-6),
    the image in Regularization (2-6, forward only: its result is detached); the training loss warps."""
    rows = []
    crop = (TRAINING_CROP, TRAINING_CROP)
    for policy, size, batch, backward in [*[(p, s, 1, False) for p, s in FLOW_SIZES.items()],
                                          (f"training crop {TRAINING_CROP}", crop, TRAINING_BATCH, True)]:
        for level, h, w in _levels(size):
            c = MATCHING_CHANNELS[level]
            if level != LEVELS[-1]:
                rows.append(Site(f"BIMNet L{level} matching, {policy}", "warp", batch, c, h, w, backward=backward))
            # Subpixel: the warped features are the middle block of cat(f1, warped f2, flow).
            rows.append(Site(f"BIMNet L{level} subpixel, {policy}", "warp", batch, c, h, w, backward=backward,
                             grad_layout=Layout("channel_slice", total=2 * c + 2, start=c)))
            rows.append(Site(f"BIMNet L{level} regularization, {policy}", "warp", batch, IMAGE_CHANNELS, h, w))
    rows.append(Site(f"training blur-invariant loss, crop {TRAINING_CROP}", "warp", 4 * TRAINING_BATCH,
                     IMAGE_CHANNELS, *crop, backward=True))
    # Validation on whole frames: the flow is the 720-row crop of BIMNet's padded 736-row output.
    rows.append(Site("training validation warp, 1280x720", "warp", 1, IMAGE_CHANNELS, FRAME_HEIGHT, FRAME_WIDTH,
                     flow_layout=Layout("row_crop", total=FLOW_SIZES["pad 1280x736"][0])))
    size = level_size(FLOW_SIZES["pad 1280x736"], 2)
    return rows + _api_rows("warp", MATCHING_CHANNELS[2], size, {})


def pixel_volume_sites() -> list[Site]:
    """The deblurring step's pixel volume (image = previous output, fill = current frame, RGB, k = 5), at
    1280x720 and at the PVDNet training crop. pvd never needs its gradient (no input requires grad there);
    the API rows run the backward."""
    extra = {"kernel_size": PIXEL_VOLUME_KERNEL}
    rows = [Site("deblur step 1280x720", "pixel_volume", 1, IMAGE_CHANNELS, FRAME_HEIGHT, FRAME_WIDTH, extra=extra),
            Site(f"PVDNet training crop {TRAINING_CROP}", "pixel_volume", TRAINING_BATCH, IMAGE_CHANNELS,
                 TRAINING_CROP, TRAINING_CROP, extra=extra),
            Site("API gray (1-channel) 1280x720", "pixel_volume", 1, 1, FRAME_HEIGHT, FRAME_WIDTH, backward=True,
                 extra=extra)]
    return rows + _api_rows("pixel_volume", IMAGE_CHANNELS, (FRAME_HEIGHT, FRAME_WIDTH), extra)


def all_sites() -> list[Site]:
    return correlation_sites() + warp_sites() + pixel_volume_sites()


def _run_site(site: Site) -> None:
    """Call the public op of `site` (and its backward) on fresh tensors; the kernels only get captured."""
    from pvd import kernels

    shape = (site.batch, site.channels, site.height, site.width)
    flow_shape = (site.batch, 2, site.height, site.width)
    make = site.layout.make
    if site.op == "correlation":
        inputs = [make(shape, site.dtype), make(shape, site.dtype)]
        call = lambda f1, f2: kernels.correlation(f1, f2, **site.extra)  # noqa: E731
    elif site.op == "warp":
        inputs = [make(shape, site.dtype), site.flow_layout.make(flow_shape, site.dtype)]
        call = lambda x, flow: kernels.warp(x, flow, **site.extra)  # noqa: E731
    elif site.op == "pixel_volume":
        inputs = [make(shape, site.dtype), site.flow_layout.make(flow_shape, site.dtype), make(shape, site.dtype)]
        call = lambda image, flow, fill: kernels.pixel_volume(image, flow, fill, **site.extra)  # noqa: E731
    else:
        raise ValueError(f"unknown op {site.op!r}")
    if site.backward:
        for tensor in inputs:
            tensor.requires_grad_(True)
    with _phase("forward"):
        out = call(*inputs)
    if site.backward:
        grad = site.grad_layout.make(tuple(out.shape), out.dtype)
        with _phase("backward"):
            out.backward(grad)


# ------------------------------------------------------------------------------------ launch interception


@dataclass
class Launch:
    """One intercepted launch: the kernel (a JITFunction), its positional and keyword arguments."""

    site: Site
    phase: str
    kernel: object
    args: tuple
    kwargs: dict


_state = {"site": None, "phase": None}


@contextlib.contextmanager
def _phase(phase: str):
    _state["phase"] = phase
    try:
        yield
    finally:
        _state["phase"] = None


@contextlib.contextmanager
def intercepting_launches():
    """Within: every JITFunction launch is recorded into the yielded list instead of running, autotuned
    kernels record every config, and TRITON_INTERPRET reads 1 (pvd's ops then take the Triton path on CPU)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []

    def refuse(kernel, *args, **kwargs):
        raise RuntimeError(f"{kernel.fn.__name__} is an interpreter object: pvd was imported with "
                           "TRITON_INTERPRET=1; capture needs it imported with TRITON_INTERPRET unset or 0")

    def record(kernel, *args, grid=None, warmup=False, **kwargs):
        if _state["site"] is None:
            raise RuntimeError(f"{kernel.__name__} launched outside a capture site")
        launches.append(Launch(_state["site"], _state["phase"], kernel, args, dict(kwargs)))

    def every_config(tuner, *args, **kwargs):
        for config in tuner.configs:
            tuner.fn.run(*args, **{**kwargs, **config.all_kwargs()})

    saved = JITFunction.run, Autotuner.run, InterpretedFunction.run, os.environ.get("TRITON_INTERPRET")
    JITFunction.run, Autotuner.run, InterpretedFunction.run = record, every_config, refuse
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run, InterpretedFunction.run = saved[:3]
        if saved[3] is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved[3]


def capture_launches(sites: list[Site] | None = None) -> list[Launch]:
    """Run every site with the launches intercepted; each site must launch at least one kernel."""
    sites = all_sites() if sites is None else sites
    with intercepting_launches() as launches:
        for site in sites:
            before = len(launches)
            _state["site"] = site
            try:
                _run_site(site)
            finally:
                _state["site"] = None
            if len(launches) == before:
                raise RuntimeError(f"{site.op} at '{site.name}' launched no Triton kernel (was pvd imported with "
                                   "TRITON_INTERPRET=1, or does the op not dispatch CPU tensors to Triton?)")
    return launches


# --------------------------------------------------------------------------------------- specialisation


@dataclass(frozen=True)
class Build:
    """What the JIT compiles for one launch on one target: kernel `module.name`, the signature (parameter ->
    Triton type, 'constexpr' for constants), the constant values, the attributes (parameter index ->
    (('tt.divisibility', 16),)), and the launch options (num_warps, num_stages, ...)."""

    module: str
    name: str
    arch: int
    signature: tuple
    constexprs: tuple
    attrs: tuple
    options: tuple

    @property
    def kernel_name(self) -> str:
        return f"{self.module.rsplit('.', 1)[-1]}.{self.name}"

    def divisible_16(self) -> list[str]:
        names = [name for name, _ in self.signature]
        return [names[index] for index, attrs in self.attrs if ("tt.divisibility", 16) in attrs]

    def constant_1(self, declared_constexprs: set[str]) -> list[str]:
        """Runtime parameters the JIT turned into the constant 1."""
        values = dict(self.constexprs)
        return [name for name, ty in self.signature
                if ty == "constexpr" and name not in declared_constexprs and values.get(name) == 1]


def _option_kwargs(kernel, kwargs: dict) -> dict:
    """The launch keyword arguments that are options, with the defaults `JITFunction.run` fills in."""
    from triton import knobs

    params = {p.name for p in kernel.params}
    options = {k: v for k, v in kwargs.items() if k not in params}
    options["debug"] = options.get("debug", kernel.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # Triton 3.9 passes these from knobs
        if hasattr(knobs.compilation, name):
            options[name] = getattr(knobs.compilation, name)
    return options


_binders: dict = {}


def triton_specialization(kernel, args: tuple, kwargs: dict, arch: int) -> list[tuple]:
    """[(type, key)] per parameter, as Triton's own JIT binder computes it for `arch` (key: 'D' = divisible
    by 16, '' = not, the value for constexprs)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    if (id(kernel), arch) not in _binders:
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _binders[id(kernel), arch] = (create_function_from_signature(kernel.signature, kernel.params, backend), backend)
    binder, _ = _binders[id(kernel), arch]
    _, specialization, _ = binder(*args, **kwargs)
    return [tuple(entry) for entry in specialization]


_TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                    torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "u1"}


def rule_specialization(kernel, args: tuple, kwargs: dict) -> list[tuple]:
    """The same as `triton_specialization`, from the rules in this module's docstring (Triton >= 3.6)."""
    names = {p.name for p in kernel.params}
    bound = kernel.signature.bind(*args, **{k: v for k, v in kwargs.items() if k in names})
    bound.apply_defaults()
    result = []
    for param in kernel.params:
        value = bound.arguments[param.name]
        specialize, align = not param.do_not_specialize, not param.do_not_specialize_on_alignment
        if param.is_constexpr or value is None:
            result.append(("constexpr", value))
        elif isinstance(value, bool):
            result.append(("u1", None))
        elif isinstance(value, int):
            if value == 1 and specialize:
                result.append(("constexpr", 1))
                continue
            key = ("D" if value % 16 == 0 and align else "") if specialize else None
            kind = "i32" if -2**31 <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
            result.append((kind, key))
        elif isinstance(value, float):
            result.append(("fp32", None))
        elif isinstance(value, torch.Tensor):
            key = ("D" if value.data_ptr() % 16 == 0 and align else "") if specialize else None
            result.append(("*" + _TORCH_TO_TRITON[value.dtype], key))
        else:
            raise TypeError(f"{param.name}: no specialisation rule for {type(value).__name__}")
    return result


def build_of(launch: Launch, arch: int, specialize: Callable | None = None) -> Build:
    """The Build the JIT compiles for `launch` on `arch` (Triton's binder, else the restated rules)."""
    kernel = launch.kernel
    if specialize is None:
        try:
            specialization = triton_specialization(kernel, launch.args, launch.kwargs, arch)
        except (ImportError, AttributeError):  # a Triton without this binder
            specialization = rule_specialization(kernel, launch.args, launch.kwargs)
    else:
        specialization = specialize(kernel, launch.args, launch.kwargs)
    names = [p.name for p in kernel.params]
    signature = tuple((name, ty) for name, (ty, _) in zip(names, specialization))
    constexprs = tuple((name, key) for name, (ty, key) in zip(names, specialization) if ty == "constexpr")
    # As JITFunction.run: every non-constant parameter with a string key gets the backend's attributes.
    attrs = tuple((index, tuple(tuple(a) for a in _parse_attr(key))) for index, (ty, key) in enumerate(specialization)
                  if ty != "constexpr" and isinstance(key, str))
    options = tuple(sorted(_option_kwargs(kernel, launch.kwargs).items(), key=lambda item: item[0]))
    return Build(kernel.fn.__module__, kernel.fn.__name__, arch, signature, constexprs, attrs, options)


def _parse_attr(key: str) -> list:
    from triton.backends.compiler import BaseBackend

    return BaseBackend.parse_attr(key)
