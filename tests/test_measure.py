"""RSS sampling (preload/measure.py): /proc status, the high-water reset, children, exclusions, the split."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from preload import measure
from preload.measure import PeakSampler, RssSample, memory_profiler_peak, read_status, reset_high_water

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


CHILD = "import numpy as np, time; block = np.ones(%d, np.uint8); print('ready', flush=True); time.sleep(1.5)"


def _child_holding_a_block() -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD % BLOCK], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_sampler_counts_children_unless_excluded():
    with PeakSampler() as counted:
        child = _child_holding_a_block()
        time.sleep(0.3)  # new children are looked for every 0.1 s
    child.wait()

    child = _child_holding_a_block()
    with PeakSampler(exclude=[child.pid]) as excluding:
        time.sleep(0.3)
    child.wait()

    assert counted.peak_above_baseline > 0.9 * BLOCK
    assert excluding.peak_above_baseline < 0.5 * BLOCK


def test_without_proc_the_split_is_empty(monkeypatch):
    monkeypatch.setattr(measure, "read_status", lambda pid="self": {})

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
