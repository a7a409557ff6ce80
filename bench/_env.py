"""Shared plumbing of the benchmarks: what ran where (device, versions, execution path) and CSV rows.

    env = describe_environment()          # dict: device, torch, triton, path, peak_gbps, date, ...
    print_banner(env)                     # says loudly whether numbers are GPU, interpreter or CPU numbers
    append_rows(csv_path, rows)           # rows: list of dicts; header written when the file is new
    row = {**measurement, **env_columns(env)}

`path` is one of PATH_TRITON_GPU, PATH_INTERPRETER, PATH_CPU_REFERENCE. On CPU the `device` column starts with
"CPU" so that no CPU number is ever read as a GPU number (bench/report.py keys on it).
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

import torch

CSV_FILE_MODE = 0o644
PATH_TRITON_GPU = "triton-gpu"
PATH_INTERPRETER = "triton-interpreter"
PATH_CPU_REFERENCE = "cpu-reference"
PATH_DESCRIPTIONS = {
    PATH_TRITON_GPU: "Triton kernels on the GPU",
    PATH_INTERPRETER: "Triton interpreter on CPU tensors (TRITON_INTERPRET=1): functional only, timings meaningless",
    PATH_CPU_REFERENCE: "PyTorch reference/baseline code on the CPU: NOT GPU numbers",
}

# Peak DRAM bandwidth in GB/s (vendor data sheets), matched against torch.cuda.get_device_name in order.
PEAK_BANDWIDTH_GBPS = (
    (r"GH200", 4000.0),  # 96 GB HBM3 version (the 144 GB HBM3e one has 4900)
    (r"H200", 4800.0),
    (r"H100.*PCIe", 2000.0),
    (r"H100.*NVL", 3900.0),
    (r"H100", 3350.0),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (r"H800.*PCIe", 2000.0),
    (r"H800", 3350.0),
    (r"B200", 8000.0),
    (r"A100.*80GB.*PCIe", 1935.0),
    (r"A100.*80GB", 2039.0),
    (r"A100", 1555.0),  # 40 GB, SXM4 and PCIe
    (r"A800.*80GB", 2039.0),
    (r"L40S", 864.0),
    (r"L40\b", 864.0),
    (r"\bL4\b", 300.0),
    (r"A10G", 600.0),
    (r"\bA10\b", 600.0),
    (r"A6000", 768.0),
    (r"V100", 900.0),
    (r"\bT4\b", 320.0),
    (r"RTX 4090", 1008.0),
    (r"RTX 3090", 936.0),
    (r"RTX 2080 Ti", 616.0),
)


def peak_bandwidth_gbps(device_name: str) -> float | None:
    """Data-sheet DRAM bandwidth of a GPU from its name, None when unknown."""
    for pattern, gbps in PEAK_BANDWIDTH_GBPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return gbps
    return None


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def cpu_precisions(requested: list[str]) -> list[str]:
    """The requested precisions worth timing on this CPU: fp32, and bf16 where the CPU has native bf16 (what
    PVDNet's precision 'auto' picks there, `pvd.runtime.resolve_precision`); fp16 needs CUDA."""
    from pvd.runtime import cpu_has_native_bf16

    return [p for p in requested if p == "fp32" or (p == "bf16" and cpu_has_native_bf16())]


def describe_environment(path: str | None = None) -> dict:
    """Device, versions and execution path of this process.

    path: override the detected execution path (e.g. PATH_CPU_REFERENCE for a benchmark that runs only
    reference code even under TRITON_INTERPRET=1). Detected: GPU present -> PATH_TRITON_GPU, else
    TRITON_INTERPRET=1 -> PATH_INTERPRETER, else PATH_CPU_REFERENCE.
    """
    on_gpu = torch.cuda.is_available()
    if path is None:
        path = PATH_TRITON_GPU if on_gpu else (PATH_INTERPRETER if _interpreting() else PATH_CPU_REFERENCE)
    if path not in PATH_DESCRIPTIONS:
        raise ValueError(f"unknown execution path {path!r}; expected one of {sorted(PATH_DESCRIPTIONS)}")
    if on_gpu:
        device = torch.cuda.get_device_name()
        capability = "sm_{}{}".format(*torch.cuda.get_device_capability())
        peak = peak_bandwidth_gbps(device)
    else:
        device = f"CPU {_cpu_name()} ({torch.get_num_threads()} of {os.cpu_count()} threads)"
        capability = ""
        peak = None
    return {
        "device": device,
        "device_type": "cuda" if on_gpu else "cpu",
        "capability": capability,
        "peak_gbps": peak,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
        "interpreting": _interpreting(),
        "path": path,
        "git": _git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def env_columns(env: dict) -> dict:
    """The columns every results row carries: device, torch, triton, date, path."""
    return {key: env[key] for key in ("device", "torch", "triton", "date", "path")}


def print_banner(env: dict) -> None:
    """Print device, versions and execution path, with a warning line when the numbers are not GPU numbers."""
    peak = f", peak DRAM bandwidth {env['peak_gbps']:.0f} GB/s" if env.get("peak_gbps") else ""
    cuda = f", CUDA {env['cuda']}" if env.get("cuda") else ""
    print("=" * 100)
    print(f"device : {env['device']}{' ' + env['capability'] if env.get('capability') else ''}{peak}")
    print(f"libs   : torch {env['torch']}, triton {env['triton'] or '-'}{cuda}, python {env['python']}"
          f"{', git ' + env['git'] if env.get('git') else ''}")
    print(f"path   : {env['path']} - {PATH_DESCRIPTIONS[env['path']]}")
    if env["path"] != PATH_TRITON_GPU:
        print("NOTE   : no GPU measurement in this run; CPU timings are labelled CPU and are not GPU numbers")
    print(f"date   : {env['date']}")
    print("=" * 100)


def text_table(rows: list[tuple[str, ...]]) -> str:
    """Rows of strings (the first is the header) as left-aligned columns with a dashed line under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def append_rows(csv_path, rows: list[dict]) -> None:
    """Append `rows` to the CSV at `csv_path` (created with a header when new), atomically (temp file + rename).

    An existing file keeps its column order; columns that only the new rows have are added at the end of the
    header (earlier rows get empty cells there), so results of newer benchmark versions merge into old files.
    """
    if not rows:
        return
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    existing = ""
    if csv_path.is_file():
        with open(csv_path, newline="") as handle:  # as written: the csv module's \r\n line ends stay
            existing = handle.read()
    old_rows: list[dict] = []
    if existing.strip():
        reader = csv.DictReader(existing.splitlines())
        fieldnames = list(reader.fieldnames or [])
        old_rows = list(reader)
    else:
        existing = ""
        fieldnames = []
    added = [key for key in dict.fromkeys(key for row in rows for key in row) if key not in fieldnames]
    fieldnames += added
    fd, tmp_name = tempfile.mkstemp(prefix=f".{csv_path.name}.", dir=csv_path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            if existing and not added:  # the old lines stay byte for byte
                handle.write(existing if existing.endswith("\n") else existing + "\r\n")
            writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="")
            if not existing or added:
                writer.writeheader()
                writer.writerows(old_rows)
            writer.writerows(rows)
        os.chmod(tmp_name, CSV_FILE_MODE)
        os.replace(tmp_name, csv_path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
