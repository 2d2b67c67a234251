"""Workers that stay healthy: why one was lost, restart(), recycling by task count and memory."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sockpool import (
    Cluster,
    ClusterClosedError,
    LaunchError,
    NoWorkersLeftError,
    SSHLauncher,
    WorkerLostError,
)
from sockpool.common import proc
from sockpool.common.proc import explain_kill, format_bytes

pytestmark = pytest.mark.timeout(120)


def _eat(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return len(block)


def _memory_group(name: str) -> Path:
    group = Path(f"/sys/fs/cgroup/memory/sockpool-{name}-{os.getpid()}")
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup v1 memory group here ({exc})")
    return group


def _remove_group(group: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            group.rmdir()
            return
        except OSError:  # the killed worker is still leaving
            time.sleep(0.05)


def test_a_worker_killed_by_the_out_of_memory_killer_says_so_with_its_peak_memory() -> None:
    group = _memory_group("oom")
    try:
        (group / "memory.limit_in_bytes").write_text(str(200 * 1024 * 1024))
        with Cluster(n=1) as cl:
            (group / "cgroup.procs").write_text(str(cl.workers[0].pid))
            with pytest.raises(WorkerLostError) as lost:
                cl.par_map(_eat, [1024])
            message = str(lost.value)
            assert "killed by SIGKILL (by the kernel's out-of-memory killer, peak memory" in message
            peak = message.split("peak memory ", 1)[1].split(")", 1)[0]
            # it ate up to the 200 MB limit before it was killed
            assert peak.endswith("MB") and float(peak.split()[0]) >= 150, message
            assert lost.value.exit_status is not None
            assert "out-of-memory" in lost.value.exit_status
            assert cl.par_map(_eat, [8]) == [8 * 1024 * 1024]  # the replacement is fine
    finally:
        _remove_group(group)


def _sleep_and_report(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_worker_killed_from_outside_is_not_blamed_on_memory() -> None:
    with Cluster(n=1) as cl:
        pid = cl.workers[0].pid
        future = cl.submit(_sleep_and_report, 30)
        time.sleep(0.5)  # it runs now
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError) as lost:
            future.result(timeout=30)
        assert "killed by SIGKILL" in str(lost.value)
        assert "out-of-memory" not in str(lost.value)


_PEAKS = """
import os, signal, sys, time
from sockpool import Cluster, WorkerLostError

def eat_then_sleep(megabytes):
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    open("ate", "w").close()
    time.sleep(30)

def sleep(seconds):
    open("ate", "w").close()
    time.sleep(seconds)

def killed_after(fn, *args):
    with Cluster(n=1) as cl:
        future = cl.submit(fn, *args)
        while not os.path.exists("ate"):  # it ate what it eats
            time.sleep(0.05)
        os.remove("ate")
        os.kill(cl.workers[0].pid, signal.SIGKILL)
        try:
            future.result(timeout=30)
        except WorkerLostError as lost:
            return lost.exit_status

print(killed_after(eat_then_sleep, 300))
ballast = bytearray(1024 * 1024 * 1024)  # this process's peak: 1 GB
ballast[::4096] = b"x" * len(ballast[::4096])
del ballast
print(killed_after(sleep, 30))
"""


def test_a_lost_workers_peak_memory_is_its_own_not_its_masters(tmp_path: Path) -> None:
    # A child's ru_maxrss starts at its parent's peak (kept across exec): a worker
    # of a master that once held 1 GB was "killed by SIGKILL (peak memory 1.1 GB)".
    script = tmp_path / "peaks.py"
    script.write_text(_PEAKS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    own, small = done.stdout.splitlines()
    assert own.startswith("killed by SIGKILL (peak memory 3"), done.stderr  # its 300 MB
    assert own.endswith(" MB)")
    assert small == "killed by SIGKILL", done.stderr  # no more than the master's: unknown


def test_other_endings_are_described_plainly() -> None:
    assert explain_kill(1, 3, 10**8) == "exit code 3"
    assert explain_kill(1, -signal.SIGSEGV, 12_300_000) == "killed by SIGSEGV (peak memory 12.3 MB)"
    assert explain_kill(1, -signal.SIGTERM, None) == "killed by SIGTERM"
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000_000) == "1.5 GB"


def test_without_the_kernel_log_a_grown_oom_count_of_its_cgroup_is_the_evidence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "KERNEL_LOG", str(tmp_path / "no-such-log"))
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    killed = explain_kill(4242, -signal.SIGKILL, None, str(tmp_path), oom_kills_before=1)
    assert killed == "killed by SIGKILL (by the kernel's out-of-memory killer)"
    unchanged = explain_kill(4242, -signal.SIGKILL, None, str(tmp_path), oom_kills_before=2)
    assert unchanged == "killed by SIGKILL"


def test_the_kernel_logs_kill_of_a_pid_before_the_process_started_is_anothers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pids are reused: a SIGKILL from outside was reported as the OOM killer's
    # because the log held an old "Killed process <pid>" of an earlier process.
    log = tmp_path / "kmsg"
    monkeypatch.setattr(proc, "KERNEL_LOG", str(log))
    now = time.monotonic()
    log.write_bytes(f"3,7,{int((now - 60) * 1e6)},-;Out of memory: Killed process 4242 "
                    "(python3) total-vm:1000kB\n".encode())
    assert (explain_kill(4242, -signal.SIGKILL, 28_400_000, started=now - 10)
            == "killed by SIGKILL (peak memory 28.4 MB)")
    assert (explain_kill(4242, -signal.SIGKILL, None, started=now - 120)
            == "killed by SIGKILL (by the kernel's out-of-memory killer)")


# -- recycling -----------------------------------------------------------------------------


def _record(path: str, index: int) -> int:
    with open(path, "a") as log:
        log.write(f"{index} {os.getpid()}\n")
    return index * 2


def _runs(path: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in path.read_text().splitlines()]  # type: ignore[misc]


def test_max_tasks_per_worker_replaces_workers_and_runs_each_task_once(tmp_path: Path) -> None:
    log = tmp_path / "runs"
    with Cluster(n=2, max_tasks_per_worker=3) as cl:
        first = {w.pid for w in cl.workers}
        results = cl.par_map(_record, [str(log)] * 20, range(20), chunksize=1)
        assert results == [2 * i for i in range(20)]
        runs = _runs(log)
        assert sorted(index for index, _ in runs) == list(range(20))  # each once
        per_worker: dict[int, int] = {}
        for _, pid in runs:
            per_worker[pid] = per_worker.get(pid, 0) + 1
        assert max(per_worker.values()) <= 3
        assert len(per_worker) >= 7 and first <= set(per_worker)
        # replaced, not lost (the last replacement may still be starting)
        assert _wait_for(lambda: cl.n_workers == 2 and len(cl.workers) == 2)
        assert cl.submit(abs, -1).result(timeout=30) == 1
    assert not psutil_children()


@pytest.mark.parametrize("call", ["par_map", "imap"])
def test_max_tasks_per_worker_of_one_runs_each_task_of_a_map_in_a_fresh_process(
        tmp_path: Path, call: str) -> None:
    # Chunks cut by the default rule held several tasks each: with k=1, up to 3
    # tasks of a par_map, and 8 of an imap, ran in one process.
    log = tmp_path / "runs"
    with Cluster(n=2, max_tasks_per_worker=1) as cl:
        results = list(getattr(cl, call)(_record, [str(log)] * 12, range(12)))
        assert results == [2 * i for i in range(12)]
    pids = [pid for _, pid in _runs(log)]
    assert len(pids) == len(set(pids)) == 12


def _where(directory: str) -> tuple[int, str, str | None, bool]:
    return (os.getpid(), os.getcwd(), os.environ.get("SOCKPOOL_TEST_WHERE"),
            directory in sys.path)


def test_replacement_workers_start_where_the_first_ones_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # They took the master's directory, environment and import path as they were at
    # their own start: after an os.chdir, one map read "data.txt" from two places.
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir(), later.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv("SOCKPOOL_TEST_WHERE", "first")
    with Cluster(n=2, max_tasks_per_worker=1) as cl:
        monkeypatch.chdir(later)
        monkeypatch.setenv("SOCKPOOL_TEST_WHERE", "later")
        monkeypatch.syspath_prepend(str(later))
        runs = cl.par_map(_where, [str(later)] * 6, chunksize=1)
    assert len({pid for pid, *_ in runs}) == 6  # each in a process of its own
    assert {tuple(run[1:]) for run in runs} == {(os.path.realpath(first), "first", False)}


def test_a_recycled_worker_whose_replacement_cannot_start_fails_the_map_not_hangs(
        tmp_path: Path) -> None:
    # Its replacement's launch failed (the interpreter gone), nothing else was alive,
    # and nothing noticed: the map waited for ever.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    with Cluster(n=1, max_tasks_per_worker=1, python=str(python)) as cl:
        assert cl.par_map(abs, [-1]) == [1]
        python.unlink()
        with pytest.raises(NoWorkersLeftError, match="replacements failed to start") as caught:
            cl.par_map(abs, range(3), chunksize=1)
    # (The replacement for the first map's worker may have started before the unlink,
    # and failed as its interpreter went: either way a LaunchError.)
    assert isinstance(caught.value.__cause__, LaunchError)


def test_replacements_start_though_the_directory_the_cluster_started_in_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (A TemporaryDirectory the script worked in, say.)  They start in the master's.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    with Cluster(n=1, max_tasks_per_worker=1) as cl:
        assert cl.par_map(abs, [-1]) == [1]
        monkeypatch.chdir(tmp_path)
        gone.rmdir()
        # (The replacement started before the removal lives in a directory gone.)
        assert cl.par_map(_cwd_if_any, range(3), chunksize=1)[1:] == [
            os.path.realpath(tmp_path)] * 2


def _cwd_if_any(_: int) -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None


def test_an_ssh_launcher_reused_starts_its_local_workers_where_its_new_cluster_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its inner local launcher was never closed: the second cluster's "localhost"
    # workers started in the first one's directory and environment.
    launcher = SSHLauncher(["localhost"])
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        monkeypatch.setenv("SOCKPOOL_TEST_WHERE", name)
        with Cluster(launcher=launcher) as cl:
            assert cl.par_map(_where, [""])[0][1:3] == (
                os.path.realpath(tmp_path / name), name)


def test_run_on_all_while_workers_are_recycled_runs_once_per_worker(tmp_path: Path) -> None:
    # A worker told to stop (its quota done) was still counted live: run_on_all
    # pinned a call to it that no worker would ever run, and hung.
    with Cluster(n=2, max_tasks_per_worker=1) as cl:
        for _ in range(6):
            cl.par_map(abs, range(2), chunksize=1)  # both retire
            pool = concurrent.futures.ThreadPoolExecutor(1)
            try:
                pids = pool.submit(cl.run_on_all, os.getpid).result(timeout=30)
            finally:
                pool.shutdown(wait=False)
            assert len(pids) == 2 and len(set(pids)) == 2


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def psutil_children() -> list[int]:
    """The processes started since the test began and still running (other test files'
    shared clusters may still be around: they are not this test's)."""
    return sorted(_live_children() - _before)


def _live_children() -> set[int]:
    import psutil

    live = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended meanwhile
            if child.status() != psutil.STATUS_ZOMBIE:
                live.add(child.pid)
    return live


_before: set[int] = set()


@pytest.fixture(autouse=True)
def _note_the_processes_before() -> None:
    _before.clear()
    _before.update(_live_children())


_leak: list[bytearray] = []


def _leak_and_report(index: int) -> tuple[int, int]:
    block = bytearray(60 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    _leak.append(block)  # a leak: it stays until the process ends
    return index, os.getpid()


def test_max_worker_memory_replaces_a_worker_that_grew_too_large() -> None:
    with Cluster(n=1, max_worker_memory="150MB") as cl:
        done = cl.par_map(_leak_and_report, range(8), chunksize=1)
        assert [index for index, _ in done] == list(range(8))
        pids = [pid for _, pid in done]
        # 60 MB each: a worker is above 150 MB after its second or third task, and
        # then runs at most the one chunk it already holds (prefetch)
        assert len(set(pids)) >= 2, pids
        assert all(pids.count(pid) <= 4 for pid in set(pids)), pids
        assert _wait_for(lambda: cl.n_workers == 1 and len(cl.workers) == 1)


def _leak_shared_memory(index: int) -> tuple[int, int]:
    import mmap

    block = mmap.mmap(-1, 60 * 1024 * 1024)  # shared and anonymous, as multiprocessing's
    block.write(b"x" * len(block))           # shared_memory, torch's tensors, Arrow use
    _leak.append(block)  # type: ignore[arg-type]
    return index, os.getpid()


def test_max_worker_memory_counts_shared_memory_a_task_holds() -> None:
    # Leaving out all shared pages (not only the transport's segments), a worker
    # whose tasks leaked shared memory was never replaced.
    with Cluster(n=1, max_worker_memory="150MB") as cl:
        pids = [pid for _, pid in cl.par_map(_leak_shared_memory, range(8), chunksize=1)]
        assert len(set(pids)) >= 2, pids


def _large_result(index: int) -> tuple[int, int, Any]:
    import numpy

    return index, os.getpid(), numpy.ones(5_000_000)  # 40 MB, through shared memory


def test_max_worker_memory_does_not_count_the_shared_memory_results_travel_in() -> None:
    # A result of 1 MB or more goes home through a shared-memory segment, which the
    # worker keeps for reuse: counted as its memory, a worker that leaked nothing
    # was replaced after a few 40 MB results.
    # (Segments the master let go of wait in the worker's cache, mapped: those of
    # each map but the last.)
    with Cluster(n=1, max_worker_memory="120MB") as cl:
        done = [(index, pid) for _ in range(3)
                for index, pid, _ in cl.par_map(_large_result, range(6), chunksize=1)]
        assert [index for index, _ in done] == list(range(6)) * 3
        assert len({pid for _, pid in done}) == 1


def _setup_fails_from_the_third_start(counter: str) -> None:
    with open(counter, "a") as starts:
        starts.write("x")
    if len(Path(counter).read_text()) >= 3:
        raise RuntimeError("the license server is gone")


def test_replacements_whose_setup_fails_say_so_when_no_worker_is_left(tmp_path: Path) -> None:
    # Each replacement's setup failed and its worker was killed: the error named
    # only that kill ("last: worker 5 killed by SIGKILL"), the setup's not at all.
    setup = functools.partial(_setup_fails_from_the_third_start, str(tmp_path / "starts"))
    with Cluster(n=2, setup=setup, max_tasks_per_worker=2) as cl:
        with pytest.raises(NoWorkersLeftError) as failed:
            cl.par_map(abs, range(20), chunksize=1)
        message = str(failed.value)
        assert "setup failed on worker" in message and "the license server is gone" in message
        assert isinstance(failed.value.__cause__, LaunchError)
        assert "the license server is gone" in str(failed.value.__cause__)
        with pytest.raises(NoWorkersLeftError) as later:  # a call made after: the same story
            cl.submit(abs, 1)
        assert str(later.value) == message and later.value is not failed.value
        assert later.value.__cause__ is failed.value.__cause__


def test_max_worker_memory_replaces_a_remote_worker_too(namespace_hosts: Any) -> None:
    # Each worker checks its own memory after a chunk: the master needs no access to its host.
    with Cluster(hosts=["sp-n1"], python=sys.executable, max_worker_memory="150MB") as cl:
        done = cl.par_map(_leak_and_report, range(8), chunksize=1)
        assert [index for index, _ in done] == list(range(8))
        pids = [pid for _, pid in done]
        assert len(set(pids)) >= 2, pids
        assert all(pids.count(pid) <= 4 for pid in set(pids)), pids
        assert {worker.host for worker in cl.workers} == {"sp-n1"}


def _setup() -> None:
    import builtins

    builtins.SOCKPOOL_SETUP_RAN = os.getpid()  # type: ignore[attr-defined]


def _setup_pid() -> int:
    import builtins

    return builtins.SOCKPOOL_SETUP_RAN  # type: ignore[attr-defined, no-any-return]


def test_restart_gives_fresh_workers_with_setup_and_exports_and_runs_what_was_queued(
        tmp_path: Path) -> None:
    with Cluster(n=2, setup=_setup) as cl:
        cl.export(SCALE=3)
        before = {w.pid for w in cl.workers}
        running = [cl.submit(time.sleep, 30) for _ in range(2)]
        queued = [cl.submit(abs, -i) for i in range(6)]
        time.sleep(0.5)
        cl.restart()
        after = {w.pid for w in cl.workers}
        assert len(after) == 2 and not after & before
        for future in running:
            with pytest.raises(WorkerLostError, match=r"restart\(\)"):
                future.result(timeout=30)
        assert [f.result(timeout=30) for f in queued] == list(range(6))
        assert sorted(cl.run_on_all(_setup_pid)) == sorted(after)  # setup ran again
        assert cl.run_on_all(lambda: SCALE) == [3, 3]  # noqa: F821 - exported
        retried = cl.submit(_sleep_and_report, 0.2)
        assert retried.result(timeout=30) in after


def _slow_the_first_time(path: str) -> int:
    first = not os.path.exists(path)
    with open(path, "a") as out:
        out.write(f"{os.getpid()}\n")
    if first:
        time.sleep(30)
    return os.getpid()


def test_close_during_a_restart_ends_it_at_once_as_closed() -> None:
    # restart() waited out connect_timeout, then raised LaunchError ("only 0 of 2
    # workers connected ...; still waiting for: ").
    cl = Cluster(n=2, connect_timeout=30)
    outcome: list[BaseException | None] = []

    def restart() -> None:
        try:
            cl.restart()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=restart)
    thread.start()
    time.sleep(0.05)  # its replacements are starting
    started = time.monotonic()
    cl.close()
    thread.join(20)
    assert time.monotonic() - started < 10
    assert len(outcome) == 1
    if outcome[0] is not None:  # (it may have finished before the close)
        assert isinstance(outcome[0], ClusterClosedError), outcome[0]
    assert not psutil_children()


def test_restart_retries_the_running_task_when_asked(tmp_path: Path) -> None:
    log = tmp_path / "runs"
    with Cluster(n=1) as cl:
        outcome: list[object] = []
        mapping = threading.Thread(target=lambda: outcome.append(
            cl.par_map(_slow_the_first_time, [str(log)], retries=1)))
        mapping.start()
        assert _wait_for(log.exists)  # it runs
        cl.restart()
        mapping.join(30)
        assert outcome == [[cl.workers[0].pid]]
        assert len(log.read_text().splitlines()) == 2  # once stopped by restart, once done


@pytest.mark.parametrize(("options", "named"), [
    ({"max_tasks_per_worker": 0}, "max_tasks_per_worker"),
    ({"max_tasks_per_worker": 2.5}, "max_tasks_per_worker"),
    ({"max_worker_memory": "lots"}, "max_worker_memory"),
    ({"max_worker_memory": 0}, "max_worker_memory"),
    ({"max_worker_memory": "-2GB"}, "max_worker_memory"),
    ({"max_worker_memory": "0.5"}, "max_worker_memory"),  # was a limit of 0 bytes
    ({"max_worker_memory": "1.5"}, "max_worker_memory"),  # was 1 byte
])
def test_bad_recycling_options_fail_before_any_worker_starts(options: dict[str, object],
                                                             named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Cluster(n=1, **options)  # type: ignore[arg-type]
    assert not psutil_children()


def test_memory_sizes() -> None:
    from sockpool.api.cluster_options import memory_bytes

    assert memory_bytes("2GB") == 2_000_000_000
    assert memory_bytes("512 MiB") == 512 * 1024**2
    assert memory_bytes("1.5g") == 1_500_000_000
    assert memory_bytes(4096) == 4096
    assert memory_bytes(None) is None


def _first(values: Any) -> float:
    return float(values[0])


def test_an_idle_worker_lets_go_of_its_last_arguments() -> None:
    # The loop kept the last TASK's frames until the next message came: a worker
    # sent 200 MB over the socket held them for as long as it sat idle.
    import numpy as np
    import psutil

    with Cluster(n=1, env={"SOCKPOOL_SHARED_MEMORY": "0"}) as cl:
        worker = psutil.Process(cl.workers[0].pid)
        before = worker.memory_info().rss
        assert cl.submit(_first, np.ones(25_000_000)).result(timeout=60) == 1.0
        time.sleep(0.5)  # its RESULT is out: it waits for the next message
        assert worker.memory_info().rss - before < 100 * 2**20
