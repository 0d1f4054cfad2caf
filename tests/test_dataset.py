"""The array-like protocol, batches and the lazy ImageFiles accessor."""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import preload
from conftest import smooth_image, write
from preload import Dataset, ImageFiles
from preload import rows as row_io
from preload.rows import prefetch_rows, take_rows


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
    with pytest.raises(preload.TargetError, match=r"does not fit: shape \(3, 2, 2, 3\) \(need \(4, 2, 2, 3\)\)"):
        next(labelled.batches(4, out=np.empty((3, 2, 2, 3), np.uint8)))
    with pytest.raises(preload.OptionError, match=r"batch_size=0"):
        next(labelled.batches(0))
    with pytest.raises(preload.OptionError, match=r"shuffle='yes'"):
        next(labelled.batches(2, shuffle="yes"))


@pytest.mark.parametrize("path", ["take", "rows"])
def test_cache_batches_read_sorted_and_restore_order(cached, monkeypatch, path):
    # "take": small rows, one sorted np.take then a scatter; "rows": each row copied into its slot.
    ds, _ = cached
    reads = []
    if path == "take":
        real_take = np.take

        def spy(array, rows, *args, **kwargs):
            reads.append(np.asarray(rows).tolist())
            return real_take(array, rows, *args, **kwargs)

        monkeypatch.setattr(np, "take", spy)
    else:
        monkeypatch.setattr(row_io, "ROW_COPY_BYTES", 0)
        real_copy = row_io._copy_rows

        class Recording:  # stands in for the mapped array: records every row read, in order
            def __init__(self, source):
                self.source = source

            def __getitem__(self, row):
                reads.append(row)
                return self.source[row]

        def spy(source, rows, slots, out, workers):
            reads.append("copy")
            return real_copy(Recording(source), rows, slots, out, 1)

        monkeypatch.setattr(row_io, "_copy_rows", spy)
    images, labels = ds[np.array([9, 2, 13, 2])]
    expected = [[2, 2, 9, 13]] if path == "take" else ["copy", 2, 2, 9, 13]
    assert reads == expected  # one forward sweep through the file
    assert np.array_equal(images, np.stack([np.asarray(ds.images[i]) for i in (9, 2, 13, 2)]))
    assert labels.tolist() == [1, 0, 1, 0]


@pytest.fixture(params=["npy", "raw-offset", "view", "ndarray", "unpickled"])
def source(request, tmp_path):
    """``(images, expected)``: images as a memmap of a file, or not, holding ``expected``'s pixels."""
    data = np.random.default_rng(3).integers(0, 256, (26, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "images.npy"
    if request.param == "npy":
        np.save(path, data[3:])
        images = np.load(path, mmap_mode="r")
    elif request.param == "raw-offset":  # a header of 1,000 bytes: no page or row boundary
        path.write_bytes(b"h" * 1000 + data[3:].tobytes())
        images = np.memmap(path, np.uint8, "r", offset=1000, shape=(23, 5, 4, 3))
    elif request.param == "view":  # a view's .offset still names the file's first row; its address does not
        np.save(path, data)
        images = np.load(path, mmap_mode="r")[3:]
    elif request.param == "ndarray":
        images = data[3:].copy()
    else:  # a pickled memmap comes back with its bytes in RAM
        np.save(path, data[3:])
        images = pickle.loads(pickle.dumps(np.load(path, mmap_mode="r")))
    return images, data[3:], request.param


@pytest.mark.parametrize(
    "rows",
    [[4, 1, 4, 22, 0, 4], [22, 21, 20, 3, 2], [7], [], list(range(23)), [5, 6, 7, 6, 6], [0] * 5],
    ids=["repeats", "descending", "single", "empty", "all", "runs", "one-row-five-times"],
)
@pytest.mark.parametrize("path", ["take", "rows", "two-threads"])
def test_take_rows_equals_fancy_indexing(source, rows, path, monkeypatch):
    images, expected, kind = source
    copies = []
    if path != "take":
        monkeypatch.setattr(row_io, "ROW_COPY_BYTES", 0)
        real_copy = row_io._copy_rows
        monkeypatch.setattr(row_io, "_copy_rows", lambda *args: copies.append(args[-1]) or real_copy(*args))
    workers = 2 if path == "two-threads" else 1
    index = np.array(rows, np.int64)
    result = take_rows(images, index, workers=workers)
    assert type(result) is np.ndarray and result.shape == (len(rows), 5, 4, 3)
    assert np.array_equal(result, expected[index])
    buffer = np.full((len(rows), 5, 4, 3), 77, np.uint8)
    assert take_rows(images, index, out=buffer, workers=workers) is buffer
    assert np.array_equal(buffer, expected[index])
    again = index[::-1].copy()  # the same buffer reused for another batch
    assert take_rows(images, again, out=buffer, workers=workers) is buffer
    assert np.array_equal(buffer, expected[again])
    file_backed = kind in ("npy", "raw-offset", "view")
    assert copies == ([workers] * 3 if path != "take" and file_backed and rows else [])


def test_take_rows_two_threads_by_default_only_for_big_batches(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.arange(6 * 64, dtype=np.uint8).reshape(6, 64))
    images = np.load(tmp_path / "a.npy", mmap_mode="r")
    monkeypatch.setattr(row_io, "ROW_COPY_BYTES", 0)
    monkeypatch.setattr(row_io, "cpu_count", lambda: 2)
    workers = []
    real_copy = row_io._copy_rows
    monkeypatch.setattr(row_io, "_copy_rows", lambda *args: workers.append(args[-1]) or real_copy(*args))
    monkeypatch.setattr(row_io, "THREAD_BYTES", 4 * 64)
    assert np.array_equal(take_rows(images, np.array([5, 0, 3])), np.asarray(images)[[5, 0, 3]])
    assert np.array_equal(take_rows(images, np.array([5, 0, 3, 1])), np.asarray(images)[[5, 0, 3, 1]])
    monkeypatch.setattr(row_io, "cpu_count", lambda: 1)
    assert np.array_equal(take_rows(images, np.array([5, 0, 3, 1])), np.asarray(images)[[5, 0, 3, 1]])
    assert workers == [1, 2, 1]


@pytest.mark.parametrize(
    "out, words",
    [(np.empty((2, 5, 4, 3), np.uint8), r"does not fit: shape \(2, 5, 4, 3\) \(need \(3, 5, 4, 3\)\)$"),
     (np.empty((3, 5, 4, 3), np.float32), r"does not fit: dtype float32 \(need uint8\)$"),
     ([[0]], r"out= of type list is not accepted here; use a NumPy array or memmap of shape \(3, 5, 4, 3\)"),
     (np.broadcast_to(np.uint8(0), (3, 5, 4, 3)), r"does not fit: it is read-only$")],
)
def test_take_rows_refuses_a_wrong_out(source, out, words):
    images, _, _ = source
    with pytest.raises(preload.TargetError, match=words) as caught:
        take_rows(images, np.array([1, 0, 1]), out=out)
    assert isinstance(caught.value, preload.OptionError)  # a bad argument like any other


class FakeLibc:
    """mincore answers from ``resident`` (page addresses); madvise calls are recorded."""

    def __init__(self, resident=()):
        self.resident, self.probed, self.advised = set(resident), [], []

    def mincore(self, address, length, vector):
        self.probed.append(address)
        vector[0] = b"\x01" if address in self.resident else b"\x00"
        return 0

    def madvise(self, address, length, advice):
        self.advised.append((address, length, advice))
        return 0


def test_prefetch_rows_advises_each_run_of_rows_once(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((12, 40, 40, 3), np.uint8))  # 4,800-byte rows, header of 128
    images = np.load(tmp_path / "a.npy", mmap_mode="r")
    libc = FakeLibc()
    monkeypatch.setattr(row_io, "_libc", lambda: libc)
    assert prefetch_rows(images, np.array([7, 3, 2, 3, 9, 11, 10])) is True
    start, size, page = images.ctypes.data, 4800, mmap.PAGESIZE
    expected = []
    for first, last in [(2, 3), (7, 7), (9, 11)]:
        aligned = (start + first * size) // page * page
        expected.append((aligned, start + (last + 1) * size - aligned, mmap.MADV_WILLNEED))
    assert libc.advised == expected
    # Probed: the page in the middle of the first, last and two rows between of the sorted batch.
    middle = [(start + row * size + size // 2) // page * page for row in (2, 3, 9, 11)]
    assert libc.probed[:1] == middle[:1]  # the first probe already misses, so no more are needed


def test_prefetch_rows_gives_no_advice_when_the_rows_are_cached(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((12, 40, 40, 3), np.uint8))
    images = np.load(tmp_path / "a.npy", mmap_mode="r")
    start, size, page = images.ctypes.data, 4800, mmap.PAGESIZE
    rows = [2, 3, 7, 9, 10, 11]
    middle = [(start + row * size + size // 2) // page * page for row in rows]
    libc = FakeLibc(resident=middle)
    monkeypatch.setattr(row_io, "_libc", lambda: libc)
    assert prefetch_rows(images, np.array(rows[::-1])) is False
    assert libc.advised == [] and libc.probed == [middle[k] for k in (0, 1, 3, 5)]
    libc.resident.discard(middle[5])  # one probed row not cached: the whole batch is advised
    assert prefetch_rows(images, np.array(rows)) is True and len(libc.advised) == 3
    assert prefetch_rows(np.zeros((3, 2), np.uint8), np.array([0, 2])) is False  # RAM: nothing to read
    assert prefetch_rows(images, np.array([], np.int64)) is False


@pytest.mark.skipif(row_io._libc() is None or not hasattr(os, "posix_fadvise"), reason="needs Linux")
def test_prefetch_rows_sees_the_real_page_cache(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    with open(path, "rb") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages leave the cache
    images = np.load(path, mmap_mode="r")
    libc, page, vector = row_io._libc(), mmap.PAGESIZE, ctypes.create_string_buffer(1)
    address = images.ctypes.data + 5 * images.strides[0] + images.strides[0] // 2
    assert libc.mincore(address // page * page, page, vector) == 0
    if vector.raw[0] & 1:
        pytest.skip("this filesystem keeps its pages in memory (tmpfs)")
    assert prefetch_rows(images, np.array([5, 1])) is True
    assert int(np.asarray(images).sum()) > 0  # every page read
    assert prefetch_rows(images, np.array([5, 1])) is False


def test_shuffled_batches_prefetch_the_next_batch(cached, monkeypatch):
    ds, _ = cached
    asked = []
    monkeypatch.setattr(Dataset, "_prefetch", lambda self, rows: asked.append(np.asarray(rows).tolist()))
    order = np.random.default_rng(5).permutation(14)
    seen = [labels.tolist() for _, labels in ds.batches(4, shuffle=np.random.default_rng(5), out=True)]
    assert asked == [order[4:8].tolist(), order[8:12].tolist(), order[12:].tolist()]
    assert sum(seen, []) == ds.labels[order].tolist()
    asked.clear()
    list(ds.batches(4, shuffle=5, drop_last=True))
    assert [len(rows) for rows in asked] == [4, 4]  # nothing after the last batch
    asked.clear()
    list(ds.batches(4))
    assert asked == []  # in order, the kernel's own readahead does it


def test_pickled_cache_dataset_reads_the_same_rows(cached):
    ds, _ = cached
    clone = pickle.loads(pickle.dumps(ds))
    index = np.array([13, 0, 5, 5])
    assert np.array_equal(clone[index][0], ds[index][0]) and clone[index][1].tolist() == ds[index][1].tolist()
    mine = [images.copy() for images, _ in ds.batches(5, shuffle=2, out=True)]
    theirs = [images.copy() for images, _ in clone.batches(5, shuffle=2, out=True)]
    assert len(mine) == 3 and all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_take_rows_leaves_no_thread_behind_and_works_in_a_forked_child(tmp_path, monkeypatch):
    data = np.random.default_rng(1).integers(0, 256, (9, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    images = np.load(tmp_path / "a.npy", mmap_mode="r")
    monkeypatch.setattr(row_io, "ROW_COPY_BYTES", 0)
    rows = np.array([8, 1, 1, 4, 0])
    before = {thread.ident for thread in threading.enumerate()}
    assert np.array_equal(take_rows(images, rows, workers=2), data[rows])
    # A thread kept between calls would make every later fork() warn (Python >= 3.12).
    assert {thread.ident for thread in threading.enumerate()} == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pytest's own threads, if any
        pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            code = 0 if np.array_equal(take_rows(images, rows, workers=2), data[rows]) else 1
        except BaseException:
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done[0] == pid, "the forked child hung waiting for the parent's (absent) thread"
    assert os.waitstatus_to_exitcode(done[1]) == 0


@pytest.fixture
def big_rows(tmp_path, monkeypatch):
    """A memmap of 40 rows taken by the row-by-row path, and its pixels."""
    monkeypatch.setattr(row_io, "ROW_COPY_BYTES", 0)
    data = np.random.default_rng(5).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "rows.npy", data)
    return np.load(tmp_path / "rows.npy", mmap_mode="r+"), data


def test_take_rows_into_the_array_it_reads_permutes_in_place(big_rows):
    images, data = big_rows
    rows = np.roll(np.arange(40), -1)  # row k <- row k + 1: the row copy would read overwritten rows
    assert take_rows(images, rows, out=images, workers=2) is images
    assert np.array_equal(images, data[rows])


def test_take_rows_error_stops_the_other_thread_before_it_leaves(big_rows, monkeypatch):
    images, data = big_rows
    out = np.zeros((40,) + data.shape[1:], np.uint8)
    started = threading.Event()

    class Failing:  # row 20 cannot be read; the others are slow enough that both threads run
        def __getitem__(self, row):
            started.set()
            time.sleep(0.002)
            if row == 20:
                raise OSError("simulated read error")
            return data[row]

    real_copy = row_io._copy_rows
    monkeypatch.setattr(row_io, "_copy_rows", lambda source, *args: real_copy(Failing(), *args))
    with pytest.raises(OSError, match="simulated read error"):
        take_rows(images, np.arange(40), out=out, workers=2)
    written = out.copy()
    time.sleep(0.05)
    assert np.array_equal(out, written)  # nothing is written after take_rows has raised
    assert not np.array_equal(out[39], data[39]) or not np.array_equal(out[38], data[38])
    assert started.is_set() and np.array_equal(out[0], data[0])


def test_take_rows_copies_on_one_thread_when_none_can_start(big_rows, monkeypatch):
    images, data = big_rows

    def refuse(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    rows = np.array([39, 0, 7, 7])
    assert np.array_equal(take_rows(images, rows, workers=2), data[rows])


def test_take_rows_on_a_one_row_view_with_a_huge_stride(tmp_path):
    data = np.random.default_rng(6).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    view = np.load(tmp_path / "a.npy", mmap_mode="r")[7 :: 10**7]  # one row; strides[0] is huge
    assert view.shape[0] == 1 and view.strides[0] > 10**8
    assert prefetch_rows(view, np.array([0])) is False  # no advice past the row
    assert np.array_equal(take_rows(view, np.array([0, 0])), data[[7, 7]])


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


def test_negative_indices_count_from_the_end_of_a_cache(cached):
    # The file-backed path: ints, arrays and slices read through the cache's memmap, not an in-RAM array.
    ds, _ = cached
    assert isinstance(ds.images, np.memmap)
    expected = np.array(ds.images)
    image, label = ds[-14]
    assert np.array_equal(image, expected[0]) and label == 0
    image, label = ds[-1]
    assert np.array_equal(image, expected[13]) and label == 1
    images, labels = ds[np.array([-1, 0, -14, -8])]
    assert np.array_equal(images, expected[[13, 0, 0, 6]]) and labels.tolist() == [1, 0, 0, 0]
    images, labels = ds[-3:]
    assert np.array_equal(images, expected[11:]) and labels.tolist() == [1, 1, 1]
    with pytest.raises(IndexError, match=r"index -15 is out of range for .* of 14 images"):
        ds[-15]
    with pytest.raises(IndexError, match=r"index -15 is out of range"):
        ds[[0, -15]]


def test_take_rows_workers_means_what_it_means_everywhere(source):
    images, _, _ = source
    with pytest.raises(preload.OptionError, match=r"workers=0 is not accepted; use a positive int, or None for every"):
        take_rows(images, np.array([1, 0]), workers=0)
    assert np.array_equal(take_rows(images, np.array([1, 0]), workers=None), np.asarray(images)[[1, 0]])


def test_image_files_spells_out_load_s_options(tmp_path):
    import inspect

    wanted = set(inspect.signature(preload.load).parameters) - {"source", "out", "progress", "on_error"}
    assert set(inspect.signature(ImageFiles).parameters) - {"source"} == wanted
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        ImageFiles([str(tmp_path / "a.png")], size=4, colour="rgb")
