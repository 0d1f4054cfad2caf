"""The on-disk cache: atomic builds, kill-and-resume, staleness, one writer, disk errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import preload
from conftest import count_decodes, journal_done, settle, smooth_image, write
from preload import cache, decode

ROOT = Path(__file__).resolve().parent.parent


def build(source, out, **options):
    options = {"size": 16, "layout": "NCHW", "progress": False, **options}
    return preload.build_cache(source, out, **options)


def build_stopped_after(source, out, monkeypatch, decodes: int) -> None:
    """A one-thread build that Ctrl-C stops when ``decodes`` images are decoded.

    Ends with ``monkeypatch.undo()``, which undoes every patch of the test so far.
    """
    real = decode.Decoder.decode_into
    seen = []

    def stop_after(self, path, slot):
        if len(seen) == decodes:
            raise KeyboardInterrupt
        seen.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", stop_after)
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()


# --------------------------------------------------------------------- build, open


def test_build_then_open_matches_load(tmp_path, source):
    out = tmp_path / "c.npy"
    built = build(source, out)
    expected = preload.load(source, size=16, layout="NCHW", progress=False)
    opened = preload.open_cache(out)
    for ds in (built, opened):
        assert np.array_equal(ds.images, expected.images)
        assert ds.labels.tolist() == expected.labels.tolist()
        assert ds.classes == ["ant", "bee", "cow"]
        assert list(ds.paths) == [os.path.abspath(p) for p in expected.paths]
        assert ds.layout == "NCHW"
    assert isinstance(opened.images, np.memmap) and not opened.images.flags.writeable
    assert np.array_equal(np.load(out, mmap_mode="r"), expected.images)  # readable without preload
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "c.npy.index.npz", "c.npy.json", "src"]


def test_metadata_records_options_versions_and_files(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out, resize="cover", color="bgr")
    meta = json.loads((tmp_path / "c.npy.json").read_text())
    assert meta["format"] == "preload-cache" and meta["version"] == 3
    assert meta["shape"] == [60, 3, 16, 16]
    assert meta["options"]["resize"] == "cover" and meta["options"]["color"] == "bgr"
    assert meta["options"]["size"] == [16, 16] and meta["options"]["exif"] is True
    assert set(meta["versions"]) == {"preload", "numpy", "opencv", "python"}
    assert meta["source"] == {"kind": "folder", "path": str(source)}
    with np.load(tmp_path / "c.npy.index.npz") as index:
        first = str(source / "ant" / "00.png")
        folders = index["folders"].tobytes().decode().split("\0")
        assert folders[index["folder_of"][0]] + index["names"].tobytes().decode().split("\0")[0] == first
        assert index["name_starts"].tolist()[:3] == [0, 7, 14]  # "00.png\0" is 7 bytes
        assert index["file_size"][0] == os.path.getsize(first)
        assert index["mtime_ns"][0] == os.stat(first).st_mtime_ns
        assert index["ctime_ns"][0] == os.stat(first).st_ctime_ns
        assert index["inode"][0] == os.stat(first).st_ino and index["inode"].dtype == np.uint64
    info = preload.cache_info(out)
    assert (info["status"], info["images"], info["bytes"]) == ("complete", 60, 60 * 3 * 16 * 16)


def test_rebuilding_a_fresh_cache_decodes_nothing(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    calls = count_decodes(monkeypatch)
    build(source, out)
    assert calls == []


def test_open_missing_and_plain_npy(tmp_path):
    with pytest.raises(preload.CacheError, match=r"no cache at '.*nothing.npy'"):
        preload.open_cache(tmp_path / "nothing.npy")
    np.save(tmp_path / "plain.npy", np.zeros((2, 2), np.uint8))
    with pytest.raises(preload.CacheError, match=r"has no metadata file '.*plain.npy.json'"):
        preload.open_cache(tmp_path / "plain.npy")
    with pytest.raises(preload.TargetError, match=r"must end in .npy"):
        preload.open_cache(tmp_path / "cache.bin")


def test_truncated_array_is_refused(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    with open(out, "r+b") as handle:
        handle.truncate(os.path.getsize(out) - 100)
    with pytest.raises(preload.CacheError, match=r"truncated or replaced"):
        preload.open_cache(out)
    assert preload.verify_cache(out)["status"] == "damaged"


# ------------------------------------------------------------------- kill, resume

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import preload
from preload import cache, decode
cache.COMMIT_SECONDS = 0.02
real = decode.Decoder.decode_into
def slow(self, path, slot):
    time.sleep(0.01)
    return real(self, path, slot)
decode.Decoder.decode_into = slow
preload.build_cache({src!r}, {out!r}, size=16, layout="NCHW", workers=2, progress=False)
"""


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
@pytest.mark.parametrize("kill_at", [0.0, 0.25, 0.6, 0.85])
def test_kill_9_then_resume_is_byte_identical(tmp_path, source, kill_at):
    reference = tmp_path / "reference.npy"
    build(source, reference)
    out = tmp_path / "c.npy"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), src=str(source), out=str(out)))
    child = subprocess.Popen([sys.executable, str(script)])
    journal = tmp_path / "c.npy.journal"
    deadline = time.monotonic() + 30
    while journal_done(journal) < kill_at * 60 or (kill_at == 0 and not journal.exists()):
        assert child.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()

    with pytest.raises(preload.CacheError, match=r"unfinished build \(\d+ of 60 images written\)"):
        preload.open_cache(out)
    assert preload.cache_info(out)["status"] == "partial"
    done_before = journal_done(journal)
    calls = []
    real = decode.Decoder.decode_into
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode.Decoder, "decode_into", lambda self, p, s: calls.append(p) or real(self, p, s))
        build(source, out)
    assert len(calls) == 60 - done_before
    assert out.read_bytes() == reference.read_bytes()
    assert preload.verify_cache(out)["status"] == "fresh"
    assert not any(name.startswith("c.npy.") and name.split("c.npy.")[1] in
                   ("partial", "journal", "build.json", "build.npz", "failed.jsonl") for name in os.listdir(tmp_path))


def test_ctrl_c_keeps_finished_rows(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build_stopped_after(source, out, monkeypatch, decodes=25)
    done = journal_done(tmp_path / "c.npy.journal")
    assert 25 - 7 <= done <= 25  # whole chunks (of 7 rows here) that finished before the interrupt
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    assert len(calls) == 60 - done
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)


def test_killed_after_renaming_into_place_finishes(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    real_save = cache.Snapshot.save

    def die_at_index(self, path, *args, **kwargs):
        if path.endswith(".index.npz"):  # runs right after the array was renamed to c.npy
            raise SystemExit("killed")
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(cache.Snapshot, "save", die_at_index)
    with pytest.raises(SystemExit):
        build(source, out)
    assert out.exists() and not (tmp_path / "c.npy.json").exists()
    with pytest.raises(preload.CacheError, match="unfinished build"):
        preload.open_cache(out)
    monkeypatch.setattr(cache.Snapshot, "save", real_save)
    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert calls == [] and len(ds) == 60
    assert preload.verify_cache(out)["status"] == "fresh"


def written_paths(out: Path, paths: list[str]) -> list[str]:
    """The paths whose rows the journal of the unfinished build at ``out`` marks as written."""
    raw = Path(str(out) + ".journal").read_bytes()
    bits = np.unpackbits(np.frombuffer(raw[cache.JOURNAL_HEADER :], np.uint8), bitorder="little")[: len(paths)]
    return [path for path, bit in zip(paths, bits, strict=True) if bit]


@pytest.mark.parametrize("change", ["added", "removed", "added and removed"])
def test_a_stopped_build_keeps_its_rows_when_files_were_added_or_removed(tmp_path, source, rng, monkeypatch, caplog,
                                                                          change):
    out = tmp_path / "c.npy"
    before = preload.sources.manifest(str(source)).paths
    build_stopped_after(source, out, monkeypatch, decodes=30)
    written = written_paths(out, before)
    assert 23 <= len(written) <= 30
    if "added" in change:  # sorts second: every later row moves one place down
        write(source / "ant" / "00a.png", smooth_image(rng, 32, 40))
    if "removed" in change:  # a written row: every later row moves one place up
        os.remove(source / "ant" / "02.png")
    settle()
    now = preload.sources.manifest(str(source)).paths
    calls = count_decodes(monkeypatch)
    with caplog.at_level("INFO", logger="preload.cache"):
        ds = build(source, out, workers=1)
    kept = [path for path in written if path in now]
    assert sorted(calls) == sorted(set(now) - set(kept))  # each row still right is kept, wherever it moved
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)
    assert ds.paths == now and preload.verify_cache(out, deep=True)["status"] == "fresh"
    words = change.replace(" and ", ", 1 ")
    assert (f"resuming: {len(kept)} of {len(now)} rows kept from the unfinished build (since it stopped, "
            f"files: 1 {words})") in caplog.messages
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "c.npy.index.npz", "c.npy.json", "src"]


@pytest.mark.parametrize("stop_at", ["take_rows", "_remove", "_write_failures"])  # copying, renamed, new plan
def test_a_build_stopped_while_carrying_rows_over_still_ends_right(tmp_path, source, rng, monkeypatch, stop_at):
    out = tmp_path / "c.npy"
    build_stopped_after(source, out, monkeypatch, decodes=30)
    write(source / "ant" / "00a.png", smooth_image(rng, 32, 40))
    settle()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, stop_at, stop)
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()
    ds = build(source, out, workers=1)  # never a wrong row, whatever was left
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "c.npy.index.npz", "c.npy.json", "src"]


def test_a_cache_whose_source_gained_and_lost_files_decodes_only_the_new_ones(tmp_path, source, rng, monkeypatch,
                                                                               caplog):
    out = tmp_path / "c.npy"
    build(source, out)
    reader = preload.open_cache(out)
    old_rows = np.array(reader.images)
    added = write(source / "bee" / "05a.png", smooth_image(rng, 33, 41))
    os.remove(source / "cow" / "11.png")
    settle()
    calls = count_decodes(monkeypatch)
    with caplog.at_level("INFO", logger="preload.cache"):
        ds = build(source, out)
    assert calls == [added]
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)
    assert "refreshing: 59 of 60 rows unchanged, decoding 1 (files: 1 added, 1 removed)" in caplog.messages
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"
    assert np.array_equal(reader.images, old_rows)  # a reader of the old cache still reads the old bytes


def test_a_changed_file_of_a_compacted_cache_is_the_only_one_decoded(tmp_path, source, rng, monkeypatch, caplog):
    (source / "ant" / "04.png").write_bytes(b"")  # skipped: the rows after it moved up one place
    settle()
    out = tmp_path / "c.npy"
    build(source, out, on_error="skip")
    changed = source / "bee" / "07.png"
    write(changed, smooth_image(rng, 33, 41))
    settle()
    calls = count_decodes(monkeypatch)
    with caplog.at_level("INFO", logger="preload.cache"):
        ds = build(source, out, on_error="skip")
    assert calls == [str(changed)]  # the empty file is unchanged: it stays skipped, undecoded
    expected = preload.load(source, size=16, layout="NCHW", on_error="skip", progress=False)
    assert np.array_equal(ds.images, expected.images)
    assert [f.path for f in ds.failed] == [str(source / "ant" / "04.png")]
    assert "refreshing: 59 of 60 rows unchanged, decoding 1 (files: 1 changed)" in caplog.messages


def test_other_options_refuse_an_unfinished_build_until_forced(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    monkeypatch.setattr(decode.Decoder, "decode_into", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build(source, out)
    monkeypatch.undo()
    words = r"unfinished build .* other settings is here \(size \[16, 16\] \(cache\) vs \[20, 20\] \(now\)\).*--force"
    with pytest.raises(preload.CacheError, match=words):
        build(source, out, size=20)
    ds = build(source, out, size=20, force=True)
    assert ds.images.shape == (60, 3, 20, 20)


def test_other_options_refuse_a_complete_cache_until_forced(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    with pytest.raises(preload.CacheError, match=r"built with other options \(layout 'NCHW' \(cache\) vs 'NHWC'"):
        build(source, out, layout="NHWC")
    assert build(source, out, layout="NHWC", force=True).images.shape == (60, 16, 16, 3)


# -------------------------------------------------------------------------- stale


def test_stale_added_removed_changed(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    write(source / "bee" / "new.png", smooth_image(rng, 30, 30))
    os.remove(source / "cow" / "05.png")
    changed = source / "ant" / "03.png"
    write(changed, smooth_image(rng, 31, 40))
    os.utime(changed, ns=(1, 10**9))
    with pytest.raises(preload.StaleCacheError, match=r"1 added .*new.png.*1 removed .*05.png.*1 changed .*03.png"):
        preload.open_cache(out)
    try:
        preload.open_cache(out)
    except preload.StaleCacheError as exc:
        assert exc.added == [str(source / "bee" / "new.png")]
        assert exc.removed == [str(source / "cow" / "05.png")]
        assert exc.changed == [str(changed)]
    assert len(preload.open_cache(out, check=False)) == 60
    result = preload.verify_cache(out)
    assert result["status"] == "stale" and result["added"] == [str(source / "bee" / "new.png")]
    ds = build(source, out)  # files added and removed: rebuilt
    assert len(ds) == 60 and preload.verify_cache(out)["status"] == "fresh"


def test_stale_with_the_same_count_redecodes_only_changed_files(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    changed = source / "bee" / "07.png"
    write(changed, smooth_image(rng, 33, 41))
    os.utime(changed, ns=(1, 2 * 10**9))
    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert calls == [str(changed)]
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)
    assert preload.verify_cache(out)["status"] == "fresh"


def test_sources_changed_while_a_build_was_stopped(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build_stopped_after(source, out, monkeypatch, decodes=30)
    done = journal_done(tmp_path / "c.npy.journal")
    changed = source / "ant" / "01.png"  # already written by the stopped build
    write(changed, smooth_image(rng, 30, 40))
    os.utime(changed, ns=(1, 3 * 10**9))
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    assert sorted(calls) == sorted([str(changed)] + [str(p) for p in preload.open_cache(out).paths[done:]])
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)


def test_unchanged_folders_are_not_listed_again(tmp_path, source, monkeypatch, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    monkeypatch.setattr(cache, "manifest", lambda *a, **k: pytest.fail("listed again"))
    assert len(preload.open_cache(out)) == 60
    monkeypatch.undo()
    write(source / "cow" / "extra.png", smooth_image(rng, 30, 40))  # the folder's mtime moves
    with pytest.raises(preload.StaleCacheError, match=r"1 added .*extra.png"):
        preload.open_cache(out)


def test_open_check_cost_is_one_stat_per_file(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    stats = []
    real_stat = os.stat

    def watching(path, *args, dir_fd=None, **kwargs):
        where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        stats.append(os.path.join(where, os.fsdecode(path)))
        return real_stat(path, *args, dir_fd=dir_fd, **kwargs)

    monkeypatch.setattr(cache.os, "stat", watching)
    preload.open_cache(out)
    of_sources = [p for p in stats if p.startswith(str(source)) and p.endswith(".png")]
    assert len(of_sources) == 60 and len(set(of_sources)) == 60
    stats.clear()
    preload.open_cache(out, check=False)
    assert not [p for p in stats if p.startswith(str(source))]


# ------------------------------------------------------------------- one writer


def test_a_second_builder_is_refused(tmp_path, source):
    out = tmp_path / "c.npy"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from preload.cache import BuildLock
            with BuildLock({str(out) + '.lock'!r}):
                print("locked", flush=True)
                time.sleep(30)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(preload.CacheLockedError, match=rf"held by pid {holder.pid} on host .*another build"):
            build(source, out)
    finally:
        holder.kill()
        holder.wait()
    assert len(build(source, out)) == 60  # the dead holder's lock is simply taken over


# ---------------------------------------------------------------- disk problems


def test_disk_full_at_allocation(tmp_path, source, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(preload.InsufficientDiskError, match=r"no space left for '.*c.npy.partial'"):
        build(source, tmp_path / "c.npy")
    assert not (tmp_path / "c.npy.partial").exists()


def test_write_error_mid_build_leaves_a_resumable_partial(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    reference = tmp_path / "ref.npy"
    build(source, reference)
    monkeypatch.setattr(cache, "COMMIT_BYTES", 10 * 3 * 16 * 16)  # commit every 10 rows
    real_pwrite = os.pwrite
    writes = []

    def failing_pwrite(fd, data, offset):
        writes.append(offset)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(cache.os, "pwrite", failing_pwrite)
    with pytest.raises(preload.CacheError, match=r"No space left on device; the unfinished build is kept"):
        build(source, out, workers=1)
    monkeypatch.setattr(cache.os, "pwrite", real_pwrite)
    done = journal_done(tmp_path / "c.npy.journal")
    assert 10 <= done < 60
    calls = count_decodes(monkeypatch)
    build(source, out, workers=1)
    assert len(calls) == 60 - done
    assert out.read_bytes() == reference.read_bytes()


# ------------------------------------------------------------------ error policy


def test_skip_compacts_and_zero_keeps_rows(tmp_path, source):
    (source / "bee" / "03.png").write_bytes(b"")
    skipped = build(source, tmp_path / "skip.npy", on_error="skip")
    assert len(skipped) == 59 and skipped.images.shape == (59, 3, 16, 16)
    assert str(source / "bee" / "03.png") not in list(skipped.paths)
    assert [(f.index, f.reason) for f in skipped.failed] == [(23, preload.Reason.EMPTY)]
    expected = preload.load(source, size=16, layout="NCHW", on_error="skip", progress=False)
    assert np.array_equal(skipped.images, expected.images)
    assert skipped.labels.tolist() == expected.labels.tolist()
    reopened = preload.open_cache(tmp_path / "skip.npy")
    assert list(reopened.paths) == list(skipped.paths) and reopened.labels.tolist() == expected.labels.tolist()

    zeroed = build(source, tmp_path / "zero.npy", on_error="zero")
    assert len(zeroed) == 60 and not zeroed.images[23].any()
    assert [f.index for f in preload.open_cache(tmp_path / "zero.npy").failed] == [23]


def test_failed_files_are_listed_in_index_order(tmp_path, source):
    """A refresh logs the new failure after the kept ones; the cache still lists them by index."""
    out = tmp_path / "c.npy"
    (source / "ant" / "10.png").write_bytes(b"")
    settle()  # else the refresh would decode 10 again too (unverifiable), in order
    build(source, out, on_error="zero")
    (source / "ant" / "03.png").write_bytes(b"")  # a change: the refresh decodes it (and fails) after keeping 10
    ds = build(source, out, on_error="zero")
    assert [f.index for f in ds.failed] == [3, 10]
    assert [f["index"] for f in json.loads((tmp_path / "c.npy.json").read_text())["failed"]] == [3, 10]
    assert [f.index for f in preload.open_cache(out).failed] == [3, 10]


def test_raise_leaves_the_good_rows_resumable(tmp_path, source, monkeypatch):
    bad = source / "cow" / "10.png"
    good = bad.read_bytes()
    bad.write_bytes(b"")
    out = tmp_path / "c.npy"
    with pytest.raises(preload.ImageDecodeError, match=r"10.png"):
        build(source, out, workers=1)
    bad.write_bytes(good)
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    assert len(calls) == 60 - 50  # rows 0-49 were committed before the failure
    assert np.array_equal(ds.images, preload.load(source, size=16, layout="NCHW", progress=False).images)


# ------------------------------------------------- promises held by a second test


def test_a_running_build_in_this_process_refuses_a_second_one(tmp_path, source, monkeypatch):
    # The lock's second path: held by a real build (not BuildLock alone), in this very process.
    reference, out = tmp_path / "reference.npy", tmp_path / "c.npy"
    build(source, reference)
    started, release = threading.Event(), threading.Event()
    real = decode.Decoder.decode_into

    def wait_at_the_first_decode(self, path, slot):
        if not started.is_set():
            started.set()
            release.wait(30)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", wait_at_the_first_decode)
    built = []
    first = threading.Thread(target=lambda: built.append(build(source, out, workers=1)))
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(preload.CacheLockedError, match=rf"held by pid {os.getpid()} on host .*another build"):
            build(source, out, workers=1)
    finally:
        release.set()
        first.join(60)
    assert len(built) == 1 and len(built[0]) == 60
    assert out.read_bytes() == reference.read_bytes()  # the refused builder changed nothing


def test_the_metadata_is_renamed_into_place_last(tmp_path, source, monkeypatch):
    # The JSON-last order seen from the renames themselves (the other test kills a build before the JSON).
    out = tmp_path / "c.npy"
    real = os.replace
    renamed, when_json_landed = [], {}

    def spy(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        renamed.append(os.path.basename(dst))
        if renamed[-1] == "c.npy.json":
            when_json_landed["shape"] = np.load(out, mmap_mode="r").shape
            when_json_landed["index"] = (tmp_path / "c.npy.index.npz").exists()

    monkeypatch.setattr(os, "replace", spy)
    build(source, out)
    assert renamed[-1] == "c.npy.json" and renamed.count("c.npy.json") == 1, renamed
    assert renamed.index("c.npy") < renamed.index("c.npy.index.npz") < len(renamed) - 1, renamed
    assert when_json_landed == {"shape": (60, 3, 16, 16), "index": True}
