"""Benchmark: the freshness check of a cache over many tiny files, locally and with NFS-like latency.

What it makes (once; reused when found): a tree of ``--count`` 1x1 PNGs
(~70 bytes each; the check only ``stat``-s them) in parts of 100,000 files,
each part 100 class folders of 1,000 files: ``<data>/tree/part0/c000/0000000.png``,
the caches in ``<data>/caches``.
Then two caches, built with ``preload.build_cache(size=(1, 1))``: one over
``part0`` (100,000 files) and, with ``--count`` above 100,000, one over the
whole tree.

What it times, every figure in a fresh interpreter (this script re-run with
``--child``), after one untimed warm-up so the page cache and the kernel's
inode and dentry caches are warm; medians of ``--repeats``:

``check``
    ``open_cache(path)`` with the default full check (``stat`` of every file
    and folder, thread count from the probe) at ``--count``. Target: < 1 s at
    1M on a local disk. Next to it the same with ``PRELOAD_STAT_THREADS=1``
    and a bare ``for p in paths: os.stat(p)`` loop over the listed paths
    (the pre-issue-15 check was this loop plus its bookkeeping).
``check, 200 us``
    The 100,000-file cache with ``PRELOAD_STAT_DELAY_US=200``: a sleep before
    every ``stat``, the stand-in for a network file system. Target: < 2 s
    (one thread: ~20-26 s, timed once unless ``--skip-sequential``).
``listing``
    ``Manifest.from_folder`` on the whole tree, seconds and peak RSS above the
    interpreter's baseline. Target at 1M: < 3 s warm, < 200 MB.
``open``
    ``open_cache(path, check=False)``. Target: < 50 ms at 1M.
``memory``
    RSS above the baseline after ``open_cache(check=False)``, after reading
    ``ds.paths[-1]`` and after a full check (plus the check's peak). Target:
    an open cache and its index < 150 MB at 1M.

Run from a checkout::

    python bench/freshness.py                 # 100,000 files
    python bench/freshness.py --million       # 1,000,000 files (about 2 GB of disk with the caches)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, checkout_env, import_preload, require_positive, use_checkout

DATA = ROOT / "bench" / "data" / "freshness"
PART = 100_000
PER_FOLDER = 1_000
MB = 1e6


# ------------------------------------------------------------------ the tree


def make_tree(root: Path, count: int, per_folder: int, part: int) -> float:
    """Write ``count`` identical 1x1 PNGs under ``root`` unless a marker says they are there; seconds taken."""
    marker = root / f".made-{count}-{per_folder}-{part}"
    if marker.exists():
        return 0.0
    import cv2
    import numpy as np

    started = time.perf_counter()
    data = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for start in range(0, count, per_folder):
        folder = root / f"part{start // part}" / f"c{start % part // per_folder:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(count, start + per_folder)):
            fd = os.open(folder / f"{i:07d}.png", flags, 0o644)
            os.write(fd, data)
            os.close(fd)
    marker.touch()
    return time.perf_counter() - started


def sources(root: Path, count: int, part: int) -> dict[str, Path]:
    """The cache sources: part0 always, the whole tree when it holds more than one part."""
    found = {"part": root / "part0"}
    if count > part:
        found["all"] = root
    return found


def build(source: Path, cache: Path) -> float:
    """Build (or reuse) the cache of ``source``; seconds taken."""
    use_checkout()
    import preload

    started = time.perf_counter()
    try:
        preload.open_cache(cache, check=False)
        return 0.0
    except preload.CacheError:
        pass
    preload.build_cache(source, cache, size=(1, 1), progress=True)
    return time.perf_counter() - started


# ------------------------------------------------------------------ children


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) * 1024 / MB, int(fields["VmHWM"].split()[0]) * 1024 / MB


def child(mode: str, target: str) -> dict:
    """One measurement in this fresh interpreter; returns the figures."""
    preload = import_preload()
    from preload import freshness

    base, _ = rss_mb()
    if mode == "check":
        started = time.perf_counter()
        preload.open_cache(target)
        seconds = time.perf_counter() - started
        engine = freshness.StatEngine()
        return {"seconds": seconds, "threads": engine.threads or "probe"}
    if mode == "bare":
        paths = list(preload.open_cache(target, check=False).paths)
        started = time.perf_counter()
        for path in paths:
            os.stat(path)
        return {"seconds": time.perf_counter() - started}
    if mode == "listing":
        started = time.perf_counter()
        files = preload.Manifest.from_folder(target)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "files": len(files), "peak_mb": rss_mb()[1] - base}
    if mode == "open":
        started = time.perf_counter()
        ds = preload.open_cache(target, check=False)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(ds)}
    if mode == "memory":
        ds = preload.open_cache(target, check=False)
        opened = rss_mb()[0] - base
        last = ds.paths[-1]
        with_path = rss_mb()[0] - base
        preload.open_cache(target)
        checked, peak = rss_mb()
        return {"open_mb": opened, "path_mb": with_path, "checked_mb": checked - base, "peak_mb": peak - base,
                "last": last}
    raise SystemExit(f"unknown child mode {mode!r}")


def run_child(mode: str, target: Path, env: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(target)]
    done = subprocess.run(command, capture_output=True, text=True, env={**checkout_env(), **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(label: str, mode: str, target: Path, repeats: int, env: dict | None = None, files: int = 0,
          warmups: int = 1) -> dict:
    for _ in range(warmups):  # page cache, inodes, dentries
        run_child(mode, target, env)
    runs = [run_child(mode, target, env) for _ in range(repeats)]
    seconds = sorted(run["seconds"] for run in runs)
    median = statistics.median(seconds)
    per_file = f"{median / files * 1e6:7.2f}" if files else "       "
    extra = ""
    if "peak_mb" in runs[0]:
        extra = f"  peak {statistics.median(r['peak_mb'] for r in runs):6.1f} MB"
    print(f"{label:<46} {median:9.3f} s  [{seconds[0]:.3f} - {seconds[-1]:.3f}]  {per_file} us/file{extra}",
          flush=True)
    return {"label": label, "median": median, "runs": runs}


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python bench/freshness.py --million --repeats 3")
    parser.add_argument("--count", type=int, default=PART, help="files in the tree (default: %(default)s)")
    parser.add_argument("--million", action="store_true", help="same as --count 1000000")
    parser.add_argument("--per-folder", type=int, default=PER_FOLDER, help="files per folder (default: %(default)s)")
    parser.add_argument("--part", type=int, default=PART,
                        help="files per part; the delayed check runs on part0 (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed children per figure (default: %(default)s)")
    parser.add_argument("--delay-us", type=float, default=200.0, help="injected stat latency (default: %(default)s)")
    parser.add_argument("--warmups", type=int, default=1,
                        help="untimed children before each figure (default: %(default)s)")
    parser.add_argument("--skip-sequential", action="store_true", help="skip the one-thread run with latency")
    parser.add_argument("--data", default=str(DATA), help="where the tree and caches live (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if args.million:
        args.count = 1_000_000
    require_positive(parser, args, ("count", "per_folder", "part", "repeats"))

    root = Path(args.data)
    root.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(root)], capture_output=True, text=True).stdout.strip()
    print(f"# freshness bench: {args.count:,} files, {args.per_folder} per folder, under {root} "
          f"(file system: {fs or 'unknown'}), {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    # The caches live beside the tree, not in it: writing them must not move the source folders' stamps.
    tree, cache_dir = root / "tree", root / "caches"
    cache_dir.mkdir(exist_ok=True)
    made = make_tree(tree, args.count, args.per_folder, args.part)
    print(f"tree     {f'made in {made:.1f} s' if made else 'reused'}", flush=True)
    caches = {}
    for name, source in sources(tree, args.count, args.part).items():
        cache = cache_dir / f"{name}-{args.count}.npy"
        seconds = build(source, cache)
        print(f"cache    {cache.name} over {source}: {f'built in {seconds:.1f} s' if seconds else 'reused'}",
              flush=True)
        caches[name] = cache
    big = caches.get("all", caches["part"])
    part_files = min(args.part, args.count)
    figures = []

    def figure(label: str, mode: str, target: Path, repeats: int, env: dict | None = None, files: int = 0) -> None:
        figures.append(timed(label, mode, target, repeats, env, files, args.warmups))

    print(f"\n{'figure':<46} {'median':>11}  {'[range]':<17} {'per file':>13}", flush=True)
    n = args.count
    figure(f"check, {n:,} files", "check", big, args.repeats, files=n)
    figure(f"check, {n:,} files, 1 thread", "check", big, args.repeats, {"PRELOAD_STAT_THREADS": "1"}, files=n)
    figure(f"bare os.stat loop, {n:,} files", "bare", big, args.repeats, files=n)
    delay = {"PRELOAD_STAT_DELAY_US": str(args.delay_us)}
    label = f"check, {part_files:,} files, {args.delay_us:g} us a stat"
    figure(label, "check", caches["part"], args.repeats, delay, files=part_files)
    if not args.skip_sequential:
        label = f"check, {part_files:,} files, {args.delay_us:g} us, 1 thread"
        figure(label, "check", caches["part"], 1, {**delay, "PRELOAD_STAT_THREADS": "1"}, files=part_files)
    listing_root = tree if n > args.part else tree / "part0"
    figure(f"Manifest.from_folder, {n:,} files", "listing", listing_root, args.repeats, files=n)
    figure(f"open_cache(check=False), {n:,} files", "open", big, max(args.repeats, 5))
    memory = run_child("memory", big)
    print(f"\nmemory above the interpreter, {args.count:,} files: open {memory['open_mb']:.1f} MB, "
          f"+ one path {memory['path_mb']:.1f} MB, after a full check {memory['checked_mb']:.1f} MB "
          f"(peak {memory['peak_mb']:.1f} MB)", flush=True)
    if args.json:
        record = {"count": args.count, "file_system": fs, "figures": figures, "memory": memory}
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
