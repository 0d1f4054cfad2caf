"""Hostile sources (issue 11): variants OpenCV mis-decodes, EXIF everywhere, special and huge files.

Every file here is built byte by byte (struct) or with cv2.imwrite into tmp_path.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image, write
from preload import Reason

IGNORE = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR | cv2.IMREAD_IGNORE_ORIENTATION


def opencv(data: bytes):
    return cv2.imdecode(np.frombuffer(data, np.uint8), IGNORE)


def only_failure(path: str, **options) -> preload.Failure:
    ds = preload.load([path], size=8, on_error="skip", progress=False, workers=1, **options)
    assert len(ds) == 0
    (failure,) = ds.failed
    return failure


# ------------------------------------------------------------ byte-level writers


TIFF_PACK = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}  # struct codes of TIFF types


def tiff(tags: dict[int, tuple[int, list[int]]], strips: list[bytes]) -> bytes:
    """A little-endian one-page TIFF: ``tags`` maps tag -> (type, values); strips follow the header."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    offsets = []
    for strip in strips:
        offsets.append(len(out))
        out += strip + b"\x00" * (len(strip) & 1)
    tags = {**tags, 273: (4, offsets), 279: (4, [len(s) for s in strips])}
    entries = []
    for tag in sorted(tags):
        kind, values = tags[tag]
        raw = struct.pack(f"<{len(values)}{TIFF_PACK[kind]}", *values)
        if len(raw) > 4:
            entries.append((tag, kind, len(values), struct.pack("<I", len(out))))
            out += raw + b"\x00" * (len(raw) & 1)
        else:
            entries.append((tag, kind, len(values), raw.ljust(4, b"\x00")))
    struct.pack_into("<I", out, 4, len(out))
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHI", tag, kind, count) + value
    return bytes(out + b"\x00\x00\x00\x00")


def rgb_tiff_tags(height: int, width: int, *, bits: int = 8, samples: int = 3, planar: int = 1) -> dict:
    return {256: (4, [width]), 257: (4, [height]), 258: (3, [bits] * samples), 259: (3, [1]),
            262: (3, [2]), 277: (3, [samples]), 278: (4, [height]), 284: (3, [planar])}


def bmp(header: int, bits: int, pixels: bytes, width: int, height: int, *, palette: bytes = b"",
        offset: int | None = None, compression: int = 0, masks: bytes = b"") -> bytes:
    if header == 12:
        info = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        info = struct.pack("<IiiHHIIiiII", header, width, height, 1, bits, compression, len(pixels), 0, 0, 0, 0)
        info = (info + masks).ljust(header, b"\x00") if header > 40 else info + masks
    start = 14 + len(info) + len(palette) if offset is None else offset
    body = info + palette
    body = body.ljust(start - 14, b"\x00")[: start - 14]
    return b"BM" + struct.pack("<IHHI", start + len(pixels), 0, 0, start) + body + pixels


def bottom_up_rows(array: np.ndarray, row_bytes: int) -> bytes:
    stride = (row_bytes + 3) & ~3
    return b"".join(array[y].tobytes().ljust(stride, b"\x00") for y in range(array.shape[0] - 1, -1, -1))


# ------------------------------------------- 1. variants OpenCV mis-decodes silently


def _core_bmp(rng):
    """OS/2 BMP with a 256-colour palette of 3-byte entries: OpenCV reads it as 4-byte entries."""
    index = rng.integers(0, 4, (5, 7), dtype=np.uint8)
    colors = np.zeros((256, 3), np.uint8)
    colors[:4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]  # BGR
    data = bmp(12, 8, bottom_up_rows(index, 7), 7, 5, palette=colors.tobytes())
    return data, colors[index]


def _palette_into_pixels_bmp(rng):
    """8-bit palette BMP whose pixel offset points inside the 4-colour palette."""
    index = rng.integers(0, 4, (5, 7), dtype=np.uint8)
    colors = np.array([(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (10, 20, 30, 0)], np.uint8)
    pixels = bottom_up_rows(index, 7)
    info = struct.pack("<IiiHHIIiiII", 40, 7, 5, 1, 8, 0, len(pixels), 0, 0, 4, 0)
    body = info + colors.tobytes()
    offset = 14 + 40  # the pixels should start after the 16 palette bytes
    data = b"BM" + struct.pack("<IHHI", 14 + len(body) + len(pixels), 0, 0, offset) + body + pixels
    return data, colors[index][:, :, :3]


def _rgba_masks_bmp(rng):
    """32-bit BMP whose bit-field masks say R, G, B in the low bytes: OpenCV ignores masks."""
    rgba = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    masks = struct.pack("<III", 0x000000FF, 0x0000FF00, 0x00FF0000)
    data = bmp(40, 32, bottom_up_rows(rgba, 16), 4, 3, compression=3, masks=masks)
    return data, rgba[:, :, 2::-1]  # BGR


def _planar16_tiff(rng):
    rgb = rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    planes = [rgb[:, :, c].astype("<u2").tobytes() for c in range(3)]
    return tiff(rgb_tiff_tags(4, 6, bits=16, planar=2), planes), rgb[:, :, ::-1]


def _unassociated_alpha_tiff(rng):
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    tags = {**rgb_tiff_tags(4, 6, samples=4), 338: (3, [2])}
    return tiff(tags, [rgba.tobytes()]), rgba[:, :, 2::-1]


def _pgm_maxval_63(rng):
    gray = rng.integers(0, 64, (4, 5), dtype=np.uint8)
    return b"P5\n5 4\n63\n" + gray.tobytes(), (gray.astype(np.uint16) * 255 // 63).astype(np.uint8)


MISDECODED = {
    "os2-palette-bmp": (_core_bmp, ".bmp", "OS/2 palette BMP"),
    "palette-overlapping-pixels-bmp": (_palette_into_pixels_bmp, ".bmp", "starts inside its 4-colour palette"),
    "rgba-masks-bmp": (_rgba_masks_bmp, ".bmp", "channel masks 0xff, 0xff00, 0xff0000"),
    "planar-16-bit-tiff": (_planar16_tiff, ".tif", "planar 16-bit TIFF"),
    "unassociated-alpha-tiff": (_unassociated_alpha_tiff, ".tif", "unassociated alpha"),
    "pgm-maxval-63": (_pgm_maxval_63, ".pgm", "maximum value 63"),
}


@pytest.mark.parametrize("name", sorted(MISDECODED))
def test_variants_opencv_misdecodes_are_refused_as_unsupported(tmp_path, rng, name):
    make, ext, words = MISDECODED[name]
    data, truth = make(rng)
    decoded = opencv(data)
    # The premise: OpenCV returns an image, and its pixels are not the file's.
    # (If a new OpenCV decodes it right, this fails: then stop refusing it.)
    assert decoded is not None
    if decoded.dtype == np.uint16:
        decoded = (decoded >> 8).astype(np.uint8)
        truth = (truth >> 8).astype(np.uint8) if truth.dtype == np.uint16 else truth
    assert decoded.shape[:2] == truth.shape[:2]
    assert not np.array_equal(decoded.reshape(truth.shape) if decoded.size == truth.size else decoded, truth)

    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    failure = only_failure(str(path))
    assert failure.reason == Reason.UNSUPPORTED
    assert words in failure.detail
    with pytest.raises(preload.ImageDecodeError, match=r"\[unsupported\]"):
        preload.load([str(path)], size=8, progress=False)


@pytest.mark.parametrize(
    "name, make",
    [("palette-bmp", lambda img: cv2.imencode(".bmp", img[:, :, 0])[1].tobytes()),
     ("rgb-tiff", lambda img: cv2.imencode(".tif", img)[1].tobytes()),
     ("rgba-tiff", lambda img: cv2.imencode(".tif", np.dstack([img, img[:, :, :1]]))[1].tobytes()),
     ("planar-8-bit-tiff", lambda img: tiff(rgb_tiff_tags(12, 10, planar=2),
                                            [np.ascontiguousarray(img[:, :, c]).tobytes() for c in (2, 1, 0)])),
     ("pgm-255", lambda img: b"P5\n10 12\n255\n" + img[:, :, 0].tobytes())],
)
def test_the_variants_opencv_decodes_right_still_load(tmp_path, rng, name, make):
    image = smooth_image(rng, 12, 10)
    path = tmp_path / "ok.img"
    path.write_bytes(make(image))
    ds = preload.load([str(path)], color="bgr", progress=False)
    expected = image if ds.images.shape[-1] == 3 and name not in ("palette-bmp", "pgm-255") else None
    if expected is None:
        expected = np.dstack([image[:, :, 0]] * 3)
    assert np.array_equal(ds.images[0], expected)


# ------------------------------------------------------ 2. EXIF orientation everywhere


def exif_block(orientation: int, prefix: bool) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    return (b"Exif\x00\x00" if prefix else b"") + b"II*\x00" + struct.pack("<I", 8) + ifd


def webp_with_exif(image: np.ndarray, orientation: int, prefix: bool) -> bytes:
    """A lossless WebP turned into the extended format with an EXIF chunk after the image data."""
    simple = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert simple[12:16] == b"VP8L"
    height, width = image.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0])
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    block = exif_block(orientation, prefix)
    exif = b"EXIF" + struct.pack("<I", len(block)) + block + b"\x00" * (len(block) & 1)
    body = b"WEBP" + vp8x + simple[12:] + exif
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_with_exif(image: np.ndarray, orientation: int, prefix: bool) -> bytes:
    png = cv2.imencode(".png", image)[1].tobytes()
    block = exif_block(orientation, prefix)
    chunk = struct.pack(">I", len(block)) + b"eXIf" + block + struct.pack(">I", zlib.crc32(b"eXIf" + block))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def tiff_with_orientation(image: np.ndarray, orientation: int, prefix: bool) -> bytes:
    height, width = image.shape[:2]
    tags = {**rgb_tiff_tags(height, width), 274: (3, [orientation])}
    return tiff(tags, [np.ascontiguousarray(image[:, :, ::-1]).tobytes()])


def jpeg_with_two_exif(image: np.ndarray, orientation: int, prefix: bool) -> bytes:
    """The first APP1 Exif says ``orientation``, a second one says 1: the first one counts."""
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    segments = b""
    for value in (orientation, 1):
        payload = exif_block(value, prefix=True)
        segments += b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segments + jpeg[2:]


TURN = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize(
    "make, prefix",
    [(webp_with_exif, True), (webp_with_exif, False), (png_with_exif, True), (png_with_exif, False),
     (tiff_with_orientation, False), (jpeg_with_two_exif, True)],
    ids=["webp-Exif-prefix", "webp", "png-Exif-prefix", "png", "tiff", "jpeg-two-app1"],
)
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_true_and_false_differ_exactly_when_the_file_says_so(tmp_path, rng, make, prefix, orientation):
    image = smooth_image(rng, 16, 24)
    path = tmp_path / "o.img"
    path.write_bytes(make(image, orientation, prefix))
    stored = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_BGR | cv2.IMREAD_IGNORE_ORIENTATION)
    if make is tiff_with_orientation:  # OpenCV's TIFF reader always turns: the raw strip is the truth
        stored = image
    upright = np.ascontiguousarray(TURN[orientation](stored)) if orientation != 1 else stored
    as_told = preload.load([str(path)], color="bgr", progress=False)  # size=None: sizes must agree too
    as_stored = preload.load([str(path)], color="bgr", exif=False, progress=False)
    assert np.array_equal(as_told.images[0], upright)
    assert np.array_equal(as_stored.images[0], stored)


# TIFF Orientation as libtiff reads it (OpenCV's TIFF reader turns the image by what libtiff read):
# one value of any integer type; a negative one, one too large for a SHORT or two values are no value.
ORIENTATION_FIELDS = [
    ((3, [6]), 6), ((4, [8]), 8), ((1, [6]), 6), ((6, [6]), 6), ((8, [6]), 6), ((9, [8]), 8), ((16, [6]), 6),
    ((17, [8]), 8), ((8, [-6]), 1), ((9, [-6]), 1), ((4, [65536 + 6]), 1), ((3, [6, 6]), 1), ((3, [9]), 1),
]


@pytest.mark.parametrize("field, read", ORIENTATION_FIELDS, ids=[f"type{f[0]}-{f[1]}" for f, _ in ORIENTATION_FIELDS])
@pytest.mark.parametrize("shape", [(24, 24), (16, 28)])
def test_tiff_orientation_is_read_as_libtiff_reads_it(tmp_path, rng, field, read, shape):
    image = smooth_image(rng, *shape)
    tags = {**rgb_tiff_tags(*shape), 274: field}
    path = tmp_path / "o.tif"
    path.write_bytes(tiff(tags, [np.ascontiguousarray(image[:, :, ::-1]).tobytes()]))
    turned = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_BGR)  # as libtiff read the tag
    upright = np.ascontiguousarray(TURN[read](image)) if read != 1 else image
    assert np.array_equal(turned, upright)  # the premise: what OpenCV makes of the field
    assert preload.headers.probe(str(path)).orientation == read
    as_told = preload.load([str(path)], color="bgr", progress=False)  # size=None: the sizes must agree too
    as_stored = preload.load([str(path)], color="bgr", exif=False, progress=False)
    assert as_told.failed == [] and as_stored.failed == []
    assert np.array_equal(as_told.images[0], upright)
    assert np.array_equal(as_stored.images[0], image)


@pytest.mark.parametrize("kind, read", [(16, 6), (17, 6), (8, 6)])
def test_bigtiff_orientation_of_a_64_bit_type_is_read(tmp_path, rng, kind, read):
    tifffile = pytest.importorskip("tifffile")
    image = smooth_image(rng, 16, 28)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image[:, :, ::-1], photometric="rgb", bigtiff=True, metadata=None,
                     extratags=[(274, kind, 1, 6, True)])
    assert preload.headers.probe(str(path)).orientation == read
    # (cv2.imread fails on a turned non-square TIFF in OpenCV 5.1: "Internal imread issue")
    assert np.array_equal(cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_BGR), np.rot90(image, -1))
    assert np.array_equal(preload.load([str(path)], color="bgr", progress=False).images[0], np.rot90(image, -1))
    assert np.array_equal(preload.load([str(path)], color="bgr", exif=False, progress=False).images[0], image)


# -------------------------------------------- 3. special files, huge files, any format


def load_in_thread(paths, timeout: float = 20.0):
    """Load with on_error='skip' in a daemon thread, so a hang fails the test instead of blocking it."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(ds=preload.load(
        paths, size=8, on_error="skip", progress=False, workers=1)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "load() hung"
    return result["ds"]


def test_fifo_socket_and_device_are_refused_before_opening(tmp_path, rng):
    write(tmp_path / "good.png", smooth_image(rng, 8, 8))
    fifo = str(tmp_path / "pipe.jpg")
    os.mkfifo(fifo)
    device = str(tmp_path / "zero.jpg")
    os.symlink("/dev/zero", device)
    sock_path = str(tmp_path / "s.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path\npipe.jpg\ngood.png\nzero.jpg\ns.png\n")
    try:
        ds = load_in_thread(str(csv_path))
    finally:
        server.close()
    assert [os.path.basename(p) for p in ds.paths] == ["good.png"]
    details = {os.path.basename(f.path): (f.reason, f.detail) for f in ds.failed}
    assert details == {
        "pipe.jpg": (Reason.UNREADABLE, "it is a FIFO (named pipe), not a regular file"),
        "zero.jpg": (Reason.UNREADABLE, "it is a character device, not a regular file"),
        "s.png": (Reason.UNREADABLE, "it is a socket, not a regular file"),
    }
    with pytest.raises(preload.ImageDecodeError, match="FIFO"):  # size=None probes headers the same way
        preload.load([fifo], progress=False)


def _bytes_read() -> int:
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    jpeg = tmp_path / "huge.jpg"
    with open(jpeg, "wb") as handle:  # sparse: a JPEG start, then 3 GB of holes
        handle.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        handle.truncate(3 << 30)
    bomb = tmp_path / "bomb.png"  # a header that announces 100000 x 100000, then 64 MB of holes
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with open(bomb, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk)
        handle.truncate(64 << 20)
    before = _bytes_read()
    ds = load_in_thread([str(jpeg), str(bomb)])
    assert _bytes_read() - before < (1 << 20)
    huge, big = ds.failed
    assert (huge.reason, big.reason) == (Reason.TOO_LARGE, Reason.TOO_LARGE)
    assert "3,221,225,472 bytes" in huge.detail and "it was not read" in huge.detail
    assert "100000x100000" in big.detail


def _gif(image):
    return cv2.imencode(".gif", image)[1].tobytes()


def _bigtiff(image):
    tifffile = pytest.importorskip("tifffile")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bigtiff-{os.getpid()}.tif")
    tifffile.imwrite(path, image, bigtiff=True)
    with open(path, "rb") as handle:
        data = handle.read()
    os.remove(path)
    return data


def _twice_sized_tiff(image):
    """Width and height tags appear twice: the first copies say 8x8 (libtiff's choice), later ones the real size."""
    height, width = image.shape[:2]
    data = bytearray(tiff(rgb_tiff_tags(height, width), [np.ascontiguousarray(image[:, :, ::-1]).tobytes()]))
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    entries = [bytes(data[ifd + 2 + 12 * k : ifd + 14 + 12 * k]) for k in range(count)]
    extra = [struct.pack("<HHII", 256, 4, 1, 8), struct.pack("<HHII", 257, 4, 1, 8)]
    table = struct.pack("<H", count + 2) + b"".join(extra + entries) + b"\x00\x00\x00\x00"
    struct.pack_into("<I", data, 4, len(data))
    return bytes(data) + table


ANY_FORMAT = {
    "gif": (_gif, Reason.TOO_LARGE),
    "jp2": (lambda image: cv2.imencode(".jp2", image)[1].tobytes(), Reason.TOO_LARGE),
    "pam": (lambda image: cv2.imencode(".pam", image)[1].tobytes(), Reason.TOO_LARGE),
    "avif": (lambda image: cv2.imencode(".avif", image)[1].tobytes(), Reason.TOO_LARGE),
    "sun-raster": (lambda image: cv2.imencode(".ras", image)[1].tobytes(), Reason.TOO_LARGE),
    "bigtiff": (_bigtiff, Reason.TOO_LARGE),
    "tiff-size-tags-twice": (_twice_sized_tiff, Reason.CORRUPT),
}


@pytest.mark.parametrize("name", sorted(ANY_FORMAT))
def test_max_pixels_holds_for_every_format(tmp_path, rng, name):
    make, reason = ANY_FORMAT[name]
    image = smooth_image(rng, 40, 50)  # 2,000 pixels
    path = tmp_path / "x.img"
    path.write_bytes(make(image))
    assert opencv(path.read_bytes()).shape[:2] == ((8, 8) if reason == Reason.CORRUPT else (40, 50))
    failure = only_failure(str(path), max_pixels=1000)
    assert failure.reason == reason
    if reason == Reason.TOO_LARGE:
        assert "50x40 = 2,000 pixels, more than max_pixels=1,000" in failure.detail
    else:
        assert "appears twice" in failure.detail
    if reason == Reason.TOO_LARGE:
        assert preload.load([str(path)], max_pixels=2000, progress=False).images.shape == (1, 40, 50, 3)


def test_a_float_format_is_unsupported_and_junk_is_not_an_image(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(bytes(5000))
    assert only_failure(str(junk)).reason == Reason.NOT_AN_IMAGE
    pfm = tmp_path / "x.pfm"
    assert cv2.imwrite(str(pfm), np.ones((4, 4, 3), np.float32))
    failure = only_failure(str(pfm))
    assert (failure.reason, failure.detail) == (Reason.UNSUPPORTED, "a floating-point image format (PFM, HDR or EXR)")


def test_opencvs_own_pixel_limit_is_too_large_not_corrupt(tmp_path):
    # 40000 x 40000 passes max_pixels=2**31 but not OpenCV's limit (2**30 at most).
    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(100))
    data = b"\x89PNG\r\n\x1a\n"
    for kind, body in ((b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")):
        data += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path = tmp_path / "wide.png"
    path.write_bytes(data)
    failure = only_failure(str(path), max_pixels=1 << 31)
    assert failure.reason == Reason.TOO_LARGE
    assert "OPENCV_IO_MAX_IMAGE_PIXELS" in failure.detail


# ----------------------------------------------- JPEG quirks libjpeg recovers from


def _segments(jpeg: bytes) -> tuple[bytes, int]:
    """(the JPEG, the offset of its DQT marker) for inserting quirks before it."""
    return jpeg, jpeg.index(b"\xff\xdb")


def _junk_before_marker(jpeg):
    data, at = _segments(jpeg)
    return data[:at] + b"\x00junk\x12" + data[at:]


def _app14_one_byte_short(jpeg):
    """An Adobe APP14 segment whose length field is one byte short (libjpeg: '1 extraneous bytes')."""
    data, at = _segments(jpeg)
    payload = b"Adobe\x00\x64\x00\x00\x00\x00\x01"
    return data[:at] + b"\xff\xee" + struct.pack(">H", len(payload) + 1) + payload + data[at:]


def _stuffed_zero_and_fill_bytes(jpeg):
    data, at = _segments(jpeg)
    return data[:at] + b"\xff\x00\xff\xff\xff" + data[at:]


@pytest.mark.parametrize("quirk", [_junk_before_marker, _app14_one_byte_short, _stuffed_zero_and_fill_bytes])
def test_jpegs_libjpeg_recovers_from_load_with_their_pixels(tmp_path, rng, quirk):
    image = smooth_image(rng, 24, 32)
    data = quirk(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    path = tmp_path / "quirk.jpg"
    path.write_bytes(data)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_BGR)
    assert reference is not None and reference.shape == (24, 32, 3)
    ds = preload.load([str(path)], color="bgr", progress=False)
    assert np.array_equal(ds.images[0], reference)


# ------------------------------------------------- names that are not UTF-8


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_a_name_that_is_not_utf8_prints_under_a_strict_utf8_stdout(tmp_path, rng):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / "good.png", smooth_image(rng, 8, 8))
    with open(os.path.join(os.fsencode(folder), b"bad-\xff.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n\x00")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0", "LC_ALL": "C.UTF-8"}
    command = [sys.executable, "-m", "preload", "load", str(folder), "--size", "8", "--on-error", "skip",
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, env=env, cwd=os.getcwd(), timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"bad-\\xff.png" in done.stdout
    done = subprocess.run(command[:-3] + ["--no-progress"], capture_output=True, env=env, cwd=os.getcwd(),
                          timeout=120)
    assert done.returncode != 0
    assert b"bad-\\xff.png" in done.stderr and b"Traceback" not in done.stderr


def test_a_jpeg_header_of_endless_tiny_segments_is_refused_quickly(tmp_path):
    # 70,000 empty comment segments before a frame header: a read per segment for ever otherwise.
    data = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 70_000 + b"\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"
    path = tmp_path / "segments.jpg"
    path.write_bytes(data + b"\xff\xd9")
    ds = preload.load([str(path)], size=8, on_error="skip", progress=False)
    assert [(str(f.reason), f.detail) for f in ds.failed] == [
        ("corrupt", "corrupt JPEG header (no scan within 65536 segments, byte 262146)")
    ]


def test_a_csv_label_with_thousands_of_leading_zeros_is_read_not_a_crash(tmp_path):
    image = tmp_path / "a.png"
    assert cv2.imwrite(str(image), np.zeros((4, 4, 3), np.uint8))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png," + "0" * 5000 + "5\n")
    assert preload.Manifest.from_csv(str(csv)).labels.tolist() == [5]
    csv.write_text("path,label\na.png,-" + "0" * 5000 + "5\n")
    with pytest.raises(preload.SourceError, match="line 2"):
        preload.Manifest.from_csv(str(csv))


@pytest.mark.parametrize("on_error", ["skip", "zero", "raise"])
def test_a_non_image_whose_name_is_not_utf8_is_a_named_failure_not_a_crash(tmp_path, on_error):
    # OpenCV's signature probe segfaults on such a name; the load runs in a child so
    # that a crash is a failed assertion here, not a dead test worker.
    folder = os.fsencode(tmp_path)
    with open(os.path.join(folder, b"bad\xff\xfe.png"), "wb") as handle:
        handle.write(b"junk, not an image at all")
    cv2.imwrite(str(tmp_path / "good.png"), np.full((6, 6, 3), 9, np.uint8))
    code = (
        "import sys, preload\n"
        f"try:\n    ds = preload.load(sys.argv[1], size=(4, 4), on_error={on_error!r}, progress=False)\n"
        "except preload.ImageDecodeError as error:\n    print('raised', error.reason.value); raise SystemExit(0)\n"
        "print(len(ds), [f.reason.value for f in ds.failed], ascii(ds.failed[0].path))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr)
    if on_error == "raise":
        assert done.stdout == "raised not-an-image\n"
    else:
        expected_len = 1 if on_error == "skip" else 2
        assert done.stdout.startswith(f"{expected_len} ['not-an-image'] "), done.stdout
        assert "bad\\udcff\\udcfe.png" in done.stdout


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_running_out_of_memory_mid_decode_stops_the_build_and_is_not_remembered_as_the_files_fault(tmp_path):
    # A valid 6000x6000 PNG (108 MB decoded, a small file) under an address-space
    # limit that the up-front check passes (the array is tiny) but the decode does not.
    folder = tmp_path / "src" / "a"
    folder.mkdir(parents=True)
    image = np.zeros((6000, 6000, 3), np.uint8)
    image[::7] = 200
    assert cv2.imwrite(str(folder / "big.png"), image)
    cv2.imwrite(str(folder / "small.png"), np.full((8, 8, 3), 5, np.uint8))
    cache = tmp_path / "c.npy"
    code = (
        "import resource, sys, psutil, preload, preload.cache  # loaded before the limit (import preload is lazy)\n"
        "room = psutil.Process().memory_info().vms + 60_000_000\n"
        "resource.setrlimit(resource.RLIMIT_AS, (room, room))\n"
        "for on_error in ('skip', 'zero', 'raise'):\n"
        "    try:\n"
        "        preload.build_cache(sys.argv[1], sys.argv[2], size=(4, 4), on_error=on_error, workers=1,"
        " progress=False)\n"
        "    except preload.InsufficientMemoryError as error:\n"
        "        print(on_error, 'stopped:', error)\n"
        "    else:\n"
        "        print(on_error, 'finished')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src"), str(cache)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["skip", "zero", "raise"], done.stdout
    assert all(f"stopped: ran out of memory while decoding '{folder / 'big.png'}'" in line for line in lines), lines
    # With room again the same build completes, the big file decoded: nothing was recorded against it.
    ds = preload.build_cache(tmp_path / "src", cache, size=(4, 4), on_error="skip", progress=False)
    assert ds.failed == [] and len(ds) == 2
    row = [str(p).endswith("big.png") for p in ds.paths].index(True)
    alone = preload.load([str(folder / "big.png")], size=(4, 4), progress=False).images[0]
    assert alone.min() > 0 and np.array_equal(ds.images[row], alone)


# --------------------------------- damaged TIFF data: libtiff's printed warning, zlib's check

TIFF_CODECS = {"lzw": 5, "packbits": 32773, "jpeg": 7, "deflate": 8, "adobe-deflate": 32946}


def compressed_tiff(rng, codec: str, height: int = 160, width: int = 200) -> bytes:
    image = np.clip(smooth_image(rng, height, width).astype(int) + rng.integers(-30, 30, (height, width, 3)), 0, 255)
    params = [cv2.IMWRITE_TIFF_COMPRESSION, TIFF_CODECS[codec], cv2.IMWRITE_TIFF_ROWSPERSTRIP, 16]
    ok, encoded = cv2.imencode(".tif", image.astype(np.uint8), params)
    assert ok
    return encoded.tobytes()


def zeroed_middle(data: bytes, count: int = 2048) -> bytes:
    """``count`` zero bytes in the middle of the strips (OpenCV writes its directory after them)."""
    assert struct.unpack("<I", data[4:8])[0] > len(data) // 2 + count
    middle = len(data) // 2
    return data[:middle] + bytes(count) + data[middle + count :]


@pytest.mark.parametrize("codec", list(TIFF_CODECS))
def test_damaged_tiff_strips_are_a_named_failure_under_every_policy(tmp_path, rng, codec):
    clean = compressed_tiff(rng, codec)
    damaged = zeroed_middle(clean)
    decoded = opencv(damaged)  # the premise: OpenCV decodes it without an error, some rows made up
    assert decoded is not None and not np.array_equal(decoded, opencv(clean))
    paths = []
    for name, data in (("a", clean), ("b", damaged), ("c", clean)):
        (tmp_path / f"{name}.tif").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.tif"))
    for on_error in ("skip", "zero"):
        ds = preload.load(paths, color="bgr", on_error=on_error, progress=False, workers=2)
        assert [(f.index, f.reason) for f in ds.failed] == [(1, Reason.DAMAGED)]
        assert ds.failed[0].detail.startswith("damaged TIFF data: ")
        assert np.array_equal(ds.images[0], opencv(clean))
    with pytest.raises(preload.ImageDecodeError, match=r"damaged TIFF data: .*\[damaged\]") as caught:
        preload.load(paths, size=16, progress=False)
    assert caught.value.path == paths[1]


def test_what_libtiff_says_about_each_codec_is_named(tmp_path, rng):
    said = {}
    for codec in ("lzw", "packbits", "jpeg", "deflate"):
        path = tmp_path / f"{codec}.tif"
        path.write_bytes(zeroed_middle(compressed_tiff(rng, codec)))
        said[codec] = only_failure(str(path)).detail
    assert said["lzw"].startswith("damaged TIFF data: libtiff reports 'LZWDecode: ")
    assert said["packbits"].startswith("damaged TIFF data: libtiff reports 'PackBitsDecode: Discarding ")
    assert said["jpeg"].startswith("damaged TIFF data: libtiff reports 'JPEGLib: Corrupt JPEG data")
    # nothing reports damaged Deflate data that still inflates to the strip's length: zlib's Adler-32 does
    assert said["deflate"].startswith("damaged TIFF data: the Deflate stream of strip or tile ")
    assert "incorrect data check" in said["deflate"]


def test_tiff_directory_quirks_libtiff_repairs_still_load(tmp_path, rng):
    """An unknown tag, a tag of the wrong count or value: libtiff complains, ignores it, the pixels are intact."""
    image = smooth_image(rng, 12, 10)
    strip = [np.ascontiguousarray(image[:, :, ::-1]).tobytes()]
    cases = {
        "unknown-tag": {40000: (3, [5])},
        "orientation-twice-over": {274: (3, [6, 6])},  # "Incorrect count for Orientation; tag ignored"
        "orientation-9": {274: (3, [9])},  # an error: "Bad value 9 for Orientation tag"
        "resolution-unit-long8": {296: (16, [2])},
    }
    paths = []
    for name, extra in cases.items():
        (tmp_path / f"{name}.tif").write_bytes(tiff({**rgb_tiff_tags(12, 10), **extra}, strip))
        paths.append(str(tmp_path / f"{name}.tif"))
    ds = preload.load(paths, color="bgr", on_error="skip", progress=False)
    assert ds.failed == []
    assert all(np.array_equal(row, image) for row in ds.images)


def test_a_deflate_tiff_of_many_strips_and_tiles_loads_unchanged(tmp_path, rng):
    tifffile = pytest.importorskip("tifffile")
    image = smooth_image(rng, 64, 80)
    paths = []
    for name, layout in (("strips", {"rowsperstrip": 3}), ("tiles", {"tile": (32, 32)})):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, image[:, :, ::-1], photometric="rgb", compression="zlib", predictor=True, **layout)
        paths.append(str(path))
        chunks = preload.headers.probe(str(path)).zlib_chunks
        assert len(chunks) == (22 if name == "strips" else 6)
    ds = preload.load(paths, color="bgr", progress=False)
    assert all(np.array_equal(row, image) for row in ds.images)


def test_decoder_warnings_are_attributed_to_their_own_file_across_threads(tmp_path, rng, monkeypatch):
    """Damaged and intact TIFFs and JPEGs only OpenCV decodes, with PNGs between them, on 4 threads."""
    monkeypatch.setattr(preload.decode, "_turbo_decodes", lambda info: False)  # every JPEG through OpenCV's libjpeg
    jpeg = cv2.imencode(".jpg", np.clip(smooth_image(rng, 96, 128) + rng.integers(0, 40, (96, 128, 3)), 0, 255)
                        .astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    scan = jpeg.index(b"\xff\xda")
    middle = (scan + len(jpeg)) // 2
    kinds = {
        "lzw": compressed_tiff(rng, "lzw", 96, 128),
        "packbits": compressed_tiff(rng, "packbits", 96, 128),
        "jpeg": jpeg,
    }
    damaged = {
        "lzw": zeroed_middle(kinds["lzw"], 1024),
        "packbits": zeroed_middle(kinds["packbits"], 1024),
        "jpeg": jpeg[:middle] + bytes(1024) + jpeg[middle + 1024 :],
    }
    png = cv2.imencode(".png", smooth_image(rng, 96, 128))[1].tobytes()
    files = [(kind, bad) for kind in kinds for bad in (False, True)] * 4 + [("png", False)] * 8
    paths, expected = [], []
    for k, (kind, bad) in enumerate(files[i] for i in rng.permutation(len(files))):
        data = png if kind == "png" else damaged[kind] if bad else kinds[kind]
        path = tmp_path / f"{k:02d}.img"
        path.write_bytes(data)
        paths.append(str(path))
        if bad:
            expected.append(k)
    for _ in range(3):
        ds = preload.load(paths, size=32, on_error="zero", progress=False, workers=4)
        assert [f.index for f in ds.failed] == expected
        assert {f.reason for f in ds.failed} == {Reason.DAMAGED}
