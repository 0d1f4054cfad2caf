"""Build a cache on a Dask cluster: workers decode in place, this process keeps the books.

Install with ``pip install "preload-images[dask]"`` (``pip install ".[dask]"`` in a
clone). Importing this module does not import Dask (only :func:`fill_on_cluster` does); :class:`ClusterError` lives
in :mod:`preload.errors` (``preload.ClusterError``, also importable from here)
so it can be caught without the extra.

Who does what
-------------
:func:`preload.build_cache` with ``client=`` does everything a local build
does -- list the source, plan, take the lock, create the partial ``.npy``
with its blocks reserved, keep the journal, rename into place and write the
metadata -- in the calling process, the *coordinator*. Only the decoding
moves: :func:`fill_on_cluster` cuts the rows still to do into chunks, and
each chunk is one Dask task (:func:`fill_chunk`) that

1. opens the partial ``.npy`` in ``r+`` mode on the shared file system;
2. decodes each of its files straight into its row, with the same
   :class:`~preload.decode.Decoder` and OpenCV settings as a local build;
3. flushes its mapping (``msync``) and returns the rows it wrote, the files
   that failed and its timing: a few hundred bytes, never pixels.

The coordinator hands each chunk's rows to ``on_done``, which sets their
journal bits, so a cluster build killed at any moment resumes like a local
one (locally or on a cluster), and the finished file is byte-for-byte what a
local build writes.

The probe file
--------------
Before submitting anything the coordinator writes a random token to
``<cache>.npy.partial.probe``, and every worker must read it back, open the
partial in ``r+`` mode and read a source file (``Client.run``). A worker that
cannot, that sees another file under the same path (a disk of its own mounted
where the share should be), or that runs another preload or OpenCV version
(its rows would differ from what the metadata records) is named in a
:class:`ClusterError` before anything is decoded. Each task checks the token
again when it starts, since workers can join later, and every
:data:`CHECK_SECONDS` while it runs: Dask cannot interrupt a running task, so
the coordinator stops its tasks by overwriting the token, and a new build of
the same cache (after the coordinator was killed) stops the old build's
leftover tasks the same way. The file is removed when the fill ends.

Chunks
------
Tasks should run for seconds: per-task overhead is milliseconds, and each
chunk is one journal update. The first chunks have :data:`FIRST_CHUNK` rows;
later ones are sized from the measured seconds per image to last about
:data:`TARGET_SECONDS`, at most :data:`MAX_CHUNK_BYTES` of pixels (the dirty
pages a task holds before its flush), and near the end no larger than an
even share of what is left per worker thread. ``chunk=`` fixes the size
instead. At most :data:`IN_FLIGHT` chunks per worker thread are submitted at
a time, so a million files never become a million futures and a stop
has little to cancel.

Failures
--------
A file that cannot be decoded is handled as in a local build: under
``"zero"`` its row is zeroed and reported; under ``"raise"`` the coordinator
stops submitting, stops the running tasks (their finished rows are still
journaled), then raises :class:`~preload.errors.ImageDecodeError` for the
lowest-index failure seen. A task that raises is retried ``retries`` times; a
task whose worker dies is run again elsewhere by Dask (up to its
``distributed.scheduler.allowed-failures`` setting). A chunk that still fails
stops the build with a :class:`ClusterError` naming its rows and files; every
row written so far stays journaled, so fixing the cause and running the same
build again resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ._version import __version__
from .atomic import NOFOLLOW, refuse_link
from .decode import Decoder
from .errors import ClusterError, Failure, ImageDecodeError, OptionError
from .fill import decode_rows
from .options import DecodeOptions, check_on_error
from .quiet import quiet_opencv
from .target import read_npy_header

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger("preload.distributed")

TARGET_SECONDS = 2.0  # a chunk's task time, once the time per image is known
FIRST_CHUNK = 16  # rows per chunk before any chunk has been timed
MAX_CHUNK_BYTES = 128 << 20  # pixels a task writes before its one flush
IN_FLIGHT = 2  # chunks submitted per worker thread: one running, one queued
CHECK_SECONDS = 0.2  # how often a running task re-reads the token
RETRIES = 2  # re-runs of a task that raised (worker deaths are Dask's allowed-failures)
DRAIN_SECONDS = 60.0  # after a stop: how long to wait for running tasks to report their rows
WORKER_WAIT_SECONDS = 60.0  # how long to wait for a cluster with no workers yet
PROBE_SUFFIX = ".probe"
STOPPED = "stopped"  # the token's value once the coordinator has stopped the build


@dataclass(frozen=True)
class ChunkResult:
    """What one task sends back: row numbers and timings, never pixels."""

    rows: np.ndarray  # rows whose slots are final: written, or zeroed after a failure
    failures: list[Failure]  # files zeroed under "zero"
    raised: Failure | None  # under "raise": the failure that ended the chunk
    stopped: bool  # ended early because the token changed
    worker: str  # the worker's address
    host: str
    seconds: float  # the task's wall time, open and flush included


@dataclass
class WorkerStats:
    """One worker's share of a cluster build."""

    worker: str
    host: str
    chunks: int = 0
    images: int = 0
    seconds: float = 0.0  # summed task time (over its threads)


@dataclass
class ClusterSummary:
    """What :func:`fill_on_cluster` did: images, chunks, time, failures and each worker's part."""

    images: int = 0
    chunks: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary as text: one line for the build, one per worker (busiest first)."""
        rate = self.images / self.seconds if self.seconds else 0.0
        lines = [f"cluster  {self.images:,} images in {self.chunks:,} chunks on {len(self.workers)} worker(s), "
                 f"{self.seconds:.2f} s ({rate:.0f} images/s)"]
        for stats in sorted(self.workers.values(), key=lambda s: -s.images):
            share = stats.images / self.seconds if self.seconds else 0.0
            per_image = 1e3 * stats.seconds / stats.images if stats.images else 0.0
            lines.append(f"  worker {stats.worker} (host {stats.host}): {stats.images:,} images in {stats.chunks:,} "
                         f"chunks, {share:.0f} images/s ({per_image:.1f} ms per image in its tasks)")
        return lines


# ------------------------------------------------------------------ on a worker


def fill_chunk(partial: str, token: str, rows: np.ndarray, paths: Sequence[str], options: DecodeOptions,
               on_error: str, shape: tuple[int, ...]) -> ChunkResult:
    """Decode ``paths[k]`` into row ``rows[k]`` of the ``.npy`` at ``partial``: the task of a cluster build.

    Runs on a Dask worker (a top-level function, so it pickles by name), with
    the same per-row loop as a local build (:func:`preload.fill.decode_rows`):
    failed files are zeroed and reported under ``on_error="skip"`` or
    ``"zero"``; under ``"raise"`` the chunk ends at the first one, reporting
    only the rows before it. The mapping is flushed before returning, so every
    row reported is on disk. The task ends early, reporting the rows it
    finished, when the token in ``partial + ".probe"`` is no longer ``token``.

    Raises
    ------
    ClusterError
        This worker cannot see the probe file or open ``partial`` for
        writing, or sees a file of another shape there.

    Examples
    --------
    >>> import tempfile, os, cv2
    >>> from preload.target import create_npy
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, f"{k}.png") for k in range(3)]
    >>> for k, path in enumerate(paths):
    ...     _ = cv2.imwrite(path, np.full((8, 8, 3), 10 * k, np.uint8))
    >>> partial = os.path.join(folder, "c.npy.partial")
    >>> _ = create_npy(partial, (3, 4, 4, 3))
    >>> with open(partial + ".probe", "w") as handle:
    ...     _ = handle.write("t0")
    >>> options = DecodeOptions.create(size=4)
    >>> done = fill_chunk(partial, "t0", np.array([1, 2]), paths[1:], options, "raise", (3, 4, 4, 3))
    >>> done.rows.tolist(), np.load(partial)[:, 0, 0, 0].tolist()
    ([1, 2], [0, 10, 20])
    """
    started = time.perf_counter()
    worker, host = _whoami()
    rows = np.asarray(rows, np.int64)
    if not _token_matches(partial, token, worker, host, first=True):
        return ChunkResult(rows[:0], [], None, True, worker, host, time.perf_counter() - started)
    array = _open_partial(partial, shape, worker, host)
    next_check = time.monotonic() + CHECK_SECONDS

    def token_changed() -> bool:
        nonlocal next_check
        if time.monotonic() < next_check:
            return False
        next_check = time.monotonic() + CHECK_SECONDS
        return not _token_matches(partial, token, worker, host)

    try:
        with quiet_opencv():  # single-threaded OpenCV, as in a local build; decoder chatter summarised
            result = decode_rows(Decoder(options), paths, rows, array, on_error, token_changed)
    finally:
        # msync before reporting: the coordinator sets journal bits for these rows
        # as soon as it hears of them, and its own mapping holds none of our pages.
        array.flush()
        del array
    stopped = result.raised is None and result.done < len(rows)
    return ChunkResult(rows[: result.done], result.failures, result.raised, stopped, worker, host,
                       time.perf_counter() - started)


def _whoami() -> tuple[str, str]:
    """This worker's address (or host:pid outside a worker) and host name."""
    host = socket.gethostname()
    try:
        from distributed import get_worker

        return get_worker().address, host
    except (ImportError, ValueError):
        return f"{host}:{os.getpid()}", host


def _token_matches(partial: str, token: str, worker: str, host: str, first: bool = False) -> bool:
    """True while the build that sent this task is running; a missing file at the start is an error."""
    probe = partial + PROBE_SUFFIX
    try:
        with open(probe, encoding="ascii", errors="replace") as handle:
            return handle.read() == token
    except FileNotFoundError:
        if not first:  # removed when the fill ended: stop
            return False
        message = (f"worker {worker} (host {host}) cannot see '{probe}', which the building process wrote next to "
                   f"'{partial}': the cache's folder must be on a file system every worker mounts at the same path")
        raise ClusterError(message) from None


def _open_partial(partial: str, shape: tuple[int, ...], worker: str, host: str) -> np.memmap:
    try:
        array = np.load(partial, mmap_mode="r+")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        message = (f"worker {worker} (host {host}) cannot open the cache being built, '{partial}', for writing: "
                   f"{reason}; the cache must be on a file system every worker mounts, at the same path and writable")
        raise ClusterError(message) from None
    if array.shape != tuple(shape) or array.dtype != np.uint8:
        message = (f"worker {worker} (host {host}) sees another file at '{partial}' (shape {array.shape}, "
                   f"{array.dtype}; the build's is {tuple(shape)}, uint8): is a disk of its own mounted at that path?")
        raise ClusterError(message)
    return array


def probe_worker(partial: str, token: str, shape: tuple[int, ...], source: str | None, dask_worker=None) -> dict:
    """Run on every worker before a build (``Client.run``): can it see and write what the build needs?

    Returns ``{"worker", "host", "preload", "opencv", "problem"}``; ``problem``
    is None when the worker sees the probe token, can open ``partial`` for
    writing with the right shape and can read ``source``, else one sentence.

    Examples
    --------
    >>> probe_worker("/nonexistent/c.npy.partial", "t0", (1, 2, 2, 3), None)["problem"]  # doctest: +ELLIPSIS
    "worker ... cannot see '/nonexistent/c.npy.partial.probe', which the building process wrote next to ..."
    """
    host = socket.gethostname()
    worker = dask_worker.address if dask_worker is not None else f"{host}:{os.getpid()}"
    answer = {"worker": worker, "host": host, "preload": __version__, "opencv": cv2.__version__, "problem": None}
    try:
        if not _token_matches(partial, token, worker, host, first=True):
            answer["problem"] = (f"worker {worker} (host {host}) sees another '{partial}{PROBE_SUFFIX}' than the one "
                                 "the building process wrote: is a disk of its own mounted at that path?")
            return answer
        array = _open_partial(partial, shape, worker, host)  # r+: the file must be writable; nothing is written
        del array
        if source is not None:
            with open(source, "rb") as handle:
                handle.read(1)
    except ClusterError as exc:
        answer["problem"] = str(exc)
    except OSError as exc:
        answer["problem"] = (f"worker {worker} (host {host}) cannot read the source file '{source}': "
                             f"{exc.strerror or exc}; the source must be visible to every worker at the same path")
    return answer


# ------------------------------------------------------------ on the coordinator


def fill_on_cluster(
    client: Client,
    partial: str,
    paths: Sequence[str],
    options: DecodeOptions,
    todo: np.ndarray,
    *,
    on_error: str = "raise",
    on_done: Callable[[np.ndarray, list[Failure]], object] | None = None,
    chunk: int | None = None,
    retries: int = RETRIES,
) -> ClusterSummary:
    """Decode ``paths[i]`` into row ``i`` of the ``.npy`` at ``partial`` for every ``i`` in ``todo``, on Dask.

    The cluster counterpart of :func:`preload.fill.fill_slots`, called by
    :func:`preload.build_cache` when it is given ``client=``; see the module
    docs for the protocol. Workers write the rows straight into the file,
    which must be on a file system every worker mounts at the same path;
    only row numbers, failures and timings travel back.

    Parameters
    ----------
    client : distributed.Client
        A (synchronous) client of the cluster.
    partial : str
        The ``.npy`` to fill, already created at its full size.
    paths : sequence of str
        Every source file, absolute; row ``i`` comes from ``paths[i]``.
    options : DecodeOptions
        How to decode (pickled to the workers).
    todo : array of int
        The rows to decode.
    on_error : {"raise", "skip", "zero"}
        A failed file stops the build (raising after the running chunks
        have reported), or has its row zeroed and is reported (dropping
        skipped rows is the caller's part, as for
        :func:`preload.fill.fill_slots`).
    on_done : callable, optional
        ``on_done(rows, failures)``, called in this thread once per finished
        chunk with the rows now final on disk and the failures among them.
    chunk : int, optional
        Rows per task. Default: sized from the measured time per image so a
        task runs about :data:`TARGET_SECONDS`.
    retries : int
        How often a task that raised is run again before its chunk is
        reported as failed.

    Returns
    -------
    ClusterSummary
        Images, chunks, seconds, the failures (sorted by row) and each
        worker's share; also logged at INFO on the ``preload.distributed``
        logger.

    Raises
    ------
    ClusterError
        A worker cannot see or write the cache or read the source, runs
        another preload or OpenCV version, or a chunk kept failing.
    ImageDecodeError
        A file failed under ``on_error="raise"``.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> import preload  # doctest: +SKIP
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:  # doctest: +SKIP
    ...     ds = preload.build_cache("data/train", "cache/train.npy", size=256, client=client)
    """
    on_error = check_on_error(on_error)
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1):
        message = f"chunk={chunk!r} is not accepted; use a positive int, or None to size chunks by time"
        raise OptionError(message)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        message = f"retries={retries!r} is not accepted; use an int >= 0"
        raise OptionError(message)
    todo = np.asarray(todo, np.int64)
    summary = ClusterSummary()
    if len(todo) == 0:
        return summary
    if getattr(client, "asynchronous", False):
        message = "fill_on_cluster needs a synchronous dask.distributed.Client (this one is asynchronous)"
        raise OptionError(message)
    with open(partial, "rb") as handle:
        shape = read_npy_header(handle).shape
    token = secrets.token_hex(16)
    probe = partial + PROBE_SUFFIX
    _write_token(probe, token)
    started = time.perf_counter()
    try:
        _check_workers(client, partial, token, shape, _readable_sample(paths, todo))
        run = _Run(client, partial, paths, options, todo, on_error, on_done, chunk, retries, token, shape, summary)
        run.fill()
    finally:
        # Tasks still running (after Ctrl-C, an error, a kill of this process
        # only on the next build) see the token gone and stop within CHECK_SECONDS.
        with contextlib.suppress(OSError):
            os.remove(probe)
        summary.seconds = time.perf_counter() - started
        summary.failures.sort(key=lambda f: f.index)
        if summary.chunks:
            logger.info("\n".join(summary.lines()))
    return summary


class _Run:
    """The submit / collect loop of one :func:`fill_on_cluster` call."""

    def __init__(self, client, partial, paths, options, todo, on_error, on_done, chunk, retries, token, shape,
                 summary: ClusterSummary):
        self.client = client
        self.partial = partial
        self.paths = paths
        self.options = options
        self.on_error = on_error
        self.report = on_done or (lambda rows, found: None)
        self.retries = retries
        self.token = token
        self.shape = shape
        self.summary = summary
        self.chunks = _Chunker(todo, chunk, int(np.prod(shape[1:], dtype=np.int64)))
        self.in_flight: dict = {}  # future -> its rows
        self.raised: list[Failure] = []  # under "raise": the failure that ended each chunk
        self.broken: list[str] = []  # chunks that kept failing, described
        self.broken_paths: list[str] = []
        self.stopping = False
        self.count = 0

    def fill(self) -> None:
        from distributed import as_completed, wait

        completed = as_completed()
        try:
            self._submit(completed)
            for future in completed:
                self._collect(future)
                if self.stopping:
                    break
                self._submit(completed)
            if self.in_flight:  # stopped: let running tasks report the rows they flushed
                with contextlib.suppress(TimeoutError):
                    wait(list(self.in_flight), timeout=DRAIN_SECONDS)
                for future in [f for f in self.in_flight if f.done()]:
                    self._collect(future)
        except BaseException:
            self._stop()
            raise
        finally:
            if self.in_flight:
                self.client.cancel(list(self.in_flight))
        if self.raised:
            first = min(self.raised, key=lambda f: f.index)
            if self.broken:
                logger.warning("besides the failed file, %d chunk(s) failed: %s", len(self.broken),
                               "; ".join(self.broken))
            raise ImageDecodeError(first.path, first.reason, first.detail)
        if self.broken:
            more = f" ({len(self.broken) - 1} more chunk(s) failed too)" if len(self.broken) > 1 else ""
            message = (f"{self.broken[0]}{more}; the rows finished so far are kept: run the same build again "
                       "to resume")
            raise ClusterError(message, self.broken_paths)

    def _submit(self, completed) -> None:
        """Top up the chunks in flight to IN_FLIGHT per worker thread."""
        threads = max(1, sum(self.client.nthreads().values()))
        while not self.stopping and not self.chunks.finished and len(self.in_flight) < IN_FLIGHT * threads:
            rows = self.chunks.take(threads)
            key = f"preload-fill-{self.token[:12]}-{self.count}"
            self.count += 1
            future = self.client.submit(fill_chunk, self.partial, self.token, rows, [self.paths[i] for i in rows],
                                        self.options, self.on_error, self.shape, key=key, retries=self.retries)
            self.in_flight[future] = rows
            completed.add(future)

    def _collect(self, future) -> None:
        rows = self.in_flight.pop(future)
        try:
            if future.cancelled():  # not by us: we cancel only what we no longer collect
                message = "it was cancelled on the scheduler (did the cluster restart, or the client close?)"
                raise ClusterError(message)
            result: ChunkResult = future.result()
        except Exception as exc:  # the task kept raising, or kept killing its workers
            self.broken.append(_describe_broken(exc, rows, self.paths, self.retries))
            self.broken_paths.extend(self.paths[i] for i in rows)
            self._stop()
            return
        finally:
            future.release()
        stats = self.summary.workers.setdefault(result.worker, WorkerStats(result.worker, result.host))
        stats.chunks += 1
        stats.images += len(result.rows)
        stats.seconds += result.seconds
        self.summary.chunks += 1
        self.summary.images += len(result.rows)
        self.summary.failures.extend(result.failures)
        if not result.stopped:  # a chunk cut short says nothing about the time per image
            self.chunks.timed(len(result.rows), result.seconds)
        self.report(result.rows, result.failures)
        if result.raised is not None:
            self.raised.append(result.raised)
            self._stop()
        elif result.stopped and not self.stopping:
            message = (f"the token in '{self.partial}{PROBE_SUFFIX}' was replaced while this build ran: another "
                       "build of the same cache has started (is the lock file on a file system where flock does "
                       "not reach across hosts?)")
            self.broken.append(message)
            self._stop()

    def _stop(self) -> None:
        """No more submissions; running tasks see the token change and end early."""
        if not self.stopping:
            self.stopping = True
            with contextlib.suppress(OSError):
                _write_token(self.partial + PROBE_SUFFIX, STOPPED)


class _Chunker:
    """Cuts ``todo`` into consecutive chunks, sized by the time per image measured so far."""

    def __init__(self, todo: np.ndarray, fixed: int | None, row_bytes: int):
        self.todo = todo
        self.fixed = None if fixed is None else int(fixed)
        self.max_rows = max(1, MAX_CHUNK_BYTES // max(1, row_bytes))
        self.position = 0
        self.images = 0
        self.seconds = 0.0

    @property
    def finished(self) -> bool:
        return self.position >= len(self.todo)

    def timed(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    def size(self, threads: int) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.images == 0 or self.seconds <= 0:
            wanted = FIRST_CHUNK
        else:
            wanted = round(TARGET_SECONDS * self.images / self.seconds)
        # Near the end, an even share per thread: one long last chunk would leave the others idle.
        share = math.ceil((len(self.todo) - self.position) / threads)
        return max(1, min(wanted, self.max_rows, share))

    def take(self, threads: int) -> np.ndarray:
        size = self.size(threads)
        rows = self.todo[self.position : self.position + size]
        self.position += len(rows)
        return rows


def _write_token(probe: str, text: str) -> None:
    # Written in place, not renamed: over NFS, open() after another client's
    # close() is guaranteed to see the new bytes (close-to-open), a rename is not.
    # O_NOFOLLOW: a link planted at the probe's name must not make us write through it.
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o644)
    except OSError as exc:
        refuse_link(probe, exc)
    with open(fd, "w", encoding="ascii") as handle:
        handle.write(text)


def _readable_sample(paths: Sequence[str], todo: np.ndarray) -> str | None:
    """A source file this process can read, to check the workers can too (None if the first is unreadable)."""
    path = paths[int(todo[0])]
    return path if os.access(path, os.R_OK) else None


def _check_workers(client, partial: str, token: str, shape: tuple[int, ...], sample: str | None) -> None:
    """Every worker sees the token and the partial, reads the sample and runs our versions; else ClusterError."""
    if not client.nthreads():
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            address = getattr(client.scheduler, "address", "?")
            message = f"the Dask cluster at {address} has no workers (waited {WORKER_WAIT_SECONDS:.0f} s)"
            raise ClusterError(message) from None
    answers = client.run(probe_worker, partial, token, list(shape), sample, on_error="return")
    problems = []
    for address, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            problems.append(f"worker {address} could not run the check: {type(answer).__name__}: {answer}")
        elif answer["problem"]:
            problems.append(answer["problem"])
        elif (answer["preload"], answer["opencv"]) != (__version__, cv2.__version__):
            problems.append(f"worker {address} (host {answer['host']}) runs preload {answer['preload']} with "
                            f"OpenCV {answer['opencv']}, this process preload {__version__} with OpenCV "
                            f"{cv2.__version__}: its rows could differ from a local build's and from what the "
                            "cache's metadata records; install the same versions on every worker")
    if problems:
        others = f" (and {len(problems) - 1} more worker(s): {'; '.join(problems[1:3])})" if len(problems) > 1 else ""
        message = f"{problems[0]}{others}"
        raise ClusterError(message)


def _describe_broken(exc: BaseException, rows: np.ndarray, paths: Sequence[str], retries: int) -> str:
    """One sentence naming a chunk that kept failing, its files, and why."""
    shown = ", ".join(f"'{paths[i]}'" for i in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    files = f"rows {rows[0]}..{rows[-1]} ({len(rows)} files: {shown}{more})"
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        attempts = exc.allowed_failures + 1
        last = getattr(exc.last_worker, "address", exc.last_worker)
        return (f"the chunk of {files} killed every worker that ran it ({attempts} attempts, the last on {last}): "
                "a decoder may crash on one of these files, or the workers run out of memory; see their logs")
    if isinstance(exc, ClusterError):  # already says which worker and what it cannot do
        return str(exc) if "worker" in str(exc) else f"the chunk of {files} failed: {exc}"
    return f"the chunk of {files} failed {retries + 1} time(s): {type(exc).__name__}: {exc}"
