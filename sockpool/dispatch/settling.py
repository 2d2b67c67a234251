"""What a lost worker held: delivered, settled, retried or requeued; and what the
workers held when the cluster closes without finishing (I/O thread).

A worker runs its chunks in order.  The chunks it held were, in order: at
most one that finished but whose RESULT never came (a local worker may start
its next chunk before the master has its last RESULT: that RESULT is kept in
its progress page's log), the one it was running, and those that never
started, which go back to the front of the queue untouched.  Its progress
page tells how far the running chunk got: only the task it died in fails (or
is retried); what finished is delivered, the rest is requeued.
"""

from __future__ import annotations

import select
from typing import TypeVar

from ..errors import ClusterClosedError, SockpoolError, add_note
from . import output as relay
from .jobs import Chunk
from .profiling import Profiler
from .records import WorkerRecord, lost_error, result_lost_error, timeout_error
from .scheduler import Scheduler
from .task_progress import ProgressPage, SentResult

#: How long a lost worker's process, just killed, gets to end before what it held
#: is settled without reading its page (a local one ends within milliseconds).
REAP_SECONDS = 1.0

E = TypeVar("E", bound=BaseException)


def settle_lost(record: WorkerRecord, held: list[Chunk], pinned: list[Chunk], how: str,
                tail: str, scheduler: Scheduler, profiler: Profiler) -> None:
    """Settle every chunk a lost worker held (``held``, in order) or had pinned to it."""
    page_read, pidfd = record.page_read, record.process.fileno()
    if record.progress is None:  # a remote worker's host may have read it for us
        record.progress = ProgressPage.reported(record.process)
    elif held and pidfd is not None and record.process.poll() is None:  # just killed
        wait_for_end(pidfd)
    # Read only once the process is gone (one just killed may still move on).
    page = record.progress if record.process.poll() is not None else None
    if page is not None and held and page.previous_chunk() == held[0].id:
        finished, held = held[0], held[1:]  # its RESULT never came: it is in the page
        finished.output += page.previous_output_after(finished, _received(finished))
        if (sent := page.previous_result(finished)) is not None:
            _deliver(record, finished, sent, profiler)
        else:
            finished.output = relay.lines_ended(finished.output)  # (as a running chunk's)
            profiler.lost(finished, record)
            finished.job.fail(finished, result_lost_error(
                record, how, tail, finished, finished.resume, finished.count))
    # Told PAGE_READ, it may have started its second chunk before the master had
    # the first one's RESULT: with its page unread, neither counts as never started.
    running = held[:2] if page is None and page_read else held[:1]
    queued = held[len(running):]
    for chunk in held + pinned:  # a static map's chunks may move elsewhere
        if chunk.job.movable:
            chunk.pinned = None
    never_started = queued + pinned
    for chunk in never_started:
        profiler.lost(chunk, record, ran=(chunk.resume, chunk.resume))
    for chunk in reversed(never_started):  # back to the front of the queue, untouched
        if chunk.pinned is None:
            scheduler.requeue(chunk)
    stranded = [chunk for chunk in never_started if chunk.pinned is not None]
    stranded += [chunk for chunk in running if chunk.pinned is not None and page is not None
                 and page.where(chunk).end <= chunk.resume]  # sent to it, never started
    for chunk in running:  # what it wrote before it was lost still reaches the user
        if page is not None:  # (its OUTPUT messages that died unsent)
            chunk.output += page.output_after(chunk, _received(chunk))
        output_tail = relay.tail(chunk.output)
        if output_tail:  # (the worker's own: since it started, earlier tasks' too)
            tail = (f"{output_tail}\n(what the worker wrote below Python ends with:)\n{tail}"
                    if tail else output_tail)
    measured = [chunk for chunk in running if page is not None
                and chunk.pinned is None and chunk is not record.timed_out]
    for chunk in measured:
        assert page is not None
        _resume(page, record, chunk, how, tail, scheduler, profiler)
    if record.progress is not None:
        record.progress.close()
        record.progress = None
    for chunk in running:
        if chunk not in measured:
            profiler.lost(chunk, record)
    for chunk in dict.fromkeys([c for c in running if c not in measured] + stranded):
        _cut_short(chunk)
        if chunk.pinned is None and chunk.attempts < chunk.job.retries:
            chunk.attempts += 1
            # Where in it the worker died is not known: each task of it counts as
            # having died once (a later loss read from a page must not start afresh).
            chunk.died_until = chunk.count
            if chunk is record.timed_out:
                chunk.retrying = (chunk.count, timeout_error(record, chunk))
            else:
                chunk.retrying = (chunk.count, lost_error(record, how, tail, chunk))
            scheduler.requeue(chunk)
        elif chunk is record.timed_out:
            chunk.job.fail(chunk, _ran(timeout_error(record, chunk), chunk))
        else:
            error = lost_error(record, how, tail, chunk, ran=chunk not in stranded)
            chunk.job.fail(chunk, error if chunk in stranded else _ran(error, chunk))


def _ran(error: E, chunk: Chunk) -> E:
    """The error of a task out of retries says how often it ran (what it describes is
    the last run; those before it were lost too).  Only for a chunk of one task (as a
    timed one is): in a longer one, ``attempts`` counts the losses of a range of tasks,
    not the runs of each."""
    if chunk.job.retries and chunk.count == 1 and chunk.attempts:
        add_note(error, f"sockpool: it ran {chunk.attempts + 1} times "
                        f"(retries={chunk.job.retries}); this error is the last run's")
    return error


def _cut_short(chunk: Chunk) -> None:
    """A chunk its worker died running: what it wrote stays with it, written by its
    caller in order with its outcome, a last line cut short ended (not for a chunk
    whose whole RESULT was kept: that carries the rest of the line)."""
    chunk.output = relay.lines_ended(chunk.output)
    chunk.output_carried = len(chunk.output)


def _received(chunk: Chunk) -> int:
    """The OUTPUT messages of ``chunk`` that came from the worker just lost (each one
    held in its output since the workers lost before)."""
    return len(chunk.output) - chunk.output_carried


def wait_for_end(pidfd: int, seconds: float = REAP_SECONDS) -> None:
    """Wait, at most ``seconds``, for a process's pidfd to say it ended (``select.poll``:
    a pidfd may be numbered past ``select.select``'s 1023)."""
    waiter = select.poll()
    waiter.register(pidfd, select.POLLIN)
    waiter.poll(seconds * 1000)


def _deliver(record: WorkerRecord, chunk: Chunk, sent: SentResult, profiler: Profiler) -> None:
    """A RESULT read back from the lost worker's log: as if it had come."""
    if profiler.active:
        profiler.returned(chunk, record, sent.times, sent.nbytes, cancelled=False)
    record.tasks_done += chunk.count - chunk.resume
    chunk.job.deliver(chunk, record.label, sent.payload)


def _resume(page: ProgressPage, record: WorkerRecord, chunk: Chunk, how: str, tail: str,
            scheduler: Scheduler, profiler: Profiler) -> None:
    """Settle what a lost worker finished and died in; requeue the rest of the chunk.

    The results it kept in its log are delivered (its whole RESULT, if it
    died with that unsent).  With ``retries`` left, the chunk reruns from its
    first task whose result is not here (one that finished too late to be
    kept, and the task it died in).
    """
    progress = page.where(chunk)
    if (sent := progress.sent_result(chunk)) is not None:
        _deliver(record, chunk, sent, profiler)
        return
    _cut_short(chunk)
    profiler.lost(chunk, record, ran=(progress.kept, progress.end),
                  running=(progress.start, progress.started) if progress.started else None)
    chunk.recovered += [(record.label, kept) for kept in progress.records]
    before = chunk.died_until
    chunk.resume, start, end = progress.kept, progress.start, progress.end
    # The tasks to run again are those from resume to end: if no death came to
    # them before, this is their first (not judged from start: tasks that finished
    # with their results lost, again and again, were each time a first death).
    if chunk.resume >= before:
        chunk.attempts = 0
    chunk.died_until = max(before, end)
    if end > chunk.resume and chunk.attempts < chunk.job.retries:
        chunk.attempts += 1
        chunk.retrying = (end, lost_error(record, how, tail, chunk, chunk.resume, end))
    elif end > chunk.resume:
        # Out of retries: those an earlier death came to fail; any past them (their
        # first death, their results not kept) get their first rerun.
        spent = min(end, before) if chunk.job.retries else end
        if start > chunk.resume:  # finished, but their results died unsent
            lost_until = min(start, spent)
            chunk.settled.append((chunk.resume, lost_until, _ran(result_lost_error(
                record, how, tail, chunk, chunk.resume, lost_until, beside_a_death=end > start),
                chunk)))
        if spent > start:
            chunk.settled.append((start, spent, _ran(
                lost_error(record, how, tail, chunk, start, spent), chunk)))
        chunk.resume, chunk.attempts = spent, 1
        if end > spent:
            chunk.retrying = (end, lost_error(record, how, tail, chunk, spent, end))
    if chunk.resume < chunk.count:  # (untouched if it never started)
        scheduler.requeue(chunk)
    elif len(chunk.settled) == 1 and chunk.settled[0][:2] == (0, chunk.count):
        chunk.job.fail(chunk, chunk.settled[0][2])
    else:
        chunk.job.deliver(chunk, record.label, None)


def fail_for_good(chunk: Chunk, error: SockpoolError) -> None:
    """The cluster cannot go on (no worker left, say): ``chunk``'s tasks fail with
    ``error``, but those a worker died running, queued to run again (``retries=``),
    fail with that loss, as without ``retries`` (``except WorkerLostError`` sees them)."""
    if chunk.retrying is None or chunk.retrying[0] <= chunk.resume:
        chunk.job.fail(chunk, error)
        return
    until, loss = chunk.retrying
    add_note(loss, f"sockpool: it was to run again (retries=), but {error}")
    if chunk.resume == 0 and until == chunk.count and not (chunk.settled or chunk.recovered):
        chunk.job.fail(chunk, loss)
        return
    chunk.settled.append((chunk.resume, until, loss))
    chunk.resume = until
    chunk.job.fail(chunk, error)


def write_off_everything(scheduler: Scheduler) -> None:
    """Closing without finishing: cancel what waits (fail a map's), fail what runs."""
    for chunk in scheduler.drain():
        if not chunk.job.cancel_waiting(chunk):
            chunk.job.fail(chunk, ClusterClosedError("the cluster was closed before this task ran"))
    for worker_id in scheduler.workers:
        for chunk in scheduler.remove_worker(worker_id)[0]:
            chunk.output = relay.lines_ended(chunk.output)  # a task cut short, a line too
            chunk.job.fail(chunk, ClusterClosedError(
                "the cluster was closed while this task was on its worker"))
