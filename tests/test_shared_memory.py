"""Large buffers between the master and local workers go through shared memory.

What a user relies on: the data arrives intact both ways, arrays that either
side keeps are never overwritten by later transfers, segments are reused rather
than piling up, and nothing is left behind, not even after the master is killed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import master_program, run_script, wait_gone

from sockpool import Cluster
from sockpool.common import arrays, codec, shm, shm_reader

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not shm.available(), reason="needs Linux memfd")]

MB = 1024 * 1024


@pytest.fixture(scope="module")
def pair() -> Iterator[Cluster]:
    with Cluster(n=2) as cl:
        yield cl


def in_shared_memory(array: np.ndarray, pid: int | None = None) -> bool:
    """Whether an array's memory lies in a sockpool segment mapped by process ``pid``."""
    address = array.__array_interface__["data"][0]
    with open(f"/proc/{pid or 'self'}/maps") as maps:
        for line in maps:
            if "memfd:sockpool-" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if start <= address < end:
                    return True
    return False


def argument_in_shared_memory(array: np.ndarray) -> tuple[bool, float]:
    """Run on a worker: where its argument lives, and its sum."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:sockpool-" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if start <= address < end:
                    return True, float(array.sum())
    return False, float(array.sum())


def segments_open(pid: int) -> int:
    """How many sockpool segments process ``pid`` holds a descriptor of."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "memfd:sockpool-" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                count += 1
        except OSError:
            continue
    return count


def filled(value: float, megabytes: int) -> np.ndarray:
    return np.full(megabytes * MB // 8, value)


def keep(array: np.ndarray) -> int:
    """Run on a worker: keep the argument beyond its task."""
    sys.__dict__.setdefault("_sockpool_test_kept", []).append(array)
    return len(sys.__dict__["_sockpool_test_kept"])


def kept_sums() -> list[float]:
    return [float(a.sum()) for a in sys.__dict__.get("_sockpool_test_kept", [])]


def test_large_arrays_travel_through_shared_memory_both_ways(pair: Cluster) -> None:
    data = np.random.default_rng(1).random(2 * MB)  # 16 MB
    mapped, total = pair.submit(argument_in_shared_memory, data).result()
    assert mapped and total == pytest.approx(float(data.sum()))

    back = pair.submit(np.negative, data).result()
    np.testing.assert_array_equal(back, -data)
    assert in_shared_memory(back)
    back[:10] = 7.0  # a result is the user's to change
    assert back[0] == 7.0

    squares = pair.par_map(np.square, [data[:MB], data[MB:]])  # eager map chunks too
    np.testing.assert_array_equal(np.concatenate(squares), data**2)
    assert all(in_shared_memory(s) for s in squares)
    streamed = list(pair.imap(argument_in_shared_memory, (data for _ in range(3))))
    assert all(mapped for mapped, _ in streamed)


def arrival(array: np.ndarray) -> tuple[bool, str, str, np.ndarray]:
    """Run on a worker: whether its argument lives in shared memory, its type and
    dtype, and the argument itself."""
    return in_shared_memory(array), type(array).__name__, array.dtype.str, array


@pytest.mark.parametrize("serializer", ["cloudpickle", "pickle"])
def test_arrays_numpy_would_pickle_in_band_travel_through_shared_memory(
        pair: Cluster, serializer: str) -> None:
    # NumPy copies into the pickle a strided slice (a column of a matrix), a
    # structured array holding a datetime, a recarray (DataFrame.to_records()):
    # each went whole over the socket at every call, 12-36x a plain array's time.
    matrix = np.arange(4 * MB, dtype=np.float64).reshape(-1, 8)
    events = np.zeros(MB, dtype=[("at", "M8[ns]"), ("value", "f8"), ("n", "i4", (2,))])
    events["at"] = np.datetime64("2026-01-01", "ns") + np.arange(MB).astype("m8[s]")
    events["value"] = np.arange(MB) / 3
    events["n"] = np.arange(2 * MB).reshape(-1, 2)
    records = np.rec.fromarrays([np.arange(MB), np.arange(MB) * 0.5], names="i,x")
    for sent, kind in [(matrix[:, 3], "ndarray"), (matrix[::-3, 1:6], "ndarray"),
                       (events, "ndarray"), (events[::2], "ndarray"),
                       (records, "recarray")]:
        frames = codec.dumps(sent, serializer)
        assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1000, kind
        if serializer == "cloudpickle":  # with a lambda: cloudpickle's own pass
            frames = codec.dumps((sent, lambda: None), serializer)
            assert len(frames) == 2 and memoryview(frames[0]).nbytes < 4000, kind
        mapped, name, dtype, back = pair.submit(arrival, sent).result()
        assert mapped and name == kind and dtype == sent.dtype.str
        np.testing.assert_array_equal(back, sent)
        assert type(back) is type(sent) and back.dtype == sent.dtype
    assert pair.submit(arrival, records).result()[3].x[3] == 1.5  # (fields by name)
    frozen = matrix[:, 1]
    frozen.flags.writeable = False  # a read-only one arrives read-only, copied or not
    assert not pair.submit(arrival, frozen).result()[3].flags.writeable
    small = np.zeros(100, dtype=events.dtype)  # under 64 KiB: as NumPy pickles it
    assert len(codec.dumps(small, serializer)) == 1
    assert pair.submit(arrival, small).result()[3].dtype == small.dtype


def eight_mb_unless_five(i: int) -> np.ndarray:
    if i == 5:
        raise ValueError("five")
    return np.full(MB, float(i))


def mapped_segment_bytes() -> int:
    """The bytes of sockpool segments this process maps (its own and its workers')."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "memfd:sockpool-" in line:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                total += end - start
    return total


def test_a_failed_maps_results_are_freed_while_its_error_is_held() -> None:
    # The error's traceback held the map's frames, and with them every result
    # that had come (in shared memory): as long as the error lived (a notebook
    # keeps the last one) or, caught, until the garbage collector found the cycle.
    gc.disable()
    try:
        before = mapped_segment_bytes()  # (other clusters of this module's)
        with Cluster(n=2) as cl, pytest.raises(ValueError, match="five") as caught:
            cl.par_map(eight_mb_unless_five, range(8), chunksize=1)
        assert mapped_segment_bytes() <= before, caught.value
    finally:
        gc.enable()


def eight_mb_even_after_a_cancel(i: int) -> np.ndarray:
    if i == 5:
        raise ValueError("five")
    if i > 5:  # ignores the cancel that the error sends: ends after the map raised
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            with contextlib.suppress(BaseException):
                time.sleep(0.01)
    return np.full(MB, float(i))


def test_results_that_come_after_a_maps_error_are_not_kept_for_it() -> None:
    # The map's job, reachable from the error's traceback, queued every RESULT
    # that came after the error for a reader that was gone.
    gc.disable()
    try:
        before = mapped_segment_bytes()
        with Cluster(n=2, relay=False) as cl:
            with pytest.raises(ValueError, match="five") as caught:
                cl.par_map(eight_mb_even_after_a_cancel, range(8), chunksize=1)
            time.sleep(2.0)  # the tasks that ignored the cancel end; their results come
        assert mapped_segment_bytes() <= before, caught.value
    finally:
        gc.enable()


def test_an_array_sent_out_of_band_as_a_view_is_freed_once_dropped() -> None:
    # Its bytes view (of opaque items) was kept for the next send, and kept alive
    # the array it viewed: every datetime array sent stayed in memory for good, and
    # every strided one copied, a copy at each call.
    stamps = np.datetime64("2026-01-01", "ns") + np.arange(MB).astype("m8[s]")
    events = np.zeros(2 * MB, dtype=[("at", "M8[ns]"), ("value", "f8")])
    held = len(arrays._views)
    for _ in range(3):
        codec.dumps(stamps)
        codec.dumps(events[::2])
    assert len(arrays._views) == held
    gone = weakref.ref(stamps)
    del stamps
    gc.collect()
    assert gone() is None


def datetimes_in_shared_memory(array: np.ndarray) -> tuple[bool, str, np.ndarray]:
    """Run on a worker: whether its datetime argument lives in shared memory, its
    dtype, and the array a day later."""
    return in_shared_memory(array), array.dtype.str, array + np.timedelta64(1, "D")


def test_datetime_arrays_travel_through_shared_memory_as_other_arrays_do(
        pair: Cluster, tmp_path: Path) -> None:
    # NumPy pickles datetime64/timedelta64 data inside the pickle: a pandas frame's
    # datetime columns went whole over the socket, 30x loky's time for 10 tasks.
    stamps = (np.datetime64("2026-01-01T00:00:00", "ns")
              + np.arange(2 * MB).astype("m8[s]"))  # 16 MB
    mapped, dtype, later = pair.submit(datetimes_in_shared_memory, stamps).result()
    assert mapped and dtype == "<M8[ns]"
    np.testing.assert_array_equal(later, stamps + np.timedelta64(1, "D"))
    assert later.dtype == stamps.dtype and in_shared_memory(later)
    # Fortran order, a view with strides, timedeltas: each arrives as it was.
    spans = np.asfortranarray(np.arange(2 * MB, dtype=np.int64).reshape(1024, -1)
                              ).astype("m8[ms]")
    for sent in (spans, spans[::2, ::3], stamps[::-2]):
        back = pair.submit(np.copy, sent).result()
        np.testing.assert_array_equal(back, sent)
        assert back.dtype == sent.dtype
    assert pair.submit(np.copy, spans).result().flags.f_contiguous
    frames = codec.dumps(stamps)  # out of band, as a float array's data is
    assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1000
    assert arrays.LARGE_ARRAY_BYTES == codec.OOB_THRESHOLD  # (smaller: in band anyway)
    np.save(tmp_path / "stamps.npy", stamps)  # a read-only memmap of them too
    mapped = np.load(tmp_path / "stamps.npy", mmap_mode="r")
    frames = codec.dumps(mapped)
    assert len(frames) == 2 and memoryview(frames[0]).nbytes < 1000
    np.testing.assert_array_equal(pickle.loads(frames[0], buffers=frames[1:]), stamps)


def test_small_messages_stay_on_the_socket(pair: Cluster) -> None:
    small = np.arange(20_000, dtype=np.float64)  # 160 kB: out of band, below the threshold
    mapped, total = pair.submit(argument_in_shared_memory, small).result()
    assert not mapped and total == float(small.sum())
    back = pair.submit(np.negative, small).result()
    assert not in_shared_memory(back)


def test_segments_are_reused_not_piled_up(pair: Cluster) -> None:
    data = filled(1.0, 8)

    def round_trips(count: int) -> list[int]:
        for _ in range(count):
            out = pair.submit(np.negative, data).result()
            assert out[-1] == -1.0
            del out
        time.sleep(0.1)  # the last RELEASE on its way
        return [segments_open(pid) for pid in (os.getpid(), *(w.pid for w in pair.workers))]

    warm = round_trips(4)
    assert round_trips(30) <= warm  # segment for segment: no process holds more


def test_an_argument_a_task_keeps_is_not_overwritten() -> None:
    with Cluster(n=1) as cl:
        assert cl.submit(keep, filled(1.0, 4)).result() == 1
        for value in (2.0, 3.0, 4.0):  # the same size: a reused segment, were it free
            assert cl.submit(np.sum, filled(value, 4)).result() == value * MB // 2
        assert cl.submit(kept_sums).result() == [MB // 2]


def test_a_result_the_master_keeps_is_not_overwritten(pair: Cluster) -> None:
    first = pair.submit(filled, 1.0, 4).result()
    later = [pair.submit(filled, value, 4).result() for value in (2.0, 3.0)]
    del later
    for value in (5.0, 6.0, 7.0):
        assert pair.submit(filled, value, 4).result()[0] == value
    assert (first == 1.0).all()


def test_a_result_outlives_its_worker_and_its_cluster() -> None:
    cl = Cluster(n=1)
    try:
        result = cl.submit(filled, 3.0, 8).result()
        pid = cl.workers[0].pid
        os.kill(pid, signal.SIGKILL)
        assert wait_gone([pid], 5) == []
        assert (result == 3.0).all()
        deadline = time.monotonic() + 10
        while [w.pid for w in cl.workers if w.state == "idle"] in ([], [pid]):
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.05)
        # The cluster stays usable with its replacement, through shared memory too.
        assert cl.submit(filled, 4.0, 8).result()[-1] == 4.0
    finally:
        cl.close()
    assert (result == 3.0).all()
    result += 1
    assert (result == 4.0).all()


def test_an_idle_cluster_gives_back_the_memory_of_results_it_no_longer_holds() -> None:
    # Each worker kept the segment its last large result went out in until its next
    # task: an idle cluster held a result's size per worker for as long as it sat.
    # (The workers' counts alone: this test process holds other clusters' segments.)
    with Cluster(n=2) as cl:
        pids = [w.pid for w in cl.workers]
        idle = [segments_open(pid) for pid in pids]
        results = cl.par_map(filled, [1.0, 2.0], [16, 16], chunksize=1)
        assert [r[-1] for r in results] == [1.0, 2.0]
        assert all(in_shared_memory(r) for r in results)
        del results
        deadline = time.monotonic() + shm.IDLE_SECONDS + 5  # the workers' next trim
        while time.monotonic() < deadline:
            held = [segments_open(pid) for pid in pids]
            if held == idle:
                break
            time.sleep(0.2)
        assert held == idle  # only the probes: no segment of a result is left open


def test_a_closed_cluster_leaves_no_memory_mapped_once_its_results_are_dropped(
        tmp_path: Path) -> None:
    # The master kept its mappings of the workers' segments (a cache, for the next
    # transfer) after close(), where no I/O thread trims them: 1 GB after a few
    # clusters in a notebook.  And a worker recycled takes its segments' with it.
    result = run_script("""
        import gc
        import os

        import numpy as np
        from sockpool import Cluster

        def mapped():
            with open("/proc/self/maps") as maps:
                return sum("memfd:sockpool-" in line for line in maps)

        def big(i):
            return np.full(4_000_000, float(i))

        with Cluster(n=2) as cl:
            kept = cl.par_map(big, range(2), chunksize=1)
            print("in use", mapped(), sum(float(x[0]) for x in kept), flush=True)
            del kept
            gc.collect()
        print("closed", mapped(), flush=True)
        with Cluster(n=1, max_tasks_per_worker=1) as cl:
            for i in range(3):
                assert cl.submit(big, i).result()[-1] == i
            pids = {cl.submit(os.getpid).result() for _ in range(2)}
            print("recycled", mapped(), len(pids), flush=True)
    """, tmp_path)
    assert result.stdout.splitlines() == ["in use 2 1.0", "closed 0", "recycled 0 2"]


def test_workers_can_be_kept_on_the_socket_by_environment() -> None:
    data = np.random.default_rng(2).random(2 * MB)
    with Cluster(n=1, env={"SOCKPOOL_SHARED_MEMORY": "0"}) as cl:
        mapped, total = cl.submit(argument_in_shared_memory, data).result()
        assert not mapped and total == pytest.approx(float(data.sum()))
        back = cl.submit(np.negative, data).result()
        np.testing.assert_array_equal(back, -data)
        assert not in_shared_memory(back)
        assert segments_open(cl.workers[0].pid) == 0


def _shmem_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    raise AssertionError("no Shmem line in /proc/meminfo")


def test_nothing_is_left_behind_when_the_master_is_killed(tmp_path: Path) -> None:
    dev_shm = set(os.listdir("/dev/shm"))
    before = _shmem_kib()
    with master_program(tmp_path / "master.py", """
        import json, os, time
        import numpy as np
        from sockpool import Cluster

        def hold(array):
            time.sleep(60)  # a worker maps the master's segment while this runs

        cl = Cluster(n=2)
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        kept = [cl.submit(np.full, 4 * 1024 * 1024, float(i)).result() for i in range(4)]
        cl.submit(hold, np.ones(4 * 1024 * 1024))
        time.sleep(0.5)
        with open("/proc/self/maps") as maps:
            print(sum("memfd:sockpool-" in line for line in maps), flush=True)
        time.sleep(60)
    """) as (master, pids):
        assert master.stdout is not None
        segments_mapped = int(master.stdout.readline())
        assert segments_mapped >= 4  # the kept results live in the workers' segments
        during = _shmem_kib()
        assert during - before > 100 * 1024  # 4 x 32 MB of results, 32 MB lent out
        os.kill(master.pid, signal.SIGKILL)
        master.wait(10)
        assert wait_gone(pids, 3) == []
    deadline = time.monotonic() + 5
    while _shmem_kib() - before > 20 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _shmem_kib() - before <= 20 * 1024, "shared memory outlived every process holding it"
    assert _own(os.listdir("/dev/shm")) == _own(dev_shm)


def _own(names: Iterable[str]) -> set[str]:
    """Entries of /dev/shm other programs on the machine may make or remove meanwhile
    left out: POSIX semaphores (multiprocessing's and loky's, which sockpool never
    makes) and joblib's memmapping folders."""
    return {name for name in names if not name.startswith(("sem.", "joblib_memmapping"))}


# -- the segments themselves --------------------------------------------------------------


def test_a_segment_is_mapped_by_its_descriptor_and_released_when_dropped() -> None:
    pool = shm.SegmentPool()
    try:
        data = np.arange(300_000, dtype=np.float64)
        frame = pool.store([pickle.PickleBuffer(data), b"x" * 100])
        released: list[int] = []
        views = shm_reader.open_shared(bytes(frame), released.append)
        array = np.frombuffer(views[0], dtype=np.float64)
        np.testing.assert_array_equal(array, data)
        assert bytes(views[1]) == b"x" * 100
        assert pool.copies(frame)[1] == b"x" * 100
        del views
        assert released == []  # the array still maps it
        del array
        assert len(released) == 1
    finally:
        pool.close()


def test_a_segment_comes_back_for_reuse_only_when_every_holder_let_go() -> None:
    pool = shm.SegmentPool()
    try:
        frame = pool.store([bytes(2 * MB)])
        pool.lend(frame, "worker 1")
        serial = _serial(frame)
        del frame  # its chunk finished; worker 1 still maps it
        second = pool.store([bytes(2 * MB)])
        assert _serial(second) != serial
        pool.release([serial], "worker 1")
        assert _serial(pool.store([bytes(2 * MB)])) == serial  # reused
        frame = pool.store([bytes(2 * MB)])
        pool.lend(frame, "worker 2")
        del frame
        pool.forget("worker 2")  # it died: its mapping went with it
        count = pool.segment_count
        pool.trim(time.monotonic() + shm.IDLE_SECONDS)
        assert pool.segment_count < count
    finally:
        pool.close()


def test_a_descriptor_that_names_anything_else_is_refused() -> None:
    pool = shm.SegmentPool()
    try:
        frame = bytearray(pool.store([bytes(MB)]))
        tampered = bytearray(frame)
        tampered[16:24] = (int.from_bytes(frame[16:24], "little") + 1).to_bytes(8, "little")
        with pytest.raises(shm.SharedMemoryError, match="not the segment named"):
            shm_reader.open_shared(bytes(tampered), print)
        with pytest.raises(shm.SharedMemoryError, match="past its segment"):
            shm_reader.open_shared(bytes(frame[:-16]) + (0).to_bytes(8, "little")
                             + (1 << 40).to_bytes(8, "little"), print)
        with pytest.raises(shm.SharedMemoryError, match="malformed"):
            shm_reader.open_shared(b"short", print)
        with open(__file__, "rb") as other:  # a real file, not a segment
            forged = bytearray(frame)
            forged[4:8] = other.fileno().to_bytes(4, "little")
            with pytest.raises(shm.SharedMemoryError, match="not the segment named"):
                shm_reader.open_shared(bytes(forged), print)
        assert not shm_reader.check_probe("00")
        assert shm_reader.check_probe(pool.probe())
    finally:
        pool.close()


def _serial(frame: bytes) -> int:
    return int.from_bytes(frame[16:24], "little")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to give a process a small /dev/shm")
def test_a_small_dev_shm_limits_nothing(tmp_path: Path) -> None:
    """As in a Docker container (64 MB /dev/shm by default), here 8 MB: 64 MB still move."""
    script = tmp_path / "big.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from sockpool import Cluster

        def where(array):
            address = array.__array_interface__["data"][0]
            with open("/proc/self/maps") as maps:
                return any("memfd:sockpool-" in line
                           and int(line.split("-")[0], 16) <= address
                           < int(line.split()[0].split("-")[1], 16) for line in maps)

        data = np.ones(8 * 1024 * 1024)  # 64 MB
        with Cluster(n=1) as cl:
            assert cl.submit(where, data).result()
            back = cl.submit(np.negative, data).result()
            assert (back == -1).all()
        print("moved", data.nbytes // 2**20, "MB")
    """))
    shell = (f"mount -t tmpfs -o size=8m tmpfs /dev/shm && df -m /dev/shm | tail -1 "
             f"&& exec {sys.executable} {script}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    size_mb = int(result.stdout.splitlines()[0].split()[1])
    assert size_mb <= 8 and "moved 64 MB" in result.stdout


def _first_is_slow(array: np.ndarray) -> float:
    time.sleep(0.3 if array[0] == 0 else 0.001)
    return float(array[0])


def test_a_chunk_given_back_lets_go_of_its_shared_arguments() -> None:
    # A chunk queued behind a slow one is given back for an idle worker; the worker
    # that skipped it never mapped its segment, which stayed lent to it for good.
    with Cluster(n=2) as cl:
        cl.run_on_all(os.getpid)
        arrays = [np.full(300_000, i, dtype=np.float64) for i in range(8)]  # 2.4 MB each
        assert cl.par_map(_first_is_slow, arrays, chunksize=1) == [float(i) for i in range(8)]
        segments = cl._dispatcher.shared.segments
        assert segments is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = cl._dispatcher.mailbox.ask(lambda: {
                serial: sorted(segment.holders)
                for serial, segment in segments._segments.items() if segment.holders})
            if not held:
                break
            time.sleep(0.05)
        assert held == {}


def test_a_users_shared_memory_segment_outlives_the_workers_that_attached_to_it(
        tmp_path: Path) -> None:
    # A fresh program: the cluster starts the resource tracker the workers share.
    # With a tracker of each worker's own, a recycled worker's unlinked the segment
    # (the tasks after it: FileNotFoundError), and one a task made went with it.
    result = run_script("""
        from multiprocessing import shared_memory
        from sockpool import Cluster

        def write(name, i):
            segment = shared_memory.SharedMemory(name=name)
            segment.buf[i] = i + 1
            segment.close()
            return i

        def make(size):
            segment = shared_memory.SharedMemory(create=True, size=size)
            segment.buf[:3] = b"abc"
            segment.close()
            return segment.name

        with Cluster(n=1, max_tasks_per_worker=1) as cl:
            mine = shared_memory.SharedMemory(create=True, size=4)
            print([cl.submit(write, mine.name, i).result() for i in range(4)])
            made = shared_memory.SharedMemory(name=cl.submit(make, 8).result())
            cl.submit(abs, 1).result()  # (its worker is recycled by now)
            again = shared_memory.SharedMemory(name=made.name)
            print(bytes(mine.buf), bytes(again.buf[:3]))
        for segment in (mine, made, again):
            segment.close()
        mine.unlink()
        made.unlink()
    """, tmp_path)
    assert result.stdout.splitlines() == ["[0, 1, 2, 3]", "b'\\x01\\x02\\x03\\x04' b'abc'"]
    assert result.stderr == ""  # no tracker's warning of a leak, nor of a name unknown


def test_a_worker_takes_the_masters_tracker_only_where_its_path_opens_that_pipe() -> None:
    # In another pid namespace (no /proc of its own), or once the master's tracker
    # was started again, the path opens something else: the worker keeps its own.
    from multiprocessing import resource_tracker

    from sockpool.worker.main import _share_resource_tracker

    tracker = resource_tracker._resource_tracker  # type: ignore[attr-defined]
    before = tracker._fd
    read, write = os.pipe()
    try:
        opened = len(os.listdir("/proc/self/fd"))
        _share_resource_tracker(f"/proc/self/fd/{write}", os.fstat(write).st_ino + 1)
        _share_resource_tracker(f"/proc/self/fd/{read + write + 100}", os.fstat(write).st_ino)
        assert tracker._fd == before
        assert len(os.listdir("/proc/self/fd")) == opened  # what it opened, it closed
    finally:
        os.close(read)
        os.close(write)
