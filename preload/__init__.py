"""preload: load a whole image dataset into one preallocated uint8 array.

>>> import preload
>>> preload.load  # doctest: +ELLIPSIS
<function load at ...>
"""

from .dataset import Dataset
from .decode import DecodeOptions
from .errors import (
    Failure,
    ImageDecodeError,
    InsufficientDiskError,
    InsufficientMemoryError,
    OptionError,
    PreloadError,
    Reason,
    SizeMismatchError,
    SourceError,
    TargetError,
)
from .loader import load
from .sources import IMAGE_EXTENSIONS, Manifest

__version__ = "0.1.0"

__all__ = [
    "IMAGE_EXTENSIONS",
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
    "TargetError",
    "__version__",
    "load",
]
