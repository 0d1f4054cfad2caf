"""preload.torch.loader (tensors sharing the batch buffers); TorchDataset in-RAM images under each start method."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

import preload
import preload.batching
import preload.shared

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")
import preload.torch as preload_torch  # noqa: E402 - after the skip


def _dataset(count=10, layout="NCHW"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 3, 8, 8) if layout == "NCHW" else (count, 8, 8, 3), dtype=np.uint8)
    options = preload.DecodeOptions.create(size=8, layout=layout)
    return preload.Dataset(images, np.arange(count), None, ["x"] * count, options=options)


def test_loader_yields_tensors_sharing_the_batch_buffers():
    ds = _dataset()
    loader = preload_torch.loader(ds, 4, shuffle=False, prefetch=1, workers=1)
    assert len(loader) == 3
    batches = []
    pointers = set()
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        pointers.add(images.data_ptr())
        batches.append((images.clone(), labels.clone()))
    assert len(pointers) == 3  # prefetch=1: a ring of three buffers (prefetch + 2), reused in turn
    assert torch.equal(torch.cat([b for b, _ in batches]), torch.from_numpy(ds.images))
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))


def test_loader_epochs_are_reproducible_and_differ_from_each_other():
    ds = _dataset(layout="NHWC")
    aug = preload.Augment(rotation=30, flip="horizontal")

    def epochs(workers):
        loader = preload_torch.loader(ds, 4, seed=9, augment=aug, normalize=preload.stats(ds), workers=workers)
        return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(2)]

    one, two = epochs(1), epochs(2)
    assert all(torch.equal(a[0], b[0]) for e1, e2 in zip(one, two, strict=True) for a, b in zip(e1, e2, strict=True))
    assert one[0][0][0].dtype == torch.float32
    assert [y.tolist() for _, y in one[0]] != [y.tolist() for _, y in one[1]]


def test_loader_rejects_bad_options():
    with pytest.raises(preload.OptionError, match="prefetch=-2"):
        preload_torch.loader(_dataset(), 4, prefetch=-2)
    with pytest.raises(preload.OptionError, match="seed='a'"):
        preload_torch.loader(_dataset(), 4, seed="a")
    # A generator was taken as True: an order the caller's generator did not decide.
    with pytest.raises(preload.OptionError, match="shuffle=Generator"):
        preload_torch.loader(_dataset(), 4, shuffle=np.random.default_rng(0))
    with pytest.raises(preload.OptionError, match="pin_memory='yes'"):
        preload_torch.loader(_dataset(), 4, pin_memory="yes")
    with pytest.raises(preload.OptionError, match="batch_size=0"):
        preload_torch.loader(_dataset(), 0)


def test_kept_tensors_stay_intact():
    ds = _dataset()
    kept = list(preload_torch.loader(ds, 4, shuffle=False, prefetch=1, workers=2))  # no clone()
    assert torch.equal(torch.cat([images for images, _ in kept]), torch.from_numpy(ds.images))
    assert torch.cat([labels for _, labels in kept]).tolist() == list(range(10))


@pytest.mark.parametrize(("count", "drop_last", "batches"), [(10, False, 3), (10, True, 2), (8, True, 2), (3, True, 0)])
def test_len_counts_batches_without_building_an_engine(monkeypatch, count, drop_last, batches):
    loader = preload_torch.loader(_dataset(count), 4, drop_last=drop_last)
    built = []
    original = preload.batching.BatchEngine.__init__
    monkeypatch.setattr(preload.batching.BatchEngine, "__init__",
                        lambda self, *args, **kwargs: built.append(1) or original(self, *args, **kwargs))
    assert len(loader) == batches and built == []
    assert len(list(loader)) == batches and built == [1]


def private_bytes(address: int) -> int:
    """Private (unshared) bytes of this process's mapping that holds ``address``, from /proc/self/smaps."""
    inside = False
    total = 0
    with open("/proc/self/smaps") as handle:
        for line in handle:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head in ("Private_Clean:", "Private_Dirty:"):
                total += int(line.split()[1]) * 1024
    return total


class Measured(preload_torch.TorchDataset):
    """Items are image sums; the last one also reports the private bytes under the images and the USS."""

    last = -1

    def __getitem__(self, index):
        image, _ = super().__getitem__(index)
        if index != self.last:
            return image.sum(), 0, 0
        images = self._open().images
        return image.sum(), private_bytes(images.ctypes.data), psutil.Process().memory_full_info().uss


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_in_ram_images_reach_workers_without_a_copy(method):
    count = 2048  # 96 MiB of images: a pickled copy would be that much private memory in the worker
    images = np.tile(np.arange(256, dtype=np.uint8), count * 192).reshape(count, 3, 128, 128)
    ds = preload.Dataset(images, np.arange(count), None, ["x"] * count)
    indices = np.linspace(0, count - 1, 32).astype(int).tolist()  # reads spread over the whole array
    dataset = Measured(ds)
    dataset.last = indices[-1]
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, sampler=indices, num_workers=1,
        multiprocessing_context=multiprocessing.get_context(method),
    )
    sums, private, uss = (torch.cat(column) for column in zip(*loader, strict=True))
    assert int(sums.sum()) == int(images[indices].sum(dtype=np.int64))
    assert int(private.max()) / 2**20 < 50
    assert np.array_equal(ds.images, images)  # moved into shared memory or not, the same values


def test_pickled_outside_a_worker_start_a_dataset_travels_by_value():
    import pickle

    ds = _dataset()
    again = pickle.loads(pickle.dumps(preload_torch.TorchDataset(ds)))
    assert np.array_equal(again._open().images, ds.images)
    handle = preload.shared.share(ds.images)
    copy = pickle.loads(pickle.dumps(handle))
    assert copy.fd is None and np.array_equal(copy.array, ds.images)
