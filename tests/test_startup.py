"""A cluster's start: local workers boot while the master imports its engine.

``from sockpool import Cluster`` loads no zmq, picklers or I/O thread; a
``Cluster`` starts its local workers' processes first and imports those after,
so both import at once (api/startup.py).  Whatever fails on the way, no
process it started is left behind.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import run_script, wait_gone

import sockpool.dispatch.dispatcher
from sockpool import Cluster, LocalLauncher
from sockpool.common.config import WorkerConfig
from sockpool.common.workdir import private_directory

ENGINE = ("zmq", "cloudpickle", "dill", "psutil", "asyncio", "sockpool.dispatch.dispatcher",
          "sockpool.capture.payload", "sockpool.api.calls")


def test_importing_cluster_loads_no_engine(tmp_path: Path) -> None:
    out = run_script(f"""
        import sys
        from sockpool import Cluster, Pool, par_map, plan
        print(sorted(name for name in {ENGINE!r} if name in sys.modules))
    """, tmp_path).stdout
    assert out.strip() == "[]"


def test_local_workers_are_running_before_the_master_imports_zmq(tmp_path: Path) -> None:
    out = run_script("""
        import importlib.abc, sys
        import psutil

        seen = []

        class WatchZmq(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "zmq" and not seen:
                    seen.append([p.cmdline()[1:] for p in psutil.Process().children()])
                return None

        sys.meta_path.insert(0, WatchZmq())
        from sockpool import Cluster

        with Cluster(n=2) as cl:
            print(seen[0])
            print(sorted(cl.par_map(abs, [-1, -2, -3])))
            pids = [w.pid for w in cl.workers]
        print(pids)
    """, tmp_path).stdout.splitlines()
    children = eval(out[0])
    assert len(children) == 2 and all("sockpool.worker" in " ".join(argv) for argv in children)
    assert out[1] == "[1, 2, 3]"
    assert not wait_gone(eval(out[2]), 5.0)


def test_a_cluster_made_on_a_thread_that_then_ends_keeps_its_workers() -> None:
    # Linux sends a worker's parent-death signal when the *thread* that started it
    # ends: workers must not be started early on a thread that may end first.
    made: list[Cluster] = []
    thread = threading.Thread(target=lambda: made.append(Cluster(n=2)))
    thread.start()
    thread.join(30)
    with made[0] as cl:
        pids = [w.pid for w in cl.workers]
        time.sleep(0.3)  # a parent-death SIGKILL would have landed by now
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
        assert sorted(cl.par_map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
        assert [w.pid for w in cl.workers] == pids  # none lost, none replaced
    assert not wait_gone(pids, 5.0)


@pytest.mark.parametrize("failing", ["making the dispatcher", "starting its I/O thread"])
def test_a_cluster_that_fails_after_its_workers_started_leaves_none(
        monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    started: list[int] = []
    directories: list[str] = []
    start_early = LocalLauncher.start_early

    def recording_start(self: LocalLauncher, count: int, workdir: str, **kw: Any) -> None:
        start_early(self, count, workdir, **kw)
        started.extend(process.pid for process, _ in self._early)
        directories.append(workdir)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{failing} failed")

    monkeypatch.setattr(LocalLauncher, "start_early", recording_start)
    if failing == "making the dispatcher":
        monkeypatch.setattr(sockpool.dispatch.dispatcher, "Dispatcher", fail)
    else:
        monkeypatch.setattr(sockpool.dispatch.dispatcher.Dispatcher, "start", fail)
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        Cluster(n=2)
    assert len(started) == 2
    assert not [pid for pid in started if psutil.pid_exists(pid)]  # ended and reaped
    assert not os.path.exists(directories[0])


def test_an_oversubscription_warning_raised_as_an_error_starts_no_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(psutil.Process().children())
    starts: list[int] = []
    monkeypatch.setattr(LocalLauncher, "start_early",
                        lambda self, count, workdir, **kw: starts.append(count))
    too_many = (os.cpu_count() or 1) + 1  # more than the physical cores, surely
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="will slow each other down"):
            Cluster(n=too_many)
    assert starts == []
    assert set(psutil.Process().children()) <= before


def test_bad_options_and_a_setup_that_cannot_travel_start_no_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sockpool import CaptureError

    before = set(psutil.Process().children())  # the testbed's daemons, say
    starts: list[int] = []
    monkeypatch.setattr(LocalLauncher, "start_early",
                        lambda self, count, workdir, **kw: starts.append(count))
    lock = threading.Lock()
    with pytest.raises(CaptureError):
        Cluster(n=2, setup=lambda: lock.acquire())
    with pytest.raises(ValueError, match="transport must be one of ipc, tcp, not 'udp'"):
        Cluster(n=2, transport="udp")
    with pytest.raises(ValueError, match="serializer must be one of"):
        Cluster(n=2, serializer="json")
    for size in (0, True):  # (True was taken, as a limit of one byte)
        with pytest.raises(ValueError, match="max_capture_size must be a positive number"):
            Cluster(n=2, max_capture_size=size)
    assert starts == []
    assert set(psutil.Process().children()) <= before


def test_early_processes_are_taken_in_order_and_those_left_over_are_ended() -> None:
    launcher = LocalLauncher()
    workdir = private_directory()
    try:
        launcher.start_early(2, workdir, relay=True)
        stale = [process.pid for process, _ in launcher._early]
        launcher.start_early(3, workdir, relay=True)  # ends what the first start left
        assert not [pid for pid in stale if psutil.pid_exists(pid)]
        pids = [process.pid for process, _ in launcher._early]
        assert len(pids) == 3 and all(psutil.pid_exists(pid) for pid in pids)
        launcher.prepare(workdir, lambda host: host)
        config = WorkerConfig(address="ipc:///nonexistent", token="t", worker_id=0,
                              heartbeat_interval=1.0, master_timeout=60.0,
                              serializer="cloudpickle", max_frame_bytes=1 << 20)
        first = launcher.spawn(0, config)
        assert first.pid == pids[0]
        launcher.stop_early()  # the two no spawn took
        assert not [pid for pid in pids[1:] if psutil.pid_exists(pid)]
        assert sorted(os.listdir(workdir)) == [f"worker-{i}.{kind}" for i in range(3)
                                               for kind in ("log", "out")]
        first.kill()
        deadline = time.monotonic() + 5.0
        while first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first.close()
        assert not psutil.pid_exists(first.pid)
    finally:
        launcher.stop_early()
        shutil.rmtree(workdir, ignore_errors=True)


def test_early_workers_write_where_the_relay_setting_says(tmp_path: Path) -> None:
    out = run_script('''
        import os, sys, warnings
        from sockpool import Cluster

        def write(text):
            os.write(1, text.encode())  # the worker's own stdout, under Python's
            os.write(2, text.replace("stdout", "stderr").encode())

        def complain(text):
            sys.stderr.write(text)
            warnings.warn("warned with the relay off")

        if __name__ == "__main__":
            with Cluster(n=1, relay=False) as cl:
                cl.submit(write, "relay off: the master's stdout\\n").result()
                cl.submit(complain, "sys.stderr with the relay off\\n").result()
            with Cluster(n=1) as cl:
                cl.submit(write, "relay on: read back from the worker's stdout\\n").result()
    ''', tmp_path)
    assert "relay off: the master's stdout" in out.stdout
    # (stderr went to the worker's log, lost with it at close, and warnings with it)
    assert "relay off: the master's stderr" in out.stderr
    assert "sys.stderr with the relay off" in out.stderr
    assert "warned with the relay off" in out.stderr
    assert out.stdout.count("relay on: read back from the worker's stdout") == 1
    assert out.stderr.count("relay on: read back from the worker's stderr") == 1


def test_a_launcher_serves_one_open_cluster_at_a_time_and_then_the_next() -> None:
    from sockpool import LaunchError

    launcher = LocalLauncher()
    with Cluster(n=2, launcher=launcher) as first:
        before = set(psutil.Process().children())
        with pytest.raises(LaunchError, match=(
                r"this LocalLauncher still serves an open cluster \(local\); it runs "
                r"one cluster at a time\. Close that cluster first .* or give this one a "
                r"LocalLauncher of its own")):
            Cluster(n=2, launcher=launcher)
        assert set(psutil.Process().children()) == before  # refused before starting any
        assert first.par_map(abs, [-1, -2]) == [1, 2]
        first.restart()  # its replacements' logs go to its own directory
        assert first.par_map(abs, [-3]) == [3]
    for _ in range(2):  # closed: the launcher serves the next cluster, and the one after
        with Cluster(n=1, launcher=launcher) as again:
            again.restart()
            assert again.submit(abs, -4).result() == 4


def test_a_failed_start_gives_its_launcher_back(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = LocalLauncher()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("starting the I/O thread failed")

    with monkeypatch.context() as patched:
        patched.setattr(sockpool.dispatch.dispatcher.Dispatcher, "start", fail)
        with pytest.raises(RuntimeError, match="starting the I/O thread failed"):
            Cluster(n=1, launcher=launcher)
    with Cluster(n=1, launcher=launcher) as cl:
        assert cl.submit(abs, -5).result() == 5
