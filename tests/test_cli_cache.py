"""``preload build | info | verify``: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from conftest import settle, smooth_image, write
from preload import cache
from preload.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_info_verify(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    code, text, err = run(capsys, "build", source, out, "--size", 8, "--layout", "nchw", "--no-progress")
    assert code == 0, err
    assert f"cache    {out}" in text
    assert "images   (60, 3, 8, 8) uint8 NCHW" in text
    assert np.load(out, mmap_mode="r").shape == (60, 3, 8, 8)

    code, text, _ = run(capsys, "info", out)
    assert code == 0
    assert "images   60 of 60 files, shape (60, 3, 8, 8) uint8, NCHW" in text
    assert "classes  3: ant, bee, cow" in text
    assert "options  size 8x8, color rgb, resize stretch, exif on, reduce on" in text  # as the flags say it

    code, text, _ = run(capsys, "info", out, "--json")
    info = json.loads(text)
    assert (code, info["status"], info["shape"]) == (0, "complete", [60, 3, 8, 8])
    assert info["classes"] == ["ant", "bee", "cow"]

    code, text, _ = run(capsys, "verify", out)
    assert (code, text.split(":")[0]) == (0, "fresh")


def test_verify_stale_exits_1_and_lists_the_file(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    run(capsys, "build", source, out, "--size", 8, "--no-progress")
    os.remove(source / "cow" / "02.png")
    code, text, _ = run(capsys, "verify", out, "--json")
    result = json.loads(text)
    assert code == 1
    assert result["status"] == "stale" and result["removed"] == [str(source / "cow" / "02.png")]
    code, text, _ = run(capsys, "verify", out)
    assert code == 1
    assert text.startswith(f"stale: the cache '{out}' is stale: 1 removed ('{source / 'cow' / '02.png'}')")
    assert text.rstrip().endswith("; run the same preload build again to update it")
    assert "check=False" not in text


def test_report_without_a_size_says_so_in_flags(tmp_path, source, capsys):
    code, _, err = run(capsys, "report", source, "--size", "none", "--out", tmp_path / "rep")
    assert code == 2
    assert err == ("preload: error: --size none is not accepted by the report; give a size, "
                   "e.g. --size 256 or --size 224x320\n")
    assert not (tmp_path / "rep").exists()


def test_missing_and_partial_caches_exit_3(tmp_path, source, capsys, monkeypatch):
    code, text, _ = run(capsys, "verify", tmp_path / "none.npy")
    assert code == 3 and text.startswith("missing: no cache at")
    code, text, _ = run(capsys, "info", tmp_path / "none.npy")
    assert code == 3 and text.startswith("missing: no cache at")

    monkeypatch.setattr(cache, "fill_slots", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    code, _, err = run(capsys, "build", source, tmp_path / "p.npy", "--size", 8, "--no-progress")
    assert code == 130 and err == "preload: interrupted\n"
    code, text, _ = run(capsys, "info", tmp_path / "p.npy")
    assert code == 3 and text.startswith(f"partial: unfinished build at '{tmp_path / 'p.npy'}': 0 of 60 images written")
    code, text, _ = run(capsys, "verify", tmp_path / "p.npy")
    assert code == 3 and text.startswith("partial: ")


def test_build_errors_are_one_line(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    run(capsys, "build", source, out, "--size", 8, "--no-progress")
    code, _, err = run(capsys, "build", source, out, "--size", 9, "--no-progress")
    assert code == 1
    assert err.count("\n") == 1 and "built with other options" in err and "--force" in err
    code, _, err = run(capsys, "build", source, out, "--size", 9, "--force", "--no-progress")
    assert code == 0
    code, _, err = run(capsys, "build", source, tmp_path / "c.bin", "--size", 8)
    assert code == 2 and "must end in .npy" in err


def test_resumed_build_says_so_and_times_only_what_it_decoded(tmp_path, source, capsys, monkeypatch):
    out = tmp_path / "c.npy"
    real_fill = cache.fill_slots

    def stop_after_24(*args, indices, **kwargs):  # write 24 rows, then the user presses Ctrl-C
        real_fill(*args, indices=indices[:24], **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "fill_slots", stop_after_24)
    code, _, err = run(capsys, "build", source, out, "--size", 8, "--workers", 1, "--no-progress")
    assert (code, err) == (130, "preload: interrupted\n")
    monkeypatch.undo()

    code, text, err = run(capsys, "build", source, out, "--size", 8, "--no-progress")
    assert (code, err) == (0, "")
    lines = text.splitlines()
    assert lines[0] == "resuming: 24 of 60 already written"
    [timing] = [line for line in lines if line.startswith("time ")]
    assert re.fullmatch(r"time     (\d+\.\d\d) s \((\d+) images/s: 36 decoded in this run\)", timing), timing
    seconds, rate = (float(x) for x in re.findall(r"[\d.]+", timing)[:2])
    # The rate is 36 rows over this run's time (seconds are printed rounded to 0.01 s).
    assert 36 / (seconds + 0.005) - 1 <= rate <= 36 / max(seconds - 0.005, 1e-9) + 1

    code, text, err = run(capsys, "build", source, out, "--size", 8, "--no-progress")
    assert (code, err) == (0, "")
    assert "nothing to do: the cache is complete and fresh" in text.splitlines()
    [timing] = [line for line in text.splitlines() if line.startswith("time ")]
    assert timing.endswith(" s (nothing decoded)")
    assert "images/s" not in text and "resuming" not in text


def test_first_build_counts_every_row(tmp_path, source, capsys):
    code, text, _ = run(capsys, "build", source, tmp_path / "c.npy", "--size", 8, "--no-progress")
    assert code == 0
    [timing] = [line for line in text.splitlines() if line.startswith("time ")]
    assert re.fullmatch(r"time     \d+\.\d\d s \(\d+ images/s\)", timing), timing  # every row: no "in this run"
    assert "resuming" not in text and "nothing to do" not in text


def timing_line(text: str) -> str:
    [timing] = [line for line in text.splitlines() if line.startswith("time ")]
    return timing


def test_a_refresh_says_it_reuses_unchanged_rows_and_does_not_claim_to_resume(tmp_path, source, capsys, rng):
    out = tmp_path / "c.npy"
    assert run(capsys, "build", source, out, "--size", 8, "--no-progress")[0] == 0
    write(source / "bee" / "07.png", smooth_image(rng, 33, 41))
    settle()
    code, text, err = run(capsys, "build", source, out, "--size", 8, "--no-progress")
    assert (code, err) == (0, "")
    assert text.splitlines()[0] == "refreshing: 59 of 60 rows unchanged, decoding 1 (files: 1 changed)"
    assert "resuming" not in text
    assert re.fullmatch(r"time     \d+\.\d\d s \(\d+ images/s: 1 decoded in this run\)", timing_line(text))


def test_load_out_over_a_fresh_cache_reports_no_speed_for_rows_it_did_not_decode(tmp_path, source, capsys):
    out = tmp_path / "c.npy"
    code, text, _ = run(capsys, "load", source, "--out", out, "--size", 8, "--no-progress")
    assert code == 0 and text.startswith(f"wrote    {out} (a cache")
    assert re.fullmatch(r"time     \d+\.\d\d s \(\d+ images/s\)", timing_line(text))  # every row decoded now

    code, text, err = run(capsys, "load", source, "--out", out, "--size", 8, "--no-progress")
    assert (code, err) == (0, "")
    assert text.splitlines()[:2] == ["nothing to do: the cache is complete and fresh", f"cache    {out} (a cache: "
                                     "preload.open_cache() gives images, labels, classes, paths; np.load() the pixels)"]
    assert timing_line(text).endswith(" s (nothing decoded)") and "images/s" not in text
