"""Benchmark: how peak memory grows with the number of images, per strategy.

Runs the harness of ``preload report`` (:func:`preload.measure.measure`: every
strategy in a fresh interpreter, peak RSS above the post-import baseline) at
several N on the same sample photos, and prints the peak for each N and
strategy, its ratio to the array's bytes, and the least-squares slope of peak
against N, i.e. what one more image costs (list-then-stack: about two
array rows; preload: one; preload into a memmap: about none of anonymous
memory).

The N-image set is the first N files that ``make_samples(max N)`` wrote
(file ``i`` is named ``{i:06d}``), which are exactly the files
``make_samples(N)`` would write, so each N measures its own sample set.

Run from a checkout (preload need not be installed)::

    python bench/memory.py --counts 1000,2000,4000,8000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from _common import ROOT, SEED, count_images, first_made, use_checkout

EPILOG = """examples:
  python bench/memory.py                                   # N = 1000, 2000, 4000, 8000 (a 1.6 GB array at 8000)
  python bench/memory.py --counts 200,400 --size 128 --strategies naive,preload
"""


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive image counts, e.g. 1000,2000")
    return counts


def _prepare_data(folder: str, count: int) -> list[str]:
    """All image paths in ``folder``, after making ``count`` samples there if it holds fewer."""
    from preload import Manifest
    from preload.measure import make_samples_subprocess

    found = count_images(folder)
    if found < count:
        print(f"data     {folder}: {found} images, making {count} ...", flush=True)
        started = time.perf_counter()
        make_samples_subprocess(folder, count, seed=SEED)
        print(f"data     made in {time.perf_counter() - started:.1f} s", flush=True)
    paths = Manifest.from_folder(folder).paths
    print(f"data     {folder}: {len(paths)} images", flush=True)
    return paths


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (nan with fewer than two points)."""
    if len(xs) < 2:
        return float("nan")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def _print_tables(results: dict[int, dict[str, dict]], names: list[str], row_bytes: int) -> None:
    counts = sorted(results)
    width = 16
    print()
    print("peak RSS above the post-import baseline, MB (ratio = that / array bytes)")
    header = f"{'N':>6} {'array MB':>9} " + " ".join(f"{name:>{width}}" for name in names)
    if "preload-memmap" in names:
        header += f" {'memmap anon MB':>{width}}"
    print(header)
    print("-" * len(header))
    for count in counts:
        row = results[count]
        array_bytes = count * row_bytes
        cells = []
        for name in names:
            run = row[name]
            text = f"{run['peak_above_baseline'] / 1e6:.1f} ({run['ratio']:.3f})" if run["ok"] else run["status"]
            cells.append(f"{text:>{width}}")
        line = f"{count:>6} {array_bytes / 1e6:>9.1f} " + " ".join(cells)
        if "preload-memmap" in names:
            mapped = row["preload-memmap"]
            anon = mapped.get("anon_above_baseline")
            text = f"{anon / 1e6:.1f}" if mapped["ok"] and anon is not None else "n/a"
            line += f" {text:>{width}}"
        print(line)

    print()
    print(f"growth: least-squares slope of peak against N; one image's slot is {row_bytes / 1e6:.3f} MB")
    for name in names:
        points = [(count, results[count][name]) for count in counts if results[count][name]["ok"]]
        slope = _slope([c for c, _ in points], [run["peak_above_baseline"] for _, run in points])
        ratios = ", ".join(f"{run['ratio']:.3f}" for _, run in points)
        print(
            f"  {name:<15} {slope * 1000 / 1e6:8.1f} MB per 1000 images = {slope / row_bytes:.3f} x a slot; "
            f"ratio per N: {ratios}"
        )
    if "preload-memmap" in names:
        points = [(c, results[c]["preload-memmap"]) for c in counts if results[c]["preload-memmap"]["ok"]]
        anon = [run.get("anon_above_baseline") for _, run in points]
        if points and None not in anon:
            slope = _slope([c for c, _ in points], anon)
            per_image = slope / row_bytes
            print(f"  {'memmap anon':<15} {slope * 1000 / 1e6:8.1f} MB per 1000 images = {per_image:.3f} x a slot")
    checks = [
        len({results[c][name]["checksum"] for name in names if results[c][name]["ok"]}) <= 1 for c in counts
    ]
    print(f"arrays   {'identical across strategies at every N' if all(checks) else 'DIFFER at some N'} (sha256)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/memory.py",
        description="Peak memory of list-then-stack vs preload at several N, each run in a fresh subprocess.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--counts", type=_counts, default=[1000, 2000, 4000, 8000], help="image counts (default: 1000,2000,4000,8000)"
    )
    parser.add_argument("--size", type=int, default=256, help="output height and width (default: %(default)s)")
    parser.add_argument(
        "--layout", type=str.upper, choices=("NCHW", "NHWC"), default="NCHW", help="array layout (default: %(default)s)"
    )
    parser.add_argument(
        "--strategies", default=None, help="comma-separated (default: naive,naive-vstack,preload,preload-memmap)"
    )
    parser.add_argument(
        "--data", default=None, help="sample folder, made if too small (default: bench/data/samples-<largest N>)"
    )
    parser.add_argument("--workers", type=int, default=None, help="preload's threads (default: every core)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every run here (without samples)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 1 or (args.workers is not None and args.workers < 1):
        parser.error("--size and --workers must be positive")
    use_checkout()
    from preload import DecodeOptions
    from preload import measure as harness
    from preload.report import strategy_line

    names = list(harness.STRATEGIES) if args.strategies is None else args.strategies.split(",")
    unknown = [name for name in names if name not in harness.STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)}; use {', '.join(harness.STRATEGIES)}")
    options = DecodeOptions.create(size=args.size, layout=args.layout)
    data = os.fspath(args.data or ROOT / "bench" / "data" / f"samples-{max(args.counts)}")
    machine = harness.machine()
    print(f"date     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM; python {machine['python']}, numpy {machine['numpy']}, "
        f"opencv {machine['opencv']}"
    )
    print(f"setup    {args.size}x{args.size} {options.layout}, N = {', '.join(map(str, args.counts))}, one run each")
    every = _prepare_data(data, max(args.counts))
    harness.warm_cache(every)
    row_bytes = 1
    for side in options.slot_shape():
        row_bytes *= side

    results: dict[int, dict[str, dict]] = {}
    for count in args.counts:
        paths = first_made(every, count)
        if len(paths) < count:
            print(f"bench: error: only {len(paths)} images for N = {count}", file=sys.stderr)
            return 1
        results[count] = {}
        for name in names:
            run = harness.measure(name, paths, options, workers=args.workers)
            if run.status == "failed":
                print(f"bench: error: N = {count}, {name}: {run.detail}", file=sys.stderr)
                return 1
            print(f"  N={count:<6} {strategy_line(run).strip()}", flush=True)
            record = {k: v for k, v in vars(run).items() if k != "samples"}
            results[count][name] = {**record, "ok": run.ok}
    _print_tables(results, names, row_bytes)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "options": vars(args), "results": results}, handle, indent=1)
        print(f"wrote    {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
