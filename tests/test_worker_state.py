"""The worker's shared state between its threads: a chunk asked back (RECLAIM) runs
nowhere twice -- given back only if the main thread has not taken it."""

from __future__ import annotations

import threading

import pytest

from sockpool.common.protocol import RECLAIM_MEMORY
from sockpool.worker.state import WorkerState

pytestmark = pytest.mark.timeout(60)


def test_a_chunk_given_back_before_it_was_taken_is_skipped() -> None:
    state = WorkerState()
    assert state.reclaim(7)
    assert not state.take(7)  # skipped here: the master sends it elsewhere
    assert state.take(8)


def test_a_chunk_given_back_twice_before_it_was_read_skips_two_copies() -> None:
    # Given back, sent here again, given back again: both copies wait unread.
    state = WorkerState()
    assert state.reclaim(7) and state.reclaim(7)
    assert not state.take(7) and not state.take(7)
    assert state.take(7)  # a third copy, the master's last word, runs here
    assert not state.reclaim(7)


def test_a_chunk_taken_is_never_given_back() -> None:
    state = WorkerState()
    assert state.take(7)
    assert not state.reclaim(7)
    for chunk in range(100, 100 + RECLAIM_MEMORY - 1):  # more than a worker ever holds
        state.take(chunk)
    assert not state.reclaim(7)


def _take_after(barrier: threading.Barrier, state: WorkerState, chunk: int,
                outcomes: dict[str, bool]) -> None:
    barrier.wait()
    outcomes["ran here"] = state.take(chunk)


def test_take_and_reclaim_racing_agree_on_exactly_one_outcome() -> None:
    for chunk in range(2000):
        state = WorkerState()
        outcomes: dict[str, bool] = {}
        barrier = threading.Barrier(2)
        thread = threading.Thread(target=_take_after, args=(barrier, state, chunk, outcomes))
        thread.start()
        barrier.wait()
        outcomes["given back"] = state.reclaim(chunk)
        thread.join()
        assert outcomes["ran here"] != outcomes["given back"]
