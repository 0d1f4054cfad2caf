"""Smoke test of bench/cache.py: a tiny run builds, opens and reports every figure.

Only that the benchmark works is checked; its figures are not (no speed or
memory thresholds: a shared CI machine cannot hold them).
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cache.py"
OPEN_ROWS = (
    "open_cache(check=False)",
    "open_cache() (check=True)",
    "len(ds)",
    "ds.labels[:10]",
    "np.array(ds.images[0]) (copy)",
)
MEMORY_ROWS = ("anon (RssAnon)", "file (RssFile)", "total (VmRSS)", "system Dirty")


def _numbers(line: str, name: str) -> list[float | None]:
    """The numbers after ``name`` at the start of ``line``; None where the bench printed "n/a"."""
    return [None if field == "n/a" else float(field) for field in line[len(name) :].split()]


def test_tiny_run_builds_and_times_open(tmp_path):
    data, out, report = tmp_path / "data", tmp_path / "out", tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", "30", "--size", "32", "--repeats", "1"]
    command += ["--data", str(data), "--out", str(out), "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    build = re.search(r"^build +(\d+) images in ([\d.]+) s \(([\d.]+) images/s\)", done.stdout, re.M)
    assert build is not None, done.stdout
    assert int(build.group(1)) == 30
    assert float(build.group(2)) > 0
    assert float(build.group(3)) > 0

    for name in MEMORY_ROWS:
        row = [_numbers(line, name) for line in lines if line.startswith(name)]
        assert len(row) == 1, (name, done.stdout)
        baseline, peak, above, *quarters = row[0]
        assert peak >= baseline >= 0
        assert math.isclose(above, peak - baseline, abs_tol=0.11)
        # A 30-image build can finish inside one sampling bucket: a quarter with no
        # sample reads "n/a", but the build was sampled somewhere, and no quarter
        # can exceed the whole build's peak.
        assert len(quarters) == 4
        sampled = [value for value in quarters if value is not None]
        assert sampled, (name, done.stdout)
        assert all(value <= above + 0.11 for value in sampled), (name, done.stdout)

    for name in OPEN_ROWS:
        row = [_numbers(line, name) for line in lines if line.startswith(name)]
        assert len(row) == 1, (name, done.stdout)
        median, low, high = row[0]
        assert all(math.isfinite(value) for value in row[0])
        assert 0 <= low <= median <= high
    opens = [_numbers(line, name)[0] for name in OPEN_ROWS[:2] for line in lines if line.startswith(name)]
    assert all(value > 0 for value in opens)

    targets = [line for line in lines if line.startswith("target ")]
    assert len(targets) == 3
    assert all(("met" in line) or ("n/a" in line) for line in targets)

    result = json.loads(report.read_text())
    assert result["build"]["images"] == 30
    assert result["build"]["shape"] == [30, 3, 32, 32]
    assert result["build"]["peak_anon_above_baseline"] >= 0
    assert sorted(run["mode"] for run in result["open_runs"]) == ["check", "no-check"]
    assert all(run["open"] > 0 and run["images"] == 30 for run in result["open_runs"])
    assert not out.exists()  # made by the run, so removed without --keep
