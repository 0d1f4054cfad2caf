"""Smoke test of bench/augment.py: a tiny run measures every comparison that imports, and its figures agree.

No speed thresholds (a shared machine cannot hold them): only that each run
covered the whole epoch, memory figures are consistent with the buffers, and
the skipped comparisons say why.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "augment.py"


def test_a_tiny_run_reports_every_measurement(tmp_path):
    report = tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", "96", "--size", "32", "--batch", "16", "--keras-batches", "1",
               "--repeats", "1", "--stats-gb", "0.01", "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(report.read_text())["results"]
    for name in ("preload", "preload-u8", "step", "memmap"):
        assert results[name]["images"] == 96, name
    assert results["memmap-half"]["images"] == 48
    assert results["step"]["batches"] == 6 and results["step"]["seconds"] >= 6 * 0.020
    batch_u8 = 16 * 32 * 32 * 3 / 1e6
    assert results["preload-u8"]["batch_mb"] == pytest.approx(batch_u8)
    assert results["preload"]["batch_mb"] == pytest.approx(5 * batch_u8)  # uint8 + float32 buffers
    assert 120 < results["stats"]["mean"][0] < 135  # uniform random bytes
    image = 256 * 256 * 3  # the stats array's images
    assert results["stats"]["gb"] == pytest.approx((10**7 // image) * image / 1e9)
    for name, module in (("keras", "tensorflow"), ("albumentations", "albumentations")):
        if importlib.util.find_spec(module) is None:
            assert results[name] == {"skipped": f"{module} does not import"}
            assert f"{name:15s} skipped: {module} does not import" in done.stdout
        else:
            assert results[name]["images"] > 0
    assert "summary" in done.stdout
