"""Benchmark: ``preload.load`` against the list-then-``np.stack`` way, for speed and peak memory.

Every measurement runs in a fresh interpreter (this script re-run with
``--child``), so one strategy's freed-but-kept heap, page tables or OpenCV
thread pools cannot inflate or hide the next one's peak. The child imports
numpy, OpenCV and preload first, then measures RSS above that baseline while
the strategy runs, and prints one JSON line; the parent runs the strategies
interleaved, repeat after repeat, and prints the medians.

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
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("preload", "naive-stack")
SEED = 0  # fixed, so every machine benchmarks the same files
TARGET_RATIO = 1.05  # from the issue: preload may cost at most 5% above the array itself

EPILOG = """examples:
  python bench/load.py --count 4000                    # the issue's benchmark (about 0.8 GB array)
  python bench/load.py --count 200 --repeats 1 --json results.json
"""


def _use_checkout() -> None:
    # Run as a script, sys.path[0] is bench/, not the checkout that holds preload.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------ strategies


def _load_preload(folder: str, size: int, layout: str, workers: int | None):
    import preload

    return preload.load(folder, size=size, layout=layout, workers=workers, progress=False).images


def _load_naive(folder: str, size: int, layout: str, workers: int | None):
    """What tutorials do: decode every file, keep it in a list, stack at the end (one thread; ``workers`` unused)."""
    import cv2
    import numpy as np

    import preload

    images = []
    for path in preload.Manifest.from_folder(folder).paths:
        image = cv2.imread(path)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if layout == "NCHW":
            image = image.transpose(2, 0, 1)
        images.append(image)
    return np.stack(images)


LOADERS = {"preload": _load_preload, "naive-stack": _load_naive}


def _child(args: argparse.Namespace) -> int:
    """Measure one strategy in this (fresh) process; print one JSON line."""
    import gc
    import importlib

    # Loaded before the baseline, so their code and data are not counted as the strategy's cost.
    for name in ("numpy", "cv2", "preload"):
        importlib.import_module(name)
    from preload.memory import PeakSampler

    loader = LOADERS[args.child]
    gc.collect()
    with PeakSampler() as sampler:
        started = time.perf_counter()
        images = loader(args.data, args.size, args.layout, args.workers)
        seconds = time.perf_counter() - started
        # `images` stays alive until the sampler stops: the finished array is part of the peak.
    count = int(images.shape[0])
    result = {
        "strategy": args.child,
        "seconds": seconds,
        "images": count,
        "images_per_s": count / seconds,
        "shape": list(images.shape),
        "array_bytes": int(images.nbytes),
        "baseline_rss": sampler.baseline,
        "peak_rss": sampler.peak,
        "peak_above_baseline": sampler.peak_above_baseline,
        "ratio": sampler.peak_above_baseline / images.nbytes,
        "ru_maxrss": sampler.ru_maxrss,
        "samples": len(sampler.samples),
    }
    print(json.dumps(result), flush=True)
    return 0


def _measure(strategy: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        os.fspath(Path(__file__).resolve()),
        "--child",
        strategy,
        "--data",
        args.data,
        "--size",
        str(args.size),
        "--layout",
        args.layout,
    ]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    parent_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        message = f"the {strategy} run failed (exit code {done.returncode}):\n{done.stderr.strip()}"
        raise RuntimeError(message)
    run = json.loads(lines[-1])
    # The child's ru_maxrss starts at this value (Linux keeps it across fork and exec).
    run["parent_ru_maxrss"] = parent_maxrss
    return run


# ------------------------------------------------------------------ data and machine


def _prepare_data(folder: str, count: int) -> int:
    """Make ``count`` sample images in ``folder`` unless at least that many are there; return how many."""
    from preload import Manifest, SourceError

    try:
        found = len(Manifest.from_folder(folder))
    except SourceError:  # missing or empty folder
        found = 0
    if found >= count:
        print(f"data     {folder}: {found} images (reused)", flush=True)
        return found
    print(f"data     {folder}: {found} images, making {count} ...", flush=True)
    started = time.perf_counter()
    # In a subprocess: Linux hands a parent's peak RSS (ru_maxrss) down to every child it
    # starts, so the parent must stay small for the children's ru_maxrss to mean anything.
    code = (
        "import sys; from preload.samples import make_samples; "
        "make_samples(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", code, folder, str(count), str(SEED)], check=True, env=env)
    found = len(Manifest.from_folder(folder))
    print(f"data     {found} images made in {time.perf_counter() - started:.1f} s", flush=True)
    return found


def _warm_cache(folder: str) -> None:
    """Read every file once, so the first strategy measured does not pay for a cold page cache alone."""
    from preload import Manifest

    for path in Manifest.from_folder(folder).paths:
        with open(path, "rb") as handle:
            handle.read()


def _machine() -> dict:
    import cv2
    import numpy as np
    import psutil

    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # not Linux
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": model or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


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
    parser.add_argument("--child", choices=STRATEGIES, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("count", "size", "repeats", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} {value} is not accepted; use a positive integer")
    _use_checkout()
    if args.child:
        return _child(args)

    args.data = os.fspath(args.data or ROOT / "bench" / "data" / f"samples-{args.count}")
    if os.path.exists(args.data) and not os.path.isdir(args.data):
        parser.error(f"--data '{args.data}' exists and is not a folder")
    machine = _machine()
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
    _prepare_data(args.data, args.count)
    _warm_cache(args.data)

    runs = []
    try:
        for repeat in range(args.repeats):
            # Alternate which strategy goes first, so drift (thermal, page cache) does not favour one.
            order = STRATEGIES[repeat % 2 :] + STRATEGIES[: repeat % 2]
            for strategy in order:
                run = _measure(strategy, args)
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
    if args.json:
        report = {
            "date": date,
            "machine": machine,
            "options": {k: v for k, v in vars(args).items() if k != "child"},
            "runs": runs,
            "medians": medians,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote    {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
