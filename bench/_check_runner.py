"""The plumbing of the GPU check (bench/gpu_check.py): subprocesses under a deadline, the carried wheels, and
the environment the stages run in. Standard library only.

    ctx = Context(out, python, dry_run, child_environment(deps, dry_run))
    ctx.deadline = time.monotonic() + limit
    status, output = ctx.call(argv, {"TRITON_INTERPRET": "0"}, capture=True)   # None: killed at the deadline
    statuses = ctx.call_parallel([(argv, env, log_path), ...])
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS_DIR = REPO / "scripts" / "wheels"
# A benchmark's --time-limit leaves this much of its stage limit for starting Python and importing torch.
START_UP_S = 12.0
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
KILLED_MARK = "[gpu_check] killed at the stage's time limit"
# Python packages the project uses that the GPU machine lacks and that are not carried as wheels: the features
# needing them must turn off with a message. The dry run hides them.
BARE_MACHINE_MISSING = ("av", "skimage", "matplotlib")

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
                log.write(f"\n{KILLED_MARK}\n")
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
                log.write(f"\n{KILLED_MARK}\n")
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
    """The stages' environment: the repository and `deps` first on PYTHONPATH, no inherited TRITON_INTERPRET or
    PVD_TEST_DEVICE (each stage sets its own); for the dry run, no GPU and the bare machine's modules hidden."""
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


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_atomic(path: Path, text: str) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(name, 0o644)
    os.replace(name, path)
