"""Smoke test of bench/load.py: a tiny run finishes and reports every strategy.

Only that the benchmark works and that its figures agree with each other is
checked, not how good they are (no speed or memory thresholds: a shared CI
machine cannot hold them).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "load.py"
STRATEGIES = ("preload", "naive-stack")
COLUMNS = ("runs", "images", "seconds", "images/s", "peak MB", "ratio")
ARRAY_BYTES = 20 * 3 * 32 * 32
TARGET = re.compile(
    r"^target   preload ratio (?P<ratio>[\d.]+) <= (?P<limit>[\d.]+): (?P<verdict>met|NOT met); "
    r"naive-stack ratio (?P<naive>[\d.]+) \(expected about 2\)$",
    re.M,
)


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
        assert row["peak MB"] > 0  # at least the array's pages were touched
        # ratio = peak above baseline / array bytes; "peak MB" is printed to 0.1 MB
        assert math.isclose(row["ratio"] * ARRAY_BYTES / 1e6, row["peak MB"], abs_tol=0.051), (strategy, row)

    # The verdict is parsed, not searched for, and agrees with the ratio it quotes.
    target = TARGET.search(done.stdout)
    assert target is not None, done.stdout
    assert float(target["ratio"]) == rows["preload"]["ratio"]
    assert float(target["naive"]) == rows["naive-stack"]["ratio"]
    met = float(target["ratio"]) <= float(target["limit"])
    assert target["verdict"] == ("met" if met else "NOT met"), target.group(0)
    speed = re.search(r"^speed +preload / naive-stack = ([\d.]+) x the images/s$", done.stdout, re.M)
    assert speed is not None, done.stdout
    expected = rows["preload"]["images/s"] / rows["naive-stack"]["images/s"]
    assert math.isclose(float(speed.group(1)), expected, abs_tol=0.011)
    assert re.search(r"^arrays +identical in every run \(sha256 [0-9a-f]{16}\.\.\.\)$", done.stdout, re.M), done.stdout

    runs = json.loads(report.read_text())["runs"]
    assert sorted(run["strategy"] for run in runs) == sorted(STRATEGIES)
    assert all(run["shape"] == [20, 3, 32, 32] and run["array_bytes"] == ARRAY_BYTES for run in runs)
    assert all(math.isclose(run["images_per_s"], run["images"] / run["seconds"]) for run in runs)
    assert all(math.isclose(run["ratio"], run["peak_above_baseline"] / ARRAY_BYTES) for run in runs)
    assert len({run["checksum"] for run in runs}) == 1  # both strategies built the same array
