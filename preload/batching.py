"""The batch engine: read, augment, transform and convert batches in background threads into reused buffers.

A batch goes through these steps, all in worker threads:

1. its rows are read (:func:`preload.rows.take_rows`: in file order from
   a memory map) into a uint8 buffer, or, with :class:`~preload.augment.Augment`,
   each image is warped straight from its source row into the buffer;
2. a per-image ``transform`` (an Albumentations ``Compose``, any callable
   image -> image) runs on each uint8 image;
3. :class:`~preload.augment.Normalize` converts it to float into a second
   reused buffer;
4. a per-batch ``batch_transform`` runs on the finished batch.

``prefetch=k`` keeps the next ``k`` batches in preparation while one is in
use, and the array itself is never copied. Each batch is split into
``workers`` parts that threads take in order, so the batch needed next gets
every thread first.

Buffers are reused, but never under a batch the caller still holds. The
engine keeps a ring of ``k + 2`` buffer sets (the batch in use, the one
before it, which a ``for`` loop releases when it rebinds its variable, and
the ``k`` in preparation); before a set is refilled, its reference count
tells whether anything outside the engine still points at it (the batch,
a view of it, a tensor made from it). If so, the caller keeps those
buffers and the ring gets a new set. So ``list(ds.batches(...))`` holds
every batch intact, and a loop that lets each batch go allocates nothing
after the first ``k + 2``. NumPy's own ``ndarray.resize`` uses the same
test (``refcheck``) to refuse to move memory that is still referenced.
``reuse="always"`` (``out=True`` in :meth:`preload.Dataset.batches`)
skips it: ``k + 1`` sets, each batch valid until the next is asked for.

Randomness does not depend on threads: batch ``i`` draws all its transforms
from its own generator, seeded by ``SeedSequence(entropy, spawn_key=(i,))``,
before any part of it starts, so the same seed gives bit-identical batches
for any ``workers`` and ``prefetch``. That covers ``augment=``; a
``transform=`` callable (Albumentations, torchvision) draws from its own
library's random state, in whatever order the threads call it.
"""

from __future__ import annotations

import numbers
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .augment import Augment, Normalize, Transform, image_size, layout_of
from .errors import OptionError
from .options import check_bool, resolve_workers

DTYPES = {"uint8": np.uint8, "float32": np.float32, "float64": np.float64}
REUSE = ("released", "always")


def resolve_order(shuffle, count: int, seed=None) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """``(order, entropy)``: the permutation (None: in order) and the random streams' root.

    ``shuffle``: None/False in order; True a permutation drawn from ``seed``
    (a fresh one without it); an int a seeded one; a numpy Generator or
    RandomState one drawn from it. The streams' entropy is ``seed`` and the
    shuffle's int (either may be missing); a Generator or RandomState
    contributes one draw after the permutation; with neither an int nor a
    seed it is fresh, so ``shuffle=epoch`` alone gives every epoch its own
    reproducible order and augmentations.

    Examples
    --------
    >>> order, entropy = resolve_order(3, 4)
    >>> order.tolist(), entropy
    ([3, 2, 1, 0], (3,))
    >>> resolve_order(None, 4, seed=7)
    (None, (7,))
    """
    if seed is not None:
        seed = resolve_seed(seed)
    entropy: tuple[int, ...] = () if seed is None else (seed,)
    if shuffle is None or (isinstance(shuffle, (bool, np.bool_)) and not shuffle):
        order = None
    elif isinstance(shuffle, (bool, np.bool_)):
        # With a seed, True is as reproducible as everything else the seed decides.
        order = np.random.default_rng(seed).permutation(count)
    elif isinstance(shuffle, np.random.Generator):
        order = shuffle.permutation(count)
        entropy += (int(shuffle.integers(1 << 63)),)
    elif isinstance(shuffle, np.random.RandomState):  # batchup's and older code's generator
        order = shuffle.permutation(count)
        entropy += (int(shuffle.randint(0, np.iinfo(np.int64).max, dtype=np.int64)),)
    elif isinstance(shuffle, numbers.Integral) and shuffle >= 0:
        order = np.random.default_rng(int(shuffle)).permutation(count)
        entropy += (int(shuffle),)
    else:
        message = (
            f"shuffle={shuffle!r} is not accepted; "
            "use None, True, False, an int seed >= 0 or a numpy Generator or RandomState"
        )
        raise OptionError(message)
    if not entropy:
        entropy = (int(np.random.SeedSequence().entropy),)
    return order, entropy


def resolve_seed(seed) -> int:
    """``seed=`` checked: an int >= 0 (None is the caller's to resolve).

    Examples
    --------
    >>> resolve_seed(7)
    7
    """
    if not isinstance(seed, numbers.Integral) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        message = f"seed={seed!r} is not accepted; use None or an int >= 0"
        raise OptionError(message)
    return int(seed)


def batch_count(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``count`` images.

    Examples
    --------
    >>> batch_count(10, 4, False), batch_count(10, 4, True), batch_count(0, 4, False)
    (3, 2, 0)
    """
    return count // batch_size if drop_last else -(-count // batch_size)


def batch_rng(entropy: tuple[int, ...], index: int) -> np.random.Generator:
    """The random stream of batch ``index``: independent of every other batch's, whatever thread uses it."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy), spawn_key=(index,))))


def resolve_dtype(dtype, normalize: Normalize | None) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32 if normalize is not None else np.uint8)
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype.lower()
    except TypeError:  # not a dtype at all (np.dtype(5))
        name = None
    if name not in DTYPES:
        message = f"dtype={dtype!r} is not accepted; use one of {', '.join(map(repr, DTYPES))}"
        raise OptionError(message)
    if name == "uint8" and normalize is not None:
        message = "dtype='uint8' cannot hold normalised values; use 'float32' with normalize="
        raise OptionError(message)
    return np.dtype(DTYPES[name])


def _count(name: str, value, *, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        message = f"{name}={value!r} is not accepted; use an int >= {low}"
        raise OptionError(message)
    return int(value)


def _callable(name: str, value) -> Callable | None:
    if value is not None and not callable(value):
        message = f"{name}={value!r} is not accepted; use a callable (or None)"
        raise OptionError(message)
    return value


def _per_image(transform: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """Call ``transform`` on one image: Albumentations takes ``image=`` and returns a dict."""
    if type(transform).__module__.split(".")[0] == "albumentations":
        return lambda image: transform(image=image)["image"]
    return transform


def _checked(name: str, result, like: np.ndarray) -> np.ndarray:
    array = result if isinstance(result, np.ndarray) else np.asarray(result)
    if array.shape != like.shape or array.dtype != like.dtype:
        message = (
            f"{name} returned {type(result).__name__} {array.shape} {array.dtype}; "
            f"it must return the same shape {like.shape} and dtype {like.dtype} it was given"
        )
        raise OptionError(message)
    return array


class _Slot:
    """One set of reused buffers: uint8 images, float images, staging for sources without an array."""

    def __init__(self) -> None:
        self.u8: np.ndarray | None = None
        self.out: np.ndarray | None = None
        self.staging: np.ndarray | None = None
        self.own_references = 0

    def _references(self) -> int:
        return sys.getrefcount(self.out)

    def allocated(self) -> None:
        """Note the references the engine itself holds to the output buffer, before any batch leaves it."""
        self.own_references = self._references()

    def held(self) -> bool:
        """Whether something outside the engine (a batch, a view of it, a tensor) still points at the buffer."""
        return self.out is not None and self._references() > self.own_references


class _Batch:
    """A batch in preparation: its rows, transforms and slot, and a countdown of its unfinished parts."""

    def __init__(self, index: int, rows: np.ndarray, labels, slot: _Slot, transforms, parts: int):
        self.index = index
        self.rows = rows
        self.labels = labels
        self.slot = slot
        self.transforms = transforms
        self.remaining = parts
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.futures: list = []

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        self.done.wait()
        if self.errors:
            raise self.errors[0]
        return self.slot.out[: len(self.rows)], self.labels


class BatchEngine:
    """Yields prepared ``(images, labels)`` batches of ``data`` (see the module docstring).

    ``data`` is an :class:`~preload.dataset.ArrayAccess` (a Dataset,
    ImageFiles): ``len``, ``labels``, ``image_shape``, ``_rows(rows, out)``,
    and ``images`` when it is an array the warps can read directly.

    ``reuse``: ``"released"`` (default) refills a buffer set only when no
    batch handed out from it is still referenced; ``"always"`` refills it
    regardless, so a batch is valid only until the next one is asked for.
    """

    def __init__(
        self,
        data,
        batch_size: int,
        *,
        order: np.ndarray | None,
        entropy: tuple[int, ...],
        drop_last: bool = False,
        augment: Augment | None = None,
        normalize=None,
        transform: Callable | None = None,
        batch_transform: Callable | None = None,
        dtype=None,
        prefetch: int = 0,
        workers: int | None = None,
        layout: str | None = None,
        allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None,
        reuse: str = "released",
    ):
        self.data = data
        self.allocate = allocate or (lambda shape, dtype: np.empty(shape, dtype))
        self.batch_size = _count("batch_size", batch_size, low=1)
        if reuse not in REUSE:
            message = f"reuse={reuse!r} is not accepted; use one of {', '.join(map(repr, REUSE))}"
            raise OptionError(message)
        self.reuse = reuse
        if augment is not None and not isinstance(augment, Augment):
            message = f"augment={augment!r} is not accepted; use None or a preload.Augment"
            raise OptionError(message)
        self.augment = augment
        self.normalize = Normalize.coerce(normalize)
        self.transform = _callable("transform", transform)
        self.batch_transform = _callable("batch_transform", batch_transform)
        self.dtype = resolve_dtype(dtype, self.normalize)
        self.prefetch = _count("prefetch", prefetch, low=0)
        self.workers = resolve_workers(workers)
        self.image_shape = tuple(data.image_shape)
        if layout is None:  # a Dataset's own, or an ImageFiles' decode options'
            layout = getattr(data, "layout", None) or getattr(getattr(data, "options", None), "layout", None)
        self.layout = layout_of((1,) + self.image_shape, layout)
        self.size = image_size(self.image_shape, self.layout)
        if self.normalize is not None:  # now, not in a worker at the first batch
            self.normalize.check(self.image_shape[-1 if self.layout == "NHWC" else 0], self.dtype)
        images = getattr(data, "images", None)
        self.source = images if isinstance(images, np.ndarray) else None
        self.order = order
        self.entropy = entropy
        count = len(data)
        self.stop = count - count % self.batch_size if check_bool("drop_last", drop_last) else count
        # A batch larger than the data never needs more rows than the data has.
        self.buffer_rows = min(self.batch_size, self.stop)
        ring = self.prefetch + (2 if reuse == "released" else 1)
        self.slots = [_Slot() for _ in range(ring)]
        self._per_image = None if transform is None else _per_image(transform)

    def __len__(self) -> int:
        return batch_count(self.stop, self.batch_size, drop_last=False)

    def rows(self, index: int) -> np.ndarray:
        start = index * self.batch_size
        end = min(start + self.batch_size, self.stop)
        return np.arange(start, end) if self.order is None else self.order[start:end]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        count = len(self)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="preload-batch") if self._threaded() else None
        pending: deque[_Batch] = deque()
        submitted = 0
        try:
            for index in range(count):
                while submitted < count and submitted <= index + self.prefetch:
                    pending.append(self._submit(submitted, pool))
                    submitted += 1
                yield pending.popleft().result()
        finally:
            for batch in pending:
                for future in batch.futures:
                    future.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Batch ``index`` prepared now, in this thread, into new arrays (random access, e.g. a Keras PyDataset).

        The same images as the ``index``-th batch of an iteration, since its
        transforms come from the same stream. Safe to call from several threads.
        """
        if not 0 <= index < len(self):
            message = f"batch index {index} is out of range for {len(self)} batches"
            raise IndexError(message)
        return self._submit(index, None, _Slot()).result()

    def _threaded(self) -> bool:
        return self.prefetch > 0 or self.workers > 1

    def _submit(self, index: int, pool: ThreadPoolExecutor | None, slot: _Slot | None = None) -> _Batch:
        rows = self.rows(index)
        labels = None if self.data.labels is None else self.data.labels[rows]
        transforms = None
        if self.augment is not None:
            transforms = self.augment.draw(batch_rng(self.entropy, index), len(rows), self.size)
        parts = max(1, min(self.workers, len(rows))) if pool is not None else 1
        if slot is None:
            slot = self._ring_slot(index)
            self._ensure_buffers(slot, self.buffer_rows)
        else:
            self._ensure_buffers(slot, len(rows))
        batch = _Batch(index, rows, labels, slot, transforms, parts)
        if self.source is not None and self.order is not None:
            # While earlier batches are prepared, the disk already fetches this one's rows (when cold).
            self.data._prefetch(rows)
        bounds = np.linspace(0, len(rows), parts + 1).astype(int)
        for first, last in zip(bounds[:-1], bounds[1:], strict=True):
            if pool is None:
                self._run_part(batch, first, last)
            else:
                batch.futures.append(pool.submit(self._run_part, batch, first, last))
        return batch

    def _ring_slot(self, index: int) -> _Slot:
        """The buffer set for batch ``index``: the ring's, unless a batch from it is still held."""
        position = index % len(self.slots)
        slot = self.slots[position]
        if self.reuse == "released" and slot.held():
            # The caller keeps the old buffers with the batch; they are freed when it lets go.
            slot = self.slots[position] = _Slot()
        return slot

    def _ensure_buffers(self, slot: _Slot, count: int) -> None:
        shape = (count,) + self.image_shape
        if slot.u8 is None:
            if self.dtype == np.uint8:
                slot.u8 = slot.out = self.allocate(shape, np.dtype(np.uint8))
            else:
                slot.u8 = np.empty(shape, np.uint8)
                slot.out = self.allocate(shape, self.dtype)
            if self.augment is not None and self.source is None:
                slot.staging = np.empty(shape, np.uint8)
            slot.allocated()

    def _run_part(self, batch: _Batch, first: int, last: int) -> None:
        try:
            if not batch.errors:
                self._prepare(batch, first, last)
        except BaseException as exc:  # noqa: BLE001 - raised to the consumer by _Batch.result
            batch.errors.append(exc)
        with batch.lock:
            batch.remaining -= 1
            finished = batch.remaining == 0
        if not finished:
            return
        try:
            if not batch.errors and self.batch_transform is not None:
                self._batch_transform(batch)
        except BaseException as exc:  # noqa: BLE001
            batch.errors.append(exc)
        batch.done.set()

    def _batch_transform(self, batch: _Batch) -> None:
        # A function of its own: its views of the buffer are gone before the batch is marked done,
        # so they never count as the caller's when the ring decides whether to reuse the buffer.
        images = batch.slot.out[: len(batch.rows)]
        result = _checked("batch_transform", self.batch_transform(images), images)
        if result is not images:
            np.copyto(images, result)

    def _prepare(self, batch: _Batch, first: int, last: int) -> None:
        slot = batch.slot
        rows = batch.rows[first:last]
        u8 = slot.u8[first:last]
        if self.augment is None:
            self.data._rows(rows, u8)
        else:
            if self.source is None:
                source = self.data._rows(rows, slot.staging[first:last])
                pairs = [(source[j], j) for j in range(len(rows))]
            else:
                # In file order: from a memory map, one forward sweep.
                pairs = [(self.source[rows[j]], j) for j in np.argsort(rows, kind="stable")]
            transforms: list[Transform] = batch.transforms
            for image, j in pairs:
                self.augment.apply(image, transforms[first + j], u8[j], layout=self.layout)
        if self._per_image is not None:
            for image in u8:
                result = _checked("transform", self._per_image(image), image)
                if result is not image:
                    np.copyto(image, result)
        if slot.out is not slot.u8:
            out = slot.out[first:last]
            if self.normalize is None:
                np.copyto(out, u8)
            else:
                self.normalize.convert(u8, out, layout=self.layout)


class Epochs:
    """An adapter's batches, epoch by epoch, from one seed (:func:`preload.torch.loader`, ``preload.keras.Batches``).

    Epoch ``e`` is shuffled by ``default_rng([seed, e])`` and draws its
    augmentations from the streams of ``(seed, e)``: the same seed gives the
    same run, epoch by epoch, for any ``workers`` and ``prefetch``. Every
    option is checked here, not at the first batch.

    Parameters
    ----------
    data : preload.Dataset or preload.ImageFiles
    batch_size : int
    shuffle : bool
        A new order every epoch.
    seed : int or None
        None: a random one, fixed from then on.
    drop_last : bool
    **options
        The rest of :class:`BatchEngine`'s options.

    Examples
    --------
    >>> from preload.dataset import Dataset
    >>> epochs = Epochs(Dataset(np.zeros((5, 2, 2, 1), np.uint8), None, None, ["x"] * 5), 2, shuffle=True, seed=1)
    >>> len(epochs), [len(images) for images, _ in epochs.engine(0)]
    (3, [2, 2, 1])
    """

    def __init__(self, data, batch_size: int, *, shuffle: bool, seed: int | None, drop_last: bool = False,
                 **options):
        self.data = data
        self.batch_size = _count("batch_size", batch_size, low=1)
        self.shuffle = check_bool("shuffle", shuffle)
        self.seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else resolve_seed(seed)
        self.drop_last = check_bool("drop_last", drop_last)
        self.options = options
        self._engine(0, None)

    def __len__(self) -> int:
        """Batches per epoch, counted without building an engine."""
        return batch_count(len(self.data), self.batch_size, self.drop_last)

    def engine(self, epoch: int) -> BatchEngine:
        """The engine of epoch ``epoch``: its order, its random streams."""
        entropy = (self.seed, epoch)
        order = np.random.default_rng(list(entropy)).permutation(len(self.data)) if self.shuffle else None
        return self._engine(epoch, order)

    def _engine(self, epoch: int, order: np.ndarray | None) -> BatchEngine:
        return BatchEngine(self.data, self.batch_size, order=order, entropy=(self.seed, epoch),
                           drop_last=self.drop_last, **self.options)


__all__ = ["BatchEngine", "Epochs", "batch_count", "batch_rng", "resolve_dtype", "resolve_order", "resolve_seed"]
