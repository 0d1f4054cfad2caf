"""One file -> one slot: read, check, decode, resize, convert color, transpose.

The OpenCV calls that make pixels live here, including OpenCV's
``(width, height)`` order; the rest of preload speaks ``(height, width)``.
The options arrive checked (:class:`preload.options.DecodeOptions`), and
whatever goes wrong with one file leaves :meth:`Decoder.decode_into` as an
:class:`~preload.errors.ImageDecodeError`, never as a ``cv2.error``.

The path of one image, and why each step is where it is:

1. The header is read and parsed first (:mod:`preload.headers`), then the
   rest of the file in one call (:func:`read_file`): special files, bombs,
   variants OpenCV decodes wrongly, truncation and unknown data are caught
   before OpenCV allocates anything.
2. JPEGs are decoded by libjpeg-turbo through simplejpeg (the same pixels
   as ``cv2.imdecode``, about 10-35% less CPU), in strict mode: where
   libjpeg would paint the rest of a damaged scan gray and print a
   warning, the file fails with reason ``damaged``. The header quirks
   libjpeg repairs exactly (stray bytes between segments, an unknown JFIF
   version or Adobe transform, odd baseline scan parameters) are repaired
   the same way and the file decoded strictly again. Damage the entropy
   decoder cannot see (bits flipped into other valid codes, a DC shift)
   stays undetected, as in every decoder. CMYK JPEGs (checked by a strict
   read at 1/8 scale first), 12-bit, lossless and arithmetic-coded JPEGs
   and other header quirks go to OpenCV, as does every other format; for
   JPEGs and TIFFs, what libjpeg and libtiff print during that decode is
   read back per file (one such decode at a time) and a warning about the
   data makes the file ``damaged``; Deflate TIFF strips are checked with zlib.
   JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the geometry still
   leaves at least twice the output's pixels on each axis: libjpeg-turbo
   scales in the IDCT, which is both the cheapest decode and a good
   antialiasing filter. They are decoded straight into the wanted channel
   order, and straight into the slot when no resize is needed (NHWC).
3. The geometry (stretch / fit / cover / shorter) is a crop rectangle in the
   decoded image and a destination rectangle in the slot, so cropping costs
   nothing and ``cv2.resize`` writes straight into the slot (NHWC) or into a
   small per-thread scratch image that ``cv2.split`` spreads over the slot's
   planes (NCHW). No full-size temporary is made per image.
"""

from __future__ import annotations

import math
import os
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from .errors import ImageDecodeError, InsufficientMemoryError, Reason, open_error
from .headers import ImageInfo, JpegFrame, check_end, open_regular, read_header
from .options import DEFAULT_MAX_PIXELS, DecodeOptions
from .quiet import stderr_lines

_OPENCV_LIMIT = "more pixels than OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS) allows"

# ----------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Crop ``src`` (y0, y1, x0, x1) of the decoded image, resized into ``dst`` of the slot."""

    src: tuple[int, int, int, int]
    dst: tuple[int, int, int, int]

    @property
    def src_size(self) -> tuple[int, int]:
        return self.src[1] - self.src[0], self.src[3] - self.src[2]

    @property
    def dst_size(self) -> tuple[int, int]:
        return self.dst[1] - self.dst[0], self.dst[3] - self.dst[2]

    def reduced(self, factor: int, actual: tuple[int, int]) -> Geometry:
        """The same geometry on a decode at 1/``factor`` scale whose size is ``actual``.

        Crops of reduced images are aligned to ``factor`` (see plan_geometry),
        so the division is exact except at a far edge that ``ceil`` rounded.
        """
        y0, y1, x0, x1 = self.src
        top, left = min(y0 // factor, actual[0] - 1), min(x0 // factor, actual[1] - 1)
        bottom = min(actual[0], max(top + 1, -(-y1 // factor)))
        right = min(actual[1], max(left + 1, -(-x1 // factor)))
        return Geometry((top, bottom, left, right), self.dst)

    @property
    def shrinks(self) -> bool:
        """True unless the resize enlarges both axes (then linear beats area)."""
        (sh, sw), (dh, dw) = self.src_size, self.dst_size
        return not (dh > sh and dw > sw)


def plan_geometry(height: int, width: int, size: tuple[int, int], mode: str) -> Geometry:
    """Where an image of ``height`` x ``width`` goes in a slot of ``size``.

    * ``stretch``: the whole image onto the whole slot (aspect not kept).
    * ``fit``: scaled to fit inside, centered; the rest of the slot is ``fill``.
    * ``cover``: scaled to cover the slot, the centre cropped.
    * ``shorter``: the shorter side scaled to ``max(size)``, the centre cropped;
      for a square size this equals ``cover``.

    A crop of a large image is aligned to the JPEG scale-down that image
    allows (:func:`reduction_for`), whatever its format and whether or not
    ``reduce`` is on: a reduced decode then crops exactly the same pixels, and
    the output does not shift by a fraction of a pixel with the decode path.

    Examples
    --------
    >>> plan_geometry(100, 200, (50, 50), "cover")
    Geometry(src=(0, 100, 50, 150), dst=(0, 50, 0, 50))
    >>> plan_geometry(100, 200, (50, 50), "fit")
    Geometry(src=(0, 100, 0, 200), dst=(12, 37, 0, 50))
    """
    geometry = _plan(height, width, size, mode)
    if mode in ("cover", "shorter"):
        step = reduction_for(height, width, size, mode)
        if step > 1:
            y0, y1, x0, x1 = geometry.src
            top, bottom = _snap(y0, y1, height, step)
            left, right = _snap(x0, x1, width, step)
            geometry = Geometry((top, bottom, left, right), geometry.dst)
    return geometry


def _snap(start: int, stop: int, limit: int, step: int) -> tuple[int, int]:
    """The span moved and sized to multiples of ``step``, still inside ``[0, limit)``."""
    length = max(step, round((stop - start) / step) * step)
    begin = round(start / step) * step
    while begin + length > limit:
        begin -= step
    return max(0, begin), max(0, begin) + length


def _plan(height: int, width: int, size: tuple[int, int], mode: str) -> Geometry:
    out_h, out_w = size
    if mode == "stretch":
        return Geometry((0, height, 0, width), (0, out_h, 0, out_w))
    if mode == "fit":
        scale = min(out_h / height, out_w / width)
        new_h = min(out_h, max(1, round(height * scale)))
        new_w = min(out_w, max(1, round(width * scale)))
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        return Geometry((0, height, 0, width), (top, top + new_h, left, left + new_w))
    if mode == "cover":
        scale = max(out_h / height, out_w / width)
    else:  # shorter
        scale = max(out_h, out_w) / min(height, width)
    crop_h = min(height, max(1, round(out_h / scale)))
    crop_w = min(width, max(1, round(out_w / scale)))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return Geometry((top, top + crop_h, left, left + crop_w), (0, out_h, 0, out_w))


# How much larger than the output the reduced crop must stay, per axis.
# libjpeg-turbo's scaled IDCT is a decent low-pass filter at 1/2 and 1/4 but
# keeps only each block's mean at 1/8; when the crop came out barely
# output-sized, the result measured 30-34 dB PSNR against the full-decode path
# on real photos of fine texture (scikit-image's grass, gravel). Keeping at
# least twice the output lets the final area resize average >= 2x2 decoded
# pixels per output pixel, and every case measured stayed >= 36 dB
# (tests/test_decode.py checks >= 35 dB).
_MIN_OVERSHOOT = 2.0


def reduction_for(height: int, width: int, size: tuple[int, int], mode: str) -> int:
    """JPEG scale-down (8, 4, 2 or 1) for a source of ``height`` x ``width``.

    The largest factor whose decoded crop still has at least twice the
    output's pixels on both axes (see ``_MIN_OVERSHOOT``). libjpeg's output at
    scale 1/f is ``ceil(side / f)``.

    Examples
    --------
    >>> reduction_for(375, 500, (224, 224), "stretch"), reduction_for(1200, 1600, (256, 256), "cover")
    (1, 2)
    """
    for factor in (8, 4, 2):
        geometry = _plan(math.ceil(height / factor), math.ceil(width / factor), size, mode)
        (sh, sw), (dh, dw) = geometry.src_size, geometry.dst_size
        if sh >= _MIN_OVERSHOOT * dh and sw >= _MIN_OVERSHOOT * dw:
            return factor
    return 1


# The GRAYSCALE variants carry only the scale bits, so they combine with COLOR_RGB.
_REDUCED_FLAG = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_COLOR_FLAG = {"rgb": cv2.IMREAD_COLOR_RGB, "bgr": cv2.IMREAD_COLOR_BGR, "gray": cv2.IMREAD_GRAYSCALE}
_CONVERT = {
    ("gray", "rgb"): cv2.COLOR_GRAY2RGB,
    ("gray", "bgr"): cv2.COLOR_GRAY2BGR,
    ("bgr", "rgb"): cv2.COLOR_BGR2RGB,
    ("bgr", "gray"): cv2.COLOR_BGR2GRAY,
}


_TURBO_COLOR = {"rgb": "RGB", "bgr": "BGR", "gray": "GRAY"}
# SOF0-2: Huffman-coded baseline, extended and progressive JPEG; the rest
# (lossless, arithmetic coding, hierarchical) is rare and left to OpenCV.
_TURBO_SOF = frozenset((0xC0, 0xC1, 0xC2))


def _turbo_decodes(info: ImageInfo) -> bool:
    """True for the JPEGs simplejpeg decodes to the same pixels as OpenCV.

    8-bit gray or 3-component images with Huffman coding: nearly every JPEG
    there is. CMYK/YCCK (simplejpeg converts those with its own formula),
    12-bit and lossless JPEGs and arithmetic coding are OpenCV's.
    """
    frame = info.jpeg
    return frame is not None and frame.sof in _TURBO_SOF and frame.precision == 8 and frame.components in (1, 3)


def _turbo_checks(info: ImageInfo) -> bool:
    """True for the JPEGs OpenCV decodes that simplejpeg can still read strictly: CMYK and YCCK."""
    frame = info.jpeg
    return frame is not None and frame.sof in _TURBO_SOF and frame.precision == 8 and frame.components == 4


# libjpeg's warnings (jerror.h JWRN_*) that mean the entropy-coded data, hence
# the pixels, is damaged: libjpeg fills what it could not decode with gray or
# with garbage and carries on. "Unsupported marker type" is libjpeg's error for
# an 0xFF byte in the scan followed by garbage. Checked only for warnings
# raised after the header was read without complaint (see _jpeg_verdict), or
# printed while OpenCV decodes a header without quirks (see _repaired).
_DAMAGE = re.compile(
    r"premature end of data segment|bad Huffman code|bad arithmetic code|instead of RST"
    r"|Premature end of JPEG file|Inconsistent progression sequence|extraneous bytes before marker"
    r"|Unsupported marker type|Corrupt JPEG data",
    re.IGNORECASE,
)
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})", re.IGNORECASE)
# libjpeg's header warnings about the bytes JpegFrame.patches rewrites.
_PATCHED = re.compile(
    r"unknown JFIF revision number|Unknown Adobe color transform code|Invalid SOS parameters for sequential",
    re.IGNORECASE,
)


def _jpeg_verdict(message: str, data: bytes, frame: JpegFrame) -> str:
    """Sort simplejpeg's strict-mode error: "damaged", "repair" (a header quirk) or "opencv".

    The header (everything before the first scan) is read again, strictly:
    a complaint there is about a header quirk libjpeg recovers from with the
    pixels intact. The quirks :func:`preload.headers.parse` found (stray
    bytes between segments, an unknown JFIF version or Adobe transform,
    the first scan's parameters) are "repair": the caller decodes
    :func:`_repaired` data, still strictly. Other header quirks go to
    OpenCV. A header that reads cleanly puts the complaint in the
    entropy-coded data: damaged pixels, unless it is not a data warning at
    all (a feature simplejpeg lacks: OpenCV).
    """
    try:
        simplejpeg.decode_jpeg_header(data, strict=True)
    except ValueError as exc:
        complaint = str(exc)
        found = _EXTRANEOUS.search(complaint)
        if found and (int(found[1]), int(found[2], 16)) in {(count, marker) for _, _, count, marker in frame.junk}:
            return "repair"
        return "repair" if frame.patches and _PATCHED.search(complaint) else "opencv"
    if frame.patches and _PATCHED.search(message):  # the scan header's quirk, raised as decoding starts
        return "repair"
    return "damaged" if _DAMAGE.search(message) else "opencv"


def _repaired(data: bytes, frame: JpegFrame) -> bytes:
    """``data`` without the header quirks libjpeg warns about and repairs exactly (the same pixels).

    The stray bytes between segments are cut out, and the bytes libjpeg
    warns about and then reads as another value are given that value (see
    :class:`preload.headers.JpegFrame`). Without those warnings, what
    libjpeg prints is about the data: it prints only its first warning, so
    a quirk left in would hide the damage after it.
    """
    if not frame.junk and not frame.patches:
        return data
    if frame.patches:
        patched = bytearray(data)
        for at, value in frame.patches:
            if at < len(patched):
                patched[at] = value
        data = patched
    parts, last = [], 0
    for start, stop, _, _ in frame.junk:
        parts.append(data[last:start])
        last = stop
    parts.append(data[last:])
    return b"".join(parts)


def _damaged_jpeg(path: str, message: str) -> ImageDecodeError:
    detail = f"damaged JPEG data: libjpeg reports {message!r} (its pixels would be partly made up)"
    return ImageDecodeError(path, Reason.DAMAGED, detail)


def _strictly(decode, data: bytes, path: str, frame: JpegFrame) -> tuple[np.ndarray | None, str]:
    """``decode(data)`` with simplejpeg in strict mode, its complaint sorted by :func:`_jpeg_verdict`.

    Returns the image, or None and the complaint when OpenCV must decode
    the file (a quirk not repaired, or a feature simplejpeg lacks).

    Raises
    ------
    ImageDecodeError
        ``DAMAGED`` for damaged entropy-coded data.
    """
    repaired = False
    while True:
        try:
            return decode(data), ""
        except ValueError as exc:
            message = str(exc).strip()
            verdict = _jpeg_verdict(message, data, frame)
            if verdict == "damaged":
                raise _damaged_jpeg(path, message) from None
            if verdict == "opencv" or repaired:
                return None, message
            data, repaired = _repaired(data, frame), True


# What libtiff reports through OpenCV's logger ("TIFF_Error <module>: <text>").
_TIFF_MESSAGE = re.compile(r"TIFF_(Error|Warning) (?:(\w+): )?(.*)")
# The routines that read the directory: libtiff ignores or repairs a tag there
# ("Unknown field with tag", "Incorrect count for Orientation; tag ignored",
# "Bad value 9 for Orientation"), the pixels intact; a directory it cannot
# repair makes the decode fail anyway. A codec's set-up warns about what it
# then handles ("Old-style LZW codes", a last JPEG strip taller than the
# image, progressive JPEG in a TIFF); data it cannot decode it reports later,
# as an error. Whatever else libtiff reports while OpenCV reads the strips or
# tiles is about their data: OpenCV's 8-bit reader carries on past a strip
# libtiff could not decode, keeping the garbage.
_TIFF_DIRECTORY = re.compile(
    r"_?TIFF(ReadDir|ReadCustomDir|ReadEXIFDir|ReadGPSDir|Fetch|V?[SG]etField|MergeFields|SetupFields|FieldWith"
    r"|CheckDir|AdvanceDir|NumberOfDir|ClientOpen)|\w+VSetField|EstimateStripByteCounts|JPEGFixupTags|MissingRequired"
)
_TIFF_SETUP = re.compile(r"\w+(PreDecode|SetupDecode)$")


def _tiff_damage(lines: list[str]) -> str | None:
    """The first line libtiff printed about damaged strip or tile data, if any."""
    for line in lines:
        found = _TIFF_MESSAGE.search(line)
        if found is None:
            continue
        kind, module, text = found.groups()
        if module is not None and (_TIFF_DIRECTORY.match(module) or kind == "Warning" and _TIFF_SETUP.match(module)):
            continue
        if module == "JPEGLib" and kind == "Warning" and not _DAMAGE.search(text):
            continue  # a JPEG-in-TIFF header quirk (an unknown JFIF version, say)
        return text if module is None or text.startswith(module) else f"{module}: {text}"
    return None


def _check_zlib(data, info: ImageInfo, path: str) -> None:
    """Refuse a Deflate TIFF whose zlib streams fail zlib's own checks (Adler-32, code structure).

    libtiff stops inflating a strip once it has the strip's bytes, so damage
    that still inflates to the right length (zeroed bytes do) reaches the
    pixels without a word; zlib's checksum at the end of the stream sees it.
    The input goes in small steps, so no step inflates to more than a few MB.
    """
    view = memoryview(data)
    for k, (offset, length) in enumerate(info.zlib_chunks):
        stream = zlib.decompressobj()
        chunk = view[offset : offset + length]
        try:
            for start in range(0, len(chunk), 1 << 14):
                piece = chunk[start : start + (1 << 14)]
                while piece and not stream.eof:
                    stream.decompress(piece, 1 << 22)
                    piece = stream.unconsumed_tail
                if stream.eof:
                    break
        except zlib.error as exc:
            detail = f"damaged TIFF data: the Deflate stream of strip or tile {k} fails zlib's check ({exc})"
            raise ImageDecodeError(path, Reason.DAMAGED, detail) from None


# Room a file may take beyond its pixels (metadata, thumbnails, the video of a
# motion photo), and the most bytes any accepted format spends per pixel (raw
# 16-bit RGBA): a bigger file than max_pixels can explain is refused unread.
_SLACK_BYTES = 256 << 20
_BYTES_PER_PIXEL = 8


def read_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytearray | bytes, ImageInfo]:
    """The whole file and its parsed header, checked before the bulk of it is read.

    In order: the open descriptor must be a regular file (a FIFO, socket or
    device is refused before a byte is read, so none can hang or stream
    forever); its size must fit ``max_pixels`` (see ``_BYTES_PER_PIXEL``); the
    header (a few KB, :func:`preload.headers.read_header`) must name a format
    and size preload can check, at most ``max_pixels`` pixels, and no variant
    OpenCV would decode wrongly. Only then is the rest read, into one buffer.

    Raises
    ------
    ImageDecodeError
        With the reason of the first check that fails.
    """
    handle, size = open_regular(path)
    with handle:
        limit = max_pixels * _BYTES_PER_PIXEL + _SLACK_BYTES
        if size > limit:
            detail = (f"the file is {size:,} bytes, more than any image of max_pixels={max_pixels:,} "
                      f"pixels needs ({limit:,} bytes); it was not read")
            raise ImageDecodeError(path, Reason.TOO_LARGE, detail)
        head, info = read_header(handle, path, size)
        check_header(path, info, max_pixels)
        if len(head) >= size:
            return head, info
        data = bytearray(size)
        data[: len(head)] = head
        view, done = memoryview(data), len(head)
        try:
            handle.seek(done)  # the header came through pread, which leaves the offset at 0
            while done < size:
                got = handle.readinto(view[done:])
                if not got:
                    break
                done += got
        except OSError as exc:
            raise open_error(path, exc) from exc
    del view  # a bytearray with a live view cannot be resized or sliced safely
    if done < size:  # the file shrank after fstat: check_end and the decoder judge what is left
        data = data[:done]
    check_end(data, info, path)  # the header parse read everything else it needed through pread
    return data, info


def check_header(path: str, info: ImageInfo, max_pixels: int) -> None:
    """Refuse what the header says OpenCV must not be handed (see :func:`read_file`)."""
    if info.unsupported:
        raise ImageDecodeError(path, Reason.UNSUPPORTED, info.unsupported)
    if info.format == "other":
        try:
            # OpenCV 5.1 crashes the process (SIGSEGV) on a name holding surrogate
            # escapes (bytes that are not UTF-8), so such a name is never handed to it.
            path.encode("utf-8")
            readable = cv2.haveImageReader(path)  # looks at the signature only
        except (cv2.error, UnicodeError):
            readable = False
        if readable:
            detail = "a format preload cannot read the size of before decoding (so max_pixels cannot be checked)"
            raise ImageDecodeError(path, Reason.UNSUPPORTED, detail)
        raise ImageDecodeError(path, Reason.NOT_AN_IMAGE, "not an image, or a format OpenCV cannot decode")
    pixels = (info.height or 0) * (info.width or 0)
    if pixels == 0:
        raise ImageDecodeError(path, Reason.CORRUPT, f"the header gives a size of {info.width}x{info.height}")
    if pixels > max_pixels:
        detail = (
            f"the header announces {info.width}x{info.height} = {pixels:,} pixels, "
            f"more than max_pixels={max_pixels:,}"
        )
        raise ImageDecodeError(path, Reason.TOO_LARGE, detail)


def _opencv_refused_size(text: str, info: ImageInfo) -> bool:
    """Whether a failed decode is OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS).

    OpenCV reads that variable once, at its first decode, so the limit in
    force may be the default 2**30 or whatever the environment said then.
    """
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return True
    try:
        limit = min(1 << 30, int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30)))
    except ValueError:
        limit = 1 << 30
    return (info.height or 0) * (info.width or 0) > limit


class Decoder:
    """Decode files into slots according to one :class:`DecodeOptions`.

    Thread-safe: per-thread scratch memory is kept in thread-local storage.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "red.png")
    >>> _ = cv2.imwrite(path, np.full((40, 60, 3), (0, 0, 255), np.uint8))  # BGR red
    >>> slot = np.empty((3, 20, 30), np.uint8)
    >>> Decoder(DecodeOptions.create(size=(20, 30), layout="NCHW")).decode_into(path, slot)
    >>> int(slot[0].min()), int(slot[2].max())
    (255, 0)
    """

    def __init__(self, options: DecodeOptions):
        self.options = options
        self._local = threading.local()

    # -- reading and decoding -------------------------------------------------

    def decode(self, path: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
        """Read and decode ``path``; returns the image and its channel order ("rgb"/"bgr"/"gray").

        ``size`` is the slot size the image is headed for (for the JPEG scale).

        Raises
        ------
        ImageDecodeError
            The file cannot be read or decoded; never a ``cv2.error``.
        """
        with _opencv_failures(path):
            image, order, _, _ = self._decode(path, size)
        return image, order

    def _decode(
        self, path: str, size: tuple[int, int] | None, slot: np.ndarray | None = None
    ) -> tuple[np.ndarray, str, ImageInfo, int]:
        """The image, its channel order, its header and the JPEG scale-down it was decoded at.

        The image is turned as the header's EXIF orientation says when
        ``exif`` is on, exactly once whichever decoder ran (see
        :meth:`_decode_opencv` and :meth:`_decode_jpeg`). A JPEG that needs no
        resize and no turn is decoded straight into ``slot`` when one is given
        and its layout allows it; the image returned is then a view of the slot.
        """
        data, info = read_file(path, self.options.max_pixels)
        options = self.options
        factor = 1
        if info.format == "jpeg":
            oriented = info.oriented_size(options.exif)
            if options.reduce and size is not None and oriented is not None:
                factor = reduction_for(*oriented, size, options.resize)
            image, why = None, ""
            if _turbo_decodes(info):
                image, why = self._decode_jpeg(data, path, info, factor, size, slot)
            elif _turbo_checks(info):
                # OpenCV makes the pixels (its own CMYK conversion); libjpeg's strict
                # reading at 1/8 scale, which entropy-decodes every block all the same, checks the data.
                _, why = _strictly(lambda d: simplejpeg.decode_jpeg(d, "CMYK", min_factor=8), data, path, info.jpeg)
            if image is None:
                image = self._decode_opencv(_repaired(data, info.jpeg), path, info, factor, why)
            order = options.color
        else:
            image, order = self._decode_opencv(data, path, info, 1), None
        expected = info.oriented_size(options.exif)
        expected = (-(-expected[0] // factor), -(-expected[1] // factor))
        if image.shape[:2] != expected:
            kind = info.format.upper()
            detail = (f"the {kind} decoder returned {image.shape[0]}x{image.shape[1]} pixels but the header "
                      f"says {expected[0]}x{expected[1]}")
            raise ImageDecodeError(path, Reason.CORRUPT, detail)
        if order is None:
            image, order = _to_8bit(image, path)
        return image, order, info, factor

    def _decode_opencv(self, data: bytes, path: str, info: ImageInfo, factor: int, why: str = "") -> np.ndarray:
        """Decode with ``cv2.imdecode``: every format but the common JPEGs (see :func:`_turbo_decodes`).

        ``why`` is simplejpeg's complaint when this is its fallback, named
        in the error if OpenCV cannot decode the file either.

        libjpeg and libtiff report damaged data they decode anyway only by
        printing a warning, so JPEGs (rare here: CMYK, 12-bit, lossless,
        arithmetic-coded, header quirks) and TIFFs are decoded one at a time
        under :func:`preload.quiet.stderr_lines`, and a warning about the data
        makes the file a ``damaged`` failure. A JPEG arrives here
        :func:`_repaired`, so what libjpeg prints is not a header quirk it
        repairs exactly. Deflate TIFF strips are checked with zlib first.
        """
        options = self.options
        # Orientation is applied below from the header's reading of it, the same
        # for every format, so exif=True and False differ exactly when the file says so.
        flags = cv2.IMREAD_IGNORE_ORIENTATION
        if info.format == "jpeg":
            flags |= _COLOR_FLAG[options.color] | _REDUCED_FLAG[factor]
        else:
            # Keep 16 bits and the native channel count: OpenCV's own 16->8 bit
            # conversion rounds, while preload promises value >> 8.
            flags |= cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
        kind = "image" if info.format == "other" else info.format.upper()
        if info.zlib_chunks:
            _check_zlib(data, info, path)
        lines: list[str] = []
        try:
            if info.format in ("jpeg", "tiff"):
                with stderr_lines() as lines:
                    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            else:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error as exc:
            _raise_if_out_of_memory(path, exc)
            if _opencv_refused_size(str(exc), info):
                raise ImageDecodeError(path, Reason.TOO_LARGE, _OPENCV_LIMIT) from None
            detail = f"the {kind} decoder failed: {opencv_reason(exc)}" + (f" (simplejpeg: {why})" if why else "")
            raise ImageDecodeError(path, Reason.CORRUPT, detail) from None
        if info.format == "jpeg":
            damage = next((line for line in lines if _DAMAGE.search(line)), None)
        else:
            damage = _tiff_damage(lines) if info.format == "tiff" else None
        if image is None or image.size == 0:
            if _opencv_refused_size("", info):
                raise ImageDecodeError(path, Reason.TOO_LARGE, _OPENCV_LIMIT)
            said = f"; simplejpeg: {why}" if why else f"; it reports {damage!r}" if damage else ""
            raise ImageDecodeError(path, Reason.CORRUPT, f"corrupt {kind} data (the decoder gave up{said})")
        if damage is not None and info.format == "jpeg":
            raise _damaged_jpeg(path, damage)
        if damage is not None:
            detail = f"damaged TIFF data: libtiff reports {damage!r} (its pixels would be partly made up)"
            raise ImageDecodeError(path, Reason.DAMAGED, detail)
        if info.format == "tiff":
            if not options.exif and info.orientation != 1:
                image = _undo_orientation(image, info.orientation)  # OpenCV's TIFF reader always applies it
        elif options.exif and info.orientation != 1:
            image = _apply_orientation(image, info.orientation)
        return image

    def _decode_jpeg(
        self,
        data: bytes,
        path: str,
        info: ImageInfo,
        factor: int,
        size: tuple[int, int] | None,
        slot: np.ndarray | None,
    ) -> tuple[np.ndarray | None, str]:
        """Decode a JPEG with libjpeg-turbo through simplejpeg, refusing damaged data.

        libjpeg "recovers" from damaged entropy-coded data (bytes zeroed or
        overwritten mid-scan, a file cut short with an end marker appended)
        by painting the rest of the scan gray, and only prints a warning.
        simplejpeg's ``strict`` mode turns every warning into an error, which
        :func:`_strictly` sorts: damaged pixels are a failure (reason
        ``damaged``); the header quirks libjpeg repairs exactly (stray bytes
        between segments, an unknown JFIF version, ...) are repaired and the
        image decoded strictly again; other header quirks and what simplejpeg
        cannot do go to OpenCV (returns None and simplejpeg's complaint: the
        caller decodes with OpenCV). The image is turned as the EXIF
        orientation says (with ``exif``), so it never goes straight into the
        slot when it must turn.
        """
        options = self.options
        height, width = info.height, info.width
        if factor > 1:
            height, width = -(-height // factor), -(-width // factor)
        orientation = info.orientation if options.exif else 1
        buffer = None
        if (slot is not None and factor == 1 and orientation == 1 and size == (height, width)
                and plan_geometry(height, width, size, options.resize).src_size == (height, width)):
            if options.layout == "NHWC" and slot.flags.c_contiguous and slot.shape == (height, width, options.channels):
                buffer = slot
        if buffer is None and slot is not None and factor == 1:
            # Headed for a resize into the slot: decode into this thread's reused
            # buffer. Where glibc's adaptive mmap threshold is off (Dask starts its
            # workers with MALLOC_TRIM_THRESHOLD_ set), a fresh array per image is
            # a fresh mmap whose pages fault in again for every image.
            buffer = self._scratch((height, width, options.channels), "decoded")
        colorspace = _TURBO_COLOR[options.color]
        least = (height, width) if factor > 1 else (0, 0)

        def decode(data: bytes) -> np.ndarray:
            return simplejpeg.decode_jpeg(
                data, colorspace, min_height=least[0], min_width=least[1], buffer=buffer, strict=True
            )

        image, why = _strictly(decode, data, path, info.jpeg)
        if image is None:
            return None, why
        if options.color == "gray":
            image = image.reshape(image.shape[:2])
        if orientation != 1:
            image = _apply_orientation(image, orientation)
        return image, ""

    # -- writing into a slot --------------------------------------------------

    def decode_into(self, path: str, slot: np.ndarray) -> None:
        """Decode ``path`` and write it into ``slot`` (one row of the target).

        Every caller (the fill engine, a cluster task, the report's naive
        loops, :class:`preload.ImageFiles`) gets the same failure for the same
        file: whatever goes wrong is an :class:`ImageDecodeError`, an OpenCV
        error in the resize or colour conversion included
        (``Reason.CORRUPT``, "OpenCV failed: <its reason>").

        Raises
        ------
        ImageDecodeError
            The file cannot be read, decoded or fitted into ``slot``.
        """
        with _opencv_failures(path):
            self._decode_into(path, slot)

    def _decode_into(self, path: str, slot: np.ndarray) -> None:
        options = self.options
        size = options.size or _slot_size(slot, options.layout)
        image, order, info, factor = self._decode(path, size, slot)
        if image.base is not None and np.shares_memory(image, slot):
            return  # decoded straight into the slot
        height, width = image.shape[:2]
        if options.size is None and (height, width) != size:
            detail = f"it is {height}x{width} but the other images are {size[0]}x{size[1]} (size=None keeps sizes)"
            raise ImageDecodeError(path, Reason.WRONG_SIZE, detail)
        full = info.oriented_size(options.exif)
        if factor > 1 and full is not None and (height, width) == (-(-full[0] // factor), -(-full[1] // factor)):
            # Plan on the full-size image and scale only the crop, so the output
            # geometry (letterbox, crop) does not depend on the decode scale.
            geometry = plan_geometry(*full, size, options.resize).reduced(factor, (height, width))
        else:
            geometry = plan_geometry(height, width, size, options.resize)
        self.write(image, order, geometry, slot)

    def write(self, image: np.ndarray, order: str, geometry: Geometry, slot: np.ndarray) -> None:
        """Resize the crop of ``image`` into the slot and convert its channels on the way."""
        options = self.options
        if geometry.dst_size != _slot_size(slot, options.layout):
            _fill_margins(slot, geometry, options)
        y0, y1, x0, x1 = geometry.src
        crop = image[y0:y1, x0:x1]
        if order == options.color and options.layout == "NHWC":
            self._resize(crop, geometry, _dst_view(slot, geometry))
            return
        resized = crop if geometry.src_size == geometry.dst_size else self._resize(crop, geometry, None)
        planes = _planes(slot, geometry, options.layout)  # one 2-D view per output channel
        if order == options.color:  # NCHW, channels already right
            _split_into(resized, planes)
        elif order == "gray" and options.layout == "NCHW":  # one plane to three channels
            for plane in planes:
                np.copyto(plane, resized)
        elif options.color == "gray":  # bgr source, gray output
            _into(planes[0], cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY, dst=planes[0]))
        elif options.layout == "NCHW":  # bgr source, rgb output: swap planes for free
            _split_into(resized, planes[::-1])
        else:  # NHWC: gray -> rgb/bgr, or bgr -> rgb, converted straight into the slot
            view = _dst_view(slot, geometry)
            _into(view, cv2.cvtColor(resized, _CONVERT[(order, options.color)], dst=view))

    def _resize(self, crop: np.ndarray, geometry: Geometry, dst: np.ndarray | None) -> np.ndarray:
        """Resize ``crop`` to the destination size, into ``dst`` or a reused scratch image."""
        dh, dw = geometry.dst_size
        if dst is None:
            dst = self._scratch((dh, dw) + crop.shape[2:], "out")
        if geometry.src_size == geometry.dst_size:
            np.copyto(dst, crop.reshape(dst.shape))
            return dst
        interpolation = self.options.interpolation
        if interpolation is None and geometry.shrinks:
            self._shrink(crop, (dh, dw), dst.reshape((dh, dw) + crop.shape[2:]))
            return dst
        if interpolation is None:  # enlarging both axes
            interpolation = cv2.INTER_LINEAR
        result = cv2.resize(crop, (dw, dh), dst=dst.reshape((dh, dw) + crop.shape[2:]), interpolation=interpolation)
        _into(dst, result)
        return dst

    def _shrink(self, src: np.ndarray, size: tuple[int, int], dst: np.ndarray) -> None:
        """The default antialiased shrink (``interpolation="auto"``, described in :mod:`preload.options`).

        OpenCV runs INTER_AREA on a vectorised fast path only for an exact 2:1
        ratio on both axes (a 2x2 box average); every other ratio takes a
        generic path 5-20x slower per value. So: linear to 2**n x the output
        (n chosen so the linear step never shrinks by more than 1.75x), then
        n exact 2:1 area halvings (tests/test_decode.py checks the result
        against INTER_AREA).
        """
        dh, dw = size
        scale = max(src.shape[0] / dh, src.shape[1] / dw)
        halvings = 1
        while scale / (1 << halvings) > 1.75:
            halvings += 1
        extra = src.shape[2:]
        current = self._scratch((dh << halvings, dw << halvings) + extra, "shrink0")
        _linear(src, current)
        for level in reversed(range(halvings)):
            target = dst if level == 0 else self._scratch((dh << level, dw << level) + extra, f"shrink{level % 2 + 1}")
            _into(target, cv2.resize(current, (dw << level, dh << level), dst=target, interpolation=cv2.INTER_AREA))
            current = target

    def _scratch(self, shape: tuple[int, ...], key: str) -> np.ndarray:
        """A per-thread buffer per ``key``, grown only when a larger shape is asked for."""
        need = math.prod(shape)
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        buffer = buffers.get(key)
        if buffer is None or buffer.size < need:
            buffer = buffers[key] = np.empty(need, np.uint8)
        return buffer[:need].reshape(shape)


@contextmanager
def _opencv_failures(path: str) -> Iterator[None]:
    """An OpenCV error past the decode step (resize, colour conversion refused the data) as a failure of ``path``."""
    try:
        yield
    except cv2.error as exc:
        _raise_if_out_of_memory(path, exc)
        detail = f"OpenCV failed: {opencv_reason(exc)}"
        raise ImageDecodeError(path, Reason.CORRUPT, detail) from None
    except InsufficientMemoryError:
        raise
    except MemoryError:
        _raise_if_out_of_memory(path, None)


def _raise_if_out_of_memory(path: str, exc: cv2.error | None) -> None:
    """Raise :class:`InsufficientMemoryError` when a decode ran out of memory.

    Running out of memory is the machine's state, not the file's fault: it
    must stop the load (a cache build stays resumable) rather than become a
    per-file failure that ``on_error="skip"`` would drop and a cache would
    then remember as permanent. ``exc`` is OpenCV's error, or None for
    Python's own ``MemoryError``.
    """
    if exc is not None and exc.code != cv2.Error.StsNoMem:
        return
    why = f": {opencv_reason(exc)}" if exc is not None else ""
    message = (f"ran out of memory while decoding '{path}'{why}; free memory, raise the process's limit "
               "or use fewer workers, then run again (a cache build resumes where it stopped)")
    raise InsufficientMemoryError(message) from None


def _linear_warp(src: np.ndarray, dst: np.ndarray) -> None:
    """Bilinear resize of ``src`` onto ``dst`` through ``cv2.warpAffine``.

    The inverse map is ``cv2.resize``'s pixel-centre mapping (``x_src =
    (x_dst + 0.5) * scale - 0.5``) and the border is replicated, so the
    result is INTER_LINEAR's within 1 level of rounding; on OpenCV 5.1
    warpAffine's kernel is the faster one (measured in bench/filters.py).
    """
    sy, sx = src.shape[0] / dst.shape[0], src.shape[1] / dst.shape[1]
    inverse = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (dst.shape[1], dst.shape[0])
    _into(dst, cv2.warpAffine(src, inverse, size, dst=dst, flags=flags, borderMode=cv2.BORDER_REPLICATE))


def _linear_resize(src: np.ndarray, dst: np.ndarray) -> None:
    _into(dst, cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_LINEAR))


# warpAffine's bilinear kernel beats resize's from OpenCV 5.1 on (0.80 ms on
# 4.x, 1.55 ms on 5.0 per 512x512 step against resize's 0.43, issue 12).
_linear = _linear_warp if tuple(int(p) for p in cv2.__version__.split(".")[:2]) >= (5, 1) else _linear_resize


def _slot_size(slot: np.ndarray, layout: str) -> tuple[int, int]:
    return tuple(slot.shape[1:3]) if layout == "NCHW" else tuple(slot.shape[0:2])


def _dst_view(slot: np.ndarray, geometry: Geometry) -> np.ndarray:
    """NHWC destination rectangle; 2-D for one channel so OpenCV sees a matching shape."""
    y0, y1, x0, x1 = geometry.dst
    view = slot[y0:y1, x0:x1]
    return view[:, :, 0] if view.shape[2] == 1 else view


def _planes(slot: np.ndarray, geometry: Geometry, layout: str) -> list[np.ndarray]:
    y0, y1, x0, x1 = geometry.dst
    if layout == "NCHW":
        return [slot[c, y0:y1, x0:x1] for c in range(slot.shape[0])]
    return [slot[y0:y1, x0:x1, c] for c in range(slot.shape[2])]


def _fill_margins(slot: np.ndarray, geometry: Geometry, options: DecodeOptions) -> None:
    """Paint the letterbox ``fill`` colour around the image rectangle (not under it)."""
    height, width = _slot_size(slot, options.layout)
    y0, y1, x0, x1 = geometry.dst
    bands = [(slice(0, y0), slice(None)), (slice(y1, height), slice(None)),
             (slice(y0, y1), slice(0, x0)), (slice(y0, y1), slice(x1, width))]
    for c, value in enumerate(options.fill):
        plane = slot[c] if options.layout == "NCHW" else slot[:, :, c]
        for rows, cols in bands:
            plane[rows, cols] = value


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels upright as EXIF ``orientation`` (2..8) says."""
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return _undo_orientation(image, orientation)  # the other turns are their own inverse


def _undo_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Back to the stored pixel order from the EXIF ``orientation`` OpenCV applied."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    return image


def _into(dst: np.ndarray, result: np.ndarray) -> None:
    """Copy OpenCV's result into ``dst`` unless OpenCV already wrote it there."""
    if result is dst or (result.shape == dst.shape and result.ctypes.data == dst.ctypes.data):
        return
    np.copyto(dst, result.reshape(dst.shape))


def _split_into(image: np.ndarray, planes: list[np.ndarray]) -> None:
    """HWC image -> one plane per channel, written by cv2.split in place when it can."""
    if image.ndim == 2:
        _into(planes[0], image)
        return
    result = cv2.split(image, planes)
    for plane, part in zip(planes, result, strict=True):
        _into(plane, part)


def _to_8bit(image: np.ndarray, path: str) -> tuple[np.ndarray, str]:
    """16-bit -> 8-bit by ``>> 8`` (never clipped); name the channel order OpenCV gave."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        detail = f"pixel type {image.dtype} is not supported (only 8- and 16-bit integer images)"
        raise ImageDecodeError(path, Reason.NOT_AN_IMAGE, detail)
    if image.ndim == 2 or image.shape[2] == 1:
        return image.reshape(image.shape[:2]), "gray"
    return image[:, :, :3], "bgr"


def opencv_reason(exc: cv2.error) -> str:
    """The one meaningful line of an OpenCV error, without its source-file prefix."""
    text = str(exc).strip().splitlines()
    for line in text:
        if line.startswith(">"):
            return line.lstrip("> ").strip()
    last = text[-1] if text else "unknown error"
    return last.split("error:", 1)[-1].strip()

