"""``preload verify``'s exit codes seen from outside: a real ``python -m preload`` process.

tests/test_cli_cache.py calls ``main()`` in-process; these go through the
interpreter's own exit status, so a refactor of either keeps the promise held.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import preload
from conftest import smooth_image, write
from preload.cli import main

ROOT = Path(__file__).resolve().parent.parent


def verify(cache: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "preload", "verify", str(cache)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_verify_exits_1_when_a_file_changed_in_place(tmp_path, source, rng):
    out = tmp_path / "c.npy"
    preload.build_cache(source, out, size=8, progress=False)
    changed = source / "bee" / "07.png"
    write(changed, smooth_image(rng, 33, 41))
    os.utime(changed, ns=(1, 2 * 10**9))  # same file count, another size and mtime
    done = verify(out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("stale: ") and "1 changed" in done.stdout and "07.png" in done.stdout
    assert done.stderr == ""


def test_verify_exits_3_on_a_damaged_cache_and_0_once_rebuilt(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    preload.build_cache(source, out, size=8, progress=False)
    with open(out, "r+b") as handle:
        handle.truncate(os.path.getsize(out) - 100)
    assert main(["verify", str(out)]) == 3
    assert capsys.readouterr().out.startswith("damaged: ")
    preload.build_cache(source, out, size=8, force=True, progress=False)
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("fresh: ")
