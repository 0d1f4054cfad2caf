"""What the benchmarks in bench/ share: the checkout, the sample images, the option checks.

The benchmarks run as ``python bench/<name>.py``, so bench/ is ``sys.path[0]``
and ``import _common`` finds this file from any working directory. It imports
nothing from preload at module level: :func:`use_checkout` must run first, so
that the benchmarks measure this checkout and not an installed preload.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 0  # fixed, so every machine benchmarks the same files


def use_checkout() -> None:
    """Put the checkout that holds preload first on ``sys.path``."""
    # Run as a script, sys.path[0] is bench/, not the checkout that holds preload.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def import_preload():
    """The checkout's ``preload`` with every module of its API loaded, for a child about to take its baseline.

    ``import preload`` alone loads nothing heavy (each public name loads its
    module on first use), so a child that took its baseline or started its
    clock right after it would count the loading of the cache, the decoder and
    their libraries as the work's memory and time.
    """
    use_checkout()
    import preload

    for name in preload.__all__:
        getattr(preload, name)
    return preload


def checkout_env() -> dict[str, str]:
    """This environment with the checkout first on ``PYTHONPATH``, for child interpreters that import preload."""
    use_checkout()
    from preload.measure import child_env

    return child_env()


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Exit through ``parser.error`` when one of the options ``names`` is given and below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value} is not accepted; use a positive integer")


def count_images(folder: str) -> int:
    """How many images preload finds in ``folder`` (0 when it is missing or empty)."""
    from preload import Manifest, SourceError

    try:
        return len(Manifest.from_folder(folder))
    except SourceError:  # missing or empty folder
        return 0


def prepare_data(folder: str, count: int) -> int:
    """Make ``count`` sample images in ``folder`` unless at least that many are there; return how many."""
    from preload.measure import make_samples_subprocess

    found = count_images(folder)
    if found >= count:
        print(f"data     {folder}: {found} images (reused)", flush=True)
        return found
    print(f"data     {folder}: {found} images, making {count} ...", flush=True)
    started = time.perf_counter()
    make_samples_subprocess(folder, count, seed=SEED)  # keeps this process's peak (ru_maxrss) small
    found = count_images(folder)
    print(f"data     {found} images made in {time.perf_counter() - started:.1f} s", flush=True)
    return found


def first_made(paths: list[str], count: int) -> list[str]:
    """The files ``make_samples(count)`` writes, picked from a larger sample set (manifest order kept).

    File ``i`` of :func:`preload.samples.make_samples` is named ``{i:06d}``;
    falls back to the first ``count`` paths when the names are not sample indices.
    """
    stems = [Path(path).stem for path in paths]
    if all(stem.isdigit() for stem in stems):
        return [path for path, stem in zip(paths, stems, strict=True) if int(stem) < count]
    return paths[:count]
