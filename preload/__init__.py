"""preload: load a whole image dataset into one preallocated uint8 array.

The verbs are :func:`load`, :func:`build_cache` / :func:`open_cache` and
:class:`ImageFiles`; everything the documentation names is importable from
here and listed in ``__all__``. The framework adapters stay submodules,
because importing them imports the framework: ``preload.torch.TorchDataset``.

>>> import preload
>>> preload.load  # doctest: +ELLIPSIS
<function load at ...>
"""

import os as _os

from ._version import __version__

# Set before anything imports cv2. preload checks the pixel count of the
# formats whose headers it parses itself (headers.py); for any other format
# OpenCV's own limit is the decompression-bomb guard: 2**27 pixels (the
# default max_pixels, options.DEFAULT_MAX_PIXELS) instead of OpenCV's 2**30
# (3 GB for one RGB image).
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))

from .augment import Augment, Normalize, Stats, stats
from .cache import build_cache, cache_info, open_cache, verify_cache
from .dataset import Dataset, ImageFiles
from .errors import (
    CacheError,
    CacheLockedError,
    ClusterError,
    Failure,
    ImageDecodeError,
    IncompleteCacheError,
    InsufficientDiskError,
    InsufficientMemoryError,
    OptionError,
    PreloadError,
    Reason,
    SizeMismatchError,
    SourceError,
    StaleCacheError,
    TargetError,
)
from .loader import load
from .options import DecodeOptions
from .rows import prefetch_rows, take_rows
from .samples import make_samples
from .sources import IMAGE_EXTENSIONS, Manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "Augment",
    "CacheError",
    "CacheLockedError",
    "ClusterError",
    "Dataset",
    "DecodeOptions",
    "Failure",
    "ImageDecodeError",
    "ImageFiles",
    "IncompleteCacheError",
    "InsufficientDiskError",
    "InsufficientMemoryError",
    "Manifest",
    "Normalize",
    "OptionError",
    "PreloadError",
    "Reason",
    "SizeMismatchError",
    "SourceError",
    "StaleCacheError",
    "Stats",
    "TargetError",
    "__version__",
    "build_cache",
    "cache_info",
    "load",
    "make_samples",
    "open_cache",
    "prefetch_rows",
    "stats",
    "take_rows",
    "verify_cache",
]
