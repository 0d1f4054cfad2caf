"""The load verb: targets, the space check, size=None, workers, progress, OpenCV state."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import preload
from conftest import smooth_image, with_exif_orientation, write
from preload import decode, target


@pytest.fixture
def folder(tmp_path, rng):
    """Two classes, five images each, every image a different size."""
    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for k in range(5):
            write(root / name / f"{k}.png", smooth_image(rng, 30 + 7 * k, 40 + 5 * c))
    return root


def _reference(folder, size, layout="NHWC"):
    ds = preload.load(folder, size=size, layout=layout, workers=1, progress=False)
    return ds.images.copy()


# ------------------------------------------------------------------------ targets


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kind", ["ram", "array", "memmap", "npy"])
def test_every_out_kind_gives_the_same_pixels(tmp_path, folder, layout, kind):
    expected = _reference(folder, 16, layout)
    shape = expected.shape
    if kind == "ram":
        out = None
    elif kind == "array":
        out = np.full(shape, 1, np.uint8)
    elif kind == "memmap":
        out = np.memmap(tmp_path / "raw.bin", np.uint8, "w+", shape=shape)
    else:
        out = str(tmp_path / "images.npy")
    ds = preload.load(folder, size=16, layout=layout, out=out, workers=2, progress=False)
    assert np.array_equal(ds.images, expected)
    if kind in ("array", "memmap"):
        assert np.shares_memory(ds.images, out)
    if kind == "npy":
        assert np.array_equal(np.load(out, mmap_mode="r"), expected)
        assert not os.path.exists(out + ".partial")
        assert isinstance(ds.images, np.memmap)


def test_out_array_of_the_wrong_shape_and_dtype_names_both(folder):
    with pytest.raises(preload.TargetError, match=r"shape \(3, 16, 16, 3\) \(need \(10, 16, 16, 3\)\); dtype float32"):
        preload.load(folder, size=16, out=np.zeros((3, 16, 16, 3), np.float32))


def test_out_array_must_be_writable_and_contiguous(folder):
    frozen = np.zeros((10, 16, 16, 3), np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(preload.TargetError, match="read-only"):
        preload.load(folder, size=16, out=frozen)
    strided = np.zeros((10, 16, 16, 6), np.uint8)[..., ::2]
    with pytest.raises(preload.TargetError, match="not C-contiguous"):
        preload.load(folder, size=16, out=strided)


@pytest.mark.parametrize("bad, words", [("images.bin", r"must end in \.npy"), (3.5, "float is not accepted"),
                                        ("missing/x.npy", "does not exist")])
def test_out_rejects_other_values(folder, tmp_path, bad, words):
    if isinstance(bad, str):
        bad = str(tmp_path / bad)
    with pytest.raises(preload.TargetError, match=words):
        preload.load(folder, size=16, out=bad)


def test_failed_load_leaves_no_npy_behind(tmp_path, folder):
    (folder / "cat" / "broken.png").write_bytes(b"")
    out = tmp_path / "images.npy"
    with pytest.raises(preload.ImageDecodeError, match="broken.png"):
        preload.load(folder, size=16, out=str(out), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_skip_shrinks_the_npy_file(tmp_path, folder):
    (folder / "cat" / "0a.png").write_bytes(b"junk")  # sorts second in 'cat'
    out = str(tmp_path / "images.npy")
    ds = preload.load(folder, size=16, out=out, on_error="skip", progress=False)
    on_disk = np.load(out, mmap_mode="r")
    assert on_disk.shape == (10, 16, 16, 3)
    assert os.path.getsize(out) == on_disk.offset + on_disk.nbytes
    assert np.array_equal(on_disk, _reference_without(folder, "0a.png"))
    assert [f.index for f in ds.failed] == [1]


def _reference_without(folder, name):
    paths = [p for p in preload.Manifest.from_folder(folder).paths if not p.endswith(name)]
    return preload.load(paths, size=16, progress=False).images


def test_skip_with_a_caller_array_fills_a_prefix_and_zeroes_the_rest(folder):
    (folder / "dog" / "zz.png").write_bytes(b"junk")
    out = np.full((11, 16, 16, 3), 5, np.uint8)
    ds = preload.load(folder, size=16, out=out, on_error="skip", progress=False)
    assert len(ds) == 10 and np.shares_memory(ds.images, out)
    assert not out[10].any()


# ------------------------------------------------------------------- space check


def test_ram_check_refuses_before_decoding(folder, monkeypatch):
    monkeypatch.setattr(target.psutil, "virtual_memory", lambda: SimpleNamespace(available=1000))
    monkeypatch.setattr(decode.Decoder, "decode_into", lambda *a: pytest.fail("decoded before the check"))
    needed = 10 * 16 * 16 * 3
    words = rf"needs 0.00 GB \({needed:,} bytes\).*1,000 bytes\).*out="
    with pytest.raises(preload.InsufficientMemoryError, match=words):
        preload.load(folder, size=16)


def test_disk_check_for_npy_targets(tmp_path, folder, monkeypatch):
    monkeypatch.setattr(target.psutil, "disk_usage", lambda path: SimpleNamespace(free=10))
    with pytest.raises(preload.InsufficientDiskError, match=r"7,680 bytes.*10 bytes\) free"):
        preload.load(folder, size=16, out=str(tmp_path / "x.npy"))
    assert not list(tmp_path.glob("x.npy*"))


# ---------------------------------------------------------------------- size=None


def test_size_none_keeps_the_common_size(tmp_path, rng):
    images = [smooth_image(rng, 12, 18) for _ in range(3)]
    paths = [write(tmp_path / f"{k}.png", image) for k, image in enumerate(images)]
    ds = preload.load(paths, color="bgr", progress=False)
    assert ds.images.shape == (3, 12, 18, 3)
    assert all(np.array_equal(ds.images[k], images[k]) for k in range(3))


def test_size_none_counts_the_exif_rotation(tmp_path, rng):
    plain = write(tmp_path / "plain.png", smooth_image(rng, 20, 30))
    raw = cv2.imencode(".jpg", smooth_image(rng, 30, 20))[1].tobytes()
    (tmp_path / "turned.jpg").write_bytes(with_exif_orientation(raw, 6))  # stored 30x20, shown 20x30
    ds = preload.load([plain, str(tmp_path / "turned.jpg")], progress=False)
    assert ds.images.shape == (2, 20, 30, 3)


def test_size_none_with_different_sizes_names_two_files(folder):
    with pytest.raises(preload.SizeMismatchError, match=r"'.*cat/0.png' is 30x40 and '.*cat/1.png' is 37x40"):
        preload.load(folder)


def test_size_none_skips_unreadable_headers(tmp_path, rng):
    good = [write(tmp_path / f"{k}.png", smooth_image(rng, 12, 18)) for k in range(2)]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    ds = preload.load([good[0], str(tmp_path / "bad.png"), good[1]], on_error="skip", progress=False)
    assert ds.paths == good and [f.index for f in ds.failed] == [1]
    ds = preload.load([good[0], str(tmp_path / "bad.png"), good[1]], on_error="zero", progress=False)
    assert len(ds) == 3 and not ds.images[1].any() and [f.index for f in ds.failed] == [1]


# -------------------------------------------------------- workers and OpenCV state


def test_workers_give_identical_arrays(folder):
    serial = preload.load(folder, size=(20, 24), workers=1, progress=False).images
    parallel = preload.load(folder, size=(20, 24), workers=2, progress=False).images
    assert np.array_equal(serial, parallel)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_workers(folder, workers):
    with pytest.raises(preload.OptionError, match=r"workers="):
        preload.load(folder, size=8, workers=workers)


def test_opencv_runs_single_threaded_inside_and_is_restored(folder, monkeypatch):
    seen = []
    real = decode.Decoder.decode_into

    def spy(self, path, slot):
        seen.append(cv2.getNumThreads())
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", spy)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        preload.load(folder, size=8, progress=False)
        assert set(seen) == {1}
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)


def test_concurrent_loads_keep_their_settings_until_the_last_ends(folder, monkeypatch, capfd):
    """Two loads in two threads: OpenCV stays single-threaded for both, stderr is restored once."""
    seen = []
    real = decode.Decoder.decode_into

    def slow(self, path, slot):
        time.sleep(0.002)
        seen.append(cv2.getNumThreads())
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", slow)
    before = cv2.getNumThreads()
    results = {}

    def run(name, count):
        paths = preload.Manifest.from_folder(folder).paths * count
        results[name] = preload.load(paths, size=8, progress=False, workers=1).images.shape

    threads = [threading.Thread(target=run, args=("short", 1)), threading.Thread(target=run, args=("long", 20))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"short": (10, 8, 8, 3), "long": (200, 8, 8, 3)}
    assert set(seen) == {1}
    assert cv2.getNumThreads() == before
    print("stderr works", file=sys.stderr)
    assert "stderr works" in capfd.readouterr().err


def test_other_stderr_output_passes_through_during_a_load(folder, monkeypatch, capfd):
    real = decode.Decoder.decode_into

    def chatty(self, path, slot):
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\n")
        os.write(2, b"app: something unrelated\n")
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", chatty)
    preload.load(folder, size=8, progress=False, workers=1)
    err = capfd.readouterr().err
    assert err.count("app: something unrelated") == 10
    assert "iCCP" not in err.replace("e.g. 'libpng warning: iCCP", "")  # only in the one summary line


def test_a_process_started_during_a_load_does_not_hold_up_its_end(capfd):
    """A child inherits the redirected stderr (a Dask nanny restarting a worker mid-build, say).

    Leaving the load must not wait for the child to exit, and its lines still
    reach the real stderr afterwards.
    """
    import subprocess

    from preload.quiet import quiet_opencv

    # The child lives until the test closes its stdin (at most 10 s), so a leaving
    # that waited for it would take 10 s; a fixed sleep would cost every run its length.
    script = "import select, sys; select.select([sys.stdin], [], [], 10); print('child: done', file=sys.stderr)"
    context = quiet_opencv()
    context.__enter__()
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    started = time.monotonic()
    context.__exit__(None, None, None)
    assert time.monotonic() - started < 2.0 and child.poll() is None
    child.stdin.close()
    child.wait()
    deadline = time.monotonic() + 5
    err = ""
    while "child: done" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert "child: done" in err


def test_progress_bar_on_and_off(folder, capfd):
    preload.load(folder, size=8, progress=True)
    assert "10/10" in capfd.readouterr().err
    preload.load(folder, size=8, progress=False)
    assert capfd.readouterr().err == ""


def test_dataset_repr_and_len(folder):
    ds = preload.load(folder, size=8, layout="NCHW", progress=False)
    assert len(ds) == 10
    assert repr(ds).startswith("<preload.Dataset 10 images NCHW (3, 8, 8) uint8")
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0] * 5 + [1] * 5


def test_ram_check_takes_exactly_the_available_bytes_and_refuses_one_byte_less(tmp_path, rng, monkeypatch):
    # A second path to the RAM check: a list of paths, size=(height, width), NCHW, and the exact boundary.
    paths = [write(tmp_path / f"{k}.png", smooth_image(rng, 12, 10)) for k in range(3)]
    needed = 3 * 3 * 6 * 5
    monkeypatch.setattr(target.psutil, "virtual_memory", lambda: SimpleNamespace(available=needed - 1))
    words = rf"needs 0.00 GB \({needed:,} bytes\) \(N\*C\*H\*W = 3 x 3 x 6 x 5\) but only .*\({needed - 1:,} bytes\)"
    with pytest.raises(MemoryError, match=words) as caught:
        preload.load(paths, size=(6, 5), layout="NCHW", progress=False)
    assert isinstance(caught.value, preload.InsufficientMemoryError)
    monkeypatch.setattr(target.psutil, "virtual_memory", lambda: SimpleNamespace(available=needed))
    assert preload.load(paths, size=(6, 5), layout="NCHW", progress=False).images.shape == (3, 3, 6, 5)


@pytest.mark.parametrize("size", [2**31, (8, 2**40), 99_999_999_999])
def test_a_side_larger_than_opencv_handles_is_an_option_error(size):
    with pytest.raises(preload.OptionError, match=r"size=.* is not accepted; OpenCV handles at most 2,147,483,647"):
        preload.load(["never-read.png"], size=size)


def test_byte_counts_past_int64_are_refused_by_the_memory_and_disk_checks_not_wrapped(tmp_path):
    # 16 x 3 x (2**31-1)**2 bytes is past 2**63: a wrapped int64 count once let the
    # checks see a small or negative array; Python integers never wrap.
    paths = [write(tmp_path / f"{i}.png", np.full((4, 4, 3), i, np.uint8)) for i in range(16)]
    side = 2**31 - 1
    need = f"{16 * side * side * 3:,} bytes"
    assert 16 * side * side * 3 > 2**63
    with pytest.raises(preload.InsufficientMemoryError, match=rf"the array needs [\d.]+ GB \({need}\)"):
        preload.load(paths, size=side, progress=False)
    out = tmp_path / "o.npy"
    with pytest.raises(preload.InsufficientDiskError, match=rf"out='{out}' needs [\d.]+ GB \({need}\)"):
        preload.load(paths, size=side, out=out, progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{i}.png" for i in range(16))  # no partial left behind
