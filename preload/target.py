"""Allocate the output array: the one place that knows what ``out=`` means.

``out`` has a closed set of meanings:

* ``None`` -> a new C-contiguous array in RAM (:func:`fresh_array`: pages
  are only committed as slots are written, so the array costs nothing before
  decoding);
* a NumPy array or ``np.memmap`` -> checked for shape, dtype, contiguity and
  writability (:func:`check_out`, which the readers that take an ``out=``
  buffer -- ``take_rows``, ``batches`` -- use as well), then filled in place;
* a ``str`` / ``os.PathLike`` ending in ``.npy`` -> a memory-mapped ``.npy``
  created under a temporary name in the same folder (``<name>.npy.partial``)
  and renamed into place only after a successful load, so a file at the final
  path is always complete.

Before anything is allocated the byte count ``N*C*H*W`` is compared with what
the process may really allocate (:func:`memory_room`: available memory, the
cgroup's memory limit, ``RLIMIT_AS``) for a RAM target, or with the free space
of the target's file system for a ``.npy`` target.

Files preload writes
--------------------
Every file preload creates next to a target (``.partial``, ``.lock``, a
``.tmp`` before its rename) is opened with ``O_NOFOLLOW``, and with
``O_EXCL`` when it is new: a symbolic link planted at one of those names is
refused (or unlinked, for a temporary name), never followed, so preload never
writes through it into a file it did not create. Every writer of ``x.npy``
(a ``load(out="x.npy")`` or a cache build) holds ``flock`` on ``x.npy.lock``
for as long as it writes, so two writers never share ``x.npy.partial``.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import errno
import math
import mmap
import os
import resource
import socket
import stat
from dataclasses import dataclass

import numpy as np
import psutil
from numpy.lib import format as npy_format

from .atomic import NOFOLLOW, create_new, open_existing, refuse_link
from .errors import CacheLockedError, InsufficientDiskError, InsufficientMemoryError, TargetError

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
# A cache at x.npy (preload.cache) owns these names too; a load must not write
# under a complete cache's metadata or into an unfinished build's array.
CACHE_META_SUFFIX = ".json"
CACHE_PLAN_SUFFIX = ".build.json"
CGROUP_FILE = "/proc/self/cgroup"
CGROUP_MOUNT = "/sys/fs/cgroup"
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB ({count:,} bytes)"


class PathLock:
    """An exclusive ``flock`` on ``<target>.lock``, held by every writer of ``<target>``.

    The kernel releases it when the holder dies, so a lock left by a killed
    process is simply taken over. The file holds the holder's pid and host for
    the error message; it is opened with ``O_NOFOLLOW`` (a link planted there
    is refused) and must be a regular file. The holder removes it when done;
    a process that locked the file just as it was removed sees that the name
    no longer leads to the file it locked, and starts again.
    """

    def __init__(self, path: str, what: str = "another process is writing the same file"):
        self.path = path
        self.what = what
        self.fd: int | None = None

    def __enter__(self) -> PathLock:
        import fcntl  # POSIX only; imported here so that reading caches works everywhere

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as exc:
                if exc.errno == errno.EISDIR:
                    message = f"the lock file '{self.path}' is a folder; preload creates that file itself: remove it"
                    raise TargetError(message) from None
                refuse_link(self.path, exc)
                raise
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                message = (f"the lock file '{self.path}' is not a regular file; preload creates that file itself: "
                           "remove it")
                raise TargetError(message)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                message = f"'{self.path}' is held by {holder}: {self.what}"
                raise CacheLockedError(message) from None
            try:
                now = os.stat(self.path, follow_symlinks=False)
                current = (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # its holder removed it while we were taking it: lock the new one
        started = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} (since {started})".encode(), 0)
        except OSError as exc:  # a full or failing disk: let go of the lock, and say which file failed
            self.fd = fd
            self.release()
            raise OSError(exc.errno, exc.strerror, self.path) from exc
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding it (see the class docs)
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------ .npy files


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says, where its data starts, and how long its file is."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # where the data starts, from the start of the file
    file_size: int
    version: tuple[int, int] = (1, 0)  # of the .npy format: the width of its header-length field

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(handle) -> NpyHeader:
    """The header of the ``.npy`` that starts at the position of the binary file ``handle``.

    The one parser of ``.npy`` headers in preload (caches, their partials,
    the members of an index ``.npz``). ``offset`` is the position in
    ``handle`` where the data starts; ``file_size`` the size of the whole
    file (``os.fstat``).

    Raises
    ------
    ValueError
        Not a ``.npy`` numpy can read (the message says why).

    Examples
    --------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> np.save(path, np.zeros((2, 3), np.uint8))
    >>> with open(path, "rb") as handle:
    ...     header = read_npy_header(handle)
    >>> header.shape, header.dtype, header.offset, header.file_size
    ((2, 3), dtype('uint8'), 128, 134)
    """
    try:
        version = npy_format.read_magic(handle)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    size = os.fstat(handle.fileno()).st_size
    return NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran), handle.tell(), size, tuple(version))


def inspect_npy(path: str, *, follow: bool = False) -> NpyHeader:
    """Read the header of the ``.npy`` at ``path`` (a link is followed only if ``follow``).

    Raises
    ------
    TargetError
        ``path`` is a link, a folder or not a regular file.
    ValueError
        The file is not a ``.npy`` numpy can read (the message says why).
    OSError
        It cannot be read.
    """
    with open(open_existing(path, follow=follow), "rb") as handle:
        return read_npy_header(handle)


def open_npy(path: str, *, writable: bool = False, follow: bool = False) -> np.memmap:
    """Memory-map the uint8 C-order ``.npy`` at ``path`` without following a link.

    Raises
    ------
    TargetError
        Not a regular file, not uint8 C order, or shorter than its header says.
    """
    header = inspect_npy(path, follow=follow)
    if header.dtype != np.uint8 or header.fortran_order or header.file_size < header.offset + header.data_bytes:
        message = (f"'{path}' is not a complete uint8 C-order .npy (dtype {header.dtype}, fortran_order "
                   f"{header.fortran_order}, {header.file_size:,} bytes for {header.offset + header.data_bytes:,})")
        raise TargetError(message)
    fd = open_existing(path, os.O_RDWR if writable else os.O_RDONLY, follow=follow)
    with open(fd, "r+b" if writable else "rb") as handle:
        return np.memmap(handle, np.uint8, "r+" if writable else "r", header.offset, header.shape)


def create_npy(path: str, shape: tuple[int, ...]) -> np.memmap:
    """Create a uint8 ``.npy`` of ``shape`` at ``path``, its blocks reserved on disk.

    A memory-mapped write into a sparse file on a full disk is a SIGBUS that
    kills the process; reserving every block up front turns "disk full" into
    an ``OSError`` here, before any decoding. The file is new (see
    :func:`create_new`): a link at ``path`` is replaced, never written through.

    Raises
    ------
    InsufficientDiskError
        The file system cannot hold the file.
    TargetError
        The file cannot be created for another reason.
    """
    header = {"descr": npy_format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": tuple(shape)}
    nbytes = math.prod(shape)
    try:
        fd = create_new(path)
        with open(fd, "r+b") as handle:
            npy_format.write_array_header_1_0(handle, header)
            offset = handle.tell()
            handle.flush()
            os.ftruncate(fd, offset + nbytes)
            if hasattr(os, "posix_fallocate") and nbytes:
                os.posix_fallocate(fd, 0, offset + nbytes)
            return np.memmap(handle, np.uint8, "r+", offset, tuple(shape))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(path)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = f"no space left for '{path}' ({_gb(nbytes)})"
            raise InsufficientDiskError(message) from exc
        message = f"cannot create '{path}': {exc.strerror or exc}"
        raise TargetError(message) from exc


# ------------------------------------------------------------------ memory room


def memory_room() -> tuple[int, str]:
    """Bytes this process can still allocate, and the limit that decides it.

    The smallest of: the memory psutil reports as available; the room left
    under the process's cgroup memory limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, of its cgroup and every ancestor; reclaimable
    page cache counted as free); and the address space left under
    ``RLIMIT_AS`` (``ulimit -v``).

    Examples
    --------
    >>> room, why = memory_room()
    >>> room > 0 and isinstance(why, str)
    True
    """
    limits = [(psutil.virtual_memory().available, "available memory")]
    cgroup = _cgroup_room()
    if cgroup is not None:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = psutil.Process().memory_info().vms
        limits.append((max(0, soft - used), f"the address-space limit RLIMIT_AS (ulimit -v) of {_gb(soft)}"))
    return min(limits, key=lambda item: item[0])


def _read_number(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(folder: str, key: str) -> int:
    """Reclaimable page cache charged to the cgroup (it does not stop an allocation)."""
    try:
        with open(os.path.join(folder, "memory.stat"), encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room() -> tuple[int, str] | None:
    """Room under the tightest cgroup memory limit on the way to the root, or None without one."""
    try:
        with open(CGROUP_FILE, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            mount, limit_name, usage_name, stat_key = CGROUP_MOUNT, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            mount = os.path.join(CGROUP_MOUNT, "memory")
            limit_name, usage_name, stat_key = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        # Inside a container the process's cgroup is often the mount's root itself.
        folder = os.path.join(mount, relative.lstrip("/"))
        if not os.path.exists(os.path.join(folder, limit_name)):
            folder = mount
        while True:
            limit = _read_number(os.path.join(folder, limit_name))
            usage = _read_number(os.path.join(folder, usage_name))
            if limit is not None and limit < UNLIMITED and usage is not None:
                room = max(0, limit - max(0, usage - _inactive_file(folder, stat_key)))
                if best is None or room < best[0]:
                    best = (room, f"the memory limit of the cgroup '{folder}' ({_gb(limit)})")
            if os.path.normpath(folder) == os.path.normpath(mount):
                break
            folder = os.path.dirname(folder)
    return best


# ---------------------------------------------------------------------- targets


@dataclass
class Target:
    """The allocated output and how to finish it."""

    array: np.ndarray
    kind: str  # "ram", "array" or "npy"
    path: str | None = None  # final .npy path
    temp_path: str | None = None  # where the .npy is written until finalize()
    lock: PathLock | None = None  # held from allocate() to finalize()/discard()

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
            shrink_npy(self.temp_path, rows)
        os.replace(self.temp_path, self.path)
        images = open_npy(self.path, writable=True)
        # Only now: on a failure (or Ctrl-C during the flush) the caller's discard()
        # removes the partial file while still holding the lock, so it cannot remove
        # the partial of a writer that took the lock in between.
        self.lock.release()
        return images

    def discard(self) -> None:
        """Remove a ``.npy`` that will never be complete (load failed)."""
        if self.kind == "npy":
            self.array = None
            try:
                os.remove(self.temp_path)
            except FileNotFoundError:
                pass
            finally:
                self.lock.release()


def allocate(out, shape: tuple[int, ...]) -> Target:
    """Resolve ``out=`` to a :class:`Target` of ``shape`` and dtype uint8.

    Raises
    ------
    TargetError
        ``out`` is an array of another shape/dtype, read-only, non-contiguous,
        a path not ending in ``.npy``, a folder, a preload cache or an
        unfinished cache build, or of an unsupported type.
    CacheLockedError
        Another process is writing the same ``.npy``.
    InsufficientMemoryError, InsufficientDiskError
        The array would not fit (checked before allocating).

    Examples
    --------
    >>> allocate(None, (2, 4, 4, 3)).array.shape
    (2, 4, 4, 3)
    """
    nbytes = math.prod(shape)
    if out is None:
        room, limit = memory_room()
        need = f"the array needs {_gb(nbytes)} (N*C*H*W = {' x '.join(map(str, shape))})"
        advice = 'load into a memory-mapped file instead, e.g. out="images.npy"'
        if nbytes > room:
            if limit == "available memory":
                message = f"{need} but only {_gb(room)} of memory is available; {advice}"
            else:
                message = f"{need} but only {_gb(room)} can be allocated under {limit}; {advice}"
            raise InsufficientMemoryError(message)
        try:
            return Target(fresh_array(shape), "ram")
        except (MemoryError, OSError) as exc:  # numpy's _ArrayMemoryError, mmap's ENOMEM: a limit we could not see
            if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
                raise
            message = f"{need} but the system refused to allocate it; {advice}"
            raise InsufficientMemoryError(message) from None
    if isinstance(out, np.ndarray):
        return Target(check_out(out, shape), "array")
    if isinstance(out, (str, os.PathLike)):
        return _allocate_npy(os.fspath(out), shape, nbytes)
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
    nbytes = math.prod(shape)
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):  # Windows: no such advice to avoid
        return np.empty(shape, np.uint8)
    try:
        memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, OverflowError) as exc:  # ENOMEM under RLIMIT_AS or strict overcommit
        message = f"cannot allocate the array of {_gb(nbytes)} (shape {tuple(shape)}): {exc}"
        raise InsufficientMemoryError(message) from None
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, np.uint8).reshape(shape)


def check_out_path(out) -> None:
    """Refuse an ``out=`` path that can never be written, before anything is read or decoded.

    Anything that is not a path passes (:func:`allocate` checks it).

    Raises
    ------
    TargetError
        The path does not end in ``.npy``, its folder does not exist, or it is a folder.

    Examples
    --------
    >>> check_out_path("/nonexistent/images.npy")
    Traceback (most recent call last):
    ...
    preload.errors.TargetError: out='/nonexistent/images.npy': the folder '/nonexistent' does not exist
    """
    if not isinstance(out, (str, os.PathLike)):
        return
    path = os.fspath(out)
    if not path.lower().endswith(".npy"):
        message = f"out='{path}' is not accepted; a file target must end in .npy"
        raise TargetError(message)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        message = f"out='{path}': the folder '{folder}' does not exist"
        raise TargetError(message)
    if os.path.isdir(path):
        message = f"out='{path}' is a folder; give the path of a .npy file to create"
        raise TargetError(message)


def _allocate_npy(path: str, shape: tuple[int, ...], nbytes: int) -> Target:
    check_out_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    free = psutil.disk_usage(folder).free
    if nbytes > free:
        message = f"out='{path}' needs {_gb(nbytes)} but its file system has {_gb(free)} free"
        raise InsufficientDiskError(message)
    lock = PathLock(path + LOCK_SUFFIX, "another load or cache build is writing the same file")
    with contextlib.ExitStack() as undo:
        undo.enter_context(lock)
        for suffix, what in ((CACHE_PLAN_SUFFIX, "an unfinished cache build"), (CACHE_META_SUFFIX, "a preload cache")):
            if os.path.lexists(path + suffix):
                message = (f"out='{path}' is {what} ('{path + suffix}' is there); loading over it would mix its "
                           "files with this load's array: finish or open it with preload.build_cache / open_cache, "
                           "or choose another out=")
                raise TargetError(message)
        temp = path + PARTIAL_SUFFIX
        target = Target(create_npy(temp, shape), "npy", path, temp, lock)
        undo.pop_all()
    return target


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


def shrink_npy(path: str, rows: int) -> None:
    """Rewrite a ``.npy`` header for ``rows`` rows, keeping its length, and truncate the data."""
    with open(open_existing(path, os.O_RDWR), "r+b") as handle:
        old = read_npy_header(handle)
        shape, dtype, data_start, version = old.shape, old.dtype, old.offset, old.version
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
        handle.truncate(data_start + rows * math.prod(shape[1:]) * dtype.itemsize)
