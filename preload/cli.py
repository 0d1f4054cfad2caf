"""Command line front end: ``preload demo``, ``preload load`` and ``preload report``.

Exit codes: 0 success, 1 the work failed (a file, the memory check, ...),
2 a usage error (a bad option value, also when the library is the one that
rejects it). User mistakes print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from . import __version__
from .errors import OptionError, PreloadError, TargetError
from .loader import load
from .memory import PeakSampler
from .report import add_parser as add_report_parser
from .report import run_command as run_report_command

EPILOG = """examples:
  preload demo                                  # 400 sample photos -> 256x256 NCHW, timed
  preload load data/train --size 224 --layout nchw --out train.npy
  preload report data/train --limit 4000 --out report/   # peak memory: list-then-stack vs preload
"""


def _size(text: str):
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW (e.g. 256 or 224x320)") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"size {text!r} is not N or HxW (e.g. 256 or 224x320)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not accepted; give a positive number")
    return value


def _add_decode_options(parser: argparse.ArgumentParser, default_size) -> None:
    parser.add_argument("--size", type=_size, default=default_size, help="N or HxW (default: %(default)s)")
    parser.add_argument("--layout", default="NCHW", help="NHWC or NCHW (default: %(default)s)")
    parser.add_argument("--color", default="rgb", help="rgb, bgr or gray (default: %(default)s)")
    parser.add_argument("--resize", default="stretch", help="stretch, fit, cover or shorter (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: every core)")
    parser.add_argument("--on-error", default="raise", help="raise, skip or zero (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


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
    demo.add_argument("--count", type=_positive, default=400, help="sample images to make (default: %(default)s)")
    demo.add_argument("--dir", default=None, help="where to write the samples (default: a temporary folder)")
    _add_decode_options(demo, 256)

    load_cmd = commands.add_parser("load", help="load a folder / CSV into an array and report it")
    load_cmd.add_argument("source", help="folder of class folders, flat folder, or CSV file")
    load_cmd.add_argument("--out", default=None, help="write the array to this .npy file")
    _add_decode_options(load_cmd, None)

    add_report_parser(commands)  # its options and its run live in preload/report.py
    return parser


def _run_load(source, args, out=None) -> tuple:
    with PeakSampler() as sampler:
        ds = load(
            source,
            size=args.size,
            layout=args.layout,
            color=args.color,
            resize=args.resize,
            workers=args.workers,
            on_error=args.on_error,
            out=out,
            progress=False if args.no_progress else None,
        )
    return ds, sampler


def _report(ds, sampler: PeakSampler) -> None:
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "report":
            return run_report_command(args)
        if args.command == "demo":
            from .samples import make_samples

            folder = args.dir or tempfile.mkdtemp(prefix="preload-demo-")
            started = time.perf_counter()
            make_samples(folder, args.count)
            print(f"samples  {args.count} images from scikit-image's photos in {folder} "
                  f"({time.perf_counter() - started:.1f} s to make)")
            ds, sampler = _run_load(folder, args)
        else:
            ds, sampler = _run_load(args.source, args, out=args.out)
            if args.out:
                print(f"wrote    {os.path.abspath(args.out)}")
        _report(ds, sampler)
    except (OptionError, TargetError) as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return 2
    except PreloadError as exc:
        print(f"preload: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preload: interrupted", file=sys.stderr)
        return 130
    return 0
