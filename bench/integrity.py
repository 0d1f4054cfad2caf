"""Benchmark: what the cache's per-row checksums cost a build, and how fast ``verify --deep`` reads.

Two questions, each measured in fresh interpreters (this script re-run with
``--child``), so one run's page tables and thread pools cannot leak into the
next:

1. **Build cost.** ``--repeats`` pairs of builds of the same sample images
   (``--force``: from scratch each time): one as shipped, hashing each row
   with xxh3_64 right after it is decoded, one with the hashing switched off
   (``preload.cache._Summing`` replaced by the bare decoder). The two kinds
   alternate, so a drift of the machine hits both; the table shows each
   kind's median and their ratio. Target: the checksums make the build at
   most 5% slower (ratio <= 1.05).
2. **Deep verify.** A child reads the whole cache once (warm page cache),
   then times ``verify_cache(path, deep=True)``, ``--repeats`` times: rows
   and bytes read, seconds, GB/s (median). Target: >= 2 GB/s warm. The bare
   xxh3 speed on one row, in the same process, is printed beside it: the
   ceiling the deep check runs against.

Run from a checkout (preload need not be installed)::

    python bench/integrity.py --count 2000 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, checkout_env, prepare_data, require_positive, use_checkout

DATA = ROOT / "bench" / "data"
BUILD_TARGET = 1.05  # build time with checksums / without
DEEP_TARGET = 2.0  # GB/s, warm


def child_build(args) -> dict:
    use_checkout()
    import preload
    from preload import cache

    if not args.checksums:
        cache._Summing = lambda decoder, array, sums: decoder  # the fill calls the decoder itself
        # Its rows have no true checksums, so the rows every open hashes would not match: not checked here.
        cache._wrong_probe_rows = lambda files, state: []
    started = time.perf_counter()
    ds = preload.build_cache(args.data, args.out, size=args.size, layout="NCHW", workers=args.workers,
                             progress=False, force=True)
    return {"seconds": time.perf_counter() - started, "rows": len(ds), "bytes": int(ds.images.nbytes)}


def child_verify(args) -> dict:
    use_checkout()
    import numpy as np
    import xxhash

    import preload

    images = np.load(args.out, mmap_mode="r")
    for start in range(0, len(images), 256):  # warm: every page in the page cache
        np.asarray(images[start : start + 256]).sum()
    result = preload.verify_cache(args.out, deep=True)
    check = result["deep_check"]
    row = np.array(images[0])
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < 0.2:
        xxhash.xxh3_64_intdigest(row)
        count += 1
    raw = count * row.nbytes / (time.perf_counter() - started)
    return {"status": result["status"], "rows": check["rows"], "bytes": check["bytes"], "seconds": check["seconds"],
            "xxh3_bytes_per_second": raw}


def run_child(kind: str, args, **extra) -> dict:
    argv = [sys.executable, __file__, "--child", kind, "--data", args.data, "--out", args.out,
            "--size", str(args.size), "--workers", str(args.workers)]
    for name, value in extra.items():
        argv += [f"--{name}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, env=checkout_env())
    if done.returncode != 0:
        message = f"the {kind} child failed:\n{done.stderr}"
        raise SystemExit(message)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python bench/integrity.py --count 2000 --size 256")
    parser.add_argument("--count", type=int, default=2000, help="sample images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="cache rows are 3 x SIZE x SIZE (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="builds of each kind, and deep checks (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding threads")
    parser.add_argument("--data", default=None, help="sample folder (default: bench/data/samples-COUNT)")
    parser.add_argument("--out", default=None, help="cache path (default: a temporary folder under bench/data)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--child", choices=("build", "verify"), help=argparse.SUPPRESS)
    parser.add_argument("--checksums", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (child_build if args.child == "build" else child_verify)(args)
        print(json.dumps(result))
        return 0
    require_positive(parser, args, ("count", "size", "repeats", "workers"))
    use_checkout()
    args.data = os.path.abspath(args.data or DATA / f"samples-{args.count}")
    prepare_data(args.data, args.count)
    if args.out is None:
        DATA.mkdir(parents=True, exist_ok=True)
        args.out = os.path.join(tempfile.mkdtemp(prefix="integrity-", dir=DATA), "cache.npy")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    print(f"cache    {args.out}: {args.count} images at 3x{args.size}x{args.size}, {args.workers} workers", flush=True)

    times = {1: [], 0: []}
    for repeat in range(args.repeats):
        for checksums in (1, 0) if repeat % 2 == 0 else (0, 1):
            times[checksums].append(run_child("build", args, checksums=checksums)["seconds"])
    if repeat % 2 == 0:  # the last build ran without checksums: the deep check needs the shipped kind
        run_child("build", args, checksums=1)
    for checksums, name in ((1, "with"), (0, "without")):
        print(f"builds   {name} checksums: {' '.join(f'{t:.3f}' for t in times[checksums])} s", flush=True)
    with_sums, without = statistics.median(times[1]), statistics.median(times[0])
    ratio = with_sums / without
    print(f"build    with checksums {with_sums:.3f} s, without {without:.3f} s (medians of {args.repeats}): "
          f"ratio {ratio:.3f}", flush=True)
    print(f"target   build with checksums / without: {ratio:.3f} <= {BUILD_TARGET}: "
          f"{'met' if ratio <= BUILD_TARGET else 'NOT met'}")

    checks = [run_child("verify", args) for _ in range(args.repeats)]
    assert all(check["status"] == "fresh" for check in checks), checks
    speeds = [check["bytes"] / check["seconds"] / 1e9 for check in checks if check["seconds"] > 0]
    speed = statistics.median(speeds) if speeds else float("inf")
    raw = statistics.median(check["xxh3_bytes_per_second"] for check in checks) / 1e9
    print(f"deep     {checks[0]['rows']:,} rows, {checks[0]['bytes'] / 1e6:.1f} MB in "
          f"{statistics.median(c['seconds'] for c in checks):.3f} s: {speed:.2f} GB/s warm (median of "
          f"{args.repeats}); bare xxh3_64 on one row {raw:.2f} GB/s")
    print(f"target   deep verify, warm: {speed:.2f} GB/s >= {DEEP_TARGET} GB/s: "
          f"{'met' if speed >= DEEP_TARGET else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "count": args.count, "size": args.size, "workers": args.workers, "repeats": args.repeats,
            "build_seconds_with_checksums": times[1], "build_seconds_without": times[0], "build_ratio": ratio,
            "deep_checks": checks, "deep_gb_per_second": speed, "xxh3_gb_per_second": raw,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
