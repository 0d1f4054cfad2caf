"""preload.atomic: the path holds the old bytes or all of the new ones; the file and the rename are synced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from preload import atomic

ROOT = Path(__file__).resolve().parent.parent


def test_a_write_replaces_the_file_and_syncs_it_and_its_folder(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_bytes(b"old")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic.write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert synced == [str(tmp_path / "meta.json.tmp"), str(tmp_path)]  # the data, then the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "journal"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic.atomic_write(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal"]


def test_text_mode_and_a_new_file(tmp_path):
    target = tmp_path / "failed.jsonl"
    with atomic.atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write("é\n")
    assert target.read_text(encoding="utf-8") == "é\n"


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from preload import atomic
with atomic.atomic_write({path!r}) as handle:
    handle.write(b"half of the new")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_temporary_of_a_writer_killed_mid_write_is_swept_and_nothing_else(tmp_path):
    target = tmp_path / "c.npy.json"
    target.write_bytes(b"old")
    script = KILLED_WRITER.format(root=str(ROOT), path=str(target))
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert (tmp_path / "c.npy.json.tmp").read_bytes() == b"half of the new"
    (tmp_path / "c.npy.json.tmp.bak").write_bytes(b"a user's file")  # other names: never looked at
    (tmp_path / "notes.tmp").write_bytes(b"a user's file")
    (tmp_path / "c.npy.index.npz.tmp").mkdir()  # the very name, but a folder: not something preload wrote
    removed = atomic.sweep_temporaries([target, tmp_path / "c.npy.index.npz"])
    assert removed == [str(tmp_path / "c.npy.json.tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy.index.npz.tmp", "c.npy.json", "c.npy.json.tmp.bak",
                                                          "notes.tmp"]
    assert target.read_bytes() == b"old"


def test_a_directory_where_a_file_is_read_is_called_a_directory(tmp_path):
    (tmp_path / "meta.json").mkdir()
    with pytest.raises(atomic.TargetError, match=r"'.*meta.json' is a directory, not a regular file"):
        atomic.read_file(str(tmp_path / "meta.json"))
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(atomic.TargetError, match=r"'.*pipe' is a FIFO \(named pipe\), not a regular file"):
        atomic.read_file(str(tmp_path / "pipe"))
