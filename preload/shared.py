"""Arrays in shared memory that reach spawned processes by file descriptor, not by value.

Python 3.14 made ``forkserver`` Linux's default start method, so a
DataLoader worker receives its dataset by pickling, and a pickled NumPy
array travels (and lands in the worker) as a full copy. :func:`share` moves
an array into an anonymous shared-memory file (``memfd_create``); a
:class:`SharedHandle` to it pickles, while a process is being started, as the
file descriptor itself (``multiprocessing.reduction.DupFd``: passed to the
child like ``multiprocessing``'s own pipes), and the child maps the same
pages. Nothing is copied and no name is left in ``/dev/shm``: the memory is
freed when the last process holding the file or its mapping exits.

Outside process start-up (pickling to a file, or where ``memfd_create`` is
missing: not Linux) the handle pickles the array by value, as NumPy would.
"""

from __future__ import annotations

import mmap
import os
import weakref
from multiprocessing import context, reduction

import numpy as np


def available() -> bool:
    """Whether arrays can be shared by file descriptor here (Linux's ``memfd_create``)."""
    return hasattr(os, "memfd_create")


class SharedHandle:
    """An array in a memfd-backed shared mapping; pickles as the file descriptor while spawning.

    Examples
    --------
    >>> handle = share(np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> handle.array.tolist(), handle.array.flags.writeable
    ([[0, 1, 2], [3, 4, 5]], True)
    """

    def __init__(self, fd: int | None, array: np.ndarray):
        self.fd = fd
        self.array = array

    def __reduce__(self):
        spawning = context.get_spawning_popen() is not None
        if self.fd is None or not spawning:
            return _by_value, (np.ascontiguousarray(self.array),)
        return _attach, (reduction.DupFd(self.fd), self.array.shape, self.array.dtype.str)


def share(array: np.ndarray) -> SharedHandle:
    """Copy ``array`` into a new shared-memory file once; the handle's ``array`` is the shared copy.

    Without ``memfd_create`` (not Linux) the handle keeps ``array`` itself.
    """
    if not available():
        return SharedHandle(None, array)
    size = max(1, array.nbytes)
    fd = os.memfd_create("preload-images", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mapping = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    shared = np.frombuffer(mapping, dtype=array.dtype, count=array.size).reshape(array.shape)
    np.copyto(shared, array)
    handle = SharedHandle(fd, shared)
    # The mapping keeps its own reference to the memory, so the descriptor is only
    # needed to hand the pages to new processes: close it with the handle, or every
    # share would keep its pages for the life of the process.
    weakref.finalize(handle, os.close, fd)
    return handle


def _attach(dup, shape, dtype) -> SharedHandle:
    fd = dup.detach()
    size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)  # workers read; only the owner writes
    array = np.frombuffer(mapping, dtype=np.dtype(dtype), count=int(np.prod(shape))).reshape(shape)
    return SharedHandle(fd, array)  # the fd stays open: this process may start workers of its own


def _by_value(array: np.ndarray) -> SharedHandle:
    return SharedHandle(None, array)


__all__ = ["SharedHandle", "available", "share"]
