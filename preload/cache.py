"""On-disk caches: build once into a ``.npy``, reopen in milliseconds, survive kills.

Format, version 2
-----------------
A cache named ``train.npy`` is these files in one folder:

``train.npy``
    The images: a plain NumPy ``.npy`` (uint8, C order, shape ``(N, H, W, C)``
    or ``(N, C, H, W)``), so ``np.load("train.npy", mmap_mode="r")`` opens it
    without preload.
``train.npy.json``
    The metadata, and the cache's *commit point*: it is written last, under a
    temporary name, fsynced and renamed into place (:mod:`preload.atomic`), so
    a cache is complete if and only if this file exists. Fields: ``format`` (``"preload-cache"``),
    ``version`` (2), ``shape``, ``dtype``, ``data_offset`` and ``data_bytes``
    (where the pixels sit in ``train.npy``, to detect truncation),
    ``options`` (size, layout, color, resize, interpolation, fill, exif,
    reduce, max_pixels), ``source`` (``kind``: folder, csv or paths, and the
    folder or CSV path), ``classes``, ``count`` (source files), ``failed``
    (index, path, reason, detail of each file not loaded), ``versions``
    (preload, numpy, opencv, python), ``created`` and ``build_seconds``.
``train.npy.index.npz``
    The source files as the build saw them, an uncompressed ``.npz`` whose
    members are memory-mapped in place (:func:`preload.freshness.read_index`):
    per file its folder id, base name, size, mtime and ctime (ns); the folders;
    the folders listed (or the CSV) with their stamps; when the record was
    taken and the timestamp granularity assumed; ``labels`` (int64, or absent),
    ``classes`` (UTF-8 joined by NUL, or absent) and ``rows`` (for each row of
    the array, the index of its source file; absent when row i is file i).
    The members are listed in :mod:`preload.freshness`. About 52 bytes a file,
    kept apart from the JSON and memory-mapped so opening a million-image
    cache parses nothing per file: a path is decoded when ``Dataset.paths``
    is read.

While a build runs (or after it was killed) these exist instead of the JSON:

``train.npy.partial``
    The array being filled (full ``.npy`` header, blocks reserved on disk).
``train.npy.build.json`` / ``train.npy.build.npz``
    The plan: options, shape, source, and the per-file index as above.
``train.npy.journal``
    Which rows are final: the 8 bytes ``PRELOADJ``, a little-endian uint32
    format version (2), uint32 reserved, uint64 N, the SHA-256 of the plan JSON, then
    N bits (``np.packbits``, little bit order). A bit is set only after the
    row's pixels have been flushed to disk (``msync``) and any failure for it
    logged, so a set bit is always true, whenever the process dies.
``train.npy.failed.jsonl``
    One JSON line per file that failed under ``on_error="skip"``/``"zero"``.
``train.npy.partial.probe``
    Only during a cluster build (:mod:`preload.distributed`): a random token
    that every Dask worker must read back before it writes, so a worker that
    sees another file system is refused; overwriting it stops running tasks.
``train.npy.lock``
    Held with ``flock`` by the one process building; it holds that process's
    pid and host for the error message. The kernel releases it when the
    holder dies, so a lock left by a killed build is simply taken over. The
    (empty) file stays after a build.

Running the same build again resumes: only rows whose bit is clear are
decoded, and the result is byte-for-byte the array an uninterrupted build
writes. A build with other options refuses to continue someone else's
partial (``force=True`` starts over).

Freshness
---------
:func:`open_cache` compares every source file's size, mtime and ctime with
the index, and the folders the build listed (or the CSV) first: only a
folder whose stamps moved is listed again (a CSV is read again and its labels
compared too). Files modified within the timestamp granularity of the build
are *unverifiable*: ``verify`` lists them and the next build decodes them
again. The ``stat`` calls run on a thread pool sized from a quick latency
probe: one thread on a warm local disk, dozens on a network file system. The
rules, the engine and its knobs are in :mod:`preload.freshness`; the measured
cost is on the benchmark page (``bench/freshness.py``). Added, removed,
changed or relabelled files raise :class:`StaleCacheError`; ``check=False``
skips all of it. ``build_cache`` on a stale cache re-decodes only the
changed (and unverifiable) files when the number of files is unchanged, and
rebuilds otherwise.

Memory while building, and what RSS means for a reader
-----------------------------------------------------
The builder decodes straight into the memory-mapped file; every second or so
it flushes the written pages to disk (or sooner, once 128 MB are waiting) and
tells the kernel it no longer needs them in its address space
(``madvise(MADV_DONTNEED)``), so neither its resident file pages nor the
dirty pages in the page cache grow with N. Its anonymous memory holds no
pixels beyond one image per thread; what does grow with N is the file list
(about 300 bytes a file: 4.4 MB for 5,000 files, ~10 MB for 20,000). A process *reading*
a cache maps the file: pages it touches are counted in its RSS (as RssFile),
but they are the kernel's page cache, shared with every other reader of the
file and dropped under memory pressure, not memory the process allocated.
A large RSS after an epoch over a memmap is the page cache, not a leak.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import mmap
import os
import platform
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import freshness
from ._version import __version__
from .atomic import write_bytes
from .dataset import Dataset
from .decode import Decoder
from .errors import CacheError, CacheLockedError, Failure, IncompleteCacheError, Reason, StaleCacheError, TargetError
from .fill import common_size, fill_slots
from .freshness import FileTable, read_index
from .options import DEFAULT_MAX_PIXELS, DecodeOptions, check_on_error, progress_wanted, resolve_workers
from .quiet import quiet_opencv
from .sources import Manifest, manifest
from .target import create_npy, read_npy_header

FORMAT = "preload-cache"
VERSION = 2  # 2: the index holds ctime, folders and the time of the record (preload.freshness)
JOURNAL_MAGIC = b"PRELOADJ"
JOURNAL_HEADER = 8 + 4 + 4 + 8 + 32
COMMIT_SECONDS = 1.0  # flush + journal at least this often ...
COMMIT_BYTES = 128 << 20  # ... and whenever this many bytes of rows are waiting

# build_cache logs one INFO record saying how much of the build this call does; its
# ``todo`` and ``total`` attributes let a front end time only the rows decoded now.
logger = logging.getLogger("preload.cache")


class CacheFiles:
    """The names of every file that belongs to the cache at ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.data = os.path.abspath(os.fspath(path))
        if not self.data.lower().endswith(".npy"):
            message = f"cache path '{os.fspath(path)}' is not accepted; it must end in .npy"
            raise TargetError(message)
        self.meta = self.data + ".json"
        self.index = self.data + ".index.npz"
        self.partial = self.data + ".partial"
        self.compact = self.data + ".compact"
        self.plan = self.data + ".build.json"
        self.plan_index = self.data + ".build.npz"
        self.journal = self.data + ".journal"
        self.failures = self.data + ".failed.jsonl"
        self.lock = self.data + ".lock"
        self.probe = self.partial + ".probe"  # preload.distributed.PROBE_SUFFIX

    def build_files(self) -> list[str]:
        return [self.partial, self.compact, self.plan, self.plan_index, self.journal, self.failures, self.probe]


# ------------------------------------------------------------------ the file list


class Snapshot:
    """The source files as the build saw them: the manifest and its stat record (:mod:`preload.freshness`)."""

    def __init__(self, table: FileTable, files: Manifest | None = None):
        self.table = table
        self._manifest = files

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self.table.manifest()
        return self._manifest

    @classmethod
    def take(cls, files: Manifest) -> Snapshot:
        return cls(freshness.take(files, progress=None), files)

    def same_rows(self, other: Snapshot) -> np.ndarray:
        """Per row: same path, size, mtime and ctime in both, and verifiable here (same length assumed)."""
        same_path = np.fromiter(
            (a == b for a, b in zip(self.manifest.paths, other.manifest.paths, strict=True)), bool, len(self.manifest)
        )
        mine, theirs = self.table, other.table
        same_stat = (mine.size == theirs.size) & (mine.mtime_ns == theirs.mtime_ns) & (mine.ctime_ns == theirs.ctime_ns)
        return same_path & same_stat & ~mine.unverifiable()

    def save(self, path: str, rows: np.ndarray | None = None) -> None:
        arrays = self.table.arrays()
        if rows is not None:
            arrays["rows"] = np.asarray(rows, np.int64)
        freshness.write_index(path, arrays)

    @classmethod
    def load(cls, path: str) -> tuple[Snapshot, np.ndarray | None]:
        index = read_index(path)
        try:
            table = FileTable.from_arrays(index)
        except KeyError as exc:
            message = f"the cache index '{path}' lacks its {exc} column; build the cache again with force=True"
            raise IncompleteCacheError(message) from None
        rows = index.get("rows")
        return cls(table), None if rows is None else np.asarray(rows)


class LazyPaths(Sequence):
    """The paths of a cache, read from its memory-mapped index one at a time, when asked."""

    def __init__(self, index_path: str, rows: np.ndarray | None, count: int):
        self._index_path = index_path
        self._rows = rows
        self._count = count
        self._table: FileTable | None = None

    def _file_table(self) -> FileTable:
        if self._table is None:
            self._table = Snapshot.load(self._index_path)[0].table
        return self._table

    def _path(self, i: int) -> str:
        return self._file_table().path(i if self._rows is None else int(self._rows[i]))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._path(i) for i in range(*index.indices(self._count))]
        i = index.__index__()
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"path index {index} out of range for {self._count} paths")
        return self._path(i)

    def __iter__(self):
        paths = self._file_table().paths()
        return iter(paths if self._rows is None else [paths[i] for i in self._rows])

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"<{self._count} paths from '{self._index_path}'>"


def _source_record(source) -> tuple[object, dict]:
    """Absolute-path version of ``source`` (so the cache works from any folder) and its record."""
    if isinstance(source, (str, os.PathLike)):
        text = os.path.abspath(os.fspath(source))
        kind = "csv" if text.lower().endswith(".csv") and not os.path.isdir(text) else "folder"
        return text, {"kind": kind, "path": text}
    if isinstance(source, Manifest):
        paths = [os.path.abspath(p) for p in source.paths]
        return Manifest(paths, source.labels, source.classes), {"kind": "paths", "path": None}
    if isinstance(source, (Sequence, np.ndarray)) and not isinstance(source, (str, bytes)):
        return [os.path.abspath(os.fspath(p)) for p in source], {"kind": "paths", "path": None}
    return source, {"kind": "paths", "path": None}  # let manifest() raise its SourceError


# --------------------------------------------------------------------- the journal


class Journal:
    """The done-bitmap of a build, written only after the rows it covers are on disk."""

    def __init__(self, path: str, count: int, plan_hash: bytes, done: np.ndarray):
        self.path = path
        self.count = count
        self.plan_hash = plan_hash
        self.done = done
        self.pending: list[np.ndarray] = []
        self.pending_failures: list[Failure] = []
        self.last_commit = time.monotonic()

    @classmethod
    def create(cls, path: str, count: int, plan_hash: bytes, done: np.ndarray | None = None) -> Journal:
        journal = cls(path, count, plan_hash, np.zeros(count, bool) if done is None else done.copy())
        write_bytes(path, journal._header() + journal._bits())
        return journal

    @classmethod
    def open(cls, path: str, count: int, plan_hash: bytes) -> Journal | None:
        """The journal at ``path`` if it belongs to this plan, else None."""
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError:
            return None
        header = JOURNAL_MAGIC + np.array([VERSION, 0], "<u4").tobytes() + np.array([count], "<u8").tobytes()
        if len(raw) != JOURNAL_HEADER + (count + 7) // 8 or raw[:24] != header or raw[24:56] != plan_hash:
            return None
        bits = np.frombuffer(raw, np.uint8, offset=JOURNAL_HEADER)
        done = np.unpackbits(bits, count=count, bitorder="little").astype(bool)
        return cls(path, count, plan_hash, done)

    def _header(self) -> bytes:
        numbers = np.array([VERSION, 0], "<u4").tobytes() + np.array([self.count], "<u8").tobytes()
        return JOURNAL_MAGIC + numbers + self.plan_hash

    def _bits(self) -> bytes:
        return np.packbits(self.done, bitorder="little").tobytes()

    def add(self, rows: np.ndarray, failures: list[Failure]) -> None:
        self.pending.append(np.asarray(rows))
        self.pending_failures.extend(failures)

    def due(self, row_bytes: int) -> bool:
        """Time to commit: a second has passed, or enough bytes are dirty to bound the page cache."""
        waiting = sum(len(rows) for rows in self.pending)
        if waiting == 0:
            return False
        return waiting * row_bytes >= COMMIT_BYTES or time.monotonic() - self.last_commit >= COMMIT_SECONDS

    def commit(self, array: np.memmap, failure_log: str) -> None:
        """Data to disk, then failures, then the bits: a set bit never precedes its pixels."""
        if not self.pending:
            return
        array.flush()  # msync: the rows' pixels are on disk before any bit says so
        if self.pending_failures:
            with open(failure_log, "a", encoding="utf-8") as handle:
                for failure in self.pending_failures:
                    handle.write(_failure_line(failure))
                handle.flush()
                os.fsync(handle.fileno())
        for rows in self.pending:
            self.done[rows] = True
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, self._bits(), JOURNAL_HEADER)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.pending, self.pending_failures = [], []
        self.last_commit = time.monotonic()
        _drop_pages(array)


def _drop_pages(array: np.memmap) -> None:
    """Let go of flushed pages so the builder's RSS does not grow with the cache."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap.MADV_DONTNEED)


def _read_failures(path: str) -> list[Failure]:
    failures = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill: its bits were never set, it will be redone
                continue
            failures.append(Failure(int(record["index"]), record["path"], Reason(record["reason"]), record["detail"]))
    return failures


# ------------------------------------------------------------------------ the lock


class BuildLock:
    """An exclusive ``flock`` on ``<cache>.lock``; released by the kernel if we die."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def __enter__(self) -> BuildLock:
        import fcntl  # POSIX only; imported here so that reading caches works everywhere

        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole build
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            message = f"'{self.path}' is held by {holder}: another build of this cache is running"
            raise CacheLockedError(message) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {started})")
            handle.flush()
        except OSError as exc:  # a full or failing disk: let go of the lock, and say which file failed
            handle.close()
            raise OSError(exc.errno, exc.strerror, self.path) from exc
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        # The file stays: removing it would let a process that opened it just
        # before, and a process that creates it anew, both hold "the" lock.
        with contextlib.suppress(OSError):
            self.handle.seek(0)
            self.handle.truncate()
        self.handle.close()  # closing releases the flock


# ------------------------------------------------------------------------- helpers


def _options_record(options: DecodeOptions) -> dict:
    record = asdict(options)
    record["size"] = list(record["size"]) if record["size"] else None
    record["fill"] = list(record["fill"])
    return record


def _options_from_record(record: dict) -> DecodeOptions:
    size = tuple(record["size"]) if record["size"] else None
    return DecodeOptions(**{**record, "size": size, "fill": tuple(record["fill"])})


def _describe_difference(old: dict, new: dict) -> str:
    parts = [f"{key} {old.get(key)!r} (cache) vs {new.get(key)!r} (now)" for key in new if old.get(key) != new.get(key)]
    return ", ".join(parts)


def _write_json(path: str, record: dict) -> bytes:
    text = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
    write_bytes(path, text)
    return text


def _read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        message = f"cannot read '{path}': {exc}"
        raise CacheError(message) from exc


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _npy_rows(path: str) -> int | None:
    """Row count from a ``.npy`` header, or None if it is not a readable ``.npy``."""
    try:
        with open(path, "rb") as handle:
            return read_npy_header(handle)[0][0]
    except (OSError, ValueError, IndexError):
        return None


def _versions() -> dict:
    return {"preload": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "python": platform.python_version()}


# --------------------------------------------------------------------------- build


def build_cache(
    source,
    path: str | os.PathLike,
    *,
    size=None,
    layout: str = "NHWC",
    color: str = "rgb",
    resize: str = "stretch",
    interpolation: str | None = None,
    fill=0,
    exif: bool = True,
    reduce: bool = True,
    labels=None,
    workers: int | None = None,
    progress: bool | None = None,
    on_error: str = "raise",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    force: bool = False,
    client=None,
) -> Dataset:
    """Decode ``source`` into the on-disk cache ``path``, resuming an unfinished build.

    Takes :func:`preload.load`'s source and decode options. Calling it again
    with the same arguments is cheap: a complete, fresh cache is just opened;
    an unfinished one is finished; a stale one has its changed files decoded
    again (or is rebuilt when files were added or removed).

    Parameters
    ----------
    force : bool
        Throw away any cache or unfinished build at ``path`` and start over
        (needed to change the options of an existing cache).
    client : dask.distributed.Client, optional
        Decode on a Dask cluster instead of local threads (see
        :mod:`preload.distributed`); ``path`` must be on a file system every
        worker sees. This process still writes the journal and metadata.

    Returns
    -------
    Dataset
        As :func:`open_cache` returns it (read-only memmap).

    Raises
    ------
    CacheError
        A cache or unfinished build with other options is at ``path`` (and
        ``force`` is False), or writing failed (the partial build is kept and
        can be resumed).
    CacheLockedError
        Another process is building the same cache.

    Examples
    --------
    >>> import tempfile, os, cv2, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for k in range(3):
    ...     _ = cv2.imwrite(os.path.join(root, f"{k}.png"), np.full((8, 8, 3), k, np.uint8))
    >>> ds = build_cache(root, os.path.join(root, "cache.npy"), size=4, progress=False)
    >>> open_cache(os.path.join(root, "cache.npy")).images[:, 0, 0, 0].tolist()
    [0, 1, 2]
    """
    files = CacheFiles(path)
    options = DecodeOptions.create(size=size, layout=layout, color=color, resize=resize, interpolation=interpolation,
                                   fill=fill, exif=exif, reduce=reduce, max_pixels=max_pixels)
    on_error = check_on_error(on_error)
    threads = resolve_workers(workers)
    source, source_record = _source_record(source)
    show = progress_wanted(progress)
    if not os.path.isdir(os.path.dirname(files.data)):
        message = f"cannot build '{files.data}': the folder '{os.path.dirname(files.data)}' does not exist"
        raise TargetError(message)

    started = time.perf_counter()
    with BuildLock(files.lock), quiet_opencv() as console:
        sources = manifest(source, labels=labels)
        slot_size = options.size
        if slot_size is None:  # unreadable headers become failures of the fill below (the rows are kept)
            slot_size, _, _ = common_size(sources, options, on_error, threads)
        snapshot = Snapshot.take(sources)
        shape = (len(sources),) + options.slot_shape(slot_size)
        plan = {"format": FORMAT + "-build", "version": VERSION, "shape": list(shape),
                "options": _options_record(options), "source": source_record}
        if force:
            _remove(files.meta, files.index, files.data, *files.build_files())
        array, journal = _prepare(files, plan, snapshot)
        count = len(sources)
        if array is None:  # complete and fresh: nothing to do
            logger.info("nothing to do: '%s' is complete and fresh", files.data, extra={"todo": 0, "total": count})
            return open_cache(files.data, check=False)
        todo = np.flatnonzero(~journal.done)
        if len(todo) < count:
            logger.info("resuming: %s of %s already written", f"{count - len(todo):,}", f"{count:,}",
                        extra={"todo": len(todo), "total": count})
        else:
            logger.info("building: %s images", f"{count:,}", extra={"todo": count, "total": count})
        row_bytes = int(np.prod(shape[1:]))
        bar = tqdm(total=len(sources), initial=len(sources) - len(todo), desc="building", unit="img",
                   file=console, disable=not show)

        def on_done(rows: np.ndarray, found: list[Failure]) -> None:
            journal.add(rows, found)
            bar.update(len(rows))
            if journal.due(row_bytes):
                journal.commit(array, files.failures)

        try:
            with bar:
                if client is None:
                    fill_slots(Decoder(options), sources.paths, array, on_error=on_error, workers=threads,
                               on_done=on_done, indices=todo)
                else:
                    from .distributed import fill_on_cluster  # dask is an optional extra

                    fill_on_cluster(client, files.partial, sources.paths, options, todo, on_error=on_error,
                                    on_done=on_done)
            journal.commit(array, files.failures)
        except OSError as exc:
            with contextlib.suppress(Exception):
                journal.commit(array, files.failures)
            message = (f"writing the cache '{files.data}' failed: {exc.strerror or exc}; the unfinished build is "
                       "kept: fix the cause and run the same build again to resume")
            raise CacheError(message) from exc
        except BaseException:
            # A failed file (on_error="raise"), Ctrl-C, ...: keep every finished row resumable.
            with contextlib.suppress(Exception):
                journal.commit(array, files.failures)
            raise
        failures = _read_failures(files.failures)
        _finalize(files, plan, snapshot, failures, on_error, time.perf_counter() - started)
    return open_cache(files.data, check=False)


def _prepare(files: CacheFiles, plan: dict, snapshot: Snapshot) -> tuple[np.memmap | None, Journal | None]:
    """The partial array and its journal, ready to fill; (None, None) if a complete cache is fresh.

    Decides between: nothing to do; refresh a stale cache in place (same
    number of files: only changed rows are cleared); resume an unfinished
    build (clearing rows whose file changed meanwhile); start from scratch.
    """
    count = plan["shape"][0]
    meta = _read_json(files.meta)
    if meta is not None:
        if meta["options"] != plan["options"]:
            why = _describe_difference(meta["options"], plan["options"])
            message = f"'{files.data}' was built with other options ({why}); pass force=True (--force) to rebuild it"
            raise CacheError(message)
        _remove(*files.build_files())  # leftovers of a build killed after its commit point
        old, rows = Snapshot.load(files.index)
        if len(old.table) == count and rows is None and meta["shape"] == plan["shape"]:
            same = old.same_rows(snapshot) & _same_labels(old.manifest, snapshot.manifest)
            if same.all():
                return None, None
            # Stale, same number of files: keep unchanged rows, decode the rest.
            journal = Journal.create(files.journal, count, _plan_hash(_start_plan(files, plan, snapshot)), same)
            _write_failures(files.failures, [Failure(f["index"], f["path"], Reason(f["reason"]), f["detail"])
                                             for f in meta["failed"] if same[f["index"]]])
            _remove(files.meta, files.index)
            os.replace(files.data, files.partial)
            return np.load(files.partial, mmap_mode="r+"), journal
        _remove(files.meta, files.index, files.data)  # files added or removed: rebuild

    old_plan, old_text = _read_plan(files)
    if old_plan is not None and (old_plan.get("options"), old_plan.get("shape")) != (plan["options"], plan["shape"]):
        if old_plan.get("options") != plan["options"]:
            why = _describe_difference(old_plan.get("options", {}), plan["options"])
        else:
            why = f"shape {old_plan.get('shape')} (unfinished build) vs {plan['shape']} (now)"
        message = (f"an unfinished build of '{files.data}' with other settings is here ({why}); run it with its "
                   "own settings to finish it, or pass force=True (--force) to start over")
        raise CacheError(message)
    if old_plan is not None:
        journal = Journal.open(files.journal, count, _plan_hash(old_text))
        if not os.path.exists(files.partial) and os.path.exists(files.data):
            # Killed after renaming the finished array into place, or just after a refresh began.
            os.replace(files.data, files.partial)
        if journal is not None and _npy_rows(files.partial) == count:
            old, _ = Snapshot.load(files.plan_index)
            if len(old.table) == count:
                keep = old.same_rows(snapshot) & _same_labels(old.manifest, snapshot.manifest)
                if not keep.all():  # sources changed while the build was stopped
                    journal = Journal.create(files.journal, count, journal.plan_hash, journal.done & keep)
                    _write_failures(files.failures, [f for f in _read_failures(files.failures) if keep[f.index]])
                    _start_plan(files, plan, snapshot)
                return np.load(files.partial, mmap_mode="r+"), journal
    # Nothing usable: start from scratch.
    _remove(*files.build_files())
    array = create_npy(files.partial, tuple(plan["shape"]))
    return array, Journal.create(files.journal, count, _plan_hash(_start_plan(files, plan, snapshot)))


def _read_plan(files: CacheFiles) -> tuple[dict | None, bytes | None]:
    """The plan of an unfinished build and its exact bytes (the journal holds their hash)."""
    try:
        with open(files.plan, "rb") as handle:
            text = handle.read()
        return json.loads(text), text
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):  # cut by a kill before it was renamed into place: no usable plan
        return None, None


def _plan_hash(text: bytes) -> bytes:
    return hashlib.sha256(text).digest()


def _same_labels(a: Manifest, b: Manifest) -> np.ndarray:
    """Per row: the label is the same (all True when neither has labels)."""
    if a.labels is None and b.labels is None:
        return np.ones(len(a), bool)
    if a.labels is None or b.labels is None:
        return np.zeros(len(a), bool)
    names_a = a.classes or [str(v) for v in range(int(a.labels.max(initial=0)) + 1)]
    names_b = b.classes or [str(v) for v in range(int(b.labels.max(initial=0)) + 1)]
    return np.asarray([names_a[x] == names_b[y] for x, y in zip(a.labels, b.labels, strict=True)], bool)


def _start_plan(files: CacheFiles, plan: dict, snapshot: Snapshot) -> bytes:
    snapshot.save(files.plan_index)
    return _write_json(files.plan, plan)


def _write_failures(path: str, failures: list[Failure]) -> None:
    write_bytes(path, "".join(_failure_line(f) for f in failures).encode("utf-8"))


def _failure_line(failure: Failure) -> str:
    record = {"index": failure.index, "path": failure.path, "reason": str(failure.reason), "detail": failure.detail}
    return json.dumps(record) + "\n"


def _finalize(files: CacheFiles, plan: dict, snapshot: Snapshot, failures: list[Failure], on_error: str,
              seconds: float) -> None:
    """Compact (skip), move the array into place, then write the metadata: the commit point.

    Every step before the metadata can be repeated after a kill: compaction
    reads the partial (kept until the end) and writes a new file.
    """
    count = plan["shape"][0]
    rows = None
    if on_error == "skip" and failures:
        bad = {f.index for f in failures}
        rows = np.asarray([i for i in range(count) if i not in bad], np.int64)
        _compact_copy(files.partial, files.compact, rows)
        os.replace(files.compact, files.data)
    else:
        os.replace(files.partial, files.data)
    snapshot.save(files.index, rows)
    with open(files.data, "rb") as handle:
        shape, dtype, offset, _ = read_npy_header(handle)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "shape": list(shape),
        "dtype": "uint8",
        "data_offset": offset,
        "data_bytes": int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
        "options": plan["options"],
        "source": plan["source"],
        "classes": snapshot.manifest.classes,
        "count": count,
        "failed": [json.loads(_failure_line(f)) for f in failures],
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
    }
    _write_json(files.meta, meta)  # the commit point (its folder is fsynced too)
    _remove(*files.build_files())


def _compact_copy(source_path: str, target_path: str, rows: np.ndarray) -> None:
    """Copy the kept ``rows`` of one ``.npy`` into a new one, a block at a time."""
    source = np.load(source_path, mmap_mode="r")
    target = create_npy(target_path, (len(rows),) + source.shape[1:])
    step = 256
    for start in range(0, len(rows), step):
        target[start : start + step] = source[rows[start : start + step]]
        target.flush()
        _drop_pages(target)
    del source, target


# ---------------------------------------------------------------------------- open


def open_cache(path: str | os.PathLike, *, check: bool = True) -> Dataset:
    """Open a complete cache: a read-only memmap and its labels, without reading pixels.

    Parameters
    ----------
    check : bool
        ``stat`` every source file and source folder (see the module docs for
        the cost; the source is listed again only if a folder changed); raise
        :class:`StaleCacheError` if any file was added, removed or changed.
        ``False`` skips it and opens in about 2 ms at any size.

    Raises
    ------
    IncompleteCacheError
        No cache there, an unfinished build, or damaged files (a CacheError).
    StaleCacheError
        The sources changed since the build.

    Examples
    --------
    >>> open_cache("/nonexistent/cache.npy")
    Traceback (most recent call last):
    ...
    preload.errors.IncompleteCacheError: no cache at '/nonexistent/cache.npy' (no '/nonexistent/cache.npy.json')
    """
    files = CacheFiles(path)
    meta = _read_meta(files)
    images = np.load(files.data, mmap_mode="r")
    options = _options_from_record(meta["options"])
    index = read_index(files.index)  # memory-mapped: nothing per file is read here
    labels = np.array(index["labels"]) if "labels" in index else None
    rows = np.array(index["rows"]) if "rows" in index else None
    if check:
        _check_fresh(files, meta)
    if labels is not None and rows is not None:
        labels = labels[rows]
    failed = [Failure(f["index"], f["path"], Reason(f["reason"]), f["detail"]) for f in meta["failed"]]
    paths = LazyPaths(files.index, rows, images.shape[0])
    return Dataset(images, labels, meta["classes"], paths, failed, options, cache=files.data)


def _read_meta(files: CacheFiles) -> dict:
    meta = _read_json(files.meta)
    if meta is None:
        plan, text = _read_plan(files)
        if plan is not None:
            count = plan["shape"][0]
            journal = Journal.open(files.journal, count, _plan_hash(text))
            done = int(journal.done.sum()) if journal is not None else 0
            message = (f"'{files.data}' is an unfinished build ({done:,} of {count:,} images written); "
                       "run the same build again to finish it")
            raise IncompleteCacheError(message)
        if os.path.exists(files.data):
            message = (f"'{files.data}' has no metadata file '{files.meta}', so it is not a complete preload "
                       "cache (np.load can still read the array)")
            raise IncompleteCacheError(message)
        message = f"no cache at '{files.data}' (no '{files.meta}')"
        raise IncompleteCacheError(message)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        message = (f"'{files.meta}' is not a version-{VERSION} preload cache "
                   f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
        raise IncompleteCacheError(message)
    try:
        size = os.path.getsize(files.data)
    except OSError as exc:
        message = f"the cache array '{files.data}' is missing: {exc.strerror}"
        raise IncompleteCacheError(message) from exc
    if size != meta["data_offset"] + meta["data_bytes"]:
        message = (f"'{files.data}' is {size:,} bytes but its metadata says "
                   f"{meta['data_offset'] + meta['data_bytes']:,}: the file was truncated or replaced")
        raise IncompleteCacheError(message)
    return meta


def _check_fresh(files: CacheFiles, meta: dict) -> freshness.Verdict:
    """Raise :class:`StaleCacheError` if the sources changed; else what the check saw (unverifiable files)."""
    stored, _ = Snapshot.load(files.index)
    source = meta["source"]
    # Looked up here, not bound at import, so tests can watch the relisting.
    verdict = freshness.check(stored.table, source, relist=lambda path: manifest(path))
    if verdict.stale:
        message = (f"the cache '{files.data}' is stale: {verdict.describe()}; build it again to update it, "
                   "or open it with check=False")
        raise StaleCacheError(message, verdict.added, verdict.removed, verdict.changed + verdict.relabelled)
    return verdict


# ---------------------------------------------------------------------- inspection


def cache_info(path: str | os.PathLike) -> dict:
    """What is at ``path``: status, shape, options, classes, failures, bytes (for ``preload info``)."""
    files = CacheFiles(path)
    meta = _read_json(files.meta)
    if meta is None:
        plan, text = _read_plan(files)
        if plan is None:
            return {"path": files.data, "status": "missing"}
        count = plan["shape"][0]
        journal = Journal.open(files.journal, count, _plan_hash(text))
        return {"path": files.data, "status": "partial", "shape": plan["shape"], "options": plan["options"],
                "done": int(journal.done.sum()) if journal is not None else 0, "count": count}
    return {
        "path": files.data,
        "status": "complete",
        "shape": meta["shape"],
        "layout": meta["options"]["layout"],
        "images": meta["shape"][0],
        "count": meta["count"],
        "bytes": meta["data_bytes"],
        "classes": meta["classes"],
        "failed": meta["failed"],
        "options": meta["options"],
        "source": meta["source"],
        "versions": meta["versions"],
        "created": meta["created"],
        "build_seconds": meta["build_seconds"],
    }


def verify_cache(path: str | os.PathLike) -> dict:
    """``{"status": "fresh"|"stale"|"partial"|"missing"|"damaged", "problem": str|None, ...}``."""
    files = CacheFiles(path)
    result = {"path": files.data}
    try:
        open_cache(files.data, check=False)
        verdict = _check_fresh(files, _read_meta(files))
    except StaleCacheError as exc:
        result.update(status="stale", problem=str(exc), added=exc.added, removed=exc.removed, changed=exc.changed)
    except CacheError as exc:
        status = {"partial": "partial", "missing": "missing"}.get(cache_info(files.data)["status"], "damaged")
        result.update(status=status, problem=str(exc))
    else:
        # Fresh, but these were modified within the timestamp granularity of the build: a rewrite in
        # that same tick would not show, so the next build decodes them again.
        result.update(status="fresh", problem=None, unverifiable=verdict.unverifiable)
    return result
