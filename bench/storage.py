"""Benchmark: the same images stored as preload's ``.npy`` cache, HDF5, LMDB and a folder of PNG files.

The images are decoded once, by ``preload.build_cache(..., size=256,
layout="NHWC")``; every other store is written from that cache's array, so
all of them hold the same bytes (checked: the SHA-256 of a full read from
each store must be the cache's). The stores:

``npy``
    preload's cache: a plain ``.npy`` read through a read-only memmap.
``h5-contiguous`` / ``h5-chunked``
    one HDF5 dataset ``images`` of shape (N, H, W, C), uncompressed;
    contiguous, or in chunks of one image.
``lmdb``
    one value per image (its raw H*W*C bytes) under the key ``b"%08d" % i``.
``png``
    ``000000.png`` ... one file per image (OpenCV, compression level 1).

For each it measures, each figure in a fresh interpreter (this script
re-run with ``--child``):

- **write**: from the array in RAM (loaded untimed) to the store, each file
  fsynced before the clock stops (after an ``os.sync()`` in the parent, so
  no earlier write is still being written back);
- **bytes on disk**: allocated blocks (``st_blocks``), metadata included;
- **full read** into one preallocated (and already touched) array, warm;
- **100 random batches of 64**, the same seeded batches for every store,
  each read into a preallocated batch buffer (the way a training loop asks),
  warm (every store's files read once before) and cold (``os.sync()`` and
  ``3 > /proc/sys/vm/drop_caches`` in the child, after its imports and the
  store's opening, just before the clock starts).

How a batch is read, per store (the *method*):

- npy ``take``: sort the indices, ``np.take(images, sorted, axis=0,
  mode="clip", out=buffer)``, then put the rows back in the batch's shuffled
  order with a second ``np.take`` into the output buffer. Sorted, the reads
  walk the file forwards; ``mode="clip"`` because with the default
  ``mode="raise"`` NumPy first takes into a temporary and then copies it into
  ``out`` (so a bad index cannot leave ``out`` half written).
- npy ``fancy``: ``images[idx]``, a new array per batch.
- npy ``slots``: the rows in sorted order, each copied straight into its
  shuffled slot (one copy instead of ``take``'s two; for comparison), from
  ``np.asarray(images)``: per row, the ``np.memmap`` subclass costs ~10 us.
- npy ``preload``: ``preload.take_rows(images, idx, out=buffer)``,
  what ``Dataset.batches(..., out=buffer)`` runs: sorted rows, each copied
  once into its slot, by two threads on a machine with two or more CPUs (its
  default for batches of 8 MB and more); rows not in the page cache are first
  requested all at once (``madvise(MADV_WILLNEED)``).
- npy ``preload-1``: the same with ``workers=1``, the one-thread figure.
- HDF5 ``image``: ``out[k] = dset[i]`` image by image (measured faster here
  than ``dset.read_direct`` per image, whose selection setup costs more).
- HDF5 ``fancy``: ``dset[sorted_idx]`` (h5py wants increasing indices), then
  the shuffled order restored. On a chunked dataset this takes about a second
  a batch, so it runs batches only until ``--fancy-budget`` seconds have passed
  and the figure is extrapolated to all batches (marked ``~``, with how many ran).
- LMDB ``txn``: one read transaction per batch, ``np.frombuffer`` of each
  value (a view into LMDB's map, ``buffers=True``) copied into the buffer;
  opened as py-lmdb opens by default (``readahead=True``) and with
  ``readahead=False`` (``MDB_NORDAHEAD``, the usual advice for random access),
  which cold is a different story.
- PNG: ``cv2.imread`` per file, decoded to RGB into the buffer.

Everything runs on one thread but ``preload`` (above). Repeats are interleaved (repeat after repeat,
every method once each, in a seeded shuffled order after the first), so
drift on a shared host or what ran just before does not favour one store;
the table shows medians. On a virtual machine, writes in particular vary
several-fold between identical runs (page allocation, writeback), so their
range is printed too.

Run from a checkout (preload need not be installed)::

    python bench/storage.py --count 4000
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SEED, import_preload, require_positive, use_checkout

DATA = ROOT / "bench" / "data"
BATCH_SEED = 1234  # the random batches: the same for every store
CACHE_NAME = "cache.npy"
MB = 1e6

# store -> (label, the module it needs or None)
STORES = {
    "npy": ("preload cache (.npy)", None),
    "h5-contiguous": ("HDF5 contiguous", "h5py"),
    "h5-chunked": ("HDF5 chunked (1 image)", "h5py"),
    "lmdb": ("LMDB (1 value/image)", "lmdb"),
    "png": ("PNG folder", None),
}
# (store, method) -> label; the order of the table
METHODS = {
    ("npy", "take"): "sort, np.take(clip), reorder",
    ("npy", "fancy"): "fancy images[idx]",
    ("npy", "slots"): "sorted rows into slots",
    ("npy", "preload"): "preload take_rows(out=)",
    ("npy", "preload-1"): "  the same, workers=1",
    ("h5-contiguous", "image"): "image by image",
    ("h5-contiguous", "fancy"): "fancy dset[sorted]",
    ("h5-chunked", "image"): "image by image",
    ("h5-chunked", "fancy"): "fancy dset[sorted]",
    ("lmdb", "txn"): "txn/batch, readahead on",
    ("lmdb", "txn-nora"): "txn/batch, readahead=False",
    ("png", "imread"): "cv2.imread per file",
}
# The cache's batch reads the targets are checked for: the issue's way (sort, take, reorder: two copies),
# the same order of reads with one copy, and what Dataset.batches runs (preload's take_rows).
CACHE_METHODS = ("take", "slots", "preload")
TARGETS = [  # (kind, other method, the factor the cache must be faster by)
    ("warm", ("lmdb", "txn"), 1.0),
    ("warm", ("lmdb", "txn-nora"), 1.0),
    ("warm", ("h5-contiguous", "image"), 4.0),
    ("warm", ("h5-chunked", "image"), 4.0),
    ("cold", ("lmdb", "txn"), 5.0),
    ("cold", ("lmdb", "txn-nora"), 5.0),
    ("cold", ("h5-contiguous", "image"), 2.0),
    ("cold", ("h5-chunked", "image"), 2.0),
]
TARGET_GBPS = 5.0  # full sequential read from the cache, warm
LMDB_KEY = b"%08d"
PNG_LEVEL = 1  # OpenCV's default PNG compression: fastest
VERIFY_BATCHES = 10  # batches re-read after timing (first warm repeat) and compared with the cache

EPILOG = """examples:
  python bench/storage.py --count 4000                # the issue's benchmark (786 MB per store)
  python bench/storage.py --count 200 --repeats 1 --no-cold --json r.json
  python bench/storage.py --stores npy,lmdb --keep --out /tmp/stores
"""


def _missing(module: str | None) -> str | None:
    """Why ``module`` cannot be imported (None: it can, or none is needed)."""
    if module is None:
        return None
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); pip install '.[bench]' adds it"
    return None


# ------------------------------------------------------------------ the stores: paths and writers


def _store_path(out: str, store: str) -> str:
    return os.path.join(
        out,
        {
            "npy": CACHE_NAME,
            "h5-contiguous": "contiguous.h5",
            "h5-chunked": "chunked.h5",
            "lmdb": "images.lmdb",
            "png": "png",
        }[store],
    )


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_store(store: str, path: str, images) -> None:
    """Write ``images`` (N, H, W, C) uint8 in RAM as ``store`` at ``path``, every file fsynced."""
    import numpy as np

    if store == "npy":
        with open(path, "wb") as handle:
            np.save(handle, images)
            handle.flush()
            os.fsync(handle.fileno())
    elif store in ("h5-contiguous", "h5-chunked"):
        import h5py

        chunks = (1, *images.shape[1:]) if store == "h5-chunked" else None
        with h5py.File(path, "w") as handle:
            dataset = handle.create_dataset("images", shape=images.shape, dtype=np.uint8, chunks=chunks)
            dataset[...] = images
        _fsync(path)
    elif store == "lmdb":
        import lmdb

        # A 196,608-byte value takes 49 overflow pages (its 16-byte header spills into one more).
        per_value = (images[0].nbytes // 4096 + 2) * 4096
        env = lmdb.open(path, map_size=len(images) * per_value * 2 + (64 << 20), subdir=True)
        try:
            step = 256  # one write transaction per step: a bounded dirty set
            for start in range(0, len(images), step):
                with env.begin(write=True) as txn:
                    for i in range(start, min(start + step, len(images))):
                        txn.put(LMDB_KEY % i, images[i].data, append=True)
            env.sync(True)
        finally:
            env.close()
    elif store == "png":
        import cv2

        os.makedirs(path, exist_ok=True)
        names = []
        for i, image in enumerate(images):
            name = os.path.join(path, f"{i:06d}.png")
            if not cv2.imwrite(name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]):
                raise RuntimeError(f"cannot write '{name}'")
            names.append(name)
        for name in names:  # after all writes, so the kernel may already have written most back
            _fsync(name)
        _fsync(path)
    else:
        raise ValueError(store)


def _disk_bytes(path: str) -> tuple[int, int]:
    """(allocated bytes, apparent bytes) of a file, or of every file under a folder."""
    if os.path.isfile(path):
        files = [path]
    else:
        files = [os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names]
    stats = [os.stat(name) for name in files]
    return sum(s.st_blocks * 512 for s in stats), sum(s.st_size for s in stats)


def _store_files(out: str, store: str) -> list[str]:
    """Every file that makes up the store (the cache: array, metadata and index)."""
    path = _store_path(out, store)
    if store == "npy":
        return [path, path + ".json", path + ".index.npz"]
    if os.path.isdir(path):
        return sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names)
    return [path]


# ------------------------------------------------------------------ the stores: readers


class Reader:
    """One store opened for reading; ``batch(idx)`` returns the images ``idx`` in that order."""

    def __init__(self, store: str, method: str | None, path: str, count: int, shape: tuple, batch_size: int):
        import numpy as np

        self.np = np
        self.store, self.method, self.count, self.shape = store, method, count, tuple(shape)
        self.buffer = np.empty((batch_size, *shape), np.uint8)
        self.sorted_buffer = np.empty_like(self.buffer)
        self.buffer.fill(0)  # touched now, so no page fault lands in the timed loop
        self.sorted_buffer.fill(0)
        self._close = lambda: None
        if store == "npy":
            self.images = np.load(path, mmap_mode="r")
            if method in ("preload", "preload-1"):
                use_checkout()
                from preload import take_rows

                self._take_rows = take_rows
        elif store.startswith("h5"):
            import h5py

            self._file = h5py.File(path, "r")
            self.images = self._file["images"]
            self._close = self._file.close
        elif store == "lmdb":
            import lmdb

            readahead = method != "txn-nora"
            self.env = lmdb.open(path, readonly=True, lock=False, readahead=readahead, subdir=True)
            self.keys = [LMDB_KEY % i for i in range(count)]
            self._close = self.env.close
        elif store == "png":
            import cv2

            cv2.setNumThreads(1)  # one thread, like every other store
            self.cv2 = cv2
            self.paths = [os.path.join(path, f"{i:06d}.png") for i in range(count)]
        else:
            raise ValueError(store)

    def close(self) -> None:
        self._close()

    # -- batches

    def batch(self, idx):
        return getattr(self, "_batch_" + self.method.replace("-", "_"))(idx)

    def _sorted(self, idx):
        order = self.np.argsort(idx, kind="stable")
        inverse = self.np.empty_like(order)
        inverse[order] = self.np.arange(len(order))
        return idx[order], order, inverse

    def _batch_take(self, idx):
        np = self.np
        rows, _, inverse = self._sorted(idx)
        np.take(self.images, rows, axis=0, mode="clip", out=self.sorted_buffer)
        return np.take(self.sorted_buffer, inverse, axis=0, mode="clip", out=self.buffer)

    def _batch_fancy(self, idx):
        if self.store == "npy":
            return self.images[idx]
        # h5py takes increasing indices only; put the batch back in its order afterwards.
        rows, _, inverse = self._sorted(idx)
        return self.np.take(self.images[rows], inverse, axis=0, mode="clip", out=self.buffer)

    def _batch_slots(self, idx):
        # A plain ndarray view of the mapping: each row of an np.memmap is another np.memmap,
        # whose __array_finalize__ cost ~10 us a row (measured ~0.05 s over 6,400 rows).
        images, buffer = self.np.asarray(self.images), self.buffer
        for k in self.np.argsort(idx, kind="stable").tolist():
            buffer[k] = images[idx[k]]
        return buffer

    def _batch_preload(self, idx):
        return self._take_rows(self.images, idx, out=self.buffer)

    def _batch_preload_1(self, idx):
        return self._take_rows(self.images, idx, out=self.buffer, workers=1)

    def _batch_image(self, idx):
        images, buffer = self.images, self.buffer
        for k, i in enumerate(idx.tolist()):
            buffer[k] = images[i]
        return buffer

    def _batch_txn(self, idx):
        np, keys, buffer, shape = self.np, self.keys, self.buffer, self.shape
        with self.env.begin(buffers=True) as txn:
            for k, i in enumerate(idx.tolist()):
                buffer[k] = np.frombuffer(txn.get(keys[i]), np.uint8).reshape(shape)
        return buffer

    _batch_txn_nora = _batch_txn

    def _batch_imread(self, idx):
        buffer = self.buffer
        for k, i in enumerate(idx.tolist()):
            self._imread(self.paths[i], buffer[k])
        return buffer

    def _imread(self, path: str, slot) -> None:
        cv2 = self.cv2
        flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11 decodes straight to RGB
        image = cv2.imread(path, cv2.IMREAD_COLOR if flag is None else flag)
        if image is None:
            raise RuntimeError(f"cannot read '{path}'")
        if flag is None:
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=slot)
        else:
            slot[...] = image

    # -- everything, in order

    def read_all(self, out) -> None:
        np = self.np
        if self.store == "npy":
            np.copyto(out, self.images)
        elif self.store.startswith("h5"):
            self.images.read_direct(out)
        elif self.store == "lmdb":
            with self.env.begin(buffers=True) as txn:
                cursor = txn.cursor()
                i = 0
                for i, (key, value) in enumerate(cursor.iternext(keys=True, values=True)):  # noqa: B007
                    if bytes(key) != self.keys[i]:
                        raise RuntimeError(f"LMDB key {bytes(key)!r} at position {i}")
                    out[i] = np.frombuffer(value, np.uint8).reshape(self.shape)
                if i + 1 != self.count:
                    raise RuntimeError(f"LMDB holds {i + 1} values, expected {self.count}")
        else:
            for i, path in enumerate(self.paths):
                self._imread(path, out[i])


# ------------------------------------------------------------------ children


def _batches(count: int, batches: int, batch_size: int):
    import numpy as np

    rng = np.random.default_rng(BATCH_SEED)
    return [rng.choice(count, batch_size, replace=False) for _ in range(batches)]


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes (root, Linux)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


def _child(spec: dict) -> dict:
    """Run one measurement described by ``spec`` in this fresh process; return its figures."""
    import numpy as np

    kind, store, out = spec["kind"], spec["store"], spec["out"]
    if kind == "build":
        preload = import_preload()
        started = time.perf_counter()
        ds = preload.build_cache(spec["source"], spec["cache"], size=spec["size"], layout="NHWC", progress=False)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "shape": list(ds.images.shape), "failed": len(ds.failed)}
    cache = np.load(spec["cache"], mmap_mode="r")
    count, shape = cache.shape[0], tuple(cache.shape[1:])
    if kind == "write":
        images = np.array(cache)  # in RAM before the clock starts
        path = spec["path"]
        started = time.perf_counter()
        _write_store(store, path, images)
        return {"seconds": time.perf_counter() - started}
    reader = Reader(store, spec.get("method"), _store_path(out, store), count, shape, spec["batch_size"])
    try:
        if kind == "full":
            array = np.empty(cache.shape, np.uint8)
            array.fill(0)  # a preallocated array, its pages already there: only the read is timed
            started = time.perf_counter()
            reader.read_all(array)
            seconds = time.perf_counter() - started
            result = {"seconds": seconds, "gb_per_s": array.nbytes / seconds / 1e9}
            if spec.get("checksum"):
                result["sha256"] = hashlib.sha256(array).hexdigest()
            return result
        # kind == "batches"
        batches = _batches(count, spec["batches"], spec["batch_size"])
        budget = spec.get("budget")
        if spec.get("cold"):
            drop_caches()
        done = 0
        started = time.perf_counter()
        for idx in batches:
            reader.batch(idx)
            done += 1
            if budget is not None and time.perf_counter() - started > budget:
                break
        seconds = time.perf_counter() - started
        result = {"measured": seconds, "batches_done": done, "seconds": seconds * len(batches) / done}
        if spec.get("verify"):
            checked = batches[: min(done, VERIFY_BATCHES)]
            result["verified"] = len(checked)
            result["verify_ok"] = all(np.array_equal(reader.batch(idx), cache[idx]) for idx in checked)
        return result
    finally:
        reader.close()


def _run_child(spec: dict) -> dict:
    # The spec goes in on stdin: a list of 4,000 paths is longer than one argument may be.
    command = [sys.executable, os.fspath(Path(__file__).resolve()), "--child"]
    done = subprocess.run(command, input=json.dumps(spec), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        what = " ".join(str(spec.get(k)) for k in ("kind", "store", "method") if spec.get(k))
        message = f"the {what} child failed (exit code {done.returncode}):\n{done.stderr.strip()}"
        raise RuntimeError(message)
    return json.loads(lines[-1])


# ------------------------------------------------------------------ data, machine, page cache


def _prepare_data(folder: str, count: int) -> list[str]:
    """The first ``count`` images of ``folder`` (sample photos are made there if it has fewer)."""
    from preload import Manifest, SourceError
    from preload.measure import make_samples_subprocess

    try:
        found = Manifest.from_folder(folder)
    except SourceError:  # missing or empty folder
        found = None
    if found is not None and len(found) >= count:
        print(f"data     {folder}: {len(found)} images (reused), using the first {count}", flush=True)
        return found.paths[:count]
    print(f"data     {folder}: {0 if found is None else len(found)} images, making {count} ...", flush=True)
    started = time.perf_counter()
    make_samples_subprocess(folder, count, seed=SEED)
    made = Manifest.from_folder(folder)
    print(f"data     {len(made)} images made in {time.perf_counter() - started:.1f} s", flush=True)
    return made.paths[:count]


def _machine(out: str) -> dict:
    from preload import measure

    machine = measure.machine()
    machine["read_ahead_kb"] = _read_ahead_kb(out)
    for name in ("h5py", "lmdb"):
        try:
            module = __import__(name)
            machine[name] = getattr(module, "__version__", "?")
        except ImportError:
            machine[name] = None
    try:
        import h5py

        machine["hdf5"] = h5py.version.hdf5_version
    except ImportError:
        machine["hdf5"] = None
    return machine


def _read_ahead_kb(path: str) -> int | None:
    """The readahead window of the block device under ``path`` (it shapes every cold figure)."""
    try:
        device = os.stat(path).st_dev
        sysfs = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
        for candidate in (sysfs, os.path.join(sysfs, "..")):
            name = os.path.join(candidate, "queue", "read_ahead_kb")
            if os.path.exists(name):
                with open(name, encoding="ascii") as handle:
                    return int(handle.read())
    except (OSError, ValueError):
        pass
    return None


def _cached_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Cached:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_files(files: list[str]) -> None:
    """Read every file once (it lands in the page cache)."""
    chunk = bytearray(8 << 20)
    for name in files:
        with open(name, "rb", buffering=0) as handle:
            while handle.readinto(chunk):
                pass


def _check_drop(files: list[str]) -> tuple[bool, str]:
    """Can this process drop the page cache, and does it: (works, what was seen)."""
    _read_files(files)
    before = _cached_bytes()
    try:
        drop_caches()
    except OSError as exc:
        return False, f"cannot drop the page cache ({exc.strerror}: needs root on Linux); cold figures skipped"
    after = _cached_bytes()
    if before is None or after is None:
        return True, "dropped the page cache (no /proc/meminfo to confirm)"
    seen = f"page cache {before / MB:,.0f} MB -> {after / MB:,.0f} MB after a drop"
    total = sum(os.path.getsize(name) for name in files)
    if before - after < 0.5 * total:
        return False, f"{seen}, less than half of the cache's {total / MB:,.0f} MB left it; cold figures skipped"
    return True, seen


# ------------------------------------------------------------------ report


def _median(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if key in run]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str, width: int, mark: str = "") -> str:
    if value is None:
        return f"{'-':>{width}}"
    text = f"{mark}{value:{spec}}"
    return f"{text:>{width}}"


def _table(stores: list[str], methods: list[tuple], results: dict) -> list[str]:
    lines = []
    header = (
        f"{'store':<24} {'batch method':<28} {'write s':>9} {'MB on disk':>11} {'full read s':>12} "
        f"{'GB/s':>6} {'warm s':>9} {'cold s':>9}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for store in stores:
        first = True
        for key in [m for m in methods if m[0] == store]:
            row = results["methods"][key]
            info = results["stores"][store] if first else {}
            mark = "~" if row.get("extrapolated") else ""
            lines.append(
                f"{STORES[store][0] if first else '':<24} {METHODS[key]:<28} "
                f"{_fmt(info.get('write'), '.2f', 9)} {_fmt(info.get('disk_mb'), '.1f', 11)} "
                f"{_fmt(info.get('full'), '.3f', 12)} {_fmt(info.get('gbps'), '.2f', 6)} "
                f"{_fmt(row.get('warm'), '.3f', 9, mark)} {_fmt(row.get('cold'), '.3f', 9, mark)}"
            )
            first = False
    return lines


def _targets(results: dict, cold: bool, skipped: dict[str, str]) -> list[dict]:
    """Each target's ratio (the other's seconds / the cache's) and verdict, for each way the cache is read."""
    rows = []
    for kind, other_key, factor in TARGETS:
        other = results["methods"].get(other_key)
        name = f"{kind}: vs {STORES[other_key[0]][0]}, {METHODS[other_key]}"
        row = {"name": name, "kind": kind, "other": "/".join(other_key), "target": factor, "cache": {}}
        if other is None or other.get(kind) is None:
            store = other_key[0]
            if store in skipped:
                row["missing"] = f"{STORES[store][0]} skipped: {STORES[store][1]} is not installed"
            elif other is None:
                row["missing"] = f"{store} not in --stores"
            else:
                row["missing"] = "cold not measured"
        else:
            for method in CACHE_METHODS:
                mine = results["methods"][("npy", method)][kind]
                ratio = other[kind] / mine
                row["cache"][method] = {"ratio": ratio, "verdict": "met" if ratio >= factor else "NOT met"}
        rows.append(row)
    return rows


def _print_targets(targets: list[dict], gbps: float | None) -> None:
    names = "; ".join(f"{method} = {METHODS[('npy', method)]}" for method in CACHE_METHODS)
    print(f"targets  ratio = the other's seconds / the cache's, the cache read {len(CACHE_METHODS)} ways: {names}")
    print(f"  {'':<66} " + " ".join(f"{method:>15}" for method in CACHE_METHODS) + "   target")
    for target in targets:
        if "missing" in target:
            cells = f"{'n/a (' + target['missing'] + ')':<{16 * len(CACHE_METHODS) - 1}}"
        else:
            cells = " ".join(
                f"{target['cache'][m]['ratio']:>6.2f} {target['cache'][m]['verdict']:<8}" for m in CACHE_METHODS
            )
        print(f"  {target['name']:<66} {cells}   >= {target['target']:g}")
    verdict = "met" if gbps is not None and gbps >= TARGET_GBPS else "NOT met"
    value = "-" if gbps is None else f"{gbps:.2f}"
    print(
        f"  {'full sequential read from the cache, warm, GB/s':<66} {value:>6} {verdict:<8}"
        f"{'':<{16 * (len(CACHE_METHODS) - 1)}}"
        f"   >= {TARGET_GBPS:g}"
    )


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/storage.py",
        description="Store the same images as preload's .npy cache, HDF5 (contiguous, chunked), LMDB and PNG "
        "files; time writing, a full read and random batches (warm and cold), each in a fresh subprocess.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=4000, help="images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="height and width (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=100, help="random batches (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images a batch (default: %(default)s; at most --count)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per figure (default: %(default)s)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache batches (no drop_caches)")
    parser.add_argument(
        "--fancy-budget",
        type=float,
        default=15.0,
        metavar="S",
        help="stop HDF5 fancy indexing after this many seconds and extrapolate (default: %(default)s)",
    )
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of %(default)s")
    parser.add_argument(
        "--data",
        default=None,
        help="image folder; sample photos are made there if it has fewer than --count "
        "(default: bench/data/samples-<count>)",
    )
    parser.add_argument(
        "--out", default=None, help="folder for the stores; default: a new temporary folder in bench/data (same disk)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the stores at the end (default: delete them)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every run and figure here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.load(sys.stdin))), flush=True)
        return 0
    require_positive(parser, args, ("count", "size", "batches", "batch_size", "repeats"))
    if args.fancy_budget <= 0:
        parser.error(f"--fancy-budget {args.fancy_budget} is not accepted; use a positive number of seconds")
    wanted = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in STORES]
    if unknown or "npy" not in wanted:
        parser.error(f"--stores {args.stores!r}: use names from {', '.join(STORES)}, npy included")
    use_checkout()
    args.batch_size = min(args.batch_size, args.count)
    args.data = os.path.abspath(os.fspath(args.data or DATA / f"samples-{args.count}"))
    if os.path.exists(args.data) and not os.path.isdir(args.data):
        parser.error(f"--data '{args.data}' exists and is not a folder")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out '{args.out}' exists and is not a folder")
    created = args.out is None or not os.path.exists(args.out)
    if args.out is None:
        DATA.mkdir(parents=True, exist_ok=True)
        args.out = tempfile.mkdtemp(prefix="storage-", dir=DATA)
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    try:
        return _run(args, wanted)
    except RuntimeError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept     {args.out}")
        elif created:
            shutil.rmtree(args.out, ignore_errors=True)
        else:
            _remove_stores(args.out)


def _order(items: list, repeat: int) -> list:
    """``items`` as given in the first repeat, then shuffled (seeded): no store always follows the same one."""
    if repeat == 0:
        return list(items)
    return random.Random(repeat).sample(items, len(items))


def _remove_path(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _remove_stores(out: str) -> None:
    """Remove what this script wrote into a folder it did not create."""
    cache = _store_path(out, "npy")
    names = [cache + suffix for suffix in ("", ".json", ".index.npz", ".lock", ".write-test.npy")]
    for store in STORES:
        path = _store_path(out, store)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif store != "npy":
            names.append(path)
    for name in names:
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


def _run(args: argparse.Namespace, wanted: list[str]) -> int:
    load_start = os.getloadavg()[0]
    machine = _machine(args.out)
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"date     {date}")
    print(
        f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM, {machine['platform']}, "
        f"readahead {machine['read_ahead_kb']} kB on the stores' disk"
    )
    print(
        f"versions python {machine['python']}, numpy {machine['numpy']}, opencv {machine['opencv']}, "
        f"h5py {machine['h5py']} (HDF5 {machine['hdf5']}), lmdb {machine['lmdb']}"
    )
    stores = []
    skipped = {}
    for store in wanted:
        why = _missing(STORES[store][1])
        if why is None:
            stores.append(store)
        else:
            skipped[store] = why
            print(f"skip     {STORES[store][0]}: {why}")
    methods = [key for key in METHODS if key[0] in stores]
    paths = _prepare_data(args.data, args.count)
    cache = _store_path(args.out, "npy")
    base = {"out": args.out, "cache": cache, "batch_size": args.batch_size, "batches": args.batches}

    # Build the cache (decode once); write the other stores from its array.
    _read_files(paths)  # the build should not pay for cold source files
    build = _run_child({**base, "kind": "build", "store": "npy", "source": paths, "size": args.size})
    shape = build["shape"]
    print(
        f"setup    {shape[0]} images {'x'.join(map(str, shape[1:]))} NHWC uint8 "
        f"({shape[0] * shape[1] * shape[2] * shape[3] / MB:.1f} MB); build_cache from the files (decode, resize, "
        f"write) {build['seconds']:.1f} s; {args.batches} batches of {args.batch_size} (seed {BATCH_SEED}); "
        f"{args.repeats} repeat{'s' if args.repeats > 1 else ''}; stores in {args.out}",
        flush=True,
    )
    results = {"stores": {}, "methods": {key: {} for key in methods}, "runs": []}

    def record(run: dict, **labels) -> dict:
        run.update(labels)
        results["runs"].append(run)
        return run

    write_runs = {store: [] for store in stores}
    for repeat in range(args.repeats):
        for store in _order(stores, repeat):
            target = _store_path(args.out, store) if store != "npy" else cache + ".write-test.npy"
            _remove_path(target)
            os.sync()  # nothing else's dirty pages (the build, the last store) left to write back
            run = _run_child({**base, "kind": "write", "store": store, "path": target})
            write_runs[store].append(record(run, kind="write", store=store, repeat=repeat))
            if store == "npy":
                os.remove(target)  # reads use the cache build_cache wrote; this copy timed the format alone
    for store in stores:
        allocated, apparent = zip(*(_disk_bytes(name) for name in _store_files(args.out, store)), strict=True)
        write = _median(write_runs[store], "seconds")
        low, high = (f(run["seconds"] for run in write_runs[store]) for f in (min, max))
        results["stores"][store] = {"write": write, "disk_mb": sum(allocated) / MB, "apparent_mb": sum(apparent) / MB}
        print(
            f"write    {STORES[store][0]:<24} {write:7.2f} s (runs {low:.2f}-{high:.2f})  "
            f"{sum(allocated) / MB:8.1f} MB on disk",
            flush=True,
        )

    # Warm: every store's files read once, then full reads and batches, repeats interleaved.
    for store in stores:
        _read_files(_store_files(args.out, store))
    full_runs = {store: [] for store in stores}
    warm_runs = {key: [] for key in methods}
    for repeat in range(args.repeats):
        for store in _order(stores, repeat):
            spec = {**base, "kind": "full", "store": store, "checksum": repeat == 0}
            full_runs[store].append(record(_run_child(spec), kind="full", store=store, repeat=repeat))
        for key in _order(methods, repeat):
            spec = {**base, "kind": "batches", "store": key[0], "method": key[1], "verify": repeat == 0}
            if key[1] == "fancy" and key[0] != "npy":
                spec["budget"] = args.fancy_budget
            run = record(_run_child(spec), kind="warm", store=key[0], method=key[1], repeat=repeat)
            warm_runs[key].append(run)
        print(f"warm     repeat {repeat + 1}/{args.repeats} done", flush=True)

    cold_runs = {key: [] for key in methods}
    cold = not args.no_cold
    if cold:
        works, seen = _check_drop(_store_files(args.out, "npy"))
        print(f"cold     {seen}", flush=True)
        cold = works
    if cold:
        for repeat in range(args.repeats):
            for key in _order(methods, repeat):
                spec = {**base, "kind": "batches", "store": key[0], "method": key[1], "cold": True}
                if key[1] == "fancy" and key[0] != "npy":
                    spec["budget"] = args.fancy_budget
                run = record(_run_child(spec), kind="cold", store=key[0], method=key[1], repeat=repeat)
                cold_runs[key].append(run)
            print(f"cold     repeat {repeat + 1}/{args.repeats} done", flush=True)

    for store in stores:
        info = results["stores"][store]
        info["full"] = _median(full_runs[store], "seconds")
        info["gbps"] = _median(full_runs[store], "gb_per_s")
        info["sha256"] = full_runs[store][0]["sha256"]
    for key in methods:
        row = results["methods"][key]
        row["warm"] = _median(warm_runs[key], "seconds")
        row["cold"] = _median(cold_runs[key], "seconds") if cold_runs[key] else None
        done = [run["batches_done"] for run in warm_runs[key] + cold_runs[key]]
        row["batches_done"] = min(done)
        row["extrapolated"] = min(done) < args.batches
        row["verify_ok"] = all(run.get("verify_ok", True) for run in warm_runs[key])
        row["verified"] = warm_runs[key][0].get("verified", 0)

    print()
    print(
        f"medians of {args.repeats} fresh subprocess{'es' if args.repeats > 1 else ''}; "
        f"{args.batches} random batches of {args.batch_size}, the same for every store; "
        "one thread (preload take_rows: its default workers)"
    )
    for line in _table(stores, methods, results):
        print(line)
    capped = [key for key in methods if results["methods"][key]["extrapolated"]]
    for key in capped:
        row = results["methods"][key]
        print(
            f"~        {STORES[key[0]][0]}, {METHODS[key]}: stopped after {args.fancy_budget:g} s "
            f"(at least {row['batches_done']} of {args.batches} batches ran); the time is extrapolated "
            f"to {args.batches} batches"
        )
    print(
        "columns  write: from the array in RAM, every file fsynced; MB on disk: allocated blocks; full read: "
        "into one preallocated array, warm; warm: after every store's files were read once; cold: after "
        "os.sync() and drop_caches in the child, just before the clock started"
    )

    reference = results["stores"]["npy"]["sha256"]
    different = [store for store in stores if results["stores"][store]["sha256"] != reference]
    bad_batches = [key for key in methods if not results["methods"][key]["verify_ok"]]
    if different:
        print(f"pixels   NOT identical: {', '.join(different)} differ from the cache (sha256 {reference[:16]})")
    else:
        print(f"pixels   a full read from every store is identical (sha256 {reference[:16]}...)")
    if bad_batches:
        print(f"batches  NOT what the cache holds: {', '.join(f'{s} {m}' for s, m in bad_batches)}")
    else:
        print(f"batches  each method's first batches (up to {VERIFY_BATCHES}) equal cache[idx], in the batch's order")

    targets = _targets(results, cold, skipped)
    print(
        f"load     1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        f"({machine['cores']} cores; other processes share them)"
    )
    print()
    if (args.count, args.size, args.batches, args.batch_size) != (4000, 256, 100, 64):
        print("note     the targets are stated for 100 batches of 64 from 4,000 images at 256x256")
    _print_targets(targets, results["stores"]["npy"]["gbps"])
    for store, why in skipped.items():
        print(f"skipped  {STORES[store][0]}: {why}")

    if args.json:
        report = {
            "date": date,
            "machine": machine,
            "options": {k: v for k, v in vars(args).items() if k != "child"},
            "build": build,
            "skipped": skipped,
            "stores": results["stores"],
            "methods": {f"{s}/{m}": {"label": METHODS[(s, m)], **row} for (s, m), row in results["methods"].items()},
            "targets": targets,
            "target_gb_per_s": {"value": results["stores"]["npy"]["gbps"], "target": TARGET_GBPS},
            "runs": results["runs"],
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote    {os.path.abspath(args.json)}")
    return 1 if different or bad_batches else 0


if __name__ == "__main__":
    sys.exit(main())
