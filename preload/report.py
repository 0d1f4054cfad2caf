"""The memory report: list-then-stack against preload, measured on the user's own files.

``preload report data/train --size 256 --layout nchw --limit 4000 --out report/``
(:func:`run_report`, then :func:`write_report`) runs every strategy below on
the same files with the same options, each in a fresh interpreter, and writes
``report.json``, ``report.md`` and ``memory.png`` (RSS over time; needs the
``plot`` extra).

Strategies (:data:`preload.measure.STRATEGIES`):

``naive``
    Decode each image into its own array, keep them in a list, ``np.stack``.
``naive-vstack``
    The same with ``(1, H, W, C)`` arrays and ``np.vstack`` (the classic tutorial).
``preload``
    :func:`preload.load` into one preallocated array in RAM.
``preload-memmap``
    :func:`preload.load` into a ``.npy`` memmap (``out="x.npy"``).

How each strategy is measured (a fresh interpreter, a :class:`~preload.measure.PeakSampler`
and three cross-checks) is :mod:`preload.measure`'s business; this module
decides which strategies fit, collects their :class:`~preload.measure.StrategyRun`
records into a :class:`Report` and writes it out. The command line is in
:mod:`preload.cli`.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import psutil

from ._version import install_hint
from .atomic import atomic_write
from .errors import OptionError, PreloadError
from .measure import (
    SAMPLE_SEED,
    STRATEGIES,
    StrategyRun,
    check_strategies,
    machine,
    make_samples_subprocess,
    measure,
    save_json,
    warm_cache,
)
from .options import DecodeOptions, resolve_workers
from .sources import manifest

REPORT_VERSION = 1
DEFAULT_SAMPLES = 400  # built-in sample images made when no SOURCE and no --limit are given
PLOT_HINT = f"{install_hint('plot')}, or just: pip install matplotlib"
# What write_report puts in its folder. Each is written to a temporary name and renamed
# over its own (preload.atomic): a link, FIFO or file planted there is replaced, never used.
REPORT_FILES = ("report.json", "report.md", "memory.png")


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
    runs : list of StrategyRun
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
    runs: list[StrategyRun]
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

    def get(self, strategy: str) -> StrategyRun | None:
        """The run of ``strategy``; None if it was not asked for."""
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
        Keys of :data:`preload.measure.STRATEGIES`, run in this order.
    workers : int or None
        preload's threads (None: every usable core; 0 is refused, as by
        :func:`preload.load`).
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
    >>> import os, tempfile, cv2, numpy as np
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
    names = check_strategies(strategies)
    threads = resolve_workers(workers)
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
        return _measure_all(paths, label, options, names, threads, npy_dir, interval, echo)


def _measure_all(paths, label, options, names, threads, npy_dir, interval, echo) -> Report:
    shape = [len(paths), *options.slot_shape()]
    array_bytes = math.prod(shape)
    available = psutil.virtual_memory().available
    npy_folder = os.fspath(npy_dir) if npy_dir is not None else tempfile.gettempdir()
    disk_free = psutil.disk_usage(npy_folder).free
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
            report.runs.append(StrategyRun(name, status="skipped", detail=detail))
        elif strategy.disk and array_bytes > disk_free:
            detail = f"skipped: the .npy needs {_gb(array_bytes)}, '{npy_folder}' has {_gb(disk_free)} free"
            report.runs.append(StrategyRun(name, status="skipped", detail=detail))
        else:
            report.runs.append(measure(name, paths, options, workers=threads, npy_dir=npy_dir, interval=interval))
        echo(strategy_line(report.runs[-1]))
    if not any(run.ok for run in report.runs) and any(run.status == "failed" for run in report.runs):
        first = next(run for run in report.runs if run.status == "failed")
        raise PreloadError(first.detail)
    return report


def strategy_line(run: StrategyRun) -> str:
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


def _cells(run: StrategyRun) -> list[str]:
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


def console_lines(report: Report) -> list[str]:
    """What ``preload report`` prints once every strategy ran: a caption, the table, the summary."""
    caption = f"peak RSS above the baseline (after imports); / array = that divided by {_mb(report.array_bytes)} MB"
    return [caption, format_table(report), *(line.replace("**", "") for line in summary_lines(report))]


def _crosscheck_cells(run: StrategyRun) -> list[str]:
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


def summary_lines(report: Report) -> list[str]:
    """What the figures say, one sentence a line (Markdown emphasis included)."""
    lines = []
    match = report.checksums_match
    if match is True:
        ok = [run.strategy for run in report.runs if run.ok]
        lines.append(f"All {len(ok)} arrays are identical (same SHA-256): only the memory strategy differs.")
    elif match is False:
        lines.append("**The arrays differ** (SHA-256 above): the strategies did not decode the same pixels.")
    naive, fast = report.get("naive"), report.get("preload")
    if naive and fast and naive.ok and fast.ok and fast.peak_above_baseline:
        lines.append(
            f"preload's peak above baseline is {fast.peak_above_baseline / naive.peak_above_baseline:.2f} x "
            f"naive's ({_mb(fast.peak_above_baseline)} MB vs {_mb(naive.peak_above_baseline)} MB)."
        )
    mapped = report.get("preload-memmap")
    if mapped and mapped.ok and mapped.anon_above_baseline is not None:
        lines.append(
            f"Into a memmap, anonymous RSS rose only {_mb(mapped.anon_above_baseline)} MB; the "
            f"{_mb(mapped.file_above_baseline)} MB of file-backed pages are the .npy's page cache, "
            "which the kernel can write back and drop."
        )
    return lines


def write_json(report: Report, path: str | os.PathLike) -> None:
    """``report.json``: every field of the report and of each run, samples included."""
    save_json(report.to_dict(), path)


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
        *[f"{line}  " for line in summary_lines(report)],
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
    with atomic_write(path, "w", encoding="utf-8") as handle:  # a fixed name: never written through a link
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
    # Into a file preload.atomic created (then renamed over ``path``), not savefig(path):
    # matplotlib would open the fixed name itself, through any link or FIFO planted there.
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    return True


def write_report(report: Report, folder: str | os.PathLike) -> dict[str, str | None]:
    """Write ``report.json``, ``report.md`` and (with matplotlib) ``memory.png`` into ``folder``.

    Each through :func:`preload.atomic.atomic_write` (a temporary name, then a
    rename): whatever is at those names (a stale report, a symbolic link, a
    FIFO) is replaced, never written through or blocked on.

    Returns
    -------
    dict
        ``json``, ``markdown`` and ``plot`` paths; ``plot`` is None without matplotlib.

    Examples
    --------
    >>> import os, tempfile, cv2, numpy as np
    >>> folder, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = cv2.imwrite(os.path.join(folder, "a.png"), np.zeros((40, 40, 3), np.uint8))
    >>> written = write_report(run_report(folder, size=16, strategies=["preload"]), out)
    >>> os.path.basename(written["json"]), os.path.basename(written["markdown"])
    ('report.json', 'report.md')
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    json_path, md_path, plot_path = (os.path.join(folder, name) for name in REPORT_FILES)
    plotted = write_plot(report, plot_path)
    data = report.to_dict()
    data["plot"] = "memory.png" if plotted else None
    data["plot_note"] = "" if plotted else f"the plot needs matplotlib: {PLOT_HINT}"
    save_json(data, json_path)
    write_markdown(report, md_path, "memory.png" if plotted else None)
    return {"json": json_path, "markdown": md_path, "plot": plot_path if plotted else None}
