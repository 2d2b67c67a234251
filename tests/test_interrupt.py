"""Ctrl-C during a map: prompt KeyboardInterrupt, running tasks interrupted, cluster usable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import wait_gone

from sockpool import Cluster
from sockpool.api import startup

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import sys, time
from sockpool import Cluster

with Cluster(n=2) as cl:
    print("ready", flush=True)
    try:
        cl.{call}
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    started = time.monotonic()
    print("usable", cl.par_map(abs, [-1, -2]), round(time.monotonic() - started, 1), flush=True)
"""


@pytest.mark.parametrize("call", [
    "par_map(time.sleep, [20] * 6, chunksize=1)",
    "imap(time.sleep, [20] * 6).__next__()",
])
def test_ctrl_c_interrupts_a_running_map(tmp_path: Path, call: str) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT.format(call=call))
    master = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert master.stdout is not None
        assert master.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the tasks are running now
        sent = time.monotonic()
        os.kill(master.pid, signal.SIGINT)
        assert master.stdout.readline().strip() == "interrupted"
        assert time.monotonic() - sent < 1.0
        # The sleeping tasks were interrupted, so the workers answer at once.
        usable = master.stdout.readline().split(maxsplit=1)
        assert usable[0] == "usable" and usable[1].startswith("[1, 2]"), usable
        assert float(usable[1].rsplit(maxsplit=1)[1]) < 2.0
        assert master.wait(10) == 0, master.stderr.read() if master.stderr else ""
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


OUTPUT_SCRIPT = """
import signal, sys, time
from sockpool import Cluster

signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # a handler as many programs have

def task(i):
    print(f"start {i}", flush=True)
    if i % 3 == 2:
        open(f"started-{i}", "w").close()  # (the test waits for both)
    time.sleep(0.3 if i % 3 < 2 else 20)
    print(f"end {i}", flush=True)
    return i

with Cluster(n=2) as cl:
    cl.par_map(abs, [1, 2])
    print("ready", flush=True)
    try:
        cl.par_map(task, range(6), chunksize=3)
    except (KeyboardInterrupt, SystemExit):
        print("interrupted", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_what_the_tasks_that_ran_printed(tmp_path: Path, signum: int) -> None:
    # Each worker runs a chunk of three tasks: two finish, the third sleeps on.
    # Their output comes with the chunk's result, and Ctrl-C cancelled the chunks:
    # what the finished tasks printed was dropped, in a notebook cell as anywhere.
    # So was it where a signal handler's sys.exit() stopped the map.
    script = tmp_path / "interrupted.py"
    script.write_text(OUTPUT_SCRIPT)
    master = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert master.stdout is not None
        assert master.stdout.readline().strip() == "ready"
        # Tasks 0, 1 and 3, 4 have finished once 2 and 5 have started, and sleep.
        while not all((tmp_path / f"started-{i}").exists() for i in (2, 5)):
            assert master.poll() is None
            time.sleep(0.02)
        sent = time.monotonic()
        os.kill(master.pid, signum)
        out, err = master.communicate(timeout=30)
        assert time.monotonic() - sent < 10  # not the 20 s the sleeping tasks had left
        assert master.returncode == 0, err
        # In input order, as the map would have printed it, the interrupted tasks'
        # first line included; then the KeyboardInterrupt.
        assert out.split("\n") == [
            "start 0", "end 0", "start 1", "end 1", "start 2",
            "start 3", "end 3", "start 4", "end 4", "start 5", "interrupted", ""]
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_a_ctrl_c_as_a_cluster_starts_ends_its_workers_though_the_traceback_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # It landed after the workers were launched and before the constructor's wait
    # for them (in the capture's warm-up): they lived on for as long as the
    # traceback did, which IPython keeps (sys.last_traceback).
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(startup, "warm_up_capture", interrupted)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(KeyboardInterrupt) as caught:
        Cluster(n=2)
    started = [child.pid for child in psutil.Process().children(recursive=True)
               if child.pid not in before]
    assert caught.traceback  # kept
    assert wait_gone(started, 0) == []


CLEANUP_SCRIPT = """
import signal, sys, time
from pathlib import Path
from sockpool import Cluster

def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)

def nap(directory):
    Path(directory, "started").touch()
    try:
        time.sleep(30)
    except KeyboardInterrupt:
        Path(directory, "caught").touch()
        raise

with Cluster(n=1) as cl:
    cl.submit(ignore_sigint).result()  # an earlier task left its worker ignoring SIGINT
    print("ready", flush=True)
    try:
        cl.par_map(nap, [sys.argv[1]])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("usable", cl.par_map(abs, [-1]), flush=True)
"""


def _ctrl_c_once_started(source: str, directory: Path, started: str, timeout: float) -> str:
    """Run ``source`` (given ``directory``); Ctrl-C it once its task made the file
    ``started`` there; its output, once it has exited well within ``timeout`` s."""
    script = directory / "interrupted.py"
    script.write_text(source)
    master = subprocess.Popen([sys.executable, str(script), str(directory)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert master.stdout is not None
        assert master.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while not (directory / started).exists():
            assert time.monotonic() < deadline and master.poll() is None
            time.sleep(0.01)
        os.kill(master.pid, signal.SIGINT)
        out, err = master.communicate(timeout=timeout)
        assert master.returncode == 0, err
        return out
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def test_ctrl_c_interrupts_a_task_with_a_keyboardinterrupt_its_cleanup_catches(
        tmp_path: Path) -> None:
    # The task got sockpool's own BaseException, so `except KeyboardInterrupt:` never
    # ran (it does in a multiprocessing worker); and a task that had set SIGINT to
    # SIG_IGN left its worker uninterruptible for every later task.
    out = _ctrl_c_once_started(CLEANUP_SCRIPT, tmp_path, "started",
                               timeout=20)  # the nap alone would take 30 s
    assert out.split("\n") == ["interrupted", "usable [1]", ""]
    assert (tmp_path / "caught").exists()


SWALLOW_SCRIPT = """
import sys, time
from pathlib import Path
from sockpool import Cluster

def task(i, directory):
    Path(directory, f"started-{i}").touch()
    try:
        time.sleep(10)
    except KeyboardInterrupt:
        return "partial"

with Cluster(n=1, seed={seed}) as cl:
    print("ready", flush=True)
    try:
        cl.par_map(task, range(4), [sys.argv[1]] * 4, chunksize=4)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    print("usable", cl.par_map(abs, [-1]), flush=True)
"""


@pytest.mark.parametrize("seed", [None, 7])
def test_a_task_that_catches_its_interrupt_and_returns_ends_its_chunk(
        tmp_path: Path, seed: int | None) -> None:
    # Its chunk went on with the next task (a seeded map's did, as its tasks run
    # one by one): 10 s each, where the chunk was cancelled.
    out = _ctrl_c_once_started(SWALLOW_SCRIPT.replace("{seed}", repr(seed)), tmp_path,
                               "started-0", timeout=9)  # task 1 alone would take 10 s
    assert out.split("\n") == ["interrupted", "usable [1]", ""]
    assert sorted(path.name for path in tmp_path.glob("started-*")) == ["started-0"]


def _block_every_signal() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


def _nap(seconds: float) -> None:
    time.sleep(seconds)


def test_a_signal_mask_a_task_left_keeps_no_later_task_from_being_stopped() -> None:
    # A task that blocked signals (pthread_sigmask) left every later task on its
    # worker uninterruptible, and their time limits without a stack.
    import asyncio

    from sockpool import TaskTimeoutError

    with Cluster(n=1) as cl:
        cl.run_on_all(_block_every_signal)
        with pytest.raises(TaskTimeoutError) as timed_out:
            cl.submit(_nap, 30, timeout=1).result()
        assert "in _nap" in timed_out.value.stack
        cl.run_on_all(_block_every_signal)  # (on the worker that replaced it)

        async def cancel_a_nap() -> None:
            running = asyncio.ensure_future(cl.asubmit(_nap, 30))
            await asyncio.sleep(0.5)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

        asyncio.run(cancel_a_nap())
        started = time.monotonic()
        assert cl.submit(abs, -1).result(timeout=10) == 1
        assert time.monotonic() - started < 5  # the nap was interrupted
