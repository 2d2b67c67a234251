"""imap: lazy input, bounded in-flight work, ordering and errors."""

from __future__ import annotations

import itertools
import time

import pytest

from sockpool import Cluster

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
    # Bounded: a few chunks per worker ahead of what was consumed, not the whole input.
    assert consumed <= 20 + 5 * 2 * (shared_cluster._dispatcher.scheduler.prefetch + 1) + 5
    results.close()
    assert shared_cluster.par_map(square, [2]) == [4]  # the cluster is still fine


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
