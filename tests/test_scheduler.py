"""The scheduler as pure bookkeeping: credits, pinning, loss and cancellation."""

from __future__ import annotations

import queue
from concurrent.futures import CancelledError, Future, wait
from typing import Any

import pytest

from sockpool.common.protocol import RECLAIM_MEMORY, Flag
from sockpool.dispatch.jobs import Chunk, FutureJob, Job, StreamJob
from sockpool.dispatch.scheduler import Scheduler

pytestmark = pytest.mark.timeout(60)


class RecordingJob(Job):
    def __init__(self) -> None:
        super().__init__(b"fn", Flag.MAP_ONE)
        self.dropped_chunks: list[Chunk] = []

    def dropped(self, chunk: Chunk) -> None:
        self.dropped_chunks.append(chunk)


def chunks(job: Job, count: int) -> list[Chunk]:
    return [job.chunk(i, 1, [b""]) for i in range(count)]


def two_workers(prefetch: int = 2) -> Scheduler:
    """A scheduler with workers 1 and 2."""
    scheduler = Scheduler(prefetch=prefetch)
    scheduler.add_worker(1)
    scheduler.add_worker(2)
    return scheduler


def test_every_worker_gets_one_before_any_gets_two() -> None:
    scheduler = Scheduler(prefetch=2)
    for worker in (1, 2, 3):
        scheduler.add_worker(worker)
    scheduler.submit(chunks(RecordingJob(), 4))
    assigned = [worker for worker, _ in scheduler.assignments(0.0)]
    assert assigned == [1, 2, 3, 1]


def test_credit_limits_what_a_worker_holds() -> None:
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    work = chunks(RecordingJob(), 5)
    scheduler.submit(work)
    assert [c for _, c in scheduler.assignments(0.0)] == work[:2]
    assert list(scheduler.assignments(0.0)) == []
    assert scheduler.complete(1, work[0].id) is work[0]
    assert [c for _, c in scheduler.assignments(0.0)] == [work[2]]
    assert scheduler.complete(1, 12345) is None


def test_pinned_chunks_go_only_to_their_worker_and_first() -> None:
    scheduler = two_workers(prefetch=1)
    job = RecordingJob()
    shared = chunks(job, 1)
    pinned = job.chunk(0, 1, [b""], pinned=2)
    scheduler.submit([*shared, pinned])
    assert dict((w, c) for w, c in scheduler.assignments(0.0)) == {1: shared[0], 2: pinned}


def test_losing_a_worker_returns_what_it_held() -> None:
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    work = chunks(RecordingJob(), 3)
    scheduler.submit(work)
    list(scheduler.assignments(0.0))
    held, pinned = scheduler.remove_worker(1)
    assert held == work[:2] and pinned == []
    scheduler.requeue(held[1])
    scheduler.add_worker(2)
    assert [c for _, c in scheduler.assignments(0.0)] == [work[1], work[2]]


def test_cancel_drops_waiting_chunks_and_names_busy_workers() -> None:
    scheduler = Scheduler(prefetch=1)
    scheduler.add_worker(1)
    job, other = RecordingJob(), RecordingJob()
    scheduler.submit(chunks(job, 3) + chunks(other, 1))
    list(scheduler.assignments(0.0))
    dropped, running = scheduler.cancel(job)
    assert len(dropped) == 2 and running == {1}
    assert job.cancelled
    scheduler.complete(1, next(iter(scheduler.in_flight[1])))
    assert [c.job for _, c in scheduler.assignments(0.0)] == [other]


def test_a_chunk_whose_job_refuses_to_start_is_dropped() -> None:
    scheduler = Scheduler(prefetch=1)
    scheduler.add_worker(1)
    job = RecordingJob()
    job.cancelled = True
    scheduler.submit(chunks(job, 2))
    assert list(scheduler.assignments(0.0)) == []
    assert len(job.dropped_chunks) == 2 and scheduler.idle()


def test_nothing_is_queued_behind_a_long_running_chunk() -> None:
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    scheduler.add_worker(2)
    job = RecordingJob()
    long_task, *short = chunks(job, 3)
    scheduler.submit([long_task])
    assert list(scheduler.assignments(now=100.0)) == [(1, long_task)]
    scheduler.submit(short)
    # A second later worker 1 is still busy: worker 2 takes one chunk now, two if
    # it is prefetching, but worker 1 gets nothing queued behind its long task.
    assigned = list(scheduler.assignments(now=101.0))
    assert [w for w, _ in assigned] == [2, 2]
    assert scheduler.load(1) == 1


@pytest.mark.parametrize("ahead", [None, "a cancelled submit", "pinned"])
def test_a_timed_chunk_is_never_queued_behind_another(ahead: str | None) -> None:
    # Its time limit runs from when it is sent: queued behind a long task, a task of
    # 0.05 s failed with TaskTimeoutError and its worker was killed.  A chunk dropped
    # at the head of the queue (a cancelled submit) once hid it from that rule, and
    # it did not look at chunks pinned to a worker (a static map's, with timeout=).
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    running = chunks(RecordingJob(), 1)
    timed = Job(b"fn", Flag.MAP_ONE, timeout=1.0).chunk(
        0, 1, [b""], pinned=1 if ahead == "pinned" else None)
    scheduler.submit(running)
    assert [c for _, c in scheduler.assignments(0.0)] == running
    if ahead == "a cancelled submit":
        cancelled: Future[int] = Future()
        cancelled.cancel()
        scheduler.submit([FutureJob(b"fn", cancelled).chunk(0, 1, [b""])])
    scheduler.submit([timed])
    assert list(scheduler.assignments(0.01)) == []
    assert scheduler.complete(1, running[0].id, 0.02) is running[0]
    assert list(scheduler.assignments(0.02)) == [(1, timed)]


def test_nothing_is_queued_behind_chunks_known_to_run_long() -> None:
    # 8 tasks of 0.5 s on 2 workers: once a chunk is seen to take 0.5 s, a worker
    # that frees up gets one chunk, not a pair, so that the map ends 4/4, not 5/3.
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    scheduler.add_worker(2)
    job = RecordingJob()
    work = chunks(job, 8)
    scheduler.submit(work)
    first = list(scheduler.assignments(now=0.0))
    assert [w for w, _ in first] == [1, 2, 1, 2]  # nothing known yet: prefetched
    assert scheduler.complete(1, work[0].id, now=0.5) is work[0]
    assert job.chunk_seconds == pytest.approx(0.5)
    assert list(scheduler.assignments(now=0.5)) == []  # worker 1 runs work[2], holds nothing more
    assert scheduler.complete(1, work[2].id, now=1.0) is work[2]
    assert job.chunk_seconds == pytest.approx(0.5)  # from when work[0] ended, not when sent
    assert [w for w, _ in scheduler.assignments(now=1.0)] == [1]
    assert scheduler.load(1) == 1


def test_a_queued_chunk_given_back_goes_first_in_line_and_its_quota_back() -> None:
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1, quota=10)
    scheduler.add_worker(2)
    first, second, third = chunks(RecordingJob(), 3)
    pinned = RecordingJob().chunk(0, 1, [b""], pinned=1)
    scheduler.submit([first, second])
    assert [(w, c.id) for w, c in scheduler.assignments(0.0)] == [(1, first.id), (2, second.id)]
    scheduler.submit([third, pinned])
    assert [(w, c.id) for w, c in scheduler.assignments(0.01)] == [(1, pinned.id), (2, third.id)]
    assert scheduler.quota[1] == 9
    # Queued behind what each runs; a pinned chunk stays where it is pinned.
    assert [(w, c.id) for w, c in scheduler.queued_behind()] == [(2, third.id)]
    assert scheduler.free_for_the_queue() == []
    assert scheduler.complete(2, second.id, 0.02) is second
    assert scheduler.take_back(2, third.id) is third
    assert scheduler.take_back(2, third.id) is None  # given back once
    assert scheduler.free_for_the_queue() == [2] and list(scheduler.pending) == [third]
    assert [(w, c.id) for w, c in scheduler.assignments(0.03)] == [(2, third.id)]


def test_a_chunk_given_back_from_a_worker_with_a_quota_counts_there_no_more() -> None:
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1, quota=2)
    work = chunks(RecordingJob(), 2)
    scheduler.submit(work)
    assert [w for w, _ in scheduler.assignments(0.0)] == [1, 1]
    assert scheduler.retiring(1)
    scheduler.take_back(1, work[1].id)
    assert not scheduler.retiring(1) and scheduler.quota[1] == 1


def test_nothing_is_asked_back_from_a_worker_holding_more_than_it_remembers_taking() -> None:
    # A worker remembers the last RECLAIM_MEMORY chunks it took, so as to refuse
    # giving back one that ran; with a prefetch that large it could forget one.
    scheduler = Scheduler(prefetch=RECLAIM_MEMORY + 1)
    scheduler.add_worker(1)
    scheduler.submit(chunks(RecordingJob(), RECLAIM_MEMORY))
    assert len(list(scheduler.assignments(0.0))) == RECLAIM_MEMORY
    assert list(scheduler.queued_behind()) == []
    scheduler.complete(1, next(iter(scheduler.in_flight[1])), 0.001)
    assert len(list(scheduler.queued_behind())) == RECLAIM_MEMORY - 2


def test_a_worker_kept_for_a_chunk_asked_back_takes_nothing_else_until_answered() -> None:
    scheduler = two_workers()
    job = RecordingJob()
    work = chunks(job, 6)
    scheduler.submit(work[:4])
    assert [w for w, _ in scheduler.assignments(0.0)] == [1, 2, 1, 2]
    scheduler.submit(work[4:])
    scheduler.complete(1, work[0].id, 0.1)
    scheduler.complete(1, work[2].id, 0.2)
    # Worker 2 has run work[1] for 0.2 s with work[3] behind it, which came before
    # what waits: the idle worker 1 is free for it, not yet for the queue.
    assert scheduler.free_for_the_queue() == [1]
    assert [(w, c.id) for w, c in scheduler.queued_behind(stuck_at=0.2)] == [(2, work[3].id)]
    assert list(scheduler.queued_behind(stuck_at=0.04)) == []  # not yet stuck
    assert scheduler.came_before_the_queue(work[3])
    assert not scheduler.came_before_the_queue(work[5])
    scheduler.keep(1, work[3].id, 0.2)
    assert scheduler.free_for_the_queue() == []
    assert list(scheduler.assignments(0.2)) == []
    # Answered: it goes first in line, and to the worker kept for it.
    scheduler.take_back(2, work[3].id)
    scheduler.release(work[3].id)
    assert [(w, c.id) for w, c in scheduler.assignments(0.201)] == [(1, work[3].id)]


def test_a_kept_worker_takes_what_waits_once_no_answer_came_in_time() -> None:
    # The worker asked is mute (a task holding the GIL): the kept one waits no longer.
    scheduler = two_workers()
    work = chunks(RecordingJob(), 2)
    scheduler.submit(work)
    scheduler.keep(1, 12345, 0.0)
    until = scheduler.kept[1][1]
    assert [w for w, _ in scheduler.assignments(0.0)] == [2, 2]
    scheduler.take_back(2, work[1].id)  # asked back for a worker other than 1
    assert list(scheduler.assignments(until - 0.001)) == []
    assert [(w, c.id) for w, c in scheduler.assignments(until)] == [(1, work[1].id)]


def test_a_chunk_taken_back_goes_first_again_a_pinned_one_to_its_worker_alone() -> None:
    # A chunk its worker refused (Flag.MISSING_BUFFERS) is taken back: a pinned one
    # (run_on_all) went to the shared queue, where another worker could take it.
    scheduler = two_workers(prefetch=1)
    scheduler.quota[2] = 3
    job = RecordingJob()
    pinned = job.chunk(0, 1, [b""], pinned=2)
    shared = chunks(job, 2)
    scheduler.submit([pinned])
    assert list(scheduler.assignments(0.0)) == [(2, pinned)]
    scheduler.submit(shared)
    assert scheduler.take_back(2, pinned.id) is pinned
    assert dict(scheduler.assignments(0.0)) == {1: shared[0], 2: pinned}
    scheduler.complete(2, pinned.id)
    assert dict(scheduler.assignments(0.0)) == {2: shared[1]}
    assert scheduler.take_back(2, shared[1].id) is shared[1]
    assert scheduler.quota[2] == 3  # (taken back, it cost nothing)
    assert dict(scheduler.assignments(0.0)) == {2: shared[1]}


@pytest.mark.parametrize("comes_back", ["given back", "worker lost"])
def test_a_submitted_call_cancelled_as_it_ran_is_not_sent_again(comes_back: str) -> None:
    # joblib's abort and an asyncio cancel interrupt a submit's running call: a
    # chunk its worker gave back meanwhile (asked for an idle worker just before
    # the cancel), or held by a worker then lost, must not run again elsewhere.
    scheduler = Scheduler(prefetch=2)
    scheduler.add_worker(1)
    long, queued = chunks(RecordingJob(), 1)[0], FutureJob(b"fn", Future()).chunk(0, 1, [b""])
    scheduler.submit([long, queued])
    assert [w for w, _ in scheduler.assignments(0.0)] == [1, 1]
    scheduler.add_worker(2)  # idle: what 1 holds queued is asked back for it
    dropped, running = scheduler.cancel(queued.job)
    assert dropped == [] and running == {1}
    if comes_back == "given back":
        assert scheduler.take_back(1, queued.id) is queued
    else:
        held, _ = scheduler.remove_worker(1)
        for chunk in held:
            scheduler.requeue(chunk)
    assert [(w, c) for w, c in scheduler.assignments(0.0) if c is queued] == []
    future = queued.job.future
    with pytest.raises(CancelledError, match="cancelled after it was sent"):
        future.result(timeout=0)


def test_a_submit_cancelled_before_it_was_sent_tells_its_waiters() -> None:
    scheduler = two_workers()
    job = FutureJob(b"fn", Future())
    scheduler.submit([job.chunk(0, 1, [b""])])
    dropped, _ = scheduler.cancel(job)
    for chunk in dropped:
        job.dropped(chunk)
    done, _ = wait([job.future], timeout=5)
    assert done == {job.future} and job.future.cancelled()


def test_a_result_put_as_its_map_is_abandoned_is_not_kept() -> None:
    # The I/O thread checks the flag, then puts; the caller abandons in between
    # (sets the flag, empties the queue): the result stayed queued for nobody.
    job = StreamJob(b"fn", Flag.MAP_ONE)

    class AbandonedMeanwhile(queue.SimpleQueue[Any]):
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            job.events = queue.SimpleQueue()
            job.abandon()  # (the caller, between the I/O thread's check and its put)
            job.events.put(item)

    job.events = AbandonedMeanwhile()
    job.hold(job.chunk(0, 1, [b""]), "worker 0", (memoryview(b"x" * 1024), []))
    job.release()
    assert job.abandoned and job.events.empty()
