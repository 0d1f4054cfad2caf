"""Smoke test of bench/cluster.py: a tiny run builds locally and on a LocalCluster and reports every figure.

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

pytest.importorskip("distributed")

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cluster.py"


def test_tiny_run_reports_both_builds(tmp_path):
    data, report = tmp_path / "data", tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", "24", "--size", "32", "--repeats", "1", "--workers", "2"]
    command += ["--data", str(data), "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout

    for name in ("local, 2 threads", "LocalCluster, 2 x 1 thread", "  same, glibc malloc"):
        row = re.search(rf"^{re.escape(name)} +([\d.]+) +(\d+) +(-?[\d.]+) +([\d.]+) +(\S+)$", out, re.M)
        assert row is not None, out
        seconds, rate = float(row.group(1)), int(row.group(2))
        assert seconds > 0 and rate > 0, row.group(0)
    assert re.search(r"^speed +LocalCluster / local = [\d.]+ x the images/s, [\d.]+ x with glibc's malloc defaults "
                     r"\(workers' MALLOC_TRIM_THRESHOLD_ 65536/None\)", out, re.M), out
    assert re.search(r"^memory +scheduler \+ caller.*for a 0\.1 MB array", out, re.M), out
    assert re.search(r"^bytes +every cache identical: sha256 [0-9a-f]{16}$", out, re.M), out
    summary = re.search(r"^ +cluster +24 images in (\d+) chunks on 2 worker\(s\)", out, re.M)
    assert summary is not None, out
    workers = re.findall(r"^ +worker tcp://\S+ \(host .+\): (\d+) images in (\d+) chunks", out, re.M)
    assert len(workers) == 2, out
    assert sum(int(images) for images, _ in workers) == 24  # every image built once, by one of the workers
    assert sum(int(chunks) for _, chunks in workers) == int(summary.group(1))

    runs = json.loads(report.read_text())["runs"]
    assert [run["kind"] for run in runs] == ["local", "cluster", "cluster-glibc"]
    assert all(run["images"] == 24 and run["shape"] == [24, 3, 32, 32] for run in runs)
    assert all(len(run["worker_peak_rss"]) == 2 and run["startup_seconds"] > 0 for run in runs[1:])
    assert all(run["array_bytes"] == 24 * 3 * 32 * 32 and run["seconds"] > 0 for run in runs)
    assert all(math.isclose(run["images_per_s"], run["images"] / run["seconds"]) for run in runs)
    assert len({run["sha256"] for run in runs}) == 1  # "every cache identical", checked from the JSON too
