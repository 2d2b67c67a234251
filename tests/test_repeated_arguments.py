"""A large array passed to call after call (joblib's ``X``, ``submit(f, X)`` in a
loop) is copied once into shared memory, not once per call.

What a user relies on: the master's memory does not grow with the calls in
flight, each task still gets the array as it was when its call was made and a
copy of its own to write to, and an array changed in place travels anew.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import time

import numpy as np
import pytest

from sockpool import Cluster
from sockpool.common import arrays, kept_segments, shm, shm_reader
from sockpool.common.kept_segments import KeptSegments

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not shm.available(), reason="needs Linux memfd")]

MB = 1024 * 1024
KEPT = kept_segments.KEEP_MIN_BYTES  # the smallest buffer kept


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


def slow_first_stamp(x: np.ndarray) -> str:
    time.sleep(0.2)
    return str(x[0])


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
    data = np.arange(KEPT // 8, dtype=np.float64)
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
    state = np.zeros(KEPT // 8)
    with Cluster(n=1) as cl:
        for step in range(1, 12):
            state[0] = step
            assert cl.submit(np.max, state).result() == step
        # After a few changes its contents are no longer hashed: no sealed copies pile up.
        assert segment_bytes() <= 3 * KEPT + 2 * MB


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def buffers_of(array: np.ndarray) -> list[pickle.PickleBuffer]:
    out: list[pickle.PickleBuffer] = []
    pickle.dumps(array, protocol=5, buffer_callback=out.append)
    return out


def test_a_buffer_is_kept_once_sent_twice_alike_and_named_from_then_on() -> None:
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.full(KEPT // 8, 3.0)
    try:
        first, second, third, fourth = (kept.frames_for(buffers_of(data)) for _ in range(4))
        assert not any(kept.owns(f[0]) for f in (first, second))
        assert kept.owns(third[0]) and shm.serial_of(third[0]) == shm.serial_of(fourth[0])
        assert kept.copies(third[0]) == [data.tobytes()]

        # A reader maps it privately: writes to one transfer's views reach no other.
        released: list[int] = []
        one = np.frombuffer(shm_reader.open_shared(bytes(third[0]), released.append)[0])
        one[:] = -1.0
        other = np.frombuffer(shm_reader.open_shared(bytes(fourth[0]), released.append)[0])
        assert float(other.sum()) == float(data.sum())
        clean = address(other)
        del one, other
        assert released == []  # never rewritten: nothing to wait for
        # The next transfer takes the mapping no task wrote to (its pages mapped already),
        # never the written one.
        again = [np.frombuffer(shm_reader.open_shared(bytes(third[0]), print)[0])
                 for _ in range(2)]
        assert address(again[0]) == clean
        assert all(float(a.sum()) == float(data.sum()) for a in again)  # not the written
        del again

        small = np.ones(kept_segments.KEEP_MIN_BYTES // 8 - 1024)
        assert not any(kept.owns(f) for _ in range(4) for f in kept.frames_for(buffers_of(small)))
        # A message of several buffers keeps their order around a kept one.
        mixed = kept.frames_for([*buffers_of(np.full(MB // 4, 7.0)), *buffers_of(data)])
        assert [kept.owns(f) for f in mixed] == [False, True]
        views = [v for f in mixed for v in shm_reader.open_shared(bytes(f), released.append)]
        assert [float(np.frombuffer(v)[0]) for v in views] == [7.0, 3.0]
        del views, first, second, third, fourth, mixed
        kept.trim(time.monotonic() + shm.IDLE_SECONDS)  # unused: closed
        pool.trim(time.monotonic() + shm.IDLE_SECONDS)
        shm_reader.trim_mappings(time.monotonic() + shm.IDLE_SECONDS)  # (each holds its fd)
        assert segment_bytes() == 0
    finally:
        kept.close()
        pool.close()


def test_a_datetime_array_sent_again_is_kept_as_its_own_view_is_made_anew() -> None:
    # It travels as a bytes view of itself (see common/arrays.py), a new object at
    # every pickle: told apart by the view, it was copied at every call.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    stamps = np.datetime64("2026-01-01", "ns") + np.arange(KEPT // 8 + 8).astype("m8[s]")
    try:
        frames = [kept.frames_for(datetime_buffers(stamps)) for _ in range(4)]
        assert [kept.owns(f[0]) for f in frames] == [False, False, True, True]
        assert kept.copies(frames[2][0]) == [stamps.tobytes()]
        # A slice the caller holds (a pandas Series of a frame's block, say): NumPy
        # bases its bytes view on the whole array, a new view at every pickle.
        part = stamps[8:]
        frames = [kept.frames_for(datetime_buffers(part)) for _ in range(4)]
        assert [kept.owns(f[0]) for f in frames] == [False, False, True, True]
        assert kept.copies(frames[3][0]) == [part.tobytes()]
        part.shape = (2, -1)  # changed in place: its view is made again, as it is now
        assert arrays.bytes_view(part).shape == part.shape
        del frames, part
    finally:
        kept.close()
        pool.close()
    with Cluster(n=1) as cl:
        futures = [cl.submit(slow_first_stamp, stamps) for _ in range(8)]
        held = segment_bytes()  # the first two copied, the rest name one sealed copy
        assert len({f.result() for f in futures}) == 1
    assert held <= 4 * stamps.nbytes, held  # (8 copies before)


def test_a_fortran_ordered_array_sent_again_is_kept() -> None:
    # NumPy pickles such an array's buffer as its transpose, a view made anew at
    # every pickle: what tells it sent again is the array viewed.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.asfortranarray(np.arange(KEPT // 8 + 64, dtype=float).reshape(-1, 8))
    assert not data.flags.c_contiguous
    try:
        frames = [kept.frames_for(buffers_of(data)) for _ in range(4)]
        assert [kept.owns(f[0]) for f in frames] == [False, False, True, True]
        assert kept.copies(frames[2][0]) == [data.T.tobytes()]
        del frames
    finally:
        kept.close()
        pool.close()


def datetime_buffers(array: np.ndarray) -> list[pickle.PickleBuffer]:
    """The buffers of a datetime array as sockpool pickles it (its bytes view's)."""
    out: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, 5, buffer_callback=out.append)
    pickler.dispatch_table = {np.ndarray: arrays.reduce_ndarray}
    pickler.dump(array)
    return out


def test_contents_that_keep_changing_stop_being_hashed() -> None:
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    state = np.zeros(KEPT // 8)
    try:
        for step in range(kept_segments.CHANGES_TOLERATED + 2):
            state[0] = step
            kept.frames_for(buffers_of(state))
        # Unchanged from now on, but no longer hashed: never kept.
        assert not any(kept.owns(f) for _ in range(3) for f in kept.frames_for(buffers_of(state)))
        other = np.zeros(KEPT // 8)  # another object is hashed as before
        assert kept.owns([kept.frames_for(buffers_of(other)) for _ in range(3)][-1][0])
    finally:
        kept.close()
        pool.close()


def test_kept_segments_are_capped_in_number_idle_ones_closed_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each kept segment holds a master descriptor: 900 arrays of 1 MiB sent 3 times
    # each held 905, past many a `ulimit -n`.
    monkeypatch.setattr(kept_segments, "MAX_KEPT", 2)
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    arrays = [np.full(KEPT // 8, float(i)) for i in range(3)]
    try:
        held = [[kept.frames_for(buffers_of(a)) for _ in range(3)][-1] for a in arrays[:2]]
        assert all(kept.owns(frames[0]) for frames in held)  # two kept, both in use
        third = [kept.frames_for(buffers_of(arrays[2])) for _ in range(3)][-1]
        assert not kept.owns(third[0])  # no room: it goes the usual way
        del held[0]  # the first one's transfer ended: idle, closed to make room
        held.append(kept.frames_for(buffers_of(arrays[2])))
        assert kept.owns(held[-1][0])
        assert not kept.owns(kept.frames_for(buffers_of(arrays[0]))[0])  # both in use
    finally:
        kept.close()
        pool.close()


def test_a_frame_dying_while_its_pool_is_busy_does_not_deadlock() -> None:
    # A frame's __del__ may run in any code, through a garbage collection: in the
    # pool's own, under its lock, it took that lock again and the thread hung.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.full(KEPT // 8, 1.0)
    try:
        frames = [kept.frames_for(buffers_of(data)) for _ in range(3)]
        assert kept.owns(frames[-1][0])
        with kept._lock, pool._lock:  # (as a collection inside their code would)
            del frames
        later = time.monotonic() + 2 * shm.IDLE_SECONDS
        kept.trim(later)  # what the frames' deaths left waiting is applied now
        pool.trim(later)
        shm_reader.trim_mappings(later)
        assert segment_bytes() == 0
    finally:
        kept.close()
        pool.close()


def test_a_buffer_changed_as_it_was_kept_is_never_kept_under_its_old_digest() -> None:
    # The digest was of the array, the copy made after: another thread writing in
    # between left other bytes filed under it, sent for every later array with the
    # digest's contents.  Here the copy itself is changed after it is made.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.zeros(KEPT // 8)
    original = pool.sealed_copy

    def torn_copy(view: memoryview) -> tuple[int, int, bytes]:
        data[0] = 1.0  # (what the other thread wrote, copied along)
        try:
            return original(memoryview(data).cast("B"))
        finally:
            data[0] = 0.0

    try:
        kept.frames_for(buffers_of(data))
        kept.frames_for(buffers_of(data))
        pool.sealed_copy = torn_copy  # type: ignore[method-assign]
        assert not kept.owns(kept.frames_for(buffers_of(data))[0])
        pool.sealed_copy = original  # type: ignore[method-assign]
        frame = kept.frames_for(buffers_of(data))[0]
        assert kept.owns(frame) and kept.copies(frame) == [data.tobytes()]
    finally:
        kept.close()
        pool.close()


def test_a_buffer_over_2_gib_is_copied_out_whole() -> None:
    # A read returns 2 GiB at most: a worker without shared memory got it cut short.
    size = 2**31 + 4096
    fd = os.memfd_create("sockpool-test-large", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)  # (sparse: reading it allocates nothing but the result)
        os.pwrite(fd, b"end", size - 3)
        whole = shm.read_all(fd, size, 0)
        assert len(whole) == size and whole[-3:] == b"end"
    finally:
        os.close(fd)


def test_nothing_is_stored_once_the_segments_are_closed() -> None:
    # A call packing its arguments as its cluster closed made segments that no
    # I/O thread would ever close: their descriptors stayed open for good.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.zeros(KEPT // 8)
    kept.close()
    pool.close()
    shm_reader.trim_mappings(time.monotonic() + 2 * shm.IDLE_SECONDS)
    for _ in range(3):
        with pytest.raises(OSError, match="closed"):
            kept.frames_for(buffers_of(data))
    assert segment_bytes() == 0


def test_a_transfer_ending_while_the_readers_mappings_are_busy_does_not_deadlock() -> None:
    # Its arrays may die in a garbage collection inside the mappings' own locked
    # code: giving its mapping back took that lock again and the thread hung.
    pool = shm.SegmentPool()
    kept = KeptSegments(pool)
    data = np.full(KEPT // 8, 2.0)
    try:
        frame = [kept.frames_for(buffers_of(data)) for _ in range(3)][-1][0]
        views = shm_reader.open_shared(bytes(frame), print)
        first = address(np.frombuffer(views[0]))
        with shm_reader._mappings._lock:  # (as a collection inside its code would)
            del views
        again = np.frombuffer(shm_reader.open_shared(bytes(frame), print)[0])
        assert address(again) == first and float(again[0]) == 2.0  # taken at the next turn
    finally:
        kept.close()
        pool.close()
