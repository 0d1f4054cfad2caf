"""Cluster builds on a LocalCluster of 2 worker processes: identical bytes, worker and coordinator kills.

Decoding is slowed down (and, for one test, made to kill its worker) on the
workers by :class:`SlowDecode`, a Dask worker plugin defined here: Dask runs
its ``setup`` in every worker process, including the ones the nanny starts
after a kill, so the library has no test hook of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from multiprocessing import forkserver, resource_tracker
from pathlib import Path

import numpy as np
import pytest

from conftest import class_folders, journal_done

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402 - a dependency of distributed
import dask  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402
from distributed.utils import get_mp_context  # noqa: E402

import preload  # noqa: E402
from preload import cache  # noqa: E402
from preload import distributed as cluster_fill  # noqa: E402
from preload.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COUNT = 60
# How long to wait for the nannies to replace killed workers: seconds when the machine is idle,
# far longer when other processes load it (a timeout here only ends a test that already failed).
RESTART_SECONDS = 300

# The workers cannot import this test module: ship SlowDecode by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowDecode(WorkerPlugin):
    """Test only: on each worker, every decode first sleeps ``seconds``; a path ending in ``crash`` kills it."""

    name = "preload-test-slow-decode"

    def __init__(self, seconds: float, crash: tuple[str, ...] = ()):
        self.seconds = seconds
        self.crash = crash

    def setup(self, worker):
        from preload import decode

        real = decode.Decoder.__dict__.get("_real_decode_into", decode.Decoder.decode_into)
        seconds, crash = self.seconds, self.crash

        def decode_into(decoder, path, slot):
            if path.endswith(crash):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(seconds)
            return real(decoder, path, slot)

        decode.Decoder._real_decode_into = real
        decode.Decoder.decode_into = decode_into

    def teardown(self, worker):
        from preload import decode

        if "_real_decode_into" in decode.Decoder.__dict__:
            decode.Decoder.decode_into = decode.Decoder._real_decode_into


@pytest.fixture(scope="module")
def client():
    # allowed-failures=1: a chunk may lose one worker and is run again; a second
    # death makes it a KilledWorker (read by the scheduler when it starts).
    # lost-worker-timeout (read when a worker leaves, so set for the whole module):
    # a LocalCluster closes for good the nanny of a killed worker whose new
    # worker has not joined within it (15 s by default). On a loaded machine
    # starting two workers at once can take longer, and every later test then
    # waited 30 s for a second worker that never came (seen: 3 errors).
    # forkserver: the workers, and the ones the nannies start after each kill,
    # are forked from one process that has imported Dask and preload, instead
    # of each being a fresh interpreter that imports them (spawn, the default).
    settings = {"distributed.scheduler.allowed-failures": 1, "distributed.deploy.lost-worker-timeout": "10 minutes",
                "distributed.worker.multiprocessing-method": "forkserver"}
    server = forkserver._forkserver
    preloaded = list(server._preload_modules)
    with dask.config.set(settings):
        get_mp_context()  # Dask names its modules for the server once per process; preload's are added
        server._preload_modules = [*server._preload_modules, "preload.distributed"]
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        with cluster, distributed.Client(cluster) as client:
            yield client
    # The fork server and multiprocessing's resource tracker are children that
    # would otherwise live as long as pytest and count in the RSS of later tests
    # that measure this process with its children (tests/test_measure.py); a
    # later fork server (tests/test_torch_loader.py) imports only what it did.
    server._stop()
    server._preload_modules = preloaded
    resource_tracker._resource_tracker._stop()


@pytest.fixture
def workers(client):
    """The module's client, once both workers are up (a test before may have killed one)."""
    client.wait_for_workers(2, timeout=RESTART_SECONDS)
    return client


@contextmanager
def slow_workers(client, seconds: float, crash: tuple[str, ...] = ()):
    client.register_plugin(SlowDecode(seconds, crash))
    try:
        yield
    finally:
        client.unregister_worker_plugin(SlowDecode.name)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """conftest's ``source`` made once for the module: the cluster tests only read it."""
    return class_folders(tmp_path_factory.mktemp("cluster") / "src", np.random.default_rng(99), per_class=COUNT // 3)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """The bytes of a local build of ``source``."""
    out = tmp_path_factory.mktemp("reference") / "local.npy"
    preload.build_cache(source, out, size=16, layout="NCHW", progress=False)
    return out.read_bytes()


def build(source, out, **options):
    return preload.build_cache(source, out, **{"size": 16, "layout": "NCHW", "progress": False, **options})


def spy_on_chunks(monkeypatch, **options) -> list[int]:
    """The number of rows of each chunk that build_cache hears of; ``options`` go to fill_on_cluster."""
    reported = []
    real = cluster_fill.fill_on_cluster

    def fill(*args, on_done, **kwargs):
        def count(rows, found):
            reported.append(len(rows))
            on_done(rows, found)

        return real(*args, on_done=count, **kwargs, **options)

    monkeypatch.setattr(cluster_fill, "fill_on_cluster", fill)
    return reported


def wait_for_rows(journal: Path, rows: int, alive=lambda: True, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while journal_done(journal) < rows:
        assert alive(), "the build ended before the kill"
        assert time.monotonic() < deadline, f"{journal} never reached {rows} rows"
        time.sleep(0.005)


# ---------------------------------------------------------------- the same bytes


def test_cluster_build_is_byte_identical_to_a_local_build(tmp_path, source, reference, workers, caplog):
    out = tmp_path / "c.npy"
    with caplog.at_level("INFO", logger="preload.distributed"):
        ds = build(source, out, client=workers)
    assert out.read_bytes() == reference
    assert preload.verify_cache(out, deep=True)["status"] == "fresh"  # the checksums hashed by this process
    assert ds.images.shape == (COUNT, 3, 16, 16) and ds.classes == ["ant", "bee", "cow"]
    assert preload.verify_cache(out)["status"] == "fresh"
    assert sorted(os.listdir(tmp_path)) == ["c.npy", "c.npy.index.npz", "c.npy.json"]
    summary = "\n".join(record.getMessage() for record in caplog.records)
    assert re.search(rf"^cluster +{COUNT} images in \d+ chunks on 2 worker\(s\)", summary, re.M), summary
    assert len(re.findall(r"^  worker tcp://.* images/s", summary, re.M)) == 2, summary


def test_zeroed_failures_match_a_local_build(tmp_path, source, workers):
    paths = sorted(str(p) for p in (source / "bee").iterdir())
    (tmp_path / "cut.png").write_bytes(Path(paths[3]).read_bytes()[:200])
    paths[3] = str(tmp_path / "cut.png")
    local = build(paths, tmp_path / "local.npy", on_error="zero")
    remote = build(paths, tmp_path / "remote.npy", on_error="zero", client=workers)
    assert (tmp_path / "remote.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
    assert remote.failed == local.failed and [f.index for f in remote.failed] == [3]
    assert remote.failed[0].reason == preload.Reason.TRUNCATED
    assert not remote.images[3].any()


def test_raise_stops_at_the_first_failure_and_a_rerun_resumes(tmp_path, source, workers, monkeypatch):
    paths = [str(p) for name in ("ant", "bee", "cow") for p in sorted((source / name).iterdir())]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    good = Path(paths[45]).read_bytes()
    paths[45] = str(bad)
    out = tmp_path / "c.npy"
    with pytest.raises(preload.ImageDecodeError, match=r"cannot load '.*bad.png'.*\[not-an-image\]"):
        build(paths, out, client=workers)
    info = preload.cache_info(out)
    assert info["status"] == "partial" and 0 < info["done"] < COUNT  # rows of the finished chunks are kept
    bits = np.unpackbits(np.frombuffer((tmp_path / "c.npy.journal").read_bytes()[cache.JOURNAL_HEADER :], np.uint8),
                         count=COUNT, bitorder="little")
    assert bits[44] and not bits[45]  # its chunk reported the rows before the failed file
    assert not (tmp_path / "c.npy.partial.probe").exists()

    bad.write_bytes(good)
    reported = spy_on_chunks(monkeypatch)
    build(paths, out, client=workers)
    assert sum(reported) == COUNT - info["done"]  # only the rows not yet written were sent
    local = build(paths, tmp_path / "local.npy")
    assert out.read_bytes() == (tmp_path / "local.npy").read_bytes()
    assert local.failed == []


def test_chunk_override_sets_the_rows_per_task(tmp_path, source, workers, monkeypatch):
    out = tmp_path / "c.npy"
    for bad in (0, -3, 2.5, True):
        with pytest.raises(preload.OptionError, match=rf"chunk={bad!r} is not accepted; use a positive int"):
            cluster_fill.fill_on_cluster(workers, str(out), [], None, np.arange(3), chunk=bad)
    with pytest.raises(preload.OptionError, match=r"on_error='ignore' is not accepted; use one of 'raise', 'skip'"):
        cluster_fill.fill_on_cluster(workers, str(out), [], None, np.arange(3), on_error="ignore")
    with pytest.raises(preload.OptionError, match=r"retries=-1 is not accepted; use an int >= 0"):
        cluster_fill.fill_on_cluster(workers, str(out), [], None, np.arange(3), retries=-1)
    reported = spy_on_chunks(monkeypatch, chunk=7)
    build(source, out, client=workers)
    assert sorted(reported) == [4] + [7] * 8


def test_chunks_are_sized_by_time_bytes_and_the_tail():
    chunker = cluster_fill._Chunker(np.arange(10_000), None, row_bytes=3 * 256 * 256)
    assert chunker.size(threads=4) == cluster_fill.FIRST_CHUNK
    chunker.timed(images=100, seconds=0.5)  # 5 ms an image: 2 s is 400 rows
    assert chunker.size(threads=4) == 400
    chunker.timed(images=100, seconds=0.0)  # 2.5 ms an image: 800 rows, above 128 MB of pixels
    assert chunker.size(threads=4) == cluster_fill.MAX_CHUNK_BYTES // (3 * 256 * 256) == 682
    chunker.position = 10_000 - 100
    assert chunker.size(threads=4) == 25  # the last 100 rows: an even share per thread
    assert cluster_fill._Chunker(np.arange(50), 7, 1).size(threads=4) == 7


# ----------------------------------------------------------------------- kills


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_killing_a_worker_mid_build_still_completes(tmp_path, source, reference, workers, monkeypatch):
    monkeypatch.setattr(cache, "COMMIT_SECONDS", 0.0)  # journal every chunk, so the test sees progress
    out, journal = tmp_path / "c.npy", tmp_path / "c.npy.journal"
    pids = workers.run(os.getpid)
    killed = {}

    def kill_a_busy_worker():
        wait_for_rows(journal, 16)
        busy = [address for address, keys in workers.processing().items() if keys and address in pids]
        killed.update(address=busy[0], rows=journal_done(journal))
        os.kill(pids[busy[0]], signal.SIGKILL)

    killer = threading.Thread(target=kill_a_busy_worker)
    with slow_workers(workers, 0.03):
        killer.start()
        build(source, out, client=workers)
        killer.join()
    assert killed and killed["rows"] < COUNT  # the worker died while the build ran
    assert out.read_bytes() == reference
    workers.wait_for_workers(2, timeout=RESTART_SECONDS)
    assert pids[killed["address"]] not in workers.run(os.getpid).values()  # the nanny started a new one


COORDINATOR = """
import sys
sys.path.insert(0, {root!r})
import preload
from preload import cache
from distributed import Client
cache.COMMIT_SECONDS = 0.0
with Client({address!r}) as client:
    preload.build_cache({src!r}, {out!r}, size=16, layout="NCHW", progress=False, client=client)
"""


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
@pytest.mark.parametrize("resume", ["cluster", "local"])
def test_killing_the_coordinator_leaves_a_partial_that_a_rerun_completes(tmp_path, source, reference, workers,
                                                                         resume):
    out, journal = tmp_path / "c.npy", tmp_path / "c.npy.journal"
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR.format(root=str(ROOT), address=workers.scheduler.address, src=str(source),
                                         out=str(out)))
    with slow_workers(workers, 0.03):
        child = subprocess.Popen([sys.executable, str(script)])
        try:
            wait_for_rows(journal, 20, alive=lambda: child.poll() is None)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        done = journal_done(journal)
        assert 20 <= done < COUNT
        with pytest.raises(preload.CacheError, match=rf"unfinished build \({done} of {COUNT} images written\)"):
            preload.open_cache(out)
        assert (tmp_path / "c.npy.partial.probe").exists()  # the killed build's token: its tasks stop on the next
        build(source, out, client=workers if resume == "cluster" else None)
    assert out.read_bytes() == reference
    assert preload.verify_cache(out)["status"] == "fresh"
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("c.npy")) == [
        "c.npy", "c.npy.index.npz", "c.npy.json"]


@pytest.mark.slow  # starts and kills several processes: run by the second test step (-m "slow or bench")
def test_a_chunk_that_keeps_killing_its_workers_is_reported_with_its_paths(tmp_path, source, reference, workers):
    out = tmp_path / "c.npy"
    crash = source / "ant" / "05.png"
    with slow_workers(workers, 0.0, crash=(str(crash),)):
        words = r"the chunk of rows \d+\.\.\d+ \(\d+ files: .*killed every worker that ran it \(2 attempts"
        with pytest.raises(cluster_fill.ClusterError, match=words) as caught:
            build(source, out, client=workers)
    # Dask also blames a chunk that merely waited on a dying worker, so more may be listed.
    assert str(crash) in caught.value.paths
    info = preload.cache_info(out)
    assert info["status"] == "partial" and 0 <= info["done"] <= COUNT - 16
    workers.wait_for_workers(2, timeout=RESTART_SECONDS)
    build(source, out, client=workers)  # the crash is gone: the same build resumes
    assert out.read_bytes() == reference


# ------------------------------------------------------------------ visibility


def test_a_worker_that_cannot_open_the_cache_is_named(tmp_path, workers):
    partial = tmp_path / "c.npy.partial"
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(4, 3, 2, 2)).flush()
    if subprocess.run(["chattr", "+i", str(partial)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable file, unwritable even for root) is not supported here")
    try:
        with pytest.raises(cluster_fill.ClusterError) as caught:
            cluster_fill.fill_on_cluster(workers, str(partial), ["x.png"] * 4, None, np.arange(4))
    finally:
        subprocess.run(["chattr", "-i", str(partial)], check=True)
    message = str(caught.value)
    words = (rf"worker tcp://[\d.:]+ \(host .+\) cannot open the cache being built, '{partial}', for writing: "
             r"Operation not permitted; the cache must be on a file system every worker mounts")
    assert re.match(words, message), message
    assert "(and 1 more worker(s): worker tcp://" in message
    assert not Path(str(partial) + ".probe").exists()


def test_the_probe_names_what_a_worker_cannot_see(tmp_path, workers):
    partial = tmp_path / "c.npy.partial"
    answers = workers.run(cluster_fill.probe_worker, str(partial), "t0", [4, 3, 2, 2], None)
    for address, answer in answers.items():
        assert answer["worker"] == address
        assert answer["problem"].startswith(f"worker {address} (host {answer['host']}) cannot see '{partial}.probe'")
    Path(str(partial) + ".probe").write_text("t0")
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(5, 3, 2, 2)).flush()
    problems = [a["problem"] for a in workers.run(cluster_fill.probe_worker, str(partial), "t0", [4, 3, 2, 2],
                                                  str(tmp_path / "gone.png")).values()]
    assert all(re.search(r"sees another file at .*\(shape \(5, 3, 2, 2\), uint8; the build's is \(4, 3, 2, 2\)", p)
               for p in problems), problems
    problems = [a["problem"] for a in workers.run(cluster_fill.probe_worker, str(partial), "other", [5, 3, 2, 2],
                                                  None).values()]
    assert all("sees another" in p and "than the one the building process wrote" in p for p in problems)
    problems = [a["problem"] for a in workers.run(cluster_fill.probe_worker, str(partial), "t0", [5, 3, 2, 2],
                                                  str(tmp_path / "gone.png")).values()]
    assert all(re.search(r"cannot read the source file '.*gone.png': No such file", p) for p in problems)


def test_a_task_checks_the_token_before_and_while_it_writes(tmp_path, source):
    partial = tmp_path / "c.npy.partial"
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(3, 3, 16, 16)).flush()
    paths = [str(p) for p in sorted((source / "ant").iterdir())[:3]]
    options = preload.DecodeOptions.create(size=16, layout="NCHW")
    arguments = (np.arange(3), paths, options, "raise", (3, 3, 16, 16))
    with pytest.raises(cluster_fill.ClusterError, match=r"cannot see '.*c.npy.partial.probe', which the building"):
        cluster_fill.fill_chunk(str(partial), "t0", *arguments)
    Path(str(partial) + ".probe").write_text(cluster_fill.STOPPED)
    result = cluster_fill.fill_chunk(str(partial), "t0", *arguments)
    assert result.stopped and len(result.rows) == 0
    assert not np.load(partial).any()  # nothing written once the coordinator stopped
    Path(str(partial) + ".probe").write_text("t0")
    result = cluster_fill.fill_chunk(str(partial), "t0", *arguments)
    assert not result.stopped and result.rows.tolist() == [0, 1, 2] and np.load(partial).all(axis=(1, 2, 3)).any()


# ------------------------------------------------------------------ CLI, README


def test_cli_builds_on_the_scheduler_and_prints_each_worker(tmp_path, source, reference, workers, capsys):
    out = tmp_path / "c.npy"
    code = main(["build", str(source), str(out), "--size", "16", "--layout", "nchw", "--no-progress",
                 "--scheduler", workers.scheduler.address])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes() == reference
    assert re.search(rf"^cluster +{COUNT} images in \d+ chunks on 2 worker\(s\)", captured.out, re.M), captured.out
    assert len(re.findall(r"^  worker tcp://\S+ \(host .+\): \d+ images", captured.out, re.M)) == 2
    assert f"cache    {out}" in captured.out


def test_cli_without_dask_says_how_to_install_it(tmp_path, source, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["build", str(source), str(tmp_path / "c.npy"), "--scheduler", "tcp://127.0.0.1:8786"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("preload: error: --scheduler needs Dask, which is not installed: "
                   'pip install "preload-images[dask]" (from a clone of preload: pip install ".[dask]")\n')
    assert not (tmp_path / "c.npy.partial").exists()


def test_importing_preload_does_not_import_dask():
    code = "import sys, preload; print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_probe_token_is_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not preload's")
    probe = tmp_path / ("c.npy.partial" + cluster_fill.PROBE_SUFFIX)
    probe.symlink_to(victim)
    with pytest.raises(preload.TargetError, match=r"is a symbolic link; preload creates that file itself"):
        cluster_fill._write_token(str(probe), "token")
    assert victim.read_text() == "not preload's"
    probe.unlink()
    cluster_fill._write_token(str(probe), "token")
    assert probe.read_text() == "token"
