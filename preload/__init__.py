"""preload: load a whole image dataset into one preallocated uint8 array.

>>> import preload
>>> preload.load  # doctest: +ELLIPSIS
<function load at ...>
"""

import os as _os

from ._version import __version__

# OpenCV reads this once, at its first decode. preload checks the pixel count
# of the formats whose headers it parses itself (headers.py); for any other
# format OpenCV's own limit is the decompression-bomb guard: 2**27 pixels here
# instead of OpenCV's default 2**30 (3 GB for one RGB image).
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))

from .cache import build_cache, cache_info, open_cache, verify_cache
from .dataset import Dataset, ImageFiles
from .decode import DecodeOptions
from .errors import (
    CacheError,
    CacheLockedError,
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
from .sources import IMAGE_EXTENSIONS, Manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "CacheError",
    "CacheLockedError",
    "Dataset",
    "DecodeOptions",
    "Failure",
    "ImageDecodeError",
    "ImageFiles",
    "IncompleteCacheError",
    "InsufficientDiskError",
    "InsufficientMemoryError",
    "Manifest",
    "OptionError",
    "PreloadError",
    "Reason",
    "SizeMismatchError",
    "SourceError",
    "StaleCacheError",
    "TargetError",
    "__version__",
    "build_cache",
    "cache_info",
    "load",
    "open_cache",
    "verify_cache",
]
