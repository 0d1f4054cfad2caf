"""Smoke test of bench/storage.py: a tiny run writes every store, reads it back identical and reports.

Only that the benchmark works and that its figures agree with each other is
checked, not how good they are (no speed thresholds: a shared CI machine
cannot hold them). No cold-cache runs
(``--no-cold``): dropping the page cache needs root and slows the machine.
"""

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # run by `python -m pytest -m bench`, not by default

BENCH = Path(__file__).resolve().parent.parent / "bench" / "storage.py"
LIBRARIES = {"h5py": ("HDF5 contiguous", "HDF5 chunked (1 image)"), "lmdb": ("LMDB (1 value/image)",)}
ALWAYS = ("preload cache (.npy)", "PNG folder")
STORE_KEYS = {
    "preload cache (.npy)": "npy",
    "PNG folder": "png",
    "HDF5 contiguous": "h5-contiguous",
    "HDF5 chunked (1 image)": "h5-chunked",
    "LMDB (1 value/image)": "lmdb",
}
GBPS = re.compile(
    r"^  full sequential read from the cache, warm, GB/s +(?P<value>[\d.]+) (?P<verdict>met|NOT met) +"
    r">= (?P<limit>[\d.]+)$",
    re.M,
)
COUNT = 16

pytest.importorskip("skimage", reason="the sample photos come from scikit-image")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """16 sample photos, made once for both tests."""
    from preload.samples import make_samples

    folder = tmp_path_factory.mktemp("samples")
    make_samples(folder, COUNT, seed=0)
    return folder


def _run(tmp_path, samples, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--count", str(COUNT), "--size", "64", "--batches", "5"]
    command += ["--repeats", "1", "--no-cold", "--data", str(samples), "--out", str(tmp_path / "out")]
    command += ["--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads(report.read_text())


def _importable(name: str) -> bool:
    """Whether ``name`` imports (the bench skips a store exactly then; a broken install counts as missing)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _table_rows(output: str) -> dict[str, list[str]]:
    """Store label -> the fields after it, for every first row of a store in the table."""
    labels = [*ALWAYS, *(label for group in LIBRARIES.values() for label in group)]
    rows = {}
    for line in output.splitlines():
        for label in labels:
            if line.startswith(label + " ") and not line.startswith(("write", "skip")):
                rows[label] = line[len(label) :].split()
    return rows


def test_tiny_run_writes_reads_and_reports(tmp_path, samples):
    done, report = _run(tmp_path, samples)
    installed = [name for name in LIBRARIES if _importable(name)]
    expected = [*ALWAYS, *(label for name in installed for label in LIBRARIES[name])]
    rows = _table_rows(done.stdout)
    assert sorted(rows) == sorted(expected), done.stdout
    for label, fields in rows.items():
        assert all(math.isfinite(float(field.lstrip("~"))) for field in fields[-6:-1]), (label, fields)
        # write s, MB on disk, full read s, GB/s: the figures of the JSON report, as printed
        store = report["stores"][STORE_KEYS[label]]
        printed = (f"{store['write']:.2f}", f"{store['disk_mb']:.1f}", f"{store['full']:.3f}", f"{store['gbps']:.2f}")
        assert tuple(fields[-6:-2]) == printed, (label, fields, store)
        assert fields[-1] == "-"  # no cold column with --no-cold
    # The verdict is parsed, not searched for ("NOT met" contains "met"), and agrees with the figure.
    gbps = GBPS.search(done.stdout)
    assert gbps is not None, done.stdout
    assert gbps["value"] == f"{report['stores']['npy']['gbps']:.2f}"
    met = report["stores"]["npy"]["gbps"] >= float(gbps["limit"])
    assert gbps["verdict"] == ("met" if met else "NOT met"), gbps.group(0)
    assert "pixels   a full read from every store is identical" in done.stdout
    assert "batches  each method's first batches" in done.stdout
    for name in LIBRARIES:
        if name not in installed:
            assert f"{name} is not installed" in done.stdout
    targets = [line for line in done.stdout.splitlines() if line.startswith("  warm:") or line.startswith("  cold:")]
    assert len(targets) == 8
    assert all("n/a (" in line for line in targets if line.startswith("  cold:"))  # not measured, or no library

    for store in report["stores"].values():
        assert all(store[key] > 0 for key in ("write", "disk_mb", "full", "gbps")), store
    assert all(method["warm"] > 0 and method["cold"] is None for method in report["methods"].values())
    assert report["stores"]["npy"]["disk_mb"] > COUNT * 64 * 64 * 3 / 1e6
    assert len({store["sha256"] for store in report["stores"].values()}) == 1
    assert all(method["verify_ok"] for method in report["methods"].values())
    assert report["build"]["shape"] == [COUNT, 64, 64, 3]
    assert not (tmp_path / "out").exists()  # made by the run, so removed without --keep


def test_stores_without_their_library_are_skipped(tmp_path, samples):
    # A folder early on the path whose h5py and lmdb fail to import, as if they were not installed.
    hide = tmp_path / "hide"
    for name in LIBRARIES:
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(hide)}
    done, report = _run(tmp_path, samples, env=env)
    for name, labels in LIBRARIES.items():
        for label in labels:
            assert f"skip     {label}: {name} is not installed ({name} hidden by the test)" in done.stdout
    assert sorted(_table_rows(done.stdout)) == sorted(ALWAYS)
    assert sorted(report["skipped"]) == ["h5-chunked", "h5-contiguous", "lmdb"]
    assert sorted(report["stores"]) == ["npy", "png"]
    warm = [line for line in done.stdout.splitlines() if line.startswith("  warm:")]
    assert all("n/a" in line and "is not installed" in line for line in warm)
