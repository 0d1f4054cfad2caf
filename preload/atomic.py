"""Write a file so that its path only ever holds the old bytes or all of the new ones.

The one way preload writes a small file that must survive a kill or a power
cut (a cache's metadata, index, plan, journal, failure list): write it under
a temporary name in the same folder (so the rename stays on one file
system), ``fsync`` it, ``os.replace`` it over the final name (atomic on
POSIX), then ``fsync`` the folder so the rename itself is on disk. A write
that fails or is interrupted removes its temporary file and leaves the
final path as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
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
        with open(temp, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    fsync_folder(path)


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
