"""par_map and par_starmap: results, order, chunking, arguments and errors."""

from __future__ import annotations

import builtins
import errno
import functools
import logging
import math
import operator
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sockpool import CaptureError, Cluster, Pool, RemoteError
from sockpool.dispatch.jobs import HeldResults, StreamJob, WorkerLabel
from sockpool.errors import RemoteTraceback

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def fails_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"task got {x}")
    return x


def test_results_in_input_order(shared_cluster: Cluster) -> None:
    assert shared_cluster.par_map(square, range(1000)) == [x * x for x in range(1000)]


@pytest.mark.parametrize("chunksize", [1, 7, 1000, None])
def test_any_chunksize_gives_the_same_list(shared_cluster: Cluster, chunksize: int | None) -> None:
    assert shared_cluster.par_map(square, range(200), chunksize=chunksize) == [
        x * x for x in range(200)]


def test_unordered_has_every_result(shared_cluster: Cluster) -> None:
    results = shared_cluster.par_map(square, range(300), ordered=False, chunksize=10)
    assert sorted(results) == [x * x for x in range(300)]


def test_several_iterables_zip_and_stop_at_the_shortest(shared_cluster: Cluster) -> None:
    assert shared_cluster.par_map(operator.add, [1, 2, 3, 4], (10, 20, 30)) == [11, 22, 33]


@pytest.mark.timeout(30)
def test_a_chunk_of_many_trivial_tasks_runs_in_linear_time(shared_cluster: Cluster) -> None:
    # A worker ran a chunk in slices, and each slice skipped from the chunk's
    # start again: a chunk of 150 000 trivial tasks never finished (quadratic).
    assert shared_cluster.par_map(abs, range(-300_000, 0), chunksize=150_000) == list(
        range(300_000, 0, -1))
    pairs = zip(range(300_000), range(300_000), strict=True)
    assert shared_cluster.par_starmap(operator.add, pairs, chunksize=150_000)[-1] == 599_998


def test_starmap(shared_cluster: Cluster) -> None:
    assert shared_cluster.par_starmap(pow, [(2, 3), (3, 2), (10, 0)]) == [8, 9, 1]


def test_empty_input(shared_cluster: Cluster) -> None:
    assert shared_cluster.par_map(square, []) == []


def test_generators_and_sets_are_accepted(shared_cluster: Cluster) -> None:
    assert shared_cluster.par_map(square, (x for x in range(5))) == [0, 1, 4, 9, 16]
    assert sorted(shared_cluster.par_map(square, {3, 4})) == [9, 16]


def test_lambdas_closures_and_partials_travel(shared_cluster: Cluster) -> None:
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    assert shared_cluster.par_map(lambda x: x - 1, [1, 2]) == [0, 1]
    assert shared_cluster.par_map(add_offset, [1, 2]) == [101, 102]
    assert shared_cluster.par_map(functools.partial(pow, 2), [3, 4]) == [8, 16]
    assert shared_cluster.par_map(math.sqrt, [4.0, 9.0]) == [2.0, 3.0]


def test_work_really_runs_on_the_workers(shared_cluster: Cluster) -> None:
    pids = set(shared_cluster.par_map(lambda _: os.getpid(), range(40), chunksize=1))
    assert os.getpid() not in pids
    assert pids <= {w.pid for w in shared_cluster.workers}


def test_numpy_arrays_round_trip_out_of_band_and_writable(shared_cluster: Cluster) -> None:
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB: travels as its own frame

    def double_in_place(a: np.ndarray) -> np.ndarray:
        a *= 2  # arguments arrive writable, as with multiprocessing
        return a

    (out,) = shared_cluster.par_map(double_in_place, [big])
    assert out.flags.writeable
    np.testing.assert_array_equal(out, big * 2)
    out[0] = -1.0  # results are writable too
    assert big[0] == 0.0  # and the caller's array was not touched


def fill_with_seven(view: np.ndarray) -> int:
    view[:] = 7
    return int(view.sum())


def scratch_memmap(directory: str) -> np.ndarray:
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        mapped = np.memmap(os.path.join(scratch, "x"), dtype="f8", shape=(4,), mode="w+")
        mapped[:] = 3
        return mapped  # pickled after its file is gone


def test_a_writable_memmap_a_task_returns_comes_back_as_its_data(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    assert shared_cluster.par_map(scratch_memmap, [str(tmp_path)])[0].tolist() == [3.0] * 4


def test_a_writable_memmap_is_written_in_place_others_travel_as_copies(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "data.mmap"
    shared = np.memmap(path, dtype="i4", shape=(3, 5000), mode="w+", offset=100)
    # Views of it (strided, offset) are mapped from the file on the worker.
    assert shared_cluster.par_map(fill_with_seven, [shared[1, ::2], shared[2, 10:20]]) == [
        17500, 70]
    assert shared[1, :6].tolist() == [7, 0, 7, 0, 7, 0]
    assert shared[2, 8:22].tolist() == [0, 0] + [7] * 10 + [0, 0]
    shared.flush()
    # Read-only and copy-on-write ones travel as their data: the file is untouched.
    read_only = np.memmap(path, dtype="i4", shape=(3, 5000), mode="r", offset=100)
    assert shared_cluster.par_map(np.sum, [read_only[1]]) == [17500]
    private = np.memmap(path, dtype="i4", shape=(3, 5000), mode="c", offset=100)
    assert shared_cluster.par_map(fill_with_seven, [private[0]]) == [35000]
    assert np.memmap(path, dtype="i4", shape=(3, 5000), mode="r", offset=100)[0].sum() == 0


def test_large_bytes_round_trip(shared_cluster: Cluster) -> None:
    blob = os.urandom(5_000_000)
    assert shared_cluster.par_map(len, [blob, blob[:10]]) == [5_000_000, 10]
    assert shared_cluster.submit(bytes.upper, b"abc").result(timeout=10) == b"ABC"


def test_task_exception_is_reraised_as_itself(shared_cluster: Cluster) -> None:
    with pytest.raises(ValueError, match="task got 13") as info:
        shared_cluster.par_map(functools.partial(fails_on, 13), range(20), chunksize=3)
    error = info.value
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "fails_on" in str(error.__cause__)  # the worker's traceback
    notes = getattr(error, "__notes__", [])
    assert any("task 13" in note and "worker" in note for note in notes), notes


def test_errors_return_puts_exceptions_in_place(shared_cluster: Cluster) -> None:
    results = shared_cluster.par_map(functools.partial(fails_on, 3), range(6), chunksize=4,
                                     errors="return")
    assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
    assert isinstance(results[3], ValueError) and "task got 3" in str(results[3])


class TwoPartError(Exception):
    """Its __init__ passes one string on: pickle's way of rebuilding it calls
    TwoPartError("1-2"), which fails."""

    def __init__(self, first: int, second: int) -> None:
        super().__init__(f"{first}-{second}")
        self.first = first


def raise_two_part(x: int) -> None:
    raise TwoPartError(x, x + 1)


def test_an_exception_that_pickle_cannot_rebuild_keeps_its_type(
        shared_cluster: Cluster) -> None:
    # It came back as RemoteError, where the sequential plan raised it as itself.
    with pytest.raises(TwoPartError) as info:
        shared_cluster.par_map(raise_two_part, [3])
    assert str(info.value) == "3-4" and info.value.first == 3
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert any("task 0" in note for note in getattr(info.value, "__notes__", []))
    with pytest.raises(TwoPartError, match="5-6"):
        shared_cluster.submit(raise_two_part, 5).result()


#: ExceptionGroup (Python 3.11+), or None.
EXCEPTION_GROUP: Any = getattr(builtins, "ExceptionGroup", None)


def raise_two_part_inside(where: str) -> None:
    if where == "group":
        raise EXCEPTION_GROUP("two", [TwoPartError(1, 2), ValueError("v"),
                                      SyntaxError("bad", ("f.py", 3, 4, "x = (", 3, 5))])
    wrapper = RuntimeError("wrapped")
    wrapper.original = TwoPartError(3, 4)  # type: ignore[attr-defined]
    raise wrapper


@pytest.mark.skipif(EXCEPTION_GROUP is None, reason="ExceptionGroup is new in 3.11")
def test_an_exception_that_pickle_cannot_rebuild_keeps_its_type_inside_another(
        shared_cluster: Cluster) -> None:
    # Inside a group, or held by another exception, it made the whole a RemoteError.
    with pytest.raises(EXCEPTION_GROUP) as group:
        shared_cluster.submit(raise_two_part_inside, "group").result()
    inner = group.value.exceptions
    assert type(inner[0]) is TwoPartError and (str(inner[0]), inner[0].first) == ("1-2", 1)
    assert type(inner[1]) is ValueError
    # A member whose own pickle loads is not rebuilt: it keeps what lives outside args.
    assert type(inner[2]) is SyntaxError and (inner[2].lineno, inner[2].filename) == (3, "f.py")
    with pytest.raises(RuntimeError, match="wrapped") as held:
        shared_cluster.submit(raise_two_part_inside, "attribute").result()
    assert type(held.value.original) is TwoPartError  # type: ignore[attr-defined]
    assert held.value.original.first == 3  # type: ignore[attr-defined]


class MissingInput(FileNotFoundError):
    """An OSError subclass with its own __init__: errno, strerror and filename live
    outside ``args`` and ``__dict__``."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOENT, "no input here", path)


def raise_missing_input(path: str) -> None:
    raise MissingInput(path)


def test_an_os_error_of_its_own_keeps_errno_strerror_and_filename(
        shared_cluster: Cluster) -> None:
    # Rebuilt without its __init__, it came back with errno None and no filename.
    with pytest.raises(MissingInput) as info:
        shared_cluster.par_map(raise_missing_input, ["/data/a.csv"])
    error = info.value
    assert (error.errno, error.strerror, error.filename) == (
        errno.ENOENT, "no input here", "/data/a.csv")
    assert str(error) == "[Errno 2] no input here: '/data/a.csv'"


def stops_on(bad: int, x: int) -> int:
    if x == bad:
        raise StopIteration(f"task got {x}")
    return x


def test_a_task_raising_stop_iteration_fails_as_itself_and_the_map_goes_on(
        shared_cluster: Cluster) -> None:
    # map() takes a StopIteration for the end of its items: the map hung, running
    # the task again and again.
    for chunksize in (1, 4, None):
        with pytest.raises(StopIteration) as info:
            shared_cluster.par_map(functools.partial(stops_on, 5), range(12),
                                   chunksize=chunksize)
        assert any("task 5" in note for note in getattr(info.value, "__notes__", []))
    results = shared_cluster.par_map(functools.partial(stops_on, 5), range(12), chunksize=4,
                                     errors="return")
    assert results[:5] == [0, 1, 2, 3, 4] and results[6:] == [6, 7, 8, 9, 10, 11]
    assert type(results[5]) is StopIteration
    # One task at a time (seeded), its own exception comes back, message and all.
    with pytest.raises(StopIteration, match="task got 5"):
        shared_cluster.par_map(functools.partial(stops_on, 5), range(12), seed=1)
    with pytest.raises(StopIteration, match="task got 5"):
        shared_cluster.submit(stops_on, 5, 5).result()
    # From an iterator, Python makes it a RuntimeError (PEP 479): the task's is its cause.
    with pytest.raises(RuntimeError, match="generator raised StopIteration") as raised:
        list(shared_cluster.imap(functools.partial(stops_on, 5), range(12)))
    assert isinstance(raised.value.__cause__, StopIteration)
    assert shared_cluster.par_map(square, range(4)) == [0, 1, 4, 9]


class Unpicklable(Exception):
    def __reduce__(self) -> object:
        raise TypeError("this exception refuses to be pickled")


def raise_unpicklable(x: int) -> None:
    raise Unpicklable(f"odd one {x}")


def test_exception_that_cannot_travel_arrives_as_remote_error(shared_cluster: Cluster) -> None:
    with pytest.raises(RemoteError) as info:
        shared_cluster.par_map(raise_unpicklable, [7])
    assert info.value.type_name.endswith("Unpicklable")
    assert info.value.message == "odd one 7"
    assert "raise_unpicklable" in info.value.traceback_text


class DataError(Exception):
    def __init__(self, message: str, data: object) -> None:
        super().__init__(message, data)
        self.data = data


def raise_with_data(n: int) -> None:
    raise DataError("bad data", np.arange(n, dtype=np.float64))


def test_an_exception_holding_a_large_array_keeps_its_type_and_its_data(
        shared_cluster: Cluster) -> None:
    # From 64 KiB on, the array was pickled out of band and the error came as RemoteError.
    for n in (100, 8192, 1_000_000):
        with pytest.raises(DataError) as info:
            shared_cluster.submit(raise_with_data, n).result()
        assert info.value.data.shape == (n,) and info.value.data[-1] == n - 1
        results = shared_cluster.par_map(raise_with_data, [n], errors="return")
        assert type(results[0]) is DataError


def raise_with_data_on(bad: int, n: int, x: int) -> int:
    if x == bad:
        raise_with_data(n)
    return x


def test_an_exception_too_large_for_the_masters_frames_fails_its_task_only() -> None:
    # Sent as itself, in band, it made the chunk's RESULT larger than the master takes:
    # every task of the chunk failed, their values and its type and traceback lost.
    with Cluster(n=1, max_message_size=1_000_000) as cl:
        results = cl.par_map(functools.partial(raise_with_data_on, 2, 300_000), range(6),
                             chunksize=6, errors="return")
        assert results[:2] == [0, 1] and results[3:] == [3, 4, 5]
        assert isinstance(results[2], RemoteError) and results[2].type_name.endswith("DataError")
        assert "raise_with_data" in results[2].traceback_text
        with pytest.raises(DataError):  # a small one still travels as itself
            cl.submit(raise_with_data, 1000).result()


class RefusesToLoadIn:
    """Unpickles anywhere but in the process ``pid``, where it raises ``error``."""

    def __init__(self, pid: int, error: BaseException) -> None:
        self.pid, self.error = pid, error

    def __reduce__(self) -> object:
        return _load_unless_in, (self.pid, self.error)


def _load_unless_in(pid: int, error: BaseException) -> RefusesToLoadIn:
    if os.getpid() == pid:
        raise error
    return RefusesToLoadIn(pid, error)


def test_a_chunk_whose_results_cannot_be_unpickled_here_fails_each_of_its_tasks(
        shared_cluster: Cluster) -> None:
    # With errors="return", the tasks after the first of the chunk came back as None.
    here = os.getpid()

    def make(i: int) -> object:
        return RefusesToLoadIn(here, ValueError("not here")) if i == 5 else i * 10

    results = shared_cluster.par_map(make, range(8), chunksize=4, errors="return")
    assert results[:4] == [0, 10, 20, 30]
    for failed in results[4:]:
        assert isinstance(failed, RemoteError)
        assert "the results of tasks 4..7 could not be unpickled in the master: " \
               "ValueError: not here" in str(failed)
        assert any("tasks 4..7 finished on worker" in note for note in failed.__notes__)


def test_a_result_whose_unpickling_raises_system_exit_fails_its_future_only(
        shared_cluster: Cluster) -> None:
    # The SystemExit ended the I/O thread: the future never resolved, and every later
    # call said "the cluster is closed".
    here = os.getpid()
    future = shared_cluster.submit(RefusesToLoadIn, here, SystemExit("raised here"))
    with pytest.raises(RemoteError, match="could not be unpickled in the master: "
                                          "SystemExit: raised here"):
        future.result(timeout=20)
    assert shared_cluster.par_map(square, [3]) == [9]


class RefusesWithSystemExit(Exception):
    def __reduce__(self) -> object:
        raise SystemExit("reduce raised SystemExit")


def raise_refusing(x: int) -> None:
    raise RefusesWithSystemExit(f"odd one {x}")


def test_an_exception_whose_pickling_raises_system_exit_keeps_its_traceback(
        shared_cluster: Cluster) -> None:
    # The SystemExit escaped the worker's packing: "could not be described", no traceback.
    with pytest.raises(RemoteError) as info:
        shared_cluster.par_map(raise_refusing, [7])
    assert info.value.type_name.endswith("RefusesWithSystemExit")
    assert info.value.message == "odd one 7"
    assert "raise_refusing" in info.value.traceback_text


class LoadsOnlyHere:
    """Pickles anywhere; unpickling it raises, but in the process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __setstate__(self, state: dict[str, int]) -> None:
        if os.getpid() != state["pid"]:
            raise ValueError("refused to load on a worker")
        self.__dict__.update(state)


def test_an_argument_that_fails_to_load_on_the_worker_says_so_for_each_task(
        shared_cluster: Cluster) -> None:
    # Its error told only "task 0 failed", though task 0's argument was fine.
    results = shared_cluster.par_map(
        repr, [10, 11, LoadsOnlyHere(os.getpid()), 13], chunksize=3, errors="return")
    assert results[3] == "13"
    for failed in results[:3]:
        assert isinstance(failed, ValueError) and str(failed) == "refused to load on a worker"
        assert "sockpool: raised while the worker loaded the tasks' arguments; no task sent " \
               "with them ran, and each fails with this error" in failed.__notes__


def test_result_that_cannot_travel_fails_its_task_only(shared_cluster: Cluster) -> None:
    import threading

    def make(x: int) -> object:
        return threading.Lock() if x == 1 else x

    results = shared_cluster.par_map(make, range(3), chunksize=3, errors="return")
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], RemoteError)
    assert "lock" in str(results[1]).lower() and "cannot be serialized" in str(results[1])


def test_system_exit_in_a_task_fails_the_task_not_the_worker(shared_cluster: Cluster) -> None:
    pids = {w.pid for w in shared_cluster.workers}

    def leave(x: int) -> None:
        raise SystemExit(3)

    with pytest.raises(RemoteError, match="SystemExit"):
        shared_cluster.par_map(leave, [1])
    with pytest.raises(RemoteError, match="KeyboardInterrupt"):
        shared_cluster.par_map(lambda x: (_ for _ in ()).throw(KeyboardInterrupt), [1])
    assert shared_cluster.par_map(square, [3]) == [9]
    assert {w.pid for w in shared_cluster.workers} == pids


def test_argument_that_cannot_travel_fails_before_anything_runs(
        shared_cluster: Cluster, tmp_path: object) -> None:
    import threading

    marker_dir = str(tmp_path)

    def touch(x: object) -> None:
        open(os.path.join(marker_dir, f"ran-{id(x)}"), "w").close()

    with pytest.raises(CaptureError, match=r"argument 2: _thread.lock"):
        shared_cluster.par_map(touch, [1, 2, threading.Lock(), 4])
    assert os.listdir(marker_dir) == []


def test_function_that_cannot_travel_raises_capture_error(shared_cluster: Cluster) -> None:
    import threading

    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(CaptureError, match="uses_lock"):
        shared_cluster.par_map(uses_lock, [1])


def test_numpy_integers_are_taken_where_integers_are(shared_cluster: Cluster) -> None:
    # They were refused with "n must be an integer, not int64" and "chunksize must
    # be a positive integer or None, not np.int64(2)"; multiprocessing takes them.
    np = pytest.importorskip("numpy")
    assert shared_cluster.par_map(square, range(5), chunksize=np.int64(2), retries=np.int32(1),
                                  seed=np.uint64(7)) == [0, 1, 4, 9, 16]
    with Cluster(n=np.int64(1)) as cl:
        assert cl.n_workers == 1 and cl.par_map(square, [3]) == [9]
    # Each of these was refused ("prefetch must be an integer from 1 to 1024, not
    # np.int64(3)"), as were min_workers, wait_for and NumPy's numbers of seconds.
    with Cluster(n=np.int64(2), prefetch=np.int64(3), threads_per_worker=np.int32(1),
                 min_workers=np.int64(1), wait_for=np.int16(2),
                 max_tasks_per_worker=np.int64(4), max_message_size=np.int64(2**20),
                 connect_timeout=np.float32(30), heartbeat_interval=np.int64(1),
                 heartbeat_timeout=np.float64(10)) as cl:
        assert cl.par_map(square, range(9)) == [i * i for i in range(9)]
    for bad in ({"chunksize": np.float64(2.0)}, {"chunksize": np.int64(0)},
                {"retries": np.int8(-1)}, {"chunksize": np.True_}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            shared_cluster.par_map(square, [1], **bad)
    # Executor.map checked its chunksize but chunked by the value as given.
    mapped = shared_cluster.map(square, range(5), chunksize=_Index(2))  # type: ignore[arg-type]
    assert list(mapped) == [0, 1, 4, 9, 16]


class _Index:
    """An integer only through __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_bad_input_raises_before_work(shared_cluster: Cluster) -> None:
    with pytest.raises(TypeError, match="callable"):
        shared_cluster.par_map(42, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 1 after the function must be iterable"):
        shared_cluster.par_map(square, 5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="at least one iterable"):
        shared_cluster.par_map(square)
    with pytest.raises(ValueError, match="chunksize"):
        shared_cluster.par_map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="errors"):
        shared_cluster.par_map(square, [1], errors="ignore")
    with pytest.raises(ValueError, match="retries"):
        shared_cluster.par_map(square, [1], retries=-1)
    with pytest.raises(ValueError, match="ordered must be True or False, not 'yes'"):
        shared_cluster.par_map(square, [1], ordered="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress must be True or False"):
        shared_cluster.imap(square, [1], progress="bar")  # type: ignore[arg-type]


def test_a_global_changed_between_maps_is_seen_by_each(tmp_path: object) -> None:
    from helpers import run_script

    result = run_script("""
        from sockpool import Cluster
        SCALE = 2
        def scaled(x):
            return x * SCALE
        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                first = cl.par_map(scaled, [1, 2])
                SCALE = 10
                second = cl.par_map(scaled, [1, 2])
            print(first, second)
    """, tmp_path)  # type: ignore[arg-type]
    assert result.stdout.strip() == "[2, 4] [10, 20]"


def test_main_classes_helpers_and_globals_travel(tmp_path: object) -> None:
    from helpers import run_script

    result = run_script("""
        import dataclasses
        from sockpool import Cluster

        @dataclasses.dataclass
        class Point:
            x: int
            y: int

        OFFSET = Point(100, 200)

        def shift(p):
            return Point(p.x + OFFSET.x, p.y + OFFSET.y)

        def worker(p):
            return shift(p)

        if __name__ == "__main__":
            with Cluster(n=2) as cl:
                out = cl.par_map(worker, [Point(1, 2), Point(3, 4)])
            assert all(isinstance(p, Point) for p in out), out
            print([(p.x, p.y) for p in out])
    """, tmp_path)  # type: ignore[arg-type]
    assert result.stdout.strip() == "[(101, 202), (103, 204)]"


def test_dill_and_pickle_serializers() -> None:
    with Cluster(n=1, serializer="dill") as cl:
        assert cl.par_map(lambda x: x + 1, [1, 2]) == [2, 3]
    with Cluster(n=1, serializer="pickle") as cl:
        assert cl.par_map(square, [3]) == [9]
        with pytest.raises(CaptureError):
            cl.par_map(lambda x: x, [1])


def test_a_captured_payload_crosses_the_wire_once_per_worker(cluster: Cluster) -> None:
    from helpers import CountsUnpickling

    big = CountsUnpickling(5_000_000)

    def uses_big(x: int) -> int:
        return len(big.data) + x

    def loads_here() -> int:
        return CountsUnpickling.loads()

    assert cluster.par_map(uses_big, range(60), chunksize=1) == [5_000_000 + x for x in range(60)]
    assert cluster.run_on_all(loads_here) == [1, 1]  # 60 chunks, one load per worker
    cluster.par_map(uses_big, range(20), chunksize=1)  # the same payload: still cached
    assert cluster.run_on_all(loads_here) == [1, 1]

    def also_uses_big(x: int) -> int:
        return len(big.data) - x

    cluster.par_map(also_uses_big, range(20), chunksize=1)  # a new payload: loaded once more
    assert cluster.run_on_all(loads_here) == [2, 2]


def test_a_function_that_captures_the_cluster_gets_a_clear_error(cluster: Cluster) -> None:
    def uses_cluster(x: int) -> int:
        return cluster.n_workers + x

    with pytest.raises(CaptureError, match="does the task function refer to the cluster"):
        cluster.par_map(uses_cluster, [1])


def test_a_captured_array_changed_in_place_is_seen_by_the_next_map(cluster: Cluster) -> None:
    data = np.zeros(1_000_000)  # 8 MB: travels out of band, checked by checksum

    def read(i: int) -> float:
        return float(data[i])

    assert cluster.par_map(read, [0, 999_999]) == [0.0, 0.0]
    data[999_999] = 7.0  # same object, same size, new content
    assert cluster.par_map(read, [0, 999_999]) == [0.0, 7.0]
    assert cluster.submit(read, 999_999).result(timeout=10) == 7.0


def test_a_worker_lets_go_of_a_captured_array_once_a_newer_version_arrives() -> None:
    # Each version of a changed capture stayed in the workers' function cache until
    # 512 MB of them pushed the oldest out: a 100 MB global changed in place between
    # maps cost every worker 400 MB it could never use again.
    data = np.zeros(1_000_000)  # 8 MB: travels out of band

    def versions_alive(i: int) -> tuple[float, int]:
        import weakref
        seen = sys.__dict__.setdefault("_sockpool_test_versions", [])
        seen.append(weakref.ref(data))
        return float(data[0]), len({id(ref()) for ref in seen if ref() is not None})

    with Cluster(n=1) as cl:
        for version in range(4):
            data[0] = version
            assert cl.par_map(versions_alive, [0]) == [(version, 1)]
        assert cl.submit(versions_alive, 0).result(timeout=10) == (3.0, 1)  # the same: kept


def test_two_functions_used_in_turn_each_cross_the_wire_once() -> None:
    # Told apart by id(), two lambdas made in turn (the first one freed, its
    # address reused) looked like versions of one function: each chunk dropped the
    # other's payload on the worker, and its captured data was sent 20 times, not 2.
    from helpers import CountsUnpickling

    first, second = CountsUnpickling(0), CountsUnpickling(0)
    first.data, second.data = np.zeros(1_000_000), np.ones(1_000_000)  # type: ignore[assignment]

    def loads_here() -> int:
        return CountsUnpickling.loads()

    with Cluster(n=1) as cl:
        pairs = zip(cl.imap(lambda x: first.data[0] + x, range(10), chunksize=1),
                    cl.imap(lambda x: second.data[0] + x, range(10), chunksize=1), strict=True)
        assert [a + b for a, b in pairs] == [2.0 * x + 1 for x in range(10)]
        assert cl.run_on_all(loads_here) == [2]


def _versions_alive(data: Any, i: int) -> tuple[float, int]:
    """The value read, and how many captured arrays this worker still holds."""
    import weakref
    seen = sys.__dict__.setdefault("_sockpool_test_arrays", [])
    seen.append(weakref.ref(data))
    return float(data[i]), len({id(ref()) for ref in seen if ref() is not None})


def test_a_worker_lets_go_of_the_data_of_a_function_gone_from_the_caller() -> None:
    # A lambda made for each map, or a function defined again (a notebook cell run
    # again), is a new function: the worker kept every older one's data until 512 MB
    # of them pushed the oldest out.  Once the older one is gone here, it is dropped.
    with Cluster(n=1) as cl:
        for version in range(4):
            data = np.full(1_000_000, float(version))  # 8 MB: travels out of band
            assert cl.par_map(lambda i, data=data: _versions_alive(data, i), [0]
                              ) == [(version, 1)]
    with Cluster(n=1) as cl:
        for version in range(4):
            data = np.full(1_000_000, float(version))

            def defined_again(i: int, data: Any = data) -> tuple[float, int]:
                return _versions_alive(data, i)

            assert cl.submit(defined_again, 0).result(timeout=10) == (version, 1)
    with Cluster(n=1) as cl:
        data = np.zeros(1_000_000)
        kept = [functools.partial(_versions_alive, data), functools.partial(_versions_alive,
                                                                             data + 1)]
        assert [cl.par_map(fn, [0])[0] for fn in kept] == [(0.0, 1), (1.0, 2)]
        # Both still here: neither is dropped for the other.
        assert [cl.par_map(fn, [0])[0] for fn in kept] == [(0.0, 2), (1.0, 2)]


def test_a_waiting_call_keeps_a_copy_of_what_its_function_carries_not_the_function() -> None:
    # A submit copies the large data a function carries, so the caller may drop or
    # change it: a call that also kept the function held the data twice.
    import gc
    import weakref

    def carrier(data: Any) -> Any:
        return lambda i: float(data[i])

    with Cluster(n=1) as cl:
        busy = cl.submit(time.sleep, 1.0)
        fn = carrier(np.full(1_000_000, 7.0))
        kept = weakref.ref(fn)
        waiting = cl.submit(fn, 0)
        del fn
        gc.collect()
        assert kept() is None and not waiting.done()
        assert waiting.result(timeout=30) == 7.0
        busy.result(timeout=30)


def test_a_global_changed_in_place_is_seen_after_its_versions_were_dropped_together(
        tmp_path: Path) -> None:
    # Two closures from one factory, both carrying X, dropped at once as a newer one
    # came: in one order of the two FORGETs, the worker took its copy of X as bound
    # there, and every later map read that copy (found in a notebook, 1 run in 2).
    from helpers import run_script

    result = run_script("""
        import numpy as np
        from sockpool import Cluster

        X = np.zeros(1_000_000)

        def make(a):
            return lambda i: float(X[i] + a)

        with Cluster(n=1) as cl:
            for version in range(8):
                pair = [make(100), make(200)]
                assert [cl.par_map(f, [0])[0] for f in pair] == [version + 100, version + 200]
                del pair
                X[0] = version + 1.0
                assert cl.par_map(make(0), [0]) == [version + 1.0], version
        print("fresh")
    """, tmp_path)
    assert result.stdout.strip() == "fresh"


def test_a_lambda_made_anew_over_the_same_data_crosses_the_wire_once() -> None:
    from helpers import CountsUnpickling

    held = CountsUnpickling(0)
    held.data = np.zeros(1_000_000)  # type: ignore[assignment]
    other = np.ones(1_000_000)

    def loads_here() -> int:
        return CountsUnpickling.loads()

    with Cluster(n=1) as cl:
        for i in range(3):  # a new lambda each time, pickled alike: the same payload
            assert cl.par_map(lambda x: held.data[0] + x, [i]) == [i]
            assert cl.par_map(lambda x: other[0] + x, [i]) == [i + 1]  # another one between
        assert cl.run_on_all(loads_here) == [1]


class Weighted:
    """A model whose method carries its weights; equal to any other, hashed alike."""

    def __init__(self) -> None:
        self.weights = np.zeros(1_000_000)

    def predict(self, i: int) -> tuple[float, int]:
        import weakref
        seen = sys.__dict__.setdefault("_sockpool_test_weights", [])
        seen.append(weakref.ref(self.weights))
        return float(self.weights[i]), len({id(ref()) for ref in seen if ref() is not None})

    __call__ = predict

    def __eq__(self, other: object) -> bool:
        return bool(self.weights == other.weights)  # type: ignore[attr-defined]  # ambiguous

    def __hash__(self) -> int:
        return 1


def test_a_method_and_a_callable_object_carry_their_data_as_functions_do() -> None:
    # A bound method is a new object at each call: its older versions were never
    # dropped. And telling functions apart by equality made a callable object whose
    # __eq__ cannot answer (NumPy's truth value) fail its second map.
    model = Weighted()
    with Cluster(n=1) as cl:
        for version in range(3):
            model.weights[0] = version
            assert cl.par_map(model.predict, [0]) == [(version, 1)]
        assert cl.par_map(model, [0])[0][0] == 2.0  # (another function: its own copy)
        assert cl.par_map(model, [0])[0][0] == 2.0


def test_a_capture_changed_while_its_map_waited_to_be_sent_is_not_cached_stale() -> None:
    # The payload's digest is taken when the call starts, its large buffer read
    # when it is sent: changed in between, the workers kept the new bytes under the
    # old digest, and once the array was back to its old content every later call
    # ran on the stale copy.
    data = np.zeros(1_000_000)

    def read(i: int) -> float:
        return float(data[0])

    with Pool(2) as pool:
        busy = [pool.apply_async(time.sleep, (1.0,)) for _ in range(2)]
        time.sleep(0.2)  # both workers busy: the map's chunks wait in the master
        waiting = pool.map_async(read, range(4), chunksize=1)
        time.sleep(0.2)
        data[0] = 6.0  # before they are sent
        waiting.get(timeout=30)  # (either value: the map raced with the change)
        for result in busy:
            result.get(timeout=30)
        data[0] = 0.0  # back to what it was when the map began
        assert pool.map(read, range(4), chunksize=1) == [0.0] * 4
        assert pool.apply(read, (0,)) == 0.0


class FalsyError(Exception):
    """An exception that is false, as one defining ``__len__`` can be."""

    def __len__(self) -> int:
        return 0


@pytest.mark.timeout(10)
def test_a_map_that_is_not_fail_fast_raises_the_first_failure_to_arrive() -> None:
    from sockpool.api.mapping import collect_list

    first, second = FalsyError("first"), ValueError("second")
    blocks = iter([(2, [None], {2: first}), (0, [7, 8], {}), (3, [None], {3: second})])
    with pytest.raises(FalsyError) as raised:
        collect_list(blocks, 4, ordered=True, errors="raise")
    assert raised.value is first
    blocks = iter([(0, [7], {}), (1, [None], {1: second})])
    assert collect_list(blocks, 2, ordered=True, errors="return") == [7, second]


def test_results_read_in_one_turn_of_the_io_thread_reach_the_caller_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller wakes once for all the RESULTs the I/O thread read in one turn,
    # not once per chunk, and none is left held once the turn ends.
    held: list[int] = []
    released: list[int] = []
    left: list[int] = []
    hold, release = StreamJob.hold, StreamJob.release

    def counting_hold(self: StreamJob, *event: Any) -> bool:
        held.append(event[0].first_index)
        return hold(self, *event)

    def counting_release(self: StreamJob) -> None:
        released.append(len(self._held))
        release(self)
        left.append(len(self._held))

    monkeypatch.setattr(StreamJob, "hold", counting_hold)
    monkeypatch.setattr(StreamJob, "release", counting_release)
    with Cluster(n=2) as cl:
        assert cl.par_map(abs, range(-400, 0), chunksize=1) == list(range(400, 0, -1))
    assert sorted(held) == list(range(400))
    assert sum(released) == 400 and not any(left)


def test_a_stream_job_tells_a_turn_as_one_event_in_the_order_it_came() -> None:
    job = StreamJob(None, 0)  # type: ignore[arg-type]
    first, second, third = (job.chunk(i, 1, []) for i in range(3))
    label = WorkerLabel(0, "localhost", 1)
    assert job.hold(first, label, (memoryview(b"1"), [])) is True
    assert job.hold(second, label, (memoryview(b"2"), [])) is False
    assert job.events.empty()  # held until the turn ends
    error = RuntimeError("lost")
    job.fail(third, error)  # behind the results held before it
    assert job.events.empty()
    job.release()
    assert job.events.get_nowait() == [(first, label, (memoryview(b"1"), [])),
                                       (second, label, (memoryview(b"2"), [])),
                                       (third, None, error)]
    job.release()  # nothing held: nothing told
    assert job.events.empty()
    job.dropped(first)  # nothing held: told at once
    assert job.events.get_nowait() == [(first, None, None)]
    # A lost worker's results, settled in a turn, go behind what it holds too.
    job.hold(first, label, (memoryview(b"1"), []))
    job.deliver(second, label, None)
    assert job.events.empty()
    job.release()
    assert [event[0] for event in job.events.get_nowait()] == [first, second]


def test_a_result_that_cannot_be_told_leaves_the_rest_of_its_turn_told(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken(StreamJob):
        def release(self) -> None:
            raise RuntimeError("broken")

    held = HeldResults()
    broken, fine = Broken(None, 0), StreamJob(None, 0)  # type: ignore[arg-type]
    label = WorkerLabel(0, "localhost", 1)
    held.hold(broken.chunk(0, 1, []), label, (memoryview(b""), []))
    held.hold(fine.chunk(0, 1, []), label, (memoryview(b""), []))
    with caplog.at_level(logging.ERROR, logger="sockpool"):
        held.release()
    assert len(fine.events.get_nowait()) == 1
    assert "a result could not be delivered" in caplog.text and "broken" in caplog.text


def test_what_an_escaping_exception_leaves_held_the_teardown_still_tells() -> None:
    # A done-callback that raises SystemExit on the I/O thread ends its loop; the
    # teardown's release then tells the results the turn still held.
    class Exits(StreamJob):
        def release(self) -> None:
            raise SystemExit(3)

    held = HeldResults()
    exits, fine = Exits(None, 0), StreamJob(None, 0)  # type: ignore[arg-type]
    label = WorkerLabel(0, "localhost", 1)
    held.hold(exits.chunk(0, 1, []), label, (memoryview(b""), []))
    held.hold(fine.chunk(0, 1, []), label, (memoryview(b""), []))
    with pytest.raises(SystemExit):
        held.release()
    assert fine.events.empty()
    held.release()
    assert len(fine.events.get_nowait()) == 1


def _waits_for_the_quick_one(flag: str, kind: str) -> tuple[str, bool, int]:
    if kind == "long":  # done only once "quick" has run: it must not wait behind this
        deadline = time.monotonic() + 20
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        return kind, os.path.exists(flag), os.getpid()
    if kind == "quick":
        open(flag, "w").close()
    return kind, True, os.getpid()


@pytest.mark.parametrize("how", ["par_map", "submit"])
def test_a_chunk_queued_behind_a_long_one_goes_to_a_worker_that_is_free(
        tmp_path: Path, how: str) -> None:
    # The first chunks are dealt before anything is known of how long they run:
    # "quick" is queued behind "long", whose worker it would wait for while the
    # other worker, done with "instant", has nothing to do.  It is taken back.
    flag = str(tmp_path / "quick ran")
    with Cluster(n=2) as cl:
        cl.run_on_all(os.getpid)  # both workers ready before the work is dealt
        kinds = ["long", "instant", "quick"]
        with cl.profile() as prof:
            if how == "par_map":
                results = cl.par_map(functools.partial(_waits_for_the_quick_one, flag), kinds,
                                     chunksize=1)
            else:
                futures = [cl.submit(_waits_for_the_quick_one, flag, kind) for kind in kinds]
                results = [future.result(timeout=30) for future in futures]
    assert results[0][1] is True, "the quick task waited behind the long one"
    assert results[2][2] != results[0][2]
    # The profile shows each task once, none as a lost attempt.
    assert len(prof.tasks) == 3
    assert all(record.ok and record.attempt == 1 for record in prof.tasks)


def _starts_after_the_quick_one(flag: str, kind: str) -> tuple[str, bool, int]:
    if kind == "medium":
        time.sleep(0.1)  # long enough that nothing is queued behind the next one
    if kind == "after":
        return kind, os.path.exists(flag), os.getpid()
    return _waits_for_the_quick_one(flag, kind)


@pytest.mark.parametrize("how", ["par_map", "submit"])
def test_a_chunk_queued_behind_a_long_one_starts_before_those_that_came_after_it(
        tmp_path: Path, how: str) -> None:
    # "quick" was dealt behind "long" before anything was known of them.  When the
    # other worker frees up, the later "after" tasks still wait: "quick" is taken
    # back and runs first there, as from one queue (ProcessPoolExecutor's order).
    flag = str(tmp_path / "quick ran")
    kinds = ["medium", "long", "medium", "quick", "after", "after", "after"]
    task = functools.partial(_starts_after_the_quick_one, flag)
    with Cluster(n=2) as cl:
        cl.run_on_all(os.getpid)  # both workers ready before the work is dealt
        if how == "par_map":
            results = cl.par_map(task, kinds, chunksize=1)
        else:
            results = [future.result(timeout=30) for future in [cl.submit(task, kind)
                                                                for kind in kinds]]
    assert results[1][1] is True, "the quick task waited behind the long one"
    assert [flagged for kind, flagged, _ in results if kind == "after"] == [True] * 3, \
        "a later task started before the quick one"
    assert results[3][2] != results[1][2]


MASTER_PID = os.getpid()
#: Set in the environment once the test no longer waits: a SlowToUnpickle decoded in
#: the master waits for it (a variable: an Event would be captured, and not pickle).
DECODE_MAY_END = "SOCKPOOL_TEST_DECODE_MAY_END"


def _slow_in_the_master() -> str:
    if os.getpid() == MASTER_PID:  # unpickled here: as a large result would take long
        waited = time.monotonic()
        while DECODE_MAY_END not in os.environ and time.monotonic() - waited < 10:
            time.sleep(0.01)
    return "slow"


class SlowToUnpickle:
    def __reduce__(self) -> Any:
        return _slow_in_the_master, ()


def zero_fails_once_one_runs_which_returns_when_cancelled(x: int, ran: str
                                                         ) -> SlowToUnpickle:
    started = Path(ran, "started")
    if x == 0:  # (worker A) fails while task 1 runs on worker B
        waited = time.monotonic()
        while not started.exists() and time.monotonic() - waited < 10:
            time.sleep(0.01)
        raise ValueError("zero")
    # (worker B) returns once the map's cancel interrupts it: its result comes
    # behind the error, while the map waits for its output.
    cancelled = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancelled.set())
    started.touch()
    cancelled.wait(10)
    print(f"done {x}")
    return SlowToUnpickle()


def test_a_failing_map_raises_without_waiting_to_decode_the_results_that_came_after(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopping the map waits briefly for its chunks still out, for their output;
    # it unpickled the results that came behind the error too, which nobody would
    # see: here each takes until the map has raised (or 10 s).  What they printed
    # is in those results, and is written once they are decoded.
    monkeypatch.delenv(DECODE_MAY_END, raising=False)
    with Cluster(n=2) as cl:
        started = time.monotonic()
        with pytest.raises(ValueError, match="zero"):
            cl.par_map(zero_fails_once_one_runs_which_returns_when_cancelled, range(2),
                       [str(tmp_path)] * 2, chunksize=1)
        assert time.monotonic() - started < 8, "the map waited for its results to decode"
        monkeypatch.setenv(DECODE_MAY_END, "1")
        printed: list[str] = []
        while time.monotonic() - started < 10 and not printed:
            time.sleep(0.1)
            printed += capsys.readouterr().out.splitlines()
        assert printed == ["done 1"]


def _counting_up_to(n: int) -> Any:
    yield from range(n)


async def _coroutine(x: int) -> int:
    return x


@pytest.mark.parametrize("call", [
    lambda cl, fn: cl.par_map(fn, [1]),
    lambda cl, fn: cl.imap(fn, [1]),
    lambda cl, fn: cl.submit(fn, 1),
    lambda cl, fn: cl.map(fn, [1]),
])
def test_a_generator_or_coroutine_function_is_refused_before_anything_runs(
        shared_cluster: Cluster, call: Any) -> None:
    # Each task ran, then failed: "the result of this task, a generator, cannot be
    # serialized" (after its side effects), with no word of what to do instead.
    for fn, what, instead in ((_counting_up_to, "a generator", "list(f(x))"),
                              (functools.partial(_counting_up_to), "a generator", "list"),
                              (_coroutine, "a coroutine", "asyncio.run(f(x))")):
        with pytest.raises(TypeError, match=rf"runs _\w+\(\) on a worker .*: {what}, which "
                                            "cannot travel; consume it in the task ") as refused:
            call(shared_cluster, fn)
        assert instead in str(refused.value)


def _triple(x: int) -> int:
    return 3 * x


def _slow_triple(x: int) -> int:
    time.sleep(0.004)
    return 3 * x


def test_a_map_of_tasks_known_to_be_short_is_cut_into_one_chunk_per_worker(
        cluster: Cluster) -> None:
    # Each chunk costs the master a round trip's work: eight chunks of 1 µs tasks
    # (four per worker, multiprocessing's rule) took 3x as long as two.
    assert cluster.par_map(_triple, range(40)) == [3 * x for x in range(40)]  # timed
    with cluster.profile() as known:
        assert cluster.par_map(_triple, range(40)) == [3 * x for x in range(40)]
    assert len(known.attempts) == 2
    with Pool(cluster=cluster) as pool, cluster.profile() as by_pool:
        assert pool.map(_triple, range(40)) == [3 * x for x in range(40)]
    assert len(by_pool.attempts) == 2
    # imap over a list too (its chunks grew from 1 task each: 8 chunks, 15x mp's time).
    with cluster.profile() as lazily:
        assert list(cluster.imap(_triple, range(40))) == [3 * x for x in range(40)]
    assert len(lazily.attempts) == 2
    with cluster.profile() as generated:  # a generator may give its items slowly
        assert list(cluster.imap(_triple, iter(range(40)))) == [3 * x for x in range(40)]
    assert len(generated.attempts) > 2
    # A chunksize given, or tasks long enough to want balancing, keep the rule.
    with cluster.profile() as given:
        cluster.par_map(_triple, range(40), chunksize=5)
    assert len(given.attempts) == 8
    cluster.par_map(_slow_triple, range(40))
    with cluster.profile() as slow:
        assert cluster.par_map(_slow_triple, range(40)) == [3 * x for x in range(40)]
    assert len(slow.attempts) == 8


def _sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_heavy_map_after_quick_ones_of_its_function_still_uses_every_worker(
        cluster: Cluster) -> None:
    # The pace is the function's, not its arguments': a map of heavy items cut by
    # the quick ones' pace once went as one chunk, on one worker of eight.
    for _ in range(5):
        cluster.par_map(_sleep_then_pid, [0.0] * 32)
    assert len(set(cluster.par_map(_sleep_then_pid, [0.2] * 4))) == cluster.n_workers == 2


def test_task_pace_counts_a_slower_map_at_once_and_a_faster_one_halfway() -> None:
    from sockpool.api.pace import REMEMBERED, MapTimes, TaskPace

    pace = TaskPace()
    assert pace.chunk_size(b"f", 40, 2, 5) == 5  # never timed: the usual size
    pace.record(b"f", 40e-6, 40)  # 1 µs a task
    assert pace.chunk_size(b"f", 40, 2, 5) == 20  # at most one chunk per worker
    assert pace.chunk_size(b"f", 100_000, 2, 12_500) == 12_500  # never smaller
    pace.record(b"f", 0.01, 1)  # it grew slow: 10 ms a task counts at once
    assert pace.chunk_size(b"f", 40, 2, 5) == 5
    pace.record(b"f", 0.0, 0)  # a map that failed whole is not timed
    pace.record(b"f", 0.5e-3, 1)  # faster: halfway, 5.25 ms
    assert pace.chunk_size(b"f", 40, 2, 5) == 5
    times = MapTimes(pace, b"h", 3)  # a map's chunks add up, told once all are timed
    times.add(10e-6, 5)
    times.add(0.0, 5)  # failed whole: its tasks are not counted
    assert pace.chunk_size(b"h", 40, 2, 5) == 5
    times.add(10e-6, 5)
    assert pace.chunk_size(b"h", 40, 2, 5) == 20
    times = MapTimes(pace, b"k", 2)
    times.add(10e-6, 10)
    times.add(0.05, 0)  # ran, but every task of it was settled as its worker died
    assert pace.chunk_size(b"k", 40, 2, 5) == 20  # 1 µs a task, not 5 ms
    pace.record(b"g", 1e-6, 1)
    for n in range(REMEMBERED - 1):  # the least recently timed are forgotten first
        pace.record(n.to_bytes(4, "little"), 1e-6, 1)
    assert pace.chunk_size(b"g", 40, 2, 5) == 20
    pace.record(b"one more", 1e-6, 1)
    assert pace.chunk_size(b"g", 40, 2, 5) == 5
    assert pace.chunk_size(b"one more", 40, 2, 5) == 20


def test_a_chunk_stopped_by_a_failure_is_timed_for_the_tasks_that_ran() -> None:
    # Pool.map(sleep, [-1] + [0.01] * 39) ran 21 tasks and was timed as 40: a slow
    # function looked twice as fast (and, failing early everywhere, as trivial).
    from sockpool.api.mapping import _timed_tasks
    from sockpool.common.protocol import Flag
    from sockpool.dispatch.jobs import TaskFailure

    stops = StreamJob(None, Flag.MAP_ONE | Flag.STOP_ON_ERROR)  # type: ignore[arg-type]
    chunk = stops.chunk(10, 5, [])
    assert _timed_tasks(chunk, []) == 5
    assert _timed_tasks(chunk, [TaskFailure(11, ValueError())]) == 2  # 10 and 11 ran
    chunk.resume = 1  # task 10 settled elsewhere: the RESULT timed 11 on
    assert _timed_tasks(chunk, [TaskFailure(12, ValueError())]) == 2
    goes_on = StreamJob(None, Flag.MAP_ONE)  # type: ignore[arg-type]
    assert _timed_tasks(goes_on.chunk(0, 5, []), [TaskFailure(1, ValueError())]) == 5
