"""A Ctrl-C anywhere in ``preload ...`` ends with one line, ``preload: interrupted``, and exit 130.

Anywhere: while the interpreter is still loading NumPy and OpenCV (before any
of the command's own code has run), while the options are parsed, during the
work, in the clean-up after an error. The start-up case runs the command the
two ways a user does (the console script that pip writes from setup.cfg, and
``python -m preload``) in a child interpreter whose import of NumPy raises
KeyboardInterrupt, which is what a Ctrl-C at that moment does.
"""

from __future__ import annotations

import configparser
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload.__main__ as entry
from preload import cli
from preload.cli import main

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = "preload: interrupted\n"

# A child interpreter in which importing `module` is interrupted, then the command runs.
_INTERRUPT_AT_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["preload", "info", "missing.npy"]
{start}
"""


def terminal_sigint() -> None:
    """In the child before it starts: Ctrl-C as in a terminal, even when the tests run as a background job."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def console_script() -> str:
    """What the script pip writes for the ``preload`` entry point of setup.cfg does."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    entry_points = dict(line.split("=") for line in config["options.entry_points"]["console_scripts"].split("\n")
                        if line.strip())
    module, function = entry_points["preload "].strip().split(":")
    return f"from {module} import {function}\nsys.exit({function}())"


STARTS = {
    "console script": console_script(),
    "python -m preload": "import runpy\nrunpy.run_module('preload', run_name='__main__', alter_sys=True)",
}


@pytest.mark.parametrize("module", ["numpy", "cv2"])
@pytest.mark.parametrize("start", sorted(STARTS))
def test_ctrl_c_while_numpy_and_opencv_load_is_one_line_and_130(tmp_path, start, module):
    code = _INTERRUPT_AT_IMPORT.format(module=module, start=STARTS[start])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, INTERRUPTED, "")


def test_import_preload_loads_neither_numpy_nor_opencv():
    code = "import sys, preload\nprint(sorted({'numpy', 'cv2', 'preload.cli'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert (done.stdout, done.stderr) == ("[]\n", "")


def test_public_names_load_on_first_use_and_agree_with_the_type_checking_imports():
    import ast

    import preload

    tree = ast.parse((REPO / "preload" / "__init__.py").read_text(encoding="utf-8"))
    checked = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                   "TYPE_CHECKING")
    imported = {alias.name: node.module for node in checked.body for alias in node.names}
    assert imported == {name: module for name, module in preload._MODULE_OF.items()}
    assert set(preload.__all__) == {*imported, "__version__"}
    for name in preload.__all__:
        assert getattr(preload, name) is not None
        assert name in dir(preload)
    assert preload.cache.build_cache is preload.build_cache  # a submodule, on first use
    with pytest.raises(AttributeError, match="module 'preload' has no attribute 'nothing'"):
        preload.nothing  # noqa: B018


def test_the_entry_point_ends_interrupts_as_the_command_does():
    assert (entry.INTERRUPTED_LINE + "\n", entry.EXIT_INTERRUPTED) == (INTERRUPTED, cli.EXIT_INTERRUPTED)


def test_after_the_command_a_second_ctrl_c_ends_the_process_at_once(monkeypatch):
    # While the interpreter joins the decoding threads, a Ctrl-C must not print a traceback.
    monkeypatch.setattr(cli, "main", lambda argv=None: 0)
    calls, state = [], {"handler": signal.default_int_handler}

    def fake_signal(number, handler):
        calls.append((number, handler))
        state["handler"], old = handler, state["handler"]
        return old

    monkeypatch.setattr(signal, "signal", fake_signal)
    monkeypatch.setattr(signal, "getsignal", lambda number: state["handler"])
    assert entry.main() == 0
    assert len(calls) == 2 and calls[-1] == (signal.SIGINT, signal.SIG_DFL)  # noted while loading, then default
    calls.clear()
    state["handler"] = signal.SIG_IGN  # started in the background: stays ignored
    assert entry.main() == 0
    assert calls == []


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_the_options_are_parsed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", interrupt)
    assert main(["info", "c.npy"]) == 130
    assert capsys.readouterr() == ("", INTERRUPTED)


def test_ctrl_c_while_an_error_is_being_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "error_line", interrupt)
    assert main(["load", str(tmp_path / "missing"), "--no-progress"]) == 130
    assert capsys.readouterr() == ("", INTERRUPTED)


@pytest.fixture
def source(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    for k in range(60):
        path = tmp_path / "src" / "ab"[k % 2] / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    return tmp_path / "src"


def loading_numpy(pid: int) -> bool:
    """The process has begun to load NumPy's compiled core: the command's own code runs."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8") as handle:
            return "_multiarray_umath" in handle.read()
    except OSError:
        return False


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_a_real_sigint_at_any_moment_is_one_line(source, tmp_path):
    # Whenever the signal lands (while NumPy loads, listing, decoding, writing the metadata, or
    # after the build ended), there is no traceback; an interrupted build resumes to the same cache.
    # (A signal before the interpreter has even started is Python's, not the command's.)
    if not os.path.exists(f"/proc/{os.getpid()}/maps"):
        pytest.skip("needs /proc to see when the command has started")
    target = tmp_path / "c.npy"
    for delay in (0.0, 0.1, 0.3, 0.6):
        process = subprocess.Popen([sys.executable, "-m", "preload", "build", str(source), str(target), "--size",
                                    "64", "--no-progress", "--workers", "1"], cwd=tmp_path, env=child_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=terminal_sigint)
        deadline = time.monotonic() + 30
        while not loading_numpy(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        if process.returncode == 0:  # it had finished
            assert err == ""
        elif process.returncode == -signal.SIGINT:  # the signal ended it at exit, which a shell reports as 130 too
            assert err in ("", INTERRUPTED)
        else:
            assert (process.returncode, err) == (130, INTERRUPTED), out
    assert main(["build", str(source), str(target), "--size", "64", "--no-progress"]) == 0
    assert main(["verify", str(target)]) == 0


IMPORT_CUT_SHORT = """
import importlib.abc, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the tests run in the background
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "preload.cli":
            if {interrupt}:
                try:  # NumPy's C-extension import turns the KeyboardInterrupt into an ImportError
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
                except KeyboardInterrupt as exc:
                    raise ImportError("PyCapsule_Import could not import module 'datetime'") from exc
            raise ImportError("a broken install")
        return None
sys.meta_path.insert(0, Finder())
import preload.__main__
sys.argv = ["preload", "--version"]
sys.exit(preload.__main__.main())
"""


@pytest.mark.parametrize("interrupt", [True, False])
def test_an_import_error_caused_by_ctrl_c_is_an_interrupt_and_a_real_one_is_not_hidden(interrupt):
    done = subprocess.run([sys.executable, "-c", IMPORT_CUT_SHORT.format(interrupt=interrupt)], capture_output=True,
                          text=True, timeout=60, env=child_env())
    if interrupt:
        assert (done.returncode, done.stderr) == (130, INTERRUPTED)
    else:
        assert done.returncode == 1 and done.stderr.rstrip().endswith("ImportError: a broken install")
