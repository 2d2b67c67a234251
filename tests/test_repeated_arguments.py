"""A large array passed to call after call (joblib's ``X``, ``submit(f, X)`` in a
loop) is copied once into shared memory, not once per call.

What a user relies on: the master's memory does not grow with the calls in
flight, each task still gets the array as it was when its call was made and a
copy of its own to write to, and an array changed in place travels anew.
"""

from __future__ import annotations

import os
import pickle
import sys
import time

import numpy as np
import pytest

from sockpool import Cluster
from sockpool.common import kept_segments, shm
from sockpool.common.kept_segments import KeptSegments

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not shm.available(), reason="needs Linux memfd")]

MB = 1024 * 1024


def segment_bytes(pid: int | None = None) -> int:
    """The bytes of the sockpool segments a process holds descriptors of."""
    total = 0
    for fd in os.listdir(f"/proc/{pid or 'self'}/fd"):
        path = f"/proc/{pid or 'self'}/fd/{fd}"
        try:
            if "memfd:sockpool-" in os.readlink(path):
                total += os.stat(path).st_size
        except OSError:
            continue
    return total


def first_then_overwrite(x: np.ndarray, value: float) -> tuple[float, float]:
    """Run on a worker: the argument's first value and sum as it came, then write to it."""
    seen = (float(x[0]), float(x.sum()))
    x[:] = value
    return seen


def slow_first(x: np.ndarray) -> float:
    time.sleep(0.2)
    return float(x[0])


def keep(array: np.ndarray) -> None:
    """Run on a worker: keep the argument beyond its task."""
    sys.__dict__.setdefault("_sockpool_test_kept", []).append(array)


def kept_sums() -> list[float]:
    return [float(a.sum()) for a in sys.__dict__.get("_sockpool_test_kept", [])]


def test_calls_in_flight_share_one_copy_of_an_array_sent_again() -> None:
    data = np.ones(16 * MB // 8)  # 16 MB
    with Cluster(n=2) as cl:
        futures = [cl.submit(slow_first, data) for _ in range(12)]
        held = segment_bytes()  # all 12 calls made, most still queued
        assert [f.result() for f in futures] == [1.0] * 12
    # The first two calls copy it (a buffer sent once is never hashed), the
    # rest name one sealed copy: 12 copies (192 MB) before.
    assert held <= 4 * 16 * MB + 2 * MB, held


def test_each_task_gets_the_array_as_called_and_a_copy_of_its_own() -> None:
    data = np.arange(4 * MB // 8, dtype=np.float64)
    total = float(data.sum())
    with Cluster(n=1) as cl:
        cl.submit(keep, data).result()  # kept on the worker beyond its task
        seen = [cl.submit(first_then_overwrite, data, -i).result() for i in range(1, 7)]
        assert seen == [(0.0, total)] * 6  # no task saw another's writes
        assert cl.submit(kept_sums).result() == [total]
        data[0] = 5.0  # changed in place: the next calls see the change
        assert [cl.submit(first_then_overwrite, data, 0).result()[0] for _ in range(4)] == [5.0] * 4
        data[0] = 6.0
        streamed = cl.par_starmap(first_then_overwrite, [(data, -1)] * 6, chunksize=1)
        assert streamed == [(6.0, total + 6.0)] * 6
        assert float(data.sum()) == total + 6.0  # and the caller's array is as it left it


def test_a_state_changed_before_every_call_is_not_kept() -> None:
    state = np.zeros(4 * MB // 8)
    with Cluster(n=1) as cl:
        for step in range(1, 12):
            state[0] = step
            assert cl.submit(np.max, state).result() == step
        # After a few changes its contents are no longer hashed: no sealed copies pile up.
        assert segment_bytes() <= 3 * 4 * MB + 2 * MB


def buffers_of(array: np.ndarray) -> list[pickle.PickleBuffer]:
    out: list[pickle.PickleBuffer] = []
    pickle.dumps(array, protocol=5, buffer_callback=out.append)
    return out


def test_a_buffer_is_kept_once_sent_twice_alike_and_named_from_then_on() -> None:
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.full(2 * MB // 8, 3.0)
    try:
        first, second, third, fourth = (kept.frames_for(buffers_of(data)) for _ in range(4))
        assert not any(kept.owns(f[0]) for f in (first, second))
        assert kept.owns(third[0]) and shm.serial_of(third[0]) == shm.serial_of(fourth[0])
        assert kept.copies(third[0]) == [data.tobytes()]

        # A reader maps it privately: writes to one transfer's views reach no other.
        released: list[int] = []
        one = np.frombuffer(shm.open_shared(bytes(third[0]), released.append)[0])
        one[:] = -1.0
        other = np.frombuffer(shm.open_shared(bytes(fourth[0]), released.append)[0])
        assert float(other.sum()) == float(data.sum())
        del one, other
        assert released == []  # never rewritten: nothing to wait for

        small = np.ones(kept_segments.KEEP_MIN_BYTES // 8 - 1024)
        assert not any(kept.owns(f) for _ in range(4) for f in kept.frames_for(buffers_of(small)))
        # A message of several buffers keeps their order around a kept one.
        mixed = kept.frames_for([*buffers_of(np.full(MB // 4, 7.0)), *buffers_of(data)])
        assert [kept.owns(f) for f in mixed] == [False, True]
        views = [v for f in mixed for v in shm.open_shared(bytes(f), released.append)]
        assert [float(np.frombuffer(v)[0]) for v in views] == [7.0, 3.0]
        del views, first, second, third, fourth, mixed
        kept.trim(time.monotonic() + shm.IDLE_SECONDS)  # unused: closed
        pool.trim(time.monotonic() + shm.IDLE_SECONDS)
        shm.trim_mappings(time.monotonic() + shm.IDLE_SECONDS)  # (each holds its fd)
        assert segment_bytes() == 0
    finally:
        kept.close()
        pool.close()


def test_contents_that_keep_changing_stop_being_hashed() -> None:
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    state = np.zeros(2 * MB // 8)
    try:
        for step in range(kept_segments.CHANGES_TOLERATED + 2):
            state[0] = step
            kept.frames_for(buffers_of(state))
        # Unchanged from now on, but no longer hashed: never kept.
        assert not any(kept.owns(f) for _ in range(3) for f in kept.frames_for(buffers_of(state)))
        other = np.zeros(2 * MB // 8)  # another object is hashed as before
        assert kept.owns([kept.frames_for(buffers_of(other)) for _ in range(3)][-1][0])
    finally:
        kept.close()
        pool.close()
