"""The process-wide quiet a fill needs, and what a decoder prints about one file.

:func:`quiet_opencv` is entered by every fill (a load, a cache build, a
cluster task): our threads are the parallelism, so OpenCV's own thread pool
is switched off, and what the C decoders print on file descriptor 2 is
collected and summarised in one log record instead of scrolling over the
progress bar. The state is process-wide, so concurrent and nested fills share
one setup: the first in sets it, the last out restores it.

:func:`stderr_lines` is for the decoders that report damaged data only by
printing it (libjpeg inside OpenCV, libtiff through OpenCV's logger): it runs
one decode with file descriptor 2 pointed at a private file and hands back
the lines, so a warning is attributed to the file being decoded. fd 2 is
process-wide, so such decodes run one at a time; everything else keeps
running in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import cv2

logger = logging.getLogger("preload")

# What libjpeg, libpng, libtiff and OpenCV print on their own; anything else
# written to stderr during a load (other threads' logs, tracebacks) passes through.
_DECODER_LINE = re.compile(
    r"^(libpng|Corrupt JPEG|Premature end of JPEG|Invalid SOS|Bogus |Unsupported marker|JPEG|Warning: unknown JFIF|"
    r"TIFF|libtiff|\[ ?(WARN|ERROR|INFO)|OpenJPEG|JP2|libwebp)"
)
# A line of OpenCV's own logger: "[ WARN:0@0.012] global grfmt_tiff.cpp:123 ...".
_OPENCV_LOG_LINE = re.compile(rb"^\[ ?(WARN|ERROR|INFO|DEBUG|VERBOSE|FATAL)[:\]]")

# Held by whoever points file descriptor 2 somewhere else or changes OpenCV's
# log level: a load setting up or restoring its quiet, and stderr_lines.
_fd2_lock = threading.Lock()


class _Silenced:
    """The process-wide state a load changes, and how to put it back."""

    def __init__(self) -> None:
        with _fd2_lock:
            self._setup()

    def _setup(self) -> None:
        self.threads = cv2.getNumThreads()
        self.log_level = cv2.utils.logging.getLogLevel()
        cv2.setNumThreads(1)
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        self.console = sys.stderr
        self.decoder_lines: list[str] = []
        self.saved = self.reader = None
        self._handover = threading.Lock()
        self._pump_done = self._pump_owns_saved = False
        try:
            uses_fd2 = sys.stderr is not None and sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # Jupyter, pytest's capsys, closed stderr
            uses_fd2 = False
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            self.saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): nothing to capture
            return
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)  # fd 2 is now the pipe's only writer: restoring it ends the reader
        self.reader = threading.Thread(target=self._pump, args=(read_end,), name="preload-stderr", daemon=True)
        self.reader.start()
        if uses_fd2:
            self.console = os.fdopen(os.dup(self.saved), "w", buffering=1, encoding="utf-8", errors="replace")

    def _pump(self, read_end: int) -> None:
        """Keep decoder chatter for the summary; pass every other line straight through."""
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._route(line + b"\n")
        if pending:
            self._route(pending)
        os.close(read_end)
        with self._handover:
            self._pump_done = True
            if self._pump_owns_saved:
                os.close(self.saved)

    def _route(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        if _DECODER_LINE.match(text):
            self.decoder_lines.append(text)
            return
        with contextlib.suppress(OSError):
            os.write(self.saved, raw)

    def restore(self) -> None:
        with _fd2_lock:
            cv2.setNumThreads(self.threads)
            cv2.utils.logging.setLogLevel(self.log_level)
            if self.saved is None:
                return
            if self.console is not sys.stderr:
                self.console.close()
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(self.saved, 2)
        # EOF comes at once, unless a process started during the load (a Dask
        # nanny restarting a worker, say) inherited the pipe as its stderr: then
        # the reader keeps passing that process's lines through, and closes the
        # saved descriptor itself when the process ends.
        self.reader.join(timeout=1.0)
        with self._handover:
            if self._pump_done:
                os.close(self.saved)
            else:
                self._pump_owns_saved = True
        if self.decoder_lines:
            distinct = list(dict.fromkeys(self.decoder_lines))
            logger.warning(
                "the image decoders printed %d message(s) during the load, e.g. %s",
                len(self.decoder_lines),
                "; ".join(repr(line) for line in distinct[:3]),
            )


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_state: _Silenced | None = None


@contextmanager
def quiet_opencv() -> Iterator:
    """While loading: OpenCV single-threaded and quiet; yields the stream for progress bars.

    Our threads are the parallelism; OpenCV's own pool on top would
    oversubscribe the cores. libjpeg, libpng and libtiff print warnings with
    ``fprintf(stderr)``, out of OpenCV's logger's reach, so file descriptor 2
    is pointed at a pipe for the duration: their lines are summarised in one
    log record afterwards, every other line is passed through at once, and
    the progress bar writes to the real terminal through a duplicate of the
    original descriptor. These settings are process-wide, so concurrent and
    nested loads share them: the first load in sets them up and the last one
    out restores them.
    """
    global _quiet_depth, _quiet_state
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_state = _Silenced()
        _quiet_depth += 1
        console = _quiet_state.console
    try:
        yield console
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                state, _quiet_state = _quiet_state, None
                state.restore()


# ------------------------------------------------------- one decode's own lines

_MAX_CAPTURED = 1 << 20  # a damaged file of many strips prints a line per strip: keep the first MB
_sink: int | None = None  # the private file fd 2 points at during stderr_lines; reused, emptied each time
_sink_file = None  # the file object behind _sink where memfd_create is missing


def _sink_fd() -> int:
    global _sink, _sink_file
    if _sink is None:
        if hasattr(os, "memfd_create"):
            _sink = os.memfd_create("preload-stderr", os.MFD_CLOEXEC)
        else:
            _sink_file = tempfile.TemporaryFile()
            _sink = _sink_file.fileno()
    return _sink


def _after_fork_in_child() -> None:
    # A forked child shares the parent's file (and its offset): it gets its own,
    # and a lock some parent thread held at the fork is not held in the child.
    global _sink, _sink_file, _fd2_lock
    _sink = _sink_file = None
    _fd2_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def stderr_lines() -> Iterator[list[str]]:
    """Run the block alone with file descriptor 2 pointed at a private file; then list what it printed.

    For the decoders that report damaged data only by printing a warning:
    libjpeg inside OpenCV (``fprintf(stderr)``) and libtiff through OpenCV's
    logger, whose level is raised to WARNING for the block if it is lower
    (a load keeps it SILENT). fd 2 and the log level are process-wide, so
    blocks run one at a time, and no load sets up or restores its quiet
    during one. The list yielded is filled when the block ends (also when it
    raises), one stripped line per item.

    What other threads print meanwhile lands in the same file: every line is
    passed on to the real fd 2 afterwards, except OpenCV logger lines that
    only the raised level let through. So a line is this block's for sure
    only if no other thread runs that decoder outside this function.
    """
    lines: list[str] = []
    with _fd2_lock:
        sink = _sink_fd()
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): the sink becomes fd 2 for the block
            saved = None
        level = cv2.utils.logging.getLogLevel()
        raised = level < cv2.utils.logging.LOG_LEVEL_WARNING
        if raised:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
        os.dup2(sink, 2)
        try:
            yield lines
        finally:
            if saved is None:
                os.close(2)
            else:
                os.dup2(saved, 2)
                os.close(saved)
            if raised:
                cv2.utils.logging.setLogLevel(level)
            size = os.fstat(sink).st_size
            raw = os.pread(sink, min(size, _MAX_CAPTURED), 0) if size else b""
            if size:
                os.ftruncate(sink, 0)
                os.lseek(sink, 0, os.SEEK_SET)
            passed = []
            for line in raw.splitlines(keepends=True):
                text = line.decode("utf-8", "replace").strip()
                if text:
                    lines.append(text)
                if not (raised and _OPENCV_LOG_LINE.match(line)):
                    passed.append(line)
            if passed and saved is not None:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(passed))
