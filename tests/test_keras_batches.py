"""preload.keras.Batches: a Keras PyDataset on the batch engine, run in a fresh interpreter per backend.

Skipped without Keras or a backend for it. Each run is a child interpreter
(Keras picks its backend once, at import; see test_keras.py).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [name for name in ("jax", "torch", "tensorflow") if importlib.util.find_spec(name) is not None]

if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed (optional)", allow_module_level=True)
if not BACKENDS:
    pytest.skip("no Keras backend installed (jax, torch or tensorflow)", allow_module_level=True)

SCRIPT = r"""
import numpy as np, keras, preload
from preload.keras import Batches

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (21, 16, 16, 3), dtype=np.uint8)
ds = preload.Dataset(images, np.arange(21) % 3, None, ["x"] * 21)
aug = preload.Augment(rotation=20, shift=0.1, flip="horizontal")
norm = preload.stats(ds)
first = Batches(ds, 8, seed=5, augment=aug, normalize=norm)
second = Batches(ds, 8, seed=5, augment=aug, normalize=norm, workers=1)
assert len(first) == 3, len(first)
batches = [first[i] for i in range(3)]
assert [len(y) for _, y in batches] == [8, 8, 5]
assert batches[0][0].dtype == np.float32 and batches[0][0].shape == (8, 16, 16, 3)
for i in range(3):
    assert np.array_equal(second[i][0], batches[i][0])
first.on_epoch_end()
assert not np.array_equal(first[0][1], batches[0][1]) or not np.array_equal(first[0][0], batches[0][0])
layers = [keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
model = keras.Sequential(layers)
model.compile("sgd", "sparse_categorical_crossentropy")
history = model.fit(Batches(ds, 8, seed=1, augment=aug, normalize=norm), epochs=2, verbose=0)
assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
print("ok")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_feed_model_fit_reproducibly(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
