"""Shared test helpers: images are generated into tmp_path with a seeded RNG."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from preload import cache, decode, freshness

SEED = 1234


@pytest.fixture
def rng():
    return np.random.default_rng(SEED)


def smooth_image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    """A smooth random BGR (or gray) image: JPEG keeps it nearly lossless, resizes stay meaningful."""
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), channels), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return image if channels > 1 else image.reshape(height, width)


def write(path, image: np.ndarray, *params) -> str:
    assert cv2.imwrite(str(path), image, list(params)), path
    return str(path)


def class_folders(root: Path, rng: np.random.Generator, *, per_class: int = 20) -> Path:
    """``root/{ant,bee,cow}/00.png ...``: ``per_class`` small PNGs per class, every image different.

    Sizes vary with the class (width 40-42) and the index (height 30-34), so a
    resize is always at work and a wrong row cannot pass for a right one.
    """
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            write(root / name / f"{k:02d}.png", smooth_image(rng, 30 + k % 5, 40 + c))
    return root


@pytest.fixture(scope="session")
def source_template(tmp_path_factory) -> tuple[Path, dict]:
    """``class_folders`` made once with the ``rng`` fixture's seed, and that generator's state afterwards."""
    rng = np.random.default_rng(SEED)
    root = class_folders(tmp_path_factory.mktemp("source-template") / "src", rng)
    return root, rng.bit_generator.state


@pytest.fixture
def source(tmp_path, rng, source_template) -> Path:
    """Three classes of small images, 60 in all, in ``tmp_path / "src"`` (fresh for each test: tests change it).

    A copy of one session-wide set (copying is ~10x cheaper than encoding 60
    PNGs for each of ~30 tests); ``rng`` then continues exactly as if it had
    drawn the images itself, so what tests draw next is the same either way.
    """
    template, state = source_template
    root = Path(shutil.copytree(template, tmp_path / "src"))
    rng.bit_generator.state = state
    settle()  # the copies are new files: let the build that follows vouch for them
    return root


def settle() -> None:
    """Wait out the timestamp granularity, so a build that starts now can vouch for files just written.

    A file modified within the granularity of a build's record is "unverifiable" and is decoded
    again by the next build (preload.freshness); tests that count decodes start after this.
    """
    time.sleep(freshness.FINE_GRANULARITY_NS / 1e9 * 1.5)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only the Orientation tag after SOI."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def journal_done(path: Path) -> int:
    """Rows a cache build's journal marks as written, read without preload's parser (0 before it exists)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0
    return int(np.unpackbits(np.frombuffer(raw[cache.JOURNAL_HEADER :], np.uint8)).sum())


def count_decodes(monkeypatch) -> list[str]:
    """The paths ``Decoder.decode_into`` is called with from now on, in call order (the decode is still done)."""
    calls = []
    real = decode.Decoder.decode_into

    def counting(self, path, slot):
        calls.append(path)
        return real(self, path, slot)

    monkeypatch.setattr(decode.Decoder, "decode_into", counting)
    return calls


def remove_tree(top) -> None:
    """``shutil.rmtree`` without its recursion (Python 3.11's recurses once per level, as pytest's clean-up does)."""
    folders, pending = [], [os.fspath(top)]
    while pending:
        folder = pending.pop()
        folders.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    os.unlink(entry.path)
    for folder in reversed(folders):  # every folder after the ones below it
        os.rmdir(folder)
