"""imap: lazy input, bounded in-flight work, ordering and errors."""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockpool import CaptureError, Cluster, ClusterClosedError
from sockpool.api.mapping import BACKLOG_WINDOWS

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def fails_on_5(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


def test_ordered_results(shared_cluster: Cluster) -> None:
    assert list(shared_cluster.imap(square, range(500))) == [x * x for x in range(500)]


def test_unordered_has_every_result(shared_cluster: Cluster) -> None:
    results = list(shared_cluster.imap(square, range(500), ordered=False))
    assert sorted(results) == [x * x for x in range(500)]


def test_several_iterables(shared_cluster: Cluster) -> None:
    assert list(shared_cluster.imap(pow, [2, 3, 4], itertools.repeat(2))) == [4, 9, 16]


def test_input_is_read_lazily_with_bounded_work_in_flight(shared_cluster: Cluster) -> None:
    consumed = 0

    def endless() -> itertools.count[int]:
        nonlocal consumed
        for x in itertools.count():
            consumed += 1
            yield x

    results = shared_cluster.imap(square, endless(), chunksize=5)
    assert consumed == 0  # nothing is read before the first result is asked for
    taken = list(itertools.islice(results, 20))
    assert taken == [x * x for x in range(20)]
    # Bounded: a few chunks per worker ahead of what was consumed (and those finished
    # out of order, waiting for an earlier one), not the whole input.
    window = 2 * (shared_cluster._dispatcher.scheduler.prefetch + 1)
    assert consumed <= 20 + 5 * window * (1 + BACKLOG_WINDOWS) + 5
    results.close()
    assert shared_cluster.par_map(square, [2]) == [4]  # the cluster is still fine


def test_large_items_keep_the_read_ahead_bounded_in_bytes(shared_cluster: Cluster) -> None:
    # Chunks grew by task time alone: with 100 kB items and a cheap task they doubled
    # to thousands of items, and an endless input was read 16 000 items (1.6 GB)
    # ahead of a consumer that had taken 300.
    read = 0

    def endless_large() -> Iterator[bytes]:
        nonlocal read
        while True:
            read += 1
            yield b"x" * 100_000

    results = shared_cluster.imap(len, endless_large())
    for taken, size in enumerate(results, 1):
        assert size == 100_000
        time.sleep(0.001)
        if taken == 300:
            break
    results.close()
    assert read - 300 <= 200  # 20 MB: a window of chunks of about 1 MB


def _a_megabyte(_: int) -> bytes:
    return b"x" * 1_000_000


def test_large_results_keep_chunks_to_about_a_megabyte(shared_cluster: Cluster) -> None:
    with shared_cluster.profile() as prof:
        assert sum(map(len, shared_cluster.imap(_a_megabyte, range(300)))) == 300_000_000
    assert max(run.count for run in prof.attempts) <= 2


def test_a_feed_remembers_the_results_size_when_it_cuts_chunks_in_a_row() -> None:
    # Each chunk cut set the per-item size to its arguments' alone, forgetting the
    # results': with room for two, the second chunk grew as if results were small
    # (39 tasks of 1 MB results in one RESULT).
    from sockpool.api.feeds import MAX_CHUNK_BYTES, LazyFeed
    from sockpool.capture.payload import Packer
    from sockpool.dispatch.jobs import StreamJob

    feed = LazyFeed(StreamJob(None, 0), iter(range(10_000)), None, Packer())  # type: ignore[arg-type]
    first = feed.take()[0]
    for _ in range(10):  # fast tasks: the size would double each time
        feed.measured(first, 1e-6, first.count, result_bytes=MAX_CHUNK_BYTES // 2 * first.count)
    sizes = [chunk.count for _ in range(4) for chunk in feed.take()]
    assert max(sizes) <= 2, sizes


def test_a_slow_producers_items_run_as_they_come(shared_cluster: Cluster) -> None:
    # Chunks sized for a quick task waited to fill from an input that gives an item
    # every 20 ms: results came a second late, in bursts.
    def slowly(count: int) -> Iterator[float]:
        for _ in range(count):
            time.sleep(0.02)
            yield time.monotonic()

    late = [time.monotonic() - made for made in shared_cluster.imap(float, slowly(60))]
    assert sorted(late)[len(late) // 2] < 0.3, late


def test_a_slow_producers_results_come_out_before_its_next_items_are_read(
        shared_cluster: Cluster) -> None:
    # The window filled from the input before any result came out: with an item
    # every 150 ms, each result reached the loop about five items after it was read
    # (multiprocessing's imap: at once).  Now a result waits for at most the item
    # being read as it came (a margin of two here, for a loaded machine).
    events: list[str] = []

    def slowly() -> Iterator[int]:
        for i in range(8):
            time.sleep(0.15)
            events.append(f"read {i}")
            yield i

    for result in shared_cluster.imap(abs, slowly(), chunksize=1):
        events.append(f"got {result}")
    for i in range(3, 8):
        assert events.index(f"got {i - 3}") < events.index(f"read {i}"), events


def test_a_chunk_runs_before_the_input_after_it_is_read(shared_cluster: Cluster,
                                                       tmp_path: Path) -> None:
    # A producer may wait on its consumer: the first task must run before the
    # input is read on, or neither moves (as with multiprocessing's imap).
    marker = tmp_path / "first-task-ran"

    def waits_for_the_first_task() -> Iterator[Path | None]:
        yield marker
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, "no task ran while the input was read"
            time.sleep(0.01)
        yield None

    results = shared_cluster.imap(lambda path: path and path.touch(), waits_for_the_first_task())
    assert list(results) == [None, None]
    assert marker.exists()


def test_chunks_adapt_to_fast_tasks(shared_cluster: Cluster) -> None:
    started = time.perf_counter()
    assert sum(shared_cluster.imap(square, range(100_000))) == sum(x * x for x in range(100_000))
    # With chunks of 1 this would take tens of seconds; adaptive sizing makes it fast.
    assert time.perf_counter() - started < 10


def test_ordered_imap_yields_everything_before_a_failure(shared_cluster: Cluster) -> None:
    seen = []
    with pytest.raises(ValueError, match="five"):
        for value in shared_cluster.imap(fails_on_5, range(10), chunksize=2):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]


def test_errors_return(shared_cluster: Cluster) -> None:
    results = list(shared_cluster.imap(fails_on_5, range(7), errors="return"))
    assert results[:5] == [0, 1, 2, 3, 4] and results[6] == 6
    assert isinstance(results[5], ValueError)


def test_bad_input_is_reported_at_the_call_not_at_iteration(shared_cluster: Cluster) -> None:
    with pytest.raises(TypeError, match="callable"):
        shared_cluster.imap(None, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        shared_cluster.imap(square, 3)  # type: ignore[arg-type]


class InputBroke(Exception):
    pass


def _input_that_breaks(n: int) -> Iterator[int]:
    yield from range(n)
    raise InputBroke(f"the input broke after {n} items")


def slow_square(x: int) -> int:
    time.sleep(0.01)
    return x * x


# chunksize 4 over 10 items: the input breaks in the middle of the third chunk.
@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_an_input_that_raises_gives_every_result_read_before_it_then_its_error(
        shared_cluster: Cluster, chunksize: int | None) -> None:
    seen = []
    with pytest.raises(InputBroke, match="after 10 items") as raised:
        for value in shared_cluster.imap(slow_square, _input_that_breaks(10),
                                         chunksize=chunksize):
            seen.append(value)
    assert seen == [x * x for x in range(10)]  # as a generator expression would give
    assert raised.traceback[-1].name == "_input_that_breaks"  # the input's own frame


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_an_item_that_cannot_travel_gives_every_result_before_it_then_its_error(
        shared_cluster: Cluster, chunksize: int | None) -> None:
    # The chunk that failed to serialize raised at once: finished results were lost.
    items: list[object] = list(range(14))
    items[10] = threading.Lock()
    seen = []
    with pytest.raises(CaptureError, match="argument 10"):
        for value in shared_cluster.imap(slow_square, items, chunksize=chunksize):
            seen.append(value)
    assert seen == [x * x for x in range(10)]
    assert shared_cluster.par_map(slow_square, range(3)) == [0, 1, 4]


def _lock_then_a_break() -> Iterator[object]:
    yield from (0, 1, threading.Lock(), 3)
    raise InputBroke("the input broke after the lock")


def test_an_item_that_cannot_travel_is_told_before_an_input_error_after_it(
        shared_cluster: Cluster) -> None:
    # One chunk of 8 reads both: the first to come in the input is the one raised.
    seen = []
    with pytest.raises(CaptureError, match="argument 2"):
        for value in shared_cluster.imap(slow_square, _lock_then_a_break(), chunksize=8):
            seen.append(value)
    assert seen == [0, 1]


def test_unordered_and_errors_return_give_every_result_then_the_inputs_error(
        shared_cluster: Cluster) -> None:
    for options in ({"ordered": False}, {"errors": "return"}):
        seen = []
        with pytest.raises(InputBroke):
            for value in shared_cluster.imap(slow_square, _input_that_breaks(7), **options):
                seen.append(value)
        assert sorted(seen) == [x * x for x in range(7)], options
    seen = []
    with pytest.raises(InputBroke):  # several iterables: the one that raises is zipped
        for value in shared_cluster.imap(pow, _input_that_breaks(5), itertools.repeat(2)):
            seen.append(value)
    assert seen == [0, 1, 4, 9, 16]


def test_an_input_that_raises_at_once_raises_and_the_cluster_goes_on(
        shared_cluster: Cluster) -> None:
    with pytest.raises(InputBroke, match="after 0 items"):
        next(shared_cluster.imap(square, _input_that_breaks(0)))
    assert list(shared_cluster.imap(square, range(3))) == [0, 1, 4]


def test_a_failed_task_before_the_input_breaks_raises_first(shared_cluster: Cluster) -> None:
    seen = []
    with pytest.raises(ValueError, match="five"):
        for value in shared_cluster.imap(fails_on_5, _input_that_breaks(8), chunksize=2):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_an_imap_leaves_the_callers_iterator_usable(shared_cluster: Cluster) -> None:
    items = iter(_input_that_breaks(1000))
    results = shared_cluster.imap(square, items, chunksize=1)
    assert next(results) == 0
    results.close()
    del results
    assert next(items) > 0  # what the imap did not read is still there to read


def _mark(path: str) -> None:
    Path(path).touch()


def test_par_map_reads_an_input_that_raises_before_any_task_runs(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    # As multiprocessing.Pool.map: the whole input is read first, so no result is lost.
    with pytest.raises(InputBroke, match="after 3 items"):
        shared_cluster.par_map(_mark, (str(tmp_path / str(i)) for i in _input_that_breaks(3)))
    shared_cluster.run_on_all(abs, 0)  # each worker is past anything sent before
    assert list(tmp_path.iterdir()) == []


def _sleep_then(i: int) -> int:
    time.sleep(0.05)
    return i


@pytest.mark.parametrize("ordered", [True, False])
def test_a_shutdown_midway_delivers_what_was_sent_then_says_why_the_rest_did_not_run(
        ordered: bool) -> None:
    cl = Cluster(n=2)
    try:
        results = cl.imap(_sleep_then, range(50), ordered=ordered)
        got = [next(results) for _ in range(3)]
        time.sleep(0.3)  # more chunks run meanwhile; their results wait in the iterator
        cl.shutdown(wait=True)  # lets what was sent finish; the rest cannot be sent
        with pytest.raises(ClusterClosedError, match=r"before this call had sent all its "
                           r"input: the results of the (\d+) items it sent came first") as info:
            got.extend(results)
    finally:
        cl.close()
    sent = int(info.value.args[0].split("the results of the ")[1].split()[0])
    assert 3 < sent < 50
    assert sorted(got) == list(range(sent))  # every result of what was sent, none lost
    if ordered:
        assert got == list(range(sent))


def test_an_endless_imap_read_on_at_once_after_shutdown_stops_all_the_same() -> None:
    # shutdown(wait=False) lets the cluster drain, and an imap read on at once kept
    # sending chunks (the cluster accepted them while draining): endless, and
    # the cluster never closed.
    cl = Cluster(n=2)
    try:
        results = cl.imap(_sleep_then, itertools.count())
        next(results)
        cl.shutdown(wait=False)
        started = time.monotonic()
        with pytest.raises(ClusterClosedError, match="before this call had sent all its input"):
            for _ in results:
                assert time.monotonic() - started < 10, "the imap went on after shutdown()"
        assert cl._dispatcher.lifecycle.closed.wait(10)
    finally:
        cl.close()


def test_a_close_midway_ends_the_iteration_with_an_error_not_a_hang() -> None:
    cl = Cluster(n=2)
    results = cl.imap(_sleep_then, range(50))
    assert next(results) == 0
    cl.close()  # cancels what runs
    with pytest.raises(ClusterClosedError):
        list(results)


def _long_until_flagged(flag: str, i: int) -> int:
    if i == 0:  # done once task 21 started: it must not wait for this one to be sent
        deadline = time.monotonic() + 20
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        return int(os.path.exists(flag))
    if i == 21:
        open(flag, "w").close()
        time.sleep(0.2)
    return i


def test_a_long_task_at_the_head_of_an_ordered_imap_leaves_the_others_working(
        tmp_path: Path) -> None:
    # The window counted the results waiting for task 0: twenty short tasks done,
    # task 21 was never sent while 0 ran, and the two long ones ran one after the
    # other (twice multiprocessing's imap's time).
    flag = str(tmp_path / "21 started")
    with Cluster(n=2) as cl:
        results = list(cl.imap(functools.partial(_long_until_flagged, flag), range(30),
                               chunksize=1))
    assert results == [1, *range(1, 30)]


def test_imap_over_a_range_too_long_for_len_still_streams(cluster: Cluster) -> None:
    # Sizing the first chunk of a list-like input asked len(): range(10**20) has none.
    stream = cluster.imap(abs, range(10**20))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # type: ignore[attr-defined]
