"""preload: load a whole image dataset into one preallocated uint8 array.

>>> import preload
>>> preload.load  # doctest: +ELLIPSIS
<function load at ...>
"""

__version__ = "0.1.0"  # first: submodules import it

from .cache import build_cache, cache_info, open_cache, verify_cache
from .dataset import Dataset
from .decode import DecodeOptions
from .errors import (
    CacheError,
    CacheLockedError,
    Failure,
    ImageDecodeError,
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
