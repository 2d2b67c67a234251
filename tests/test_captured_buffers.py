"""Large captured buffers: kept on each worker by their own digest, sent once.

A sweep (``for alpha in alphas: cl.par_map(lambda fold: fit(X, alpha, fold), folds)``)
makes a new payload at every call; the data it shares with the last one is sent
by digest, and a worker whose copy a task changed in place gets it again.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sockpool import Cluster
from sockpool.capture.pickling import dumps_function
from sockpool.common.digest import BUFFER_DIGEST_BYTES
from sockpool.dispatch.function_mirror import FunctionMirror

pytestmark = pytest.mark.timeout(60)

MB = 1_000_000


def _scaled_reader(data: np.ndarray, alpha: float) -> Callable[[int], float]:
    return lambda i: float(data[i]) * alpha


def test_a_sweep_sends_the_data_it_captures_to_each_worker_once() -> None:
    data = np.arange(1_000_000, dtype=np.float64)  # 8 MB: out of band
    with Cluster(n=2) as cl, cl.profile() as prof:
        for alpha in range(1, 6):
            assert cl.par_map(_scaled_reader(data, alpha), range(8), chunksize=1) == [
                float(i * alpha) for i in range(8)]
    sent = sum(task.bytes_in for task in prof.tasks)
    assert len(prof.tasks) == 40
    # Each of 2 workers got the 8 MB once (or once only one of them): five times
    # 8 MB at the least before, a new payload at each call.
    assert 8 * MB <= sent < 2 * 8 * MB + MB, sent


class _Scaled:
    """A model holding its data: a bound method carries it."""

    def __init__(self, data: np.ndarray, alpha: float) -> None:
        self.data, self.alpha = data, alpha

    def at(self, i: int) -> float:
        return float(self.data[i]) * self.alpha


def _scaled_at(data: np.ndarray, alpha: float, i: int) -> float:
    return float(data[i]) * alpha


@pytest.mark.parametrize("form", ["partial", "bound method", "partial of numpy"])
def test_a_sweep_of_partials_and_methods_sends_the_data_once_too(form: str) -> None:
    # The standard pickler, tried first, copied the array into its pickle, which
    # was thrown away for a function of a local module: 15x a lambda's time, and
    # a partial of an installed function (np.take) sent the array at every call.
    data = np.arange(1_000_000, dtype=np.float64)
    modes = ["raise", "wrap", "clip"]
    make: dict[str, Callable[[int], Any]] = {
        "partial": lambda k: functools.partial(_scaled_at, data, k + 1),
        "bound method": lambda k: _Scaled(data, k + 1).at,
        "partial of numpy": lambda k: functools.partial(np.take, data, mode=modes[k]),
    }
    with Cluster(n=1) as cl, cl.profile() as prof:
        for k in range(3):
            expected = [float(i) * (1 if form == "partial of numpy" else k + 1)
                        for i in range(4)]
            assert [float(v) for v in cl.par_map(make[form](k), range(4))] == expected
    sent = sum(task.bytes_in for task in prof.tasks)
    assert 8 * MB <= sent < 8 * MB + MB, sent


@pytest.mark.parametrize("form", ["partial", "partial of numpy"])
def test_pickling_a_partial_over_a_large_array_copies_none_of_it(form: str) -> None:
    import tracemalloc

    data = np.zeros(1_000_000)
    fn = (functools.partial(_scaled_at, data, 2.0) if form == "partial"
          else functools.partial(np.take, data, mode="clip"))
    tracemalloc.start()
    try:
        payload, _ = dumps_function(fn)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [memoryview(b).nbytes for b in payload.buffers] == [8 * MB]
    assert peak < MB, peak


def test_data_a_task_changed_in_place_reaches_the_next_version_as_the_master_has_it() -> None:
    # The buffer a worker holds is what the tasks of its functions see: one that
    # changed it in place must not hand the change to the next version, which
    # sees the data as the caller has it, as when every version carried its own.
    data = np.zeros(1_000_000)

    def bumps(alpha: int) -> Callable[[int], tuple[int, float]]:
        def task(i: int) -> tuple[int, float]:
            before = float(data[0])
            data[0] += 1
            return alpha, before
        return task

    with Cluster(n=1) as cl:
        for alpha in range(4):
            assert cl.par_map(bumps(alpha), [0]) == [(alpha, 0.0)]


def test_what_one_function_changes_in_place_no_other_function_sees() -> None:
    # Held buffers were handed out as they were: two functions sent the same array
    # shared one copy on the worker (B read what A's task wrote), and two arrays of
    # equal content in one payload became one array there.
    data = np.zeros(1_000_000)

    def a(i: int) -> float:
        if i:
            data[0] += 1
        return float(data[0])

    def b(i: int) -> float:
        return float(data[0])

    first, second = np.zeros(1_000_000), np.zeros(1_000_000)  # apart, alike

    def reads_both(i: int) -> float:
        return float(first.sum() + second.sum())

    def writes_first(i: int) -> tuple[float, bool]:
        first[:] += 1.0
        return float(second.sum()), bool(np.shares_memory(first, second))

    with Cluster(n=1) as cl:
        assert [cl.par_map(fn, [i])[0] for fn, i in ((a, 0), (b, 0), (a, 1), (b, 0))] == [
            0.0, 0.0, 1.0, 0.0]
        assert cl.par_map(a, [1]) == [2.0]  # a's own changes stay a's, as they did
        assert cl.par_map(reads_both, [0]) == [0.0]
        assert cl.par_map(writes_first, [0]) == [(0.0, False)]
        assert cl.par_map(writes_first, [0]) == [(0.0, False)]


def _refuse_the_first_buffer_sent_by_digest() -> None:
    """A worker's setup: its first TASK naming a held buffer by digest is refused, as
    when a buffer the caller changed in place as it was sent reached it otherwise."""
    from sockpool.worker import held_buffers

    resolve, refused = held_buffers.HeldBuffers.resolve, []

    def refusing(self: Any, frames: list[Any]) -> Any:
        if not refused and any(memoryview(frame).nbytes == BUFFER_DIGEST_BYTES
                               for frame in frames):
            refused.append(True)
            raise held_buffers.MissingBuffer
        return resolve(self, frames)

    held_buffers.HeldBuffers.resolve = refusing  # type: ignore[method-assign]


def test_chunks_queued_behind_a_refused_one_go_again_and_keep_their_writes() -> None:
    # Each refusal of the chunks queued behind the first one (sent by digest alone)
    # made the master drop every function again, the one just sent anew with it:
    # the function lost its own writes mid-map, and the array crossed once a chunk.
    data = np.zeros(1_000_000)

    def counter(alpha: float) -> Callable[[int], float]:
        def task(i: int) -> float:
            data[0] += 1
            return float(data[0]) + alpha
        return task

    with Cluster(n=1, prefetch=4, setup=_refuse_the_first_buffer_sent_by_digest) as cl, \
            cl.profile() as prof:
        for alpha in range(3):
            assert cl.par_map(counter(alpha), range(6), chunksize=1) == [
                alpha + 1.0 + i for i in range(6)]
    sent = sum(task.bytes_in for task in prof.tasks)
    # Each map's first chunk finds the copy changed by the last map's tasks, and gets
    # it again; the chunks queued behind it cost no more (they did: 8 MB each).
    assert sent < 4 * 8 * MB, sent


def test_a_refused_chunks_arguments_in_shared_memory_are_released_unmapped() -> None:
    # The refusing worker never mapped the segment of the chunk's arguments, so never
    # released it: lent to that worker, it was never reused for as long as it ran
    # (where the chunk went again to another worker).
    from collections import deque

    from sockpool.common import codec, protocol, shm
    from sockpool.common.config import WorkerConfig
    from sockpool.common.protocol import Flag, Kind
    from sockpool.worker.functions import FunctionCache
    from sockpool.worker.runner import ChunkRunner
    from sockpool.worker.state import WorkerState

    config = WorkerConfig(address="ipc:///unused", token="t", worker_id=0,
                          heartbeat_interval=1.0, master_timeout=5.0, serializer="cloudpickle",
                          max_frame_bytes=1 << 30, relay="off")
    released: deque[int] = deque()
    runner = ChunkRunner(config, WorkerState(), FunctionCache(), None, released,
                         send=lambda _: None)
    pool = shm.SegmentPool()
    try:
        descriptor = pool.store([np.ones(1_000_000)])
        head = protocol.header(Kind.TASK, Flag.MAP_ONE | Flag.SHARED, 1, 1)
        frame = protocol.task_frame(head, b"f" * 16, 0, bytes(codec.dumps(abs, "pickle")[0]),
                                    1, codec.dumps([0])[0])
        head_read, body = protocol.parse(frame)
        reply = runner.run(head_read, body, [b"b" * BUFFER_DIGEST_BYTES, descriptor])
        assert protocol.parse(reply[0])[0].flags & Flag.MISSING_BUFFERS
        assert list(released) == [shm.serial_of(descriptor)]
    finally:
        pool.close()


def test_a_chunk_refused_costs_nothing_of_the_workers_quota() -> None:
    # The refused chunk kept its place in max_tasks_per_worker's count, and the
    # worker, its quota spent, was neither given the chunk again nor retired: a hang.
    data = np.zeros(1_000_000)
    with Cluster(n=1, max_tasks_per_worker=2,
                 setup=_refuse_the_first_buffer_sent_by_digest) as cl:
        first = cl.par_map(lambda i: (os.getpid(), float(data[i])), [0])[0]
        second = cl.submit(lambda: (os.getpid(), float(data[1]) + 1)).result(timeout=30)
        assert (first[1], second[1]) == (0.0, 1.0)
        assert second[0] == first[0]  # its second task: the refusal counted for nothing
        assert cl.par_map(lambda i: float(data[0]) + i, range(4)) == [0.0, 1.0, 2.0, 3.0]


def test_a_run_on_all_refused_runs_again_on_the_same_worker() -> None:
    data = np.zeros(1_000_000)

    def where(alpha: int) -> Callable[[], tuple[int, float]]:
        def task() -> tuple[int, float]:
            return os.getpid(), float(data[0]) + alpha
        return task

    with Cluster(n=2, setup=_refuse_the_first_buffer_sent_by_digest) as cl:
        pids = [pid for pid, _ in cl.run_on_all(where(0))]  # in worker order
        for alpha in range(1, 4):
            answers = cl.run_on_all(where(alpha))
            assert [pid for pid, _ in answers] == pids
            assert [value for _, value in answers] == [alpha, alpha]


def test_a_function_whose_tasks_changed_its_data_starts_again_when_another_needs_it() -> None:
    # What guide.md says: a function over the same large data as one whose tasks
    # changed it in place finds the worker's copy changed; the worker then drops its
    # functions with large data, which start again from the session's data, as on
    # a new worker.  Results stay exact either way.
    data = np.zeros(1_000_000)

    def bump(i: int) -> float:
        data[0] += 1
        return float(data[0])

    with Cluster(n=1) as cl:
        assert cl.par_map(bump, range(3), chunksize=1) == [1.0, 2.0, 3.0]
        assert cl.par_map(bump, range(2), chunksize=1) == [4.0, 5.0]  # its own, kept
        assert cl.par_map(lambda i: float(data[0]), [0]) == [0.0]  # the session's data
        assert cl.par_map(bump, range(3), chunksize=1) == [1.0, 2.0, 3.0]


def _payload(data: Any, small: int) -> Any:
    return dumps_function(lambda i: float(data[i]) + small)[0]


def test_a_digest_sent_in_a_buffers_place_cannot_be_taken_for_a_buffer() -> None:
    from sockpool.common.codec import OOB_THRESHOLD

    assert BUFFER_DIGEST_BYTES < OOB_THRESHOLD  # every out-of-band buffer is larger


def test_the_master_names_a_held_buffer_by_its_digest_until_the_worker_lacks_one() -> None:
    data = np.zeros(1_000_000)
    mirror = FunctionMirror(budget=1 << 30)
    first, second = _payload(data, 1), _payload(data, 2)
    assert len(first.buffers) == 1 and first.digest != second.digest
    inband, buffers, _, _ = mirror.frames(first)
    assert inband and memoryview(buffers[0]).nbytes == 8 * MB
    assert mirror.frames(first) == (b"", [], [], [])  # cached there: its digest alone
    _, buffers, _, _ = mirror.frames(second)
    assert buffers == [second.buffer_digests[0]]
    assert len(buffers[0]) == BUFFER_DIGEST_BYTES
    forgets = mirror.forget_buffers(None)
    assert len(forgets) == 2  # both functions go there: the worker holds no buffer
    _, buffers, _, _ = mirror.frames(_payload(data, 3))
    assert memoryview(buffers[0]).nbytes == 8 * MB


def test_a_buffer_changed_since_its_digest_is_sent_but_not_counted_held() -> None:
    data = np.zeros(1_000_000)
    mirror = FunctionMirror(budget=1 << 30)
    stale = _payload(data, 1)
    data[0] = 5.0  # after the digest, before the send
    _, buffers, _, _ = mirror.frames(stale)
    assert memoryview(buffers[0]).nbytes == 8 * MB
    _, buffers, _, _ = mirror.frames(stale)  # not counted cached: in full again
    assert memoryview(buffers[0]).nbytes == 8 * MB
    _, buffers, _, _ = mirror.frames(_payload(data, 2))
    assert memoryview(buffers[0]).nbytes == 8 * MB  # nor its buffer held


