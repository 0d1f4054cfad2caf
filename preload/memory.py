"""Resident-memory sampling: how much a piece of work costs above the baseline.

:class:`PeakSampler` polls the RSS of this process (and its children) from a
background thread every few milliseconds, because the peak of a
list-then-stack load lasts only as long as the stack: reading RSS before and
after would miss it. ``ru_maxrss`` is recorded too, as a cross-check that
cannot miss a peak but cannot be reset either.
"""

from __future__ import annotations

import resource
import threading
import time

import psutil


class PeakSampler:
    """Measure peak RSS above the RSS at entry.

    Examples
    --------
    >>> import numpy as np
    >>> with PeakSampler() as sampler:
    ...     block = np.ones(50_000_000, np.uint8)
    >>> sampler.peak_above_baseline > 40_000_000
    True
    """

    def __init__(self, interval: float = 0.01, children: bool = True):
        self.interval = interval
        self.children = children
        self.process = psutil.Process()
        self.baseline = 0
        self.peak = 0
        self.samples: list[tuple[float, int]] = []  # (seconds since entry, RSS bytes)
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def rss(self) -> int:
        """RSS of this process plus its children, in bytes."""
        total = self.process.memory_info().rss
        if self.children:
            for child in self.process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:  # exited between listing and reading
                    pass
        return total

    @property
    def peak_above_baseline(self) -> int:
        return max(0, self.peak - self.baseline)

    @property
    def ru_maxrss(self) -> int:
        """Lifetime peak RSS of this process in bytes (Linux reports KiB)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        value = self.rss()
        self.peak = max(self.peak, value)
        self.samples.append((time.perf_counter() - self._start, value))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._start = time.perf_counter()
        self.baseline = self.peak = self.rss()
        self.samples = [(0.0, self.baseline)]
        self._thread = threading.Thread(target=self._run, name="preload-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = time.perf_counter() - self._start
