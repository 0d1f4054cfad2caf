"""Every code block of the README and of docs/ runs, page by page, on a small generated dataset.

A page's blocks run in order, in a fresh folder that holds ``data/train`` (two
class folders of JPEGs), ``data/train.csv`` and, unless the page builds it
itself, ``cache/train.npy`` (a page that builds it makes its folder, as a reader
would have to). Python blocks share one namespace; a block whose fence reads
```` ```python skip-if-missing=NAME ```` runs only where module NAME imports.
A ``bash`` block's ``preload`` commands run through :func:`preload.cli.main` and
must succeed (exit 0), as its ``mkdir -p`` lines do. A block that cannot run
here says so in its fence, ```` ```bash parse-only ````: installs, the test
suite, benchmarks, a cluster's address, thousands of sample photos; its
``preload`` commands are still parsed, so every flag the docs show exists.
Unlabelled blocks are output or configuration and may hold no ``preload``
command. The cluster page's Python runs in a child interpreter, since the
workers of its ``LocalCluster`` import ``__main__``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload
from preload import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*```(\w*)([^\n]*)\n(.*?)^[ \t]*```", re.M | re.S)
SHELLS = ("bash", "sh", "console")


def blocks_of(page: Path) -> list[tuple[str, str, str]]:
    """Every fenced block of the page, in order: (language, the rest of the fence line, code)."""
    return FENCE.findall(page.read_text(encoding="utf-8"))


def python_blocks(page: Path) -> list[str]:
    """The page's Python blocks that can run here, in order."""
    blocks = []
    for language, info, code in blocks_of(page):
        needs = re.findall(r"skip-if-missing=(\S+)", info)
        if language == "python" and all(importlib.util.find_spec(name) is not None for name in needs):
            blocks.append(code)
    return blocks


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block, one per line or per ``&&`` part, comments dropped, split as the shell would."""
    found = []
    for line in code.splitlines():
        command: list[str] = []
        for word in shlex.split(line, comments=True):
            if word == "&&":
                found.append(command)
                command = []
            else:
                command.append(word)
        if command:
            found.append(command)
    return found


def run_shell_block(code: str, info: str, where: str) -> None:
    """Parse every ``preload`` command of a shell block; unless it is ``parse-only``, run them all."""
    parser = cli.build_parser()
    for argv in commands(code):
        if argv[0] == "preload":
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    parser.parse_args(argv[1:])
                except SystemExit:
                    pytest.fail(f"{where}: {shlex.join(argv)} does not parse: {err.getvalue().strip()}")
    if "parse-only" in info:
        return
    for argv in commands(code):
        if argv[:2] == ["mkdir", "-p"]:
            for folder in argv[2:]:
                os.makedirs(folder, exist_ok=True)
        elif argv[0] == "preload":
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                status = cli.main([*argv[1:], *(["--no-progress"] if argv[1] in ("build", "load") else [])])
            assert status == 0, f"{where}: {shlex.join(argv)} exited {status}: {err.getvalue()}"
        else:
            pytest.fail(f"{where}: cannot run {shlex.join(argv)!r} here; mark the block `bash parse-only`")


def make_dataset(folder: Path) -> None:
    rng = np.random.default_rng(7)
    rows = ["path,label"]
    for label, name in enumerate(("cat", "dog")):
        (folder / "data" / "train" / name).mkdir(parents=True)
        for k in range(6):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            image = cv2.resize(small, (48, 36), interpolation=cv2.INTER_CUBIC)
            path = folder / "data" / "train" / name / f"{k}.jpg"
            assert cv2.imwrite(str(path), image)
            rows.append(f"train/{name}/{k}.jpg,{label}")
    (folder / "data" / "train.csv").write_text("\n".join(rows) + "\n")


def test_every_page_has_been_found():
    names = {page.name for page in PAGES}
    assert {"README.md", "loading.md", "caches.md", "training.md", "cluster.md", "api.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_code_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    blocks = blocks_of(page)
    runnable = python_blocks(page) if page.name != "cluster.md" else []
    shells = [(info, code) for language, info, code in blocks if language in SHELLS]
    if not runnable and not shells:
        pytest.skip(f"{page.name} has no block that can run here")
    make_dataset(tmp_path)
    everything = "\n".join(code for _, _, code in blocks)
    if "build_cache(" not in everything and "preload build " not in everything:
        (tmp_path / "cache").mkdir()
        preload.build_cache(str(tmp_path / "data" / "train"), str(tmp_path / "cache" / "train.npy"), size=32,
                            progress=False)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for number, (language, info, code) in enumerate(blocks, 1):
        where = f"{page.name}, block {number}"
        if language == "python" and code in runnable:
            # the documented code is the test
            exec(compile(code, where, "exec"), namespace)
        elif language in SHELLS:
            run_shell_block(code, info, where)
        elif language == "":
            assert not re.search(r"^\s*preload ", code, re.M), f"{where}: a command in an unlabelled block"


def test_the_shell_checks_see_a_wrong_flag_and_a_failing_command(tmp_path, monkeypatch):
    # The checks above must be able to fail: a flag that does not exist, a command that exits 1.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="does not parse: .*unrecognized arguments: --jsn"):
        run_shell_block("preload info cache/train.npy --jsn\n", " parse-only", "page")
    with pytest.raises(AssertionError, match="preload load missing exited 2"):
        run_shell_block("preload load missing   # a comment\n", "", "page")
    with pytest.raises(pytest.fail.Exception, match="cannot run 'pip install x' here"):
        run_shell_block("mkdir -p a && pip install x\n", "", "page")
    assert (tmp_path / "a").is_dir()
    assert commands('pip install ".[demo]" && preload demo   # install\nruff check .\n') == [
        ["pip", "install", ".[demo]"], ["preload", "demo"], ["ruff", "check", "."]]


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_the_cluster_example_builds_the_cache_it_prints(tmp_path):
    pytest.importorskip("distributed")
    page = ROOT / "docs" / "cluster.md"
    make_dataset(tmp_path)
    (tmp_path / "example.py").write_text("\n".join(python_blocks(page)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(12, 256, 256, 3)" in done.stdout
    assert preload.open_cache(tmp_path / "cache" / "train.npy").images.shape == (12, 256, 256, 3)


def test_the_api_page_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in preload.__all__ if f"preload.{name}" not in text]
    assert missing == []


def test_the_readme_stays_the_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 200
    first_block = re.search(r"```bash[^\n]*\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith('pip install ".[demo]" && preload demo')
    assert first_block[1].startswith('pip install -e ".[dev]" && python -m pytest')
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page
