"""Smoke test of bench/throughput.py: a tiny run of every section finishes and prints every table.

Only that the benchmark works is checked; its figures are not (no speed
thresholds: a shared CI machine cannot hold them).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"
MAIN_LOADERS = (
    "naive Pillow BILINEAR (antialiased)",
    "naive OpenCV INTER_AREA",
    "preload, 1 thread",
    "preload, 2 threads",
    "preload, 2 threads, area",
    "preload, 1 thread, area",
    "preload, 2 threads, linear",
    "naive OpenCV INTER_LINEAR",
)


def _row(output: str, name: str) -> list[str]:
    """The cells after ``name`` on the one table line that starts with it."""
    lines = [line[len(name) :].split() for line in output.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, (name, output)
    return lines[0]


def test_tiny_run_prints_every_section(tmp_path):
    data, big, report = tmp_path / "data", tmp_path / "big", tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", "24", "--big-count", "6", "--scaling-counts", "8,16"]
    command += ["--listing-count", "300", "--sizes", "256", "--layouts", "NCHW", "--repeats", "1", "--workers", "2"]
    command += ["--data", str(data), "--big-data", str(big), "--scaling-data", str(data)]
    command += ["--listing-dir", str(tmp_path), "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out, big_out = done.stdout.split("## big:")

    assert re.search(r"^decode limit +1 thread: [\d.]+ ms/image = \d+ images/s; x 2 cores = \d+ images/s$", out, re.M)
    for name in MAIN_LOADERS:
        seconds, rate, _range, versus_limit, cpu, peak, per_array = _row(out, name)[:7]  # then the PSNR
        assert float(seconds) > 0 and float(rate) > 0 and float(versus_limit) > 0, name
        assert float(cpu) > 0 and float(peak) >= 0 and float(per_array) >= 0, name
    # the same decode and the same INTER_AREA: preload "area" equals the naive OpenCV loop
    assert _row(out, "preload, 2 threads, area")[-1] == "identical"
    assert _row(out, "naive OpenCV INTER_AREA")[-1] == "identical"

    targets = [line for line in out.splitlines() if line.startswith("target ")]
    assert len(targets) == 4, out
    assert all(re.search(r": (met|NOT met|n/a)\b", line) for line in targets), targets
    assert sum("(best runs: " in line for line in targets) == 3, targets

    assert "reduce=True / reduce=False, default filter" in big_out
    assert re.search(r"^reduce +JPEG scale preload picks at 256x256: .*1/2: \d+", big_out, re.M), big_out
    assert _row(big_out, "naive OpenCV INTER_AREA")[-1] == "identical"
    assert _row(big_out, "preload, 2 threads, area, reduce=False")[-1] == "identical"
    assert re.search(r"^ +8 .*\n +16 ", big_out, re.M), big_out
    assert "preload.Manifest.from_folder" in big_out
    assert not list(tmp_path.glob("listing-*"))  # the tree of empty files is deleted

    result = json.loads(report.read_text())
    assert sorted(result["sections"]) == ["big", "listing", "main", "scaling"]
    shapes = {tuple(run["shape"]) for run in result["sections"]["main"]["runs"] if run["shape"]}
    assert shapes == {(24, 3, 256, 256)}
