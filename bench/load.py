"""Benchmark: ``preload.load`` against the list-then-``np.stack`` way, for speed and peak memory.

Every measurement runs in a fresh interpreter, by the harness of ``preload
report`` (:func:`preload.measure.measure`), so one strategy's freed-but-kept
heap, page tables or OpenCV thread pools cannot inflate or hide the next
one's peak. The child imports numpy, OpenCV and preload first, then measures
RSS above that baseline while the strategy runs; both strategies decode with
preload's own decoder, so the arrays are bit-identical. This script runs the
two strategies interleaved, repeat after repeat, and prints the medians.

The figure that matters is ``ratio``: peak RSS above the baseline divided by
the bytes of the finished array. Building a list of N images and stacking it
holds both at once (about 2); filling one preallocated array should stay
close to 1.

Run from a checkout (preload need not be installed)::

    python bench/load.py --count 4000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

from _common import ROOT, prepare_data, require_positive, use_checkout

STRATEGIES = ("preload", "naive-stack")
HARNESS = {"preload": "preload", "naive-stack": "naive"}  # this script's names -> preload.measure.STRATEGIES
TARGET_RATIO = 1.05  # from the issue: preload may cost at most 5% above the array itself

EPILOG = """examples:
  python bench/load.py --count 4000                    # the issue's benchmark (about 0.8 GB array)
  python bench/load.py --count 200 --repeats 1 --json results.json
"""


# ------------------------------------------------------------------ strategies and data


def _measure(strategy: str, paths: list[str], args: argparse.Namespace) -> dict:
    """One run of ``strategy`` in a fresh interpreter, by preload.measure's harness."""
    from preload import DecodeOptions
    from preload.measure import measure

    options = DecodeOptions.create(size=args.size, layout=args.layout)
    run = measure(HARNESS[strategy], paths, options, workers=args.workers)
    if not run.ok:
        raise RuntimeError(f"the {strategy} run failed: {run.detail}")
    result = {
        name: getattr(run, name)
        for name in (
            "seconds", "images", "images_per_s", "shape", "array_bytes", "baseline_rss", "peak_rss",
            "peak_above_baseline", "ratio", "ru_maxrss", "parent_ru_maxrss", "checksum",
        )
    }
    return {"strategy": strategy, **result, "samples": run.sample_count}


# ------------------------------------------------------------------ report


def _medians(runs: list[dict]) -> dict[str, dict]:
    table = {}
    for strategy in STRATEGIES:
        mine = [run for run in runs if run["strategy"] == strategy]
        if not mine:
            continue
        table[strategy] = {
            "runs": len(mine),
            "images": mine[0]["images"],
            "array_bytes": mine[0]["array_bytes"],
            "seconds": statistics.median(run["seconds"] for run in mine),
            "images_per_s": statistics.median(run["images_per_s"] for run in mine),
            "peak_above_baseline": statistics.median(run["peak_above_baseline"] for run in mine),
            "ratio": statistics.median(run["ratio"] for run in mine),
            "ru_maxrss_above_baseline": statistics.median(run["ru_maxrss"] - run["baseline_rss"] for run in mine),
        }
    return table


def _print_table(medians: dict[str, dict], array_bytes: int, parent_maxrss: int) -> None:
    print()
    print(f"medians; array {array_bytes / 1e6:.1f} MB; 'ratio' = peak RSS above baseline / array bytes")
    header = f"{'strategy':<12} {'runs':>4} {'images':>7} {'seconds':>8} {'images/s':>9} {'peak MB':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for strategy, row in medians.items():
        print(
            f"{strategy:<12} {row['runs']:>4} {row['images']:>7} {row['seconds']:>8.2f} "
            f"{row['images_per_s']:>9.1f} {row['peak_above_baseline'] / 1e6:>8.1f} {row['ratio']:>6.3f}"
        )
    checks = ", ".join(f"{name} {row['ru_maxrss_above_baseline'] / 1e6:.1f} MB" for name, row in medians.items())
    print(f"check    kernel's ru_maxrss above baseline: {checks}")
    print(
        f"         (it cannot miss a spike, but a child's starts at the parent's peak, {parent_maxrss / 1e6:.0f} MB,"
        " so it confirms the sampler only above that)"
    )
    if "preload" in medians and "naive-stack" in medians:
        fast, slow = medians["preload"], medians["naive-stack"]
        speed = fast["images_per_s"] / slow["images_per_s"]
        memory = fast["peak_above_baseline"] / slow["peak_above_baseline"] if slow["peak_above_baseline"] else 0.0
        verdict = "met" if fast["ratio"] <= TARGET_RATIO else "NOT met"
        print(f"speed    preload / naive-stack = {speed:.2f} x the images/s")
        print(f"memory   preload peak = {memory:.2f} x naive-stack's peak")
        print(
            f"target   preload ratio {fast['ratio']:.3f} <= {TARGET_RATIO}: {verdict}; "
            f"naive-stack ratio {slow['ratio']:.3f} (expected about 2)"
        )


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/load.py",
        description="Time preload.load against list-then-np.stack and compare their peak memory, "
        "each run in a fresh subprocess.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=4000, help="sample images to load (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="output height and width (default: %(default)s)")
    parser.add_argument(
        "--layout", type=str.upper, choices=("NCHW", "NHWC"), default="NCHW", help="array layout (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per strategy (default: %(default)s)")
    parser.add_argument(
        "--data",
        default=None,
        help="image folder; made if it has fewer than --count images (default: bench/data/samples-<count>)",
    )
    parser.add_argument("--workers", type=int, default=None, help="preload's threads (default: every core)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every run and the medians here")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_positive(parser, args, ("count", "size", "repeats", "workers"))
    use_checkout()
    from preload import Manifest
    from preload import measure as harness

    args.data = os.fspath(args.data or ROOT / "bench" / "data" / f"samples-{args.count}")
    if os.path.exists(args.data) and not os.path.isdir(args.data):
        parser.error(f"--data '{args.data}' exists and is not a folder")
    machine = harness.machine()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    workers = args.workers or machine["usable_cores"]
    print(f"date     {date}")
    print(
        f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM, {machine['platform']}"
    )
    print(f"versions python {machine['python']}, numpy {machine['numpy']}, opencv {machine['opencv']}")
    print(
        f"setup    size {args.size}x{args.size} {args.layout}, {args.repeats} repeats, preload workers {workers}, "
        "naive-stack single-threaded"
    )
    prepare_data(args.data, args.count)
    paths = Manifest.from_folder(args.data).paths
    harness.warm_cache(paths, budget=2**62)  # always: the timings need a warm cache

    runs = []
    try:
        for repeat in range(args.repeats):
            # Alternate which strategy goes first, so drift (thermal, page cache) does not favour one.
            order = STRATEGIES[repeat % 2 :] + STRATEGIES[: repeat % 2]
            for strategy in order:
                run = _measure(strategy, paths, args)
                run["repeat"] = repeat
                runs.append(run)
                print(
                    f"  run {repeat + 1}/{args.repeats} {strategy:<12} {run['seconds']:7.2f} s "
                    f"{run['images_per_s']:8.1f} img/s  peak +{run['peak_above_baseline'] / 1e6:7.1f} MB  "
                    f"ratio {run['ratio']:.3f}",
                    flush=True,
                )
    except RuntimeError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1

    medians = _medians(runs)
    _print_table(medians, runs[0]["array_bytes"], max(run["parent_ru_maxrss"] for run in runs))
    checksums = {run["checksum"] for run in runs}
    same = "identical in every run" if len(checksums) == 1 else f"NOT identical: {len(checksums)} different"
    print(f"arrays   {same} (sha256 {sorted(checksums)[0][:16]}...)")
    if args.json:
        report = {
            "date": date,
            "machine": machine,
            "options": vars(args),
            "runs": runs,
            "medians": medians,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote    {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
