"""Read an image's format, stored size and EXIF orientation from its first bytes.

preload looks at the header before it lets OpenCV decode anything, for three
reasons: to refuse a decompression bomb before a gigantic buffer is allocated,
to pick a reduced JPEG decode scale, and to recognise a truncated file that
OpenCV would otherwise decode silently (a JPEG without its end-of-image marker,
a PNG without its IEND chunk). Formats parsed: JPEG, PNG, BMP, WebP, TIFF and
PNM; the EXIF orientation is read from JPEG (APP1), PNG (eXIf), WebP (EXIF)
and TIFF (tag 274). Other signatures are handed to OpenCV as they are
(``format="other"``), with OpenCV's own pixel limit as the bomb guard.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ImageDecodeError, Reason, open_error

HEADER_BYTES = 1 << 16  # enough for the headers of nearly every file; JPEG reads on if not


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. ``height``/``width`` are as stored (before EXIF rotation)."""

    format: str  # "jpeg", "png", "bmp", "webp", "tiff", "pnm" or "other"
    height: int | None
    width: int | None
    orientation: int = 1  # EXIF orientation 1..8; 5..8 swap height and width
    jpeg: JpegFrame | None = None  # JPEG only: the frame header and the junk libjpeg skips

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
    bytes to drop and ``count`` the number libjpeg reports.
    """

    sof: int  # the SOFn marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, others rarer
    precision: int  # bits per sample
    components: int  # 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
    junk: tuple[tuple[int, int, int, int], ...] = ()


def parse(data, path: str, *, complete: bool) -> ImageInfo:
    """Parse the header at the start of ``data`` (bytes-like).

    With ``complete=True`` ``data`` is the whole file, and a file that ends
    before the image does is reported as truncated.

    Raises
    ------
    ImageDecodeError
        ``EMPTY`` for zero bytes, ``TRUNCATED`` for a cut-off file,
        ``CORRUPT`` for a header that contradicts itself.
    """
    if len(data) == 0:
        raise ImageDecodeError(path, Reason.EMPTY, "the file is empty (0 bytes)")
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8"):
        return _jpeg(data, path, complete)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data, path, complete)
    if head.startswith(b"BM"):
        return _bmp(data, path)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(data, path, complete)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data, path)
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return _pnm(data, path)
    return ImageInfo("other", None, None)


def _truncated(path: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(path, Reason.TRUNCATED, what)


def _u16(data, at: int, big: bool = True) -> int:
    return int.from_bytes(data[at : at + 2], "big" if big else "little")


def _u32(data, at: int, big: bool = True) -> int:
    return int.from_bytes(data[at : at + 4], "big" if big else "little")


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data, path: str, complete: bool) -> ImageInfo:
    n = len(data)
    pos = 2
    height = width = None
    frame = None
    orientation = 1
    junk = []
    while True:
        if pos + 4 > n:
            if complete:
                raise _truncated(path, "truncated JPEG (the file ends inside its header)")
            raise _NeedMore
        if data[pos] != 0xFF or data[pos + 1] == 0x00:
            # Stray bytes between segments (a segment length one short, say):
            # libjpeg skips them to the next marker with a warning and decodes
            # the image intact, so the header scan does the same.
            pos = _skip_junk(data, pos, junk)
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageDecodeError(path, Reason.CORRUPT, "corrupt JPEG (end-of-image marker before any scan)")
        length = _u16(data, pos + 2)
        if marker == 0xDA:  # start of scan: the header is over
            break
        end = pos + 2 + length
        if end > n:
            if complete:
                raise _truncated(path, "truncated JPEG (the file ends inside its header)")
            raise _NeedMore
        if marker in _SOF and length >= 8:
            height, width = _u16(data, pos + 5), _u16(data, pos + 7)
            frame = (marker, data[pos + 4], data[pos + 9])
        elif marker == 0xE1 and bytes(data[pos + 4 : pos + 10]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(data[pos + 10 : end]))
        pos = end
    if height is None:
        raise ImageDecodeError(path, Reason.CORRUPT, "corrupt JPEG (no frame header before the scan)")
    # Entropy-coded data escapes every 0xFF, so an FFD9 after the first scan can
    # only be the end-of-image marker; its absence means the file was cut short.
    if complete and data.rfind(b"\xff\xd9", pos) < 0:
        raise _truncated(path, "truncated JPEG (no end-of-image marker)")
    return ImageInfo("jpeg", height or None, width or None, orientation, JpegFrame(*frame, tuple(junk)))


def _skip_junk(data, pos: int, junk: list) -> int:
    """Skip stray bytes up to the next marker as libjpeg's ``next_marker`` does.

    Non-0xFF bytes and stuffed ``FF 00`` pairs are counted (libjpeg's
    "extraneous bytes"), fill ``FF``s before the marker are not. Appends
    ``(start, stop, count, marker)`` to ``junk``; returns the marker's offset.
    """
    n = len(data)
    start, count = pos, 0
    while True:
        while pos < n and data[pos] != 0xFF:
            pos += 1
            count += 1
        first = pos
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            return n  # no marker after the junk: the caller reports the truncation
        if data[pos] != 0x00:
            junk.append((start, first, count, data[pos]))
            return pos - 1
        pos += 1
        count += 2


class _NeedMore(Exception):
    """The header continues past the bytes read so far."""


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 if absent or malformed."""
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
            value = _u16(tiff, entry + 8, big)
            return value if 1 <= value <= 8 else 1
    return 1


def _png(data, path: str, complete: bool) -> ImageInfo:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise _truncated(path, "truncated PNG (the file ends inside its header)")
    width, height = _u32(data, 16), _u32(data, 20)
    if complete and data.rfind(b"IEND", 33) < 0:
        raise _truncated(path, "truncated PNG (no IEND chunk)")
    # An eXIf chunk (orientation) must come before the first IDAT.
    orientation, pos = 1, 8
    while pos + 8 <= len(data):
        length, kind = _u32(data, pos), bytes(data[pos + 4 : pos + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            orientation = _exif_orientation(bytes(data[pos + 8 : pos + 8 + length]))
            break
        pos += 12 + length
    return ImageInfo("png", height, width, orientation)


def _bmp(data, path: str) -> ImageInfo:
    if len(data) < 26:
        raise _truncated(path, "truncated BMP (the file ends inside its header)")
    if _u32(data, 14, big=False) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = _u16(data, 18, big=False), _u16(data, 20, big=False)
    else:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
    return ImageInfo("bmp", height, abs(width))


def _webp(data, path: str, complete: bool) -> ImageInfo:
    if len(data) < 30:
        raise _truncated(path, "truncated WebP (the file ends inside its header)")
    chunk = bytes(data[12:16])
    orientation = 1
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        if data[20] & 0x08:  # the EXIF flag: its chunk usually follows the image data
            orientation = _webp_orientation(data, path, complete)
    elif chunk == b"VP8L":
        bits = _u32(data, 21, big=False)
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    elif chunk == b"VP8 ":
        width = _u16(data, 26, big=False) & 0x3FFF
        height = _u16(data, 28, big=False) & 0x3FFF
    else:
        return ImageInfo("webp", None, None)
    return ImageInfo("webp", height, width, orientation)


def _webp_orientation(data, path: str, complete: bool) -> int:
    pos = 12
    while pos + 8 <= len(data):
        kind, length = bytes(data[pos : pos + 4]), _u32(data, pos + 4, big=False)
        if kind == b"EXIF":
            payload = bytes(data[pos + 8 : pos + 8 + length])
            return _exif_orientation(payload[6:] if payload.startswith(b"Exif\x00\x00") else payload)
        pos += 8 + length + (length & 1)
    if not complete:
        raise _NeedMore
    return 1


def _tiff(data, path: str) -> ImageInfo:
    big = bytes(data[:2]) == b"MM"
    ifd = _u32(data, 4, big)
    if ifd + 2 > len(data):
        return ImageInfo("tiff", None, None)  # IFD beyond what was read: let libtiff judge
    width = height = None
    orientation = 1
    for k in range(_u16(data, ifd, big)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(data):
            break
        tag, kind = _u16(data, entry, big), _u16(data, entry + 2, big)
        value = _u16(data, entry + 8, big) if kind == 3 else _u32(data, entry + 8, big)
        if tag == 256:
            width = value
        elif tag == 257:
            height = value
        elif tag == 274 and 1 <= value <= 8:
            orientation = value
    return ImageInfo("tiff", height, width, orientation)


def _pnm(data, path: str) -> ImageInfo:
    """Netpbm (PBM/PGM/PPM): ``P<n>``, then width and height as text, '#' comments allowed."""
    fields = []
    for line in bytes(data[2:4096]).split(b"\n"):
        fields += line.split(b"#", 1)[0].split()
        if len(fields) >= 2:
            break
    try:
        width, height = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        raise ImageDecodeError(path, Reason.CORRUPT, "corrupt PNM header (no width and height)") from None
    return ImageInfo("pnm", height, width)


def probe(path: str) -> ImageInfo:
    """Read just enough of ``path`` to parse its header (used when ``size=None``).

    Raises
    ------
    ImageDecodeError
        For a missing, unreadable or empty file, or a broken header.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(HEADER_BYTES)
            try:
                return parse(data, path, complete=False)
            except _NeedMore:  # huge APPn segments (ICC, XMP): read the whole file
                data += handle.read()
                return parse(data, path, complete=True)
    except OSError as exc:
        raise open_error(path, exc) from exc
