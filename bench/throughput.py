"""Benchmark: preload's images/s against the decode limit and against the loaders people write.

Four sections, each measured side by side: every run in a fresh interpreter,
the alternatives interleaved repeat after repeat in a rotating order (so a
noisy neighbour on a shared host slows them alike), medians of ``--repeats``.

``main``
    ImageNet-like files (about 500x375, a few PNG and gray JPEGs among them;
    ``bench/data/samples-<count>``, made by :func:`preload.samples.make_samples`
    from scikit-image's photos when missing) to every ``--sizes`` x
    ``--layouts``:

    * the **decode limit**: one thread reading and decoding every file at full
      size (no resize) with the fastest decoder preload has, as images/s,
      times the cores: simplejpeg with its default (accurate) flags for
      JPEGs, ``cv2.imdecode`` for the rest. The **old limit**, the same with
      ``cv2.imdecode`` for every file, is measured and printed next to it;
      and the new limit's decode on all cores in threads and in processes,
      which is the two-core scaling the machine really gives;
    * **naive Pillow**: ``Image.open(p).convert("RGB").resize((s, s),
      Image.Resampling.BILINEAR)`` (Pillow widens its bilinear filter by the
      shrink factor, so it is antialiased), ``np.asarray``, append,
      ``np.stack``; one thread;
    * **naive OpenCV**: ``cv2.imread``, ``cvtColor`` to RGB, ``cv2.resize``
      with ``INTER_AREA`` (``transpose(2, 0, 1)`` for NCHW), append,
      ``np.stack``; one thread, ``cv2.setNumThreads(1)``;
    * **preload** with ``workers=1`` and with every core (default filter),
      and with ``interpolation="area"``, the same filter as naive OpenCV;
    * **torchvision** ``ImageFolder`` + ``DataLoader(num_workers=cores)``,
      batches concatenated into one array, where ``import torchvision``
      works: in this interpreter, or in the one given by
      ``--torchvision-python`` (a separate venv holding a matching torch and
      torchvision pair; the checkout is put on its ``PYTHONPATH``), e.g.::

          python -m venv /work/venv-tv
          /work/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
              opencv-python-headless simplejpeg pillow psutil tqdm memory_profiler
          python bench/throughput.py --torchvision-python /work/venv-tv/bin/python

    * at 256x256 NCHW (or the last size and layout given) also
      ``interpolation="linear"``, naive OpenCV with ``INTER_LINEAR``,
      preload ``workers=1`` with "area", and preload into a fresh ``.npy``
      (``out="x.npy"``).

    Per loader: images/s, CPU time per image (user + system, threads and
    child processes included), peak RSS above the child's post-import
    baseline (:class:`preload.measure.PeakSampler` every 100 ms plus the
    kernel's ``VmHWM``), and the PSNR of 64 rows against naive OpenCV
    ``INTER_AREA`` (preload "area" must be identical). The targets are
    printed from the medians and, as "best runs", from each loader's fastest
    run; "decode CPU / preload CPU per image" is the ratio to the decode
    limit that perfect scaling over the cores would give, which other load on
    a shared host disturbs far less than wall time.
``big``
    Larger photos (long side ``--big-long-side``, default 2000-2400, in
    ``bench/data/big-<big-count>-long<lo>-<hi>``): the ``reduce=`` switch (JPEG
    decoded at 1/2, 1/4 or 1/8 scale) with the default and the "area" filter,
    against the full-size decode limit, and how many files each scale applies
    to. preload reduces only while twice the output's size remains, so at 256
    sources need a short side of at least 1024 px for 1/2: ImageNet-sized
    files, or photos with a long side of 1000-1200, are never reduced.
``scaling``
    preload (every core, default options) on the first 1k, 2k, 5k, 10k, 20k
    files of ``bench/data/samples-20000``, given as a path list: time and peak
    memory per image.
``listing``
    ``preload.Manifest.from_folder`` on a generated tree of ``--listing-count``
    empty ``*.jpg`` files (deleted afterwards), next to a bare recursive
    ``os.scandir``, extrapolated to 1M files.

Run from a checkout (preload need not be installed)::

    python bench/throughput.py                       # every section (about 20 minutes on 2 cores)
    python bench/throughput.py --sections main --sizes 256 --layouts NCHW
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _common import ROOT, SEED, checkout_env, first_made, require_positive, use_checkout

SECTIONS = ("main", "big", "scaling", "listing")
SAMPLE_ROWS = 64  # rows each child saves for the PSNR comparison
# The targets of issue 12, for preload on every core at 256x256 NCHW with default options.
TARGET_DECODE = 0.75  # x the decode limit (simplejpeg single-thread full decode images/s x cores)
TARGET_PILLOW = 4.0  # x naive Pillow list-then-stack
TARGET_OPENCV = 2.5  # x naive OpenCV INTER_AREA list-then-stack
TARGET_LINEAR = 1.5  # x the naive OpenCV INTER_LINEAR loop (no antialiasing at all)
TARGET_TORCHVISION = 5.0  # x torchvision ImageFolder + DataLoader(num_workers=cores) ...
TARGET_TORCHVISION_MEMORY = 0.35  # ... at no more than this share of its peak memory
TARGET_SHAPES = 0.10  # every size and layout within 10% of the 256 NCHW ratio to the limit
TARGET_BIG = 0.9  # big photos, reduce=True: x their own decode limit

EPILOG = """examples:
  python bench/throughput.py                                  # every section, 3 repeats
  python bench/throughput.py --sections main --sizes 256 --layouts NCHW --repeats 5
  python bench/throughput.py --sections scaling --scaling-counts 1000,4000
  python bench/throughput.py --count 40 --big-count 8 --scaling-counts 10,20 --listing-count 500 \\
      --sizes 32 --repeats 1 --data /tmp/s --big-data /tmp/b --scaling-data /tmp/s   # a smoke run
"""


# ------------------------------------------------------------------ what one run does


@dataclass(frozen=True)
class Job:
    """One measured run: a loader on a list of files, in a fresh interpreter.

    ``kind`` is decode, pillow, opencv, preload, torchvision, listing or
    scandir; ``name`` is the label printed for it.
    """

    section: str
    name: str
    kind: str
    paths_file: str = ""
    root: str = ""
    size: int = 0
    layout: str = "NCHW"
    workers: int = 1
    interpolation: str | None = None
    reduce: bool = True
    processes: bool = False
    count: int = 0
    decoder: str = "simplejpeg"  # decode jobs: "simplejpeg" (JPEGs; OpenCV for the rest) or "opencv"
    npy: bool = False  # preload jobs: into a fresh .npy file instead of RAM

    @property
    def key(self) -> tuple:
        return (self.section, self.size, self.layout, self.count, self.name)


# The loaders. Each takes the job, its paths and ``mark`` (one RSS sample, taken
# where the loader knows its peak is: after the stack, while the list still lives).


def _decode_file(path: str, decoder: str = "simplejpeg"):
    """One file at full size, RGB: simplejpeg for JPEGs (as preload does) or cv2.imdecode."""
    import cv2
    import numpy as np

    with open(path, "rb", buffering=0) as handle:
        data = handle.read()
    if decoder == "simplejpeg" and data[:2] == b"\xff\xd8":
        import simplejpeg

        return simplejpeg.decode_jpeg(data, "RGB")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def _decode_chunk(paths: list[str], decoder: str = "simplejpeg") -> int:
    for path in paths:
        _decode_file(path, decoder)
    return len(paths)


def decode_only(paths: list[str], workers: int, pool=None, decoder: str = "simplejpeg") -> None:
    """Read and decode every file at full size (no resize); threads, or the given process pool."""
    import functools

    if workers == 1:
        _decode_chunk(paths, decoder)
        return
    chunks = [paths[i : i + 64] for i in range(0, len(paths), 64)]
    work = functools.partial(_decode_chunk, decoder=decoder)
    if pool is not None:
        pool.map(work, chunks, chunksize=1)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as threads:
        list(threads.map(work, chunks))


def naive_pillow(paths: list[str], size: int, layout: str, mark):
    """The tutorial loop with Pillow: open, RGB, antialiased bilinear resize, asarray, append, stack."""
    import numpy as np
    from PIL import Image

    images = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        images.append(image.transpose(2, 0, 1) if layout == "NCHW" else image)
    array = np.stack(images)
    mark()
    return array


def naive_opencv(paths: list[str], size: int, layout: str, interpolation: str, mark):
    """The tutorial loop with OpenCV: imread, cvtColor, resize, (transpose), append, stack."""
    import cv2
    import numpy as np

    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}[interpolation]
    images = []
    for path in paths:
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (size, size), interpolation=flag)
        images.append(image.transpose(2, 0, 1) if layout == "NCHW" else image)
    array = np.stack(images)
    mark()
    return array


def preload_load(job: Job, paths: list[str], mark, scratch: str):
    import preload

    out = os.path.join(scratch, "preload-out.npy") if job.npy else None
    dataset = preload.load(
        paths, size=job.size, layout=job.layout, interpolation=job.interpolation, reduce=job.reduce,
        workers=job.workers, progress=False, out=out,
    )
    mark()
    return dataset.images


def torchvision_loader(job: Job, paths: list[str], mark):
    """ImageFolder + DataLoader(num_workers), the batches concatenated into one array."""
    import numpy as np
    import torch
    from torchvision import datasets, transforms

    wanted = set(paths)
    transform = transforms.Compose([
        transforms.Resize((job.size, job.size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.PILToTensor(),
    ])
    dataset = datasets.ImageFolder(job.root, transform=transform, is_valid_file=lambda p: os.fspath(p) in wanted)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=job.workers)
    batches = []
    for images, _ in loader:
        batches.append((images if job.layout == "NCHW" else images.permute(0, 2, 3, 1)).numpy())
    array = np.concatenate(batches)
    mark()
    return array


def list_scandir(root: str) -> list[str]:
    """The floor for a listing: every file name under ``root``, unsorted, no checks."""
    found, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                (stack.append if entry.is_dir() else found.append)(entry.path)
    return found


def torchvision_available(python: str | None = None) -> bool:
    """Whether torchvision imports and runs its ops here, or in the interpreter ``python``."""
    if python:
        probe = "import torch, torchvision; torchvision.ops.nms"
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        return done.returncode == 0
    try:
        import torchvision

        torchvision.ops.nms  # noqa: B018  a wheel built for another torch fails here, not at import
    except Exception:  # not installed, or a wheel built for another torch
        return False
    return True


# ------------------------------------------------------------------ the child interpreter


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def child_main(spec_path: str) -> int:
    """Run one job and write its figures to the spec's ``result`` path (JSON)."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    job = Job(**spec["job"])
    import gc

    import cv2
    import numpy as np
    import PIL.Image  # noqa: F401  imported before the baseline, like NumPy and OpenCV
    import simplejpeg  # noqa: F401

    import preload  # noqa: F401
    from preload.measure import PeakSampler

    if job.kind == "torchvision":
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    paths: list[str] = []
    if job.paths_file:
        with open(job.paths_file, encoding="utf-8") as handle:
            paths = handle.read().splitlines()
    cv2.setNumThreads(1)  # naive loops and decode-only runs are single-threaded; preload sets it itself
    pool = None
    if job.kind == "decode" and job.processes:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(job.workers)  # started before the clock
    gc.collect()
    images, files = None, len(paths)
    # A 10 ms sampler costs ~7% of a core, which two-thread runs would pay; the
    # kernel's VmHWM (reset at entry) catches the peak that a 100 ms sampler misses.
    with PeakSampler(0.1, reset_high_water=True) as sampler:
        cpu_started = _cpu_seconds(resource.RUSAGE_SELF)
        started = time.perf_counter()
        if job.kind == "decode":
            decode_only(paths, job.workers, pool, job.decoder)
        elif job.kind == "pillow":
            images = naive_pillow(paths, job.size, job.layout, sampler.sample)
        elif job.kind == "opencv":
            images = naive_opencv(paths, job.size, job.layout, job.interpolation, sampler.sample)
        elif job.kind == "preload":
            images = preload_load(job, paths, sampler.sample, os.path.dirname(spec_path))
        elif job.kind == "torchvision":
            images = torchvision_loader(job, paths, sampler.sample)
        elif job.kind == "listing":
            files = len(preload.Manifest.from_folder(job.root))
            sampler.sample()
        elif job.kind == "scandir":
            files = len(list_scandir(job.root))
            sampler.sample()
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(resource.RUSAGE_SELF) - cpu_started
    if pool is not None:
        pool.close()
        pool.join()
    cpu += _cpu_seconds(resource.RUSAGE_CHILDREN)  # pool or DataLoader workers, once they have exited
    peak = sampler.peak_above_baseline
    if sampler.high_water_reset and sampler.high_water is not None:
        peak = max(peak, sampler.high_water - sampler.baseline)
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "files": files,
        "images_per_s": files / seconds,
        "peak_above_baseline": peak,
        "anon_above_baseline": sampler.part_above_baseline("anon"),
        "array_bytes": 0 if images is None else int(images.nbytes),
        "shape": [] if images is None else list(images.shape),
    }
    if images is not None and spec.get("rows"):
        rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), SAMPLE_ROWS)).astype(np.int64))
        np.save(spec["rows"], np.ascontiguousarray(images[rows]))
    if job.npy:
        del images
        os.remove(os.path.join(os.path.dirname(spec_path), "preload-out.npy"))
    with open(spec["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 0


# The interpreter torchvision jobs run in (--torchvision-python); None: this one.
TORCHVISION_PYTHON: str | None = None


def run_job(job: Job, scratch: str, rows: str | None = None) -> dict:
    """``job`` in a fresh interpreter; its result dict (raises RuntimeError if it failed)."""
    spec_path = os.path.join(scratch, "spec.json")
    result_path = os.path.join(scratch, "result.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    with open(spec_path, "w", encoding="utf-8") as handle:
        json.dump({"job": asdict(job), "result": result_path, "rows": rows}, handle)
    env = checkout_env()
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    python = TORCHVISION_PYTHON if job.kind == "torchvision" and TORCHVISION_PYTHON else sys.executable
    done = subprocess.run(
        [python, os.path.abspath(__file__), "--child", spec_path], capture_output=True, text=True, env=env
    )
    if done.returncode != 0 or not os.path.exists(result_path):
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(f"{job.name} ({job.section}) failed: {lines[-1] if lines else done.returncode}")
    with open(result_path, encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------ running a section


def interleave(groups: list[list[Job]], repeats: int, scratch: str, echo) -> list[dict]:
    """Every job of every group, ``repeats`` times; groups and the jobs inside rotate each repeat.

    Rows for the PSNR comparison are saved by the first repeat only. Each
    job's files are read once just before it runs, so that every run starts
    from a warm page cache even if something else on the host evicted it.
    """
    from preload.measure import warm_cache

    runs = []
    for repeat in range(repeats):
        shift = repeat % len(groups)
        for group in groups[shift:] + groups[:shift]:
            turn = repeat % len(group)
            for job in group[turn:] + group[:turn]:
                if job.paths_file:
                    with open(job.paths_file, encoding="utf-8") as handle:
                        warm_cache(handle.read().splitlines(), budget=2**62)
                rows = os.path.join(scratch, f"rows-{len(runs)}.npy") if repeat == 0 else None
                result = run_job(job, scratch, rows)
                run = {"job": asdict(job), "key": list(job.key), "repeat": repeat, **result}
                if rows and os.path.exists(rows):
                    run["rows"] = rows
                runs.append(run)
                label = f"{job.size} {job.layout}" if job.size else ""
                if job.count:
                    label = f"N={job.count}"
                memory = f"peak +{result['peak_above_baseline'] / 1e6:7.1f} MB" if job.kind != "decode" else ""
                echo(
                    f"  run {repeat + 1}/{repeats} {label:<9} {job.name:<42} {result['seconds']:7.2f} s "
                    f"{result['images_per_s']:8.1f} /s  {memory}"
                )
    return runs


def medians(runs: list[dict]) -> dict[tuple, dict]:
    """Per job key: median seconds, images/s and peak memory, and the images/s range."""
    table: dict[tuple, dict] = {}
    for run in runs:
        table.setdefault(tuple(run["key"]), []).append(run)
    out = {}
    for key, mine in table.items():
        rates = [run["images_per_s"] for run in mine]
        out[key] = {
            "runs": len(mine),
            "files": mine[0]["files"],
            "seconds": statistics.median(run["seconds"] for run in mine),
            "images_per_s": statistics.median(rates),
            "cpu_ms": statistics.median(run["cpu_seconds"] / run["files"] * 1e3 for run in mine),
            "best": max(rates),
            "low": min(rates),
            "high": max(rates),
            "peak_above_baseline": statistics.median(run["peak_above_baseline"] for run in mine),
            "anon_above_baseline": statistics.median(run["anon_above_baseline"] or 0 for run in mine),
            "array_bytes": mine[0]["array_bytes"],
            "rows": next((run["rows"] for run in mine if "rows" in run), None),
        }
    return out


def psnr_text(rows: str | None, reference: str | None) -> str:
    """PSNR of a loader's saved rows against the reference's; "identical" when equal."""
    import numpy as np

    if not rows or not reference:
        return "-"
    a, b = np.load(rows), np.load(reference)
    if a.shape != b.shape:
        return "shape?"
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "identical" if mse == 0 else f"{10 * math.log10(255.0**2 / mse):.1f} dB"


def _write_paths(paths: list[str], scratch: str, name: str) -> str:
    path = os.path.join(scratch, f"paths-{name}.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(paths))
    return path


def _loadavg() -> str:
    try:
        return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "load average n/a"


# ------------------------------------------------------------------ data


_SAMPLES_CODE = """import sys
from preload.samples import make_samples
make_samples(sys.argv[1], int(sys.argv[2]), seed=int(sys.argv[3]), long_side=(int(sys.argv[4]), int(sys.argv[5])))
"""


def prepare_data(folder: str, count: int, long_side: tuple[int, int] | None, echo) -> list[str]:
    """The first ``count`` sample files of ``folder``, made there first if it holds fewer.

    File ``i`` of :func:`make_samples` is named ``{i:06d}``, so the first
    ``count`` of a larger set are exactly the files ``make_samples(count)`` writes.
    """
    from preload import Manifest, SourceError

    try:
        paths = Manifest.from_folder(folder).paths
    except SourceError:  # missing or empty
        paths = []
    if len(paths) < count:
        echo(f"data     {folder}: {len(paths)} images, making {count} ...")
        started = time.perf_counter()
        sides = long_side or (450, 520)
        command = [sys.executable, "-c", _SAMPLES_CODE, folder, str(count), str(SEED), *map(str, sides)]
        done = subprocess.run(command, capture_output=True, text=True, env=checkout_env())
        if done.returncode != 0:
            raise RuntimeError(f"cannot make samples in '{folder}': {done.stderr.strip().splitlines()[-1:]}")
        echo(f"data     made in {time.perf_counter() - started:.1f} s")
        paths = Manifest.from_folder(folder).paths
    return first_made(paths, count)


def reductions(paths: list[str], size: int) -> str:
    """How many files preload decodes at each JPEG scale for a square ``size`` (stretch)."""
    from preload import headers
    from preload.decode import reduction_for

    counts: dict[str, int] = {}
    for path in paths:
        info = headers.probe(path)
        oriented = info.oriented_size(True)
        factor = reduction_for(*oriented, (size, size), "stretch") if info.format == "jpeg" and oriented else 1
        kind = f"1/{factor}" if factor > 1 else ("full (PNG)" if info.format != "jpeg" else "full")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))


def describe(paths: list[str]) -> str:
    """How many JPEG (color, gray) and PNG files, and their median size."""
    from PIL import Image

    kinds: dict[str, int] = {}
    sides = []
    for path in paths:
        with Image.open(path) as image:
            kind = f"{image.format} {'gray' if image.mode == 'L' else 'color'}"
            kinds[kind] = kinds.get(kind, 0) + 1
            sides.append(image.size)
    mix = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda item: -item[1]))
    width = statistics.median(w for w, _ in sides)
    height = statistics.median(h for _, h in sides)
    return f"{mix}; median {width:.0f}x{height:.0f} px"


# ------------------------------------------------------------------ sections


def main_jobs(args, paths_file: str, root: str, cores: int, with_torchvision: bool) -> tuple[list, list]:
    """The decode group, and one group per (size, layout)."""
    decode = [
        Job("main", "decode only, 1 thread", "decode", paths_file),
        Job("main", "decode only, OpenCV, 1 thread", "decode", paths_file, decoder="opencv"),
        Job("main", f"decode only, {cores} threads", "decode", paths_file, workers=cores),
        Job("main", f"decode only, {cores} processes", "decode", paths_file, workers=cores, processes=True),
    ]
    configs = []
    for size in args.sizes:
        for layout in args.layouts:
            base = Job("main", "", "", paths_file, root=root, size=size, layout=layout)
            group = [
                replace(base, name="naive Pillow BILINEAR (antialiased)", kind="pillow"),
                replace(base, name="naive OpenCV INTER_AREA", kind="opencv", interpolation="area"),
                replace(base, name="preload, 1 thread", kind="preload", workers=1),
                replace(base, name=f"preload, {cores} threads", kind="preload", workers=cores),
                replace(base, name=f"preload, {cores} threads, area", kind="preload", workers=cores,
                        interpolation="area"),
            ]
            if (size, layout) == args.switches:
                group += [
                    replace(base, name="preload, 1 thread, area", kind="preload", workers=1, interpolation="area"),
                    replace(base, name=f"preload, {cores} threads, linear", kind="preload", workers=cores,
                            interpolation="linear"),
                    replace(base, name="naive OpenCV INTER_LINEAR", kind="opencv", interpolation="linear"),
                    replace(base, name=f"preload, {cores} threads, fresh .npy", kind="preload", workers=cores,
                            npy=True),
                ]
            if with_torchvision:
                group.append(replace(base, name=f"torchvision DataLoader, {cores} workers", kind="torchvision",
                                     workers=cores))
            configs.append(group)
    return decode, configs


def print_main(table: dict, decode: list[Job], configs: list[list[Job]], cores: int, echo) -> dict:
    """The medians, ratios and targets of the main section; returns the ratios by configuration."""
    limit1 = table[decode[0].key]["images_per_s"]
    limit = limit1 * cores
    old1 = table[decode[1].key]["images_per_s"]
    old = old1 * cores
    threads = table[decode[2].key]["images_per_s"] / limit1
    processes = table[decode[3].key]["images_per_s"] / limit1
    echo("")
    echo(f"decode limit   1 thread: {1e3 / limit1:.2f} ms/image = {limit1:.0f} images/s; "
         f"x {cores} cores = {limit:.0f} images/s")
    echo(f"old limit (OpenCV decode) 1 thread: {1e3 / old1:.2f} ms/image = {old1:.0f} images/s; "
         f"x {cores} cores = {old:.0f} images/s")
    echo(f"two-core scaling of decode only: {cores} threads {threads:.2f}x, {cores} processes {processes:.2f}x "
         f"of 1 thread (ideal {cores:.2f}x)")
    for job in decode:
        row = table[job.key]
        echo(f"  {job.name:<42} {row['images_per_s']:8.1f} images/s  (range {row['low']:.0f}-{row['high']:.0f}), "
             f"{row['cpu_ms']:.3f} ms CPU/image")
    best1 = table[decode[0].key]["best"]
    ratios, best = {}, {}
    for group in configs:
        size, layout = group[0].size, group[0].layout
        byname = {job.name: table[job.key] for job in group}
        reference = byname["naive OpenCV INTER_AREA"]["rows"]
        echo("")
        echo(f"{size}x{size} {layout}: medians of {byname[group[0].name]['runs']} runs, "
             f"array {group_array_mb(byname):.1f} MB")
        header = (f"{'loader':<36} {'seconds':>8} {'images/s':>9} {'range':>11} {'x limit':>8} {'CPU ms/img':>10} "
                  f"{'peak MB':>8} {'/ array':>8} {'PSNR vs OpenCV AREA':>20}")
        echo(header)
        echo("-" * len(header))
        for job in group:
            row = byname[job.name]
            per_array = row["peak_above_baseline"] / row["array_bytes"] if row["array_bytes"] else math.nan
            echo(f"{job.name:<36} {row['seconds']:8.2f} {row['images_per_s']:9.1f} "
                 f"{row['low']:5.0f}-{row['high']:<5.0f} {row['images_per_s'] / limit:8.2f} {row['cpu_ms']:10.3f} "
                 f"{row['peak_above_baseline'] / 1e6:8.1f} {per_array:8.3f} {psnr_text(row['rows'], reference):>20}")
        fast = byname[f"preload, {cores} threads"]["images_per_s"]
        area = byname[f"preload, {cores} threads, area"]["images_per_s"]
        found = {
            "preload / decode limit": fast / limit,
            "preload / old decode limit": fast / old,
            "preload / naive Pillow": fast / byname["naive Pillow BILINEAR (antialiased)"]["images_per_s"],
            "preload / naive OpenCV AREA": fast / byname["naive OpenCV INTER_AREA"]["images_per_s"],
            "preload area / naive OpenCV AREA": area / byname["naive OpenCV INTER_AREA"]["images_per_s"],
            "preload area / decode limit": area / limit,
            f"preload {cores} threads / 1 thread": fast / byname["preload, 1 thread"]["images_per_s"],
        }
        if "preload, 1 thread, area" in byname:
            found[f"preload area {cores} threads / 1 thread"] = area / byname["preload, 1 thread, area"]["images_per_s"]
        if f"preload, {cores} threads, linear" in byname:
            linear = byname[f"preload, {cores} threads, linear"]["images_per_s"]
            found["preload linear / decode limit"] = linear / limit
            found["preload linear / naive OpenCV LINEAR"] = linear / byname["naive OpenCV INTER_LINEAR"]["images_per_s"]
            found["preload / naive OpenCV LINEAR"] = fast / byname["naive OpenCV INTER_LINEAR"]["images_per_s"]
        if f"preload, {cores} threads, fresh .npy" in byname:
            npy = byname[f"preload, {cores} threads, fresh .npy"]["images_per_s"]
            found["preload .npy / decode limit"] = npy / limit
        tv = next((name for name in byname if name.startswith("torchvision")), None)
        if tv:
            found["preload / torchvision"] = fast / byname[tv]["images_per_s"]
            found["preload peak MB / torchvision peak MB"] = (
                byname[f"preload, {cores} threads"]["peak_above_baseline"] / byname[tv]["peak_above_baseline"]
            )
        echo("ratios   " + "; ".join(f"{name} {value:.2f}" for name, value in found.items()))
        decode_cpu = table[decode[0].key]["cpu_ms"]
        costs = {name: byname[name]["cpu_ms"] for name in byname if name.startswith("preload")}
        echo(f"per core decode only {decode_cpu:.3f} ms CPU/image; " + "; ".join(
            f"{name} {cost:.3f} (ceiling {decode_cpu / cost:.2f} x limit)" for name, cost in costs.items()))
        found["CPU ceiling"] = decode_cpu / byname[f"preload, {cores} threads"]["cpu_ms"]
        ratios[f"{size} {layout}"] = found
        top = {name: row["best"] for name, row in byname.items()}
        best[f"{size} {layout}"] = {
            "preload / decode limit": top[f"preload, {cores} threads"] / (best1 * cores),
            "preload / naive Pillow": top[f"preload, {cores} threads"] / top["naive Pillow BILINEAR (antialiased)"],
            "preload / naive OpenCV AREA": top[f"preload, {cores} threads"] / top["naive OpenCV INTER_AREA"],
        }
    return {"decode_limit": limit, "decode_1_thread": limit1, "old_decode_limit": old,
            "threads_scaling": threads, "processes_scaling": processes, "configs": ratios, "best_runs": best,
            "best_threads_scaling": table[decode[2].key]["best"] / best1,
            "best_processes_scaling": table[decode[3].key]["best"] / best1}


def group_array_mb(byname: dict) -> float:
    return max(row["array_bytes"] for row in byname.values()) / 1e6


def print_targets(summary: dict, args, cores: int, with_torchvision: bool, echo) -> None:
    size, layout = 256, "NCHW"
    found = summary["configs"].get(f"{size} {layout}")
    echo("")
    if found is None:
        echo(f"targets  n/a: the targets are for {size} {layout}, which this run did not measure")
        return

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    top = summary["best_runs"][f"{size} {layout}"]

    def best(name: str) -> str:
        return f"(best runs: {top[name]:.2f})"

    value = found["preload / decode limit"]
    echo(f"target   preload ({cores} threads, {size} {layout}, defaults) / decode limit = {value:.2f} "
         f">= {TARGET_DECODE}: {verdict(value >= TARGET_DECODE)} {best('preload / decode limit')}; "
         f"/ old (OpenCV) limit = {found['preload / old decode limit']:.2f}")
    echo(f"         CPU time per image, decode only / preload = {found['CPU ceiling']:.2f}: the ratio perfect "
         f"{cores}-core scaling would give")
    if "preload .npy / decode limit" in found:
        value = found["preload .npy / decode limit"]
        echo(f"target   preload into a fresh .npy / decode limit = {value:.2f} >= {TARGET_DECODE}: "
             f"{verdict(value >= TARGET_DECODE)}")
    value = found["preload / naive Pillow"]
    echo(f"target   preload / naive Pillow = {value:.2f} >= {TARGET_PILLOW}: {verdict(value >= TARGET_PILLOW)} "
         f"{best('preload / naive Pillow')}")
    value = found["preload / naive OpenCV AREA"]
    echo(f"target   preload / naive OpenCV INTER_AREA = {value:.2f} >= {TARGET_OPENCV}: "
         f"{verdict(value >= TARGET_OPENCV)} {best('preload / naive OpenCV AREA')}; "
         f"preload area / naive OpenCV INTER_AREA (same filter) = {found['preload area / naive OpenCV AREA']:.2f}")
    if "preload / naive OpenCV LINEAR" in found:
        value = found["preload / naive OpenCV LINEAR"]
        echo(f"target   preload / naive OpenCV INTER_LINEAR = {value:.2f} >= {TARGET_LINEAR}: "
             f"{verdict(value >= TARGET_LINEAR)}")
    if with_torchvision and "preload / torchvision" in found:
        value, memory = found["preload / torchvision"], found["preload peak MB / torchvision peak MB"]
        ok = value >= TARGET_TORCHVISION and memory <= TARGET_TORCHVISION_MEMORY
        echo(f"target   preload / torchvision = {value:.2f} >= {TARGET_TORCHVISION} at {memory:.2f} <= "
             f"{TARGET_TORCHVISION_MEMORY} x its peak memory: {verdict(ok)}")
    else:
        echo("target   preload vs torchvision: n/a (torchvision is not importable; see --torchvision-python)")
    headline = found["preload / decode limit"]
    shapes = {config: ratios["preload / decode limit"] for config, ratios in summary["configs"].items()}
    worst = max(((config, value / headline - 1) for config, value in shapes.items()), key=lambda item: abs(item[1]))
    each = ", ".join(f"{config} {value:.2f}" for config, value in shapes.items())
    echo(f"target   every shape within {TARGET_SHAPES:.0%} of {size} {layout}'s ratio to the limit: "
         f"worst {worst[0]} {worst[1]:+.1%}: {verdict(abs(worst[1]) <= TARGET_SHAPES)} ({each})")
    echo(f"scaling  decode only on {cores} cores: threads {summary['threads_scaling']:.2f}x, processes "
         f"{summary['processes_scaling']:.2f}x of one thread (best runs: {summary['best_threads_scaling']:.2f}x, "
         f"{summary['best_processes_scaling']:.2f}x); the decode limit assumes {cores:.2f}x")
    echo("         'best runs' = the same ratio from each loader's fastest run, the least disturbed by other load")


def big_jobs(paths_file: str, cores: int, size: int, layout: str) -> list[Job]:
    base = Job("big", "", "preload", paths_file, size=size, layout=layout, workers=cores)
    return [
        Job("big", "decode only, 1 thread", "decode", paths_file),
        Job("big", "decode only, OpenCV, 1 thread", "decode", paths_file, decoder="opencv"),
        replace(base, name="naive OpenCV INTER_AREA", kind="opencv", interpolation="area", workers=1),
        replace(base, name=f"preload, {cores} threads, reduce=True"),
        replace(base, name=f"preload, {cores} threads, reduce=False", reduce=False),
        replace(base, name=f"preload, {cores} threads, area, reduce=True", interpolation="area"),
        replace(base, name=f"preload, {cores} threads, area, reduce=False", interpolation="area", reduce=False),
        replace(base, name="preload, 1 thread, reduce=True", workers=1),
        replace(base, name="preload, 1 thread, reduce=False", workers=1, reduce=False),
    ]


def print_big(table: dict, jobs: list[Job], cores: int, echo) -> dict:
    byname = {job.name: table[job.key] for job in jobs}
    limit1 = byname["decode only, 1 thread"]["images_per_s"]
    limit = limit1 * cores
    reference = byname["naive OpenCV INTER_AREA"]["rows"]
    echo("")
    echo(f"{jobs[2].size}x{jobs[2].size} {jobs[2].layout} from big photos: decode limit {1e3 / limit1:.2f} ms/image "
         f"= {limit1:.0f} images/s x {cores} = {limit:.0f} images/s; medians of {byname[jobs[0].name]['runs']} runs")
    header = (f"{'loader':<40} {'seconds':>8} {'images/s':>9} {'range':>11} {'x limit':>8} {'CPU ms/img':>10} "
              f"{'peak MB':>8} {'PSNR vs OpenCV AREA':>20}")
    echo(header)
    echo("-" * len(header))
    for job in jobs:
        row = byname[job.name]
        memory = f"{row['peak_above_baseline'] / 1e6:8.1f}" if job.kind != "decode" else f"{'-':>8}"
        echo(f"{job.name:<40} {row['seconds']:8.2f} {row['images_per_s']:9.1f} {row['low']:5.0f}-{row['high']:<5.0f} "
             f"{row['images_per_s'] / limit:8.2f} {row['cpu_ms']:10.3f} {memory} "
             f"{psnr_text(row['rows'], reference):>20}")
    found = {}
    for name in ("", ", area"):
        on = byname[f"preload, {cores} threads{name}, reduce=True"]["images_per_s"]
        off = byname[f"preload, {cores} threads{name}, reduce=False"]["images_per_s"]
        found[f"reduce=True / reduce=False{name or ', default filter'}"] = on / off
    one = byname["preload, 1 thread, reduce=True"]["images_per_s"]
    found["reduce=True / reduce=False, 1 thread"] = one / byname["preload, 1 thread, reduce=False"]["images_per_s"]
    echo("ratios   " + "; ".join(f"{name} {value:.2f}" for name, value in found.items()))
    value = byname[f"preload, {cores} threads, reduce=True"]["images_per_s"] / limit
    echo(f"target   big photos, preload ({cores} threads, defaults, reduce=True) / their decode limit = {value:.2f} "
         f">= {TARGET_BIG}: {'met' if value >= TARGET_BIG else 'NOT met'}")
    return {"decode_limit": limit, "reduce_vs_limit": value, **found}


def print_scaling(table: dict, jobs: list[Job], echo) -> dict:
    echo("")
    header = (f"{'N':>6} {'array MB':>9} {'seconds':>8} {'images/s':>9} {'range':>11} {'ms/image':>9} {'CPU ms':>7} "
              f"{'peak MB':>8} {'MB/image':>9} {'/ array':>8} {'anon MB':>8}")
    echo(header)
    echo("-" * len(header))
    rows = []
    for job in jobs:
        row = table[job.key]
        per_image = row["peak_above_baseline"] / job.count
        rows.append((1e3 / row["images_per_s"], per_image))
        echo(f"{job.count:>6} {row['array_bytes'] / 1e6:9.1f} {row['seconds']:8.2f} {row['images_per_s']:9.1f} "
             f"{row['low']:5.0f}-{row['high']:<5.0f} {1e3 / row['images_per_s']:9.3f} {row['cpu_ms']:7.3f} "
             f"{row['peak_above_baseline'] / 1e6:8.1f} {per_image / 1e6:9.4f} "
             f"{row['peak_above_baseline'] / row['array_bytes']:8.3f} {row['anon_above_baseline'] / 1e6:8.1f}")
    times = [t for t, _ in rows]
    memory = [m for _, m in rows]
    slot = table[jobs[0].key]["array_bytes"] / jobs[0].count
    echo(f"flat?    ms/image ranges {min(times):.3f}-{max(times):.3f} (max/min {max(times) / min(times):.2f}); "
         f"MB/image {min(memory) / 1e6:.4f}-{max(memory) / 1e6:.4f} (one slot is {slot / 1e6:.4f} MB)")
    return {"ms_per_image_max_over_min": max(times) / min(times), "bytes_per_image": memory}


def make_tree(root: str, count: int, per_folder: int = 1000) -> None:
    """``count`` empty ``*.jpg`` files in class folders of ``per_folder`` files."""
    for i in range(count):
        folder = os.path.join(root, f"class{i // per_folder:05d}")
        if i % per_folder == 0:
            os.mkdir(folder)
        with open(os.path.join(folder, f"{i:08d}.jpg"), "wb"):
            pass


def print_listing(table: dict, jobs: list[Job], count: int, echo) -> dict:
    echo("")
    header = (f"{'listing':<40} {'seconds':>8} {'range':>13} {'us/file = s per 1M files':>24} {'peak MB':>8} "
              f"{'B/file':>7}")
    echo(header)
    echo("-" * len(header))
    found = {}
    for job in jobs:
        row = table[job.key]
        seconds = row["seconds"]
        low, high = count / row["high"], count / row["low"]
        echo(f"{job.name:<40} {seconds:8.3f} {low:6.3f}-{high:<6.3f} {seconds / count * 1e6:24.2f} "
             f"{row['peak_above_baseline'] / 1e6:8.1f} "
             f"{row['peak_above_baseline'] / count:7.0f}")
        found[job.name] = seconds * 1e6 / count
    return found


# ------------------------------------------------------------------ command line


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 224,256")
    return values


def _layouts(text: str) -> list[str]:
    values = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not values or any(value not in ("NHWC", "NCHW") for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give NHWC, NCHW or both, comma-separated")
    return values


def _sections(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(value not in SECTIONS for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {', '.join(SECTIONS)}, comma-separated")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="Images/s of preload against the decode limit, naive Pillow and OpenCV loops and "
        "torchvision (if installed); reduce= on big photos; time and memory per image from 1k to 20k; "
        "listing speed. Every run in a fresh subprocess, interleaved, medians.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sections", type=_sections, default=list(SECTIONS),
                        help="comma-separated, of: " + ", ".join(SECTIONS) + " (default: all)")
    parser.add_argument("--count", type=int, default=4000, help="files for the main section (default: %(default)s)")
    parser.add_argument("--data", default=None, help="main section's folder (default: bench/data/samples-<count>)")
    parser.add_argument("--sizes", type=_ints, default=[224, 256], help="output sizes (default: 224,256)")
    parser.add_argument("--layouts", type=_layouts, default=["NHWC", "NCHW"], help="default: NHWC,NCHW")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loader (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="threads for 'all cores' (default: every core)")
    parser.add_argument("--big-count", type=int, default=500, help="big photos (default: %(default)s)")
    parser.add_argument("--big-long-side", type=_ints, default=[2000, 2400],
                        help="their long side's range in px (default: 2000,2400)")
    parser.add_argument("--big-data", default=None,
                        help="their folder (default: bench/data/big-<big-count>-long<lo>-<hi>)")
    parser.add_argument("--scaling-counts", type=_ints, default=[1000, 2000, 5000, 10000, 20000],
                        help="N for the scaling table (default: 1000,2000,5000,10000,20000)")
    parser.add_argument("--scaling-data", default=None,
                        help="folder of at least max N samples (default: bench/data/samples-20000)")
    parser.add_argument("--listing-count", type=int, default=100_000, help="empty files to list (default: %(default)s)")
    parser.add_argument("--listing-dir", default=None,
                        help="where the temporary tree of empty files goes (default: bench/data)")
    parser.add_argument("--torchvision-python", default=None, metavar="PYTHON",
                        help="interpreter of a venv where torch and torchvision import, for the torchvision runs "
                        "(default: this one)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every run and the medians here")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    require_positive(parser, args, ("count", "repeats", "workers", "big_count", "listing_count"))
    if len(args.big_long_side) != 2 or args.big_long_side[0] > args.big_long_side[1]:
        parser.error(f"--big-long-side {args.big_long_side} is not accepted; give LOW,HIGH, e.g. 2000,2400")
    use_checkout()
    import cv2
    import numpy as np
    import PIL

    from preload import measure as harness

    def echo(line: str) -> None:
        print(line, flush=True)

    machine = harness.machine()
    cores = args.workers or machine["usable_cores"]
    size = 256 if 256 in args.sizes else args.sizes[-1]
    layout = "NCHW" if "NCHW" in args.layouts else args.layouts[-1]
    args.switches = (size, layout)
    global TORCHVISION_PYTHON
    TORCHVISION_PYTHON = args.torchvision_python
    with_torchvision = torchvision_available(args.torchvision_python)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    echo(f"date     {date}")
    echo(f"machine  {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
         f"{machine['ram_bytes'] / 2**30:.0f} GiB RAM, {machine['platform']}")
    echo(f"versions python {machine['python']}, numpy {np.__version__}, opencv {cv2.__version__}, "
         f"pillow {PIL.__version__}, torch {torch_version}, "
         f"torchvision {'importable' if with_torchvision else 'NOT importable: its runs are skipped'}"
         + (f" in {args.torchvision_python}" if args.torchvision_python else ""))
    echo(f"setup    {args.repeats} repeats per loader, each run in a fresh interpreter, interleaved; "
         f"'all cores' = {cores}; naive loops single-threaded (cv2.setNumThreads(1))")
    report: dict = {"date": date, "machine": machine, "options": {k: v for k, v in vars(args).items()}, "sections": {}}

    with tempfile.TemporaryDirectory(prefix="preload-throughput-") as scratch:
        try:
            if "main" in args.sections:
                folder = os.fspath(args.data or ROOT / "bench" / "data" / f"samples-{args.count}")
                paths = prepare_data(folder, args.count, None, echo)
                harness.warm_cache(paths, budget=2**62)
                echo("")
                echo(f"## main: {len(paths)} files from {folder} ({describe(paths)}); {_loadavg()}")
                decode, configs = main_jobs(args, _write_paths(paths, scratch, "main"), folder, cores, with_torchvision)
                runs = interleave([decode, *configs], args.repeats, scratch, echo)
                table = medians(runs)
                summary = print_main(table, decode, configs, cores, echo)
                print_targets(summary, args, cores, with_torchvision, echo)
                echo(f"after    {_loadavg()}")
                report["sections"]["main"] = {"runs": runs, "summary": summary}
            if "big" in args.sections:
                low, high = args.big_long_side
                name = f"big-{args.big_count}-long{low}-{high}"
                folder = os.fspath(args.big_data or ROOT / "bench" / "data" / name)
                paths = prepare_data(folder, args.big_count, (low, high), echo)
                harness.warm_cache(paths, budget=2**62)
                echo("")
                echo(f"## big: {len(paths)} files from {folder} ({describe(paths)}); {_loadavg()}")
                echo(f"reduce   JPEG scale preload picks at {size}x{size}: {reductions(paths, size)}")
                jobs = big_jobs(_write_paths(paths, scratch, "big"), cores, size, layout)
                runs = interleave([jobs], args.repeats, scratch, echo)
                summary = print_big(medians(runs), jobs, cores, echo)
                echo(f"after    {_loadavg()}")
                report["sections"]["big"] = {"runs": runs, "summary": summary}
            if "scaling" in args.sections:
                top = max(args.scaling_counts)
                folder = os.fspath(args.scaling_data or ROOT / "bench" / "data" / "samples-20000")
                paths = prepare_data(folder, top, None, echo)
                harness.warm_cache(paths, budget=2**62)
                echo("")
                echo(f"## scaling: preload ({cores} threads, {size}x{size} {layout}, default options) on the first N "
                     f"of {len(paths)} files of {folder}, as a path list; {_loadavg()}")
                jobs = []
                for count in args.scaling_counts:
                    paths_file = _write_paths(paths[:count], scratch, f"scaling-{count}")
                    jobs.append(Job("scaling", "preload", "preload", paths_file, size=size, layout=layout,
                                    workers=cores, count=count))
                runs = interleave([jobs], args.repeats, scratch, echo)
                summary = print_scaling(medians(runs), jobs, echo)
                echo(f"after    {_loadavg()}")
                report["sections"]["scaling"] = {"runs": runs, "summary": summary}
            if "listing" in args.sections:
                data_dir = Path(args.listing_dir or ROOT / "bench" / "data")
                data_dir.mkdir(parents=True, exist_ok=True)
                tree = tempfile.mkdtemp(prefix="listing-", dir=data_dir)
                try:
                    started = time.perf_counter()
                    make_tree(tree, args.listing_count)
                    echo("")
                    echo(f"## listing: {args.listing_count} empty *.jpg files in folders of 1000 under {tree}, "
                         f"made in {time.perf_counter() - started:.1f} s (directory entries cached); {_loadavg()}")
                    jobs = [
                        Job("listing", "preload.Manifest.from_folder", "listing", root=tree),
                        Job("listing", "bare recursive os.scandir (unsorted)", "scandir", root=tree),
                    ]
                    runs = interleave([jobs], args.repeats, scratch, echo)
                    summary = print_listing(medians(runs), jobs, args.listing_count, echo)
                finally:
                    shutil.rmtree(tree)
                echo(f"deleted  {tree}")
                report["sections"]["listing"] = {"runs": runs, "summary": summary}
        except RuntimeError as exc:
            print(f"bench: error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, default=str)
        echo(f"wrote    {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
