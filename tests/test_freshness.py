"""Freshness rules and the stat engine: each rule has a test that fails when it alone is broken."""

from __future__ import annotations

import json
import os
import time
import types
import zipfile

import numpy as np
import pytest

import preload
from conftest import count_decodes, settle, smooth_image, write
from preload import cache, cli, freshness
from preload.sources import Manifest


@pytest.fixture
def source(tmp_path, rng):
    """Two class folders of 6 PNGs each, older than the timestamp granularity."""
    root = tmp_path / "src"
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for k in range(6):
            write(root / name / f"{k}.png", smooth_image(rng, 20, 24))
    settle()
    return root


def build(source, out, **options):
    return preload.build_cache(source, out, **{"size": 8, "progress": False, **options})


def rewrite_keeping_stamps(path, data: bytes) -> None:
    """Rewrite ``path`` and put its old atime/mtime back, as ``cp -p`` and ``rsync -t`` do."""
    before = os.stat(path)
    with open(path, "wb") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# ------------------------------------------------------------- the three compares


@pytest.mark.parametrize("column", ["size", "mtime_ns", "ctime_ns", "inode"])
def test_each_stat_column_alone_makes_a_file_changed(tmp_path, source, column):
    table = freshness.take(Manifest.from_folder(source))
    getattr(table, column)[4] -= 1  # the record differs from the disk in this column only
    verdict = freshness.check(table, {"kind": "folder", "path": str(source)}, threads=1)
    assert verdict.changed == [str(source / "ant" / "4.png")]
    assert verdict.stale and not verdict.added and not verdict.removed


@pytest.mark.parametrize("column", ["size", "mtime_ns", "ctime_ns", "inode"])
def test_each_stat_column_alone_makes_a_rebuild_redo_the_row(tmp_path, source, column):
    files = Manifest.from_folder(source)
    old = cache.Snapshot.take(files)
    now = cache.Snapshot.take(files)
    assert old.same_files(now).all()
    getattr(old.table, column)[7] += 1
    assert np.flatnonzero(~old.same_files(now)).tolist() == [7]


def test_same_size_rewrite_with_the_old_mtime_is_stale_by_ctime(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    victim = source / "bee" / "2.png"
    before = os.stat(victim)
    data = victim.read_bytes()
    rewrite_keeping_stamps(victim, data[:-1] + bytes([data[-1] ^ 1]))
    after = os.stat(victim)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(preload.StaleCacheError, match=r"1 changed .*bee/2.png") as caught:
        preload.open_cache(out)
    assert caught.value.changed == [str(victim)]
    assert preload.verify_cache(out)["status"] == "stale"


def test_size_change_with_the_old_mtime_is_stale(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    victim = source / "ant" / "0.png"
    before = os.stat(victim)
    rewrite_keeping_stamps(victim, victim.read_bytes() + b"\0" * 10)
    assert os.stat(victim).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(preload.StaleCacheError, match=r"1 changed .*ant/0.png"):
        preload.open_cache(out)


def test_a_rebuild_redecodes_a_file_changed_with_its_stamps_restored(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    victim = source / "ant" / "3.png"
    rewrite_keeping_stamps(victim, (source / "bee" / "3.png").read_bytes())
    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert calls == [str(victim)]
    assert np.array_equal(ds.images[3], ds.images[9])


class BatchStamps:
    """``os`` as preload.freshness sees it on a coarse-clock file system after one ``touch`` of a batch.

    Every file and folder has the same whole-second mtime and ctime, so only
    the size and the inode number tell files apart. ``inodes`` (path -> number)
    replaces ``st_ino`` where given.
    """

    STAMP = 1_577_836_800 * 10**9  # 2020-01-01, long before any record

    def __init__(self, inodes: dict | None = None):
        self.inodes = inodes or {}

    def __getattr__(self, name):
        return getattr(os, name)

    def stat(self, path, *, dir_fd=None, follow_symlinks=True):
        info = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        return types.SimpleNamespace(st_size=info.st_size, st_mtime_ns=self.STAMP, st_ctime_ns=self.STAMP,
                                     st_ino=self.inodes.get(os.fsdecode(os.path.basename(path)), info.st_ino),
                                     st_mode=info.st_mode, st_dev=info.st_dev)


def same_size_classes(root, values=(("cat", 30), ("dog", 220))):
    for name, value in values:
        (root / name).mkdir(parents=True)
        for k in range(3):
            write(root / name / f"{k}.bmp", np.full((20, 20, 3), value, np.uint8))
    settle()
    return root


def test_swapped_class_folders_are_stale_when_every_stamp_matches(tmp_path, monkeypatch):
    root = same_size_classes(tmp_path / "src")
    monkeypatch.setattr(freshness, "os", BatchStamps())
    out = tmp_path / "c.npy"
    assert build(root, out).images[:, 0, 0, 0].tolist() == [30] * 3 + [220] * 3
    os.rename(root / "cat", root / "tmp")
    os.rename(root / "dog", root / "cat")
    os.rename(root / "tmp", root / "dog")
    with pytest.raises(preload.StaleCacheError, match=r"6 changed") as caught:
        preload.open_cache(out)
    assert sorted(caught.value.changed) == sorted(str(p) for p in root.rglob("*.bmp"))
    assert preload.verify_cache(out)["status"] == "stale"
    ds = build(root, out)  # every file moved: decoded again, each row the pixels of its path now
    assert ds.images[:, 0, 0, 0].tolist() == [220] * 3 + [30] * 3 and ds.classes == ["cat", "dog"]
    assert preload.verify_cache(out)["status"] == "fresh"


def test_swapped_class_folders_are_stale_on_this_file_system(tmp_path):
    """The same without a stand-in, where one touch gives every file the same ctime (a coarse kernel clock)."""
    for attempt in range(20):
        root = same_size_classes(tmp_path / f"src{attempt}")
        files = sorted(root.rglob("*.bmp"))
        for path in files:
            os.utime(path, ns=(BatchStamps.STAMP, BatchStamps.STAMP))
        if len({(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in files}) == 1:
            break
    else:
        pytest.skip("this file system gives files touched together different ctimes: the stamps catch a swap")
    time.sleep(freshness.FINE_GRANULARITY_NS / 1e9 * 1.5)  # the folders' ctimes too, so no file is unverifiable
    out = tmp_path / "c.npy"
    build(root, out)
    for a, b in (("cat", "tmp"), ("dog", "cat"), ("tmp", "dog")):
        os.rename(root / a, root / b)
    with pytest.raises(preload.StaleCacheError, match=r"6 changed"):
        preload.open_cache(out)


def test_inode_numbers_past_two_to_the_63_are_kept_exactly(tmp_path, source, monkeypatch):
    big = {f"{k}.png": 2**64 - 1 - k for k in range(6)}  # overlayfs with xino puts its layer in the top bits
    monkeypatch.setattr(freshness, "os", BatchStamps(big))
    table = freshness.take(Manifest.from_folder(source))
    assert table.inode.dtype == np.uint64 and table.inode.tolist() == [2**64 - 1 - k for k in range(6)] * 2
    assert not freshness.check(table, {"kind": "folder", "path": str(source)}, threads=1).stale
    out = tmp_path / "c.npy"
    build(source, out)
    assert preload.verify_cache(out)["status"] == "fresh"
    big["0.png"] -= 10
    with pytest.raises(preload.StaleCacheError, match=r"2 changed \('.*ant/0.png', '.*bee/0.png'\)"):
        preload.open_cache(out)


# ----------------------------------------------------------- the granularity window


def test_a_file_written_within_the_granularity_is_unverifiable_and_decoded_again(tmp_path, source, monkeypatch):
    victim = source / "bee" / "5.png"
    victim.write_bytes(victim.read_bytes())  # just before the build: a same-tick rewrite would not show
    stamp = os.stat(victim).st_ctime_ns
    # Date the record 1 ms after the write: the victim is inside the 20 ms window, every other file
    # (written before settle()) outside it, whatever the machine's load.
    monkeypatch.setattr(freshness, "_clock", lambda: stamp + 1_000_000)
    out = tmp_path / "c.npy"
    build(source, out)
    monkeypatch.undo()
    result = preload.verify_cache(out)
    assert result["status"] == "fresh" and result["unverifiable"] == [str(victim)]
    preload.open_cache(out)  # unverifiable is not stale
    calls = count_decodes(monkeypatch)
    build(source, out)
    assert calls == [str(victim)]


def test_verify_on_the_command_line_names_unverifiable_files(tmp_path, source, monkeypatch, capsys):
    victim = source / "ant" / "2.png"
    victim.write_bytes(victim.read_bytes())
    monkeypatch.setattr(freshness, "_clock", lambda: os.stat(victim).st_ctime_ns + 1_000_000)
    out = tmp_path / "c.npy"
    build(source, out)
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"fresh: {out}\n1 file unverifiable ('{victim}'): modified within")
    assert cli.main(["verify", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["unverifiable"] == [str(victim)]


def test_whole_second_stamps_assume_a_coarse_granularity(tmp_path, source):
    for path in sorted(source.rglob("*.png")):
        os.utime(path, ns=(10**9, 5 * 10**9))
    # ctimes stay fine-grained on this file system, so only a stamp-free record is coarse
    table = freshness.take(Manifest.from_folder(source))
    assert table.granularity_ns == freshness.FINE_GRANULARITY_NS
    table.mtime_ns[:] = 7 * 10**9
    table.ctime_ns[:] = table.taken_ns // 10**9 * 10**9 - 10**9  # whole seconds, 1-2 s before the record
    table.granularity_ns = freshness.COARSE_GRANULARITY_NS
    assert table.unverifiable().all()
    table.granularity_ns = freshness.FINE_GRANULARITY_NS
    assert not table.unverifiable().any()


# -------------------------------------------------------------------------- labels


def test_a_changed_csv_label_is_stale(tmp_path, source):
    listing = tmp_path / "list.csv"
    images = sorted(source.rglob("*.png"))
    rows = [f"{p.relative_to(tmp_path)},{'cat' if k % 2 else 'dog'}" for k, p in enumerate(images)]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    settle()
    out = tmp_path / "c.npy"
    build(listing, out)
    assert preload.open_cache(out).labels.tolist() == [1, 0] * 6
    before = os.stat(listing)
    text = listing.read_text()
    os.remove(listing)  # a new file: its ctime and inode move even if the clock had not
    listing.write_text(text.replace(",dog\n", ",cat\n", 1))  # same size, one label changed
    os.utime(listing, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(preload.StaleCacheError, match=r"1 relabelled .*ant/0.png") as caught:
        preload.open_cache(out)
    assert caught.value.changed == [str(source / "ant" / "0.png")]
    assert build(listing, out).labels.tolist() == [0, 0] + [1, 0] * 5


def test_reordered_csv_rows_are_stale_and_a_build_follows_the_new_order(tmp_path, source, capsys):
    listing = tmp_path / "list.csv"
    images = sorted(source.rglob("*.png"))[:4]
    rows = [f"{p.relative_to(tmp_path)},{k}" for k, p in enumerate(images)]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    settle()
    out = tmp_path / "c.npy"
    first = build(listing, out)
    pixels = np.array(first.images)
    listing.write_text("path,label\n" + "\n".join(reversed(rows)) + "\n")  # the same files and labels
    with pytest.raises(preload.StaleCacheError, match=r"4 moved to another row .*ant/3.png") as caught:
        preload.open_cache(out)
    assert caught.value.changed == [str(p) for p in reversed(images)]
    assert cli.main(["verify", str(out)]) == 1
    assert "4 moved to another row" in capsys.readouterr().out
    rebuilt = build(listing, out)
    assert rebuilt.labels.tolist() == [3, 2, 1, 0]
    assert np.array_equal(rebuilt.images, pixels[::-1])
    assert preload.open_cache(out).paths == [str(p) for p in reversed(images)]


def test_changed_labels_of_a_path_list_are_rebuilt(tmp_path, source):
    paths = sorted(str(p) for p in source.rglob("*.png"))
    out = tmp_path / "c.npy"
    assert build(paths, out, labels=["a"] * 12).classes == ["a"]
    ds = build(paths, out, labels=["a"] * 11 + ["b"])
    assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0] * 11 + [1]
    assert preload.open_cache(out).labels.tolist() == [0] * 11 + [1]


@pytest.mark.parametrize("on_error", ["skip", "zero"])
def test_a_file_that_could_not_be_stat_ed_then_or_now_is_unchanged(tmp_path, rng, monkeypatch, capsys, on_error):
    root = tmp_path / "src"
    (root / "cat").mkdir(parents=True)
    write(root / "cat" / "a.png", smooth_image(rng, 20, 24))
    os.symlink("/nonexistent", root / "cat" / "c.jpg")  # listed, but stat (which follows it) fails
    settle()
    out = tmp_path / "c.npy"
    ds = build(root, out, on_error=on_error)
    assert len(ds) == (1 if on_error == "skip" else 2) and [f.index for f in ds.failed] == [1]
    result = preload.verify_cache(out)
    assert (result["status"], result["unverifiable"]) == ("fresh", [])
    assert cli.main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("fresh: ")
    calls = count_decodes(monkeypatch)
    again = build(root, out, on_error=on_error)
    assert calls == [] and [f.index for f in again.failed] == [1]

    # The link resolving later is a change.
    write(tmp_path / "real.jpg", smooth_image(rng, 20, 24))
    os.remove(root / "cat" / "c.jpg")
    os.symlink(tmp_path / "real.jpg", root / "cat" / "c.jpg")
    result = preload.verify_cache(out)
    assert result["status"] == "stale" and result["changed"] == [str(root / "cat" / "c.jpg")]
    fixed = build(root, out, on_error=on_error)
    assert len(fixed) == 2 and fixed.failed == [] and str(root / "cat" / "c.jpg") in calls


# ------------------------------------------------------------------- folders first


def test_folder_add_and_remove_relist_only_the_changed_folders(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    write(source / "bee" / "new.png", smooth_image(rng, 20, 24))
    os.remove(source / "ant" / "1.png")
    (source / "bee" / "deeper").mkdir()
    write(source / "bee" / "deeper" / "x.png", smooth_image(rng, 20, 24))
    scanned = []
    real_scan = freshness._scan
    monkeypatch.setattr(freshness, "_scan", lambda folder: scanned.append(folder) or real_scan(folder))
    monkeypatch.setattr(cache, "manifest", lambda *a, **k: pytest.fail("the whole source was listed again"))
    with pytest.raises(preload.StaleCacheError) as caught:
        preload.open_cache(out)
    assert sorted(scanned) == [str(source / "ant"), str(source / "bee")]
    assert caught.value.added == [str(source / "bee" / "new.png"), str(source / "bee" / "deeper" / "x.png")]
    assert caught.value.removed == [str(source / "ant" / "1.png")]
    assert caught.value.changed == []


def test_a_new_unreadable_sub_folder_is_a_change_not_a_crash(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    os.symlink(source / "ant", source / "ant" / "loop")  # a symlink back up: listing it is a SourceError
    with pytest.raises(preload.StaleCacheError, match=r"1 added \('.*ant/loop'\)"):
        preload.open_cache(out)


def test_a_new_class_folder_lists_the_whole_source_again(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    (source / "cow").mkdir()
    write(source / "cow" / "0.png", smooth_image(rng, 20, 24))
    listed = []
    real = cache.manifest
    monkeypatch.setattr(cache, "manifest", lambda path: listed.append(path) or real(path))
    with pytest.raises(preload.StaleCacheError, match=r"stale: 1 added \('.*cow/0.png'\); build") as caught:
        preload.open_cache(out)
    assert listed == [str(source)] and caught.value.changed == []  # labels are class names: ant is still ant


# ------------------------------------------------------------------------ the engine


def test_the_thread_pool_sees_what_a_sequential_loop_sees(tmp_path, source):
    paths = sorted(str(p) for p in source.rglob("*.png"))
    mixed = [paths[k] for k in (7, 0, 8, 1, 9, 2, 10, 3, 11, 4, 5, 6)] + [str(tmp_path / "gone.png")]
    table = freshness.FileTable.from_paths(mixed)
    freshness.CHUNK, old_chunk = 2, freshness.CHUNK  # many tasks, so threads really interleave
    try:
        sequential = freshness.StatEngine(threads=1).stat_table(table)
        pooled = freshness.StatEngine(threads=5).stat_table(table)
    finally:
        freshness.CHUNK = old_chunk
    for a, b in zip(sequential, pooled, strict=True):
        assert np.array_equal(a, b)
    expected = [os.stat(p).st_ctime_ns for p in mixed[:-1]] + [-1]
    assert sequential[2].tolist() == expected


def test_threads_follow_the_probe_the_parameter_and_the_environment(tmp_path, source, monkeypatch):
    paths = [str(p) for p in sorted(source.rglob("*.png"))]
    assert freshness.threads_for(freshness.probe_latency(paths)) <= 4  # a local, warm disk
    slow = freshness.probe_latency(paths, delay_us=300)
    assert slow >= 300e-6 and freshness.threads_for(slow) >= 16
    monkeypatch.setenv(freshness.DELAY_ENV, "150")
    engine = freshness.StatEngine()
    assert engine.delay_us == 150
    engine.stat_table(freshness.FileTable.from_paths(paths))
    assert engine.latency >= 150e-6
    monkeypatch.setenv(freshness.THREADS_ENV, "3")
    assert freshness.StatEngine().threads == 3 and freshness.StatEngine(threads=2).threads == 2
    monkeypatch.setenv(freshness.THREADS_ENV, "many")
    with pytest.raises(preload.OptionError, match=r"PRELOAD_STAT_THREADS='many' is not accepted"):
        freshness.StatEngine()
    with pytest.raises(preload.OptionError, match=r"threads=0 is not accepted"):
        freshness.StatEngine(threads=0)


def test_a_progress_bar_when_asked(tmp_path, source, capsys):
    table = freshness.take(Manifest.from_folder(source))
    freshness.StatEngine(threads=1).stat_table(table, progress=True)
    assert "checking" in capsys.readouterr().err
    freshness.StatEngine(threads=1).stat_table(table)  # a 12-file check predicts far under a second
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("latency", "shown"), [(5.0, True), (1e-3, False)])
def test_by_default_a_bar_only_for_a_check_predicted_over_a_second(tmp_path, source, capsys, monkeypatch,
                                                                   latency, shown):
    monkeypatch.setattr(freshness, "progress_wanted", lambda progress: True)  # as if stderr were a terminal
    table = freshness.take(Manifest.from_folder(source))
    engine = freshness.StatEngine()
    engine.latency = latency  # as a probe would measure: 12 files x 5 s on 32 threads > 1 s
    engine.stat_table(table)
    assert ("checking" in capsys.readouterr().err) is shown


# ------------------------------------------------------------------------- the index


def test_the_index_is_memory_mapped_and_paths_are_read_lazily(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    index = freshness.read_index(str(out) + ".index.npz")
    assert isinstance(index["ctime_ns"], np.memmap) and isinstance(index["names"], np.memmap)
    ds = preload.open_cache(out, check=False)
    expected = sorted(str(p) for p in source.rglob("*.png"))
    assert ds.paths[-1] == expected[-1] and ds.paths[2:4] == expected[2:4] and list(ds.paths) == expected
    with pytest.raises(IndexError):
        ds.paths[12]


def test_a_damaged_index_is_an_incomplete_cache(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    with zipfile.ZipFile(index) as archive:
        assert "ctime_ns.npy" in archive.namelist()
    index.write_bytes(index.read_bytes()[:200])
    with pytest.raises(preload.IncompleteCacheError, match=r"index .*c.npy.index.npz' cannot be read \(BadZipFile"):
        preload.open_cache(out, check=False)
    with pytest.raises(preload.IncompleteCacheError, match=r"index .*c.npy.index.npz' is damaged"):
        freshness.read_index(str(index))
