"""preload.atomic: the path holds the old bytes or all of the new ones; the file and the rename are synced."""

from __future__ import annotations

import os

import pytest

from preload import atomic


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
