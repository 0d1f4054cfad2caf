"""Benchmark: shrink filters cheaper than ``cv2.INTER_AREA``, and JPEG decoders that scale.

Two tables:

1. **Resize only** (per core, ``cv2.setNumThreads(1)``): ms per image to shrink the
   decoded bench photos (about 500x375 RGB) to 256x256 and 224x224 with each
   candidate, and how close each gets to ``INTER_AREA``: the minimum PSNR over
   scikit-image's grass, gravel and brick textures (512x512, as gray and as
   3-channel copies) shrunk by every factor from 1.3x to 3x (equal axes, then a
   few unequal pairs like the bench's 1.95 x 1.46), plus 3x to 8x for robustness
   and the median / minimum PSNR on the photos themselves.
2. **Decode** (per core): read + full decode (the "decode limit"), and whole
   pipelines read + decode + shrink, including decoders that scale by M/8 in the
   IDCT (simplejpeg), and PyTurboJPEG's raw Y/Cb/Cr planes shrunk before the
   colour conversion (when the system ``libturbojpeg`` is there), with their
   PSNR against the full-decode + ``INTER_AREA`` path.

Alternatives are timed side by side in one process, interleaved repeat after
repeat in a rotating order, so a noisy neighbour slows all of them alike; each
figure is a per-image mean over the files of the median of ``--repeats`` timings
(taken per chunk of 25 files, see :func:`interleaved`), ``best`` the same with the
fastest timing (the least disturbed by other load on a shared host), and
``spread`` is (slowest - fastest) / median.

Run from a checkout::

    python bench/filters.py                      # 300 files, 7 repeats
    python bench/filters.py --count 100 --repeats 3
    python bench/filters.py --only decode --repeats 15
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads spin after start-up on some builds; per-core figures want none.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "samples-4000"
SEED = 0
SIZES = ((256, 256), (224, 224))
# Every factor from 1.3x to 3x, round and not; the texture is 512 px, so the real
# factor is 512 / round(512 / s), within 0.5% of these.
SCALES = (1.3, 1.37, 1.41, 1.5, 1.62, 1.75, 1.9, 2.0, 2.13, 2.25, 2.37, 2.5, 2.71, 2.9, 3.0)
MIXED = ((1.46, 1.95), (1.95, 1.46), (1.67, 2.23), (1.3, 3.0), (3.0, 1.3), (2.0, 1.5), (1.5, 2.5))
LARGE = (3.3, 4.0, 5.0, 6.4, 8.0)
ENLARGE_ONE_AXIS = ((0.8, 1.6), (1.6, 0.8), (0.9, 2.5))
PSNR_GOAL = 38.0

Shrink = Callable[[np.ndarray, tuple[int, int], "np.ndarray | None"], np.ndarray]


# --------------------------------------------------------------- the recommendation


def shrink(src: np.ndarray, dst_size_hw: tuple[int, int], dst: np.ndarray | None = None) -> np.ndarray:
    """Antialiased shrink: >= 40 dB from ``INTER_AREA`` on textures (1.3-3x), at ~0.4 of its cost.

    ``INTER_LINEAR`` to ``2**n`` times the output size, then ``n`` halvings by
    ``INTER_AREA``. An exact 2:1 ratio on both axes is the one case OpenCV runs
    on a vectorised fast path (a 2x2 box average, ~0.1 ns per value); at any
    other ratio, integer or not, ``INTER_AREA`` takes a generic path 5-20 times
    slower per value. ``n`` is the fewest halvings that leave at most 1.75x for
    the linear step to cover (n = 1 up to 3.5x, 2 up to 7x, ...), on the more
    shrunk axis, so the linear samples stay at most 1.75 source pixels apart.

    Writes into ``dst`` (``dst_size_hw`` plus ``src``'s channels) when given.
    """
    dh, dw = dst_size_hw
    sh, sw = src.shape[:2]
    scale = max(sh / dh, sw / dw)
    if scale <= 1:  # enlarged on both axes: plain linear
        out = cv2.resize(src, (dw, dh), dst=dst, interpolation=cv2.INTER_LINEAR)
    else:
        halvings = 1
        while scale / (1 << halvings) > 1.75:
            halvings += 1
        out = cv2.resize(src, (dw << halvings, dh << halvings), interpolation=cv2.INTER_LINEAR)
        for level in reversed(range(halvings)):
            target = dst if level == 0 else None
            out = cv2.resize(out, (dw << level, dh << level), dst=target, interpolation=cv2.INTER_AREA)
    if dst is not None and out.ctypes.data != dst.ctypes.data:  # OpenCV could not write in place
        np.copyto(dst, out.reshape(dst.shape))
        return dst
    return out


# --------------------------------------------------------------- the candidates


def _resize(interpolation: int) -> Shrink:
    def run(src, hw, dst=None):
        return cv2.resize(src, (hw[1], hw[0]), dst=dst, interpolation=interpolation)

    return run


def _scales(src: np.ndarray, hw: tuple[int, int]) -> tuple[float, float]:
    return src.shape[0] / hw[0], src.shape[1] / hw[1]


def _then_area(first: int, factor: Callable[[float], int]) -> Shrink:
    """``first`` interpolation to k x the output, then INTER_AREA by exactly k (the fast path)."""

    def run(src, hw, dst=None):
        sy, sx = _scales(src, hw)
        ky, kx = factor(sy), factor(sx)
        mid = cv2.resize(src, (kx * hw[1], ky * hw[0]), interpolation=first)
        return cv2.resize(mid, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_AREA)

    return run


def _area_int_then_linear(src, hw, dst=None):
    """INTER_AREA by k = floor(scale) on a crop to a multiple of k, then INTER_LINEAR (geometry off by < k px)."""
    sy, sx = _scales(src, hw)
    ky, kx = max(1, int(sy)), max(1, int(sx))
    h, w = src.shape[0] // ky * ky, src.shape[1] // kx * kx
    mid = cv2.resize(src[:h, :w], (w // kx, h // ky), interpolation=cv2.INTER_AREA)
    return cv2.resize(mid, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _area_int_then_warp(src, hw, dst=None):
    """As above, but warpAffine maps each output centre exactly into the k-reduced image."""
    sy, sx = _scales(src, hw)
    ky, kx = max(1, int(sy)), max(1, int(sx))
    h, w = src.shape[0] // ky * ky, src.shape[1] // kx * kx
    mid = cv2.resize(src[:h, :w], (w // kx, h // ky), interpolation=cv2.INTER_AREA)
    # output x -> source (x + .5) * sx - .5 -> reduced ((x + .5) * sx - .5 - (kx - 1) / 2) / kx
    matrix = np.float64(
        [[sx / kx, 0, (0.5 * sx - 0.5 - (kx - 1) / 2) / kx], [0, sy / ky, (0.5 * sy - 0.5 - (ky - 1) / 2) / ky]]
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(mid, matrix, (hw[1], hw[0]), dst=dst, flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _gauss_then_linear(src, hw, dst=None):
    """Gaussian pre-blur with sigma^2 = (s^2 - 1) / 12 per axis (INTER_AREA's extra variance), then linear."""
    sy, sx = _scales(src, hw)
    gy, gx = (math.sqrt(max(s * s - 1, 1e-6) / 12) for s in (sy, sx))
    ksize = tuple(3 if g < 0.6 else 5 for g in (gx, gy))
    blurred = cv2.GaussianBlur(src, ksize, gx, sigmaY=gy)
    return cv2.resize(blurred, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _tap3_then_linear(src, hw, dst=None):
    """3-tap [a, 1-2a, a] pre-blur, a = (s^2 - 1) / 24 (same variance, capped at a box), then linear."""
    sy, sx = _scales(src, hw)
    ay, ax = (min(max(s * s - 1, 0) / 24, 1 / 3) for s in (sy, sx))
    kx, ky = np.float32([ax, 1 - 2 * ax, ax]), np.float32([ay, 1 - 2 * ay, ay])
    blurred = cv2.sepFilter2D(src, -1, kx, ky, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(blurred, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _box3_then_linear(src, hw, dst=None):
    return cv2.resize(cv2.blur(src, (3, 3)), (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _binomial_then_linear(src, hw, dst=None):
    # ksize 3 with sigma 0 is OpenCV's fixed [1 2 1] / 4 kernel, on its bit-exact fixed-point path
    return cv2.resize(cv2.GaussianBlur(src, (3, 3), 0), (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


def _pyrdown_then_linear(src, hw, dst=None):
    sy, sx = _scales(src, hw)
    while min(sy, sx) >= 2:
        src = cv2.pyrDown(src)
        sy, sx = _scales(src, hw)
    return cv2.resize(src, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)


CANDIDATES: dict[str, Shrink] = {
    "AREA (baseline)": _resize(cv2.INTER_AREA),
    "LINEAR": _resize(cv2.INTER_LINEAR),
    "LINEAR_EXACT": _resize(cv2.INTER_LINEAR_EXACT),
    "CUBIC": _resize(cv2.INTER_CUBIC),
    "LANCZOS4": _resize(cv2.INTER_LANCZOS4),
    "AREA/floor(s) crop > LIN": _area_int_then_linear,
    "AREA/floor(s) > warp LIN": _area_int_then_warp,
    "LIN>2x > AREA/2": _then_area(cv2.INTER_LINEAR, lambda s: 2),
    "LIN>kx > AREA/k, k=ceil(s)": _then_area(cv2.INTER_LINEAR, lambda s: max(1, math.ceil(s))),
    "shrink(): LIN>2^n>AREA/2^n": shrink,
    "NEAREST>2x > AREA/2": _then_area(cv2.INTER_NEAREST, lambda s: 2),
    "CUBIC>2x > AREA/2": _then_area(cv2.INTER_CUBIC, lambda s: 2),
    "Gauss s2=(s2-1)/12 > LIN": _gauss_then_linear,
    "3-tap a=(s2-1)/24 > LIN": _tap3_then_linear,
    "box 3x3 > LIN": _box3_then_linear,
    "[1 2 1] > LIN": _binomial_then_linear,
    "pyrDown (s>=2) > LIN": _pyrdown_then_linear,
}


# --------------------------------------------------------------- measuring


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def interleaved(jobs: dict, items: list, repeats: int, chunk: int = 25) -> dict:
    """Time every job (a function of one item) on every item; ``(median, best, spread)`` ms per item for each.

    The items are cut into chunks of ``chunk``; round after round, each chunk is
    run by every job in a rotating order, so each job's samples are spread over
    the whole run and a burst of outside load hits all jobs alike. Per chunk the
    median (and fastest) of the ``repeats`` samples is kept, then summed over
    the chunks: a per-image mean over all items, robust to bursts.
    """
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    samples = {name: [[] for _ in chunks] for name in jobs}
    names = list(jobs)
    turn = 0
    for _ in range(repeats):
        for index, part in enumerate(chunks):
            turn += 1
            shift = turn % len(names)
            for name in names[shift:] + names[:shift]:
                job = jobs[name]
                started = time.perf_counter()
                for item in part:
                    job(item)
                samples[name][index].append((time.perf_counter() - started) * 1e3)
    result = {}
    for name, per_chunk in samples.items():
        median = sum(statistics.median(values) for values in per_chunk) / len(items)
        best = sum(min(values) for values in per_chunk) / len(items)
        worst = sum(max(values) for values in per_chunk) / len(items)
        result[name] = (median, best, (worst - best) / median)
    return result


def pick_files(count: int) -> list[Path]:
    files = sorted(DATA.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no bench images in '{DATA}': run bench/load.py once to make them")
    return random.Random(SEED).sample(files, min(count, len(files)))


def textures() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    out = []
    for name in ("grass", "gravel", "brick"):
        gray = getattr(data, name)()
        out.append((f"{name}/gray", gray))
        out.append((f"{name}/rgb", np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))))
    return out


def _one_axis_reference(src: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """INTER_AREA on the shrunk axis alone, then INTER_LINEAR on the enlarged one.

    ``cv2.resize`` with INTER_AREA falls back to a bilinear-like filter as soon
    as one axis is enlarged, so it is no antialiased reference there.
    """
    (sh, sw), (dh, dw) = src.shape[:2], hw
    mid = cv2.resize(src, (dw, sh) if dh > sh else (sw, dh), interpolation=cv2.INTER_AREA)
    return cv2.resize(mid, (dw, dh), interpolation=cv2.INTER_LINEAR)


def _area_reference(src: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return cv2.resize(src, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def quality(func: Shrink, texs, pairs, reference=_area_reference) -> tuple[float, str]:
    """Minimum PSNR against ``reference`` over textures x (scale_y, scale_x) pairs, and where it happened."""
    worst, where = 1e9, ""
    for name, tex in texs:
        for sy, sx in pairs:
            hw = (round(tex.shape[0] / sy), round(tex.shape[1] / sx))
            ref = reference(tex, hw)
            value = psnr(func(tex, hw, None), ref)
            if value < worst:
                worst, where = value, f"{name} {sy:g}x{sx:g}"
    return worst, where


def resize_table(images: list[np.ndarray], repeats: int) -> None:
    texs = textures()
    equal = [(s, s) for s in SCALES]
    jobs = {}
    for name, func in CANDIDATES.items():
        for hw in SIZES:
            out = np.empty(hw + (3,), np.uint8)
            jobs[(name, hw)] = lambda image, func=func, hw=hw, out=out: func(image, hw, out)
    times = interleaved(jobs, images, repeats)
    area = CANDIDATES["AREA (baseline)"]
    photo_refs = [area(image, SIZES[0], None) for image in images]

    print(f"\n## 1. Resize only: {len(images)} decoded bench photos (RGB, ~500x375), ms/image/core")
    print(f"   median and best of {repeats} interleaved timings per chunk of 25 files; spread = (max - min) / median")
    print("   PSNR vs INTER_AREA, dB: texture minimum over grass/gravel/brick x gray/rgb x scale set")
    header = (
        f"{'candidate':28s} {'256 ms':>7s} {'best':>6s} {'224 ms':>7s} {'best':>6s} {'spread':>6s} {'vs AREA':>7s}"
        f" | {'min 1.3-3':>9s} {'worst case':22s} {'mixed':>6s} {'3-8x':>6s} | {'photo med':>9s} {'min':>5s}"
    )
    print(header)
    print("-" * len(header))
    base = times[("AREA (baseline)", SIZES[0])][0]
    for name, func in CANDIDATES.items():
        m256, b256, s256 = times[(name, SIZES[0])]
        m224, b224, s224 = times[(name, SIZES[1])]
        q_equal, where = quality(func, texs, equal)
        q_mixed, _ = quality(func, texs, MIXED)
        q_large, _ = quality(func, texs, [(s, s) for s in LARGE])
        photo = [psnr(func(image, SIZES[0], None), ref) for image, ref in zip(images, photo_refs, strict=True)]
        mark = " ok" if min(q_equal, q_mixed) >= PSNR_GOAL else ""
        print(
            f"{name:28s} {m256:7.3f} {b256:6.3f} {m224:7.3f} {b224:6.3f} {max(s256, s224):6.0%} {m256 / base:6.2f}x"
            f" | {q_equal:9.2f} {where:22s} {q_mixed:6.2f} {q_large:6.2f} | {statistics.median(photo):9.2f}"
            f" {min(photo):5.1f}{mark}"
        )
    print(f"   'ok' = min PSNR >= {PSNR_GOAL:g} dB on both the equal and the mixed scale sets (99 = identical)")
    print("   equal:", ", ".join(f"{s:g}" for s in SCALES))
    print("   mixed (y x):", ", ".join(f"{a:g}x{b:g}" for a, b in MIXED))
    print("   3-8x:", ", ".join(f"{s:g}" for s in LARGE) + f"; photos: the {len(images)} bench photos to 256x256")
    pairs = ", ".join(f"{a:g}x{b:g}" for a, b in ENLARGE_ONE_AXIS)
    print(f"   one axis enlarged ({pairs}), min PSNR vs AREA on the shrunk axis then LINEAR on the other:")
    for name in ("AREA (baseline)", "LINEAR", "shrink(): LIN>2^n>AREA/2^n"):
        value, where = quality(CANDIDATES[name], texs, ENLARGE_ONE_AXIS, reference=_one_axis_reference)
        print(f"     {name:28s} {value:6.2f} dB ({where})")


# --------------------------------------------------------------- decoders


def _decoders():
    """The optional decoders importable here: simplejpeg (wheel) and PyTurboJPEG (needs system libturbojpeg)."""
    found = {}
    try:
        import simplejpeg

        found["simplejpeg"] = simplejpeg
    except ImportError:
        pass
    try:
        from turbojpeg import TurboJPEG

        found["turbojpeg"] = TurboJPEG()
    except (ImportError, RuntimeError, OSError) as exc:  # no wheel, or no / too old system library
        print(f"   (PyTurboJPEG not usable here: {str(exc).splitlines()[0]})")
    return found


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as handle:
        return handle.read()


def _cv2_decode(path: Path) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(_read(path), np.uint8), cv2.IMREAD_COLOR_RGB)


def _yuv_pipeline(tj, hw: tuple[int, int], out: np.ndarray, path: Path) -> np.ndarray:
    """Decode to Y, Cb, Cr planes (no chroma upsampling, no colour conversion), shrink each, convert at the end."""
    data = _read(path)
    width, height, subsample, _ = tj.decode_header(data)
    if subsample == 3:  # TJSAMP_GRAY: PyTurboJPEG 1.x cannot give planes for it
        from turbojpeg import TJPF_GRAY

        gray = tj.decode(data, pixel_format=TJPF_GRAY)[:, :, 0]
        return cv2.cvtColor(shrink(gray, hw), cv2.COLOR_GRAY2RGB, dst=out)
    y, cb, cr = tj.decode_to_yuv_planes(data)
    y = y[:height, :width]  # planes are padded to the MCU
    ycrcb = cv2.merge([shrink(y, hw), shrink(cr, hw), shrink(cb, hw)])
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB, dst=out)


def decode_table(files: list[Path], repeats: int) -> None:
    print(f"\n## 2. Decode: {len(files)} bench JPEGs, read (page cache) + decode [+ shrink], ms/image/core")
    decoders = _decoders()
    jobs: dict = {}
    pipelines: dict[str, Callable[[Path, tuple[int, int], np.ndarray], np.ndarray]] = {}
    area, cheap = CANDIDATES["AREA (baseline)"], shrink

    jobs["cv2.imdecode full (decode limit)"] = _cv2_decode
    pipelines["(a) cv2 full + AREA"] = lambda p, hw, out: area(_cv2_decode(p), hw, out)
    pipelines["(a') cv2 full + shrink()"] = lambda p, hw, out: cheap(_cv2_decode(p), hw, out)
    sj = decoders.get("simplejpeg")
    if sj is not None:
        jobs["simplejpeg full"] = lambda p: sj.decode_jpeg(_read(p), colorspace="RGB")

        def sj_scaled(path, hw):
            # smallest libjpeg-turbo M/8 scale whose output is still >= the target on both sides
            return sj.decode_jpeg(_read(path), colorspace="RGB", min_height=hw[0], min_width=hw[1])

        pipelines["(b) simplejpeg M/8 + AREA"] = lambda p, hw, out: area(sj_scaled(p, hw), hw, out)
        pipelines["(c) simplejpeg M/8 + shrink()"] = lambda p, hw, out: cheap(sj_scaled(p, hw), hw, out)
        pipelines["(e) simplejpeg full + shrink()"] = lambda p, hw, out: cheap(
            sj.decode_jpeg(_read(p), colorspace="RGB"), hw, out
        )
    tj = decoders.get("turbojpeg")
    if tj is not None:
        from turbojpeg import TJPF_RGB

        jobs["PyTurboJPEG full"] = lambda p: tj.decode(_read(p), pixel_format=TJPF_RGB)
        pipelines["(f) PyTurboJPEG YCbCr planes + shrink()"] = lambda p, hw, out: _yuv_pipeline(tj, hw, out, p)
    for name, func in pipelines.items():
        for hw in SIZES:
            out = np.empty(hw + (3,), np.uint8)
            jobs[(name, hw)] = lambda p, func=func, hw=hw, out=out: func(p, hw, out)
    times = interleaved(jobs, files, repeats)

    limit, limit_best, _ = times["cv2.imdecode full (decode limit)"]
    for name in [key for key in jobs if isinstance(key, str)]:
        median, best, spread = times[name]
        print(f"{name:42s} {median:7.3f} ms  best {best:6.3f}  spread {spread:4.0%}  ({median / limit:.2f}x cv2)")
    print(
        f"{'pipeline':42s} {'256 ms':>7s} {'224 ms':>7s} {'ratio256':>9s} {'ratio224':>9s}"
        f" | {'PSNR vs (a) 256: min':>20s} {'med':>6s} | {'224: min':>8s} {'med':>6s} | spread"
    )
    references = {hw: [area(_cv2_decode(p), hw, None) for p in files] for hw in SIZES}
    for name, func in pipelines.items():
        cells, ratios, spreads = [], [], []
        for hw in SIZES:
            median, best, spread = times[(name, hw)]
            cells.append(median)
            ratios.append(f"{limit / median:.2f}/{limit_best / best:.2f}")
            spreads.append(spread)
        quality_cells = []
        for hw in SIZES:
            values = [
                psnr(func(p, hw, np.empty(hw + (3,), np.uint8)), ref)
                for p, ref in zip(files, references[hw], strict=True)
            ]
            quality_cells += [min(values), statistics.median(values)]
        print(
            f"{name:42s} {cells[0]:7.3f} {cells[1]:7.3f} {ratios[0]:>9s} {ratios[1]:>9s}"
            f" | {quality_cells[0]:20.2f} {quality_cells[1]:6.2f} | {quality_cells[2]:8.2f} {quality_cells[3]:6.2f}"
            f" | {max(spreads):4.0%}"
        )
    print(
        "   ratio = cv2 decode limit / pipeline time (from medians / from best passes): the most a preload\n"
        "   of that pipeline can reach against the decode limit (ignores preload's own per-image overhead);\n"
        "   the issue asks >= 0.75"
    )


# --------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="bench JPEGs to use (default 300)")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per alternative (default 7)")
    parser.add_argument("--only", choices=("resize", "decode"), help="run one of the two tables")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)  # per-core figures
    files = pick_files(args.count)
    images = [_cv2_decode(path) for path in files]  # also warms the page cache
    print(
        f"OpenCV {cv2.__version__} (IPP {'on' if cv2.ipp.useIPP() else 'off'}), numpy {np.__version__},"
        f" {len(files)} files from {DATA.relative_to(ROOT)}, seed {SEED}, cv2.setNumThreads(1)"
    )
    if args.only != "decode":
        resize_table(images, args.repeats)
    if args.only != "resize":
        decode_table(files, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
