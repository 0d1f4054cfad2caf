"""The result of a load: the array plus what describes its rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .decode import DecodeOptions
from .errors import Failure


@dataclass(eq=False)
class Dataset:
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
    paths : list of str
        ``paths[i]`` is the file ``images[i]`` was decoded from.
    failed : list of Failure
        Files that were skipped or zero-filled, with the reason.
    options : DecodeOptions
        The decode options the array was made with.

    Examples
    --------
    >>> ds = Dataset(np.zeros((2, 3, 4, 4), np.uint8), None, None, ["a.png", "b.png"])
    >>> len(ds), ds.layout
    (2, 'NCHW')
    """

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    paths: list[str]
    failed: list[Failure] = field(default_factory=list)
    options: DecodeOptions | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def layout(self) -> str:
        """"NCHW" or "NHWC" (from the options, else guessed from the channel axis)."""
        if self.options is not None:
            return self.options.layout
        return "NCHW" if self.images.shape[1] in (1, 3) else "NHWC"

    def __repr__(self) -> str:
        classes = "none" if self.classes is None else f"{len(self.classes)}"
        kind = type(self.images).__name__
        return (
            f"<preload.Dataset {len(self)} images {self.layout} {self.images.shape[1:]} uint8 "
            f"({self.images.nbytes / 1e6:.1f} MB, {kind}), classes: {classes}, failed: {len(self.failed)}>"
        )
