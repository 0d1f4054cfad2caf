"""Exception types and failure records shared by every module.

Every error preload raises on purpose derives from :class:`PreloadError`, so
``except preload.PreloadError`` catches all of them; the value problems also
derive from :class:`ValueError` and the resource problems from
:class:`MemoryError` / :class:`OSError`, so generic handlers keep working.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass


class PreloadError(Exception):
    """Base class of every error raised by preload."""


class OptionError(PreloadError, ValueError):
    """An argument has a value preload does not accept."""


class SourceError(PreloadError, ValueError):
    """The source (folder, path list or CSV) cannot be turned into a manifest."""


class SizeMismatchError(PreloadError, ValueError):
    """``size=None`` was given but the images do not all have one size."""


class TargetError(OptionError):
    """The ``out=`` argument has the wrong shape, dtype or kind (an :class:`OptionError` like any bad argument)."""


class InsufficientMemoryError(PreloadError, MemoryError):
    """The array would not fit in the memory that is available."""


class InsufficientDiskError(PreloadError, OSError):
    """The ``.npy`` target would not fit on its file system."""


class CacheError(PreloadError):
    """A cache is missing, unfinished, damaged, or was built with other options."""


class IncompleteCacheError(CacheError):
    """No complete cache at that path: missing, an unfinished build, or damaged files."""


class StaleCacheError(CacheError):
    """The source files changed since the cache was built.

    ``added``, ``removed`` and ``changed`` list the paths (all of them; the
    message shows a few).
    """

    def __init__(self, message: str, added=(), removed=(), changed=()):
        super().__init__(message)
        self.added = list(added)
        self.removed = list(removed)
        self.changed = list(changed)


class CacheLockedError(CacheError):
    """Another process is building the same cache."""


class ClusterError(PreloadError):
    """The cluster cannot build this cache: a worker cannot see the files, or a chunk keeps failing.

    ``paths`` lists every file of the chunks that kept failing (the message
    shows a few). The partial build is kept; fix the cause and run the same
    build again to resume it.
    """

    def __init__(self, message: str, paths=()):
        super().__init__(message)
        self.paths = list(paths)

    def __reduce__(self):  # raised on workers too: rebuild with both arguments on the other side
        return type(self), (str(self), self.paths)


class Reason(str, enum.Enum):
    """Why one file could not be loaded (``Failure.reason``)."""

    MISSING = "missing"  # no such file
    UNREADABLE = "unreadable"  # permission denied, a directory, an I/O error
    EMPTY = "empty"  # zero bytes
    NOT_AN_IMAGE = "not-an-image"  # unknown signature, or no decoder accepted it
    TRUNCATED = "truncated"  # the file ends before the image does
    TOO_LARGE = "too-large"  # header announces more pixels than max_pixels
    CORRUPT = "corrupt"  # recognised format, but the decoder failed
    DAMAGED = "damaged"  # the decoder reported damaged image data it would have papered over
    UNSUPPORTED = "unsupported"  # a variant OpenCV would decode wrongly, or one preload cannot bound
    WRONG_SIZE = "wrong-size"  # size=None and this image's size differs from the others'

    def __str__(self) -> str:
        return self.value


class ImageDecodeError(PreloadError):
    """One file could not be read or decoded.

    Attributes
    ----------
    path : str
        The file, as it appears in the manifest.
    reason : Reason
        The category of the problem.
    detail : str
        A human-readable explanation.
    """

    def __init__(self, path: str, reason: Reason, detail: str):
        self.path = path
        self.reason = Reason(reason)
        self.detail = detail
        message = f"cannot load '{display(path)}': {detail} [{self.reason}]"
        super().__init__(message)


@dataclass(frozen=True)
class Failure:
    """A file that ``on_error="skip"`` or ``"zero"`` did not load.

    ``index`` is the file's position in the manifest (before any skipping).
    """

    index: int
    path: str
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"'{display(self.path)}': {self.detail} [{self.reason}]"


def display(path) -> str:
    """``path`` as text any UTF-8 stream can print: undecodable bytes become ``\\xNN``.

    File names are bytes on POSIX; Python keeps the bytes that are not UTF-8 as
    lone surrogates, which a strict UTF-8 stdout refuses to print.

    Examples
    --------
    >>> display(os.fsdecode(b"caf\\xe9.jpg"))
    'caf\\\\xe9.jpg'
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from bytes
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def open_error(path: str, exc: OSError) -> ImageDecodeError:
    """Map an OSError from opening or reading ``path`` to a failure reason."""
    if isinstance(exc, FileNotFoundError):
        return ImageDecodeError(path, Reason.MISSING, "no such file")
    if isinstance(exc, IsADirectoryError):
        return ImageDecodeError(path, Reason.UNREADABLE, "it is a directory, not a file")
    if isinstance(exc, PermissionError):
        return ImageDecodeError(path, Reason.UNREADABLE, "permission denied")
    if exc.errno == errno.ELOOP:
        return ImageDecodeError(path, Reason.UNREADABLE, "a symlink loop (too many levels of symbolic links)")
    return ImageDecodeError(path, Reason.UNREADABLE, f"read error: {exc.strerror or exc}")
