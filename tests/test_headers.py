"""Header parsing: the sizes, orientation and truncation preload reads before decoding."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image, with_exif_orientation
from preload import headers


@pytest.mark.parametrize(
    "ext, params, fmt",
    [(".jpg", [], "jpeg"), (".png", [], "png"), (".bmp", [], "bmp"), (".tif", [], "tiff"),
     (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "webp"), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "webp")],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_size_of_every_format(rng, ext, params, fmt, channels):
    image = smooth_image(rng, 37, 53, channels)
    data = cv2.imencode(ext, image, params)[1].tobytes()
    info = headers.parse(data, "x", complete=True)
    assert (info.format, info.height, info.width, info.orientation) == (fmt, 37, 53, 1)


def test_exif_orientation_and_oriented_size(rng):
    data = with_exif_orientation(cv2.imencode(".jpg", smooth_image(rng, 10, 20))[1].tobytes(), 6)
    info = headers.parse(data, "x", complete=True)
    assert info.orientation == 6
    assert info.oriented_size(exif=True) == (20, 10)
    assert info.oriented_size(exif=False) == (10, 20)


def test_probe_reads_past_large_app_segments(tmp_path, rng):
    data = cv2.imencode(".jpg", smooth_image(rng, 16, 24))[1].tobytes()
    for _ in range(3):  # three 60 KB APP2 segments push the frame header past the first 64 KB
        payload = b"\x00" * 60_000
        data = data[:2] + b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    path = tmp_path / "icc.jpg"
    path.write_bytes(data)
    info = headers.probe(str(path))
    assert (info.height, info.width) == (16, 24)


def test_unknown_signature_has_no_size():
    info = headers.parse(b"\x00\x01junk" + bytes(16), "x.bin", complete=True)
    assert (info.format, info.height, info.unsupported) == ("other", None, None)


def test_pnm_size_with_comments():
    info = headers.parse(b"P6\n# made by hand\n 7  5\n255\n" + bytes(105), "x.ppm", complete=True)
    assert (info.format, info.height, info.width) == ("pnm", 5, 7)


def test_pgm_from_a_path_list_still_loads(tmp_path, rng):
    gray = smooth_image(rng, 6, 9, 1)
    path = tmp_path / "a.pgm"
    assert cv2.imwrite(str(path), gray)
    ds = preload.load([str(path)], color="gray", progress=False)
    assert np.array_equal(ds.images[0, :, :, 0], gray)


def test_jpeg_with_extra_bytes_after_the_end_marker_is_complete(rng):
    data = cv2.imencode(".jpg", smooth_image(rng, 16, 16))[1].tobytes() + b"\x00" * 50 + b"trailer"
    assert headers.parse(data, "x", complete=True).format == "jpeg"


def test_png_cut_inside_its_header():
    with pytest.raises(preload.ImageDecodeError, match="ends inside its header") as caught:
        headers.parse(b"\x89PNG\r\n\x1a\n\x00\x00", "x.png", complete=True)
    assert caught.value.reason == preload.Reason.TRUNCATED


def test_exif_orientation_stored_as_long_is_read(rng):
    ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x0112, 4, 1, 6) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    jpeg = cv2.imencode(".jpg", smooth_image(rng, 10, 20))[1].tobytes()
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
    assert headers.parse(data, "x", complete=True).orientation == 6


def test_a_tiff_directory_at_the_end_of_the_file_is_read_by_offset(tmp_path, rng):
    path = tmp_path / "big.tif"
    assert cv2.imwrite(str(path), smooth_image(rng, 300, 400))  # libtiff writes the directory after the strips
    data = path.read_bytes()
    assert struct.unpack_from("<I", data, 4)[0] > headers.HEADER_BYTES
    info = headers.probe(str(path))
    assert (info.format, info.height, info.width) == ("tiff", 300, 400)
