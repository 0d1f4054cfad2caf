"""On-disk caches: build once into a ``.npy``, reopen in milliseconds, survive kills.

Format, version 3
-----------------
A cache named ``train.npy`` is these files in one folder:

``train.npy``
    The images: a plain NumPy ``.npy`` (uint8, C order, shape ``(N, H, W, C)``
    or ``(N, C, H, W)``), so ``np.load("train.npy", mmap_mode="r")`` opens it
    without preload.
``train.npy.json``
    The metadata, and the cache's *commit point*: it is written last, under a
    temporary name, fsynced and renamed into place (:mod:`preload.atomic`), so
    a cache is complete if and only if this file exists. Fields: ``format``
    (``"preload-cache"``), ``version`` (3), ``build_id`` (16 hex digits, new
    for every build or refresh), ``checksum`` (``"xxh3_64"``), ``shape``,
    ``dtype``, ``data_offset`` and ``data_bytes`` (where the pixels sit in
    ``train.npy``, to detect truncation), ``options`` (size, layout, color,
    resize, interpolation, fill, exif, reduce, max_pixels), ``source``
    (``kind``: folder, csv or paths, and the folder or CSV path),
    ``classes``, ``count`` (source files), ``failed`` (index, path, reason,
    detail of each file not loaded, in index order), ``versions`` (preload,
    numpy, opencv, python), ``created``, ``build_seconds``; and what binds
    the three files together (see Integrity): ``probe_rows`` (up to
    :data:`PROBE_ROWS` row numbers), ``index_digests`` (per member of the
    index, the xxh3_128 of its dtype, shape and bytes, hex) and
    ``meta_digest`` (SHA-256, hex, of every other field as JSON with sorted
    keys and no spaces). A cache of another version of this format (version
    1 kept no ctimes and no folders, version 2 no inode numbers and nothing
    binding its files together) is refused by readers and built again by
    the next build, without ``force``.
``train.npy.index.npz``
    The source files as the build saw them, an uncompressed ``.npz`` whose
    members are memory-mapped in place (:func:`preload.freshness.read_index`):
    per file its folder id, base name, size, mtime and ctime (ns), inode number; the folders;
    the folders listed (or the CSV) with their stamps; when the record was
    taken and the timestamp granularity assumed; ``labels`` (int64, or absent),
    ``classes`` (UTF-8 joined by NUL, or absent) and ``rows`` (for each row of
    the array, the index of its source file; absent when row i is file i);
    per row of the array, ``checksums`` (uint64: xxh3_64 of the row's bytes,
    computed right after the row was decoded); ``build_id`` (the metadata's,
    ASCII). The per-file members are listed in :mod:`preload.freshness`.
    About 60 bytes a file plus 8 a row,
    kept apart from the JSON and memory-mapped so opening a million-image
    cache parses nothing per file: a path is decoded when ``Dataset.paths``
    is read.
``train.npy.damaged``
    Only after ``verify_cache(deep=True)`` found rows whose bytes no longer
    match their checksums: their numbers and the ``build_id``; the next build
    checks those rows again and decodes the damaged ones anew. Until then
    :func:`open_cache` refuses the cache naming those rows (unless
    ``check=False``), and :func:`cache_info` and :func:`verify_cache` say
    "damaged".

While a build runs (or after it was killed) these exist beside (or instead
of) the files above:

``train.npy.partial``
    The array being filled (full ``.npy`` header, blocks reserved on disk).
``train.npy.partial.next``
    Only while a resumed build whose files were added, removed or moved
    copies the finished rows to their new places; it then replaces
    ``train.npy.partial``.
``train.npy.build.json`` / ``train.npy.build.npz``
    The plan: options, shape, source, ``build_id``, and the per-file index as above.
``train.npy.journal``
    Which rows are final: the 8 bytes ``PRELOADJ``, a little-endian uint32
    format version (3), uint32 reserved, uint64 N, the SHA-256 of the plan
    JSON (so of its ``build_id``), then N bits (``np.packbits``, little bit
    order). A bit is set only after the row's pixels have been flushed to
    disk (``msync``), any failure for it logged and its checksum written, so
    a set bit is always true, whenever the process dies.
``train.npy.build.sums``
    N little-endian uint64: the checksum of each row whose bit is set.
``train.npy.failed.jsonl``
    One JSON line per file that failed under ``on_error="skip"``/``"zero"``.
``train.npy.compact.json`` / ``train.npy.compact``
    Only while an ``on_error="skip"`` build moves its rows towards the front
    (in place, no second copy): how far it got, and a copy of the one block
    being moved when that block overlaps its own sources.
``train.npy.partial.probe``
    Only during a cluster build (:mod:`preload.distributed`): a random token
    that every Dask worker must read back before it writes, so a worker that
    sees another file system is refused; overwriting it stops running tasks.
``train.npy.lock``
    Held with ``flock`` by every process writing ``train.npy``: a build, or a
    ``load(out="train.npy")`` (:class:`preload.target.PathLock`). It holds the
    holder's pid and host for the error message; the kernel releases it when
    the holder dies, so a lock left by a killed build is simply taken over.
    The holder removes it when done.

``*.tmp``
    ``train.npy.json.tmp`` and the like: a small file being written
    (:mod:`preload.atomic`). A writer killed before its rename leaves it;
    the next build, holding the lock, removes those of the names above.

Running the same build again resumes: only rows whose bit is clear are
decoded, and the result is byte-for-byte the array an uninterrupted build
writes. Before resuming, the partial's header must match the plan (shape,
uint8, C order, length) and every finished row must still hash to its
checksum; a row that does not (another writer, a bad disk) is decoded again,
and so is the row of a file that changed. If files were added, removed or
moved since, the rows of unchanged files are copied (and checked against
their checksums) to their new places in ``train.npy.partial.next``, for a
new plan; a kill before its journal is written leaves a plan and journal
that do not fit the partial, and the next build starts over. A build killed
while compacting finishes the moves from its record first, then checks the
rows the same way. A build with other options refuses to continue someone
else's partial (``force=True`` starts over).

Integrity
---------
Every file preload creates here is opened with ``O_NOFOLLOW`` (``O_EXCL`` if
new): a link planted at one of these names is refused or replaced, never
written through. A folder at the cache path is refused before anything is
decoded, and a ``.npy`` that is not a preload cache is replaced only with
``force=True``. :func:`open_cache`, :func:`cache_info` and
:func:`verify_cache` check the files against each other: the ``.npy``
header's shape, dtype and order against the metadata, the metadata's
layout, color and size against the rows' shape, and every member of the
index -- its dtype, its shape, and the range of its values
(:func:`index_problems`, the one check every reader and the build run) --
against the metadata. The three files must also be the ones one build wrote
together: the metadata's ``meta_digest`` must match its fields (a hand
edit of classes, options or source shows), the index must hold the
metadata's ``build_id`` (the index or metadata of another cache shows),
each index member must match its digest (an edited label shows), the
index's classes must be the metadata's, and for a folder source every file
must lie in the source and its label name its class folder. The digests
bind against mix-ups and edits, not against someone who recomputes them:
they are not signatures. Any disagreement, or a sidecar that cannot be
parsed, is an :class:`IncompleteCacheError` ("damaged", CLI exit 3).
The ``.npy`` header is checked and the pixels are mapped through one open
file, so a build renaming a new array into place meanwhile cannot pair one
file's header with another's data; and a reader reads everything again when
the metadata (the commit point) was replaced while it read.

Every open hashes the :data:`PROBE_ROWS` rows the metadata names -- the first,
the last and those of the files changed most recently, which a refresh decoded
last -- and compares them with the index's checksums, so the ``.npy`` of
another cache, or a copy of this one from before its last refresh, is refused
for the cost of reading those few rows (:class:`WrongRowsError`); a build then
checks every row and decodes again those that differ (all of them for another
cache's array). Other pixels are read only by ``verify_cache(deep=True)``
(``preload verify --deep``), which hashes every row again (several GB/s warm:
the disk is the limit) and names each damaged row and its source file.
``open_cache`` with ``check=False`` reads nothing per file: it checks the
dtypes and shapes of every member but reads the values (and digests) only of
those it keeps (labels, row map, classes, folders, listing); the per-file
members are checked when the first path is read (:class:`LazyPaths`), the
checksums by ``verify``. What no check here sees: a change of the source
images that keeps their size, times and inode (see Freshness), and bytes
damaged before they were hashed (in RAM, by the decoder).

A stale cache is refreshed in a copy (a reflink on btrfs/XFS, else a full
copy: it needs the space of one more cache): the old ``train.npy`` stays in
place, untouched, until the copy replaces it at the commit point, so a
process that has it open keeps reading the old bytes, never a mix.

Freshness
---------
:func:`open_cache` compares every source file's size, mtime, ctime and inode
number with the index, and the folders the build listed (or the CSV) first:
only a folder whose stamps moved is listed again (a CSV is read again and its
labels compared too). The inode number catches a folder renamed or swapped
with another, which moves its files without touching their stamps; on a file
system that numbers inodes anew at each mount (FAT, CIFS with ``noserverino``)
a cache is stale after a remount (:mod:`preload.freshness` says why). Files
modified within the timestamp granularity of the build are *unverifiable*:
``verify`` lists them and the next build decodes them again. The ``stat``
calls run on a thread pool sized from a quick latency probe: one thread on a
warm local disk, dozens on a network file system. The rules, the engine and
its knobs are in :mod:`preload.freshness`; the measured cost is on the
benchmark page (``bench/freshness.py``). Added, removed, changed or relabelled
files raise :class:`StaleCacheError`; ``check=False`` skips all of it.
``build_cache`` on a stale cache re-decodes only the changed, added (and
unverifiable) files: the rows of the others are kept, in a copy of the cache
when the files are the same, moved to their new places when files were added
or removed.

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
import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import mmap
import os
import platform
import secrets
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import xxhash
from tqdm.auto import tqdm

from . import freshness
from ._version import __version__
from .atomic import NOFOLLOW, create_new, fsync_folder, open_existing, read_file, sweep_temporaries, write_bytes
from .dataset import Dataset
from .decode import Decoder
from .errors import (
    CacheError,
    Failure,
    IncompleteCacheError,
    InsufficientDiskError,
    OptionError,
    PreloadError,
    Reason,
    StaleCacheError,
    TargetError,
)
from .fill import common_size, fill_slots
from .freshness import FileTable, read_index
from .options import (
    DEFAULT_MAX_PIXELS,
    INTERPOLATIONS,
    DecodeOptions,
    check_on_error,
    progress_wanted,
    resolve_workers,
)
from .quiet import quiet_opencv
from .rows import take_rows
from .sources import Manifest, manifest
from .target import NpyHeader, PathLock, create_npy, inspect_npy, open_npy, read_npy_header, shrink_npy

# build_cache logs one INFO record saying how much of the build this call does; its
# ``todo`` and ``total`` attributes let a front end time only the rows decoded now.
logger = logging.getLogger("preload.cache")

FORMAT = "preload-cache"
VERSION = 3  # 2: the index holds ctime, folders and the time of the record (preload.freshness);
# 3: and inode numbers; the metadata, the index and the array are bound together (build_id, digests, probe rows)
CHECKSUM = "xxh3_64"  # of each row's bytes, in the index's ``checksums``
JOURNAL_MAGIC = b"PRELOADJ"
JOURNAL_HEADER = 8 + 4 + 4 + 8 + 32
COMMIT_SECONDS = 1.0  # flush + journal at least this often ...
COMMIT_BYTES = 128 << 20  # ... and whenever this many bytes of rows are waiting
PROBE_ROWS = 8  # rows hashed by every open, to tell this build's array from another's
COMPACT_BYTES = 32 << 20  # rows moved per step of an on_error="skip" compaction
DEEP_BLOCK_BYTES = 64 << 20  # rows hashed between two page drops of a deep verify
OPEN_ATTEMPTS = 3  # reads of a cache that a committing build replaced meanwhile, before giving up
FICLONE = 0x40049409  # ioctl: make a file share another's blocks (btrfs, XFS)


class CacheFiles:
    """The names of every file that belongs to the cache at ``path``."""

    def __init__(self, path: str | os.PathLike):
        self.data = os.path.abspath(os.fspath(path))
        if not self.data.lower().endswith(".npy"):
            message = f"cache path '{os.fspath(path)}' is not accepted; it must end in .npy"
            raise TargetError(message)
        self.meta = self.data + ".json"
        self.index = self.data + ".index.npz"
        self.damaged = self.data + ".damaged"
        self.partial = self.data + ".partial"
        self.partial_next = self.partial + ".next"  # the partial a resume moves rows into when files changed
        self.compact = self.data + ".compact.json"
        self.compact_rows = self.data + ".compact"
        self.plan = self.data + ".build.json"
        self.plan_index = self.data + ".build.npz"
        self.journal = self.data + ".journal"
        self.sums = self.data + ".build.sums"
        self.failures = self.data + ".failed.jsonl"
        self.lock = self.data + ".lock"
        self.probe = self.partial + ".probe"  # preload.distributed.PROBE_SUFFIX

    def build_files(self) -> list[str]:
        return [self.partial, self.partial_next, self.compact, self.compact_rows, self.plan, self.plan_index,
                self.journal, self.sums, self.failures, self.probe]

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

    def same_files(self, now: Snapshot, of: np.ndarray | None = None) -> np.ndarray:
        """Per file of ``now``: its file in this (older) record is provably the same file.

        ``of[j]`` is the index here of file ``j`` of ``now`` (-1: none; None:
        file j is file j, same length assumed). Same path, size, mtime, ctime
        and label, and verifiable in this record. A file that could not be
        stat-ed in either (-1 in every column: a dangling link that failed
        under on_error) is the same file.
        """
        count = len(now.table)
        if of is None:
            of = np.arange(count)
        if not len(self.table) or not count:
            return np.zeros(count, bool)
        found = of >= 0
        i = np.where(found, of, 0)
        old_paths, new_paths = self.manifest.paths, now.manifest.paths
        same_path = np.fromiter((old_paths[a] == b for a, b in zip(i.tolist(), new_paths, strict=True)), bool, count)
        mine, theirs = self.table, now.table
        same_stat = ((mine.size[i] == theirs.size) & (mine.mtime_ns[i] == theirs.mtime_ns)
                     & (mine.ctime_ns[i] == theirs.ctime_ns))
        same_stat &= mine.inode[i] == theirs.inode  # a swapped folder keeps its files' stamps, not their inodes
        return found & same_path & same_stat & ~mine.unverifiable()[i] & _same_labels(self.manifest, now.manifest, i)

    def match(self, now: Snapshot) -> np.ndarray:
        """Per file of ``now``: the index of the same path in this record, or -1."""
        old_paths, new_paths = self.manifest.paths, now.manifest.paths
        if old_paths == new_paths:
            return np.arange(len(new_paths))
        where = {path: i for i, path in enumerate(old_paths)}
        return np.fromiter((where.get(path, -1) for path in new_paths), np.int64, len(new_paths))

    @classmethod
    def from_index(cls, arrays: dict[str, np.ndarray], path: str, digests: dict | None = None) -> Snapshot:
        """The record held by the members of an index file, every member checked (:func:`index_problems`).

        ``digests`` (the metadata's ``index_digests``): also check that the
        members a path is made of are the ones the build wrote.
        """
        problems = index_problems(arrays)
        if not problems and digests is not None:
            problems = _digest_problems(arrays, digests, PATH_MEMBERS)
        if problems:
            message = (f"the cache index '{path}' is damaged: {'; '.join(problems)}; build the cache again "
                       "(a build replaces a damaged cache of its own)")
            raise IncompleteCacheError(message)
        return cls(FileTable.from_arrays(arrays))

    def save(self, path: str, rows: np.ndarray | None = None, checksums: np.ndarray | None = None, *,
             build_id: str | None = None) -> None:
        arrays = self.table.arrays()
        if rows is not None:
            arrays["rows"] = np.asarray(rows, np.int64)
        if checksums is not None:
            arrays["checksums"] = np.asarray(checksums, np.uint64)
        if build_id is not None:
            arrays["build_id"] = np.frombuffer(build_id.encode("ascii"), np.uint8)
        freshness.write_index(path, arrays)  # through atomic.atomic_write: O_NOFOLLOW, temp name, rename

    @classmethod
    def load(cls, path: str, digests: dict | None = None) -> tuple[Snapshot, np.ndarray | None]:
        """The index at ``path``, every member checked (:func:`index_problems`), and its row map.

        ``digests`` (the metadata's ``index_digests``): also check that the
        members a path is made of are the ones the build wrote.
        """
        index = read_index(path)
        rows = index.get("rows")
        return cls.from_index(index, path, digests), None if rows is None else np.asarray(rows)


class LazyPaths(Sequence):
    """The paths of a cache, read from its memory-mapped index one at a time, when asked."""

    def __init__(self, index_path: str, rows: np.ndarray | None, count: int,
                 arrays: dict[str, np.ndarray] | None = None, digests: dict | None = None):
        self._index_path = index_path
        self._rows = rows
        self._count = count
        self._arrays = arrays  # the index that was opened with the array, so paths match its rows
        self._digests = digests  # of the members a path is made of: checked once, on first use
        self._table: FileTable | None = None

    def _file_table(self) -> FileTable:
        if self._table is None:
            if self._arrays is not None:
                self._table = Snapshot.from_index(self._arrays, self._index_path, self._digests).table
            else:
                self._table = Snapshot.load(self._index_path, self._digests)[0].table
        return self._table

    def __getstate__(self) -> dict:
        # Not the mapped index: pickled, it would be copied whole into every worker.
        return {**self.__dict__, "_arrays": None, "_table": None}

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



# ------------------------------------------------------------------- checksums


def row_checksums(array: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """xxh3_64 of each row of ``array`` (all rows, or those in ``rows``), as uint64.

    Examples
    --------
    >>> row_checksums(np.zeros((2, 4, 4, 3), np.uint8)).tolist() == [zero_checksum(48)] * 2
    True
    """
    indices = range(len(array)) if rows is None else np.asarray(rows).tolist()
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64))
    # Slices of one flat memoryview: no ndarray (or memmap) object per row, twice as fast on small rows.
    flat = memoryview(np.asarray(array).reshape(-1))
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(flat[i * row_bytes : (i + 1) * row_bytes]) for i in indices), np.uint64, len(indices))


def zero_checksum(row_bytes: int) -> int:
    """The checksum of a row of zeros (a failed file under on_error="zero")."""
    return xxhash.xxh3_64_intdigest(bytes(row_bytes))


class _Summing:
    """A decoder that hashes each slot right after decoding it, while its bytes are still in the CPU cache.

    The fill engine hands it ``array[i]``; the row number is the slot's
    offset in the array divided by the row size.
    """

    def __init__(self, decoder: Decoder, array: np.ndarray, sums: np.ndarray):
        self.decoder = decoder
        self.base = array.__array_interface__["data"][0]
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64))
        self.sums = sums

    def decode_into(self, path: str, slot: np.ndarray) -> None:
        self.decoder.decode_into(path, slot)
        row = (slot.__array_interface__["data"][0] - self.base) // self.row_bytes
        self.sums[row] = xxhash.xxh3_64_intdigest(slot)

    def __getattr__(self, name):
        return getattr(self.decoder, name)


# --------------------------------------------------------------------- the journal


class Journal:
    """The done-bitmap of a build and the rows' checksums, written only after the rows are on disk."""

    def __init__(self, files: CacheFiles, count: int, plan_hash: bytes, done: np.ndarray, sums: np.ndarray):
        self.path = files.journal
        self.sums_path = files.sums
        self.count = count
        self.plan_hash = plan_hash
        self.done = done
        self.sums = sums
        self.pending: list[np.ndarray] = []
        self.pending_failures: list[Failure] = []
        self.last_commit = time.monotonic()

    @classmethod
    def create(cls, files: CacheFiles, count: int, plan_hash: bytes, done: np.ndarray | None = None,
               sums: np.ndarray | None = None) -> Journal:
        journal = cls(files, count, plan_hash, np.zeros(count, bool) if done is None else done.copy(),
                      np.zeros(count, np.uint64) if sums is None else np.array(sums, np.uint64))
        write_bytes(journal.sums_path, journal.sums.astype("<u8").tobytes())
        write_bytes(journal.path, journal._header() + journal._bits())
        return journal

    @classmethod
    def open(cls, files: CacheFiles, count: int, plan_hash: bytes) -> Journal | None:
        """The journal of ``files`` if it belongs to this plan (and has its checksums), else None."""
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < 2**48:
            return None  # a plan edited or damaged into a row count no journal can have
        try:
            raw = read_file(files.journal)
            sums = read_file(files.sums)
        except (OSError, TargetError):
            return None
        header = JOURNAL_MAGIC + np.array([VERSION, 0], "<u4").tobytes() + np.array([count], "<u8").tobytes()
        if len(raw) != JOURNAL_HEADER + (count + 7) // 8 or raw[:24] != header or raw[24:56] != plan_hash:
            return None
        if len(sums) != 8 * count:
            return None
        bits = np.frombuffer(raw, np.uint8, offset=JOURNAL_HEADER)
        done = np.unpackbits(bits, count=count, bitorder="little").astype(bool)
        return cls(files, count, plan_hash, done, np.frombuffer(sums, "<u8").astype(np.uint64))

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
        """Data to disk, then failures, then checksums, then the bits: a set bit never precedes its pixels."""
        if not self.pending:
            return
        array.flush()  # msync: the rows' pixels are on disk before any bit says so
        if self.pending_failures:
            fd = os.open(failure_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, 0o644)
            with open(fd, "a", encoding="utf-8") as handle:
                for failure in self.pending_failures:
                    handle.write(_failure_line(failure))
                handle.flush()
                os.fsync(handle.fileno())
        rows = np.concatenate(self.pending)
        low, high = int(rows.min()), int(rows.max()) + 1
        fd = os.open(self.sums_path, os.O_WRONLY | NOFOLLOW)
        try:
            os.pwrite(fd, self.sums[low:high].astype("<u8").tobytes(), 8 * low)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[rows] = True
        fd = os.open(self.path, os.O_WRONLY | NOFOLLOW)
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
    try:
        text = read_file(path).decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            failures.append(Failure(int(record["index"]), record["path"], Reason(record["reason"]), record["detail"]))
        except (ValueError, KeyError, TypeError):  # a line cut by a kill: its bits were never set, it will be redone
            continue
    return failures


class BuildLock(PathLock):
    """The lock every writer of a cache path holds (see :class:`preload.target.PathLock`)."""

    def __init__(self, path: str):
        super().__init__(path, "another build of this cache is running (or a load with out= at its path)")


# ------------------------------------------------------------------------- helpers


def _options_record(options: DecodeOptions) -> dict:
    record = asdict(options)
    record["size"] = list(record["size"]) if record["size"] else None
    record["fill"] = list(record["fill"])
    return record


def _options_from_record(record: dict) -> DecodeOptions:
    size = tuple(record["size"]) if record["size"] else None
    return DecodeOptions(**{**record, "size": size, "fill": tuple(record["fill"])})


def _checked_options(record, where: str) -> DecodeOptions:
    """The options of a metadata file, validated as the API validates them; IncompleteCacheError if not."""
    names = {field.name for field in dataclasses.fields(DecodeOptions)}
    if not isinstance(record, dict) or set(record) != names:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        message = f"'{where}' is damaged: its options are {got}, expected the keys {sorted(names)}"
        raise IncompleteCacheError(message)
    interpolations = {value: name for name, value in INTERPOLATIONS.items()}
    try:
        if record["interpolation"] not in interpolations:
            raise OptionError(f"interpolation={record['interpolation']!r}")
        options = DecodeOptions.create(**{**record, "interpolation": interpolations[record["interpolation"]]})
    except (OptionError, TypeError, ValueError) as exc:
        message = f"'{where}' is damaged: an option it records is not valid ({exc})"
        raise IncompleteCacheError(message) from None
    if _options_record(options) != record:
        message = f"'{where}' is damaged: its options {record} are not in the form preload writes"
        raise IncompleteCacheError(message)
    return options


def _describe_difference(old: dict, new: dict) -> str:
    parts = [f"{key} {old.get(key)!r} (cache) vs {new.get(key)!r} (now)" for key in new if old.get(key) != new.get(key)]
    return ", ".join(parts)


def _write_json(path: str, record: dict) -> bytes:
    text = json.dumps(record, indent=1, sort_keys=True).encode("utf-8")
    write_bytes(path, text)
    return text


def _read_json(path: str):
    """The JSON at ``path`` (any type), or None if there is none; IncompleteCacheError if unreadable."""
    try:
        return json.loads(read_file(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TargetError) as exc:
        message = f"cannot read '{path}': {exc}"
        raise IncompleteCacheError(message) from exc


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _versions() -> dict:
    return {"preload": __version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "python": platform.python_version()}


@contextlib.contextmanager
def _disk_errors(files: CacheFiles, doing: str):
    """OSError while writing the cache's files -> InsufficientDiskError / CacheError naming the file."""
    try:
        yield
    except PreloadError:
        raise
    except OSError as exc:
        where = exc.filename or files.data
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = (f"no space left on the device of '{where}' while {doing}; the unfinished build of "
                       f"'{files.data}' is kept: free some space and run the same build again to resume")
            raise InsufficientDiskError(message) from exc
        message = (f"writing '{where}' failed while {doing}: {exc.strerror or exc}; the unfinished build of "
                   f"'{files.data}' is kept: fix the cause and run the same build again to resume")
        raise CacheError(message) from exc



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
    deep: bool = False,
    client=None,
) -> Dataset:
    """Decode ``source`` into the on-disk cache ``path``, resuming an unfinished build.

    Takes :func:`preload.load`'s source and decode options. Calling it again
    with the same arguments is cheap: a complete, fresh cache is just opened;
    an unfinished one is finished (rows of files that changed meanwhile are
    decoded again; rows of the others are kept, moved if files were added or
    removed); a stale one has its changed and added files decoded into a
    copy that keeps the other rows; rows that :func:`verify_cache` with
    ``deep=True`` found damaged are decoded again. What it does is logged
    (INFO, logger ``preload.cache``) in one line, with the attributes
    ``todo`` (rows decoded now) and ``total``.

    Parameters
    ----------
    force : bool
        Throw away any cache, unfinished build or other ``.npy`` at ``path``
        and start over (needed to change the options of an existing cache,
        or to replace a file that is not a preload cache).
    deep : bool
        Also re-read every row of a complete cache and decode again the rows
        whose checksum does not match (see :func:`verify_cache`).
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
        A cache or unfinished build with other options is at ``path``, or a
        file that is not a preload cache (and ``force`` is False), or writing
        failed (the partial build is kept and can be resumed).
    InsufficientDiskError
        The disk filled up (the partial build is kept and can be resumed).
    CacheLockedError
        Another process is building (or loading into) the same path.
    TargetError
        ``path`` is a folder, or a link or folder sits at one of the names
        the cache's own files use.

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
    _check_cache_path(files, force)  # before the lock file is created, and long before anything is decoded

    started = time.perf_counter()
    with BuildLock(files.lock), quiet_opencv() as console:
        _check_cache_path(files, force)  # again, now that no other writer can change it
        # Temporaries of a writer killed mid-write (kill -9, power cut): ours alone, under the lock.
        sweep_temporaries([files.meta, files.index, files.damaged, *files.build_files()])
        if force:
            _remove(files.meta, files.index, files.data, files.damaged, *files.build_files())
        sources = manifest(source, labels=labels)
        slot_size = options.size
        if slot_size is None:  # unreadable headers become failures of the fill below (the rows are kept)
            slot_size, _, _ = common_size(sources, options, on_error, threads)
        snapshot = Snapshot.take(sources)
        shape = (len(sources),) + options.slot_shape(slot_size)
        plan = {"format": FORMAT + "-build", "version": VERSION, "shape": list(shape),
                "options": _options_record(options), "source": source_record}
        with _disk_errors(files, "preparing the build"):
            array, journal, doing = _prepare(files, plan, snapshot, on_error=on_error, deep=deep)
        count = len(sources)
        todo = np.flatnonzero(~journal.done) if journal is not None else np.zeros(0, np.int64)
        # Says what this call does and how many rows it decodes: a front end times only those.
        logger.info("%s", doing, extra={"todo": len(todo), "total": count})
        if journal is None:  # complete and fresh: nothing to do
            return open_cache(files.data, check=False)
        if len(todo):
            _fill(files, array, journal, sources.paths, options, todo, on_error, threads, show, console, client)
        del array  # unmapped before the partial is compacted, truncated or renamed
        # In index order (the log is in the order rows finished), once each (a kill can log one twice).
        failures = sorted({f.index: f for f in _read_failures(files.failures)}.values(), key=lambda f: f.index)
        with _disk_errors(files, "finishing the build"):
            _finalize(files, plan, snapshot, journal, failures, on_error, time.perf_counter() - started)
    return open_cache(files.data, check=False)


def _fill(files: CacheFiles, array: np.memmap, journal: Journal, paths: list[str], options: DecodeOptions,
          todo: np.ndarray, on_error: str, threads: int, show: bool, console, client) -> None:
    """Decode the rows in ``todo``, committing the journal as they finish."""
    row_bytes = int(np.prod(array.shape[1:]))
    zero = zero_checksum(row_bytes)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="building", unit="img",
               file=console, disable=not show)

    def on_done(rows: np.ndarray, found: list[Failure]) -> None:
        if client is not None:  # the workers decoded the rows; hash them here from the shared file
            journal.sums[rows] = row_checksums(array, rows)
        for failure in found:  # the fill zeroed the slot
            journal.sums[failure.index] = zero
        journal.add(rows, found)
        bar.update(len(rows))
        if journal.due(row_bytes):
            journal.commit(array, files.failures)

    try:
        with bar:
            if client is None:
                decoder = _Summing(Decoder(options), array, journal.sums)
                fill_slots(decoder, paths, array, on_error=on_error, workers=threads, on_done=on_done, indices=todo)
            else:
                from .distributed import fill_on_cluster  # dask is an optional extra

                fill_on_cluster(client, files.partial, paths, options, todo, on_error=on_error, on_done=on_done)
        journal.commit(array, files.failures)
    except OSError as exc:
        with contextlib.suppress(Exception):
            journal.commit(array, files.failures)
        if isinstance(exc, PreloadError):
            raise
        message = (f"writing the cache '{files.data}' failed: {exc.strerror or exc}; the unfinished build is "
                   "kept: fix the cause and run the same build again to resume")
        raise CacheError(message) from exc
    except BaseException:
        # A failed file (on_error="raise"), Ctrl-C, ...: keep every finished row resumable.
        with contextlib.suppress(Exception):
            journal.commit(array, files.failures)
        raise


def _check_cache_path(files: CacheFiles, force: bool) -> None:
    """Refuse a folder at the cache path, and a ``.npy`` that is not a preload cache unless ``force``."""
    if os.path.isdir(files.data):
        message = f"cannot build '{files.data}': it is a folder; give the path of a .npy file"
        raise TargetError(message)
    for name in (files.meta, files.index, files.damaged, *files.build_files()):
        if os.path.isdir(name) and not os.path.islink(name):
            message = f"cannot build '{files.data}': '{name}' is a folder, but preload writes a file there"
            raise TargetError(message)
    foreign = os.path.lexists(files.data) and not os.path.lexists(files.meta) and not os.path.lexists(files.plan)
    if foreign and not force:
        message = (f"'{files.data}' exists and is not a preload cache (there is no '{files.meta}'); "
                   "pass force=True (--force) to replace it")
        raise CacheError(message)


def _existing_cache(files: CacheFiles) -> CacheState | None:
    """The complete cache at ``files``; None if there is none, or if it is a damaged or older one of ours (rebuilt)."""
    if not os.path.lexists(files.meta):
        return None
    try:
        # A refresh reads every file's record: check all of it first. Rows that do not match are
        # found by the refresh, which then checks every row (_refresh).
        return _load_state(files, paths=True, probe_rows=False)
    except IncompleteCacheError as exc:
        with contextlib.suppress(CacheError):
            meta = _read_json(files.meta)
            if isinstance(meta, dict) and meta.get("format") == FORMAT:  # ours, of any version: build it anew
                logger.warning("%s; building it again", str(exc).removesuffix(OTHER_VERSION_HINT))
                return None
        message = f"{exc}; pass force=True (--force) to build a new cache in its place"
        raise IncompleteCacheError(message) from None


def _other_settings(old_plan: dict, plan: dict) -> str | None:
    """How an unfinished build's plan differs from ``plan`` in what its rows are (None: its rows fit this plan).

    The number of files is not a setting: rows of files that are still the
    same are carried over to their new places (:func:`_carry_over`).
    """
    if old_plan.get("options") != plan["options"]:
        return _describe_difference(old_plan.get("options") or {}, plan["options"])
    old_shape = old_plan.get("shape")
    if not isinstance(old_shape, list) or old_shape[1:] != plan["shape"][1:]:
        return f"rows of shape {old_shape[1:] if isinstance(old_shape, list) else old_shape} (unfinished build) " \
               f"vs {plan['shape'][1:]} (now)"
    return None


def _prepare(files: CacheFiles, plan: dict, snapshot: Snapshot, *, on_error: str, deep: bool = False
             ) -> tuple[np.memmap | None, Journal | None, str]:
    """The partial array and its journal, ready to fill, and what this build does, in words.

    Decides between: nothing to do (array and journal None); resume an
    unfinished build; refresh a complete cache; start from scratch. Rows
    that are already right (written by the unfinished build, or in the
    complete cache, and their files unchanged) are kept, moved to their
    files' new places when files were added or removed. The complete cache
    at ``files.data``, if any, stays untouched until the new one replaces it
    at the commit point, so its readers never see a row change.
    """
    count = plan["shape"][0]
    state = _existing_cache(files)
    old_plan, old_text = _read_plan(files)
    if state is not None and old_plan is not None and old_plan.get("build_id") == state.meta.get("build_id"):
        _remove(*files.build_files())  # leftovers of a build killed after its commit point
        old_plan = None
    if state is not None and state.meta["options"] != plan["options"]:
        why = _describe_difference(state.meta["options"], plan["options"])
        message = f"'{files.data}' was built with other options ({why}); pass force=True (--force) to rebuild it"
        raise CacheError(message)
    if old_plan is not None:
        why = _other_settings(old_plan, plan)
        if why is None:
            result = _resume(files, plan, old_plan, old_text, snapshot, state, on_error)
            if result is not None:
                return result
        elif state is None:
            message = (f"an unfinished build of '{files.data}' with other settings is here ({why}); run it with "
                       "its own settings to finish it, or pass force=True (--force) to start over")
            raise CacheError(message)
        _remove(*files.build_files())
    if state is not None:
        result = _refresh(files, plan, snapshot, state, deep)
        if result is not None:
            return result
    # Nothing usable: start from scratch, beside the old cache if any (replaced at the commit point).
    _remove(*files.build_files())
    plan["build_id"] = secrets.token_hex(8)
    array = create_npy(files.partial, tuple(plan["shape"]))
    journal = Journal.create(files, count, _plan_hash(_start_plan(files, plan, snapshot)))
    return array, journal, f"building: {count:,} images"


@dataclass
class _Donor:
    """Rows a build may take instead of decoding them: an unfinished build's, or a complete cache's."""

    images: np.ndarray  # the rows (a read-only map)
    record: Snapshot  # the source files as the build that wrote them saw them
    rows: np.ndarray | None  # the file (in ``record``) of each row; None when row i is file i
    sums: np.ndarray  # the checksum written with each row
    trusted: np.ndarray  # per row: written, and not found damaged
    failures: list[Failure]  # files of ``record`` that failed (zero rows under "zero", none under "skip")


def _refresh(files: CacheFiles, plan: dict, snapshot: Snapshot, state: CacheState, deep: bool):
    """(None, None, ...) if the cache is fresh and whole; a partial to fill if rows are to be decoded; None to rebuild.

    Rows of unchanged files are kept: in a copy of the cache when the files
    are the same, in the same order; carried to their new places in a new
    partial otherwise (files added, removed or moved, a compacted cache).
    """
    count = plan["shape"][0]
    old = Snapshot.from_index(state.index, files.index)
    if len(old.table) != state.count or state.meta["shape"][1:] != plan["shape"][1:]:
        return None
    of = old.match(snapshot)
    same = old.same_files(snapshot, of)
    # Probe rows that differ: damage, or another array (then every row differs and it is built anew).
    deep = deep or bool(_wrong_probe_rows(files, state))
    damaged = _damaged_rows(state, np.arange(state.meta["shape"][0]) if deep else _marked_rows(files, state))
    changes = _changes(old, of, same, damaged=len(damaged))
    if len(damaged):
        sources = damaged if state.rows is None else state.rows[damaged]
        shown = ", ".join(f"'{old.table.path(int(i))}'" for i in sources[:3])
        logger.warning("%d row(s) of '%s' do not match their checksums (%s); decoding them again",
                       len(damaged), files.data, shown)
        same[np.isin(of, sources)] = False
    in_place = len(old.table) == count and bool(np.all(of == np.arange(count)))  # the same files, in order
    if in_place and same.all():  # a file that failed (on_error="skip"/"zero") and is unchanged would fail again
        _remove(files.damaged)
        return None, None, "nothing to do: the cache is complete and fresh"
    if not same.any():  # every file changed: copying old rows only to overwrite them all is wasted I/O
        return None
    if in_place and state.rows is None:
        # The same files in the same places: rows are rewritten in a copy (a reflink where the
        # file system can), so a process that has the old cache open keeps reading the old bytes.
        plan["build_id"] = secrets.token_hex(8)
        _copy_file(files.data, files.partial)
        array = open_npy(files.partial, writable=True)
        sums = state.checksums if state.checksums is not None else row_checksums(array)
        text = _start_plan(files, plan, snapshot)
        _write_failures(files.failures, [f for f in state.failed if same[f.index]])
        journal = Journal.create(files, count, _plan_hash(text), same, sums)
        return array, journal, _refreshing(journal, changes)
    # Files added, removed or moved, or a compacted (on_error="skip") cache: its rows go to their new places.
    trusted = np.ones(state.meta["shape"][0], bool)
    trusted[damaged] = False
    sums = state.checksums if state.checksums is not None else row_checksums(state.images)
    donor = _Donor(state.images, old, state.rows, sums, trusted, state.failed)
    result = _carry_over(files, plan, snapshot, donor, of, same, files.partial)
    if result is None:
        return None
    array, journal = result
    return array, journal, _refreshing(journal, changes)


def _refreshing(journal: Journal, changes: str) -> str:
    """What a refresh does, honestly: it reuses unchanged rows, it is not resuming anything."""
    count, kept = len(journal.done), int(journal.done.sum())
    return f"refreshing: {kept:,} of {count:,} rows unchanged, decoding {count - kept:,} ({changes})"


def _changes(old: Snapshot, of: np.ndarray, same: np.ndarray, *, damaged: int = 0) -> str:
    """What differs from the record ``old``, in words: "files: 2 added, 1 removed, 3 changed; 1 damaged row"."""
    added = int(np.count_nonzero(of < 0))
    removed = len(old.table) - int(np.count_nonzero(of >= 0))
    changed = int(np.count_nonzero((of >= 0) & ~same))  # or unverifiable: modified too close to the record
    parts = [f"{n:,} {what}" for n, what in ((added, "added"), (removed, "removed"), (changed, "changed")) if n]
    text = f"files: {', '.join(parts)}" if parts else "no file changed"
    return text + (f"; {damaged:,} damaged row(s)" if damaged else "")


def _resume(files: CacheFiles, plan: dict, old_plan: dict, old_text: bytes, snapshot: Snapshot,
            state: CacheState | None, on_error: str):
    """The unfinished build's partial and journal, every row that cannot be trusted cleared; None if unusable.

    With the same files as the unfinished build, its partial is filled on;
    with files added, removed or reordered, the rows of unchanged files are
    carried to their new places in a new partial.
    """
    count = plan["shape"][0]
    old_count = old_plan["shape"][0]
    if not isinstance(old_count, int) or not isinstance(old_plan.get("build_id"), str):
        return None
    journal = Journal.open(files, old_count, _plan_hash(old_text))
    if journal is None:
        return None
    if state is None and not os.path.lexists(files.partial) and os.path.isfile(files.data):
        # Killed after renaming the finished array into place (before its metadata was written).
        os.replace(files.data, files.partial)
    try:
        header = inspect_npy(files.partial)
        old, _ = Snapshot.load(files.plan_index)
        stamp = read_index(files.plan_index).get("build_id")
    except (OSError, ValueError, KeyError, TargetError, CacheError, zipfile.BadZipFile):
        return None
    if stamp is None or stamp.tobytes().decode("ascii", "replace") != old_plan["build_id"]:
        logger.warning("the file list of the unfinished build '%s' is not its plan's (a kill while a new plan "
                       "was being written); starting over", files.partial)
        return None
    if len(old.table) != old_count:
        return None
    # Only failures whose rows are final: a kill between the log and the bits leaves lines of rows to redo.
    logged = {f.index: f for f in _read_failures(files.failures) if 0 <= f.index < old_count}
    failures = sorted((f for f in logged.values() if journal.done[f.index]), key=lambda f: f.index)
    if journal.done.all() and _read_compaction(files, old_plan) is not None:
        return _resume_compaction(files, plan, old_plan, journal, old, snapshot, failures, on_error)
    whole = header.file_size == header.offset + header.data_bytes
    expected = (tuple(old_plan["shape"]), np.uint8, False, True)
    if (header.shape, header.dtype, header.fortran_order, whole) != expected:
        logger.warning("'%s' does not hold the array of the unfinished build (shape %s, dtype %s); starting over",
                       files.partial, header.shape, header.dtype)
        return None
    of = old.match(snapshot)
    if count != old_count or not bool(np.all(of == np.arange(count))):
        donor = _Donor(open_npy(files.partial), old, None, journal.sums, journal.done, failures)
        return _carry_over_unfinished(files, plan, snapshot, donor, of, old.same_files(snapshot, of))
    plan["build_id"] = old_plan["build_id"]
    keep = journal.done & old.same_files(snapshot)
    array = open_npy(files.partial, writable=True)
    # A set bit says the row was written by this build; the checksum proves the
    # bytes are still the ones it wrote (another writer, a bad disk).
    done = np.flatnonzero(keep)
    wrong = done[row_checksums(array, done) != journal.sums[done]]
    if len(wrong):
        logger.warning("%d row(s) of the unfinished build '%s' do not hold what the build wrote; decoding them again",
                       len(wrong), files.partial)
        keep[wrong] = False
    written = int(journal.done.sum())
    if (keep != journal.done).any() or len(failures) != len(logged):
        # Sources changed while the build was stopped, rows were damaged, or the log holds failures of rows to redo.
        journal = Journal.create(files, count, journal.plan_hash, keep, journal.sums)
        _write_failures(files.failures, [f for f in failures if keep[f.index]])
        snapshot.save(files.plan_index, build_id=plan["build_id"])
    kept = int(keep.sum())
    doing = f"resuming: {kept:,} of {count:,} already written"
    if kept < written:
        doing += f" ({written - kept:,} more are decoded again: their files changed or their rows were damaged)"
    return array, journal, doing


def _resume_compaction(files: CacheFiles, plan: dict, old_plan: dict, journal: Journal, old: Snapshot,
                       snapshot: Snapshot, failures: list[Failure], on_error: str):
    """Finish the compaction a killed on_error="skip" build began, then check its rows like any others.

    Its rows are moved towards the front in place, so the partial can only be
    read once the moves are done. Then, if every file is unchanged, every row
    still hashes to its checksum and the files failed are still to be
    skipped, the build is finished as is; otherwise the rows of unchanged
    files are carried over to a new partial and the rest decoded again.
    """
    count, old_count = plan["shape"][0], old_plan["shape"][0]
    bad = {f.index for f in failures}
    rows = np.asarray([i for i in range(old_count) if i not in bad], np.int64)
    record = _read_compaction(files, old_plan)
    if record is None or record["kept"] != len(rows):
        return None
    _compact_in_place(files, old_plan, rows)
    try:
        header = inspect_npy(files.partial)
    except (OSError, ValueError, TargetError):
        return None
    whole = header.file_size == header.offset + header.data_bytes
    if header.shape != (len(rows),) + tuple(old_plan["shape"][1:]) or not whole:
        return None
    sums = journal.sums[rows]
    images = open_npy(files.partial)
    of = old.match(snapshot)
    same = old.same_files(snapshot, of)
    unchanged = count == old_count and bool(np.all(of == np.arange(count))) and bool(same.all())
    if unchanged and on_error == "skip":
        wrong = np.flatnonzero(row_checksums(images, np.arange(len(rows))) != sums)
        if not len(wrong):
            del images
            plan["build_id"] = old_plan["build_id"]
            return None, journal, f"resuming: all {count:,} rows written; finishing the build"
        logger.warning("%d row(s) of the unfinished build '%s' do not hold what the build wrote; decoding them again",
                       len(wrong), files.partial)
    donor = _Donor(images, old, rows, sums, np.ones(len(rows), bool), failures)
    return _carry_over_unfinished(files, plan, snapshot, donor, of, same)


def _carry_over_unfinished(files: CacheFiles, plan: dict, snapshot: Snapshot, donor: _Donor, of: np.ndarray,
                           same: np.ndarray):
    """:func:`_carry_over` from the unfinished build's own partial, or None (start over) if there is no room."""
    try:
        result = _carry_over(files, plan, snapshot, donor, of, same, files.partial_next)
    except InsufficientDiskError as exc:
        logger.warning("%s: no room for a second partial to carry the finished rows over; decoding every row "
                       "again", exc)
        return None
    if result is None:
        return None
    array, journal = result
    count, kept = plan["shape"][0], int(journal.done.sum())
    doing = (f"resuming: {kept:,} of {count:,} rows kept from the unfinished build "
             f"(since it stopped, {_changes(donor.record, of, same)})")
    return array, journal, doing


def _carry_over(files: CacheFiles, plan: dict, snapshot: Snapshot, donor: _Donor, of: np.ndarray, same: np.ndarray,
                target: str):
    """A partial for ``plan`` at ``target`` that holds the donor's rows of unchanged files, each in its new place.

    Files are matched by path (``of``: :meth:`Snapshot.match`); a row is
    taken only if its file is unchanged (``same``: :meth:`Snapshot.same_files`
    of ``of``, less any file to decode anyway), the donor trusts it, and its bytes still
    hash to the checksum written with them (checked as they are copied). An
    unchanged file that failed keeps its failure and a zero row. The
    partial is then renamed to ``files.partial`` if it is not there already,
    and a new plan and journal are written for it: until the journal is
    written, a kill leaves a plan and journal that do not match the partial,
    which the next build detects and starts over (never a wrong row).

    Returns None, creating nothing, when no row can be kept.
    """
    shape = tuple(plan["shape"])
    count = shape[0]
    failed = {f.index: f for f in donor.failures}
    carried = [Failure(int(j), snapshot.manifest.paths[j], failed[int(of[j])].reason, failed[int(of[j])].detail)
               for j in np.flatnonzero(same) if int(of[j]) in failed]
    files_kept = np.flatnonzero(same)
    old_files = of[files_kept]
    if donor.rows is None:
        row = old_files.copy()
    else:  # increasing: a file's row is where it sits in them, if it does (no row: it was skipped)
        at = np.searchsorted(donor.rows, old_files)
        inside = at < len(donor.rows)
        row = np.full(len(old_files), -1, np.int64)
        row[inside] = np.where(donor.rows[at[inside]] == old_files[inside], at[inside], -1)
    with_row = (row >= 0) & ~np.isin(old_files, list(failed))
    with_row[with_row] = donor.trusted[row[with_row]]
    new_rows, old_rows = files_kept[with_row], row[with_row]
    if not len(new_rows) and not carried:
        return None
    done = np.zeros(count, bool)
    sums = np.zeros(count, np.uint64)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64))
    for failure in carried:  # the new partial's rows start as zeros: the row a failed file has under "zero"
        done[failure.index] = True
        sums[failure.index] = zero_checksum(row_bytes)
    array = create_npy(target, shape)
    step = max(1, DEEP_BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, len(new_rows), step):
        new, old = new_rows[start : start + step], old_rows[start : start + step]
        block = take_rows(donor.images, old)  # in file order: one sweep through the donor
        good = row_checksums(block) == donor.sums[old]
        array[new[good]] = block[good]
        done[new[good]] = True
        sums[new[good]] = donor.sums[old[good]]
        array.flush()  # the rows are on disk before the journal says they are
        _drop_pages(array)
        _drop_pages(donor.images)
    if target != files.partial:
        os.replace(target, files.partial)
        fsync_folder(files.partial)
    _remove(files.compact, files.compact_rows)
    plan["build_id"] = secrets.token_hex(8)
    text = _start_plan(files, plan, snapshot)
    _write_failures(files.failures, carried)
    return array, Journal.create(files, count, _plan_hash(text), done, sums)


def _read_plan(files: CacheFiles) -> tuple[dict | None, bytes | None]:
    """The plan of an unfinished build and its exact bytes (the journal holds their hash)."""
    try:
        text = read_file(files.plan)
        plan = json.loads(text)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, TargetError):  # cut by a kill before it was renamed into place: no usable plan
        return None, None
    if not isinstance(plan, dict) or not isinstance(plan.get("shape"), list) or not plan["shape"]:
        return None, None
    return plan, text


def _plan_hash(text: bytes) -> bytes:
    return hashlib.sha256(text).digest()


def _same_labels(a: Manifest, b: Manifest, of: np.ndarray) -> np.ndarray:
    """Per file j of ``b``: its label names the same class as the label of file ``of[j]`` of ``a``."""
    if a.labels is None and b.labels is None:
        return np.ones(len(b), bool)
    if a.labels is None or b.labels is None:
        return np.zeros(len(b), bool)
    names_a = a.classes or [str(v) for v in range(int(a.labels.max(initial=0)) + 1)]
    names_b = b.classes or [str(v) for v in range(int(b.labels.max(initial=0)) + 1)]
    old = np.asarray(a.labels)[of].tolist()
    return np.fromiter((names_a[x] == names_b[y] for x, y in zip(old, b.labels, strict=True)), bool, len(b))


def _start_plan(files: CacheFiles, plan: dict, snapshot: Snapshot) -> bytes:
    # The plan index carries the build id: a kill between it and the plan leaves an index that
    # the old plan and journal do not accept (they would read new files as the old ones).
    snapshot.save(files.plan_index, build_id=plan["build_id"])
    return _write_json(files.plan, plan)


def _write_failures(path: str, failures: list[Failure]) -> None:
    write_bytes(path, "".join(_failure_line(f) for f in failures).encode("utf-8"))


def _failure_line(failure: Failure) -> str:
    record = {"index": failure.index, "path": failure.path, "reason": str(failure.reason), "detail": failure.detail}
    return json.dumps(record) + "\n"


def _copy_file(source: str, target: str) -> None:
    """A new file at ``target`` with the bytes of ``source``: a reflink where the file system can, else a copy."""
    import fcntl  # POSIX only, like the lock

    size = os.path.getsize(source)
    fd_in = open_existing(source, follow=True)
    try:
        fd_out = create_new(target)
        try:
            try:
                fcntl.ioctl(fd_out, FICLONE, fd_in)  # btrfs, XFS: shares the blocks until a row is written
            except OSError:
                free = shutil.disk_usage(os.path.dirname(target)).free
                if size > free:
                    message = (f"refreshing '{source}' writes the changed rows into a copy, which needs "
                               f"{size:,} bytes, but its file system has {free:,} free")
                    raise InsufficientDiskError(message) from None
                _copy_bytes(fd_in, fd_out, size)
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _copy_bytes(fd_in: int, fd_out: int, size: int) -> None:
    copied = 0
    in_kernel = hasattr(os, "copy_file_range")
    while copied < size:
        if in_kernel:
            try:
                count = os.copy_file_range(fd_in, fd_out, size - copied, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                in_kernel = False  # another file system, an old kernel: copy through user space
                continue
        else:
            data = os.pread(fd_in, min(size - copied, 16 << 20), copied)
            count = os.pwrite(fd_out, data, copied) if data else 0
        if count == 0:
            message = f"the file being copied ended after {copied:,} of {size:,} bytes"
            raise OSError(errno.EIO, message)
        copied += count


def _finalize(files: CacheFiles, plan: dict, snapshot: Snapshot, journal: Journal, failures: list[Failure],
              on_error: str, seconds: float) -> None:
    """Compact (skip), move the array into place, then write the metadata: the commit point.

    Every step before the metadata can be repeated after a kill: compaction
    moves rows towards the front in place, recording its progress; the old
    cache's metadata is removed just before the new array replaces it.
    """
    count = plan["shape"][0]
    rows = None
    sums = journal.sums
    if on_error == "skip" and failures:
        bad = {f.index for f in failures}
        rows = np.asarray([i for i in range(count) if i not in bad], np.int64)
        _compact_in_place(files, plan, rows)
        sums = sums[rows]
    _remove(files.meta)  # a cache being refreshed ends here; its readers keep the old file open
    os.replace(files.partial, files.data)
    fsync_folder(files.data)
    snapshot.save(files.index, rows, sums, build_id=plan["build_id"])
    header = inspect_npy(files.data)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "build_id": plan["build_id"],
        "checksum": CHECKSUM,
        "shape": list(header.shape),
        "dtype": "uint8",
        "data_offset": header.offset,
        "data_bytes": header.data_bytes,
        "options": plan["options"],
        "source": plan["source"],
        "classes": snapshot.manifest.classes,
        "count": count,
        "failed": [json.loads(_failure_line(f)) for f in failures],
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
    }
    _bind(files, meta, snapshot.table, rows, header.shape[0])
    _write_json(files.meta, meta)
    fsync_folder(files.meta)
    _remove(files.damaged, *files.build_files())


def _read_compaction(files: CacheFiles, plan: dict) -> dict | None:
    try:
        record = _read_json(files.compact)
    except CacheError:
        return None
    if not isinstance(record, dict) or record.get("build_id") != plan.get("build_id"):
        return None
    if not isinstance(record.get("next"), int) or not isinstance(record.get("kept"), int):
        return None
    return record


def _compact_in_place(files: CacheFiles, plan: dict, keep: np.ndarray) -> None:
    """Move the kept rows of the partial to the front, in order, then cut the file: no second copy.

    Rows only move towards the front, block by block, and the progress is
    recorded in ``files.compact`` after each block is on disk. A block whose
    destinations overlap its own sources is first saved to ``files.compact_rows``
    (at most COMPACT_BYTES), so a kill in the middle of it loses nothing.
    """
    shape = tuple(plan["shape"])
    record = _read_compaction(files, plan)
    if record is None or record["kept"] != len(keep):
        record = {"build_id": plan["build_id"], "kept": len(keep), "next": 0, "saved": None}
    if inspect_npy(files.partial).shape[0] == len(keep) and record["next"] >= len(keep):
        return  # moved and cut before a kill
    array = open_npy(files.partial, writable=True)
    start = record["next"]
    if record.get("saved") is not None:  # killed while writing a saved block: write it again from the copy
        saved = np.frombuffer(read_file(files.compact_rows), np.uint8).reshape((-1,) + shape[1:])
        array[start : start + len(saved)] = saved
        array.flush()
        start += len(saved)
        record.update(next=start, saved=None)
        _write_json(files.compact, record)
    block = max(1, COMPACT_BYTES // max(1, int(np.prod(shape[1:]))))
    # Rows before the first skipped file stay where they are; from there on every
    # row moves (keep is increasing), by at least one row.
    moved = np.flatnonzero(keep != np.arange(len(keep)))
    start = max(start, int(moved[0]) if moved.size else len(keep))
    room_for_saved = True
    while start < len(keep):
        stop = min(len(keep), start + block)
        sources = keep[start:stop]
        if sources[-1] == stop - 1:  # rows before the first skipped file stay where they are
            start = stop
            continue
        if sources[0] < stop and not room_for_saved:
            stop = int(sources[0])
            sources = keep[start:stop]
        rows = array[sources]
        if sources[0] < stop:
            try:
                write_bytes(files.compact_rows, rows.tobytes())
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # No room for the saved copy: from now on move only rows whose
                # destinations lie below every source of their block (as many as the
                # rows skipped so far), which a kill cannot damage, so nothing needs
                # saving. Slower when few files were skipped, but it finishes on a
                # disk that holds one copy.
                room_for_saved = False
                continue
            record.update(saved=start)
            _write_json(files.compact, record)
        array[start:stop] = rows
        array.flush()
        _drop_pages(array)
        record.update(next=stop, saved=None)
        _write_json(files.compact, record)
        start = stop
    del array
    record.update(next=len(keep))
    _write_json(files.compact, record)
    shrink_npy(files.partial, len(keep))



# ---------------------------------------------------------------------------- open


@dataclass
class CacheState:
    """A complete cache whose files were checked against each other (see :func:`_load_state`)."""

    meta: dict
    options: DecodeOptions
    header: NpyHeader
    count: int  # source files
    labels: np.ndarray | None  # per source file
    rows: np.ndarray | None  # source file of each row, None when row i is file i
    checksums: np.ndarray | None  # per row; None for a cache built before checksums existed
    failed: list[Failure]
    images: np.memmap  # read-only, mapped from the very file whose header was checked
    index: dict[str, np.ndarray]  # the members of the index that was checked (memory-mapped)


def open_cache(path: str | os.PathLike, *, check: bool = True) -> Dataset:
    """Open a complete cache: a read-only memmap and its labels, without reading pixels.

    The ``.npy`` header, the metadata and the index are checked against each
    other first (shape, dtype, order, layout, every index member, the digests
    and build id that bind them) and the few rows the metadata names are
    hashed (see the module docs, Integrity); the other pixels are checked
    only by :func:`verify_cache` with ``deep=True``.

    Parameters
    ----------
    check : bool
        ``stat`` every source file and source folder (see the module docs for
        the cost; the source is listed again only if a folder changed); raise
        :class:`StaleCacheError` if any file was added, removed or changed,
        and :class:`IncompleteCacheError` if a deep verify found damaged rows
        that no build has decoded again since. ``False`` skips both and opens
        in about 2 ms at any size.

    Raises
    ------
    IncompleteCacheError
        No cache there, an unfinished build, damaged files, or (with
        ``check``) rows a deep verify found damaged (a CacheError).
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
    state = _load_state(files, paths=check)  # a check reads every file's record anyway: check all of it first
    images = state.images
    paths = LazyPaths(files.index, state.rows, images.shape[0], state.index, state.meta["index_digests"])
    if check:
        marked = _marked_rows(files, state)
        if len(marked):
            message = f"{_marked_problem(files, marked, paths)}, or open it with check=False to read it as it is"
            raise IncompleteCacheError(message)
        _check_fresh(files, state)
    labels = state.labels
    if labels is not None and state.rows is not None:
        labels = labels[state.rows]
    return Dataset(images, labels, state.meta["classes"], paths, state.failed, state.options, cache=files.data)


OTHER_VERSION_HINT = "; build it again (a build replaces a cache of another version of its own)"
META_FIELDS = {"format": str, "version": int, "build_id": str, "shape": list, "dtype": str, "data_offset": int,
               "data_bytes": int, "options": dict, "source": dict, "classes": (list, type(None)), "count": int,
               "failed": list, "versions": dict, "created": str, "build_seconds": (int, float), "probe_rows": list,
               "index_digests": dict, "meta_digest": str}


def _damaged(files: CacheFiles, problem: str) -> IncompleteCacheError:
    return IncompleteCacheError(f"the cache '{files.data}' is damaged: {problem}")


def _read_meta(files: CacheFiles) -> dict:
    meta = _read_json(files.meta)
    if meta is None:
        plan, text = _read_plan(files)
        if plan is not None:
            count = plan["shape"][0]
            journal = Journal.open(files, count, _plan_hash(text)) if isinstance(count, int) else None
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
    if not isinstance(meta, dict):
        raise _damaged(files, f"'{files.meta}' holds a JSON {type(meta).__name__}, not the cache's metadata")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        message = (f"'{files.meta}' is not a version-{VERSION} preload cache "
                   f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
        if meta.get("format") == FORMAT:
            message += OTHER_VERSION_HINT
        raise IncompleteCacheError(message)
    missing = [key for key in META_FIELDS if key not in meta]
    if missing:
        raise _damaged(files, f"'{files.meta}' lacks the field(s) {', '.join(map(repr, missing))}")
    for key, kinds in META_FIELDS.items():
        if not isinstance(meta[key], kinds) or isinstance(meta[key], bool):
            raise _damaged(files, f"'{files.meta}' has {key} = {meta[key]!r} ({type(meta[key]).__name__})")
    shape = meta["shape"]
    if len(shape) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _damaged(files, f"'{files.meta}' has shape {shape!r}; a cache is 4 non-negative sizes")
    if meta["dtype"] != "uint8":
        raise _damaged(files, f"'{files.meta}' has dtype {meta['dtype']!r}; a cache is uint8")
    if meta["classes"] is not None and not all(isinstance(name, str) for name in meta["classes"]):
        raise _damaged(files, f"'{files.meta}' has classes {meta['classes']!r}; class names are strings")
    return meta


def _load_state(files: CacheFiles, *, paths: bool = False, probe_rows: bool = True) -> CacheState:
    """Read the metadata, the ``.npy`` header and the index, and check they describe one array.

    ``paths=True`` also checks the index's file names and folders against
    the number of files (reads them all; for :func:`verify_cache` and
    :func:`cache_info`). ``probe_rows=False`` skips hashing the rows that
    tell this build's array from another (for a caller that hashes every
    row anyway). Raises IncompleteCacheError saying what disagrees.

    A build that commits meanwhile renames a new array, index and metadata
    into place one by one, the metadata last. The array and the index are
    each read from one open file (never one file's header and another's
    data), and the metadata must be the same file after all of it was read
    as before; if it is not, everything is read again.
    """
    for _ in range(OPEN_ATTEMPTS):
        before = _identity(files.meta)
        try:
            state = _read_state(files, paths, probe_rows)
        except IncompleteCacheError:
            if _identity(files.meta) == before:
                raise
            continue  # a build replaced the cache while it was read: what failed may be a mix of two
        if _identity(files.meta) == before:
            return state
    message = (f"the cache '{files.data}' was replaced {OPEN_ATTEMPTS} times while it was being opened (a build "
               "of it is committing); open it again")
    raise IncompleteCacheError(message)


def _identity(path: str) -> tuple | None:
    """Which file is at ``path`` (a rename puts another there): device, inode, size, times; None if none."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _read_state(files: CacheFiles, paths: bool, probe_rows: bool) -> CacheState:
    meta = _read_meta(files)
    options = _checked_options(meta["options"], files.meta)
    try:
        handle = open(open_existing(files.data, follow=True), "rb")  # noqa: SIM115 - closed below, once mapped
    except FileNotFoundError as exc:
        message = f"the cache array '{files.data}' is missing: {exc.strerror}"
        raise IncompleteCacheError(message) from exc
    except (OSError, TargetError) as exc:
        raise _damaged(files, f"its .npy header cannot be read ({exc})") from None
    with handle:
        try:
            header = read_npy_header(handle)
        except (OSError, ValueError) as exc:
            raise _damaged(files, f"its .npy header cannot be read ({exc})") from None
        _check_header(files, meta, options, header)
        # The same open file: a build renaming a new array into place cannot slip in between.
        images = np.memmap(handle, np.uint8, "r", header.offset, header.shape)
    images.filename = files.data  # as np.load(mmap_mode="r") names it (mapped from a descriptor, it has no name)
    return _check_index(files, meta, options, header, images, paths, probe_rows)


def _check_header(files: CacheFiles, meta: dict, options: DecodeOptions, header: NpyHeader) -> None:
    """Raise IncompleteCacheError if the ``.npy`` header does not describe the metadata's array."""
    expected = meta["data_offset"] + meta["data_bytes"]
    if header.file_size != expected:
        message = (f"'{files.data}' is {header.file_size:,} bytes but its metadata says "
                   f"{expected:,}: the file was truncated or replaced")
        raise IncompleteCacheError(message)
    shape = tuple(meta["shape"])
    problems = []
    if header.shape != shape:
        problems.append(f"the .npy header says shape {header.shape}, the metadata {shape}")
    if header.dtype != np.uint8:
        problems.append(f"the .npy header says dtype {header.dtype.str!r}, the metadata uint8")
    if header.fortran_order:
        problems.append("the .npy header says Fortran order, a cache is C order")
    if header.offset != meta["data_offset"] or header.data_bytes != meta["data_bytes"]:
        problems.append(f"the .npy data is {header.data_bytes:,} bytes from byte {header.offset}, the metadata "
                        f"says {meta['data_bytes']:,} from byte {meta['data_offset']}")
    size = shape[2:4] if options.layout == "NCHW" else shape[1:3]
    row = options.slot_shape(size)
    if shape[1:] != row or (options.size is not None and tuple(options.size) != tuple(size)):
        problems.append(f"layout {options.layout}, color {options.color} and size {options.size} make rows of "
                        f"{options.slot_shape(options.size or size)}, but the array's rows are {shape[1:]}")
    if problems:
        raise _damaged(files, f"'{files.data}' and '{files.meta}' disagree: {'; '.join(problems)}")


def _check_index(files: CacheFiles, meta: dict, options: DecodeOptions, header: NpyHeader, images: np.memmap,
                 paths: bool, probe_rows: bool) -> CacheState:
    """The cache's state, once its index was read and found to fit the metadata (IncompleteCacheError if not)."""
    shape = tuple(meta["shape"])
    problems = []
    count = meta["count"]
    failed = _checked_failures(files, meta["failed"], count)
    arrays = _read_index(files)
    problems = index_problems(arrays, count, rows_count=shape[0], skipped=len(failed), classes=meta["classes"],
                              full=paths)
    if problems:
        raise _damaged(files, f"the index '{files.index}' does not match the metadata: {'; '.join(problems)}")
    problems = _binding_problems(files, meta, arrays, full=paths)
    if problems:
        raise _damaged(files, "; ".join(problems))
    # Copies of the small members a reader keeps; the index itself is only mapped.
    labels = np.array(arrays["labels"]) if "labels" in arrays else None
    rows = np.array(arrays["rows"]) if "rows" in arrays else None
    checksums = arrays.get("checksums")
    probe = meta["probe_rows"]
    if not all(isinstance(row, int) and not isinstance(row, bool) and 0 <= row < shape[0] for row in probe):
        raise _damaged(files, f"'{files.meta}' has probe_rows {probe} for an array of {shape[0]:,} rows")
    state = CacheState(meta, options, header, count, labels, rows, checksums, failed, images, arrays)
    wrong = _wrong_probe_rows(files, state) if probe_rows else []
    if wrong:
        message = (f"the cache '{files.data}' is damaged: row(s) {', '.join(map(str, wrong))} do not match the "
                   "checksums in its index: the array is another build's (a copied .npy?) or its bytes were damaged; "
                   "build the cache again (it decodes only the rows that differ)")
        raise WrongRowsError(message)
    return state


# Every index has these (preload.freshness.FileTable.arrays); labels, classes, rows, checksums and
# build_id (a complete cache's, see _bind) are optional.
INDEX_MEMBERS = ("folders", "folder_of", "names", "name_starts", "file_size", "mtime_ns", "ctime_ns", "inode",
                 "listing", "listing_stat", "taken")
# Members whose values only a check of every file reads (open_cache's check, info, verify, build): an open
# with check=False neither reads nor hashes them ...
PER_FILE_MEMBERS = ("folder_of", "names", "name_starts", "file_size", "mtime_ns", "ctime_ns", "inode", "checksums")
PATH_MEMBERS = ("folders", "folder_of", "names", "name_starts")  # ... but hashes these when a path is first read
TEXT_MEMBERS = ("folders", "names", "listing", "classes", "build_id")  # UTF-8 (or ASCII) bytes


def index_problems(arrays: dict[str, np.ndarray], count: int | None = None, *, rows_count: int | None = None,
                   skipped: int = 0, classes: list | None = None, full: bool = True) -> list[str]:
    """What is wrong with the members of an index: presence, dtype, shape, and their values' ranges.

    The one check of an index (a cache's or an unfinished build's), so that
    no reader meets a member it cannot use. Dtypes and shapes come from the
    members' headers (nothing is read); ``full=False`` skips the ranges of
    the per-file members (:data:`PER_FILE_MEMBERS`: it reads them all), so
    that ``open_cache(check=False)`` reads no more than the labels and row
    map it keeps.

    Parameters
    ----------
    count : int, optional
        Source files the metadata lists; default: as many as ``folder_of`` has.
    rows_count, skipped : int, optional
        Rows of the array and files skipped (``on_error="skip"``): ``rows`` must map one onto the other.
    classes : list of str, optional
        The metadata's classes: labels must index them.

    Examples
    --------
    >>> from preload.freshness import FileTable
    >>> arrays = FileTable.from_paths(["/a/x.png", "/b/y.png"]).arrays()
    >>> index_problems(arrays)
    []
    >>> index_problems({**arrays, "folder_of": np.array([0, 7], np.int32)})
    ['its folder numbers run from 0 to 7 but it lists 2 folders']
    >>> index_problems({**arrays, "file_size": np.array(["a", "b"])})
    ["its member 'file_size' is <U1 of shape (2,); it must be integers of shape (2,)"]
    """
    missing = [name for name in INDEX_MEMBERS if name not in arrays]
    if missing:
        return [f"it has no {', '.join(repr(name) for name in missing)}"]
    if count is None:
        count = len(arrays["folder_of"]) if arrays["folder_of"].ndim == 1 else -1
    problems = []

    def expect(name: str, dtype, shape: tuple | None, size_word=None) -> bool:
        """One member's dtype ("int": any integer type) and shape (None: any 1-D length)."""
        array = arrays.get(name)
        if array is None:
            return False
        kind_ok = array.dtype.kind in "iu" if dtype == "int" else array.dtype == dtype
        shape_ok = array.ndim == 1 if shape is None else array.shape == shape
        if kind_ok and not shape_ok and size_word and array.ndim == 1:
            problems.append(size_word(len(array)))  # only the length differs: say it in the metadata's terms
            return False
        if not (kind_ok and shape_ok):
            what = "integers" if dtype == "int" else np.dtype(dtype).name
            where = "1-D" if shape is None else f"of shape {shape}"
            problems.append(f"its member '{name}' is {array.dtype} of shape {array.shape}; "
                            f"it must be {what} {where}")
            return False
        return True

    for name in TEXT_MEMBERS:
        expect(name, np.uint8, None)
    for name in ("folder_of", "file_size", "mtime_ns", "ctime_ns"):
        expect(name, "int", (count,), lambda n, name=name: f"it has {n:,} {name} for the {count:,} source files of "
               "the metadata")
    expect("inode", np.uint64, (count,), lambda n: f"it has {n:,} inode numbers for the {count:,} source files")
    expect("name_starts", "int", (count + 1,), lambda n: f"it has {n - 1:,} name offsets for the {count:,} source "
           "files of the metadata")
    listed = len(freshness.split_texts(arrays["listing"])) if arrays["listing"].dtype == np.uint8 else 0
    expect("listing_stat", "int", (listed, 3))
    if expect("taken", "int", (2,)) and (arrays["taken"][0] < 0 or arrays["taken"][1] < 0):
        problems.append(f"its record time and granularity {arrays['taken'].tolist()} are negative")
    labels, rows, checksums = arrays.get("labels"), arrays.get("rows"), arrays.get("checksums")
    if labels is not None:
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            problems.append(f"it has {labels.dtype} labels of shape {labels.shape} for {count:,} source files")
        elif classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            problems.append(f"its labels run from {labels.min()} to {labels.max()} but there are {len(classes)} "
                            "classes")
    if rows_count is not None and rows is None and rows_count != count:
        problems.append(f"the array has {rows_count:,} rows for {count:,} source files and no row map")
    if rows is not None:
        ok = rows.dtype.kind in "iu" and rows.ndim == 1
        if rows_count is not None:
            ok = ok and len(rows) == rows_count and rows_count + skipped == count
        ok = ok and (len(rows) == 0 or (rows[0] >= 0 and rows[-1] < count and bool(np.all(np.diff(rows) > 0))))
        if not ok:
            problems.append(f"its row map ({rows.dtype}, {rows.shape}) does not fit {rows_count:,} rows of "
                            f"{count:,} files with {skipped} skipped")
    if checksums is not None and rows_count is not None and (checksums.shape != (rows_count,)
                                                               or checksums.dtype != np.uint64):
        problems.append(f"it has {checksums.dtype} checksums of shape {checksums.shape} for {rows_count:,} rows")
    if full and not problems:
        problems += _name_problems(arrays, count)
    return problems


def _read_index(files: CacheFiles) -> dict[str, np.ndarray]:
    """The index's members, memory-mapped (:func:`preload.freshness.read_index`): nothing per file is read."""
    try:
        return read_index(files.index)
    except IncompleteCacheError as exc:
        cause = exc.__cause__
        if isinstance(cause, FileNotFoundError):
            raise _damaged(files, f"its index '{files.index}' is missing") from None
        problem = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise _damaged(files, f"its index '{files.index}' cannot be read ({problem})") from None


def _name_problems(arrays: dict[str, np.ndarray], count: int) -> list[str]:
    """What is wrong with the values of the per-file members (reads them: O(files)); their types are checked."""
    problems = []
    names = arrays["names"].view(np.ndarray)
    starts = arrays["name_starts"].view(np.ndarray).astype(np.int64)
    folder_of = arrays["folder_of"].view(np.ndarray)
    folders = freshness.split_texts(arrays["folders"])
    end = len(names) + 1 if count else 0
    if starts[0] != 0 or starts[-1] != end or np.any(np.diff(starts) < 1):
        problems.append(f"its name offsets do not cut its {len(names):,} bytes of names into {count:,} names")
    elif int(np.count_nonzero(names == 0)) != max(0, count - 1):
        problems.append(f"its names hold {int(np.count_nonzero(names == 0)) + 1:,} names for {count:,} files")
    elif np.any(names == ord("/")):  # a name is what follows its folder's last separator
        problems.append("its names hold a '/', but each is the part of a path after its folder")
    if count and (folder_of.min() < 0 or folder_of.max() >= len(folders)):
        problems.append(f"its folder numbers run from {folder_of.min()} to {folder_of.max()} but it lists "
                        f"{len(folders)} folders")
    if count and np.any(arrays["file_size"].view(np.ndarray) < freshness.MISSING):
        problems.append("it has file sizes below -1 (-1: not stat-ed)")
    return problems


# -------------------------------------------------------------- the files bound together


def _member_digest(array: np.ndarray) -> str:
    """xxh3_128 of a member's dtype, shape and bytes."""
    digest = xxhash.xxh3_128(f"{array.dtype.str} {array.shape}".encode("ascii"))
    digest.update(np.ascontiguousarray(array.view(np.ndarray)).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _meta_digest(meta: dict) -> str:
    """SHA-256 of every field of the metadata but ``meta_digest`` itself, as canonical JSON."""
    fields = {key: value for key, value in meta.items() if key != "meta_digest"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _bind(files: CacheFiles, meta: dict, table: FileTable, rows: np.ndarray | None, row_count: int) -> None:
    """Add the fields that tie the metadata to the index and the array (see the module docs, Integrity)."""
    meta["probe_rows"] = _probe_rows(table, rows, row_count)
    meta["index_digests"] = {name: _member_digest(array) for name, array in read_index(files.index).items()}
    meta["meta_digest"] = _meta_digest(meta)


def _probe_rows(table: FileTable, rows: np.ndarray | None, row_count: int) -> list[int]:
    """Rows an open hashes to tell this build's array from another: the first, the last, the newest files'.

    The rows of the files changed most recently (by ctime) are the ones a
    refresh decoded last, so an older copy of this very cache differs there.
    """
    if row_count == 0:
        return []
    ctime = np.asarray(table.ctime_ns)
    if rows is not None:
        ctime = ctime[rows]
    if row_count <= PROBE_ROWS:
        return list(range(row_count))
    between = ctime[1:-1]  # the first and last rows are probed anyway
    newest = PROBE_ROWS - 2
    picked = np.argpartition(between, len(between) - newest)[len(between) - newest :] + 1
    return sorted([0, row_count - 1, *(int(row) for row in picked)])


def _digest_problems(arrays: dict[str, np.ndarray], digests: dict, names) -> list[str]:
    changed = [name for name in names if name in arrays and _member_digest(arrays[name]) != digests.get(name)]
    if not changed:
        return []
    return [f"its member(s) {', '.join(repr(name) for name in changed)} are not the ones the build wrote "
            "(edited, or taken from another cache)"]


def _binding_problems(files: CacheFiles, meta: dict, arrays: dict[str, np.ndarray], *, full: bool) -> list[str]:
    """What shows that the metadata and the index are not the two files one build wrote together.

    Always (cheap): the metadata's own digest, the build id both hold, the
    set of members, the digests of every member but the per-file ones, the
    classes; with ``full``: the per-file members' digests too, and for a
    folder source, that every file lies in the source and its label names
    its class folder.
    """
    if _meta_digest(meta) != meta["meta_digest"]:
        return [f"'{files.meta}' is not as the build wrote it: its fields do not match its meta_digest "
                "(edited by hand?)"]
    build_id = arrays.get("build_id")
    theirs = build_id.tobytes().decode("ascii", "replace") if build_id is not None else None
    if theirs != meta["build_id"]:
        return [f"the index '{files.index}' was written by build {theirs!r} and '{files.meta}' by build "
                f"{meta['build_id']!r}: the files of two caches are mixed"]
    digests = meta["index_digests"]
    if set(digests) != set(arrays):
        return [f"the index '{files.index}' holds the members {sorted(arrays)}, but the build wrote {sorted(digests)}"]
    names = sorted(arrays) if full else [name for name in sorted(arrays) if name not in PER_FILE_MEMBERS]
    problems = [f"the index '{files.index}': {problem}" for problem in _digest_problems(arrays, digests, names)]
    stored = freshness.split_texts(arrays["classes"]) if "classes" in arrays else None
    if stored != meta["classes"]:
        problems.append(f"the index '{files.index}' has the classes {stored}, '{files.meta}' {meta['classes']}")
    if full and not problems and meta["source"].get("kind") == "folder":
        problems += _folder_problems(files, meta, arrays)
    return problems


def _folder_problems(files: CacheFiles, meta: dict, arrays: dict[str, np.ndarray]) -> list[str]:
    """A folder source's files lie in it, and each label is the index of the class folder its file is in."""
    root = meta["source"].get("path")
    if not isinstance(root, str):
        return [f"'{files.meta}' has a folder source without a path: {meta['source']}"]
    prefix = os.path.join(root, "")
    folders = freshness.split_texts(arrays["folders"])
    outside = [folder for folder in folders if not folder.startswith(prefix)]
    if outside:
        return [f"the index '{files.index}' lists the folder '{outside[0]}', which is not in the source '{root}'"]
    classes = meta["classes"]
    labels = arrays.get("labels")
    if classes is None or labels is None:
        if classes is not None or labels is not None or folders not in ([prefix], []):
            return [f"the index '{files.index}' does not describe a flat folder nor one of class folders"]
        return []
    number = {name: k for k, name in enumerate(classes)}
    class_of = np.array([number.get(folder[len(prefix) :].split(os.sep, 1)[0], -1) for folder in folders], np.int64)
    wrong = np.flatnonzero(class_of[arrays["folder_of"].view(np.ndarray)] != labels.view(np.ndarray))
    if not len(wrong):
        return []
    table = FileTable.from_arrays(arrays)
    first = int(wrong[0])
    label = int(labels[first])
    return [f"{len(wrong):,} label(s) in the index '{files.index}' do not name the class folder of their file: "
            f"'{table.path(first)}' has label {label} ({classes[label]!r})"]


class WrongRowsError(IncompleteCacheError):
    """Rows that every open hashes (``probe_rows``) do not match their checksums: another array, or damage."""


def _wrong_probe_rows(files: CacheFiles, state: CacheState) -> list[int]:
    """Hash the few rows the metadata names and compare them with the index: is this the build's array?

    The rows are read from ``state.images``, the very file whose header was checked.
    """
    if state.checksums is None or not len(state.images):
        return []
    rows = np.asarray(state.meta["probe_rows"], np.int64)
    if not len(rows):
        return []
    return rows[row_checksums(state.images, rows) != state.checksums[rows]].tolist()


def _checked_failures(files: CacheFiles, records: list, count: int) -> list[Failure]:
    failures = []
    for record in records:
        try:
            index = record["index"]
            if not isinstance(index, int) or not 0 <= index < count:
                raise ValueError(f"index {index!r} is not one of the {count} source files")
            failures.append(Failure(index, str(record["path"]), Reason(record["reason"]), str(record["detail"])))
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"'{files.meta}' lists a failed file it cannot describe: {record!r} ({exc})"
            raise _damaged(files, problem) from None
    return sorted(failures, key=lambda failure: failure.index)


def _check_fresh(files: CacheFiles, state: CacheState) -> freshness.Verdict:
    """Raise :class:`StaleCacheError` if the sources changed; else what the check saw (unverifiable files)."""
    stored = Snapshot.from_index(state.index, files.index)
    source = state.meta["source"]
    # Looked up here, not bound at import, so tests can watch the relisting.
    verdict = freshness.check(stored.table, source, relist=lambda path: manifest(path))
    if verdict.stale:
        message = (f"the cache '{files.data}' is stale: {verdict.describe()}; build it again to update it, "
                   "or open it with check=False")
        raise StaleCacheError(message, verdict.added, verdict.removed,
                              verdict.changed + verdict.relabelled + verdict.reordered)
    return verdict



# ---------------------------------------------------------------------- inspection


def cache_info(path: str | os.PathLike) -> dict:
    """What is at ``path``: status, shape, options, classes, failures, bytes (for ``preload info``).

    ``status`` is "complete", "partial", "missing" or "damaged" (then
    ``problem`` says what disagrees: a truncated array, a header that does not
    match the metadata, an unreadable index, ...).
    """
    files = CacheFiles(path)
    if not os.path.lexists(files.meta):
        plan, text = _read_plan(files)
        if plan is None:
            if os.path.lexists(files.data):
                return {"path": files.data, "status": "damaged",
                        "problem": f"'{files.data}' has no metadata file '{files.meta}': it is not a complete cache"}
            return {"path": files.data, "status": "missing"}
        count = plan["shape"][0]
        journal = Journal.open(files, count, _plan_hash(text)) if isinstance(count, int) else None
        return {"path": files.data, "status": "partial", "shape": plan["shape"], "options": plan.get("options"),
                "done": int(journal.done.sum()) if journal is not None else 0, "count": count}
    try:
        state = _load_state(files, paths=True)
    except IncompleteCacheError as exc:
        return {"path": files.data, "status": "damaged", "problem": str(exc)}
    meta = state.meta
    info = {
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
        "checksums": state.checksums is not None,
        "versions": meta["versions"],
        "created": meta["created"],
        "build_seconds": meta["build_seconds"],
    }
    marked = _marked_rows(files, state)
    if len(marked):  # every field above still holds: the rows are there, some of them wrong
        paths = LazyPaths(files.index, state.rows, meta["shape"][0], state.index)
        info.update(status="damaged", problem=_marked_problem(files, marked, paths),
                    damaged_rows=[{"row": int(row), "path": paths[int(row)]} for row in marked])
    return info


def verify_cache(path: str | os.PathLike, *, deep: bool = False) -> dict:
    """Check a cache: ``{"status": "fresh"|"stale"|"partial"|"missing"|"damaged", "problem": str|None, ...}``.

    The metadata, the ``.npy`` header and the index must agree, and the
    source files must be unchanged (``stale`` lists ``added``, ``removed``,
    ``changed``).

    Parameters
    ----------
    deep : bool
        Also re-read every row and compare its xxh3 checksum with the one the
        build stored (about as fast as the disk reads: see docs/caches.md,
        Integrity). Rows that differ make the status "damaged" and are
        listed in ``damaged_rows`` (``row``, ``path``); the next
        :func:`build_cache` decodes exactly those rows again. ``deep_check``
        holds the rows and bytes read and the seconds it took.

    Examples
    --------
    >>> verify_cache("/nonexistent/cache.npy")["status"]
    'missing'
    """
    files = CacheFiles(path)
    result = {"path": files.data}
    try:
        state = _load_state(files, paths=True)
        open_cache(files.data, check=False)
        verdict = _check_fresh(files, state)
    except StaleCacheError as exc:
        result.update(status="stale", problem=str(exc), added=exc.added, removed=exc.removed, changed=exc.changed)
    except CacheError as exc:
        status = {"partial": "partial", "missing": "missing"}.get(cache_info(files.data)["status"], "damaged")
        result.update(status=status, problem=str(exc))
        if not (deep and isinstance(exc, WrongRowsError)):  # a deep check names every row that differs
            return result
    else:
        # Fresh, but these were modified within the timestamp granularity of the build: a rewrite in
        # that same tick would not show, so the next build decodes them again.
        result.update(status="fresh", problem=None, unverifiable=verdict.unverifiable)
        marked = _marked_rows(files, state)
        if len(marked) and not deep:  # a deep check below looks at every row itself
            # An earlier deep verify of this very build found these rows damaged, and no
            # build has mended them yet: the cache is not fresh until one does.
            paths = LazyPaths(files.index, state.rows, state.meta["shape"][0], state.index)
            result.update(status="damaged", problem=_marked_problem(files, marked, paths),
                          damaged_rows=[{"row": int(row), "path": paths[int(row)]} for row in marked])
    if deep:
        _deep_check(files, result)
    return result


def _deep_check(files: CacheFiles, result: dict) -> None:
    state = _load_state(files, probe_rows=False)
    started = time.perf_counter()
    if state.checksums is None:
        result["deep_check"] = {"rows": 0, "bytes": 0, "seconds": 0.0,
                                "note": "this cache has no checksums (built before preload stored them)"}
        return
    count = state.meta["shape"][0]
    damaged = _damaged_rows(state, np.arange(count))
    seconds = time.perf_counter() - started
    result["deep_check"] = {"rows": count, "bytes": state.header.data_bytes, "seconds": round(seconds, 4)}
    if not len(damaged):
        return
    snapshot = Snapshot.from_index(state.index, files.index)
    sources = damaged if state.rows is None else state.rows[damaged]
    result["damaged_rows"] = [{"row": int(row), "path": snapshot.table.path(int(file))}
                              for row, file in zip(damaged, sources, strict=True)]
    shown = ", ".join(f"row {d['row']} ('{d['path']}')" for d in result["damaged_rows"][:5])
    more = f" and {len(damaged) - 5} more" if len(damaged) > 5 else ""
    problem = (f"{len(damaged)} of {count:,} rows of '{files.data}' do not match their checksums: {shown}{more}; "
               "run the same build again to decode them again")
    if result["status"] == "stale":
        problem += f" (the cache is also stale: {result['problem']})"
    result.update(status="damaged", problem=problem)
    # Remembered for the next build, which re-checks and re-decodes only these rows.
    with contextlib.suppress(OSError, TargetError):
        record = {"build_id": state.meta.get("build_id"), "rows": [int(r) for r in damaged]}
        write_bytes(files.damaged, json.dumps(record).encode("utf-8"))


def _marked_rows(files: CacheFiles, state: CacheState) -> np.ndarray:
    """Rows a deep verify of this very build found damaged (``files.damaged``), else none."""
    try:
        record = _read_json(files.damaged)
    except CacheError:
        return np.zeros(0, np.int64)
    if not isinstance(record, dict) or record.get("build_id") != state.meta.get("build_id"):
        return np.zeros(0, np.int64)
    rows = [r for r in record.get("rows", []) if isinstance(r, int) and 0 <= r < state.meta["shape"][0]]
    return np.asarray(rows, np.int64)


def _marked_problem(files: CacheFiles, marked: np.ndarray, paths: Sequence[str]) -> str:
    """The rows an earlier deep verify found damaged, and their files, in words."""
    shown = ", ".join(str(int(row)) for row in marked[:5]) + (" ..." if len(marked) > 5 else "")
    named = ", ".join(f"'{paths[int(row)]}'" for row in marked[:3]) + (" ..." if len(marked) > 3 else "")
    return (f"{len(marked)} row(s) of '{files.data}' were found damaged by a deep verify (rows {shown}; their "
            f"files {named}); build the cache again to decode them anew")


def _damaged_rows(state: CacheState, rows: np.ndarray) -> np.ndarray:
    """Those of ``rows`` whose bytes no longer match the checksum the build stored."""
    if state.checksums is None or not len(rows):
        return np.zeros(0, np.int64)
    images = state.images
    bad = []
    step = max(1, DEEP_BLOCK_BYTES // max(1, state.header.data_bytes // max(1, len(images))))
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        bad.append(block[row_checksums(images, block) != state.checksums[block]])
        _drop_pages(images)
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)
