"""Is a cache still true to its sources? The file table, its rules and a fast check.

A cache remembers, for every source file, what ``stat`` said just before the
build decoded it. This module holds that record (:class:`FileTable`), the rules
that compare it with the file system now, and the engine that runs the
million ``stat`` calls of a check quickly on a local disk and on a network
file system.

The rules
---------
A file is **changed** when its size, its mtime or its ctime (all in
nanoseconds) or its inode number differ from the record. ``cp -p``,
``rsync -t`` and ``touch -d`` can put an old mtime back; nothing but the
kernel sets a ctime, so a rewrite shows in the ctime even when size and mtime
were restored. Renaming a folder changes the ctime of the folder only, not of
the files in it: swap two class folders whose files were written in one batch
(one ``touch``, ``tar x`` or ``cp -p`` gives many files the same coarse-clock
ctime) and every path would name a file with the old stamps of another. The
inode number is what such a swap cannot keep, so it is part of the record.
The device number is not: it is given out per mount (an NFS share may get
another after a reboot) and would make a cache stale for nothing. A file
system that numbers its inodes anew at every mount (FAT/exFAT, CIFS with
``noserverino``, some FUSE file systems) makes its caches stale after a
remount; a copy or a restore of the sources already did, by their ctimes.

A file is **unverifiable** when its mtime or ctime falls within the file
system's timestamp granularity of the moment the build took the record
(``stamp >= taken_ns - granularity_ns``): a second rewrite in that same tick
would leave every stamp as it was. Such files are decoded again by the next
build and listed by ``verify``; they do not make a cache stale. The
granularity is read off the stamps themselves: if any has a sub-second part
the file system keeps fine stamps, and one kernel tick (at most 10 ms on
Linux) is covered by :data:`FINE_GRANULARITY_NS`; if all are whole seconds
(FAT, ext4 with 128-byte inodes, some network servers) the record assumes
:data:`COARSE_GRANULARITY_NS` (2 s, FAT's).

A CSV source is relisted when its size, mtime or ctime changed, and a row
whose path stayed but whose **label** (by class name) changed is stale.
Labels of a path list are compared by :func:`preload.build_cache`, which is
given them again.

Folders first
-------------
Adding, removing or renaming a file changes its folder's mtime. The check
``stat``-s every folder the build listed first; only folders whose stamps
moved (or are within the granularity of the record) are listed again, so an
unchanged million-file tree is never listed. Then every file is ``stat``-ed,
folder by folder in the order of the table, so a network client's attribute
cache and the server's directory cache help.

The engine
----------
``os.stat`` releases the GIL, so threads overlap the waits. How many pays
depends on the wait, not on the cores: on a local disk a ``stat`` is a few
microseconds of CPU and a second thread only contends for the GIL; on NFS
each is a round trip (0.1-1 ms) and a few dozen in flight hide it. The engine
times a few ``stat`` calls first (:func:`probe_latency`) and picks the thread
count from that (:func:`threads_for`); ``threads=`` or the environment
variable :data:`THREADS_ENV` overrides it. :data:`DELAY_ENV` adds a sleep
before every ``stat`` (microseconds): the test hook that stands in for a
network file system in tests and ``bench/freshness.py``. Files are stat-ed
by name relative to an open folder (``dir_fd``), which spares the kernel the
walk of the whole path each time. A progress bar (``tqdm.auto``) appears
when the probe predicts more than a second.

No sampled mode
---------------
A check of a random fraction ``f`` of the files misses ``k`` changed files
with probability ``(1 - f) ** k``: 99% for one changed file at ``f = 1%``,
37% for a hundred. That cannot vouch for a cache, and what it would save
(the ``stat`` calls) the thread pool already hides, so there is none:
``check=True`` stats every file, ``check=False`` none.

Clocks
------
The record is dated by this machine's clock and the stamps come from the
file server's; a server clock far behind ours makes the window miss files
written just after the record (they are then compared by their stamps like
any other file, which catches every rewrite but one in the same tick).

The table on disk
-----------------
Stored as members of the cache's ``.index.npz`` (uncompressed, so each member
is memory-mapped in place by :func:`read_index` and nothing is parsed on
open): ``folders`` (the distinct parent folders, each with its trailing
separator, UTF-8 joined by NUL), ``folder_of`` (int32 per file), ``names``
(the base names, UTF-8 joined by NUL) and ``name_starts`` (N + 1 offsets
into ``names``: uint32, or int64 past 4 GiB of names), ``file_size``, ``mtime_ns`` and ``ctime_ns``
(int64, -1 where the file could not be stat-ed), ``inode`` (uint64 ``st_ino``, 0 where
the file could not be stat-ed), ``listing`` (the folders
the build listed, or the CSV, joined by NUL) with ``listing_stat`` (int64,
(M, 3): size, mtime_ns, ctime_ns), ``taken`` (int64: the wall clock in ns
when the record was taken, and the granularity in ns), ``labels`` and
``classes`` when known, and ``rows`` (see :mod:`preload.cache`).
Measured at 1M files named like ``0000123.png`` in 1,000 folders (before the
inode column, which adds 8): 52 bytes a file on disk (labels included), of which
a check maps 44 and an open with ``check=False`` reads only the labels.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_write, open_existing
from .errors import IncompleteCacheError, OptionError, SourceError
from .options import progress_wanted
from .sources import Manifest, _scan, _walk
from .target import read_npy_header

DELAY_ENV = "PRELOAD_STAT_DELAY_US"
THREADS_ENV = "PRELOAD_STAT_THREADS"
FINE_GRANULARITY_NS = 20_000_000  # two 10 ms kernel ticks: the stamp may lag the clock by one
COARSE_GRANULARITY_NS = 2_000_000_000
MAX_THREADS = 32  # measured: beyond ~30 threads the GIL hand-overs cost more CPU than the waits they hide
STAT_CPU_SECONDS = 32e-6  # CPU time of one stat that waits (see threads_for)
PROBE_FILES = 8
CHUNK = 512  # files per task: big enough to amortise a task, small enough to balance threads
FOLDER_FD_MIN = 8  # fewer files than this in a folder: stat full paths, skip the open/close
BAR_SECONDS = 1.0
MISSING = -1
MISSING_INODE = 0  # no file has inode 0 on Linux; unsigned, so not MISSING
_clock = time.time_ns  # the wall clock a record is dated by (a seam for tests)


# ------------------------------------------------------------------ blobs


def join_texts(texts: Sequence[str]) -> np.ndarray:
    """UTF-8 (surrogate-escaped) texts joined by NUL as a uint8 array."""
    return np.frombuffer("\0".join(texts).encode("utf-8", "surrogateescape"), np.uint8)


def split_texts(blob: np.ndarray) -> list[str]:
    text = blob.tobytes().decode("utf-8", "surrogateescape")
    return text.split("\0") if text else []


def _split_path(path: str) -> tuple[str, str]:
    """(folder with its trailing separator, name): folder + name is path exactly."""
    cut = max(path.rfind("/"), path.rfind(os.sep)) + 1
    return path[:cut], path[cut:]


# ------------------------------------------------------------------ the table


@dataclass
class FileTable:
    """Every source file as the build saw it, column by column.

    Attributes
    ----------
    folders : list of str
        Distinct parent folders, each ending in a separator ("" for none).
    folder_of : numpy.ndarray of int32
        ``folders[folder_of[i]] + name(i)`` is the path of file ``i``.
    names, name_starts : numpy.ndarray
        Base names joined by NUL (uint8) and where each starts (N + 1 int64).
    size, mtime_ns, ctime_ns : numpy.ndarray of int64
        ``stat`` of each file; -1 where it could not be stat-ed.
    inode : numpy.ndarray of uint64
        ``st_ino`` of each file; 0 where it could not be stat-ed.
    listing : list of str
        The folders the build listed (or the CSV file).
    listing_stat : numpy.ndarray of int64, shape (M, 3)
        Size, mtime_ns and ctime_ns of each listing entry.
    taken_ns, granularity_ns : int
        Wall clock when the record was taken; the timestamp granularity assumed.
    labels, classes
        As in :class:`preload.Manifest`.

    Examples
    --------
    >>> t = FileTable.from_paths(["/a/x.png", "/a/y.png", "/b/z.png"])
    >>> t.folders, t.folder_of.tolist(), t.path(2)
    (['/a/', '/b/'], [0, 0, 1], '/b/z.png')
    """

    folders: list[str]
    folder_of: np.ndarray
    names: np.ndarray
    name_starts: np.ndarray
    size: np.ndarray
    mtime_ns: np.ndarray
    ctime_ns: np.ndarray
    inode: np.ndarray
    listing: list[str] = field(default_factory=list)
    listing_stat: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    taken_ns: int = 0
    granularity_ns: int = COARSE_GRANULARITY_NS
    labels: np.ndarray | None = None
    classes: list[str] | None = None

    @classmethod
    def from_paths(cls, paths: Sequence[str], listing: Sequence[str] = (), labels=None, classes=None) -> FileTable:
        """A table of ``paths`` with no stat data yet (every column -1)."""
        index: dict[str, int] = {}
        folder_of = np.empty(len(paths), np.int32)
        names = []
        for i, path in enumerate(paths):
            folder, name = _split_path(path)
            folder_of[i] = index.setdefault(folder, len(index))
            names.append(name)
        blob = join_texts(names)
        # Names hold no NUL, so the separators give every start at once.
        starts = np.concatenate([[0], np.flatnonzero(blob == 0) + 1, [len(blob) + 1]]).astype(np.int64)
        if not names:
            starts = np.zeros(1, np.int64)
        if starts[-1] < 2**32:  # 4 bytes a file instead of 8 below 4 GiB of names (any int type reads back)
            starts = starts.astype(np.uint32)
        missing = np.full(len(paths), MISSING, np.int64)
        return cls(list(index), folder_of, blob, starts, missing, missing.copy(), missing.copy(),
                   np.full(len(paths), MISSING_INODE, np.uint64), list(listing),
                   np.full((len(listing), 3), MISSING, np.int64), 0, COARSE_GRANULARITY_NS, labels, classes)

    def __len__(self) -> int:
        return len(self.folder_of)

    def name_bytes(self, i: int) -> bytes:
        return self.names[self.name_starts[i] : self.name_starts[i + 1] - 1].tobytes()

    def path(self, i: int) -> str:
        return self.folders[self.folder_of[i]] + self.name_bytes(i).decode("utf-8", "surrogateescape")

    def paths(self) -> list[str]:
        """Every path, in table order (allocates N strings: for comparisons and small tables)."""
        names = split_texts(self.names)
        if len(names) < len(self):  # the last name was empty
            names += [""] * (len(self) - len(names))
        return [self.folders[f] + n for f, n in zip(self.folder_of.tolist(), names, strict=True)]

    def manifest(self) -> Manifest:
        return Manifest(self.paths(), self.labels, self.classes, tuple(self.listing))

    def unverifiable(self) -> np.ndarray:
        """Per file: a stamp within the granularity of the record, so a same-tick rewrite would not show."""
        since = self.taken_ns - self.granularity_ns
        return (self.mtime_ns >= since) | (self.ctime_ns >= since)

    def arrays(self) -> dict[str, np.ndarray]:
        """The members this table contributes to the index file."""
        arrays = {"folders": join_texts(self.folders), "folder_of": self.folder_of, "names": self.names,
                  "name_starts": self.name_starts, "file_size": self.size, "mtime_ns": self.mtime_ns,
                  "ctime_ns": self.ctime_ns, "inode": self.inode, "listing": join_texts(self.listing),
                  "listing_stat": self.listing_stat.reshape(-1, 3),
                  "taken": np.array([self.taken_ns, self.granularity_ns], np.int64)}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, np.int64)
        if self.classes is not None:
            arrays["classes"] = join_texts(self.classes)
        return arrays

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray]) -> FileTable:
        # Plain ndarray views of the memmaps: slicing a np.memmap costs microseconds, a view's nanoseconds.
        data = {key: value.view(np.ndarray) for key, value in data.items()}
        taken = data["taken"]
        classes = split_texts(data["classes"]) if "classes" in data else None
        return cls(split_texts(data["folders"]), data["folder_of"], data["names"], data["name_starts"],
                   data["file_size"], data["mtime_ns"], data["ctime_ns"], data["inode"], split_texts(data["listing"]),
                   np.asarray(data["listing_stat"]).reshape(-1, 3), int(taken[0]), int(taken[1]),
                   data.get("labels"), classes)


def take(files: Manifest, *, threads: int | None = None, progress: bool | None = False) -> FileTable:
    """Record ``stat`` of every file and listing entry of ``files`` now.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "a.png"), "wb") as f:
    ...     _ = f.write(b"12345")
    >>> take(Manifest([os.path.join(folder, "a.png")])).size.tolist()
    [5]
    """
    table = FileTable.from_paths(files.paths, files.listing, files.labels, files.classes)
    table.taken_ns = _clock()
    engine = StatEngine(threads=threads)
    table.listing_stat = engine.stat_paths(table.listing)
    table.size, table.mtime_ns, table.ctime_ns, table.inode = engine.stat_table(table, progress=progress,
                                                                               desc="recording")
    stamps = np.concatenate([table.mtime_ns, table.ctime_ns, table.listing_stat[:, 1:].ravel()])
    stamps = stamps[stamps >= 0]
    fine = bool(np.any(stamps % 1_000_000_000 != 0))
    table.granularity_ns = FINE_GRANULARITY_NS if fine else COARSE_GRANULARITY_NS
    return table


# ---------------------------------------------------------------- index file


def write_index(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` under a temporary name, fsync, rename."""
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def read_index(path: str) -> dict[str, np.ndarray]:
    """Every member of an index ``.npz``, memory-mapped where it is stored uncompressed.

    Raises
    ------
    IncompleteCacheError
        The file is missing, not a zip, truncated or holds a damaged member.
    """
    try:
        # A regular file only: a FIFO planted at the name must not hang a reader.
        with open(open_existing(path, follow=True), "rb") as handle, zipfile.ZipFile(handle) as archive:
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                members[info.filename[:-4]] = _member(handle, archive, info)
        return members
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        message = (f"the cache index '{path}' is damaged or missing ({exc}); build the cache again "
                   "(a build replaces a damaged cache of its own)")
        raise IncompleteCacheError(message) from exc


def _member(handle, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        message = f"bad local header for '{info.filename}'"
        raise ValueError(message)
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    handle.seek(start)
    header = read_npy_header(handle)
    if header.dtype.hasobject:
        message = f"'{info.filename}' holds Python objects"
        raise ValueError(message)
    if header.offset - start + header.data_bytes > info.file_size:
        message = f"'{info.filename}' is shorter than its header says"
        raise ValueError(message)
    if header.data_bytes == 0:
        return np.empty(header.shape, header.dtype)
    # The open file, not its name: every member comes from the one index that was opened,
    # even if a build renames a new one into place meanwhile.
    return np.memmap(handle, header.dtype, "r", header.offset, header.shape, "F" if header.fortran_order else "C")


# ---------------------------------------------------------------- the engine


def probe_latency(paths: Sequence[str], *, delay_us: float = 0.0) -> float:
    """Median seconds of one ``stat`` over up to :data:`PROBE_FILES` of ``paths``."""
    picks = list(paths[: PROBE_FILES])
    if not picks:
        return 0.0
    times = []
    for path in picks:
        started = time.perf_counter()
        if delay_us:
            time.sleep(delay_us / 1e6)
        try:
            os.stat(path)
        except OSError:
            pass
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def threads_for(latency: float) -> int:
    """Threads that keep the file system busy: few when a stat is CPU, many when it waits.

    Each ``stat`` also costs CPU (measured 15-35 us of user and system time on 2 cores
    with a wait in it: the sleep, the wake-up, the GIL handed over), so the
    cores cap the useful rate near ``cores / 32 us``; more threads than that
    rate times the latency only queue for the GIL and switch more.

    Examples
    --------
    >>> threads_for(3e-6) <= 4, 8 <= threads_for(250e-6) <= 32, threads_for(1e-3)
    (True, True, 32)
    """
    cores = os.cpu_count() or 1
    if latency < 20e-6:
        # Answered from the kernel's caches: bound by CPU and the GIL. One thread measured
        # fastest here (1M files: 3.1 s on one thread, 4.3 s on two; a bare stat loop 3.3 s).
        return 1
    return max(min(cores, 8), min(MAX_THREADS, math.ceil(latency * cores / STAT_CPU_SECONDS)))


def _env_number(name: str) -> float | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or not math.isfinite(value):
        message = f"environment variable {name}={text!r} is not accepted; give a number >= 0"
        raise OptionError(message)
    return value


class StatEngine:
    """Run many ``stat`` calls on a thread pool sized for their latency.

    Parameters
    ----------
    threads : int, optional
        Threads to use; default: :data:`THREADS_ENV` if set, else chosen from a probe.
    delay_us : float, optional
        Sleep this long before every ``stat`` (a stand-in for a network round
        trip); default: :data:`DELAY_ENV`, else none.

    Examples
    --------
    >>> engine = StatEngine(threads=2)
    >>> engine.stat_paths(["/nonexistent/x"]).tolist()
    [[-1, -1, -1]]
    """

    def __init__(self, *, threads: int | None = None, delay_us: float | None = None):
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            message = f"threads={threads!r} is not accepted; give a positive integer or None"
            raise OptionError(message)
        env_threads = _env_number(THREADS_ENV)
        self.threads = threads or (int(env_threads) if env_threads else None)
        self.delay_us = _env_number(DELAY_ENV) if delay_us is None else float(delay_us)
        self.delay_us = self.delay_us or 0.0
        self.latency: float | None = None

    def _stat(self, name, dir_fd=None) -> tuple[int, int, int]:
        if self.delay_us:
            time.sleep(self.delay_us / 1e6)
        try:
            info = os.stat(name, dir_fd=dir_fd)
        except (OSError, ValueError):
            return MISSING, MISSING, MISSING
        return info.st_size, info.st_mtime_ns, info.st_ctime_ns

    def _stat_names(self, names: list, dir_fd: int | None) -> np.ndarray:
        """(len(names), 4) int64 for names relative to ``dir_fd``: the hot loop of a check.

        Size, mtime_ns, ctime_ns and the 64 bits of ``st_ino`` (read back as
        uint64). Written flat, with no call per file but ``os.stat``: at a
        million files every 100 ns of Python here is 0.1 s.
        """
        stat = os.stat  # looked up per chunk, not at import: tests watch it
        delay = self.delay_us / 1e6
        sleep = time.sleep
        flat: list[int] = []
        add = flat.extend
        for name in names:
            if delay:
                sleep(delay)
            try:
                info = stat(name, dir_fd=dir_fd)
            except (OSError, ValueError):
                add((MISSING, MISSING, MISSING, MISSING_INODE))
                continue
            add((info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
        try:
            return np.array(flat, np.int64).reshape(-1, 4)
        except OverflowError:  # an inode number of 2**63 or more (overlayfs with xino, some servers)
            values = np.empty((len(flat) // 4, 4), np.int64)
            for k in range(3):
                values[:, k] = flat[k::4]
            values[:, 3] = np.array(flat[3::4], np.uint64).view(np.int64)
            return values

    def stat_paths(self, paths: Sequence[str]) -> np.ndarray:
        """(len(paths), 3) int64: size, mtime_ns, ctime_ns; -1 where ``stat`` failed."""
        out = np.full((len(paths), 3), MISSING, np.int64)
        if len(paths):
            with ThreadPoolExecutor(self._choose(paths)) as pool:
                for i, row in enumerate(pool.map(self._stat, paths)):
                    out[i] = row
        return out

    def _choose(self, sample: Sequence[str]) -> int:
        if self.threads:
            return self.threads
        if self.latency is None:
            self.latency = probe_latency(sample, delay_us=self.delay_us)
        return threads_for(self.latency)

    def stat_table(self, table: FileTable, *, progress: bool | None = None, rows: np.ndarray | None = None,
                   desc: str = "checking") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """size, mtime_ns, ctime_ns (int64) and inode (uint64) of the table's files (or of ``rows`` only).

        Files not stat-ed, or that could not be, are -1 (inode 0).

        ``progress``: True/False, or None for a bar (``desc``) only when the
        probe predicts a second or more and stderr is a terminal or a notebook.
        """
        count = len(table)
        size = np.full(count, MISSING, np.int64)
        mtime = size.copy()
        ctime = size.copy()
        inode = np.full(count, MISSING_INODE, np.int64)  # the bits of st_ino; viewed as uint64 at the end
        tasks = _tasks(table, rows)
        if not tasks:
            return size, mtime, ctime, inode.view(np.uint64)
        threads = self._choose([table.path(int(t[1][0])) for t in tasks[:PROBE_FILES]])
        todo = sum(len(t[1]) for t in tasks)
        # Eight tasks a thread at least, so the last round does not leave most threads idle.
        chunk = max(16, min(CHUNK, todo // (8 * threads)))
        if threads > 1 and chunk < CHUNK:
            tasks = _tasks(table, rows, chunk)
        seconds = todo * (self.latency or 2e-6) / threads
        bar = _bar(todo, progress, seconds, desc)
        lock = threading.Lock()

        def run(task: tuple[int, np.ndarray]) -> None:
            folder_id, indices = task
            folder = table.folders[folder_id]
            names = _names(table, indices)
            if len(names) >= FOLDER_FD_MIN and folder:
                try:
                    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                except OSError:  # the folder is gone: every file in it is too
                    values = np.full((len(names), 4), MISSING, np.int64)
                    values[:, 3] = MISSING_INODE
                else:
                    try:
                        values = self._stat_names(names, fd)
                    finally:
                        os.close(fd)
            else:
                prefix = os.fsencode(folder)
                values = self._stat_names([prefix + name for name in names], None)
            size[indices], mtime[indices], ctime[indices], inode[indices] = values.T
            if bar is not None:
                with lock:
                    bar.update(len(indices))

        try:
            if threads == 1:
                for task in tasks:
                    run(task)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    for _ in pool.map(run, tasks):
                        pass
        finally:
            if bar is not None:
                bar.close()
        return size, mtime, ctime, inode.view(np.uint64)


def _names(table: FileTable, indices: np.ndarray) -> list[bytes]:
    """Base names of ``indices``: one slice and split when they are consecutive (the usual case)."""
    first, last = int(indices[0]), int(indices[-1])
    if last - first + 1 == len(indices):
        starts = table.name_starts
        return table.names[starts[first] : starts[last + 1] - 1].tobytes().split(b"\0")
    return [table.name_bytes(i) for i in indices.tolist()]


def _tasks(table: FileTable, rows: np.ndarray | None, chunk: int | None = None) -> list[tuple[int, np.ndarray]]:
    """(folder id, file indices) chunks in the table's folder order."""
    index = np.arange(len(table), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    folder_of = np.asarray(table.folder_of)[index]
    if len(folder_of) > 1 and np.any(folder_of[1:] < folder_of[:-1]):
        order = np.argsort(folder_of, kind="stable")
        index, folder_of = index[order], folder_of[order]
    cuts = np.flatnonzero(folder_of[1:] != folder_of[:-1]) + 1
    chunk = chunk or CHUNK
    tasks = []
    for start, stop in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(index)].tolist(), strict=True):
        for a in range(start, stop, chunk):
            tasks.append((int(folder_of[start]), index[a : min(stop, a + chunk)]))
    return tasks


def _bar(total: int, progress: bool | None, seconds: float, desc: str):
    """A bar if asked, or by default when the work is predicted to take a second and someone watches."""
    if progress is None:
        progress = progress_wanted(None) and seconds >= BAR_SECONDS  # a terminal or a notebook watches
    if not progress:
        return None
    from tqdm.auto import tqdm  # only when a bar is shown

    return tqdm(total=total, desc=desc, unit="file", leave=False)


# ------------------------------------------------------------------ the check


@dataclass
class Verdict:
    """What a check found: lists of paths, and how it ran."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)  # the same files, listed in another order
    unverifiable: list[str] = field(default_factory=list)
    relisted: list[str] = field(default_factory=list)
    threads: int = 0
    seconds: float = 0.0

    @property
    def stale(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.relabelled or self.reordered)

    def describe(self) -> str:
        parts = []
        for what, items in (("added", self.added), ("removed", self.removed), ("changed", self.changed),
                            ("relabelled", self.relabelled), ("moved to another row", self.reordered)):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{len(items)} {what} ({', '.join(repr(p) for p in items[:3])}{more})")
        return "; ".join(parts)


def check(table: FileTable, source: dict, *, threads: int | None = None, progress: bool | None = None,
          relist: Callable[[str], Manifest] | None = None) -> Verdict:
    """Compare ``table`` with the file system now (see the module docs for the rules).

    ``source`` is the cache's source record (``kind``: folder, csv or paths,
    and ``path``); ``relist`` lists a whole source again (default
    :func:`preload.sources.manifest`).
    """
    from .sources import manifest

    relist = relist or manifest
    started = time.perf_counter()
    verdict = Verdict()
    engine = StatEngine(threads=threads)
    since = table.taken_ns - table.granularity_ns
    now = engine.stat_paths(table.listing)
    old = table.listing_stat
    moved = np.any(now != old, axis=1) | np.any(old[:, 1:] >= since, axis=1)
    moved_listing = [table.listing[i] for i in np.flatnonzero(moved)]
    verdict.relisted = moved_listing
    kind = source.get("kind")
    if (moved_listing and kind == "csv") or (kind == "folder" and table.listing and moved[0]):
        _whole_source_again(table, source, relist, verdict)
    elif moved_listing and kind == "folder":
        _folders_again(table, moved_listing, verdict)
    size, mtime, ctime, inode = engine.stat_table(table, progress=progress)
    verdict.threads = engine.threads or threads_for(engine.latency or 0.0)
    present = size >= 0
    # The inode: a folder renamed or swapped moves its files under other paths without touching their stamps.
    differs = (size != table.size) | (mtime != table.mtime_ns) | (ctime != table.ctime_ns) | (inode != table.inode)
    # A file that could not be stat-ed when the build recorded it (a dangling link, skipped or zeroed by
    # on_error) and still cannot be is unchanged; it is gone only if it was there at the build.
    gone = ~present & (table.size >= 0)
    known = set(verdict.removed)
    verdict.changed += [table.path(i) for i in np.flatnonzero(differs & present).tolist()]
    verdict.removed += [p for p in (table.path(i) for i in np.flatnonzero(gone).tolist()) if p not in known]
    verdict.unverifiable = [table.path(i) for i in np.flatnonzero(table.unverifiable() & ~differs).tolist()]
    verdict.seconds = time.perf_counter() - started
    return verdict


def _whole_source_again(table: FileTable, source: dict, relist, verdict: Verdict) -> None:
    try:
        current = relist(source["path"])
    except Exception as exc:  # the whole source is gone or unreadable
        verdict.removed = table.paths()
        verdict.relisted.append(f"{source['path']} ({exc})")
        return
    old_paths, new_paths = table.paths(), current.paths
    if old_paths != new_paths:
        old_set, new_set = set(old_paths), set(new_paths)
        verdict.added = [p for p in new_paths if p not in old_set]
        verdict.removed = [p for p in old_paths if p not in new_set]
        if not verdict.added and not verdict.removed:
            # Rows are in the list's order, and users align them with other columns by
            # position: a reordered CSV is a different array even with every file unchanged.
            verdict.reordered = [new for old, new in zip(old_paths, new_paths, strict=True) if old != new]
    old_names = _label_names(table.labels, table.classes, len(old_paths))
    new_names = _label_names(current.labels, current.classes, len(new_paths))
    new_label = dict(zip(new_paths, new_names, strict=True))
    verdict.relabelled = [p for p, name in zip(old_paths, old_names, strict=True)
                          if p in new_label and new_label[p] != name]


def _label_names(labels, classes, count: int) -> list:
    if labels is None:
        return [None] * count
    values = np.asarray(labels).tolist()
    return [classes[v] for v in values] if classes is not None else values


def _folders_again(table: FileTable, moved: list[str], verdict: Verdict) -> None:
    """List only the folders whose stamps moved; new sub-folders are walked whole."""
    known_folders = set(table.listing)
    ids = {folder: k for k, folder in enumerate(table.folders)}
    folder_of = np.asarray(table.folder_of)
    for folder in moved:
        key = os.path.join(folder, "")
        before = set()
        if key in ids:
            before = {table.name_bytes(i).decode("utf-8", "surrogateescape")
                      for i in np.flatnonzero(folder_of == ids[key]).tolist()}
        try:
            files, dirs = _scan(folder)
        except (OSError, SourceError):  # the folder itself is gone: its files show as removed by their stat
            continue
        verdict.added += [key + name for name in files if name not in before]
        verdict.removed += [key + name for name in sorted(before - set(files))]
        for name in dirs:
            sub = os.path.join(folder, name)
            if sub not in known_folders:
                try:
                    verdict.added += _walk(sub)
                except (OSError, SourceError):  # a new folder that cannot be listed is still a change
                    verdict.added.append(sub)


__all__ = ["DELAY_ENV", "THREADS_ENV", "FileTable", "StatEngine", "Verdict", "check", "probe_latency", "read_index",
           "take", "threads_for", "write_index"]
