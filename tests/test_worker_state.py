"""The worker's shared state between its threads: a chunk asked back (RECLAIM) runs
nowhere twice -- given back only if the main thread has not taken it."""

from __future__ import annotations

import threading

import pytest

from sockpool.common.protocol import RECLAIM_MEMORY
from sockpool.worker.state import Interrupted, WorkerState

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


def test_an_interruption_that_comes_where_it_would_be_swallowed_is_raised_after() -> None:
    # A cancelled chunk that printed was often in a send when the SIGINT came, and
    # pyzmq runs signal handlers as it frees a frame, where an exception cannot pass
    # on: the Interrupted was lost, the task ran on (printing forever, the master
    # storing it all) and the cluster's close waited for it.
    import signal

    state = WorkerState()
    assert state.start_chunk(3)
    assert state.cancel(3)

    class FreedInC:  # an exception raised in __del__ is reported, not raised
        def __del__(self) -> None:
            state.on_sigint(signal.SIGINT, None)

    with pytest.raises(Interrupted), state.interrupts_held():
        FreedInC()
    state.end_chunk()
    with state.interrupts_held():  # none owed any more, nor for the next chunk
        state.on_sigint(signal.SIGINT, None)
    assert state.start_chunk(4)
    with state.interrupts_held():
        pass


def test_an_interruption_held_while_a_send_fails_is_raised_instead_of_the_send_error() -> None:
    import signal

    state = WorkerState()
    assert state.start_chunk(5) and state.cancel(5)
    with pytest.raises(Interrupted), state.interrupts_held():
        state.on_sigint(signal.SIGINT, None)  # held
        raise OSError("the send failed")
    state.end_chunk()
    assert state.start_chunk(6)
    with state.interrupts_held():  # nothing left owed from before
        pass
