"""The ``preload`` command: exit codes, what it prints, and what it writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload
from preload import cli
from preload.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, *, seed: int, size: tuple[int, int] = (20, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image), path
    return path


@pytest.fixture
def classes_root(tmp_path) -> Path:
    """cat/0.png, cat/1.png, dog/2.png: three 20x12 (height x width) noise images."""
    root = tmp_path / "data"
    for seed, name in enumerate(("cat/0.png", "cat/1.png", "dog/2.png")):
        write_image(root / name, seed=seed)
    return root


def lines_starting(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def images_line(shape: tuple[int, ...], layout: str) -> str:
    nbytes = int(np.prod(shape))
    return f"images   {shape} uint8 {layout} ({nbytes / 1e6:.1f} MB)"


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith("preload: error: ")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ------------------------------------------------------------------ top level


def test_version_prints_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])

    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"preload {preload.__version__}\n"


def test_no_command_prints_help_and_returns_2(capsys):
    rc = main([])

    out = capsys.readouterr().out
    assert rc == 2
    assert out.startswith("usage: preload ")
    assert "Load a whole image dataset into one preallocated uint8 array." in out
    assert "preload load data/train --size 224 --layout nchw --out train.npy" in out
    for command in ("demo", "load"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


def test_python_dash_m_preload_version():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    result = subprocess.run(
        [sys.executable, "-m", "preload", "--version"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"preload {preload.__version__}\n"
    assert result.stderr == ""


# ------------------------------------------------------------------ load


def test_load_prints_shape_classes_time_and_memory(classes_root, capsys):
    rc = main(["load", str(classes_root), "--size", "16", "--layout", "nhwc", "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 0
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == images_line((3, 16, 16, 3), "NHWC")
    assert lines[1] == "classes  2: cat, dog"
    assert re.fullmatch(r"time     \d+\.\d\d s \(\d+ images/s\)", lines[2]), lines[2]
    assert re.fullmatch(
        r"memory   peak RSS [\d.]+ MB, [\d.]+ MB above the [\d.]+ MB baseline = [\d.]+ x the array", lines[3]
    )
    assert len(lines) == 4


@pytest.mark.parametrize(
    ("args", "shape", "layout"),
    [
        (["--size", "16"], (3, 3, 16, 16), "NCHW"),  # the load command's default layout
        (["--size", "16x24", "--layout", "NHWC"], (3, 16, 24, 3), "NHWC"),
        (["--size", "16,24", "--layout", "nchw"], (3, 3, 16, 24), "NCHW"),
        (["--size", "16X24", "--layout", "nhwc", "--color", "gray"], (3, 16, 24, 1), "NHWC"),
        ([], (3, 3, 20, 12), "NCHW"),  # no --size: the images' own (common) size
    ],
)
def test_load_size_and_layout_options(classes_root, capsys, args, shape, layout):
    rc = main(["load", str(classes_root), "--no-progress", *args])

    assert rc == 0
    assert lines_starting(capsys.readouterr().out, "images ") == [images_line(shape, layout)]


def test_load_flat_folder_prints_no_classes_line(tmp_path, capsys):
    for seed in range(2):
        write_image(tmp_path / f"{seed}.png", seed=seed)

    rc = main(["load", str(tmp_path), "--size", "8", "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    assert lines_starting(out, "images ") == [images_line((2, 3, 8, 8), "NCHW")]
    assert lines_starting(out, "classes") == []


def test_load_out_writes_a_npy_that_np_load_opens(classes_root, tmp_path, capsys):
    target = tmp_path / "x.npy"

    rc = main(["load", str(classes_root), "--size", "16", "--layout", "nhwc", "--out", str(target), "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    assert lines_starting(out, "wrote") == [f"wrote    {target}"]
    assert lines_starting(out, "images ") == [images_line((3, 16, 16, 3), "NHWC")]
    written = np.load(target)
    assert written.shape == (3, 16, 16, 3)
    assert written.dtype == np.uint8
    expected = preload.load(classes_root, size=16, layout="NHWC", progress=False).images
    assert np.array_equal(written, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "x.npy"]  # no .partial left behind


def test_load_missing_folder_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"

    rc = main(["load", str(missing), "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out == ""
    assert_one_line_error(captured.err, f"'{missing}'", "does not exist")


def test_load_corrupt_file_is_a_one_line_error(classes_root, capsys):
    bad = classes_root / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)

    rc = main(["load", str(classes_root), "--size", "8", "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 1
    assert_one_line_error(captured.err, f"cannot load '{bad}'")


def test_load_on_error_skip_reports_the_failure(classes_root, capsys):
    bad = classes_root / "cat" / "00.png"
    bad.write_bytes(b"")

    rc = main(["load", str(classes_root), "--size", "8", "--on-error", "skip", "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    assert lines_starting(out, "images ") == [images_line((3, 3, 8, 8), "NCHW")]
    [failed] = lines_starting(out, "failed")
    assert failed.startswith(f"failed   1 file(s); first: '{bad}': ")
    assert failed.endswith(" [empty]")


def test_load_mixed_sizes_without_size_is_a_one_line_error(classes_root, capsys):
    write_image(classes_root / "dog" / "big.png", seed=9, size=(30, 30))

    rc = main(["load", str(classes_root), "--no-progress"])

    assert rc == 1
    assert_one_line_error(capsys.readouterr().err, "size=None needs all images to have one size", "30x30")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--layout", "chw"], "layout='chw' is not accepted"),
        (["--color", "cmyk"], "color='cmyk' is not accepted"),
        (["--resize", "squash"], "resize='squash' is not accepted"),
        (["--on-error", "ignore"], "on_error='ignore' is not accepted"),
        (["--workers", "0"], "workers=0 is not accepted"),
        (["--out", "images.bin"], "out='images.bin' is not accepted; a file target must end in .npy"),
    ],
)
def test_load_rejected_option_values_are_one_line_errors(classes_root, capsys, args, fragment):
    # The library rejects these (OptionError / TargetError); for the CLI they are usage errors: exit 2.
    rc = main(["load", str(classes_root), "--size", "8", "--no-progress", *args])

    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert_one_line_error(captured.err, fragment)


def test_load_out_in_a_missing_folder_is_a_one_line_error(classes_root, tmp_path, capsys):
    target = tmp_path / "nowhere" / "x.npy"

    rc = main(["load", str(classes_root), "--size", "8", "--out", str(target), "--no-progress"])

    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"out='{target}'", "does not exist")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "x", "--size", "abc"], "argument --size: size 'abc' is not N or HxW (e.g. 256 or 224x320)"),
        (["load", "x", "--size", "1x2x3"], "argument --size: size '1x2x3' is not N or HxW (e.g. 256 or 224x320)"),
        (["load", "x", "--size", "0"], "argument --size: size=0 is not accepted"),
        (["report", "--size=-5x8"], "argument --size: size=(-5, 8) is not accepted"),
        (["load", "x", "--workers", "many"], "argument --workers: invalid int value: 'many'"),
        (["demo", "--count", "lots"], "argument --count: invalid int value: 'lots'"),
        (["load"], "the following arguments are required: source"),
        (["unpack"], "argument COMMAND: invalid choice: 'unpack'"),
    ],
)
def test_usage_errors_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)

    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: preload")
    assert message in err
    assert "Traceback" not in err


def test_ctrl_c_returns_130(classes_root, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", interrupted)

    rc = main(["load", str(classes_root), "--no-progress"])

    assert rc == 130
    assert capsys.readouterr().err == "preload: interrupted\n"


# ------------------------------------------------------------------ demo


def test_demo_makes_and_loads_samples(tmp_path, capsys):
    pytest.importorskip("skimage")

    rc = main(["demo", "--count", "16", "--size", "32", "--dir", str(tmp_path), "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    [samples] = lines_starting(out, "samples")
    assert samples.startswith(f"samples  16 images from scikit-image's photos in {tmp_path} (")
    assert lines_starting(out, "images ") == [images_line((16, 3, 32, 32), "NCHW")]
    assert lines_starting(out, "classes") == [
        "classes  8: astronaut, camera, chelsea, coffee, gravel, hubble_deep_field, retina, rocket"
    ]
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 16
    assert written[0] == "astronaut/000000.jpg"


def test_demo_count_zero_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--count", "0", "--dir", str(tmp_path), "--no-progress"])

    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "argument --count: 0 is not accepted; give a positive number" in captured.err
    assert "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []
