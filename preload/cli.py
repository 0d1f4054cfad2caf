"""Command line front end: ``preload demo | load | build | info | verify | report``.

Exit codes
----------
=====  ======================================================================
0      success (``verify``: the cache is complete and fresh)
1      the work failed: a file could not be loaded (``--on-error raise``), the
       memory or disk check, no space left, another process holds the cache,
       a cache built with other options; ``verify``: the cache is stale
2      a usage error: a bad option value or a bad path given by the user
       (missing, not writable, a file where a folder is expected or the other
       way round), also when the library is the one that refuses it
3      no complete cache at that path (missing, an unfinished build, damaged);
       for ``info`` and ``verify`` it is their answer, on stdout as
       ``STATUS: what`` (``missing: no cache at ...``), not an error
130    interrupted (Ctrl-C), wherever it lands: ``preload: interrupted``
=====  ======================================================================

Every error is one ``preload: error: ...`` line on stderr naming the path
and the reason, never a traceback. A closed stdout (``preload info c.npy
--json | head -5``) is not an error: the command ends with its own code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import stat
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable

import numpy as np

from ._version import DISTRIBUTION, __version__, install_hint
from .atomic import atomic_write, open_existing
from .cache import CacheFiles, build_cache, cache_info, verify_cache
from .errors import (
    ImageDecodeError,
    IncompleteCacheError,
    InsufficientDiskError,
    OptionError,
    PreloadError,
    SizeMismatchError,
    SourceError,
    StaleCacheError,
    TargetError,
    display,
)
from .loader import load
from .measure import STRATEGIES, PeakSampler
from .options import OPTIONS
from .report import DEFAULT_SAMPLES, PLOT_HINT, REPORT_FILES, console_lines, run_report, write_report
from .sources import IMAGE_EXTENSIONS, Manifest, manifest

EPILOG = """examples:
  preload demo                                  # 400 sample photos -> 256x256 NHWC, timed
  preload load data/train --size 224 --out train.npy   # a cache: pixels + labels, classes, paths
  preload report data/train --limit 4000 --out report/   # peak memory: list-then-stack vs preload
  preload build data/train cache/train.npy --size 256 --layout nchw --workers 2   # for PyTorch
  preload build /shared/train /shared/cache/train.npy --size 256 --scheduler tcp://scheduler:8786   # on Dask
  preload info cache/train.npy --json
  preload verify cache/train.npy               # exit 0 fresh, 1 stale, 3 not a complete cache
  preload verify cache/train.npy --deep        # also re-read every row against its checksum

arrays are NHWC (image, height, width, channel) unless --layout nchw, as with
preload.load: it is what OpenCV, Keras/TensorFlow and most image code use;
PyTorch users pass --layout nchw.

exit codes: 0 ok; 1 the work failed (verify: stale); 2 usage error (bad option
value or path); 3 no complete cache (info, verify: the answer, on stdout);
130 interrupted.
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STALE = 1
EXIT_USAGE = 2
EXIT_NO_CACHE = 3
EXIT_INTERRUPTED = 130
SCHEDULER_TIMEOUT = 10  # seconds to reach a --scheduler before giving up
FAILURES_SHOWN = 5  # failed files printed; --failed-list writes them all


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``preload: error:`` line like every other error (exit 2)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"preload: error: {message} (see: {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every option's help ends with its default (a test holds them to it)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # argparse would break "naive-vstack" or "--no-exif" at the hyphen.
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


# ------------------------------------------------------------------ output


def say(line: str = "") -> None:
    """Print one line on stdout; a reader that went away (``| head``) ends the output, not the command."""
    try:
        try:
            print(line, flush=True)
        except UnicodeEncodeError:
            # A file name that is not UTF-8 (or a stdout that is ASCII): print it escaped, never fail.
            encoding = sys.stdout.encoding or "utf-8"
            print(display(line).encode(encoding, "backslashreplace").decode(encoding), flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    # Later prints and the interpreter's final flush must not hit the closed pipe again.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def warn(text: str) -> None:
    print(f"preload: warning: {text}", file=sys.stderr)


# ------------------------------------------------------------------ the library's words -> the command line's


_API_PHRASES = (
    (re.compile(r"pass size=\(height, width\) to resize them"), "pass --size N or --size HxW to resize them"),
    (re.compile(r"force=True \(--force\)"), "--force"),
    (re.compile(r"force=True"), "--force"),
    (re.compile(r'e\.g\. out="images\.npy"'), "e.g. --out images.npy"),
    (re.compile(r"see Dataset\.failed"), "--failed-list FILE lists them"),
    (re.compile(r"build it again to update it, or open it with check=False"),
     "run the same preload build again to update it"),
    (re.compile(r"e\.g\. 256 or \(224, 320\)"), "e.g. --size 256 or --size 224x320"),
    (re.compile(r"\bout='([^']*)'"), r"--out '\1'"),
    (re.compile(r"\bout= "), "--out "),
    (re.compile(r"or None for every core"), "or all for every core"),
    (re.compile(r"^(CSV '.*' has no '[^']*' column \(columns: .*\))$"),
     r"\1; --path-column NAME names the column of image paths"),
)
_OPTION_WORD = re.compile(r"(?<![\w.-])(" + "|".join(sorted(OPTIONS, key=len, reverse=True)) + r")=(?=\S)")


def cli_words(text: str) -> str:
    """A library message as the command line says it: ``--size 0``, not ``size=0``.

    Examples
    --------
    >>> cli_words("layout='chw' is not accepted; use one of 'NHWC', 'NCHW'")
    "--layout 'chw' is not accepted; use one of 'NHWC', 'NCHW'"
    >>> cli_words("on_error='x' is not accepted")
    "--on-error 'x' is not accepted"
    >>> cli_words("size=None is not accepted by the report")
    '--size none is not accepted by the report'
    >>> cli_words("fill=(1, 2) is not accepted"), cli_words("size=(0, 5) is not accepted")
    ('--fill 1,2 is not accepted', '--size 0x5 is not accepted')
    """
    for pattern, replacement in _API_PHRASES:
        text = pattern.sub(replacement, text)
    text = _OPTION_WORD.sub(lambda match: OPTIONS[match.group(1)].flag + " ", text)
    text = re.sub(r"(--[a-z-]+) (None|True|False)\b", lambda m: f"{m[1]} {m[2].lower()}", text)
    # A tuple as the flag takes it: --size HxW, --fill V,V,V.
    text = re.sub(r"--size \((\d+), (\d+)\)", r"--size \1x\2", text)
    return re.sub(r"(--[a-z-]+) \((\d+(?:, \d+)*)\)", lambda m: f"{m[1]} {m[2].replace(', ', ',')}", text)


_MISMATCH = re.compile(r"but '(?P<a>.+)' is (?P<sa>\d+x\d+) and '(?P<b>.+)' is (?P<sb>\d+x\d+) \(height x width\)")


def _size_hint(exc: SizeMismatchError) -> tuple[str, int]:
    """Images of several sizes and no ``--size``: say in one line how to pick one (a usage error)."""
    found = _MISMATCH.search(str(exc))
    if found is None:  # no readable size at all: the files are the problem
        return cli_words(str(exc)), EXIT_FAILED
    message = (f"images differ in size ('{found['a']}' is {found['sa']}, '{found['b']}' is {found['sb']}, "
               "height x width): pass --size 256 (or --size HxW) to resize them all")
    return message, EXIT_USAGE


# ------------------------------------------------------------------ paths


# What an errno says about a path the user gave, and the exit code (a bad path is a usage error).
_PATH_ERRNOS = {
    errno.ENOENT: ("does not exist", EXIT_USAGE),
    errno.EISDIR: ("is a folder, not a file", EXIT_USAGE),
    errno.EEXIST: ("already exists and is a file, not a folder", EXIT_USAGE),
    errno.EROFS: ("is not writable (read-only file system)", EXIT_USAGE),
    errno.ENOSPC: ("cannot be written: no space left on its file system", EXIT_FAILED),
    errno.EDQUOT: ("cannot be written: disk quota exceeded", EXIT_FAILED),
}
# A permission error reads differently for a path being read and one being written.
_DENIED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def is_path_mistake(exc: OSError) -> bool:
    """True when the errno says the user's path is wrong (a usage error, exit 2), not that the work failed."""
    return exc.errno in _DENIED or exc.errno == errno.ENOTDIR or _PATH_ERRNOS.get(exc.errno, ("", 0))[1] == EXIT_USAGE


def describe_os_error(exc: OSError, path: str | None = None, *, what: str = "", doing: str | None = None
                      ) -> tuple[str, int]:
    """One line naming the path and the reason, and the exit code.

    ``what`` names the path on the command line (``SOURCE``, ``--failed-list``);
    ``doing`` is ``"read"`` or ``"write"``, what was being done with it, which
    is what a permission error means; None when it is not known.

    Examples
    --------
    >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied"), "d", what="SOURCE", doing="read")
    ("cannot read SOURCE 'd': permission denied", 2)
    >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied"), "f.txt", doing="write")
    ("'f.txt' is not writable (permission denied)", 2)
    """
    path = path or exc.filename or "?"
    named = f"{what} '{path}'" if what else f"'{path}'"
    if exc.errno in _DENIED:
        denied = _DENIED[exc.errno]
        if doing == "read":
            return f"cannot read {named}: {denied}", EXIT_USAGE
        if doing == "write":
            return f"{named} is not writable ({denied})", EXIT_USAGE
        return f"{named}: {denied}", EXIT_USAGE
    if exc.errno == errno.ENOTDIR:
        return f"{named}: '{_file_in_the_way(path)}' is a file, not a folder", EXIT_USAGE
    reason, code = _PATH_ERRNOS.get(exc.errno, (None, EXIT_FAILED))
    if reason is None:
        reason = f"cannot be used: {exc.strerror or exc}"
    return f"{named} {reason}", code


def _file_in_the_way(path: str) -> str:
    """The first part of ``path`` that is a file where a folder must be (ENOTDIR), or ``path`` itself."""
    parts = os.path.normpath(path).split(os.sep)
    for end in range(1, len(parts)):
        head = os.sep.join(parts[:end]) or os.sep
        if os.path.exists(head) and not os.path.isdir(head):
            return head
    return path


class PathProblem(PreloadError):
    """A path given on the command line cannot be used; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def check_source(text: str) -> str:
    """SOURCE must be a folder or a CSV file that exists and can be read."""
    try:
        os.stat(text)
    except OSError as exc:
        raise PathProblem(*describe_os_error(exc, text, what="SOURCE", doing="read")) from None
    if os.path.isdir(text):
        if not os.access(text, os.R_OK | os.X_OK):
            raise PathProblem(f"cannot read SOURCE '{text}': permission denied")
        return text
    if not text.lower().endswith(".csv"):
        message = (f"SOURCE '{text}' is a file, not a folder or a CSV file; give the folder that holds the "
                   "images (or a .csv with a 'path' column)")
        raise PathProblem(message)
    return text


def check_writable_folder(folder: str, what: str) -> None:
    """``folder`` exists, is a folder, and a file can be created in it (probed, then removed).

    Permission bits say nothing for root, ``/proc`` or a read-only mount, so
    the only honest test is to create a file.
    """
    folder = folder or "."
    try:
        os.stat(folder)
    except FileNotFoundError:
        raise PathProblem(f"{what}: the folder '{folder}' does not exist") from None
    except OSError as exc:  # a folder above it cannot be searched, ...
        raise PathProblem(*describe_os_error(exc, folder, what=f"{what}: the folder", doing="write")) from None
    if not os.path.isdir(folder):
        raise PathProblem(f"{what}: '{folder}' is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".preload-probe-", dir=folder)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message, code = describe_os_error(exc, folder)
            raise PathProblem(f"{what}: {message}", code) from None
        reason = {errno.EROFS: "read-only file system", errno.ENOENT: "files cannot be created there",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}.get(
            exc.errno, exc.strerror or str(exc))
        raise PathProblem(f"{what}: the folder '{folder}' is not writable ({reason})") from None
    os.close(handle)
    os.remove(probe)


def check_npy_target(path: str, what: str, *, force: bool = False) -> None:
    """A ``.npy`` to be written: the right suffix, not a folder, in a writable folder.

    Unless ``force`` (which discards it unread), what is there already must be
    readable: a resume or a refresh starts by reading it.
    """
    if not path.lower().endswith(".npy"):
        raise PathProblem(f"{what} '{path}' is not accepted; it must end in .npy")
    if os.path.isdir(path):
        raise PathProblem(f"{what} '{path}' is a folder, not a .npy file")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), f"{what} '{path}'")
    if not force:
        check_cache_files_readable(path, what)


def check_output_folder(path: str, what: str) -> None:
    """A folder we will write into: it may not exist yet, but its parent must take it."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise PathProblem(f"{what} '{path}' is a file, not a folder")
        check_writable_folder(path, f"{what} '{path}'")
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) and os.path.exists(parent):
            raise PathProblem(f"{what} '{path}': '{parent}' is a file, not a folder")
        check_writable_folder(_existing_ancestor(parent), f"{what} '{path}'")


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_output_file(path: str, what: str) -> None:
    """A plain file we will write (``--failed-list``): a new name or a regular file, in a writable folder.

    Checked before any decoding, so a bad name costs nothing. The file is
    written under a temporary name and renamed over ``path``
    (:func:`preload.atomic.atomic_write`), so whatever is at ``path`` is
    replaced, never written into; a symbolic link there is refused instead
    (it may point at a file the user meant to keep, or at ``/dev/stdout``,
    which a rename would replace), and so is a FIFO, device or socket (a
    FIFO would hang the write, a device must not be replaced by a file).
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there (or its folder is missing): the folder check below says which
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise PathProblem(f"{what} '{path}' is a folder, not a file")
    if mode is not None and stat.S_ISLNK(mode):
        message = (f"{what} '{path}' is a symbolic link; preload writes a new regular file there and never "
                   "follows a link: name the file itself, or a new path")
        raise PathProblem(message)
    if mode is not None and not stat.S_ISREG(mode):
        message = (f"{what} '{path}' is not a regular file (a FIFO, device or socket); give the path of a "
                   "regular file or a new one")
        raise PathProblem(message)
    check_writable_folder(os.path.dirname(os.path.abspath(path)), f"{what} '{path}'")


def check_cache_path(path: str) -> None:
    """CACHE for info/verify: a ``.npy`` path (it need not exist), not a folder, readable where it exists.

    No cache at the path is an answer (exit 3); a path that cannot be looked
    at (a file where a folder should be, a file or folder without read
    permission) is the user's mistake, said as such instead of as a missing
    or damaged cache.
    """
    if not path.lower().endswith(".npy"):
        raise PathProblem(f"CACHE '{path}' is not accepted; a cache path ends in .npy")
    if os.path.isdir(path):
        raise PathProblem(f"CACHE '{path}' is a folder, not a .npy file")
    check_cache_files_readable(path, "CACHE")


def check_cache_files_readable(path: str, what: str) -> None:
    """The files of the cache at ``path`` that exist can be read (info, verify, a resume or a refresh read them)."""
    files = CacheFiles(path)
    for name in (files.data, files.meta, files.index, files.partial):
        try:
            info = os.stat(name)
            if stat.S_ISREG(info.st_mode):  # anything else is the library's to refuse, unopened
                os.close(os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)))
        except FileNotFoundError:
            continue
        except OSError as exc:
            if is_path_mistake(exc):
                shown, named = (path, what) if name == files.data else (name, "")
                raise PathProblem(*describe_os_error(exc, shown, what=named, doing="read")) from None


# ------------------------------------------------------------------ options from the one table


def argument_type(parse: Callable[[str], object], flag: str = "") -> Callable[[str], object]:
    """An argparse ``type=`` from a :mod:`preload.options` parser: its OptionError becomes a usage error (exit 2).

    argparse keeps the message only of an ``ArgumentTypeError``; any other
    ValueError would be reported as "invalid value". It prefixes "argument
    --flag:", so the flag is not said twice.
    """

    def convert(text: str):
        try:
            return parse(text)
        except OptionError as exc:
            message = cli_words(str(exc))
            if flag and message.startswith(flag + " "):
                message = message[len(flag) + 1 :]
            raise argparse.ArgumentTypeError(message) from None

    convert.__name__ = parse.__name__
    return convert


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not accepted; give a positive number")
    return value


_METAVARS = {"workers": "N|all", "max_pixels": "N", "fill": "V|V,V,V", "size": "N|HxW|none"}


def add_option(parser: argparse.ArgumentParser, name: str, *, default=None, default_words: str | None = None,
               help_text: str | None = None, metavar: str | None = None) -> None:
    """Add the option ``name`` of :data:`preload.options.OPTIONS` with its one description and default.

    A command whose default differs from the API's (``demo --size 256``)
    passes ``default`` and says it in ``default_words``; one that takes
    fewer values than the API passes its own ``help_text`` and ``metavar``.
    """
    option = OPTIONS[name]
    allowed = f" ({', '.join(option.allowed)})" if option.allowed else ""
    kwargs: dict = {"default": option.default if default_words is None else default}
    if option.accepts.startswith("bool"):  # --exif / --no-exif
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = argument_type(option.parse, option.flag)
        kwargs["metavar"] = metavar or _METAVARS.get(name, name.upper())
    action = parser.add_argument(option.flag, **kwargs)
    # Set after add_argument: BooleanOptionalAction would append its own "(default: True)".
    words = option.default_words if default_words is None else default_words
    action.help = f"{help_text or option.help}{allowed} (default: {words})".replace("%", "%%")


def add_decode_options(parser: argparse.ArgumentParser, *, default_size=None,
                       names=("size", "layout", "color", "resize")) -> None:
    """Add the decode options ``names`` (how each image becomes a row) to ``parser``.

    With ``default_size`` the command needs a size (the report compares arrays
    of one shape), so ``--size none`` is not offered.
    """
    for name in names:
        if name == "size" and default_size is not None:
            add_option(parser, "size", default=default_size, default_words=str(default_size), metavar="N|HxW",
                       help_text="output size: N (square) or HxW (height x width)")
        else:
            add_option(parser, name)


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "workers")


def _add_load_options(parser: argparse.ArgumentParser, default_size) -> None:
    """Every option of :data:`OPTIONS`: the commands that decode a whole source (demo, load, build)."""
    add_decode_options(parser, default_size=default_size, names=tuple(OPTIONS))


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    """What to read from SOURCE: the first N files, a CSV's column names, where failures are listed."""
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="use only the first N files of SOURCE, in its order (default: every file)")
    parser.add_argument("--path-column", default="path", metavar="NAME",
                        help="CSV SOURCE: the column holding the image paths (default: %(default)s)")
    parser.add_argument("--label-column", default="label", metavar="NAME",
                        help="CSV SOURCE: the column holding the labels, used when present (default: %(default)s)")
    parser.add_argument("--failed-list", default=None, metavar="FILE",
                        help="write every file that was not loaded to FILE, one 'path<TAB>reason<TAB>detail' "
                             "line each (default: only the first few are printed)")


REPORT_EPILOG = """examples:
  preload report --limit 4000 --out report/                      # built-in sample photos
  preload report data/train --size 256 --layout nchw --limit 4000 --out report/
  preload report data/train --strategies naive,preload --out report/
"""


def _strategy_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        message = f"{text!r}: use a comma-separated list of {', '.join(STRATEGIES)}"
        raise argparse.ArgumentTypeError(message)
    return names


def _add_report_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="measure peak memory of list-then-stack vs preload on your files; write JSON, Markdown, PNG",
        description=textwrap.fill(
            "Run list-then-np.stack, list-then-np.vstack, preload into RAM and preload into a .npy memmap on the "
            "same files, each in a fresh process; report peak RSS above baseline against the array's size.", 79),
        epilog=REPORT_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "source", nargs="?", default=None,
        help="folder of class folders, flat folder, or CSV (default: make built-in sample photos in a temp folder)",
    )
    add_decode_options(parser, default_size=256)
    parser.add_argument(
        "--limit", type=positive_int, default=None, metavar="N",
        help=f"use the first N files of SOURCE; without SOURCE, make N sample photos (default: every file of "
             f"SOURCE; without SOURCE, {DEFAULT_SAMPLES} samples)",
    )
    parser.add_argument(
        "--out", default="report", metavar="FOLDER",
        help="folder for report.json, report.md and memory.png, made if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--strategies", type=_strategy_list, default=list(STRATEGIES), metavar="NAME,NAME",
        help=f"the strategies to run, comma-separated, in this order (default: all four, {','.join(STRATEGIES)})",
    )
    add_workers_option(parser)
    parser.add_argument(
        "--npy-dir", default=None, metavar="FOLDER",
        help="where the memmap strategy writes its temporary .npy (default: the --out folder)",
    )


def package_version() -> str:
    """The installed distribution's version (``_version.DISTRIBUTION``), else the source tree's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="preload",
        description="Load a whole image dataset into one preallocated uint8 array.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"preload {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, text: str, description: str | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=textwrap.fill(description or text, 79),
                                   formatter_class=_Formatter)

    demo = command("demo", "make sample photos and load them; print shape, time, peak memory")
    demo.add_argument("--count", type=positive_int, default=400, metavar="N",
                      help="sample images to make (default: %(default)s)")
    demo.add_argument("--dir", default=None, metavar="FOLDER",
                      help="a new or empty folder to write the samples to, kept afterwards (default: a temporary "
                           "folder, removed afterwards)")
    _add_load_options(demo, 256)

    load_cmd = command(
        "load", "load a folder / CSV into an array and report it",
        "Decode every image of SOURCE into one uint8 array and print its shape, time and peak memory. "
        "With --out FILE.npy the result is written as a preload cache: FILE.npy holds the pixels "
        "(np.load(FILE.npy) opens it anywhere) and FILE.npy.json / FILE.npy.index.npz keep the classes, "
        "labels and paths, so preload.open_cache(FILE.npy) gives them all back. Like preload build, it resumes "
        "an unfinished write and refuses to replace a cache made with other options, or a .npy that is not a "
        "preload cache, unless --force is given.",
    )
    load_cmd.add_argument("source", help="folder of class folders, flat folder, or CSV file")
    load_cmd.add_argument("--out", default=None, metavar="FILE.npy",
                          help="write the result as a cache (pixels, labels, classes, paths) at FILE.npy "
                               "(default: none, the array stays in memory)")
    load_cmd.add_argument("--force", action="store_true",
                          help="with --out: replace what is at FILE.npy (a cache of other options, another .npy) "
                               "(default: off, refuse to replace it)")
    _add_load_options(load_cmd, None)
    _add_source_options(load_cmd)

    build = command("build", "build (or resume, or refresh) an on-disk cache")
    build.add_argument("source", help="folder of class folders, flat folder, or CSV file")
    build.add_argument("cache", help="the cache's .npy path")
    build.add_argument("--force", action="store_true",
                       help="discard what is at CACHE (a cache, an unfinished build, any other .npy) and start over "
                            "(default: off: resume an unfinished build, refresh a stale cache, refuse anything else)")
    build.add_argument("--deep", action="store_true",
                       help="re-read every row of a complete cache and decode again those whose checksum differs "
                            "(default: off; rows a verify --deep found damaged are redone anyway)")
    build.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="decode on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://host:8786; needs "
                            "the dask extra); SOURCE and CACHE must be at the same paths on every worker, and "
                            "--workers is ignored (default: none, decode here on --workers threads)")
    _add_load_options(build, None)
    _add_source_options(build)

    for name, text in (("info", "describe a cache: shape, options, classes, failures"),
                       ("verify", "check a cache is complete and fresh (exit 0), stale (1) or absent (3)")):
        sub = command(name, text)
        sub.add_argument("cache", help="the cache's .npy path")
        sub.add_argument("--json", action="store_true", help="print JSON instead of text (default: off, text)")
        if name == "verify":
            sub.add_argument("--deep", action="store_true",
                             help="also re-read every row and compare it with its checksum; names damaged rows "
                                  "(default: off: check completeness and freshness only)")

    _add_report_parser(commands)
    return parser


# ------------------------------------------------------------------ the commands


def _decode_kwargs(args) -> dict:
    """The :data:`OPTIONS` values the user gave (or their defaults), as the API's keywords."""
    return {name: getattr(args, name) for name in OPTIONS}


def _source(args):
    """SOURCE as the API takes it: the path itself, or a Manifest when --limit or CSV columns are given."""
    text = check_source(args.source)
    if args.failed_list is not None:
        check_output_file(args.failed_list, "--failed-list")
    is_csv = os.path.isfile(text)
    columns = (args.path_column, args.label_column) != ("path", "label")
    if columns and not is_csv:
        raise OptionError(f"--path-column and --label-column are for a CSV SOURCE; '{text}' is a folder")
    if not columns and args.limit is None:
        return text
    if is_csv:
        files = Manifest.from_csv(text, path_column=args.path_column, label_column=args.label_column)
    else:
        files = manifest(text)
    if args.limit is not None and args.limit < len(files):
        files = files.select(np.arange(args.limit))
    return files


def _print_load(ds, sampler: PeakSampler, *, decoded: int | None = None) -> None:
    """Shape, classes, time, memory; ``decoded`` is how many rows this run decoded (None: all of them)."""
    seconds = sampler.seconds
    array_bytes = ds.images.nbytes
    ratio = sampler.peak_above_baseline / array_bytes if array_bytes else float("nan")
    say(f"images   {ds.images.shape} {ds.images.dtype} {ds.layout} ({array_bytes / 1e6:.1f} MB)")
    if ds.classes is not None:
        say(f"classes  {len(ds.classes)}: {', '.join(ds.classes[:8])}{' ...' if len(ds.classes) > 8 else ''}")
    if decoded is None:
        say(f"time     {seconds:.2f} s ({len(ds) / seconds:.0f} images/s)")
    elif decoded == 0:
        say(f"time     {seconds:.2f} s (nothing decoded)")
    else:
        say(f"time     {seconds:.2f} s ({decoded / seconds:.0f} images/s: {decoded:,} decoded in this run)")
    say(
        f"memory   peak RSS {sampler.peak / 1e6:.1f} MB, {sampler.peak_above_baseline / 1e6:.1f} MB above the "
        f"{sampler.baseline / 1e6:.1f} MB baseline = {ratio:.2f} x the array"
    )


def _report_failures(ds, args) -> None:
    """The first few failed files on stdout; all of them in --failed-list FILE."""
    failed = list(ds.failed)
    target = getattr(args, "failed_list", None)
    if target:
        try:  # a temporary name and a rename: a link or FIFO put at `target` since the check is replaced, not used
            # The names' own bytes (surrogateescape), so a script can open exactly the files listed.
            with atomic_write(target, "w", encoding="utf-8", errors="surrogateescape") as handle:
                for failure in failed:
                    handle.write(f"{failure.path}\t{failure.reason}\t{failure.detail}\n")
        except OSError as exc:
            raise PathProblem(*describe_os_error(exc, target, what="--failed-list", doing="write")) from None
    if not failed:
        return
    say(f"failed   {len(failed)} file(s) not loaded:")
    for failure in failed[:FAILURES_SHOWN]:
        say(f"         {failure}")
    if target:
        say(f"         all {len(failed)} listed in {target}")
    elif len(failed) > FAILURES_SHOWN:
        say(f"         ... and {len(failed) - FAILURES_SHOWN} more (--failed-list FILE lists them all)")
    if len(ds) == 0:  # --on-error skip dropped every file: an empty array is not a success
        raise PathProblem(f"no image could be loaded: all {len(failed)} file(s) failed", EXIT_FAILED)


def _warn_about_source(source, ds) -> None:
    """Empty class folders, and files in SOURCE that were passed over because they are not images."""
    if ds.classes and ds.labels is not None and len(ds.failed) == 0:
        counts = np.bincount(np.asarray(ds.labels, dtype=np.int64), minlength=len(ds.classes))
        empty = [name for name, count in zip(ds.classes, counts, strict=False) if count == 0]
        if empty:
            shown = ", ".join(f"'{name}'" for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
            warn(f"{len(empty)} class folder(s) hold no images: {shown} (their labels are kept, unused)")
    if isinstance(source, str) and os.path.isdir(source):
        skipped, example = _not_images(source)
        if skipped:
            say(f"skipped  {skipped:,} file(s) that are not images (e.g. '{example}'; images are "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})")


def _not_images(root: str) -> tuple[int, str | None]:
    """Visible files under ``root`` whose extension is not an image's (a listing pass, no stat per file).

    The order of ``os.walk(root)`` with sorted names (links to folders are not
    entered, unreadable folders passed over), but with its own stack: Python
    3.11's os.walk recurses once per level and a tree a thousand levels deep,
    which the load itself took, would end in a RecursionError here.
    """
    count, example = 0, None
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:  # a symlink loop: os.walk counts it as a file
                is_dir = False
            if is_dir:
                if not entry.is_symlink():
                    subfolders.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                count += 1
                example = example or entry.path
        pending.extend(reversed(subfolders))  # popped in sorted order, depth first
    return count, example


def _demo(args) -> int:
    from .samples import make_samples

    if args.dir is not None:
        check_output_folder(args.dir, "--dir")
        try:  # the demo loads the folder back: it must be readable too
            used = os.path.isdir(args.dir) and os.listdir(args.dir)
        except OSError as exc:
            raise PathProblem(*describe_os_error(exc, args.dir, what="--dir", doing="read")) from None
        if used:
            # make_samples writes fixed names, and the demo loads the whole folder:
            # in a used folder it would overwrite the user's files and load them too.
            raise PathProblem(f"--dir '{args.dir}' is not empty; give a new or empty folder for the sample photos")
    with contextlib.ExitStack() as stack:  # a temporary folder goes away afterwards; --dir stays
        folder = args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="preload-demo-"))
        started = time.perf_counter()
        make_samples(folder, args.count)
        say(f"samples  {args.count} images from scikit-image's photos in {folder} "
            f"({time.perf_counter() - started:.1f} s to make)")
        with PeakSampler() as sampler:
            ds = load(folder, **_decode_kwargs(args))
        _print_load(ds, sampler)
        _report_failures(ds, args)
    return EXIT_OK


def _load(args) -> int:
    source = _source(args)
    if args.out is not None:
        check_npy_target(args.out, "--out", force=args.force)
    with contextlib.ExitStack() as stack:
        sampler = stack.enter_context(PeakSampler())
        if args.out is None:
            ds = load(source, **_decode_kwargs(args))
        else:  # a cache, so the labels, classes and paths are written with the pixels
            stack.enter_context(_no_stray_lock(args.out))
            plan = _watch_build(stack)
            ds = build_cache(source, args.out, force=args.force, **_decode_kwargs(args))
    decoded = None
    if args.out:
        decoded = plan.todo  # over a cache already there, only the rows this run decoded count
        say(f"{'cache   ' if decoded == 0 else 'wrote   '} {os.path.abspath(args.out)} (a cache: preload.open_cache() "
            "gives images, labels, classes, paths; np.load() the pixels)")
    _print_load(ds, sampler, decoded=decoded)
    _report_failures(ds, args)
    _warn_about_source(source, ds)
    return EXIT_OK


class _BuildPlan(logging.Handler):
    """Catches build_cache's INFO record of what this call decodes, and prints it at once unless it decodes all."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.todo: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.todo = getattr(record, "todo", None)
        total = getattr(record, "total", None)
        if self.todo is not None and total and self.todo < total:
            say(record.getMessage())  # resuming, refreshing, nothing to do: what is reused and what decoded
        elif self.todo == total:
            self.todo = None  # every row decoded now: the plain images/s is the honest one


def _watch_build(stack: contextlib.ExitStack) -> _BuildPlan:
    """Listen to build_cache's record of what it decodes until ``stack`` closes."""
    plan = _BuildPlan()
    logger = logging.getLogger("preload.cache")
    logger.addHandler(plan)
    stack.callback(logger.removeHandler, plan)
    stack.callback(logger.setLevel, logger.level)
    logger.setLevel(logging.INFO)
    return plan


def _build(args) -> int:
    source = _source(args)
    check_npy_target(args.cache, "CACHE", force=args.force)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_no_stray_lock(args.cache))
        client = _dask_client(args.scheduler, stack) if args.scheduler else None
        plan = _watch_build(stack)
        sampler = stack.enter_context(PeakSampler())
        ds = build_cache(source, args.cache, force=args.force, deep=args.deep, client=client,
                         **_decode_kwargs(args))
    say(f"cache    {os.path.abspath(args.cache)}")
    _print_load(ds, sampler, decoded=plan.todo)
    _report_failures(ds, args)
    if plan.todo != 0:  # something was decoded now (None: every row)
        _warn_about_source(source, ds)
    return EXIT_OK


@contextlib.contextmanager
def _no_stray_lock(cache: str):
    """A first build that fails before writing anything (full disk, ...) leaves no ``.lock`` behind.

    Its holder removes the lock file (see :class:`preload.target.PathLock`);
    this also removes one this command created if the build failed before
    taking it, next to no other file of the cache, and that nobody holds.
    """
    files = CacheFiles(cache)
    existed = os.path.exists(files.lock)
    try:
        yield
    except BaseException:
        leftovers = (files.data, files.meta, files.index, *files.build_files())
        if not existed and not any(os.path.exists(path) for path in leftovers) and _lock_holder(cache) is None:
            with contextlib.suppress(OSError):
                os.remove(files.lock)
        raise


def _dask_client(address: str, stack: contextlib.ExitStack):
    """A client of the scheduler at ``address``, closed by ``stack``; the only place the CLI imports Dask.

    While it is open, the per-worker summary that :mod:`preload.distributed`
    logs at INFO is printed on stdout with the rest of the report.
    """
    try:
        from distributed import Client
    except ImportError:
        message = f"--scheduler needs Dask, which is not installed: {install_hint('dask')}"
        raise OptionError(message) from None
    from .errors import ClusterError

    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"cannot reach the Dask scheduler at '{address}': {reason}"
        raise ClusterError(message) from None
    stack.callback(client.close)
    logger = logging.getLogger("preload.distributed")
    summary = logging.StreamHandler(sys.stdout)
    summary.setFormatter(logging.Formatter("%(message)s"))
    summary.addFilter(lambda record: record.levelno == logging.INFO)
    # Its warnings still reach stderr: they propagate to main's "preload" handler.
    logger.addHandler(summary)
    stack.callback(logger.removeHandler, summary)
    stack.callback(logger.setLevel, logger.level)
    logger.setLevel(logging.INFO)
    return client


def _lock_holder(cache: str) -> str | None:
    """Who holds the build lock of ``cache`` ("pid N on host H (since ...)"), or None if nobody does."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds there cannot be detected
        return None
    try:  # never through a link, never blocking on a FIFO planted there
        handle = open(open_existing(cache + ".lock"), encoding="utf-8")  # noqa: SIM115 - closed below
    except (OSError, TargetError):
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _info(args) -> int:
    check_cache_path(args.cache)
    info = cache_info(args.cache)
    holder = _lock_holder(args.cache) if info["status"] != "complete" else None
    if holder:
        info["held_by"] = holder
    if args.json:
        say(json.dumps(info, indent=1))
    # Not a complete cache: the answer, on stdout, in verify's form ("status: what"), exit 3.
    elif info["status"] == "missing" and holder:
        say(f"missing: a build of '{info['path']}' is starting: {holder} holds it")
    elif info["status"] == "missing":
        say(f"missing: no cache at '{info['path']}'")
    elif info["status"] == "damaged":
        say(f"damaged: {cli_words(info['problem'])}")
    elif info["status"] == "partial":
        written = (f"{info['done']:,} of {info['count']:,} images written (shape {tuple(info['shape'])})")
        if holder:
            say(f"partial: build in progress at '{info['path']}': {written}; {holder} holds it")
        else:
            say(f"partial: unfinished build at '{info['path']}': {written}; run the same build again to finish it")
    else:
        options = info["options"]
        size = "x".join(map(str, options["size"]))
        say(f"cache    {info['path']}")
        say(f"images   {info['images']:,} of {info['count']:,} files, shape {tuple(info['shape'])} uint8, "
            f"{info['layout']}, {info['bytes'] / 1e6:.1f} MB")
        classes = info["classes"]
        if classes:
            say(f"classes  {len(classes)}: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}")
        say(f"options  size {size}, color {options['color']}, resize {options['resize']}, "
            f"exif {_on_off(options['exif'])}, reduce {_on_off(options['reduce'])}")
        say(f"failed   {len(info['failed'])}" + (f"; first: '{info['failed'][0]['path']}': "
                                                 f"{info['failed'][0]['detail']}" if info["failed"] else ""))
        say(f"built    {info['created']} in {info['build_seconds']:.1f} s with preload "
            f"{info['versions']['preload']}, OpenCV {info['versions']['opencv']}")
    return EXIT_OK if info["status"] == "complete" else EXIT_NO_CACHE


def _on_off(value: bool) -> str:
    return "on" if value else "off"  # as --exif / --no-exif say it


def _verify(args) -> int:
    check_cache_path(args.cache)
    result = verify_cache(args.cache, deep=args.deep)
    if result["status"] in ("partial", "missing"):
        holder = _lock_holder(args.cache)
        if holder:
            result["held_by"] = holder
            problem = (result["problem"] or "").replace("; run the same build again to finish it", "")
            result["problem"] = f"{problem}; a build is running: {holder} holds it"
    if args.json:
        say(json.dumps(result, indent=1))
    else:
        say(f"{result['status']}: {cli_words(result['problem'] or result['path'])}")
        for damaged in result.get("damaged_rows", [])[5:]:  # the problem names the first five
            say(f"damaged row {damaged['row']}: '{damaged['path']}'")
        check = result.get("deep_check")
        if check:
            speed = check["bytes"] / check["seconds"] / 1e9 if check["seconds"] else float("inf")
            say(check.get("note") or f"checked  {check['rows']:,} rows, {check['bytes'] / 1e6:.1f} MB in "
                                     f"{check['seconds']:.2f} s ({speed:.1f} GB/s)")
        if result.get("unverifiable"):
            some = result["unverifiable"]
            shown = ", ".join(f"'{p}'" for p in some[:3]) + (" ..." if len(some) > 3 else "")
            say(f"{len(some)} file{'' if len(some) == 1 else 's'} unverifiable ({shown}): "
                "modified within the file system's timestamp granularity of the build, so a rewrite in the "
                "same tick would not show; the next build decodes them again")
    return {"fresh": EXIT_OK, "stale": EXIT_STALE}.get(result["status"], EXIT_NO_CACHE)


def _report(args) -> int:
    out = os.fspath(args.out)
    if args.source is not None:
        check_source(args.source)
    check_output_folder(out, "--out")
    for name in REPORT_FILES:  # before the runs: a rename cannot replace a folder, and the measuring would be lost
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise PathProblem(f"--out '{out}' holds a folder named '{name}', where the report writes that file; "
                              "remove it or give another --out")
    if args.npy_dir is not None:
        if not os.path.isdir(args.npy_dir):
            raise PathProblem(f"--npy-dir '{args.npy_dir}' is not a folder")
        check_writable_folder(args.npy_dir, f"--npy-dir '{args.npy_dir}'")
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)  # before the runs: it holds the memmap strategy's .npy by default
    try:
        report = run_report(
            args.source,
            size=args.size,
            layout=args.layout,
            color=args.color,
            resize=args.resize,
            limit=args.limit,
            strategies=args.strategies,
            workers=args.workers,
            npy_dir=args.npy_dir or out,
            echo=say,
        )
    except BaseException:
        if created and not os.listdir(out):  # a mistyped SOURCE leaves no empty folder behind
            os.rmdir(out)
        raise
    written = write_report(report, out)
    say()
    for line in console_lines(report):
        say(line)
    say(f"wrote    {written['json']}")
    say(f"wrote    {written['markdown']}")
    if written["plot"]:
        say(f"wrote    {written['plot']}")
    else:
        say(f"no plot  memory.png needs matplotlib: {PLOT_HINT}")
    failed = [run for run in report.runs if run.status == "failed"]
    if failed:
        print(f"preload: error: {failed[0].detail}", file=sys.stderr)
        return EXIT_FAILED
    if report.checksums_match is False:
        print("preload: error: the strategies produced different arrays (see the checksums)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


COMMANDS = {"demo": _demo, "load": _load, "build": _build, "info": _info, "verify": _verify, "report": _report}


def error_line(exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code for an error that ends a command (see the table above)."""
    if isinstance(exc, PathProblem):
        return str(exc), exc.code
    if isinstance(exc, SizeMismatchError):
        return _size_hint(exc)
    if isinstance(exc, (OptionError, SourceError)):
        return cli_words(str(exc)), EXIT_USAGE
    if isinstance(exc, StaleCacheError):
        return cli_words(str(exc)), EXIT_STALE
    if isinstance(exc, IncompleteCacheError):
        return cli_words(str(exc)), EXIT_NO_CACHE
    if isinstance(exc, InsufficientDiskError):
        return cli_words(str(exc)), EXIT_FAILED
    if isinstance(exc, ImageDecodeError):
        return f"{exc}; --on-error skip leaves such files out (--on-error zero keeps a zero row)", EXIT_FAILED
    if isinstance(exc, PreloadError):
        cause = exc.__cause__
        if isinstance(cause, OSError) and is_path_mistake(cause):
            return cli_words(str(exc)), EXIT_USAGE
        return cli_words(str(exc)), EXIT_FAILED
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --size or --limit, or --out FILE.npy", EXIT_FAILED
    raise exc


class _CliLog(logging.Handler):
    """The library's warnings as ``preload: warning: ...`` lines in the command line's words.

    The loader's "files were not loaded" warning is dropped: the command
    prints the failures itself (``failed`` lines, ``--failed-list``).
    """

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "were not loaded" in text:
            return
        with contextlib.suppress(Exception):
            warn(cli_words(text))


def main(argv=None) -> int:
    """Run the command line; returns the exit code (see the module docstring's table).

    A Ctrl-C ends it with one line and exit 130 wherever it lands: while the
    options are parsed, during the work, in the clean-up after an error or at
    the final flush. What the command was writing is left as an interrupted
    build leaves it: resumable, never half-renamed into place.
    """
    try:
        return _run(argv)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError, KeyboardInterrupt):
            print("preload: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logger = logging.getLogger("preload")
    handler = _CliLog()
    logger.addHandler(handler)
    try:
        code = COMMANDS[args.command](args)
    except BrokenPipeError:  # stdout closed by its reader: not the user's error
        _stdout_to_devnull()
        return EXIT_OK
    except (PreloadError, OSError, MemoryError) as exc:
        message, code = error_line(exc)
        print(f"preload: error: {message}", file=sys.stderr)
        return code
    finally:
        logger.removeHandler(handler)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
    return code


__all__ = ["main", "build_parser", "cli_words", "package_version"]
