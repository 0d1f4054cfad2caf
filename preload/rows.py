"""Reading rows from a memory-mapped ``.npy``: sorted sweeps, one copy per row, page-cache advice.

:func:`take_rows` is how a batch leaves a cache (``Dataset[index_array]``,
``Dataset.batches``, or directly on any ``np.load(path, mmap_mode="r")``
array): rows are read in file order, each copied once into its slot, by one
or two threads; :func:`prefetch_rows` tells the kernel about the rows of a
batch that are not yet in the page cache, so a cold disk gets them as one
queue of requests. Arrays that are not a file mapping take ``np.take``.
``mincore`` and ``madvise`` come from libc through ctypes (Linux only;
elsewhere the advice is skipped).
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import sys
import threading

import numpy as np

from .options import cpu_count, resolve_workers
from .target import check_out

# A file-backed batch is copied row by row straight into its slots (one copy) when rows
# are at least this big; smaller rows keep the vectorized sorted take + scatter, where
# a Python step per row costs more than the second copy (equal at about 12-27 kB, measured).
ROW_COPY_BYTES = 1 << 15
# From this many bytes per batch a second thread shares the copy (faults and memcpy on two
# cores: 1.3x at 8 MB, 1.5-1.8x at 12 MB, measured). Smaller batches stay in the CPU cache
# and handing rows over costs more than it saves.
THREAD_BYTES = 1 << 23
# Rows whose page-cache residency is checked before a batch is read (see prefetch_rows).
PROBE_ROWS = 4


def take_rows(
    images: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray | None = None,
    *,
    workers: int | None = None,
) -> np.ndarray:
    """``images[rows]`` into ``out`` (or a new array); from a file mapping, in file order.

    For a memory-mapped ``.npy`` (an :class:`numpy.memmap`, e.g. from
    :func:`open_cache` or ``np.load(path, mmap_mode="r")``) the rows are read
    in ascending file order, so a shuffled batch is one forward sweep through
    the file instead of random seeks, and each row is copied once, straight
    into its slot of ``out`` (rows under ``ROW_COPY_BYTES``: one sorted
    ``np.take`` and a scatter, cheaper than a Python step per row). Rows not
    yet in the page cache are first announced to the kernel all at once
    (:func:`prefetch_rows`), so the disk gets the whole batch as one queue of
    requests. Any other array is read with ``np.take``.

    Parameters
    ----------
    images : numpy.ndarray or numpy.memmap
        The array to read from, rows along the first axis.
    rows : numpy.ndarray of int
        Indices in ``[0, len(images))`` (not checked here:
        :func:`preload.dataset.resolve_index` does that), in any order,
        repeats allowed.
    out : numpy.ndarray, optional
        Receives the rows: shape ``(len(rows),) + images.shape[1:]`` and
        ``images.dtype``. None: a new array.
    workers : int, optional
        Threads copying one batch from a file mapping: a positive int, checked
        like every ``workers`` (:func:`preload.options.resolve_workers`).
        None: the usable cores up to two when the batch holds at least
        ``THREAD_BYTES`` (a memory copy gains nothing from a third thread;
        each thread takes the next row in file order, so a busy second core
        delays no more than one row), otherwise one.

    Returns
    -------
    numpy.ndarray
        ``out``, holding ``images[rows]`` in the order of ``rows``.

    Raises
    ------
    OptionError
        ``workers`` is not a positive int or None.
    TargetError
        ``out`` is not an array, or has the wrong shape or dtype, or is
        read-only (an :class:`~preload.errors.OptionError`, a ``ValueError``).

    Examples
    --------
    >>> images = np.arange(4, dtype=np.uint8).reshape(4, 1)
    >>> buffer = np.empty((3, 1), np.uint8)
    >>> take_rows(images, np.array([3, 0, 3]), out=buffer) is buffer, buffer.ravel().tolist()
    (True, [3, 0, 3])
    """
    if workers is not None:
        workers = resolve_workers(workers)
    rows = np.asarray(rows)
    shape = (len(rows),) + images.shape[1:]
    out = np.empty(shape, images.dtype) if out is None else check_out(out, shape, images.dtype, contiguous=False)
    if len(rows) == 0:
        return out
    if not _maps_a_file(images):
        np.take(images, rows, axis=0, out=out, mode="clip")  # mode="clip": no bounds check, no temporary
        return out
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    prefetch_rows(images, ordered)
    if images.strides[0] < ROW_COPY_BYTES or np.may_share_memory(out, images):
        # Small rows: one vectorised take beats a Python step per row. An ``out`` that
        # overlaps ``images`` (an in-place permutation): the take reads every row
        # before the scatter writes any.
        out[order] = np.take(images, ordered, axis=0, mode="clip")
        return out
    if workers is None:
        workers = min(2, cpu_count()) if out.nbytes >= THREAD_BYTES else 1
    _copy_rows(np.asarray(images), ordered.tolist(), order.tolist(), out, workers)
    return out


def prefetch_rows(images: np.ndarray, rows: np.ndarray) -> bool:
    """Ask the kernel to start reading ``images[rows]`` from disk, unless it is in the page cache.

    A cold memory-mapped read faults in one page range at a time, so the
    disk sees one request at a time. ``madvise(MADV_WILLNEED)`` on every row
    of a batch queues them all at once. The advice costs a few microseconds a
    row even when the pages are cached, so it is given only when one of up
    to ``PROBE_ROWS`` rows, spread over the batch, is not resident
    (``mincore``). Nothing is read here and nothing waits; on arrays that are
    not a file mapping, or where the calls are missing (not Linux), this
    does nothing.

    Parameters
    ----------
    images : numpy.ndarray or numpy.memmap
        The array the rows will be read from.
    rows : numpy.ndarray of int
        Valid row indices, any order, repeats allowed; adjacent rows are
        advised as one range.

    Returns
    -------
    bool
        Whether advice was given (some probed row was not in the page cache).

    Examples
    --------
    >>> prefetch_rows(np.zeros((3, 2), np.uint8), np.array([0, 2]))  # in RAM: nothing to do
    False
    """
    libc = _libc()
    if libc is None or len(rows) == 0 or not _maps_a_file(images):
        return False
    rows = sorted(np.asarray(rows).tolist())
    row_bytes = images.strides[0]
    start = images.ctypes.data
    page = mmap.PAGESIZE
    vector = ctypes.create_string_buffer(1)
    probes = min(PROBE_ROWS, len(rows))
    for pick in range(probes):
        row = rows[(len(rows) - 1) * pick // max(probes - 1, 1)]
        # The middle of the row: its first page may be the tail of the row before, already read.
        address = start + row * row_bytes + row_bytes // 2
        if libc.mincore(address - address % page, page, vector) != 0 or not vector.raw[0] & 1:
            break
    else:
        return False
    first = previous = rows[0]
    for row in rows[1:] + [None]:
        if row is not None and row - previous <= 1:  # a repeat or the next row: one range
            previous = row
            continue
        begin = start + first * row_bytes
        aligned = begin - begin % page
        libc.madvise(aligned, start + (previous + 1) * row_bytes - aligned, mmap.MADV_WILLNEED)
        first = previous = row
    return True


def _maps_a_file(images: np.ndarray) -> bool:
    """Whether ``images`` is a C-contiguous view of a live ``mmap`` (a memmap opened from a file).

    An unpickled memmap holds its bytes in RAM (its base is ``bytes``), so it
    takes the plain path.
    """
    if not isinstance(images, np.memmap) or not images.flags.c_contiguous or images.size == 0:
        return False
    if images.strides[0] != images.itemsize * math.prod(images.shape[1:]):  # a one-row view: any first stride
        return False
    base = images.base
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, mmap.mmap) and not base.closed


def _copy_rows(source: np.ndarray, rows: list[int], slots: list[int], out: np.ndarray, workers: int) -> None:
    """``out[slot] = source[row]`` for each pair, the rows taken in order by ``workers`` threads.

    The helper threads live only for this call: a pool kept between calls
    would outlive the caller (fork warnings on Python >= 3.12, no new work
    once the interpreter shuts down). If a copy fails, the other threads stop
    before the exception leaves, so ``out`` is not written behind the caller.
    """
    # One shared iterator: each thread takes the next row in file order (next() runs under the
    # GIL, so no row is taken twice), and a thread that starts late simply copies fewer rows.
    pairs = zip(rows, slots, strict=True)
    stop = threading.Event()
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            for row, slot in pairs:
                if stop.is_set():
                    return
                out[slot] = source[row]  # NumPy releases the GIL for the copy
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread below
            stop.set()
            errors.append(exc)

    helpers = []
    for _ in range(min(workers, len(rows)) - 1):
        helper = threading.Thread(target=copy, name="preload-rows", daemon=True)
        try:
            helper.start()
        except RuntimeError:  # no new threads (interpreter shutting down, thread limit): copy here
            break
        helpers.append(helper)
    copy()  # catches its own errors, so the helpers are always joined
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]


@functools.cache
def _libc():
    """libc's ``mincore`` and ``madvise`` through ctypes (they release the GIL), or None off Linux."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_WILLNEED"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    libc.mincore.restype = libc.madvise.restype = ctypes.c_int
    return libc
