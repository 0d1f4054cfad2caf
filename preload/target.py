"""Allocate the output array: the one place that knows what ``out=`` means.

``out`` has a closed set of meanings:

* ``None`` -> a new C-contiguous array in RAM (:func:`fresh_array`: pages
  are only committed as slots are written, so the array costs nothing before
  decoding);
* a NumPy array or ``np.memmap`` -> checked for shape, dtype, contiguity and
  writability (:func:`check_out`, which the readers that take an ``out=``
  buffer -- ``take_rows``, ``batches`` -- use as well), then filled in place;
* a ``str`` / ``os.PathLike`` ending in ``.npy`` -> a memory-mapped ``.npy``
  created with :func:`numpy.lib.format.open_memmap` under a temporary name in
  the same folder (``<name>.npy.partial``) and renamed into place only after
  a successful load, so a file at the final path is always complete.

Before anything is allocated the byte count ``N*C*H*W`` is compared with the
memory psutil reports as available (RAM target) or the free space of the
target's file system (``.npy`` target).
"""

from __future__ import annotations

import ast
import errno
import mmap
import os
from dataclasses import dataclass

import numpy as np
import psutil
from numpy.lib import format as npy_format

from .errors import InsufficientDiskError, InsufficientMemoryError, TargetError

PARTIAL_SUFFIX = ".partial"


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB ({count:,} bytes)"


@dataclass
class Target:
    """The allocated output and how to finish it."""

    array: np.ndarray
    kind: str  # "ram", "array" or "npy"
    path: str | None = None  # final .npy path
    temp_path: str | None = None  # where the .npy is written until finalize()

    def finalize(self, rows: int) -> np.ndarray:
        """Keep the first ``rows`` rows and make the result visible at its final place.

        For a ``.npy`` target whose row count shrank (skipped images) the header
        is rewritten and the file truncated before it is renamed into place.
        """
        if self.kind == "ram":
            return self.array[:rows]
        if self.kind == "array":
            self.array[rows:] = 0
            return self.array[:rows]
        total = self.array.shape[0]
        self.array.flush()
        del self.array  # unmap before truncating: touching a cut mapping is SIGBUS
        if rows != total:
            _shrink_npy(self.temp_path, rows)
        os.replace(self.temp_path, self.path)
        return np.load(self.path, mmap_mode="r+")

    def discard(self) -> None:
        """Remove a ``.npy`` that will never be complete (load failed)."""
        if self.kind == "npy":
            self.array = None
            try:
                os.remove(self.temp_path)
            except FileNotFoundError:
                pass


def allocate(out, shape: tuple[int, ...]) -> Target:
    """Resolve ``out=`` to a :class:`Target` of ``shape`` and dtype uint8.

    Raises
    ------
    TargetError
        ``out`` is an array of another shape/dtype, read-only, non-contiguous,
        a path not ending in ``.npy``, or of an unsupported type.
    InsufficientMemoryError, InsufficientDiskError
        The array would not fit (checked before allocating).

    Examples
    --------
    >>> allocate(None, (2, 4, 4, 3)).array.shape
    (2, 4, 4, 3)
    """
    nbytes = int(np.prod(shape, dtype=np.int64))
    if out is None:
        available = psutil.virtual_memory().available
        if nbytes > available:
            message = (
                f"the array needs {_gb(nbytes)} (N*C*H*W = {' x '.join(map(str, shape))}) but only "
                f"{_gb(available)} of memory is available; load into a memory-mapped file instead, "
                f"e.g. out=\"images.npy\""
            )
            raise InsufficientMemoryError(message)
        return Target(fresh_array(shape), "ram")
    if isinstance(out, np.ndarray):
        return Target(check_out(out, shape), "array")
    if isinstance(out, (str, os.PathLike)):
        path = os.fspath(out)
        if not path.lower().endswith(".npy"):
            message = f"out='{path}' is not accepted; a file target must end in .npy"
            raise TargetError(message)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            message = f"out='{path}': the folder '{folder}' does not exist"
            raise TargetError(message)
        free = psutil.disk_usage(folder).free
        if nbytes > free:
            message = f"out='{path}' needs {_gb(nbytes)} but its file system has {_gb(free)} free"
            raise InsufficientDiskError(message)
        temp = path + PARTIAL_SUFFIX
        return Target(create_npy(temp, shape), "npy", path, temp)
    message = (
        f"out= of type {type(out).__name__} is not accepted; use None (RAM), "
        "a NumPy array or memmap, or a path ending in .npy"
    )
    raise TargetError(message)


def fresh_array(shape: tuple[int, ...]) -> np.ndarray:
    """A new uint8 array in anonymous memory of its own, in 4 KiB pages.

    NumPy advises the kernel to back large arrays with 2 MiB huge pages.
    On a virtual machine whose guest reports free memory to the host (virtio
    free page reporting, as on Firecracker), huge pages come from exactly
    the blocks the host has taken back, so each first touch is a fault on
    the host as well: measured at 0.36 ms of system time per 256x256x3
    slot with the advice against 0.18 ms without it (0.07 ms when pages are
    already mapped) on the benchmark machine. A load writes every page
    once, so huge pages save little later; the array is therefore mapped
    with ``MADV_NOHUGEPAGE``. The mapping is released when the last view of
    the array goes.

    Examples
    --------
    >>> fresh_array((2, 3)).shape, fresh_array((0, 4)).size
    ((2, 3), 0)
    """
    nbytes = int(np.prod(shape, dtype=np.int64))
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):  # Windows: no such advice to avoid
        return np.empty(shape, np.uint8)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, np.uint8).reshape(shape)


def create_npy(path: str, shape: tuple[int, ...]) -> np.memmap:
    """Create a uint8 ``.npy`` of ``shape`` at ``path``, its blocks reserved on disk.

    A memory-mapped write into a sparse file on a full disk is a SIGBUS that
    kills the process; reserving every block up front turns "disk full" into
    an ``OSError`` here, before any decoding.

    Raises
    ------
    InsufficientDiskError
        The file system cannot hold the file.
    TargetError
        The file cannot be created for another reason.
    """
    try:
        array = npy_format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate") and array.nbytes:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        if os.path.exists(path):
            os.remove(path)
        if exc.errno == errno.ENOSPC:
            message = f"no space left for '{path}' ({_gb(int(np.prod(shape, dtype=np.int64)))})"
            raise InsufficientDiskError(message) from exc
        message = f"cannot create '{path}': {exc.strerror or exc}"
        raise TargetError(message) from exc
    return array


def check_out(out, shape: tuple[int, ...], dtype=np.uint8, *, contiguous: bool = True) -> np.ndarray:
    """``out`` if it is an array (or memmap) that can receive ``shape`` and ``dtype``: the check of every ``out=``.

    :func:`allocate` needs C order (it hands out rows as views and renames
    files); readers that copy rows in (:func:`preload.rows.take_rows`,
    ``batches``) pass ``contiguous=False``.

    Raises
    ------
    TargetError
        ``out`` is not an array, or has another shape or dtype, is read-only,
        or (``contiguous``) is not C-contiguous; every problem is named.

    Examples
    --------
    >>> check_out(np.empty((2, 3), np.float32), (2, 4))
    Traceback (most recent call last):
    ...
    preload.errors.TargetError: out= array does not fit: shape (2, 3) (need (2, 4)); dtype float32 (need uint8)
    """
    shape = tuple(shape)
    if not isinstance(out, np.ndarray):
        message = (f"out= of type {type(out).__name__} is not accepted here; use a NumPy array or memmap of shape "
                   f"{shape} and dtype {np.dtype(dtype)}")
        raise TargetError(message)
    problems = []
    if out.shape != shape:
        problems.append(f"shape {out.shape} (need {shape})")
    if out.dtype != dtype:
        problems.append(f"dtype {out.dtype} (need {np.dtype(dtype)})")
    if contiguous and not out.flags.c_contiguous:
        problems.append("it is not C-contiguous")
    if not out.flags.writeable:
        problems.append("it is read-only")
    if problems:
        message = f"out= array does not fit: {'; '.join(problems)}"
        raise TargetError(message)
    return out


def read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype, int, tuple[int, int]]:
    """(shape, dtype, data offset, version) of the ``.npy`` open in ``handle`` (binary, at 0)."""
    version = npy_format.read_magic(handle)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = read_header(handle)
    return tuple(shape), dtype, handle.tell(), version


def _shrink_npy(path: str, rows: int) -> None:
    """Rewrite a ``.npy`` header for ``rows`` rows, keeping its length, and truncate the data."""
    with open(path, "r+b") as handle:
        shape, dtype, data_start, version = read_npy_header(handle)
        header_start = len(npy_format.MAGIC_PREFIX) + 2
        new_shape = (rows,) + tuple(shape[1:])
        header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": new_shape}
        text = repr(header)
        # The old header is padded with spaces to a 64-byte boundary; fewer digits
        # in the shape only add padding, so the data offset never moves.
        length_field = 2 if version == (1, 0) else 4
        room = data_start - header_start - length_field
        padded = text + " " * (room - len(text) - 1) + "\n"
        if len(padded) != room or ast.literal_eval(padded) != header:
            message = f"cannot rewrite the header of '{path}' for {rows} rows"
            raise TargetError(message)
        handle.seek(header_start + length_field)
        handle.write(padded.encode("latin1"))
        handle.truncate(data_start + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
