"""Ahead-of-time compile check of every Triton kernel for sm_80 and sm_90, without a GPU.

    python -m pvd.kernels.compile_check [--arch 80 90] [--json] [--allow-missing]

Every module of `pvd.kernels` that defines `compile_specs()` (at least `warp`, `correlation` and
`pixel_volume`) lists its kernel launch configurations as `CompileSpec`s. Each one is compiled with
`triton.compile` for each CUDA architecture, then the PTX is assembled again by the `ptxas` shipped in the
triton wheel with `-v`, whose report gives registers, shared memory (static; Triton's dynamic allocation is
added from the kernel metadata), stack frame and spill bytes. Arch 90 compiles to `sm_90a`; the real target
is read from the PTX `.target` line and from the cubin's ELF header.

Exit status 0 when every kernel compiled without spills, 1 otherwise (a kernel module that exists but fails
to import, a missing expected module, a compile error or any spill). Triton's `@triton.jit` hands back
interpreter objects under TRITON_INTERPRET=1, so in that case the check re-runs itself in a subprocess with
TRITON_INTERPRET=0. Compiling is CPU-bound (about 1.5 CPU-seconds per kernel and arch, two worker
processes); keep TRITON_CACHE_DIR between CI runs to skip unchanged kernels.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import triton

from ._common import interpreting

DEFAULT_ARCHES = (80, 90)
# Kernel modules that must exist; any other module with `compile_specs()` is checked too.
EXPECTED_MODULES = ("warp", "correlation", "pixel_volume")
# Modules of pvd.kernels that hold no kernels of their own.
NON_KERNEL_MODULES = ("compile_check", "reference")
POOL_WORKERS = 2
WARP_SIZE = 32

_TRITON_NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def ptxas_for(arch: int) -> Path:
    """The ptxas that Triton itself assembles `arch` with (Triton 3.9 uses its newer `ptxas-blackwell` for
    sm_90 and up, Triton 3.6 the plain `ptxas` below sm_100), so the PTX version always matches."""
    from triton.backends.nvidia.compiler import get_ptxas

    return Path(get_ptxas(arch).path)

CUOBJDUMP = _TRITON_NVIDIA_BIN / "cuobjdump"

_PTX_TARGET = re.compile(r"^\s*\.target\s+(sm_\w+)", re.MULTILINE)
_CUBIN_ARCH = re.compile(r"\bsm=(\w+)")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass
class CompileResult:
    """Outcome of compiling one CompileSpec for one architecture. Sizes in bytes; None when unknown."""

    module: str
    kernel: str
    dtype: str
    arch: int
    num_warps: int
    num_stages: int
    constexprs: dict
    ptx_target: str | None = None
    cubin_arch: str | None = None
    registers: int | None = None
    smem_bytes: int | None = None
    stack_bytes: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.spill_stores == 0 and self.spill_loads == 0


def expected_target(arch: int) -> str:
    """The `.target` Triton emits for `arch`: sm_90 and newer get the arch-specific 'a' variant."""
    return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"


def kernel_modules() -> tuple[dict[str, object], list[str]]:
    """Import every module of pvd.kernels; return ({name: module with compile_specs}, missing expected names).

    A module that exists but fails to import raises (hard error, never a silent skip).
    """
    package = importlib.import_module("pvd.kernels")
    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__)
                   if not info.name.startswith("_") and info.name not in NON_KERNEL_MODULES)
    modules = {}
    for name in names:
        module = importlib.import_module(f"pvd.kernels.{name}")
        if hasattr(module, "compile_specs"):
            modules[name] = module
    missing = [name for name in EXPECTED_MODULES if name not in modules]
    return modules, missing


def _constexpr_text(value) -> str:
    return str(value)


def _run_tool(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout + done.stderr


def _parse_ptxas(report: str) -> dict:
    registers = _PTXAS_REGISTERS.search(report)
    frame = _PTXAS_FRAME.search(report)
    if registers is None or frame is None:
        raise RuntimeError(f"could not parse the ptxas -v report:\n{report}")
    smem = _PTXAS_SMEM.search(report)
    return {"registers": int(registers.group(1)), "static_smem": int(smem.group(1)) if smem else 0,
            "stack_bytes": int(frame.group(1)), "spill_stores": int(frame.group(2)),
            "spill_loads": int(frame.group(3))}


def compile_one(module_name: str, spec_index: int, arch: int) -> CompileResult:
    """Compile spec `spec_index` of `pvd.kernels.<module_name>` for `arch` and measure it with ptxas -v."""
    spec = importlib.import_module(f"pvd.kernels.{module_name}").compile_specs()[spec_index]
    result = CompileResult(module_name, spec.name, str(spec.dtype).removeprefix("torch."), arch, spec.num_warps,
                           spec.num_stages, {k: _constexpr_text(v) for k, v in spec.constexprs.items()})
    start = time.perf_counter()
    try:
        if not isinstance(spec.kernel, triton.runtime.jit.JITFunction):
            raise TypeError(f"kernel is a {type(spec.kernel).__name__}, not a JITFunction "
                            "(was pvd imported with TRITON_INTERPRET=1?)")
        signature = {**spec.signature, **{name: "constexpr" for name in spec.constexprs}}
        source = triton.compiler.ASTSource(fn=spec.kernel, signature=signature, constexprs=spec.constexprs)
        compiled = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", arch, WARP_SIZE),
                                  options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
        targets = _PTX_TARGET.findall(compiled.asm["ptx"])
        if len(targets) != 1:
            raise RuntimeError(f"expected one .target line in the PTX, found {targets}")
        result.ptx_target = targets[0]
        with tempfile.TemporaryDirectory(prefix="pvd_compile_check_") as tmp:
            ptx_path, cubin_path = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
            ptx_path.write_text(compiled.asm["ptx"])
            # Same assembler options as Triton's own ptxas step (line info does not change the code).
            fmad = [] if compiled.metadata.enable_fp_fusion else ["--fmad=false"]
            report = _run_tool([str(ptxas_for(arch)), "-v", *fmad, "--gpu-name", result.ptx_target, str(ptx_path),
                                "-o", str(cubin_path)])
            triton_cubin = Path(tmp) / "triton.cubin"
            triton_cubin.write_bytes(compiled.asm["cubin"])
            elf_header = _run_tool([str(CUOBJDUMP), "-elf", str(triton_cubin)])
        cubin_arch = _CUBIN_ARCH.search(elf_header)
        if cubin_arch is None:
            raise RuntimeError("could not read the architecture from the cubin's ELF header")
        result.cubin_arch = f"sm_{cubin_arch.group(1)}"
        measured = _parse_ptxas(report)
        result.registers = measured["registers"]
        result.smem_bytes = measured["static_smem"] + int(compiled.metadata.shared)
        result.stack_bytes = measured["stack_bytes"]
        result.spill_stores = measured["spill_stores"]
        result.spill_loads = measured["spill_loads"]
        if result.ptx_target != expected_target(arch) or result.cubin_arch != expected_target(arch):
            raise RuntimeError(f"arch {arch}: PTX targets {result.ptx_target}, cubin is {result.cubin_arch}, "
                               f"expected {expected_target(arch)}")
    except Exception as error:  # noqa: BLE001 - reported per kernel, the check fails at the end
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = time.perf_counter() - start
    return result


def _compile_job(job: tuple[str, int, int]) -> CompileResult:
    return compile_one(*job)


def run_check(arches=DEFAULT_ARCHES, workers: int = POOL_WORKERS) -> tuple[list[CompileResult], list[str]]:
    """Compile every spec of every kernel module for every arch. Returns (results, missing expected modules)."""
    if interpreting():
        raise RuntimeError("run_check needs TRITON_INTERPRET unset or 0; use main(), which re-runs itself")
    modules, missing = kernel_modules()
    jobs = [(name, index, arch) for name, module in modules.items()
            for index in range(len(module.compile_specs())) for arch in arches]
    if workers <= 1 or len(jobs) <= 1:
        return [_compile_job(job) for job in jobs], missing
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_job, jobs)), missing


def format_table(results: list[CompileResult]) -> str:
    """Fixed-width table, one row per (kernel, dtype, arch)."""
    header = ("kernel", "dtype", "arch", "warps", "regs", "smem B", "stack B", "spill st", "spill ld", "status")
    rows = [header]
    for r in results:
        def show(value):
            return "-" if value is None else str(value)
        status = "ok" if r.ok else ("ERROR" if r.error else "SPILLS")
        rows.append((f"{r.module}.{r.kernel}", r.dtype, show(r.ptx_target or r.arch), str(r.num_warps),
                     show(r.registers), show(r.smem_bytes), show(r.stack_bytes), show(r.spill_stores),
                     show(r.spill_loads), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pvd.kernels.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHES),
                        help="CUDA compute capabilities times ten (default: 80 90)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--workers", type=int, default=POOL_WORKERS, help="compile processes (default: 2)")
    parser.add_argument("--allow-missing", action="store_true",
                        help=f"do not fail when one of {', '.join(EXPECTED_MODULES)} does not exist yet")
    args = parser.parse_args(argv)
    if any(arch < 75 for arch in args.arch):
        parser.error(f"--arch values must be compute capabilities >= 75 (e.g. 80 90), got {args.arch}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_args(argv)
    if interpreting():
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        return subprocess.call([sys.executable, "-m", "pvd.kernels.compile_check", *argv], env=env)
    start = time.perf_counter()
    results, missing = run_check(args.arch, args.workers)
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    passed = not failed and (args.allow_missing or not missing)
    if args.json:
        document = {"ok": passed, "arches": args.arch, "triton": triton.__version__,
                    "ptxas": {arch: str(ptxas_for(arch)) for arch in args.arch},
                    "missing_modules": missing, "seconds": round(seconds, 2),
                    "results": [asdict(r) for r in results]}
        print(json.dumps(document, indent=1))
    else:
        print(format_table(results))
        ptxas = ", ".join(f"sm_{arch}: {ptxas_for(arch).name}" for arch in args.arch)
        print(f"\ntriton {triton.__version__}, ptxas ({ptxas}); {len(results)} compiles in {seconds:.1f} s")
        for r in failed:
            print(f"FAILED {r.module}.{r.kernel} [{r.dtype}, sm_{r.arch}]: "
                  f"{r.error or f'{r.spill_stores} B spill stores, {r.spill_loads} B spill loads'}")
        for name in missing:
            print(f"{'NOTE' if args.allow_missing else 'FAILED'}: kernel module pvd.kernels.{name} does not exist")
        print("compile check passed" if passed else "compile check FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
