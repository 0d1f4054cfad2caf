"""Smoke test of bench/throughput.py: a tiny run of every section finishes and prints every table.

Only that the benchmark works and that its figures agree with each other is
checked, not how good they are (no speed thresholds: a shared CI machine
cannot hold them).
"""

import json
import math
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
    "preload, 2 threads, fresh .npy",
)
# "target   <what> = <value> >= <limit>: <verdict>[ (best runs: <value>)]"; the ratios line names each <what>
# shorter (None: a name the ratios parser below cannot split off, checked against the table instead)
TARGETS = {
    "preload (2 threads, 256 NCHW, defaults) / decode limit": "preload / decode limit",
    "preload into a fresh .npy / decode limit": None,
    "preload / naive Pillow": "preload / naive Pillow",
    "preload / naive OpenCV INTER_AREA": "preload / naive OpenCV AREA",
    "preload / naive OpenCV INTER_LINEAR": "preload / naive OpenCV LINEAR",
}
TARGET = re.compile(
    r"^target   (?P<what>.+?) = (?P<value>[\d.]+) >= (?P<limit>[\d.]+): (?P<verdict>met|NOT met)"
    r"(?: \(best runs: (?P<best>[\d.]+)\))?"
)


def _row(output: str, name: str) -> list[str]:
    """The cells after ``name`` on the one table line that starts with it."""
    lines = [line[len(name) :].split() for line in output.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, (name, output)
    return lines[0]


def _line(output: str, start: str) -> str:
    """The one line of ``output`` that starts with ``start``, without it."""
    lines = [line[len(start) :] for line in output.splitlines() if line.startswith(start)]
    assert len(lines) == 1, (start, output)
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
    limit = re.search(r"^decode limit .*; x 2 cores = (\d+) images/s$", out, re.M)
    array_mb = re.search(r"^256x256 NCHW: medians of 1 runs, array ([\d.]+) MB$", out, re.M)
    assert limit is not None and array_mb is not None, out
    assert float(array_mb.group(1)) == round(24 * 3 * 256 * 256 / 1e6, 1)
    assert re.search(r"^old limit \(OpenCV decode\) 1 thread: [\d.]+ ms/image = \d+ images/s; x 2", out, re.M)
    for name in MAIN_LOADERS:
        seconds, rate, _range, versus_limit, cpu, peak, per_array = _row(out, name)[:7]  # then the PSNR
        assert float(seconds) > 0 and float(rate) > 0 and float(cpu) > 0, name
        assert math.isclose(float(versus_limit), float(rate) / int(limit.group(1)), abs_tol=0.0051), name
        assert float(peak) > 0, name  # every loader fills an array of 4.7 MB
        assert math.isclose(float(per_array) * float(array_mb.group(1)), float(peak), rel_tol=0.02, abs_tol=0.06), name
    # the same decode and the same INTER_AREA: preload "area" equals the naive OpenCV loop
    assert _row(out, "preload, 2 threads, area")[-1] == "identical"
    assert _row(out, "naive OpenCV INTER_AREA")[-1] == "identical"

    # The verdicts are parsed, not searched for ("NOT met" contains "met"), and agree with their figures.
    lines = [line for line in out.splitlines() if line.startswith("target ")]
    assert len(lines) == 7, out  # the 5 below, torchvision, every shape
    targets = [TARGET.match(line) for line in lines[:5]]
    assert all(targets), lines
    assert [target["what"] for target in targets] == list(TARGETS)
    ratios = dict(re.findall(r"([a-zA-Z][\w /]*?) ([\d.]+)(?:;|$)", _line(out, "ratios   ")))
    for target in targets:
        value, bound = float(target["value"]), float(target["limit"])
        if value != bound:  # printed to 2 decimals: a value that rounds onto the bound may go either way
            assert target["verdict"] == ("met" if value > bound else "NOT met"), target.group(0)
        assert target["best"] in (None, target["value"])  # one run: the best run is the median
        if TARGETS[target["what"]]:
            assert ratios[TARGETS[target["what"]]] == target["value"], (ratios, target.group(0))
    npy = float(_row(out, "preload, 2 threads, fresh .npy")[3])  # its "x limit" column
    assert math.isclose(float(targets[1]["value"]), npy, abs_tol=0.011), (targets[1].group(0), npy)
    assert re.match(r"target   preload vs torchvision: n/a \(torchvision is not importable; see --torchvision-python\)$"
                    r"|target   preload / torchvision = [\d.]+ >= 5.0 at [\d.]+ <= 0.35 x its peak memory: "
                    r"(met|NOT met)$", lines[5]), lines[5]
    # one shape measured: it is its own headline
    assert re.match(r"target   every shape within 10% of 256 NCHW's ratio to the limit: worst 256 NCHW \+0.0%: met ",
                    lines[6]), lines[6]

    assert "reduce=True / reduce=False, default filter" in big_out
    assert re.search(r"^target +big photos, .* / their decode limit = [\d.]+ >= 0.9: (met|NOT met)$", big_out, re.M)
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
    summary = result["sections"]["main"]["summary"]
    assert round(summary["decode_limit"]) == int(limit.group(1))
    assert math.isclose(summary["decode_limit"], 2 * summary["decode_1_thread"])
