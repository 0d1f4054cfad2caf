"""PyTorch adapter: a cache or a loaded dataset as a ``torch.utils.data.Dataset``.

Needs the ``torch`` extra (``pip install "preload-images[torch]"``, or
``pip install ".[torch]"`` in a clone); the rest of preload never imports torch.

With ``DataLoader(num_workers > 0)`` each worker process needs the data. A
cache is passed by its path: the adapter drops its memory map when it is
pickled and every worker opens the ``.npy`` again (milliseconds, no pixels
read), so nothing large travels to the workers and their memory does not
grow with the cache; the pages they read are the shared page cache. A
dataset loaded into RAM has no file to reopen: with the ``fork`` start method
(Linux's default) workers share its pages copy-on-write, with ``spawn`` every
worker receives a pickled copy -- build a cache for that case.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.utils.data

from .cache import open_cache
from .dataset import Dataset as PreloadDataset
from .errors import OptionError


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
        if self.cache is not None:
            state["_data"] = None  # workers reopen the memmap instead of receiving pixels
        return state


def __getattr__(name: str):
    # The class was called ``Dataset`` in 0.1, the same name as ``preload.Dataset``; kept one release.
    if name == "Dataset":
        message = "preload.torch.Dataset is deprecated and will be removed; use preload.torch.TorchDataset"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return TorchDataset
    message = f"module 'preload.torch' has no attribute {name!r}"
    raise AttributeError(message)


__all__ = ["TorchDataset"]
