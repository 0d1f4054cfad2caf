"""Fill the target in parallel: the ``load`` verb, its progress bar and error policy.

Order of work in :func:`load`:

1. resolve the source to a manifest (:mod:`preload.sources`);
2. if ``size=None``, read every header to find the one common size;
3. allocate the whole target once (:mod:`preload.target`), after checking
   that it fits;
4. decode file ``i`` straight into ``out[i]`` on a pool of threads
   (:mod:`preload.decode`); OpenCV releases the GIL while it decodes and
   resizes, so threads scale without copying pixels between processes;
5. apply the error policy and describe the result (:class:`Dataset`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager

import cv2
import numpy as np
from tqdm import tqdm

from . import headers
from .dataset import Dataset
from .decode import Decoder
from .errors import Failure, ImageDecodeError, SizeMismatchError
from .options import DEFAULT_MAX_PIXELS, DecodeOptions, check_on_error, resolve_workers
from .sources import Manifest, manifest
from .target import allocate

logger = logging.getLogger("preload")

def load(
    source,
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
    out=None,
    workers: int | None = None,
    progress: bool | None = None,
    on_error: str = "raise",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """Load every image of ``source`` into one preallocated uint8 array.

    Parameters
    ----------
    source : str, os.PathLike, sequence of paths, or Manifest
        A folder of class sub-folders, a flat folder, a CSV file (``path`` and
        optional ``label`` columns) or a list of paths. See
        :mod:`preload.sources` for the order of the rows.
    size : int, (height, width) or None
        Output size. ``None`` keeps the images' own size, which must then be
        the same for all of them.
    layout : {"NHWC", "NCHW"}
        Axis order of the array (any letter case).
    color : {"rgb", "bgr", "gray"}
        Channel order; "gray" gives one channel. Gray sources are repeated
        into three channels, alpha is dropped, 16-bit samples become
        ``value >> 8``.
    resize : {"stretch", "fit", "cover", "shorter"}
        "stretch" resizes to exactly ``size``; "fit" keeps the aspect ratio
        inside ``size`` and pads with ``fill``; "cover" keeps it and crops the
        centre; "shorter" scales the shorter side to ``max(size)`` and crops
        the centre (the usual resize-then-center-crop).
    interpolation : {"auto", "area", "linear", "nearest", "cubic", "lanczos"} or None
        None (= "auto"): when shrinking, a fast antialiased filter (linear to
        2^n times the output, then exact 2:1 area steps: >= 40 dB PSNR from
        OpenCV's INTER_AREA at about 0.4 of its cost); linear when enlarging
        both axes. "area" is OpenCV's exact INTER_AREA; "linear" alone aliases
        when shrinking and is only used when asked for.
    fill : int or tuple of int
        Padding value for ``resize="fit"``, per channel in ``color`` order.
    exif : bool
        Apply the EXIF orientation tag (rotate/flip as a camera meant it).
        ``False`` keeps the pixels in stored order.
    reduce : bool
        Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is at
        least that much smaller (faster, and itself an antialiasing filter).
    labels : sequence of int or str, optional
        Labels for a list of paths.
    out : None, numpy.ndarray, or path ending in ".npy"
        Where the pixels go: a new RAM array, an existing array or memmap of
        the right shape (filled in place), or a new ``.npy`` file that
        ``np.load(path, mmap_mode="r")`` opens anywhere.
    workers : int or None
        Threads decoding in parallel; None uses every core, 1 runs serially.
    progress : bool or None
        Show a progress bar on stderr; None shows it when stderr is a terminal.
    on_error : {"raise", "skip", "zero"}
        On a file that cannot be loaded: raise :class:`ImageDecodeError`;
        drop it (images, labels and paths stay aligned); or leave its slot
        zero. Skipped and zeroed files are listed in ``Dataset.failed``.
    max_pixels : int
        Refuse images whose header announces more pixels than this before
        anything is allocated (decompression bombs).

    Returns
    -------
    Dataset
        ``images``, ``labels``, ``classes``, ``paths``, ``failed``.

    Raises
    ------
    SourceError, OptionError, TargetError
        Bad source, option value or ``out=``.
    InsufficientMemoryError, InsufficientDiskError
        The array does not fit; raised before any decoding.
    ImageDecodeError
        A file failed and ``on_error="raise"``.
    SizeMismatchError
        ``size=None`` and the images differ in size.

    Examples
    --------
    >>> import tempfile, os, cv2, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.mkdir(os.path.join(root, name))
    ...     _ = cv2.imwrite(os.path.join(root, name, "1.png"), np.zeros((30, 40, 3), np.uint8))
    >>> ds = load(root, size=16, layout="NCHW", progress=False)
    >>> ds.images.shape, ds.labels.tolist(), ds.classes
    ((2, 3, 16, 16), [0, 1], ['cat', 'dog'])
    """
    options = DecodeOptions.create(
        size=size,
        layout=layout,
        color=color,
        resize=resize,
        interpolation=interpolation,
        fill=fill,
        exif=exif,
        reduce=reduce,
        max_pixels=max_pixels,
    )
    policy = check_on_error(on_error)
    threads = resolve_workers(workers)
    files = manifest(source, labels=labels)
    total = len(files)
    decoder = Decoder(options)
    show = progress_wanted(progress)

    with quiet_opencv() as console:
        failed: list[Failure] = []
        origin = np.arange(len(files))  # manifest index of each row, for Failure.index
        slot_size = options.size
        if slot_size is None:
            slot_size, keep, failed = common_size(files, options, policy, threads)
            if len(keep) != len(files):
                files, origin = files.select(keep), origin[keep]
        shape = (len(files),) + options.slot_shape(slot_size)
        target = allocate(out, shape)
        try:
            bar = tqdm(total=len(files), desc="loading", unit="img", file=console, disable=not show)
            with bar:
                errors = fill_slots(
                    decoder, files.paths, target.array, policy=policy, workers=threads,
                    on_done=lambda rows, found: bar.update(len(rows)),
                )
            errors = [Failure(int(origin[f.index]), f.path, f.reason, f.detail) for f in errors]
            keep = np.arange(len(files))
            if policy == "skip" and errors:
                bad = {f.index for f in errors}
                keep = np.asarray([i for i in range(len(files)) if int(origin[i]) not in bad], dtype=np.int64)
                _compact(target.array, keep)
                files = files.select(keep)
            images = target.finalize(len(keep))
        except BaseException:
            target.discard()
            raise
    failed = sorted(failed + errors, key=lambda f: f.index)
    if failed:
        logger.warning("%d of %d files were not loaded (first: %s); see Dataset.failed", len(failed), total, failed[0])
    return Dataset(images, files.labels, files.classes, files.paths, failed, options)


def fill_slots(
    decoder: Decoder,
    paths: list[str],
    array: np.ndarray,
    *,
    policy: str = "raise",
    workers: int = 1,
    on_done: Callable[[np.ndarray, list[Failure]], object] | None = None,
    indices: np.ndarray | None = None,
) -> list[Failure]:
    """Decode ``paths[i]`` into ``array[i]`` for every ``i`` in ``indices`` (default: all).

    Work is handed out in contiguous chunks, so a million files make a few
    thousand tasks, not a million futures. Under ``policy="raise"`` the first
    failure (lowest index among those seen) is raised once running chunks
    stop; otherwise failed slots are zeroed and the failures returned with
    their indices.

    ``on_done(rows, failures)`` is called in the calling thread, one chunk at a
    time, with the indices whose slots are final (written, or zeroed after a
    failure) and the failures among them; progress bars and the cache's journal
    hang off it. Under ``policy="raise"`` a chunk that hit the failure reports
    only the rows before it.
    """
    todo = np.arange(len(paths)) if indices is None else np.asarray(indices)
    if len(todo) == 0:
        return []
    chunk = int(min(64, max(1, len(todo) // (workers * 8))))
    chunks = [todo[start : start + chunk] for start in range(0, len(todo), chunk)]
    stop = threading.Event()
    failures: list[Failure] = []  # appended from every thread (list.append is atomic)

    def run(rows: np.ndarray) -> tuple[np.ndarray, list[Failure]]:
        found = []
        for k, i in enumerate(rows):
            if stop.is_set():
                return rows[:k], found
            try:
                decoder.decode_into(paths[i], array[i])
            except ImageDecodeError as exc:
                failure = Failure(int(i), exc.path, exc.reason, exc.detail)
                failures.append(failure)
                if policy == "raise":
                    stop.set()
                    return rows[:k], found
                found.append(failure)
                array[i] = 0
        return rows, found

    report = on_done or (lambda rows, found: None)
    if workers == 1:
        for rows in chunks:
            report(*run(rows))
            if stop.is_set():
                break
    else:
        # Leaving the with-block waits for running chunks, so every failure
        # they hit is in ``failures`` before it is read below.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preload") as pool:
            futures = [pool.submit(run, rows) for rows in chunks]
            try:
                for future in as_completed(futures):
                    report(*future.result())
                    if stop.is_set():
                        break
            finally:  # also on Ctrl-C: queued chunks are dropped, running ones stop early
                stop.set()
                for future in futures:
                    future.cancel()
    if policy == "raise" and failures:
        first = min(failures, key=lambda f: f.index)
        raise ImageDecodeError(first.path, first.reason, first.detail)
    return sorted(failures, key=lambda f: f.index)


def common_size(
    files: Manifest, options: DecodeOptions, policy: str, workers: int
) -> tuple[tuple[int, int], np.ndarray, list[Failure]]:
    """For ``size=None``: the one (height, width) of all images, from their headers.

    Files whose header is unreadable are dropped under ``skip`` (and returned
    as failures), kept under ``zero`` (the fill records them), raised under ``raise``.
    """
    decoder = Decoder(options)

    def measure(i: int):
        path = files.paths[i]
        try:
            info = headers.probe(path)
            size = info.oriented_size(options.exif)
            if size is None:  # a header we do not parse: ask the decoder
                size = decoder.decode(path)[0].shape[:2]
            return tuple(size), None
        except ImageDecodeError as exc:
            return None, Failure(i, exc.path, exc.reason, exc.detail)

    if workers == 1:
        results = [measure(i) for i in range(len(files))]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preload-probe") as pool:
            results = list(pool.map(measure, range(len(files))))
    failures = [failure for _, failure in results if failure is not None]
    if failures and policy == "raise":
        first = failures[0]
        raise ImageDecodeError(first.path, first.reason, first.detail)
    sizes = {}
    for i, (size, _) in enumerate(results):
        if size is not None:
            sizes.setdefault(size, i)
            if len(sizes) > 1:
                (size_a, a), (size_b, b) = list(sizes.items())[:2]
                message = (
                    f"size=None needs all images to have one size, but '{files.paths[a]}' is "
                    f"{size_a[0]}x{size_a[1]} and '{files.paths[b]}' is {size_b[0]}x{size_b[1]} "
                    "(height x width); pass size=(height, width) to resize them"
                )
                raise SizeMismatchError(message)
    if not sizes:
        message = f"size=None: none of the {len(files)} files has a readable size (first: {failures[0]})"
        raise SizeMismatchError(message)
    size = next(iter(sizes))
    if policy == "skip":
        keep = np.asarray([i for i, (s, _) in enumerate(results) if s is not None], dtype=np.int64)
        return size, keep, failures
    return size, np.arange(len(files)), []


def _compact(array: np.ndarray, keep: np.ndarray) -> None:
    """Move the kept rows to the front, in order (rows only ever move down)."""
    for write, read in enumerate(keep):
        if write != read:
            array[write] = array[read]


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


def progress_wanted(progress: bool | None) -> bool:
    """``progress=None``: a bar only when stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    return sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
