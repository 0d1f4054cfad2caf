"""Benchmark: augmented training batches from a uint8 array -- preload vs Keras flow vs Albumentations.

Every measurement runs in a fresh interpreter and prints one JSON line; the
parent prints them side by side with the issue's targets. On N images of
SIZE x SIZE x 3 (default 2,000 x 256 x 256, 393 MB):

* keras        ``ImageDataGenerator(...).flow(x, y)`` with the issue's policy
               (rotation 20, shifts 0.1, shear 0.1, zoom 0.1, horizontal flip,
               fill "nearest"), float32 batches, as many batches as --keras-batches;
* preload      ``ds.batches(..., augment=Augment(same policy), dtype="float32",
               prefetch=2)`` over the array in RAM, one epoch;
* preload-u8   the same with uint8 batches (what Albumentations produces);
* albumentations  ``A.Compose([A.Affine(same geometry), A.HorizontalFlip()])``
               per image, 2 threads, into a reused uint8 batch;
* ...-1        preload uint8 (workers=1, prefetch=0) and Albumentations on one
               thread: the per-image cost without thread scheduling;
* memmap       preload's epoch over a ``.npy`` memmap, at N and N/2 images:
               anonymous RSS should not grow with N;
* step         a simulated 20 ms training step with prefetch=2: epoch time
               against max(step, preparation) x batches;
* stats        ``preload.stats`` on a --stats-gb memmap, warm page cache.

Peak memory is sampled from /proc/self/status every 5 ms: VmRSS (or RssAnon
for memmaps) above the interpreter's own baseline, taken before the array
exists. Comparisons whose library does not import are reported as skipped.
Run it in a venv that has tensorflow, scipy, pillow and albumentations to
get every figure:

    python bench/augment.py --count 2000 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from _common import checkout_env, import_preload, use_checkout

use_checkout()

POLICY = {"rotation": 20, "shift": 0.1, "shear": 0.1, "zoom": 0.1, "flip": "horizontal", "fill": "nearest"}


def proc_status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class Peak:
    """Samples /proc/self/status in a thread; ``peak[key]`` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = proc_status()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in proc_status().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(self.interval)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in proc_status().items():
            self.peak[key] = max(self.peak.get(key, 0), value)


def make_array(count: int, size: int, out=None):
    """Smooth random images (low-resolution noise enlarged), deterministic."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    images = np.empty((count, size, size, 3), np.uint8) if out is None else out
    for i in range(count):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        cv2.resize(small, (size, size), dst=images[i], interpolation=cv2.INTER_CUBIC)
    return images


def child(name: str, args) -> dict:
    import numpy as np

    labels = np.arange(args.count) % 10
    if name == "keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from tensorflow.keras.preprocessing.image import ImageDataGenerator

        base = proc_status()
        x = make_array(args.count, args.size)
        generator = ImageDataGenerator(
            rotation_range=20, width_shift_range=0.1, height_shift_range=0.1, shear_range=0.1, zoom_range=0.1,
            horizontal_flip=True, fill_mode="nearest",
        )
        with Peak() as peak:
            started = time.perf_counter()
            flow = generator.flow(x, labels, batch_size=args.batch, shuffle=True, seed=0)
            copied = time.perf_counter() - started
            started = time.perf_counter()
            images = 0
            for _ in range(args.keras_batches):
                batch, _ = next(flow)
                images += len(batch)
            elapsed = time.perf_counter() - started
        return {"images": images, "seconds": elapsed, "setup_seconds": copied, "dtype": str(batch.dtype),
                "peak_mb": (peak.peak["VmRSS"] - base["VmRSS"]) / 1e6, "array_mb": x.nbytes / 1e6}
    import cv2  # noqa: F401 - imported before the baseline, as every child imports its library first

    preload = import_preload()

    base = proc_status()
    threads = 1 if name.endswith("-1") else 2
    name = name.removesuffix("-1")
    if name in ("preload", "preload-u8", "step", "step-long"):
        x = make_array(args.count, args.size)
        ds = preload.Dataset(x, labels, None, ["x"] * args.count)
        aug = preload.Augment(**POLICY)
        dtype = "uint8" if name == "preload-u8" else "float32"
        step = {"step": args.step_ms, "step-long": args.long_step_ms}.get(name, 0.0) / 1000
        def epoch(step: float) -> tuple[int, int, float, float]:
            started = time.perf_counter()
            images = batches = 0
            waited = 0.0  # time the loop spent waiting for a batch, after the first
            # out=True: the documented reuse mode, prefetch + 1 batch buffers, the
            # budget the target is stated in (the default keeps one more set so
            # that a batch held past the next step is never overwritten).
            iterator = ds.batches(args.batch, shuffle=0, augment=aug, dtype=dtype, prefetch=2 if threads > 1 else 0,
                                  workers=threads, out=True)
            while True:
                asked = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:
                    break
                if batches:
                    waited += time.perf_counter() - asked
                images += len(batch[0])
                batches += 1
                if step:
                    time.sleep(step)  # the training step: the GPU busy, this thread idle
            return images, batches, time.perf_counter() - started, waited

        # A step run first measures the preparation alone in the same process (the pair shares the load).
        prepare = epoch(0.0)[2] if step else None
        with Peak() as peak:
            images, batches, elapsed, waited = epoch(step)
        batch_mb = args.batch * x[0].nbytes * (1 if dtype == "uint8" else 5) / 1e6  # uint8 (+ float32) buffers
        return {"images": images, "batches": batches, "seconds": elapsed, "waited": waited, "prepare_seconds": prepare,
                "peak_mb": (peak.peak["VmRSS"] - base["VmRSS"]) / 1e6, "array_mb": x.nbytes / 1e6,
                "batch_mb": batch_mb}
    if name == "albumentations":
        from concurrent.futures import ThreadPoolExecutor

        import albumentations as A

        base = proc_status()
        x = make_array(args.count, args.size)
        compose = A.Compose([
            A.Affine(rotate=(-20, 20), translate_percent=(-0.1, 0.1), shear=(-0.1, 0.1),
                     scale={"x": (0.9, 1.1), "y": (0.9, 1.1)}, interpolation=cv2.INTER_LINEAR,
                     border_mode=cv2.BORDER_REPLICATE, p=1.0),
            A.HorizontalFlip(p=0.5),
        ])
        order = np.random.default_rng(0).permutation(args.count)
        buffer = np.empty((args.batch,) + x.shape[1:], np.uint8)

        def one(j_row):
            j, row = j_row
            buffer[j] = compose(image=x[row])["image"]

        with Peak() as peak, ThreadPoolExecutor(threads) as pool:
            started = time.perf_counter()
            for start in range(0, args.count, args.batch):
                rows = order[start : start + args.batch]
                list(pool.map(one, enumerate(rows)))
            elapsed = time.perf_counter() - started
        return {"images": args.count, "seconds": elapsed, "peak_mb": (peak.peak["VmRSS"] - base["VmRSS"]) / 1e6,
                "array_mb": x.nbytes / 1e6}
    if name == "memmap":
        path = os.path.join(args.tmp, f"memmap-{args.count}.npy")
        if not os.path.exists(path):
            array = np.lib.format.open_memmap(path, "w+", np.uint8, (args.count, args.size, args.size, 3))
            make_array(args.count, args.size, out=array)
            array.flush()
            del array
        base = proc_status()
        ds = preload.Dataset(np.load(path, mmap_mode="r"), labels, None, ["x"] * args.count)
        with Peak() as peak:
            started = time.perf_counter()
            for _ in ds.batches(args.batch, shuffle=0, augment=preload.Augment(**POLICY), dtype="float32",
                                prefetch=2, workers=2, out=True):
                pass
            elapsed = time.perf_counter() - started
        return {"images": args.count, "seconds": elapsed, "anon_mb": (peak.peak["RssAnon"] - base["RssAnon"]) / 1e6}
    if name == "stats":
        path = os.path.join(args.tmp, "stats.npy")
        side = 256
        count = int(args.stats_gb * 1e9) // (side * side * 3)
        array = np.lib.format.open_memmap(path, "w+", np.uint8, (count, side, side, 3))
        rng = np.random.default_rng(0)
        block = rng.integers(0, 256, (64, side, side, 3), dtype=np.uint8)
        for start in range(0, count, 64):
            array[start : start + 64] = block[: count - start]
        array.flush()
        del array
        mapped = np.load(path, mmap_mode="r")
        preload.stats(mapped)  # warms the page cache
        base = proc_status()
        with Peak() as peak:
            started = time.perf_counter()
            result = preload.stats(mapped)
            elapsed = time.perf_counter() - started
        return {"gb": mapped.nbytes / 1e9, "seconds": elapsed, "gb_per_s": mapped.nbytes / 1e9 / elapsed,
                "anon_mb": (peak.peak["RssAnon"] - base["RssAnon"]) / 1e6, "mean": result.mean.tolist()}
    raise SystemExit(f"unknown child {name!r}")


def run(name: str, argv: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", name, *argv]
    done = subprocess.run(command, capture_output=True, text=True, env=checkout_env())
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def importable(module: str) -> bool:
    code = f"import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keras-batches", type=int, default=8, help="Keras is slow: batches it is timed on")
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--long-step-ms", type=float, default=60.0, help="a step longer than the preparation")
    parser.add_argument("--stats-gb", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the preload/Albumentations runs (medians)")
    parser.add_argument("--only", default=None, help="comma-separated subset of the measurements")
    parser.add_argument("--json", default=None, help="also write the results (medians) to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return 0
    common = ["--count", str(args.count), "--size", str(args.size), "--batch", str(args.batch),
              "--repeats", str(args.repeats),
              "--keras-batches", str(args.keras_batches), "--step-ms", str(args.step_ms),
              "--long-step-ms", str(args.long_step_ms),
              "--stats-gb", str(args.stats_gb)]
    wanted = set(args.only.split(",")) if args.only else None
    results: dict[str, dict] = {}
    shape = f"{args.count} x {args.size}x{args.size}x3 uint8"
    print(f"bench/augment.py: {shape}, batch {args.batch}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        # The throughput runs alternate, round after round, so load from other processes hits all of
        # them alike; each figure is the median of its rounds.
        plan = [("keras", "tensorflow", 1)]
        for _ in range(args.repeats):
            plan += [("preload", None, 0), ("preload-u8", None, 0), ("albumentations", "albumentations", 0),
                     ("preload-u8-1", None, 0), ("albumentations-1", "albumentations", 0), ("step", None, 0),
                     ("step-long", None, 0)]
        plan += [("memmap", None, 1), ("memmap-half", None, 1), ("stats", None, 1)]
        rounds: dict[str, list[dict]] = {}
        for name, module, _ in plan:
            if wanted is not None and name not in wanted:
                continue
            if module is not None and not importable(module):
                if name not in results:
                    print(f"{name:15s} skipped: {module} does not import", flush=True)
                results[name] = {"skipped": f"{module} does not import"}
                continue
            argv_child = common + ["--tmp", tmp]
            child_name = name
            if name == "memmap-half":
                child_name = "memmap"
                argv_child = ["--count", str(args.count // 2)] + argv_child[2:]
            result = run(child_name, argv_child)
            print(f"{name:15s} {json.dumps(result)}", flush=True)
            rounds.setdefault(name, []).append(result)
        for name, runs in rounds.items():
            timed = [run_ for run_ in runs if "seconds" in run_]
            if not timed:
                results[name] = runs[-1]
                continue
            timed.sort(key=lambda run_: run_["seconds"])
            results[name] = dict(timed[len(timed) // 2], rounds=len(timed))
    report(results, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


def rate(result: dict) -> float | None:
    if not result or "skipped" in result:
        return None
    return result["images"] / result["seconds"]


def report(results: dict, args) -> None:
    print("\nsummary")
    keras, ours, ours8, alb = (rate(results.get(k, {})) for k in ("keras", "preload", "preload-u8", "albumentations"))
    print(f"  (throughput: medians of {args.repeats} alternating rounds; Keras timed on {args.keras_batches} batches)")
    if ours:
        ours_run = results["preload"]
        budget = ours_run["array_mb"] + 3 * ours_run["batch_mb"] + 16
        print(f"  preload float32     {ours:8.0f} images/s  peak +{ours_run['peak_mb']:.0f} MB "
              f"(array {ours_run['array_mb']:.0f} MB; out=True budget array"
              f" + 3 x {ours_run['batch_mb']:.0f} MB batches + 16 MB = {budget:.0f})")
    if keras:
        k = results["keras"]
        print(f"  keras flow          {keras:8.0f} images/s  peak +{k['peak_mb']:.0f} MB "
              f"({k['peak_mb'] / k['array_mb']:.1f}x the array), flow() setup {k['setup_seconds']:.1f} s")
        if ours:
            print(f"  -> preload / keras = {ours / keras:.1f}x (target >= 10x)")
    else:
        print(f"  keras flow          skipped ({results.get('keras', {}).get('skipped', 'not run')})")
    if ours8:
        print(f"  preload uint8       {ours8:8.0f} images/s")
    if alb:
        print(f"  albumentations      {alb:8.0f} images/s (2 threads)")
        if ours8:
            print(f"  -> preload / albumentations = {ours8 / alb:.2f}x (target >= 1x)")
    else:
        print(f"  albumentations      skipped ({results.get('albumentations', {}).get('skipped', 'not run')})")
    ours1, alb1 = rate(results.get("preload-u8-1", {})), rate(results.get("albumentations-1", {}))
    if ours1 and alb1:
        print(f"  one thread each: preload uint8 {ours1:.0f}, albumentations {alb1:.0f} images/s "
              f"-> {ours1 / alb1:.2f}x")
    for key, step_ms in (("step", args.step_ms), ("step-long", args.long_step_ms)):
        step = results.get(key, {})
        if "seconds" in step:
            prepare = step["prepare_seconds"] / step["batches"]  # the same process's epoch without a step
            ideal = max(step_ms / 1000, prepare) * step["batches"]
            print(f"  {step_ms:.0f} ms step, prefetch=2: epoch {step['seconds']:.2f} s vs max(step, prep "
                  f"{prepare * 1000:.1f} ms) x {step['batches']} = {ideal:.2f} s -> {step['seconds'] / ideal:.3f} "
                  f"(target <= 1.10); the loop waited {step['waited']:.2f} s for batches after the first")
    full, half = results.get("memmap", {}), results.get("memmap-half", {})
    if "anon_mb" in full and "anon_mb" in half:
        print(f"  memmap epoch anonymous RSS: +{half['anon_mb']:.0f} MB at N={args.count // 2}, "
              f"+{full['anon_mb']:.0f} MB at N={args.count} ({rate(full):.0f} images/s)")
    stats = results.get("stats", {})
    if "gb_per_s" in stats:
        print(f"  stats on {stats['gb']:.1f} GB memmap (warm): {stats['gb_per_s']:.2f} GB/s, anonymous RSS "
              f"+{stats['anon_mb']:.0f} MB (targets >= 1 GB/s, <= 64 MB)")


if __name__ == "__main__":
    raise SystemExit(main())
