"""Built-in sample data: ImageNet-like files made from real photos scikit-image ships.

scikit-image (the ``demo`` extra) carries a handful of real photographs in its
wheel; :func:`make_samples` cuts random crops out of them, scales them to
ImageNet-like sizes (about 500x375, landscape and portrait) and writes them as
JPEG (mostly), PNG and grayscale JPEG into one class folder per photo. The
output is deterministic for a given seed, so benchmarks and tests can rebuild
the same set anywhere without downloading anything.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ._version import install_hint
from .atomic import create_new
from .errors import OptionError, PreloadError

# Photos in scikit-image's wheel (no download needed); gray ones become gray JPEGs.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "camera", "gravel")


def photos() -> dict[str, np.ndarray]:
    """The source photos as BGR (color) or 2-D (gray) uint8 arrays, by name."""
    try:
        from skimage import data
    except ImportError:
        message = f"sample data needs scikit-image: {install_hint('demo')}, or just: pip install scikit-image"
        raise PreloadError(message) from None
    found = {}
    for name in PHOTOS:
        image = getattr(data, name)()
        found[name] = image if image.ndim == 2 else np.ascontiguousarray(image[:, :, ::-1])
    return found


def make_samples(
    folder: str | os.PathLike,
    count: int = 200,
    *,
    seed: int = 0,
    png_every: int = 25,
    long_side: tuple[int, int] = (450, 520),
) -> list[str]:
    """Write ``count`` ImageNet-like images into class sub-folders of ``folder``.

    Every ``png_every``-th image is a PNG; images from gray photos are gray
    JPEGs. Existing files with the same names are replaced (a symbolic link
    there is removed, not followed).

    Returns
    -------
    list of str
        The paths written, in the order :func:`preload.load` lists them.

    Raises
    ------
    OSError
        A folder or file cannot be written (read-only, full, a file where a
        folder should be); the exception names the path.

    Examples
    --------
    >>> import tempfile
    >>> paths = make_samples(tempfile.mkdtemp(), 4)  # doctest: +SKIP
    """
    if count < 1:
        message = f"count={count} is not accepted; make at least one sample"
        raise OptionError(message)
    rng = np.random.default_rng(seed)
    sources = photos()
    names = sorted(sources)
    written = []
    for i in range(count):
        name = names[i % len(names)]
        image = _variant(sources[name], rng, long_side)
        ext = ".png" if png_every and i % png_every == png_every - 1 else ".jpg"
        target = os.path.join(os.fspath(folder), name)
        os.makedirs(target, exist_ok=True)
        path = os.path.join(target, f"{i:06d}{ext}")
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
        ok, encoded = cv2.imencode(ext, image, params)
        if not ok:
            raise PreloadError(f"cannot encode sample image '{path}'")
        # Written by Python, not cv2.imwrite: a full or read-only disk is then an
        # OSError naming the file and the reason, not a bare False. create_new unlinks
        # what is at the name and creates the file with O_EXCL | O_NOFOLLOW: a link
        # planted at one of these fixed names is replaced, never written through.
        with open(path, "wb", opener=lambda name, flags: create_new(name)) as handle:
            handle.write(encoded.tobytes())
        written.append(path)
    return sorted(written)


def _variant(photo: np.ndarray, rng: np.random.Generator, long_side: tuple[int, int]) -> np.ndarray:
    """A random crop (60-100% of the shorter side, 3:4 or 4:3), flipped or not, rescaled."""
    h, w = photo.shape[:2]
    portrait = rng.random() < 0.25
    aspect = 3 / 4 if portrait else 4 / 3  # width / height
    crop_h = int(min(h, w / aspect) * rng.uniform(0.6, 1.0))
    crop_w = int(crop_h * aspect)
    top = int(rng.integers(0, h - crop_h + 1))
    left = int(rng.integers(0, w - crop_w + 1))
    crop = photo[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    side = int(rng.integers(long_side[0], long_side[1] + 1))
    new_w, new_h = (round(side * aspect), side) if portrait else (side, round(side / aspect))
    interpolation = cv2.INTER_AREA if new_w < crop_w else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (new_w, new_h), interpolation=interpolation)
