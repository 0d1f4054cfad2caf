"""Dataset.batches with augment/normalize/prefetch, ImageFiles through the engine, and files.images for batchup."""

from __future__ import annotations

import numpy as np
import pytest

import preload
from conftest import class_folders, smooth_image


@pytest.fixture
def files(tmp_path, rng):
    return preload.ImageFiles(class_folders(tmp_path / "src", rng, per_class=4), size=(12, 16))


def test_batches_with_options_go_through_the_engine_and_are_reproducible(rng):
    images = np.stack([smooth_image(rng, 16, 16) for _ in range(20)])
    ds = preload.Dataset(images, np.arange(20), None, ["x"] * 20)
    aug = preload.Augment(rotation=10, flip="horizontal")
    runs = []
    for workers, prefetch in [(1, 0), (2, 2)]:
        runs.append([(b.copy(), y.copy()) for b, y in ds.batches(6, shuffle=3, augment=aug, normalize=preload.stats(ds),
                                                                 prefetch=prefetch, workers=workers)])
    assert [len(y) for _, y in runs[0]] == [6, 6, 6, 2]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(*runs, strict=True))
    assert runs[0][0][0].dtype == np.float32
    plain = [y.tolist() for _, y in ds.batches(6, shuffle=3)]
    assert plain == [y.tolist() for _, y in runs[0]]  # the same permutation with or without the engine


def test_batches_refuse_an_out_array_with_engine_options(rng):
    ds = preload.Dataset(np.zeros((4, 2, 2, 3), np.uint8), None, None, ["x"] * 4)
    with pytest.raises(preload.OptionError, match="out= takes only None or True"):
        next(ds.batches(2, out=np.zeros((2, 2, 2, 3), np.uint8), prefetch=1))


def test_image_files_batches_are_decoded_then_augmented(files):
    loaded = preload.load(files.manifest, size=(12, 16))
    flip = preload.Augment(flip="vertical")
    got = [b.copy() for b, _ in files.batches(5, augment=flip, seed=0, workers=2, prefetch=1)]
    want = [b.copy() for b, _ in loaded.batches(5, augment=flip, seed=0, workers=1)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_stats_of_image_files_equal_those_of_the_loaded_array(files):
    loaded = preload.load(files.manifest, size=(12, 16))
    assert np.allclose(preload.stats(files).std, loaded.images.reshape(-1, 3).std(axis=0), rtol=1e-9)


def test_files_images_is_an_images_only_array_like(files):
    images = files.images
    loaded = preload.load(files.manifest, size=(12, 16))
    assert len(images) == 12 and images.shape == (12, 12, 16, 3) and images.dtype == np.uint8
    assert np.array_equal(images[3], loaded.images[3])
    assert np.array_equal(images[2:5], loaded.images[2:5])
    assert np.array_equal(images[np.array([7, 0, 7])], loaded.images[[7, 0, 7]])
    with pytest.raises(IndexError):
        images[12]


def test_batchup_over_files_images_yields_every_image_once(files):
    batchup = pytest.importorskip("batchup.data_source")
    loaded = preload.load(files.manifest, size=(12, 16))
    source = batchup.ArrayDataSource([files.images, files.labels])
    seen = []
    for batch, labels in source.batch_iterator(5, shuffle=np.random.RandomState(1)):
        assert batch.shape[1:] == (12, 16, 3) and len(batch) == len(labels)
        for image, label in zip(batch, labels, strict=True):
            row = next(i for i in range(12) if np.array_equal(loaded.images[i], image))
            assert loaded.labels[row] == label
            seen.append(row)
    assert sorted(seen) == list(range(12))
