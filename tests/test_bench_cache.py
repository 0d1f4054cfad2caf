"""Smoke test of bench/cache.py: a tiny run builds, opens and reports every figure.

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

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cache.py"
OPEN_ROWS = (
    "open_cache(check=False)",
    "open_cache() (check=True)",
    "len(ds)",
    "ds.labels[:10]",
    "np.array(ds.images[0]) (copy)",
)
PROCESS_ROWS = ("anon (RssAnon)", "file (RssFile)", "total (VmRSS)")
MEMORY_ROWS = (*PROCESS_ROWS, "system Dirty")
# "target   <name>: <value> <unit> <op> <limit> <unit>[ at N files]: <verdict>[ at N files (...)]"
TARGET = re.compile(
    r"^target   (?P<name>[^:]+): (?P<value>[\d.]+) (?P<unit>MB|ms) (?P<op><=|<) (?P<limit>[\d.]+) (?P=unit)"
    r"(?: at [\d,]+ files)?: (?P<verdict>met|NOT met)(?P<note>.*)$"
)


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

    above_of = {}
    for name in MEMORY_ROWS:
        row = [_numbers(line, name) for line in lines if line.startswith(name)]
        assert len(row) == 1, (name, done.stdout)
        baseline, peak, above, *quarters = row[0]
        assert peak >= baseline
        if name in PROCESS_ROWS:  # a Python interpreter with numpy and cv2 loaded holds megabytes
            assert baseline > 1
        assert math.isclose(above, peak - baseline, abs_tol=0.11)
        above_of[name] = above
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
        assert low <= median <= high
        assert low == median == high  # --repeats 1: one timing per step
    opens = [_numbers(line, name)[0] for name in OPEN_ROWS[:2] for line in lines if line.startswith(name)]
    assert len(opens) == 2 and all(value > 0 for value in opens)

    # The verdicts are parsed, not searched for: "NOT met" contains "met".
    targets = [TARGET.match(line) for line in lines if line.startswith("target ")]
    assert len(targets) == 3 and all(targets), done.stdout
    assert [target["name"] for target in targets] == [
        "builder anon RSS above baseline",
        "open_cache(check=False), median",
        "open_cache() default check, 30 files, median",
    ]
    for target in targets:
        value, limit = float(target["value"]), float(target["limit"])
        holds = value <= limit if target["op"] == "<=" else value < limit
        assert target["verdict"] == ("met" if holds else "NOT met"), target.group(0)
    assert [target["note"] for target in targets] == ["", "", " at 30 files (fewer than the target's)"]
    # Each target quotes the figure printed in its table.
    assert math.isclose(float(targets[0]["value"]), above_of["anon (RssAnon)"], abs_tol=0.11)
    assert math.isclose(float(targets[1]["value"]), opens[0], abs_tol=0.006)
    assert math.isclose(float(targets[2]["value"]), opens[1], abs_tol=0.006)

    result = json.loads(report.read_text())
    assert result["build"]["images"] == 30
    assert result["build"]["shape"] == [30, 3, 32, 32]
    anon = result["build"]["peak_anon_above_baseline"] / 1e6
    assert math.isclose(anon, above_of["anon (RssAnon)"], abs_tol=0.06)
    assert [t["verdict"] for t in result["targets"]] == [t["verdict"] + t["note"] for t in targets]
    assert sorted(run["mode"] for run in result["open_runs"]) == ["check", "no-check"]
    assert all(run["open"] > 0 and run["images"] == 30 for run in result["open_runs"])
    assert not out.exists()  # made by the run, so removed without --keep
