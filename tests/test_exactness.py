"""No finished result is lost when a worker dies: only the task it died in fails (or is retried).

Each task appends its index to a file first, so that a task that ran twice
shows.  Every scenario runs repeatedly under two CPU hogs, where the worker's
zmq I/O thread is slow to push a result out of the process (the way results
used to die with their worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import check_only_the_task_it_died_in_was_lost, dying_mid_chunk

from sockpool import Cluster, WorkerLostError
from sockpool.common import protocol
from sockpool.common.protocol import Kind
from sockpool.dispatch.records import WorkerRecord
from sockpool.dispatch.transport import MasterSocket

pytestmark = pytest.mark.timeout(240)

ROUNDS = 10


@pytest.fixture(scope="module")
def hogs() -> Iterator[None]:
    """Two busy processes for the length of the module; ended by their pids."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def lines(path: Path) -> Counter[int]:
    return Counter(int(line) for line in path.read_text().split())


def task_dying_by(how: str, log: str, doomed: int, marker: str | None) -> Callable[[int], int]:
    """A task that logs its index, works a little, and dies on ``doomed`` (once, with a marker)."""

    def task(i: int) -> int:
        with open(log, "a") as stream:
            stream.write(f"{i}\n")
        # It dies at once, right after the RESULT of the task before went out (the
        # master sent it ahead, while that one ran): that RESULT must not die too.
        if i == doomed and (marker is None or not os.path.exists(marker)):
            if marker is not None:
                open(marker, "w").close()
            if how == "exit":
                os._exit(3)
            if how == "segfault":
                import ctypes

                ctypes.string_at(0)
            if how == "sigkill":  # the test's thread kills it from outside, by pid
                with open(log + ".pid", "w") as stream:
                    stream.write(str(os.getpid()))
                time.sleep(30)
        time.sleep(0.02)
        return i * 10

    return task


def killer(pid_file: Path, stop: threading.Event) -> None:
    """Kill, with SIGKILL from outside, the worker that writes its pid to ``pid_file``."""
    while not stop.is_set():
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            time.sleep(0.005)
            continue
        os.kill(pid, signal.SIGKILL)
        pid_file.unlink()


def run_map(cl: Cluster, how: str, tmp: Path, doomed: int, retries: int = 0,
            **options: Any) -> tuple[list[Any], Counter[int]]:
    log = tmp / "log"
    log.write_text("")
    marker = str(tmp / "marker") if retries else None
    if marker is not None and os.path.exists(marker):
        os.unlink(marker)
    stop = threading.Event()
    thread = threading.Thread(target=killer, args=(Path(str(log) + ".pid"), stop))
    thread.start()
    try:
        results = cl.par_map(task_dying_by(how, str(log), doomed, marker), range(10),
                             errors="return", retries=retries, **options)
    finally:
        stop.set()
        thread.join()
    return results, lines(log)


def wait_for_workers(cl: Cluster, n: int) -> None:
    deadline = time.monotonic() + 20
    while cl.n_workers < n and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_only_the_task_a_worker_died_in_fails(hogs: None, tmp_path: Path, how: str) -> None:
    with Cluster(n=2) as cl:
        for _ in range(ROUNDS):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, how, tmp_path, doomed=4, chunksize=1)
            assert isinstance(results[4], WorkerLostError), results
            assert "task 4" in str(results[4])
            assert [r for i, r in enumerate(results) if i != 4] == [
                i * 10 for i in range(10) if i != 4]
            assert ran == Counter(range(10)), ran  # each task ran once, the doomed one too


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_a_task_lost_once_is_retried_elsewhere_and_nothing_else_reruns(
        hogs: None, tmp_path: Path, how: str) -> None:
    with Cluster(n=2) as cl:
        for _ in range(ROUNDS):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, how, tmp_path, doomed=4, retries=1, chunksize=1)
            assert results == [i * 10 for i in range(10)]
            assert ran == Counter([*range(10), 4]), ran


def test_tasks_of_the_dying_chunk_that_never_started_run_elsewhere(
        hogs: None, tmp_path: Path) -> None:
    # Default chunks of range(10) on 2 workers: [0, 1], [2, 3], [4, 5], ...
    with Cluster(n=2) as cl:
        for _ in range(ROUNDS):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, "exit", tmp_path, doomed=4)
            assert isinstance(results[4], WorkerLostError) and "task 4" in str(results[4])
            assert [r for i, r in enumerate(results) if i != 4] == [
                i * 10 for i in range(10) if i != 4]
            assert ran == Counter(range(10)), ran


@pytest.mark.parametrize("how", ["exit", "sigkill", "segfault"])
def test_a_task_finished_in_the_chunk_its_worker_died_in_is_delivered(
        hogs: None, tmp_path: Path, how: str) -> None:
    # Default chunks of range(10) on 2 workers: [0, 1], [2, 3], [4, 5], ...: task 4
    # finished in the chunk that task 5 killed.  Its result was kept in the
    # worker's progress log, so it is delivered, and nothing runs twice.
    with Cluster(n=2) as cl:
        for _ in range(ROUNDS):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, how, tmp_path, doomed=5)
            assert isinstance(results[5], WorkerLostError) and "task 5" in str(results[5])
            assert [r for i, r in enumerate(results) if i != 5] == [
                i * 10 for i in range(10) if i != 5], results
            assert ran == Counter(range(10)), ran


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_with_retries_only_the_task_it_died_in_runs_again(
        hogs: None, tmp_path: Path, how: str) -> None:
    with Cluster(n=2) as cl:
        for _ in range(3):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, how, tmp_path, doomed=5, retries=1)
            assert results == [i * 10 for i in range(10)]
            assert ran == Counter([*range(10), 5]), ran


@pytest.mark.parametrize("seed", [None, 7], ids=["unseeded", "seeded"])
def test_every_finished_task_of_a_long_chunk_is_delivered_with_its_exception(
        hogs: None, tmp_path: Path, seed: int | None) -> None:
    # Chunks of 10: tasks 20..24 finished (22 by raising) before 25 killed the worker.
    log = tmp_path / "log"
    with Cluster(n=2) as cl:
        for _ in range(3):
            log.write_text("")
            wait_for_workers(cl, 2)
            results = cl.par_map(dying_mid_chunk(str(log), raises=22, dies=25), range(40),
                                 chunksize=10, errors="return", seed=seed)
            check_only_the_task_it_died_in_was_lost(results, log, raises=22, dies=25)


def unpicklable_then_dying(log: str) -> Callable[[int], Any]:
    def task(i: int) -> Any:
        with open(log, "a") as stream:
            stream.write(f"{i}\n")
        time.sleep(0.01)
        if i == 2:
            os._exit(3)
        return threading.Lock() if i == 0 else i * 10

    return task


def test_a_result_that_cannot_be_kept_says_it_finished_and_died_unsent(tmp_path: Path) -> None:
    # The stated bound: task 0's result cannot be pickled, so nothing after it in
    # its chunk is kept; task 1 finished, but its result died with the worker.
    log = tmp_path / "log"
    log.write_text("")
    with Cluster(n=1) as cl:
        results = cl.par_map(unpicklable_then_dying(str(log)), range(4), chunksize=4,
                             errors="return")
    for index in (0, 1):
        assert isinstance(results[index], WorkerLostError), results
        assert str(results[index]).startswith("tasks 0..1 finished on worker 0"), results
        assert "before their results were sent" in str(results[index])
    assert isinstance(results[2], WorkerLostError) and "task 2" in str(results[2])
    assert results[3] == 30
    assert lines(log) == Counter(range(4))


def logging_task(log: str) -> Callable[[int], int]:
    def task(i: int) -> int:
        with open(log, "a") as stream:
            stream.write(f"{i}\n")
        time.sleep(0.001)
        return i * 10

    return task


def test_a_restart_in_the_middle_of_a_map_runs_no_task_twice(hogs: None, tmp_path: Path) -> None:
    # restart() kills every worker and settles what each held at once, often
    # while it runs a chunk the master sent ahead before it had the RESULT of
    # the one before: that RESULT is delivered, and the chunk that had started
    # never goes back to the queue as if it had not.
    log = tmp_path / "log"
    with Cluster(n=2) as cl:
        for _ in range(ROUNDS):
            log.write_text("")
            wait_for_workers(cl, 2)
            timer = threading.Timer(0.05, cl.restart)
            timer.start()
            results = cl.par_map(logging_task(str(log)), range(300), chunksize=3,
                                 errors="return")
            timer.join()
            ran = lines(log)
            assert max(ran.values()) == 1, [i for i, count in ran.items() if count > 1]
            for i, result in enumerate(results):
                assert result == i * 10 or isinstance(result, WorkerLostError), (i, result)
                if result == i * 10:
                    assert ran[i] == 1


@pytest.mark.parametrize("page_read", [True, False])
def test_each_result_is_acknowledged_once_mostly_by_the_task_sent_after_it(
        monkeypatch: pytest.MonkeyPatch, page_read: bool) -> None:
    # A worker starts a chunk only once the master has all but its last RESULT (or
    # every one, where no progress page of it is read: a remote worker).  The TASK
    # sent after a RESULT says so; a separate ACK goes out only when none follows,
    # so a stream of short chunks costs two messages a chunk, not three.
    sent: Counter[Kind] = Counter()
    send = MasterSocket.send

    def counting_send(self: MasterSocket, identity: bytes, frames: list[Any]) -> bool:
        sent[protocol.parse(frames[0])[0].kind] += 1
        return send(self, identity, frames)

    monkeypatch.setattr(MasterSocket, "send", counting_send)
    if not page_read:
        monkeypatch.setattr(WorkerRecord, "page_read", property(lambda self: False))
    with Cluster(n=2) as cl:
        assert cl.par_map(abs, range(-300, 0), chunksize=1) == list(range(300, 0, -1))
    assert sent[Kind.TASK] >= 300
    assert sent[Kind.ACK] < 100, sent


def uneven_task(log: str) -> Callable[[int], int]:
    """Logs its index; every seventh task runs 45 ms, the rest under one."""

    def task(i: int) -> int:
        with open(log, "a") as stream:
            stream.write(f"{i}\n")
        time.sleep(0.045 if i % 7 == 0 else 0.0005 * (i % 3))
        return i * 10

    return task


def each_runs_once_though_taken_back(tmp_path: Path, n_workers: int) -> None:
    """Uneven tasks leave workers idle while others hold a chunk queued: the master
    asks for it back, racing the worker's main thread taking it.  A chunk given
    back may be sent to the same worker again and given back again before the
    first copy is read.  Whoever wins, each task runs once, every result comes back."""
    log = tmp_path / "log"
    task = uneven_task(str(log))
    expected = [i * 10 for i in range(120)]
    with Cluster(n=n_workers) as cl:
        for _ in range(ROUNDS):
            for run in (lambda: cl.par_map(task, range(120), chunksize=1),
                        lambda: list(cl.imap(task, range(120), chunksize=1)),
                        lambda: [f.result(timeout=60) for f in [cl.submit(task, i)
                                                                for i in range(120)]]):
                log.write_text("")
                assert run() == expected
                assert lines(log) == Counter(range(120))


def test_chunks_taken_back_for_idle_workers_run_exactly_once(hogs: None, tmp_path: Path
                                                             ) -> None:
    each_runs_once_though_taken_back(tmp_path, 2)


def test_chunks_taken_back_twice_from_a_worker_run_exactly_once(tmp_path: Path) -> None:
    # Four workers on two cores: an imap ran such a task twice in 1 round in 5.
    each_runs_once_though_taken_back(tmp_path, 4)
