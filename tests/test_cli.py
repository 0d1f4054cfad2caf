"""The ``preload`` command: exit codes, what it prints, and what it writes."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload
from preload import cli
from preload.cli import main
from preload.options import OPTIONS

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


def installed_version() -> str:
    """What the package metadata says, when preload is installed as preload-images; else the source's version."""
    try:
        return importlib.metadata.version("preload-images")
    except importlib.metadata.PackageNotFoundError:
        return preload.__version__


def test_version_prints_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])

    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"preload {installed_version()}\n"


def test_version_comes_from_the_metadata_then_the_source(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"preload-images": "9.8.7"}[name])
    assert cli.package_version() == "9.8.7"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.package_version() == preload.__version__


def test_progress_default_is_on_in_a_notebook_and_bars_are_tqdm_auto(monkeypatch):
    import tqdm.auto

    from preload import cache as cache_module
    from preload import loader
    from preload.options import progress_wanted

    assert loader.tqdm is tqdm.auto.tqdm and cache_module.tqdm is tqdm.auto.tqdm
    assert progress_wanted(None) is False  # pytest's stderr is not a terminal, and no kernel runs
    assert (progress_wanted(True), progress_wanted(False)) == (True, False)

    class Shell:
        config = {"IPKernelApp": {"connection_file": "kernel.json"}}

    kernel = types.ModuleType("IPython")
    kernel.get_ipython = Shell
    monkeypatch.setitem(sys.modules, "IPython", kernel)
    assert progress_wanted(None) is True
    assert progress_wanted(False) is False
    kernel.get_ipython = lambda: None  # IPython imported, but no shell (a plain script)
    assert progress_wanted(None) is False


def test_no_command_prints_help_and_returns_2(capsys):
    rc = main([])

    out = capsys.readouterr().out
    assert rc == 2
    assert out.startswith("usage: preload ")
    assert "Load a whole image dataset into one preallocated uint8 array." in out
    assert "preload load data/train --size 224 --out train.npy" in out
    assert "PyTorch users pass --layout nchw" in out
    for command in ("demo", "load"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


def test_python_dash_m_preload_version():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    result = subprocess.run(
        [sys.executable, "-m", "preload", "--version"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"preload {installed_version()}\n"
    assert result.stderr == ""

    result = subprocess.run(
        [sys.executable, "-m", "preload"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout.startswith("usage: preload ")
    assert "exit codes: 0 ok; 1 the work failed" in result.stdout


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
        (["--size", "16"], (3, 16, 16, 3), "NHWC"),  # the default layout, as preload.load's
        (["--size", "16x24", "--layout", "NHWC"], (3, 16, 24, 3), "NHWC"),
        (["--size", "16,24", "--layout", "nchw"], (3, 3, 16, 24), "NCHW"),
        (["--size", "16X24", "--layout", "nhwc", "--color", "gray"], (3, 16, 24, 1), "NHWC"),
        ([], (3, 20, 12, 3), "NHWC"),  # no --size: the images' own (common) size
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
    assert lines_starting(out, "images ") == [images_line((2, 8, 8, 3), "NHWC")]
    assert lines_starting(out, "classes") == []


def test_load_out_writes_a_cache_that_keeps_labels_classes_and_paths(classes_root, tmp_path, capsys):
    target = tmp_path / "x.npy"

    rc = main(["load", str(classes_root), "--size", "16", "--out", str(target), "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    [wrote] = lines_starting(out, "wrote")
    assert wrote.startswith(f"wrote    {target} (a cache: preload.open_cache() gives images, labels, classes, paths")
    assert lines_starting(out, "images ") == [images_line((3, 16, 16, 3), "NHWC")]
    expected = preload.load(classes_root, size=16, progress=False)
    written = np.load(target)
    assert written.shape == (3, 16, 16, 3) and written.dtype == np.uint8
    assert np.array_equal(written, expected.images)
    cached = preload.open_cache(target)
    assert cached.classes == ["cat", "dog"]
    assert cached.labels.tolist() == [0, 0, 1]
    assert list(cached.paths) == [os.path.abspath(p) for p in expected.paths]
    assert np.array_equal(cached.images, expected.images)
    cache_files = ["x.npy", "x.npy.index.npz", "x.npy.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", *cache_files]


def test_load_out_keeps_a_cache_of_other_options_unless_forced(classes_root, tmp_path, capsys):
    target = tmp_path / "x.npy"
    assert main(["load", str(classes_root), "--size", "16", "--out", str(target), "--no-progress"]) == 0
    before = target.read_bytes()
    capsys.readouterr()

    rc = main(["load", str(classes_root), "--size", "8", "--layout", "nchw", "--out", str(target), "--no-progress"])

    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("preload: error: ") and "--force" in err and len(err.splitlines()) == 1, err
    assert target.read_bytes() == before
    rc = main(["load", str(classes_root), "--size", "8", "--layout", "nchw", "--out", str(target), "--no-progress",
               "--force"])
    assert rc == 0, capsys.readouterr().err
    assert preload.open_cache(target).images.shape == (3, 3, 8, 8)


def test_load_missing_folder_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"

    rc = main(["load", str(missing), "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert_one_line_error(captured.err, f"SOURCE '{missing}' does not exist")


def test_load_one_image_file_says_it_is_a_file(classes_root, capsys):
    image = classes_root / "cat" / "0.png"

    rc = main(["load", str(image), "--no-progress"])

    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"SOURCE '{image}' is a file, not a folder or a CSV file")


def test_load_corrupt_file_is_a_one_line_error(classes_root, capsys):
    bad = classes_root / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)

    rc = main(["load", str(classes_root), "--size", "8", "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 1
    assert_one_line_error(captured.err, f"cannot load '{bad}'", "; --on-error skip leaves such files out")


def test_load_on_error_skip_prints_the_failures_and_writes_the_failed_list(classes_root, tmp_path, capsys):
    bad = [classes_root / "cat" / f"0{k}.png" for k in range(7)]
    for path in bad:
        path.write_bytes(b"")
    listing = tmp_path / "failed.txt"

    rc = main(["load", str(classes_root), "--size", "8", "--on-error", "skip", "--no-progress",
               "--failed-list", str(listing)])

    captured = capsys.readouterr()
    assert rc == 0
    assert captured.err == ""  # the library's "see Dataset.failed" warning is not the CLI's word
    assert lines_starting(captured.out, "images ") == [images_line((3, 8, 8, 3), "NHWC")]
    lines = captured.out.splitlines()
    start = lines.index("failed   7 file(s) not loaded:")
    shown = [f"         '{path}': the file is empty (0 bytes) [empty]" for path in bad[:5]]
    assert lines[start + 1 : start + 6] == shown
    assert lines[start + 6] == f"         all 7 listed in {listing}"
    assert listing.read_text().splitlines() == [f"{path}\tempty\tthe file is empty (0 bytes)" for path in bad]


def test_load_failures_beyond_the_first_five_point_to_failed_list(classes_root, capsys):
    for k in range(7):
        (classes_root / "cat" / f"0{k}.png").write_bytes(b"")

    rc = main(["load", str(classes_root), "--size", "8", "--on-error", "zero", "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    assert "         ... and 2 more (--failed-list FILE lists them all)" in out.splitlines()


def test_load_mixed_sizes_without_size_says_how_to_pick_one(classes_root, capsys):
    write_image(classes_root / "dog" / "big.png", seed=9, size=(30, 30))

    rc = main(["load", str(classes_root), "--no-progress"])

    assert rc == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "images differ in size (", "is 30x30", "is 20x12", "pass --size 256 (or --size HxW)")
    assert "size=" not in err


def test_empty_class_folder_warns_and_non_images_are_counted(classes_root, capsys):
    (classes_root / "empty").mkdir()
    (classes_root / "cat" / "notes.txt").write_text("x")
    (classes_root / "dog" / "README").write_text("x")

    rc = main(["load", str(classes_root), "--size", "8", "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 0
    warning = "preload: warning: 1 class folder(s) hold no images: 'empty' (their labels are kept, unused)\n"
    assert captured.err == warning
    [skipped] = lines_starting(captured.out, "skipped")
    assert skipped.startswith(f"skipped  2 file(s) that are not images (e.g. '{classes_root / 'cat' / 'notes.txt'}';")


def test_limit_loads_the_first_n_files(classes_root, capsys):
    rc = main(["load", str(classes_root), "--size", "8", "--limit", "2", "--no-progress"])

    assert rc == 0
    out = capsys.readouterr().out
    assert lines_starting(out, "images ") == [images_line((2, 8, 8, 3), "NHWC")]


def test_csv_column_names(classes_root, tmp_path, capsys):
    table = tmp_path / "list.csv"
    table.write_text("file,kind\ndata/cat/0.png,x\ndata/dog/2.png,y\ndata/cat/1.png,x\n")

    rc = main(["load", str(table), "--size", "8", "--path-column", "file", "--label-column", "kind", "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    assert lines_starting(out, "images ") == [images_line((3, 8, 8, 3), "NHWC")]
    assert lines_starting(out, "classes") == ["classes  2: x, y"]
    rc = main(["load", str(classes_root), "--path-column", "file", "--no-progress"])
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, "--path-column and --label-column are for a CSV SOURCE")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_a_csv_without_the_path_column_points_to_the_flag(tmp_path, capsys):
    listed = tmp_path / "list.csv"
    listed.write_text("file,label\na.png,cat\n")
    assert main(["load", str(listed), "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"preload: error: CSV '{listed}' has no 'path' column (columns: file, label); "
                                       "--path-column NAME names the column of image paths\n")


def test_every_api_option_is_on_load_and_build_with_its_default_in_help():
    commands = subcommands()
    for name in ("load", "build", "demo"):
        actions = {flag: action for action in commands[name]._actions for flag in action.option_strings}
        help_text = commands[name].format_help()
        for option in OPTIONS.values():
            assert option.flag in actions, (name, option.flag)
            assert actions[option.flag].default == (256 if (name, option.name) == ("demo", "size") else option.default)
        assert "--limit N" in help_text or name == "demo"
    for flag in ("--no-exif", "--no-reduce", "--no-progress", "--interpolation", "--fill", "--max-pixels"):
        assert flag in commands["build"].format_help()


# Python's words, or an API keyword (size=...), where a command line user reads the help.
API_WORDS = re.compile(r"\b(None|True|False)\b|\b[a-z_]+=\S")


def test_every_option_s_help_ends_with_its_real_default_in_words():
    defaults = {}
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            found = re.search(r"\(default: (.+)\)$", action.help)
            assert found, (name, flag, action.help)
            assert found[1] not in ("None", "none", "True", "False", "yes", "no", "all"), (name, flag, found[1])
            assert API_WORDS.search(action.help % {"default": action.default}) is None, (name, flag, action.help)
            defaults[name, flag] = found[1]
    assert defaults["load", "--size"] == "none: keep the images' own size"
    assert defaults["demo", "--size"] == defaults["report", "--size"] == "256"
    assert defaults["build", "--workers"] == "all: every usable core"
    assert defaults["build", "--progress"] == "shown when stderr is a terminal or in a Jupyter notebook"
    assert defaults["load", "--interpolation"] == "auto"
    assert defaults["load", "--exif"] == defaults["load", "--reduce"] == "on"
    assert defaults["load", "--max-pixels"] == "134217728 = 2**27"
    assert defaults["info", "--json"] == "off, text"
    assert defaults["load", "--force"] == "off, refuse to replace it"
    assert defaults["report", "--limit"] == "every file of SOURCE; without SOURCE, 400 samples"
    assert defaults["report", "--strategies"] == "all four, naive,naive-vstack,preload,preload-memmap"
    help_text = subcommands()["report"].format_help()
    assert "naive,naive-vstack," in " ".join(help_text.split())  # never broken at a hyphen
    assert "N|HxW|none" not in help_text  # the report needs a size


def test_api_options_reach_the_library(classes_root, capsys, monkeypatch):
    seen = {}

    def fake_load(source, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", fake_load)
    main(["load", str(classes_root), "--size", "8x6", "--interpolation", "area", "--fill", "1,2,3", "--no-exif",
          "--no-reduce", "--max-pixels", "1000", "--workers", "2", "--on-error", "zero", "--no-progress",
          "--layout", "nchw", "--color", "bgr", "--resize", "fit"])

    assert seen == {"size": (8, 6), "layout": "NCHW", "color": "bgr", "resize": "fit", "interpolation": "area",
                    "fill": (1, 2, 3), "exif": False, "reduce": False, "max_pixels": 1000, "workers": 2,
                    "progress": False, "on_error": "zero"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--out", "images.bin"], "--out 'images.bin' is not accepted; it must end in .npy"),
        (["--fill", "300"], "--fill 300 is not accepted; use an int 0..255"),
        (["--fill", "1,2"], "--fill 1,2 is not accepted; use an int 0..255 or 3 such ints (in rgb order)"),
    ],
)
def test_load_rejected_values_are_one_line_errors_in_the_cli_words(classes_root, capsys, args, fragment):
    # The library rejects --fill 300 (OptionError); for the CLI it is a usage error: exit 2, in its words.
    rc = main(["load", str(classes_root), "--size", "8", "--no-progress", *args])

    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert_one_line_error(captured.err, fragment)
    assert "fill=" not in captured.err and "out=" not in captured.err
    assert "(" not in captured.err.split("accepted")[0]  # the value as typed, not a Python tuple


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--workers", "0"], "argument --workers: 0 is not accepted; use a positive int, or all for every core"),
        (["--size", "0x5"], "argument --size: 0x5 is not accepted; height and width must be at least 1"),
    ],
)
def test_rejected_values_are_said_as_the_flag_takes_them(classes_root, capsys, args, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["load", str(classes_root), "--no-progress", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert_one_line_error(err, fragment)
    assert API_WORDS.search(err) is None, err


def test_memory_check_points_to_the_out_flag(classes_root, capsys, monkeypatch):
    from preload import target

    monkeypatch.setattr(target.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=100))

    rc = main(["load", str(classes_root), "--size", "8", "--no-progress"])

    assert rc == 1
    err = capsys.readouterr().err
    assert_one_line_error(err, "of memory is available", "e.g. --out images.npy")
    assert "out=" not in err


def test_load_out_in_a_missing_folder_is_a_one_line_error(classes_root, tmp_path, capsys):
    target = tmp_path / "nowhere" / "x.npy"

    rc = main(["load", str(classes_root), "--size", "8", "--out", str(target), "--no-progress"])

    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, f"--out '{target}': the folder '{target.parent}' does not exist")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "x", "--size", "abc"], "argument --size: size 'abc' is not N or HxW (e.g. 256 or 224x320)"),
        (["load", "x", "--size", "1x2x3"], "argument --size: size '1x2x3' is not N or HxW (e.g. 256 or 224x320)"),
        (["load", "x", "--size", "0"], "argument --size: 0 is not accepted"),
        (["report", "--size=-5x8"], "argument --size: (-5, 8) is not accepted"),
        (["load", "x", "--workers", "many"], "argument --workers: 'many' is not accepted; use a positive int"),
        (["load", "x", "--workers", "0"], "argument --workers: 0 is not accepted; use a positive int"),
        (["load", "x", "--layout", "chw"], "argument --layout: 'chw' is not accepted; use one of 'NHWC', 'NCHW'"),
        (["build", "x", "c.npy", "--color", "cmyk"], "argument --color: 'cmyk' is not accepted"),
        (["load", "x", "--resize", "squash"], "argument --resize: 'squash' is not accepted"),
        (["load", "x", "--on-error", "ignore"], "argument --on-error: 'ignore' is not accepted"),
        (["load", "x", "--interpolation", "bicubic"], "argument --interpolation: 'bicubic' is not accepted"),
        (["load", "x", "--max-pixels", "0"], "argument --max-pixels: '0' is not accepted; use a positive int"),
        (["load", "x", "--limit", "0"], "argument --limit: 0 is not accepted; give a positive number"),
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
    assert_one_line_error(err, message, " --help)")


def test_ctrl_c_returns_130(classes_root, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", interrupted)

    rc = main(["load", str(classes_root), "--no-progress"])

    assert rc == 130
    assert capsys.readouterr().err == "preload: interrupted\n"


# ------------------------------------------------------------------ demo


def test_demo_refuses_a_folder_that_holds_files(tmp_path, capsys):
    mine = tmp_path / "astronaut" / "000000.jpg"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")

    rc = main(["demo", "--count", "3", "--dir", str(tmp_path), "--no-progress"])

    err = capsys.readouterr().err
    assert rc == 2
    assert err == f"preload: error: --dir '{tmp_path}' is not empty; give a new or empty folder for the sample photos\n"
    assert mine.read_bytes() == b"the user's own file"


def test_demo_makes_and_loads_samples(tmp_path, capsys):
    pytest.importorskip("skimage")

    rc = main(["demo", "--count", "16", "--size", "32", "--dir", str(tmp_path), "--no-progress"])

    out = capsys.readouterr().out
    assert rc == 0
    [samples] = lines_starting(out, "samples")
    assert samples.startswith(f"samples  16 images from scikit-image's photos in {tmp_path} (")
    assert lines_starting(out, "images ") == [images_line((16, 32, 32, 3), "NHWC")]
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
    assert_one_line_error(captured.err, "argument --count: 0 is not accepted; give a positive number",
                          "(see: preload demo --help)")
    assert list(tmp_path.iterdir()) == []


def test_a_build_where_every_file_failed_is_a_failure_not_an_empty_success(tmp_path, capsys):
    folder = tmp_path / "data" / "x"
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_bytes(b"not a jpeg")
    (folder / "2.jpg").write_bytes(b"")

    rc = main(["build", str(tmp_path / "data"), str(tmp_path / "c.npy"), "--size", "8", "--on-error", "skip",
               "--no-progress"])

    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err == "preload: error: no image could be loaded: all 2 file(s) failed\n"
    assert "failed   2 file(s) not loaded:" in captured.out
