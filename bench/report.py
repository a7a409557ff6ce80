"""Turn the benchmark CSVs in `bench/results/` into `REPORT.md` and PNG plots.

    python bench/report.py [--results bench/results] [--out bench/results] [--baseline torch,reference]

Inputs (each optional; unknown columns are ignored, missing ones show as "-"):
- `kernels.csv`: op, provider, mode, size, median_ms, gbps, device, torch, triton, date, path.
- `e2e.csv`: one row per whole-pipeline measurement: pipeline or model, precision, provider, size, mode,
  median_ms, frames/s (`fps`, `frames_per_s`, ...), device, torch, triton, date.
- `train.csv`: the same for training, with steps/s (`steps_per_s`, ...).
- `traffic.csv` (bench/traffic.py): modelled memory traffic per op, direction, level, size and design, as
  multiples of the ideal bytes; shown as one table with the designs side by side (legacy first).

Speed-up = median ms of the baseline provider (first of `--baseline` present) / median ms of the row, for
the same (op or pipeline, precision, mode, size) measured on the *same device*. Rows measured on CPU (the
Triton interpreter, or a CPU reference) are listed in their own table marked CPU and never get a speed-up,
nor serve as a baseline, nor appear in the plots. When a key was measured several times the latest date
(then the last line) wins. Plots need matplotlib (`pip install pvd[bench]`); without it only the Markdown
is written.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvd._files import default_permissions

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPORT_NAME = "REPORT.md"
DEFAULT_BASELINES = ("torch", "reference", "eager", "pytorch", "baseline")
CPU_MARKERS = ("cpu", "interpret")
MISSING = "-"

# Alternative spellings of the columns, first match wins.
GROUP_COLUMNS = {"kernels": ("op", "kernel"), "e2e": ("pipeline", "model", "name"),
                 "train": ("pipeline", "model", "config", "name")}
THROUGHPUT_COLUMNS = {
    "kernels": ("gbps", "gb_per_s", "GB/s"),
    "e2e": ("frames_per_s", "fps", "frames/s", "frames_per_sec", "throughput"),
    "train": ("steps_per_s", "steps/s", "sps", "it_per_s", "throughput"),
}
THROUGHPUT_LABELS = {"kernels": "GB/s", "e2e": "frames/s", "train": "steps/s"}
TITLES = {"kernels": "Kernels", "e2e": "End-to-end deblurring", "train": "Training"}


@dataclass
class Row:
    """One measurement, normalised from any of the CSV layouts."""

    kind: str
    group: str
    provider: str
    size: str
    mode: str
    precision: str
    median_ms: float | None
    throughput: float | None
    device: str
    date: str
    versions: str
    speedup: float | None = field(default=None)

    @property
    def on_cpu(self) -> bool:
        """Measured on CPU (or the device was not recorded): never compared with GPU rows."""
        device = self.device.lower()
        return not device or any(marker in device for marker in CPU_MARKERS)

    @property
    def key(self) -> tuple:
        return self.group, self.precision, self.mode, self.size, self.device


def _first(record: dict, names: Iterable[str], default: str = "") -> str:
    for name in names:
        value = record.get(name)
        if value is not None and str(value).strip() != "":
            return str(value).strip()
    return default


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_rows(path: Path, kind: str) -> list[Row]:
    """Rows of one results CSV ([] if the file does not exist or has no usable rows)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    rows = []
    for record in records:
        record = {(name or "").strip(): value for name, value in record.items()}
        group = _first(record, GROUP_COLUMNS[kind])
        if not group:
            continue
        torch_version, triton_version = _first(record, ["torch"]), _first(record, ["triton"])
        versions = ", ".join(part for part in (torch_version and f"torch {torch_version}",
                                               triton_version and f"triton {triton_version}") if part)
        rows.append(Row(
            kind=kind, group=group,
            provider=_first(record, ["provider", "impl", "backend", "path"], MISSING),
            size=_first(record, ["size", "shape", "resolution"], MISSING),
            mode=_first(record, ["mode", "pass", "direction"], MISSING),
            precision=_first(record, ["precision", "dtype"], MISSING),
            median_ms=_number(_first(record, ["median_ms", "ms", "time_ms"])),
            throughput=_number(_first(record, THROUGHPUT_COLUMNS[kind])),
            device=_first(record, ["device", "gpu"]),
            date=_first(record, ["date", "timestamp"]),
            versions=versions,
        ))
    return _latest(rows)


def _latest(rows: list[Row]) -> list[Row]:
    """Keep one row per (key, provider): the latest date, then the last line."""
    chosen: dict[tuple, Row] = {}
    for row in rows:
        identity = row.key + (row.provider,)
        if identity not in chosen or row.date >= chosen[identity].date:
            chosen[identity] = row
    return list(chosen.values())


def add_speedups(rows: list[Row], baselines: Sequence[str]) -> None:
    """Fill `speedup` for GPU rows against the baseline provider of the same key on the same device."""
    by_key: dict[tuple, dict[str, Row]] = defaultdict(dict)
    for row in rows:
        if not row.on_cpu:
            by_key[row.key][row.provider.lower()] = row
    for providers in by_key.values():
        baseline = next((providers[name.lower()] for name in baselines if name.lower() in providers), None)
        if baseline is None:
            continue
        for row in providers.values():
            row.speedup = _ratio(baseline, row)


def _ratio(baseline: Row, row: Row) -> float | None:
    if baseline.median_ms and row.median_ms:
        return baseline.median_ms / row.median_ms
    if baseline.throughput and row.throughput:
        return row.throughput / baseline.throughput
    return None


def _size_order(size: str) -> tuple:
    """Sort sizes by their pixel/element count when they contain numbers (e.g. '1x3x720x1280', '720p')."""
    numbers = [int(n) for n in re.findall(r"\d+", size)]
    return (0, math.prod(numbers), size) if numbers else (1, 0, size)


def _format(value: float | None, digits: int = 3) -> str:
    if value is None:
        return MISSING
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def _cpu_label(device: str) -> str:
    if not device:
        return "**CPU?** (device not recorded)"
    return "**CPU**" if device.lower() == "cpu" else f"**CPU** ({device})"


def _table(rows: list[Row], kind: str, cpu: bool) -> list[str]:
    throughput = THROUGHPUT_LABELS[kind]
    header = ["provider", "size", "mode"] + (["precision"] if kind != "kernels" else []) + \
             ["median ms", "speed-up", throughput, "device", "date"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(rows, key=lambda r: (r.precision, r.mode, _size_order(r.size), r.device, r.provider))
    for row in ordered:
        speedup = "n/a (CPU)" if cpu else (f"{row.speedup:.2f}x" if row.speedup is not None else MISSING)
        device = _cpu_label(row.device) if cpu else row.device
        cells = [row.provider, row.size, row.mode] + ([row.precision] if kind != "kernels" else []) + \
                [_format(row.median_ms), speedup, _format(row.throughput), device, row.date or MISSING]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _section(kind: str, rows: list[Row], plots: dict[str, list[str]]) -> list[str]:
    lines = [f"## {TITLES[kind]}", ""]
    groups = sorted({row.group for row in rows})
    for group in groups:
        members = [row for row in rows if row.group == group]
        gpu = [row for row in members if not row.on_cpu]
        cpu = [row for row in members if row.on_cpu]
        lines += [f"### {group}", ""]
        if gpu:
            lines += _table(gpu, kind, cpu=False) + [""]
        if cpu:
            lines += ["CPU measurements (Triton interpreter or CPU reference): not comparable with GPU timings, "
                      "no speed-ups.", ""]
            lines += _table(cpu, kind, cpu=True) + [""]
        versions = sorted({row.versions for row in members if row.versions})
        if versions:
            lines += ["Versions: " + "; ".join(versions), ""]
        for image in plots.get(group, []):
            lines += [f"![{group}]({image})", ""]
    for image in plots.get("", []):
        lines += [f"![{TITLES[kind]}]({image})", ""]
    return lines


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def _save_figure(figure, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    os.replace(temporary, path)


def plot_kernel_speedups(rows: list[Row], out_dir: Path, pyplot) -> dict[str, list[str]]:
    """One PNG per op and GPU device: speed-up vs size, a line per (provider, mode). -> {op: [file names]}."""
    written: dict[str, list[str]] = defaultdict(list)
    usable = [row for row in rows if not row.on_cpu and row.speedup is not None]
    for op in sorted({row.group for row in usable}):
        for device in sorted({row.device for row in usable if row.group == op}):
            members = [row for row in usable if row.group == op and row.device == device]
            sizes = sorted({row.size for row in members}, key=_size_order)
            figure, axes = pyplot.subplots(figsize=(7, 4))
            for provider, mode in sorted({(row.provider, row.mode) for row in members}):
                series = sorted((row for row in members if (row.provider, row.mode) == (provider, mode)),
                                key=lambda r: _size_order(r.size))
                axes.plot([sizes.index(row.size) for row in series], [row.speedup for row in series],
                          marker="o", label=f"{provider} ({mode})")
            axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            axes.set_xticks(range(len(sizes)), sizes, rotation=30, ha="right")
            axes.set_xlabel("size")
            axes.set_ylabel("speed-up vs baseline (x)")
            axes.set_title(f"{op}: speed-up on {device}")
            axes.legend(fontsize="small")
            name = f"kernels_{_safe_name(op)}_{_safe_name(device)}_speedup.png"
            _save_figure(figure, out_dir / name)
            pyplot.close(figure)
            written[op].append(name)
    return written


def plot_throughput(rows: list[Row], kind: str, out_dir: Path, pyplot) -> dict[str, list[str]]:
    """One PNG per GPU device: grouped bars of throughput per pipeline/model, a bar per precision/provider."""
    written: dict[str, list[str]] = defaultdict(list)
    usable = [row for row in rows if not row.on_cpu and row.throughput is not None]
    for device in sorted({row.device for row in usable}):
        members = [row for row in usable if row.device == device]
        groups = sorted({row.group for row in members})
        series_names = sorted({(row.precision, row.provider, row.size) for row in members})
        width = 0.8 / len(series_names)
        figure, axes = pyplot.subplots(figsize=(max(6, 1.5 * len(groups) * max(1, len(series_names) / 2)), 4))
        for index, (precision, provider, size) in enumerate(series_names):
            values = []
            for group in groups:
                match = [row.throughput for row in members
                         if (row.group, row.precision, row.provider, row.size) == (group, precision, provider, size)]
                values.append(match[0] if match else 0.0)
            label = " ".join(part for part in (precision, provider, size) if part != MISSING)
            axes.bar([g + (index - (len(series_names) - 1) / 2) * width for g in range(len(groups))], values,
                     width=width, label=label or "measurement")
        axes.set_xticks(range(len(groups)), groups)
        axes.set_ylabel(THROUGHPUT_LABELS[kind])
        axes.set_title(f"{TITLES[kind]}: {THROUGHPUT_LABELS[kind]} on {device}")
        axes.legend(fontsize="small")
        name = f"{kind}_{_safe_name(device)}_throughput.png"
        _save_figure(figure, out_dir / name)
        pyplot.close(figure)
        written[""].append(name)
    return written


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return None
    return pyplot


TRAFFIC_FIGURES = (("l2_x", "L2->SM x"), ("dram_x", "DRAM x"), ("dram_host_x", "DRAM+host x"),
                   ("requested_x", "req x"), ("atomics_per_output", "atomics/out"))
TRAFFIC_OPS = ("correlation", "warp", "pixel_volume")
TRAFFIC_DIRECTIONS = ("fwd", "bwd")
FIRST_DESIGN = "legacy"


def read_traffic(path: Path) -> list[dict]:
    """Rows of traffic.csv, the latest (date, then line) per (op, direction, level, size, design)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        records = [{(name or "").strip(): (value or "").strip() for name, value in record.items()}
                   for record in csv.DictReader(handle)]
    chosen: dict[tuple, dict] = {}
    for record in records:
        if not record.get("op"):
            continue
        key = tuple(record.get(name, "") for name in ("op", "direction", "level", "size", "design"))
        if key not in chosen or record.get("date", "") >= chosen[key].get("date", ""):
            chosen[key] = record
    return list(chosen.values())


def _design_order(design: str) -> tuple:
    return (design != FIRST_DESIGN, design)


def _traffic_row_order(key: tuple) -> tuple:
    op, direction, level, size = key
    return (TRAFFIC_OPS.index(op) if op in TRAFFIC_OPS else len(TRAFFIC_OPS), op, level, _size_order(size),
            TRAFFIC_DIRECTIONS.index(direction) if direction in TRAFFIC_DIRECTIONS else len(TRAFFIC_DIRECTIONS),
            direction)


def _traffic_section(records: list[dict]) -> list[str]:
    """Markdown: one row per (op, direction, level, size), the figures of each design side by side."""
    designs = sorted({record.get("design") or MISSING for record in records}, key=_design_order)
    by_key: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for record in records:
        key = tuple(record.get(name) or MISSING for name in ("op", "direction", "level", "size"))
        by_key[key][record.get("design") or MISSING] = record
    lines = ["## Memory traffic (modelled, Triton interpreter)", "",
             "`bench/traffic.py`: every load, store and atomic of the kernels recorded in Triton's interpreter, as "
             "multiples of the ideal bytes (inputs read once, outputs written once). L2->SM: sum over program "
             "instances of the distinct 32-byte sectors each touches; DRAM: distinct sectors per launch; +host: "
             "plus the tensor passes the op runs outside kernels; req: masked-in lanes x element size. Shapes are "
             "the network's at a 1280x720 frame, cut down for the interpreter (sizing: strips of the real width "
             "with fewer rows, which keeps the geometry of kernels that tile pixels along rows exact, or each "
             "side divided). Not GPU measurements.", ""]
    header = ["op", "direction", "level", "size", "sizing"] + [f"{design} {label}" for design in designs
                                                                 for _, label in TRAFFIC_FIGURES]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(by_key, key=_traffic_row_order):
        cells = list(key) + [next((record.get("sizing") for record in by_key[key].values() if record.get("sizing")),
                                  MISSING)]
        for design in designs:
            record = by_key[key].get(design)
            cells += [_format(_number(record.get(column, ""))) if record else MISSING
                      for column, _ in TRAFFIC_FIGURES]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for design in designs:
        measured = [record for record in records if (record.get("design") or MISSING) == design]
        stamps = sorted({", ".join(part for part in (record.get("git") and f"git {record['git']}",
                                                     record.get("triton") and f"triton {record['triton']}",
                                                     record.get("date")) if part) for record in measured})
        lines.append(f"- {design}: " + "; ".join(stamp for stamp in stamps if stamp))
    return lines + [""]


def build_report(results_dir: Path, out_dir: Path | None = None, baselines: Sequence[str] = DEFAULT_BASELINES,
                 plots: bool = True) -> Path:
    """Read `results_dir/{kernels,e2e,train,traffic}.csv`, write `REPORT.md` (and PNGs) to `out_dir`; return its
    path."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    pyplot = _pyplot() if plots else None
    lines = ["# Benchmark report", "",
             f"Generated by `bench/report.py` from `{results_dir.name}/*.csv`. Speed-up is the baseline provider's "
             f"median time over the row's (baseline: first present of {', '.join(baselines)}), same size, mode, "
             "precision and device. CPU rows are shown separately and never enter speed-ups or plots.", ""]
    if plots and pyplot is None:
        lines += ["Plots skipped: matplotlib is not installed (`pip install pvd[bench]`).", ""]
    found_any = False
    for kind in ("kernels", "e2e", "train"):
        rows = read_rows(results_dir / f"{kind}.csv", kind)
        if not rows:
            continue
        found_any = True
        add_speedups(rows, baselines)
        images: dict[str, list[str]] = {}
        if pyplot is not None:
            if kind == "kernels":
                images = plot_kernel_speedups(rows, out_dir, pyplot)
            else:
                images = plot_throughput(rows, kind, out_dir, pyplot)
        lines += _section(kind, rows, images)
    traffic = read_traffic(results_dir / "traffic.csv")
    if traffic:
        found_any = True
        lines += _traffic_section(traffic)
    if not found_any:
        lines += [f"No results found in `{results_dir}` (expected kernels.csv, e2e.csv, train.csv or traffic.csv).",
                  ""]
    report = out_dir / REPORT_NAME
    with tempfile.NamedTemporaryFile("w", dir=out_dir, prefix=".REPORT.", suffix=".tmp", delete=False) as handle:
        handle.write("\n".join(lines))
    default_permissions(handle.name)
    os.replace(handle.name, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder with the CSVs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="where REPORT.md and the PNGs go (default: --results)")
    parser.add_argument("--baseline", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated baseline providers, first present wins (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="write only the Markdown")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.error(f"results folder {args.results} does not exist")
    baselines = [name.strip() for name in args.baseline.split(",") if name.strip()]
    if not baselines:
        parser.error("--baseline names no provider")
    report = build_report(args.results, args.out, baselines, plots=not args.no_plots)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
