"""Smoke test of bench/freshness.py: a tiny tree, every figure printed (no thresholds: CI cannot hold them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "freshness.py"


@pytest.mark.bench
def test_tiny_run_prints_every_figure(tmp_path):
    report = tmp_path / "figures.json"
    command = [sys.executable, str(BENCH), "--count", "600", "--part", "300", "--per-folder", "100",
               "--repeats", "1", "--warmups", "0", "--delay-us", "50", "--data", str(tmp_path / "data"),
               "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(file system: " in done.stdout
    labels = [figure["label"] for figure in json.loads(report.read_text())["figures"]]
    assert labels == ["check, 600 files", "check, 600 files, 1 thread", "bare os.stat loop, 600 files",
                      "check, 300 files, 50 us a stat", "check, 300 files, 50 us, 1 thread",
                      "Manifest.from_folder, 600 files", "open_cache(check=False), 600 files"]
    for label in labels:
        assert f"\n{label} " in done.stdout
    memory = json.loads(report.read_text())["memory"]
    assert memory["last"] == str(tmp_path / "data" / "tree" / "part1" / "c002" / "0000599.png")
    assert set(memory) == {"open_mb", "path_mb", "checked_mb", "peak_mb", "last"}
    listing = json.loads(report.read_text())["figures"][5]["runs"][0]
    assert listing["files"] == 600
