"""bench/report.py on small synthetic CSVs: tables, speed-ups, CPU separation, plots, tolerance to gaps."""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPORT_SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", REPORT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


KERNEL_COLUMNS = ["op", "provider", "mode", "size", "median_ms", "gbps", "device", "torch", "triton", "date", "path"]
H100 = "NVIDIA H100 80GB HBM3"


def write_csv(path: Path, columns: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def kernel_rows():
    return [
        # op, provider, mode, size, median_ms, gbps, device, torch, triton, date, path
        ["warp", "torch", "fwd", "1x3x64x64", 2.0, 10, H100, "2.11", "3.6", "2025-01-01", "reference"],
        ["warp", "triton", "fwd", "1x3x64x64", 0.5, 40, H100, "2.11", "3.6", "2025-01-01", "triton"],
        ["warp", "torch", "fwd", "1x3x720x1280", 8.0, 12, H100, "2.11", "3.6", "2025-01-01", "reference"],
        ["warp", "triton", "fwd", "1x3x720x1280", 1.0, 96, H100, "2.11", "3.6", "2025-01-01", "triton"],
        # CPU rows: a CPU "baseline" that is 1000x slower must not produce a speed-up anywhere.
        ["warp", "torch", "fwd", "1x3x64x64", 500.0, 0.1, "cpu", "2.11", "3.6", "2025-01-02", "reference"],
        ["warp", "triton", "fwd", "1x3x64x64", 900.0, 0.05, "cpu", "2.11", "3.6", "2025-01-02", "interpreter"],
        ["correlation", "torch", "bwd", "1x64x48x64", 3.0, "", H100, "2.11", "3.6", "2025-01-01", "reference"],
        ["correlation", "triton", "bwd", "1x64x48x64", 1.5, "", H100, "2.11", "3.6", "2025-01-01", "triton"],
    ]


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """Cells of the table rows that follow `### section` up to the next heading."""
    body = markdown.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in body.splitlines() if line.startswith("|") and not line.startswith("|---")]


def test_kernel_report_speedups_and_cpu_rows(report, tmp_path):
    write_csv(tmp_path / "kernels.csv", KERNEL_COLUMNS, kernel_rows())
    path = report.build_report(tmp_path, plots=False)
    assert path == tmp_path / "REPORT.md"
    markdown = path.read_text()
    assert "## Kernels" in markdown and "### warp" in markdown and "### correlation" in markdown
    rows = table_rows(markdown, "warp")
    header = rows[0]
    speedup, device = header.index("speed-up"), header.index("device")
    gpu = {(r[0], r[1]): r for r in rows[1:] if "CPU" not in r[device] and r[0] != "provider"}
    assert gpu[("triton", "1x3x64x64")][speedup] == "4.00x"
    assert gpu[("triton", "1x3x720x1280")][speedup] == "8.00x"
    assert gpu[("torch", "1x3x64x64")][speedup] == "1.00x"
    cpu = [r for r in rows[1:] if "CPU" in r[device]]
    assert len(cpu) == 2
    assert all(r[speedup] == "n/a (CPU)" and "**CPU**" in r[device] for r in cpu)
    # GB/s column and versions made it through.
    assert gpu[("triton", "1x3x720x1280")][header.index("GB/s")] == "96"
    assert "torch 2.11, triton 3.6" in markdown
    assert table_rows(markdown, "correlation")[1][header.index("GB/s")] == "-"
    # No speed-up other than the three GPU ratios above (and the baselines' 1.00x) appears anywhere.
    assert sorted(set(re.findall(r"\d+\.\d+x", markdown))) == ["1.00x", "2.00x", "4.00x", "8.00x"]


def test_e2e_and_train_tables_with_other_columns(report, tmp_path):
    write_csv(tmp_path / "e2e.csv",
              ["model", "precision", "provider", "size", "frames", "median_ms", "fps", "device", "date"],
              [["pvdnet", "fp32", "torch", "1280x720", 10, 400.0, 2.5, H100, "2025-01-03"],
               ["pvdnet", "fp32", "triton", "1280x720", 10, 100.0, 10.0, H100, "2025-01-03"],
               ["pvdnet", "bf16", "triton", "1280x720", 10, 50.0, 20.0, H100, "2025-01-03"],
               ["pvdnet", "fp32", "triton", "1280x720", 2, 9000.0, 0.11, "cpu", "2025-01-03"]])
    # train.csv without median_ms: speed-up from steps/s.
    write_csv(tmp_path / "train.csv", ["model", "provider", "steps_per_s", "device", "extra"],
              [["pvdnet", "torch", 2.0, H100, "x"], ["pvdnet", "triton", 3.0, H100, "y"]])
    markdown = report.build_report(tmp_path, plots=False).read_text()
    assert "## End-to-end deblurring" in markdown and "## Training" in markdown
    e2e = markdown.split("## Training")[0]
    rows = table_rows(e2e, "pvdnet")
    header = rows[0]
    assert "frames/s" in header and "precision" in header
    by = {(r[0], r[header.index("precision")], "CPU" in r[header.index("device")]): r for r in rows[1:]
          if r[0] != "provider"}
    assert by[("triton", "fp32", False)][header.index("speed-up")] == "4.00x"
    assert by[("triton", "bf16", False)][header.index("speed-up")] == "-"  # no bf16 baseline measured
    assert by[("triton", "fp32", True)][header.index("speed-up")] == "n/a (CPU)"
    train_rows = table_rows(markdown.split("## Training")[1], "pvdnet")
    assert "steps/s" in train_rows[0]
    assert {r[0]: r[train_rows[0].index("speed-up")] for r in train_rows[1:]} == {"torch": "1.00x", "triton": "1.50x"}


def test_missing_files_and_columns_are_tolerated(report, tmp_path):
    markdown = report.build_report(tmp_path, plots=False).read_text()
    assert "No results found" in markdown
    write_csv(tmp_path / "kernels.csv", ["op", "provider"], [["warp", "triton"], ["", "torch"]])
    markdown = report.build_report(tmp_path, plots=False).read_text()
    rows = table_rows(markdown, "warp")
    assert len(rows) == 2  # only the CPU/unrecorded table: header and the one row with an op
    assert "**CPU?** (device not recorded)" in rows[-1]


def test_latest_measurement_wins(report, tmp_path):
    write_csv(tmp_path / "kernels.csv", KERNEL_COLUMNS, [
        ["warp", "torch", "fwd", "64", 2.0, 1, H100, "", "", "2025-01-01", ""],
        ["warp", "triton", "fwd", "64", 1.0, 1, H100, "", "", "2025-01-01", ""],
        ["warp", "triton", "fwd", "64", 0.25, 1, H100, "", "", "2025-02-01", ""],
        ["warp", "triton", "fwd", "64", 4.0, 1, H100, "", "", "2024-12-01", ""],
    ])
    markdown = report.build_report(tmp_path, plots=False).read_text()
    assert "8.00x" in markdown and "2.00x" not in markdown and "0.50x" not in markdown


def test_plots_are_written_for_gpu_rows_only(report, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the optional matplotlib (pvd[bench])")
    write_csv(tmp_path / "kernels.csv", KERNEL_COLUMNS, kernel_rows())
    write_csv(tmp_path / "e2e.csv", ["model", "precision", "provider", "median_ms", "fps", "device"],
              [["pvdnet", "fp32", "triton", 100.0, 10.0, H100], ["pvdnet", "bf16", "triton", 50.0, 20.0, H100],
               ["pvdnet_large", "fp32", "triton", 300.0, 3.3, H100], ["pvdnet", "fp32", "triton", 1e4, 0.1, "cpu"]])
    out = tmp_path / "out"
    markdown = report.build_report(tmp_path, out_dir=out).read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([f"kernels_correlation_{report._safe_name(H100)}_speedup.png",
                           f"kernels_warp_{report._safe_name(H100)}_speedup.png",
                           f"e2e_{report._safe_name(H100)}_throughput.png"])
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown
    assert not any("cpu" in name.lower() for name in pngs)
    assert not list(out.glob(".*tmp"))


def test_command_line(report, tmp_path, capsys):
    write_csv(tmp_path / "kernels.csv", KERNEL_COLUMNS, kernel_rows())
    assert report.main(["--results", str(tmp_path), "--no-plots", "--baseline", "triton"]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    markdown = (tmp_path / "REPORT.md").read_text()
    assert "0.25x" in markdown  # torch relative to the triton baseline at 64x64
    with pytest.raises(SystemExit):
        report.main(["--results", str(tmp_path / "missing")])
