"""Keras adapter: a dataset or cache as a ``keras.utils.PyDataset`` of augmented, normalised batches.

Keras is not a dependency of preload; it is imported on the first use of
:class:`Batches` (``preload.keras`` itself imports without it).
Batches come from the same engine as :meth:`preload.Dataset.batches`
(:mod:`preload.batching`), one batch per ``__getitem__``: Keras's own
``workers=`` threads prepare the next batches in the background while the
model trains (OpenCV and NumPy release the GIL), and ``max_queue_size``
bounds how many wait. The array is never copied; each batch is a new array,
since Keras may hold several at once.
"""

from __future__ import annotations

import os

from .augment import Augment
from .batching import Epochs
from .cache import open_cache


class _Batches:
    """``(images, labels)`` batches (or ``images`` without labels) for ``model.fit``.

    Parameters
    ----------
    data : str, os.PathLike or preload.Dataset
        A cache's ``.npy`` path, or a dataset from :func:`preload.load` /
        :func:`preload.open_cache` (or :class:`preload.ImageFiles`).
    batch_size : int
        Images per batch.
    shuffle : bool
        A new order every epoch, drawn from ``seed`` and the epoch number.
    seed : int, optional
        Root of the order and of the augmentations; the same seed gives the
        same batches in every run. None: a random one, fixed at creation.
    augment : preload.Augment, optional
    normalize : preload.Stats or preload.Normalize, optional
    transform, batch_transform : callable, optional
        As for :meth:`preload.Dataset.batches`.
    dtype : str, optional
        ``"float32"`` when normalising, else ``"uint8"`` unless given.
    drop_last : bool
        Leave out a last, smaller batch.
    workers : int
        Keras's threads preparing batches ahead (``PyDataset(workers=)``).
    max_queue_size : int
        Batches Keras keeps ready (memory: that many batches).
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``use_multiprocessing``).

    Examples
    --------
    >>> import numpy as np, preload  # doctest: +SKIP
    >>> ds = preload.Dataset(np.zeros((5, 4, 4, 3), np.uint8), np.arange(5), None, ["x"] * 5)  # doctest: +SKIP
    >>> batches = Batches(ds, 2, seed=0, augment=preload.Augment(flip="horizontal"))  # doctest: +SKIP
    >>> len(batches), batches[2][0].shape, batches[0][0].dtype.name  # doctest: +SKIP
    (3, (1, 4, 4, 3), 'uint8')
    """

    def __init__(
        self,
        data,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        augment: Augment | None = None,
        normalize=None,
        transform=None,
        batch_transform=None,
        dtype=None,
        drop_last: bool = False,
        workers: int = 2,
        max_queue_size: int = 2,
        **kwargs,
    ):
        super().__init__(workers=workers, max_queue_size=max_queue_size, **kwargs)
        if isinstance(data, (str, os.PathLike)):
            data = open_cache(os.fspath(data))
        self.data = data
        self._epochs = Epochs(
            data, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, augment=augment, normalize=normalize,
            transform=transform, batch_transform=batch_transform, dtype=dtype,
            workers=1,  # one batch per call; Keras's workers run several calls at once
        )
        self.batch_size, self.shuffle, self.seed = self._epochs.batch_size, self._epochs.shuffle, self._epochs.seed
        self.epoch = 0
        self._engine = self._epochs.engine(self.epoch)

    def __len__(self) -> int:
        return len(self._epochs)

    @property
    def num_batches(self) -> int:
        return len(self._epochs)

    def __getitem__(self, index: int):
        images, labels = self._engine.batch(index)
        return images if labels is None else (images, labels)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._engine = self._epochs.engine(self.epoch)


def _define_batches() -> type:
    import keras

    class Batches(_Batches, keras.utils.PyDataset):
        __doc__ = _Batches.__doc__

    # Found by name when pickled (use_multiprocessing under spawn/forkserver), through __getattr__.
    Batches.__module__ = __name__
    Batches.__qualname__ = "Batches"
    return Batches


def __getattr__(name: str):
    # Keras (and its backend) load only when the adapter is used.
    if name == "Batches":
        globals()["Batches"] = batches = _define_batches()
        return batches
    message = f"module 'preload.keras' has no attribute {name!r}"
    raise AttributeError(message)


__all__ = ["Batches"]  # noqa: F822 - defined on first access, by __getattr__
