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

from sockpool import Cluster, WorkerLostError

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


def test_a_task_finished_in_the_chunk_its_worker_died_in_is_failed_not_rerun(
        hogs: None, tmp_path: Path) -> None:
    # The documented bound: task 4 finished, but its result was still in the
    # worker, in the same chunk as task 5, which killed it.  It is not run twice.
    with Cluster(n=2) as cl:
        for _ in range(3):
            wait_for_workers(cl, 2)
            results, ran = run_map(cl, "exit", tmp_path, doomed=5)
            assert isinstance(results[4], WorkerLostError) and "finished" in str(results[4])
            assert isinstance(results[5], WorkerLostError) and "task 5" in str(results[5])
            assert [r for i, r in enumerate(results) if i not in (4, 5)] == [
                i * 10 for i in range(10) if i not in (4, 5)]
            assert ran == Counter(range(10)), ran

