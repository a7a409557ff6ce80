"""The six stages of the GPU check (bench/gpu_check.py). Each takes the run's Context, runs its subprocesses
until the stage's deadline, and returns (passed, headline): the headline numbers, read back from the files the
stage wrote. Standard library only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

from _budget import SKIP_PREFIX
from _check_runner import REPO, Context, write_atomic

BENCH = REPO / "bench"
DEMO_WEIGHTS = REPO / "weights" / "pvd_demo.safetensors"
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
OPTIONAL_MODULES = ("tqdm", "matplotlib", "skimage", "av", "cv2", "einops", "safetensors", "numpy", "pytest")
ENV_JSON = "env.json"


def _log_lines(ctx: Context, prefix: str) -> list[str]:
    return [line.strip() for line in ctx.log.read_text(errors="replace").splitlines() if line.startswith(prefix)]


def _skips(ctx: Context) -> str:
    skipped = _log_lines(ctx, SKIP_PREFIX)
    return f" ({len(skipped)} skipped: time limit)" if skipped else ""


def csv_rows(path: Path) -> list[dict]:
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
    rows = csv_rows(ctx.out / "kernels.csv")
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
    rows = csv_rows(ctx.out / "e2e.csv")
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
                     + (f"; PSNR vs fp32 {', '.join(psnr)}" if psnr else "")
                     + (f"; peak {peak:.0f} MiB" if peak else ""))
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
    rows = csv_rows(ctx.out / "train.csv")
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
    write_atomic(path, json.dumps(env, indent=2, default=str) + "\n")
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
