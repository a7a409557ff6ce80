"""The kernel builds pvd really launches: run the call sites with every Triton launch intercepted.

`capture_launches()` runs the call sites of `pvd.kernels.call_sites` (the public ops, forward and backward, on
CPU tensors of the network's shapes). While it runs, `JITFunction.run` (and, for autotuned kernels,
`Autotuner.run`, every config) records each launch and returns without executing anything, and
TRITON_INTERPRET reads 1 so the ops take their Triton path for CPU tensors. The kernel objects must be
JITFunctions, i.e. pvd imported with TRITON_INTERPRET unset or 0 (`compile_check` re-runs itself so).

`build_of(launch, arch)` derives the build Triton's JIT compiles for a launch with Triton's own binder
(`create_function_from_signature` + the backend's `parse_attr`), for a `GPUTarget("cuda", arch, 32)`:
- a pointer whose address is a multiple of 16 bytes gets `tt.divisibility = 16`;
- an int argument gets `tt.divisibility = 16` when it is a multiple of 16 (0 included), becomes the
  constant 1 when it equals 1, and is i64 outside the int32 range; bools are u1, floats fp32;
- `do_not_specialize` / `do_not_specialize_on_alignment` parameters are left generic.
`rule_specialization` restates these rules (the fallback where Triton's binder is not importable; the tests
check both agree). CPU allocations are 64-byte aligned and CUDA's 512-byte aligned, and views keep their byte
offset, so a CPU tensor specialises exactly as its CUDA twin.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .call_sites import Site, all_sites, run_site

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
def at_site(site: Site, phase: str = "forward"):
    """Launches intercepted within are attributed to `site` (and `phase`)."""
    _state["site"] = site
    try:
        with _phase(phase):
            yield
    finally:
        _state["site"] = None


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
            with at_site(site):
                run_site(site, _phase)
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
