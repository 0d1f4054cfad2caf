"""Every Python block of the README and of docs/ runs, page by page, on a small generated dataset.

A page's blocks run in order in one namespace, in a fresh folder that holds
``data/train`` (two class folders of JPEGs), ``data/train.csv`` and, unless the
page builds it itself, ``cache/train.npy`` (a page that builds it makes its folder, as
a reader would have to). A block whose fence reads
```` ```python skip-if-missing=NAME ```` runs only where module NAME imports. The
cluster page runs in a child interpreter, since the workers of its
``LocalCluster`` import ``__main__``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import preload

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)


def python_blocks(page: Path) -> list[str]:
    """The page's Python blocks that can run here, in order."""
    blocks = []
    for info, code in FENCE.findall(page.read_text(encoding="utf-8")):
        needs = re.findall(r"skip-if-missing=(\S+)", info)
        if all(importlib.util.find_spec(name) is not None for name in needs):
            blocks.append(code)
    return blocks


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


@pytest.mark.parametrize("page", [page for page in PAGES if page.name != "cluster.md"], ids=lambda page: page.name)
def test_the_python_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no Python block that can run here")
    make_dataset(tmp_path)
    code = "\n".join(blocks)
    if "build_cache(" not in code:
        (tmp_path / "cache").mkdir()
        preload.build_cache(str(tmp_path / "data" / "train"), str(tmp_path / "cache" / "train.npy"), size=32,
                            progress=False)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for number, block in enumerate(blocks, 1):
        # the documented code is the test
        exec(compile(block, f"{page.name}, Python block {number}", "exec"), namespace)


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
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith('pip install ".[demo]" && preload demo')
    assert first_block[1].startswith('pip install -e ".[dev]" && python -m pytest')
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page
