"""Batch transforms on uint8 images: random affine and flips, intensity shifts, normalisation, statistics.

:class:`Augment` takes Keras ``ImageDataGenerator``'s augmentation
parameters with Keras's meaning and distributions, and applies each image's
whole geometry (rotation, shift, shear, zoom and flips) as *one* inverse
affine matrix in one ``cv2.warpAffine``, straight from the source row into
the batch buffer: no float copy, no intermediate image. Channel shift and
brightness are one 256-entry lookup table per image, applied in place.

:class:`Normalize` turns a uint8 batch into float32 (rescale, sample-wise and
feature-wise centring / std normalisation, in Keras's order) through one
lookup table per channel, into a reused float buffer.

:func:`stats` computes per-channel mean and std of an array or memory-mapped
cache of any size from per-chunk histograms: exact integer sums, bounded
memory, threads.

Where preload differs from Keras on purpose (each only matters for images
that are not square): Keras 3's ``ImageDataGenerator`` draws the horizontal
shift from ``height_shift_range`` and rotates about the transposed centre
``((h - 1) / 2, (w - 1) / 2)`` in (x, y); here the width range shifts along
the width and the centre is the image's own. Fill modes map to OpenCV border
modes; ``"wrap"`` repeats the image with period ``width`` (SciPy's
``"grid-wrap"``), and ``"constant"`` interpolates with ``cval`` at the edge
(SciPy's ``"grid-constant"``): the difference is confined to the outermost
pixel.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import OptionError
from .options import LAYOUTS, choice, cpu_count, resolve_workers

FILL_MODES = {
    "nearest": cv2.BORDER_REPLICATE,  # aaaa|abcd|dddd, as scipy.ndimage's "nearest"
    "constant": cv2.BORDER_CONSTANT,  # cval outside
    "reflect": cv2.BORDER_REFLECT,  # dcba|abcd|dcba: the edge pixel repeated, as scipy.ndimage's "reflect"
    "wrap": cv2.BORDER_WRAP,  # abcd|abcd|abcd
}
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
FLIPS = {None: (False, False), "horizontal": (True, False), "vertical": (False, True), "both": (True, True)}
EPSILON = 1e-6  # added to a std before dividing, as Keras does
# Upper bounds of the ranges. Past them a parameter means nothing more (a full turn; every value pushed to
# the end of 0..255; OpenCV's images are narrower than 32,767 pixels, so a longer shift samples only fill),
# and they keep every sampled coordinate small: OpenCV's warp crashes the process on coordinates past ~1e9.
MAX_DEGREES = 360.0
MAX_SHIFT = 32767.0
MAX_ZOOM = 100.0
MAX_INTENSITY = 255.0
# A transform given directly (Transform(...), Transform.from_keras) may sample at most this far from the image.
MAX_COORDINATE = float(1 << 24)
# Histogram counts come back from cv2.calcHist as float32, exact up to 2**24: a chunk never holds more
# pixels of one channel than that.
STATS_CHUNK_BYTES = 1 << 22


def _number(name: str, value, *, low: float = 0.0, high: float = math.inf) -> float:
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        if high < math.inf:
            allowed = f"from {low:g} to {high:g}"
        else:
            allowed = f">= {low:g}" if low > -math.inf else ""
        message = f"{name}={value!r} is not accepted; use a finite number {allowed}".rstrip()
        raise OptionError(message)
    return float(value)


def _shift(value):
    """One shift range: an int stays an int (Keras draws whole pixels for it), anything else a float."""
    number = _number("shift", value, high=MAX_SHIFT)
    return int(value) if isinstance(value, numbers.Integral) else number


def _pair(name: str, value, *, low: float = 0.0, high: float = math.inf) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        message = f"{name}={value!r} is not accepted; use a (low, high) pair of numbers"
        raise OptionError(message)
    first, second = (_number(name, v, low=low, high=high) for v in value)
    if first > second:
        message = f"{name}={value!r} is not accepted; low must not exceed high"
        raise OptionError(message)
    return first, second


def layout_of(shape: Sequence[int], layout: str | None = None) -> str:
    """``layout`` checked, or guessed from a batch shape: NCHW when axis 1 looks like channels and the last does not.

    Examples
    --------
    >>> layout_of((8, 3, 32, 32)), layout_of((8, 32, 32, 3)), layout_of((8, 32, 32, 3), "nchw")
    ('NCHW', 'NHWC', 'NCHW')
    """
    if layout is not None:
        return choice("layout", layout, LAYOUTS)
    return "NCHW" if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[-1] not in (1, 3, 4) else "NHWC"


def image_size(image_shape: Sequence[int], layout: str) -> tuple[int, int]:
    """(height, width) of one image of shape ``(H, W, C)`` or ``(C, H, W)``."""
    return (image_shape[0], image_shape[1]) if layout == "NHWC" else (image_shape[1], image_shape[2])


@dataclass(frozen=True)
class Transform:
    """One image's transform, in the terms of Keras's ``apply_transform`` parameters.

    Coordinates are (x, y) = (column, row); the matrix maps an output pixel
    to the input position it samples, about the image centre, as rotation
    @ shift @ shear @ zoom (Keras's order), then the flips of the result.

    Attributes
    ----------
    theta : float
        Rotation in degrees; 90 turns the image counter-clockwise (``np.rot90``).
    tx, ty : float
        Sampling offset in pixels along x (columns) and y (rows): the content
        moves by ``-tx``, ``-ty``.
    shear : float
        Shear angle in degrees.
    zx, zy : float
        Zoom along x and y; above 1 the content shrinks.
    flip_horizontal, flip_vertical : bool
        Mirror the result left-right / top-bottom.
    channel_shift : float or None
        Added to every channel, the result clipped to the image's own min and max.
    brightness : float or None
        Every value multiplied by it (clipped to 255).

    Examples
    --------
    >>> Transform(theta=90).matrix(3, 3).round(6).tolist()
    [[0.0, -1.0, 2.0], [1.0, 0.0, 0.0]]
    """

    theta: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    shear: float = 0.0
    zx: float = 1.0
    zy: float = 1.0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    channel_shift: float | None = None
    brightness: float | None = None

    def __post_init__(self) -> None:
        for name in ("theta", "tx", "ty", "shear", "zx", "zy", "channel_shift", "brightness"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
                message = f"Transform({name}={value!r}) is not accepted; use a finite number"
                raise OptionError(message)

    @classmethod
    def from_keras(cls, params: dict) -> Transform:
        """The transform Keras's ``ImageDataGenerator.apply_transform(x, params)`` applies."""
        return cls(
            theta=float(params.get("theta", 0)),
            tx=float(params.get("tx", 0)),
            ty=float(params.get("ty", 0)),
            shear=float(params.get("shear", 0)),
            zx=float(params.get("zx", 1)),
            zy=float(params.get("zy", 1)),
            flip_horizontal=bool(params.get("flip_horizontal", False)),
            flip_vertical=bool(params.get("flip_vertical", False)),
            channel_shift=params.get("channel_shift_intensity"),
            brightness=params.get("brightness"),
        )

    def affine(self) -> np.ndarray | None:
        """The 3x3 rotation @ shift @ shear @ zoom about the origin, or None when it is the identity."""
        if not (self.theta or self.tx or self.ty or self.shear or self.zx != 1 or self.zy != 1):
            return None
        theta, shear = math.radians(self.theta), math.radians(self.shear)
        rotation = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
        shift = np.array([[1, 0, self.tx], [0, 1, self.ty], [0, 0, 1]])
        shearing = np.array([[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]])
        zoom = np.diag([self.zx, self.zy, 1.0])
        with np.errstate(over="ignore", invalid="ignore"):  # a runaway Transform is refused by Augment.apply
            return rotation @ shift @ shearing @ zoom

    def matrix(self, height: int, width: int) -> np.ndarray | None:
        """The 2x3 output-to-input matrix for ``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)``.

        None when no resampling is needed (identity, or flips only: see :meth:`flip_code`).
        """
        affine = self.affine()
        if affine is None:
            return None
        cx, cy = (width - 1) / 2, (height - 1) / 2
        to_centre = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
        from_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        with np.errstate(over="ignore", invalid="ignore"):  # a runaway Transform is refused by apply
            matrix = to_centre @ affine @ from_centre
        # The flips act on the warped result, so they come first on the output coordinates.
        if self.flip_horizontal:
            matrix = matrix @ np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]])
        if self.flip_vertical:
            matrix = matrix @ np.array([[1, 0, 0], [0, -1, height - 1], [0, 0, 1]])
        return matrix[:2]

    def flip_code(self) -> int | None:
        """``cv2.flip``'s code for the flips alone (None: no flip)."""
        if self.flip_horizontal and self.flip_vertical:
            return -1
        if self.flip_horizontal:
            return 1
        if self.flip_vertical:
            return 0
        return None

    def lut(self, low: int, high: int) -> np.ndarray | None:
        """The 256-entry uint8 table for channel shift then brightness (None: neither).

        ``low`` and ``high`` are the image's min and max, the channel shift's clipping range.
        """
        if self.channel_shift is None and self.brightness is None:
            return None
        values = np.arange(256, dtype=np.float64)
        if self.channel_shift is not None:
            values = np.clip(values + self.channel_shift, low, high)
        if self.brightness is not None:
            values = values * self.brightness
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)


class Augment:
    """Random geometric and intensity augmentation with Keras ``ImageDataGenerator``'s meaning.

    Each image gets its own random :class:`Transform`, drawn as Keras draws
    it; the geometry is one ``cv2.warpAffine`` per image (per plane for
    NCHW) with bilinear interpolation, reading the source image and writing
    the batch buffer, uint8 throughout.

    Parameters
    ----------
    rotation : float
        Degrees, at most 360; the angle is uniform in ``[-rotation, rotation]``
        (Keras ``rotation_range``).
    shift : float, int or a (height, width) pair of them
        ``(height, width)`` shift ranges, or one for both (Keras
        ``height_shift_range``/``width_shift_range``). A float below 1 is a
        fraction of the image size, from 1 up pixels; the offset is uniform
        in ``[-range, range]``. An int ``n`` is whole pixels as Keras draws
        them: ``k * s`` with ``k`` uniform in ``0 .. n - 1`` and ``s`` = +-1
        (so ``shift=1`` never shifts, and ``shift=1.0`` does). At most 32,767.
    shear : float
        Degrees, uniform in ``[-shear, shear]`` (Keras ``shear_range``).
    zoom : float or (float, float)
        ``z`` means ``[1 - z, 1 + z]``; ``zx`` and ``zy`` are drawn
        independently from the range, above 1 zooms out (Keras ``zoom_range``).
        The range must stay above 0 and at most 100.
    flip : None, "horizontal", "vertical" or "both"
        Each allowed flip happens with probability 1/2, after the warp.
    fill : "nearest", "constant", "reflect" or "wrap"
        How points outside the image are filled (Keras ``fill_mode``).
    cval : int
        The value outside the image for ``fill="constant"``.
    brightness : (float, float), optional
        Factor range (0 to 255); every value is multiplied by a factor
        uniform in it (Keras ``brightness_range``).
    channel_shift : float
        One offset uniform in ``[-channel_shift, channel_shift]`` added to
        every channel, clipped to the image's min and max
        (Keras ``channel_shift_range``); at most 255.
    interpolation : "bilinear" or "nearest"
        Keras ``interpolation_order`` 1 or 0.

    Raises
    ------
    OptionError
        A negative, reversed, not finite or too large range (see each
        parameter), a zoom range reaching 0, an unknown fill, flip or
        interpolation, a ``cval`` outside 0..255.

    Examples
    --------
    >>> aug = Augment(rotation=20, shift=0.1, zoom=0.1, flip="horizontal")
    >>> batch = np.zeros((2, 8, 8, 3), np.uint8)
    >>> aug(batch, rng=np.random.default_rng(0)) is batch
    True
    """

    def __init__(
        self,
        *,
        rotation: float = 0.0,
        shift=0.0,
        shear: float = 0.0,
        zoom=0.0,
        flip: str | None = None,
        fill: str = "nearest",
        cval: int = 0,
        brightness=None,
        channel_shift: float = 0.0,
        interpolation: str = "bilinear",
    ):
        self.rotation = _number("rotation", rotation, high=MAX_DEGREES)
        if isinstance(shift, (tuple, list)):
            if len(shift) != 2:
                message = f"shift={shift!r} is not accepted; use a number or a (height, width) pair"
                raise OptionError(message)
            self.shift = (_shift(shift[0]), _shift(shift[1]))
        else:
            self.shift = (_shift(shift),) * 2
        self.shear = _number("shear", shear, high=MAX_DEGREES)
        if isinstance(zoom, (tuple, list)):
            self.zoom = _pair("zoom", zoom, high=MAX_ZOOM)
        else:
            z = _number("zoom", zoom, high=1)
            self.zoom = (1 - z, 1 + z)
        if self.zoom[0] <= 0:
            message = f"zoom={zoom!r} is not accepted; the zoom range must stay above 0 (a float below 1)"
            raise OptionError(message)
        if flip is False:
            flip = None
        if flip is not None:
            flip = choice("flip", flip, [f for f in FLIPS if f])
        self.flip = flip
        self.fill = choice("fill", fill, FILL_MODES)
        self.cval = _number("cval", cval, high=255)
        self.brightness = None if brightness is None else _pair("brightness", brightness, high=MAX_INTENSITY)
        self.channel_shift = _number("channel_shift", channel_shift, high=MAX_INTENSITY)
        self.interpolation = choice("interpolation", interpolation, INTERPOLATIONS)

    def __repr__(self) -> str:
        return (
            f"Augment(rotation={self.rotation:g}, shift={self.shift}, shear={self.shear:g}, zoom={self.zoom}, "
            f"flip={self.flip!r}, fill={self.fill!r}, cval={self.cval:g}, brightness={self.brightness}, "
            f"channel_shift={self.channel_shift:g}, interpolation={self.interpolation!r})"
        )

    def draw(self, rng: np.random.Generator, count: int, size: tuple[int, int]) -> list[Transform]:
        """``count`` random transforms for images of ``size`` (height, width), drawn from ``rng``.

        Each parameter is drawn for the whole batch in a fixed order, so the
        same generator state gives the same transforms however the images are
        later spread over threads.

        Examples
        --------
        >>> [round(t.theta, 2) for t in Augment(rotation=10).draw(np.random.default_rng(0), 2, (8, 8))]
        [2.74, -4.6]
        """
        height, width = size
        zeros = np.zeros(count)

        def uniform(limit: float) -> np.ndarray:
            return rng.uniform(-limit, limit, count) if limit else zeros

        def offsets(limit, extent: int) -> np.ndarray:
            if isinstance(limit, int) and limit:
                # Keras: np.random.choice(limit) * np.random.choice([-1, 1]), whole pixels.
                return rng.integers(0, limit, count) * rng.choice([-1.0, 1.0], count)
            return uniform(limit) * (extent if limit < 1 else 1)

        theta = uniform(self.rotation)
        shift_h, shift_w = self.shift
        ty = offsets(shift_h, height)
        tx = offsets(shift_w, width)
        shear = uniform(self.shear)
        if self.zoom == (1.0, 1.0):
            zx = zy = np.ones(count)
        else:
            zx, zy = rng.uniform(self.zoom[0], self.zoom[1], (2, count))
        horizontal, vertical = FLIPS[self.flip]
        flip_h = rng.random(count) < 0.5 if horizontal else np.zeros(count, bool)
        flip_v = rng.random(count) < 0.5 if vertical else np.zeros(count, bool)
        shifts = rng.uniform(-self.channel_shift, self.channel_shift, count) if self.channel_shift else None
        factors = rng.uniform(*self.brightness, count) if self.brightness is not None else None
        return [
            Transform(
                theta=float(theta[i]),
                tx=float(tx[i]),
                ty=float(ty[i]),
                shear=float(shear[i]),
                zx=float(zx[i]),
                zy=float(zy[i]),
                flip_horizontal=bool(flip_h[i]),
                flip_vertical=bool(flip_v[i]),
                channel_shift=None if shifts is None else float(shifts[i]),
                brightness=None if factors is None else float(factors[i]),
            )
            for i in range(count)
        ]

    def apply(self, source: np.ndarray, transform: Transform, out: np.ndarray, *, layout: str = "NHWC") -> np.ndarray:
        """Write ``source`` transformed by ``transform`` into ``out`` (same shape, uint8, not overlapping).

        Examples
        --------
        >>> image = np.arange(9, dtype=np.uint8).reshape(3, 3, 1)
        >>> out = Augment().apply(image, Transform(theta=90), np.empty_like(image))
        >>> bool((out[..., 0] == np.rot90(image[..., 0])).all())
        True
        """
        height, width = image_size(source.shape, layout)
        matrix = transform.matrix(height, width)
        planes = _planes(source, layout)
        targets = _planes(out, layout)
        if matrix is not None:
            _check_reach(matrix, height, width, transform)
            flags = INTERPOLATIONS[self.interpolation] | cv2.WARP_INVERSE_MAP
            border, cval = FILL_MODES[self.fill], (self.cval,) * 4
            for plane, target in zip(planes, targets, strict=True):
                result = cv2.warpAffine(
                    plane, matrix, (width, height), dst=_dst(target), flags=flags, borderMode=border, borderValue=cval
                )
                _into(target, result)
        else:
            code = transform.flip_code()
            for plane, target in zip(planes, targets, strict=True):
                if code is None:
                    np.copyto(target, plane)
                else:
                    _into(target, cv2.flip(plane, code, dst=_dst(target)))
        if transform.channel_shift is not None or transform.brightness is not None:
            flat = out.reshape(out.shape[0], -1)
            low, high = (int(flat.min()), int(flat.max())) if transform.channel_shift is not None else (0, 255)
            _into(flat, cv2.LUT(flat, transform.lut(low, high), dst=flat))
        return out

    def __call__(
        self,
        images: np.ndarray,
        *,
        rng: np.random.Generator | int | None = None,
        layout: str | None = None,
    ) -> np.ndarray:
        """Augment a uint8 batch ``(N, H, W, C)`` or ``(N, C, H, W)`` in place and return it.

        ``rng`` is a Generator or a seed (None: fresh randomness). The batch
        engine of :meth:`preload.Dataset.batches` does not go through here:
        it warps from the source rows straight into its buffers.
        """
        images = _batch(images, "images")
        layout = layout_of(images.shape, layout)
        if not (rng is None or isinstance(rng, np.random.Generator) or (
                isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)) and rng >= 0)):
            message = f"rng={rng!r} is not accepted; use None, an int seed >= 0 or a numpy Generator"
            raise OptionError(message)
        transforms = self.draw(np.random.default_rng(rng), len(images), image_size(images.shape[1:], layout))
        scratch = np.empty(images.shape[1:], np.uint8)
        for image, transform in zip(images, transforms, strict=True):
            self.apply(image, transform, scratch, layout=layout)
            np.copyto(image, scratch)
        return images


def _batch(images, name: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        given = f"{type(images).__name__} {getattr(images, 'shape', '')} {getattr(images, 'dtype', '')}".strip()
        message = f"{name} must be a uint8 array of shape (N, H, W, C) or (N, C, H, W), not {given}"
        raise OptionError(message)
    return images


def _planes(image: np.ndarray, layout: str) -> list[np.ndarray]:
    """What one OpenCV call handles: the image itself (H, W, C<=4 channels), else its 2-D planes."""
    if layout == "NCHW":
        return list(image)
    if image.shape[2] == 1:
        return [image[:, :, 0]]
    if image.shape[2] <= 4:
        return [image]
    return [image[:, :, c] for c in range(image.shape[2])]


def _dst(target: np.ndarray) -> np.ndarray | None:
    """``target`` as OpenCV's ``dst=`` when it can write there; None (a new array, copied) for a strided plane."""
    return target if target.flags.c_contiguous else None


def _check_reach(matrix: np.ndarray, height: int, width: int, transform: Transform) -> None:
    """Refuse a matrix that samples absurdly far from the image: OpenCV's warp would crash, not fail."""
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], np.float64)
    with np.errstate(all="ignore"):
        reach = np.abs(corners @ matrix.T)
    if not np.isfinite(reach).all() or reach.max() > MAX_COORDINATE:
        far = f"{reach.max():g} pixels away" if np.isfinite(reach).all() else "beyond any finite distance"
        message = (
            f"{transform!r} samples the {height}x{width} image {far}; "
            f"use shifts and zooms that stay within {MAX_COORDINATE:g} pixels"
        )
        raise OptionError(message)


def _into(target: np.ndarray, result: np.ndarray) -> None:
    """OpenCV silently allocates a new array when ``dst=`` does not fit; copy it over then."""
    if result is not target and not np.shares_memory(result, target):
        np.copyto(target, result.reshape(target.shape))


@dataclass(frozen=True, eq=False)
class Stats:
    """Per-channel statistics of a uint8 image array (:func:`stats`).

    Attributes
    ----------
    mean, std : numpy.ndarray of float64, shape (C,)
        In pixel units (0..255); ``std`` is the population std (``ddof=0``), as ``np.std``.
    count : int
        Values per channel.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int

    def __repr__(self) -> str:
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        return f"Stats(mean=[{mean}], std=[{std}], count={self.count})"


def stats(
    data, *, layout: str | None = None, workers: int | None = None, chunk_bytes: int = STATS_CHUNK_BYTES
) -> Stats:
    """Per-channel mean and std of a uint8 image array, a memory-mapped cache, or a dataset.

    The array is read in chunks of about ``chunk_bytes`` by ``workers``
    threads; each chunk adds to a per-channel histogram of the 256 values
    (``cv2.calcHist``, which releases the GIL). Sums and sums of squares are
    then exact integers, so the result is the correctly rounded float64
    mean and std whatever the order of the chunks, and memory stays at a
    few chunks whatever the size of the array (a memmap's pages are page
    cache, not the process's own memory).

    Parameters
    ----------
    data : numpy.ndarray, numpy.memmap, preload.Dataset or preload.ImageFiles
        uint8 images ``(N, H, W, C)`` or ``(N, C, H, W)``.
    layout : "NHWC" or "NCHW", optional
        Where the channels are; default: the dataset's own layout, or guessed
        from the shape (NCHW when axis 1 has 1, 3 or 4 entries and the last
        axis does not).
    workers : int, optional
        Threads; default: the usable CPUs, at most 4.
    chunk_bytes : int
        Bytes per chunk (whole images, at least one).

    Returns
    -------
    Stats

    Examples
    --------
    >>> images = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    >>> s = stats(images)
    >>> s.mean.tolist(), bool(np.allclose(s.std, images.reshape(-1, 3).std(axis=0)))
    ([10.5, 11.5, 12.5], True)
    """
    if not isinstance(chunk_bytes, numbers.Integral) or isinstance(chunk_bytes, (bool, np.bool_)) or chunk_bytes < 1:
        message = f"chunk_bytes={chunk_bytes!r} is not accepted; use an int >= 1"
        raise OptionError(message)
    images, read, layout = _stats_source(data, layout)
    count = len(images) if read is None else len(data)
    shape = tuple(images.shape[1:]) if read is None else tuple(data.image_shape)
    channels = shape[-1] if layout == "NHWC" else shape[0]
    image_bytes = max(1, math.prod(shape))
    per_chunk = max(1, min(chunk_bytes // image_bytes, (1 << 24) * channels // image_bytes))
    if image_bytes // channels > 1 << 24:
        message = f"images of {image_bytes // channels} pixels are too large for stats (at most {1 << 24})"
        raise OptionError(message)
    workers = min(4, cpu_count()) if workers is None else resolve_workers(workers)
    starts = iter(range(0, count, per_chunk))
    lock = threading.Lock()
    totals = np.zeros((channels, 256), np.int64)
    errors: list[BaseException] = []

    def work() -> None:
        histogram = np.zeros((channels, 256), np.int64)
        buffer = None
        try:
            while True:
                with lock:
                    start = next(starts, None)
                if start is None or errors:
                    break
                stop = min(start + per_chunk, count)
                if read is None:
                    chunk = images[start:stop]
                else:
                    if buffer is None:
                        buffer = np.empty((per_chunk,) + shape, np.uint8)
                    chunk = read(np.arange(start, stop), buffer[: stop - start])
                _add_histogram(np.ascontiguousarray(chunk), layout, histogram)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)
        with lock:
            totals[...] += histogram

    threads = [threading.Thread(target=work, name="preload-stats", daemon=True) for _ in range(workers - 1)]
    for thread in threads:
        thread.start()
    work()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    values = np.arange(256, dtype=object)
    n = int(totals[0].sum())
    if n == 0:
        message = "stats needs at least one image"
        raise OptionError(message)
    means, stds = [], []
    for histogram in totals.astype(object):
        total = int((histogram * values).sum())
        squares = int((histogram * values * values).sum())
        # Exact integers until the one division each: the correctly rounded mean and variance.
        means.append(total / n)
        stds.append(math.sqrt((n * squares - total * total) / (n * n)))
    return Stats(mean=np.array(means), std=np.array(stds), count=n)


def _stats_source(data, layout):
    """(array or None, reader or None, layout) for :func:`stats`."""
    if isinstance(data, np.ndarray):
        images = _batch(data, "stats' data")
        return images, None, layout_of(images.shape, layout)
    own = getattr(data, "layout", None) or getattr(getattr(data, "options", None), "layout", None)
    if layout is None and own is not None:
        layout = own
    images = getattr(data, "images", None)
    if isinstance(images, np.ndarray):
        images = _batch(images, "stats' data")
        return images, None, layout_of(images.shape, layout)
    read = getattr(data, "_rows", None)
    if read is None or not hasattr(data, "image_shape"):
        message = f"stats takes a uint8 array, a preload.Dataset or ImageFiles, not {type(data).__name__}"
        raise OptionError(message)
    return None, read, layout_of((1,) + tuple(data.image_shape), layout)


def _add_histogram(chunk: np.ndarray, layout: str, histogram: np.ndarray) -> None:
    """Add the per-channel value counts of a contiguous uint8 chunk of images to ``histogram`` (C, 256)."""
    channels = histogram.shape[0]
    if layout == "NHWC":
        pixels = chunk.reshape(-1, 1, channels)
        if channels > 4:  # OpenCV images hold at most 4 (CV_CN_MAX is larger, calcHist's practical limit is not)
            for c in range(channels):
                histogram[c] += np.bincount(pixels[:, 0, c], minlength=256)
            return
        for c in range(channels):
            counts = cv2.calcHist([pixels], [c], None, [256], [0, 256])
            histogram[c] += counts.ravel().astype(np.int64)
        return
    planes = chunk.reshape(len(chunk), channels, -1)
    for c in range(channels):
        counts = cv2.calcHist([np.ascontiguousarray(planes[:, c])], [0], None, [256], [0, 256])
        histogram[c] += counts.ravel().astype(np.int64)


class Normalize:
    """uint8 -> float conversion with Keras ``ImageDataGenerator.standardize``'s steps.

    In Keras's order: ``x * rescale``; minus the image's own mean
    (``samplewise_center``); divided by the image's own std + 1e-6
    (``samplewise_std``); minus the per-channel ``mean``; divided by the
    per-channel ``std`` + 1e-6. ``mean`` and ``std`` are in pixel units
    (as :func:`stats` gives them) and are scaled by ``rescale`` here, which
    is what Keras's ``fit`` does when ``rescale`` is set.

    Every step is affine per channel, so an image is converted by one
    lookup table per channel (``cv2.LUT``, 256 entries), written straight
    into the float buffer.

    Parameters
    ----------
    mean, std : sequence of float or a Stats, optional
        Per-channel values (or one for all). ``Normalize(stats)`` uses both of a :class:`Stats`.
    rescale : float, optional
        Factor applied first (Keras ``rescale``, e.g. ``1/255``).
    samplewise_center, samplewise_std : bool
        Keras ``samplewise_center`` / ``samplewise_std_normalization``.

    Examples
    --------
    >>> batch = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)
    >>> Normalize(rescale=1 / 255)(batch).ravel().tolist()
    [0.0, 1.0]
    >>> Normalize(mean=[127.5], std=[127.5])(batch).ravel().round(4).tolist()
    [-1.0, 1.0]
    """

    def __init__(
        self,
        mean=None,
        std=None,
        *,
        rescale: float | None = None,
        samplewise_center: bool = False,
        samplewise_std: bool = False,
    ):
        if isinstance(mean, Stats):
            mean, std = mean.mean, mean.std if std is None else std
        self.mean = None if mean is None else _channel_values("mean", mean, low=-math.inf)
        self.std = None if std is None else _channel_values("std", std, low=0.0)
        self.rescale = 1.0 if rescale is None else _number("rescale", rescale, low=-math.inf)
        if self.rescale == 0:
            raise OptionError("rescale=0 is not accepted; it would make every image 0")
        self.samplewise_center = bool(samplewise_center)
        self.samplewise_std = bool(samplewise_std)

    @classmethod
    def coerce(cls, value) -> Normalize | None:
        """``normalize=``'s accepted values: None, a Normalize, a Stats (feature-wise by it), or "sample".

        ``"sample"`` is sample-wise centring and std normalisation.

        Examples
        --------
        >>> Normalize.coerce("sample")
        Normalize(mean=None, std=None, rescale=1, samplewise_center=True, samplewise_std=True)
        """
        if value is None or isinstance(value, Normalize):
            return value
        if isinstance(value, Stats):
            return cls(value)
        if isinstance(value, str) and value.lower() == "sample":
            return cls(samplewise_center=True, samplewise_std=True)
        message = (
            f"normalize={value!r} is not accepted; use None, preload.stats(...), \"sample\" or preload.Normalize(...)"
        )
        raise OptionError(message)

    def __repr__(self) -> str:
        mean = None if self.mean is None else [float(f"{v:.6g}") for v in self.mean]
        std = None if self.std is None else [float(f"{v:.6g}") for v in self.std]
        return (
            f"Normalize(mean={mean}, std={std}, rescale={self.rescale:g}, "
            f"samplewise_center={self.samplewise_center}, samplewise_std={self.samplewise_std})"
        )

    def _check_channels(self, channels: int) -> None:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                message = f"{name}= has {len(values)} values; these images have {channels} channels"
                raise OptionError(message)

    def check(self, channels: int, dtype) -> None:
        """Refuse, before any batch, values that do not fit images of ``channels`` channels or ``dtype``.

        The sample-wise steps depend on each image and are checked per image.
        """
        self._check_channels(channels)
        if not self.per_image:
            _finite(self.tables(channels), np.dtype(dtype), self)

    def tables(self, channels: int, image: np.ndarray | None = None, layout: str = "NHWC") -> np.ndarray:
        """The (C, 256) float64 table: entry ``[c, v]`` is what value ``v`` of channel ``c`` becomes.

        ``image`` (uint8) is needed for the sample-wise steps.
        """
        self._check_channels(channels)
        if self.per_image and image is None:
            raise OptionError("sample-wise normalisation needs the image")
        # Overflow (a huge rescale or mean) becomes inf here and is refused where the dtype is known (_finite).
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.arange(256, dtype=np.float64) * self.rescale
            scale = np.ones(channels)
            offset = np.zeros(channels)
            if self.per_image:
                mean, std = _image_mean_std(image, layout)
                mean, std = mean * self.rescale, std * abs(self.rescale)
                if self.samplewise_center:
                    offset -= mean
                if self.samplewise_std:
                    scale, offset = scale / (std + EPSILON), offset / (std + EPSILON)
            if self.mean is not None:
                offset = offset - self.mean * self.rescale
            if self.std is not None:
                divisor = self.std * abs(self.rescale) + EPSILON
                scale, offset = scale / divisor, offset / divisor
            return values[None, :] * scale[:, None] + offset[:, None]

    @property
    def per_image(self) -> bool:
        return self.samplewise_center or self.samplewise_std

    def convert(self, images: np.ndarray, out: np.ndarray, *, layout: str) -> np.ndarray:
        """Write the normalised ``images`` (uint8 batch) into ``out`` (a float batch of the same shape)."""
        channels = images.shape[-1] if layout == "NHWC" else images.shape[1]
        if self.per_image:
            for image, target in zip(images, out, strict=True):
                table = self.tables(channels, image, layout)
                _lut_convert(image[None], target[None], table, layout, self)
        else:
            _lut_convert(images, out, self.tables(channels), layout, self)
        return out

    def __call__(self, images: np.ndarray, *, out: np.ndarray | None = None, layout: str | None = None) -> np.ndarray:
        """Normalise a uint8 batch into ``out`` (a float32 or float64 array of its shape; default a new float32 one)."""
        images = _batch(images, "images")
        if out is None:
            out = np.empty(images.shape, np.float32)
        elif (
            not isinstance(out, np.ndarray)
            or out.shape != images.shape
            or out.dtype not in (np.float32, np.float64)
            or not out.flags.writeable
        ):
            given = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}".strip()
            message = f"out= must be a writable float32 or float64 array of shape {images.shape}, not {given}"
            raise OptionError(message)
        return self.convert(images, out, layout=layout_of(images.shape, layout))


def _finite(table: np.ndarray, dtype: np.dtype, normalize: Normalize) -> np.ndarray:
    """``table`` in ``dtype``, refused when a value overflows it (a huge ``rescale`` or ``mean``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted = table.astype(dtype)
    if not np.isfinite(converted).all():
        message = f"{normalize!r} gives values that do not fit {dtype.name}; use a smaller rescale, mean or 1/std"
        raise OptionError(message)
    return converted


def _channel_values(name: str, values, *, low: float) -> np.ndarray:
    try:
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):  # strings, ragged lists, objects
        array = np.array([np.nan])
    if array.ndim != 1 or not np.isfinite(array).all() or (array < low).any():
        message = f"{name}={values!r} is not accepted; use finite per-channel numbers" + (
            f" >= {low:g}" if low > -math.inf else ""
        )
        raise OptionError(message)
    return array


def _image_mean_std(image: np.ndarray, layout: str) -> tuple[float, float]:
    """Mean and population std of all values of one uint8 image (Keras's sample-wise statistics)."""
    planes = _planes(image, layout)
    total = squares = 0.0
    for plane in planes:
        mean, std = cv2.meanStdDev(plane)
        n = plane.size // max(1, plane.shape[2] if plane.ndim == 3 else 1)
        total += float((mean.ravel() * n).sum())
        squares += float(((std.ravel() ** 2 + mean.ravel() ** 2) * n).sum())
    count = image.size
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 0.0))


def _lut_convert(images: np.ndarray, out: np.ndarray, table: np.ndarray, layout: str, normalize: Normalize) -> None:
    """``out[..., c] = table[c, images[..., c]]`` for a contiguous uint8 batch and a float batch."""
    channels = table.shape[0]
    table = _finite(table, out.dtype, normalize)
    if layout == "NHWC" and channels <= 4 and images.flags.c_contiguous and out.flags.c_contiguous:
        rows = images.shape[0] * images.shape[1]
        source = images.reshape(rows, images.shape[2], channels)
        target = out.reshape(rows, out.shape[2], channels)
        lut = table.T.reshape(1, 256, channels) if channels > 1 else table.reshape(1, 256)
        if channels == 1:
            source, target = source[:, :, 0], target[:, :, 0]
        _into(target, cv2.LUT(source, lut, dst=target))
        return
    for c in range(channels):
        if layout == "NHWC":
            np.take(table[c], images[..., c], out=out[..., c])
        else:
            for image, target in zip(images, out, strict=True):
                _into(target[c], cv2.LUT(image[c], table[c].reshape(1, 256), dst=target[c]))


__all__ = ["Augment", "Normalize", "Stats", "Transform", "layout_of", "stats"]
