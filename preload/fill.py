"""Fill the target in parallel: the one per-row decode loop, the thread pool around it, the error policy.

:func:`decode_rows` is the only place a row is decoded and a failure turned
into the ``on_error`` outcome; :func:`fill_slots` (every local fill: a load,
a cache build, an :class:`~preload.ImageFiles` batch) runs it on a pool of
threads, and :func:`preload.distributed.fill_chunk` runs it inside a Dask
task. OpenCV releases the GIL while it decodes and resizes, so threads scale
without copying pixels between processes.

``on_error`` here has the meaning it has for the user, checked once by
:func:`preload.options.check_on_error`: under ``"raise"`` the first failure
stops the fill; under ``"skip"`` and ``"zero"`` a failed slot is zeroed and the
failure returned. Dropping skipped rows is the caller's part (it owns the
target: :func:`preload.load` compacts in place, a cache build when it
finishes).

:func:`common_size` is the header pass that sizes the target for
``size=None`` before anything is allocated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from . import headers
from .decode import Decoder
from .errors import Failure, ImageDecodeError, SizeMismatchError
from .options import DecodeOptions
from .sources import Manifest


@dataclass
class RowsDone:
    """What :func:`decode_rows` did with its rows.

    ``done`` leading rows are final (written, or zeroed after a failure);
    ``failures`` are the zeroed ones among them; ``raised`` is, under
    ``on_error="raise"``, the failure that ended the loop (its row is not
    counted as done). Fewer than all rows done with nothing raised means
    ``should_stop`` asked to stop.
    """

    done: int
    failures: list[Failure] = field(default_factory=list)
    raised: Failure | None = None


def decode_rows(
    decoder: Decoder,
    paths: Sequence[str],
    rows: Sequence[int],
    array: np.ndarray,
    on_error: str,
    should_stop: Callable[[], bool] | None = None,
) -> RowsDone:
    """Decode ``paths[k]`` into ``array[rows[k]]`` in order: the one per-row loop.

    ``should_stop()`` is asked before each row; when it says True the loop
    ends with the rows so far. A failure is recorded with its row number as
    :attr:`Failure.index`.

    Examples
    --------
    >>> import tempfile, os, cv2
    >>> from preload.options import DecodeOptions
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = cv2.imwrite(path, np.full((8, 8, 3), 9, np.uint8))
    >>> array = np.full((3, 4, 4, 3), 1, np.uint8)
    >>> result = decode_rows(Decoder(DecodeOptions.create(size=4)), [path, "missing.png"], [2, 0], array, "zero")
    >>> result.done, [(f.index, str(f.reason)) for f in result.failures], array[:, 0, 0, 0].tolist()
    (2, [(0, 'missing')], [0, 1, 9])
    """
    found: list[Failure] = []
    for k, (row, path) in enumerate(zip(rows, paths, strict=True)):
        if should_stop is not None and should_stop():
            return RowsDone(k, found)
        try:
            decoder.decode_into(path, array[row])
        except ImageDecodeError as exc:
            failure = Failure(int(row), exc.path, exc.reason, exc.detail)
            if on_error == "raise":
                return RowsDone(k, found, failure)
            found.append(failure)
            array[row] = 0
    return RowsDone(len(rows), found)


def fill_slots(
    decoder: Decoder,
    paths: Sequence[str],
    array: np.ndarray,
    *,
    on_error: str = "raise",
    workers: int = 1,
    on_done: Callable[[np.ndarray, list[Failure]], object] | None = None,
    indices: np.ndarray | None = None,
) -> list[Failure]:
    """Decode ``paths[i]`` into ``array[i]`` for every ``i`` in ``indices`` (default: all).

    Work is handed out in contiguous chunks, so a million files make a few
    thousand tasks, not a million futures. Under ``on_error="raise"`` the first
    failure (lowest index among those seen) is raised once running chunks
    stop; otherwise failed slots are zeroed and the failures returned with
    their indices.

    ``on_done(rows, failures)`` is called in the calling thread, one chunk at a
    time, with the indices whose slots are final (written, or zeroed after a
    failure) and the failures among them; progress bars and the cache's journal
    hang off it. Under ``on_error="raise"`` a chunk that hit the failure reports
    only the rows before it.

    Examples
    --------
    >>> import tempfile, os, cv2
    >>> from preload.options import DecodeOptions
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = cv2.imwrite(path, np.full((8, 8, 3), 9, np.uint8))
    >>> array = np.empty((2, 4, 4, 3), np.uint8)
    >>> fill_slots(Decoder(DecodeOptions.create(size=4)), [path, path], array, workers=2)
    []
    """
    todo = np.arange(len(paths)) if indices is None else np.asarray(indices)
    if len(todo) == 0:
        return []
    chunk = int(min(64, max(1, len(todo) // (workers * 8))))
    chunks = [todo[start : start + chunk] for start in range(0, len(todo), chunk)]
    stop = threading.Event()
    failures: list[Failure] = []  # extended from every thread (list.extend is atomic)

    def run(rows: np.ndarray) -> tuple[np.ndarray, list[Failure]]:
        result = decode_rows(decoder, [paths[i] for i in rows], rows, array, on_error, stop.is_set)
        failures.extend(result.failures)
        if result.raised is not None:
            failures.append(result.raised)
            stop.set()
        return rows[: result.done], result.failures

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
    if on_error == "raise" and failures:
        first = min(failures, key=lambda f: f.index)
        raise ImageDecodeError(first.path, first.reason, first.detail)
    return sorted(failures, key=lambda f: f.index)


def common_size(
    files: Manifest, options: DecodeOptions, on_error: str, workers: int
) -> tuple[tuple[int, int], np.ndarray, list[Failure]]:
    """For ``size=None``: the one (height, width) of all images, from their headers.

    Returns the size, the manifest rows to keep and the failures among the
    dropped ones. Files whose header is unreadable are dropped under ``skip``
    (and returned as failures), kept under ``zero`` (the fill records them),
    raised under ``raise``.
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
    if failures and on_error == "raise":
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
    if on_error == "skip":
        keep = np.asarray([i for i, (s, _) in enumerate(results) if s is not None], dtype=np.int64)
        return size, keep, failures
    return size, np.arange(len(files)), []


def compact(array: np.ndarray, keep: np.ndarray) -> None:
    """Move the kept rows to the front, in order (rows only ever move down)."""
    for write, read in enumerate(keep):
        if write != read:
            array[write] = array[read]
