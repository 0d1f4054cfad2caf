"""Smoke test of bench/load.py: a tiny run finishes and reports every strategy.

Only that the benchmark works is checked; its figures are not (no speed or
memory thresholds: a shared CI machine cannot hold them).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "load.py"
STRATEGIES = ("preload", "naive-stack")
COLUMNS = ("runs", "images", "seconds", "images/s", "peak MB", "ratio")


def _rows(output: str) -> dict[str, dict[str, float]]:
    """The median table's rows: strategy -> column -> value."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if fields and fields[0] in STRATEGIES and len(fields) == 1 + len(COLUMNS):
            rows[fields[0]] = dict(zip(COLUMNS, map(float, fields[1:]), strict=True))
    return rows


def test_tiny_run_reports_every_strategy(tmp_path):
    report = tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", "20", "--repeats", "1", "--size", "32"]
    command += ["--data", str(tmp_path / "data"), "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert sorted(rows) == sorted(STRATEGIES), done.stdout
    for strategy, row in rows.items():
        assert all(math.isfinite(value) for value in row.values()), (strategy, row)
        assert row["runs"] == 1
        assert row["images"] == 20
        assert row["seconds"] > 0
        assert row["images/s"] > 0
        assert row["ratio"] >= 0
    runs = json.loads(report.read_text())["runs"]
    assert sorted(run["strategy"] for run in runs) == sorted(STRATEGIES)
    assert all(run["shape"] == [20, 3, 32, 32] for run in runs)
