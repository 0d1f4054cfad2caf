"""Every option preload takes: the values it accepts, how it is checked, and its one description.

:data:`OPTIONS` is the table of the decode and load options shared by
:func:`preload.load`, :func:`preload.build_cache`, :class:`preload.ImageFiles`
and the command line: for each, its name, what it accepts, its default, its
closed set of values (if it has one), a one-line help text and a parser for
the text a command line gives. Error messages, docstrings and a generated CLI
take their wording from here, so an option means the same thing everywhere.

Validation happens once, at the edge: :meth:`DecodeOptions.create` for the
decode options, :func:`check_on_error` and :func:`resolve_workers` for the
two load options every fill needs. Everything below (the decoder, the fill
engine, the cache, the cluster build) takes the checked values as they are.

Interpolation
-------------
``interpolation=None`` (the same as ``"auto"``, the default) shrinks with a
fast antialiased filter: a linear resize to 2^n times the output, then exact
2:1 area halvings. OpenCV runs ``INTER_AREA`` fast only for an exact 2:1
ratio; this pair stays >= 40 dB PSNR from ``INTER_AREA`` on fine textures
shrunk 1.3-3x at about 0.4 of its cost (``bench/filters.py``). When the
resize enlarges both axes, ``"auto"`` is linear. ``"area"`` is OpenCV's exact
``INTER_AREA``; ``"linear"``, ``"nearest"``, ``"cubic"`` and ``"lanczos"``
are OpenCV's filters of those names, used as asked for (``"linear"`` alone
aliases when it shrinks).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import OptionError

LAYOUTS = ("NHWC", "NCHW")
COLORS = ("rgb", "bgr", "gray")
RESIZE_MODES = ("stretch", "fit", "cover", "shorter")
INTERPOLATIONS = {
    "auto": None,  # the default: see "Interpolation" above
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
ON_ERROR = ("raise", "skip", "zero")
DEFAULT_MAX_PIXELS = 1 << 27  # 134 Mpx: above any camera, far below a bomb's gigapixels


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def choice(name: str, value, allowed) -> str:
    """``value`` as the member of ``allowed`` it names, compared without letter case.

    Examples
    --------
    >>> choice("layout", "nchw", LAYOUTS)
    'NCHW'
    >>> choice("color", "hsv", COLORS)
    Traceback (most recent call last):
    ...
    preload.errors.OptionError: color='hsv' is not accepted; use one of 'rgb', 'bgr', 'gray'
    """
    text = str(value)
    for option in allowed:
        if text.lower() == option.lower():
            return option
    message = f"{name}={value!r} is not accepted; use one of {', '.join(map(repr, allowed))}"
    raise OptionError(message)


MAX_SIDE = 2**31 - 1  # OpenCV's images are indexed by int


def normalize_size(size) -> tuple[int, int] | None:
    """``int`` -> square, ``(height, width)`` -> itself, ``None`` -> keep each image's size.

    Examples
    --------
    >>> normalize_size(224), normalize_size((224, 320)), normalize_size(None)
    ((224, 224), (224, 320), None)
    """
    if size is None:
        return None
    if _is_int(size):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) for v in size):
        pair = (int(size[0]), int(size[1]))
    else:
        message = f"size={size!r} is not accepted; use an int, a (height, width) pair of ints, or None"
        raise OptionError(message)
    if min(pair) < 1:
        message = f"size={size!r} is not accepted; height and width must be at least 1"
        raise OptionError(message)
    if max(pair) > MAX_SIDE:
        message = f"size={size!r} is not accepted; OpenCV handles at most {MAX_SIDE:,} pixels a side"
        raise OptionError(message)
    return pair


def check_fill(fill, channels: int, color: str = "rgb") -> tuple[int, ...]:
    """``fill`` as one 0..255 value per channel (an int is repeated over the channels).

    Examples
    --------
    >>> check_fill(7, 3), check_fill((1, 2, 3), 3)
    ((7, 7, 7), (1, 2, 3))
    """
    values = fill if isinstance(fill, (tuple, list)) else (fill,) * channels
    if len(values) != channels or not all(_is_int(v) and 0 <= v <= 255 for v in values):
        message = f"fill={fill!r} is not accepted; use an int 0..255 or {channels} such ints (in {color} order)"
        raise OptionError(message)
    return tuple(int(v) for v in values)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (NumPy's included); anything else is refused, not coerced."""
    if not isinstance(value, (bool, np.bool_)):
        message = f"{name}={value!r} is not accepted; use True or False"
        raise OptionError(message)
    return bool(value)


def check_max_pixels(max_pixels) -> int:
    if not _is_int(max_pixels) or max_pixels < 1:
        message = f"max_pixels={max_pixels!r} is not accepted; use a positive int"
        raise OptionError(message)
    return int(max_pixels)


def check_on_error(on_error) -> str:
    """The one check of ``on_error``, whichever function receives it.

    Examples
    --------
    >>> check_on_error("Zero")
    'zero'
    """
    return choice("on_error", on_error, ON_ERROR)


def cpu_count() -> int:
    """Cores this process may run on (honours affinity masks and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers) -> int:
    """Threads to use: ``None`` means every usable core; a positive int is itself; 0 is refused.

    Examples
    --------
    >>> resolve_workers(3), resolve_workers(None) == cpu_count()
    (3, True)
    >>> resolve_workers(0)
    Traceback (most recent call last):
    ...
    preload.errors.OptionError: workers=0 is not accepted; use a positive int, or None for every core
    """
    if workers is None:
        return cpu_count()
    if _is_int(workers) and workers >= 1:
        return int(workers)
    message = f"workers={workers!r} is not accepted; use a positive int, or None for every core"
    raise OptionError(message)


def progress_wanted(progress) -> bool:
    """``progress=None``: a bar when stderr is a terminal or we run in a Jupyter kernel; else ``bool(progress)``.

    In a notebook stderr is a pipe to the kernel, yet the user watches the cell:
    :mod:`tqdm.auto` draws the bar as a widget there.
    """
    if progress is not None:
        return bool(progress)
    if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
        return True
    return _in_notebook()


def _in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) process; never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half-imported: no notebook to draw in
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


# ------------------------------------------------------------- text (CLI) parsers


def parse_size(text: str):
    """``"256"`` -> 256, ``"224x320"`` (height x width) -> (224, 320), ``"none"`` -> None.

    Examples
    --------
    >>> parse_size("256"), parse_size("224x320"), parse_size("None")
    (256, (224, 320), None)
    """
    if text.strip().lower() == "none":
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        message = f"size {text!r} is not N or HxW (e.g. 256 or 224x320)"
        raise OptionError(message)
    value = values[0] if len(values) == 1 else tuple(values)
    normalize_size(value)  # the API's own check and message
    return value


def parse_bool(text: str) -> bool:
    """``yes/no``, ``true/false``, ``on/off``, ``1/0`` (any case) -> bool."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    message = f"{text!r} is not a yes/no value; use one of 'yes', 'no', 'true', 'false', '1', '0'"
    raise OptionError(message)


def parse_fill(text: str):
    """``"0"`` -> 0, ``"255,0,0"`` -> (255, 0, 0)."""
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        message = f"fill {text!r} is not an int or comma-separated ints (e.g. 0 or 114,114,114)"
        raise OptionError(message) from None
    return values[0] if len(values) == 1 else values


def parse_workers(text: str):
    """``"4"`` -> 4; ``"all"`` or ``"none"`` -> None (every usable core); checked like the API's value."""
    if text.strip().lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        message = f"workers={text!r} is not accepted; use a positive int, or None for every core"
        raise OptionError(message) from None
    resolve_workers(value)
    return value


def parse_positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            message = f"{name}={text!r} is not accepted; use a positive int"
            raise OptionError(message)
        return value

    return parse


def _choice_parser(name: str, allowed) -> Callable[[str], str]:
    return lambda text: choice(name, text, allowed)


# --------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option: everything the API, the docs and a CLI need to know about it.

    ``parse`` turns the text of a command line into the value the API
    accepts (raising :class:`OptionError` with the same wording the API
    uses); ``allowed`` is the closed set of values, when there is one.
    ``help`` and ``default_words`` are written for both readers: values as a
    command line spells them (``none``, ``all``, ``off``), never Python's
    ``None`` or ``False``.
    """

    name: str  # the keyword argument; on a command line ``--`` + name with "_" as "-"
    accepts: str  # what the API takes, in words
    default: object
    allowed: tuple[str, ...] | None
    help: str  # one line
    parse: Callable[[str], object]
    default_words: str  # what the default does, in words ("every usable core", not "None")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (
        Option("size", "int, (height, width) or None", None, None,
               "output size: N (square) or HxW (height x width); none keeps the images' own size, which must then "
               "be the same for all", parse_size,
               "none: keep the images' own size"),
        Option("layout", "str", "NHWC", LAYOUTS,
               "axis order of the array (any letter case)", _choice_parser("layout", LAYOUTS), "NHWC"),
        Option("color", "str", "rgb", COLORS,
               "channel order; gray gives one channel", _choice_parser("color", COLORS), "rgb"),
        Option("resize", "str", "stretch", RESIZE_MODES,
               "stretch to the size; fit inside it and pad; cover it and crop the centre; shorter: scale the "
               "shorter side to the larger of height and width, then crop the centre",
               _choice_parser("resize", RESIZE_MODES), "stretch"),
        Option("interpolation", "str or None", None, tuple(INTERPOLATIONS),
               "resize filter; auto: a fast antialiased shrink, linear to enlarge; the others are OpenCV's filters "
               "of those names", _choice_parser("interpolation", tuple(INTERPOLATIONS)), "auto"),
        Option("fill", "int or tuple of int", 0, None,
               "padding value of the fit resize: 0..255, one value or one per channel in color order", parse_fill,
               "0, black"),
        Option("exif", "bool", True, None,
               "turn each image by its EXIF orientation tag (off keeps the stored pixel order)", parse_bool, "on"),
        Option("reduce", "bool", True, None,
               "let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller", parse_bool,
               "on"),
        Option("max_pixels", "int", DEFAULT_MAX_PIXELS, None,
               "refuse images whose header announces more pixels (decompression bombs)",
               parse_positive_int("max_pixels"), f"{DEFAULT_MAX_PIXELS} = 2**27"),
        Option("workers", "int or None", None, None,
               "decoding threads: a number (1 decodes serially) or all for every usable core", parse_workers,
               "all: every usable core"),
        Option("progress", "bool or None", None, None,
               "show a progress bar on stderr", parse_bool,
               "shown when stderr is a terminal or in a Jupyter notebook"),
        Option("on_error", "str", "raise", ON_ERROR,
               "a file that cannot be loaded: raise stops at it; skip leaves it out (rows stay aligned with the "
               "remaining files); zero leaves its row zero", _choice_parser("on_error", ON_ERROR),
               "raise"),
    )
}
"""The decode and load options, by name (see :class:`Option`)."""

DECODE_OPTIONS = ("size", "layout", "color", "resize", "interpolation", "fill", "exif", "reduce", "max_pixels")
"""The options :class:`DecodeOptions` holds (the rest are how a load runs, not what it makes)."""


@dataclass(frozen=True)
class DecodeOptions:
    """How every image is turned into a slot; one object shared by all workers.

    Build it with :meth:`create`, which validates and normalises user values
    (see :data:`OPTIONS` for what each accepts).
    """

    size: tuple[int, int] | None = None
    layout: str = "NHWC"
    color: str = "rgb"
    resize: str = "stretch"
    interpolation: int | None = None
    fill: tuple[int, ...] = (0, 0, 0)
    exif: bool = True
    reduce: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def create(
        cls,
        *,
        size=None,
        layout="NHWC",
        color="rgb",
        resize="stretch",
        interpolation=None,
        fill=0,
        exif=True,
        reduce=True,
        max_pixels=DEFAULT_MAX_PIXELS,
    ) -> DecodeOptions:
        """Validate user-facing values.

        Examples
        --------
        >>> DecodeOptions.create(size=224, layout="nchw").slot_shape()
        (3, 224, 224)
        """
        color = choice("color", color, COLORS)
        channels = 1 if color == "gray" else 3
        if interpolation is not None:
            interpolation = INTERPOLATIONS[choice("interpolation", interpolation, tuple(INTERPOLATIONS))]
        fill_tuple = check_fill(fill, channels, color)
        max_pixels = check_max_pixels(max_pixels)
        exif, reduce = check_bool("exif", exif), check_bool("reduce", reduce)
        return cls(
            size=normalize_size(size),
            layout=choice("layout", layout, LAYOUTS),
            color=color,
            resize=choice("resize", resize, RESIZE_MODES),
            interpolation=interpolation,
            fill=fill_tuple,
            exif=exif,
            reduce=reduce,
            max_pixels=max_pixels,
        )

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def slot_shape(self, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """Shape of one row of the array; ``size`` overrides ``self.size`` (for size=None)."""
        height, width = size or self.size
        if self.layout == "NCHW":
            return (self.channels, height, width)
        return (height, width, self.channels)
