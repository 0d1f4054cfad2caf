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


# --- buffers: reused, never under a batch the caller holds ------------------------------------


def _labelled(rng, count=30, size=8):
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return preload.Dataset(images, np.arange(count), None, ["x"] * count)


def _data_pointer(array) -> int:
    return array.__array_interface__["data"][0]


ENGINE_OPTIONS = [
    {"workers": 2},
    {"workers": 1, "prefetch": 2},
    {"workers": 2, "prefetch": 1, "dtype": "float32"},
    {"prefetch": 1, "normalize": preload.Normalize(rescale=2.0)},
    {"prefetch": 3, "transform": lambda image: 255 - image, "batch_transform": lambda batch: batch[::-1]},
]


@pytest.mark.parametrize("options", ENGINE_OPTIONS)
def test_kept_batches_stay_intact(rng, options):
    # Before the fix every batch of list(...) pointed into the same prefetch + 1 buffers: overwritten.
    ds = _labelled(rng)
    want = [(b.copy(), y.copy()) for b, y in ds.batches(4, shuffle=5, **options)]
    kept = list(ds.batches(4, shuffle=5, **options))
    assert len(kept) == 8
    assert all(np.array_equal(b, w) and np.array_equal(y, v) for (b, y), (w, v) in zip(kept, want, strict=True))
    views = [b[1:3] for b, _ in ds.batches(4, shuffle=5, **options)]  # a view holds its batch too
    assert all(np.array_equal(v, w[1:3]) for v, (w, _) in zip(views, want, strict=True))


def test_a_batch_held_across_iterations_keeps_its_values(rng):
    ds = _labelled(rng)
    held = None
    for step, (images, labels) in enumerate(ds.batches(4, prefetch=2, workers=2)):
        if step == 1:
            held, expected = images, ds.images[labels].copy()
    assert np.array_equal(held, expected)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_released_batches_reuse_a_ring_of_prefetch_plus_two_buffers(rng, prefetch):
    ds = _labelled(rng, count=80)
    pointers = {_data_pointer(images) for images, _ in ds.batches(4, shuffle=1, prefetch=prefetch, workers=2,
                                                                   normalize=preload.Normalize(rescale=0.5))}
    assert len(pointers) == prefetch + 2  # 20 batches, no new buffer after the first prefetch + 2
    augmented = {_data_pointer(images) for images, _ in ds.batches(4, prefetch=prefetch, seed=0,
                                                                    augment=preload.Augment(flip="both"))}
    assert len(augmented) == prefetch + 2


def test_image_files_batches_reuse_the_ring_too(files):
    pointers = {_data_pointer(images) for images, _ in files.batches(2, prefetch=1, workers=2,
                                                                      augment=preload.Augment(rotation=5), seed=1)}
    assert len(pointers) == 3


def test_out_true_reuses_prefetch_plus_one_buffers_valid_until_the_next_batch(rng):
    ds = _labelled(rng, count=12)
    pointers = []
    for images, labels in ds.batches(4, out=True, prefetch=1, workers=2):
        assert np.array_equal(images, ds.images[labels])  # intact while it is the current batch
        pointers.append(_data_pointer(images))
    assert len(set(pointers)) == 2 and pointers[0] == pointers[2]
    kept = list(ds.batches(4, out=True, prefetch=1))
    assert np.shares_memory(kept[0][0], kept[2][0])  # the documented price of out=True


@pytest.mark.parametrize("count", [64, 512])
def test_peak_memory_of_an_epoch_is_the_ring_whatever_the_length(rng, count):
    tracemalloc = pytest.importorskip("tracemalloc")
    ds = _labelled(rng, count=count, size=32)
    batch_bytes = 16 * 32 * 32 * 3 * (1 + 4)  # the uint8 and the float32 buffer of one batch
    prefetch = 2
    tracemalloc.start()
    try:
        for images, _ in ds.batches(16, shuffle=1, prefetch=prefetch, workers=2, augment=preload.Augment(rotation=5),
                                    normalize=preload.Normalize(rescale=1 / 255)):
            assert images.dtype == np.float32
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (prefetch + 2) * batch_bytes <= peak <= (prefetch + 2) * batch_bytes + (1 << 20)


def test_a_batch_size_beyond_the_data_allocates_only_the_data(rng):
    ds = _labelled(rng, count=5)
    # Before the fix: buffers of batch_size rows, a MemoryError for 10**12.
    (images, labels), = ds.batches(10**12, prefetch=1, dtype="float32")
    assert images.shape == (5, 8, 8, 3) and labels.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(images, ds.images.astype(np.float32))


# --- shuffle: generators and seeds --------------------------------------------------------------


def test_shuffle_takes_a_random_state_as_batchup_does(rng):
    ds = _labelled(rng)
    aug = preload.Augment(rotation=15)

    def run(shuffle):
        return [(b.copy(), y.tolist()) for b, y in ds.batches(4, shuffle=shuffle, augment=aug, prefetch=1)]

    first, second = run(np.random.RandomState(3)), run(np.random.RandomState(3))
    assert [y for _, y in first] == [y for _, y in second]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, second, strict=True))
    assert sorted(sum((y for _, y in first), [])) == list(range(30))
    assert [y for _, y in run(np.random.RandomState(4))] != [y for _, y in first]


def test_shuffle_true_with_a_seed_is_reproducible(rng):
    ds = _labelled(rng)
    runs = [[y.tolist() for _, y in ds.batches(4, shuffle=True, seed=11, prefetch=p)] for p in (0, 2)]
    assert runs[0] == runs[1] and runs[0] != [y.tolist() for _, y in ds.batches(4)]
    assert [y.tolist() for _, y in ds.batches(4, shuffle=np.True_, seed=11)] == runs[0]
    assert [y.tolist() for _, y in ds.batches(4, shuffle=np.False_)] == [y.tolist() for _, y in ds.batches(4)]


def test_a_cache_with_a_partial_last_batch_matches_the_loaded_array(tmp_path, rng):
    source = class_folders(tmp_path / "src", rng, per_class=5)  # 15 images: batches of 4, 4, 4, 3
    preload.build_cache(source, tmp_path / "c.npy", size=(12, 16), progress=False)
    cached = preload.open_cache(tmp_path / "c.npy")
    loaded = preload.load(source, size=(12, 16))
    assert isinstance(cached.images, np.memmap)
    aug = preload.Augment(rotation=10, zoom=0.1, flip="horizontal")
    options = {"shuffle": 2, "augment": aug, "normalize": preload.stats(loaded)}
    from_cache = list(cached.batches(4, prefetch=2, workers=2, **options))
    from_ram = list(loaded.batches(4, prefetch=0, workers=1, **options))
    assert [len(y) for _, y in from_cache] == [4, 4, 4, 3]
    for (a, y), (b, z) in zip(from_cache, from_ram, strict=True):
        assert np.array_equal(a, b) and np.array_equal(y, z)
    dropped = list(cached.batches(4, drop_last=True, dtype="float64", prefetch=3))
    assert np.array_equal(np.concatenate([b for b, _ in dropped]), loaded.images[:12].astype(np.float64))


# --- the adapters' epochs ---------------------------------------------------------------------


class _FakePyDataset:
    """What preload.keras.Batches needs of keras.utils.PyDataset, for running it without Keras."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.workers = workers


def test_torch_and_keras_adapters_make_the_same_epochs(rng):
    torch = pytest.importorskip("torch")
    import preload.keras
    import preload.torch

    class Batches(preload.keras._Batches, _FakePyDataset):
        pass

    ds = _labelled(rng, count=10)
    aug = preload.Augment(rotation=20, flip="horizontal")
    loader = preload.torch.loader(ds, 4, seed=5, augment=aug, prefetch=1, workers=2)
    keras_batches = Batches(ds, 4, seed=5, augment=aug, drop_last=False)
    assert len(loader) == len(keras_batches) == keras_batches.num_batches == 3
    orders = []
    for _ in range(2):
        order = []
        for index, (images, labels) in enumerate(loader):
            theirs, their_labels = keras_batches[index]
            assert torch.equal(images, torch.from_numpy(theirs)) and labels.tolist() == their_labels.tolist()
            order += labels.tolist()
        keras_batches.on_epoch_end()
        orders.append(order)
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1]) == list(range(10))
    with pytest.raises(preload.OptionError, match="shuffle=Generator"):
        Batches(ds, 4, shuffle=np.random.default_rng(0))
    with pytest.raises(preload.OptionError, match="seed=-2"):
        Batches(ds, 4, seed=-2)
    with pytest.raises(IndexError, match="batch index 3 is out of range for 3 batches"):
        keras_batches[3]
