"""Read an image's format, stored size and EXIF orientation from its first bytes.

preload looks at the header before it lets OpenCV decode anything, for four
reasons: to refuse a decompression bomb before a gigantic buffer is allocated,
to pick a reduced JPEG decode scale, to recognise a truncated file that
OpenCV would otherwise decode silently (a JPEG without its end-of-image marker,
a PNG without its IEND chunk), and to refuse the variants OpenCV decodes into
wrong pixels without a word (``unsupported``).

Formats parsed: JPEG, PNG, BMP, WebP, TIFF and BigTIFF, PNM and PAM, GIF,
JPEG 2000 (JP2 and raw codestreams), Sun raster and AVIF. The EXIF orientation is
read from JPEG (the first APP1 ``Exif``), PNG (eXIf before IDAT), WebP (EXIF)
and TIFF (tag 274 of the first directory). Every other signature is
``format="other"`` with no size; the decoder refuses those without decoding
them, since their pixel count cannot be checked first.

Variants refused as unsupported (each checked against OpenCV 5.1, whose
output differs from the file's pixels):

* BMP: OS/2 palette images (3-byte palette entries), a palette that runs
  into the pixel data, bit-field masks other than the standard ones, and
  embedded JPEG/PNG.
* TIFF: 16-bit planar (separate colour planes), unassociated alpha (OpenCV
  premultiplies the colours), 2-15 bit samples other than palette indices,
  floating-point or signed samples.
* PNM/PAM: a maximum value other than 1, 255 or 65535 (OpenCV does not rescale).
* AVIF with a rotation or mirror property (not checked against OpenCV: no
  writer at hand makes one).

For a JPEG the header also gives the decoder its frame (:class:`JpegFrame`:
coding process, precision, components), the stray bytes between segments
that libjpeg skips, and the header bytes libjpeg warns about and then
reads as another value; the decoder repairs both before its strict decode.
The marker scan is as lenient as libjpeg's: it skips what libjpeg skips, up
to 64 MB. For a Deflate TIFF it gives where each strip's zlib stream is, for
the decoder's checksum test. TIFF tags are read as libtiff reads them: one
value of any integer type, signed or not, for a single-valued tag.

Only the bytes a header needs are read: a parser asks for byte ranges, which
come from the bytes already read or, for an open file, from ``os.pread``, so
a TIFF directory at the end of a 2 GB file costs two small reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from . import sources
from .errors import ImageDecodeError, Reason, open_error

HEADER_BYTES = 1 << 16  # enough for the headers of nearly every file; more is read only when needed
_MAX_JPEG_HEADER = 64 << 20  # libjpeg skips junk between markers; give up after this much
_MAX_JPEG_SEGMENTS = 1 << 16  # real headers have a few dozen
_MAX_CHUNKS = 1000  # PNG/WebP chunks walked in search of EXIF before giving up on it


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. ``height``/``width`` are as stored (before EXIF rotation).

    ``unsupported`` is why OpenCV would decode this variant wrongly, or None.
    """

    format: str  # "jpeg", "png", "bmp", "webp", "tiff", "pnm", "gif", "jp2", "sun", "avif" or "other"
    height: int | None
    width: int | None
    orientation: int = 1  # EXIF orientation 1..8; 5..8 swap height and width
    unsupported: str | None = None
    body: int = 0  # where the image data starts (JPEG: the first scan), for the truncation check
    jpeg: JpegFrame | None = None  # JPEG only: the frame header and the junk libjpeg skips
    zlib_chunks: tuple[tuple[int, int], ...] = ()  # Deflate TIFF: (offset, length) of each strip's zlib stream

    def oriented_size(self, exif: bool) -> tuple[int, int] | None:
        """(height, width) as the decoder will return it, or None if unknown."""
        if self.height is None or self.width is None:
            return None
        if exif and self.orientation >= 5:
            return self.width, self.height
        return self.height, self.width


@dataclass(frozen=True)
class JpegFrame:
    """What the decoder needs to know of a JPEG's frame header (its SOFn segment).

    ``junk`` lists the stray bytes between header segments that libjpeg
    skips with the warning "N extraneous bytes before marker 0xMM": each
    entry is ``(start, stop, count, marker)``, ``data[start:stop]`` being the
    bytes to drop and ``count`` the number libjpeg reports. ``patches``
    lists ``(offset, value)``: header bytes libjpeg warns about and then
    reads as ``value`` anyway, so writing ``value`` there changes no pixel.
    They are the major version of a JFIF segment ("unknown JFIF revision
    number 3.01": libjpeg knows 1, and the version decides nothing else) and
    the colour transform of an Adobe segment ("Unknown Adobe color transform
    code 5": libjpeg then assumes YCbCr for 3 components, YCCK for 4), and
    the spectral selection of a sequential JPEG's first scan ("Invalid SOS
    parameters for sequential JPEG": a sequential scan holds all 64).
    """

    sof: int  # the SOFn marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, others rarer
    precision: int  # bits per sample
    components: int  # 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
    junk: tuple[tuple[int, int, int, int], ...] = ()
    patches: tuple[tuple[int, int], ...] = ()


# Sequential DCT coding (Huffman, extended, arithmetic): a scan's spectral selection must be 0..63, no approximation.
_SEQUENTIAL = (0xC0, 0xC1, 0xC9)
# Adobe transform codes libjpeg accepts without a warning, and the one it assumes otherwise, by component count.
_ADOBE_TRANSFORMS = {3: ((0, 1), 1), 4: ((0, 2), 2)}


class _NeedMore(Exception):
    """The header continues past the bytes given, and there is no file to read on from."""


class _Source:
    """Byte ranges of one file: from ``data`` when they are in it, else from ``read_at``."""

    def __init__(self, data, complete: bool, read_at: Callable[[int, int], bytes] | None, size: int | None):
        self.data = data
        self.complete = complete
        self.read_at = read_at
        self.size = len(data) if complete or size is None else size

    def some(self, at: int, count: int) -> bytes:
        """At least 2 and up to ``count`` bytes at ``at``, from what was read when it holds them."""
        if at + 2 <= len(self.data):
            return bytes(self.data[at : at + count])
        return self.get(at, count)

    def get(self, at: int, count: int) -> bytes:
        """Up to ``count`` bytes at offset ``at`` (fewer only at the end of the file)."""
        if at < 0 or count <= 0:
            return b""
        if at + count <= len(self.data) or self.complete:
            return bytes(self.data[at : at + count])
        if self.read_at is None:
            raise _NeedMore
        return self.read_at(at, min(count, max(0, self.size - at)))


def parse(data, path: str, *, complete: bool, read_at=None, size: int | None = None) -> ImageInfo:
    """Parse the header at the start of ``data`` (bytes-like).

    With ``complete=True`` ``data`` is the whole file, and a file that ends
    before the image does is reported as truncated. Otherwise ``read_at(offset,
    count)`` returns bytes beyond ``data`` (``size`` is the file's size).

    Raises
    ------
    ImageDecodeError
        ``EMPTY`` for zero bytes, ``TRUNCATED`` for a cut-off file,
        ``CORRUPT`` for a header that contradicts itself.

    Examples
    --------
    >>> info = parse(b"GIF89a\\x40\\x01\\xf0\\x00" + bytes(8), "a.gif", complete=True)
    >>> info.format, info.height, info.width
    ('gif', 240, 320)
    """
    if len(data) == 0:
        raise ImageDecodeError(path, Reason.EMPTY, "the file is empty (0 bytes)")
    src = _Source(data, complete, read_at, size)
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8"):
        return _jpeg(src, path)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(src, path)
    if head.startswith(b"BM"):
        return _bmp(src, path)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(src, path)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff(src, path)
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"1234567":
        return _pnm(src, path)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(src, path)
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return _jp2(src, path)
    if head.startswith(b"\x59\xa6\x6a\x95"):
        return _sun(src, path)
    if head[4:8] == b"ftyp" and _is_avif(src):
        return _avif(src, path)
    if head[:2] in (b"PF", b"Pf") or head.startswith(b"#?") or head.startswith(b"v/1\x01"):
        # PFM, Radiance HDR, OpenEXR: float images, which preload does not turn into uint8
        return ImageInfo("other", None, None, unsupported="a floating-point image format (PFM, HDR or EXR)")
    return ImageInfo("other", None, None)


def _truncated(path: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(path, Reason.TRUNCATED, what)


def _corrupt(path: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(path, Reason.CORRUPT, what)


def _u16(data, at: int, big: bool = True) -> int:
    return int.from_bytes(data[at : at + 2], "big" if big else "little")


def _u32(data, at: int, big: bool = True) -> int:
    return int.from_bytes(data[at : at + 4], "big" if big else "little")


# ---------------------------------------------------------------------- JPEG

# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_FF_RUN = re.compile(rb"\xff+")


def _next_marker(src: _Source, pos: int, path: str, junk: list | None = None) -> tuple[int, int]:
    """(position, marker) of the next marker at or after ``pos``, skipping what libjpeg skips.

    libjpeg's next_marker() passes over any bytes that are not 0xFF (it warns
    "N extraneous bytes before marker"), over fill 0xFF bytes and over stuffed
    FF00 pairs; files from broken writers (a segment length one byte short,
    junk between segments) decode fine in it, so they must pass here too.
    Skipped bytes other than the fill before the marker are appended to
    ``junk`` as ``(start, stop, count, marker)`` (see :class:`JpegFrame`).
    """
    data = src.data
    if pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF):
        return pos, data[pos + 1]  # the usual case: the next marker right where the last segment ended
    start, step = pos, 64  # look at a few bytes, more while skipping junk
    while True:
        block = src.some(pos, step)
        step = min(step * 4, 1 << 16)
        if len(block) < 2:
            raise _truncated(path, "truncated JPEG (the file ends inside its header)")
        k = block.find(b"\xff")
        while 0 <= k < len(block) - 1:
            following = block[k + 1]
            if following == 0xFF:  # fill byte
                k += 1
            elif following == 0x00:  # stuffed zero: not a marker
                k = block.find(b"\xff", k + 2)
            else:
                if junk is not None and pos + k > start:
                    _record_junk(src, start, pos + k, following, junk)
                return pos + k, following
        pos += len(block) if k < 0 else k  # a trailing 0xFF is looked at again with what follows
        if pos - start > _MAX_JPEG_HEADER:
            detail = f"corrupt JPEG header (no marker in the {_MAX_JPEG_HEADER >> 20} MB after byte {start})"
            raise _corrupt(path, detail)


def _record_junk(src: _Source, start: int, at: int, marker: int, junk: list) -> None:
    """Note the bytes skipped between ``start`` and the marker at ``at`` as libjpeg counts them.

    libjpeg counts each non-0xFF byte and each stuffed ``FF..FF 00`` sequence
    as 2, but not the fill 0xFFs right before the marker; so the count is
    the non-0xFF bytes plus the runs of 0xFF before the fill. Rare (broken
    writers only), so the skipped range is simply read again.
    """
    skipped = src.get(start, at - start).rstrip(b"\xff")
    if skipped:
        runs = len(_FF_RUN.findall(skipped))  # each one ends in a stuffed 00, counted with the non-FF bytes
        count = len(skipped) - skipped.count(b"\xff") + runs
        junk.append((start, start + len(skipped), count, marker))


def _jpeg(src: _Source, path: str) -> ImageInfo:
    pos = 2
    height = width = None
    frame = None
    orientation = None
    junk: list[tuple[int, int, int, int]] = []
    patches: list[tuple[int, int]] = []
    adobe: list[tuple[int, int]] = []  # (offset, value) of each Adobe segment's transform code
    segments = 0
    while True:
        segments += 1
        if segments > _MAX_JPEG_SEGMENTS or pos > _MAX_JPEG_HEADER:
            # A crafted file of tiny segments would otherwise cost a read per segment for gigabytes.
            raise _corrupt(path, f"corrupt JPEG header (no scan within {segments - 1} segments, byte {pos})")
        pos, marker = _next_marker(src, pos, path, junk)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker == 0xD8:
            raise _corrupt(path, "corrupt JPEG header (a second start-of-image marker)")
        if marker == 0xD9:
            raise _corrupt(path, "corrupt JPEG (end-of-image marker before any scan)")
        if marker == 0xDA:  # start of scan: the header is over
            if frame is not None and frame[0] in _SEQUENTIAL:
                patches += _sequential_scan(src, pos)
            break
        segment = src.get(pos + 2, 2)
        if len(segment) < 2:
            raise _truncated(path, "truncated JPEG (the file ends inside its header)")
        length = _u16(segment, 0)
        end = pos + 2 + length
        if marker in _SOF and length >= 7:
            fields = src.get(pos + 4, 6)  # precision, height, width, components
            if len(fields) < 5:
                raise _truncated(path, "truncated JPEG (the file ends inside its header)")
            if height is None:  # libjpeg refuses a second frame header; the first one counts
                height, width = _u16(fields, 1), _u16(fields, 3)
                components = fields[5] if length >= 8 and len(fields) >= 6 else 0  # 0: unknown, OpenCV's
                frame = (marker, fields[0], components)
        elif marker == 0xE1 and orientation is None and length >= 8:
            if src.get(pos + 4, 6) == b"Exif\x00\x00":
                orientation = _exif_orientation(src.get(pos + 10, length - 8))
        elif marker in (0xE0, 0xEE) and length >= 14:  # libjpeg reads 14 (APP0) or 12 (APP14) bytes of these
            identifier = src.get(pos + 4, 12)
            if marker == 0xE0 and length >= 16 and identifier[:5] == b"JFIF\x00" and identifier[5:6] != b"\x01":
                patches.append((pos + 9, 1))
            elif marker == 0xEE and identifier[:5] == b"Adobe" and len(identifier) == 12:
                adobe.append((pos + 15, identifier[11]))
        pos = end
    if height is None:
        raise _corrupt(path, "corrupt JPEG (no frame header before the scan)")
    quiet, assumed = _ADOBE_TRANSFORMS.get(frame[2], ((), 0))
    patches += [(at, assumed) for at, value in adobe if quiet and value not in quiet]
    info = ImageInfo("jpeg", height or None, width or None, orientation or 1, body=pos,
                     jpeg=JpegFrame(*frame, tuple(junk), tuple(patches)))
    if src.complete:
        check_end(src.data, info, path)
    return info


def _sequential_scan(src: _Source, pos: int) -> list[tuple[int, int]]:
    """Patches for the first scan header (SOS at ``pos``) of a sequential JPEG.

    libjpeg warns "Invalid SOS parameters for sequential JPEG" when the
    spectral selection is not 0..63 or an approximation is set, then ignores
    them: a sequential scan holds every coefficient whatever they say.
    """
    head = src.get(pos + 4, 1)
    if len(head) < 1:
        return []
    at = pos + 5 + 2 * head[0]
    fields = src.get(at, 3)
    if len(fields) < 3 or tuple(fields) == (0, 63, 0):
        return []
    return [(at, 0), (at + 1, 63), (at + 2, 0)]


def check_end(data, info: ImageInfo, path: str) -> None:
    """Refuse a whole file (``data``) that ends before its image does: JPEG without EOI, PNG without IEND.

    Raises
    ------
    ImageDecodeError
        ``TRUNCATED``.
    """
    # Entropy-coded data escapes every 0xFF, so an FFD9 after the first scan can
    # only be the end-of-image marker; its absence means the file was cut short.
    # (An FFD9 before the scan can be an EXIF thumbnail's.)
    if info.format == "jpeg" and data.rfind(b"\xff\xd9", info.body) < 0:
        raise _truncated(path, "truncated JPEG (no end-of-image marker)")
    if info.format == "png" and data.rfind(b"IEND", 33) < 0:
        raise _truncated(path, "truncated PNG (no IEND chunk)")


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 if absent or malformed.

    The block may start with the ``Exif\\0\\0`` of a JPEG APP1 segment: some
    writers keep it in PNG eXIf and WebP EXIF chunks too.
    """
    if tiff.startswith(b"Exif\x00\x00"):
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    big = tiff[:2] == b"MM"
    ifd = _u32(tiff, 4, big)
    if ifd + 2 > len(tiff):
        return 1
    count = _u16(tiff, ifd, big)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        if _u16(tiff, entry, big) == 0x0112:
            kind = _u16(tiff, entry + 2, big)  # SHORT as the standard says; some writers use LONG
            value = _u32(tiff, entry + 8, big) if kind == 4 else _u16(tiff, entry + 8, big)
            return value if 1 <= value <= 8 else 1
    return 1


# ----------------------------------------------------------------------- PNG


def _png(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 33)
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise _truncated(path, "truncated PNG (the file ends inside its header)")
    width, height = _u32(head, 16), _u32(head, 20)
    if src.complete:
        check_end(src.data, ImageInfo("png", height, width), path)
    # An eXIf chunk (orientation) must come before the first IDAT.
    orientation, pos = 1, 8
    for _ in range(_MAX_CHUNKS):
        chunk = src.get(pos, 8)
        if len(chunk) < 8:
            break
        length, kind = _u32(chunk, 0), chunk[4:8]
        if kind in (b"IDAT", b"IEND") or not kind.isalpha():  # not a chunk: the decoder will say so
            break
        if kind == b"eXIf":
            orientation = _exif_orientation(src.get(pos + 8, min(length, 1 << 20)))
            break
        pos += 12 + length
    return ImageInfo("png", height, width, orientation)


# ----------------------------------------------------------------------- BMP

_BMP_MASKS = {
    16: {(0x7C00, 0x03E0, 0x001F), (0xF800, 0x07E0, 0x001F)},
    32: {(0xFF0000, 0x00FF00, 0x0000FF)},
}


def _bmp(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 70)
    if len(head) < 26:
        raise _truncated(path, "truncated BMP (the file ends inside its header)")
    offset, header = _u32(head, 10, big=False), _u32(head, 14, big=False)
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes, 3-byte palette entries
        width, height = _u16(head, 18, big=False), _u16(head, 20, big=False)
        bits = _u16(head, 24, big=False)
        unsupported = "an OS/2 palette BMP (OpenCV reads its 3-byte palette entries wrongly)" if bits <= 8 else None
        return ImageInfo("bmp", height, width, unsupported=unsupported)
    width = abs(int.from_bytes(head[18:22], "little", signed=True))
    height = abs(int.from_bytes(head[22:26], "little", signed=True))
    bits, compression = _u16(head, 28, big=False), _u32(head, 30, big=False)
    used = _u32(head, 46, big=False)
    unsupported = None
    if bits <= 8:
        entries = used if 0 < used <= (1 << bits) else 1 << bits
        if offset < 14 + header + 4 * entries:
            unsupported = (f"a palette BMP whose pixel data (at byte {offset}) starts inside its "
                           f"{entries}-colour palette (OpenCV reads it wrongly)")
    elif compression in (3, 6):  # BI_BITFIELDS, BI_ALPHABITFIELDS: channel masks
        masks = src.get(54, 12)
        triple = tuple(_u32(masks, k, big=False) for k in (0, 4, 8))
        if triple not in _BMP_MASKS.get(bits, set()):
            shown = ", ".join(f"{m:#x}" for m in triple)
            unsupported = f"a {bits}-bit BMP with channel masks {shown} (OpenCV ignores the masks)"
    if compression in (4, 5):
        unsupported = "a BMP holding a JPEG or PNG stream"
    return ImageInfo("bmp", height, width, unsupported=unsupported)


# ---------------------------------------------------------------------- WebP


def _webp(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 30)
    if len(head) < 30:
        raise _truncated(path, "truncated WebP (the file ends inside its header)")
    chunk = head[12:16]
    orientation = 1
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
        if head[20] & 0x08:  # the EXIF flag: its chunk usually follows the image data
            orientation = _webp_orientation(src)
    elif chunk == b"VP8L":
        bits = _u32(head, 21, big=False)
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 ":
        width = _u16(head, 26, big=False) & 0x3FFF
        height = _u16(head, 28, big=False) & 0x3FFF
    else:
        return ImageInfo("webp", None, None, unsupported=f"a WebP file with an unknown first chunk {chunk!r}")
    return ImageInfo("webp", height, width, orientation)


def _webp_orientation(src: _Source) -> int:
    pos = 12
    for _ in range(_MAX_CHUNKS):
        chunk = src.get(pos, 8)
        if len(chunk) < 8 or not chunk[:4].isascii():
            return 1
        kind, length = chunk[:4], _u32(chunk, 4, big=False)
        if kind == b"EXIF":
            return _exif_orientation(src.get(pos + 8, min(length, 1 << 20)))
        pos += 8 + length + (length & 1)
    return 1


# ---------------------------------------------------------------------- TIFF

# The field types libtiff reads an integer tag from, as (bytes, signed), checked
# against OpenCV 5.1's libtiff 4.7: BYTE, SHORT, LONG, LONG8 and their signed
# twins (a negative value leaves the tag unset, as does any other type).
_TIFF_INTEGERS = {1: (1, False), 3: (2, False), 4: (4, False), 16: (8, False),
                  6: (1, True), 8: (2, True), 9: (4, True), 17: (8, True)}
_TIFF_TAGS = {256: "width", 257: "height", 258: "bits per sample", 262: "photometric", 274: "orientation",
              277: "samples per pixel", 284: "planar configuration", 338: "extra samples", 339: "sample format"}
# Tags libtiff reads as one value (a count other than 1 leaves the tag unset), and their largest value.
_TIFF_SINGLE = {256: 0xFFFFFFFF, 257: 0xFFFFFFFF, 262: 0xFFFF, 274: 0xFFFF, 277: 0xFFFF, 284: 0xFFFF}
# Compression, and where the strips or tiles of a Deflate-compressed image are (for the decoder's zlib check).
_TIFF_LAYOUT = (259, 273, 279, 324, 325)
_TIFF_DEFLATE = (8, 32946)  # Adobe Deflate and the older code for the same zlib streams
_MAX_TIFF_CHUNKS = 1 << 20  # strips or tiles listed for the zlib check; beyond that it is skipped


def _tiff(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 16)
    big = head[:2] == b"MM"
    bigtiff = _u16(head, 2, big) == 43
    ifd = int.from_bytes(head[8:16], "big" if big else "little") if bigtiff else _u32(head, 4, big)
    count_size, entry_size = (8, 20) if bigtiff else (2, 12)
    raw_count = src.get(ifd, count_size)
    if len(raw_count) < count_size:
        raise _truncated(path, "truncated TIFF (its first directory is past the end of the file)")
    count = int.from_bytes(raw_count, "big" if big else "little")
    if count > 4096:
        raise _corrupt(path, f"corrupt TIFF (its first directory claims {count} entries)")
    table = src.get(ifd + count_size, count * entry_size)
    if len(table) < count * entry_size:
        raise _truncated(path, "truncated TIFF (the file ends inside its first directory)")
    fields = _TiffFields(src, bigtiff, "big" if big else "little")
    tags: dict[int, list[int]] = {}
    layout: dict[int, bytes | None] = {}
    for k in range(count):
        entry = table[k * entry_size : (k + 1) * entry_size]
        tag = fields.number(entry[0:2])
        if tag in _TIFF_LAYOUT:
            layout[tag] = None if tag in layout else entry  # None: twice, so which strips are meant is unclear
            continue
        if tag not in _TIFF_TAGS:
            continue
        if tag in tags:  # readers disagree on which copy wins: refuse rather than guess
            raise _corrupt(path, f"corrupt TIFF (tag {tag}, {_TIFF_TAGS[tag]}, appears twice in its directory)")
        values = fields.values(entry, 16)  # the tags read here hold a few values
        if tag in _TIFF_SINGLE and (len(values) != 1 or values[0] > _TIFF_SINGLE[tag]):
            values = []  # libtiff leaves the tag unset (its default, or a missing size OpenCV refuses)
        tags[tag] = values

    def first(tag: int, default: int | None) -> int | None:
        values = tags.get(tag)
        return values[0] if values else default

    width, height = first(256, None), first(257, None)
    orientation = first(274, 1)
    if not 1 <= orientation <= 8:
        orientation = 1
    return ImageInfo("tiff", height, width, orientation, _tiff_unsupported(tags, first),
                     zlib_chunks=_deflate_chunks(layout, fields))


class _TiffFields:
    """Values of one TIFF directory's entries, read the way libtiff reads integer tags."""

    def __init__(self, src: _Source, bigtiff: bool, order: str):
        self.src, self.bigtiff, self.order = src, bigtiff, order

    def number(self, raw: bytes, signed: bool = False) -> int:
        return int.from_bytes(raw, self.order, signed=signed)

    def values(self, entry: bytes, most: int) -> list[int]:
        """Up to ``most`` values of ``entry``; none if its type is not an integer or a value is negative."""
        kind = _TIFF_INTEGERS.get(self.number(entry[2:4]))
        count = self.number(entry[4:12] if self.bigtiff else entry[4:8])
        if kind is None or count == 0:
            return []
        size, signed = kind
        number = min(count, most)
        raw = entry[12:20] if self.bigtiff else entry[8:12]
        if count * size > len(raw):  # stored elsewhere: the field holds its offset
            raw = self.src.get(self.number(raw), number * size)
        values = [self.number(raw[i * size : (i + 1) * size], signed) for i in range(min(number, len(raw) // size))]
        return values if min(values, default=0) >= 0 else []


def _deflate_chunks(layout: dict[int, bytes | None], fields: _TiffFields) -> tuple[tuple[int, int], ...]:
    """(offset, length) of each strip or tile of a Deflate-compressed TIFF; () when unknown or not Deflate."""
    if None in layout.values() or 259 not in layout:
        return ()
    compression = fields.values(layout[259], 1)
    if len(compression) != 1 or compression[0] not in _TIFF_DEFLATE:
        return ()
    for offsets_tag, lengths_tag in ((273, 279), (324, 325)):
        if offsets_tag in layout and lengths_tag in layout:
            offsets = fields.values(layout[offsets_tag], _MAX_TIFF_CHUNKS + 1)
            lengths = fields.values(layout[lengths_tag], _MAX_TIFF_CHUNKS + 1)
            if 0 < len(offsets) == len(lengths) <= _MAX_TIFF_CHUNKS:
                return tuple(zip(offsets, lengths, strict=True))
    return ()


def _tiff_unsupported(tags: dict[int, list[int]], first) -> str | None:
    bits = tags.get(258) or [1]
    photometric, planar = first(262, None), first(284, 1)
    if first(339, 1) in (2, 3):
        return "a TIFF with signed or floating-point samples (only unsigned 8- and 16-bit are turned into uint8)"
    if planar == 2 and max(bits) > 8:
        return "a planar 16-bit TIFF (separate colour planes, which OpenCV decodes wrongly)"
    if 2 in tags.get(338, []):
        return "a TIFF with unassociated alpha (OpenCV premultiplies its colours)"
    if photometric != 3 and any(b not in (1, 8, 16) for b in bits):
        shown = "/".join(map(str, bits))
        return f"a TIFF with {shown}-bit samples (only 1, 8 and 16 bits are read as they are)"
    return None


# ----------------------------------------------------------------- PNM / PAM


def _pnm(src: _Source, path: str) -> ImageInfo:
    """Netpbm: ``P<n>``, then width, height (and maxval) as text with '#' comments; P7 is PAM."""
    text = src.get(0, 4096)
    kind = text[1:2]
    if kind == b"7":
        return _pam(text, path)
    wanted = 2 if kind in b"14" else 3
    fields: list[bytes] = []
    for line in text[2:].split(b"\n"):
        fields += line.split(b"#", 1)[0].split()
        if len(fields) >= wanted:
            break
    try:
        numbers = [int(v) for v in fields[:wanted]]
        width, height = numbers[0], numbers[1]
    except (IndexError, ValueError):
        raise _corrupt(path, "corrupt PNM header (no width and height)") from None
    unsupported = None
    if wanted == 3:
        if len(numbers) < 3:
            raise _corrupt(path, "corrupt PNM header (no maximum value)")
        if numbers[2] not in (255, 65535):
            unsupported = f"a PNM image with maximum value {numbers[2]} (OpenCV does not rescale it to 255)"
    return ImageInfo("pnm", height, width, unsupported=unsupported)


def _pam(text: bytes, path: str) -> ImageInfo:
    fields = {}
    for line in text[3:].split(b"\n"):
        words = line.split(b"#", 1)[0].split()
        if words[:1] == [b"ENDHDR"]:
            break
        if len(words) >= 2:
            fields[words[0]] = words[1]
    try:
        width, height = int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
        maxval = int(fields.get(b"MAXVAL", b"255"))
    except (KeyError, ValueError):
        raise _corrupt(path, "corrupt PAM header (no WIDTH and HEIGHT)") from None
    unsupported = None
    if maxval not in (1, 255, 65535):
        unsupported = f"a PAM image with maximum value {maxval} (OpenCV does not rescale it to 255)"
    return ImageInfo("pnm", height, width, unsupported=unsupported)


# ------------------------------------------------------------ GIF, JP2, Sun


def _gif(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 10)
    if len(head) < 10:
        raise _truncated(path, "truncated GIF (the file ends inside its header)")
    # OpenCV decodes onto the logical screen and refuses frames that exceed it.
    return ImageInfo("gif", _u16(head, 8, big=False), _u16(head, 6, big=False))


def _jp2(src: _Source, path: str) -> ImageInfo:
    """JPEG 2000: the size OpenJPEG uses is the codestream's SIZ, not the JP2 ``ihdr`` box."""
    pos = 0
    if src.get(0, 4) != b"\xff\x4f\xff\x51":
        codestream = next((start for kind, start, _ in _boxes(src, 0, src.size) if kind == b"jp2c"), None)
        if codestream is None:
            raise _truncated(path, "truncated JPEG 2000 file (no codestream box)")
        pos = codestream
    siz = src.get(pos, 24)
    if len(siz) < 24 or siz[:4] != b"\xff\x4f\xff\x51":
        raise _corrupt(path, "corrupt JPEG 2000 codestream (no SIZ marker after its start)")
    width = _u32(siz, 8) - _u32(siz, 16)
    height = _u32(siz, 12) - _u32(siz, 20)
    if width <= 0 or height <= 0:
        raise _corrupt(path, f"corrupt JPEG 2000 codestream (image offsets beyond its size: {width}x{height})")
    return ImageInfo("jp2", height, width)


def _sun(src: _Source, path: str) -> ImageInfo:
    head = src.get(0, 12)
    if len(head) < 12:
        raise _truncated(path, "truncated Sun raster (the file ends inside its header)")
    return ImageInfo("sun", _u32(head, 8), _u32(head, 4))


def _boxes(src: _Source, start: int, end: int):
    """(type, payload start, payload end) of the ISO-BMFF boxes between ``start`` and ``end``."""
    pos = start
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > end:
            return
        box = src.get(pos, 16)
        if len(box) < 8:
            return
        length, kind, skip = _u32(box, 0), box[4:8], 8
        if length == 1:
            length, skip = int.from_bytes(box[8:16], "big"), 16
        elif length == 0:
            length = end - pos
        if length < skip:
            return
        yield kind, pos + skip, min(end, pos + length)
        pos += length


def _is_avif(src: _Source) -> bool:
    ftyp = src.get(0, 64)
    length = min(_u32(ftyp, 0), len(ftyp))
    brands = [ftyp[k : k + 4] for k in range(8, length, 4) if k != 12]  # major brand, then compatible ones
    return b"avif" in brands or b"avis" in brands


def _avif(src: _Source, path: str) -> ImageInfo:
    """AVIF: the largest image spatial extent (``ispe``) among the item properties.

    meta (a full box: 4 bytes of version and flags) > iprp > ipco > ispe
    (version and flags, then width and height). The largest one is the
    primary image (grid tiles and alpha planes are never bigger).
    """
    best = None
    transformed = False
    for kind, start, end in _boxes(src, 0, src.size):
        if kind != b"meta":
            continue
        for kind2, start2, end2 in _boxes(src, start + 4, end):
            if kind2 != b"iprp":
                continue
            for kind3, start3, end3 in _boxes(src, start2, end2):
                if kind3 != b"ipco":
                    continue
                for kind4, start4, _ in _boxes(src, start3, end3):
                    if kind4 == b"ispe":
                        extent = src.get(start4 + 4, 8)
                        size = (_u32(extent, 4), _u32(extent, 0))  # (height, width)
                        if len(extent) == 8 and (best is None or size[0] * size[1] > best[0] * best[1]):
                            best = size
                    elif kind4 in (b"irot", b"imir"):
                        transformed = True
    if best is None:
        return ImageInfo("other", None, None, unsupported="an AVIF file without an image size (ispe) preload can read")
    unsupported = "an AVIF image with a rotation or mirror property (irot/imir)" if transformed else None
    return ImageInfo("avif", best[0], best[1], unsupported=unsupported)


# -------------------------------------------------------------- from a file


def open_regular(path: str):
    """Open an image for reading with :func:`preload.sources.open_regular`; what it refuses is a failure.

    Returns
    -------
    (file object, size in bytes)

    Raises
    ------
    ImageDecodeError
        ``missing``/``unreadable`` for what cannot be opened, and for a
        directory, FIFO, socket or device.
    """
    try:
        return sources.open_regular(path)
    except sources.NotRegularFile as exc:
        raise ImageDecodeError(path, Reason.UNREADABLE, f"it is {exc.kind}, not a regular file") from None
    except OSError as exc:
        raise open_error(path, exc) from exc
    except ValueError:  # a NUL byte in the name
        raise ImageDecodeError(path, Reason.UNREADABLE, "the file name holds a NUL byte") from None


def read_header(handle, path: str, size: int) -> tuple[bytes, ImageInfo]:
    """The first bytes of an open file and what its header says, reading no more than the header needs."""
    fd = handle.fileno()

    def read_at(at: int, count: int) -> bytes:
        try:
            return os.pread(fd, count, at)
        except OSError as exc:
            raise open_error(path, exc) from exc

    head = read_at(0, min(HEADER_BYTES, size) if size else HEADER_BYTES)
    return head, parse(head, path, complete=len(head) >= size, read_at=read_at, size=size)


def probe(path: str) -> ImageInfo:
    """Read just enough of ``path`` to parse its header (used when ``size=None``).

    Raises
    ------
    ImageDecodeError
        For a missing, unreadable or empty file, something that is not a
        regular file, or a broken header.
    """
    handle, size = open_regular(path)
    with handle:
        return read_header(handle, path, size)[1]
