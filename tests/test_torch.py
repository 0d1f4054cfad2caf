"""preload.torch.TorchDataset with DataLoader: batches, workers reopening the cache, transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import preload
from conftest import smooth_image, write

torch = pytest.importorskip("torch")
from preload.torch import TorchDataset  # noqa: E402


@pytest.fixture
def cache(tmp_path, rng):
    root = tmp_path / "src"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for k in range(8):
            write(root / name / f"{k}.png", smooth_image(rng, 16, 16))
    path = tmp_path / "c.npy"
    preload.build_cache(root, path, size=8, layout="NCHW", progress=False)
    return path


def test_dataloader_with_workers_reads_every_image_once(cache):
    ds = preload.open_cache(cache)
    loader = torch.utils.data.DataLoader(TorchDataset(cache), batch_size=5, num_workers=2, shuffle=False)
    images = torch.cat([batch for batch, _ in loader])
    labels = torch.cat([labels for _, labels in loader])
    assert images.dtype == torch.uint8 and tuple(images.shape) == (24, 3, 8, 8)
    assert np.array_equal(images.numpy(), ds.images)
    assert labels.tolist() == ds.labels.tolist()


def test_pickled_adapter_carries_no_pixels(cache):
    adapter = TorchDataset(preload.open_cache(cache))
    assert adapter[0][0].shape == (3, 8, 8)
    blob = pickle.dumps(adapter)
    assert len(blob) < 2000  # the path, not the 4.6 KB array (or a 6 GB one)
    clone = pickle.loads(blob)
    assert torch.equal(clone[5][0], adapter[5][0]) and clone[5][1] == adapter[5][1]


def test_transforms_and_ram_datasets(cache):
    ds = preload.open_cache(cache)
    ram = preload.Dataset(np.array(ds.images), ds.labels.copy(), ds.classes, list(ds.paths))
    adapter = TorchDataset(ram, transform=lambda t: t.float() / 255, target_transform=lambda y: y + 100)
    image, label = adapter[-1]
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0 and label == 102
    with pytest.raises(IndexError, match="index 24 is out of range"):
        adapter[24]
    with pytest.raises(preload.OptionError, match="not list"):
        TorchDataset([1, 2])


def test_the_old_name_still_works_with_a_deprecation_warning():
    import preload.torch

    with pytest.warns(DeprecationWarning, match=r"torch.Dataset is deprecated .* use preload.torch.TorchDataset"):
        old = preload.torch.Dataset
    assert old is TorchDataset
    with pytest.raises(AttributeError, match="has no attribute 'Datasett'"):
        preload.torch.Datasett  # noqa: B018
