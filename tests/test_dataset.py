"""The array-like protocol, batches and the lazy ImageFiles accessor."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import preload
from conftest import smooth_image, write
from preload import Dataset, ImageFiles


@pytest.fixture
def labelled():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    return Dataset(images, np.arange(10, dtype=np.int64) * 10, None, [f"{k}.png" for k in range(10)])


@pytest.fixture
def cached(tmp_path, rng):
    root = tmp_path / "src"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for k in range(7):
            write(root / name / f"{k}.png", smooth_image(rng, 12, 12))
    return preload.build_cache(root, tmp_path / "c.npy", size=8, progress=False), root


def test_int_negative_and_labels(labelled):
    image, label = labelled[3]
    assert image.shape == (2, 2, 3) and int(image[0, 0, 0]) == 3 and label == 30
    image, label = labelled[-1]
    assert int(image[0, 0, 0]) == 9 and label == 90
    assert len(labelled) == 10


def test_slices_and_index_arrays(labelled):
    images, labels = labelled[2:8:2]
    assert images[:, 0, 0, 0].tolist() == [2, 4, 6] and labels.tolist() == [20, 40, 60]
    images, labels = labelled[np.array([7, -1, 0, 7])]
    assert images[:, 0, 0, 0].tolist() == [7, 9, 0, 7] and labels.tolist() == [70, 90, 0, 70]
    images, labels = labelled[[True, False] * 5]
    assert labels.tolist() == [0, 20, 40, 60, 80]
    assert labelled[np.array([], np.int64)][0].shape == (0, 2, 2, 3)


def test_unlabelled_returns_images_only(labelled):
    plain = Dataset(labelled.images, None, None, labelled.paths)
    assert plain[0].shape == (2, 2, 3)
    assert plain[[1, 2]].shape == (2, 2, 2, 3)


@pytest.mark.parametrize(
    "key, error, words",
    [(10, IndexError, r"index 10 is out of range for Dataset of 10 images"),
     (-11, IndexError, r"index -11 is out of range"),
     ([0, 12], IndexError, r"index 12 is out of range"),
     (1.5, TypeError, r"an int, a slice or a 1-D array of ints, not float"),
     ("3", TypeError, r"not str"),
     (np.array([[0, 1]]), TypeError, r"1-D index array, not one of shape \(1, 2\)"),
     (np.array([0.5]), TypeError, r"must hold integers, not float64"),
     ([True] * 3, IndexError, r"boolean mask for Dataset needs 10 values, not 3")],
)
def test_bad_indices_name_what_was_given(labelled, key, error, words):
    with pytest.raises(error, match=words):
        labelled[key]


def test_batches_in_order_shuffled_and_deterministic(labelled):
    ordered = [labels.tolist() for _, labels in labelled.batches(4)]
    assert ordered == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
    assert [len(b[1]) for b in labelled.batches(4, drop_last=True)] == [4, 4]
    first = [labels.tolist() for _, labels in labelled.batches(3, shuffle=7)]
    again = [labels.tolist() for _, labels in labelled.batches(3, shuffle=np.random.default_rng(7))]
    assert first == again
    assert sorted(sum(first, [])) == list(range(0, 100, 10))
    for images, labels in labelled.batches(3, shuffle=7):
        assert (images[:, 0, 0, 0].astype(int) * 10).tolist() == labels.tolist()


def test_batches_reuse_one_buffer(labelled):
    buffer = np.empty((4, 2, 2, 3), np.uint8)
    seen = []
    for images, labels in labelled.batches(4, shuffle=1, out=buffer):
        assert np.shares_memory(images, buffer)
        seen.append((images[:, 0, 0, 0].astype(int) * 10).tolist() == labels.tolist())
    assert seen == [True, True, True]
    batches = list(labelled.batches(4, out=True))
    assert np.shares_memory(batches[0][0], batches[1][0])
    with pytest.raises(preload.OptionError, match=r"out= must be None, True or a writable uint8 array of shape"):
        next(labelled.batches(4, out=np.empty((3, 2, 2, 3), np.uint8)))
    with pytest.raises(preload.OptionError, match=r"batch_size=0"):
        next(labelled.batches(0))
    with pytest.raises(preload.OptionError, match=r"shuffle='yes'"):
        next(labelled.batches(2, shuffle="yes"))


def test_cache_batches_read_sorted_and_restore_order(cached, monkeypatch):
    ds, _ = cached
    reads = []
    real_take = np.take

    def spy(array, rows, *args, **kwargs):
        reads.append(np.asarray(rows).tolist())
        return real_take(array, rows, *args, **kwargs)

    monkeypatch.setattr(np, "take", spy)
    images, labels = ds[np.array([9, 2, 13, 2])]
    assert reads == [[2, 2, 9, 13]]  # one forward sweep through the file
    assert np.array_equal(images, np.stack([np.asarray(ds.images[i]) for i in (9, 2, 13, 2)]))
    assert labels.tolist() == [1, 0, 1, 0]


def test_image_files_decode_on_access(cached):
    ds, root = cached
    files = ImageFiles(root, size=8)
    assert len(files) == 14 and files.classes == ["a", "b"]
    image, label = files[-1]
    assert np.array_equal(image, ds.images[13]) and label == 1
    images, labels = files[np.array([3, 10])]
    assert np.array_equal(images, ds.images[[3, 10]]) and labels.tolist() == [0, 1]
    batch = [labels.tolist() for _, labels in files.batches(5, shuffle=3)]
    assert sorted(sum(batch, [])) == [0] * 7 + [1] * 7
    clone = pickle.loads(pickle.dumps(files))
    assert np.array_equal(clone[0][0], files[0][0])
    with pytest.raises(preload.OptionError, match="ImageFiles needs size="):
        ImageFiles(root, size=None)
