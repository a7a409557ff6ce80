"""scripts/gpu_check.sh: the CPU dry run end to end, and the driver's stage, time-limit and merge machinery."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STAGES = ["env", "tests", "kernels", "e2e", "train", "report"]
DRY_RUN_TIMEOUT_S = 900  # a loaded 2-core machine; alone it takes well under a minute


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _tree_results() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((REPO / "bench" / "results").iterdir())
            if p.is_file()}


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    before = _tree_results()
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    started = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=DRY_RUN_TIMEOUT_S)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert _tree_results() == before  # the tree's results are never touched

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert [s["status"] for s in summary["stages"]] == ["pass"] * len(STAGES), summary
    for stage in STAGES:  # one summary line per stage, with its result
        assert f"gpu_check: {stage:8s} PASS" in done.stdout
    assert "all 6 stage(s) passed" in done.stdout
    assert "DRY RUN" in (out / "SUMMARY.md").read_text()

    machine = json.loads((out / "env.json").read_text())
    assert machine["gpu"] is None and machine["device"].startswith("CPU")
    # tqdm came from the carried wheel, offline; the modules a bare GPU machine lacks were hidden.
    assert "pvd-gpu-check-deps-" in machine["modules"]["tqdm"]
    assert all(machine["modules"][name] is None for name in ("av", "skimage", "matplotlib"))

    tests = json.loads((out / "tests" / "summary.json").read_text())
    assert (out / "tests" / "junit.xml").is_file()
    assert tests["device"] == "cpu" and tests["complete"]
    assert tests["failed"] == tests["errors"] == 0 and tests["passed"] >= 3
    assert tests["skipped"] == 1 and "needs CUDA" in tests["skip_reasons"][0]  # counted as skipped, not passed

    kernels = _rows(out / "kernels.csv")
    # (pvd correlation rows may carry a kernel design: pvd[tiled], pvd[legacy])
    assert {(r["op"], r["provider"].split("[")[0]) for r in kernels} >= {
        ("correlation", "pvd"), ("correlation", "reference"), ("warp", "pvd"), ("warp", "grid_sample"),
        ("pixel_volume", "pvd"), ("pixel_volume", "original_loop")}
    assert {r["mode"] for r in kernels} == {"fwd", "fwd+bwd"}
    assert all(r["device"].startswith("CPU") and r["path"] == "triton-interpreter" for r in kernels)

    e2e = _rows(out / "e2e.csv")
    assert {r["pipeline"] for r in e2e} == {"PVDNet", "PVDNet-large"}
    assert {r["weights"] for r in e2e} == {"pvd_demo.safetensors", "random"}
    assert all(r["clip"] == "demo" and float(r["psnr_vs_sharp_db"]) > 10 for r in e2e)
    train = _rows(out / "train.csv")
    assert {r["stage"] for r in train} == {"pvdnet", "bimnet"}
    assert all(r["device"].startswith("CPU") for r in e2e + train)

    report = (out / "REPORT.md").read_text()
    assert "## Kernels" in report and "## End-to-end deblurring" in report and "## Training" in report
    assert "Plots skipped: matplotlib is not installed" in report
    print(f"dry run: {seconds:.1f} s; " + ", ".join(f"{s['name']} {s['seconds']:.1f} s" for s in summary["stages"]))


def test_failed_and_overrunning_stages_do_not_stop_later_ones(gpu_check, tmp_path, monkeypatch, capsys):
    calls = []

    def broken(ctx):
        calls.append("env")
        raise RuntimeError("no torch here")

    def overrunning(ctx):
        calls.append("tests")
        status, _ = ctx.call([sys.executable, "-c", "import time; time.sleep(60)"])
        return status == 0, "slept"

    def failing(ctx):
        calls.append("kernels")
        status, _ = ctx.call([sys.executable, "-c", "import sys; print('bad'); sys.exit(3)"])
        return status == 0, f"exit {status}"

    def passing(ctx):
        calls.append(ctx.log.stem)
        status, output = ctx.call([sys.executable, "-c", "print('fine')"], capture=True)
        return status == 0 and output.strip() == "fine", "fine"

    monkeypatch.setattr(gpu_check, "STAGES", {"env": broken, "tests": overrunning, "kernels": failing,
                                              "e2e": passing, "train": passing, "report": passing})
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 1.0)  # seconds-long stages: a fast test
    started = time.monotonic()
    status = gpu_check.run_check(tmp_path / "out", budget=8.0, dry_run=False, stages=STAGES, python=sys.executable)
    assert time.monotonic() - started < 30  # the sleeper was killed at its stage's limit
    assert status == 1 and calls == STAGES
    printed = capsys.readouterr().out
    assert "FAILED stage(s): env, tests, kernels" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    by_name = {s["name"]: s for s in summary["stages"]}
    assert [by_name[name]["status"] for name in STAGES] == ["fail"] * 3 + ["pass"] * 3
    assert "RuntimeError: no torch here" in by_name["env"]["headline"]
    assert any("killed at its time limit" in p for p in by_name["tests"]["problems"])
    assert by_name["kernels"]["headline"] == "exit 3"
    assert "bad" in (tmp_path / "out" / "logs" / "kernels.log").read_text()


def test_a_real_run_without_gpu_stops_after_env(gpu_check, tmp_path, monkeypatch):
    ran = []

    def cpu_machine(ctx):
        (ctx.out / "env.json").write_text(json.dumps({"device": "CPU test", "gpu": None}))
        return False, "no GPU"

    def other(ctx):
        ran.append(ctx.log.stem)
        return True, "ran"

    monkeypatch.setattr(gpu_check, "STAGES", {"env": cpu_machine, **{name: other for name in STAGES[1:]}})
    assert gpu_check.run_check(tmp_path, budget=60.0, dry_run=False, stages=STAGES, python=sys.executable) == 1
    assert ran == []
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert all(s["status"] == "fail" and s["headline"].startswith("not run: no GPU") for s in stages[1:])


def test_stage_limits_share_the_budget_left(gpu_check):
    names = list(gpu_check.STAGE_SHARES)
    limits = [gpu_check.stage_limit(name, 1000.0, names) for name in names]
    assert sum(limits) == pytest.approx(1000.0)
    assert gpu_check.stage_limit("report", 50.0, ["report"]) == pytest.approx(50.0)  # the last stage gets all left
    assert gpu_check.stage_limit("env", 100.0, names) == gpu_check.MIN_STAGE_S  # 4 s would not even import torch
    assert gpu_check.stage_limit("env", 5.0, names) == pytest.approx(5.0)  # never more than is left


@pytest.mark.parametrize("pip_works", [True, False])
def test_carried_wheels_install_offline(gpu_check, tmp_path, pip_works):
    """tqdm from scripts/wheels into a fresh folder, with pip --no-index or, where pip fails, by unpacking."""
    python = sys.executable
    if not pip_works:  # a Python whose pip is broken: the wheel is unpacked instead
        python = tmp_path / "python"
        python.write_text(f'#!/bin/sh\n[ "$1" = "-m" ] && [ "$2" = "pip" ] && exit 1\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
    deps = tmp_path / "deps"
    deps.mkdir()
    installed = gpu_check.prepare_dependencies(str(python), deps, force=True, log=tmp_path / "setup.log")
    assert installed == ["tqdm"]
    found = subprocess.run([sys.executable, "-c", "import tqdm; print(tqdm.__file__)"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(deps)}, check=True).stdout
    assert Path(found.strip()).is_relative_to(deps)
    assert ("unpacked" in (tmp_path / "setup.log").read_text()) != pip_works


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_merge_appends_gpu_rows_once_and_refuses_cpu_rows(gpu_check, tmp_path):
    out, into = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    into.mkdir()
    (out / "summary.json").write_text(json.dumps({"dry_run": False, "stages": []}))
    (out / "SUMMARY.md").write_text("# pvd GPU check\n")
    (out / "env.json").write_text(json.dumps({"device": "NVIDIA H200"}))
    _write_csv(out / "kernels.csv", ["op", "provider", "mode", "size", "median_ms", "gbps", "device", "pct_peak"],
               [["warp", "pvd", "fwd", "L2", 0.05, 3000, "NVIDIA H200", 62.5],
                ["warp", "reference", "fwd", "L2", 0.5, 300, "NVIDIA H200", 6.25],
                ["warp", "pvd", "fwd", "L2", 900, 0.1, "CPU AMD EPYC (2 threads)", ""]])
    _write_csv(into / "kernels.csv", ["op", "provider", "mode", "size", "median_ms", "gbps", "device"],
               [["warp", "reference", "fwd", "L2 quick", 80, 0.03, "CPU AMD EPYC (1 of 2 threads)"]])

    assert gpu_check.merge(out, into) == 0
    assert gpu_check.merge(out, into) == 0  # a second merge adds nothing
    rows = _rows(into / "kernels.csv")
    assert [(r["provider"], r["device"], r["pct_peak"]) for r in rows] == [
        ("reference", "CPU AMD EPYC (1 of 2 threads)", ""), ("pvd", "NVIDIA H200", "62.5"),
        ("reference", "NVIDIA H200", "6.25")]
    assert rows[0]["median_ms"] == "80"  # the old row is kept whole under the grown header
    assert (into / "GPU_CHECK_NVIDIA_H200.md").is_file() and (into / "gpu_env_NVIDIA_H200.json").is_file()
    assert "10.00x" in (into / "REPORT.md").read_text()  # pvd vs reference on the H200

    (out / "summary.json").write_text(json.dumps({"dry_run": True, "stages": []}))
    assert gpu_check.merge(out, into) == 1  # a dry run's CPU rows never enter the tree


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_test_device_refuses_to_run_without_cuda():
    env = {**os.environ, "PVD_TEST_DEVICE": "cuda"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_compile_model.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert "PVD_TEST_DEVICE=cuda but torch.cuda.is_available() is False" in done.stdout + done.stderr
