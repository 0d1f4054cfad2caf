"""Pixels: every layout, color mode and resize mode against an OpenCV reference built here."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import simplejpeg

import preload
from conftest import psnr, smooth_image, with_exif_orientation, write
from preload.decode import Decoder, plan_geometry, reduction_for
from preload.options import DecodeOptions

# --------------------------------------------------------------------- reference


def reference(bgr: np.ndarray, box_src, box_dst, out_hw, color: str, layout: str, fill=0, interp=cv2.INTER_AREA):
    """Independent path: full crop -> cv2.resize -> pad -> color -> transpose."""
    y0, y1, x0, x1 = box_src
    crop = bgr[y0:y1, x0:x1]
    dy0, dy1, dx0, dx1 = box_dst
    resized = cv2.resize(crop, (dx1 - dx0, dy1 - dy0), interpolation=interp)
    channels = 1 if color == "gray" else 3
    canvas = np.full(out_hw + (3,), fill, np.uint8)
    canvas[dy0:dy1, dx0:dx1] = resized
    if color == "rgb":
        canvas = canvas[:, :, ::-1]
    elif color == "gray":
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY)[:, :, None]
        if box_dst != (0, out_hw[0], 0, out_hw[1]):  # gray of the fill colour is the fill
            canvas[:dy0], canvas[dy1:], canvas[:, :dx0], canvas[:, dx1:] = fill, fill, fill, fill
    assert canvas.shape[2] == channels
    return np.ascontiguousarray(canvas.transpose(2, 0, 1) if layout == "NCHW" else canvas)


# Hand-computed boxes for a 60x120 (h x w) source into a 30x30 slot.
BOXES = {
    "stretch": ((0, 60, 0, 120), (0, 30, 0, 30)),
    "fit": ((0, 60, 0, 120), (7, 22, 0, 30)),  # scale 1/4: 15x30, centred vertically
    "cover": ((0, 60, 30, 90), (0, 30, 0, 30)),  # scale 1/2: the middle 60x60
    "shorter": ((0, 60, 30, 90), (0, 30, 0, 30)),  # square size: the same as cover
}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("color", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("mode", list(BOXES))
@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_pixels_match_reference(tmp_path, rng, layout, color, mode, ext):
    bgr = smooth_image(rng, 60, 120)
    path = write(tmp_path / f"a{ext}", bgr)
    ds = preload.load([path], size=30, layout=layout, color=color, resize=mode, fill=17, interpolation="area",
                      progress=False)
    expected = reference(bgr, *BOXES[mode], (30, 30), color, layout, fill=17)
    assert ds.images.shape == (1,) + expected.shape
    assert ds.images.flags.c_contiguous
    diff = np.abs(ds.images[0].astype(int) - expected.astype(int))
    # gray: OpenCV converts before (reference) or after (preload) the resize; rounding differs by 1
    assert diff.max() <= (1 if color == "gray" else 0)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_jpeg_decodes_straight_to_the_wanted_order(tmp_path, rng, layout, color):
    bgr = smooth_image(rng, 64, 96)
    path = write(tmp_path / "a.jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 95)
    decoded = cv2.imread(path)  # the reference decode, BGR
    ds = preload.load([path], size=(32, 48), layout=layout, color=color, reduce=False, interpolation="area",
                      progress=False)
    expected = reference(decoded, (0, 64, 0, 96), (0, 32, 0, 48), (32, 48), color, layout)
    assert np.array_equal(ds.images[0], expected)


def test_gray_output_of_a_jpeg_is_libjpegs_luma(tmp_path, rng):
    path = write(tmp_path / "a.jpg", smooth_image(rng, 40, 40))
    ds = preload.load([path], size=20, color="gray", layout="NCHW", reduce=False, interpolation="area",
                      progress=False)
    expected = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (20, 20), interpolation=cv2.INTER_AREA)
    assert ds.images.shape == (1, 1, 20, 20)
    assert np.array_equal(ds.images[0, 0], expected)


def test_shorter_differs_from_cover_for_non_square_sizes():
    # 100x200 into 40x80: cover scales by 0.4 (whole image), shorter by 80/100 (crop 50x100)
    assert plan_geometry(100, 200, (40, 80), "cover").src == (0, 100, 0, 200)
    assert plan_geometry(100, 200, (40, 80), "shorter").src == (25, 75, 50, 150)


def test_enlarging_uses_linear_and_interpolation_overrides(tmp_path, rng):
    bgr = smooth_image(rng, 16, 16)
    path = write(tmp_path / "a.png", bgr)
    ds = preload.load([path], size=40, color="bgr", progress=False)
    assert np.array_equal(ds.images[0], cv2.resize(bgr, (40, 40), interpolation=cv2.INTER_LINEAR))
    ds = preload.load([path], size=40, color="bgr", interpolation="nearest", progress=False)
    assert np.array_equal(ds.images[0], cv2.resize(bgr, (40, 40), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("name", ["area", "linear", "nearest", "cubic", "lanczos"])
def test_every_interpolation_name_is_accepted(tmp_path, rng, name):
    bgr = smooth_image(rng, 50, 50)
    path = write(tmp_path / "a.png", bgr)
    ds = preload.load([path], size=20, color="bgr", interpolation=name.upper(), progress=False)
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
            "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}[name]
    assert np.array_equal(ds.images[0], cv2.resize(bgr, (20, 20), interpolation=flag))


def test_fill_per_channel_in_color_order(tmp_path, rng):
    path = write(tmp_path / "a.png", smooth_image(rng, 10, 40))
    ds = preload.load([path], size=20, resize="fit", fill=(10, 20, 30), layout="NCHW", progress=False)
    assert ds.images[0, :, 0, 0].tolist() == [10, 20, 30]  # top margin
    assert ds.images[0, :, 19, 19].tolist() == [10, 20, 30]  # bottom margin


# ------------------------------------------------------------------ channel kinds


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_gray_source_becomes_three_equal_channels(tmp_path, rng, layout):
    gray = smooth_image(rng, 24, 24, channels=1)
    path = write(tmp_path / "g.png", gray)
    ds = preload.load([path], layout=layout, progress=False)
    image = ds.images[0] if layout == "NCHW" else ds.images[0].transpose(2, 0, 1)
    assert image.shape == (3, 24, 24)
    for plane in image:
        assert np.array_equal(plane, gray)


def test_alpha_is_dropped(tmp_path, rng):
    bgr = smooth_image(rng, 12, 12)
    bgra = np.dstack([bgr, rng.integers(0, 256, (12, 12), dtype=np.uint8)])
    path = write(tmp_path / "a.png", bgra)
    ds = preload.load([path], color="bgr", progress=False)
    assert np.array_equal(ds.images[0], bgr)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_is_shifted_not_rounded(tmp_path, rng, channels):
    shape = (8, 8) if channels == 1 else (8, 8, 3)
    deep = rng.integers(0, 65536, shape, dtype=np.uint16)
    deep.flat[:4] = [200, 384, 65535, 127]  # rounding would give 1, 2, 255, 0
    path = write(tmp_path / "deep.png", deep)
    ds = preload.load([path], color="bgr", progress=False)
    expected = (deep >> 8).astype(np.uint8)
    if channels == 1:
        expected = np.repeat(expected[:, :, None], 3, axis=2)
    assert np.array_equal(ds.images[0], expected)
    first = ds.images[0].reshape(-1)[: 4 * (3 if channels == 1 else 1) : (3 if channels == 1 else 1)]
    assert first.tolist() == [0, 1, 255, 0]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"])
def test_every_extension_loads(tmp_path, rng, ext):
    bgr = smooth_image(rng, 32, 48)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []  # 101 = lossless
    path = write(tmp_path / f"a{ext}", bgr, *params)
    ds = preload.load([path], color="bgr", progress=False)
    expected = cv2.imread(path) if ext == ".jpg" else bgr  # JPEG is lossy: compare with OpenCV's decode
    assert ds.images.shape == (1, 32, 48, 3)
    assert np.array_equal(ds.images[0], expected)


# --------------------------------------------------------------------------- EXIF


TURNS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation, turn", sorted(TURNS.items()))
def test_exif_orientation_applied_by_default_and_switchable(tmp_path, rng, orientation, turn):
    bgr = smooth_image(rng, 32, 48)
    raw = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(with_exif_orientation(raw, orientation))
    stored = cv2.imread(str(path), cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR)

    upright = preload.load([str(path)], color="bgr", progress=False)
    assert np.array_equal(upright.images[0], np.ascontiguousarray(turn(stored)))
    as_stored = preload.load([str(path)], color="bgr", exif=False, progress=False)
    assert np.array_equal(as_stored.images[0], stored)


# ---------------------------------------------------------------- reduced decode


@pytest.mark.parametrize(
    "source, size, mode, factor",
    [((375, 500), (224, 224), "stretch", 1), ((1000, 1000), (256, 256), "stretch", 1),
     ((1024, 1024), (256, 256), "stretch", 2), ((1200, 1600), (256, 256), "cover", 2),
     ((2048, 2048), (256, 256), "stretch", 4), ((2048, 2048), (257, 256), "stretch", 2),
     ((4096, 4096), (256, 256), "stretch", 8), ((4000, 3000), (256, 256), "fit", 4),
     ((4000, 3000), (256, 256), "shorter", 4), ((6000, 4500), (256, 256), "shorter", 8),
     ((4000, 4000), (256, 256), "stretch", 4), ((1600, 1600), (100, 100), "stretch", 8)],
)
def test_reduction_keeps_twice_the_output_on_both_axes(source, size, mode, factor):
    assert reduction_for(*source, size, mode) == factor


def test_reduced_decode_is_used_for_big_jpegs(tmp_path, rng, monkeypatch):
    path = write(tmp_path / "big.jpg", smooth_image(rng, 800, 800))
    seen = []
    real = simplejpeg.decode_jpeg

    def spy(*args, **kwargs):
        image = real(*args, **kwargs)
        seen.append(image.shape[:2])
        return image

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    preload.load([path], size=100, progress=False, workers=1)
    preload.load([path], size=100, progress=False, workers=1, reduce=False)
    assert seen == [(200, 200), (800, 800)]  # 800 -> 200 keeps >= 2x the 100 output


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """scikit-image's photos at their own size and 1.5x / 3x larger, incl. the fine textures.

    The two photos already near a megapixel or more (hubble_deep_field, retina) get
    no 3x copy: their 1x and 1.5x copies reach every JPEG scale (1/2, 1/4, 1/8)
    their 3x copies did at these sizes, and those two copies were 46% of the pixels
    every parameter of the test decoded twice.
    """
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "grass", "gravel", "brick"):
        image = getattr(data, name)()
        image = np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else image
        large = image.shape[0] * image.shape[1] > 800_000
        for scale in (1, 1.5) if large else (1, 1.5, 3):
            big = image if scale == 1 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            paths.append(write(folder / f"{name}-{scale}.jpg", big, cv2.IMWRITE_JPEG_QUALITY, 92))
    return paths


@pytest.fixture(scope="module")
def libjpeg_outputs():
    """What libjpeg gave for each (file bytes, colour space, minimum size) in this module."""
    outputs = {}
    yield outputs
    outputs.clear()


@pytest.fixture
def libjpeg_once(libjpeg_outputs, monkeypatch):
    """simplejpeg's decode of each JPEG at each scale done once for the module, then copied where it would write.

    The 20 cases below decode the same 25 files at the same few scales (the
    full size, and each file's 1/2, 1/4 or 1/8), and decoding them again was
    most of their time. libjpeg's output depends only on the bytes, the
    colour space and the minimum size asked for, so each case still reads
    every file, plans its geometry, picks its scale, and resizes and pads
    exactly as before; only the repeated libjpeg calls are saved.
    """
    real = simplejpeg.decode_jpeg

    def decode_jpeg(data, colorspace="RGB", *, min_height=0, min_width=0, buffer=None, **kwargs):
        key = (bytes(data), colorspace, min_height, min_width, tuple(sorted(kwargs.items())))
        if key not in libjpeg_outputs:
            libjpeg_outputs[key] = real(data, colorspace, min_height=min_height, min_width=min_width, **kwargs)
        image = libjpeg_outputs[key]
        if buffer is None:
            return image.copy()
        into = np.asarray(buffer).reshape(-1)[: image.size].reshape(image.shape)  # where simplejpeg writes
        into[...] = image
        return into

    monkeypatch.setattr(simplejpeg, "decode_jpeg", decode_jpeg)


@pytest.mark.parametrize("size", [64, 96, 160, 224, (128, 256)])
@pytest.mark.parametrize("mode", ["stretch", "fit", "cover", "shorter"])
def test_reduced_decode_stays_within_35_db_of_the_full_decode(photo_dir, libjpeg_once, size, mode):
    reduced = preload.load(photo_dir, size=size, resize=mode, progress=False)
    full = preload.load(photo_dir, size=size, resize=mode, reduce=False, progress=False)
    for i, path in enumerate(photo_dir):
        assert psnr(reduced.images[i], full.images[i]) >= 35, path


@pytest.mark.parametrize("mode", ["fit", "cover", "shorter"])
def test_reduced_decode_keeps_the_geometry(tmp_path, mode):
    data = pytest.importorskip("skimage.data")
    photo = cv2.resize(data.coffee()[:, :, ::-1], (960, 640), interpolation=cv2.INTER_CUBIC)  # 1/4 scale for 64
    path = write(tmp_path / "a.jpg", photo, cv2.IMWRITE_JPEG_QUALITY, 95)
    reduced = preload.load([path], size=(64, 48), resize=mode, fill=255, progress=False)
    full = preload.load([path], size=(64, 48), resize=mode, fill=255, reduce=False, progress=False)
    if mode == "fit":  # the letterbox is planned on the full size, so it is the same
        margin = [np.all(ds.images[0] == 255, axis=2)[:, 0] for ds in (reduced, full)]
        assert np.array_equal(*margin)
    assert psnr(reduced.images[0], full.images[0]) >= 35


def test_crop_alignment_follows_the_possible_reduction():
    geometry = plan_geometry(600, 900, (64, 64), "cover")  # 1/4 possible: crop aligned to 4
    assert geometry.src == (0, 600, 152, 752)
    assert geometry.reduced(4, (150, 225)).src == (0, 150, 38, 188)
    assert plan_geometry(60, 90, (32, 32), "cover").src == (0, 60, 15, 75)  # small: no alignment


def test_options_reject_bad_values():
    with pytest.raises(preload.OptionError, match=r"layout='CHW'.*'NHWC', 'NCHW'"):
        DecodeOptions.create(layout="CHW")
    with pytest.raises(preload.OptionError, match=r"color='hsv'.*'rgb', 'bgr', 'gray'"):
        DecodeOptions.create(color="hsv")
    with pytest.raises(preload.OptionError, match=r"resize='crop'.*'stretch', 'fit', 'cover', 'shorter'"):
        DecodeOptions.create(resize="crop")
    with pytest.raises(preload.OptionError, match=r"interpolation='bilinear'.*'area'"):
        DecodeOptions.create(interpolation="bilinear")
    for bad in (0, -3, (10,), (10, 0), 2.5, "256", True):
        with pytest.raises(preload.OptionError, match=r"size="):
            DecodeOptions.create(size=bad)
    with pytest.raises(preload.OptionError, match=r"fill=\(1, 2\).*3 such ints"):
        DecodeOptions.create(fill=(1, 2))
    with pytest.raises(preload.OptionError, match=r"fill=300"):
        DecodeOptions.create(fill=300)
    with pytest.raises(preload.OptionError, match=r"max_pixels=0"):
        DecodeOptions.create(max_pixels=0)
    for bad in (("a", "b", "c"), (1.9, 2.2, 3.7), True, 2.0, -1):
        with pytest.raises(preload.OptionError, match=r"fill=.* is not accepted"):
            DecodeOptions.create(fill=bad)
    for name in ("exif", "reduce"):
        with pytest.raises(preload.OptionError, match=rf"{name}='no' is not accepted; use True or False"):
            DecodeOptions.create(**{name: "no"})
    with pytest.raises(preload.OptionError, match=r"max_pixels=True"):
        DecodeOptions.create(max_pixels=True)


def test_size_forms():
    assert DecodeOptions.create(size=7).size == (7, 7)
    assert DecodeOptions.create(size=(3, 5)).size == (3, 5)
    assert DecodeOptions.create(size=[3, 5], layout="nchw").slot_shape() == (3, 3, 5)
    assert DecodeOptions.create(size=(3, 5), color="GRAY").slot_shape() == (3, 5, 1)


@pytest.mark.parametrize("ext", ["png", "webp", "tiff"])
@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_exif_orientation_of_png_webp_tiff(tmp_path, rng, ext, orientation):
    image_module = pytest.importorskip("PIL.Image")
    rgb = smooth_image(rng, 20, 30)[:, :, ::-1].copy()
    path = str(tmp_path / f"o.{ext}")
    picture = image_module.fromarray(rgb)
    if ext == "tiff":
        picture.save(path, "TIFF", tiffinfo={274: orientation})
    else:
        exif = picture.getexif()
        exif[274] = orientation
        picture.save(path, exif=exif.tobytes(), lossless=True)
    upright = np.ascontiguousarray(TURNS[orientation](rgb))
    ds = preload.load([path], progress=False)  # size=None: the header's rotated size must be right
    assert np.array_equal(ds.images[0], upright)
    ds = preload.load([path], exif=False, progress=False)
    assert np.array_equal(ds.images[0], rgb)


def test_rgb_png_into_nhwc_is_converted_in_the_slot(tmp_path, rng, monkeypatch):
    path = write(tmp_path / "a.png", smooth_image(rng, 40, 40))
    made = []
    real = np.copyto
    monkeypatch.setattr(np, "copyto", lambda dst, src, **k: made.append(dst.shape) or real(dst, src, **k))
    ds = preload.load([path], size=20, interpolation="area", progress=False, workers=1)
    assert made == []  # no copy after the conversion: cvtColor wrote into the slot
    expected = cv2.resize(cv2.imread(path), (20, 20), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    assert np.array_equal(ds.images[0], expected)


# ------------------------------------------------------------------ default filter


@pytest.fixture(scope="module")
def textures():
    data = pytest.importorskip("skimage.data")
    gray = [getattr(data, name)() for name in ("grass", "gravel", "brick")]
    return gray + [np.ascontiguousarray(np.dstack([g, g[::-1], g[:, ::-1]])) for g in gray]


@pytest.mark.parametrize("factor", [1.3, 1.41, 1.62, 1.9, 2.0, 2.25, 2.5, 2.71, 3.0, (1.46, 1.95), (3.0, 1.3)])
def test_default_shrink_is_within_38_db_of_inter_area(textures, factor):
    fy, fx = factor if isinstance(factor, tuple) else (factor, factor)
    decoder = Decoder(DecodeOptions.create())
    for texture in textures:
        size = (round(texture.shape[0] / fy), round(texture.shape[1] / fx))
        exact = cv2.resize(texture, size[::-1], interpolation=cv2.INTER_AREA)
        fast = np.empty_like(exact)
        decoder._shrink(texture, size, fast)
        assert psnr(fast, exact) >= 38, (texture.shape, factor)


def test_default_filter_is_the_fast_shrink_and_area_stays_exact(tmp_path, textures):
    path = write(tmp_path / "grass.png", textures[0])
    exact = cv2.resize(textures[0], (200, 200), interpolation=cv2.INTER_AREA)
    area = preload.load([path], size=200, color="gray", interpolation="area", progress=False).images[0, :, :, 0]
    auto = preload.load([path], size=200, color="gray", progress=False).images[0, :, :, 0]
    assert np.array_equal(area, exact)
    assert not np.array_equal(auto, exact) and psnr(auto, exact) >= 38
    linear = preload.load([path], size=200, color="gray", interpolation="linear", progress=False).images[0, :, :, 0]
    assert psnr(linear, exact) < psnr(auto, exact)  # linear aliases; only used when asked for


def test_an_opencv_error_after_decoding_is_the_same_failure_for_every_caller(tmp_path, rng, monkeypatch):
    from preload.distributed import fill_chunk
    from preload.target import create_npy

    path = write(tmp_path / "a.png", rng.integers(0, 256, (20, 30, 3), np.uint8))

    def refuse(*args, **kwargs):
        raise cv2.error("OpenCV(5.1.0) resize.cpp:4000: error: (-215:Assertion failed) !dsize.empty() in 'resize'")

    monkeypatch.setattr(cv2, "resize", refuse)
    options = DecodeOptions.create(size=8, interpolation="area")
    expected = "OpenCV failed: (-215:Assertion failed) !dsize.empty() in 'resize'"
    with pytest.raises(preload.ImageDecodeError) as direct:
        Decoder(options).decode_into(path, np.empty((8, 8, 3), np.uint8))
    assert (direct.value.reason, direct.value.detail) == (preload.Reason.CORRUPT, expected)
    loaded = preload.load([path], size=8, interpolation="area", on_error="zero", progress=False)
    assert [(f.reason, f.detail) for f in loaded.failed] == [(preload.Reason.CORRUPT, expected)]
    partial = str(tmp_path / "c.npy.partial")
    create_npy(partial, (1, 8, 8, 3))
    (tmp_path / "c.npy.partial.probe").write_text("t0")
    chunk = fill_chunk(partial, "t0", np.array([0]), [path], options, "zero", (1, 8, 8, 3))
    assert [(f.reason, f.detail) for f in chunk.failures] == [(preload.Reason.CORRUPT, expected)]


def test_max_pixels_refuses_a_jpeg_header_before_writing_the_slot(tmp_path, rng):
    # The option's second path: the JPEG header parser and the Decoder itself, at the exact limit.
    path = write(tmp_path / "a.jpg", smooth_image(rng, 40, 50))
    slot = np.full((8, 8, 3), 77, np.uint8)
    with pytest.raises(preload.ImageDecodeError, match=r"50x40 = 2,000 pixels, more than max_pixels=1,999") as caught:
        Decoder(DecodeOptions.create(size=8, max_pixels=1999)).decode_into(path, slot)
    assert caught.value.reason == preload.Reason.TOO_LARGE and caught.value.path == path
    assert (slot == 77).all()
    Decoder(DecodeOptions.create(size=8, max_pixels=2000)).decode_into(path, slot)
    assert (slot != 77).any()


# ------------------------------------------------------------------ damaged PNG data


def test_damaged_png_data_is_refused_by_libpngs_checksums(tmp_path, rng):
    """libpng checks chunk CRCs and zlib's Adler-32: damaged pixels fail instead of loading gray."""
    noisy = np.clip(smooth_image(rng, 120, 160).astype(int) + rng.integers(-30, 30, (120, 160, 3)), 0, 255)
    data = cv2.imencode(".png", noisy.astype(np.uint8))[1].tobytes()
    middle = len(data) // 2
    cases = {
        "cut.png": data[:middle] + data[-12:],  # half the file, then its IEND chunk
        "flipped.png": data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :],
    }
    paths = []
    for name, damaged in cases.items():
        (tmp_path / name).write_bytes(damaged)
        paths.append(str(tmp_path / name))
    ds = preload.load(paths, size=32, on_error="skip", progress=False)
    assert len(ds) == 0
    assert [f.reason for f in ds.failed] == [preload.errors.Reason.CORRUPT] * 2


# ------------------------------------------------------- what a decoder prints about one file


def test_stderr_lines_gives_the_blocks_own_lines_and_passes_them_on(capfd, caplog):
    from preload.quiet import quiet_opencv, stderr_lines

    with quiet_opencv():  # a load keeps OpenCV's logger silent; the block needs its warnings
        assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT
        with stderr_lines() as lines:
            os.write(2, b"Corrupt JPEG data: premature end of data segment\n")
            os.write(2, b"[ WARN:0@0.01] global grfmt_tiff.cpp:123 TIFF_Warning PackBitsDecode: Discarding\n")
            assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_WARNING
        assert cv2.utils.logging.getLogLevel() == cv2.utils.logging.LOG_LEVEL_SILENT
        assert lines == ["Corrupt JPEG data: premature end of data segment",
                         "[ WARN:0@0.01] global grfmt_tiff.cpp:123 TIFF_Warning PackBitsDecode: Discarding"]
        with stderr_lines() as lines:
            pass
        assert lines == []  # the private file starts empty each time
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    # libjpeg's line went on to the load's summary; the logger line only the raised level let through did not
    assert "after" in err and "PackBitsDecode" not in err
    assert "printed 1 message(s) during the load, e.g. 'Corrupt JPEG data: premature end" in caplog.text


def test_stderr_lines_passes_on_what_it_caught_outside_a_load(capfd):
    from preload.quiet import stderr_lines

    level = cv2.utils.logging.getLogLevel()
    with stderr_lines() as lines:
        os.write(2, b"someone else's line\n")
    assert lines == ["someone else's line"]
    assert cv2.utils.logging.getLogLevel() == level
    assert capfd.readouterr().err == "someone else's line\n"
