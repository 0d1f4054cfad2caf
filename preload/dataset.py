"""The result of a load, and the array-like access training code uses.

:class:`Dataset` (what :func:`preload.load` and :func:`preload.open_cache`
return) and :class:`ImageFiles` (decode on access) share one protocol:
``len(x)``; ``x[i]`` is one image, or ``(image, label)`` when there are
labels; ``x[slice]`` and ``x[index_array]`` (1-D ints, any order, repeats
allowed, negative counted from the end) return batched arrays the same way.
That is what array-based batch iterators, ``torch.utils.data`` and Keras
expect of a data source.

Reading rows out of a memory-mapped array is :mod:`preload.rows`'s part;
an :class:`ImageFiles` batch is decoded by the fill engine
(:mod:`preload.fill`); an ``out=`` buffer is checked by
:func:`preload.target.check_out`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .augment import Augment, layout_of
from .batching import BatchEngine, resolve_order
from .decode import Decoder
from .errors import Failure, OptionError
from .fill import fill_slots
from .options import DEFAULT_MAX_PIXELS, DecodeOptions, check_bool, resolve_workers
from .rows import prefetch_rows, take_rows
from .sources import manifest
from .target import check_out


def resolve_index(key, count: int, what: str):
    """``key`` as an int in ``[0, count)``, a slice, or a 1-D int64 array of such ints.

    Raises
    ------
    IndexError
        An index outside ``[-count, count)``.
    TypeError
        Anything but an int, a slice or a 1-D integer (or boolean mask) array.

    Examples
    --------
    >>> resolve_index(-1, 5, "x"), resolve_index([4, 0, 0], 5, "x").tolist()
    (4, [4, 0, 0])
    """
    if isinstance(key, numbers.Integral) and not isinstance(key, (bool, np.bool_)):
        index = int(key)
        if not -count <= index < count:
            message = f"index {index} is out of range for {what} of {count} images"
            raise IndexError(message)
        return index % count
    if isinstance(key, slice):
        return key
    if isinstance(key, (Sequence, np.ndarray)) and not isinstance(key, (str, bytes)):
        array = np.asarray(key)
        if array.ndim != 1:
            message = f"{what} takes a 1-D index array, not one of shape {array.shape}"
            raise TypeError(message)
        if array.dtype == np.bool_:
            if len(array) != count:
                message = f"a boolean mask for {what} needs {count} values, not {len(array)}"
                raise IndexError(message)
            return np.flatnonzero(array)
        if array.size == 0:
            return array.astype(np.int64)
        if not np.issubdtype(array.dtype, np.integer):
            message = f"{what} index arrays must hold integers, not {array.dtype}"
            raise TypeError(message)
        bad = (array < -count) | (array >= count)
        if bad.any():
            message = f"index {int(array[bad][0])} is out of range for {what} of {count} images"
            raise IndexError(message)
        return np.where(array < 0, array + count, array).astype(np.int64)
    message = f"{what} indices must be an int, a slice or a 1-D array of ints, not {type(key).__name__}"
    raise TypeError(message)


class ArrayAccess:
    """``len``, ``[int]``, ``[slice]``, ``[index array]`` and ``batches`` over ``_rows``."""

    labels: np.ndarray | None

    def _rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _one(self, index: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _prefetch(self, rows: np.ndarray) -> None:
        """Start reading ``rows`` in the background, where that means anything (a memory-mapped file)."""

    def _slice(self, key: slice) -> np.ndarray:
        return self._rows(np.arange(len(self))[key])

    def __getitem__(self, key):
        index = resolve_index(key, len(self), type(self).__name__)
        if isinstance(index, int):
            image = self._one(index)
            return image if self.labels is None else (image, self.labels[index])
        if isinstance(index, slice):
            images = self._slice(index)
            return images if self.labels is None else (images, self.labels[index])
        images = self._rows(index)
        return images if self.labels is None else (images, self.labels[index])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle=None,
        seed: int | None = None,
        drop_last: bool = False,
        out=None,
        augment: Augment | None = None,
        normalize=None,
        transform: Callable | None = None,
        batch_transform: Callable | None = None,
        dtype=None,
        prefetch: int = 0,
        workers: int | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(images, labels)`` batches (``labels`` is None without labels).

        Parameters
        ----------
        batch_size : int
            Images per batch; the last batch is smaller unless ``drop_last``.
        shuffle : None, False, True, int, numpy.random.Generator or RandomState
            None/False: in order. An int seed or a generator: a permutation
            that is the same for the same seed (``shuffle=epoch`` gives every
            epoch its own). True: one drawn from ``seed`` (the same every
            call), or a fresh random one without ``seed``.
        seed : int, optional
            Root of the augmentations' random streams, together with an int
            ``shuffle``: batch ``i`` draws from its own stream derived from
            ``(seed, shuffle, i)``, so the same values give bit-identical
            batches for any ``workers`` and ``prefetch`` (``augment=``'s
            draws; a ``transform=`` callable uses its own library's random
            state). Without either, fresh randomness.
        drop_last : bool
            Leave out a last, smaller batch.
        out : None, True or numpy.ndarray
            None: every batch stays intact as long as you hold it (keep it,
            ``list()`` the batches). Without the options below it is a new
            array (or a view of the array, in order). With them, batches are
            prepared into a ring of ``prefetch + 2`` reused buffer sets, and a
            set that a batch you still hold (or a view of it, a tensor made
            from it) lives in is left to you and replaced: memory is
            ``prefetch + 2`` batches plus the batches you keep.
            True: buffers are reused regardless, and each batch holds only
            until the next one is asked for (one buffer; ``prefetch + 1`` sets
            with the options below). An array of shape ``(batch_size, ...)``
            and dtype uint8, without the options below: that buffer, reused
            the same way.
        augment : preload.Augment, optional
            Random geometry and intensity per image, warped straight from
            the array into the batch buffer.
        normalize : preload.Stats or preload.Normalize, optional
            Convert to float (``dtype``, default float32) and normalise.
        transform : callable, optional
            Per image, uint8 in and out, same shape (e.g. an Albumentations
            ``Compose``), run in the worker threads after ``augment``.
        batch_transform : callable, optional
            Per finished batch (after ``normalize``); same shape and dtype out.
        dtype : "uint8", "float32" or "float64", optional
            The batches' dtype; default float32 with ``normalize``, else uint8.
        prefetch : int
            Batches prepared ahead in background threads while one is in use.
        workers : int, optional
            Threads preparing batches (default: every usable core); each batch
            is split between them.

        Notes
        -----
        From a memory-mapped cache a batch is read by :func:`take_rows`: in
        file order, each row copied once into its slot. With ``shuffle``,
        while a batch is in use the rows of the next one that are not in the
        page cache are already requested from the disk (:func:`prefetch_rows`).
        The preparation engine is :mod:`preload.batching`; the array is never
        copied: memory is the array (or its page cache) plus ``prefetch + 2``
        batch buffers (``prefetch + 1`` with ``out=True``) and the batches
        you keep.

        Examples
        --------
        >>> ds = Dataset(np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1), np.arange(5), None, list("abcde"))
        >>> [labels.tolist() for _, labels in ds.batches(2, shuffle=0)]
        [[2, 4], [3, 0], [1]]
        >>> from preload.augment import Normalize
        >>> [images.ravel().tolist() for images, _ in ds.batches(2, normalize=Normalize(rescale=0.5), prefetch=1)]
        [[0.0, 0.5], [1.0, 1.5], [2.0]]
        """
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            message = f"batch_size={batch_size!r} is not accepted; use a positive int"
            raise OptionError(message)
        drop_last = check_bool("drop_last", drop_last)
        count = len(self)
        order, entropy = resolve_order(shuffle, count, seed)
        engine = {
            "augment": augment,
            "normalize": normalize,
            "transform": transform,
            "batch_transform": batch_transform,
            "dtype": dtype,
            "workers": workers,
        }
        if prefetch or any(value is not None for value in engine.values()):
            if out is not None and out is not True:
                message = "out= takes only None or True with augment=, normalize=, transform=, dtype=, prefetch="
                raise OptionError(message)
            reuse = "always" if out is True else "released"
            yield from BatchEngine(
                self, batch_size, order=order, entropy=entropy, drop_last=drop_last, prefetch=prefetch, reuse=reuse,
                **engine
            )
            return
        buffer = self._batch_buffer(batch_size, out)
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, stop)
            rows = np.arange(start, end) if order is None else order[start:end]
            target = None if buffer is None else buffer[: end - start]
            if order is None and buffer is None:
                images = self._slice(slice(start, end))
            else:
                images = self._rows(rows, target)
            if order is not None and end < stop:
                # While this batch is in use, the disk already fetches the next one (when cold).
                self._prefetch(order[end : min(end + batch_size, stop)])
            yield images, None if self.labels is None else self.labels[rows]

    def _batch_buffer(self, batch_size: int, out) -> np.ndarray | None:
        shape = (batch_size,) + self.image_shape
        if out is None:
            return None
        if out is True:
            return np.empty(shape, np.uint8)
        return check_out(out, shape, np.uint8, contiguous=False)

    @property
    def image_shape(self) -> tuple[int, ...]:  # pragma: no cover
        raise NotImplementedError


@dataclass(eq=False)
class Dataset(ArrayAccess):
    """Images in one uint8 array, with labels, class names and source paths.

    Attributes
    ----------
    images : numpy.ndarray or numpy.memmap
        uint8, shape ``(N, H, W, C)`` or ``(N, C, H, W)``, C-contiguous.
    labels : numpy.ndarray of int64, shape (N,), or None
        ``labels[i]`` is the label of ``images[i]``; it indexes ``classes``
        when class names are known.
    classes : list of str or None
        Sorted class names (class folders, or string labels).
    paths : sequence of str
        ``paths[i]`` is the file ``images[i]`` was decoded from.
    failed : list of Failure
        Files that were skipped or zero-filled, with the reason.
    options : DecodeOptions
        The decode options the array was made with.
    cache : str or None
        The cache's ``.npy`` path when the images come from :func:`open_cache`.

    Examples
    --------
    >>> ds = Dataset(np.zeros((2, 3, 4, 4), np.uint8), np.array([1, 0]), ["cat", "dog"], ["a.png", "b.png"])
    >>> len(ds), ds[0][0].shape, int(ds[-1][1]), ds[[1, 1]][0].shape
    (2, (3, 4, 4), 0, (2, 3, 4, 4))
    """

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    paths: Sequence[str]
    failed: list[Failure] = field(default_factory=list)
    options: DecodeOptions | None = None
    cache: str | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def layout(self) -> str:
        """"NCHW" or "NHWC" (from the options; without them, NHWC unless the channel axis is first)."""
        if self.options is not None:
            return self.options.layout
        return layout_of(self.images.shape)

    def _one(self, index: int) -> np.ndarray:
        return self.images[index]

    def _slice(self, key: slice) -> np.ndarray:
        return self.images[key]

    def _rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return take_rows(self.images, rows, out)

    def _prefetch(self, rows: np.ndarray) -> None:
        prefetch_rows(self.images, rows)

    def __repr__(self) -> str:
        classes = "none" if self.classes is None else f"{len(self.classes)}"
        kind = type(self.images).__name__
        return (
            f"<preload.Dataset {len(self)} images {self.layout} {self.images.shape[1:]} uint8 "
            f"({self.images.nbytes / 1e6:.1f} MB, {kind}), classes: {classes}, failed: {len(self.failed)}>"
        )


class ImageFiles(ArrayAccess):
    """Images decoded when they are indexed, with :func:`preload.load`'s decode options.

    For data you do not want to preload: the same array-like protocol as
    :class:`Dataset`, but ``files[i]`` reads and decodes file ``i`` on the
    spot (into a new array; an index array decodes into one batch array).

    Parameters
    ----------
    source : folder, CSV, list of paths or Manifest
        As for :func:`preload.load`.
    size : int or (height, width)
        Required: every image comes out this size.
    labels : sequence, optional
        Labels for a list of paths.
    layout, color, resize, interpolation, fill, exif, reduce, max_pixels
        As for :func:`preload.load` (described in :data:`preload.options.OPTIONS`).
    workers : int or None
        Threads decoding one index-array batch (default 1: a DataLoader's own
        workers are usually the parallelism; None uses every usable core).

    Examples
    --------
    >>> import os, tempfile, cv2
    >>> folder = tempfile.mkdtemp()
    >>> _ = cv2.imwrite(os.path.join(folder, "a.png"), np.zeros((9, 9, 3), np.uint8))
    >>> files = ImageFiles([os.path.join(folder, "a.png")] * 3, size=4, layout="NCHW")
    >>> len(files), files[0].shape, files[[0, 2]].shape
    (3, (3, 4, 4), (2, 3, 4, 4))
    """

    def __init__(
        self,
        source,
        *,
        size,
        layout: str = "NHWC",
        color: str = "rgb",
        resize: str = "stretch",
        interpolation: str | None = None,
        fill=0,
        exif: bool = True,
        reduce: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        labels=None,
        workers: int | None = 1,
    ):
        if size is None:
            raise OptionError("ImageFiles needs size=: images are decoded one by one, so no common size is known")
        self.options = DecodeOptions.create(size=size, layout=layout, color=color, resize=resize,
                                            interpolation=interpolation, fill=fill, exif=exif, reduce=reduce,
                                            max_pixels=max_pixels)
        self.workers = resolve_workers(workers)
        self.manifest = manifest(source, labels=labels)
        self.labels = self.manifest.labels
        self.classes = self.manifest.classes
        self.paths = self.manifest.paths
        self._decoder = Decoder(self.options)

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.options.slot_shape()

    def _one(self, index: int) -> np.ndarray:
        image = np.empty(self.image_shape, np.uint8)
        self._decoder.decode_into(self.paths[index], image)
        return image

    def _rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((len(rows),) + self.image_shape, np.uint8)
        fill_slots(self._decoder, [self.paths[i] for i in rows], out, workers=self.workers)
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_decoder")  # holds thread-local scratch memory; rebuilt on the other side
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._decoder = Decoder(self.options)

    @property
    def images(self) -> LazyImages:
        """The images alone, decoded on access: ``files.images[i]``, ``[slice]``, ``[index array]``.

        For iterators that take one array-like per field, e.g. batchup's
        ``ArrayDataSource([files.images, files.labels])``, where ``files[i]``
        would give ``(image, label)`` pairs.
        """
        return LazyImages(self)

    def __repr__(self) -> str:
        return f"<preload.ImageFiles {len(self)} files -> {self.image_shape} uint8, decoded on access>"


class LazyImages:
    """The images of an :class:`ImageFiles` without labels, as an array-like that decodes on access.

    ``len``, ``shape``, ``dtype``, ``ndim``, and indexing by an int, a slice
    or a 1-D index array (as :class:`ImageFiles`) returning uint8 arrays.

    Examples
    --------
    >>> import os, tempfile, cv2
    >>> folder = tempfile.mkdtemp()
    >>> _ = cv2.imwrite(os.path.join(folder, "a.png"), np.zeros((9, 9, 3), np.uint8))
    >>> files = ImageFiles([os.path.join(folder, "a.png")] * 3, size=4, labels=[0, 1, 1])
    >>> images = files.images
    >>> len(images), images.shape, images[[2, 0]].shape, images[1:].dtype.name
    (3, (3, 4, 4, 3), (2, 4, 4, 3), 'uint8')
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files),) + tuple(self.files.image_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        index = resolve_index(key, len(self.files), "ImageFiles.images")
        if isinstance(index, int):
            return self.files._one(index)
        if isinstance(index, slice):
            return self.files._slice(index)
        return self.files._rows(index)

    def __repr__(self) -> str:
        return f"<preload.ImageFiles.images {self.shape} uint8, decoded on access>"


__all__ = ["ArrayAccess", "Dataset", "ImageFiles", "LazyImages", "resolve_index"]
