"""preload/measure.py: RSS sampling (/proc status, the high-water reset, children, exclusions, the split)
and the fresh-process harness (the strategies, options reaching the child, failed children).

The whole report on a larger folder, with memory relations asserted, is in test_report.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image, write
from preload import measure as harness
from preload.measure import (
    STRATEGIES,
    PeakSampler,
    RssSample,
    measure,
    memory_profiler_peak,
    read_status,
    reset_high_water,
)
from preload.options import DecodeOptions

BLOCK = 60_000_000  # far above the few MB an interpreter allocates on its own between two samples

linux_status = pytest.mark.skipif(not read_status(), reason="no /proc/<pid>/status here")


@linux_status
def test_read_status_matches_psutil():
    import psutil

    status = read_status()
    rss = psutil.Process().memory_info().rss

    assert set(status) >= {"rss", "hwm", "anon", "file", "shmem"}
    assert abs(status["rss"] - rss) < 5_000_000
    assert status["anon"] + status["file"] + status["shmem"] == pytest.approx(status["rss"], abs=1_000_000)
    assert status["hwm"] >= status["rss"] - 1_000_000


def test_read_status_of_a_missing_process_is_empty():
    assert read_status(2**22 + 12345) == {}


@linux_status
def test_reset_high_water_forgets_an_earlier_peak():
    block = np.ones(BLOCK, np.uint8)
    del block
    before = read_status()["hwm"]

    if not reset_high_water():
        pytest.skip("the kernel refused clear_refs")
    after = read_status()

    assert before - after["hwm"] > BLOCK * 0.9
    assert after["hwm"] == pytest.approx(after["rss"], abs=2_000_000)


@linux_status
def test_sampler_splits_anonymous_memory_and_keeps_the_high_water():
    # children=False: VmHWM is this process's own, so the baseline must be too
    # (a child left by an earlier test would otherwise be in one and not the other).
    with PeakSampler(reset_high_water=True, children=False) as sampler:
        block = np.ones(BLOCK, np.uint8)
    del block

    assert sampler.high_water_reset
    assert sampler.part_above_baseline("anon") > 0.9 * BLOCK
    assert sampler.part_above_baseline("file") < 0.5 * BLOCK
    assert sampler.high_water - sampler.baseline > 0.9 * BLOCK
    assert set(sampler.baseline_parts) == set(sampler.peak_parts) == {"anon", "file", "shmem"}


def test_sample_catches_a_peak_shorter_than_the_interval():
    with PeakSampler(interval=10.0) as sampler:  # no timed sample would fall inside the block's life
        block = np.ones(BLOCK, np.uint8)
        record = sampler.sample()
        del block

    assert isinstance(record, RssSample)
    assert record.rss - sampler.baseline > 0.9 * BLOCK
    assert sampler.peak_above_baseline > 0.9 * BLOCK
    assert len(sampler.samples) == 3  # entry, the explicit one, exit
    assert [s.seconds for s in sampler.samples] == sorted(s.seconds for s in sampler.samples)


# The child holds its block until its stdin is closed (at most 10 s): no fixed sleep to wait out.
CHILD = (
    "import numpy as np, select, sys; block = np.ones(%d, np.uint8); print('ready', flush=True); "
    "select.select([sys.stdin], [], [], 10)"
)


def _child_holding_a_block() -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD % BLOCK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sampler_counts_children_unless_excluded():
    with PeakSampler() as counted:
        child = _child_holding_a_block()
        time.sleep(0.3)  # new children are looked for every 0.1 s
    child.stdin.close()
    child.wait()

    child = _child_holding_a_block()
    with PeakSampler(exclude=[child.pid]) as excluding:
        time.sleep(0.3)
    child.stdin.close()
    child.wait()

    assert counted.peak_above_baseline > 0.9 * BLOCK
    assert excluding.peak_above_baseline < 0.5 * BLOCK


def test_without_proc_the_split_is_empty(monkeypatch):
    monkeypatch.setattr(harness, "read_status", lambda pid="self": {})

    with PeakSampler() as sampler:
        block = np.ones(BLOCK, np.uint8)
    del block

    assert sampler.peak_above_baseline > 0.9 * BLOCK  # psutil still works
    assert sampler.baseline_parts == sampler.peak_parts == {}
    assert sampler.part_above_baseline("anon") is None
    assert sampler.high_water is None
    assert all(s.anon is None and s.file is None for s in sampler.samples)


def test_memory_profiler_peak_runs_the_function_once():
    calls = []

    def quick():  # far shorter than five intervals: memory_profiler would call it again by default
        calls.append(1)
        return np.ones(BLOCK, np.uint8)

    peak, block = memory_profiler_peak(quick, interval=0.5)

    assert len(calls) == 1
    assert block.size == BLOCK
    assert peak > 0


# ------------------------------------------------------------------ the harness


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """6 smooth JPEGs of 360 x 400 (libjpeg's reduced decode and a shrinking resize are at work)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    for i in range(6):
        write(root / f"{i:03d}.jpg", smooth_image(rng, 360, 400), cv2.IMWRITE_JPEG_QUALITY, 90)
    return root


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize(("color", "resize"), [("rgb", "stretch"), ("bgr", "fit"), ("gray", "cover")])
def test_naive_strategies_decode_exactly_like_preload(photos, tmp_path, layout, color, resize):
    paths = preload.Manifest.from_folder(photos).paths[:6]
    options = DecodeOptions.create(size=(96, 128), layout=layout, color=color, resize=resize)
    marks = []
    expected = preload.load(paths, size=(96, 128), layout=layout, color=color, resize=resize, progress=False).images

    for name in STRATEGIES:
        kwargs = {"workers": 1, "npy_path": str(tmp_path / f"{name}.npy"), "mark": lambda: marks.append(1)}
        images = STRATEGIES[name].load(paths, options, **kwargs)
        assert images.shape == expected.shape, name
        assert images.dtype == np.uint8, name
        assert np.array_equal(images, expected), name
        del images
    assert len(marks) == len(STRATEGIES)  # every strategy marks its peak once


def test_naive_strategy_reports_a_corrupt_file_like_preload(tmp_path):
    good = write(tmp_path / "a.png", np.zeros((20, 20, 3), np.uint8))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(open(good, "rb").read()[:40])
    options = DecodeOptions.create(size=8)

    for name in ("naive", "naive-vstack"):
        with pytest.raises(preload.ImageDecodeError, match=r"cannot load '.*b\.jpg'"):
            STRATEGIES[name].load([good, str(bad)], options, workers=1, npy_path="", mark=lambda: None)


def test_naive_strategies_report_an_opencv_error_in_preload_load_words(photos, monkeypatch):
    path = preload.Manifest.from_folder(photos).paths[0]

    def refuse(*args, **kwargs):
        raise cv2.error("OpenCV(5.1.0) resize.cpp:4000: error: (-215:Assertion failed) !dsize.empty() in 'resize'")

    monkeypatch.setattr(cv2, "resize", refuse)
    with pytest.raises(preload.ImageDecodeError) as by_load:
        preload.load([path], size=8, interpolation="area", progress=False)
    options = DecodeOptions.create(size=8, interpolation="area")

    for name in ("naive", "naive-vstack"):
        with pytest.raises(preload.ImageDecodeError) as by_strategy:
            STRATEGIES[name].load([path], options, workers=1, npy_path="", mark=lambda: None)
        assert str(by_strategy.value) == str(by_load.value), name
        assert by_strategy.value.detail == "OpenCV failed: (-215:Assertion failed) !dsize.empty() in 'resize'"


# Options beyond size/layout/color/resize change the pixels too; the report must build
# with exactly the options it was given, in process and in the measuring child.
EVERY_OPTION_CASES = [
    {"interpolation": "nearest"},
    {"interpolation": "area"},
    {"resize": "fit", "fill": 200},
]
# A measuring child is a fresh interpreter, the costliest step here, so the children take
# the cases above together, as far as they combine (the two interpolations cannot).
CHILD_CASES = [{"interpolation": "nearest", "resize": "fit", "fill": 200}, {"interpolation": "area"}]


def _case_id(extra: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in extra.items())


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
@pytest.mark.parametrize("extra", EVERY_OPTION_CASES, ids=_case_id)
def test_every_decode_option_reaches_every_strategy(photos, tmp_path, extra):
    paths = preload.Manifest.from_folder(photos).paths[:3]
    kwargs = {"size": (40, 72), "layout": "NHWC", **extra}
    expected = preload.load(paths, progress=False, **kwargs).images
    auto = preload.load(paths, progress=False, size=(40, 72)).images
    assert not np.array_equal(expected, auto)  # the option does change the pixels here
    options = DecodeOptions.create(**kwargs)

    for name in STRATEGIES:
        images = STRATEGIES[name].load(paths, options, workers=1, npy_path=str(tmp_path / f"{name}.npy"),
                                       mark=lambda: None)
        assert np.array_equal(images, expected), name
        del images


@pytest.mark.parametrize("extra", CHILD_CASES, ids=_case_id)
def test_every_decode_option_reaches_the_measuring_child(photos, extra):
    assert all(any(case.items() <= merged.items() for merged in CHILD_CASES) for case in EVERY_OPTION_CASES)
    paths = preload.Manifest.from_folder(photos).paths[:3]
    kwargs = {"size": (40, 72), "layout": "NHWC", **extra}
    expected = preload.load(paths, progress=False, **kwargs).images
    for key in extra:  # each option changes the pixels on its own here: a child that dropped one would differ
        without = {k: v for k, v in kwargs.items() if k != key}
        assert not np.array_equal(preload.load(paths, progress=False, **without).images, expected), key
    options = DecodeOptions.create(**kwargs)

    for name in ("naive", "preload"):
        run = measure(name, paths, options, workers=1)
        assert run.status == "ok", run.detail
        assert run.checksum == hashlib.sha256(expected.tobytes()).hexdigest(), name


def test_a_killed_child_is_a_failed_run(photos, monkeypatch):
    monkeypatch.setattr(harness, "_CHILD_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")

    run = measure("naive", preload.Manifest.from_folder(photos).paths[:2], DecodeOptions.create(size=8))

    assert run.status == "failed"
    assert run.detail.startswith("the naive run failed: killed by signal 9")
