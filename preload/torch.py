"""PyTorch adapters: :func:`loader` (batches as tensors from the batch engine) and :class:`TorchDataset`.

Needs the ``torch`` extra (``pip install "preload-images[torch]"``, or
``pip install ".[torch]"`` in a clone); the rest of preload never imports torch.

:func:`loader` is the fast path: batches are prepared in background threads
(:mod:`preload.batching`: augment, normalise, prefetch) and yielded as
tensors that share the reused batch buffers, pinned when CUDA is present.

:class:`TorchDataset` is for ``DataLoader(num_workers > 0)``, where each
worker process needs the data. A cache is passed by its path: the adapter
drops its memory map when it is pickled and every worker opens the ``.npy``
again (milliseconds, no pixels read), so nothing large travels to the
workers; the pages they read are the shared page cache. A dataset loaded
into RAM has no file to reopen: with ``fork`` workers share its pages
copy-on-write; with ``forkserver`` (Python 3.14's default on Linux) and
``spawn``, where workers receive the dataset by pickling, its images move
into shared memory the first time (:mod:`preload.shared`) and each worker
maps the same pages instead of unpickling a copy.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from multiprocessing import context

import numpy as np
import torch
import torch.utils.data

from . import shared
from .augment import Augment
from .batching import Epochs
from .cache import open_cache
from .dataset import Dataset as PreloadDataset
from .errors import OptionError
from .options import check_bool


class TorchDataset(torch.utils.data.Dataset):
    """Serve ``(image, label)`` (or ``image``) tensors from a preload dataset or cache.

    Parameters
    ----------
    data : str, os.PathLike or preload.Dataset
        A cache's ``.npy`` path, or a dataset from :func:`preload.load` /
        :func:`preload.open_cache`.
    transform : callable, optional
        Applied to each image tensor (uint8, the array's layout).
    target_transform : callable, optional
        Applied to each label (an int).

    Examples
    --------
    >>> import numpy as np, preload
    >>> ds = preload.Dataset(np.zeros((4, 3, 2, 2), np.uint8), np.arange(4), None, ["x"] * 4)
    >>> loader = torch.utils.data.DataLoader(TorchDataset(ds), batch_size=2)
    >>> [labels.tolist() for _, labels in loader]
    [[0, 1], [2, 3]]
    """

    def __init__(self, data, transform: Callable | None = None, target_transform: Callable | None = None):
        if isinstance(data, (str, os.PathLike)):
            self.cache = os.fspath(data)
            self._data = None
        elif isinstance(data, PreloadDataset):
            self.cache = data.cache
            self._data = data
        else:
            message = f"data must be a cache path or a preload.Dataset, not {type(data).__name__}"
            raise OptionError(message)
        self.transform = transform
        self.target_transform = target_transform
        self._length = len(self._open())

    def _open(self) -> PreloadDataset:
        if self._data is None:  # first use in this process (e.g. a DataLoader worker)
            self._data = open_cache(self.cache, check=False)
        return self._data

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        data = self._open()
        if not -self._length <= index < self._length:
            message = f"index {index} is out of range for a dataset of {self._length} images"
            raise IndexError(message)
        # A copy: the cache is a read-only memmap and torch tensors must own writable memory.
        image = torch.from_numpy(np.array(data.images[index]))
        if self.transform is not None:
            image = self.transform(image)
        if data.labels is None:
            return image
        label = int(data.labels[index])
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_handle", None)  # this process's hold on the shared pages; sent below when wanted
        if self.cache is not None:
            state["_data"] = None  # workers reopen the memmap instead of receiving pixels
        elif (
            context.get_spawning_popen() is not None
            and shared.available()
            and not isinstance(self._data.images, np.memmap)  # a file mapping is not RAM to share
        ):
            # A worker being started (forkserver, spawn): send a handle to shared pages, not the pixels.
            handle = self._shared()
            state["_data"] = dataclasses.replace(self._data, images=np.empty((0,), np.uint8))
            state["_shared"] = handle
        return state

    def __setstate__(self, state: dict) -> None:
        handle = state.pop("_shared", None)
        self.__dict__.update(state)
        if handle is not None:
            self._data = dataclasses.replace(self._data, images=handle.array)
            self._handle = handle

    def _shared(self) -> shared.SharedHandle:
        """The images in shared memory, moved there once: the dataset then holds the shared copy."""
        # Kept on the Dataset, not on this adapter: a second TorchDataset over the same
        # data (a new DataLoader per epoch or per split) reuses the shared copy.
        handle = getattr(self._data, "_shared_handle", None)
        if handle is None or handle.array is not self._data.images:
            handle = shared.share(self._data.images)
            # The caller's Dataset now points at the shared pages (same values), so the private
            # array can be freed and the parent does not hold the images twice.
            self._data.images = handle.array
            self._data._shared_handle = handle
        self._handle = handle
        return handle


class Loader:
    """Batches of a preload dataset as torch tensors, prepared in background threads (see :func:`loader`)."""

    def __init__(self, data, batch_size: int, *, shuffle: bool, seed: int | None, pin_memory: bool | None,
                 **options):
        if isinstance(data, (str, os.PathLike)):
            data = open_cache(os.fspath(data))
        self.data = data
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else check_bool("pin_memory", pin_memory)
        allocate = _pinned if self.pin_memory else None
        self.epochs = Epochs(data, batch_size, shuffle=shuffle, seed=seed, allocate=allocate, **options)
        self.batch_size, self.shuffle, self.seed = self.epochs.batch_size, self.epochs.shuffle, self.epochs.seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self):
        """One epoch; the next iteration is the next epoch (a new order and new augmentations)."""
        engine = self.epochs.engine(self.epoch)
        self.epoch += 1
        for images, labels in engine:
            tensor = torch.from_numpy(images)
            yield tensor if labels is None else (tensor, torch.from_numpy(np.asarray(labels)))


def loader(
    data,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int | None = None,
    augment: Augment | None = None,
    normalize=None,
    transform: Callable | None = None,
    batch_transform: Callable | None = None,
    dtype=None,
    drop_last: bool = False,
    prefetch: int = 2,
    workers: int | None = None,
    pin_memory: bool | None = None,
) -> Loader:
    """An iterable of ``(images, labels)`` tensors (``images`` alone without labels), one epoch per iteration.

    Built on :meth:`preload.Dataset.batches`'s engine: threads read,
    augment and normalise the next ``prefetch`` batches while the current
    one trains. Each ``images`` tensor shares its memory with a reused batch
    buffer (no copy), and a buffer is refilled only when no tensor or array
    of its last batch is left: keeping a batch (``list(loader)``) keeps it
    intact, and a loop that lets each go reuses ``prefetch + 2`` buffers.

    Parameters
    ----------
    data : str, os.PathLike, preload.Dataset or preload.ImageFiles
        A cache's ``.npy`` path, or a dataset.
    batch_size : int
    shuffle : bool
        A new order every epoch, drawn from ``seed`` and the epoch number.
        Only True or False: ``seed`` is what makes the order reproducible.
    seed : int, optional
        The same seed gives the same batches, epoch by epoch, for any
        ``workers`` and ``prefetch``. None: random, fixed at creation.
    augment, normalize, transform, batch_transform, dtype, drop_last, prefetch, workers
        As for :meth:`preload.Dataset.batches`.
    pin_memory : bool, optional
        Allocate the batch buffers in page-locked memory (faster
        ``.to("cuda")``). Default: when CUDA is available. A buffer is
        refilled once its tensor is gone, and the engine cannot see a copy
        still in flight: with ``non_blocking=True``, keep the CPU tensor
        until the copy is synchronised.

    Examples
    --------
    >>> import numpy as np, preload
    >>> ds = preload.Dataset(np.zeros((5, 3, 4, 4), np.uint8), np.arange(5), None, ["x"] * 5)
    >>> [(tuple(x.shape), x.dtype) for x, _ in loader(ds, 2, normalize=preload.Normalize(rescale=1 / 255))]
    [((2, 3, 4, 4), torch.float32), ((2, 3, 4, 4), torch.float32), ((1, 3, 4, 4), torch.float32)]
    """
    return Loader(
        data, batch_size, shuffle=shuffle, seed=seed, pin_memory=pin_memory, augment=augment, normalize=normalize,
        transform=transform, batch_transform=batch_transform, dtype=dtype, drop_last=drop_last, prefetch=prefetch,
        workers=workers,
    )


def _pinned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True).numpy()


def __getattr__(name: str):
    # The class was called ``Dataset`` in 0.1, the same name as ``preload.Dataset``; kept one release.
    if name == "Dataset":
        message = "preload.torch.Dataset is deprecated and will be removed; use preload.torch.TorchDataset"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return TorchDataset
    message = f"module 'preload.torch' has no attribute {name!r}"
    raise AttributeError(message)


__all__ = ["Loader", "TorchDataset", "loader"]
