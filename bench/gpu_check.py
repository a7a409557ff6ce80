"""The GPU check: every GPU figure pvd claims, in one command, within a time budget (scripts/gpu_check.sh).

    python bench/gpu_check.py run OUT_DIR [--budget 420] [--dry-run] [--stages env,tests,...] [--verbose]
    python bench/gpu_check.py merge OUT_DIR [--into bench/results]   # GPU rows of a finished check -> the tree
    python bench/gpu_check.py env OUT_DIR/env.json [--dry-run]       # stage 1 alone (used by `run`)

Stages, in order, each a subprocess under a wall-clock limit: its share of the budget left when it starts
(STAGE_SHARES; time a stage leaves unused goes to the later ones). A stage that fails or runs out of time does
not stop the later ones; each writes its files as it goes, and OUT_DIR/summary.json and SUMMARY.md are
rewritten after every stage, so a killed run keeps what it finished.

1. env: GPU, memory, SMs, driver, CUDA, torch/triton versions, optional modules -> env.json
2. tests: the kernel, compile, nets and pipeline tests on CUDA (PVD_TEST_DEVICE=cuda) -> tests/junit.xml,
   tests/summary.json
3. kernels: bench/kernels.py, every op and mode at full size (each correlation design) -> kernels.csv
4. e2e: bench/e2e.py on the demo clip at 1280x720, PVDNet (demo weights) and PVDNet-large (random weights),
   fp32/bf16, eager then compiled: frames/s, peak memory, PSNR against eager fp32 -> e2e.csv
5. train: bench/train.py, stage 2 (PVDNet, PVDNet-large) and stage 1 (BIMNet) steps/s -> train.csv
6. report: bench/report.py -> REPORT.md (plots when matplotlib is installed)
Logs: OUT_DIR/logs/<stage>.log. Exit status 1 when a stage failed (they are named), 0 otherwise.

`--dry-run`: the same stages on the CPU at tiny sizes, Triton kernels in the interpreter where they are the
subject (tests, kernels), one iteration each; the wheels in scripts/wheels are installed (offline) even when
present, and the modules a bare GPU machine lacks (_check_runner.BARE_MACHINE_MISSING) are hidden, so the run
proves the check needs nothing but the machine's preinstalled packages and the working tree. The benchmarks' rows then
say CPU and `merge` refuses them.

The driver imports only the standard library (the stages: bench/_check_stages.py, their plumbing:
bench/_check_runner.py): it reports a broken torch instead of dying with it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _check_runner import (  # noqa: E402
    KILLED_MARK,
    Context,
    child_environment,
    children_cpu_s,
    prepare_dependencies,
    write_atomic,
)
from _check_stages import ENV_JSON, STAGES, csv_rows, write_env  # noqa: E402

BENCH = Path(__file__).resolve().parent
DEFAULT_BUDGET_S = 420.0
# Share of the budget left when a stage starts: stage limit = left * share / (sum of the shares still to run).
STAGE_SHARES = {"env": 0.04, "tests": 0.27, "kernels": 0.17, "e2e": 0.30, "train": 0.17, "report": 0.05}
STAGE_NAMES = tuple(STAGE_SHARES)
MIN_STAGE_S = 15.0  # starting Python and importing torch alone take seconds
SUMMARY_JSON, SUMMARY_MD = "summary.json", "SUMMARY.md"
RESULT_FILES = ("kernels.csv", "e2e.csv", "train.csv")


@dataclass
class StageResult:
    name: str
    status: str = "not run"  # "pass" | "fail"
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the stage's child processes
    limit_s: float = 0.0
    headline: str = ""
    problems: list[str] = field(default_factory=list)


def stage_limit(name: str, left: float, remaining: list[str]) -> float:
    """The stage's share of the `left` seconds among the stages still to run, at least MIN_STAGE_S (when left)."""
    left = max(left, 0.0)
    return min(max(left * STAGE_SHARES[name] / sum(STAGE_SHARES[n] for n in remaining), MIN_STAGE_S), left)


def write_summary(out: Path, results: list[StageResult], meta: dict) -> None:
    data = {**meta, "stages": [asdict(r) for r in results]}
    write_atomic(out / SUMMARY_JSON, json.dumps(data, indent=2) + "\n")
    lines = [f"# pvd GPU check{' (DRY RUN on CPU: no GPU figure)' if meta['dry_run'] else ''}", "",
             f"{meta['device']}; budget {meta['budget_s']:.0f} s; started {meta['started']}", "",
             "| stage | result | seconds (limit) | CPU s | headline |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} ({r.limit_s:.0f}) | {r.cpu_s:.1f} | "
                     f"{(r.headline + ('; ' + '; '.join(r.problems) if r.problems else '')).replace('|', '/')} |")
    write_atomic(out / SUMMARY_MD, "\n".join(lines) + "\n")


def run_check(out: Path, budget: float, dry_run: bool, stages: list[str], python: str, verbose: bool = False) -> int:
    """Run `stages` in order within `budget` seconds, results in `out`; the exit status (1 if a stage failed)."""
    start = time.monotonic()
    end = start + budget
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    deps = Path(tempfile.mkdtemp(prefix="pvd-gpu-check-deps-"))
    try:
        installed = prepare_dependencies(python, deps, force=dry_run, log=out / "logs" / "setup.log")
        ctx = Context(out=out, python=python, dry_run=dry_run, env=child_environment(deps, dry_run), verbose=verbose)
        meta = {"dry_run": dry_run, "budget_s": budget, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "device": "CPU dry run" if dry_run else "GPU", "wheels_installed": installed, "python": python}
        print(f"gpu_check: {'DRY RUN on CPU, ' if dry_run else ''}budget {budget:.0f} s, stages {', '.join(stages)}, "
              f"results in {out}" + (f"; installed offline: {', '.join(installed)}" if installed else ""), flush=True)
        results = [StageResult(name) for name in stages]
        no_gpu = False
        for index, result in enumerate(results):
            if no_gpu:  # full-size GPU benchmarks on a CPU would only burn the budget
                result.status, result.headline = "fail", "not run: no GPU (env); --dry-run checks the CPU side"
            else:
                _run_stage(ctx, result, stage_limit(result.name, end - time.monotonic(), stages[index:]))
            if result.name == "env" and (out / ENV_JSON).is_file():
                machine = json.loads((out / ENV_JSON).read_text())
                meta["device"] = machine["device"]
                no_gpu = not dry_run and machine.get("gpu") is None
            write_summary(out, results, meta)
            print(f"gpu_check: {result.name:8s} {result.status.upper():4s} {result.seconds:6.1f} s  {result.headline}"
                  + ("; " + "; ".join(result.problems) if result.problems else ""), flush=True)
            if result.status != "pass" and result.limit_s:
                tail = ctx.log.read_text(errors="replace").splitlines()[-15:]
                print("\n".join("    | " + line for line in tail), flush=True)
        failed = [r.name for r in results if r.status != "pass"]
        total = time.monotonic() - start
        if failed:
            print(f"gpu_check: FAILED stage(s): {', '.join(failed)} ({total:.0f} s; logs in {out / 'logs'})")
            return 1
        print(f"gpu_check: all {len(results)} stage(s) passed in {total:.0f} s; summary {out / SUMMARY_MD}")
        return 0
    finally:
        shutil.rmtree(deps, ignore_errors=True)


def _run_stage(ctx: Context, result: StageResult, limit: float) -> None:
    """Run one stage under `limit` seconds; fill `result` (a stage that raises or was killed has failed)."""
    result.limit_s = limit
    ctx.log = ctx.out / "logs" / f"{result.name}.log"
    ctx.log.write_text("")
    ctx.deadline = time.monotonic() + limit
    print(f"gpu_check: {result.name} ... (limit {limit:.0f} s)", flush=True)
    began, children = time.monotonic(), children_cpu_s()
    try:
        ok, result.headline = STAGES[result.name](ctx)
    except Exception as error:  # noqa: BLE001 - a broken stage must not stop the others
        ok, result.headline = False, f"gpu_check error: {type(error).__name__}: {error}"
    result.seconds = time.monotonic() - began
    result.cpu_s = children_cpu_s() - children
    if KILLED_MARK in ctx.log.read_text(errors="replace"):
        ok = False
        result.problems.append(f"killed at its time limit ({limit:.0f} s)")
    result.status = "pass" if ok else "fail"


def merge(out: Path, into: Path) -> int:
    """Append the GPU rows of a finished check (OUT_DIR/*.csv) to `into`/*.csv (rows already there are skipped,
    CPU rows refused), copy its summary and environment, and rebuild `into`/REPORT.md."""
    sys.path.insert(0, str(BENCH))
    from _env import append_rows
    from report import build_report

    if not (out / SUMMARY_JSON).is_file():
        print(f"{out} holds no {SUMMARY_JSON}: not the output folder of a GPU check")
        return 1
    if json.loads((out / SUMMARY_JSON).read_text()).get("dry_run"):
        print(f"{out} is a dry run: its rows are CPU rows and are not merged")
        return 1
    added = 0
    for name in RESULT_FILES:
        new = [row for row in csv_rows(out / name) if not row.get("device", "cpu").lower().startswith("cpu")]
        old = csv_rows(into / name)
        fresh = [row for row in new if not any(all(o.get(k, "") == v for k, v in row.items()) for o in old)]
        append_rows(into / name, fresh)
        added += len(fresh)
        print(f"{name}: {len(fresh)} new GPU row(s) of {len(new)}")
    env = json.loads((out / ENV_JSON).read_text()) if (out / ENV_JSON).is_file() else {}
    stem = re.sub(r"[^A-Za-z0-9]+", "_", env.get("device", "gpu")).strip("_")
    for source, target in ((SUMMARY_MD, f"GPU_CHECK_{stem}.md"), (ENV_JSON, f"gpu_env_{stem}.json")):
        if (out / source).is_file():
            shutil.copyfile(out / source, into / target)
    print(f"merged {added} row(s) into {into}; wrote {build_report(into)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the check")
    run.add_argument("out", type=Path, help="results folder (created)")
    run.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                     help="seconds for all stages (default %(default)s)")
    run.add_argument("--dry-run", action="store_true", help="the CPU check of the machinery: tiny sizes, interpreter")
    run.add_argument("--stages", default=",".join(STAGE_NAMES), help="comma-separated subset, in this order")
    run.add_argument("--python", default=sys.executable, help="the Python the stages run with")
    run.add_argument("--verbose", action="store_true", help="echo every stage's output")
    env = commands.add_parser("env", help="stage 1 alone")
    env.add_argument("path", type=Path)
    env.add_argument("--dry-run", action="store_true")
    merged = commands.add_parser("merge", help="merge a GPU check's rows into the results in the tree")
    merged.add_argument("out", type=Path)
    merged.add_argument("--into", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    if args.command == "env":
        return write_env(args.path, args.dry_run)
    if args.command == "merge":
        return merge(args.out, args.into)
    stages = [name.strip() for name in args.stages.split(",") if name.strip()]
    unknown = sorted(set(stages) - set(STAGE_NAMES))
    if unknown or not stages:
        parser.error(f"--stages: unknown {unknown}; choose from {', '.join(STAGE_NAMES)}")
    if not args.budget > 0:
        parser.error(f"--budget must be > 0 seconds, got {args.budget}")
    stages = [name for name in STAGE_NAMES if name in stages]
    return run_check(args.out.resolve(), args.budget, args.dry_run, stages, args.python, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
