"""The process-wide quiet a fill needs: OpenCV single-threaded, decoder chatter kept off the terminal.

:func:`quiet_opencv` is entered by every fill (a load, a cache build, a
cluster task): our threads are the parallelism, so OpenCV's own thread pool
is switched off, and what the C decoders print on file descriptor 2 is
collected and summarised in one log record instead of scrolling over the
progress bar. The state is process-wide, so concurrent and nested fills share
one setup: the first in sets it, the last out restores it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
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


class _Silenced:
    """The process-wide state a load changes, and how to put it back."""

    def __init__(self) -> None:
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
