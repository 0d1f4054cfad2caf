"""Benchmark: memory of DataLoader workers reading a preload cache.

Each worker reopens the cache's memory map instead of receiving pixels, so a
worker should cost about an interpreter, whatever the cache's size. This runs
one epoch with ``num_workers`` workers over a cache and prints, per worker,
its anonymous memory (RssAnon: what the worker allocated) and its file-backed
pages (RssFile: the shared page cache of the ``.npy``), sampled while it runs,
next to a fresh interpreter's baseline with the same imports.

    python bench/torch_workers.py --count 4000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, checkout_env, use_checkout

use_checkout()


def status(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmRSS of ``pid`` in bytes, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def baseline() -> dict[str, int]:
    """A fresh interpreter that imported what a worker imports."""
    code = "import os, numpy, torch, preload, preload.torch; print(open(f'/proc/{os.getpid()}/status').read())"
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=checkout_env()).stdout
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--data", default=None, help="sample folder (default bench/data/samples-COUNT)")
    args = parser.parse_args(argv)

    import psutil
    import torch

    import preload
    from preload.samples import make_samples
    from preload.torch import TorchDataset

    data = Path(args.data or ROOT / "bench" / "data" / f"samples-{args.count}")
    if len(list(data.glob("*/*"))) < args.count:
        make_samples(data, args.count)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "data") as folder:
        cache = os.path.join(folder, "cache.npy")
        ds = preload.build_cache(data, cache, size=args.size, layout="NCHW", progress=False)
        array_mb = ds.images.nbytes / 1e6
        base = baseline()
        loader = torch.utils.data.DataLoader(TorchDataset(cache), batch_size=args.batch, shuffle=True,
                                             num_workers=args.workers, persistent_workers=True)
        peaks: dict[int, dict[str, int]] = {}
        stop = threading.Event()

        def sample() -> None:
            me = psutil.Process()
            while not stop.wait(0.02):
                for child in me.children():
                    try:
                        now = status(child.pid)
                    except OSError:
                        continue
                    peak = peaks.setdefault(child.pid, dict(now))
                    for key, value in now.items():
                        peak[key] = max(peak[key], value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        seen = sum(len(labels) for _, labels in loader)
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        del loader
    print(f"cache    {args.count} images, {array_mb:.1f} MB, NCHW {args.size}x{args.size}; "
          f"one shuffled epoch, batch {args.batch}, {args.workers} workers: {seen} images in {seconds:.1f} s")
    print(f"baseline fresh interpreter with numpy+torch+preload: RssAnon {base['RssAnon'] / 1e6:.1f} MB, "
          f"VmRSS {base['VmRSS'] / 1e6:.1f} MB")
    print(f"{'worker pid':>10} {'peak RssAnon MB':>16} {'above baseline':>15} {'peak RssFile MB':>16}")
    worst = 0.0
    for pid, peak in sorted(peaks.items()):
        above = (peak["RssAnon"] - base["RssAnon"]) / 1e6
        worst = max(worst, above)
        print(f"{pid:>10} {peak['RssAnon'] / 1e6:>16.1f} {above:>15.1f} {peak['RssFile'] / 1e6:>16.1f}")
    verdict = "met" if worst < 50 else "NOT met"
    print(f"target   < 50 MB anonymous memory per worker above the interpreter: {worst:.1f} MB, {verdict}")
    print("         (RssFile is the cache's page cache, shared by all workers and the parent, not worker memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
