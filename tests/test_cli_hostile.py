"""Every subcommand against hostile paths: one ``preload: error:`` line, no traceback, the documented exit code.

Exit codes (preload/cli.py): 0 ok; 1 the work failed (also: no space left);
2 a usage error, including a bad path the user gave (missing, not writable,
a file where a folder is expected or the other way round); 3 no complete
cache; 130 interrupted.

Tests run as root, so ``chmod`` stops nothing: unwritable means ``/proc``,
``/sys`` and a read-only tmpfs mounted for the test (skipped where ``mount``
is not allowed). A full disk is an ``OSError(ENOSPC)`` raised at the write.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import remove_tree, settle
from preload import atomic, cache, cli, samples
from preload.cli import main

REPO = Path(__file__).resolve().parents[1]
USAGE, FAILED, NO_CACHE = 2, 1, 3


@pytest.fixture
def src(tmp_path) -> Path:
    """cat/0.png, cat/1.png, dog/2.png: 12x10 noise images."""
    rng = np.random.default_rng(7)
    root = tmp_path / "src"
    for name in ("cat/0.png", "cat/1.png", "dog/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / name), rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    settle()  # older than the timestamp granularity: verify then has no unverifiable file to list
    return root


@pytest.fixture
def readonly(tmp_path) -> Path:
    """A read-only tmpfs (root ignores permission bits, not a read-only mount)."""
    point = tmp_path / "ro"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", str(point)], check=False)


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_text("not a folder")
    return path


@pytest.fixture
def a_folder(tmp_path) -> Path:
    path = tmp_path / "folder.npy"
    path.mkdir()
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(result, code: int, *fragments: str) -> str:
    rc, _, err = result
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("preload: error: ")]
    assert len(lines) == 1, err
    assert rc == code, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


NO_PROGRESS = ("--no-progress",)


# ------------------------------------------------------------------ unwritable


@pytest.mark.parametrize(("folder", "why"), [("/proc", "files cannot be created there"), ("/sys", "permission denied")])
def test_build_into_a_kernel_folder_is_not_writable(src, capsys, folder, why):
    target = f"{folder}/c.npy"
    line = assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), USAGE,
                        f"CACHE '{target}'", f"the folder '{folder}' is not writable ({why})")
    assert "bytes free" not in line


def test_every_writing_command_refuses_proc(src, capsys, tmp_path):
    fragment = "the folder '/proc' is not writable"
    assert_error(run(capsys, "load", src, "--out", "/proc/x.npy", *NO_PROGRESS), USAGE, "--out '/proc/x.npy'", fragment)
    assert_error(run(capsys, "load", src, "--failed-list", "/proc/f.txt", *NO_PROGRESS), USAGE,
                 "--failed-list '/proc/f.txt'", fragment)
    assert_error(run(capsys, "report", src, "--out", "/proc/rep"), USAGE, "--out '/proc/rep'", fragment)
    assert_error(run(capsys, "report", "--out", "/proc/rep"), USAGE, "--out '/proc/rep'", fragment)
    assert_error(run(capsys, "demo", "--dir", "/proc/demo", "--count", 1, *NO_PROGRESS), USAGE,
                 "--dir '/proc/demo'", fragment)
    assert_error(run(capsys, "report", src, "--out", tmp_path / "rep", "--npy-dir", "/proc"), USAGE,
                 "--npy-dir '/proc'", fragment)
    assert not (tmp_path / "rep").exists()


def test_every_writing_command_refuses_a_read_only_file_system(src, capsys, readonly):
    fragment = f"the folder '{readonly}' is not writable (read-only file system)"
    assert_error(run(capsys, "build", src, readonly / "c.npy", *NO_PROGRESS), USAGE, fragment)
    assert_error(run(capsys, "load", src, "--out", readonly / "x.npy", *NO_PROGRESS), USAGE, fragment)
    assert_error(run(capsys, "report", src, "--out", readonly / "rep"), USAGE, fragment)
    assert_error(run(capsys, "report", src, "--out", readonly), USAGE, fragment)
    assert_error(run(capsys, "demo", "--dir", readonly / "demo", "--count", 1, *NO_PROGRESS), USAGE, fragment)
    assert_error(run(capsys, "build", src, readonly / "c.npy", "--failed-list", readonly / "f.txt"), USAGE,
                 "--failed-list")
    assert os.listdir(readonly) == []


@pytest.mark.parametrize("command", ["info", "verify"])
def test_info_and_verify_under_proc_find_no_cache(capsys, command):
    # They only read: /proc is no worse than any folder without a cache (exit 3, the answer on stdout).
    code, out, err = run(capsys, command, "/proc/c.npy")
    assert (code, err) == (NO_CACHE, "")
    assert out.startswith("missing: no cache at '/proc/c.npy'")


def test_no_complete_cache_is_the_same_answer_from_info_and_verify(src, capsys, tmp_path, monkeypatch):
    # README's exit code 3: the answer of info and verify, on stdout as "STATUS: what", never an error line.
    partial, damaged = tmp_path / "p.npy", tmp_path / "d.npy"
    assert run(capsys, "build", src, damaged, "--size", 8, *NO_PROGRESS)[0] == 0
    os.truncate(damaged, os.path.getsize(damaged) - 10)
    monkeypatch.setattr(cache, "fill_slots", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run(capsys, "build", src, partial, "--size", 8, *NO_PROGRESS)[0] == 130
    for status, path in (("missing", tmp_path / "none.npy"), ("partial", partial), ("damaged", damaged)):
        for command in ("info", "verify"):
            code, out, err = run(capsys, command, path)
            assert (code, err, out.count("\n")) == (NO_CACHE, "", 1), (command, status, out)
            assert out.startswith(f"{status}: ") and str(path) in out, (command, out)
            code, out, err = run(capsys, command, path, "--json")
            assert (code, err, json.loads(out)["status"]) == (NO_CACHE, "", status), (command, out)


def test_info_and_verify_read_a_read_only_cache(src, capsys, tmp_path):
    built = tmp_path / "rw"
    built.mkdir()
    assert run(capsys, "build", src, built / "c.npy", "--size", 8, *NO_PROGRESS)[0] == 0
    # Reading needs no write: the same cache on a read-only bind mount is complete and fresh.
    # The mount point is a sibling of the folder it shows, never inside it, so the tree
    # holds no loop for pytest's clean-up to trip over.
    point = tmp_path / "ro-view"
    point.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(built), str(point)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot bind-mount read-only here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=False, capture_output=True)
        with pytest.raises(OSError) as refused:
            (point / "probe").write_text("x")
        if refused.value.errno != errno.EROFS:
            pytest.skip("the bind mount is not read-only here")
        code, out, err = run(capsys, "info", point / "c.npy")
        assert (code, err) == (0, "")
        assert "images   3 of 3 files" in out
        code, out, err = run(capsys, "verify", point / "c.npy")  # its sources are where the build saw them
        assert (code, err) == (0, "")
        assert out == f"fresh: {point / 'c.npy'}\n"
    finally:
        gc.collect()  # a memmap left for the collector would keep the mount busy
        if subprocess.run(["umount", str(point)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


# ------------------------------------------------------------------ missing


def test_missing_paths(src, capsys, tmp_path):
    missing = tmp_path / "no-such"
    assert_error(run(capsys, "load", missing, *NO_PROGRESS), USAGE, f"SOURCE '{missing}' does not exist")
    assert_error(run(capsys, "build", missing, tmp_path / "c.npy", *NO_PROGRESS), USAGE,
                 f"SOURCE '{missing}' does not exist")
    assert_error(run(capsys, "report", missing, "--out", tmp_path / "rep"), USAGE, f"SOURCE '{missing}' does not exist")
    assert_error(run(capsys, "build", src, missing / "c.npy", *NO_PROGRESS), USAGE,
                 f"the folder '{missing}' does not exist")
    assert_error(run(capsys, "load", src, "--out", missing / "x.npy", *NO_PROGRESS), USAGE,
                 f"the folder '{missing}' does not exist")
    assert_error(run(capsys, "load", src, "--failed-list", missing / "f.txt", *NO_PROGRESS), USAGE,
                 f"the folder '{missing}' does not exist")
    assert_error(run(capsys, "report", src, "--out", tmp_path / "rep", "--npy-dir", missing), USAGE,
                 f"--npy-dir '{missing}' is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written, no stray .lock
    # info and verify answer "no cache here" on stdout: it is their answer, not an error (exit 3).
    for command, expected in (("info", f"missing: no cache at '{missing / 'c.npy'}'"),
                              ("verify", "missing: no cache at")):
        code, out, err = run(capsys, command, missing / "c.npy")
        assert (code, err) == (NO_CACHE, "")
        assert out.startswith(expected)


# ------------------------------------------------------------------ unreadable


def denied_for(monkeypatch, module, name: str, blocked: str) -> None:
    """``module.name`` (os.stat, os.open, ...) raises EACCES for ``blocked``, as for a user without the right."""
    real = getattr(module, name)

    def guarded(path, *args, **kwargs):
        if os.fspath(path) == blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, guarded)


def test_a_source_that_cannot_be_read_is_said_so_not_unwritable(src, capsys, tmp_path, monkeypatch):
    hidden = tmp_path / "locked" / "src"  # a folder whose parent cannot be searched: stat fails
    denied_for(monkeypatch, os, "stat", str(hidden))
    for argv in (("load", hidden), ("build", hidden, tmp_path / "c.npy"), ("report", hidden, "--out", tmp_path / "r")):
        line = assert_error(run(capsys, *argv, *NO_PROGRESS[: argv[0] != "report"]), USAGE,
                            f"cannot read SOURCE '{hidden}': permission denied")
        assert "writable" not in line
    monkeypatch.undo()
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # chmod 000 on the folder itself
    assert_error(run(capsys, "load", src, *NO_PROGRESS), USAGE, f"cannot read SOURCE '{src}': permission denied")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_an_unreadable_cache_is_a_path_mistake_not_a_missing_or_damaged_cache(src, capsys, tmp_path, monkeypatch):
    target = tmp_path / "c.npy"
    assert run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS)[0] == 0
    denied_for(monkeypatch, os, "open", f"{target}.json")
    for command in ("info", "verify"):
        line = assert_error(run(capsys, command, target), USAGE, f"cannot read '{target}.json': permission denied")
        assert "damaged" not in line and "Errno" not in line
    # A rebuild reads the cache first; --force replaces it unread.
    assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), USAGE,
                 f"cannot read '{target}.json': permission denied")
    denied_for(monkeypatch, os, "stat", str(target))
    assert_error(run(capsys, "info", target), USAGE, f"cannot read CACHE '{target}': permission denied")


def test_a_demo_folder_that_cannot_be_listed_says_cannot_read(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "samples"  # writable, but not readable (chmod 333)
    folder.mkdir()
    denied_for(monkeypatch, cli.os, "listdir", str(folder))
    assert_error(run(capsys, "demo", "--dir", folder, "--count", 1, *NO_PROGRESS), USAGE,
                 f"cannot read --dir '{folder}': permission denied")


def test_a_failed_list_that_cannot_be_written_says_not_writable(src, capsys, tmp_path, monkeypatch):
    (src / "cat" / "bad.png").write_bytes(b"not a png")
    listed = tmp_path / "failed.txt"
    real_create = atomic.create_new

    def no_write(path):  # the list is written to a temporary name beside it, then renamed
        if os.fspath(path).startswith(str(listed)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_create(path)

    monkeypatch.setattr(atomic, "create_new", no_write)
    assert_error(run(capsys, "load", src, "--on-error", "skip", "--failed-list", listed, *NO_PROGRESS), USAGE,
                 f"--failed-list '{listed}' is not writable (permission denied)")


def test_a_file_inside_a_cache_or_source_path_is_named(capsys, a_file):
    for command in ("info", "verify"):  # before: "no cache at ..." (exit 3) and "[Errno 20] Not a directory"
        assert_error(run(capsys, command, a_file / "c.npy"), USAGE,
                     f"CACHE '{a_file / 'c.npy'}': '{a_file}' is a file, not a folder")
    assert_error(run(capsys, "load", a_file / "images", *NO_PROGRESS), USAGE,
                 f"SOURCE '{a_file / 'images'}': '{a_file}' is a file, not a folder")


def without_permission_override(*argv: str) -> subprocess.CompletedProcess:
    """``python -m preload ARGV`` as root without the capabilities that let root read any file."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    drop = "-dac_override,-dac_read_search"
    command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "preload", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_chmod_000_for_real(src, tmp_path):
    # The same, with real permission bits: root gives up the capabilities that ignore them.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the permission override")
    probe = without_permission_override("--version")
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()}")
    locked = tmp_path / "locked"
    shutil.copytree(src, locked)
    os.chmod(locked, 0)
    listed = tmp_path / "list.csv"
    listed.write_text(f"path,label\n{src / 'cat' / '0.png'},cat\n{src / 'cat' / '1.png'},cat\n")
    os.chmod(src / "cat" / "1.png", 0)
    try:
        done = without_permission_override("load", str(locked), "--size", "8", "--no-progress")
        if done.returncode == 0:
            pytest.skip("permission bits are not enforced for this process")
        assert (done.returncode, done.stderr) == (USAGE, f"preload: error: cannot read SOURCE '{locked}': "
                                                         "permission denied\n")
        done = without_permission_override("load", str(listed), "--size", "8", "--no-progress")
        assert done.returncode == FAILED
        assert done.stderr.startswith(f"preload: error: cannot load '{src / 'cat' / '1.png'}': permission denied")
        done = without_permission_override("load", str(listed), "--size", "8", "--no-progress", "--on-error", "skip")
        assert done.returncode == 0 and "permission denied" in done.stdout
    finally:
        os.chmod(locked, 0o755)
        os.chmod(src / "cat" / "1.png", 0o644)


# ------------------------------------------------------------------ wrong type


def test_a_file_where_a_folder_is_expected(src, capsys, a_file):
    image = src / "cat" / "0.png"
    assert_error(run(capsys, "load", image, *NO_PROGRESS), USAGE,
                 f"SOURCE '{image}' is a file, not a folder or a CSV file")
    assert_error(run(capsys, "build", a_file, a_file.parent / "c.npy", *NO_PROGRESS), USAGE,
                 f"SOURCE '{a_file}' is a file, not a folder")
    assert_error(run(capsys, "report", image, "--out", a_file.parent / "rep"), USAGE, f"SOURCE '{image}' is a file")
    assert_error(run(capsys, "build", src, a_file / "c.npy", *NO_PROGRESS), USAGE,
                 f"'{a_file}' is a file, not a folder")
    assert_error(run(capsys, "load", src, "--out", a_file / "x.npy", *NO_PROGRESS), USAGE,
                 f"'{a_file}' is a file, not a folder")
    assert_error(run(capsys, "report", src, "--out", a_file), USAGE, f"--out '{a_file}' is a file, not a folder")
    assert_error(run(capsys, "report", src, "--out", a_file / "rep"), USAGE, f"'{a_file}' is a file, not a folder")
    assert_error(run(capsys, "demo", "--dir", a_file, "--count", 1, *NO_PROGRESS), USAGE,
                 f"--dir '{a_file}' is a file, not a folder")
    assert_error(run(capsys, "info", a_file), USAGE, f"CACHE '{a_file}' is not accepted; a cache path ends in .npy")
    assert_error(run(capsys, "verify", a_file), USAGE, f"CACHE '{a_file}' is not accepted")
    assert a_file.read_text() == "not a folder"


def test_a_folder_where_a_file_is_expected(src, capsys, a_folder):
    assert_error(run(capsys, "build", src, a_folder, *NO_PROGRESS), USAGE,
                 f"CACHE '{a_folder}' is a folder, not a .npy")
    assert_error(run(capsys, "load", src, "--out", a_folder, *NO_PROGRESS), USAGE,
                 f"--out '{a_folder}' is a folder, not a .npy file")
    assert_error(run(capsys, "load", src, "--failed-list", a_folder, *NO_PROGRESS), USAGE,
                 f"--failed-list '{a_folder}' is a folder, not a file")
    assert_error(run(capsys, "info", a_folder), USAGE, f"CACHE '{a_folder}' is a folder, not a .npy file")
    assert_error(run(capsys, "verify", a_folder), USAGE, f"CACHE '{a_folder}' is a folder, not a .npy file")
    assert os.listdir(a_folder) == []


# ------------------------------------------------------------------ full


@pytest.fixture
def disk_full(monkeypatch):
    """Every block reservation and every sample write fails with ENOSPC."""

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    real_open = open

    def open_for_reading_only(path, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(samples, "open", open_for_reading_only, raising=False)
    return no_space


def test_full_disk_is_one_line_and_exit_1(src, capsys, tmp_path, disk_full):
    target = tmp_path / "c.npy"
    assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), FAILED,
                 f"no space left for '{target}.partial'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no stray .lock, no partial
    out = tmp_path / "x.npy"
    assert_error(run(capsys, "load", src, "--size", 8, "--out", out, *NO_PROGRESS), FAILED,
                 f"no space left for '{out}.partial'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    pytest.importorskip("skimage")
    assert_error(run(capsys, "demo", "--dir", tmp_path / "demo", "--count", 1, *NO_PROGRESS), FAILED,
                 "cannot be written: no space left on its file system")


def test_full_disk_while_taking_the_lock_leaves_no_lock_behind(src, capsys, tmp_path, monkeypatch):
    real_pwrite = os.pwrite

    def full_disk_at_the_lock(fd, data, offset):  # the lock records its holder with pwrite
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk_at_the_lock)
    target = tmp_path / "c.npy"

    line = assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), FAILED)

    assert line == f"preload: error: '{target}.lock' cannot be written: no space left on its file system"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_full_disk_at_the_folder_probe(src, capsys, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cli.tempfile, "mkstemp", no_space)
    assert_error(run(capsys, "report", src, "--out", tmp_path / "rep"), FAILED, "no space left")
    assert_error(run(capsys, "build", src, tmp_path / "c.npy"), FAILED, "no space left")


def test_full_disk_in_the_middle_of_a_build_keeps_it_resumable(src, capsys, tmp_path, monkeypatch):
    target = tmp_path / "c.npy"

    def fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target) + ".partial")

    monkeypatch.setattr(cache, "fill_slots", fails)
    assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), FAILED,
                 "No space left on device", "run the same build again to resume")
    monkeypatch.undo()
    code, out, err = run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS)
    assert (code, err) == (0, "")
    assert "resuming" not in out  # nothing was written before the failure


# ------------------------------------------------------------------ interrupted, closed stdout, held


@pytest.mark.parametrize("command", ["info", "verify", "build", "load", "report"])
def test_ctrl_c_is_130_for_every_command(src, capsys, tmp_path, monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for name in ("cache_info", "verify_cache", "build_cache", "load", "run_report"):
        monkeypatch.setattr(cli, name, interrupted)
    argv = {"info": ["info", tmp_path / "c.npy"], "verify": ["verify", tmp_path / "c.npy"],
            "build": ["build", src, tmp_path / "c.npy"], "load": ["load", src],
            "report": ["report", src, "--out", tmp_path / "rep"]}[command]
    code, _, err = run(capsys, *argv)
    assert (code, err) == (130, "preload: interrupted\n")


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["info", "{cache}", "--json"], 0), (["verify", "{cache}"], 0), (["load", "{src}", "--size", "8"], 0),
     (["info", "{missing}"], NO_CACHE), (["build", "--help"], 0), ([], USAGE)],
    ids=["info-json", "verify", "load", "info-missing", "help", "no-command"],
)
@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_a_closed_stdout_is_not_an_error(src, capsys, tmp_path, argv, code):
    target = tmp_path / "c.npy"
    assert run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS)[0] == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    argv = [a.format(cache=target, src=src, missing=tmp_path / "none.npy") for a in argv]
    process = subprocess.Popen([sys.executable, "-m", "preload", *argv, *NO_PROGRESS[: argv[:1] == ["load"]]],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line (what `| head` does, every time)
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == code, err
    assert err == ""


def test_info_during_another_build_names_the_holder(src, capsys, tmp_path, monkeypatch):
    target = tmp_path / "c.npy"
    monkeypatch.setattr(cache, "fill_slots", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS)[0] == 130
    with cache.BuildLock(str(target) + ".lock"):  # another open file: the flock conflicts as another process's
        code, out, err = run(capsys, "info", target)
        assert (code, err) == (NO_CACHE, "")
        assert out.startswith(f"partial: build in progress at '{target}': 0 of 3 images written (shape (3, 8, 8, 3)); "
                              f"pid {os.getpid()} on host ")
        assert out.rstrip().endswith(" holds it")
        code, out, _ = run(capsys, "info", target, "--json")
        assert json.loads(out)["held_by"].startswith(f"pid {os.getpid()} on host ")
        code, out, _ = run(capsys, "verify", target)
        assert code == NO_CACHE
        assert out.startswith(f"partial: '{target}' is an unfinished build (0 of 3 images written); a build is "
                              f"running: pid {os.getpid()} on host ")
        assert "run the same build again" not in out
    assert not os.path.exists(str(target) + ".lock")  # released: its holder removed it
    code, out, _ = run(capsys, "info", target)
    assert out.startswith(f"partial: unfinished build at '{target}'") and "run the same build again" in out


def test_build_while_another_holds_the_lock_is_exit_1(src, capsys, tmp_path):
    target = tmp_path / "c.npy"
    with cache.BuildLock(str(target) + ".lock"):
        assert_error(run(capsys, "build", src, target, "--size", 8, *NO_PROGRESS), FAILED,
                     f"is held by pid {os.getpid()} on host ", "another build of this cache is running")
        assert os.path.exists(str(target) + ".lock")  # someone else's lock is never removed


# ------------------------------------------------------------ --failed-list FILE (attack-11 D8)


@pytest.fixture
def src_with_a_bad_file(src) -> Path:
    (src / "dog" / "3.png").write_bytes(b"not a png at all")
    return src


def test_failed_list_at_a_symbolic_link_is_refused_before_decoding(src_with_a_bad_file, capsys, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("SECRET")
    link = tmp_path / "failed.txt"
    link.symlink_to(victim)
    result = run(capsys, "load", src_with_a_bad_file, "--size", 8, "--on-error", "skip", "--failed-list", link,
                 *NO_PROGRESS)
    assert_error(result, USAGE, f"--failed-list '{link}' is a symbolic link; preload writes a new regular file "
                                "there and never follows a link")
    assert result[1] == ""  # refused up front: nothing was loaded
    assert victim.read_text() == "SECRET" and link.is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_failed_list_at_a_fifo_or_device_is_refused_before_decoding(src_with_a_bad_file, capsys, tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "failed.fifo"
        os.mkfifo(target)
        reader = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # without the check a writer would not block: it fails
    else:
        target, reader = Path("/dev/null"), None
    try:
        result = run(capsys, "load", src_with_a_bad_file, "--size", 8, "--on-error", "skip", "--failed-list",
                     target, *NO_PROGRESS)
    finally:
        if reader is not None:
            os.close(reader)
    assert_error(result, USAGE, f"--failed-list '{target}' is not a regular file (a FIFO, device or socket)")
    assert result[1] == ""
    assert os.path.exists(target) and not os.path.isfile(target)


def test_failed_list_replaces_a_link_planted_during_the_load_and_never_writes_through_it(
        src_with_a_bad_file, capsys, tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("SECRET")
    target = tmp_path / "failed.txt"
    real_load = cli.load

    def load_then_plant(*args, **kwargs):  # after the up-front check, before the list is written
        ds = real_load(*args, **kwargs)
        target.symlink_to(victim)
        return ds

    monkeypatch.setattr(cli, "load", load_then_plant)
    code, out, err = run(capsys, "load", src_with_a_bad_file, "--size", 8, "--on-error", "skip", "--failed-list",
                         target, *NO_PROGRESS)
    assert (code, err) == (0, "")
    assert victim.read_text() == "SECRET"
    assert not target.is_symlink()
    (line,) = target.read_text().splitlines()
    assert line.startswith(f"{src_with_a_bad_file / 'dog' / '3.png'}\tnot-an-image\t")
    assert not os.path.exists(f"{target}.tmp")


def test_failed_list_over_an_existing_regular_file_replaces_it(src_with_a_bad_file, capsys, tmp_path):
    target = tmp_path / "failed.txt"
    target.write_text("old list\n" * 100)
    code, _, err = run(capsys, "load", src_with_a_bad_file, "--size", 8, "--on-error", "skip", "--failed-list",
                       target, *NO_PROGRESS)
    assert (code, err) == (0, "")
    assert [line.split("\t")[:2] for line in target.read_text().splitlines()] == [
        [str(src_with_a_bad_file / "dog" / "3.png"), "not-an-image"]]


# ------------------------------------------------------------ a source nested deeper than Python's recursion limit (D9)


def test_load_of_a_folder_nested_deeper_than_the_recursion_limit_lists_and_loads_it(capsys, tmp_path):
    root = tmp_path / "deep"
    folder = str(root / "cat")
    os.makedirs(folder)
    try:
        for _ in range(sys.getrecursionlimit() + 100):  # one mkdir a level: os.makedirs recurses too
            folder = os.path.join(folder, "d")
            os.mkdir(folder)
        assert cv2.imwrite(os.path.join(folder, "x.png"), np.full((6, 6, 3), 9, np.uint8))
        Path(folder, "notes.txt").write_text("not an image")
        code, out, err = run(capsys, "load", root, "--size", 4, *NO_PROGRESS)
        assert (code, err) == (0, "")
        assert "images   (1, 4, 4, 3) uint8 NHWC" in out
        assert f"skipped  1 file(s) that are not images (e.g. '{folder}/notes.txt';" in out
    finally:
        remove_tree(root)  # shutil.rmtree (and pytest's clean-up) would recurse once per level


# ------------------------------------------------------------ the demo's sample files (D7)


def test_make_samples_replaces_a_link_at_one_of_its_names_and_never_writes_through_it(tmp_path):
    pytest.importorskip("skimage")
    victim = tmp_path / "victim.txt"
    victim.write_text("SECRET")
    (tmp_path / "demo" / "astronaut").mkdir(parents=True)
    planted = tmp_path / "demo" / "astronaut" / "000000.jpg"  # the first name make_samples writes
    planted.symlink_to(victim)

    written = samples.make_samples(tmp_path / "demo", 2)

    assert victim.read_text() == "SECRET"
    assert str(planted) in written and not planted.is_symlink()
    assert cv2.imread(str(planted)) is not None


@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii:strict"])
def test_a_failed_name_that_is_not_utf8_goes_into_the_failed_list_and_info_as_its_bytes(src, tmp_path, encoding):
    bad = os.path.join(os.fsencode(src), b"cat", b"bad\xff.png")
    with open(bad, "wb") as handle:
        handle.write(b"junk")
    listed, cache = tmp_path / "failed.txt", tmp_path / "c.npy"
    env = {**os.environ, "PYTHONIOENCODING": encoding, "LC_ALL": "C"}
    command = [sys.executable, "-m", "preload"]
    done = subprocess.run([*command, "build", str(src), str(cache), "--size", "8", "--on-error", "skip",
                           "--failed-list", str(listed), *NO_PROGRESS], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    # The list holds the name's own bytes, so a script can open exactly the file named.
    assert listed.read_bytes().split(b"\t")[0] == bad
    done = subprocess.run([*command, "info", str(cache)], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"first: '" + os.fsencode(src) + b"/cat/bad\\xff.png'" in done.stdout
