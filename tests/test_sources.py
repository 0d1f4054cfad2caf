"""Manifests from class folders, flat folders, path lists and CSV files."""

from __future__ import annotations

import os
import re
import sys

import cv2
import numpy as np
import pytest

import preload
from conftest import remove_tree
from preload import IMAGE_EXTENSIONS, Manifest, SourceError
from preload.sources import manifest

RNG_SEED = 1234


def write_image(path, color=None, *, seed: int = RNG_SEED, size: tuple[int, int] = (8, 8)) -> str:
    """Write a small PNG/JPEG/... at ``path`` (parents created): solid ``color`` (BGR) or seeded noise."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if color is None:
        image = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    else:
        image = np.empty((*size, 3), np.uint8)
        image[:] = color
    assert cv2.imwrite(path, image), path
    return path


def esc(path) -> str:
    """A path as a literal inside a ``match=`` pattern."""
    return re.escape(os.fspath(path))


def write_text(path, text: str = "not an image") -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def write_csv(path, lines: list[str], *, encoding: str = "utf-8") -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def relative(paths: list[str], root) -> list[str]:
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


# ------------------------------------------------------------------ class folders


def test_class_folders_labels_come_from_sorted_folder_names(tmp_path):
    # Created out of order, and "Zebra" sorts before "ant" as Python sorts strings.
    for name in ("dog/2.png", "dog/1.png", "ant/a.png", "Zebra/z.png", "cat/c.png"):
        write_image(tmp_path / name)

    m = Manifest.from_folder(tmp_path)

    assert m.classes == ["Zebra", "ant", "cat", "dog"]
    assert relative(m.paths, tmp_path) == ["Zebra/z.png", "ant/a.png", "cat/c.png", "dog/1.png", "dog/2.png"]
    assert m.labels.dtype == np.int64
    assert m.labels.tolist() == [0, 1, 2, 3, 3]
    assert len(m) == 5
    assert all(p.startswith(os.fspath(tmp_path)) for p in m.paths)


def test_class_folders_recurse_files_first_then_sorted_subfolders_depth_first(tmp_path):
    layout = [
        "cat/z.png",  # a folder's own files come before its sub-folders ...
        "cat/b.png",
        "cat/a/y.png",
        "cat/a/x.png",
        "cat/a/deep/w.png",  # ... depth first: a/'s files, then a/deep, then b/
        "cat/b_dir/v.png",
        "dog/m/1.png",
        "dog/0.png",
    ]
    for name in layout:
        write_image(tmp_path / name)

    m = Manifest.from_folder(tmp_path)

    assert m.classes == ["cat", "dog"]
    assert relative(m.paths, tmp_path) == [
        "cat/b.png",
        "cat/z.png",
        "cat/a/x.png",
        "cat/a/y.png",
        "cat/a/deep/w.png",
        "cat/b_dir/v.png",
        "dog/0.png",
        "dog/m/1.png",
    ]
    assert m.labels.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_empty_class_folder_keeps_its_index(tmp_path):
    write_image(tmp_path / "ant" / "1.png")
    (tmp_path / "bee").mkdir()  # no images: still class 1
    write_text(tmp_path / "bee" / "notes.txt")
    write_image(tmp_path / "cow" / "1.png")

    m = Manifest.from_folder(tmp_path)

    assert m.classes == ["ant", "bee", "cow"]
    assert relative(m.paths, tmp_path) == ["ant/1.png", "cow/1.png"]
    assert m.labels.tolist() == [0, 2]


def test_hidden_files_and_folders_are_skipped(tmp_path):
    write_image(tmp_path / "cat" / "1.png")
    write_image(tmp_path / "cat" / ".hidden.png")
    write_image(tmp_path / "cat" / ".thumbs" / "2.png")
    write_image(tmp_path / ".git" / "3.png")  # hidden class folder: not a class
    write_image(tmp_path / ".DS_Store.png")  # hidden file at the root: no "mixed root" error
    write_image(tmp_path / "dog" / "1.png")

    m = Manifest.from_folder(tmp_path)

    assert m.classes == ["cat", "dog"]
    assert relative(m.paths, tmp_path) == ["cat/1.png", "dog/1.png"]
    assert m.labels.tolist() == [0, 1]


def test_a_hidden_root_folder_itself_is_listed(tmp_path):
    root = tmp_path / ".data"
    write_image(root / "1.png")

    m = Manifest.from_folder(root)

    assert relative(m.paths, root) == ["1.png"]


def test_extensions_match_in_any_case_and_other_files_are_ignored(tmp_path):
    images = ["a.JPG", "b.Jpeg", "c.png", "d.bmp", "e.webp", "f.tif", "g.tiff", "h.PNG", "i.jpg"]
    for name in images:
        write_image(tmp_path / "cls" / name)
    for name in ("notes.txt", "meta.json", "x.png.txt", "README", "labels.csv"):
        write_text(tmp_path / "cls" / name)

    m = Manifest.from_folder(tmp_path)

    assert relative(m.paths, tmp_path) == [f"cls/{name}" for name in images]
    assert m.labels.tolist() == [0] * len(images)
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def test_non_image_files_at_the_root_do_not_make_it_mixed(tmp_path):
    write_text(tmp_path / "README.txt")
    write_text(tmp_path / "labels.json", "{}")
    write_image(tmp_path / "cat" / "1.png")

    m = Manifest.from_folder(tmp_path)

    assert m.classes == ["cat"]
    assert relative(m.paths, tmp_path) == ["cat/1.png"]


def test_root_with_images_and_subfolders_is_rejected_naming_a_file(tmp_path):
    write_image(tmp_path / "stray.png")
    write_image(tmp_path / "cat" / "1.png")

    with pytest.raises(SourceError, match=r"both image files \(e\.g\. 'stray\.png'\) and sub-folders \(e\.g\. 'cat'\)"):
        Manifest.from_folder(tmp_path)


def test_class_folders_without_any_image_are_rejected(tmp_path):
    (tmp_path / "cat").mkdir()
    write_text(tmp_path / "dog" / "notes.txt")

    with pytest.raises(SourceError, match=rf"no images found in '{esc(tmp_path)}' \(looked for .*\.jpg.*, any case\)"):
        Manifest.from_folder(tmp_path)


def test_folder_with_only_non_images_is_rejected(tmp_path):
    write_text(tmp_path / "a.txt")
    write_text(tmp_path / "b.json", "{}")

    with pytest.raises(SourceError, match=rf"no images found in '{esc(tmp_path)}'"):
        Manifest.from_folder(tmp_path)


def test_missing_folder_is_rejected(tmp_path):
    missing = tmp_path / "nope"

    with pytest.raises(SourceError, match=rf"source folder '{esc(missing)}' does not exist or is not a folder"):
        Manifest.from_folder(missing)


def test_a_file_is_not_a_folder(tmp_path):
    path = write_image(tmp_path / "one.png")

    with pytest.raises(SourceError, match=rf"source folder '{esc(path)}' does not exist or is not a folder"):
        Manifest.from_folder(path)


# ------------------------------------------------------------------ flat folder


def test_flat_folder_sorted_by_name_without_labels(tmp_path):
    for name in ("b.png", "a.png", "c.jpg", "B.png", "10.png", "9.png"):
        write_image(tmp_path / name)
    write_text(tmp_path / "notes.txt")

    m = Manifest.from_folder(tmp_path)

    assert relative(m.paths, tmp_path) == ["10.png", "9.png", "B.png", "a.png", "b.png", "c.jpg"]
    assert m.labels is None
    assert m.classes is None


def test_manifest_dispatches_a_folder_given_as_str_or_pathlike(tmp_path):
    write_image(tmp_path / "x.png")
    write_image(tmp_path / "y.png")

    from_str = manifest(str(tmp_path))
    from_path = manifest(tmp_path)

    assert relative(from_str.paths, tmp_path) == ["x.png", "y.png"]
    assert from_path.paths == from_str.paths


# ------------------------------------------------------------------ list of paths


def test_paths_keep_the_given_order_without_labels(tmp_path):
    given = [tmp_path / "c.png", "b.png", "/abs/a.png"]

    m = Manifest.from_paths(given)

    assert m.paths == [os.fspath(tmp_path / "c.png"), "b.png", "/abs/a.png"]
    assert m.labels is None
    assert m.classes is None


@pytest.mark.parametrize(
    "labels",
    [[3, 1, 7], (3, 1, 7), np.array([3, 1, 7]), np.array([3, 1, 7], dtype=np.uint8), [np.int32(3), 1, 7]],
    ids=["list", "tuple", "ndarray-int64", "ndarray-uint8", "numpy-scalars"],
)
def test_integer_labels_are_kept_without_classes(labels):
    m = Manifest.from_paths(["z.png", "a.png", "m.png"], labels=labels)

    assert m.paths == ["z.png", "a.png", "m.png"]
    assert m.labels.dtype == np.int64
    assert m.labels.tolist() == [3, 1, 7]
    assert m.classes is None


@pytest.mark.parametrize(
    "labels",
    [["dog", "cat", "dog", "bird"], np.array(["dog", "cat", "dog", "bird"])],
    ids=["list", "ndarray"],
)
def test_string_labels_map_to_sorted_class_indices(labels):
    m = Manifest.from_paths(["1.png", "2.png", "3.png", "4.png"], labels=labels)

    assert m.classes == ["bird", "cat", "dog"]
    assert m.labels.dtype == np.int64
    assert m.labels.tolist() == [2, 1, 2, 0]


def test_manifest_accepts_an_ndarray_of_paths():
    m = manifest(np.array(["b.png", "a.png"]), labels=[1, 0])

    assert m.paths == ["b.png", "a.png"]
    assert all(isinstance(p, str) for p in m.paths)
    assert m.labels.tolist() == [1, 0]


@pytest.mark.parametrize(("count", "labels"), [(2, [0, 1, 2]), (3, ["a"]), (2, [])])
def test_label_count_mismatch_is_rejected(count, labels):
    paths = [f"{i}.png" for i in range(count)]

    with pytest.raises(SourceError, match=rf"^{len(labels)} labels for {count} paths; give one label per path$"):
        Manifest.from_paths(paths, labels=labels)


@pytest.mark.parametrize(
    ("labels", "kinds"),
    [([1, "cat"], "int, str"), ([1.5, 2], "float, int"), ([True, False], "bool"), ([None, 1], "NoneType, int")],
)
def test_mixed_or_unusable_label_types_are_rejected(labels, kinds):
    with pytest.raises(SourceError, match=rf"^labels must be all integers or all strings; got {kinds}$"):
        Manifest.from_paths(["a.png", "b.png"], labels=labels)


def test_empty_string_label_is_rejected():
    with pytest.raises(SourceError, match=r"^labels has an empty label; every image needs one$"):
        Manifest.from_paths(["a.png", "b.png"], labels=["cat", ""])


@pytest.mark.parametrize("paths", [[], (), np.array([], dtype=str)], ids=["list", "tuple", "ndarray"])
def test_empty_list_of_paths_is_rejected(paths):
    with pytest.raises(SourceError, match=r"^the list of paths is empty$"):
        manifest(paths)


def test_labels_with_a_folder_source_are_rejected(tmp_path):
    write_image(tmp_path / "cat" / "1.png")

    with pytest.raises(SourceError, match=rf"labels= is only for a list of paths; '{esc(tmp_path)}' supplies its own"):
        manifest(tmp_path, labels=[0])


def test_labels_with_a_csv_source_are_rejected(tmp_path):
    csv_path = write_csv(tmp_path / "data.csv", ["path", "a.png"])

    with pytest.raises(SourceError, match=rf"labels= is only for a list of paths; '{esc(csv_path)}' supplies its own"):
        manifest(csv_path, labels=[0])


def test_labels_with_a_manifest_source_are_rejected():
    ready = Manifest.from_paths(["a.png"], labels=[0])

    with pytest.raises(SourceError, match=r"labels= cannot be combined with a Manifest"):
        manifest(ready, labels=[1])


def test_a_ready_manifest_is_passed_through():
    ready = Manifest.from_paths(["a.png"], labels=["x"])

    assert manifest(ready) is ready


@pytest.mark.parametrize(("source", "kind"), [(42, "int"), ({"a.png": 0}, "dict"), (None, "NoneType")])
def test_unsupported_source_type_is_rejected(source, kind):
    with pytest.raises(SourceError, match=rf"^cannot load from a {kind}; give a folder, a CSV file"):
        manifest(source)


# ------------------------------------------------------------------ CSV


def test_csv_paths_resolve_against_its_folder_and_string_labels_map(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "abs.png"
    csv_path = write_csv(
        tmp_path / "lists" / "train.csv",
        ["path,label", "img/b.png,dog", f"{elsewhere},cat", "../up.png,dog", "a.png,ant"],
    )

    m = Manifest.from_csv(csv_path)

    base = os.fspath(tmp_path / "lists")
    assert m.paths == [
        os.path.join(base, "img/b.png"),
        os.fspath(elsewhere),
        os.path.join(base, "../up.png"),
        os.path.join(base, "a.png"),
    ]
    assert m.classes == ["ant", "cat", "dog"]
    assert m.labels.tolist() == [2, 1, 2, 0]


def test_csv_integer_labels_are_kept(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "a.png,7", "b.png, 0 ", "c.png,2147483647", "d.png,+3"])

    m = Manifest.from_csv(csv_path)

    assert m.labels.dtype == np.int64
    assert m.labels.tolist() == [7, 0, 2**31 - 1, 3]
    assert m.classes is None


def test_csv_digit_and_word_labels_together_are_string_classes(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "a.png,10", "b.png,cat", "c.png,9"])

    m = Manifest.from_csv(csv_path)

    assert m.classes == ["10", "9", "cat"]
    assert m.labels.tolist() == [0, 2, 1]


def test_csv_without_label_column_is_unlabelled(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,split", "b.png,train", "a.png,val"])

    m = Manifest.from_csv(csv_path)

    assert m.paths == [os.fspath(tmp_path / "b.png"), os.fspath(tmp_path / "a.png")]
    assert m.labels is None
    assert m.classes is None


def test_csv_header_whitespace_bom_and_blank_lines_are_tolerated(tmp_path):
    csv_path = write_csv(
        tmp_path / "d.csv",
        [" path , label ", "", "  a.png  ,x", " , ", "b.png,y", ""],
        encoding="utf-8-sig",
    )

    m = Manifest.from_csv(csv_path)

    assert m.paths == [os.fspath(tmp_path / "a.png"), os.fspath(tmp_path / "b.png")]
    assert m.classes == ["x", "y"]
    assert m.labels.tolist() == [0, 1]


def test_csv_quoted_fields_may_hold_commas(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", '"a,b.png","big, cat"'])

    m = Manifest.from_csv(csv_path)

    assert m.paths == [os.fspath(tmp_path / "a,b.png")]
    assert m.classes == ["big, cat"]


def test_csv_custom_columns(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["id,file,class", "1,x.png,b", "2,y.png,a"])

    m = Manifest.from_csv(csv_path, path_column="file", label_column="class")

    assert m.paths == [os.fspath(tmp_path / "x.png"), os.fspath(tmp_path / "y.png")]
    assert m.classes == ["a", "b"]
    assert m.labels.tolist() == [1, 0]


def test_csv_label_column_none_ignores_a_label_column(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "x.png,cat"])

    m = Manifest.from_csv(csv_path, label_column=None)

    assert m.paths == [os.fspath(tmp_path / "x.png")]
    assert m.labels is None


def test_csv_named_label_column_that_is_missing_means_unlabelled(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "x.png,cat"])

    m = Manifest.from_csv(csv_path, label_column="species")

    assert m.labels is None
    assert m.classes is None


def test_csv_without_path_column_lists_the_columns(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["file,label", "x.png,cat"])

    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' has no 'path' column \(columns: file, label\)$"):
        Manifest.from_csv(csv_path)


def test_csv_custom_path_column_missing_is_named(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "x.png,cat"])

    with pytest.raises(SourceError, match=r"has no 'filename' column \(columns: path, label\)$"):
        Manifest.from_csv(csv_path, path_column="filename")


@pytest.mark.parametrize(
    ("lines", "line", "fields"),
    [
        (["path,label", "a.png,1", "b.png"], 3, 1),
        (["path,label", "a.png,1,extra"], 2, 3),
        (["path,label", "", "a.png,1", "", "b.png,1,2"], 5, 3),  # blank lines still count
    ],
)
def test_csv_wrong_field_count_names_the_line(tmp_path, lines, line, fields):
    csv_path = write_csv(tmp_path / "d.csv", lines)

    with pytest.raises(
        SourceError, match=rf"^CSV '{esc(csv_path)}' line {line} has {fields} fields, the header has 2$"
    ):
        Manifest.from_csv(csv_path)


def test_csv_line_numbers_count_lines_inside_quoted_fields(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", '"a.png","two', 'lines"', "b.png"])

    # "b.png" is on line 4 of the file; the row index is 3.
    with pytest.raises(SourceError, match=r"line 4 has 1 fields"):
        Manifest.from_csv(csv_path)


def test_csv_empty_path_cell_names_the_line(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "a.png,cat", "  ,dog"])

    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' line 3 has an empty 'path'$"):
        Manifest.from_csv(csv_path)


def test_csv_empty_label_cell_is_rejected(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "a.png,cat", "b.png,"])

    with pytest.raises(
        SourceError, match=rf"^CSV '{esc(csv_path)}' column 'label' has an empty label; every image needs one$"
    ):
        Manifest.from_csv(csv_path)


def test_csv_header_only_is_rejected(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label"])

    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' has a header but no rows$"):
        Manifest.from_csv(csv_path)


def test_csv_empty_file_is_rejected(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"")

    with pytest.raises(
        SourceError, match=rf"^CSV '{esc(csv_path)}' is empty; it needs a header row with a 'path' column$"
    ):
        Manifest.from_csv(csv_path)


def test_csv_that_cannot_be_read_is_rejected(tmp_path):
    missing = tmp_path / "missing.csv"

    with pytest.raises(SourceError, match=rf"^cannot read CSV '{esc(missing)}': No such file or directory$"):
        Manifest.from_csv(missing)


def test_load_from_csv_puts_file_i_in_row_i(tmp_path):
    # Solid BGR colours that differ in every channel, written in an order unlike sorted order.
    colours = {"z.png": (10, 20, 30), "a.png": (200, 100, 50), "m/k.png": (0, 255, 128), "b.png": (77, 1, 240)}
    for name, colour in colours.items():
        write_image(tmp_path / "img" / name, colour)
    names = list(colours)
    csv_path = write_csv(
        tmp_path / "train.CSV",
        ["path,label"]
        + [f"img/{name},{label}" for name, label in zip(names, ["dog", "cat", "dog", "ant"], strict=True)],
    )

    ds = preload.load(csv_path, progress=False)

    assert ds.images.shape == (4, 8, 8, 3)
    assert ds.images.dtype == np.uint8
    assert ds.paths == [os.path.join(os.fspath(tmp_path), "img", name) for name in names]
    assert ds.classes == ["ant", "cat", "dog"]
    assert ds.labels.tolist() == [2, 1, 2, 0]
    for i, name in enumerate(names):
        b, g, r = colours[name]
        expected = np.broadcast_to(np.array([r, g, b], np.uint8), (8, 8, 3))  # RGB output
        assert np.array_equal(ds.images[i], expected), name


# ------------------------------------------------------------------ select


def test_select_keeps_labels_aligned():
    m = Manifest.from_paths(["a.png", "b.png", "c.png", "d.png"], labels=["x", "y", "x", "z"])

    picked = m.select(np.array([1, 3]))

    assert picked.paths == ["b.png", "d.png"]
    assert picked.labels.tolist() == [1, 2]
    assert picked.classes == ["x", "y", "z"]
    assert m.paths == ["a.png", "b.png", "c.png", "d.png"]  # the original is untouched


def test_select_on_unlabelled_and_empty_selection():
    m = Manifest.from_paths(["a.png", "b.png", "c.png"])

    assert m.select([2, 0]).paths == ["c.png", "a.png"]
    assert m.select([2, 0]).labels is None
    empty = m.select(np.array([], dtype=np.int64))
    assert empty.paths == []
    assert empty.labels is None
    assert len(empty) == 0


def test_numeric_strings_in_a_path_list_are_class_names():
    m = Manifest.from_paths(["a.png", "b.png", "c.png"], labels=["10", "9", "10"])
    assert m.classes == ["10", "9"]
    assert m.labels.tolist() == [0, 1, 0]


def test_missing_csv_is_named_as_a_csv(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError, match=rf"cannot read CSV '{esc(missing)}': No such file"):
        preload.load(str(missing))


def test_symlink_loop_is_a_source_error(tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    cv2.imwrite(str(root / "cat" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    os.symlink(root / "cat", root / "cat" / "up")
    with pytest.raises(SourceError, match=r"symlink loop"):
        Manifest.from_folder(root)


# ------------------------------------------------------------ hostile folders (issue 11)


def test_a_looping_symlink_with_an_image_name_is_a_named_failure(tmp_path):
    root = tmp_path / "data"
    write_image(root / "a.png")
    os.symlink(root / "b.jpg", root / "b.jpg")  # points at itself: ELOOP on every stat
    ds = preload.load(root, size=8, on_error="skip", progress=False)
    assert relative(ds.paths, root) == ["a.png"]
    (failure,) = ds.failed
    assert (os.path.basename(failure.path), failure.reason) == ("b.jpg", preload.Reason.UNREADABLE)
    assert "symlink loop" in failure.detail


def test_a_looping_symlink_that_could_be_a_class_folder_is_a_source_error(tmp_path):
    root = tmp_path / "data"
    write_image(root / "cat" / "a.png")
    os.symlink(root / "dog", root / "dog")
    with pytest.raises(SourceError, match=rf"cannot tell whether '{esc(root / 'dog')}' is a folder: Too many levels"):
        Manifest.from_folder(root)


def test_a_dangling_symlink_with_an_image_name_is_a_missing_failure(tmp_path):
    root = tmp_path / "data"
    write_image(root / "cat" / "a.png")
    os.symlink(tmp_path / "gone.png", root / "cat" / "b.png")
    ds = preload.load(root, size=8, on_error="zero", progress=False)
    assert relative(ds.paths, root) == ["cat/a.png", "cat/b.png"]
    assert [(f.index, f.reason) for f in ds.failed] == [(1, preload.Reason.MISSING)]
    assert not ds.images[1].any()


def test_an_unreadable_root_folder_is_a_source_error(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_image(root / "a.png")

    def refuse(path):  # tests run as root, which chmod 000 does not stop
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(SourceError, match=rf"cannot list '{esc(root)}': Permission denied"):
        Manifest.from_folder(root)


# --------------------------------------------------------------- hostile CSVs


@pytest.mark.parametrize(
    "cell, line",
    [("99999999999999999999", 3), ("-1", 3), ("2147483648", 3), ("9" * 5000, 3)],
    ids=["overflows-int64", "negative", "above-int32", "5000-digits"],
)
def test_csv_integer_labels_out_of_range_name_the_line(tmp_path, cell, line):
    csv_path = write_csv(tmp_path / "d.csv", ["path,label", "a.png,1", f"b.png,{cell}"])
    with pytest.raises(SourceError, match=rf"column 'label' line {line} holds the integer label .*to 2147483647"):
        Manifest.from_csv(csv_path)


@pytest.mark.parametrize("labels", [[0, -1], [0, 2**40], [np.int64(-5), 1]], ids=["negative", "huge", "numpy"])
def test_list_integer_labels_out_of_range_name_the_item(labels):
    with pytest.raises(SourceError, match=r"labels item 1 holds the integer label|labels item 0 holds"):
        Manifest.from_paths(["a.png", "b.png"], labels=labels)


@pytest.mark.parametrize(
    "raw, words",
    [(b"path,label\na.png,cat\nb\xff.png,dog\n", r"line 3 is not UTF-8 \(byte 0xff\)"),
     (b"path,label\na.png,cat\nb.png," + b"x" * 200_000 + b"\n", r"line 3: field larger than field limit"),
     ("path,label\na.png,cat\n".encode("utf-16"), r"line 1 starts with a UTF-16 byte-order mark"),
     (b"path,label\na.png,cat\n\xef\xbb\xbfpath,label\nb.png,dog\n", r"line 3 holds a byte-order mark")],
    ids=["not-utf8", "200kb-field", "utf16-bom", "bom-inside"],
)
def test_hostile_csv_bytes_are_a_source_error_naming_the_line(tmp_path, raw, words):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(raw)
    with pytest.raises(SourceError, match=rf"CSV '{esc(csv_path)}' {words}"):
        preload.load(str(csv_path), size=8, progress=False)


def test_a_csv_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=r"it is a FIFO \(named pipe\), not a regular file"):
        Manifest.from_csv(fifo)


def test_bytes_paths_become_str_paths(tmp_path):
    path = write_image(tmp_path / "a.png")
    ds = preload.load([os.fsencode(path)], progress=False)
    assert ds.paths == [path]


def test_a_path_with_a_nul_character_is_a_source_error():
    with pytest.raises(SourceError, match=r"path 1 of the list \('b\\x00.png'\) holds a NUL character"):
        Manifest.from_paths(["a.png", "b\x00.png"])


# ------------------------------------------------------------ deep trees (attack-11 D9)


def _nest(folder: str, depth: int) -> str:
    """``folder/d/d/.../d`` ``depth`` levels down, made one mkdir at a time (os.makedirs recurses too)."""
    for _ in range(depth):
        folder = os.path.join(folder, "d")
        os.mkdir(folder)
    return folder


@pytest.fixture
def deep_root(tmp_path):
    """``tmp_path/data``, removed afterwards by :func:`remove_tree`: pytest's own clean-up would recurse too deep."""
    root = tmp_path / "data"
    yield root
    if root.exists():
        remove_tree(root)


def test_a_class_folder_nested_deeper_than_the_recursion_limit_is_walked_in_order(deep_root):
    depth = sys.getrecursionlimit() + 100  # one level a frame would be a RecursionError
    root = deep_root
    write_image(root / "cat" / "a.png")
    write_image(root / "cat" / "e" / "z.png")  # a sibling after 'd': walked once 'd' is done, at any depth
    bottom = _nest(str(root / "cat"), depth)
    write_image(os.path.join(bottom, "deepest.png"))
    write_image(os.path.join(os.path.dirname(bottom), "b.png"))  # files of a folder before its sub-folders
    write_image(os.path.join(os.path.dirname(bottom), "e", "c.png"))
    write_image(root / "dog" / "y.png")
    m = Manifest.from_folder(root)
    inner = "/".join(["d"] * (depth - 1))
    assert relative(m.paths, root) == ["cat/a.png", f"cat/{inner}/b.png", f"cat/{inner}/d/deepest.png",
                                       f"cat/{inner}/e/c.png", "cat/e/z.png", "dog/y.png"]
    assert m.labels.tolist() == [0, 0, 0, 0, 0, 1]
    assert len(m.listing) == 1 + 1 + depth + 1 + 1 + 1  # root, cat, the chain, the two 'e' folders, dog


def test_a_symlink_loop_deep_down_is_still_a_source_error_and_a_link_to_a_sibling_is_not(deep_root):
    root = deep_root
    write_image(root / "cat" / "a.png")
    write_image(root / "cat" / "other" / "b.png")
    (root / "cat" / "x").mkdir()
    bottom = _nest(str(root / "cat" / "x"), sys.getrecursionlimit() + 100)
    os.symlink(root / "cat" / "other", os.path.join(bottom, "link"))  # not above it: walked like a folder
    m = Manifest.from_folder(root)
    assert [os.path.basename(p) for p in m.paths] == ["a.png", "b.png", "b.png"]
    assert m.paths[1].endswith(os.path.join("cat", "other", "b.png"))
    assert m.paths[2].endswith(os.path.join("d", "d", "link", "b.png"))
    os.symlink(root / "cat" / "x", os.path.join(bottom, "up"))  # leads back to a folder above it
    with pytest.raises(SourceError, match=r"'.*/d/up' leads back to a folder above it \(a symlink loop\)"):
        Manifest.from_folder(root)


def test_a_csv_is_read_line_by_line_not_whole(tmp_path):
    # A CSV whose other columns are large: memory holds the paths kept, not the file's text
    # (before: its bytes, its decoded text and every row at once, about 6x the file).
    import tracemalloc

    notes = "n" * 2000
    lines = ["path,label,notes", *(f"img/{k:05d}.png,{'cat' if k % 3 else 'dog'},{notes}" for k in range(5000))]
    csv_path = write_csv(tmp_path / "big.csv", lines)
    size = os.path.getsize(csv_path)
    tracemalloc.start()
    try:
        m = Manifest.from_csv(csv_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (len(m), m.classes, m.paths[-1]) == (5000, ["cat", "dog"], str(tmp_path / "img" / "04999.png"))
    assert m.labels[:3].tolist() == [1, 0, 0]
    assert size > 10_000_000
    assert peak < size / 4, (peak, size)


def test_csv_problems_far_into_the_file_name_their_own_line(tmp_path):
    # The decoder reads ahead in chunks; the line named is the one holding the bad byte.
    rows = [f"img/{k}.png,cat" for k in range(20_000)]
    raw = ("path,label\n" + "\n".join(rows[:12_344])).encode() + b"\nb\xe9.png,dog\n" + "\n".join(rows).encode()
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(raw)
    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' line 12346 is not UTF-8 \(byte 0xe9\)"):
        Manifest.from_csv(csv_path)
    csv_path.write_text("path,label\n" + "\n".join(rows[:999]) + "\n\ufeffa.png,cat\n", encoding="utf-8")
    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' line 1001 holds a byte-order mark"):
        Manifest.from_csv(csv_path)
    numbered = [f"img/{k}.png,{k % 5}" for k in range(9)]
    csv_path.write_text("path,label\n" + "\n".join(numbered) + "\nx.png," + "9" * 30 + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"column 'label' line 11 holds the integer label 99999999999999999999\.\.\."):
        Manifest.from_csv(csv_path)


def test_a_csv_without_line_breaks_is_refused_at_its_first_line(tmp_path, monkeypatch):
    from preload import sources

    monkeypatch.setattr(sources, "MAX_CSV_LINE", 1000)  # 16 M characters for real
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b"path,label\n" + b"x" * 5000)
    with pytest.raises(SourceError, match=rf"^CSV '{esc(csv_path)}' line 2 is longer than 1,000 characters"):
        Manifest.from_csv(csv_path)


def test_csv_and_images_share_one_opener_that_refuses_a_fifo(tmp_path):
    from preload import headers, sources

    fifo = tmp_path / "d.csv"
    os.mkfifo(fifo)
    with pytest.raises(sources.NotRegularFile, match=r"is a FIFO \(named pipe\), not a regular file"):
        sources.open_regular(str(fifo))
    with pytest.raises(preload.ImageDecodeError, match=r"it is a FIFO \(named pipe\), not a regular file"):
        headers.open_regular(str(fifo))
    with pytest.raises(SourceError, match=r"cannot read CSV '.*': it is a FIFO \(named pipe\), not a regular file"):
        Manifest.from_csv(fifo)
