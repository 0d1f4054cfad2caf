"""preload: load a whole image dataset into one preallocated uint8 array.

The verbs are :func:`load`, :func:`build_cache` / :func:`open_cache` and
:class:`ImageFiles`; everything the documentation names is importable from
here and listed in ``__all__``. The framework adapters stay submodules,
because importing them imports the framework: ``preload.torch.TorchDataset``.

``import preload`` itself imports nothing heavy: each public name loads its
module (and NumPy, OpenCV) the first time it is used. That keeps the
``preload`` command's start-up inside its own error handling, so a Ctrl-C
while NumPy and OpenCV load ends in one line, not a traceback.

>>> import preload
>>> preload.load  # doctest: +ELLIPSIS
<function load at ...>
"""

import os as _os

from ._version import __version__

# Not typing.TYPE_CHECKING: importing typing alone takes longer than the rest of
# this file, and type checkers take any name TYPE_CHECKING as true.
TYPE_CHECKING = False

# Set before anything imports cv2. preload checks the pixel count of the
# formats whose headers it parses itself (headers.py); for any other format
# OpenCV's own limit is the decompression-bomb guard: 2**27 pixels (the
# default max_pixels, options.DEFAULT_MAX_PIXELS) instead of OpenCV's 2**30
# (3 GB for one RGB image).
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 27))

# Each public name and the module that defines it. The same imports are
# written out under TYPE_CHECKING for type checkers and editors (a test
# holds the two lists equal).
_EXPORTS = {
    "augment": ("Augment", "Normalize", "Stats", "stats"),
    "cache": ("build_cache", "cache_info", "open_cache", "verify_cache"),
    "dataset": ("Dataset", "ImageFiles"),
    "errors": ("CacheError", "CacheLockedError", "ClusterError", "Failure", "ImageDecodeError",
               "IncompleteCacheError", "InsufficientDiskError", "InsufficientMemoryError", "OptionError",
               "PreloadError", "Reason", "SizeMismatchError", "SourceError", "StaleCacheError", "TargetError"),
    "loader": ("load",),
    "options": ("DecodeOptions",),
    "rows": ("prefetch_rows", "take_rows"),
    "samples": ("make_samples",),
    "sources": ("IMAGE_EXTENSIONS", "Manifest"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# Imported only when asked for by name (preload.torch): they import a framework.
_ADAPTERS = ("torch", "keras")

if TYPE_CHECKING:
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


def __getattr__(name: str):
    """A public name, imported on first use (PEP 562); a submodule such as ``preload.cache`` too."""
    import importlib

    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups do not come back here
        return value
    if not name.startswith("_") and name not in _ADAPTERS:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # the submodule exists; something it imports does not
                raise
    message = f"module 'preload' has no attribute {name!r}"
    raise AttributeError(message)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
