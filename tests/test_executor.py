"""The concurrent.futures.Executor contract: submit, map, shutdown, futures."""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from sockpool import Cluster, ClusterClosedError, WorkerLostError
from sockpool.common import protocol, role
from sockpool.common.protocol import Flag, Kind
from sockpool.dispatch.jobs import FutureJob, WorkerLabel
from sockpool.worker.results import ResultPacker

pytestmark = pytest.mark.timeout(60)


def slow_identity(x: float, delay: float = 0.2) -> float:
    time.sleep(delay)
    return x


def test_submit_returns_a_future(shared_cluster: Cluster) -> None:
    future = shared_cluster.submit(pow, 2, 10)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=10) == 1024


def test_submit_keyword_arguments(shared_cluster: Cluster) -> None:
    future = shared_cluster.submit(sorted, [3, 1, 2], reverse=True)
    assert future.result(timeout=10) == [3, 2, 1]


def test_submit_exception_is_set_on_the_future(shared_cluster: Cluster) -> None:
    future = shared_cluster.submit(int, "not a number")
    with pytest.raises(ValueError, match="invalid literal"):
        future.result(timeout=10)
    assert isinstance(future.exception(), ValueError)


def _kill_myself() -> None:
    os.kill(os.getpid(), 9)


def test_a_submits_errors_name_the_call_not_a_task_index(cluster: Cluster) -> None:
    # Every submit is task 0 of a job of its own: the note said "task 0 failed".
    failed = cluster.submit(int, "not a number").exception(timeout=10)
    assert failed is not None and len(failed.__notes__) == 1
    assert failed.__notes__[0].startswith("sockpool: the call to int failed on worker ")
    late = cluster.submit(slow_identity, 1, 30, timeout=0.5).exception(timeout=20)
    assert "the call to slow_identity ran longer than 0.5 s" in str(late)
    lost = cluster.submit(_kill_myself).exception(timeout=20)
    assert "while running the call to _kill_myself" in str(lost) and "task 0" not in str(lost)


def _train(x: int, seed: int = 0) -> int:
    return x + seed


def _fetch(url: str, *, timeout: float = 1.0) -> float:
    return timeout


def test_submit_warns_where_its_own_seed_or_timeout_meets_a_parameter_of_that_name(
        shared_cluster: Cluster) -> None:
    # submit(train, 1, seed=42) gave train's seed=0 result, silently: seed= is sockpool's.
    with pytest.warns(UserWarning, match=r"submit's seed= is sockpool's \(its random stream\), "
                                         r"not an argument of _train\(\)") as caught:
        assert shared_cluster.submit(_train, 1, seed=42).result(timeout=10) == 1
    assert caught[0].filename == __file__  # it points at the call
    with pytest.warns(UserWarning, match=r"submit's timeout= is sockpool's"):
        assert shared_cluster.submit(_fetch, "u", timeout=5).result(timeout=10) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shared_cluster.submit(abs, -1, seed=42, timeout=5).result(timeout=10) == 1
        bound = functools.partial(_train, seed=42)
        assert shared_cluster.submit(bound, 1).result(timeout=10) == 43
        # (bound as the warning says: no warning, though submit gets a seed= too)
        assert shared_cluster.submit(bound, 1, seed=3).result(timeout=10) == 43
    with pytest.warns(UserWarning, match=r"not an argument of _train\(\)"):  # not partial()
        shared_cluster.submit(functools.partial(_train, 1), seed=3).result(timeout=10)


def test_a_closed_cluster_says_so_before_any_warning_about_submits_seed() -> None:
    cl = Cluster(n=1)
    cl.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ClusterClosedError):
            cl.submit(_train, 1, seed=3)


def test_wait_and_as_completed_work_with_cluster_futures(shared_cluster: Cluster) -> None:
    futures = [shared_cluster.submit(slow_identity, i, 0.05) for i in range(6)]
    done, pending = concurrent.futures.wait(futures, timeout=20)
    assert not pending and len(done) == 6
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == list(range(6))


def test_a_queued_future_can_be_cancelled(cluster: Cluster) -> None:
    blockers = [cluster.submit(slow_identity, i, 0.5) for i in range(6)]  # fill both workers
    queued = cluster.submit(slow_identity, 99, 0.0)
    assert queued.cancel()
    assert queued.cancelled()
    assert [f.result(timeout=20) for f in blockers] == list(range(6))


def test_a_done_callback_may_wait_for_another_task(shared_cluster: Cluster) -> None:
    # Callbacks ran on the cluster's I/O thread: one that waited for another task
    # waited for itself, and every later call of the cluster hung (close() too).
    chained: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()

    def chain(done: concurrent.futures.Future[int]) -> None:
        again = shared_cluster.submit(abs, -done.result() - 1).result(timeout=10)
        chained.put((again, threading.current_thread().name))

    shared_cluster.submit(abs, -1).add_done_callback(chain)
    value, thread = chained.get(timeout=20)
    assert value == 2 and thread != "sockpool-io"
    assert shared_cluster.par_map(abs, [-3]) == [3]
    finished = shared_cluster.submit(abs, -4)
    finished.result(timeout=10)
    finished.add_done_callback(lambda done: chained.put((done.result(), "")))  # done: at once
    assert chained.get(timeout=1) == (4, "")


def test_a_with_block_ends_after_its_futures_callbacks_ran() -> None:
    # Off the I/O thread, a callback queued by the last task ran after the block had
    # ended, or never (the interpreter exited first): an Executor's waits for them.
    ran: list[str] = []

    def slow_callback(done: concurrent.futures.Future[None]) -> None:
        time.sleep(0.2)
        ran.append("callback")

    with Cluster(n=1) as cl:
        cl.submit(time.sleep, 0.3).add_done_callback(slow_callback)
    ran.append("after the block")
    assert ran == ["callback", "after the block"]


def test_map_keeps_the_executor_contract(shared_cluster: Cluster) -> None:
    results = shared_cluster.map(pow, [2, 3], [5, 2])
    assert list(results) == [32, 9]
    with pytest.raises(TypeError):
        list(shared_cluster.map(int, ["1", None]))


def test_map_timeout_is_a_deadline_for_the_whole_iteration(cluster: Cluster) -> None:
    results = cluster.map(slow_identity, [1, 2, 3], [2.0, 2.0, 2.0], timeout=0.3)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(results)


def test_map_timeout_never_fails_a_result_already_in(shared_cluster: Cluster) -> None:
    # The deadline was checked before the results that had arrived: a loop slower
    # than the tasks got TimeoutError for results that were done (Executor.map's
    # result(timeout) returns a finished result whatever the time).
    results = shared_cluster.map(abs, range(-4, 0), timeout=0.3)
    time.sleep(0.6)  # past the deadline, every task long done
    assert list(results) == [4, 3, 2, 1]
    slow_loop = shared_cluster.map(abs, range(-6, 0), timeout=0.4)
    got = []
    for value in slow_loop:
        got.append(value)
        time.sleep(0.1)
    assert got == [6, 5, 4, 3, 2, 1]


def test_map_timeout_that_is_no_number_is_refused_before_any_task_is_sent(
        shared_cluster: Cluster) -> None:
    # NaN meant no deadline, a string failed later in a sum naming no argument.
    with pytest.raises(ValueError, match="timeout must be a number of seconds or None, not nan"):
        shared_cluster.map(abs, [1], timeout=math.nan)
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None, not '1'"):
        shared_cluster.map(abs, [1], timeout="1")  # type: ignore[arg-type]
    # An int too large for a float is as good as no deadline (it was OverflowError).
    assert list(shared_cluster.map(abs, [-1, -2], timeout=2**1100)) == [1, 2]
    assert shared_cluster.par_map(abs, [-3], timeout=2**1100) == [3]


def _mark_slowly(path: str) -> str:
    time.sleep(0.6)
    open(path, "w").close()
    print("finished", os.path.basename(path))
    return path


@pytest.mark.parametrize("leave", ["past its timeout", "by closing its iterator"])
def test_map_left_early_lets_the_running_call_finish_and_print(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], leave: str) -> None:
    # Executor.map's contract: leaving it cancels the calls not started; a running
    # one finishes (ProcessPoolExecutor's writes its file and prints).
    paths = [str(tmp_path / f"t{i}") for i in range(4)]
    with Cluster(n=1, prefetch=1) as cl:
        if leave == "past its timeout":
            results = cl.map(_mark_slowly, paths, timeout=0.3)
            with pytest.raises(concurrent.futures.TimeoutError):
                next(results)
            ran = 1
        else:
            results = cl.map(_mark_slowly, paths)
            assert next(results) == paths[0]
            time.sleep(0.2)
            results.close()
            ran = 2
        cl.shutdown(wait=True)
    assert [os.path.exists(p) for p in paths] == [True] * ran + [False] * (4 - ran)
    assert capfd.readouterr().out.splitlines() == [f"finished t{i}" for i in range(ran)]


def _print_at(args: tuple[int, float]) -> int:
    index, at = args
    time.sleep(max(0.0, at - time.time()))  # the tasks end at the same moment
    print("task", index, "ends")
    return index


def test_map_closed_after_results_came_together_writes_the_others_output(
        capfd: pytest.CaptureFixture[str]) -> None:
    # Both RESULTs came in one turn: the map took them off its queue together, handed
    # out the first, and was closed; the second's output was never written (6 of 20).
    with Cluster(n=2) as cl:
        for _ in range(5):
            at = time.time() + 0.3
            results = cl.map(_print_at, [(0, at), (1, at)])
            assert next(results) == 0
            results.close()
        cl.shutdown(wait=True)
        time.sleep(0.2)  # what a thread of the map writes after it was left
    assert sorted(capfd.readouterr().out.splitlines()) == ["task 0 ends"] * 5 + [
        "task 1 ends"] * 5


class _SlowToUnpickle:
    """A result that takes 2 s to unpickle in the master (its workers never unpickle it)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_restore_slowly, ())


def _restore_slowly() -> None:
    if not role.in_worker():
        time.sleep(2.0)


def _slow_result(_: int) -> _SlowToUnpickle:
    time.sleep(0.3)
    return _SlowToUnpickle()


def test_a_map_left_early_does_not_make_the_cluster_wait_for_its_results(
        ) -> None:
    # Its results were decoded on the I/O thread, for their output: 2 s each, and the
    # whole cluster (other calls, heartbeats) waited.
    with Cluster(n=2) as cl:
        results = cl.map(_slow_result, range(2), timeout=0.1)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        time.sleep(0.6)  # both results are in
        started = time.monotonic()
        assert cl.submit(abs, -1).result(timeout=10) == 1
        assert time.monotonic() - started < 1.0


def test_map_submits_at_once(shared_cluster: Cluster, tmp_path: object) -> None:
    import os

    marker = os.path.join(str(tmp_path), "ran")
    shared_cluster.map(lambda _: open(marker, "w").close(), [1])  # never iterated
    deadline = time.monotonic() + 10
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.path.exists(marker)


def test_shutdown_wait_finishes_submitted_work() -> None:
    cl = Cluster(n=2)
    futures = [cl.submit(slow_identity, i, 0.1) for i in range(5)]
    cl.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(5))
    with pytest.raises(ClusterClosedError):
        cl.submit(abs, 1)


def test_shutdown_without_wait_lets_queued_work_finish() -> None:
    cl = Cluster(n=1)
    futures = [cl.submit(slow_identity, i, 0.1) for i in range(4)]
    cl.shutdown(wait=False)
    assert [f.result(timeout=20) for f in futures] == list(range(4))
    assert cl._dispatcher.lifecycle.closed.wait(10)


def test_shutdown_without_wait_then_the_end_of_the_script_still_runs_every_task(
        tmp_path: Path) -> None:
    # The exit hook closed the cluster at once: a script that ended after
    # shutdown(wait=False) lost every task, the running ones too, where
    # ProcessPoolExecutor's interpreter waits for them.
    from helpers import run_script, wait_gone

    result = run_script(f"""
        import pathlib, time
        from sockpool import Cluster

        def slow(i):
            time.sleep(0.3)
            pathlib.Path({str(tmp_path)!r}, str(i)).write_text("done")
            return i

        cl = Cluster(n=2)
        futures = [cl.submit(slow, i) for i in range(5)]
        pids = [w.pid for w in cl.workers]
        cl.shutdown(wait=False)
        print(*pids, flush=True)
    """, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == [
        "0", "1", "2", "3", "4"]
    assert wait_gone([int(pid) for pid in result.stdout.split()], timeout=10) == []


def test_ctrl_c_while_a_with_block_waits_for_its_tasks_still_ends_the_script(
        tmp_path: Path) -> None:
    # The exit hook, there to finish what shutdown(wait=False) left running, also
    # waited for a shutdown(wait=True) that Ctrl-C cut short: it took a second one.
    import signal
    import subprocess

    from helpers import master_program, wait_gone

    with master_program(tmp_path / "waits.py", """
        import json, time
        from sockpool import Cluster

        with Cluster(n=1) as cl:
            cl.submit(time.sleep, 1000)
            print(json.dumps([w.pid for w in cl.workers]), flush=True)
    """) as (program, pids):
        time.sleep(1.0)  # waiting at the end of the block by now
        program.send_signal(signal.SIGINT)
        try:
            program.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("one Ctrl-C did not end the script")
        assert "KeyboardInterrupt" in program.stderr.read()  # type: ignore[union-attr]
    assert wait_gone(pids, timeout=10) == []


def mark_or_die(x: int, folder: str) -> int:
    Path(folder, str(x)).touch()
    if x == 3:
        os.kill(os.getpid(), 9)
    time.sleep(0.02)
    return x


def test_map_left_by_a_lost_worker_cancels_the_calls_not_started(tmp_path: Path) -> None:
    # After a WorkerLostError the other 190-odd calls ran on in the background
    # (a task's own exception did stop them), and the next call waited for them.
    with Cluster(n=2) as cl:
        got = []
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            for x in cl.map(mark_or_die, range(200), [str(tmp_path)] * 200):
                got.append(x)
        assert got == [0, 1, 2]
        assert cl.par_map(abs, [-1, -2]) == [1, 2]  # (it waited behind them)
        time.sleep(0.5)
        assert len(list(tmp_path.iterdir())) < 50  # of 200


def test_shutdown_cancel_futures_cancels_what_has_not_started() -> None:
    cl = Cluster(n=1)
    futures = [cl.submit(slow_identity, i, 0.3) for i in range(8)]
    time.sleep(0.1)
    cl.shutdown(wait=True, cancel_futures=True)
    assert futures[0].result(timeout=0) == 0
    assert any(f.cancelled() for f in futures[3:])
    assert all(f.done() for f in futures)


def test_close_fails_running_futures_with_cluster_closed() -> None:
    cl = Cluster(n=1)
    running = cl.submit(slow_identity, 1, 30)
    time.sleep(0.3)
    started = time.monotonic()
    cl.close()
    assert time.monotonic() - started < 6
    with pytest.raises((ClusterClosedError, concurrent.futures.CancelledError)):
        running.result(timeout=5)


def test_leaving_with_on_an_exception_cancels_the_futures_no_worker_got() -> None:
    # They failed with ClusterClosedError: cancelled() was False and a caller's
    # `except CancelledError` missed them, unlike shutdown(cancel_futures=True).
    with pytest.raises(KeyError), Cluster(n=1) as cl:
        running = cl.submit(slow_identity, 1, 30)
        time.sleep(0.3)
        futures = [cl.submit(abs, i) for i in range(6)]  # two go to the worker's queue
        raise KeyError("leave")
    queued = [f for f in futures if f.cancelled()]
    assert len(queued) >= 4
    for future in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(timeout=0)
    with pytest.raises(ClusterClosedError, match="closed while this task was on its worker"):
        running.result(timeout=5)
    done, _ = concurrent.futures.wait(futures, timeout=5)
    assert len(done) == len(futures)


def test_a_callbacks_error_is_logged_where_concurrent_futures_logs_it(
        shared_cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    ran = threading.Event()

    def broken(done: concurrent.futures.Future[int]) -> None:
        ran.set()
        raise ValueError("in the callback")

    shared_cluster.submit(time.sleep, 0.2).add_done_callback(broken)  # on the callback thread
    assert ran.wait(20)
    finished = shared_cluster.submit(abs, -1)
    finished.result(timeout=10)
    finished.add_done_callback(broken)  # done: here, by concurrent.futures itself
    deadline = time.monotonic() + 5
    while len(caplog.records) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [(r.name, r.getMessage().split(" for ")[0]) for r in caplog.records] == [
        ("concurrent.futures", "exception calling callback")] * 2


def test_submit_from_many_threads(shared_cluster: Cluster) -> None:
    results: dict[int, int] = {}

    def client(k: int) -> None:
        futures = [shared_cluster.submit(pow, k, i) for i in range(50)]
        results[k] = sum(f.result(timeout=30) for f in futures)
        results[k] += sum(shared_cluster.par_map(abs, range(-k, k)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {k: sum(k**i for i in range(50)) + sum(abs(x) for x in range(-k, k))
                       for k in range(2, 8)}


def test_cluster_drops_in_where_an_executor_is_expected(shared_cluster: Cluster) -> None:
    import asyncio

    async def main() -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(shared_cluster, pow, 3, 3)

    assert asyncio.run(main()) == 27


def test_short_work_is_not_queued_behind_a_long_task(cluster: Cluster) -> None:
    long_task = cluster.submit(slow_identity, "long", 5.0)
    time.sleep(0.3)
    started = time.monotonic()
    assert cluster.par_map(abs, [-1, -2, -3, -4], chunksize=1) == [1, 2, 3, 4]
    assert time.monotonic() - started < 2.0  # the idle worker took them all
    assert long_task.result(timeout=20) == "long"


class ExitAtPickle:
    """A result whose pickling raises SystemExit (CPython's test_exit_during_result_pickle)."""

    def __reduce__(self) -> object:
        raise SystemExit("no pickling for you")


class InterruptAtPickle:
    def __reduce__(self) -> object:
        raise KeyboardInterrupt


def make(kind: type) -> object:
    return kind()


@pytest.mark.parametrize("kind", [ExitAtPickle, InterruptAtPickle])
def test_a_result_whose_pickling_raises_fails_its_task_and_the_worker_lives(
        cluster: Cluster, kind: type) -> None:
    import os

    from sockpool import RemoteError

    pid = cluster.submit(os.getpid).result(timeout=10)
    for _ in range(2):  # with two workers, the same pid serves again
        future = cluster.submit(make, kind)
        with pytest.raises(RemoteError, match=f"the result of this task, a [^ ]*{kind.__name__}"):
            future.result(timeout=10)
    assert pid in {cluster.submit(os.getpid).result(timeout=10) for _ in range(6)}
    assert {w.pid for w in cluster.workers} >= {pid}
    values = cluster.par_map(make, [int, kind, int], chunksize=3, errors="return")
    assert values[0] == 0 and values[2] == 0 and isinstance(values[1], RemoteError)


def test_cancel_futures_right_after_submits_lets_the_started_ones_run() -> None:
    # CPython's test_cancel_futures: submitted work reaches idle workers at once.
    # The I/O thread is held busy while the submits and the cancel are posted, so
    # that it finds them all queued at once, as a slow turn of its loop would.
    cl = Cluster(n=5)
    release = threading.Event()
    cl._dispatcher.mailbox.post(release.wait, 10)
    futures = [cl.submit(time.sleep, 0.1) for _ in range(50)]
    cl.shutdown(wait=False, cancel_futures=True)
    release.set()
    concurrent.futures.wait(futures, timeout=20)
    cl.shutdown(wait=True)
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert others and all(f.done() and f.exception() is None for f in others)


def test_a_future_whose_result_was_read_is_done_once_the_io_threads_turn_ends() -> None:
    # The I/O thread holds what a turn reads: a caller waiting on futures in turn
    # wakes once for all the turn's results, each future done by the turn's end.
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    job = FutureJob(None, future)  # type: ignore[arg-type]
    chunk = job.chunk(0, 1, [])
    head, _ = protocol.parse(protocol.header(Kind.TASK, 0, job.id, chunk.id))
    frames = ResultPacker("cloudpickle", 1 << 30, None).pack(head, Flag.NONE, [42], [], 0.0,
                                                            None)
    _, body = protocol.parse(frames[0])
    assert job.hold(chunk, WorkerLabel(0, "localhost", 1), (body, frames[1:])) is True
    assert not future.done()
    job.release()
    assert future.result(timeout=0) == 42
    job.release()  # nothing held: nothing happens
    assert future.result(timeout=0) == 42
