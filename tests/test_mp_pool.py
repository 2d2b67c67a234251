"""``sockpool.Pool`` as a drop-in for ``multiprocessing.Pool``, judged the way a port is.

Each test runs against ``multiprocessing.get_context("spawn").Pool`` and
``sockpool.Pool`` alike (the ``factory`` parameter): what passes for the one must
pass for the other.  Then what only sockpool can do (closures, which spawn cannot
send) and what only it has (``cluster=``), and bad input failing before any worker
starts.
"""

from __future__ import annotations

import gc
import itertools
import mmap
import multiprocessing
import multiprocessing.managers
import operator
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from typing import Any

import psutil
import pytest

import sockpool
from sockpool import Cluster, ClusterClosedError
from sockpool.api import mp_pool
from sockpool.dispatch import mailbox as mailbox_module

pytestmark = pytest.mark.timeout(120)

SPAWN = multiprocessing.get_context("spawn")
FACTORIES: dict[str, Callable[..., Any]] = {"multiprocessing": SPAWN.Pool,
                                            "sockpool": sockpool.Pool}
INIT_VARIABLE = "SOCKPOOL_TEST_POOL_INIT"


# -- task functions (module level: spawn's workers import them by name) -----------------

class TaskError(Exception):
    """An exception type of the user's own."""


def write_into_segment(place: tuple[str, int]) -> int:
    """Attach to the shared memory segment named, write into it, detach."""
    name, index = place
    segment = shared_memory.SharedMemory(name=name)
    segment.buf[index] = index + 1
    written = segment.buf[index]
    segment.close()
    return written


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise TaskError(f"no {x}")
    return x


def divide(a: float, b: float = 1.0) -> float:
    return a / b


def keywords(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def pid(_: Any = None) -> int:
    return os.getpid()


def set_variable(name: str, value: str) -> None:
    os.environ[name] = value


def read_variable(_: Any) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get(INIT_VARIABLE)


def put(queue: Any, value: Any) -> None:
    queue.put(value)


def store(table: Any, key: int) -> int:
    table[key] = key * key
    return key


def fail_or_write(item: tuple[str, str]) -> None:
    """("fail", _) raises at once; ("write", path) writes ``path`` half a second later."""
    action, path = item
    if action == "fail":
        raise TaskError("failed first")
    time.sleep(0.5)
    with open(path, "w"):
        pass


class RefusesPickling:
    def __reduce__(self) -> Any:
        raise RuntimeError("refuses to be pickled") from KeyError("the reason")


def raise_capture_error(x: int) -> None:
    raise sockpool.CaptureError(f"a task's own CaptureError {x}")


class Box:
    """What the manager below serves."""

    def get(self) -> int:
        return 11


class BoxProxy(multiprocessing.managers.BaseProxy):
    """A proxy that reduces itself its own way (with a key of its own)."""

    _exposed_ = ("get",)

    def get(self) -> int:
        return self._callmethod("get")

    def __reduce__(self) -> Any:
        return (make_box_proxy, (self._token, self._serializer))


def make_box_proxy(token: Any, serializer: str) -> BoxProxy:
    return BoxProxy(token, serializer, authkey=b"the box key")


class BoxManager(multiprocessing.managers.BaseManager):
    pass


BoxManager.register("Box", Box, proxytype=BoxProxy)


def touch(item: Any) -> Any:
    """Create the file a ``("touch", path)`` item names; any other item comes back."""
    if isinstance(item, tuple):
        with open(item[1], "w"):
            return "touched"
    return item


class WaitsForFile:
    """An argument whose pickling waits until ``path`` exists (a task made it), and
    fails if no task did within 20 s; it arrives as the path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        deadline = time.monotonic() + 20
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise RuntimeError("no task ran while this argument waited to be pickled")
            time.sleep(0.01)
        return (str, (self.path,))


def mark(item: Any) -> Any:
    """Write "1" into the file a ``("mark", path)`` item names; any other item comes back."""
    if isinstance(item, tuple):
        with open(item[1], "r+b") as file:
            file.write(b"1")
        return "marked"
    return item


class SlowToPickle:
    """A tuple whose pickling holds the GIL for ``seconds``, as a large chunk's does."""

    def __init__(self, value: tuple[Any, ...], seconds: float) -> None:
        self.value = value
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        until = time.perf_counter() + self.seconds
        while time.perf_counter() < until:
            pass
        return (tuple, (self.value,))


class SpinsUntilMarked:
    """An argument whose pickling holds the GIL until a task marked ``path`` (read
    through a shared mapping: no system call lets another thread run), as pickling
    a large argument holds it; it fails if no task did within 20 s."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "r+b") as file:
            self.page = mmap.mmap(file.fileno(), 1)

    def __reduce__(self) -> tuple[Any, ...]:
        deadline = time.monotonic() + 20
        while self.page[0] != ord("1"):
            if time.monotonic() > deadline:
                raise RuntimeError("no task ran while this argument was pickled")
        return (str, (self.path,))


# -- fixtures -------------------------------------------------------------------------

@pytest.fixture(params=list(FACTORIES))
def factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """A Pool class; every pool made with it is terminated after the test."""
    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        made.append(FACTORIES[request.param](*args, **kwargs))
        return made[-1]

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for pool in made:
        pool.terminate()
        pool.join()


@pytest.fixture(scope="module", params=list(FACTORIES))
def pool(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One two-worker pool of each kind for the tests that leave it running."""
    made = FACTORIES[request.param](2)
    made.kind = request.param
    yield made
    made.terminate()
    made.join()


def _gone(pids: set[int], seconds: float = 10.0) -> bool:
    """Whether every process in ``pids`` has ended (reaped, or a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = set()
        for number in pids:
            try:
                if psutil.Process(number).status() != psutil.STATUS_ZOMBIE:
                    alive.add(number)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE}


# -- the same tests for both ------------------------------------------------------------

def test_map_and_starmap_return_lists_in_order(pool: Any) -> None:
    assert pool.map(square, range(50)) == [x * x for x in range(50)]
    assert pool.map(square, iter(range(20)), chunksize=7) == [x * x for x in range(20)]
    assert pool.map(square, []) == []
    assert pool.starmap(divide, [(1, 2), (9, 3), (5, 5)]) == [0.5, 3.0, 1.0]
    assert pool.starmap(divide, [(6,), (8, 4)], chunksize=1) == [6.0, 2.0]


def test_apply_and_apply_async_pass_args_and_kwds(pool: Any) -> None:
    assert pool.apply(divide, (9,), {"b": 3}) == 3.0
    assert pool.apply(pid) != os.getpid()
    result = pool.apply_async(divide, (1,), {"b": 4})
    assert result.get(timeout=30) == 0.25
    assert result.ready() and result.successful()
    # kwds are the function's, even those named as Cluster.submit's own options
    assert pool.apply(keywords, (), {"timeout": 5, "seed": 2}) == {"timeout": 5, "seed": 2}


def test_async_result_ready_successful_and_wait(pool: Any) -> None:
    result = pool.apply_async(nap, (1.0, "late"))
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    assert result.wait(0.01) is None
    assert not result.ready()
    result.wait(30)
    assert result.ready() and result.successful()
    assert result.get() == "late"


def test_get_with_a_timeout_raises_multiprocessings_timeout_error(pool: Any) -> None:
    result = pool.apply_async(nap, (1.0, "done"))
    with pytest.raises(multiprocessing.TimeoutError) as waited:
        result.get(timeout=0.05)
    assert type(waited.value) is multiprocessing.TimeoutError
    assert not isinstance(waited.value, TimeoutError)  # not the builtin: as multiprocessing
    assert result.get(timeout=30) == "done"
    mapped = pool.map_async(nap, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        mapped.get(timeout=0.05)
    assert mapped.get(timeout=30) == [None]


def test_map_async_and_starmap_async_run_their_callback_before_get_returns(pool: Any) -> None:
    seen: list[Any] = []
    threads: set[threading.Thread] = set()

    def remember(value: Any) -> None:
        threads.add(threading.current_thread())
        seen.append(value)

    mapped = pool.map_async(square, range(10), callback=remember)
    assert mapped.get(timeout=30) == [x * x for x in range(10)]
    assert seen == [[x * x for x in range(10)]]  # ran already: before the result was ready
    starred = pool.starmap_async(divide, [(1, 2), (3, 1)], chunksize=1, callback=remember)
    assert starred.get(timeout=30) == [0.5, 3.0]
    single = pool.apply_async(square, (7,), callback=remember)
    assert single.get(timeout=30) == 49
    assert seen[1:] == [[0.5, 3.0], 49]
    # in this process, on the pool's own thread: not the caller's, not sockpool's I/O thread
    assert len(threads) == 1
    (thread,) = threads
    assert thread is not threading.current_thread() and thread.name != "sockpool-io"


def test_a_tasks_error_propagates_with_its_own_type(pool: Any) -> None:
    with pytest.raises(TaskError, match="no 3"):
        pool.map(fail_on_three, range(6))
    with pytest.raises(TaskError):
        pool.starmap(fail_on_three, [(1,), (3,)])
    with pytest.raises(ZeroDivisionError):
        pool.apply(divide, (1, 0))
    errors: list[BaseException] = []
    values: list[Any] = []
    result = pool.apply_async(divide, (1, 0), callback=values.append,
                              error_callback=errors.append)
    with pytest.raises(ZeroDivisionError):
        result.get(timeout=30)
    assert result.ready() and not result.successful()
    mapped = pool.map_async(fail_on_three, range(6), chunksize=1, callback=values.append,
                            error_callback=errors.append)
    with pytest.raises(TaskError):
        mapped.get(timeout=30)
    assert not mapped.successful()
    assert values == []
    assert [type(e) for e in errors] == [ZeroDivisionError, TaskError]
    assert pool.map(square, [3]) == [9]  # the pool goes on


def test_the_workers_traceback_is_the_cause_with_its_source_lines(pool: Any) -> None:
    # CPython's test_traceback reads the cause's ``tb``, as code that logs it does.
    with pytest.raises(TaskError) as raised:
        pool.apply(fail_on_three, (3,))
    assert raised.value.args == ("no 3",)
    assert 'raise TaskError(f"no {x}")' in raised.value.__cause__.tb


def test_what_cannot_be_sent_fails_the_result_and_calls_error_callback(pool: Any) -> None:
    errors: list[BaseException] = []
    cannot_pickle = (TypeError, pickle.PicklingError)
    mapped = pool.map_async(square, [threading.Lock()], error_callback=errors.append)
    with pytest.raises(cannot_pickle, match=r"pickle|serialize"):
        mapped.get(timeout=30)
    single = pool.apply_async(square, (threading.Lock(),), error_callback=errors.append)
    with pytest.raises(cannot_pickle, match=r"pickle|serialize"):
        single.get(timeout=30)
    assert not mapped.successful() and not single.successful()
    assert len(errors) == 2 and all(isinstance(e, cannot_pickle) for e in errors)
    with pytest.raises(cannot_pickle, match=r"pickle|serialize"):
        pool.map(square, [threading.Lock()])
    assert pool.map(square, [5]) == [25]


def test_map_runs_the_first_chunks_while_later_ones_are_still_pickled(
        pool: Any, tmp_path: Any) -> None:
    marker = str(tmp_path / "first-chunk-ran")
    items = [("touch", marker), WaitsForFile(marker)]
    assert pool.map(touch, items, chunksize=1) == ["touched", marker]


def test_map_sends_a_chunk_before_it_pickles_the_next_while_holding_the_gil(
        pool: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long switch interval: only a thread that lets go of the GIL hands it over,
    # as the caller holds it through pickling a chunk of many items.  The first
    # chunk is slow to pickle too, as chunks of one map are alike.  However late
    # a loaded machine runs the I/O thread, the caller waits for it here.
    monkeypatch.setattr(mailbox_module, "HANDOVER_SECONDS", 30.0)
    page = tmp_path / "first-chunk-ran"
    page.write_bytes(b"0")
    items = [SlowToPickle(("mark", str(page)), 0.005), SpinsUntilMarked(str(page))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)
    try:
        assert pool.map(mark, items, chunksize=1) == ["marked", str(page)]
    finally:
        sys.setswitchinterval(interval)


def test_an_argument_that_cannot_be_sent_after_others_fails_the_map(pool: Any) -> None:
    cannot_pickle = (TypeError, pickle.PicklingError)
    with pytest.raises(cannot_pickle, match=r"pickle|serialize"):
        pool.map(square, [1, 2, 3, threading.Lock()], chunksize=1)
    mapped = pool.starmap_async(divide, [(1, 1), (threading.Lock(), 1)], chunksize=1)
    with pytest.raises(cannot_pickle, match=r"pickle|serialize"):
        mapped.get(timeout=30)
    assert pool.map(square, range(5), chunksize=1) == [0, 1, 4, 9, 16]


def test_a_managers_proxies_reach_the_workers(pool: Any) -> None:
    # The standard way to share state with a Pool's workers: they connect back
    # to the manager with its authkey, which they did not inherit from sockpool.
    with multiprocessing.Manager() as manager:
        queue, table = manager.Queue(), manager.dict()
        pool.apply(put, (queue, "from a worker"))
        assert queue.get(timeout=30) == "from a worker"
        assert sorted(pool.starmap(store, [(table, k) for k in range(4)])) == [0, 1, 2, 3]
        assert dict(table) == {0: 0, 1: 1, 2: 4, 3: 9}


def test_an_initializer_gets_a_managers_proxy(factory: Any) -> None:
    # CPython's test_pool_initializer: the proxy travels inside the initializer's
    # arguments, which are pickled apart from a map's, and beside a function that
    # goes by reference (a builtin here, a stdlib test's function there).
    with multiprocessing.Manager() as manager:
        namespace = manager.Namespace()
        pool = factory(1, setattr, (namespace, "started", True))
        pool.close()
        pool.join()
        assert namespace.started is True


def test_a_failed_map_lets_its_other_chunks_finish_then_raises(pool: Any, tmp_path: Any
                                                               ) -> None:
    # CPython's test_map_no_failfast: map waits for every chunk (bpo-23992).
    written = str(tmp_path / "sibling-finished")
    with pytest.raises(TaskError, match="failed first"):
        pool.map(fail_or_write, [("fail", ""), ("write", written)], chunksize=1)
    assert os.path.exists(written)
    errors: list[BaseException] = []
    mapped = pool.map_async(fail_or_write, [("write", written + "2"), ("fail", "")],
                            chunksize=1, error_callback=errors.append)
    with pytest.raises(TaskError):
        mapped.get(timeout=30)
    assert os.path.exists(written + "2") and [type(e) for e in errors] == [TaskError]


def test_what_cannot_be_pickled_raises_the_picklers_own_exception(pool: Any) -> None:
    # CPython's test_map_unplicklable: the exception __reduce__ raised, as it is.
    with pytest.raises(RuntimeError, match="refuses to be pickled") as raised:
        pool.map(square, [RefusesPickling()] * 10)
    assert repr(raised.value.__cause__) == "KeyError('the reason')"
    if pool.kind == "sockpool":  # and sockpool's word on where it was
        assert "argument 0" in "\n".join(getattr(raised.value, "__notes__", []))
    single = pool.apply_async(square, (RefusesPickling(),))
    with pytest.raises(RuntimeError, match="refuses to be pickled"):
        single.get(timeout=30)
    with pytest.raises(RuntimeError, match="refuses to be pickled"):
        list(pool.imap(square, [1, RefusesPickling()]))
    assert pool.map(square, [4]) == [16]


def test_callbacks_never_run_at_the_same_time(pool: Any) -> None:
    lock = threading.Lock()
    running = [0]
    most = [0]
    done: list[int] = []

    def slow_callback(value: Any) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        done.append(value)

    results = [pool.apply_async(square, (i,), callback=slow_callback) for i in range(20)]
    results.append(pool.map_async(square, range(5), callback=slow_callback))
    for result in results:
        result.get(timeout=30)
    assert most[0] == 1
    assert len(done) == 21


def _read_stdin(_: object) -> tuple[str, str, bytes]:
    try:
        line = input()
    except EOFError:
        line = "EOFError"
    return line, sys.stdin.read(), os.read(0, 10)


def test_a_task_reading_stdin_gets_end_of_file_at_once(pool: Any) -> None:
    # A worker's stdin was the master's pipe, kept open: the task waited forever.
    assert pool.apply_async(_read_stdin, (0,)).get(20) == ("EOFError", "", b"")
    assert pool.apply(abs, (-1,)) == 1


def test_imap_gives_the_results_before_an_item_that_cannot_be_pickled(pool: Any) -> None:
    items: list[object] = list(range(30))
    items[20] = threading.Lock()
    before = [x * x for x in range(20)]
    for imap in (pool.imap, pool.imap_unordered):
        seen = []
        with pytest.raises(TypeError, match="pickle"):
            for value in imap(square, items):
                seen.append(value)
        if imap == pool.imap:
            assert seen == before
        elif pool.kind == "sockpool":
            assert sorted(seen) == before
        else:  # multiprocessing tells the error as soon as it fails to pickle the item
            assert set(seen) <= set(before)


def test_imap_yields_in_order_and_next_takes_a_timeout(pool: Any) -> None:
    assert list(pool.imap(square, range(30))) == [x * x for x in range(30)]
    assert list(pool.imap(square, range(30), chunksize=4)) == [x * x for x in range(30)]
    iterator = pool.imap(nap, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        iterator.next(timeout=0.05)
    assert iterator.next(timeout=30) is None
    with pytest.raises(StopIteration):
        next(iterator)


def test_imap_unordered_gives_every_result(pool: Any) -> None:
    assert sorted(pool.imap_unordered(square, range(100))) == [x * x for x in range(100)]
    assert sorted(pool.imap_unordered(square, range(100), chunksize=7)) == [
        x * x for x in range(100)]
    assert list(pool.imap_unordered(square, [])) == []


def test_imap_raises_a_failed_task_at_its_place_and_goes_on(pool: Any) -> None:
    iterator = pool.imap(fail_on_three, range(6))
    seen: list[Any] = []
    while True:
        try:
            seen.append(next(iterator))
        except StopIteration:
            break
        except TaskError as error:
            seen.append(str(error))
    assert seen == [0, 1, 2, "no 3", 4, 5]


def _broken_input() -> Iterator[int]:
    yield 1
    yield 2
    raise TaskError("the input broke")


def test_imap_gives_what_came_before_an_input_that_fails_then_its_error(pool: Any) -> None:
    iterator = pool.imap(square, _broken_input())
    assert [next(iterator), next(iterator)] == [1, 4]
    with pytest.raises(TaskError, match="the input broke"):
        next(iterator)
    with pytest.raises(StopIteration):
        next(iterator)


def _waits_for_its_first_task(marker: str) -> Iterator[Any]:
    """An input whose second item comes only once a task made ``marker`` (20 s at most)."""
    yield ("touch", marker)
    deadline = time.monotonic() + 20
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise RuntimeError("no task ran while the input was read")
        time.sleep(0.01)
    yield "second"


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_runs_a_task_as_soon_as_its_input_is_read(pool: Any, tmp_path: Any,
                                                       method: str) -> None:
    marker = str(tmp_path / "first-task-ran")
    results = getattr(pool, method)(touch, _waits_for_its_first_task(marker))
    assert sorted(results) == ["second", "touched"]


def test_close_and_join_before_taking_an_imaps_results_computes_them_all(
        factory: Any) -> None:
    pool = factory(2)
    results = pool.imap(square, range(5000), chunksize=10)
    pool.close()
    pool.join()  # sockpool's reader, waiting for its caller past 1 024 results, reads on
    assert list(results) == [x * x for x in range(5000)]


def test_join_while_running_is_refused(pool: Any) -> None:
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    assert pool.apply(square, (2,)) == 4


def test_close_then_join_finishes_the_work_and_its_callbacks(factory: Any) -> None:
    pool = factory(2)
    seen: list[Any] = []
    single = pool.apply_async(nap, (0.5, "slow"), callback=seen.append)
    mapped = pool.map_async(square, range(8), callback=seen.append)
    pool.close()
    for call in (lambda: pool.apply(square, (1,)), lambda: pool.apply_async(square, (1,)),
                 lambda: pool.map(square, [1]), lambda: pool.map_async(square, [1]),
                 lambda: pool.starmap(divide, [(1, 1)]),
                 lambda: pool.starmap_async(divide, [(1, 1)]),
                 lambda: pool.imap(square, [1]), lambda: pool.imap_unordered(square, [1])):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.join()
    assert single.ready() and mapped.ready()  # join waited for them, and their callbacks
    assert sorted(seen, key=str) == sorted(["slow", [x * x for x in range(8)]], key=str)


def test_with_exits_by_terminate(factory: Any) -> None:
    with factory(2) as pool:
        workers = set(pool.map(pid, range(8)))
        assert os.getpid() not in workers
        pool.apply_async(nap, (60,))  # still running when the block ends
        started = time.monotonic()
    assert _gone(workers), "the workers outlived the with block"
    assert time.monotonic() - started < 15  # the 60 s task was stopped, not waited for
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))
    pool.join()  # after terminate: returns at once


def test_terminate_then_join(factory: Any) -> None:
    pool = factory(2)
    workers = set(pool.map(pid, range(8)))
    pool.terminate()
    pool.join()
    assert _gone(workers)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.__enter__()


def test_initializer_runs_in_every_worker_and_its_replacements(factory: Any) -> None:
    pool = factory(2, initializer=set_variable, initargs=(INIT_VARIABLE, "ready"),
                   maxtasksperchild=1)
    runs = pool.map(read_variable, range(6), chunksize=1)
    assert [value for _, value in runs] == ["ready"] * 6
    # maxtasksperchild=1: every task in a fresh worker, which ran the initializer too
    assert len({worker for worker, _ in runs}) == 6
    pool.close()
    pool.join()


def test_maxtasksperchild_replaces_workers(factory: Any) -> None:
    pool = factory(2, maxtasksperchild=2)
    pids = [pool.apply(pid) for _ in range(6)]
    assert len(set(pids)) >= 3  # at most two tasks per worker
    assert max(pids.count(p) for p in set(pids)) <= 2
    pool.close()
    pool.join()


def test_a_shared_memory_segment_a_task_attached_to_outlives_its_worker(factory: Any) -> None:
    # Workers share the master's resource tracker, as spawn's do: with one each, a
    # recycled worker's tracker unlinked the segment the master made as it exited,
    # and the tasks after it failed with FileNotFoundError.
    segment = shared_memory.SharedMemory(create=True, size=8)
    try:
        pool = factory(1, maxtasksperchild=1)
        assert pool.map(write_into_segment, [(segment.name, i) for i in range(4)],
                        chunksize=1) == [i + 1 for i in range(4)]
        pool.close()
        pool.join()
        assert bytes(segment.buf[:4]) == b"\x01\x02\x03\x04"
        shared_memory.SharedMemory(name=segment.name).close()  # still there
    finally:
        segment.close()
        segment.unlink()


def test_maxtasksperchild_counts_chunks_as_multiprocessing_does(factory: Any) -> None:
    # multiprocessing's "task" is a chunk: 40 items in chunks of 5, two chunks per
    # worker, is workers of 10 items.  sockpool counted items: 8 workers of 5.
    pool = factory(2, maxtasksperchild=2)
    pids = pool.map(pid, range(40), chunksize=5)
    counts = {pids.count(p) for p in set(pids)}
    assert max(counts) == 10 and counts <= {5, 10}, counts  # (a worker may end the map)
    pool.close()
    pool.join()
    pool = factory(2, maxtasksperchild=2)  # (the last one's workers had used some of theirs)
    pids = list(pool.imap(pid, range(16), chunksize=4))
    counts = {pids.count(p) for p in set(pids)}
    assert max(counts) == 8 and counts <= {4, 8}, counts
    # imap's chunks are of one task unless told (sockpool's grow): 2 tasks a worker.
    pids = list(pool.imap(pid, range(20)))
    assert max(pids.count(p) for p in set(pids)) <= 2, pids
    pool.close()
    pool.join()


def test_maxtasksperchild_keeps_multiprocessings_chunks_for_a_function_known_to_be_fast(
        ) -> None:
    # A function timed as fast gets one chunk per worker (sockpool.api.pace), but a
    # quota counts chunks: under maxtasksperchild, maps keep multiprocessing's rule,
    # four chunks per worker counted (a worker being replaced is not: 4 or 8 here).
    with sockpool.Pool(2, maxtasksperchild=2) as pool:
        assert len(pool.map(pid, range(40))) == 40  # timed
        with pool.cluster.profile() as again:
            pool.map(pid, range(40))
        assert len(again.attempts) in (4, 8), [run.count for run in again.attempts]


def _process_identity(_: object) -> tuple[str, tuple[int, ...]]:
    time.sleep(0.05)  # the other worker takes the next task meanwhile
    process = multiprocessing.current_process()
    return process.name, process._identity  # type: ignore[attr-defined]


def test_workers_are_told_apart_as_multiprocessing_numbers_them(factory: Any) -> None:
    # Code that picks a progress bar's row by current_process()._identity[0] (or
    # names by current_process().name) found () and "MainProcess" in every worker.
    # (multiprocessing counts the pool workers a process ever started, from 1.)
    pool = factory(2)
    seen = set(pool.map(_process_identity, range(8), chunksize=1))
    assert len(seen) == 2
    for name, identity in seen:
        assert len(identity) == 1 and identity[0] >= 1
        assert name.endswith(f"PoolWorker-{identity[0]}")
    pool.close()
    pool.join()
    recycled = factory(2, maxtasksperchild=1)
    numbers = {identity for _, identity in recycled.map(_process_identity, range(4),
                                                         chunksize=1)}
    assert len(numbers) == 4  # a replacement worker gets a number of its own
    recycled.close()
    recycled.join()


def test_a_pool_dropped_while_running_warns_and_ends_its_workers(factory: Any) -> None:
    pool = FACTORIES[factory.kind](1)  # not through factory: nothing else may hold it
    workers = {pool.apply(pid)}
    # multiprocessing's result thread may still hold the pool for a moment after apply()
    # returns (ApplyResult._set drops its _pool last), so wait for the collection itself.
    dropped = weakref.ref(pool)
    with pytest.warns(ResourceWarning, match="unclosed running"):
        del pool
        deadline = time.monotonic() + 10
        while dropped() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
    assert dropped() is None
    assert _gone(workers)


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"processes": 0}, ValueError, "at least 1"),
    ({"processes": -2}, ValueError, "at least 1"),
    ({"processes": "2"}, TypeError, None),
    ({"processes": 1, "maxtasksperchild": 0}, ValueError, "maxtasksperchild"),
    ({"processes": 1, "maxtasksperchild": 1.5}, ValueError, "maxtasksperchild"),
    ({"processes": 1, "initializer": 42}, TypeError, "initializer must be a callable"),
])
def test_bad_arguments_fail_before_any_worker_starts(factory: Any, arguments: dict[str, Any],
                                                      error: type[Exception], message: str | None
                                                      ) -> None:
    before = _children()
    with pytest.raises(error, match=message):
        factory(**arguments)
    assert _children() <= before


# -- what only sockpool does ----------------------------------------------------------

def test_closures_and_lambdas_run_where_spawn_cannot_send_them(pool: Any) -> None:
    offset = 10

    def shifted(x: int) -> int:  # a local function, using a local variable
        return x + offset

    if pool.kind == "multiprocessing":
        cannot_pickle = (AttributeError, pickle.PicklingError)
        with pytest.raises(cannot_pickle, match=r"pickle|local object"):
            pool.map(shifted, range(3))
        with pytest.raises(cannot_pickle, match=r"pickle|local object"):
            pool.apply_async(lambda: offset).get(timeout=30)
        with pytest.raises(cannot_pickle, match=r"pickle|local object"):
            list(pool.imap(shifted, range(3)))
        assert pool.map(square, [2]) == [4]  # the pool itself is fine
        return
    assert pool.map(shifted, range(3)) == [10, 11, 12]
    assert pool.map(lambda x: x * offset, range(3)) == [0, 10, 20]
    assert pool.apply_async(lambda: offset).get(timeout=30) == 10
    assert list(pool.imap(shifted, range(3))) == [10, 11, 12]
    assert sorted(pool.imap_unordered(shifted, range(3))) == [10, 11, 12]
    assert pool.starmap(lambda a, b: a + b + offset, [(1, 2)]) == [13]
    assert pool.map_async(shifted, [5]).get(timeout=30) == [15]
    assert pool.apply_async(lambda: ValueError("a value")).get(timeout=30).args == ("a value",)


def test_a_callback_waiting_for_a_result_its_thread_settles_is_refused_not_hung() -> None:
    # multiprocessing's callback waits for itself here (its one result thread runs
    # it, and would settle the result it waits for), and so did sockpool's: get()
    # of a result with a callback, or of a map_async, timed out or hung.
    outcomes: list[Any] = []
    refused = "a callback of this pool cannot wait for a result that has a callback"

    def outer(value: int) -> None:
        for waits in (lambda: pool.apply_async(square, (value,), callback=print).get(),
                      lambda: pool.map_async(square, [1, 2]).get(),
                      lambda: pool.map_async(square, [3]).wait()):
            try:
                outcomes.append(waits())
            except RuntimeError as exc:
                outcomes.append(str(exc)[:len(refused)])
        try:  # with a timeout, as multiprocessing's: it waits that long
            pool.map_async(square, [3]).get(timeout=0.2)
        except multiprocessing.TimeoutError:
            outcomes.append("timed out")
        # What this thread does not settle may be waited for, as ever:
        outcomes.append((pool.apply(square, (value,)), pool.map(square, [4]),
                         pool.apply_async(square, (5,)).get(30)))

    with sockpool.Pool(2) as pool:
        started = time.monotonic()
        assert pool.apply_async(square, (3,), callback=outer).get(timeout=60) == 9
        assert time.monotonic() - started < 30
    assert outcomes == [refused] * 3 + ["timed out", (81, [16], 25)]


def test_callbacks_that_call_the_pool_run_one_after_another() -> None:
    # (The review of a first fix, which ran the queued callbacks inside the one
    # that waited: 20 callbacks each holding a lock around pool.apply deadlocked,
    # and 600 of them nested until RecursionError lost most of them.)
    lock = threading.Lock()
    depth, deepest, done = [0], [0], []

    def holds_a_lock_and_applies(value: int) -> None:
        with lock:
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
            done.append(pool.apply(square, (value,)))
            depth[0] -= 1

    with sockpool.Pool(2) as pool:
        results = [pool.apply_async(square, (i,), callback=holds_a_lock_and_applies)
                   for i in range(20)]
        for result in results:
            result.get(timeout=60)
    assert sorted(done) == sorted(i ** 4 for i in range(20)) and deepest[0] == 1


def test_join_in_a_callback_is_refused_rather_than_waiting_for_itself() -> None:
    raised: list[BaseException] = []

    def joins(_: int) -> None:
        pool.close()
        try:
            pool.join()
        except RuntimeError as exc:
            raised.append(exc)

    with sockpool.Pool(1) as pool:
        pool.apply_async(square, (2,), callback=joins).get(timeout=30)
        assert "join() in a callback of this pool would wait for that callback" in str(
            raised[0])
        pool.join()  # from here, as it should be

    def terminates_and_joins(_: int) -> None:  # nothing to wait for: as before
        pool.terminate()
        pool.join()
        raised.append(None)

    with sockpool.Pool(1) as pool:
        pool.apply_async(square, (2,), callback=terminates_and_joins)
        deadline = time.monotonic() + 30
        while len(raised) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert raised[1:] == [None]


def test_a_proxy_travels_with_its_managers_own_authkey() -> None:
    # Beyond multiprocessing, whose workers know only the key they inherited.
    with sockpool.Pool(1) as pool, \
            multiprocessing.managers.SyncManager(authkey=b"its own key") as manager:
        namespace = manager.Namespace()
        pool.apply(setattr, (namespace, "answer", 42))
        assert namespace.answer == 42


def test_a_tasks_own_capture_error_reaches_the_caller_as_it_is() -> None:
    # Only what the pool could not pickle becomes the pickler's exception.
    with sockpool.Pool(1) as pool:
        with pytest.raises(sockpool.CaptureError, match="a task's own CaptureError 1"):
            pool.map(raise_capture_error, [1])
        with pytest.raises(sockpool.CaptureError, match="a task's own CaptureError 2"):
            pool.map_async(raise_capture_error, [2]).get(timeout=30)


def test_a_proxy_that_reduces_itself_its_own_way_is_left_to_it() -> None:
    with BoxManager(authkey=b"the box key") as manager, sockpool.Pool(1) as pool:
        box = manager.Box()
        assert pool.apply(operator.methodcaller("get"), (box,)) == 11


def test_an_imap_whose_results_are_not_taken_stops_reading_its_input() -> None:
    # Its reader thread drained the cluster's imap as fast as it could: an endless
    # input grew the caller's memory by 100 MB a second, also after the caller let
    # go of the iterator.  (multiprocessing's reads it all too, 20 times slower.)
    read = [0]

    def endless() -> Iterator[int]:
        for read[0] in itertools.count():
            yield read[0]

    with sockpool.Pool(2) as pool:
        results = pool.imap(abs, endless())
        assert next(results) == 0
        deadline, before = time.monotonic() + 30, -1
        while read[0] != before:  # until it stops, for half a second
            assert time.monotonic() < deadline, f"still reading: {read[0]} items"
            before = read[0]
            time.sleep(0.5)
        assert [next(results) for _ in range(5000)] == list(range(1, 5001))  # and goes on


def test_imap_yields_a_returned_exception_as_a_value() -> None:
    with sockpool.Pool(1) as pool:
        assert [type(v) for v in pool.imap(KeyError, ["a", "b"])] == [KeyError, KeyError]
        assert type(pool.map(ValueError, [1])[0]) is ValueError


def test_a_callback_that_raises_is_reported_and_the_pool_goes_on(
        capfd: pytest.CaptureFixture[str]) -> None:
    def broken(value: Any) -> None:
        raise RuntimeError("callback broke")

    with sockpool.Pool(1) as pool:  # multiprocessing's result thread would die: get() hangs
        assert pool.apply_async(square, (3,), callback=broken).get(timeout=30) == 9
        assert pool.map_async(square, [2], callback=broken).get(timeout=30) == [4]
        assert pool.apply_async(square, (4,)).get(timeout=30) == 16
    assert "callback broke" in capfd.readouterr().err


def test_a_slow_callback_does_not_hold_up_a_result_without_one() -> None:
    release = threading.Event()
    with sockpool.Pool(2) as pool:  # multiprocessing's result thread would finish it first
        held = pool.apply_async(square, (2,), callback=lambda _: release.wait(30))
        held.wait(0.5)
        try:
            assert pool.apply_async(square, (3,)).get(timeout=10) == 9
            assert not held.ready()  # its callback still runs
        finally:
            release.set()
        assert held.get(timeout=10) == 4


def test_a_pool_dropped_with_a_task_in_flight_ends_its_workers_once_it_is_done() -> None:
    pool = sockpool.Pool(1)
    workers = {w.pid for w in pool.cluster.workers}
    dropped = weakref.ref(pool)
    with pytest.warns(ResourceWarning, match="unclosed running"):
        result = pool.apply_async(nap, (0.5, "done"))
        del pool  # the result holds it until done: then it goes, from sockpool's I/O thread
        assert result.get(timeout=30) == "done"
        deadline = time.monotonic() + 10
        while dropped() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
    assert dropped() is None
    assert _gone(workers)


def test_terminate_fails_unfinished_results_instead_of_hanging() -> None:
    called: list[Any] = []
    # prefetch=1: the one worker holds the running task only (with 2, the task sent
    # next, from this thread or the imap's reader, whichever came first, was "started").
    pool = sockpool.Pool(1, prefetch=1)
    result = pool.apply_async(nap, (60,), callback=called.append, error_callback=called.append)
    iterator = pool.imap(nap, [60, 60])
    queued = [pool.apply_async(nap, (60,)) for _ in range(2)]  # no callbacks: settled at once
    pool.terminate()
    with pytest.raises(ClusterClosedError, match="terminated"):
        result.get(timeout=10)
    for waited in queued:  # a CancelledError, which `except ClusterClosedError` missed
        with pytest.raises(ClusterClosedError, match="before this task started"):
            waited.get(timeout=10)
    with pytest.raises(ClusterClosedError):
        iterator.next(timeout=10)
    with pytest.raises(StopIteration):
        iterator.next(timeout=10)
    assert called == []  # no callback runs after terminate, as in multiprocessing
    pool.join()


def test_an_apply_async_that_races_terminate_is_settled_instead_of_hanging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Any] = []
    check_callbacks = mp_pool._check_callbacks

    def terminate_meanwhile(*args: Any) -> None:  # where another thread's terminate() may land
        monkeypatch.setattr(mp_pool, "_check_callbacks", check_callbacks)
        pool.terminate()
        check_callbacks(*args)

    with Cluster(n=1) as cl:  # a given cluster stays open: the task is submitted and runs
        pool = sockpool.Pool(cluster=cl)
        monkeypatch.setattr(mp_pool, "_check_callbacks", terminate_meanwhile)
        result = pool.apply_async(square, (3,), callback=called.append,
                                  error_callback=called.append)
        assert result.get(timeout=30) == 9  # its outcome came after the result thread ended
        assert called == []  # no callback runs after terminate
        pool.join()


def test_a_given_cluster_is_used_and_left_running() -> None:
    with Cluster(n=2) as cl:
        pool = sockpool.Pool(cluster=cl)
        assert pool.cluster is cl
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
        pool.close()
        pool.join()
        with sockpool.Pool(cluster=cl) as other:
            assert other.apply(square, (3,)) == 9
        assert cl.par_map(square, [4]) == [16]  # close, join and terminate left it alone
        with pytest.raises(ValueError, match="processes, maxtasksperchild"):
            sockpool.Pool(2, cluster=cl, maxtasksperchild=3)


def test_cluster_keywords_pass_through() -> None:
    with sockpool.Pool(1, relay=False, seed=7) as pool:
        assert pool.cluster.n_workers == 1
        first = pool.map(_random, range(4))
    with sockpool.Pool(2, seed=7) as pool:
        assert pool.map(_random, range(4)) == first  # the seeded streams, any worker count


def _random(_: int) -> float:
    import random

    return random.random()


@pytest.mark.parametrize(("arguments", "error", "message"), [
    ({"cluster": "local"}, TypeError, "must be a sockpool Cluster"),
    ({"processes": 2, "n": 2}, ValueError, "processes="),
    ({"initializer": print, "setup": print}, ValueError, "initializer="),
    ({"maxtasksperchild": 2, "max_tasks_per_worker": 2}, ValueError, "maxtasksperchild="),
    ({"context": SPAWN}, ValueError, "context="),
    ({"processes": 1, "initargs": 5}, TypeError, "initargs"),
    ({"processes": 1, "bogus": 1}, TypeError, "bogus"),
    ({"processes": 1, "threads_per_worker": 0}, ValueError, "threads_per_worker"),
])
def test_bad_sockpool_arguments_fail_before_any_worker_starts(
        arguments: dict[str, Any], error: type[Exception], message: str) -> None:
    before = _children()
    with pytest.raises(error, match=message):
        sockpool.Pool(**arguments)
    assert _children() <= before


def test_bad_callbacks_and_chunksizes_are_refused(pool: Any) -> None:
    if pool.kind == "multiprocessing":
        pytest.skip("multiprocessing checks neither")
    with pytest.raises(TypeError, match="callback"):
        pool.apply_async(square, (1,), callback=5)
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(square, [1], chunksize=0)
    with pytest.raises(TypeError, match="iterable"):
        pool.map(square, 5)


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_numpy_integers_size_the_pool_and_its_chunks(factory: Any) -> None:
    # sockpool.Pool refused numpy.int64(1) ("processes must be an int or None").
    np = pytest.importorskip("numpy")
    with factory(np.int64(1)) as pool:
        assert pool.map(square, range(4), chunksize=np.int64(2)) == [0, 1, 4, 9]


SHARED_LOCK: Any = None  # a worker's, set by its initializer


def _remember_lock(lock: Any) -> None:
    global SHARED_LOCK
    SHARED_LOCK = lock


def _count_under_lock(counter: Any) -> int:
    with SHARED_LOCK:
        counter.value += 1
    return 1


def test_a_multiprocessing_lock_in_initargs_is_refused_naming_it_and_a_managers_works() -> None:
    # tqdm's multi-bar pattern, Pool(initializer=tqdm.set_lock, initargs=(RLock(),)),
    # failed naming a private partial ("the function -> args[0] -> args[0]").
    before = _children()
    with pytest.raises(sockpool.CaptureError, match=r"initargs cannot be sent to the pool's "
                       r"workers: initargs\[0\]: multiprocessing.synchronize.RLock .*"
                       r"make it with a multiprocessing.Manager\(\)"):
        sockpool.Pool(1, initializer=_remember_lock, initargs=(SPAWN.RLock(),))
    assert _children() <= before  # refused before any worker started
    with SPAWN.Manager() as manager:
        counter = manager.Value("i", 0)
        with sockpool.Pool(2, initializer=_remember_lock, initargs=(manager.RLock(),)) as pool:
            assert sum(pool.map(_count_under_lock, [counter] * 20)) == 20
        assert counter.value == 20


@pytest.mark.parametrize("factory", FACTORIES.values(), ids=FACTORIES.keys())
def test_arguments_that_are_not_a_tuple_or_a_mapping_fail_the_call_as_multiprocessing(
        factory: Any) -> None:
    # sockpool raised "'int' object is not iterable" from apply_async itself.
    errors: list[BaseException] = []
    with factory(1) as pool:
        bad_args = pool.apply_async(abs, 5, error_callback=errors.append)
        with pytest.raises(TypeError, match=r"abs\(\) argument after \* must be an iterable, "
                                            r"not int"):
            bad_args.get(timeout=30)
        with pytest.raises(TypeError, match=r"abs\(\) argument after \*\* must be a mapping, "
                                            r"not int"):
            pool.apply(abs, (1,), 5)
        assert len(errors) == 1 and isinstance(errors[0], TypeError)
        with pytest.raises(TypeError, match=rf"^{__name__}\.divide\(\) argument after \* must "
                                            "be an iterable, not int$"):
            pool.apply(divide, 5)
        assert pool.apply(abs, (-1,)) == 1  # the pool goes on
        # What ** takes, multiprocessing takes: keys() and [], even one that refuses bool().
        assert pool.apply(keywords, (), _KeysOnly()) == {"x": 1}


class _KeysOnly:
    """A mapping as ** sees one, not a registered Mapping; bool() refuses, as a Series."""

    def keys(self) -> list[str]:
        return ["x"]

    def __getitem__(self, key: str) -> int:
        return 1

    def __bool__(self) -> bool:
        raise ValueError("The truth value of a Series is ambiguous")
