"""Bad files: every reason, every error policy, and nothing from OpenCV reaching the user."""

from __future__ import annotations

import logging
import struct
import zlib

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image, write
from preload import Reason


def _good(tmp_path, rng, name, color=(0, 0, 0)):
    image = np.empty((20, 20, 3), np.uint8)
    image[...] = color
    return write(tmp_path / name, image)


def _jpeg_bytes(rng):
    return cv2.imencode(".jpg", smooth_image(rng, 64, 64))[1].tobytes()


def _png_bytes(rng):
    return cv2.imencode(".png", smooth_image(rng, 64, 64))[1].tobytes()


def _make_bad(tmp_path, rng, kind: str) -> str:
    path = tmp_path / f"bad-{kind}.jpg"
    if kind == "missing":
        return str(tmp_path / "nowhere.jpg")
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_bytes(b"this is not an image\n" * 10)
    elif kind == "truncated-jpeg":
        path.write_bytes(_jpeg_bytes(rng)[:-200])
    elif kind == "cut-jpeg-header":
        path.write_bytes(_jpeg_bytes(rng)[:100])
    elif kind == "truncated-png":
        path = path.with_suffix(".png")
        path.write_bytes(_png_bytes(rng)[:-100])
    elif kind == "corrupt-png":
        data = bytearray(_png_bytes(rng))
        data[100:300] = b"\x55" * 200
        path = path.with_suffix(".png")
        path.write_bytes(bytes(data))
    elif kind == "bomb-png":  # a valid PNG header (right CRC) claiming 100000 x 100000
        data = bytearray(_png_bytes(rng))
        data[16:24] = struct.pack(">II", 100_000, 100_000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        path = path.with_suffix(".png")
        path.write_bytes(bytes(data))
    elif kind == "bomb-ppm":  # a format preload parses too: 30000 x 30000 announced in 20 bytes
        path = path.with_suffix(".ppm")
        path.write_bytes(b"P6\n30000 30000\n255\n" + bytes(30))
    elif kind == "bomb-jpeg":  # SOF claims 65000 x 65000
        data = bytearray(_jpeg_bytes(rng))
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
        path.write_bytes(bytes(data))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return str(path)


CASES = [
    ("missing", Reason.MISSING, "no such file"),
    ("directory", Reason.UNREADABLE, "directory"),
    ("empty", Reason.EMPTY, "empty"),
    ("text", Reason.NOT_AN_IMAGE, "not an image"),
    ("truncated-jpeg", Reason.TRUNCATED, "no end-of-image marker"),
    ("cut-jpeg-header", Reason.TRUNCATED, "ends inside its header"),
    ("truncated-png", Reason.TRUNCATED, "no IEND chunk"),
    ("corrupt-png", Reason.CORRUPT, "corrupt PNG"),
    ("bomb-png", Reason.TOO_LARGE, r"100000x100000 = 10,000,000,000 pixels"),
    ("bomb-jpeg", Reason.TOO_LARGE, r"65000x65000"),
    ("bomb-ppm", Reason.TOO_LARGE, r"30000x30000 = 900,000,000 pixels"),
]


@pytest.mark.parametrize("kind, reason, words", CASES)
def test_raise_names_the_file_and_the_reason(tmp_path, rng, kind, reason, words):
    bad = _make_bad(tmp_path, rng, kind)
    good = _good(tmp_path, rng, "good.png")
    with pytest.raises(preload.ImageDecodeError, match=words) as caught:
        preload.load([good, bad], size=16, progress=False)
    assert caught.value.path == bad
    assert caught.value.reason == reason
    assert f"'{bad}'" in str(caught.value)
    assert isinstance(caught.value, preload.PreloadError)


@pytest.mark.parametrize("kind, reason, words", CASES)
def test_skip_drops_the_file_and_keeps_rows_aligned(tmp_path, rng, kind, reason, words):
    first = _good(tmp_path, rng, "first.png", (255, 0, 0))
    bad = _make_bad(tmp_path, rng, kind)
    last = _good(tmp_path, rng, "last.png", (0, 0, 255))
    ds = preload.load([first, bad, last], labels=[10, 20, 30], size=8, color="bgr", on_error="skip", progress=False)
    assert ds.paths == [first, last]
    assert ds.labels.tolist() == [10, 30]
    assert ds.images.shape == (2, 8, 8, 3)
    assert ds.images[0, 0, 0].tolist() == [255, 0, 0]
    assert ds.images[1, 0, 0].tolist() == [0, 0, 255]
    assert [(f.index, f.path, f.reason) for f in ds.failed] == [(1, bad, reason)]


@pytest.mark.parametrize("kind, reason, words", CASES)
def test_zero_leaves_a_zero_slot(tmp_path, rng, kind, reason, words):
    first = _good(tmp_path, rng, "first.png", (9, 9, 9))
    bad = _make_bad(tmp_path, rng, kind)
    ds = preload.load([first, bad], size=8, on_error="zero", progress=False)
    assert ds.paths == [first, bad]
    assert ds.images.shape == (2, 8, 8, 3)
    assert (ds.images[0] == 9).all()
    assert not ds.images[1].any()
    assert [(f.index, f.reason) for f in ds.failed] == [(1, reason)]


def test_zero_overwrites_a_partly_written_slot(tmp_path, rng):
    bad = _make_bad(tmp_path, rng, "text")
    out = np.full((1, 8, 8, 3), 77, np.uint8)
    preload.load([bad], size=8, out=out, on_error="zero", progress=False)
    assert not out.any()


@pytest.mark.parametrize("kind", ["bomb-png", "bomb-jpeg", "bomb-ppm"])
def test_bomb_is_refused_before_the_decoder_sees_it(tmp_path, rng, monkeypatch, kind):
    bad = _make_bad(tmp_path, rng, kind)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("the decoder was called on a bomb"))
    ds = preload.load([bad], size=8, on_error="skip", progress=False)
    assert ds.failed[0].reason == Reason.TOO_LARGE


def test_max_pixels_is_configurable(tmp_path, rng):
    path = write(tmp_path / "a.png", smooth_image(rng, 40, 50))
    with pytest.raises(preload.ImageDecodeError, match=r"40 = 2,000 pixels, more than max_pixels=1,999"):
        preload.load([path], size=8, max_pixels=1999, progress=False)
    assert len(preload.load([path], size=8, max_pixels=2000, progress=False)) == 1


def test_decoder_chatter_is_captured_and_summarised(tmp_path, rng, capfd, caplog):
    bad = _make_bad(tmp_path, rng, "corrupt-png")  # libpng prints "libpng error: ..." itself
    with caplog.at_level(logging.WARNING, logger="preload"):
        ds = preload.load([bad], size=8, on_error="skip", progress=False)
    captured = capfd.readouterr()
    assert "libpng" not in captured.err
    assert "Traceback" not in captured.err
    assert ds.failed[0].reason == Reason.CORRUPT
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "1 of 1 files were not loaded" in messages
    assert "libpng" in messages  # the summary keeps what the decoder said, once


def test_raise_stops_early_on_many_files(tmp_path, rng, monkeypatch):
    bad = _make_bad(tmp_path, rng, "empty")
    good = _good(tmp_path, rng, "g.png")
    calls = []
    real = preload.decode.Decoder.decode_into

    def counting(self, path, slot):
        calls.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(preload.decode.Decoder, "decode_into", counting)
    with pytest.raises(preload.ImageDecodeError):
        preload.load([bad] + [good] * 2000, size=8, workers=2, progress=False)
    assert len(calls) < 1000  # queued chunks were dropped


def test_first_failure_by_index_is_raised(tmp_path, rng):
    early = _make_bad(tmp_path, rng, "empty")
    late = _make_bad(tmp_path, rng, "text")
    good = _good(tmp_path, rng, "g.png")
    with pytest.raises(preload.ImageDecodeError) as caught:
        preload.load([good, early, good, late], size=8, workers=1, progress=False)
    assert caught.value.path == early


def test_bad_on_error_value(tmp_path, rng):
    good = _good(tmp_path, rng, "g.png")
    with pytest.raises(preload.OptionError, match=r"on_error='ignore'.*'raise', 'skip', 'zero'"):
        preload.load([good], size=8, on_error="ignore")


def test_on_error_is_case_insensitive(tmp_path, rng):
    bad = _make_bad(tmp_path, rng, "empty")
    assert len(preload.load([bad], size=8, on_error="Zero", progress=False)) == 1


def test_zero_clears_a_slot_the_decoder_wrote_before_it_failed(tmp_path, rng, monkeypatch):
    # Not the caller's garbage this time: real pixels the decoder put in the slot before failing, in a RAM target.
    paths = [_good(tmp_path, rng, f"{k}.png", (k * 50,) * 3) for k in (1, 2, 3)]
    real = preload.decode.Decoder.decode_into

    def write_then_fail(self, path, slot):
        real(self, path, slot)
        if path == paths[1]:
            raise preload.ImageDecodeError(path, Reason.CORRUPT, "failed after writing its slot")

    monkeypatch.setattr(preload.decode.Decoder, "decode_into", write_then_fail)
    ds = preload.load(paths, size=8, layout="NCHW", on_error="zero", workers=2, progress=False)
    assert ds.images.shape == (3, 3, 8, 8)
    assert (ds.images[0] == 50).all() and (ds.images[2] == 150).all()
    assert not ds.images[1].any()
    assert [(f.index, f.path, f.reason) for f in ds.failed] == [(1, paths[1], Reason.CORRUPT)]
