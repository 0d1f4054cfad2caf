"""Smoke test of bench/integrity.py: a tiny run times both kinds of build and a deep verify.

Only that the benchmark works and that its figures agree with each other and
with its JSON is checked, not how good they are (no speed thresholds).
"""

import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "integrity.py"


def test_tiny_run_prints_consistent_figures(tmp_path):
    report = tmp_path / "r.json"
    command = [sys.executable, str(BENCH), "--count", "30", "--size", "32", "--repeats", "2",
               "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out" / "c.npy"), "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    figures = json.loads(report.read_text())

    build = re.search(r"^build +with checksums ([\d.]+) s, without ([\d.]+) s \(medians of 2\): ratio ([\d.]+)$",
                      done.stdout, re.M)
    assert build is not None, done.stdout
    with_sums, without, ratio = map(float, build.groups())
    assert len(figures["build_seconds_with_checksums"]) == len(figures["build_seconds_without"]) == 2
    assert math.isclose(with_sums, statistics.median(figures["build_seconds_with_checksums"]), abs_tol=0.001)
    assert math.isclose(without, statistics.median(figures["build_seconds_without"]), abs_tol=0.001)
    # The printed seconds are rounded to 1 ms, too coarse to rebuild a ratio of
    # 40 ms builds from, so the ratio is checked against the JSON's own medians.
    exact = (statistics.median(figures["build_seconds_with_checksums"])
             / statistics.median(figures["build_seconds_without"]))
    assert math.isclose(figures["build_ratio"], exact, rel_tol=1e-9)
    assert math.isclose(ratio, exact, abs_tol=0.0005)
    verdict = re.search(r"^target   build with checksums / without: ([\d.]+) <= 1.05: (met|NOT met)$",
                        done.stdout, re.M)
    assert verdict is not None and float(verdict.group(1)) == ratio
    assert verdict.group(2) == ("met" if ratio <= 1.05 else "NOT met")

    deep = re.search(r"^deep +30 rows, ([\d.]+) MB in ([\d.]+) s: ([\d.]+|inf) GB/s warm", done.stdout, re.M)
    assert deep is not None, done.stdout
    assert float(deep.group(1)) == round(30 * 3 * 32 * 32 / 1e6, 1)
    assert all(check["status"] == "fresh" and check["rows"] == 30 for check in figures["deep_checks"])
    speed = re.search(r"^target   deep verify, warm: ([\d.]+|inf) GB/s >= 2.0 GB/s: (met|NOT met)$", done.stdout, re.M)
    assert speed is not None and speed.group(2) == ("met" if float(speed.group(1)) >= 2.0 else "NOT met")
