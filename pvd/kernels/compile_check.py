"""Ahead-of-time compile check of the kernel builds pvd really launches, for sm_80 and sm_90a, without a GPU.

    python -m pvd.kernels.compile_check [--arch 80 90] [--json] [--workers 2]

`pvd.kernels.launch_capture` runs the call sites of `pvd.kernels.call_sites` (the public ops at the network's
shapes for a 1280x720 frame pair, BIMNet's training crop, one row per other dtype/layout of the API, each
kernel design an op offers) with every Triton launch intercepted, and derives each launch's specialisation
exactly as Triton's JIT does (16-byte-aligned pointers and ints divisible by 16 get `tt.divisibility=16`, ints
equal to 1 become constants). Each distinct build is compiled with
`triton.compile` for `GPUTarget("cuda", arch, 32)` (arch 90 compiles to `sm_90a`), then its PTX is assembled
again by the ptxas Triton picks, with Triton's flags and `-v`; the register count must match the cubin Triton
built. Per build: registers, shared memory (ptxas static + Triton's dynamic allocation), stack frame, spill
bytes, the resident warps per SM that follow (CUDA's occupancy rules, `warps_per_sm`), and the block-wide
barriers that sit inside loops of the PTX (`loop_barriers`).

Exit status 0 when every build compiled, spills nothing and keeps at least MIN_WARPS_PER_SM warps resident;
1 otherwise. Triton's `@triton.jit` hands back interpreter objects under TRITON_INTERPRET=1, so in that case the
check re-runs itself with TRITON_INTERPRET=0. Compiling is CPU-bound (two worker processes); keep
TRITON_CACHE_DIR between CI runs to skip unchanged kernels.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import triton

from ._common import interpreting

DEFAULT_ARCHES = (80, 90)
POOL_WORKERS = 2
WARP_SIZE = 32
# A build that keeps fewer warps resident per SM fails the check (latency hiding of these memory-bound kernels).
MIN_WARPS_PER_SM = 16

_TRITON_NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
CUOBJDUMP = _TRITON_NVIDIA_BIN / "cuobjdump"

_PTX_TARGET = re.compile(r"^\s*\.target\s+(sm_\w+)", re.MULTILINE)
_CUBIN_ARCH = re.compile(r"\bsm=(\w+)")
_CUBIN_REGISTERS = re.compile(r"\bREG:(\d+)")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTX_LABEL = re.compile(r"^\s*(\$?[\w$]+):")
_PTX_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$?[\w$]+)\s*;")
# Block-wide barriers (bar.sync is barrier.sync.aligned; bar.red/barrier.red wait too); not bar.warp.sync.
_PTX_BARRIER = re.compile(r"\b(?:bar|barrier)(?:\.cta)?\.(?:sync|red)\b")


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of the CUDA occupancy rules. Bytes for memory."""

    gpu: str
    registers: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    shared_memory: int = 233472  # H100: 228 KB
    reserved_shared_per_block: int = 1024
    register_granularity: int = 256  # registers are allocated per warp in units of 256 (8 per thread)
    shared_granularity: int = 128
    sub_partitions: int = 4  # each warp takes its registers from one of 4 quarter register files


SM_LIMITS = {80: SmLimits("A100", shared_memory=167936), 90: SmLimits("H100")}


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def warps_per_sm(registers: int, num_warps: int, shared_bytes: int, limits: SmLimits = SM_LIMITS[90]) -> int:
    """Resident warps per SM of a kernel using `registers` per thread, `num_warps` per block and `shared_bytes`
    of shared memory per block (cuda_occupancy.h): registers go per warp, rounded up to 256, out of one quarter
    of the register file each; every block also costs 1 KB of reserved shared memory; at most 64 warps and 32
    blocks. Whole blocks only."""
    regs_per_warp = _round_up(registers * WARP_SIZE, limits.register_granularity)
    if regs_per_warp * _round_up(num_warps, limits.sub_partitions) > limits.registers:
        return 0
    per_partition = (limits.registers // limits.sub_partitions) // regs_per_warp if regs_per_warp else limits.max_warps
    blocks_by_registers = per_partition * limits.sub_partitions // num_warps
    block_shared = _round_up(shared_bytes + limits.reserved_shared_per_block, limits.shared_granularity)
    blocks_by_shared = limits.shared_memory // block_shared
    blocks = min(blocks_by_registers, blocks_by_shared, limits.max_warps // num_warps, limits.max_blocks)
    return blocks * num_warps


def loop_barriers(ptx: str) -> tuple[int, int, int]:
    """(loops, barriers inside loops, most barriers in one loop body) of a PTX listing. A loop body runs from
    a label to the last branch back to it; a barrier inside nested loops counts once in the total."""
    lines = ptx.splitlines()
    labels, loops = {}, {}
    for number, line in enumerate(lines):
        if (label := _PTX_LABEL.match(line)) is not None:
            labels[label.group(1)] = number
        for target in _PTX_BRANCH.findall(line):
            if target in labels:  # a backward branch: the label came first
                loops[target] = (labels[target], number)
    barriers = [number for number, line in enumerate(lines) if _PTX_BARRIER.search(line)]
    inside = {b for b in barriers for start, end in loops.values() if start <= b <= end}
    most = max((sum(start <= b <= end for b in barriers) for start, end in loops.values()), default=0)
    return len(loops), len(inside), most


@dataclass
class BuildResult:
    """One specialised build compiled for one arch. Sizes in bytes; None when unknown."""

    kernel: str
    arch: int
    dtypes: list
    sites: list
    num_warps: int
    num_stages: int
    divisible_16: list
    constant_1: list
    constexprs: dict
    pointers: dict  # pointer argument -> Triton type, e.g. '*bf16'
    ptx_target: str | None = None
    cubin_arch: str | None = None
    registers: int | None = None
    static_smem: int | None = None
    dynamic_smem: int | None = None
    stack_bytes: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    warps_per_sm: int | None = None
    loops: int | None = None
    loop_barriers: int | None = None
    max_barriers_per_loop: int | None = None
    seconds: float = 0.0
    error: str | None = None
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def expected_target(arch: int) -> str:
    """The `.target` Triton emits for `arch`: sm_90 and newer get the arch-specific 'a' variant."""
    return f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"


def ptxas_for(arch: int) -> Path:
    """The ptxas Triton itself assembles `arch` with (Triton 3.9: `ptxas-blackwell` from sm_90 on)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return Path(get_ptxas(arch).path)


def _ptxas_flags(options) -> list[str]:
    """Triton's own ptxas options that change the code: fmad, its register-allocation workaround (3.9), and
    the user's ptx_options."""
    from triton.backends.nvidia.compiler import CUDABackend

    flags = [] if options.enable_fp_fusion else ["--fmad=false"]
    if "--regAllocOptLevel=2" in inspect.getsource(CUDABackend.make_cubin):
        flags.append("--regAllocOptLevel=2")
    return flags + (options.ptx_options.split(" ") if getattr(options, "ptx_options", None) else [])


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


def compile_build(build, sites: list[str], dtypes: list[str]) -> BuildResult:
    """Compile one `launch_capture.Build` as the JIT would and measure it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    options = dict(build.options)
    constexprs = dict(build.constexprs)
    kernel = getattr(importlib.import_module(build.module), build.name)
    declared = {p.name for p in getattr(kernel, "params", []) if p.is_constexpr}
    result = BuildResult(build.kernel_name, build.arch, dtypes, sites, 0, 0, build.divisible_16(),
                         build.constant_1(declared), {k: str(v) for k, v in constexprs.items() if k in declared},
                         {name: ty for name, ty in build.signature if ty.startswith("*")})
    start = time.perf_counter()
    try:
        if not isinstance(kernel, triton.runtime.jit.JITFunction):
            raise TypeError(f"kernel is a {type(kernel).__name__}, not a JITFunction (TRITON_INTERPRET=1?)")
        target = GPUTarget("cuda", build.arch, WARP_SIZE)
        parsed = make_backend(target).parse_options(options)
        result.num_warps, result.num_stages = parsed.num_warps, parsed.num_stages
        names = [name for name, _ in build.signature]
        source = triton.compiler.ASTSource(
            fn=kernel, signature=dict(build.signature),
            constexprs={(names.index(name),): value for name, value in build.constexprs},
            attrs={(index,): [list(a) for a in attrs] for index, attrs in build.attrs})
        compiled = triton.compile(source, target=target, options=parsed.__dict__)
        ptx = compiled.asm["ptx"]
        targets = _PTX_TARGET.findall(ptx)
        if len(targets) != 1:
            raise RuntimeError(f"expected one .target line in the PTX, found {targets}")
        result.ptx_target = targets[0]
        with tempfile.TemporaryDirectory(prefix="pvd_compile_check_") as tmp:
            ptx_path, cubin_path, triton_cubin = (Path(tmp) / name for name in ("k.ptx", "k.cubin", "triton.cubin"))
            ptx_path.write_text(ptx)
            report = _run_tool([str(ptxas_for(build.arch)), "-v", *_ptxas_flags(parsed), "--gpu-name",
                                result.ptx_target, str(ptx_path), "-o", str(cubin_path)])
            triton_cubin.write_bytes(compiled.asm["cubin"])
            elf_header = _run_tool([str(CUOBJDUMP), "-elf", str(triton_cubin)])
            usage = _run_tool([str(CUOBJDUMP), "-res-usage", str(triton_cubin)])
        cubin_arch = _CUBIN_ARCH.search(elf_header)
        result.cubin_arch = None if cubin_arch is None else f"sm_{cubin_arch.group(1)}"
        measured = _parse_ptxas(report)
        for key, value in measured.items():
            setattr(result, key, value)
        result.dynamic_smem = int(compiled.metadata.shared)
        triton_registers = _CUBIN_REGISTERS.search(usage)
        if triton_registers is None or int(triton_registers.group(1)) != result.registers:
            raise RuntimeError(f"ptxas -v reports {result.registers} registers, Triton's cubin "
                               f"{triton_registers.group(1) if triton_registers else '?'}: flags differ")
        result.loops, result.loop_barriers, result.max_barriers_per_loop = loop_barriers(ptx)
        limits = SM_LIMITS.get(build.arch, SM_LIMITS[90])
        result.warps_per_sm = warps_per_sm(result.registers, result.num_warps,
                                           result.static_smem + result.dynamic_smem, limits)
        if result.ptx_target != expected_target(build.arch) or result.cubin_arch != expected_target(build.arch):
            raise RuntimeError(f"PTX targets {result.ptx_target}, cubin is {result.cubin_arch}, "
                               f"expected {expected_target(build.arch)}")
    except Exception as error:  # noqa: BLE001 - reported per build, the check fails at the end
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = time.perf_counter() - start
    result.problems = _problems(result)
    return result


def _problems(r: BuildResult) -> list[str]:
    if r.error is not None:
        return [r.error]
    problems = []
    if r.spill_stores or r.spill_loads:
        problems.append(f"spills {r.spill_stores} B stores, {r.spill_loads} B loads")
    if r.warps_per_sm < MIN_WARPS_PER_SM:
        problems.append(f"{r.warps_per_sm} warps/SM < {MIN_WARPS_PER_SM} ({r.registers} registers, "
                        f"{r.num_warps} warps/block, {r.static_smem + r.dynamic_smem} B shared)")
    return problems


def _compile_job(job) -> BuildResult:
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    return compile_build(*job)


def collect_builds(arches) -> list[tuple]:
    """Capture the launches and return the distinct builds as (Build, call sites, dtypes), per arch."""
    from . import launch_capture

    launches = launch_capture.capture_launches()
    builds: dict[str, tuple] = {}
    for arch in arches:
        for launch in launches:
            build = launch_capture.build_of(launch, arch)
            entry = builds.setdefault(repr(build), (build, [], []))
            site = f"{launch.site.op}: {launch.site.name} [{launch.phase}]"
            dtype = str(launch.site.dtype).removeprefix("torch.")
            for items, item in ((entry[1], site), (entry[2], dtype)):
                if item not in items:
                    items.append(item)
    return list(builds.values())


def run_check(arches=DEFAULT_ARCHES, workers: int = POOL_WORKERS) -> list[BuildResult]:
    """Capture, derive and compile every build for every arch."""
    if interpreting():
        raise RuntimeError("run_check needs TRITON_INTERPRET unset or 0; use main(), which re-runs itself")
    jobs = collect_builds(arches)
    if workers <= 1 or len(jobs) <= 1:
        return [_compile_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_job, jobs))


def _variants(results: list[BuildResult]) -> dict[int, str]:
    """Per result, its constexprs that differ between the builds of the same kernel, e.g. 'WRT_F2=True'."""
    values: dict[str, dict[str, set]] = {}
    for r in results:
        for name, value in r.constexprs.items():
            values.setdefault(r.kernel, {}).setdefault(name, set()).add(value)
    return {id(r): " ".join(f"{name}={value}" for name, value in r.constexprs.items()
                            if len(values[r.kernel][name]) > 1) for r in results}


def _build_numbers(results: list[BuildResult]) -> dict[int, int]:
    """The same specialisation compiled for several arches shares one number (1, 2, ...)."""
    numbers: dict[tuple, int] = {}
    return {id(r): numbers.setdefault((r.kernel, tuple(r.sites), tuple(r.divisible_16), tuple(r.constant_1),
                                       tuple(sorted(r.constexprs.items()))), len(numbers) + 1) for r in results}


def format_table(results: list[BuildResult]) -> str:
    """Fixed-width table, one row per build and arch, then each build's specialisation and call sites."""
    header = ("#", "kernel", "variant", "arch", "dtype", "warps", "regs", "smem B", "stack B", "spill st/ld",
              "warps/SM", "loop barriers", "status")
    rows = [header]
    variants, numbers = _variants(results), _build_numbers(results)

    def show(value):
        return "-" if value is None else str(value)

    for r in sorted(results, key=lambda r: (numbers[id(r)], r.arch)):
        smem = None if r.static_smem is None else f"{r.static_smem}+{r.dynamic_smem}"
        spills = None if r.spill_stores is None else f"{r.spill_stores}/{r.spill_loads}"
        barriers = None if r.loop_barriers is None else f"{r.loop_barriers} ({r.max_barriers_per_loop}/loop)"
        rows.append((str(numbers[id(r)]), r.kernel, variants[id(r)], show(r.ptx_target or r.arch), ",".join(r.dtypes),
                     show(r.num_warps), show(r.registers), show(smem), show(r.stack_bytes), show(spills),
                     show(r.warps_per_sm), show(barriers), "ok" if r.ok else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("\nSpecialisation (D16: divisible by 16 / 16-byte aligned; =1: the constant 1) and call sites:")
    listed = set()
    for r in sorted(results, key=lambda r: numbers[id(r)]):
        if numbers[id(r)] in listed:
            continue
        listed.add(numbers[id(r)])
        types = collections.Counter(r.pointers.values())
        common = types.most_common(1)[0][0] if types else "-"
        others = "".join(f" {name} {ty}" for name, ty in r.pointers.items() if ty != common)
        lines.append(f"#{numbers[id(r)]} {r.kernel} {variants[id(r)]}".rstrip()
                     + f": pointers {common}{others}; D16 {', '.join(r.divisible_16) or '-'}; "
                     f"=1 {', '.join(r.constant_1) or '-'}")
        lines += [f"    {site}" for site in r.sites]
    return "\n".join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m pvd.kernels.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHES),
                        help="CUDA compute capabilities times ten (default: 80 90)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--workers", type=int, default=POOL_WORKERS, help="compile processes (default: 2)")
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
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    start = time.perf_counter()
    try:
        results = run_check(args.arch, args.workers)
    except Exception as error:  # noqa: BLE001 - a capture that fails is a failed check, stated in one line
        print(f"compile check FAILED: capturing the launches: {type(error).__name__}: {error}")
        return 1
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    passed = bool(results) and not failed
    if args.json:
        document = {"ok": passed, "arches": args.arch, "triton": triton.__version__,
                    "ptxas": {arch: str(ptxas_for(arch)) for arch in args.arch},
                    "min_warps_per_sm": MIN_WARPS_PER_SM, "seconds": round(seconds, 2),
                    "results": [asdict(r) for r in results]}
        print(json.dumps(document, indent=1))
    else:
        print(format_table(results))
        ptxas = ", ".join(f"sm_{arch}: {ptxas_for(arch).name}" for arch in args.arch)
        numbers = _build_numbers(results)
        gpus = ", ".join(f"sm_{arch} on {limits.gpu}" for arch, limits in SM_LIMITS.items())
        print(f"\nsmem: static + dynamic; warps/SM: resident by CUDA's occupancy rules ({gpus}); loop barriers: "
              f"block-wide barriers inside PTX loops (most in one loop body); fail below {MIN_WARPS_PER_SM} "
              f"warps/SM or on any spill\ntriton {triton.__version__}, ptxas ({ptxas}); {len(results)} compiles of "
              f"{len(set(numbers.values()))} specialisations in {seconds:.1f} s")
        for r in failed:
            print(f"FAILED #{numbers[id(r)]} {r.kernel} [{r.ptx_target or r.arch}, {','.join(r.dtypes)}; "
                  f"{r.sites[0]}]: {'; '.join(r.problems)}")
        print("compile check passed" if passed else "compile check FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
