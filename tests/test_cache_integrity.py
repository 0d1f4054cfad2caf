"""Issue 11: a cache's files checked against each other, checksums, owned names, disk and memory limits."""

from __future__ import annotations

import ast
import errno
import fcntl
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import xxhash
from numpy.lib import format as npy_format

import preload
from conftest import count_decodes, settle, smooth_image, write
from preload import atomic, cache, decode, headers, target
from preload.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def source(tmp_path, rng):
    """Three classes of small BMPs, 60 in all: a rewrite of the same size keeps the file size."""
    root = tmp_path / "src"
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for k in range(20):
            write(root / name / f"{k:02d}.bmp", smooth_image(rng, 30 + k % 5, 40 + c))
    settle()  # files within the timestamp granularity of a build are decoded again by the next (freshness)
    return root


def build(source, out, **options):
    options = {"size": 16, "layout": "NCHW", "progress": False, **options}
    return preload.build_cache(source, out, **options)


def expected_images(source, **options):
    options = {"size": 16, "layout": "NCHW", "progress": False, **options}
    return preload.load(source, **options).images


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rewrite_npy_header(path: Path, **changes) -> None:
    """Edit a .npy header in place (same length, as a hand edit would), keeping the data."""
    with open(path, "r+b") as handle:
        npy_format.read_magic(handle)
        start = handle.tell()
        length = int.from_bytes(handle.read(2), "little")
        header = ast.literal_eval(handle.read(length).decode("latin1"))
        header.update(changes)
        text = repr(header)
        handle.seek(start + 2)
        handle.write((text + " " * (length - len(text) - 1) + "\n").encode("latin1"))


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    replaced = change(record)
    path.write_text(json.dumps(record if replaced is None else replaced))


def rewrite_index(path: Path, **changes) -> None:
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)
    for name in [name for name, value in arrays.items() if value is None]:
        del arrays[name]
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def assert_damaged(out: Path, capsys, words: str) -> None:
    """Every reader says damaged with ``words``: open_cache, cache_info, verify_cache, and the CLI exits 3."""
    with pytest.raises(preload.IncompleteCacheError, match=words):
        preload.open_cache(out)
    info = preload.cache_info(out)
    assert info["status"] == "damaged" and __import__("re").search(words, info["problem"]), info
    result = preload.verify_cache(out)
    assert result["status"] == "damaged" and __import__("re").search(words, result["problem"]), result
    for command in ("info", "verify"):
        code, text, err = cli(capsys, command, out)
        assert code == 3, (command, text, err)
        assert "Traceback" not in err and text.startswith("damaged: ")


# ------------------------------------------------------- 1. files cross-checked


@pytest.mark.parametrize("changes, words", [
    ({"shape": (60, 16, 3, 16)}, r"header says shape \(60, 16, 3, 16\), the metadata \(60, 3, 16, 16\)"),
    ({"shape": (30, 6, 16, 16)}, r"header says shape \(30, 6, 16, 16\)"),
    ({"descr": "|i1"}, r"header says dtype '\|i1', the metadata uint8"),
    ({"fortran_order": True}, r"header says Fortran order"),
])
def test_an_edited_npy_header_is_damaged(tmp_path, source, capsys, changes, words):
    out = tmp_path / "c.npy"
    build(source, out)
    rewrite_npy_header(out, **changes)
    assert_damaged(out, capsys, words)


def test_metadata_layout_that_contradicts_the_rows_is_damaged(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    # Header and metadata agree on (60, 16, 3, 16), but NCHW with rgb means rows of (3, H, W).
    rewrite_npy_header(out, shape=(60, 16, 3, 16))
    edit_json(tmp_path / "c.npy.json", lambda m: m.update(shape=[60, 16, 3, 16]))
    assert_damaged(out, capsys, r"layout NCHW, color rgb and size \(16, 16\) make rows of \(3, 16, 16\), but the "
                                r"array's rows are \(16, 3, 16\)")
    edit_json(tmp_path / "c.npy.json", lambda m: m["options"].update(layout="NHWC"))
    assert_damaged(out, capsys, r"layout NHWC, color rgb .* make rows of \(16, 16, 3\)")


def test_index_that_disagrees_with_the_metadata_is_damaged(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    with np.load(index) as data:
        labels = data["labels"]
    rewrite_index(index, labels=labels[:-1])
    assert_damaged(out, capsys, r"index .* has int64 labels of shape \(59,\) for 60 source files")
    rewrite_index(index, labels=labels, rows=np.arange(50))
    assert_damaged(out, capsys, r"row map .* does not fit 60 rows of 60 files")
    rewrite_index(index, rows=None, labels=labels + 5)
    assert_damaged(out, capsys, r"labels run from 5 to 7 but there are 3 classes")
    with np.load(index) as data:
        file_size = data["file_size"]
    rewrite_index(index, labels=labels, file_size=file_size[:-3])  # counted from its header, not read
    assert_damaged(out, capsys, r"it has 57 file_size for the 60 source files")


def test_the_file_record_of_the_index_is_cross_checked(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    with np.load(index) as data:
        original = {name: data[name] for name in data.files}
    rewrite_index(index, ctime_ns=None)
    assert_damaged(out, capsys, r"it has no 'ctime_ns'")
    rewrite_index(index, ctime_ns=original["ctime_ns"][:-1])
    assert_damaged(out, capsys, r"it has 59 ctime_ns for the 60 source files")
    rewrite_index(index, ctime_ns=original["ctime_ns"], name_starts=original["name_starts"][:-2])
    assert_damaged(out, capsys, r"it has 58 name offsets for the 60 source files")
    # Names and folders are read only by info and verify (open_cache with check=False reads nothing per file).
    rewrite_index(index, name_starts=original["name_starts"], folder_of=original["folder_of"] + 2)
    preload.open_cache(out, check=False)
    for result in (preload.cache_info(out), preload.verify_cache(out)):
        assert result["status"] == "damaged" and "folder numbers run from 2 to 4 but it lists 3 folders" in \
            result["problem"], result
    rewrite_index(index, folder_of=original["folder_of"], names=original["names"][:-10])
    assert "name offsets do not cut its" in preload.cache_info(out)["problem"]
    rewrite_index(index, **original)
    assert preload.verify_cache(out)["status"] == "fresh"


@pytest.mark.parametrize("damage, words", [
    (lambda m: [], r"holds a JSON list, not the cache's metadata"),
    (lambda m: {}, rf"is not a version-{cache.VERSION} preload cache \(format None"),
    (lambda m: m.pop("count") and None, r"lacks the field\(s\) 'count'"),
    (lambda m: m["options"].update(sharpen=2), r"its options are .*'sharpen'"),
    (lambda m: m["options"].update(layout="NWHC"), r"an option it records is not valid \(layout='NWHC'"),
    (lambda m: m.update(failed=[{"index": 99}]), r"lists a failed file it cannot describe"),
    (lambda m: m.update(shape="60x3x16x16"), r"has shape = '60x3x16x16'"),
    (lambda m: m.update(version=cache.VERSION + 1),
     rf"is not a version-{cache.VERSION} preload cache \(format 'preload-cache', version {cache.VERSION + 1}\)"),
    (lambda m: m.update(version=2), r"version 2\); build it again \(a build replaces a cache of another version"),
])
def test_damaged_metadata_is_named(tmp_path, source, capsys, damage, words):
    out = tmp_path / "c.npy"
    build(source, out)
    edit_json(tmp_path / "c.npy.json", damage)
    with pytest.raises(preload.IncompleteCacheError, match=words):
        preload.open_cache(out)
    result = preload.verify_cache(out)
    assert result["status"] == "damaged"
    code, _, err = cli(capsys, "verify", out)
    assert code == 3 and "Traceback" not in err
    code, text, _ = cli(capsys, "info", out)
    assert code == 3 and text.startswith("damaged: ")


@pytest.mark.parametrize("damage, words", [
    (lambda raw: raw[: len(raw) // 2], r"index '.*c.npy.index.npz' cannot be read \(BadZipFile"),
    (lambda raw: b"not a zip file at all" * 10, r"index '.*c.npy.index.npz' cannot be read"),
    (lambda raw: b"", r"index '.*c.npy.index.npz' cannot be read"),
])
def test_damaged_index_is_named(tmp_path, source, capsys, damage, words):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    index.write_bytes(damage(index.read_bytes()))
    assert_damaged(out, capsys, words)


def test_info_on_a_truncated_npy_says_damaged(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    with open(out, "r+b") as handle:
        handle.truncate(os.path.getsize(out) - 1)
    assert preload.cache_info(out)["status"] == "damaged"
    code, text, _ = cli(capsys, "info", out)
    assert code == 3 and "truncated or replaced" in text


def test_a_damaged_cache_of_ours_is_rebuilt_a_foreign_metadata_needs_force(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    rewrite_npy_header(out, descr="|i1")
    ds = build(source, out)  # ours (format says so): built again
    assert np.array_equal(ds.images, expected_images(source))
    edit_json(tmp_path / "c.npy.json", lambda m: m.update(version=cache.VERSION + 1))
    assert np.array_equal(build(source, out).images, expected_images(source))  # another version of ours too
    assert json.loads((tmp_path / "c.npy.json").read_text())["version"] == cache.VERSION
    (tmp_path / "c.npy.json").write_text("[]")
    with pytest.raises(preload.IncompleteCacheError, match=r"holds a JSON list.*pass force=True"):
        build(source, out)
    assert np.array_equal(build(source, out, force=True).images, expected_images(source))


# ------------------------------------------- 1. every index member checked, everywhere


@pytest.mark.parametrize("member, change, words, at_open", [
    ("file_size", lambda a: np.array(["a"] * len(a)), r"member 'file_size' is <U1 of shape \(60,\); it must be "
     r"integers of shape \(60,\)", True),
    ("taken", lambda a: a.astype(np.float64), r"member 'taken' is float64 of shape \(2,\)", True),
    ("listing_stat", lambda a: a.astype(np.float64), r"member 'listing_stat' is float64 of shape \(4, 3\)", True),
    ("names", lambda a: a.astype(np.int32), r"member 'names' is int32 of shape .*; it must be uint8 1-D", True),
    ("inode", lambda a: a.astype(np.int64), r"member 'inode' is int64 of shape \(60,\); it must be uint64", True),
    ("mtime_ns", lambda a: a.reshape(6, 10), r"member 'mtime_ns' is int64 of shape \(6, 10\)", True),
    # Ranges are read with every file's record: by a check, info, verify, a build, or the first path.
    ("folder_of", lambda a: a + 100, r"folder numbers run from 100 to 102 but it lists 3 folders", False),
    ("name_starts", lambda a: a * 1000, r"name offsets do not cut its", False),
])
def test_an_index_member_of_the_wrong_type_or_range_is_damaged_everywhere(tmp_path, source, capsys, member, change,
                                                                          words, at_open):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    with np.load(index) as data:
        rewrite_index(index, **{member: change(data[member])})
    assert_damaged(out, capsys, words)
    if at_open:
        with pytest.raises(preload.IncompleteCacheError, match=words):
            preload.open_cache(out, check=False)
    else:
        ds = preload.open_cache(out, check=False)  # reads nothing per file ...
        with pytest.raises(preload.IncompleteCacheError, match=words):
            ds.paths[0]  # ... until a path is asked for
    code, _, err = cli(capsys, "build", source, out, "--size", "16", "--layout", "NCHW")
    assert code == 0 and "building it again" in err and "Traceback" not in err
    assert np.array_equal(preload.open_cache(out).images, expected_images(source))


# ---------------------------------------------- 1. the three files of one build, bound


def other_source(tmp_path, rng) -> Path:
    """60 BMPs in three other classes, so a cache of it has as many rows as one of ``source``."""
    root = tmp_path / "other"
    for name in ("xen", "yak", "zebu"):
        (root / name).mkdir(parents=True)
        for k in range(20):
            write(root / name / f"{k:02d}.bmp", smooth_image(rng, 33, 41))
    settle()
    return root


def reseal(out: Path) -> None:
    """Make the metadata's digests fit the files again after an edit: a forgery, or a writer's bug."""
    meta_path = Path(f"{out}.json")
    meta = json.loads(meta_path.read_text())
    arrays = preload.freshness.read_index(f"{out}.index.npz")
    meta["index_digests"] = {name: cache._member_digest(array) for name, array in arrays.items()}
    meta["meta_digest"] = cache._meta_digest(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("suffix, words", [
    (".index.npz", r"the index '.*a.npy.index.npz' was written by build '\w+' and '.*a.npy.json' by build '\w+': "
                   "the files of two caches are mixed"),
    (".json", r"the files of two caches are mixed"),
    ("", r"row\(s\) 0, \d+, .* do not match the checksums in its index: the array is another build's"),
])
def test_a_file_of_another_cache_is_damaged_and_rebuilt(tmp_path, source, rng, capsys, suffix, words):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    build(source, a)
    build(other_source(tmp_path, rng), b)
    Path(f"{a}{suffix}").write_bytes(Path(f"{b}{suffix}").read_bytes())
    assert_damaged(a, capsys, words)
    if suffix == "":  # a deep verify names every row, and the build decodes them all again
        code, text, _ = cli(capsys, "verify", a, "--deep")
        assert code == 3 and text.startswith("damaged: 60 of 60 rows")
    assert np.array_equal(build(source, a).images, expected_images(source))
    assert preload.verify_cache(a, deep=True)["status"] == "fresh"


def test_the_other_caches_metadata_and_index_together_do_not_fit_the_array(tmp_path, source, rng, capsys):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    build(source, a)
    build(other_source(tmp_path, rng), b)
    for suffix in (".json", ".index.npz"):
        Path(f"{a}{suffix}").write_bytes(Path(f"{b}{suffix}").read_bytes())
    assert_damaged(a, capsys, r"do not match the checksums in its index")


@pytest.mark.parametrize("edit", [
    lambda m: m.update(classes=list(reversed(m["classes"]))),
    lambda m: m["options"].update(color="bgr"),
    lambda m: m["options"].update(exif=False),
    lambda m: m["source"].update(path=m["source"]["path"] + "2"),
    lambda m: m.update(build_id="0" * 16),
    lambda m: m.update(created="2020-01-01T00:00:00+00:00"),
    lambda m: m["failed"].append({"index": 3, "path": "x", "reason": "corrupt", "detail": "x"}),
])
def test_a_hand_edited_metadata_file_is_damaged(tmp_path, source, capsys, edit):
    out = tmp_path / "c.npy"
    build(source, out)
    edit_json(tmp_path / "c.npy.json", edit)
    assert_damaged(out, capsys, r"c.npy.json' is not as the build wrote it: its fields do not match its meta_digest")
    assert np.array_equal(build(source, out).images, expected_images(source))  # ours: built again


@pytest.mark.parametrize("member, change", [
    ("labels", lambda a: 2 - a),
    ("classes", lambda a: np.frombuffer(b"cow\0bee\0ant", np.uint8)),
    ("checksums", lambda a: a[::-1].copy()),
    ("names", lambda a: np.where(a == ord("3"), ord("4"), a).astype(np.uint8)),
])
def test_a_hand_edited_index_member_is_damaged(tmp_path, source, capsys, member, change):
    out = tmp_path / "c.npy"
    build(source, out)
    index = tmp_path / "c.npy.index.npz"
    with np.load(index) as data:
        rewrite_index(index, **{member: change(data[member])})
    assert_damaged(out, capsys, rf"member\(s\) '{member}' are not the ones the build wrote")
    if member == "names":  # read only with the paths: an open without the check finds it there
        ds = preload.open_cache(out, check=False)
        with pytest.raises(preload.IncompleteCacheError, match=r"'names' are not the ones the build wrote"):
            list(ds.paths)
    elif member == "checksums":  # not hashed by an open without the check, but the probe rows differ
        with pytest.raises(preload.IncompleteCacheError, match=r"do not match the checksums"):
            preload.open_cache(out, check=False)
    else:
        with pytest.raises(preload.IncompleteCacheError, match=rf"'{member}' are not the ones"):
            preload.open_cache(out, check=False)


@pytest.mark.parametrize("edit, words", [
    # Every label shifted by one class, digests made to match: the class folders still tell.
    (lambda out, index, meta: rewrite_index(index, labels=(index_member(index, "labels") + 1) % 3),
     r"60 label\(s\) in the index .* do not name the class folder of their file: '.*ant/00.bmp' has label 1 \('bee'\)"),
    # The class names in both files reversed together: every label now names another folder.
    (lambda out, index, meta: (rewrite_index(index, classes=np.frombuffer(b"cow\0bee\0ant", np.uint8)),
                               edit_json(meta, lambda m: m.update(classes=["cow", "bee", "ant"]))),
     r"40 label\(s\) .* '.*ant/00.bmp' has label 0 \('cow'\)"),
    (lambda out, index, meta: rewrite_index(index, classes=np.frombuffer(b"cow\0bee\0ant", np.uint8)),
     r"the index '.*' has the classes \['cow', 'bee', 'ant'\], '.*c.npy.json' \['ant', 'bee', 'cow'\]"),
    (lambda out, index, meta: edit_json(meta, lambda m: m["source"].update(path=str(out.parent / "elsewhere"))),
     r"lists the folder '.*src/ant/', which is not in the source '.*elsewhere'"),
    (lambda out, index, meta: edit_json(meta, lambda m: m.update(classes=None)),
     r"has the classes \['ant', 'bee', 'cow'\], '.*c.npy.json' None"),
])
def test_files_that_fit_each_other_must_still_fit_the_class_folders(tmp_path, source, capsys, edit, words):
    out = tmp_path / "c.npy"
    build(source, out)
    edit(out, tmp_path / "c.npy.index.npz", tmp_path / "c.npy.json")
    reseal(out)
    assert_damaged(out, capsys, words)


def index_member(index: Path, name: str) -> np.ndarray:
    with np.load(index) as data:
        return data[name]


def test_a_damaged_probe_row_is_found_by_every_open_and_only_it_is_decoded_again(tmp_path, source, monkeypatch,
                                                                                 capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    meta = json.loads((tmp_path / "c.npy.json").read_text())
    assert len(meta["probe_rows"]) == cache.PROBE_ROWS and meta["probe_rows"][0] == 0
    assert meta["probe_rows"][-1] == 59  # the first, the last, and the rows of the newest files

    def damage_last_row():
        with open(out, "r+b") as handle:
            handle.seek(meta["data_offset"] + 3 * 16 * 16 * 59 + 10)
            handle.write(b"\x00\xff\x00")

    damage_last_row()
    with pytest.raises(preload.IncompleteCacheError, match=r"row\(s\) 59 do not match the checksums"):
        preload.open_cache(out, check=False)
    calls = count_decodes(monkeypatch)
    ds = build(source, out)  # no deep verify first: the build checks every row itself
    assert calls == [str(source / "cow" / "19.bmp")]
    assert np.array_equal(ds.images, expected_images(source))
    damage_last_row()
    code, text, _ = cli(capsys, "verify", out, "--deep")  # names every damaged row, not only the probed ones
    assert code == 3 and text.startswith("damaged: 1 of 60 rows") and "cow/19.bmp" in text


# ------------------------------------------------------------------ 4. checksums


def test_each_row_checksum_is_xxh3_of_its_bytes(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    images = np.load(out)
    with np.load(tmp_path / "c.npy.index.npz") as index:
        stored = index["checksums"]
    assert stored.dtype == np.uint64 and len(stored) == 60
    assert stored.tolist() == [xxhash.xxh3_64_intdigest(row) for row in images]
    assert json.loads((tmp_path / "c.npy.json").read_text())["checksum"] == "xxh3_64"


def test_checksums_of_skipped_and_zeroed_builds(tmp_path, source):
    (source / "bee" / "03.bmp").write_bytes(b"")
    for policy in ("skip", "zero"):
        out = tmp_path / f"{policy}.npy"
        build(source, out, on_error=policy)
        result = preload.verify_cache(out, deep=True)
        assert result["status"] == "fresh", result
        assert result["deep_check"]["rows"] == (59 if policy == "skip" else 60)


def test_deep_verify_names_damaged_rows_and_build_redecodes_only_them(tmp_path, source, monkeypatch, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    offset = json.loads((tmp_path / "c.npy.json").read_text())["data_offset"]
    row_bytes = 3 * 16 * 16
    with open(out, "r+b") as handle:  # a bit flip in row 5, a zeroed stretch in row 42
        handle.seek(offset + 5 * row_bytes + 100)
        byte = handle.read(1)
        handle.seek(offset + 5 * row_bytes + 100)
        handle.write(bytes([byte[0] ^ 0x10]))
        handle.seek(offset + 42 * row_bytes)
        handle.write(bytes(300))
    assert preload.verify_cache(out)["status"] == "fresh"  # without --deep, pixels are not read
    result = preload.verify_cache(out, deep=True)
    paths = list(preload.open_cache(out, check=False).paths)
    assert result["status"] == "damaged"
    assert result["damaged_rows"] == [{"row": 5, "path": paths[5]}, {"row": 42, "path": paths[42]}]
    assert f"row 5 ('{paths[5]}')" in result["problem"] and f"row 42 ('{paths[42]}')" in result["problem"]
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 3 and text.startswith("damaged: 2 of 60 rows") and paths[42] in text
    # Once found, the damage is remembered: a plain verify no longer says fresh until a build mends it.
    plain = preload.verify_cache(out)
    assert plain["status"] == "damaged" and "(rows 5, 42; their files" in plain["problem"]
    code, _, _ = cli(capsys, "verify", out)
    assert code == 3

    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert sorted(calls) == sorted([paths[5], paths[42]])
    assert np.array_equal(ds.images, expected_images(source))
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"
    assert not (tmp_path / "c.npy.damaged").exists()


def test_build_deep_finds_damage_without_a_verify_first(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    offset = json.loads((tmp_path / "c.npy.json").read_text())["data_offset"]
    with open(out, "r+b") as handle:
        handle.seek(offset + 17 * 3 * 16 * 16 + 7)
        handle.write(b"\xff\x00\xff")
    paths = list(preload.open_cache(out).paths)
    calls = count_decodes(monkeypatch)
    build(source, out)
    assert calls == []  # a plain build trusts a fresh cache
    ds = build(source, out, deep=True)
    assert calls == [paths[17]]
    assert np.array_equal(ds.images, expected_images(source))


def test_open_and_info_report_rows_a_deep_verify_found_damaged(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    offset = json.loads((tmp_path / "c.npy.json").read_text())["data_offset"]
    with open(out, "r+b") as handle:
        handle.seek(offset + 9 * 3 * 16 * 16 + 50)
        handle.write(b"\x00\xff\x00")
    paths = list(preload.open_cache(out).paths)  # without a deep verify nobody knows yet
    assert preload.verify_cache(out, deep=True)["status"] == "damaged"
    words = (r"1 row\(s\) of '.*c.npy' were found damaged by a deep verify "
             rf"\(rows 9; their files '{re.escape(paths[9])}'\)")
    with pytest.raises(preload.IncompleteCacheError, match=words + r".*build the cache again.*check=False"):
        preload.open_cache(out)
    assert len(preload.open_cache(out, check=False)) == 60  # read as it is, on request
    info = preload.cache_info(out)
    assert info["status"] == "damaged" and re.match(words, info["problem"])
    assert info["damaged_rows"] == [{"row": 9, "path": paths[9]}] and info["shape"] == [60, 3, 16, 16]
    code, text, _ = cli(capsys, "info", out)
    assert code == 3 and text.startswith("damaged: 1 row(s) of ") and paths[9] in text
    build(source, out)  # decodes row 9 again
    assert preload.cache_info(out)["status"] == "complete"
    assert np.array_equal(preload.open_cache(out).images, expected_images(source))


KILLED_VERIFY = """
import os, signal, sys
sys.path.insert(0, {root!r})
import preload
real = os.replace
def replace(source, target):
    if str(target).endswith(".damaged"):  # its temporary is written and synced: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, target)
os.replace = replace
preload.verify_cache({out!r}, deep=True)
"""


def test_a_build_sweeps_the_temporaries_a_killed_writer_left(tmp_path, source):
    out = tmp_path / "c.npy"
    build(source, out)
    offset = json.loads((tmp_path / "c.npy.json").read_text())["data_offset"]
    with open(out, "r+b") as handle:
        handle.seek(offset + 3 * 3 * 16 * 16)
        handle.write(bytes(100))
    script = KILLED_VERIFY.format(root=str(ROOT), out=str(out))
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert (tmp_path / "c.npy.damaged.tmp").exists() and not (tmp_path / "c.npy.damaged").exists()
    (tmp_path / "c.npy.damaged.tmp.mine").write_bytes(b"a user's file")  # not a name preload writes
    build(source, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.npy")) == \
        ["c.npy", "c.npy.damaged.tmp.mine", "c.npy.index.npz", "c.npy.json"]


def test_cli_verify_deep_prints_what_it_read(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 0 and text.startswith("fresh: ")
    assert "checked  60 rows, 0.0 MB" in text and "GB/s" in text


# ------------------------------------------------ 2. a refresh never rewrites rows


def test_a_refresh_does_not_change_what_a_reader_has_open(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    build(source, out)
    reader = preload.open_cache(out)
    before = np.array(reader.images)
    inode = os.stat(out).st_ino
    changed = source / "bee" / "07.bmp"
    write(changed, smooth_image(rng, 37, 41))  # same size: a BMP of the same dimensions
    os.utime(changed, ns=(1, 5 * 10**9))
    refreshed = build(source, out)
    assert np.array_equal(reader.images, before)  # the old mapping still shows the old rows, all of them
    assert not np.array_equal(refreshed.images[27], before[27])
    assert np.array_equal(refreshed.images, expected_images(source))
    assert os.stat(out).st_ino != inode  # a new file took the name; the reader's file was never written


def test_a_killed_refresh_leaves_the_old_cache_readable_then_resumes(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    old = np.load(out)
    for name in ("ant/01.bmp", "cow/11.bmp"):
        write(source / name, smooth_image(rng, 31, 40))
        os.utime(source / name, ns=(1, 6 * 10**9))
    real = decode.Decoder.decode_into
    monkeypatch.setattr(decode.Decoder, "decode_into",
                        lambda self, p, s: (_ for _ in ()).throw(KeyboardInterrupt) if "cow" in p else real(self, p, s))
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()
    assert np.array_equal(np.load(out), old)  # untouched: the rows went into a copy
    with pytest.raises(preload.StaleCacheError):
        preload.open_cache(out)
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    assert len(calls) <= 2 and str(source / "cow/11.bmp") in calls
    assert np.array_equal(ds.images, expected_images(source))


# ------------------------------------------------------ 5. only files we created


@pytest.mark.parametrize("name", ["c.npy.lock", "c.npy.partial", "c.npy.journal.tmp", "c.npy.build.json.tmp",
                                  "c.npy.build.sums.tmp"])
def test_a_planted_link_is_never_written_through(tmp_path, source, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / name).symlink_to(victim)
    out = tmp_path / "c.npy"
    if name.endswith(".lock"):
        with pytest.raises(preload.TargetError, match=r"'.*c.npy.lock' is a symbolic link"):
            build(source, out)
    else:
        assert np.array_equal(build(source, out).images, expected_images(source))
        assert not out.is_symlink()
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("name", ["x.npy.lock", "x.npy.partial"])
def test_load_out_never_writes_through_a_planted_link(tmp_path, source, name):
    victim = tmp_path / "victim.npy"
    np.save(victim, np.arange(5))
    saved = victim.read_bytes()
    (tmp_path / name).symlink_to(victim)
    out = tmp_path / "x.npy"
    if name.endswith(".lock"):
        with pytest.raises(preload.TargetError, match="symbolic link"):
            preload.load(source, size=16, out=out, progress=False)
    else:
        ds = preload.load(source, size=16, out=out, progress=False)
        assert ds.images.shape == (60, 16, 16, 3) and not out.is_symlink()
    assert victim.read_bytes() == saved


@pytest.mark.parametrize("name", ["c.npy.json", "c.npy.index.npz"])
def test_a_folder_at_a_sidecar_name_is_called_a_directory(tmp_path, source, capsys, name):
    out = tmp_path / "c.npy"
    build(source, out)
    sidecar = tmp_path / name
    sidecar.unlink()
    sidecar.mkdir()
    words = f"'{sidecar}' is a directory, not a regular file"
    with pytest.raises(preload.IncompleteCacheError, match=re.escape(words)):
        preload.open_cache(out)
    info = preload.cache_info(out)
    assert info["status"] == "damaged" and words in info["problem"] and "FIFO" not in info["problem"]
    code, text, _ = cli(capsys, "verify", out)
    assert code == 3 and words in text


def test_open_maps_the_array_whose_header_it_checked(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    expected = np.load(out)
    other = tmp_path / "other.npy"
    np.save(other, np.full(expected.shape, 7, np.uint8))  # the same header, other pixels
    real = cache._read_index

    def replaced_meanwhile(files):  # right after the header was checked, another array is renamed into place
        if other.exists():
            os.replace(other, out)
        return real(files)

    monkeypatch.setattr(cache, "_read_index", replaced_meanwhile)
    ds = preload.open_cache(out, check=False)
    assert not other.exists() and np.array_equal(ds.images, expected)  # the pixels of the header it checked


def test_open_during_a_commit_reads_the_new_cache_whole(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    paths = preload.sources.manifest(str(source)).paths
    newer = tmp_path / "newer"
    newer.mkdir()
    expected = np.array(build(paths[:50], newer / "c.npy").images)
    real = cache._read_index

    def committed_meanwhile(files):  # a build commits while the old cache is read: array, index, metadata last
        if (newer / "c.npy.json").exists():
            for suffix in ("", ".index.npz", ".json"):
                os.replace(f"{newer}/c.npy{suffix}", f"{out}{suffix}")
        return real(files)

    monkeypatch.setattr(cache, "_read_index", committed_meanwhile)
    ds = preload.open_cache(out, check=False)  # not a mix of the two: the new one, read again whole
    assert len(ds) == 50 and np.array_equal(ds.images, expected) and list(ds.paths) == paths[:50]


def test_a_folder_at_the_cache_path_is_refused_before_decoding(tmp_path, source, monkeypatch):
    calls = count_decodes(monkeypatch)
    monkeypatch.setattr(headers, "probe", lambda path: calls.append(f"header of {path}"))
    (tmp_path / "c.npy").mkdir()
    with pytest.raises(preload.TargetError, match=r"cannot build '.*c.npy': it is a folder"):
        build(source, tmp_path / "c.npy", size=None, on_error="zero")
    (tmp_path / "x.npy").mkdir()
    for size in (16, None):  # size=None reads every header first: the folder is refused before that
        with pytest.raises(preload.TargetError, match=r"out='.*x.npy' is a folder"):
            preload.load(source, size=size, out=tmp_path / "x.npy", progress=False)
    assert calls == []


def test_build_over_a_npy_that_is_not_a_cache_needs_force(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    np.save(out, np.arange(10))
    saved = out.read_bytes()
    with pytest.raises(preload.CacheError, match=r"'.*c.npy' exists and is not a preload cache.*force=True"):
        build(source, out)
    assert out.read_bytes() == saved
    code, _, err = cli(capsys, "build", tmp_path / "src", out, "--size", 16, "--no-progress")
    assert code == 1 and "--force" in err and out.read_bytes() == saved
    code, _, err = cli(capsys, "build", tmp_path / "src", out, "--size", 16, "--no-progress", "--force")
    assert code == 0, err
    assert preload.verify_cache(out)["status"] == "fresh"


# ---------------------------------------------------- 3. temporary names are owned


def test_load_out_refuses_an_unfinished_build_and_a_cache(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    real = decode.Decoder.decode_into
    seen = []

    def stop_after_20(self, path, slot):
        if len(seen) == 20:
            raise KeyboardInterrupt
        seen.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", stop_after_20)
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()
    partial = (tmp_path / "c.npy.partial").read_bytes()
    with pytest.raises(preload.TargetError, match=r"out='.*c.npy' is an unfinished cache build"):
        preload.load(source, size=16, color="bgr", out=out, progress=False)
    assert (tmp_path / "c.npy.partial").read_bytes() == partial
    ds = build(source, out)
    assert np.array_equal(ds.images, expected_images(source))
    with pytest.raises(preload.TargetError, match=r"out='.*c.npy' is a preload cache"):
        preload.load(source, size=16, out=out, progress=False)


def test_load_out_and_build_share_one_lock(tmp_path, source):
    out = tmp_path / "c.npy"
    with cache.BuildLock(str(out) + ".lock"):
        with pytest.raises(preload.CacheLockedError, match=r"held by pid \d+"):
            preload.load(source, size=16, out=out, progress=False)
    assert not (tmp_path / "c.npy.lock").exists()  # its holder removes it
    assert len(preload.load(source, size=16, out=out, progress=False)) == 60


def test_resume_redecodes_rows_another_writer_changed(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    real = decode.Decoder.decode_into
    seen = []

    def stop_after_30(self, path, slot):
        if len(seen) == 30:
            raise KeyboardInterrupt
        seen.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", stop_after_30)
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()
    partial = np.load(tmp_path / "c.npy.partial", mmap_mode="r+")
    partial[3] = partial[3, ::-1]  # someone else's rows in our partial: BGR where RGB was written
    partial[9] = 0
    partial.flush()
    del partial
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    paths = list(ds.paths)
    assert paths[3] in calls and paths[9] in calls and len(calls) == 60 - 28 + 2
    assert np.array_equal(ds.images, expected_images(source))


def test_resume_starts_over_when_the_partial_is_not_this_builds(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    monkeypatch.setattr(decode.Decoder, "decode_into", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        build(source, out)
    monkeypatch.undo()
    os.remove(tmp_path / "c.npy.partial")
    np.save(tmp_path / "c.npy.partial", np.zeros((60, 16, 16, 3), np.uint8))  # another shape and layout
    ds = build(source, out)
    assert np.array_equal(ds.images, expected_images(source))


# ---------------------------------------------------------- 6. disk and memory


def enospc_on(monkeypatch, suffix: str) -> None:
    """The disk fills up while the file ending in ``suffix`` is written (its temporary name)."""
    real = atomic.create_new

    def failing(path):
        fd = real(path)
        if path.endswith(suffix + atomic.TEMP_SUFFIX):
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return fd

    monkeypatch.setattr(atomic, "create_new", failing)


@pytest.mark.parametrize("suffix, doing", [(".build.json", "preparing"), (".build.npz", "preparing"),
                                           (".journal", "preparing"), (".index.npz", "finishing"),
                                           ("c.npy.json", "finishing")])
def test_disk_full_writing_the_cache_files_is_named_and_resumable(tmp_path, source, monkeypatch, suffix, doing):
    out = tmp_path / "c.npy"
    enospc_on(monkeypatch, suffix)
    with pytest.raises(preload.InsufficientDiskError,
                       match=rf"no space left on the device of '.*{suffix}' while {doing} the build.*kept"):
        build(source, out)
    monkeypatch.undo()
    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert len(calls) == (0 if doing == "finishing" else 60)
    assert np.array_equal(ds.images, expected_images(source))
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"


def test_disk_full_on_a_real_small_file_system(tmp_path, source, monkeypatch):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        out = mount / "c.npy"
        # Leave room for the array (46 pages) and one more page: the plan's index does not fit.
        page = os.statvfs(mount).f_frsize
        free = os.statvfs(mount).f_bavail * page
        (mount / "filler").write_bytes(bytes(free - 47 * page))
        with pytest.raises(preload.InsufficientDiskError,
                           match=r"no space left on the device of '.*small/c.npy.build.npz' while preparing"):
            build(source, out, size=32)
        os.remove(mount / "filler")
        ds = build(source, out, size=32)
        assert np.array_equal(ds.images, expected_images(source, size=32))
        del ds
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_skip_compacts_in_place_and_survives_a_kill_mid_way(tmp_path, source, monkeypatch):
    for name in ("ant/00.bmp", "bee/10.bmp"):  # the first row: every later row moves, blocks overlap
        (source / name).write_bytes(b"")
    settle()  # else the resumed build would decode them again (unverifiable: written just before the record)
    out = tmp_path / "c.npy"
    monkeypatch.setattr(cache, "COMPACT_BYTES", 5 * 3 * 16 * 16)  # five rows a step
    created = []
    real_create = cache.create_npy
    monkeypatch.setattr(cache, "create_npy", lambda path, shape: created.append(path) or real_create(path, shape))
    real = cache._write_json
    records = []

    def die_at_the_fourth_step(path, record):
        if path.endswith(".compact.json"):
            records.append(dict(record))
            if len(records) == 4:
                raise SystemExit("killed")
        return real(path, record)

    monkeypatch.setattr(cache, "_write_json", die_at_the_fourth_step)
    with pytest.raises(SystemExit):
        build(source, out, on_error="skip", workers=1)
    assert records[-1]["next"] < 58
    assert created == [str(out) + ".partial"]  # compaction made no second array
    monkeypatch.setattr(cache, "_write_json", real)
    calls = count_decodes(monkeypatch)
    ds = build(source, out, on_error="skip", workers=1)
    assert calls == []
    expected = preload.load(source, size=16, layout="NCHW", on_error="skip", progress=False)
    assert np.array_equal(ds.images, expected.images)
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"


def test_skip_compaction_finishes_without_room_for_a_saved_block(tmp_path, source, monkeypatch):
    # One skipped file at the front: every block overlaps its own sources, and the
    # disk has no room for the saved copy of one. The moves then go one gap at a time.
    (source / "ant" / "00.bmp").write_bytes(b"")
    settle()
    out = tmp_path / "c.npy"
    monkeypatch.setattr(cache, "COMPACT_BYTES", 5 * 3 * 16 * 16)
    real_write_bytes = cache.write_bytes
    refused = []

    def disk_full_for_saved_rows(path, data):
        if str(path).endswith(".compact"):
            refused.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_bytes(path, data)

    monkeypatch.setattr(cache, "write_bytes", disk_full_for_saved_rows)
    ds = build(source, out, on_error="skip", workers=1)
    assert len(refused) == 1  # tried once, then moved gap by gap
    expected = preload.load(source, size=16, layout="NCHW", on_error="skip", progress=False)
    assert len(ds) == 59 and np.array_equal(ds.images, expected.images)
    assert not os.path.exists(str(out) + ".compact")
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"


def test_a_kill_between_a_new_file_list_and_its_plan_starts_over_instead_of_misreading_rows(tmp_path, rng,
                                                                                            monkeypatch):
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    for name in ("000", "002", "004", "006"):
        write(root / "a" / f"{name}.png", rng.integers(0, 256, (16, 16, 3), np.uint8))
    write(root / "a" / "004.png", np.zeros((16, 16, 3), np.uint8))  # a black row: its checksum is a blank row's
    settle()
    out = tmp_path / "c.npy"
    options = {"size": 8, "layout": "NHWC", "workers": 1}

    def kill(target, name, when=1):
        real, calls = getattr(cache, name), []

        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == when:
                raise SystemExit("killed")
            return real(*args, **kwargs)

        monkeypatch.setattr(target, name, dying)

    kill(cache, "_finalize")  # every row written, not yet committed
    with pytest.raises(SystemExit):
        build(root, out, **options)
    monkeypatch.undo()
    os.remove(root / "a" / "000.png")  # same count; a/0041 takes a/004's place in the list
    write(root / "a" / "0041.png", np.full((16, 16, 3), 200, np.uint8))
    settle()
    kill(cache, "_write_json")  # the new file list is saved, its plan is not
    with pytest.raises(SystemExit):
        build(root, out, **options)
    monkeypatch.undo()
    ds = build(root, out, **options)
    expected = preload.load(root, progress=False, **options)
    assert ds.paths == expected.paths and np.array_equal(ds.images, expected.images)
    assert ds.images[ds.paths.index(str(root / "a" / "0041.png"))].min() == 200


@pytest.mark.parametrize("rows", [-1, 2**64, True])
def test_a_plan_with_an_impossible_row_count_is_unusable_not_a_traceback(tmp_path, source, monkeypatch, capsys,
                                                                          rows):
    out = tmp_path / "c.npy"
    monkeypatch.setattr(cache, "_finalize", lambda *args, **kwargs: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        build(source, out)
    monkeypatch.undo()
    plan_path = str(out) + ".build.json"
    plan = json.loads(open(plan_path).read())
    plan["shape"][0] = rows
    with open(plan_path, "w") as handle:
        json.dump(plan, handle)
    assert preload.cache_info(out)["status"] == "partial"
    assert cli(capsys, "info", out)[0] == 3
    assert np.array_equal(build(source, out).images, expected_images(source))


COMPACTING_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import preload
from preload import cache
cache.COMPACT_BYTES = 5 * 3 * 16 * 16  # five rows a step: many steps, each overlapping its own sources
real_write, real_shrink = cache._write_json, cache.shrink_npy
steps = []
def write_json(path, record):
    if path.endswith(".compact.json"):
        steps.append(record)
        if len(steps) == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, record)
def shrink(path, rows):
    if {kill_at} == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_shrink(path, rows)
cache._write_json, cache.shrink_npy = write_json, shrink
preload.build_cache({src!r}, {out!r}, size=16, layout="NCHW", workers=1, progress=False, on_error="skip")
"""


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
@pytest.mark.parametrize("kill_at", [1, 2, 3, 14, 24, 25, 0])  # the n-th progress record (of 25); 0: cutting the file
def test_kill_9_while_compacting_then_resume_is_byte_identical(tmp_path, source, monkeypatch, kill_at):
    for name in ("ant/00.bmp", "bee/10.bmp"):  # the first row: every later row moves, every block overlaps
        (source / name).write_bytes(b"")
    settle()
    reference = tmp_path / "reference.npy"
    build(source, reference, on_error="skip")
    out = tmp_path / "c.npy"
    script = tmp_path / "child.py"
    script.write_text(COMPACTING_CHILD.format(root=str(ROOT), src=str(source), out=str(out), kill_at=kill_at))
    assert subprocess.run([sys.executable, str(script)]).returncode == -9  # SIGKILL: no cleanup ran
    assert not (tmp_path / "c.npy.json").exists()
    calls = count_decodes(monkeypatch)
    ds = build(source, out, on_error="skip", workers=1)
    assert calls == []
    assert out.read_bytes() == reference.read_bytes()
    assert [f.path for f in ds.failed] == [str(source / "ant" / "00.bmp"), str(source / "bee" / "10.bmp")]
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.npy")) == \
        ["c.npy", "c.npy.index.npz", "c.npy.json"]


@pytest.mark.parametrize("then", ["a file changed", "on_error zero"])
def test_a_build_killed_while_compacting_checks_its_rows_before_finishing(tmp_path, source, rng, monkeypatch, then):
    empties = [source / "ant" / "00.bmp", source / "bee" / "10.bmp"]
    for path in empties:
        path.write_bytes(b"")
    settle()
    out = tmp_path / "c.npy"
    monkeypatch.setattr(cache, "COMPACT_BYTES", 5 * 3 * 16 * 16)
    real = cache._write_json
    steps = []

    def die_at_the_fourth_step(path, record):
        if path.endswith(".compact.json"):
            steps.append(record)
            if len(steps) == 4:
                raise SystemExit("killed")
        return real(path, record)

    monkeypatch.setattr(cache, "_write_json", die_at_the_fourth_step)
    with pytest.raises(SystemExit):
        build(source, out, on_error="skip", workers=1)
    monkeypatch.undo()
    changed = []
    if then == "a file changed":  # a row the compaction already moved: its bytes are stale now
        changed = [write(source / "ant" / "03.bmp", smooth_image(rng, 33, 40))]
        settle()
    on_error = "zero" if then == "on_error zero" else "skip"
    calls = count_decodes(monkeypatch)
    ds = build(source, out, on_error=on_error, workers=1)
    assert calls == changed  # an unchanged file that failed is not tried again
    assert np.array_equal(ds.images, expected_images(source, on_error=on_error))
    assert [f.path for f in ds.failed] == [str(path) for path in empties]
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"


def test_cgroup_limits_are_honoured(tmp_path, monkeypatch):
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text("1073741824\n")
    (v2 / "job" / "memory.current").write_text("536870912\n")
    (v2 / "job" / "memory.stat").write_text("anon 1\ninactive_file 104857600\n")
    (tmp_path / "cgroup").write_text("0::/job\n")
    monkeypatch.setattr(target, "CGROUP_FILE", str(tmp_path / "cgroup"))
    monkeypatch.setattr(target, "CGROUP_MOUNT", str(v2))
    room, why = target.memory_room()
    assert room == 1073741824 - (536870912 - 104857600) and "cgroup" in why
    with pytest.raises(preload.InsufficientMemoryError, match=r"only 0.64 GB .* can be allocated under the memory "
                                                               r"limit of the cgroup"):
        target.allocate(None, (1000, 1000, 1000))

    v1 = tmp_path / "v1" / "memory"
    (v1 / "pod").mkdir(parents=True)
    (v1 / "pod" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit here ...
    (v1 / "pod" / "memory.usage_in_bytes").write_text("100\n")
    (v1 / "memory.limit_in_bytes").write_text("2000000000\n")  # ... but on the parent
    (v1 / "memory.usage_in_bytes").write_text("500000000\n")
    (tmp_path / "cgroup").write_text("5:memory:/pod\n")
    monkeypatch.setattr(target, "CGROUP_MOUNT", str(tmp_path / "v1"))
    assert target.memory_room()[0] == 1_500_000_000


RLIMIT_CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
import numpy as np, psutil
import preload
from preload import target
preload.load  # the loader and OpenCV load before the limit (import preload alone loads neither)
if {lie}:
    target.memory_room = lambda: (1 << 50, "a patched check")
vms = psutil.Process().memory_info().vms
resource.setrlimit(resource.RLIMIT_AS, (vms + (300 << 20), resource.RLIM_INFINITY))
try:
    preload.load({src!r}, size=(4000, 4000), progress=False, workers=1)
except preload.InsufficientMemoryError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("lie", [False, True])
def test_rlimit_as_is_an_error_not_a_numpy_traceback(tmp_path, source, lie):
    script = tmp_path / "child.py"
    script.write_text(RLIMIT_CHILD.format(root=str(ROOT), src=str(source), lie=lie))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "_ArrayMemoryError" not in done.stderr
    if lie:  # the check was fooled: numpy's own refusal is turned into ours
        assert done.stdout.startswith("refused: the array needs 2.88 GB") and "refused to allocate" in done.stdout
    else:
        assert done.stdout.startswith("refused: the array needs 2.88 GB") and "RLIMIT_AS" in done.stdout


# ------------------------------------------------------- 7. one test per promise


def test_journal_bits_are_written_after_the_rows_and_their_checksums(tmp_path, monkeypatch):
    files = cache.CacheFiles(tmp_path / "c.npy")
    journal = cache.Journal.create(files, 4, bytes(32))
    order = []

    class Rows:
        def flush(self):
            order.append("rows flushed")

    real_pwrite, real_fsync = os.pwrite, os.fsync
    names = {}

    def pwrite(fd, data, offset):
        order.append(f"write {names.get(os.readlink(f'/proc/self/fd/{fd}'), 'other')}")
        return real_pwrite(fd, data, offset)

    names[files.sums] = "checksums"
    names[files.journal] = "bits"
    monkeypatch.setattr(cache.os, "pwrite", pwrite)
    monkeypatch.setattr(cache.os, "fsync", lambda fd: order.append("fsync") or real_fsync(fd))
    journal.add(np.array([1, 2]), [])
    journal.commit(Rows(), files.failures)
    assert order == ["rows flushed", "write checksums", "fsync", "write bits", "fsync"]
    assert cache.Journal.open(files, 4, bytes(32)).done.tolist() == [False, True, True, False]


def test_same_size_rewrite_with_a_new_mtime_is_decoded_again(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    changed = source / "cow" / "04.bmp"
    size = changed.stat().st_size
    write(changed, smooth_image(rng, 34, 42))  # a BMP of the same dimensions: same size, other pixels
    assert changed.stat().st_size == size
    os.utime(changed, ns=(1, 7 * 10**9))
    calls = count_decodes(monkeypatch)
    ds = build(source, out)
    assert calls == [str(changed)]
    assert np.array_equal(ds.images, expected_images(source))


def test_create_new_never_follows_a_link_planted_after_the_unlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    name = tmp_path / "c.npy.partial"
    name.symlink_to(victim)
    real_unlink = os.unlink

    def unlink_then_plant_again(path):  # a racing attacker: the link is back before the open
        real_unlink(path)
        os.symlink(victim, path)

    monkeypatch.setattr(atomic.os, "unlink", unlink_then_plant_again)
    with pytest.raises(FileExistsError):
        atomic.create_new(str(name))
    assert victim.read_text() == "precious"


def test_a_journal_is_trusted_only_with_its_own_plan(tmp_path, source, monkeypatch):
    out = tmp_path / "c.npy"
    real = decode.Decoder.decode_into
    seen = []

    def stop_after_40(self, path, slot):
        if len(seen) == 40:
            raise KeyboardInterrupt
        seen.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", stop_after_40)
    with pytest.raises(KeyboardInterrupt):
        build(source, out, workers=1)
    monkeypatch.undo()
    plan = tmp_path / "c.npy.build.json"
    assert len(json.loads(plan.read_text())["build_id"]) == 16
    edit_json(plan, lambda p: p.update(build_id="0" * 16))  # another build's plan, same options and shape
    calls = count_decodes(monkeypatch)
    ds = build(source, out, workers=1)
    assert len(calls) == 60  # the journal's hash names another plan: nothing of it is trusted
    assert np.array_equal(ds.images, expected_images(source))


def test_cli_build_deep_redecodes_a_damaged_row(tmp_path, source, capsys, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    offset = json.loads((tmp_path / "c.npy.json").read_text())["data_offset"]
    with open(out, "r+b") as handle:
        handle.seek(offset + 33 * 3 * 16 * 16)
        handle.write(b"\x00\x01\x02\x03")
    calls = count_decodes(monkeypatch)
    code, _, err = cli(capsys, "build", source, out, "--size", 16, "--layout", "nchw", "--no-progress", "--deep")
    assert code == 0, err
    assert calls == [list(preload.open_cache(out).paths)[33]]
    code, text, _ = cli(capsys, "verify", out, "--deep")
    assert code == 0 and text.startswith("fresh: ")


def test_info_and_verify_do_not_hang_on_a_fifo_at_the_lock(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    build(source, out)
    os.remove(out)  # not complete any more: info and verify look for a build holding the lock
    os.mkfifo(tmp_path / "c.npy.lock")
    for command in ("info", "verify"):
        code, text, err = cli(capsys, command, out)  # a blocking open of the FIFO would never return
        assert code == 3 and "Traceback" not in err, (text, err)


def test_a_refresh_without_room_for_its_copy_is_an_error_and_keeps_the_cache(tmp_path, source, rng, monkeypatch):
    out = tmp_path / "c.npy"
    build(source, out)
    before = out.read_bytes()
    changed = source / "ant" / "02.bmp"
    write(changed, smooth_image(rng, 32, 40))
    os.utime(changed, ns=(1, 8 * 10**9))
    def no_reflink(*args):
        raise OSError(errno.EOPNOTSUPP, "no reflink on this file system")

    monkeypatch.setattr(fcntl, "ioctl", no_reflink)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10, used=9, free=1))
    with pytest.raises(preload.InsufficientDiskError, match=r"refreshing '.*c.npy' writes the changed rows into a "
                                                          r"copy, which needs [\d,]+ bytes, but its file system has 1"):
        build(source, out)
    assert out.read_bytes() == before
    with pytest.raises(preload.StaleCacheError):  # still the old, complete cache
        preload.open_cache(out)
