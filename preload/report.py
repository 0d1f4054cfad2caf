"""The memory report: list-then-stack against preload, measured on the user's own files.

``preload report data/train --size 256 --layout nchw --limit 4000 --out report/``
runs every strategy below on the same files with the same options, each in
a fresh interpreter, and writes ``report.json``, ``report.md`` and
``memory.png`` (RSS over time; needs the ``plot`` extra).

Strategies (:data:`STRATEGIES`):

``naive``
    Decode each image into its own array, keep them in a list, ``np.stack``.
``naive-vstack``
    The same with ``(1, H, W, C)`` arrays and ``np.vstack`` (the classic tutorial).
``preload``
    :func:`preload.load` into one preallocated array in RAM.
``preload-memmap``
    :func:`preload.load` into a ``.npy`` memmap (``out="x.npy"``).

The naive strategies decode with preload's own :class:`~preload.decode.Decoder`
(the same read, JPEG scale, resize and channel order), so only the memory
strategy differs; the SHA-256 of every result proves the arrays are equal.

Why a fresh interpreter per strategy: a process that freed a big list keeps
much of it (malloc's arenas, page tables), which would inflate or hide the
next strategy's peak. The child (:func:`child_main`) imports everything
first, so the interpreter, NumPy and OpenCV are the *baseline*; it then
measures the strategy with :class:`~preload.memory.PeakSampler` (psutil every
10 ms, children included, RSS split into anonymous and file-backed parts)
and three cross-checks: memory_profiler's ``memory_usage(max_usage=True)``,
the kernel's ``VmHWM`` reset at the baseline, and ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import cv2
import numpy as np
import psutil

from .decode import INTERPOLATIONS, DecodeOptions, Decoder, cpu_count
from .errors import ImageDecodeError, OptionError, PreloadError, Reason
from .memory import PeakSampler, memory_profiler_peak, ru_maxrss
from .sources import manifest

REPORT_VERSION = 1
DEFAULT_SAMPLES = 400  # built-in sample images made when no SOURCE and no --limit are given
SAMPLE_SEED = 0  # fixed, so every machine reports on the same sample files
PLOT_HINT = "pip install 'preload[plot]' (or: pip install matplotlib)"


# ------------------------------------------------------------------ strategies
#
# Each strategy takes the paths, the DecodeOptions, the thread count, a .npy
# path (used by the memmap strategy only) and ``mark``, a callable that takes
# one RSS sample: the strategies call it where their peak is (after the stack,
# while the list is still alive), which a 10 ms sampler could step over.


def _decode_into(decoder: Decoder, path: str, slot: np.ndarray) -> None:
    try:
        decoder.decode_into(path, slot)
    except cv2.error as exc:  # as preload.load reports it: the data is what OpenCV refused
        raise ImageDecodeError(path, Reason.CORRUPT, f"OpenCV failed: {exc}") from None


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
        _decode_into(decoder, path, image)
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
        _decode_into(decoder, path, image[0])
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
    from .loader import load

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
    from .loader import load

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
class Run:
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
    def from_dict(cls, data: dict) -> Run:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _above(peak: int | None, base: int | None) -> int | None:
    return None if peak is None or base is None else max(0, peak - base)


def _checksum(images: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order (a memmap is read through its mapping, not copied)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(images)).cast("B")).hexdigest()


def child_main(argv: Sequence[str]) -> int:
    """Entry point of the measuring interpreter: ``SPEC.json RESULT.json``.

    Writes a :class:`Run` as JSON; exit code 1 if the strategy failed with a
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

    run = Run(strategy.name, threads=workers if strategy.threaded else 1, interval=interval)
    try:
        profiler_peak, (sampler, images, seconds, end_maxrss) = memory_profiler_peak(work, interval)
    except PreloadError as exc:
        run.status, run.detail = "failed", str(exc)
        _write_json(asdict(run), result_path)
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
    _write_json(asdict(run), result_path)
    return 0


_CHILD_CODE = "import sys\nfrom preload.report import child_main\nsys.exit(child_main(sys.argv[1:]))"
_SAMPLES_CODE = """import sys
from preload.errors import PreloadError
from preload.samples import make_samples
try:
    make_samples(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]))
except PreloadError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def _child_env() -> dict:
    """The environment for child interpreters: this copy of preload first on the path (works from a checkout)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


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
) -> Run:
    """Run one strategy on ``paths`` in a fresh interpreter and return what it cost.

    Parameters
    ----------
    strategy : str
        A key of :data:`STRATEGIES`.
    paths : sequence of str
        The files, in array order.
    options : DecodeOptions
        Size, layout, color and resize (``size`` must be set).
    workers : int or None
        preload's threads (None: every core); the naive strategies use one.
    npy_dir : path or None
        Folder for the memmap strategy's temporary ``.npy`` (default: the
        system's temporary folder); it is removed afterwards.
    interval : float
        Seconds between RSS samples.

    Returns
    -------
    Run
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
    if strategy not in STRATEGIES:
        message = f"strategy {strategy!r} is not known; use one of {', '.join(map(repr, STRATEGIES))}"
        raise OptionError(message)
    threads = workers or cpu_count()
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
        _write_json(spec, spec_path)
        parent_maxrss = ru_maxrss()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD_CODE, spec_path, result_path],
                capture_output=True,
                text=True,
                env=_child_env(),
            )
        finally:
            for leftover in (npy_path, npy_path + ".partial"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        if os.path.exists(result_path):
            with open(result_path, encoding="utf-8") as handle:
                run = Run.from_dict(json.load(handle))
        else:
            detail = _last_line(done.stderr)
            if done.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
                detail = f"killed by signal {-done.returncode} ({detail})"
            run = Run(strategy, status="failed", detail=f"the {strategy} run failed: {detail}")
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
        env=_child_env(),
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


# ------------------------------------------------------------------ the whole report


@dataclass
class Report:
    """Every strategy measured on the same files, and what they were measured on.

    Attributes
    ----------
    shape, array_bytes : list of int, int
        The array every strategy builds, and its size ``N*C*H*W`` (uint8).
    available_memory, disk_free : int
        psutil's available memory before the runs, and the free space where
        the memmap's ``.npy`` goes.
    runs : list of Run
        One per strategy, in the order they ran.
    """

    date: str
    machine: dict
    source: str
    files: int
    options: dict
    shape: list[int]
    array_bytes: int
    available_memory: int
    disk_free: int
    runs: list[Run]
    cache_warmed: bool = False

    @property
    def axes(self) -> str:
        return "N x C x H x W" if self.options["layout"] == "NCHW" else "N x H x W x C"

    @property
    def formula(self) -> str:
        """The arithmetic: ``4000 x 3 x 256 x 256 = 786,432,000 bytes (786.4 MB)``."""
        dims = " x ".join(map(str, self.shape))
        return f"{self.axes} = {dims} = {self.array_bytes:,} bytes ({_mb(self.array_bytes)} MB)"

    @property
    def fits(self) -> bool:
        return self.array_bytes <= self.available_memory

    @property
    def checksums_match(self) -> bool | None:
        """True when every finished run produced the same bytes; None with fewer than two."""
        sums = {run.checksum for run in self.runs if run.ok}
        if sum(run.ok for run in self.runs) < 2:
            return None
        return len(sums) == 1

    def run(self, strategy: str) -> Run | None:
        return next((run for run in self.runs if run.strategy == strategy), None)

    def to_dict(self) -> dict:
        data = asdict(self)
        data = {"version": REPORT_VERSION, **data}
        data["formula"] = self.formula
        data["fits"] = self.fits
        data["checksums_match"] = self.checksums_match
        return data


def _mb(count: float | None, digits: int = 1) -> str:
    return "n/a" if count is None else f"{count / 1e6:.{digits}f}"


def _gb(count: float) -> str:
    return f"{count / 1e9:.2f} GB"


def _first(paths: list[str], limit: int | None) -> list[str]:
    return paths if limit is None else paths[:limit]


def run_report(
    source=None,
    *,
    size=256,
    layout: str = "NCHW",
    color: str = "rgb",
    resize: str = "stretch",
    limit: int | None = None,
    strategies: Sequence[str] = tuple(STRATEGIES),
    workers: int | None = None,
    npy_dir: str | os.PathLike | None = None,
    interval: float = 0.01,
    echo: Callable[[str], object] = lambda line: None,
) -> Report:
    """Measure every strategy on the same files, each in a fresh interpreter.

    Parameters
    ----------
    source : folder, CSV, list of paths, Manifest, or None
        What to load (see :func:`preload.load`). None makes the built-in
        sample photos (``limit`` of them, default 400) in a temporary folder,
        which is removed afterwards.
    size, layout, color, resize
        As for :func:`preload.load`; ``size`` is required here.
    limit : int or None
        Use the first ``limit`` files of the source.
    strategies : sequence of str
        Keys of :data:`STRATEGIES`, run in this order.
    workers : int or None
        preload's threads (None: every core).
    npy_dir : path or None
        Where the memmap strategy writes its temporary ``.npy``.
    interval : float
        Seconds between RSS samples.
    echo : callable
        Called with one line of progress per step.

    Returns
    -------
    Report

    Raises
    ------
    OptionError
        A bad option or strategy name.
    PreloadError
        The source is unusable, or every strategy failed (the first error).

    Examples
    --------
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for i in range(4):
    ...     _ = cv2.imwrite(os.path.join(folder, f"{i}.png"), np.full((40, 40, 3), i, np.uint8))
    >>> report = run_report(folder, size=16, strategies=["naive", "preload"])
    >>> report.shape, [run.status for run in report.runs], report.checksums_match
    ([4, 3, 16, 16], ['ok', 'ok'], True)
    """
    if size is None:
        message = "size=None is not accepted by the report; give a size, e.g. 256 or (224, 320)"
        raise OptionError(message)
    options = DecodeOptions.create(size=size, layout=layout, color=color, resize=resize)
    names = list(strategies)
    for name in names:
        if name not in STRATEGIES:
            message = f"strategy {name!r} is not known; use one of {', '.join(map(repr, STRATEGIES))}"
            raise OptionError(message)
    if not names:
        raise OptionError("no strategies to run; name at least one of " + ", ".join(map(repr, STRATEGIES)))
    if interval <= 0:
        raise OptionError(f"interval={interval!r} is not accepted; use a positive number of seconds")

    with tempfile.TemporaryDirectory(prefix="preload-report-samples-") as samples_dir:
        if source is None:
            count = limit or DEFAULT_SAMPLES
            started = time.perf_counter()
            make_samples_subprocess(samples_dir, count)
            paths = manifest(samples_dir).paths
            label = f"built-in samples: {count} photos cut from scikit-image's data (seed {SAMPLE_SEED})"
            echo(f"samples  {label}, made in {time.perf_counter() - started:.1f} s")
        else:
            files = manifest(source)
            paths = _first(files.paths, limit)
            label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"a {type(source).__name__}"
            echo(f"source   {label}: {len(paths)} of {len(files)} files")
        return _run_all(paths, label, options, names, workers, npy_dir, interval, echo)


def _run_all(paths, label, options, names, workers, npy_dir, interval, echo) -> Report:
    shape = [len(paths), *options.slot_shape()]
    array_bytes = math.prod(shape)
    available = psutil.virtual_memory().available
    npy_folder = os.fspath(npy_dir) if npy_dir is not None else tempfile.gettempdir()
    disk_free = psutil.disk_usage(npy_folder).free
    threads = workers or cpu_count()
    report = Report(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=machine(),
        source=label,
        files=len(paths),
        options={
            "size": list(options.size),
            "layout": options.layout,
            "color": options.color,
            "resize": options.resize,
            "workers": threads,
            "interval": interval,
        },
        shape=shape,
        array_bytes=array_bytes,
        available_memory=available,
        disk_free=disk_free,
        runs=[],
    )
    echo(f"array    {report.formula}")
    echo(f"memory   {_gb(available)} available: the array {'fits' if report.fits else 'does NOT fit'}"
         f"; list-then-stack needs about twice, {_gb(2 * array_bytes)}: "
         f"{'fits' if 2 * array_bytes <= available else 'does NOT fit'}")
    report.cache_warmed = warm_cache(paths)
    for name in names:
        strategy = STRATEGIES[name]
        need = strategy.ram_factor * array_bytes
        if need > available:
            detail = f"skipped: needs about {_gb(need)} of RAM, {_gb(available)} available"
            report.runs.append(Run(name, status="skipped", detail=detail))
        elif strategy.disk and array_bytes > disk_free:
            detail = f"skipped: the .npy needs {_gb(array_bytes)}, '{npy_folder}' has {_gb(disk_free)} free"
            report.runs.append(Run(name, status="skipped", detail=detail))
        else:
            report.runs.append(measure(name, paths, options, workers=threads, npy_dir=npy_dir, interval=interval))
        echo(run_line(report.runs[-1]))
    if not any(run.ok for run in report.runs) and any(run.status == "failed" for run in report.runs):
        first = next(run for run in report.runs if run.status == "failed")
        raise PreloadError(first.detail)
    return report


def run_line(run: Run) -> str:
    """One line about a finished (or skipped, or failed) run, as the report prints it while running."""
    if not run.ok:
        return f"  {run.strategy:<15} {run.status}: {run.detail}"
    anon = f", anon +{_mb(run.anon_above_baseline)} MB" if run.anon_above_baseline is not None else ""
    return (
        f"  {run.strategy:<15} {run.seconds:7.2f} s {run.images_per_s:7.1f} img/s  "
        f"peak +{_mb(run.peak_above_baseline)} MB = {run.ratio:.3f} x the array{anon}"
    )


# ------------------------------------------------------------------ writers


COLUMNS = (
    ("strategy", "{:<15}"),
    ("threads", "{:>7}"),
    ("seconds", "{:>8}"),
    ("images/s", "{:>8}"),
    ("base MB", "{:>8}"),
    ("peak MB", "{:>8}"),
    ("+peak MB", "{:>8}"),
    ("/ array", "{:>7}"),
    ("+anon MB", "{:>8}"),
    ("+file MB", "{:>8}"),
)


def _cells(run: Run) -> list[str]:
    if not run.ok:
        return [run.strategy, run.status] + [""] * (len(COLUMNS) - 2)
    return [
        run.strategy,
        str(run.threads),
        f"{run.seconds:.2f}",
        f"{run.images_per_s:.0f}",
        _mb(run.baseline_rss),
        _mb(run.peak_rss),
        _mb(run.peak_above_baseline),
        f"{run.ratio:.3f}",
        _mb(run.anon_above_baseline),
        _mb(run.file_above_baseline),
    ]


def format_table(report: Report) -> str:
    """The results as a fixed-width text table (what ``preload report`` prints).

    ``+`` columns are peaks above the baseline (RSS after imports); ``/ array``
    is ``+peak`` divided by the array's bytes.
    """
    header = " ".join(fmt.format(name) for name, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for run in report.runs:
        lines.append(" ".join(fmt.format(cell) for (_, fmt), cell in zip(COLUMNS, _cells(run), strict=True)))
    return "\n".join(lines)


def _crosscheck_cells(run: Run) -> list[str]:
    inherited = f"<= inherited {_mb(run.ru_maxrss_at_start)}"
    return [
        run.strategy,
        _mb(run.peak_above_baseline),
        _mb(run.memory_profiler_above_baseline),
        _mb(run.high_water_above_baseline),
        _mb(run.ru_maxrss_above_baseline) if run.ru_maxrss_above_baseline is not None else inherited,
        f"`{run.checksum[:16]}`",
    ]


def markdown_tables(report: Report) -> str:
    """The results table and the cross-check table, in Markdown."""
    head = (
        "| strategy | threads | seconds | images/s | baseline RSS MB | peak RSS MB | peak - baseline MB "
        "| / array bytes | anon RSS - baseline MB | file-backed RSS - baseline MB |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in report.runs:
        cells = _cells(run)
        if run.ok:
            cells[7] = f"**{cells[7]}**"
        else:
            cells[2] = run.detail.replace("|", "/")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak above baseline, MB, by four independent means:",
        "",
        "| strategy | psutil sampler (10 ms) | memory_profiler max_usage | VmHWM (reset at baseline) "
        "| ru_maxrss | sha256 of the array |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in report.runs:
        if run.ok:
            lines.append("| " + " | ".join(_crosscheck_cells(run)) + " |")
    return "\n".join(lines)


def _summary_lines(report: Report) -> list[str]:
    lines = []
    match = report.checksums_match
    if match is True:
        ok = [run.strategy for run in report.runs if run.ok]
        lines.append(f"All {len(ok)} arrays are identical (same SHA-256): only the memory strategy differs.")
    elif match is False:
        lines.append("**The arrays differ** (SHA-256 above): the strategies did not decode the same pixels.")
    naive, fast = report.run("naive"), report.run("preload")
    if naive and fast and naive.ok and fast.ok and fast.peak_above_baseline:
        lines.append(
            f"preload's peak above baseline is {fast.peak_above_baseline / naive.peak_above_baseline:.2f} x "
            f"naive's ({_mb(fast.peak_above_baseline)} MB vs {_mb(naive.peak_above_baseline)} MB)."
        )
    mapped = report.run("preload-memmap")
    if mapped and mapped.ok and mapped.anon_above_baseline is not None:
        lines.append(
            f"Into a memmap, anonymous RSS rose only {_mb(mapped.anon_above_baseline)} MB; the "
            f"{_mb(mapped.file_above_baseline)} MB of file-backed pages are the .npy's page cache, "
            "which the kernel can write back and drop."
        )
    return lines


def write_json(report: Report, path: str | os.PathLike) -> None:
    """``report.json``: every field of the report and of each run, samples included."""
    _write_json(report.to_dict(), path)


def _write_json(data, path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, allow_nan=True)


def write_markdown(report: Report, path: str | os.PathLike, plot: str | None) -> None:
    """``report.md``: the arithmetic, the tables, the plot (or how to get it) and how to read them."""
    m = report.machine
    fit = "fits" if report.fits else "does **not** fit"
    twice = "fits" if 2 * report.array_bytes <= report.available_memory else "does **not** fit"
    lines = [
        "# Memory report: list-then-stack vs preload",
        "",
        f"- date: {report.date}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['ram_bytes'] / 2**30:.0f} GiB RAM; Python {m['python']}, NumPy {m['numpy']}, OpenCV {m['opencv']}",
        f"- source: {report.source} ({report.files} files)",
        f"- options: size {report.options['size'][0]}x{report.options['size'][1]}, layout {report.options['layout']}, "
        f"color {report.options['color']}, resize {report.options['resize']}; preload with "
        f"{report.options['workers']} threads; RSS sampled every {report.options['interval'] * 1000:g} ms",
        "",
        "## The array",
        "",
        f"{report.formula}.",
        f"Available memory before the runs: {_gb(report.available_memory)}, so the array {fit}; "
        f"list-then-stack needs about twice, {_gb(2 * report.array_bytes)}, which {twice}.",
        "",
        "## Results",
        "",
        markdown_tables(report),
        "",
        *[f"{line}  " for line in _summary_lines(report)],
        "",
    ]
    if plot:
        lines += [f"![RSS above baseline over time, one line per strategy]({plot})", ""]
    else:
        lines += [f"No plot: it needs matplotlib. {PLOT_HINT}, then run the report again.", ""]
    lines += [
        "## How to read this",
        "",
        "Each strategy ran in a fresh Python process on the same files with the same decode and resize. "
        "*baseline* is the process's RSS after importing NumPy, OpenCV and preload, before any work; "
        "*peak* is the highest RSS psutil saw, sampled every few ms (child processes included) and once more "
        "where each strategy's peak is (after the stack, while the list is still alive). "
        "*/ array bytes* is peak minus baseline divided by the array's size: list-then-stack holds every image "
        "twice at the end (the list and the stacked copy), about 2; preload decodes into the one array, about 1. "
        "*anon* and *file-backed* split RSS as `/proc/<pid>/status` does (RssAnon, RssFile): a memmap's pages are "
        "file-backed, so the kernel can write them to the .npy and drop them under pressure. "
        "The cross-checks cannot miss a peak between samples: VmHWM is reset to the baseline just before the work; "
        "ru_maxrss starts at the parent's peak (Linux hands it down), so it shows a peak only above that.",
        "",
    ]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


COLORS = {"naive": "tab:red", "naive-vstack": "tab:orange", "preload": "tab:blue", "preload-memmap": "tab:green"}


def write_plot(report: Report, path: str | os.PathLike) -> bool:
    """``memory.png``: RSS above baseline over time, one line per strategy; False without matplotlib.

    The memmap strategy also gets a dashed line for its anonymous RSS; the
    array's size is drawn as a reference line.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state
    except ImportError:
        return False
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    for run in report.runs:
        if not run.ok or not run.samples:
            continue
        times = [row[0] for row in run.samples]
        color = COLORS.get(run.strategy)
        above = [(row[1] - run.baseline_rss) / 1e6 for row in run.samples]
        axes.plot(times, above, color=color, linewidth=1.5, label=f"{run.strategy} (peak {run.ratio:.2f} x array)")
        if run.strategy == "preload-memmap" and run.baseline_anon is not None:
            anon = [(row[2] - run.baseline_anon) / 1e6 for row in run.samples if row[2] is not None]
            axes.plot(times[: len(anon)], anon, color=color, linestyle="--", linewidth=1.2,
                      label=f"{run.strategy}, anonymous RSS only")
    array_mb = report.array_bytes / 1e6
    dims = " x ".join(map(str, report.shape))
    axes.axhline(array_mb, color="black", linestyle=":", linewidth=1, label=f"array {dims} = {array_mb:.1f} MB")
    axes.axhline(2 * array_mb, color="gray", linestyle=":", linewidth=0.8, label="2 x array")
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("RSS above baseline (MB)")
    size = report.options["size"]
    axes.set_title(f"{report.files} images -> {size[0]}x{size[1]} {report.options['layout']} uint8", fontsize=11)
    axes.set_ylim(bottom=min(0, axes.get_ylim()[0]))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.savefig(path, dpi=100)
    return True


def write_report(report: Report, folder: str | os.PathLike) -> dict[str, str | None]:
    """Write ``report.json``, ``report.md`` and (with matplotlib) ``memory.png`` into ``folder``.

    Returns
    -------
    dict
        ``json``, ``markdown`` and ``plot`` paths; ``plot`` is None without matplotlib.

    Examples
    --------
    >>> import os, tempfile
    >>> folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = cv2.imwrite(os.path.join(folder, "a.png"), np.zeros((40, 40, 3), np.uint8))
    >>> written = write_report(run_report(folder, size=16, strategies=["preload"]), out)
    >>> os.path.basename(written["json"]), os.path.basename(written["markdown"])
    ('report.json', 'report.md')
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    plot_path = os.path.join(folder, "memory.png")
    plotted = write_plot(report, plot_path)
    json_path, md_path = os.path.join(folder, "report.json"), os.path.join(folder, "report.md")
    data = report.to_dict()
    data["plot"] = "memory.png" if plotted else None
    data["plot_note"] = "" if plotted else f"the plot needs matplotlib: {PLOT_HINT}"
    _write_json(data, json_path)
    write_markdown(report, md_path, "memory.png" if plotted else None)
    return {"json": json_path, "markdown": md_path, "plot": plot_path if plotted else None}


# ------------------------------------------------------------------ command line


REPORT_EPILOG = """examples:
  preload report --limit 4000 --out report/                      # built-in sample photos
  preload report data/train --size 256 --layout nchw --limit 4000 --out report/
  preload report data/train --strategies naive,preload --out report/
"""


def _strategy_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        message = f"{text!r}: use a comma-separated list of {', '.join(STRATEGIES)}"
        raise argparse.ArgumentTypeError(message)
    return names


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``preload report`` on the CLI's sub-command action; returns its parser."""
    from .cli import parse_size, positive_int  # imported here: cli imports this module

    parser = commands.add_parser(
        "report",
        help="measure peak memory of list-then-stack vs preload on your files; write JSON, Markdown, PNG",
        description="Run list-then-np.stack, list-then-np.vstack, preload into RAM and preload into a .npy memmap "
        "on the same files, each in a fresh process; report peak RSS above baseline against the array's size.",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", nargs="?", default=None,
        help="folder of class folders, flat folder, or CSV (default: make built-in sample photos in a temp folder)",
    )
    parser.add_argument("--size", type=parse_size, default=256, help="N or HxW (default: %(default)s)")
    parser.add_argument("--layout", default="NCHW", help="NHWC or NCHW (default: %(default)s)")
    parser.add_argument("--color", default="rgb", help="rgb, bgr or gray (default: %(default)s)")
    parser.add_argument("--resize", default="stretch", help="stretch, fit, cover or shorter (default: %(default)s)")
    parser.add_argument(
        "--limit", type=positive_int, default=None,
        help=f"use the first N files (without SOURCE: make N samples, default {DEFAULT_SAMPLES})",
    )
    parser.add_argument(
        "--out", default="report", help="folder for report.json/.md and memory.png (default: %(default)s)"
    )
    parser.add_argument(
        "--strategies", type=_strategy_list, default=list(STRATEGIES),
        help=f"comma-separated, run in this order (default: {','.join(STRATEGIES)})",
    )
    parser.add_argument("--workers", type=positive_int, default=None, help="preload's threads (default: every core)")
    parser.add_argument(
        "--npy-dir", default=None,
        help="where the memmap strategy writes its temporary .npy (default: the --out folder)",
    )
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run ``preload report`` from parsed arguments; errors propagate to the CLI's handlers."""
    out = os.fspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        message = f"--out '{out}' exists and is not a folder"
        raise OptionError(message)
    if args.npy_dir is not None and not os.path.isdir(args.npy_dir):
        message = f"--npy-dir '{args.npy_dir}' is not a folder"
        raise OptionError(message)
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)  # before the runs: it holds the memmap strategy's .npy by default
    try:
        report = run_report(
            args.source,
            size=args.size,
            layout=args.layout,
            color=args.color,
            resize=args.resize,
            limit=args.limit,
            strategies=args.strategies,
            workers=args.workers,
            npy_dir=args.npy_dir or out,
            echo=lambda line: print(line, flush=True),
        )
    except BaseException:
        if created and not os.listdir(out):  # a mistyped SOURCE leaves no empty folder behind
            os.rmdir(out)
        raise
    written = write_report(report, out)
    print()
    print(f"peak RSS above the baseline (after imports); / array = that divided by {_mb(report.array_bytes)} MB")
    print(format_table(report))
    for line in _summary_lines(report):
        print(line.replace("**", ""))
    print(f"wrote    {written['json']}")
    print(f"wrote    {written['markdown']}")
    if written["plot"]:
        print(f"wrote    {written['plot']}")
    else:
        print(f"no plot  memory.png needs matplotlib: {PLOT_HINT}")
    failed = [run for run in report.runs if run.status == "failed"]
    if failed:
        print(f"preload: error: {failed[0].detail}", file=sys.stderr)
        return 1
    if report.checksums_match is False:
        print("preload: error: the strategies produced different arrays (see the checksums)", file=sys.stderr)
        return 1
    return 0
