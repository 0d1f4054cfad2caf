"""Augment, Normalize, stats and the batch engine: geometry against numpy, Keras's meaning, reproducibility."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image
from preload.augment import Augment, Normalize, Transform, stats
from preload.batching import BatchEngine, resolve_order


def nchw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(images, -1, -3))


def warped(transform: Transform, image: np.ndarray, layout: str = "NHWC", **options) -> np.ndarray:
    return Augment(**options).apply(image, transform, np.empty_like(image), layout=layout)


@pytest.fixture
def image(rng):
    return smooth_image(rng, 32, 32)


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_rotation_by_90_degrees_is_rot90_counter_clockwise(rng, layout):
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    expected = np.rot90(image)
    if layout == "NCHW":
        image, expected = nchw(image[None])[0], nchw(expected[None])[0]
        out = warped(Transform(theta=90), image, layout)
        assert np.array_equal(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1])
    else:
        out = warped(Transform(theta=90), image, layout)
        assert np.array_equal(out[1:-1, 1:-1], expected[1:-1, 1:-1])


def test_flips_alone_are_exact_and_follow_the_warp(rng):
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(warped(Transform(flip_horizontal=True), image), image[:, ::-1])
    assert np.array_equal(warped(Transform(flip_vertical=True), image), image[::-1])
    assert np.array_equal(warped(Transform(flip_horizontal=True, flip_vertical=True), image), image[::-1, ::-1])
    square = image[:10, :10]
    both = warped(Transform(theta=90, flip_horizontal=True), square)
    assert np.array_equal(both[1:-1, 1:-1], np.rot90(square)[:, ::-1][1:-1, 1:-1])


@pytest.mark.parametrize(
    ("fill", "tail"),
    [
        ("constant", lambda image: np.full((9, 3), 7, np.uint8)),
        ("nearest", lambda image: np.repeat(image[:, -1:], 3, axis=1)),
        ("wrap", lambda image: image[:, :3]),
        ("reflect", lambda image: image[:, ::-1][:, :3]),
    ],
)
def test_a_shift_fills_the_uncovered_columns_by_the_fill_mode(rng, fill, tail):
    image = rng.integers(0, 256, (9, 11), dtype=np.uint8)[..., None]
    out = warped(Transform(tx=3), image, fill=fill, cval=7)[..., 0]
    assert np.array_equal(out[:, :-3], image[:, 3:, 0])  # tx=3 samples 3 columns to the right
    assert np.array_equal(out[:, -3:], tail(image[..., 0]))


def test_zoom_scales_about_the_centre(rng):
    image = rng.integers(0, 256, (9, 9, 1), dtype=np.uint8)
    out = warped(Transform(zx=2, zy=2), image)[..., 0]
    assert out[4, 4] == image[4, 4, 0]
    assert out[4, 5] == image[4, 6, 0] and out[6, 4] == image[8, 4, 0] and out[2, 3] == image[0, 2, 0]


def test_shear_and_zoom_compose_in_keras_order():
    t = Transform(theta=10, tx=2, ty=-1, shear=5, zx=1.1, zy=0.9)
    c, s, h = math.cos(math.radians(10)), math.sin(math.radians(10)), math.radians(5)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    expected = rotation @ [[1, 0, 2], [0, 1, -1], [0, 0, 1]] @ [[1, -math.sin(h), 0], [0, math.cos(h), 0], [0, 0, 1]]
    expected = expected @ np.diag([1.1, 0.9, 1])
    centre = np.array([[1, 0, 5.5], [0, 1, 3.5], [0, 0, 1]])
    assert np.allclose(t.matrix(8, 12), (centre @ expected @ np.linalg.inv(centre))[:2])


def test_brightness_and_channel_shift_are_keras_intensity_steps():
    image = np.array([[[10, 100, 200]]], np.uint8)
    assert warped(Transform(brightness=0.5), image).ravel().tolist() == [5, 50, 100]
    assert warped(Transform(brightness=1.5), image).ravel().tolist() == [15, 150, 255]
    # Shifted by +50, then clipped to the image's own range 10..200.
    assert warped(Transform(channel_shift=50), image).ravel().tolist() == [60, 150, 200]
    assert warped(Transform(channel_shift=-50), image).ravel().tolist() == [10, 50, 150]


def test_draws_follow_keras_distributions():
    aug = Augment(rotation=20, shift=(0.1, 4.0), shear=8, zoom=(0.8, 1.2), flip="horizontal", brightness=(0.5, 1.5))
    transforms = aug.draw(np.random.default_rng(5), 4000, (50, 100))
    theta = np.array([t.theta for t in transforms])
    ty = np.array([t.ty for t in transforms])
    tx = np.array([t.tx for t in transforms])
    zx = np.array([t.zx for t in transforms])
    zy = np.array([t.zy for t in transforms])
    assert -20 <= theta.min() < -19 and 19 < theta.max() <= 20
    assert -5 <= ty.min() < -4.9 and 4.9 < ty.max() <= 5  # 0.1 of the height, in pixels
    assert -4 <= tx.min() < -3.9 and 3.9 < tx.max() <= 4  # from 1 up: pixels
    assert 0.8 <= min(zx.min(), zy.min()) and max(zx.max(), zy.max()) <= 1.2
    assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.1  # drawn independently, as Keras does
    flips = np.mean([t.flip_horizontal for t in transforms])
    assert 0.45 < flips < 0.55 and not any(t.flip_vertical for t in transforms)
    assert all(0.5 <= t.brightness <= 1.5 for t in transforms)
    again = aug.draw(np.random.default_rng(5), 4000, (50, 100))
    assert again == transforms


def test_an_int_shift_is_whole_pixels_drawn_as_keras_draws_them():
    # Keras: an int range n is np.random.choice(n) * np.random.choice([-1, 1]): 0 .. n-1 pixels either way.
    transforms = Augment(shift=(4, 0.25)).draw(np.random.default_rng(2), 8000, (40, 80))
    ty = np.array([t.ty for t in transforms])
    tx = np.array([t.tx for t in transforms])
    assert set(ty.tolist()) == {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}
    assert 0.23 < np.mean(ty == 0) < 0.27 and 0.11 < np.mean(ty == 3) < 0.14  # 0 is drawn as +0 and -0
    assert -20 <= tx.min() < -19.9 and 19.9 < tx.max() <= 20 and len(set(tx.tolist())) > 7000  # a float: uniform
    assert all(t.ty == 0 for t in Augment(shift=1).draw(np.random.default_rng(2), 100, (40, 80)))
    assert Augment(shift=np.int64(3)).shift == (3, 3) and Augment(shift=3.0).shift == (3.0, 3.0)


def test_call_augments_a_batch_in_place_reproducibly(rng):
    batch = np.stack([smooth_image(rng, 16, 16) for _ in range(3)])
    first = Augment(rotation=30, flip="both")(batch.copy(), rng=1)
    second = Augment(rotation=30, flip="both")(batch.copy(), rng=1)
    assert np.array_equal(first, second) and not np.array_equal(first, batch)


# --- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rotation": -1}, "rotation=-1"),
        ({"shift": -0.1}, "shift=-0.1"),
        ({"shift": (0.1, 0.2, 0.3)}, "shift="),
        ({"shear": float("nan")}, "shear=nan"),
        ({"zoom": 1.0}, "zoom=1.0"),
        ({"zoom": (1.2, 0.8)}, "zoom="),
        ({"flip": "sideways"}, "flip='sideways'"),
        ({"fill": "mirror"}, "fill='mirror'.*'nearest', 'constant', 'reflect', 'wrap'"),
        ({"cval": 300}, "cval=300"),
        ({"brightness": 0.5}, "brightness=0.5"),
        ({"channel_shift": -3}, "channel_shift=-3"),
        ({"interpolation": "cubic"}, "interpolation='cubic'"),
        # Ranges so large that drawing from them overflowed in numpy, or that crashed OpenCV's warp.
        ({"rotation": 1e308}, r"rotation=1e\+308 .* from 0 to 360"),
        ({"shear": 1e308}, r"shear=1e\+308 .* from 0 to 360"),
        ({"shift": 1e308}, r"shift=1e\+308 .* from 0 to 32767"),
        ({"shift": (0.1, 40000)}, "shift=40000"),
        ({"zoom": (0.5, 1e308)}, r"zoom=1e\+308 .* from 0 to 100"),
        ({"zoom": 1e9}, r"zoom=1000000000.0 .* from 0 to 1$"),
        ({"channel_shift": 1e308}, r"channel_shift=1e\+308 .* from 0 to 255"),
        ({"brightness": (0.5, 1e308)}, r"brightness=1e\+308 .* from 0 to 255"),
        ({"brightness": (float("nan"), 1.0)}, "brightness=nan"),
        ({"rotation": np.bool_(True)}, "rotation=np.True_"),
    ],
)
def test_bad_augment_options_name_the_option(options, match):
    with pytest.raises(preload.OptionError, match=match):
        Augment(**options)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: Normalize(std=[-1.0]), "std="),
        (lambda: Normalize(rescale=0), "rescale=0"),
        (lambda: Normalize.coerce("imagenet"), "normalize='imagenet'"),
        (lambda: Normalize(mean=[1, 2])(np.zeros((1, 2, 2, 3), np.uint8)), "mean= has 2 values"),
        (lambda: stats(np.zeros((2, 2, 2, 3), np.float32)), "uint8"),
        (lambda: resolve_order("yes", 4), "shuffle='yes'"),
        (lambda: resolve_order(None, 4, seed=-1), "seed=-1"),
        (lambda: Normalize(mean=["a", "b", "c"]), r"mean=\['a', 'b', 'c'\]"),
        (lambda: Normalize(std=[[1, 2], [3]]), "std="),
        (lambda: Normalize(rescale=float("nan")), "rescale=nan is not accepted; use a finite number$"),
        (lambda: Normalize(mean=[1e300])(np.zeros((1, 2, 2, 3), np.uint8)), "do not fit float32"),
        (lambda: Normalize(rescale=1e300, samplewise_center=True)(np.ones((1, 2, 2, 3), np.uint8)), "float32"),
        (lambda: Normalize(rescale=2)(np.zeros((2, 2, 2, 3), np.uint8), out=np.zeros(3, np.float32)),
         r"out= must be a writable float32 or float64 array of shape \(2, 2, 2, 3\), not ndarray \(3,\)"),
        (lambda: Normalize(rescale=2)(np.zeros((2, 2, 2, 3), np.uint8), out=np.zeros((2, 2, 2, 3), np.uint8)),
         "not ndarray .* uint8"),
        (lambda: Augment(rotation=5)(np.zeros((2, 4, 4, 3), np.uint8), rng=-1), "rng=-1"),
        (lambda: stats(np.zeros((2, 2, 2, 3), np.uint8), chunk_bytes="4MB"), "chunk_bytes='4MB'"),
        (lambda: stats(np.zeros((2, 2, 2, 3), np.uint8), chunk_bytes=0), "chunk_bytes=0"),
    ],
)
def test_bad_normalize_and_batch_options_name_the_option(call, match):
    with pytest.raises(preload.OptionError, match=match):
        call()


# --- normalisation and statistics -----------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_normalize_follows_keras_standardize(rng, layout):
    images = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    if layout == "NCHW":
        images = nchw(images)
    shape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
    mean, std = np.array([100.0, 120.0, 90.0]), np.array([50.0, 60.0, 70.0])
    norm = Normalize(mean, std, rescale=1 / 255, samplewise_center=True, samplewise_std=True)
    out = norm(images, layout=layout)
    x = images.astype(np.float64) / 255
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    x /= x.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    x -= mean.reshape(shape) / 255
    x /= std.reshape(shape) / 255 + 1e-6
    assert out.dtype == np.float32
    assert np.abs(out - x).max() < 1e-5 * np.abs(x).max()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_stats_equal_numpy_in_float64(rng, layout, tmp_path):
    images = rng.integers(0, 256, (61, 9, 7, 3), dtype=np.uint8)
    images[:20] //= 4  # unequal channels and chunks
    images[..., 2] //= 2
    axes = (0, 1, 2)
    if layout == "NCHW":
        images, axes = nchw(images), (0, 2, 3)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    for workers in (1, 3):
        got = stats(mapped, layout=layout, workers=workers, chunk_bytes=1000)
        as_float = images.astype(np.float64)
        assert np.allclose(got.mean, as_float.mean(axis=axes), rtol=1e-9, atol=0)
        assert np.allclose(got.std, as_float.std(axis=axes), rtol=1e-9, atol=0)
        assert got.count == 61 * 9 * 7


def test_normalize_sample_is_samplewise_centring_and_scaling(rng):
    images = rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8)
    out = Normalize.coerce("sample")(images)
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)


def test_stats_of_a_dataset_use_its_layout_and_feed_normalize(rng):
    images = nchw(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8))
    options = preload.DecodeOptions.create(size=4, layout="NCHW")
    ds = preload.Dataset(images, None, None, ["x"] * 5, options=options)
    got = preload.stats(ds) if hasattr(preload, "stats") else stats(ds)
    assert np.allclose(got.mean, images.mean(axis=(0, 2, 3)), rtol=1e-12)
    out = Normalize.coerce(got)(images, layout="NCHW")
    assert np.allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)


# --- the batch engine -----------------------------------------------------------------------


def _dataset(rng, count=37, layout="NHWC"):
    images = np.stack([smooth_image(rng, 16, 16) for _ in range(count)])
    if layout == "NCHW":
        images = nchw(images)
    options = preload.DecodeOptions.create(size=16, layout=layout)
    return preload.Dataset(images, np.arange(count), None, [f"{i}.png" for i in range(count)], options=options)


def _epoch(ds, *, workers, prefetch, shuffle=4, seed=None, **options):
    order, entropy = resolve_order(shuffle, len(ds), seed)
    engine = BatchEngine(ds, 8, order=order, entropy=entropy, workers=workers, prefetch=prefetch, **options)
    return [(images.copy(), labels.copy()) for images, labels in engine]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_batches_are_bit_identical_for_any_workers_and_prefetch(rng, layout):
    ds = _dataset(rng, layout=layout)
    aug = Augment(rotation=20, shift=0.1, shear=5, zoom=0.1, flip="horizontal", brightness=(0.8, 1.2), channel_shift=10)
    norm = Normalize(stats(ds), rescale=1 / 255)
    reference = _epoch(ds, workers=1, prefetch=0, augment=aug, normalize=norm)
    assert [len(labels) for _, labels in reference] == [8, 8, 8, 8, 5]
    assert sorted(np.concatenate([labels for _, labels in reference]).tolist()) == list(range(37))
    assert reference[0][0].dtype == np.float32
    for workers, prefetch in [(2, 0), (2, 2), (3, 1), (1, 3)]:
        again = _epoch(ds, workers=workers, prefetch=prefetch, augment=aug, normalize=norm)
        for (images, labels), (expected, expected_labels) in zip(again, reference, strict=True):
            assert np.array_equal(labels, expected_labels)
            assert np.array_equal(images, expected)
    other_epoch = _epoch(ds, workers=2, prefetch=1, shuffle=5, augment=aug, normalize=norm)
    assert not np.array_equal(other_epoch[0][0], reference[0][0])


def test_batches_without_augmentation_are_the_rows_converted(rng):
    ds = _dataset(rng)
    batches = _epoch(ds, workers=2, prefetch=1, dtype="float32")
    images, labels = batches[1]
    assert images.dtype == np.float32 and np.array_equal(images, ds.images[labels].astype(np.float32))


def test_batches_read_augmented_images_from_a_memmap(rng, tmp_path):
    ds = _dataset(rng)
    np.save(tmp_path / "a.npy", ds.images)
    mapped = preload.Dataset(np.load(tmp_path / "a.npy", mmap_mode="r"), ds.labels, None, ds.paths, options=ds.options)
    aug = Augment(rotation=15, flip="vertical")
    in_ram = _epoch(ds, workers=2, prefetch=1, augment=aug, seed=3)
    from_file = _epoch(mapped, workers=1, prefetch=0, augment=aug, seed=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(in_ram, from_file, strict=True))


def test_a_per_image_transform_runs_on_every_image(rng):
    ds = _dataset(rng, count=10)
    batches = _epoch(ds, workers=2, prefetch=1, shuffle=None, transform=lambda image: 255 - image)
    assert np.array_equal(np.concatenate([images for images, _ in batches]), 255 - ds.images)


def test_a_per_batch_transform_runs_last_on_the_float_batch(rng):
    ds = _dataset(rng, count=10)
    batches = _epoch(ds, workers=1, prefetch=1, shuffle=None, normalize=Normalize(rescale=1 / 255),
                     batch_transform=lambda batch: batch[::-1])
    assert np.allclose(batches[0][0], ds.images[:8][::-1] / 255, atol=1e-7)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"transform": lambda image: image[:4]}, r"transform returned .* \(4, 16, 3\) uint8"),
        ({"transform": lambda image: image.astype(np.float32)}, "transform returned .* float32"),
        ({"batch_transform": lambda batch: batch[:, :2]}, "batch_transform returned"),
        ({"transform": "flip"}, "transform='flip'"),
        ({"augment": {"rotation": 10}}, "augment="),
        ({"dtype": "int16"}, "dtype='int16'"),
        ({"dtype": 5}, "dtype=5 is not accepted"),
        ({"normalize": Normalize(mean=[1.0, 2.0])}, "mean= has 2 values; these images have 3 channels"),
        ({"normalize": Normalize(mean=[1e300])}, "do not fit float32"),
        ({"drop_last": "no"}, "drop_last='no'"),
        ({"dtype": "uint8", "normalize": Normalize(rescale=2)}, "dtype='uint8'"),
        ({"prefetch": -1}, "prefetch=-1"),
        ({"workers": 0}, "workers=0"),
    ],
)
def test_bad_transforms_and_options_raise_option_error(rng, options, match):
    ds = _dataset(rng, count=10)
    with pytest.raises(preload.OptionError, match=match):
        _epoch(ds, **{"workers": 2, "prefetch": 1, **options})


def test_albumentations_compose_plugs_in_as_a_per_image_transform(rng):
    albumentations = pytest.importorskip("albumentations")
    ds = _dataset(rng, count=6)
    flip = albumentations.Compose([albumentations.HorizontalFlip(p=1.0)])
    batches = _epoch(ds, workers=2, prefetch=0, shuffle=None, transform=flip)
    assert np.array_equal(batches[0][0], ds.images[:6, :, ::-1])


# --- Keras's meaning ------------------------------------------------------------------------

KERAS_CASES = [
    {"theta": 17.0},
    {"tx": 5.3, "ty": -7.6},
    {"shear": 9.0},
    {"zx": 0.85, "zy": 1.12},
    {"theta": -12.0, "tx": 3.0, "ty": 2.5, "shear": 6.0, "zx": 1.08, "zy": 0.93, "flip_horizontal": True},
    {"theta": 25.0, "flip_vertical": True, "channel_shift_intensity": 18.0},
    {"zx": 0.9, "zy": 0.9, "brightness": 1.3},
]


@pytest.mark.parametrize("fill", ["nearest", "constant", "reflect", "wrap"])
@pytest.mark.parametrize("params", KERAS_CASES)
def test_fixed_transforms_match_keras_image_data_generator(rng, params, fill):
    pytest.importorskip("scipy")
    tf = pytest.importorskip("tensorflow")
    image = smooth_image(rng, 64, 64)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(fill_mode=fill, cval=40.0)
    expected = generator.apply_transform(image.astype(np.float32), dict(params))
    ours = warped(Transform.from_keras(params), image, fill=fill, cval=40)
    interior = (slice(12, -12), slice(12, -12))
    difference = np.abs(ours[interior].astype(np.float64) - expected[interior])
    assert difference.mean() <= 1.0


def test_normalize_matches_keras_standardize(rng):
    tf = pytest.importorskip("tensorflow")
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rescale=1 / 255, featurewise_center=True, featurewise_std_normalization=True
    )
    generator.fit(images.astype(np.float32))
    expected = generator.standardize(images.astype(np.float32))
    ours = Normalize(stats(images), rescale=1 / 255)(images)
    assert np.abs(ours - expected).max() < 1e-4
    samplewise = tf.keras.preprocessing.image.ImageDataGenerator(
        rescale=1 / 255, samplewise_center=True, samplewise_std_normalization=True
    )
    expected = np.stack([samplewise.standardize(image.astype(np.float32)) for image in images])  # per image, as flow
    ours = Normalize(rescale=1 / 255, samplewise_center=True, samplewise_std=True)(images)
    assert np.abs(ours - expected).max() < 1e-4


def test_a_transform_that_samples_absurdly_far_is_refused_not_a_crash(image):
    # OpenCV's warpAffine crashed the process (SIGSEGV) on such matrices with the default fill.
    with pytest.raises(preload.OptionError, match=r"samples the 32x32 image 1e\+09 pixels away"):
        warped(Transform(tx=1e9), image)
    with pytest.raises(preload.OptionError, match="beyond any finite distance"):
        warped(Transform(zx=1e308, tx=1e308), image)
    with pytest.raises(preload.OptionError, match=r"Transform\(theta=nan\)"):
        Transform(theta=float("nan"))
    extreme = Augment(rotation=360, shear=360, shift=32767, zoom=(0.01, 100), fill="nearest")
    images = np.stack([image] * 4)
    assert extreme(images.copy(), rng=0).shape == images.shape  # the largest accepted ranges warp fine


@pytest.mark.parametrize("fill", ["nearest", "constant", "reflect", "wrap"])
@pytest.mark.parametrize("transform", [Transform(theta=20, tx=2, zx=1.1, flip_horizontal=True),
                                       Transform(flip_vertical=True)])
def test_images_of_more_than_four_channels_are_warped_plane_by_plane(rng, fill, transform):
    # An NHWC plane of a 5-channel image is strided: OpenCV refused it as dst= (cv2.error before the fix).
    image = np.dstack([smooth_image(rng, 24, 24), smooth_image(rng, 24, 24)[..., :2]])
    planes = [warped(transform, np.ascontiguousarray(image[..., [c]]), fill=fill) for c in range(5)]
    assert np.array_equal(warped(transform, image, fill=fill), np.dstack(planes))


def test_cv2_border_modes_are_the_documented_ones():
    row = np.arange(1, 5, dtype=np.uint8).reshape(1, 4)
    padded = {name: cv2.copyMakeBorder(row, 0, 0, 0, 2, mode).ravel().tolist()
              for name, mode in preload.augment.FILL_MODES.items() if name != "constant"}
    assert padded == {"nearest": [1, 2, 3, 4, 4, 4], "reflect": [1, 2, 3, 4, 4, 3], "wrap": [1, 2, 3, 4, 1, 2]}


def test_the_engine_takes_its_output_buffers_from_allocate(rng):
    ds = _dataset(rng, count=10)
    made = []

    def allocate(shape, dtype):
        made.append((shape, np.dtype(dtype).name))
        return np.zeros(shape, dtype)

    order, entropy = resolve_order(None, 10)
    engine = BatchEngine(ds, 4, order=order, entropy=entropy, dtype="float32", prefetch=1, workers=1,
                         allocate=allocate)
    batches = [images.copy() for images, _ in engine]
    assert made == [((4, 16, 16, 3), "float32")] * 3  # one per buffer set of the ring (prefetch + 2), then reused
    assert np.array_equal(np.concatenate(batches), ds.images.astype(np.float32))
