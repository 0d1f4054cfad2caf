"""Keras on a preload cache: ``model.fit`` on the memmap, and ``preload.keras.Batches`` (a ``PyDataset``).

Keras is optional and not installed in CI: without it, or without a backend
for it (JAX, PyTorch or TensorFlow), these tests skip.

Each backend runs in a fresh interpreter (this file run as a script): Keras
reads its backend once, at import, and JAX's threads would make every
``os.fork()`` later in the test session (DataLoader workers, memory
sampling) a possible deadlock.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload

BACKENDS = [name for name in ("jax", "torch", "tensorflow") if importlib.util.find_spec(name) is not None]
SIZE = 16
PER_CLASS = 6

if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed (optional: pip install keras jax)", allow_module_level=True)
if not BACKENDS:
    pytest.skip("no Keras backend installed (jax, torch or tensorflow)", allow_module_level=True)


@pytest.fixture
def cache(tmp_path, rng):
    """A 12-image cache with two classes whose images differ in brightness."""
    for label, name in enumerate(("dark", "light")):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for k in range(PER_CLASS):
            base = 40 + 160 * label
            image = rng.integers(base, base + 50, (SIZE, SIZE, 3), dtype=np.uint8)
            assert cv2.imwrite(str(folder / f"{k}.png"), image)
    path = tmp_path / "cache.npy"
    preload.build_cache(tmp_path / "images", path, size=SIZE, layout="NHWC", progress=False)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_trains_on_a_cache(cache, backend):
    root = str(Path(__file__).resolve().parent.parent)  # the checkout's preload, as in this process
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, __file__, str(cache)], capture_output=True, text=True, timeout=300, env=env)
    if done.returncode == 3:  # keras itself or this backend does not import here
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["fit_on_memmap", "batches", "batches_in_order", "batches_augmented"]


# ------------------------------------------------------------------ run in the child, one backend


def _model(keras):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def check_fit_on_memmap(keras, cache: Path) -> None:
    ds = preload.open_cache(cache)
    assert isinstance(ds.images, np.memmap)
    assert ds.images.shape == (2 * PER_CLASS, SIZE, SIZE, 3)
    history = _model(keras).fit(ds.images, ds.labels, epochs=1, batch_size=4, verbose=0)
    assert len(history.history["loss"]) == 1
    assert math.isfinite(history.history["loss"][0])


def check_batches(keras, cache: Path) -> None:
    from preload.keras import Batches

    batches = Batches(cache, 5, seed=3)
    assert isinstance(batches, keras.utils.PyDataset)
    assert len(batches) == 3  # 12 images: 5 + 5 + 2

    ds = preload.open_cache(cache)
    orders = []
    for _epoch in range(2):
        labels_seen = []
        for index in range(len(batches)):
            images, labels = batches[index]
            assert images.dtype == np.uint8 and images.shape == (len(labels), SIZE, SIZE, 3)
            for image, label in zip(images, labels, strict=True):
                row = next(i for i in range(len(ds)) if np.array_equal(ds.images[i], image))
                assert ds.labels[row] == label
                labels_seen.append(row)
        assert sorted(labels_seen) == list(range(len(ds)))  # every image once per epoch
        orders.append(labels_seen)
        batches.on_epoch_end()
    assert orders[0] != orders[1]  # a new permutation each epoch
    again = Batches(cache, 5, seed=3)
    assert np.array_equal(again[0][0], Batches(cache, 5, seed=3)[0][0])

    history = _model(keras).fit(Batches(cache, 4), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert all(math.isfinite(loss) for loss in history.history["loss"])


def check_batches_in_order(keras, cache: Path) -> None:
    from preload.keras import Batches

    images, labels = Batches(cache, 8, shuffle=False)[1]
    ds = preload.open_cache(cache)
    assert np.array_equal(images, ds.images[8:])
    assert labels.tolist() == ds.labels[8:].tolist()


def check_batches_augmented(keras, cache: Path) -> None:
    from preload.keras import Batches

    ds = preload.open_cache(cache)
    aug = preload.Augment(rotation=20, shift=0.1, flip="horizontal")
    stats = preload.stats(ds)
    first = Batches(ds, 5, seed=1, augment=aug, normalize=stats)
    second = Batches(ds, 5, seed=1, augment=aug, normalize=stats, workers=1)
    for index in range(len(first)):
        images, _ = first[index]
        assert images.dtype == np.float32
        assert np.array_equal(images, second[index][0])  # bit-identical, whatever thread prepared it
    history = _model(keras).fit(Batches(ds, 4, seed=0, augment=aug, normalize=stats), epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])


def _main(cache: Path) -> int:
    try:
        import keras
    except ImportError as exc:
        print(f"keras with the {os.environ.get('KERAS_BACKEND')} backend does not import: {exc}")
        return 3
    for check in (check_fit_on_memmap, check_batches, check_batches_in_order, check_batches_augmented):
        check(keras, cache)
        print(check.__name__.removeprefix("check_"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1])))
