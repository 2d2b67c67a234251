"""A cluster's life: start, introspection, close, and the no-leak guarantee."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import master_program, run_script, wait_gone

import sockpool
from sockpool import Cluster, ClusterClosedError, LaunchError, WorkerInfo, WorkerLostError

pytestmark = pytest.mark.timeout(60)


OVERSUBSCRIBED = "ignore:.*usable physical cores:UserWarning"  # 3 workers on this 2-core CI


@pytest.mark.filterwarnings(OVERSUBSCRIBED)
def test_with_block_starts_and_stops_every_worker() -> None:
    with Cluster(n=3) as cl:
        assert cl.n_workers == 3
        workers = cl.workers
        assert len(workers) == 3 and all(isinstance(w, WorkerInfo) for w in workers)
        assert sorted(w.id for w in workers) == [0, 1, 2]
        assert {w.host for w in workers} == {"localhost"}
        assert {w.state for w in workers} <= {"idle", "busy"}
        pids = [w.pid for w in workers]
        assert len(set(pids)) == 3 and os.getpid() not in pids
    assert wait_gone(pids, 5) == []
    assert cl.n_workers == 0 and cl.workers == ()


@pytest.mark.parametrize(("serializer", "module"), [("cloudpickle", "cloudpickle"),
                                                    ("dill", "dill")])
def test_workers_import_the_serializer_before_the_first_task_needs_it(
        serializer: str, module: str) -> None:
    # eval is pickled by reference: running it needs no serializer on the worker.
    loaded = f"{module!r} in __import__('sys').modules"
    with Cluster(n=2, serializer=serializer) as cl:
        deadline = time.monotonic() + 5
        while not all(cl.run_on_all(eval, loaded)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cl.run_on_all(eval, loaded) == [True, True]


def test_repr_is_readable() -> None:
    with Cluster(n=2) as cl:
        assert repr(cl) == "<Cluster local: 2 of 2 workers, running>"
    assert repr(cl) == "<Cluster local: 0 of 2 workers, closed>"


def test_default_size_is_detect_cores() -> None:
    with Cluster() as cl:
        assert cl.n_workers == sockpool.detect_cores()


def test_close_twice_and_use_after_close() -> None:
    cl = Cluster(n=1)
    cl.close()
    cl.close()
    cl.shutdown()
    for call in (lambda: cl.par_map(abs, [1]), lambda: cl.submit(abs, 1),
                 lambda: cl.imap(abs, [1]), lambda: cl.run_on_all(abs, 1),
                 lambda: cl.export(x=1), lambda: cl.map(abs, [1]), lambda: cl.set_seed(1)):
        with pytest.raises(ClusterClosedError) as info:
            call()
        assert isinstance(info.value, RuntimeError)  # the Executor contract
    with pytest.raises(ClusterClosedError), cl:
        pass


def test_a_cluster_whose_io_thread_failed_says_so_to_later_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Later calls said only "the cluster is closed", which the user never did.
    cl = Cluster(n=1)
    try:
        def broken(*args: object) -> None:
            raise RuntimeError("a bug in the loop")

        monkeypatch.setattr(cl._dispatcher.sender, "assign", broken)
        with pytest.raises(sockpool.SockpoolError, match="I/O thread failed"):
            cl.submit(abs, -1).result(timeout=10)
        refusal = r"the cluster is closed: its I/O thread failed: RuntimeError\('a bug in the"
        with pytest.raises(ClusterClosedError, match=refusal):
            cl.submit(abs, -1)
    finally:
        cl.close()


def test_exception_in_with_body_closes_the_cluster() -> None:
    with pytest.raises(ZeroDivisionError), Cluster(n=2) as cl:
        pids = [w.pid for w in cl.workers]
        1 / 0  # noqa: B018
    assert wait_gone(pids, 5) == []


@pytest.mark.parametrize("n", [1, 2])
def test_unclosed_cluster_is_closed_when_collected_with_a_resource_warning(n: int) -> None:
    cl = Cluster(n=n)
    pids = [w.pid for w in cl.workers]
    said = r"1 worker\)" if n == 1 else r"2 workers\)"
    with pytest.warns(ResourceWarning, match=r"unclosed sockpool.Cluster \(local, " + said):
        del cl
        gc.collect()
    assert wait_gone(pids, 5) == []


@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_a_dropped_cluster_finishes_the_work_its_futures_and_iterators_wait_for() -> None:
    # As an Executor dropped by its caller: these raised ClusterClosedError, the
    # cluster collected (and closed) under the pending work.
    before = {child.pid for child in psutil.Process().children()}
    assert list(Cluster(n=2).imap(abs, range(-50, 0))) == list(range(50, 0, -1))
    assert list(Cluster(n=2).map(abs, range(-50, 0))) == list(range(50, 0, -1))
    future = Cluster(n=1).submit(abs, -7)
    gc.collect()
    assert future.result(timeout=30) == 7
    iterator = Cluster(n=1).imap(abs, range(-5, 0))
    assert next(iterator) == 5
    del iterator  # abandoned: then the cluster goes
    gc.collect()
    deadline = time.monotonic() + 10
    while {child.pid for child in psutil.Process().children()} - before:
        assert time.monotonic() < deadline, "a dropped cluster's workers stayed"
        gc.collect()
        time.sleep(0.1)


def test_interpreter_exit_without_close_leaves_nothing(tmp_path: Path) -> None:
    result = run_script("""
        import json
        from sockpool import Cluster
        cl = Cluster(n=2)
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        # no close(): the interpreter's exit must stop the workers
    """, tmp_path)
    assert wait_gone(json.loads(result.stdout), 5) == []


def test_unhandled_exception_in_the_master_leaves_nothing(tmp_path: Path) -> None:
    result = run_script("""
        import json
        from sockpool import Cluster
        cl = Cluster(n=2)
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        raise RuntimeError("the user's script crashed")
    """, tmp_path, check=False)
    assert result.returncode == 1 and "the user's script crashed" in result.stderr
    assert wait_gone(json.loads(result.stdout), 5) == []


def _start_sleeper(_: int) -> int:
    return subprocess.Popen(["sleep", "60"]).pid  # never waited for


def test_processes_tasks_left_running_end_with_their_workers() -> None:
    # They outlived the cluster (loky's workers behind a joblib call in a task, too).
    with Cluster(n=2) as cl:
        sleepers = cl.par_map(_start_sleeper, range(2), chunksize=1)
        assert wait_gone(sleepers, 0.2) == sleepers  # running while the workers are
    try:
        assert wait_gone(sleepers, 5) == []
    finally:
        for pid in wait_gone(sleepers, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start_sleeper_then_hang(path: str) -> None:
    Path(path).write_text(str(subprocess.Popen(["sleep", "60"]).pid))
    time.sleep(60)


def test_processes_a_killed_workers_tasks_left_running_end_too(tmp_path: Path) -> None:
    # A task past its time limit: its worker is killed, and cannot end them itself.
    path = tmp_path / "sleeper.pid"
    with Cluster(n=1) as cl:
        with pytest.raises(TimeoutError):
            cl.par_map(_start_sleeper_then_hang, [str(path)], timeout=1.0)
        sleeper = int(path.read_text())
        try:
            assert wait_gone([sleeper], 5) == []
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sleeper, signal.SIGKILL)


def _start_child_then_die(path: str, how: str) -> None:
    if how == "ignores SIGTERM":
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    else:
        code = "import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    Path(path).write_text(str(child.pid))
    time.sleep(0.5)  # (its handler in place)
    if how == "segfault":
        import ctypes
        ctypes.string_at(0)
    if how != "ignores SIGTERM":
        os._exit(1)


@pytest.mark.parametrize("how", ["os._exit", "segfault", "ignores SIGTERM"])
def test_processes_a_task_left_running_end_though_its_worker_died_or_they_ignore_sigterm(
        tmp_path: Path, how: str) -> None:
    # A worker that dies cannot end them, and they pass to init, out of the tree's
    # reach: they outlived the cluster.  And one that ignored SIGTERM always did.
    path = tmp_path / "child.pid"
    try:
        with Cluster(n=1) as cl:
            if how == "ignores SIGTERM":
                cl.par_map(_start_child_then_die, [str(path)], [how])
            else:
                with pytest.raises(WorkerLostError):
                    cl.par_map(_start_child_then_die, [str(path)], [how])
            child = int(path.read_text())
            if how != "ignores SIGTERM":
                assert wait_gone([child], 5) == []  # as its worker is found gone
        assert wait_gone([child], 0.5) == []
    finally:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(int(path.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_master_is_killed(tmp_path: Path, signum: int) -> None:
    with master_program(tmp_path / "master.py", """
        import json, time
        from sockpool import Cluster
        cl = Cluster(n=2)
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        cl.par_map(time.sleep, [30, 30])
    """) as (master, pids):
        time.sleep(0.3)  # the workers are now busy in a task
        os.kill(master.pid, signum)
        master.wait(10)
        # Local workers see stdin close (and get the parent-death signal) at once.
        assert wait_gone(pids, 3) == []


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        Cluster(n=0)
    with pytest.raises(ValueError, match="n must be at least 1"):
        Cluster(n=-3)
    with pytest.raises(TypeError, match="n must be an integer"):
        Cluster(n="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n must be an integer"):
        Cluster(n=True)
    with pytest.raises(ValueError, match="'node7'"):
        Cluster(hosts=["localhost", "node7"])
    with pytest.raises(ValueError, match="serializer"):
        Cluster(n=1, serializer="json")
    with pytest.raises(TypeError, match="callable"):
        Cluster(n=1, setup=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threads_per_worker"):
        Cluster(n=1, threads_per_worker=0)
    # Each named, before any worker starts (these were accepted, or raised a bare
    # comparison TypeError, or failed in the worker):
    before = {child.pid for child in psutil.Process().children()}
    for options, named in [
            ({"heartbeat_timeout": 0}, "heartbeat_timeout must be a positive number"),
            ({"connect_timeout": "10"}, "connect_timeout must be a positive number"),
            ({"connect_timeout": None}, "connect_timeout must be a positive number"),
            ({"heartbeat_interval": "1"}, "heartbeat_interval must be a positive number"),
            ({"log_level": "bogus"}, "log_level must be a logging level")]:
        with pytest.raises(ValueError, match=named):
            Cluster(n=1, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"env\['A'\] is 1 \(int\)"):
        Cluster(n=1, env={"A": 1})  # type: ignore[dict-item]
    # These were accepted: prefetch=10**9 then hung the first map in the scheduler,
    # max_message_size=100 left the workers' HELLO refused until connect_timeout,
    # threads_per_worker=True set OMP_NUM_THREADS=True, and the rest failed in
    # subprocess (or ran the wrong interpreter) with a message naming no argument.
    for options, error, named in [
            ({"prefetch": 10**9}, ValueError, "prefetch must be an integer from 1 to 1024"),
            ({"prefetch": True}, ValueError, "prefetch must be an integer"),
            ({"max_message_size": 100}, ValueError, "max_message_size must be a number of "
                                                    "bytes, at least 65536"),
            ({"threads_per_worker": True}, ValueError, "threads_per_worker must be a positive"),
            ({"launcher": "local"}, TypeError, "launcher must be a Launcher such as"),
            ({"launcher": sockpool.LocalLauncher}, TypeError,
             r"not the class LocalLauncher: call it, LocalLauncher\(...\)"),
            ({"python": 123}, TypeError, "python must be the path of a Python interpreter"),
            ({"python": ""}, TypeError, "python must be the path of a Python interpreter"),
            ({"env": {"A=B": "x"}}, ValueError, r"env\['A=B'\]: a variable's name"),
            ({"env": {"": "x"}}, ValueError, r"env\[''\]: a variable's name must be non-empty"),
            ({"env": {"A": "x\0y"}}, ValueError, "NUL"),
            ({"hosts": 5}, TypeError, "hosts must be a list or a dict of host names, not int"),
            # A beat of 1e-6 s spun the master; inf stopped the beats; a timeout of 1e-6 s
            # had workers give up on a live master: 15 s to the first result.
            ({"heartbeat_interval": 1e-6}, ValueError, "heartbeat_interval must be a finite "
                                                       "number of seconds, at least 0.01"),
            ({"heartbeat_interval": math.inf}, ValueError, "heartbeat_interval must be a finite"),
            ({"heartbeat_timeout": 1e-6}, ValueError, r"heartbeat_timeout must be finite and "
                                                      r"at least two heartbeat intervals \(2 s\)"),
            ({"heartbeat_timeout": math.inf}, ValueError, "heartbeat_timeout must be finite"),
            ({"heartbeat_interval": 0.5, "heartbeat_timeout": 0.9}, ValueError,
             r"two heartbeat intervals \(1 s\)"),
            # A yes/no option given a number or a word: "no" read as a yes.
            ({"relay": 1}, ValueError, "relay must be True, False or 'live', not 1"),
            ({"relay_prefix": 5}, ValueError, "relay_prefix must be True or False, not 5"),
            ({"tunnel": "no"}, TypeError, "tunnel must be True or False, not 'no'"),
            ({"max_worker_memory": 0.5}, ValueError, "max_worker_memory must be a positive"),
            ({"max_worker_memory": math.inf}, ValueError, "max_worker_memory must be")]:
        with pytest.raises(error, match=named):
            Cluster(n=1, **options)  # type: ignore[arg-type]
    # A launcher's env failed in subprocess, naming neither env nor the variable.
    with pytest.raises(TypeError, match=r"env must map variable names to strings; "
                                        r"env\['A'\] is 1 \(int\)"):
        sockpool.LocalLauncher(env={"A": 1})  # type: ignore[dict-item]
    assert {child.pid for child in psutil.Process().children()} <= before
    with Cluster(n=1, max_message_size=65536) as cl:  # the least is enough to run
        assert cl.par_map(abs, [-1]) == [1]
    # NumPy's numbers and bools, and a size written 1e9, are what they say (refused once).
    from fractions import Fraction

    import numpy as np

    with Cluster(n=np.int64(1), max_worker_memory=1e9, relay=np.True_, relay_prefix=np.True_,
                 connect_timeout=np.float32(30)) as cl:
        assert cl.par_map(abs, [-1], timeout=np.int64(5), ordered=np.True_) == [1]
        assert cl.submit(abs, -2, timeout=np.float32(5)).result() == 2
        # A Fraction passed the check, then failed the I/O thread when the time was up.
        with pytest.raises(sockpool.TaskTimeoutError, match=r"longer than 0\.5 s"):
            cl.submit(time.sleep, 5, timeout=Fraction(1, 2)).result(timeout=30)
        assert cl.submit(abs, -3).result() == 3
    # A Path failed in shlex.join once a worker was spawned, leaving it unreaped.
    with Cluster(n=1, python=Path(sys.executable)) as cl:
        assert cl.par_map(abs, [-2]) == [2]


class _OldSequence:
    """Iterable through __getitem__ alone (iter() takes it; abc.Iterable does not)."""

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def __getitem__(self, index: int) -> str:
        return self.items[index]


@pytest.mark.filterwarnings(OVERSUBSCRIBED)
def test_localhost_hosts_are_local_workers() -> None:
    with Cluster(hosts=["localhost", "localhost"]) as cl:
        assert cl.n_workers == 2
    with Cluster(hosts=_OldSequence(["localhost"])) as cl:  # type: ignore[arg-type]
        assert cl.n_workers == 1
    with Cluster(n=1, hosts={"localhost": 2}) as cl:
        assert cl.n_workers == 3


def test_missing_interpreter_is_a_launch_error() -> None:
    with pytest.raises(LaunchError, match="/no/such/python") as info:
        Cluster(n=2, python="/no/such/python")
    assert info.value.command is not None and "/no/such/python" in info.value.command


def test_worker_that_never_connects_is_a_launch_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho starting up >&2\nexec sleep 60\n")
    fake.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(LaunchError, match="connect") as info:
        Cluster(n=1, python=str(fake), connect_timeout=1.0)
    assert time.monotonic() - started < 8
    assert "starting up" in str(info.value)


def test_a_worker_given_up_on_as_the_caller_stops_waiting_is_still_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The I/O thread gives up on the worker (connect_timeout) just as the caller's own
    # wait ends: the caller must see the worker starting, or its error, never neither.
    from sockpool.launchers.local import LocalWorkerProcess

    tail = LocalWorkerProcess.stderr_tail

    def slow_on_the_io_thread(self: LocalWorkerProcess) -> str:
        if threading.current_thread().name == "sockpool-io":
            time.sleep(1.0)  # while the caller's deadline passes
        return tail(self)

    monkeypatch.setattr(LocalWorkerProcess, "stderr_tail", slow_on_the_io_thread)
    # The caller starts waiting late (a loaded machine), so that its deadline falls
    # after the I/O thread's, while the I/O thread is giving the worker up.
    monkeypatch.setattr(sockpool.api.startup, "warm_up_capture", lambda: time.sleep(0.5))
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho starting up >&2\nexec sleep 60\n")
    fake.chmod(0o755)
    with pytest.raises(LaunchError, match="connect") as info:
        Cluster(n=1, python=str(fake), connect_timeout=1.0)
    assert "starting up" in str(info.value)


def test_worker_that_crashes_at_start_reports_its_stderr(tmp_path: Path) -> None:
    fake = tmp_path / "broken-python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no module named zmq' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(LaunchError) as info:
        Cluster(n=1, python=str(fake))
    assert "exit code 3" in str(info.value)
    assert "no module named zmq" in info.value.stderr_tail
    assert info.value.returncode == 3


@pytest.mark.filterwarnings(OVERSUBSCRIBED)
def test_environment_and_thread_caps_reach_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LOKY_MAX_CPU_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    with Cluster(n=1, env={"MY_SETTING": "on"}) as cl:
        env = cl.run_on_all(lambda: dict(os.environ))[0]
    assert env["MY_SETTING"] == "on"
    assert env["OMP_NUM_THREADS"] == env["LOKY_MAX_CPU_COUNT"] == "1"  # where the master sets none
    assert env["MKL_NUM_THREADS"] == "4"  # the master's own setting is kept
    # A user's OMP_NUM_THREADS goes to every pool: OpenBLAS reads its own variable
    # first, so OMP_NUM_THREADS=2 beside OPENBLAS_NUM_THREADS=1 came out as 1.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with Cluster(n=1) as cl:
        env = cl.run_on_all(lambda: dict(os.environ))[0]
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "4" and env["LOKY_MAX_CPU_COUNT"] == "1"
    # A value given sets them all, 1 too (the default, also 1, leaves the master's).
    with Cluster(n=1, threads_per_worker=1) as cl:
        env = cl.run_on_all(lambda: dict(os.environ))[0]
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    with Cluster(n=1, threads_per_worker=3) as cl:
        env = cl.run_on_all(lambda: dict(os.environ))[0]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["LOKY_MAX_CPU_COUNT"] == "3"


def test_garbage_on_the_socket_does_not_hurt_the_cluster(shared_cluster: Cluster) -> None:
    import zmq

    from sockpool.common import protocol

    context = zmq.Context()
    try:
        intruder = context.socket(zmq.DEALER)
        intruder.setsockopt(zmq.LINGER, 0)
        intruder.setsockopt(zmq.ROUTING_ID, protocol.data_identity(0))  # posing as worker 0
        intruder.connect(shared_cluster._dispatcher.master.address)
        for frames in ([b""], [b"x" * 3], [os.urandom(16)], [b"\x01\x03" + b"\0" * 14],
                       [protocol.header(protocol.Kind.RESULT) + b"junk", b"more"]):
            intruder.send_multipart(frames)
        time.sleep(0.2)
        assert shared_cluster.par_map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]
    finally:
        context.destroy(linger=0)


def test_a_forked_child_leaves_its_parents_workers_alone(tmp_path: Path) -> None:
    # Using the cluster in the child hung forever (its I/O thread stayed behind).
    result = run_script("""
        import os, sys
        from sockpool import Cluster, ClusterClosedError
        with Cluster(n=2) as cl:
            child = os.fork()
            if child == 0:
                for call in (lambda: cl.par_map(abs, [-1]), lambda: cl.submit(abs, -1),
                             lambda: cl.run_on_all(abs, -1)):
                    try:
                        call()
                    except ClusterClosedError as exc:
                        print("child:", exc, flush=True)
                sys.exit(0)  # runs the child's exit hooks: they must not touch the cluster
            os.waitpid(child, 0)
            print(cl.par_map(abs, [-1, -2]), cl.n_workers)
    """, tmp_path, timeout=30)
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and lines[-1] == "[1, 2] 2"
    assert all(line.startswith("child: this cluster belongs to process ") and
               line.endswith("a forked child cannot use it (start one of its own)")
               for line in lines[:3])


def test_a_child_forked_as_a_sockpool_thread_held_a_lock_starts_clusters_of_its_own(
        tmp_path: Path) -> None:
    # Cluster() starts a thread that reads the installed distributions under a lock
    # (when the script imports a module of its own): a fork in that window left the
    # lock held in the child for ever, and its first map hung (3 runs in 3).  Here a
    # thread holds sockpool's module locks across the fork, so the window is certain.
    (tmp_path / "own_module.py").write_text("def square(x):\n    return x * x\n")
    result = run_script("""
        import faulthandler, os, threading
        import sockpool
        from sockpool import Cluster
        from sockpool.capture import by_value, lineage
        from sockpool.api import plan
        from sockpool.dispatch import output
        from own_module import square

        held = threading.Event()
        chosen = sockpool.plan("local:1")  # (its lock is held while its cluster starts)

        def hold_them():
            for lock in (by_value._installed_lock, by_value._register_lock,
                         lineage._lineages_lock, plan._lock, output._emit_lock, chosen._lock):
                lock.acquire()
            held.set()
            threading.Event().wait()

        threading.Thread(target=hold_them, daemon=True).start()
        held.wait()
        child = os.fork()
        if child == 0:
            faulthandler.dump_traceback_later(20, exit=True)
            with Cluster(n=1) as own:
                print("child:", own.par_map(square, range(4)), flush=True)
            print("child plan:", sockpool.par_map(square, [5]), flush=True)
            sockpool.plan("sequential")
            os._exit(0)
        _, status = os.waitpid(child, 0)
        print("exit:", os.waitstatus_to_exitcode(status))
    """, tmp_path, timeout=50)
    assert result.stdout.splitlines() == [
        "child: [0, 1, 4, 9]", "child plan: [25]", "exit: 0"], result.stderr


def test_a_cluster_asked_for_as_the_interpreter_shuts_down_says_so(tmp_path: Path) -> None:
    # From a __del__ as modules were torn down, the option checks failed on half-gone
    # modules: "connect_timeout must be a positive number of seconds, not 60.0".
    result = run_script("""
        from sockpool import Cluster

        class Holder:
            def __del__(self):
                try:
                    Cluster(n=1)
                except Exception as exc:
                    print(type(exc).__name__, exc)

        held = Holder()
    """, tmp_path, timeout=30)
    assert result.stdout.strip() == (
        "RuntimeError cannot start a cluster while the interpreter is shutting down "
        "(from a __del__ or a thread still running at exit, say)")


def test_a_forgotten_cluster_and_pool_are_closed_where_warnings_are_errors(
        tmp_path: Path) -> None:
    # The finalizer warned before it closed: with warnings made errors (-W error,
    # pytest's filterwarnings = error) the warning raised, and the workers stayed.
    result = run_script("""
        import gc, os, time
        import sockpool

        pool = sockpool.Pool(1)
        cluster = sockpool.Cluster(n=1)
        pids = [pool.apply(os.getpid), cluster.submit(os.getpid).result()]
        del pool, cluster
        gc.collect()
        deadline = time.monotonic() + 20
        while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        print([pid for pid in pids if os.path.exists(f"/proc/{pid}")])
    """, tmp_path, timeout=50, env={"PYTHONWARNINGS": "error::ResourceWarning"})
    assert result.stdout.strip() == "[]"
    assert result.stderr.count("ResourceWarning: unclosed") == 2


def test_hosts_are_validated_before_anything_starts() -> None:
    with pytest.raises(TypeError, match=r"did you mean hosts=\['localhost'\]"):
        Cluster(hosts="localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive number of workers"):
        Cluster(hosts={"localhost": 0})
    with pytest.raises(ValueError, match="at least one worker"):
        Cluster(hosts=[])


def test_repr_after_a_shutdown_without_wait() -> None:
    cl = Cluster(n=1)
    cl.shutdown(wait=False)
    assert cl._dispatcher.lifecycle.closed.wait(10)
    assert repr(cl).endswith("closed>")
