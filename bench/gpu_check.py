"""The GPU check: every GPU figure pvd claims, in one command, within a time budget (scripts/gpu_check.sh).

    python bench/gpu_check.py run OUT_DIR [--budget 420] [--dry-run] [--stages env,tests,...] [--verbose]
    python bench/gpu_check.py merge OUT_DIR [--into bench/results]   # GPU rows of a finished check -> the tree
    python bench/gpu_check.py env OUT_DIR/env.json [--dry-run]       # stage 1 alone (used by `run`)

Stages, in order, each a subprocess under a wall-clock limit: its share of the budget left when it starts
(STAGE_SHARES; time a stage leaves unused goes to the later ones). A stage that fails or runs out of time does
not stop the later ones; each writes its files as it goes, and OUT_DIR/summary.json and SUMMARY.md are
rewritten after every stage, so a killed run keeps what it finished.

1. env: GPU, memory, SMs, driver, CUDA, torch/triton versions, optional modules -> env.json
2. tests: the kernel, compile, nets and pipeline tests on CUDA (PVD_TEST_DEVICE=cuda) -> tests/junit.xml, tests/summary.json
3. kernels: bench/kernels.py, every op and mode at full size (each correlation design) -> kernels.csv
4. e2e: bench/e2e.py on the demo clip at 1280x720, PVDNet (demo weights) and PVDNet-large (random weights),
   fp32/bf16, eager then compiled: frames/s, peak memory, PSNR against eager fp32 -> e2e.csv
5. train: bench/train.py, stage 2 (PVDNet, PVDNet-large) and stage 1 (BIMNet) steps/s -> train.csv
6. report: bench/report.py -> REPORT.md (plots when matplotlib is installed)
Logs: OUT_DIR/logs/<stage>.log. Exit status 1 when a stage failed (they are named), 0 otherwise.

`--dry-run`: the same stages on the CPU at tiny sizes, Triton kernels in the interpreter where they are the
subject (tests, kernels), one iteration each; the wheels in scripts/wheels are installed (offline) even when
present, and the modules a bare GPU machine lacks (BARE_MACHINE_MISSING) are hidden, so the run proves the
check needs nothing but the machine's preinstalled packages and the working tree. The benchmarks' rows then
say CPU and `merge` refuses them.

Only the standard library is imported here: the check reports a broken torch instead of dying with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WHEELS_DIR = REPO / "scripts" / "wheels"
DEMO_WEIGHTS = REPO / "weights" / "pvd_demo.safetensors"
DEFAULT_BUDGET_S = 420.0
# Share of the budget left when a stage starts: stage limit = left * share / (sum of the shares still to run).
STAGE_SHARES = {"env": 0.04, "tests": 0.27, "kernels": 0.17, "e2e": 0.30, "train": 0.17, "report": 0.05}
STAGE_NAMES = tuple(STAGE_SHARES)
# A benchmark's --time-limit leaves this much of its stage limit for starting Python and importing torch.
START_UP_S = 12.0
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
TEST_FILES = ("tests/test_correlation.py", "tests/test_warp.py", "tests/test_pixel_volume.py",
              "tests/test_compile_model.py", "tests/test_nets.py", "tests/test_pipeline.py")
# The dry run: a few tests, in two groups (the real run runs one group per file, side by side).
DRY_RUN_TEST_GROUPS = (("tests/test_correlation.py::test_triton_path_is_taken",
                        "tests/test_pixel_volume.py::test_triton_path_is_taken",
                        "tests/test_warp.py::test_gradcheck_through_triton"),
                       ("tests/test_compile_model.py",))
# Frames per end-to-end configuration on the GPU (the demo clip is rendered on the CPU first).
E2E_FRAMES, E2E_WARMUP = 16, 2
TRAIN_STAGES = "pvdnet,bimnet,pvdnet_large"
TRAIN_CONFIG = REPO / "train" / "configs" / "gopro.toml"
# Python packages the project uses that the GPU machine lacks and that are not carried as wheels: the features
# needing them must turn off with a message. The dry run hides them.
BARE_MACHINE_MISSING = ("av", "skimage", "matplotlib")
OPTIONAL_MODULES = ("tqdm", "matplotlib", "skimage", "av", "cv2", "einops", "safetensors", "numpy", "pytest")
SUMMARY_JSON, SUMMARY_MD, ENV_JSON = "summary.json", "SUMMARY.md", "env.json"
RESULT_FILES = ("kernels.csv", "e2e.csv", "train.csv")
SKIP_MARK = "time limit: skipped"  # bench/_budget.py SKIP_PREFIX (not imported: it is a benchmark-side module)

_HIDE_MODULES = '''"""Written by bench/gpu_check.py --dry-run: hides modules a bare GPU machine lacks."""
import importlib.abc, os, sys

class _Hidden(importlib.abc.MetaPathFinder):
    names = set(filter(None, os.environ.get("PVD_GPU_CHECK_HIDE", "").split(",")))

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the gpu_check dry run)", name=name)
        return None

sys.meta_path.insert(0, _Hidden())
'''


@dataclass
class StageResult:
    name: str
    status: str = "not run"  # "pass" | "fail"
    seconds: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the stage's child processes
    limit_s: float = 0.0
    headline: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What every stage needs: where to write, which Python, the children's environment, and its deadline."""

    out: Path
    python: str
    dry_run: bool
    env: dict
    verbose: bool = False
    log: Path | None = None
    deadline: float = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def bench_limit(self, seconds: float | None = None) -> str:
        """--time-limit for a benchmark that may use `seconds` (default: all the stage has left)."""
        seconds = self.left() if seconds is None else min(seconds, self.left())
        return f"{max(seconds - START_UP_S, 1.0):.0f}"

    def call(self, argv: list[str], extra_env: dict | None = None, until: float | None = None,
             capture: bool = False) -> tuple[int | None, str]:
        """Run argv in the repository with output appended to the stage log; (exit status or None when it was
        killed at the deadline, its captured output when `capture`)."""
        until = self.deadline if until is None else min(until, self.deadline)
        env = {**self.env, **(extra_env or {})}
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            target = subprocess.PIPE if capture or self.verbose else log
            process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=target, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            output, timed_out = "", False
            try:
                if target is log:
                    process.wait(timeout=max(until - time.monotonic(), 0.1))
                else:
                    output = _pump(process, log, until, echo=self.verbose)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(process)
                log.write(f"\n[gpu_check] killed at the stage's time limit\n")
            return (None if timed_out else process.returncode), output

    def call_parallel(self, commands: list[tuple[list[str], dict, Path]]) -> list[int | None]:
        """Run (argv, extra environment, log file) commands side by side until the deadline; their exit
        statuses (None: killed at the deadline). Their logs are appended to the stage log at the end."""
        running = []
        for argv, extra_env, log_path in commands:
            handle = open(log_path, "w")
            handle.write(f"$ {' '.join(argv)}\n")
            handle.flush()
            running.append((subprocess.Popen(argv, cwd=REPO, env={**self.env, **extra_env}, stdout=handle,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True), handle, log_path))
        statuses = []
        for process, handle, _ in running:
            try:
                process.wait(timeout=max(self.deadline - time.monotonic(), 0.1))
                statuses.append(process.returncode)
            except subprocess.TimeoutExpired:
                _kill(process)
                statuses.append(None)
            handle.close()
        with open(self.log, "a") as log:
            for _, _, log_path in running:
                log.write(f"\n===== {log_path.name}\n{log_path.read_text(errors='replace')}")
            if None in statuses:
                log.write("\n[gpu_check] killed at the stage's time limit\n")
        return statuses


def _pump(process: subprocess.Popen, log, until: float, echo: bool) -> str:
    """Copy the child's output to the log (and the console) as it comes until it ends or `until` passes."""
    import selectors

    chunks = []
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(process.args, 0)
        if not selector.select(timeout=min(remaining, 1.0)):
            continue
        data = os.read(process.stdout.fileno(), 65536)  # never blocks after select, unlike readline
        if not data:
            break
        text = data.decode(errors="replace")
        chunks.append(text)
        log.write(text)
        log.flush()
        if echo:
            print(text, end="", flush=True)
    process.wait(timeout=max(until - time.monotonic(), 0.1))
    return "".join(chunks)


def _kill(process: subprocess.Popen) -> None:
    """End the child's whole process group: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _log_lines(ctx: Context, prefix: str) -> list[str]:
    return [line.strip() for line in ctx.log.read_text(errors="replace").splitlines() if line.startswith(prefix)]


def _skips(ctx: Context) -> str:
    skipped = _log_lines(ctx, SKIP_MARK)
    return f" ({len(skipped)} skipped: time limit)" if skipped else ""


def _csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------------ stages

def stage_env(ctx: Context) -> tuple[bool, str]:
    status, _ = ctx.call([ctx.python, str(BENCH / "gpu_check.py"), "env", str(ctx.out / ENV_JSON)]
                         + (["--dry-run"] if ctx.dry_run else []))
    if not (ctx.out / ENV_JSON).is_file():
        return False, "no env.json"
    env = json.loads((ctx.out / ENV_JSON).read_text())
    if env.get("gpu"):
        gpu = env["gpu"]
        head = (f"{gpu['name']}, {gpu['memory_gib']:.0f} GiB, {gpu['sm_count']} SMs, {gpu['capability']}, driver "
                f"{gpu['driver']}, CUDA {env['cuda']}, peak {gpu['peak_gbps'] or 'unknown'} GB/s")
    else:
        head = f"no GPU: {env['device']}"
    head += f"; torch {env['torch']}, triton {env['triton'] or '-'}, python {env['python']}"
    if not env.get("c_compiler"):
        head += "; no C compiler (Triton builds its launchers with one)"
    missing = [name for name, where in env["modules"].items() if where is None]
    if missing:
        head += f"; missing: {', '.join(missing)}"
    return status == 0, head


def stage_tests(ctx: Context) -> tuple[bool, str]:
    """The test groups side by side (Triton and inductor compile on the CPU: the cores work in parallel), each
    with its junit XML; merged into tests/junit.xml and counted in tests/summary.json."""
    folder = ctx.out / "tests"
    folder.mkdir(exist_ok=True)
    device = "cpu" if ctx.dry_run else "cuda"
    extra = {"PVD_TEST_DEVICE": device, "TRITON_INTERPRET": "1" if ctx.dry_run else "0"}
    groups = DRY_RUN_TEST_GROUPS if ctx.dry_run else tuple((name,) for name in TEST_FILES)
    commands, junits, logs = [], [], []
    for index, selection in enumerate(groups):
        stem = f"{index}-{Path(selection[0].split('::')[0]).stem}"
        junits.append(folder / f"junit-{stem}.xml")
        logs.append(ctx.out / "logs" / f"tests-{stem}.log")
        # -p no:benchmark: the bare machine has no pytest-benchmark, so no run may lean on it.
        commands.append(([ctx.python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:benchmark",
                          f"--junitxml={junits[-1]}", *selection], extra, logs[-1]))
    statuses = ctx.call_parallel(commands)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skip_reasons": [],
              "complete": True}
    for junit, log in zip(junits, logs):
        group = summarise_tests(junit, log)
        for key, value in group.items():
            counts[key] = counts[key] and value if key == "complete" else counts[key] + value
    merge_junit(junits, folder / "junit.xml")
    counts["device"] = device
    counts["groups"] = [list(group) for group in groups]
    counts["exit_statuses"] = statuses
    (folder / "summary.json").write_text(json.dumps(counts, indent=2) + "\n")
    head = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped on {device}" + ("" if counts["complete"] else " (a group was killed at the "
                                                            "time limit: its counts come from its log)"))
    if counts["failures"]:
        head += "; failed: " + ", ".join(counts["failures"][:8])
    if counts["skip_reasons"]:
        head += "; skipped: " + "; ".join(sorted(set(counts["skip_reasons"])))[:300]
    ok = all(status == 0 for status in statuses) and not counts["failures"] and counts["passed"] > 0
    return ok, head


def merge_junit(parts: list[Path], target: Path) -> None:
    """One <testsuites> file of the groups' junit XML files (those that exist)."""
    root = ElementTree.Element("testsuites")
    for part in parts:
        if part.is_file():
            tree = ElementTree.parse(part).getroot()
            root.extend(tree.iter("testsuite") if tree.tag == "testsuites" else [tree])
    ElementTree.ElementTree(root).write(target, encoding="utf-8", xml_declaration=True)


def summarise_tests(junit: Path, log: Path) -> dict:
    """Counts of the junit XML, or of pytest's -v lines in the log when it was killed before writing one."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skip_reasons": [],
              "complete": junit.is_file()}
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                counts["failures"].append(name)
            elif case.find("error") is not None:
                counts["errors"] += 1
                counts["failures"].append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
                counts["skip_reasons"].append(case.find("skipped").get("message", ""))
            else:
                counts["passed"] += 1
        return counts
    outcome = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")
    for line in log.read_text(errors="replace").splitlines():
        match = outcome.match(line)
        if match:
            key = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "errors",
                   "SKIPPED": "skipped", "XFAIL": "skipped"}[match.group(2)]
            counts[key] += 1
            if key in ("failed", "errors"):
                counts["failures"].append(match.group(1))
    return counts


def stage_kernels(ctx: Context) -> tuple[bool, str]:
    """Every op at full size (each correlation design of pvd.kernels.correlation, rows pvd[design], when it
    offers several)."""
    argv = [ctx.python, str(BENCH / "kernels.py"), "--csv", str(ctx.out / "kernels.csv")]
    argv += ["--dry-run"] if ctx.dry_run else ["--full"]
    status, _ = ctx.call(argv + ["--time-limit", ctx.bench_limit()], {"TRITON_INTERPRET": "1" if ctx.dry_run else "0"})
    rows = _csv_rows(ctx.out / "kernels.csv")
    providers = sorted({row["provider"] for row in rows if row["provider"].startswith("pvd")})
    lines = [line[len("summary: "):] for line in _log_lines(ctx, "summary: ")]
    return status == 0 and bool(rows), (f"{len(rows)} rows, pvd providers {', '.join(providers) or 'none'}; "
                                        + " | ".join(lines) + _skips(ctx))


def stage_e2e(ctx: Context) -> tuple[bool, str]:
    """PVDNet with the demo weights and PVDNet-large with random ones, on the demo clip at 1280x720."""
    argv = [ctx.python, str(BENCH / "e2e.py"), "--csv", str(ctx.out / "e2e.csv"), "--clip", "demo",
            "--models", "pvdnet,pvdnet_large", "--precisions", "fp32,bf16", "--compile", "off,on"]
    argv += ["--dry-run"] if ctx.dry_run else ["--frames", str(E2E_FRAMES), "--warmup", str(E2E_WARMUP)]
    if DEMO_WEIGHTS.is_file():
        argv += ["--weights", f"pvdnet={DEMO_WEIGHTS}"]
    else:
        with open(ctx.log, "a") as log:
            log.write(f"[gpu_check] {DEMO_WEIGHTS} is missing: PVDNet runs with random weights\n")
    status, _ = ctx.call(argv + ["--time-limit", ctx.bench_limit()])
    rows = _csv_rows(ctx.out / "e2e.csv")
    parts = []
    for pipeline in ("PVDNet", "PVDNet-large"):
        mine = [row for row in rows if row.get("pipeline") == pipeline]
        if not mine:
            parts.append(f"{pipeline}: no rows")
            continue
        speeds = ", ".join(f"{row['precision']} {row['provider']} {row['frames_per_s']}" for row in mine)
        psnr = [f"{row['precision']} {row['provider']} {row['psnr_vs_fp32_db']} dB" for row in mine
                if row.get("psnr_vs_fp32_db")]
        peak = max((_number(row.get("peak_mem_mib")) or 0 for row in mine), default=0)
        parts.append(f"{pipeline} ({mine[0].get('weights', '?')} weights) frames/s {speeds}"
                     + (f"; PSNR vs fp32 {', '.join(psnr)}" if psnr else "") + (f"; peak {peak:.0f} MiB" if peak else ""))
    return status == 0, " | ".join(parts) + _skips(ctx)


def paper_training_settings() -> list[str]:
    """bench/train.py arguments of the paper's stage-2 setting, read from train/configs/gopro.toml (batch, crop,
    clip length); stage 1 (bimnet.toml) uses the same batch and crop. [] (bench/train.py's GPU defaults, the same
    values) on Python < 3.11."""
    try:
        import tomllib
    except ImportError:
        return []
    data = tomllib.loads(TRAIN_CONFIG.read_text())["data"]
    return ["--batch", str(data["batch_size"]), "--size", str(data["crop"]), "--clip-frames", str(data["clip_frames"])]


def stage_train(ctx: Context) -> tuple[bool, str]:
    argv = [ctx.python, str(BENCH / "train.py"), "--csv", str(ctx.out / "train.csv"),
            "--stages", "pvdnet,bimnet" if ctx.dry_run else TRAIN_STAGES, "--precisions", "fp32,bf16"]
    argv += ["--dry-run"] if ctx.dry_run else paper_training_settings()
    status, _ = ctx.call(argv + ["--time-limit", ctx.bench_limit()])
    rows = _csv_rows(ctx.out / "train.csv")
    parts = [f"stage {'1' if row['stage'] == 'bimnet' else '2'} {row['model']} {row['precision']} "
             f"{row['steps_per_s']} steps/s" + (f" (peak {row['peak_mem_gib']} GiB)" if row.get("peak_mem_gib") else "")
             for row in rows]
    head = (f"batch {rows[0]['batch']}, {rows[0]['height']}x{rows[0]['width']}: " if rows else "") + ", ".join(parts)
    return status == 0 and bool(rows), (head or "no rows") + _skips(ctx)


def stage_report(ctx: Context) -> tuple[bool, str]:
    status, _ = ctx.call([ctx.python, str(BENCH / "report.py"), "--results", str(ctx.out), "--out", str(ctx.out)])
    report = ctx.out / "REPORT.md"
    if not report.is_file():
        return False, "no REPORT.md"
    plots = sorted(ctx.out.glob("*.png"))
    skipped = "Plots skipped" in report.read_text()
    note = f"{len(plots)} plot(s)" if plots else ("no plots: matplotlib is not installed" if skipped else "no plots")
    return status == 0, f"REPORT.md, {note}"


STAGES: dict[str, Callable[[Context], tuple[bool, str]]] = {
    "env": stage_env, "tests": stage_tests, "kernels": stage_kernels, "e2e": stage_e2e, "train": stage_train,
    "report": stage_report,
}


# ---------------------------------------------------------------------------------------------------- the run

def prepare_dependencies(python: str, deps: Path, force: bool, log: Path) -> list[str]:
    """Install the carried pure-Python wheels (scripts/wheels) the machine lacks into `deps`, offline, with pip
    (unpacking the wheel when pip is unavailable). Returns the distributions installed."""
    installed = []
    with open(log, "a") as handle:
        for wheel in sorted(WHEELS_DIR.glob("*.whl")):
            name = wheel.name.split("-")[0]
            module = _top_level(wheel) or name
            present = subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0
            if present and not force:
                handle.write(f"[gpu_check] {module} is installed; {wheel.name} not needed\n")
                continue
            done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                   "--no-index", "--no-deps", "--find-links", str(WHEELS_DIR), "--target", str(deps),
                                   name], capture_output=True, text=True)
            handle.write(f"[gpu_check] pip install --no-index {name} -> {deps}: exit {done.returncode}\n"
                         f"{done.stdout}{done.stderr}")
            if done.returncode != 0:  # no pip: a pure-Python wheel is a zip of the installed tree
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(deps)
                handle.write(f"[gpu_check] unpacked {wheel.name} into {deps}\n")
            installed.append(name)
    return installed


def _top_level(wheel: Path) -> str | None:
    """The importable name of a wheel's package (its top_level.txt, else the first package folder)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top = next((n for n in names if n.endswith(".dist-info/top_level.txt")), None)
        if top:
            first = archive.read(top).decode().split()
            if first:
                return first[0]
        packages = [n.split("/")[0] for n in names if n.endswith("/__init__.py") and n.count("/") == 1]
        return packages[0] if packages else None


def child_environment(deps: Path, dry_run: bool) -> dict:
    env = dict(os.environ)
    paths = [str(REPO), str(deps)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TRITON_INTERPRET", None)
    if "TRITON_CACHE_DIR" not in env and not os.access(Path.home(), os.W_OK):
        env["TRITON_CACHE_DIR"] = str(deps / "triton-cache")  # Triton's default cache lives in the home folder
    env.pop("PVD_TEST_DEVICE", None)
    if dry_run:
        (deps / "sitecustomize.py").write_text(_HIDE_MODULES)
        env["PVD_GPU_CHECK_HIDE"] = ",".join(BARE_MACHINE_MISSING)
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is a CPU run even on a GPU machine
    return env


def stage_limit(name: str, left: float, remaining: list[str]) -> float:
    """The stage's share of the `left` seconds, among the stages still to run."""
    return max(left, 0.0) * STAGE_SHARES[name] / sum(STAGE_SHARES[n] for n in remaining)


def write_summary(out: Path, results: list[StageResult], meta: dict) -> None:
    data = {**meta, "stages": [asdict(r) for r in results]}
    _write_atomic(out / SUMMARY_JSON, json.dumps(data, indent=2) + "\n")
    lines = [f"# pvd GPU check{' (DRY RUN on CPU: no GPU figure)' if meta['dry_run'] else ''}", "",
             f"{meta['device']}; budget {meta['budget_s']:.0f} s; started {meta['started']}", "",
             "| stage | result | seconds (limit) | CPU s | headline |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} ({r.limit_s:.0f}) | {r.cpu_s:.1f} | "
                     f"{(r.headline + ('; ' + '; '.join(r.problems) if r.problems else '')).replace('|', '/')} |")
    _write_atomic(out / SUMMARY_MD, "\n".join(lines) + "\n")


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_atomic(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(name, 0o644)
    os.replace(name, path)


def run_check(out: Path, budget: float, dry_run: bool, stages: list[str], python: str, verbose: bool = False) -> int:
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
        for index, result in enumerate(results):
            limit = stage_limit(result.name, end - time.monotonic(), stages[index:])
            result.limit_s = limit
            ctx.log = out / "logs" / f"{result.name}.log"
            ctx.log.write_text("")
            ctx.deadline = time.monotonic() + limit
            print(f"gpu_check: {result.name} ... (limit {limit:.0f} s)", flush=True)
            began, children = time.monotonic(), _children_cpu_s()
            try:
                ok, result.headline = STAGES[result.name](ctx)
            except Exception as error:  # noqa: BLE001 - a broken stage must not stop the others
                ok, result.headline = False, f"gpu_check error: {type(error).__name__}: {error}"
            result.seconds = time.monotonic() - began
            result.cpu_s = _children_cpu_s() - children
            if "killed at the stage's time limit" in ctx.log.read_text(errors="replace"):
                ok = False
                result.problems.append(f"killed at its time limit ({limit:.0f} s)")
            result.status = "pass" if ok else "fail"
            if result.name == "env" and (out / ENV_JSON).is_file():
                meta["device"] = json.loads((out / ENV_JSON).read_text())["device"]
            write_summary(out, results, meta)
            print(f"gpu_check: {result.name:8s} {result.status.upper():4s} {result.seconds:6.1f} s  {result.headline}"
                  + ("; " + "; ".join(result.problems) if result.problems else ""), flush=True)
            if not ok:
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


# ------------------------------------------------------------------------------------------- env and merge

def write_env(path: Path, dry_run: bool) -> int:
    """Stage 1: the machine and its libraries -> JSON at `path`. Exit status 1 when no GPU (and not a dry run)."""
    import importlib.util

    sys.path.insert(0, str(BENCH))
    import torch
    from _env import describe_environment, peak_bandwidth_gbps

    env = describe_environment()
    env["modules"] = {}
    for name in OPTIONAL_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        env["modules"][name] = (spec.origin or "namespace") if spec else None
    env["cpu_count"] = os.cpu_count()
    env["c_compiler"] = next((shutil.which(name) for name in ("cc", "gcc", "clang") if shutil.which(name)), None)
    env["gpu"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                      "sm_count": props.multi_processor_count, "capability": f"sm_{props.major}{props.minor}",
                      "count": torch.cuda.device_count(), "driver": _nvidia_smi("driver_version"),
                      "peak_gbps": peak_bandwidth_gbps(props.name)}
    _write_atomic(path, json.dumps(env, indent=2, default=str) + "\n")
    print(json.dumps(env, indent=2, default=str))
    if env["gpu"] is None and not dry_run:
        print("no CUDA device: this is not a GPU machine (use --dry-run for the CPU check of the machinery)")
        return 1
    return 0


def _nvidia_smi(field_name: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


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
        new = [row for row in _csv_rows(out / name) if not row.get("device", "cpu").lower().startswith("cpu")]
        old = _csv_rows(into / name)
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
    run.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all stages (default %(default)s)")
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
