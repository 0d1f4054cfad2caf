"""Measuring memory: RSS sampling, and the fresh-process harness of ``preload report`` and bench/.

Sampling
--------
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

The harness
-----------
:func:`measure` runs one of the :data:`STRATEGIES` (ways to build the array:
list-then-stack, preload into RAM, preload into a memmap) on a list of files
in a fresh interpreter and returns a :class:`StrategyRun` (what it cost).
Fresh, because a process that freed a big list keeps much of it (malloc's
arenas, page tables), which would inflate or hide the next strategy's peak.
The child (:func:`child_main`) imports everything first, so the interpreter,
NumPy and OpenCV are the *baseline*; it then measures the strategy with a
:class:`PeakSampler` and the three cross-checks above.

The naive strategies decode with preload's own :class:`~preload.decode.Decoder`
(the same read, JPEG scale, resize and channel order), so only the memory
strategy differs; the SHA-256 of every result proves the arrays are equal.

Around it: :func:`child_env` (the environment that makes a child import
this copy of preload), :func:`machine` (what the figures were measured on),
:func:`make_samples_subprocess` and :func:`warm_cache`. :mod:`preload.report`
and the benchmarks in bench/ share all of it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple, TypeVar

import cv2
import numpy as np
import psutil

from .atomic import atomic_write
from .decode import Decoder
from .errors import OptionError, PreloadError
from .loader import load
from .options import INTERPOLATIONS, DecodeOptions, cpu_count, resolve_workers

T = TypeVar("T")

# The RSS parts of /proc/<pid>/status, by the names used in this module.
STATUS_FIELDS = {"VmRSS": "rss", "VmHWM": "hwm", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
PARTS = ("anon", "file", "shmem")
CHILDREN_EVERY = 0.1  # seconds between two listings of child processes
SAMPLE_SEED = 0  # fixed, so every machine measures the same sample files


# ------------------------------------------------------------------ RSS sampling


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


# ------------------------------------------------------------------ strategies
#
# Each strategy takes the paths, the DecodeOptions, the thread count, a .npy
# path (used by the memmap strategy only) and ``mark``, a callable that takes
# one RSS sample: the strategies call it where their peak is (after the stack,
# while the list is still alive), which a 10 ms sampler could step over.


def load_naive(paths: Sequence[str], options: DecodeOptions, *, workers: int, npy_path: str, mark) -> np.ndarray:
    """Decode every file into its own array, keep them in a list, then ``np.stack``.

    ``workers`` and ``npy_path`` are unused: this is the one-thread loop of
    the tutorials. At the end the list and the stacked copy are both alive.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{i}.png") for i in range(3)]
    >>> for path in paths:
    ...     _ = cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    >>> options = DecodeOptions.create(size=8, layout="NCHW")
    >>> load_naive(paths, options, workers=1, npy_path="", mark=lambda: None).shape
    (3, 3, 8, 8)
    """
    decoder = Decoder(options)
    images = []
    for path in paths:
        image = np.empty(options.slot_shape(), np.uint8)
        decoder.decode_into(path, image)
        images.append(image)
    array = np.stack(images)
    mark()
    return array


def load_naive_vstack(
    paths: Sequence[str], options: DecodeOptions, *, workers: int, npy_path: str, mark
) -> np.ndarray:
    """Like :func:`load_naive` with ``(1, ...)`` arrays and ``np.vstack`` (the classic tutorial).

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    >>> options = DecodeOptions.create(size=8)
    >>> load_naive_vstack([path, path], options, workers=1, npy_path="", mark=lambda: None).shape
    (2, 8, 8, 3)
    """
    decoder = Decoder(options)
    images = []
    for path in paths:
        image = np.empty((1,) + options.slot_shape(), np.uint8)
        decoder.decode_into(path, image[0])
        images.append(image)
    array = np.vstack(images)
    mark()
    return array


_INTERPOLATION_NAMES = {code: name for name, code in INTERPOLATIONS.items() if code is not None}


def load_kwargs(options: DecodeOptions) -> dict:
    """Every field of ``options`` as the keyword arguments of :func:`preload.load` that give it back.

    Built from the dataclass's fields, so an option added to
    :class:`DecodeOptions` reaches :func:`preload.load` (or fails loudly) instead
    of being dropped.

    Examples
    --------
    >>> options = DecodeOptions.create(size=8, interpolation="nearest", fill=9)
    >>> kwargs = load_kwargs(options)
    >>> kwargs["interpolation"], kwargs["fill"], DecodeOptions.create(**kwargs) == options
    ('nearest', (9, 9, 9), True)
    """
    kwargs = {item.name: getattr(options, item.name) for item in fields(options)}
    kwargs["interpolation"] = _INTERPOLATION_NAMES.get(options.interpolation)  # the cv2 code back to its name
    return kwargs


def options_record(options: DecodeOptions) -> dict:
    """``options`` as JSON-ready keyword arguments of :meth:`DecodeOptions.create` (for the child process)."""
    kwargs = load_kwargs(options)
    return {**kwargs, "size": list(kwargs["size"]) if kwargs["size"] else None, "fill": list(kwargs["fill"])}


def load_preload(paths: Sequence[str], options: DecodeOptions, *, workers: int, npy_path: str, mark) -> np.ndarray:
    """:func:`preload.load` into a new array in RAM.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    >>> load_preload([path], DecodeOptions.create(size=8), workers=1, npy_path="", mark=lambda: None).shape
    (1, 8, 8, 3)
    """
    array = load(list(paths), workers=workers, progress=False, **load_kwargs(options)).images
    mark()
    return array


def load_preload_memmap(
    paths: Sequence[str], options: DecodeOptions, *, workers: int, npy_path: str, mark
) -> np.ndarray:
    """:func:`preload.load` into a new ``.npy`` memmap at ``npy_path``.

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "a.png")
    >>> _ = cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    >>> npy = os.path.join(folder, "x.npy")
    >>> images = load_preload_memmap([path], DecodeOptions.create(size=8), workers=1, npy_path=npy, mark=lambda: None)
    >>> type(images).__name__, np.load(npy, mmap_mode="r").shape
    ('memmap', (1, 8, 8, 3))
    """
    array = load(list(paths), workers=workers, progress=False, out=npy_path, **load_kwargs(options)).images
    mark()
    return array


@dataclass(frozen=True)
class Strategy:
    """One way to build the array.

    ``ram_factor`` is roughly how many array-sizes of RAM it needs (checked
    before it runs, so a report never drives the machine into swap);
    ``disk`` says whether it needs the array's size on disk.
    """

    name: str
    title: str
    load: Callable[..., np.ndarray]
    ram_factor: float
    disk: bool = False
    threaded: bool = False


STRATEGIES = {
    strategy.name: strategy
    for strategy in (
        Strategy("naive", "decode into a list, then np.stack", load_naive, 2.0),
        Strategy("naive-vstack", "list of (1,...) arrays, then np.vstack", load_naive_vstack, 2.0),
        Strategy("preload", "preload.load into RAM", load_preload, 1.0, threaded=True),
        Strategy("preload-memmap", "preload.load into a .npy memmap", load_preload_memmap, 0, disk=True, threaded=True),
    )
}


# ------------------------------------------------------------------ one measured run


@dataclass
class StrategyRun:
    """What one strategy cost, measured in its own interpreter. Sizes in bytes.

    ``status`` is "ok", "skipped" (it would not fit; see ``detail``) or
    "failed" (``detail`` holds the error). ``*_above_baseline`` are peaks
    minus the value after imports; the ``anon``/``file``/``shmem`` figures are
    None where ``/proc/<pid>/status`` does not split RSS. ``ru_maxrss_above_baseline``
    is None when the child's ``ru_maxrss`` never rose above what it inherited
    from its parent (Linux hands a parent's peak down), i.e. it shows nothing.
    ``samples`` holds ``[seconds, rss, anon, file, shmem]`` rows.
    """

    strategy: str
    status: str = "ok"
    detail: str = ""
    threads: int = 1
    images: int = 0
    shape: list[int] = field(default_factory=list)
    array_bytes: int = 0
    checksum: str = ""
    seconds: float = math.nan
    images_per_s: float = math.nan
    baseline_rss: int = 0
    peak_rss: int = 0
    peak_above_baseline: int = 0
    ratio: float = math.nan
    baseline_anon: int | None = None
    peak_anon: int | None = None
    anon_above_baseline: int | None = None
    baseline_file: int | None = None
    peak_file: int | None = None
    file_above_baseline: int | None = None
    baseline_shmem: int | None = None
    peak_shmem: int | None = None
    shmem_above_baseline: int | None = None
    memory_profiler_peak: int | None = None
    memory_profiler_above_baseline: int | None = None
    high_water: int | None = None
    high_water_above_baseline: int | None = None
    ru_maxrss: int = 0
    ru_maxrss_at_start: int = 0
    ru_maxrss_above_baseline: int | None = None
    parent_ru_maxrss: int = 0
    interval: float = 0.01
    sample_count: int = 0
    samples: list[list[float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_dict(cls, data: dict) -> StrategyRun:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _above(peak: int | None, base: int | None) -> int | None:
    return None if peak is None or base is None else max(0, peak - base)


def _checksum(images: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order (a memmap is read through its mapping, not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(images)).cast("B")).hexdigest()


def child_main(argv: Sequence[str]) -> int:
    """Entry point of the measuring interpreter: ``SPEC.json RESULT.json``.

    Writes a :class:`StrategyRun` as JSON; exit code 1 if the strategy failed with a
    :class:`PreloadError` (its message is in ``detail``).
    """
    spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    import memory_profiler  # noqa: F401  loaded before the baseline, like NumPy and OpenCV

    strategy = STRATEGIES[spec["strategy"]]
    options = DecodeOptions.create(**spec["options"])
    paths = spec["paths"]
    workers = int(spec["workers"])
    interval = float(spec["interval"])
    gc.collect()
    start_maxrss = ru_maxrss()

    def work():
        # memory_profiler's monitor is already running: a forked copy of this
        # process whose RSS would count the baseline a second time.
        monitors = [child.pid for child in psutil.Process().children(recursive=True)]
        with PeakSampler(interval, exclude=monitors, reset_high_water=True) as sampler:
            started = time.perf_counter()
            images = strategy.load(paths, options, workers=workers, npy_path=spec["npy_path"], mark=sampler.sample)
            seconds = time.perf_counter() - started
            # `images` stays alive until the sampler stops: the finished array is part of the peak.
        return sampler, images, seconds, ru_maxrss()

    run = StrategyRun(strategy.name, threads=workers if strategy.threaded else 1, interval=interval)
    try:
        profiler_peak, (sampler, images, seconds, end_maxrss) = memory_profiler_peak(work, interval)
    except PreloadError as exc:
        run.status, run.detail = "failed", str(exc)
        save_json(asdict(run), result_path)
        return 1
    base = sampler.baseline_parts
    peak = sampler.peak_parts
    run.images = int(images.shape[0])
    run.shape = list(images.shape)
    run.array_bytes = int(images.nbytes)
    run.seconds = seconds
    run.images_per_s = run.images / seconds if seconds > 0 else math.nan
    run.baseline_rss, run.peak_rss = sampler.baseline, sampler.peak
    run.peak_above_baseline = sampler.peak_above_baseline
    run.ratio = run.peak_above_baseline / run.array_bytes if run.array_bytes else math.nan
    for part in ("anon", "file", "shmem"):
        setattr(run, f"baseline_{part}", base.get(part))
        setattr(run, f"peak_{part}", peak.get(part))
        setattr(run, f"{part}_above_baseline", _above(peak.get(part), base.get(part)))
    run.memory_profiler_peak = profiler_peak
    run.memory_profiler_above_baseline = _above(profiler_peak, sampler.baseline)
    if sampler.high_water_reset:
        run.high_water = sampler.high_water
        run.high_water_above_baseline = _above(sampler.high_water, sampler.baseline)
    run.ru_maxrss, run.ru_maxrss_at_start = end_maxrss, start_maxrss
    if end_maxrss > start_maxrss:
        run.ru_maxrss_above_baseline = _above(end_maxrss, sampler.baseline)
    run.sample_count = len(sampler.samples)
    run.samples = [[round(s.seconds, 4), s.rss, s.anon, s.file, s.shmem] for s in sampler.samples]
    run.checksum = _checksum(images)  # after the measurement: reading a memmap maps its pages in
    save_json(asdict(run), result_path)
    return 0


_CHILD_CODE = "import sys\nfrom preload.measure import child_main\nsys.exit(child_main(sys.argv[1:]))"
_SAMPLES_CODE = """import sys
from preload.errors import PreloadError
from preload.samples import make_samples
try:
    make_samples(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]))
except PreloadError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def child_env() -> dict[str, str]:
    """This environment with this copy of preload first on ``PYTHONPATH``, for child interpreters.

    A child started with it imports the preload it was started from, also
    when that is a checkout and another preload is installed.

    Examples
    --------
    >>> import subprocess, sys
    >>> code = "import preload.measure as m; print(m.__file__)"
    >>> out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True).stdout
    >>> out.strip() == __file__
    True
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


def save_json(data, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON (NaN allowed: a run that did not finish has NaN figures).

    Through :func:`preload.atomic.atomic_write`: ``report.json`` has a fixed
    name in a folder the user picks, and a link or FIFO planted there must be
    replaced, not written through or blocked on.
    """
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, allow_nan=True)


def check_strategies(names: Iterable[str]) -> list[str]:
    """``names`` as a list, each a key of :data:`STRATEGIES`; at least one.

    Raises
    ------
    OptionError
        An unknown name, or none.

    Examples
    --------
    >>> check_strategies(("naive", "preload"))
    ['naive', 'preload']
    """
    names = list(names)
    allowed = ", ".join(map(repr, STRATEGIES))
    for name in names:
        if name not in STRATEGIES:
            message = f"strategy {name!r} is not known; use one of {allowed}"
            raise OptionError(message)
    if not names:
        message = f"no strategies to run; name at least one of {allowed}"
        raise OptionError(message)
    return names


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"


def measure(
    strategy: str,
    paths: Sequence[str],
    options: DecodeOptions,
    *,
    workers: int | None = None,
    npy_dir: str | os.PathLike | None = None,
    interval: float = 0.01,
) -> StrategyRun:
    """Run one strategy on ``paths`` in a fresh interpreter and return what it cost.

    Parameters
    ----------
    strategy : str
        A key of :data:`STRATEGIES`.
    paths : sequence of str
        The files, in array order.
    options : DecodeOptions
        How to decode; every field reaches the child (``size`` must be set).
    workers : int or None
        preload's threads (None: every usable core; 0 is refused as by
        :func:`preload.load`); the naive strategies use one.
    npy_dir : path or None
        Folder for the memmap strategy's temporary ``.npy`` (default: the
        system's temporary folder); it is removed afterwards.
    interval : float
        Seconds between RSS samples.

    Returns
    -------
    StrategyRun
        ``status`` "ok", or "failed" with the error in ``detail``.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    >>> run = measure("naive", [path] * 4, DecodeOptions.create(size=8))
    >>> run.status, run.shape, run.array_bytes
    ('ok', [4, 8, 8, 3], 768)
    """
    check_strategies([strategy])
    threads = resolve_workers(workers)
    with tempfile.TemporaryDirectory(prefix="preload-report-") as scratch:
        npy_folder = os.fspath(npy_dir) if npy_dir is not None else scratch
        npy_path = os.path.join(npy_folder, f"preload-report-{os.getpid()}-{strategy}.npy")
        spec = {
            "strategy": strategy,
            "paths": [os.fspath(p) for p in paths],
            "options": options_record(options),
            "workers": threads,
            "npy_path": npy_path,
            "interval": interval,
        }
        spec_path, result_path = os.path.join(scratch, "spec.json"), os.path.join(scratch, "result.json")
        save_json(spec, spec_path)
        parent_maxrss = ru_maxrss()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD_CODE, spec_path, result_path],
                capture_output=True,
                text=True,
                env=child_env(),
            )
        finally:
            for leftover in (npy_path, npy_path + ".partial"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as handle:
                run = StrategyRun.from_dict(json.load(handle))
        else:
            detail = _last_line(done.stderr)
            if done.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
                detail = f"killed by signal {-done.returncode} ({detail})"
            run = StrategyRun(strategy, status="failed", detail=f"the {strategy} run failed: {detail}")
    run.parent_ru_maxrss = parent_maxrss
    return run


# ------------------------------------------------------------------ data and machine


def machine() -> dict:
    """What the figures were measured on: CPU, cores, RAM, platform and versions.

    Examples
    --------
    >>> sorted(machine())[:3]
    ['cores', 'cpu', 'numpy']
    """
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux
        pass
    return {
        "cpu": model or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def make_samples_subprocess(folder: str | os.PathLike, count: int, seed: int = SAMPLE_SEED) -> None:
    """Write ``count`` built-in sample photos into ``folder``, in a separate interpreter.

    Separate because Linux hands a parent's peak RSS (``ru_maxrss``) down to
    every child it starts: scikit-image and the photos must not raise the
    peak of the process that later starts the measured children.

    Raises
    ------
    PreloadError
        The samples could not be made (e.g. scikit-image is missing).
    """
    done = subprocess.run(
        [sys.executable, "-c", _SAMPLES_CODE, os.fspath(folder), str(count), str(seed)],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    if done.returncode != 0:
        message = f"cannot make the sample images: {_last_line(done.stderr)}"
        raise PreloadError(message)


def warm_cache(paths: Sequence[str], budget: int | None = None) -> bool:
    """Read every file once, so the first strategy does not pay alone for a cold page cache.

    Skipped (returns False) when the files are larger than ``budget`` bytes
    (default: a quarter of the available memory): they would not stay cached.
    """
    sizes = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:  # a missing file is reported by the strategies themselves
            sizes.append(0)
    budget = psutil.virtual_memory().available // 4 if budget is None else budget
    if sum(sizes) > budget:
        return False
    buffer = bytearray(max(sizes, default=0) or 1)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
        except OSError:
            pass
    return True
