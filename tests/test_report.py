"""The memory report (preload/report.py): every strategy on one folder, JSON / Markdown / PNG, ``preload report``.

The harness (tests in test_measure.py) runs once on a generated folder whose array (72 x 320 x 320 x 3
= 22.1 MB) is large enough that the naive strategies' second copy stands far
above sampling noise and interpreter overheads (a few MB). Only memory
relations the array's size makes certain are asserted; no speed figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sys

import cv2
import numpy as np
import psutil
import pytest

import preload
from conftest import smooth_image, write
from preload.cli import main
from preload.measure import STRATEGIES, StrategyRun, measure
from preload.options import DecodeOptions
from preload.report import REPORT_FILES, run_report, write_report

COUNT, SIDE = 72, 320
ARRAY_BYTES = COUNT * SIDE * SIDE * 3
RUN_FIELDS = (
    "strategy", "status", "threads", "images", "shape", "array_bytes", "checksum", "seconds", "images_per_s",
    "baseline_rss", "peak_rss", "peak_above_baseline", "ratio", "baseline_anon", "peak_anon",
    "anon_above_baseline", "baseline_file", "peak_file", "file_above_baseline", "memory_profiler_peak",
    "memory_profiler_above_baseline", "high_water", "high_water_above_baseline", "ru_maxrss",
    "ru_maxrss_above_baseline", "sample_count", "samples",
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """72 smooth JPEGs of 360 x 400 in three class folders (shrunk to 320 x 320: area resize)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(COUNT):
        folder = root / f"class{i % 3}"
        folder.mkdir(exist_ok=True)
        write(folder / f"{i:03d}.jpg", smooth_image(rng, 360, 400), cv2.IMWRITE_JPEG_QUALITY, 90)
    return root


@pytest.fixture(scope="module")
def report(photos, tmp_path_factory):
    npy_dir = tmp_path_factory.mktemp("npy")
    result = run_report(photos, size=SIDE, layout="NHWC", npy_dir=npy_dir)
    assert list(npy_dir.iterdir()) == []  # the memmap strategy's .npy is removed
    return result


# ------------------------------------------------------------------ the measured runs


def test_every_strategy_built_the_same_array(report):
    assert [run.strategy for run in report.runs] == list(STRATEGIES)
    assert [run.status for run in report.runs] == ["ok"] * 4, [run.detail for run in report.runs]
    assert report.shape == [COUNT, SIDE, SIDE, 3]
    assert report.array_bytes == ARRAY_BYTES
    for run in report.runs:
        assert run.images == COUNT
        assert run.shape == [COUNT, SIDE, SIDE, 3]
        assert run.array_bytes == ARRAY_BYTES
        assert re.fullmatch(r"[0-9a-f]{64}", run.checksum)
    assert len({run.checksum for run in report.runs}) == 1
    assert report.checksums_match is True


def test_checksum_is_the_sha256_of_preload_load(photos, report):
    images = preload.load(photos, size=SIDE, layout="NHWC", progress=False).images

    assert hashlib.sha256(images.tobytes()).hexdigest() == report.runs[0].checksum


def test_measurements_are_consistent(report):
    for run in report.runs:
        assert run.baseline_rss > 10_000_000, run.strategy  # an interpreter with NumPy and OpenCV
        assert run.peak_rss >= run.baseline_rss
        assert run.peak_above_baseline == run.peak_rss - run.baseline_rss
        assert run.ratio == pytest.approx(run.peak_above_baseline / ARRAY_BYTES)
        assert run.seconds > 0
        assert run.images_per_s == pytest.approx(COUNT / run.seconds)
        assert run.sample_count == len(run.samples) >= 2
        assert all(len(row) == 5 for row in run.samples)
        assert [row[0] for row in run.samples] == sorted(row[0] for row in run.samples)
        assert max(row[1] for row in run.samples) == run.peak_rss
        assert run.memory_profiler_peak > run.baseline_rss / 2
        assert run.threads == (report.options["workers"] if STRATEGIES[run.strategy].threaded else 1)
        # Every strategy holds the whole array at its end, by every measure that cannot miss a peak.
        assert run.peak_above_baseline >= 0.9 * ARRAY_BYTES, run.strategy
        if run.high_water is not None:
            assert run.high_water_above_baseline >= 0.9 * ARRAY_BYTES, run.strategy


def test_naive_peaks_exceed_preload_by_most_of_an_array(report):
    fast = report.get("preload")
    for name in ("naive", "naive-vstack"):
        naive = report.get(name)
        # The list and the stacked copy are alive together: one more array than preload, minus noise.
        assert naive.peak_above_baseline - fast.peak_above_baseline > 0.5 * ARRAY_BYTES, (name, naive, fast)
        assert naive.ratio > 1.5
        if naive.high_water is not None:
            assert naive.high_water_above_baseline - fast.high_water_above_baseline > 0.5 * ARRAY_BYTES


def test_memmap_keeps_the_array_out_of_anonymous_memory(report):
    mapped, ram = report.get("preload-memmap"), report.get("preload")
    if mapped.anon_above_baseline is None:
        pytest.skip("this kernel does not split RSS into RssAnon / RssFile")

    assert ram.anon_above_baseline > 0.9 * ARRAY_BYTES
    assert mapped.anon_above_baseline < 0.5 * ARRAY_BYTES
    assert mapped.file_above_baseline + mapped.shmem_above_baseline > 0.5 * ARRAY_BYTES  # the .npy's pages


# ------------------------------------------------------------------ writers


def test_json_holds_the_arithmetic_every_run_and_the_plot(report, tmp_path):
    pytest.importorskip("matplotlib")
    written = write_report(report, tmp_path / "out")

    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["plot"] == str(tmp_path / "out" / "memory.png")
    assert (tmp_path / "out" / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["version"] == 1
    assert data["plot"] == "memory.png" and data["plot_note"] == ""
    assert data["files"] == COUNT
    assert data["shape"] == [COUNT, SIDE, SIDE, 3]
    assert data["array_bytes"] == ARRAY_BYTES
    assert data["formula"] == f"N x H x W x C = {COUNT} x {SIDE} x {SIDE} x 3 = {ARRAY_BYTES:,} bytes (22.1 MB)"
    assert data["fits"] is True
    assert data["available_memory"] > 0
    assert data["checksums_match"] is True
    assert data["options"] == {
        "size": [SIDE, SIDE], "layout": "NHWC", "color": "rgb", "resize": "stretch",
        "workers": report.options["workers"], "interval": 0.01,
    }
    assert set(data["machine"]) >= {"cpu", "cores", "ram_bytes", "python", "numpy", "opencv"}
    assert [run["strategy"] for run in data["runs"]] == list(STRATEGIES)
    for run in data["runs"]:
        assert set(RUN_FIELDS) <= set(run), set(RUN_FIELDS) - set(run)
        assert StrategyRun.from_dict(run) == report.get(run["strategy"])


def test_markdown_shows_the_arithmetic_tables_and_plot(report, tmp_path):
    pytest.importorskip("matplotlib")
    write_report(report, tmp_path)

    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# Memory report: list-then-stack vs preload\n")
    assert f"N x H x W x C = 72 x 320 x 320 x 3 = {ARRAY_BYTES:,} bytes (22.1 MB)." in text
    assert "so the array fits" in text
    for run in report.runs:
        row = f"| {run.strategy} | {run.threads} | {run.seconds:.2f} |"
        assert row in text
        assert f"**{run.ratio:.3f}**" in text
        assert run.checksum[:16] in text
    assert "All 4 arrays are identical (same SHA-256)" in text
    assert "![RSS above baseline over time, one line per strategy](memory.png)" in text
    assert "No plot" not in text


def test_without_matplotlib_json_and_markdown_say_how_to_get_the_plot(report, tmp_path, monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError, as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)

    written = write_report(report, tmp_path)

    assert written["plot"] is None
    assert not (tmp_path / "memory.png").exists()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["plot"] is None
    assert data["plot_note"] == ('the plot needs matplotlib: pip install "preload-images[plot]" '
                                 '(from a clone of preload: pip install ".[plot]"), or just: pip install matplotlib')
    text = (tmp_path / "report.md").read_text()
    assert 'No plot: it needs matplotlib. pip install "preload-images[plot]"' in text
    assert "memory.png" not in text


# ------------------------------------------------------------------ skips and failures


def test_a_strategy_that_would_not_fit_is_skipped(photos, monkeypatch):
    paths = preload.Manifest.from_folder(photos).paths[:8]
    array_bytes = 8 * 64 * 64 * 3
    real = psutil.virtual_memory
    monkeypatch.setattr(
        psutil, "virtual_memory",
        lambda: type("Memory", (), {"available": int(1.5 * array_bytes), "total": real().total})(),
    )

    result = run_report(paths, size=64, strategies=["naive", "preload"])

    naive, fast = result.runs
    assert naive.status == "skipped"
    assert naive.detail.startswith("skipped: needs about 0.00 GB of RAM")
    assert fast.status == "ok"
    assert result.checksums_match is None  # one finished run proves nothing


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_workers_below_one_are_refused_as_by_load(photos, workers):
    paths = preload.Manifest.from_folder(photos).paths[:2]
    message = f"workers={workers!r} is not accepted; use a positive int, or None for every core"
    with pytest.raises(preload.OptionError, match=re.escape(message)):
        preload.load(paths, size=8, workers=workers)

    with pytest.raises(preload.OptionError, match=re.escape(message)):
        measure("preload", paths, DecodeOptions.create(size=8), workers=workers)
    with pytest.raises(preload.OptionError, match=re.escape(message)):
        run_report(paths, size=8, workers=workers)


def test_workers_none_is_every_usable_core(photos):
    paths = preload.Manifest.from_folder(photos).paths[:2]

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    result = run_report(paths, size=8, strategies=["naive", "preload"], workers=None)

    assert result.options["workers"] == usable
    assert [run.threads for run in result.runs] == [1, usable]


def test_unknown_strategy_and_missing_size_are_option_errors(photos):
    with pytest.raises(preload.OptionError, match="strategy 'fast' is not known; use one of 'naive'"):
        run_report(photos, size=8, strategies=["fast"])
    with pytest.raises(preload.OptionError, match="size=None is not accepted by the report"):
        run_report(photos, size=None)
    with pytest.raises(preload.OptionError, match="layout='NWHC' is not accepted"):
        run_report(photos, size=8, layout="NWHC")


# ------------------------------------------------------------------ command line


def test_cli_report_prints_the_table_and_writes_the_files(photos, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["report", str(photos), "--size", "32", "--limit", "5", "--strategies", "naive,preload",
               "--out", str(out)])

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == f"source   {photos}: 5 of 72 files"
    assert lines[1] == "array    N x H x W x C = 5 x 32 x 32 x 3 = 15,360 bytes (0.0 MB)"  # the CLI's NHWC default
    assert re.match(r"memory   [\d.]+ GB available: the array fits; list-then-stack needs about twice", lines[2])
    header = [line for line in lines if line.startswith("strategy ")]
    assert header and header[0].split() == [
        "strategy", "threads", "seconds", "images/s", "base", "MB", "peak", "MB", "+peak", "MB", "/", "array",
        "+anon", "MB", "+file", "MB",
    ]
    assert [line.split()[0] for line in lines if line.startswith(("naive ", "preload "))] == ["naive", "preload"]
    assert "All 2 arrays are identical (same SHA-256): only the memory strategy differs." in lines
    assert f"wrote    {out / 'report.json'}" in lines
    assert f"wrote    {out / 'report.md'}" in lines
    data = json.loads((out / "report.json").read_text())
    assert data["shape"] == [5, 32, 32, 3]
    assert [run["strategy"] for run in data["runs"]] == ["naive", "preload"]


def test_cli_report_without_source_uses_the_built_in_samples(tmp_path, capsys):
    pytest.importorskip("skimage")

    rc = main(["report", "--limit", "6", "--size", "16", "--strategies", "preload-memmap", "--out", str(tmp_path)])

    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("samples  built-in samples: 6 photos cut from scikit-image's data (seed 0), made in ")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["source"] == "built-in samples: 6 photos cut from scikit-image's data (seed 0)"
    assert data["shape"] == [6, 16, 16, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npy") == []  # the memmap's .npy is gone


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("preload: error: "), err
    return err


def test_cli_report_on_a_corrupt_file_exits_1_naming_it(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    good = write(tmp_path / "data" / "a.png", np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "data" / "b.jpg").write_bytes(open(good, "rb").read()[:30])  # a PNG's start: truncated

    rc = main(["report", str(tmp_path / "data"), "--size", "8", "--strategies", "naive,preload",
               "--out", str(tmp_path / "out")])

    assert rc == 1
    err = _one_line_error(capsys.readouterr().err)
    assert "b.jpg'" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--layout", "NWHC"], 2, "argument --layout: 'NWHC' is not accepted"),
        (["--workers", "0"], 2, "argument --workers: 0 is not accepted; use a positive int"),
        (["--out", "FILE"], 2, "FILE' is a file, not a folder"),
        (["SOURCE/missing"], 2, "missing' does not exist"),
    ],
)
def test_cli_report_user_mistakes_are_one_line_errors(photos, tmp_path, capsys, args, code, message):
    (tmp_path / "FILE").write_text("x")
    args = [a.replace("FILE", str(tmp_path / "FILE")).replace("SOURCE", str(tmp_path)) for a in args]
    if not args[0].startswith(str(tmp_path)):
        args = [str(photos), *args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]

    try:
        rc = main(["report", *args, "--size", "8", "--strategies", "preload"])
    except SystemExit as exc:  # argparse refuses the value (a usage error, one line too)
        rc = exc.code

    assert rc == code
    assert message in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["fast", ",", "naive,stack"])
def test_cli_report_unknown_strategies_are_usage_errors(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--strategies", value])

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --strategies" in err and "Traceback" not in err


# ------------------------------------------------------------------ links and FIFOs at the report's names (D7)


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Fail with TimeoutError instead of blocking forever (a FIFO opened for writing with no reader)."""

    def give_up(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_write_report_replaces_links_and_fifos_at_its_names_never_using_them(report, tmp_path, kind):
    pytest.importorskip("matplotlib")
    out, victims = tmp_path / "out", tmp_path / "victims"
    out.mkdir()
    victims.mkdir()
    for name in REPORT_FILES:
        (victims / name).write_text("SECRET")
        if kind == "link":
            (out / name).symlink_to(victims / name)
        else:
            os.mkfifo(out / name)

    with no_hang():
        written = write_report(report, out)

    assert [(victims / name).read_text() for name in REPORT_FILES] == ["SECRET"] * 3
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temporary file left
    for name in REPORT_FILES:
        assert (out / name).is_file() and not (out / name).is_symlink()
    assert json.loads((out / "report.json").read_text())["shape"] == [COUNT, SIDE, SIDE, 3]
    assert (out / "report.md").read_text().startswith("# Memory report: list-then-stack vs preload\n")
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["plot"] == str(out / "memory.png")


def test_cli_report_into_a_folder_with_planted_links_leaves_their_targets_alone(photos, tmp_path, capsys):
    out, victim = tmp_path / "rep", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("SECRET")
    for name in REPORT_FILES:
        (out / name).symlink_to(victim)

    rc = main(["report", str(photos), "--size", "8", "--limit", "3", "--strategies", "preload", "--out", str(out)])

    assert (rc, capsys.readouterr().err) == (0, "")
    assert victim.read_text() == "SECRET"
    assert json.loads((out / "report.json").read_text())["shape"] == [3, 8, 8, 3]
    assert not any((out / name).is_symlink() for name in REPORT_FILES)


def test_cli_report_refuses_a_folder_at_one_of_its_names_before_measuring(photos, tmp_path, capsys):
    out = tmp_path / "rep"
    (out / "report.md").mkdir(parents=True)

    rc = main(["report", str(photos), "--size", "8", "--strategies", "preload", "--out", str(out)])

    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""  # nothing was measured
    assert _one_line_error(captured.err) == (
        f"preload: error: --out '{out}' holds a folder named 'report.md', where the report writes that file; "
        "remove it or give another --out\n")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
