"""What the master does with the chunks of a worker it lost, read from a real page.

A local worker may start its next chunk before the master has its last
RESULT (TASK flag PAGE_READ); that RESULT then waits in its progress page.
Here a real process stands for the worker and a real memfd page for its
page, so that each case is exact: the end-to-end deaths are in
test_exactness.py.  Whatever the case, no chunk that started may go back to
the queue untouched (its tasks would run twice), and no finished chunk may
be lost when its RESULT can be read.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from typing import Any

import pytest

from sockpool.common import codec, protocol
from sockpool.common.progress_log import WHOLE_RESULT
from sockpool.common.protocol import Flag, Kind
from sockpool.dispatch import jobs
from sockpool.dispatch.jobs import Chunk, decode_outcome
from sockpool.dispatch.profiling import Profiler
from sockpool.dispatch.records import WorkerRecord
from sockpool.dispatch.scheduler import Scheduler
from sockpool.dispatch.settling import settle_lost
from sockpool.dispatch.task_progress import ProgressPage
from sockpool.errors import WorkerLostError
from sockpool.launchers.base import WorkerProcess
from sockpool.worker.progress import Progress
from sockpool.worker.results import ResultPacker

pytestmark = pytest.mark.timeout(30)


class Process(WorkerProcess):
    """A real child process, watched through its pidfd as a local worker is."""

    host = "localhost"

    def __init__(self) -> None:
        self._popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self._pidfd = os.pidfd_open(self._popen.pid)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def fileno(self) -> int | None:
        return self._pidfd

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def close(self) -> None:
        self._popen.kill()
        self._popen.wait()
        os.close(self._pidfd)


class Job:
    """Records what happened to its chunks."""

    movable = True
    retries = 0
    prefetch = True
    call_name = None
    name_tasks = jobs.Job.name_tasks

    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []

    def deliver(self, chunk: Chunk, label: Any, payload: Any) -> None:
        self.events.append(("delivered", chunk.id, payload))

    def fail(self, chunk: Chunk, error: BaseException) -> None:
        self.events.append(("failed", chunk.id, error))


@pytest.fixture
def worker() -> Any:
    process = Process()
    record = WorkerRecord(0, process, watched=True)
    page = Progress()
    record.progress = ProgressPage.open(page.describe())
    assert record.page_read
    yield record, page, process
    process.close()


def chunk(job: Job, count: int) -> Chunk:
    return Chunk(job=job, first_index=0, count=count, frames=[])  # type: ignore[arg-type]


def finish(page: Progress, done: Chunk, values: list[Any]) -> None:
    """What the worker does once a chunk ran: keep its RESULT, just before sending it."""
    head, _ = protocol.parse(protocol.header(Kind.TASK, 0, 1, done.id))
    frames = ResultPacker("cloudpickle", 1 << 30, None).pack(head, Flag.NONE, values, [], 0.1,
                                                            None)
    page.mark(done.id, done.count, done.count)
    assert page.keep(WHOLE_RESULT, 0, frames)


def start_second_and_die_in_its_third_task(page: Progress, first: Chunk, second: Chunk
                                           ) -> None:
    page.begin(first.id)
    finish(page, first, [1, 2])
    page.begin(second.id, keep_last_result=True)  # RESULT of `first` not acknowledged yet
    assert page.keep(0, 2, codec.dumps(([10, 11], [], 0.0, None)))
    page.mark(second.id, 2, 3)


def test_the_unreceived_result_is_delivered_and_the_next_chunk_resumes_after_its_death(
        worker: Any) -> None:
    record, page, process = worker
    job, scheduler = Job(), Scheduler()
    first, second, third = chunk(job, 2), chunk(job, 4), chunk(job, 4)
    start_second_and_die_in_its_third_task(page, first, second)
    process.kill()
    process._popen.wait()
    settle_lost(record, [first, second, third], [], "killed", "", scheduler, Profiler())
    [(what, ident, payload)] = job.events
    assert (what, ident) == ("delivered", first.id)
    assert decode_outcome(first, record.label, payload)[0] == [1, 2]
    # The second chunk: tasks 0 and 1 recovered, task 2 lost, task 3 requeued to run.
    assert [(r.first, r.tasks) for _, r in second.recovered] == [(0, 2)]
    assert second.settled[0][:2] == (2, 3) and isinstance(second.settled[0][2], WorkerLostError)
    assert list(scheduler.pending) == [second, third] and second.resume == 3


@pytest.fixture(params=["low", "high"], ids=["pidfd-below-1024", "pidfd-above-1024"])
def fds_in_use(request: pytest.FixtureRequest) -> Any:
    """Nothing, or 1100 descriptors open, so that the next ones are numbered past
    1023 (``select.select`` cannot wait on those), as in a cluster of hundreds."""
    if request.param == "low":
        yield 0
        return
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits[0] < 2048:  # (root may raise the hard limit too)
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, max(limits[1], 2048)))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield 1024
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_a_killed_worker_is_waited_for_so_that_its_page_is_read(fds_in_use: int,
                                                                  worker: Any) -> None:
    # restart() and a lost connection kill the process and settle at once:
    # its page is read once the process ended, not treated as unreadable.
    record, page, process = worker
    assert process.fileno() >= fds_in_use
    job, scheduler = Job(), Scheduler()
    first, second = chunk(job, 2), chunk(job, 4)
    start_second_and_die_in_its_third_task(page, first, second)
    process.kill()  # not reaped yet
    settle_lost(record, [first, second], [], "stopped by restart()", "", scheduler, Profiler())
    assert job.events[0][:2] == ("delivered", first.id)
    assert second.resume == 3 and list(scheduler.pending) == [second]


def test_with_its_page_unreadable_neither_of_two_chunks_goes_back_untouched(
        worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that does not end in time: what it held is settled without its
    # page.  It may have started its second chunk, so that one is lost too
    # (or retried), never requeued as if it had not started.
    import sockpool.dispatch.settling as settling

    monkeypatch.setattr(settling, "REAP_SECONDS", 0.05)
    record, page, process = worker
    job, scheduler = Job(), Scheduler()
    first, second, third = chunk(job, 2), chunk(job, 4), chunk(job, 4)
    start_second_and_die_in_its_third_task(page, first, second)
    record.process = _NeverEnds(process)
    settle_lost(record, [first, second, third], [], "killed", "", scheduler, Profiler())
    assert [(what, ident) for what, ident, _ in job.events] == [
        ("failed", first.id), ("failed", second.id)]
    assert list(scheduler.pending) == [third]


def test_an_unreadable_previous_result_fails_as_finished_and_lost(worker: Any) -> None:
    record, page, process = worker
    job, scheduler = Job(), Scheduler()
    first, second = chunk(job, 2), chunk(job, 4)
    page.begin(first.id)
    page.mark(first.id, 2, 2)
    assert page.keep(WHOLE_RESULT, 0, [b"not a RESULT"])
    page.begin(second.id, keep_last_result=True)
    process.kill()
    settle_lost(record, [first, second], [], "killed", "", scheduler, Profiler())
    what, ident, error = job.events[0]
    assert (what, ident) == ("failed", first.id)
    assert "finished on worker 0" in str(error) and "before their results were sent" in str(error)
    # The second was loading when it died: any of its tasks may have run.
    assert [(what, ident) for what, ident, _ in job.events[1:]] == [("failed", second.id)]
    assert "while running tasks 0..3" in str(job.events[1][2])
    assert list(scheduler.pending) == []


class _NeverEnds(WorkerProcess):
    """A process whose end is not seen (stuck in the kernel, say)."""

    host = "localhost"

    def __init__(self, real: Process) -> None:
        self._real = real

    @property
    def pid(self) -> int:
        return self._real.pid

    def poll(self) -> int | None:
        return None

    def fileno(self) -> int | None:
        return self._real.fileno()

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


def test_only_a_chunk_cut_short_gets_its_last_line_ended(worker: Any) -> None:
    # print("A") sends "A" at once and its newline with the RESULT: a chunk whose
    # whole RESULT was kept carries the rest of the line, one that died does not.
    from sockpool.common.protocol import STDOUT

    record, page, process = worker
    job, scheduler = Job(), Scheduler()
    done = chunk(job, 2)
    done.output = [[(STDOUT, "A")]]  # its first write, come ahead
    page.begin(done.id)
    finish(page, done, [1, 2])
    process.kill()
    process._popen.wait()
    settle_lost(record, [done], [], "killed", "", scheduler, Profiler())
    assert [(what, ident) for what, ident, _ in job.events] == [("delivered", done.id)]
    assert done.output == [[(STDOUT, "A")]]


def test_a_chunk_its_worker_died_in_keeps_what_it_wrote_its_last_line_ended(
        worker: Any) -> None:
    from sockpool.common.protocol import STDOUT

    record, page, process = worker
    job, scheduler = Job(), Scheduler()
    cut = chunk(job, 2)
    cut.output = [[(STDOUT, "task 0\n"), (STDOUT, "task 1 cut")]]
    page.begin(cut.id)
    page.mark(cut.id, 0, 1)  # dies in its first task
    process.kill()
    process._popen.wait()
    settle_lost(record, [cut], [], "killed", "", scheduler, Profiler())
    assert cut.settled[0][:2] == (0, 1) and list(scheduler.pending) == [cut]  # task 1 runs on
    assert cut.output == [[(STDOUT, "task 0\n"), (STDOUT, "task 1 cut\n")]]
    assert cut.output_carried == 1  # the next worker's OUTPUT messages come after it


def die_in(lost: Chunk, scheduler: Scheduler, worker_id: int, kept: list[tuple[int, int]],
           start: int, end: int) -> None:
    """A worker runs ``lost``, keeps the results of ``kept`` (first, count) and dies
    with tasks ``[start, end)`` maybe running (none if equal: it died sending)."""
    process = Process()
    record = WorkerRecord(worker_id, process, watched=True)
    page = Progress()
    record.progress = ProgressPage.open(page.describe())
    try:
        page.begin(lost.id)
        for first, count in kept:
            assert page.keep(first, count, codec.dumps(([first] * count, [], 0.0, None)))
        page.mark(lost.id, start, end)
        process.kill()
        settle_lost(record, [lost], [], "killed", "", scheduler, Profiler())
    finally:
        process.close()


def test_a_result_lost_unsent_again_and_again_is_retried_only_as_often_as_asked() -> None:
    # A task that finished, its result (too large for the log: shared memory) lost
    # with its worker, counted each loss as a first death: with retries=1 a task
    # whose worker was killed as it sent the result each time ran 7 times (the
    # faults trial), for as long as the kills went on.
    job, scheduler = Job(), Scheduler()
    job.retries = 1
    lost = chunk(job, 1)
    die_in(lost, scheduler, 0, [], 1, 1)  # it ran, and its worker died sending its RESULT
    assert list(scheduler.pending) == [lost] and job.events == []  # its one retry
    scheduler.pending.clear()
    die_in(lost, scheduler, 1, [], 1, 1)
    assert list(scheduler.pending) == []
    [(what, ident, error)] = job.events
    assert (what, ident) == ("failed", lost.id)
    assert str(error).startswith("task 0 finished on worker 1 (pid "), error
    assert str(error).endswith("but it was lost (killed) before its result was sent"), error
    assert "same chunk" not in str(error)


@pytest.mark.parametrize(("first_death", "first_kept"), [
    (([], 1, 2), 0),  # task 0 finished unkept, task 1 running
    (([(0, 2)], 2, 3), 2),  # tasks 0..1 kept, task 2 running
])
def test_a_task_past_the_ones_a_death_came_to_gets_its_own_retry(
        first_death: tuple[list[tuple[int, int]], int, int], first_kept: int) -> None:
    # Out of retries for the tasks an earlier death came to, a later task dying for
    # the first time (its rerun's earlier tasks finished, their results not kept:
    # an unpicklable value, a full log) failed with them after one run.
    job, scheduler = Job(), Scheduler()
    job.retries = 1
    lost = chunk(job, 5)
    die_in(lost, scheduler, 0, *first_death)
    assert list(scheduler.pending) == [lost] and lost.resume == first_kept
    scheduler.pending.clear()
    died_until = lost.died_until
    die_in(lost, scheduler, 1, [], died_until, died_until + 1)  # the next task dies
    # Those the first death came to are spent; the one past them runs again.
    assert list(scheduler.pending) == [lost] and lost.resume == died_until
    assert [(start, end) for start, end, _ in lost.settled] == [(first_kept, died_until)]
    scheduler.pending.clear()
    die_in(lost, scheduler, 2, [], died_until, died_until + 1)  # and dies again: spent
    assert list(scheduler.pending) == [lost] and lost.resume == died_until + 1
    assert "while running task " + str(died_until) in str(lost.settled[-1][2])
