"""Benchmark: build an on-disk cache with ``preload.build_cache``, then time ``open_cache``.

Two questions, each answered in fresh interpreters (this script re-run with
``--child``), so one measurement's heap, page tables or thread pools cannot
leak into the next:

1. **Memory while building.** One child imports numpy, OpenCV and preload,
   takes its baseline from ``/proc/self/status``, then builds the cache while a
   thread samples every 10 ms: total RSS (``VmRSS``) and its parts --
   anonymous (``RssAnon``: heap, thread stacks, what the builder allocated),
   file-backed (``RssFile``: the memory-mapped cache being written) and shared
   memory (``RssShmem``) -- plus the system's ``Dirty`` and ``Writeback``
   bytes from ``/proc/meminfo`` and, every 100 ms (it costs milliseconds),
   the builder's own dirty file pages from ``/proc/self/smaps_rollup``: what
   it wrote into the cache and has not flushed yet. The issue asks for
   anonymous memory that stays flat at any N (<= 100 MB above the baseline)
   and dirty pages flushed as the build goes rather than piling up, so the
   table shows each figure's peak per quarter of the build too: flat rows
   mean nothing grows with N. The sampler keeps maxima in a fixed number of
   time buckets, so it does not itself grow the memory it measures.
2. **Opening.** Each of ``--repeats`` children per mode times one
   ``open_cache(path, check=False)`` or ``open_cache(path)`` (the default
   freshness check: list the source folder and ``stat`` every file), then
   ``len(ds)``, ``ds.labels[:10]`` and reading one image. One untimed open
   runs first, so every timed child sees the same warm page cache (metadata,
   index, source folder inodes). Targets: < 50 ms with ``check=False`` at any
   N, < 50 ms with the check for 5,000 files.

``Dirty`` in ``/proc/meminfo`` is system-wide: another process writing files
shows up in it, so a baseline is printed next to the peak (and ``os.sync()`` runs just before the
build, so freshly made samples are not still waiting to be written back).

Run from a checkout (preload need not be installed)::

    python bench/cache.py --count 5000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, SEED, count_images, import_preload, require_positive, use_checkout

DATA = ROOT / "bench" / "data"
SENTINEL = ".preload-samples.json"  # dot-files are not listed as images; written once all samples exist
CACHE_NAME = "bench-cache.npy"
INTERVAL = 0.01  # seconds between two memory samples
MB = 1e6

TARGET_ANON = 100 * MB  # builder's anonymous RSS above its baseline, at any N
TARGET_OPEN = 0.050  # seconds, open_cache(check=False) at any N, and open_cache() for 5,000 files
TARGET_CHECK_FILES = 5000

MEMINFO_FIELDS = {"Dirty": "dirty", "Writeback": "writeback"}
ROLLUP_FIELDS = {"Private_Dirty": "private_dirty", "Shared_Dirty": "shared_dirty", "Anonymous": "anonymous"}
PARTS = ("rss", "anon", "file", "shmem", "dirty", "writeback", "mapped_dirty")
BUCKETS = 512  # time buckets of the sampler: constant memory however long the build
ROLLUP_EVERY = 10  # samples; smaps_rollup walks the page tables (milliseconds for a GB mapping)
OPEN_STEPS = ("open", "len", "labels", "image")

EPILOG = """examples:
  python bench/cache.py --count 5000                 # the issue's benchmark (about 1 GB cache)
  python bench/cache.py --count 20000 --json r.json  # 4x the N: anonymous memory should not move
  python bench/cache.py --count 200 --repeats 3 --keep --out /tmp/c
"""


# ------------------------------------------------------------------ /proc readers


def _read_kb(path: str, fields: dict[str, str]) -> dict[str, int]:
    """The ``fields`` of a ``/proc`` file whose lines read ``Name:  123 kB``, in bytes; {} without /proc."""
    found = {}
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                key = fields.get(name)
                if key is not None:
                    found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return found


def _memory_now() -> dict[str, int]:
    """This process's RSS and its parts, and the system's dirty and writeback bytes."""
    from preload.measure import read_status

    return {**read_status(), **_read_kb("/proc/meminfo", MEMINFO_FIELDS)}


def _mapped_dirty() -> int | None:
    """Dirty file pages mapped by this process: written to the cache's mapping but not yet flushed.

    ``/proc/self/smaps_rollup`` counts dirty pages of every mapping; anonymous
    pages are always dirty, so dirty minus anonymous is the file-backed part.
    Pages written and then unmapped before a flush are not in it (the builder
    flushes before it unmaps, so only those written in between are missed).
    """
    found = _read_kb("/proc/self/smaps_rollup", ROLLUP_FIELDS)
    if len(found) < len(ROLLUP_FIELDS):
        return None
    return max(0, found["private_dirty"] + found["shared_dirty"] - found["anonymous"])


class Sampler:
    """The highest value of every figure in :data:`PARTS` over time, sampled by a thread.

    Samples land in :data:`BUCKETS` time buckets that keep each figure's
    maximum; when they are full, neighbours merge and each covers twice the
    time. A list of every sample would itself grow the anonymous memory being
    measured (a few MB over a minute); the buckets cost the same few kB for
    any build. -1 marks "not sampled".
    """

    def __init__(self, interval: float):
        import numpy as np

        self._np = np
        self.interval = interval
        self.buckets = np.full((BUCKETS, len(PARTS)), -1, np.int64)
        self.width = interval  # seconds per bucket
        self.count = 0
        self.rollups = 0
        self.rollup_seconds = 0.0
        self._origin = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def sample(self, rollup: bool = False) -> dict[str, int]:
        now = _memory_now()
        if rollup:
            started = time.perf_counter()
            dirty = _mapped_dirty()
            self.rollup_seconds += time.perf_counter() - started
            self.rollups += 1
            if dirty is not None:
                now["mapped_dirty"] = dirty
        row = self._np.array([now.get(part, -1) for part in PARTS], self._np.int64)
        with self._lock:
            index = int((time.perf_counter() - self._origin) / self.width)
            while index >= BUCKETS:
                merged = self._np.maximum(self.buckets[0::2], self.buckets[1::2])
                self.buckets[: BUCKETS // 2] = merged
                self.buckets[BUCKETS // 2 :] = -1
                self.width *= 2
                index //= 2
            self._np.maximum(self.buckets[index], row, out=self.buckets[index])
            self.count += 1
        return now

    def _run(self) -> None:
        taken = 0
        while not self._stop.wait(self.interval):
            taken += 1
            self.sample(rollup=taken % ROLLUP_EVERY == 0)

    def start(self) -> None:
        self._thread.start()

    def begin(self) -> dict[str, int]:
        """Forget what came before, restart the clock, and take the baseline sample."""
        with self._lock:
            self.buckets.fill(-1)
            self.width = self.interval
            self.count = self.rollups = 0
            self.rollup_seconds = 0.0
            self._origin = time.perf_counter()
        return self.sample(rollup=True)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.sample(rollup=True)

    def peaks(self) -> dict[str, int]:
        return {part: int(self.buckets[:, k].max()) for k, part in enumerate(PARTS)}

    def quarter_peaks(self, seconds: float) -> dict[str, list[int]]:
        """Each figure's highest value in each quarter of the first ``seconds`` (-1: not sampled)."""
        quarters = self._np.full((4, len(PARTS)), -1, self._np.int64)
        for i, row in enumerate(self.buckets):
            quarter = min(3, int(4 * i * self.width / seconds)) if seconds > 0 else 3
            self._np.maximum(quarters[quarter], row, out=quarters[quarter])
        return {part: quarters[:, k].tolist() for k, part in enumerate(PARTS)}

    def series(self) -> list[list]:
        """[bucket start in seconds, the highest value of each figure in that bucket] per sampled bucket."""
        return [[round(i * self.width, 3), *row.tolist()] for i, row in enumerate(self.buckets) if row.max() >= 0]


# ------------------------------------------------------------------ children


def _child_build(args: argparse.Namespace) -> int:
    """Build the cache in this (fresh) process under the sampler; print one JSON line."""
    import gc
    import importlib

    # Loaded before the baseline, so their code and data are not counted as the builder's.
    for name in ("numpy", "cv2"):
        importlib.import_module(name)
    preload = import_preload()
    from preload.measure import reset_high_water

    path = os.path.join(args.out, CACHE_NAME)
    gc.collect()
    sampler = Sampler(INTERVAL)
    sampler.start()  # before the baseline: the sampler's own thread is not the builder's memory
    time.sleep(3 * INTERVAL)
    high_water_reset = reset_high_water()
    baseline = sampler.begin()
    started = time.perf_counter()
    try:
        ds = preload.build_cache(
            args.data, path, size=args.size, layout=args.layout, workers=args.workers, progress=False, force=True
        )
        seconds = time.perf_counter() - started
    finally:
        end = sampler.stop()
    peak = sampler.peaks()
    base = {part: baseline.get(part, -1) for part in PARTS}

    def above(value: int, part: str) -> int | None:
        return None if value < 0 or base[part] < 0 else value - base[part]

    quarters = {
        part: [above(value, part) for value in values] for part, values in sampler.quarter_peaks(seconds).items()
    }
    count = len(ds)
    result = {
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds,
        "shape": list(ds.images.shape),
        "array_bytes": int(ds.images.nbytes),
        "failed": len(ds.failed),
        "baseline": base,
        "peak": peak,
        "end": {part: end.get(part, -1) for part in PARTS},
        "peak_anon_above_baseline": above(peak["anon"], "anon"),
        "peak_file_above_baseline": above(peak["file"], "file"),
        "peak_total_above_baseline": above(peak["rss"], "rss"),
        "peak_dirty": peak["dirty"],
        "peak_writeback": peak["writeback"],
        "peak_mapped_dirty": peak["mapped_dirty"],
        "quarters_above_baseline": quarters,
        "high_water_reset": high_water_reset,
        "high_water_above_baseline": end.get("hwm", 0) - base["rss"] if high_water_reset else None,
        "samples": sampler.count,
        "rollups": sampler.rollups,
        "rollup_ms": 1e3 * sampler.rollup_seconds / max(1, sampler.rollups),
        "series_columns": ["seconds", *PARTS],
        "series": sampler.series(),
    }
    print(json.dumps(result), flush=True)
    return 0


def _child_open(args: argparse.Namespace) -> int:
    """Time one open_cache and the first accesses in this (fresh) process; print one JSON line."""
    import gc
    import importlib

    for name in ("numpy", "cv2"):
        importlib.import_module(name)
    import numpy as np

    preload = import_preload()

    path = os.path.join(args.out, CACHE_NAME)
    check = args.child == "open-check"
    gc.collect()
    clock = time.perf_counter
    t0 = clock()
    ds = preload.open_cache(path, check=check)
    t1 = clock()
    count = len(ds)
    t2 = clock()
    labels = ds.labels[:10] if ds.labels is not None else None
    t3 = clock()
    # np.asarray(ds.images[0]) alone is a view that reads nothing; a copy touches every page.
    image = np.array(ds.images[0])
    t4 = clock()
    result = {
        "mode": "check" if check else "no-check",
        "open": t1 - t0,
        "len": t2 - t1,
        "labels": t3 - t2,
        "image": t4 - t3,
        "images": count,
        "labels_head": None if labels is None else labels.tolist(),
        "image_shape": list(image.shape),
    }
    print(json.dumps(result), flush=True)
    return 0


def _run_child(kind: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        os.fspath(Path(__file__).resolve()),
        "--child",
        kind,
        "--data",
        args.data,
        "--out",
        args.out,
        "--size",
        str(args.size),
        "--layout",
        args.layout,
    ]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        message = f"the {kind} child failed (exit code {done.returncode}):\n{done.stderr.strip()}"
        raise RuntimeError(message)
    return json.loads(lines[-1])


# ------------------------------------------------------------------ data and machine


def _prepare_data(folder: str, count: int, given: bool) -> int:
    """Make ``count`` sample images in ``folder`` unless a complete set is there; return how many there are.

    A set is complete when its sentinel (written after the last image) names
    the number of images found and the seed, so a generation killed halfway
    is made again (:func:`make_samples` overwrites the same names). A folder
    given with ``--data`` that holds at least ``count`` images is used as it
    is when it is a complete set or has no sentinel (the user's own images).
    """
    from preload.measure import make_samples_subprocess

    found = count_images(folder)
    try:
        with open(os.path.join(folder, SENTINEL), encoding="utf-8") as handle:
            made = json.load(handle)
    except (OSError, ValueError):
        made = None
    complete = isinstance(made, dict) and made.get("count") == found and made.get("seed") == SEED
    if complete and found == count:
        print(f"data     {folder}: {found} images (reused)", flush=True)
        return found
    if given and found >= count and (complete or made is None):
        print(f"data     {folder}: {found} images (--data used as it is; --count {count})", flush=True)
        return found
    print(f"data     {folder}: {found} images, making {count} ...", flush=True)
    started = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, SENTINEL), "w", encoding="utf-8") as handle:
        json.dump({"count": None, "seed": SEED}, handle)  # "incomplete" until every image is written
    # In a subprocess: scikit-image's photos need not stay in this process's memory.
    make_samples_subprocess(folder, count, seed=SEED)
    with open(os.path.join(folder, SENTINEL), "w", encoding="utf-8") as handle:
        json.dump({"count": count, "seed": SEED}, handle)
    found = count_images(folder)
    print(f"data     {found} images made in {time.perf_counter() - started:.1f} s", flush=True)
    return found


def _machine() -> dict:
    """:func:`preload.measure.machine`, and the RAM available now (the cache's page cache competes for it)."""
    import psutil

    from preload import measure

    return {**measure.machine(), "available_bytes": psutil.virtual_memory().available}


def _dirty_settings() -> str:
    values = []
    for name in ("dirty_background_ratio", "dirty_ratio", "dirty_background_bytes", "dirty_expire_centisecs"):
        try:
            with open(f"/proc/sys/vm/{name}", encoding="ascii") as handle:
                values.append(f"{name}={handle.read().strip()}")
        except OSError:
            pass
    return ", ".join(values) or "unknown"


def _remove_cache(out: str, created: bool) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    base = os.path.join(out, CACHE_NAME)
    for suffix in (
        "",
        ".json",
        ".index.npz",
        ".lock",
        ".partial",
        ".build.json",
        ".build.npz",
        ".journal",
        ".failed.jsonl",
        ".compact",
    ):
        try:
            os.remove(base + suffix)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------ report


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _print_build(build: dict) -> None:
    base, peak, quarters = build["baseline"], build["peak"], build["quarters_above_baseline"]
    print()
    print(
        f"build    {build['images']} images in {build['seconds']:.2f} s ({build['images_per_s']:.1f} images/s), "
        f"array {build['array_bytes'] / MB:.1f} MB, {build['failed']} failed, {build['samples']} samples"
    )
    print("memory while building (fresh subprocess, after os.sync(); baseline = after importing numpy, cv2, preload)")
    header = (
        f"{'part':<16} {'baseline MB':>11} {'peak MB':>9} {'above MB':>9}   "
        f"{'peak above baseline per quarter of the build, MB':<48}"
    )
    print(header)
    print("-" * len(header))
    names = {
        "anon": "anon (RssAnon)",
        "file": "file (RssFile)",
        "shmem": "shmem (RssShmem)",
        "rss": "total (VmRSS)",
        "mapped_dirty": "mapped dirty",
        "dirty": "system Dirty",
        "writeback": "system Writeback",
    }
    for part, name in names.items():
        known = min(peak[part], base[part]) >= 0  # -1: not measured
        cells = [_mb(base[part] if known else None, 11), _mb(peak[part] if known else None, 9)]
        cells.append(_mb(peak[part] - base[part] if known else None, 9))
        per_quarter = " ".join(_mb(value, 8) for value in quarters[part])
        print(f"{name:<16} {' '.join(cells)}   {per_quarter}")
    print(f"         sampled every {INTERVAL * 1e3:.0f} ms from /proc/self/status and /proc/meminfo, except:")
    print(
        "         'mapped dirty': the builder's dirty file pages (written to the cache, not yet flushed), "
        f"from smaps_rollup every {INTERVAL * ROLLUP_EVERY * 1e3:.0f} ms ({build['rollup_ms']:.1f} ms a read)"
    )
    print("         'system' rows: /proc/meminfo, every process on the machine (others' writes count too)")
    if build["high_water_above_baseline"] is not None:
        print(
            f"check    kernel's VmHWM (reset at the baseline) above baseline: "
            f"{build['high_water_above_baseline'] / MB:.1f} MB (cannot miss a spike the sampler could)"
        )
    print(f"kernel   {_dirty_settings()}")


def _mb(value: int | None, width: int) -> str:
    """Bytes as MB right-aligned in ``width``; "n/a" for a figure that was not measured."""
    if value is None:
        return f"{'n/a':>{width}}"
    return f"{value / MB:>{width}.1f}"


def _open_medians(runs: list[dict]) -> dict[str, dict[str, float]]:
    table = {}
    for mode in ("no-check", "check"):
        mine = [run for run in runs if run["mode"] == mode]
        table[mode] = {
            step: {
                "median": statistics.median(run[step] for run in mine),
                "min": min(run[step] for run in mine),
                "max": max(run[step] for run in mine),
            }
            for step in OPEN_STEPS
        }
        table[mode]["runs"] = len(mine)
    return table


def _print_open(medians: dict, count: int, repeats: int) -> None:
    print()
    print(
        f"open     {repeats} fresh subprocesses per mode, alternating; each times its first call after importing "
        "numpy, cv2, preload"
    )
    print(
        "         page cache warm for all: one untimed open_cache() + image read ran first "
        "(metadata, index, source-folder inodes cached)"
    )
    header = f"{'step':<34} {'median ms':>10} {'min ms':>9} {'max ms':>9}"
    print(header)
    print("-" * len(header))
    labels = {
        ("no-check", "open"): "open_cache(check=False)",
        ("check", "open"): "open_cache() (check=True)",
        ("no-check", "len"): "len(ds)",
        ("no-check", "labels"): "ds.labels[:10]",
        ("no-check", "image"): "np.array(ds.images[0]) (copy)",
    }
    for (mode, step), name in labels.items():
        row = medians[mode][step]
        print(f"{name:<34} {row['median'] * 1e3:>10.3f} {row['min'] * 1e3:>9.3f} {row['max'] * 1e3:>9.3f}")
    print(f"         (len, labels and image timed in the check=False children, on {count} images)")


def _targets(build: dict, medians: dict, count: int) -> list[dict]:
    anon = build["peak_anon_above_baseline"]
    plain = medians["no-check"]["open"]["median"]
    checked = medians["check"]["open"]["median"]
    if count == TARGET_CHECK_FILES:
        check_verdict = _verdict(checked < TARGET_OPEN)
    elif count < TARGET_CHECK_FILES:
        check_verdict = f"{_verdict(checked < TARGET_OPEN)} at {count:,} files (fewer than the target's)"
    else:
        check_verdict = f"n/a (the target is for {TARGET_CHECK_FILES:,} files; here {count:,})"
    return [
        {
            "name": "builder anon RSS above baseline",
            "value": f"{anon / MB:.1f} MB",
            "target": f"<= {TARGET_ANON / MB:.0f} MB",
            "verdict": _verdict(anon <= TARGET_ANON),
        },
        {
            "name": "open_cache(check=False), median",
            "value": f"{plain * 1e3:.2f} ms",
            "target": f"< {TARGET_OPEN * 1e3:.0f} ms",
            "verdict": _verdict(plain < TARGET_OPEN),
        },
        {
            "name": f"open_cache() default check, {count:,} files, median",
            "value": f"{checked * 1e3:.2f} ms",
            "target": f"< {TARGET_OPEN * 1e3:.0f} ms at {TARGET_CHECK_FILES:,} files",
            "verdict": check_verdict,
        },
    ]


def _print_targets(targets: list[dict], build: dict) -> None:
    print()
    for target in targets:
        print(f"target   {target['name']}: {target['value']} {target['target']}: {target['verdict']}")
    print(
        f"info     peak total RSS above baseline {build['peak_total_above_baseline'] / MB:.1f} MB "
        f"(file pages: the mapped cache, plus library code the build touched first); peak system Dirty "
        f"{build['peak_dirty'] / MB:.1f} MB ({(build['peak_dirty'] - build['baseline']['dirty']) / MB:.1f} MB above "
        f"its baseline) for a {build['array_bytes'] / MB:.1f} MB array"
    )


# ------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/cache.py",
        description="Build a preload cache in a fresh subprocess, report the builder's peak memory (anonymous, "
        "file-backed, total) and the system's dirty pages, then time open_cache in fresh subprocesses.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=5000, help="sample images to cache (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="output height and width (default: %(default)s)")
    parser.add_argument(
        "--layout", type=str.upper, choices=("NCHW", "NHWC"), default="NCHW", help="array layout (default: %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=None, help="preload's threads (default: every core)")
    parser.add_argument(
        "--repeats", type=int, default=7, help="fresh subprocesses per open_cache mode (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="image folder; made if missing or incomplete (default: bench/data/samples-<count>)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"folder for the cache ({CACHE_NAME}); default: a new temporary folder in bench/data (same disk)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the cache at the end (default: delete it)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every figure here")
    parser.add_argument("--child", choices=("build", "open", "open-check"), help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_positive(parser, args, ("count", "size", "repeats", "workers"))
    use_checkout()
    if args.child == "build":
        return _child_build(args)
    if args.child:
        return _child_open(args)
    from preload import Manifest, measure

    given = args.data is not None
    args.data = os.path.abspath(os.fspath(args.data or DATA / f"samples-{args.count}"))
    if os.path.exists(args.data) and not os.path.isdir(args.data):
        parser.error(f"--data '{args.data}' exists and is not a folder")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out '{args.out}' exists and is not a folder")
    machine = _machine()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    workers = args.workers or machine["usable_cores"]
    print(f"date     {date}")
    print(
        f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM ({machine['available_bytes'] / 2**30:.1f} GiB available), "
        f"{machine['platform']}"
    )
    print(f"versions python {machine['python']}, numpy {machine['numpy']}, opencv {machine['opencv']}")
    found = _prepare_data(args.data, args.count, given)
    measure.warm_cache(Manifest.from_folder(args.data).paths, budget=2**62)  # the build reads a warm cache

    created = args.out is None or not os.path.exists(args.out)
    if args.out is None:
        DATA.mkdir(parents=True, exist_ok=True)
        args.out = tempfile.mkdtemp(prefix="cache-", dir=DATA)
    else:
        os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    print(
        f"setup    size {args.size}x{args.size} {args.layout}, preload workers {workers}, {args.repeats} repeats "
        f"per open mode, cache {os.path.join(args.out, CACHE_NAME)} ({found} images expected)",
        flush=True,
    )
    try:
        try:
            # Write back what is dirty now (e.g. freshly made samples), so the build's Dirty starts from idle.
            os.sync()
            build = _run_child("build", args)
            _run_child("open-check", args)  # untimed: the same warm state for every timed child
            runs = []
            for repeat in range(args.repeats):
                # Alternate which mode goes first, so drift on a noisy host does not favour one.
                order = ("open", "open-check") if repeat % 2 == 0 else ("open-check", "open")
                for kind in order:
                    run = _run_child(kind, args)
                    run["repeat"] = repeat
                    runs.append(run)
        except RuntimeError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
        medians = _open_medians(runs)
        _print_build(build)
        _print_open(medians, build["images"], args.repeats)
        targets = _targets(build, medians, build["images"])
        _print_targets(targets, build)
        if args.json:
            report = {
                "date": date,
                "machine": machine,
                "options": {k: v for k, v in vars(args).items() if k != "child"},
                "build": build,
                "open_runs": runs,
                "open_medians": medians,
                "targets": targets,
            }
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=2)
            print(f"wrote    {os.path.abspath(args.json)}")
    finally:
        if args.keep:
            print(f"kept     {os.path.join(args.out, CACHE_NAME)}")
        else:
            _remove_cache(args.out, created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
