"""Resident-memory sampling: how much a piece of work costs above the baseline.

:class:`PeakSampler` polls the RSS of this process (and its children) from a
background thread every few milliseconds, because the peak of a
list-then-stack load lasts only as long as the stack: reading RSS before and
after would miss it. Where Linux provides ``/proc/<pid>/status`` the sampler
also splits RSS into its anonymous (heap, ``np.empty``), file-backed (mapped
files: shared libraries, a ``.npy`` memmap) and shared-memory parts, because
a memmap's pages are file-backed and can be written back and dropped by the
kernel, while anonymous pages cannot.

Three independent figures back the sampler up, since a sampler can only
miss a peak, never invent one:

* ``ru_maxrss`` (:func:`ru_maxrss`), which cannot miss a peak but is not
  reset by ``exec``: a child starts at its parent's peak;
* ``VmHWM``, the kernel's high-water mark of this process, which
  :func:`reset_high_water` sets back to the current RSS (Linux >= 4.0), so it
  measures exactly the work in between;
* memory_profiler's ``memory_usage(max_usage=True)`` (:func:`memory_profiler_peak`),
  which polls from a separate process.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple, TypeVar

import psutil

T = TypeVar("T")

# The RSS parts of /proc/<pid>/status, by the names used in this module.
STATUS_FIELDS = {"VmRSS": "rss", "VmHWM": "hwm", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
PARTS = ("anon", "file", "shmem")
CHILDREN_EVERY = 0.1  # seconds between two listings of child processes


def read_status(pid: int | str = "self") -> dict[str, int]:
    """RSS figures of one process from ``/proc/<pid>/status``, in bytes.

    Keys are ``rss``, ``hwm`` (peak RSS since start or the last
    :func:`reset_high_water`), ``anon``, ``file`` and ``shmem``; a key is
    missing where the kernel does not report it, and the dict is empty where
    there is no ``/proc`` (macOS, Windows) or the process has exited.

    Examples
    --------
    >>> status = read_status()
    >>> sorted(status) if status else ['anon', 'file', 'hwm', 'rss', 'shmem']
    ['anon', 'file', 'hwm', 'rss', 'shmem']
    """
    found = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                key = STATUS_FIELDS.get(name)
                if key is not None:
                    found[key] = int(value.split()[0]) * 1024  # always reported in kB
    except (OSError, ValueError, IndexError):  # no /proc, process gone, or an unexpected format
        return {}
    return found


def reset_high_water() -> bool:
    """Set this process's ``VmHWM`` back to its current RSS; True if the kernel accepted it.

    Writing ``5`` to ``/proc/self/clear_refs`` does this (Linux 4.0 and
    later). Afterwards ``read_status()["hwm"]`` is the peak RSS of the work
    that follows, which no sampling interval can miss.

    Examples
    --------
    >>> isinstance(reset_high_water(), bool)
    True
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def ru_maxrss() -> int:
    """Lifetime peak RSS of this process in bytes, from ``getrusage`` (Linux reports KiB).

    On Linux a child starts with its parent's peak at the moment it was
    started, so this shows a child's own peak only when it is higher.

    Examples
    --------
    >>> ru_maxrss() > 0
    True
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_profiler_peak(func: Callable[[], T], interval: float = 0.01) -> tuple[int, T]:
    """Run ``func()`` under memory_profiler's ``memory_usage(max_usage=True)``.

    memory_profiler polls this process's RSS from a separate monitoring
    process (a child of this one); the figure is absolute, not above a
    baseline. ``max_iterations=1`` matters: without it memory_profiler runs
    a function again, with a ten times shorter interval, whenever the first
    call took fewer than five intervals.

    Returns
    -------
    (int, object)
        The highest RSS memory_profiler saw, in bytes, and ``func``'s value.

    Examples
    --------
    >>> import numpy as np
    >>> peak, block = memory_profiler_peak(lambda: np.ones(30_000_000, np.uint8))
    >>> peak > 30_000_000, block.size
    (True, 30000000)
    """
    from memory_profiler import memory_usage  # imported late: it is only a cross-check

    peak_mib, value = memory_usage(
        (func, (), {}), interval=interval, max_usage=True, retval=True, max_iterations=1, include_children=False
    )
    return int(peak_mib * 2**20), value


class RssSample(NamedTuple):
    """One sample: seconds since the sampler started, total RSS and its parts (bytes).

    ``anon``, ``file`` and ``shmem`` are None where ``/proc`` does not report them.
    """

    seconds: float
    rss: int
    anon: int | None
    file: int | None
    shmem: int | None


class PeakSampler:
    """Measure peak RSS above the RSS at entry, in total and split into anon / file / shmem.

    Parameters
    ----------
    interval : float
        Seconds between samples.
    children : bool
        Add the RSS of child processes (recursively).
    exclude : iterable of int
        Process ids not to count, e.g. a monitoring process started before
        the work (memory_profiler's): it is a copy of this process and would
        count the baseline twice.
    reset_high_water : bool
        Reset the kernel's ``VmHWM`` at entry (see :func:`reset_high_water`),
        so that :attr:`high_water` is the peak of exactly this block.

    Attributes
    ----------
    baseline, peak : int
        RSS at entry and the highest RSS seen (this process plus children).
    baseline_parts, peak_parts : dict of str to int
        The same for ``anon``, ``file`` and ``shmem`` (each part's own
        maximum, which may come from different samples); empty without ``/proc``.
    high_water : int or None
        ``VmHWM`` of this process at exit (None without ``/proc``); the exact
        peak of this block when the reset at entry succeeded (``high_water_reset``).
    samples : list of RssSample
        Every sample, the first at entry and the last at exit.
    seconds : float
        Time between entry and exit.

    Examples
    --------
    >>> import numpy as np
    >>> with PeakSampler() as sampler:
    ...     block = np.ones(50_000_000, np.uint8)
    >>> sampler.peak_above_baseline > 40_000_000
    True
    """

    def __init__(
        self,
        interval: float = 0.01,
        children: bool = True,
        *,
        exclude: Iterable[int] = (),
        reset_high_water: bool = False,
    ):
        self.interval = interval
        self.children = children
        self.exclude = frozenset(exclude)
        self.reset_high_water = reset_high_water
        self.process = psutil.Process()
        self.baseline = 0
        self.peak = 0
        self.baseline_parts: dict[str, int] = {}
        self.peak_parts: dict[str, int] = {}
        self.high_water: int | None = None
        self.high_water_reset = False
        self.samples: list[RssSample] = []
        self.seconds = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # sample() may be called from the work's thread too
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._known: list[psutil.Process] | None = None  # children found by the last listing
        self._known_at = 0.0

    def _processes(self) -> list[psutil.Process]:
        if not self.children:
            return [self.process]
        # Listing children scans every process in /proc (about 1.5 ms for 75
        # processes), so new children are looked for every CHILDREN_EVERY
        # seconds; the RSS of those known is still read at every sample.
        now = time.perf_counter()
        if self._known is None or now - self._known_at >= CHILDREN_EVERY:
            found = self.process.children(recursive=True)
            self._known = [child for child in found if child.pid not in self.exclude]
            self._known_at = now
        return [self.process, *self._known]

    def rss(self, processes: list[psutil.Process] | None = None) -> int:
        """RSS of this process plus its (not excluded) children, in bytes."""
        total = 0
        for process in processes or self._processes():
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a child exited since it was listed
                pass
        return total

    def parts(self, processes: list[psutil.Process] | None = None) -> dict[str, int]:
        """Anonymous, file-backed and shared RSS of this process plus its children; {} without /proc."""
        total = dict.fromkeys(PARTS, 0)
        for process in processes or self._processes():
            status = read_status(process.pid)
            if process is self.process and not all(part in status for part in PARTS):
                return {}  # the kernel does not split RSS (before Linux 4.5, or not Linux)
            for part in PARTS:
                total[part] += status.get(part, 0)
        return total

    @property
    def peak_above_baseline(self) -> int:
        return max(0, self.peak - self.baseline)

    def part_above_baseline(self, part: str) -> int | None:
        """Peak of ``part`` ("anon", "file" or "shmem") minus its value at entry; None without /proc."""
        if part not in self.peak_parts:
            return None
        return max(0, self.peak_parts[part] - self.baseline_parts[part])

    @property
    def ru_maxrss(self) -> int:
        """Lifetime peak RSS of this process in bytes (see :func:`ru_maxrss`)."""
        return ru_maxrss()

    def sample(self) -> RssSample:
        """Take one sample now.

        The work may call this where it knows its peak is (e.g. right after
        ``np.stack``, while the list is still alive): a peak shorter than the
        interval could fall between two timed samples.
        """
        processes = self._processes()
        parts = self.parts(processes)
        value = self.rss(processes)
        with self._lock:
            record = RssSample(time.perf_counter() - self._start, value, *(parts.get(p) for p in PARTS))
            self.peak = max(self.peak, value)
            for part, amount in parts.items():
                self.peak_parts[part] = max(self.peak_parts.get(part, 0), amount)
            self.samples.append(record)
        return record

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakSampler:
        if self.reset_high_water:
            self.high_water_reset = reset_high_water()
        self._start = time.perf_counter()
        self.samples = []
        self.peak, self.peak_parts = 0, {}
        first = self.sample()
        self.baseline = first.rss
        self.baseline_parts = dict(self.peak_parts)
        self._thread = threading.Thread(target=self._run, name="preload-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._known = None  # the last sample lists children afresh
        self.sample()
        self.high_water = read_status(os.getpid()).get("hwm")
        self.seconds = time.perf_counter() - self._start
