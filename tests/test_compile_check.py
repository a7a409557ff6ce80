"""The ahead-of-time compile check: every kernel spec compiles for sm_80 and sm_90a with zero spills.

Runs `python -m pvd.kernels.compile_check --json` in a subprocess (no GPU needed). This process has
TRITON_INTERPRET=1 (conftest), so the run also exercises the check's re-run with TRITON_INTERPRET=0.
"""

import collections
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_MODULES = ("warp", "correlation", "pixel_volume")
ARCHES = (80, 90)
REAL_TARGETS = {80: "sm_80", 90: "sm_90a"}
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1800


def _spec_key(module: str, name: str, dtype: str, num_warps: int, num_stages: int, constexprs: dict, arch: int):
    return (module, name, dtype, num_warps, num_stages, tuple(sorted(constexprs.items())), arch)


@pytest.fixture(scope="module")
def check_run():
    done = subprocess.run([sys.executable, "-m", "pvd.kernels.compile_check", "--json", "--arch", *map(str, ARCHES)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"compile check printed no JSON (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done, document


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_kernel_module_exists(name):
    assert importlib.util.find_spec(f"pvd.kernels.{name}") is not None, f"pvd.kernels.{name} does not exist"


def test_compiled_set_equals_all_specs(check_run):
    _, document = check_run
    expected = collections.Counter()
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"pvd.kernels.{module_name}")
        specs = module.compile_specs()
        assert specs, f"pvd.kernels.{module_name}.compile_specs() is empty"
        for spec in specs:
            for arch in ARCHES:
                expected[_spec_key(module_name, spec.name, str(spec.dtype).removeprefix("torch."), spec.num_warps,
                                   spec.num_stages, {k: str(v) for k, v in spec.constexprs.items()}, arch)] += 1
    compiled = collections.Counter(
        _spec_key(r["module"], r["kernel"], r["dtype"], r["num_warps"], r["num_stages"], r["constexprs"], r["arch"])
        for r in document["results"])
    assert compiled == expected
    assert document["missing_modules"] == []


def test_every_kernel_compiles_without_spills(check_run):
    done, document = check_run
    assert document["results"], "the check compiled nothing"
    problems = []
    for r in document["results"]:
        where = f"{r['module']}.{r['kernel']} [{r['dtype']}, arch {r['arch']}, {r['constexprs']}]"
        if r["error"] is not None:
            problems.append(f"{where}: {r['error']}")
            continue
        if r["spill_stores"] != 0 or r["spill_loads"] != 0:
            problems.append(f"{where}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads")
        if r["ptx_target"] != REAL_TARGETS[r["arch"]] or r["cubin_arch"] != REAL_TARGETS[r["arch"]]:
            problems.append(f"{where}: PTX target {r['ptx_target']}, cubin {r['cubin_arch']}")
        if not (isinstance(r["registers"], int) and 0 < r["registers"] <= 255):
            problems.append(f"{where}: implausible register count {r['registers']}")
    assert not problems, "\n".join(problems)
    assert document["ok"] is True
    assert done.returncode == 0, done.stderr[-3000:]
