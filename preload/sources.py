"""Turn what the user points at into an ordered :class:`Manifest`.

A manifest is the list of files that will become the rows of the array, in
array order, with their integer labels and the class names those index.

Accepted sources and their order
--------------------------------
* **A folder of class sub-folders** (``root/cat/*.jpg``, ``root/dog/*.jpg``):
  classes are the sub-folder names sorted as Python sorts strings; label ``k``
  means ``classes[k]``. Images are found recursively inside each class folder
  and ordered class by class; inside a folder its own files come first, sorted
  by name, then each sub-folder (sorted by name) in turn, depth first. A class
  folder with no images keeps its index, so labels stay stable across splits
  that lack a class.
* **A flat folder** (no sub-folders): its images sorted by name; no labels.
* **A list of paths**, in the given order, with optional ``labels`` (Python or
  NumPy integers, kept as they are, or strings -- class names, even when they
  look like numbers -- mapped to sorted class indices).
* **A CSV file** with a header row: a ``path`` column (relative paths are taken
  from the CSV's folder) and an optional ``label`` column (a column of
  integers is kept as integers, anything else mapped to sorted class indices);
  rows in file order.
* A ready :class:`Manifest`.

Files and folders whose name starts with ``.`` are skipped, and only the
extensions in :data:`IMAGE_EXTENSIONS` (any letter case) are listed from
folders. Paths given explicitly (list, CSV) are taken as they are.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import stat
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SourceError, display

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True, eq=False)
class Manifest:
    """The files to load, in array order.

    Attributes
    ----------
    paths : list of str
        One path per row of the array.
    labels : numpy.ndarray of int64, shape (N,), or None
        ``labels[i]`` indexes ``classes`` when classes are known.
    classes : list of str or None
        Class names, sorted; None when labels are plain integers or absent.

    Examples
    --------
    >>> m = Manifest.from_paths(["a.png", "b.png"], labels=["dog", "cat"])
    >>> m.classes, m.labels.tolist()
    (['cat', 'dog'], [1, 0])
    """

    paths: list[str]
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    # Where the list came from: every folder walked, or the CSV file. A change
    # in their mtimes is how a cache notices added or removed files cheaply.
    listing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.paths):
            message = f"{len(self.labels)} labels for {len(self.paths)} paths; give one label per path"
            raise SourceError(message)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: np.ndarray) -> Manifest:
        """The manifest restricted to the rows whose index is in ``keep`` (sorted)."""
        keep = np.asarray(keep, dtype=np.int64)
        labels = None if self.labels is None else self.labels[keep]
        return Manifest([self.paths[i] for i in keep], labels, self.classes, self.listing)

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> Manifest:
        """List a flat folder or a folder of class sub-folders (see module docs)."""
        root_text = os.fspath(root)
        if not os.path.isdir(root_text):
            message = f"source folder '{display(root_text)}' does not exist or is not a folder"
            raise SourceError(message)
        walked = [root_text]
        files, dirs = _scan(root_text)  # raises SourceError when the folder cannot be listed
        if dirs and files:
            message = (
                f"'{display(root_text)}' holds both image files (e.g. '{display(files[0])}') and sub-folders "
                f"(e.g. '{display(dirs[0])}'); put every image in a class sub-folder, or use a flat folder"
            )
            raise SourceError(message)
        if not dirs:
            paths = [os.path.join(root_text, name) for name in files]
            manifest = cls(paths, listing=tuple(walked))
        else:
            paths, labels = [], []
            for k, name in enumerate(dirs):
                found = _walk(os.path.join(root_text, name), walked=walked)
                paths.extend(found)
                labels.extend([k] * len(found))
            manifest = cls(paths, np.asarray(labels, dtype=np.int64), list(dirs), tuple(walked))
        if not manifest.paths:
            allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
            message = f"no images found in '{display(root_text)}' (looked for {allowed}, any case)"
            raise SourceError(message)
        return manifest

    @classmethod
    def from_paths(
        cls, paths: Sequence[str | os.PathLike], labels: Sequence | np.ndarray | None = None
    ) -> Manifest:
        """Take an explicit list of files, with optional int or string labels."""
        # bytes names become str the way Python spells undecodable bytes (surrogateescape)
        texts = [os.fsdecode(p) for p in paths]
        if not texts:
            raise SourceError("the list of paths is empty")
        for i, text in enumerate(texts):
            if "\x00" in text:  # no file name can hold one; open() would raise a bare ValueError
                message = f"path {i} of the list ({display(text)!r}) holds a NUL character"
                raise SourceError(message)
        if labels is None:
            return cls(texts)
        label_array, classes = _encode_labels(list(labels), "labels", numeric_text=False)
        return cls(texts, label_array, classes)

    @classmethod
    def from_csv(
        cls,
        csv_path: str | os.PathLike,
        *,
        path_column: str = "path",
        label_column: str | None = "label",
    ) -> Manifest:
        """Read a CSV with a header row; relative paths are taken from its folder.

        ``label_column`` is used when present; name a column that is missing and
        nothing else is wrong, and the file is taken as unlabelled.
        """
        csv_text = os.fspath(csv_path)
        shown = display(csv_text)
        base = os.path.dirname(csv_text)
        paths: list[str] = []
        raw_labels: list[str] = []
        label_lines = array("q")  # the line of each label, for a message about a bad one
        distinct: dict[str, str] = {}  # one string per distinct label, not one per row
        header = None
        with _open_csv(csv_text) as text:
            # The file is read a line at a time: memory holds the paths and labels kept,
            # never the whole text (a 1 GB CSV of which a few columns are used).
            reader = csv.reader(_csv_lines(text, shown))
            try:
                for row in reader:
                    # reader.line_num is the physical line a row ends on, which is
                    # what a user sees in an editor even with quoted newlines.
                    line = reader.line_num
                    if header is None:
                        header = [name.strip() for name in row]
                        if path_column not in header:
                            message = f"CSV '{shown}' has no '{path_column}' column (columns: {', '.join(header)})"
                            raise SourceError(message)
                        path_at = header.index(path_column)
                        label_at = header.index(label_column) if label_column in header else None
                        continue
                    if not any(cell.strip() for cell in row):
                        continue
                    if len(row) != len(header):
                        message = f"CSV '{shown}' line {line} has {len(row)} fields, the header has {len(header)}"
                        raise SourceError(message)
                    cell = row[path_at].strip()
                    if not cell:
                        message = f"CSV '{shown}' line {line} has an empty '{path_column}'"
                        raise SourceError(message)
                    paths.append(os.path.join(base, cell))
                    if label_at is not None:
                        label = row[label_at].strip()
                        raw_labels.append(distinct.setdefault(label, label))
                        label_lines.append(line)
            except csv.Error as exc:  # a field over csv's 128 KB limit, an unclosed quote
                message = f"CSV '{shown}' line {reader.line_num}: {exc}"
                raise SourceError(message) from None
        if header is None:
            message = f"CSV '{shown}' is empty; it needs a header row with a '{path_column}' column"
            raise SourceError(message)
        if not paths:
            message = f"CSV '{shown}' has a header but no rows"
            raise SourceError(message)
        if label_at is None:
            return cls(paths, listing=(csv_text,))
        what = f"CSV '{shown}' column '{label_column}'"
        label_array, classes = _encode_labels(raw_labels, what, numeric_text=True,
                                              where=lambda i: f"line {label_lines[i]}")
        return cls(paths, label_array, classes, (csv_text,))


def manifest(source, *, labels=None) -> Manifest:
    """Dispatch any accepted source to its :class:`Manifest` constructor.

    Examples
    --------
    >>> manifest(["x.jpg", "y.jpg"], labels=[3, 1]).labels.tolist()
    [3, 1]
    """
    if isinstance(source, Manifest):
        if labels is not None:
            raise SourceError("labels= cannot be combined with a Manifest; it carries its own labels")
        return source
    if isinstance(source, (str, os.PathLike)):
        if labels is not None:
            message = f"labels= is only for a list of paths; '{os.fspath(source)}' supplies its own"
            raise SourceError(message)
        text = os.fspath(source)
        if text.lower().endswith(".csv") and not os.path.isdir(text):
            return Manifest.from_csv(text)
        return Manifest.from_folder(text)
    if isinstance(source, Sequence) or isinstance(source, np.ndarray):
        return Manifest.from_paths(list(source), labels)
    message = (
        f"cannot load from a {type(source).__name__}; give a folder, a CSV file, "
        "a list of paths or a preload.Manifest"
    )
    raise SourceError(message)


def _is_image_name(name: str) -> bool:
    # os.path.splitext's rule for a name not starting with a dot, without its cost: a million calls
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def _scan(folder: str) -> tuple[list[str], list[str]]:
    """Sorted visible image names and sub-folder names directly in ``folder``.

    Every entry with an image name that is not a folder is listed, whatever it
    is: a dangling symlink becomes a ``missing`` failure and a FIFO an
    ``unreadable`` one when it is loaded, instead of vanishing from the rows.
    An entry whose type cannot be found out (a symlink loop) is listed when
    it has an image name; otherwise it might be a class folder, and guessing
    would shift every label after it, so it is an error.
    """
    files, dirs = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError as exc:
                    if _is_image_name(entry.name):
                        files.append(entry.name)
                        continue
                    path = display(os.path.join(folder, entry.name))
                    message = f"cannot tell whether '{path}' is a folder: {exc.strerror or exc}"
                    raise SourceError(message) from exc
                if is_dir:
                    dirs.append(entry.name)
                elif _is_image_name(entry.name):
                    files.append(entry.name)
    except OSError as exc:
        message = f"cannot list '{display(folder)}': {exc.strerror or exc}"
        raise SourceError(message) from exc
    files.sort()
    dirs.sort()
    return files, dirs


def _walk(folder: str, walked: list[str] | None = None) -> list[str]:
    """All visible images under ``folder``: its sorted files, then each sorted sub-folder.

    os.scandir yields the file type with the name, so listing costs no stat per
    file; that keeps a million-file tree in seconds rather than minutes.
    The (device, inode) of every folder on the way down is kept, so a symlink
    back up the tree is an error instead of an endless walk; ``walked``
    collects every folder visited, in the order visited.

    The walk is depth first with its own stack, not recursion: a tree nested
    thousands of levels deep (which a file system allows) must not end in
    Python's RecursionError.
    """
    found: list[str] = []
    above: set[tuple[int, int]] = set()  # the folders on the path from ``folder`` down to the current one
    stack: list[tuple[tuple[int, int], str, Iterator[str]]] = []

    def enter(path: str) -> None:
        try:
            info = os.stat(path)
        except OSError as exc:
            message = f"cannot list '{display(path)}': {exc.strerror or exc}"
            raise SourceError(message) from exc
        here = (info.st_dev, info.st_ino)
        if here in above:
            message = (f"'{display(path)}' leads back to a folder above it (a symlink loop); "
                       "remove the link or list files")
            raise SourceError(message)
        files, dirs = _scan(path)
        if walked is not None:
            walked.append(path)
        prefix = os.path.join(path, "")  # one join per folder, not per file
        found.extend(prefix + name for name in files)
        above.add(here)
        stack.append((here, path, iter(dirs)))

    enter(folder)
    while stack:
        here, path, subfolders = stack[-1]
        name = next(subfolders, None)
        if name is None:  # every sub-folder done: leave this folder
            stack.pop()
            above.discard(here)
        else:
            enter(os.path.join(path, name))
    return found


MAX_LABEL = 2**31 - 1  # integer labels are class indices: they fit int32 (torch, Keras) and stay non-negative


def _encode_labels(
    values: list, what: str, *, numeric_text: bool, where: Callable[[int], str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Integers stay integers (no classes); strings become indices into sorted classes.

    ``numeric_text``: text that spells an integer counts as one (CSV cells are
    always text); in a Python list a string is a class name, whatever it spells.
    Integers must lie in 0..MAX_LABEL; ``where(i)`` names value ``i`` in the message.
    """
    if all(_is_int(v, numeric_text) for v in values):
        numbers = []
        for i, value in enumerate(values):
            number = _label_number(value)
            if number is None:
                at = where(i) if where else f"item {i}"
                shown = str(value) if len(str(value)) <= 24 else str(value)[:20] + "..."
                message = (f"{what} {at} holds the integer label {shown}; integer labels are class "
                           f"indices from 0 to {MAX_LABEL} (use class names for anything else)")
                raise SourceError(message)
            numbers.append(number)
        return np.asarray(numbers, dtype=np.int64), None
    if all(isinstance(v, str) for v in values):
        if any(v == "" for v in values):
            message = f"{what} has an empty label; every image needs one"
            raise SourceError(message)
        classes = sorted(set(values))
        index = {name: k for k, name in enumerate(classes)}
        return np.asarray([index[v] for v in values], dtype=np.int64), classes
    kinds = sorted({type(v).__name__ for v in values})
    message = f"{what} must be all integers or all strings; got {', '.join(kinds)}"
    raise SourceError(message)


def _label_number(value) -> int | None:
    """The integer label, or None when it is outside 0..MAX_LABEL."""
    text = value.strip().lstrip("+") if isinstance(value, str) else None
    if text is not None:
        if text.startswith("-"):
            return None  # negative: refused without parsing a digit string of any length
        # Leading zeros count towards Python's 4300-digit limit of int(): drop them first.
        text = text.lstrip("0") or "0"
        if len(text) > len(str(MAX_LABEL)):
            return None  # int() of a 200 KB digit string is slow, then refused by Python's digit limit
    number = int(text if text is not None else value)
    return number if 0 <= number <= MAX_LABEL else None


MAX_CSV_LINE = 1 << 24  # characters: no CSV of paths has such a line; a binary file named .csv may have no newline
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape keeps them


class NotRegularFile(OSError):
    """``path`` is a folder, FIFO, socket or device: refused before a byte is read. ``kind`` says which."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"'{display(path)}' is {kind}, not a regular file")
        self.path, self.kind = path, kind


def open_regular(path: str, buffering: int = 0) -> tuple[io.RawIOBase | io.BufferedReader, int]:
    """Open ``path`` for reading, refusing anything but a regular file before a byte is read.

    The one opener of the files a user points at (images, CSV lists).
    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a
    writer; fstat on the open descriptor then says what was opened, so a file
    swapped for a FIFO or a device after a stat cannot slip through.

    Returns
    -------
    (binary file object, size in bytes)
        Unbuffered unless ``buffering`` (as for :func:`open`) says otherwise.

    Raises
    ------
    NotRegularFile
        A folder, FIFO, socket (which cannot even be opened) or device.
    OSError
        What opening raises: missing, permission denied, a symlink loop, ...
    ValueError
        The name holds a NUL byte.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        try:  # a socket cannot be opened at all (ENXIO): say what it is
            kind = file_kind(os.stat(path).st_mode)
        except OSError:
            kind = None
        if kind is not None:
            raise NotRegularFile(path, kind) from None
        raise
    try:
        info = os.fstat(fd)
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise NotRegularFile(path, kind)
        # O_NONBLOCK stays set: it changes nothing for a regular file (reads from disk never return EAGAIN).
        return os.fdopen(fd, "rb", buffering=buffering), info.st_size
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO (named pipe)", ...)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def _open_csv(path: str) -> io.TextIOWrapper:
    """The CSV file as UTF-8 text, a UTF-8 byte-order mark at its start dropped; read it with :func:`_csv_lines`.

    Opened once, by :func:`open_regular` (a FIFO or a device is refused
    unread). A UTF-16 or UTF-32 byte-order mark is refused at once.
    """
    shown = display(path)
    try:
        raw, _ = open_regular(path, buffering=1 << 16)
    except NotRegularFile as exc:
        message = f"cannot read CSV '{shown}': it is {exc.kind}, not a regular file"
        raise SourceError(message) from None
    except OSError as exc:
        message = f"cannot read CSV '{shown}': {exc.strerror or exc}"
        raise SourceError(message) from exc
    try:
        start = raw.peek(4)[:4]
    except OSError as exc:
        raw.close()
        message = f"cannot read CSV '{shown}': {exc.strerror or exc}"
        raise SourceError(message) from exc
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if start.startswith(bom):
            raw.close()
            message = f"CSV '{shown}' line 1 starts with a {name} byte-order mark; save the file as UTF-8"
            raise SourceError(message)
    # surrogateescape: a byte that is not UTF-8 is found in its own line (by _csv_lines),
    # not in whichever 8 KB chunk the decoder was reading while csv was lines behind.
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_lines(text: io.TextIOWrapper, shown: str) -> Iterator[str]:
    """The physical lines of an open CSV, one at a time, each checked; they split as :mod:`csv` expects.

    Refused with the line named: bytes that are not UTF-8, a byte-order mark
    anywhere but at the start (files joined with ``cat``), a line over
    :data:`MAX_CSV_LINE` characters.
    """
    number = 0
    while True:
        try:
            line = text.readline(MAX_CSV_LINE + 1)
        except OSError as exc:
            message = f"cannot read CSV '{shown}': {exc.strerror or exc}"
            raise SourceError(message) from exc
        if not line:
            return
        number += 1
        if len(line) > MAX_CSV_LINE:
            message = f"CSV '{shown}' line {number} is longer than {MAX_CSV_LINE:,} characters; is it a CSV file?"
            raise SourceError(message)
        bad = _NOT_UTF8.search(line)
        if bad:
            message = (f"CSV '{shown}' line {number} is not UTF-8 (byte {ord(bad.group()) - 0xDC00:#04x}); "
                       "save the file as UTF-8")
            raise SourceError(message)
        if "\ufeff" in line:
            message = (f"CSV '{shown}' line {number} holds a byte-order mark (U+FEFF), as from joining files; "
                       "remove it")
            raise SourceError(message)
        yield line


def _is_int(value, numeric_text: bool) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if numeric_text and isinstance(value, str):
        return re.fullmatch(r"[+-]?\d+", value.strip()) is not None
    return False


__all__ = ["IMAGE_EXTENSIONS", "Manifest", "manifest"]

