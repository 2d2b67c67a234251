"""Helpers for tests that run user programs as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from sockpool import WorkerLostError

ROOT = Path(__file__).resolve().parent.parent


def run_script(source: str, tmp_path: Path, *args: str, timeout: float = 60,
               check: bool = True, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as ``__main__`` of a fresh interpreter in ``tmp_path``, as a user would.

    Functions defined there are shipped by value, exactly as in a user's script.
    """
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"script failed ({result.returncode}):\n--- stdout\n{result.stdout}"
                             f"\n--- stderr\n{result.stderr}")
    return result


@contextlib.contextmanager
def master_program(path: Path, source: str) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Start a user program whose first line of output is its workers' pids as JSON.

    Yields the running program and those pids; the program is ended (by pid)
    whatever the test does to it.
    """
    path.write_text(textwrap.dedent(source))
    master = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert master.stdout is not None
        yield master, json.loads(master.stdout.readline())
    finally:
        if master.poll() is None:
            master.kill()
        master.wait()


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is running; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        if alive:
            time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class CountsUnpickling:
    """A payload that counts, in each process, how often it is unpickled.

    The count lives in the process environment, so that it is shared by every
    copy of this (local, so shipped by value) module.
    """

    def __init__(self, size: int) -> None:
        self.data = bytes(size)

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        return (_rebuild_counting, (self.data,))

    @staticmethod
    def loads() -> int:
        """How many times this process unpickled one."""
        return int(os.environ.get("SOCKPOOL_TEST_UNPICKLED", "0"))


def _rebuild_counting(data: bytes) -> CountsUnpickling:
    os.environ["SOCKPOOL_TEST_UNPICKLED"] = str(CountsUnpickling.loads() + 1)
    obj = CountsUnpickling.__new__(CountsUnpickling)
    obj.data = data
    return obj


def dying_mid_chunk(log: str, raises: int, dies: int, how: str = "exit"
                    ) -> Callable[[int], int]:
    """A task that notes its index in ``log``, raises KeyError on ``raises`` and
    kills its worker on ``dies`` (``os._exit`` or a segfault); else ``i * 10``.

    A local closure, so it travels by value to any host."""

    def task(i: int) -> int:
        with open(log, "a") as stream:
            stream.write(f"{i}\n")
        time.sleep(0.01)
        if i == raises:
            raise KeyError(i)
        if i == dies:
            if how == "segfault":
                import ctypes

                ctypes.string_at(0)
            os._exit(3)
        return i * 10

    return task


def check_only_the_task_it_died_in_was_lost(results: list[Any], log: Path, raises: int,
                                            dies: int) -> None:
    """What a map of :func:`dying_mid_chunk` must return: every value, the KeyError
    with its type, a WorkerLostError for the one task only, and each task run once."""
    assert isinstance(results[raises], KeyError) and results[raises].args == (raises,)
    lost = results[dies]
    assert isinstance(lost, WorkerLostError) and f"task {dies}" in str(lost), results
    # The exception it finished with names the worker that ran it, the one that died.
    assert f"task {raises} failed on worker {lost.worker_id} (pid {lost.pid} " in " ".join(
        getattr(results[raises], "__notes__", [])), (results[raises].__notes__, lost)
    assert [r for i, r in enumerate(results) if i not in (raises, dies)] == [
        i * 10 for i in range(len(results)) if i not in (raises, dies)], results
    assert sorted(int(line) for line in log.read_text().split()) == list(range(len(results)))
