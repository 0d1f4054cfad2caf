"""Benchmark: a local cache build against a LocalCluster build of the same files, on one machine.

Each build runs in a fresh interpreter (this script re-run with ``--child``):

* ``local``: ``preload.build_cache(..., workers=W)``, W threads in one process;
* ``cluster``: ``LocalCluster(n_workers=W, threads_per_worker=1, processes=True)``
  and ``preload.build_cache(..., client=client)``. The cluster is started and
  every worker has imported preload before the clock starts (a cluster you
  already run pays that once); its start-up time is printed apart.
* ``cluster-glibc``: the same, with Dask's ``MALLOC_TRIM_THRESHOLD_=65536``
  left out of the workers' environment (``distributed.nanny.pre-spawn-environ``).
  Setting that variable switches off glibc's adaptive mmap threshold, so every
  decoded image's buffer (over 128 KB) is a fresh ``mmap`` whose pages fault
  in again; this row shows what that costs.

On one machine the two should be about as fast -- the same cores decode
either way, and the cluster adds per-chunk messages and a flush per task.
What the cluster build buys is that it scales out; what this benchmark checks
is that nothing in it grows with the data where it should not: no pixel data
travels through the scheduler. A LocalCluster runs its scheduler (and the
nannies) inside the process that calls ``build_cache``, so that one process's
figures bound the scheduler's:

* ``anon MB``: its anonymous memory (``RssAnon``), peak above the value just
  before the build, sampled every 10 ms. Pixels through the scheduler or back
  to the caller would show up here at the size of a chunk or more.
* ``read MB``: the bytes it read during the build (``rchar`` in
  ``/proc/self/io``: files and sockets alike). Every task result, scheduler
  message and heartbeat is in it; the pixels would be the array's size.

The workers' peak RSS is printed too (they map the file while they fill it),
and the SHA-256 of both caches shows they are byte-identical.

Run from a checkout (preload need not be installed)::

    python bench/cluster.py --count 4000
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
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

from _common import ROOT, checkout_env, import_preload, prepare_data, require_positive, use_checkout

INTERVAL = 0.01  # seconds between two memory samples
MB = 1e6
KINDS = ("local", "cluster", "cluster-glibc")

EPILOG = """examples:
  python bench/cluster.py --count 4000                  # about 0.8 GB cache, 2 workers
  python bench/cluster.py --count 200 --repeats 1 --json results.json
"""


# ------------------------------------------------------------------ measuring


def _bytes_read() -> int:
    """``rchar`` of this process: bytes read by read() and friends, from files and sockets."""
    with open("/proc/self/io", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


class Peaks(threading.Thread):
    """Samples this process and ``others`` (pids) every INTERVAL; keeps only the peaks."""

    def __init__(self, others: list[int] = ()):
        super().__init__(daemon=True)
        self.others = list(others)
        self.mine: dict[str, int] = {}
        self.theirs: dict[int, dict[str, int]] = {pid: {} for pid in self.others}
        self.running = True

    def run(self) -> None:
        while self.running:
            self._sample()
            time.sleep(INTERVAL)

    def _sample(self) -> None:
        from preload.measure import read_status

        for key, value in read_status().items():
            self.mine[key] = max(self.mine.get(key, 0), value)
        for pid in self.others:
            for key, value in read_status(pid).items():
                self.theirs[pid][key] = max(self.theirs[pid].get(key, 0), value)

    def stop(self) -> None:
        self.running = False
        self.join()
        self._sample()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _child(args: argparse.Namespace) -> int:
    """One build in this (fresh) process; print one JSON line."""
    import importlib
    import logging

    for name in ("numpy", "cv2"):
        importlib.import_module(name)
    preload = import_preload()
    from preload.measure import read_status

    out = os.path.join(args.out, f"{args.child}.npy")
    result = {"kind": args.child}
    client = cluster = None
    others: list[int] = []
    records: list[str] = []
    if args.child.startswith("cluster"):
        import dask
        from distributed import Client, LocalCluster

        if args.child == "cluster-glibc":  # None unsets a pre-spawn variable
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})

        # Dask's own INFO lines are noise here; the per-worker summary is kept.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        summary = logging.getLogger("preload.distributed")
        summary.setLevel(logging.INFO)
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        summary.addHandler(handler)
        started = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        client.run(importlib.import_module, "preload.distributed")  # every worker has preload loaded
        result["startup_seconds"] = time.perf_counter() - started
        others = sorted(client.run(os.getpid).values())
        trim = set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
        result["malloc_trim_threshold"] = trim.pop() if len(trim) == 1 else sorted(map(str, trim))
    peaks = Peaks(others)
    before = read_status()
    read_before = _bytes_read()
    peaks.start()
    started = time.perf_counter()
    try:
        ds = preload.build_cache(args.data, out, size=args.size, layout=args.layout, workers=args.workers,
                                 progress=False, force=True, client=client)
        seconds = time.perf_counter() - started
        read_bytes = _bytes_read() - read_before  # before the cluster's shutdown, which reads its pipes
    finally:
        peaks.stop()
        if client is not None:
            client.close()
            cluster.close()
    result.update(
        images=len(ds),
        seconds=seconds,
        images_per_s=len(ds) / seconds,
        shape=list(ds.images.shape),
        array_bytes=int(ds.images.nbytes),
        anon_above=peaks.mine.get("anon", 0) - before.get("anon", 0),
        rss_above=peaks.mine.get("rss", 0) - before.get("rss", 0),
        read_bytes=read_bytes,
        worker_peak_rss=[peaks.theirs[pid].get("rss", 0) for pid in others],
        worker_peak_anon=[peaks.theirs[pid].get("anon", 0) for pid in others],
        summary=records,
    )
    del ds
    result["sha256"] = _sha256(out)
    print(json.dumps(result), flush=True)
    return 0


def _run_child(kind: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, os.fspath(Path(__file__).resolve()), "--child", kind, "--data", args.data,
               "--out", args.out, "--size", str(args.size), "--layout", args.layout, "--workers", str(args.workers)]
    env = checkout_env()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        message = f"the {kind} child failed (exit code {done.returncode}):\n{done.stderr.strip()[-3000:]}"
        raise RuntimeError(message)
    return json.loads(lines[-1])


# ------------------------------------------------------------------ data and report


def _print_report(runs: list[dict], workers: int) -> None:
    by_kind = {kind: [run for run in runs if run["kind"] == kind] for kind in KINDS}
    local, cluster = by_kind["local"], by_kind["cluster"] + by_kind["cluster-glibc"]
    array_bytes = runs[0]["array_bytes"]
    names = {"local": f"local, {workers} threads", "cluster": f"LocalCluster, {workers} x 1 thread",
             "cluster-glibc": "  same, glibc malloc"}
    print()
    print(f"medians of {len(local)} run(s) each; 'anon' and 'read' are of the process that called build_cache "
          "(for the LocalCluster it also hosts the scheduler)")
    header = (f"{'build':<26} {'seconds':>8} {'images/s':>9} {'anon MB':>8} {'read MB':>8} "
              f"{'worker peak RSS MB':>19}")
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        mine = by_kind[kind]
        peaks = [max(run["worker_peak_rss"]) for run in mine if run["worker_peak_rss"]]
        print(f"{names[kind]:<26} {statistics.median(r['seconds'] for r in mine):>8.2f} "
              f"{statistics.median(r['images_per_s'] for r in mine):>9.0f} "
              f"{statistics.median(r['anon_above'] for r in mine) / MB:>8.1f} "
              f"{statistics.median(r['read_bytes'] for r in mine) / MB:>8.1f} "
              f"{(f'{statistics.median(peaks) / MB:.1f}' if peaks else '-'):>19}")
    local_rate = statistics.median(r["images_per_s"] for r in local)
    speeds = [statistics.median(r["images_per_s"] for r in by_kind[kind]) / local_rate
              for kind in ("cluster", "cluster-glibc")]
    anon = max(r["anon_above"] for r in cluster)
    read = max(r["read_bytes"] for r in cluster)
    trims = "/".join(str(by_kind[kind][0]["malloc_trim_threshold"]) for kind in ("cluster", "cluster-glibc"))
    print(f"speed    LocalCluster / local = {speeds[0]:.2f} x the images/s, {speeds[1]:.2f} x with glibc's malloc "
          f"defaults (workers' MALLOC_TRIM_THRESHOLD_ {trims}); cluster start-up, not counted: "
          f"{statistics.median(r['startup_seconds'] for r in cluster):.1f} s")
    verdict = ("no pixel data went through it" if read < 0.1 * array_bytes
               else "the array is too small for this figure to tell")
    print(f"memory   scheduler + caller, largest of the cluster runs: anon +{anon / MB:.1f} MB and {read / MB:.1f} MB "
          f"read, for a {array_bytes / MB:.1f} MB array ({read / array_bytes:.2%} of it): {verdict}")
    hashes = {run["sha256"] for run in runs}
    same = "identical" if len(hashes) == 1 else "DIFFERENT"
    print(f"bytes    every cache {same}: sha256 {', '.join(sorted(h[:16] for h in hashes))}")
    print("workers  (last LocalCluster run with Dask's defaults)")
    for line in by_kind["cluster"][-1]["summary"]:
        print(f"         {line}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/cluster.py",
        description="Time a local cache build against a LocalCluster build on the same machine, each in a fresh "
        "subprocess, and show that the scheduler's memory does not grow with the data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=4000, help="sample images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="output height and width (default: %(default)s)")
    parser.add_argument("--layout", type=str.upper, choices=("NCHW", "NHWC"), default="NCHW",
                        help="array layout (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local threads = cluster worker processes (default: every usable core)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each build (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="image folder; made if it has fewer than --count images "
                             "(default: bench/data/samples-<count>)")
    parser.add_argument("--out", default=None, help="folder for the caches (default: a temporary folder, removed)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every run here")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_positive(parser, args, ("count", "size", "repeats", "workers"))
    use_checkout()
    if args.child:
        return _child(args)
    from preload import Manifest
    from preload import measure as harness
    from preload._version import install_hint

    try:
        import distributed
    except ImportError:
        parser.error(f"the cluster build needs Dask: {install_hint('dask')}")
    machine = harness.machine()
    args.workers = args.workers or machine["usable_cores"]
    args.data = os.path.abspath(args.data or ROOT / "bench" / "data" / f"samples-{args.count}")
    made_out = args.out is None
    args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="preload-bench-cluster-"))
    os.makedirs(args.out, exist_ok=True)
    print(f"date     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
          f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM, {machine['platform']}")
    print(f"versions python {machine['python']}, numpy {machine['numpy']}, opencv {machine['opencv']}, "
          f"distributed {distributed.__version__}")
    print(f"setup    size {args.size}x{args.size} {args.layout}; local: {args.workers} threads; "
          f"cluster: LocalCluster of {args.workers} worker processes x 1 thread; {args.repeats} repeat(s), "
          "interleaved")
    prepare_data(args.data, args.count)
    harness.warm_cache(Manifest.from_folder(args.data).paths, budget=2**62)  # both builds read a warm cache
    runs = []
    try:
        for repeat in range(args.repeats):
            for kind in KINDS:
                run = _run_child(kind, args)
                runs.append(run)
                print(f"run {repeat + 1}   {kind:<13} {run['images']} images in {run['seconds']:.2f} s "
                      f"({run['images_per_s']:.0f} images/s)", flush=True)
                os.remove(os.path.join(args.out, f"{kind}.npy"))  # keep one cache on disk at a time
    finally:
        if made_out:
            shutil.rmtree(args.out, ignore_errors=True)
    _print_report(runs, args.workers)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "runs": runs}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
