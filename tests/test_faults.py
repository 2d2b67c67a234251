"""Faults proven with real signals on real processes: timeouts, crashes, shutdown, soak."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import master_program, run_script, wait_gone

from sockpool import Cluster, TaskTimeoutError, WorkerLostError

pytestmark = pytest.mark.timeout(120)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def hold_the_gil_ignoring_signals(seconds: int) -> None:
    """A task no signal reaches: SIGTERM and SIGINT ignored, the GIL held in C."""
    import ctypes

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctypes.PyDLL(None).sleep(seconds)  # PyDLL keeps the GIL: the watchdog cannot run


def test_a_task_past_its_timeout_fails_and_its_worker_is_replaced(cluster: Cluster) -> None:
    before = {w.pid for w in cluster.workers}
    started = time.monotonic()
    results = cluster.par_map(nap, [0.1, 30, 0.1], timeout=1.0, errors="return")
    assert time.monotonic() - started < 3
    assert results[0] == results[2] == 0.1
    error = results[1]
    assert isinstance(error, TaskTimeoutError) and isinstance(error, TimeoutError)
    assert "task 1 ran longer than 1 s" in str(error)
    deadline = time.monotonic() + 10
    while cluster.n_workers < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cluster.n_workers == 2 and len({w.pid for w in cluster.workers} - before) == 1
    with pytest.raises(TaskTimeoutError):
        list(cluster.imap(nap, [30], timeout=0.5))


def test_a_result_in_before_its_deadline_is_never_timed_out(cluster: Cluster) -> None:
    # The deadlines were checked after a turn's commands, before the messages that
    # came meanwhile: an I/O thread held up past a deadline (a loaded machine, a
    # long turn) killed the worker of a task whose RESULT was waiting to be read.
    future = cluster.submit(nap, 0.1, timeout=0.5)
    cluster._dispatcher.mailbox.post(time.sleep, 1.5)  # the I/O thread, held up
    assert future.result(timeout=10) == 0.1


def _loaded_slowly(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class SlowToLoad:
    """An argument that takes ``seconds`` to unpickle (a large model, say)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[float]]:
        return _loaded_slowly, (self.seconds,)


@pytest.mark.parametrize("loads", ["argument", "export"])
def test_loading_a_timed_tasks_argument_or_an_export_is_not_its_running_time(
        cluster: Cluster, loads: str) -> None:
    # The clock started when the task was sent: 0.6 s of loading, then a task of
    # no time at all, failed with TaskTimeoutError after 0.55 s.
    if loads == "export":
        cluster.export(model=SlowToLoad(0.6))
        assert cluster.par_map(float, [1, 2], timeout=0.5) == [1.0, 2.0]
    else:
        assert cluster.par_map(float, [SlowToLoad(0.6), 2], timeout=0.5) == [0.6, 2.0]
        assert cluster.submit(float, SlowToLoad(0.6), timeout=0.5).result(timeout=10) == 0.6


def test_loading_that_takes_longer_than_twice_the_limit_is_stopped(cluster: Cluster) -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"loading the function and arguments of "
                       r"task 0 \(and the exports sent before it\) took longer than twice "
                       r"its 0\.5 s \(timeout=\) on worker"):
        cluster.par_map(float, [SlowToLoad(30)], timeout=0.5)
    assert time.monotonic() - started < 4
    with pytest.raises(TaskTimeoutError, match=r"task 0 ran longer than 0\.5 s"):
        cluster.par_map(nap_past_the_limit, [SlowToLoad(0.2)], timeout=0.5)
    # Loaded while the worker was being stopped (its stack asked for): still too late,
    # never its running time, nor its quick result in.
    with pytest.raises(TaskTimeoutError, match="loading the function and arguments"):
        cluster.par_map(float, [SlowToLoad(1.0 + 0.05 + 0.1)], timeout=0.5)


def nap_past_the_limit(loaded: float) -> None:
    time.sleep(30)


@pytest.mark.parametrize("joins", ["replacing a worker timed out", "recycling"])
def test_a_worker_that_joins_takes_timed_tasks_only_once_it_loaded_the_exports(
        joins: str) -> None:
    # A replacement (or recycled) worker was ready at once, and its first timed task
    # was charged for loading the cluster's exports: past twice the limit it was
    # killed, and so was the next replacement, and the next: every later timed task
    # failed ("loading the function and arguments of task 2 took longer...").
    recycling = joins == "recycling"
    with Cluster(n=1, max_tasks_per_worker=1 if recycling else None) as cl:
        cl.export(model=SlowToLoad(1.2))
        assert cl.par_map(float, [0]) == [0.0]  # loaded, long before the timed map
        tasks = [0.1, 0.1, 0.1] if recycling else [0.1, 30, 0.1, 0.1]
        results = cl.par_map(nap, tasks, timeout=0.5, errors="return")
        if not recycling:
            assert isinstance(results[1], TaskTimeoutError), results
            del results[1], tasks[1]
        assert results == tasks
        assert cl.submit(lambda: model, timeout=0.5).result(timeout=20) == 1.2  # noqa: F821


def test_a_static_schedule_times_each_task_alone(cluster: Cluster) -> None:
    # One chunk per worker was timed as a whole: the task that finished first
    # failed with the slow one, after timeout x tasks.
    started = time.monotonic()
    results = cluster.par_map(nap, [0.1, 30, 0.2, 0.3], timeout=1.0, schedule="static",
                              errors="return")
    assert time.monotonic() - started < 4
    assert [results[i] for i in (0, 2, 3)] == [0.1, 0.2, 0.3]
    assert isinstance(results[1], TaskTimeoutError)


def test_a_timeout_stops_even_a_task_that_holds_the_gil_and_ignores_signals(
        cluster: Cluster) -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        cluster.par_map(hold_the_gil_ignoring_signals, [60], timeout=0.5)
    assert time.monotonic() - started < 3
    assert cluster.par_map(abs, [-2]) == [2]


def _stuck_in_a_loop(x: int) -> None:
    while True:
        time.sleep(0.05)


def _recurse_then_stick(depth: int) -> None:
    _recurse_then_stick(depth - 1) if depth else _stuck_in_a_loop(depth)


def _commit_after_a_c_sleep(path: str) -> None:
    import ctypes

    ctypes.CDLL(None).sleep(100)  # a signal cuts it short: a C call that gives up on EINTR
    Path(path).write_text("committed")
    time.sleep(100)


def test_a_timed_out_tasks_error_says_where_it_was(cluster: Cluster) -> None:
    # "task 0 ran longer than 0.5 s" was all it said: where the task was stuck,
    # the first question, needed py-spy on the worker before the limit.
    with pytest.raises(TaskTimeoutError) as raised:
        cluster.par_map(_stuck_in_a_loop, [1], timeout=0.5)
    stacks = str(raised.value).split("\nwhere it was when stopped:\n", 1)[1]
    assert stacks.splitlines() == [  # (not the worker's own loop below it)
        "Stack (most recent call first):",
        f'  File "{__file__}", line {_stuck_in_a_loop.__code__.co_firstlineno + 2} '
        "in _stuck_in_a_loop"]
    error = raised.value  # (and for a program: the error had no attributes)
    assert (error.timeout, error.host, error.stack) == (0.5, "localhost", stacks)
    assert f"worker {error.worker_id} (pid {error.pid} on localhost)" in str(error)
    with pytest.raises(TaskTimeoutError) as raised:
        cluster.par_map(_recurse_then_stick, [500], timeout=0.5)
    repeated = re.search(r"(?m)^  \[Previous line repeated (\d+) more times\]$",
                         str(raised.value))
    assert repeated is not None and int(repeated.group(1)) > 90, str(raised.value)
    # In C code that holds the GIL and ignores signals too (faulthandler's handler).
    with pytest.raises(TaskTimeoutError, match=r"(?s)when stopped:.*in hold_the_gil_ignoring"):
        cluster.par_map(hold_the_gil_ignoring_signals, [60], timeout=0.5)
    assert cluster.par_map(abs, [-2]) == [2]


def _spin_with_the_stacks_signal_reset(x: int) -> None:
    signal.signal(signal.SIGRTMIN + 2, signal.SIG_DFL)  # (sockpool's STACKS_SIGNAL)
    while True:
        pass


@pytest.mark.parametrize("relay", [True, False])
def test_a_timeout_is_a_timeout_whatever_the_task_did_with_the_stacks_signal(
        relay: bool, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A task that reset the signal to its default action died of it: that was a
    # WorkerLostError ("killed by signal 36").  One the signal cut short in a C
    # call went on, and wrote its file, before the kill 0.2 s later; the worker now
    # ends as its stack is written.  The stack was written to the worker's stderr:
    # with the relay off, this process's (and printed again where a task ended
    # in those 0.2 s).
    with Cluster(n=1, relay=relay) as cl:
        with pytest.raises(TaskTimeoutError, match=r"task 0 ran longer than 0\.5 s"):
            cl.par_map(_spin_with_the_stacks_signal_reset, [1], timeout=0.5)
        with pytest.raises(TaskTimeoutError, match=r"(?s)when stopped:.*in _commit_after"):
            cl.submit(_commit_after_a_c_sleep, str(tmp_path / "side"), timeout=0.5).result()
        assert not (tmp_path / "side").exists()
        with pytest.raises(TaskTimeoutError, match=r"(?s)when stopped:.*in _stuck_in_a_loop"):
            cl.par_map(_stuck_in_a_loop, [1], timeout=0.5)
        assert "Stack (most recent call first)" not in capfd.readouterr().err
        assert cl.par_map(abs, [-2]) == [2]


class SlowToPickle:
    """A result that takes ``seconds`` to pickle on the worker (a large list, say)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, tuple[float]]:
        time.sleep(self.seconds)
        return float, (self.seconds,)


def test_a_result_that_takes_long_to_write_is_no_timeout_if_its_task_ran_in_time(
        cluster: Cluster) -> None:
    # The task returned in time, and its result took 0.4 s to pickle: that was a
    # TaskTimeoutError, its result lost, blaming "the call to SlowToPickle".  It
    # gets the limit once more; past that, it is stopped all the same.
    assert cluster.submit(SlowToPickle, 0.4, timeout=0.3).result(timeout=20) == 0.4
    assert cluster.par_map(SlowToPickle, [0.4, 0.1], timeout=0.3) == [0.4, 0.1]
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"(?s)when stopped:.*in __reduce__") as raised:
        cluster.submit(SlowToPickle, 30, timeout=0.3).result(timeout=20)
    assert time.monotonic() - started < 5
    assert str(raised.value).startswith(  # (it said the task "ran longer than 0.3 s")
        "the call to SlowToPickle returned, but its result was still being written past "
        "twice its 0.3 s (timeout=) on worker ")


def test_retries_rerun_a_task_that_timed_out(cluster: Cluster, tmp_path: Path) -> None:
    marker = str(tmp_path / "slow-once")

    def slow_the_first_time(x: int) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(30)
        return x

    assert cluster.par_map(slow_the_first_time, [5], timeout=0.5, retries=1) == [5]


def _stuck_then_dies(runs: str) -> None:
    with open(runs, "a") as log:
        log.write("x")
    if os.path.getsize(runs) == 1:
        time.sleep(30)
    os._exit(3)


def test_a_task_out_of_retries_says_how_often_it_ran(cluster: Cluster, tmp_path: Path) -> None:
    # The error said only how the last run ended, as if the task had run once.
    with pytest.raises(TaskTimeoutError) as raised:
        cluster.par_map(time.sleep, [30], timeout=0.3, retries=1)
    assert raised.value.__notes__ == [
        "sockpool: it ran 2 times (retries=1); this error is the last run's"]
    with pytest.raises(WorkerLostError) as lost:
        cluster.par_map(os._exit, [3], retries=2)
    assert lost.value.__notes__ == [
        "sockpool: it ran 3 times (retries=2); this error is the last run's"]
    with pytest.raises(WorkerLostError) as lost:
        cluster.submit(os._exit, 3).result()
    assert not hasattr(lost.value, "__notes__")  # (no retries: nothing to say)
    # A timeout, then a death: the death read from the worker's page counted as the
    # task's first, and it ran a third time with retries=1.
    runs = tmp_path / "runs"
    with pytest.raises(WorkerLostError) as lost:
        cluster.par_map(_stuck_then_dies, [str(runs)], timeout=0.5, retries=1)
    assert runs.read_text() == "xx"
    assert lost.value.__notes__ == [
        "sockpool: it ran 2 times (retries=1); this error is the last run's"]


def test_bad_timeouts_are_refused(shared_cluster: Cluster) -> None:
    for bad in (0, -1, "1", True):
        with pytest.raises(ValueError, match="timeout"):
            shared_cluster.par_map(abs, [1], timeout=bad)  # type: ignore[arg-type]
    for call in (shared_cluster.par_map, shared_cluster.imap):
        with pytest.raises(ValueError, match="chunksize=4 cannot be given with timeout="):
            call(abs, [1], timeout=1, chunksize=4)


def test_close_is_bounded_even_when_a_worker_ignores_every_signal() -> None:
    cl = Cluster(n=1)
    pid = cl.workers[0].pid
    cl.submit(hold_the_gil_ignoring_signals, 60)
    time.sleep(0.5)
    started = time.monotonic()
    cl.close()
    assert time.monotonic() - started < 6  # SHUTDOWN, SIGTERM at 2 s, SIGKILL at 3 s
    assert wait_gone([pid], 2) == []


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_whose_connection_broke_as_it_died_is_described_by_how_it_died(
        cluster: Cluster) -> None:
    # A TASK sent as the worker died fails on its closed connection: it was then
    # "lost (its connection is gone)", now how its process ended (1 run in 12 of a
    # map whose task killed its worker, depending on which the I/O thread saw first).
    pool = cluster._dispatcher.pool
    dying, live = (pool.workers[worker.id] for worker in cluster.workers)
    os.kill(dying.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # dead, if not yet seen so (a loaded machine is slow)
    while not _dead(dying.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reason = cluster._dispatcher.mailbox.ask(pool.unreachable, dying)
    assert reason.startswith("killed by SIGKILL"), reason
    # A live one whose connection broke cannot be trusted: it is ended.
    assert cluster._dispatcher.mailbox.ask(pool.unreachable, live) == "its connection is gone"
    assert wait_gone([live.pid], 5) == []


def mark_and_square(x: int, folder: str) -> int:
    with open(os.path.join(folder, str(x)), "a") as runs:
        runs.write(f"{os.getpid()}\n")
    return x * x


def test_a_map_sent_to_a_worker_just_dead_runs_each_task_once(
        cluster: Cluster, tmp_path: Path) -> None:
    # Both chunks the I/O thread sent to a worker that had died (not yet seen so)
    # failed to send; settling the lost worker requeued the second, then so did the
    # failed send: it ran twice, was delivered twice, and the map ended one result
    # short (a None, or an unpickling error where its buffers were freed).
    dying = cluster._dispatcher.pool.workers[cluster.workers[0].id]

    def kill_it_and_wait() -> None:  # on the I/O thread: the map's submit waits behind it
        os.kill(dying.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _dead(dying.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # and its connection is gone from the master's socket

    cluster._dispatcher.mailbox.post(kill_it_and_wait)
    squares = cluster.par_map(mark_and_square, range(8), [str(tmp_path)] * 8, chunksize=1)
    assert squares == [x * x for x in range(8)]
    runs = {int(path.name): len(path.read_text().split()) for path in tmp_path.iterdir()}
    assert runs == dict.fromkeys(range(8), 1)


def test_a_segfault_is_a_lost_worker_whose_replacement_has_setup_and_exports() -> None:
    def setup() -> None:
        os.environ["SETUP_DONE"] = "yes"

    def segfault() -> None:
        import ctypes

        ctypes.string_at(0)

    def state() -> tuple[str | None, object]:
        import __main__

        return os.environ.get("SETUP_DONE"), getattr(__main__, "SETTING", None)

    with Cluster(n=1, setup=setup) as cl:
        cl.export(SETTING=42)
        with pytest.raises(WorkerLostError, match="SIGSEGV") as info:
            cl.submit(segfault).result(timeout=20)
        assert info.value.exit_status.startswith("killed by SIGSEGV")
        tail = info.value.stderr_tail  # the worker log's: the task's own crash traceback
        assert "Fatal Python error: Segmentation fault" in tail and "in segfault" in tail
        assert cl.run_on_all(state) == [("yes", 42)]


def test_memory_exhaustion_under_rlimit_fails_the_task_not_the_cluster() -> None:
    def limit_memory() -> None:
        import resource

        import psutil

        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + 512 * 1024 * 1024, resource.RLIM_INFINITY))

    def allocate(megabytes: int) -> int:
        return len(bytearray(megabytes * 1024 * 1024))

    with Cluster(n=1, setup=limit_memory) as cl:
        with pytest.raises(MemoryError):
            cl.par_map(allocate, [4096])
        assert cl.par_map(allocate, [16]) == [16 * 1024 * 1024]


def test_a_second_ctrl_c_during_shutdown_still_exits_cleanly(tmp_path: Path) -> None:
    with master_program(tmp_path / "double_interrupt.py", """
        import json, time
        from sockpool import Cluster
        def stubborn(x):
            import signal, ctypes
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            ctypes.PyDLL(None).sleep(60)
        with Cluster(n=2) as cl:
            print(json.dumps([w.pid for w in cl.workers]), flush=True)
            cl.par_map(stubborn, [1, 2], chunksize=1)
    """) as (master, pids):
        time.sleep(0.5)
        os.kill(master.pid, signal.SIGINT)  # the map is cancelled; closing begins
        time.sleep(0.3)
        os.kill(master.pid, signal.SIGINT)  # a second Ctrl-C while it closes
        master.wait(15)
        assert master.returncode != 0
        assert wait_gone(pids, 5) == []


@pytest.mark.timeout(300)  # about 100 s alone; a busy 2-core machine takes longer
def test_soak_200_clusters_leave_no_process_thread_or_file_descriptor() -> None:
    me = psutil.Process()
    with Cluster(n=2) as cl:  # warm imports and caches first
        cl.par_map(abs, range(10))
    fds, threads = me.num_fds(), threading.active_count()
    children = set(me.children(recursive=True))  # other tests' shared clusters
    for i in range(200):
        with Cluster(n=2) as cl:
            assert cl.par_map(abs, range(-i, 0)) == list(range(i, 0, -1))
    left = [(p.pid, p.status(), p.cmdline()) for p in me.children(recursive=True)
            if p not in children]
    assert left == []
    assert threading.active_count() == threads
    assert me.num_fds() == fds


def test_imap_over_a_million_tasks_keeps_memory_flat(shared_cluster: Cluster) -> None:
    me = psutil.Process()
    start = me.memory_info().rss
    peak = start
    total = 0
    for count, value in enumerate(shared_cluster.imap(abs, iter(range(1_000_000))), 1):
        total += value
        if count % 50_000 == 0:
            peak = max(peak, me.memory_info().rss)
    assert total == sum(range(1_000_000))
    assert peak - start < 100 * 1024 * 1024, f"grew by {(peak - start) / 1e6:.0f} MB"


def test_submit_takes_a_timeout_and_a_seed(cluster: Cluster) -> None:
    import functools

    from sockpool import task_rng

    with pytest.raises(TaskTimeoutError):
        cluster.submit(nap, 30, timeout=0.5).result(timeout=20)
    assert cluster.submit(nap, 0.01, timeout=5).result(timeout=20) == 0.01
    first = cluster.submit(lambda: task_rng().random(), seed=3).result(timeout=20)
    assert first == cluster.submit(lambda: task_rng().random(), seed=3).result(timeout=20)

    def wants_a_timeout(timeout: float) -> float:
        return timeout

    bound = functools.partial(wants_a_timeout, timeout=2.5)  # how to pass such a keyword
    assert cluster.submit(bound).result(timeout=20) == 2.5


def test_a_worker_lost_while_sigchld_is_ignored_says_its_status_is_unknown(tmp_path: Path) -> None:
    # With SIGCHLD ignored the kernel reaps workers itself: a worker killed by
    # SIGKILL was reported as ended with "exit code 0".
    from helpers import run_script

    result = run_script("""
        import os, signal
        from sockpool import Cluster, WorkerLostError
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        with Cluster(n=1) as cl:
            try:
                cl.par_map(lambda i: os.kill(os.getpid(), signal.SIGKILL), [1])
            except WorkerLostError as exc:
                print(exc.exit_status)
            print(cl.par_map(abs, [-1, -2]))
    """, tmp_path, timeout=50)
    assert result.stdout.splitlines() == [
        "exit status unknown: it was reaped elsewhere, as when the program sets SIGCHLD "
        "to SIG_IGN", "[1, 2]"]


def test_a_process_a_task_forks_ends_as_it_leaves_the_task(tmp_path: Path) -> None:
    # A forked child that raised, called sys.exit() or returned went on as a copy of
    # the worker: its parent's waitpid hung for ever, and a child's error written
    # into the worker's progress page was taken for the worker's own outcome.
    result = run_script("""
        import os, sys, time
        from sockpool import Cluster, WorkerLostError

        def task(how):
            pid = os.fork()
            if pid == 0:
                if how == "raise":
                    raise ValueError("bug in the child's work")
                if how == "exit":
                    sys.exit(5)
                if how == "return":
                    return "the child's value"
                os._exit(0)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        def child_fails_then_worker_dies(i):
            if os.fork() == 0:
                raise ValueError("the child's error")
            time.sleep(0.5)
            os._exit(7)

        def note_at_exit(path):  # the worker's, which a child must not run
            import atexit
            atexit.register(lambda: open(path, "a").write("ran at exit\\n"))

        def logged(i, path):  # task 1's child returns: the slice stops there
            if i == 1 and os.fork() == 0:
                return "the child's value"
            os.wait() if i == 1 else None
            with open(path, "a") as log:
                log.write(f"{i}\\n")
            return i

        with Cluster(n=2) as cl:
            print(cl.par_map(task, ["raise", "exit", "return", "os._exit"], chunksize=1,
                             timeout=30))
            print(cl.par_map(task, ["raise", "return"], seed=1, timeout=30))  # one by one
            print(cl.submit(task, "exit").result(timeout=30))
            try:
                cl.submit(child_fails_then_worker_dies, 0).result(timeout=30)
            except WorkerLostError as lost:
                print("lost:", "exit code 7" in str(lost))
            print(cl.par_map(abs, [-1, -2]))
            cl.run_on_all(note_at_exit, "at_exit")
            print(cl.par_map(logged, range(6), ["ran"] * 6, chunksize=6))
            print(os.path.exists("at_exit"))
        print(open("ran").read().split(), open("at_exit").read().split("\\n")[:-1])
    """, tmp_path)
    assert result.stdout.splitlines() == [
        "[1, 5, 0, 0]", "[1, 0]", "5", "lost: True", "[1, 2]", "[0, 1, 2, 3, 4, 5]", "False",
        f"{[str(i) for i in range(6)]} {['ran at exit'] * 2}"]  # (the two workers', at close)
    # The child's traceback, as a script's child prints it: from the task on.
    assert result.stderr.count("ValueError: bug in the child's work") == 2
    assert 'user_script.py", line 9, in task' in result.stderr
    assert "sockpool" not in result.stderr
