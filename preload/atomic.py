"""Write a file so that its path only ever holds the old bytes or all of the new ones.

The one way preload writes a small file that must survive a kill or a power
cut (a cache's metadata, index, plan, journal, failure list): write it under
a temporary name in the same folder (so the rename stays on one file
system), ``fsync`` it, ``os.replace`` it over the final name (atomic on
POSIX), then ``fsync`` the folder so the rename itself is on disk. A write
that fails or is interrupted removes its temporary file and leaves the
final path as it was.

Every file preload creates is opened with ``O_NOFOLLOW``, and with
``O_EXCL`` when it is new (:func:`create_new`): a symbolic link planted at one
of preload's names (a temporary file, a ``.partial``, a lock) is refused or
unlinked, never followed, so preload never writes into a file it did not
create. Files preload reads back (:func:`read_file`) must be regular files:
a FIFO planted there cannot hang the reader.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from .errors import TargetError
from .sources import file_kind

TEMP_SUFFIX = ".tmp"  # the one temporary name of a path: a killed writer leaves exactly ``path + TEMP_SUFFIX``
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None,
                 errors: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, durably.

    Examples
    --------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "meta.json")
    >>> with atomic_write(path, "w", encoding="utf-8") as handle:
    ...     _ = handle.write("{}")
    >>> open(path).read(), os.path.exists(path + TEMP_SUFFIX)
    ('{}', False)
    """
    path = os.fspath(path)
    temp = path + TEMP_SUFFIX
    try:
        with open(create_new(temp), mode, encoding=encoding, errors=errors) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(temp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = path  # "no space left" from a write names no file: name the one being written
        raise
    fsync_folder(path)


def sweep_temporaries(paths) -> list[str]:
    """Remove the temporaries :func:`atomic_write` left at ``path + TEMP_SUFFIX`` for each of ``paths``.

    A writer killed between creating its temporary and renaming it (kill -9,
    a power cut) leaves that file behind; only the next writer of the same
    paths, holding their lock, may remove it. Exactly those names are
    looked at, and only a regular file or a link there is removed (never a
    folder, never another name): preload removes nothing it did not create.

    Returns
    -------
    list of str
        The temporaries removed.

    Examples
    --------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "meta.json")
    >>> open(path + TEMP_SUFFIX, "wb").close()  # as a killed writer leaves it
    >>> [os.path.basename(p) for p in sweep_temporaries([path])]
    ['meta.json.tmp']
    """
    removed = []
    for path in paths:
        temp = os.fspath(path) + TEMP_SUFFIX
        try:
            mode = os.lstat(temp).st_mode
        except OSError:  # nothing there (the usual case), or not ours to look at
            continue
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
                removed.append(temp)
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` as the whole content of ``path``, atomically and durably (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def fsync_folder(path: str | os.PathLike) -> None:
    """Flush the folder holding ``path``, so a rename or a new name in it survives a power cut.

    Best effort: some file systems (and all of Windows) cannot open a folder for it.
    """
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(os.fspath(path))), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def refuse_link(path: str, exc: OSError) -> None:
    """Turn "it is a symlink" (ELOOP from O_NOFOLLOW) into a clear error; re-raise anything else."""
    if exc.errno == errno.ELOOP:
        message = (f"'{path}' is a symbolic link; preload creates that file itself and never follows a link "
                   "there (it could point at a file preload did not create): remove it")
        raise TargetError(message) from None
    raise exc


def create_new(path: str) -> int:
    """A descriptor of a new, empty regular file at ``path`` (read-write).

    Whatever is at that name is unlinked first (a leftover of a killed
    process, or a planted link: unlinking a link leaves its target alone),
    then the file is created with ``O_EXCL | O_NOFOLLOW``, so the descriptor
    is always of a file this call created.

    Examples
    --------
    >>> import tempfile
    >>> fd = create_new(os.path.join(tempfile.mkdtemp(), "x.tmp"))
    >>> os.fstat(fd).st_size
    0
    >>> os.close(fd)
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    except OSError as exc:
        refuse_link(path, exc)
        raise


def open_existing(path: str, flags: int = os.O_RDONLY, *, follow: bool = False) -> int:
    """A descriptor of the regular file at ``path``, opened without following a link (unless ``follow``).

    Raises
    ------
    TargetError
        ``path`` is a symbolic link, a folder, a FIFO or a device.
    FileNotFoundError
        Nothing is there.
    """
    try:
        link_flags = os.O_CLOEXEC if follow else NOFOLLOW
        fd = os.open(path, flags | link_flags | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO there must not hang us
    except OSError as exc:
        if exc.errno in (errno.EISDIR,):
            message = f"'{path}' is a directory, not a file preload wrote"
            raise TargetError(message) from None
        refuse_link(path, exc)
        raise
    kind = file_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        # A folder opens fine read-only (EISDIR is only for writing): name it, as for the rest.
        message = f"'{path}' is {kind}, not a regular file; preload only writes regular files there"
        raise TargetError(message)
    os.set_blocking(fd, True)
    return fd


def read_file(path: str) -> bytes:
    """The bytes of a small file preload wrote (metadata, plan), read without following a link."""
    fd = open_existing(path)
    with open(fd, "rb") as handle:
        return handle.read()
