"""bench/_env.append_rows: earlier rows stay byte for byte; new columns extend the header."""

import csv
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _append_rows():
    sys.path.insert(0, str(BENCH))
    try:
        from _env import append_rows
    finally:
        sys.path.remove(str(BENCH))
    return append_rows


def test_appending_keeps_earlier_rows_byte_for_byte(tmp_path):
    append_rows = _append_rows()
    path = tmp_path / "results.csv"
    append_rows(path, [{"label": "before", "seconds": 1.5}])
    first = path.read_bytes()
    assert first == b"label,seconds\r\nbefore,1.5\r\n"
    append_rows(path, [{"label": "after", "seconds": 1.25}])
    assert path.read_bytes() == first + b"after,1.25\r\n"


def test_a_new_column_extends_the_header(tmp_path):
    append_rows = _append_rows()
    path = tmp_path / "results.csv"
    append_rows(path, [{"label": "before", "seconds": 1.5}])
    append_rows(path, [{"label": "after", "seconds": 1.25, "threads": 2}])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["label"], r["seconds"], r["threads"]) for r in rows] == [("before", "1.5", ""), ("after", "1.25", "2")]
