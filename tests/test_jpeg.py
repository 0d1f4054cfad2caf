"""JPEG decoding through simplejpeg: damaged data is a failure, header quirks still load, zero copies."""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np
import pytest
import simplejpeg

import preload
from conftest import smooth_image, write
from preload import decode, headers
from preload.errors import ImageDecodeError, Reason


def detailed_jpeg(rng, height=384, width=512, quality=92, *params) -> bytes:
    """A JPEG with plenty of entropy-coded data (smooth shapes plus noise): ~100 KB."""
    image = smooth_image(rng, height, width)
    noise = rng.integers(-40, 40, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality, *params])
    assert ok
    return encoded.tobytes()


def reference(data: bytes, flags=cv2.IMREAD_COLOR_RGB) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def scan_start(data: bytes) -> int:
    return data.index(b"\xff\xda")


def zeroed(data: bytes) -> bytes:
    middle = (scan_start(data) + len(data)) // 2
    return data[:middle] + bytes(4096) + data[middle + 4096 :]


def garbage(data: bytes, rng) -> bytes:
    middle = (scan_start(data) + len(data)) // 2
    return data[:middle] + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() + data[middle + 4096 :]


def cut_with_end_marker(data: bytes) -> bytes:
    return data[: len(data) // 2] + b"\xff\xd9"


def insert_before(data: bytes, marker: bytes, extra: bytes) -> bytes:
    at = data.index(marker)
    return data[:at] + extra + data[at:]


DAMAGES = {
    "4 KB zeroed mid-scan": lambda data, rng: zeroed(data),
    "4 KB of garbage mid-scan": garbage,
    "cut at 50% with FFD9 appended": lambda data, rng: cut_with_end_marker(data),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_scan_decodes_in_opencv_but_is_a_named_failure(tmp_path, rng, damage):
    data = DAMAGES[damage](detailed_jpeg(rng), rng)
    assert reference(data) is not None  # libjpeg alone "recovers": gray or garbage rows, no error
    path = tmp_path / "damaged.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match=r"damaged JPEG data: libjpeg reports .*(Corrupt|marker)") as caught:
        preload.load([str(path)], size=64, progress=False)
    assert caught.value.reason is Reason.DAMAGED
    assert str(caught.value.reason) == "damaged"
    assert caught.value.path == str(path)


@pytest.mark.parametrize("on_error", ["skip", "zero"])
@pytest.mark.parametrize("size", [None, 64])
def test_damaged_files_are_listed_under_every_policy(tmp_path, rng, on_error, size):
    good = detailed_jpeg(rng)
    paths = []
    for name, data in (("a", good), ("b", zeroed(good)), ("c", good), ("d", cut_with_end_marker(good))):
        (tmp_path / f"{name}.jpg").write_bytes(data)
        paths.append(str(tmp_path / f"{name}.jpg"))
    ds = preload.load(paths, size=size, on_error=on_error, progress=False, workers=2)
    assert [(f.index, f.reason) for f in ds.failed] == [(1, Reason.DAMAGED), (3, Reason.DAMAGED)]
    # zeroed data decodes as short codes: libjpeg runs out of blocks before data ("extraneous bytes")
    assert "Corrupt JPEG data" in ds.failed[0].detail
    assert "premature end of data segment" in ds.failed[1].detail
    if on_error == "skip":
        assert ds.paths == [paths[0], paths[2]]
    else:
        assert len(ds.images) == 4
        assert not ds.images[1].any() and not ds.images[3].any()
    if size is None:
        assert np.array_equal(ds.images[0], reference(good))


@pytest.mark.parametrize("marker", [b"\xff\xdb", b"\xff\xc4", b"\xff\xc0", b"\xff\xda"])
@pytest.mark.parametrize("extra", [b"\x00", b"\x12\x34\x56", b"\xff\x00\x07"])
def test_stray_header_bytes_load_with_intact_pixels(tmp_path, rng, marker, extra):
    clean = detailed_jpeg(rng, 96, 128)
    data = insert_before(clean, marker, extra)
    with pytest.raises(ValueError, match="extraneous bytes before marker"):
        simplejpeg.decode_jpeg(data, strict=True)  # what a decoder rejecting every warning does
    path = tmp_path / "quirk.jpg"
    path.write_bytes(data)
    ds = preload.load([str(path)], progress=False)
    assert ds.failed == []
    assert np.array_equal(ds.images[0], reference(clean))


def test_a_segment_length_one_short_loads(tmp_path, rng):
    """Like Pillow's truncated_app14.jpg: an APP14 that claims one byte less than it holds."""
    clean = detailed_jpeg(rng, 64, 96)
    payload = b"Adobe\x00\x64\x00\x00\x00\x00\x01"  # transform 1: YCbCr, as libjpeg assumes anyway
    short = b"\xff\xee" + struct.pack(">H", len(payload) + 1) + payload  # length 1 short
    data = clean[:2] + short + clean[2:]
    info = headers.parse(data, "x.jpg", complete=True)
    assert info.jpeg.junk == ((2 + 4 + len(payload) - 1, 2 + 4 + len(payload), 1, 0xE0),)
    path = tmp_path / "app14.jpg"
    path.write_bytes(data)
    assert np.array_equal(preload.load([str(path)], progress=False).images[0], reference(clean))


def test_stray_header_bytes_do_not_hide_a_damaged_scan(tmp_path, rng):
    data = insert_before(zeroed(detailed_jpeg(rng)), b"\xff\xdb", b"\x00")
    path = tmp_path / "both.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match="libjpeg reports 'Corrupt JPEG data") as caught:
        preload.load([str(path)], size=32, progress=False)
    assert caught.value.reason is Reason.DAMAGED


def with_unknown_jfif_version(data: bytes) -> bytes:
    assert data[6:11] == b"JFIF\x00"
    return data[:11] + b"\x03" + data[12:]  # version 3.01: libjpeg warns, then decodes as for 1.01


def with_unknown_adobe_transform(data: bytes) -> bytes:
    """The JFIF segment replaced by an Adobe one of transform 5: libjpeg warns, then assumes YCbCr."""
    assert data[2:4] == b"\xff\xe0"
    adobe = b"\xff\xee\x00\x0e" + b"Adobe\x00\x64\x00\x00\x00\x00\x05"
    return data[:2] + adobe + data[4 + struct.unpack(">H", data[4:6])[0] :]


def with_odd_scan_parameters(data: bytes) -> bytes:
    """A baseline scan header saying coefficients 0..62: libjpeg warns, then decodes all 64 as always."""
    sos = scan_start(data)
    at = sos + 5 + 2 * data[sos + 4] + 1  # Se
    assert data[at] == 63
    return data[:at] + b"\x3e" + data[at + 1 :]


QUIRKS = {
    "unknown JFIF version": (with_unknown_jfif_version, "unknown JFIF revision"),
    "unknown Adobe transform": (with_unknown_adobe_transform, "Unknown Adobe color transform"),
    "odd scan parameters": (with_odd_scan_parameters, "Invalid SOS parameters"),
    "stray header bytes": (lambda data: insert_before(data, b"\xff\xdb", b"\x12\x34"), "extraneous bytes"),
}


@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_header_quirks_are_repaired_and_decoded_strictly_with_the_same_pixels(tmp_path, rng, monkeypatch, quirk):
    make, warning = QUIRKS[quirk]
    clean = detailed_jpeg(rng, 64, 96)
    data = make(clean)
    with pytest.raises(ValueError, match=warning):
        simplejpeg.decode_jpeg(data, strict=True)  # what a decoder rejecting every warning does
    assert np.array_equal(reference(data), reference(clean))  # libjpeg's own recovery: the same pixels
    path = tmp_path / "quirk.jpg"
    path.write_bytes(data)
    calls = spy_on_simplejpeg(monkeypatch)
    ds = preload.load([str(path)], progress=False)
    assert ds.failed == []
    assert np.array_equal(ds.images[0], reference(clean))
    assert len(calls) == 2  # refused with the quirk, decoded without it: not OpenCV, which would hide damage


@pytest.mark.parametrize("on_error", ["raise", "skip", "zero"])
@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_a_header_quirk_does_not_hide_a_damaged_scan(tmp_path, rng, quirk, on_error):
    """libjpeg prints only its first warning: a quirk decoded as it is would hide the damage after it."""
    make, _ = QUIRKS[quirk]
    path = tmp_path / "both.jpg"
    path.write_bytes(make(zeroed(detailed_jpeg(rng))))
    if on_error == "raise":
        with pytest.raises(ImageDecodeError, match="libjpeg reports 'Corrupt JPEG data") as caught:
            preload.load([str(path)], size=32, progress=False)
        assert caught.value.reason is Reason.DAMAGED
        return
    ds = preload.load([str(path)], size=32, on_error=on_error, progress=False)
    assert [(f.index, f.reason) for f in ds.failed] == [(0, Reason.DAMAGED)]
    assert "extraneous bytes before marker 0xd9" in ds.failed[0].detail


@pytest.mark.parametrize("complete", [True, False])
def test_junk_records_what_libjpeg_skips(complete):
    body = b"\xff\xdb\x00\x04\x00\x00" + b"\xc0\xff\xff\x00\x11\xff\xff\xc4\x00\x02"
    # complete=False: only 7 bytes are at hand, the rest comes through read_at (the pread path)
    src = headers._Source(body if complete else body[:7], complete, lambda at, n: body[at : at + n], len(body))
    junk = []
    at, marker = headers._next_marker(src, 6, "x.jpg", junk)
    # c0 (1) + ffff00 (2) + 11 (1) = 4 bytes counted; the fill FFs before FFC4 are not
    assert (at, marker) == (12, 0xC4) and body[at : at + 2] == b"\xff\xc4"
    assert junk == [(6, 11, 4, 0xC4)]


def test_fill_bytes_before_a_marker_are_not_junk():
    body = b"\xff\xdb\x00\x02\xff\xff\xff\xc4\x00\x02"
    junk = []
    assert headers._next_marker(headers._Source(body, True, None, None), 4, "x.jpg", junk) == (6, 0xC4)
    assert junk == []


# ---------------------------------------------------------------- what decodes where


def spy_on_simplejpeg(monkeypatch) -> list[dict]:
    calls = []
    real = simplejpeg.decode_jpeg

    def spy(data, colorspace="rgb", **kwargs):
        calls.append({"colorspace": colorspace, **kwargs})
        return real(data, colorspace, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    return calls


@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("size", [None, (96, 128)])
def test_no_resize_decodes_straight_into_the_slot(tmp_path, rng, monkeypatch, color, size):
    data = detailed_jpeg(rng, 96, 128)
    paths = []
    for k in range(3):
        (tmp_path / f"{k}.jpg").write_bytes(data)
        paths.append(str(tmp_path / f"{k}.jpg"))
    out = np.zeros((3, 96, 128, 1 if color == "gray" else 3), np.uint8)
    calls = spy_on_simplejpeg(monkeypatch)
    preload.load(paths, size=size, color=color, out=out, progress=False, workers=1)
    assert len(calls) == 3
    assert all(np.shares_memory(call["buffer"], out[k]) for k, call in enumerate(calls))
    flags = {"rgb": cv2.IMREAD_COLOR_RGB, "bgr": cv2.IMREAD_COLOR_BGR, "gray": cv2.IMREAD_GRAYSCALE}[color]
    assert np.array_equal(out[2].reshape(reference(data, flags).shape), reference(data, flags))


def test_nchw_and_rotated_images_are_not_decoded_into_the_slot(tmp_path, rng, monkeypatch):
    path = write(tmp_path / "a.jpg", smooth_image(rng, 48, 64))
    calls = spy_on_simplejpeg(monkeypatch)
    ds = preload.load([path], layout="NCHW", progress=False)
    assert calls[0]["buffer"] is not None and not np.shares_memory(calls[0]["buffer"], ds.images)
    assert np.array_equal(ds.images[0], reference(open(path, "rb").read()).transpose(2, 0, 1))


def test_a_jpeg_headed_for_a_resize_is_decoded_into_one_reused_buffer(tmp_path, rng, monkeypatch):
    # A fresh array per image would be a fresh mmap whose pages fault in again every time.
    paths = [write(tmp_path / f"{k}.jpg", smooth_image(rng, 48, 64)) for k in range(3)]
    calls = spy_on_simplejpeg(monkeypatch)
    ds = preload.load(paths, size=(24, 32), workers=1, progress=False)
    buffers = [call["buffer"] for call in calls]
    assert len(buffers) == 3 and all(buffer is not None for buffer in buffers)
    assert len({buffer.__array_interface__["data"][0] for buffer in buffers}) == 1
    for path, image in zip(paths, ds.images, strict=True):
        expected = cv2.resize(reference(open(path, "rb").read()), (32, 24), interpolation=cv2.INTER_AREA)
        assert np.abs(image.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reduced_decode_gives_opencvs_reduced_pixels(tmp_path, rng, factor):
    data = detailed_jpeg(rng, 300, 412)  # not multiples of 8: the scaled sizes round up
    decoder = decode.Decoder(decode.DecodeOptions.create(size=(300 // factor // 2, 412 // factor // 2)))
    info = headers.parse(data, "a.jpg", complete=True)
    image, complaint = decoder._decode_jpeg(data, "a.jpg", info, factor, None, None)
    assert complaint == ""
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), flag)[:, :, ::-1]
    assert image.shape == (-(-300 // factor), -(-412 // factor), 3)
    assert np.array_equal(image, expected)


def test_progressive_jpeg_is_simplejpegs_with_opencvs_pixels(tmp_path, rng, monkeypatch):
    data = detailed_jpeg(rng, 96, 128, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert headers.parse(data, "p.jpg", complete=True).jpeg.sof == 0xC2
    path = tmp_path / "p.jpg"
    path.write_bytes(data)
    calls = spy_on_simplejpeg(monkeypatch)
    assert np.array_equal(preload.load([str(path)], progress=False).images[0], reference(data))
    assert len(calls) == 1


def cmyk_jpeg(rng, height=120, width=160) -> bytes:
    image = np.dstack([smooth_image(rng, height, width), smooth_image(rng, height, width, 1)])
    noise = rng.integers(-30, 30, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    return simplejpeg.encode_jpeg(image, 95, "CMYK")


def test_cmyk_jpeg_is_decoded_by_opencv_and_checked_by_simplejpeg(tmp_path, rng, monkeypatch):
    data = cmyk_jpeg(rng, 40, 56)
    assert headers.parse(data, "c.jpg", complete=True).jpeg.components == 4
    path = tmp_path / "c.jpg"
    path.write_bytes(data)
    calls = spy_on_simplejpeg(monkeypatch)
    ds = preload.load([str(path)], progress=False)
    # OpenCV's pixels (its CMYK conversion); simplejpeg only reads the data strictly, at 1/8 scale
    assert np.array_equal(ds.images[0], reference(data))
    assert [(call["colorspace"], call["min_factor"]) for call in calls] == [("CMYK", 8)]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cmyk_jpeg_is_a_named_failure(tmp_path, rng, damage):
    data = DAMAGES[damage](cmyk_jpeg(rng), rng)
    assert reference(data) is not None  # OpenCV alone decodes it, with made-up rows
    path = tmp_path / "c.jpg"
    path.write_bytes(data)
    ds = preload.load([str(path)], size=32, on_error="zero", progress=False)
    assert [(f.index, f.reason) for f in ds.failed] == [(0, Reason.DAMAGED)]
    assert "libjpeg reports" in ds.failed[0].detail


def test_damage_in_a_jpeg_only_opencv_decodes_is_attributed_to_its_file(tmp_path, rng, monkeypatch):
    """12-bit, lossless or arithmetic-coded: libjpeg's printed warning is the only report of damage."""
    monkeypatch.setattr(decode, "_turbo_decodes", lambda info: False)
    calls = spy_on_simplejpeg(monkeypatch)
    good = detailed_jpeg(rng, 128, 160)
    files = [good, zeroed(good), with_unknown_jfif_version(good), cut_with_end_marker(good),
             with_unknown_jfif_version(zeroed(good)), good]
    paths = []
    for k, data in enumerate(files):
        (tmp_path / f"{k}.jpg").write_bytes(data)
        paths.append(str(tmp_path / f"{k}.jpg"))
    ds = preload.load(paths, size=None, on_error="skip", progress=False, workers=3)
    assert calls == []
    assert [(f.index, f.reason) for f in ds.failed] == [(1, Reason.DAMAGED), (3, Reason.DAMAGED), (4, Reason.DAMAGED)]
    assert "premature end of data segment" in ds.failed[1].detail
    assert ds.paths == [paths[0], paths[2], paths[5]]
    assert all(np.array_equal(image, reference(good)) for image in ds.images)


@pytest.mark.parametrize("exif", [True, False])
def test_orientation_is_applied_like_opencv(tmp_path, rng, exif):
    from conftest import with_exif_orientation

    data = with_exif_orientation(detailed_jpeg(rng, 40, 64), 6)
    path = tmp_path / "r.jpg"
    path.write_bytes(data)
    flags = cv2.IMREAD_COLOR_RGB | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION)
    ds = preload.load([str(path)], exif=exif, progress=False)
    assert ds.images.shape[1:3] == ((64, 40) if exif else (40, 64))
    assert np.array_equal(ds.images[0], reference(data, flags))


def test_junk_past_the_first_read_is_found_by_pread_and_cut_out(tmp_path, rng):
    """Stray bytes beyond the first 64 KB: the header parse reads them by byte range, decode cuts them."""
    clean = detailed_jpeg(rng, 64, 96)
    filler = b"".join(b"\xff\xe2" + struct.pack(">H", 60_002) + bytes(60_000) for _ in range(2))
    data = insert_before(clean[:2] + filler + clean[2:], b"\xff\xdb", b"\x12\x34\x56")
    at = data.index(b"\x12\x34\x56\xff\xdb")
    assert at > headers.HEADER_BYTES
    path = tmp_path / "far.jpg"
    path.write_bytes(data)
    whole, info = decode.read_file(str(path))
    assert info.jpeg.junk == ((at, at + 3, 3, 0xDB),)
    assert headers.parse(data, "far.jpg", complete=True).jpeg == info.jpeg  # whole bytes and pread agree
    assert bytes(whole) == data
    assert np.array_equal(preload.load([str(path)], progress=False).images[0], reference(clean))


@pytest.mark.parametrize("route", ["simplejpeg", "opencv"])
@pytest.mark.parametrize("exif", [True, False])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_applied_once_on_every_jpeg_route(tmp_path, rng, monkeypatch, route, exif, orientation):
    from conftest import with_exif_orientation

    data = with_exif_orientation(detailed_jpeg(rng, 40, 64), orientation)
    path = tmp_path / "r.jpg"
    path.write_bytes(data)
    if route == "opencv":  # what a 12-bit or arithmetic-coded JPEG takes (no writer at hand makes one)
        monkeypatch.setattr(decode, "_turbo_decodes", lambda info: False)
    # OpenCV's own reader turns JPEGs as their EXIF says: the reference, independent of preload's turning
    expected = reference(data, cv2.IMREAD_COLOR_RGB | (0 if exif else cv2.IMREAD_IGNORE_ORIENTATION))
    assert expected.shape[:2] == ((64, 40) if exif and orientation >= 5 else (40, 64))
    out = np.zeros((1, *expected.shape), np.uint8)
    calls = spy_on_simplejpeg(monkeypatch)
    ds = preload.load([str(path)], exif=exif, out=out, progress=False, workers=1)
    assert ds.failed == []
    assert np.array_equal(out[0], expected)
    straight = [call["buffer"] is not None and np.shares_memory(call["buffer"], out) for call in calls]
    if route == "opencv":
        assert calls == []
    else:  # into the slot only when nothing must turn
        assert straight == [not exif or orientation == 1]


# ------------------------------------------------------------------ the fresh RAM array


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping holding ``address``, from /proc/self/smaps."""
    flags, inside = None, False
    with open("/proc/self/smaps", encoding="ascii") as handle:
        for line in handle:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, stop = (int(part, 16) for part in head.split("-"))
                inside = start <= address < stop
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    assert flags is not None
    return flags


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
def test_a_fresh_ram_array_is_not_advised_into_huge_pages():
    from preload.target import allocate

    array = allocate(None, (40, 3, 256, 256)).array  # 7.9 MB: NumPy would advise huge pages
    assert array.flags.writeable and array.flags.c_contiguous
    middle = array.ctypes.data + array.nbytes // 2  # NumPy advises the 2 MiB-aligned middle
    assert "nh" in _vm_flags(middle)  # MADV_NOHUGEPAGE
    assert "hg" not in _vm_flags(middle)
    array[-1] = 5
    assert int(array[-1].sum()) == 5 * 3 * 256 * 256 and not array[0].any()


@pytest.mark.parametrize("resize", ["shorter", "cover", "fit", "stretch"])
def test_a_jpeg_of_the_slots_size_is_resized_like_a_png_in_every_mode(tmp_path, rng, resize):
    # Straight into the slot only when the plan is the identity: under "shorter" a 200x300 image
    # in a 200x300 slot is scaled 1.5x and centre-cropped, whatever its format.
    jpeg = write(tmp_path / "a.jpg", smooth_image(rng, 200, 300))
    png = write(tmp_path / "a.png", cv2.imread(jpeg))
    out = {path: preload.load([path], size=(200, 300), resize=resize, progress=False).images[0] for path in (jpeg, png)}
    assert np.array_equal(out[jpeg], out[png])
