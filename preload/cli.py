"""Command line front end: ``preload demo | load | build | info | verify | report``.

Exit codes: 0 success (``verify``: the cache is complete and fresh), 1 the
work failed (a file, the memory check, ...; ``verify``: the cache is stale),
2 a usage error (a bad option value, also when the library is the one that
rejects it), 3 no complete cache at that path (missing, an unfinished build,
damaged), 130 interrupted. User mistakes print one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable

from . import __version__
from .cache import build_cache, cache_info, verify_cache
from .errors import IncompleteCacheError, OptionError, PreloadError, StaleCacheError, TargetError
from .loader import load
from .measure import STRATEGIES, PeakSampler
from .options import OPTIONS, parse_size
from .report import DEFAULT_SAMPLES, PLOT_HINT, console_lines, run_report, write_report

EPILOG = """examples:
  preload demo                                  # 400 sample photos -> 256x256 NCHW, timed
  preload load data/train --size 224 --layout nchw --out train.npy
  preload report data/train --limit 4000 --out report/   # peak memory: list-then-stack vs preload
  preload build data/train cache/train.npy --size 256 --layout nchw --workers 2
  preload build /shared/train /shared/cache/train.npy --size 256 --scheduler tcp://scheduler:8786   # on Dask
  preload info cache/train.npy --json
  preload verify cache/train.npy               # exit 0 fresh, 1 stale, 3 not a complete cache
"""

EXIT_STALE = 1
SCHEDULER_TIMEOUT = 10  # seconds to reach a --scheduler before giving up
EXIT_NO_CACHE = 3


def argument_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type=`` from a :mod:`preload.options` parser: its OptionError becomes a usage error (exit 2).

    argparse keeps the message only of an ``ArgumentTypeError``; any other
    ValueError would be reported as "invalid value".
    """

    def convert(text: str):
        try:
            return parse(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

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


# The command line's own defaults where they differ from the API's: a size for the
# commands that need one is given per command, and arrays default to NCHW here.
CLI_DEFAULTS = {"layout": "NCHW"}


def _add_option(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add the option ``name`` of :data:`preload.options.OPTIONS` with its one description."""
    option = OPTIONS[name]
    allowed = f"{', '.join(option.allowed)}; " if option.allowed else ""
    kwargs.setdefault("default", CLI_DEFAULTS.get(name, option.default))
    parser.add_argument(option.flag, help=f"{option.help} ({allowed}default: %(default)s)", **kwargs)


def add_decode_options(parser: argparse.ArgumentParser, *, default_size) -> None:
    """Add ``--size --layout --color --resize`` (how each image becomes a row) to ``parser``.

    Values are checked by the library (a bad one is a one-line error, exit 2),
    except the size's syntax, which argparse checks.
    """
    _add_option(parser, "size", type=argument_type(parse_size), default=default_size, metavar="N|HxW")
    for name in ("layout", "color", "resize"):
        _add_option(parser, name)


def add_workers_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--workers``; the library refuses values below 1, so every command says the same about 0."""
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: every usable core)")


def _add_load_options(parser: argparse.ArgumentParser, default_size) -> None:
    """The options of the commands that decode a whole source into an array: demo, load, build."""
    add_decode_options(parser, default_size=default_size)
    add_workers_option(parser)
    _add_option(parser, "on_error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
        description="Run list-then-np.stack, list-then-np.vstack, preload into RAM and preload into a .npy memmap "
        "on the same files, each in a fresh process; report peak RSS above baseline against the array's size.",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", nargs="?", default=None,
        help="folder of class folders, flat folder, or CSV (default: make built-in sample photos in a temp folder)",
    )
    add_decode_options(parser, default_size=256)
    parser.add_argument(
        "--limit", type=positive_int, default=None,
        help=f"use the first N files (without SOURCE: make N samples, default {DEFAULT_SAMPLES})",
    )
    parser.add_argument(
        "--out", default="report", help="folder for report.json/.md and memory.png (default: %(default)s)"
    )
    parser.add_argument(
        "--strategies", type=_strategy_list, default=list(STRATEGIES),
        help=f"comma-separated, run in this order (default: {','.join(STRATEGIES)})",
    )
    add_workers_option(parser)
    parser.add_argument(
        "--npy-dir", default=None,
        help="where the memmap strategy writes its temporary .npy (default: the --out folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preload",
        description="Load a whole image dataset into one preallocated uint8 array.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"preload {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser("demo", help="make sample photos and load them; print shape, time, peak memory")
    demo.add_argument("--count", type=positive_int, default=400, help="sample images to make (default: %(default)s)")
    demo.add_argument("--dir", default=None, help="where to write the samples (default: a temporary folder)")
    _add_load_options(demo, 256)

    load_cmd = commands.add_parser("load", help="load a folder / CSV into an array and report it")
    load_cmd.add_argument("source", help="folder of class folders, flat folder, or CSV file")
    load_cmd.add_argument("--out", default=None, help="write the array to this .npy file")
    _add_load_options(load_cmd, None)

    build = commands.add_parser("build", help="build (or resume, or refresh) an on-disk cache")
    build.add_argument("source", help="folder of class folders, flat folder, or CSV file")
    build.add_argument("cache", help="the cache's .npy path")
    build.add_argument("--force", action="store_true", help="discard what is at CACHE and start over")
    build.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="decode on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://host:8786; needs "
                            "preload[dask]); SOURCE and CACHE must be at the same paths on every worker, and "
                            "--workers is ignored")
    _add_load_options(build, None)

    for name, text in (("info", "describe a cache: shape, options, classes, failures"),
                       ("verify", "check a cache is complete and fresh (exit 0), stale (1) or absent (3)")):
        command = commands.add_parser(name, help=text)
        command.add_argument("cache", help="the cache's .npy path")
        command.add_argument("--json", action="store_true", help="print JSON instead of text")

    _add_report_parser(commands)
    return parser


def _decode_kwargs(args) -> dict:
    """The options every command that loads a source shares (see _add_load_options)."""
    return {
        "size": args.size,
        "layout": args.layout,
        "color": args.color,
        "resize": args.resize,
        "workers": args.workers,
        "on_error": args.on_error,
        "progress": False if args.no_progress else None,
    }


def _load_measured(source, args, out=None) -> tuple:
    with PeakSampler() as sampler:
        ds = load(source, out=out, **_decode_kwargs(args))
    return ds, sampler


def _print_load(ds, sampler: PeakSampler) -> None:
    seconds = sampler.seconds
    array_bytes = ds.images.nbytes
    ratio = sampler.peak_above_baseline / array_bytes if array_bytes else float("nan")
    print(f"images   {ds.images.shape} {ds.images.dtype} {ds.layout} ({array_bytes / 1e6:.1f} MB)")
    if ds.classes is not None:
        print(f"classes  {len(ds.classes)}: {', '.join(ds.classes[:8])}{' ...' if len(ds.classes) > 8 else ''}")
    print(f"time     {seconds:.2f} s ({len(ds) / seconds:.0f} images/s)")
    print(
        f"memory   peak RSS {sampler.peak / 1e6:.1f} MB, {sampler.peak_above_baseline / 1e6:.1f} MB above the "
        f"{sampler.baseline / 1e6:.1f} MB baseline = {ratio:.2f} x the array"
    )
    if ds.failed:
        print(f"failed   {len(ds.failed)} file(s); first: {ds.failed[0]}")


def _demo(args) -> int:
    from .samples import make_samples

    with contextlib.ExitStack() as stack:  # a temporary folder goes away afterwards; --dir stays
        folder = args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="preload-demo-"))
        started = time.perf_counter()
        make_samples(folder, args.count)
        print(f"samples  {args.count} images from scikit-image's photos in {folder} "
              f"({time.perf_counter() - started:.1f} s to make)")
        _print_load(*_load_measured(folder, args))
    return 0


def _load(args) -> int:
    ds, sampler = _load_measured(args.source, args, out=args.out)
    if args.out:
        print(f"wrote    {os.path.abspath(args.out)}")
    _print_load(ds, sampler)
    return 0


def _build(args) -> int:
    with contextlib.ExitStack() as stack:
        client = _dask_client(args.scheduler, stack) if args.scheduler else None
        sampler = stack.enter_context(PeakSampler())
        ds = build_cache(args.source, args.cache, force=args.force, client=client, **_decode_kwargs(args))
    print(f"cache    {os.path.abspath(args.cache)}")
    _print_load(ds, sampler)
    return 0


def _dask_client(address: str, stack: contextlib.ExitStack):
    """A client of the scheduler at ``address``, closed by ``stack``; the only place the CLI imports Dask.

    While it is open, the per-worker summary that :mod:`preload.distributed`
    logs at INFO is printed on stdout with the rest of the report.
    """
    try:
        from distributed import Client
    except ImportError:
        message = "--scheduler needs Dask, which is not installed: pip install 'preload[dask]'"
        raise OptionError(message) from None
    from .distributed import ClusterError

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
    # A handler of our own would keep warnings from logging's last-resort
    # stderr output, so that one is attached explicitly next to it.
    for handler in (summary, logging.lastResort):
        if handler is None:  # lastResort switched off by the embedding program
            continue
        logger.addHandler(handler)
        stack.callback(logger.removeHandler, handler)
    stack.callback(logger.setLevel, logger.level)
    logger.setLevel(logging.INFO)
    return client


def _info(args) -> int:
    info = cache_info(args.cache)
    if args.json:
        print(json.dumps(info, indent=1))
    elif info["status"] == "missing":
        print(f"no cache at '{info['path']}'")
    elif info["status"] == "partial":
        print(f"unfinished build at '{info['path']}': {info['done']:,} of {info['count']:,} images written "
              f"(shape {tuple(info['shape'])}); run the same build again to finish it")
    else:
        options = info["options"]
        size = "x".join(map(str, options["size"]))
        print(f"cache    {info['path']}")
        print(f"images   {info['images']:,} of {info['count']:,} files, shape {tuple(info['shape'])} uint8, "
              f"{info['layout']}, {info['bytes'] / 1e6:.1f} MB")
        classes = info["classes"]
        if classes:
            print(f"classes  {len(classes)}: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}")
        print(f"options  size {size}, color {options['color']}, resize {options['resize']}, "
              f"exif {options['exif']}, reduce {options['reduce']}")
        print(f"failed   {len(info['failed'])}" + (f"; first: '{info['failed'][0]['path']}': "
                                                    f"{info['failed'][0]['detail']}" if info["failed"] else ""))
        print(f"built    {info['created']} in {info['build_seconds']:.1f} s with preload "
              f"{info['versions']['preload']}, OpenCV {info['versions']['opencv']}")
    return 0 if info["status"] == "complete" else EXIT_NO_CACHE


def _verify(args) -> int:
    result = verify_cache(args.cache)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['status']}: {result['problem'] or result['path']}")
    return {"fresh": 0, "stale": EXIT_STALE}.get(result["status"], EXIT_NO_CACHE)


def _report(args) -> int:
    out = os.fspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        message = f"--out '{out}' exists and is not a folder"
        raise OptionError(message)
    if args.npy_dir is not None and not os.path.isdir(args.npy_dir):
        message = f"--npy-dir '{args.npy_dir}' is not a folder"
        raise OptionError(message)
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
            echo=lambda line: print(line, flush=True),
        )
    except BaseException:
        if created and not os.listdir(out):  # a mistyped SOURCE leaves no empty folder behind
            os.rmdir(out)
        raise
    written = write_report(report, out)
    print()
    print("\n".join(console_lines(report)))
    print(f"wrote    {written['json']}")
    print(f"wrote    {written['markdown']}")
    if written["plot"]:
        print(f"wrote    {written['plot']}")
    else:
        print(f"no plot  memory.png needs matplotlib: {PLOT_HINT}")
    failed = [run for run in report.runs if run.status == "failed"]
    if failed:
        print(f"preload: error: {failed[0].detail}", file=sys.stderr)
        return 1
    if report.checksums_match is False:
        print("preload: error: the strategies produced different arrays (see the checksums)", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"demo": _demo, "load": _load, "build": _build, "info": _info, "verify": _verify, "report": _report}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (OptionError, TargetError) as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return 2
    except StaleCacheError as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return EXIT_STALE
    except IncompleteCacheError as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return EXIT_NO_CACHE
    except PreloadError as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preload: interrupted", file=sys.stderr)
        return 130
