"""The package's shape: imports run only downwards through the layers below, and the documented names exist.

The layer map is written once, here. A module may import only from a lower
layer (function-level imports count too); modules that share a layer do
not import each other. A new module must be given a layer.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import preload

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "preload"

# Bottom -> top. One set per layer; names that may not exist (yet) are fine.
LAYERS: list[set[str]] = [
    {"errors", "_version"},  # exception types; the version string
    {"options"},  # every option's check and its one description
    {"sources"},  # files -> manifest
    {"headers"},  # format, size, orientation from a file's first bytes
    {"quiet"},  # the OpenCV/stderr silencer
    {"decode"},  # one file -> one slot
    {"atomic"},  # write-temp-fsync-rename; files created without following links
    {"target"},  # allocate the output; the out= check
    {"freshness"},  # is a cache still true to its sources: the stat record, its rules, the stat engine
    {"shared"},  # arrays in shared memory, passed to spawned processes by file descriptor
    {"fill"},  # the threaded fill engine and the one per-row loop
    {"rows"},  # reading rows from a memmap
    {"augment"},  # batch transforms on uint8, normalisation, stats
    {"batching"},  # the batch engine: background preparation into reused buffers
    {"dataset"},  # the result object: array-like access, batches; ImageFiles
    {"loader"},  # the load verb
    # RSS sampling and the fresh-process harness (memory.py before its rename); the built-in
    # sample photos, above atomic, through which they are written
    {"measure", "memory", "samples"},
    {"report"},  # the naive-vs-preload memory report
    # Below cache, not above it: build_cache(client=) hands its fill to the cluster
    # the way it hands a local one to fill.py, and distributed needs nothing of cache.
    {"distributed"},
    {"cache"},  # the on-disk cache
    {"torch", "keras"},  # framework adapters
    {"__init__"},  # the public names
    {"cli"},  # the command line
    {"__main__"},
]


def layer_of(module: str) -> int:
    for level, names in enumerate(LAYERS):
        if module in names:
            return level
    raise KeyError(module)


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def imports_of(module: str) -> dict[str, int]:
    """The package modules ``module`` imports (anywhere in it), each with the line of its first import."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names = set(modules())
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module or ""
            elif node.level == 0 and (node.module or "").split(".")[0] == "preload":
                base = (node.module or "").partition(".")[2]
            else:
                continue
            if base:
                add(base.split(".")[0], node.lineno)
            else:  # from . import x: a submodule, or a name of the package's __init__
                for alias in node.names:
                    add(alias.name if alias.name in names else "__init__", node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "preload":
                    add(parts[1] if len(parts) > 1 else "__init__", node.lineno)
    found.pop(module, None)
    return found


def test_every_module_has_a_layer():
    missing = [name for name in modules() if not any(name in names for names in LAYERS)]
    assert missing == [], f"give these modules a layer in LAYERS: {missing}"


def test_imports_only_run_downwards():
    wrong = []
    for module in modules():
        for target, line in imports_of(module).items():
            if layer_of(target) >= layer_of(module):
                wrong.append(f"preload/{module}.py:{line} imports {target} (layer {layer_of(target)} >= "
                             f"{layer_of(module)})")
    assert wrong == []


def test_no_import_cycles():
    graph = {module: set(imports_of(module)) for module in modules()}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_a_wrong_import(tmp_path, monkeypatch):
    # The checks above must be able to fail: an upward import and a cycle, in a scratch copy.
    for path in PACKAGE.glob("*.py"):
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with open(tmp_path / "options.py", "a", encoding="utf-8") as handle:
        handle.write("\n\ndef _late():\n    from .loader import load\n    return load\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert "loader" in imports_of("options")
    with pytest.raises(AssertionError, match=r"options.py:\d+ imports loader"):
        test_imports_only_run_downwards()
    with pytest.raises(AssertionError, match="options"):
        test_no_import_cycles()


def test_every_public_name_is_importable():
    for name in preload.__all__:
        assert getattr(preload, name) is not None, name
    assert preload.ClusterError.__mro__[1] is preload.PreloadError  # no Dask needed to catch it
    assert issubclass(preload.TargetError, preload.OptionError)


def documented_names() -> set[str]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = set()
    for path in texts:
        if path.exists():
            found |= set(re.findall(r"\bpreload((?:\.[A-Za-z_]\w*)+)", path.read_text(encoding="utf-8")))
    return {"preload" + name for name in found}


# Names the docs write that are not Python: file names.
NOT_PYTHON = re.compile(r"\.(yaml|yml|toml|cfg|json|md|png|npy|txt)$")
# Submodules whose API is documented as a submodule on purpose: importing them imports a framework.
ADAPTERS = {"torch", "keras"}


def resolve(dotted: str):
    """The object ``preload.a.b...`` names, importing submodules on the way."""
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=1):
        if not hasattr(value, part):
            importlib.import_module(".".join(parts[: depth + 1]))
        value = getattr(value, part)
    return value


def test_every_name_the_docs_mention_exists_and_is_exported():
    for dotted in sorted(documented_names()):
        if NOT_PYTHON.search(dotted):
            continue
        parts = dotted.split(".")
        if parts[1] in ADAPTERS:
            pytest.importorskip(parts[1])
        value = resolve(dotted)
        assert value is not None, dotted
        inner = parts[1]
        if len(parts) == 3 and inner not in ADAPTERS and isinstance(getattr(preload, inner, None), type(preload)):
            assert parts[2] in preload.__all__, f"{dotted} is documented; export it as preload.{parts[2]}"


def test_npy_headers_are_parsed_in_one_place():
    """Caches, partials and the members of an index read their ``.npy`` header through target.read_npy_header."""
    parsers = {path.stem: path.read_text(encoding="utf-8").count("read_magic(") for path in PACKAGE.glob("*.py")}
    assert {name: count for name, count in parsers.items() if count} == {"target": 1}
