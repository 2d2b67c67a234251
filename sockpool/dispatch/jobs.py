"""Jobs and chunks: what the API side hands to the I/O thread, and how results come back.

A *job* is one call (a map, a ``submit``, a ``run_on_all``): one function
payload and the settings of the call.  It is cut into *chunks*, the unit a
worker receives: a pickled list of argument items (or one call), the index of
its first task, and how many tasks it holds.

The I/O thread calls a job's ``hold``/``release``/``deliver``/``fail``/``dropped``
hooks; they never block.  A RESULT is held until the I/O thread's turn ends
(:class:`HeldResults`); what else a map learns in that turn (a failed or
dropped chunk, a lost worker's results) goes behind it, else at once.  A
:class:`StreamJob` (maps, ``run_on_all``) only queues what arrives, and the
caller's thread decodes it, so user unpickling never runs on the I/O thread.
A :class:`FutureJob` (``submit``) decodes its one small result there to
complete its ``concurrent.futures.Future``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..capture.pickling import FunctionPayload
from ..common import codec, task_errors
from ..common.progress_log import Record
from ..common.protocol import TIMEOUT_SLACK, Flag
from ..errors import ClusterClosedError, RemoteError, add_note
from . import output as relay

logger = logging.getLogger("sockpool")
_job_ids = itertools.count(1)
_chunk_ids = itertools.count(1)


class WorkerLabel(NamedTuple):
    """Who ran a chunk, for notes and messages."""

    worker_id: int
    host: str
    pid: int

    def __str__(self) -> str:
        return f"worker {self.worker_id} ({where(self.pid, self.host)})"


def where(pid: int, host: str) -> str:
    """``pid 123 on node1``, or ``on node1`` for a worker whose pid is not known yet."""
    return f"pid {pid} on {host}" if pid else f"on {host}"


#: The label of a chunk delivered with no RESULT of its own (see :meth:`Job.fail`).
NOBODY = WorkerLabel(-1, "", 0)


@dataclass(eq=False)
class Chunk:
    """A run of consecutive tasks of one job, sent to one worker as one message."""

    job: Job
    first_index: int
    count: int
    frames: list[Any]
    pinned: int | None = None  # a worker id: run_on_all and setup chunks go there only
    #: Times a worker died running it, counted against ``retries``: those of the
    #: tasks it died in last (a death further on is another task's first).
    attempts: int = 0
    #: The offset past the tasks a worker last died running (see ``attempts``).
    died_until: int = 0
    #: Queued to run again after a worker died running it (``retries=``): up to
    #: which offset its tasks did, and that loss, their error should no worker be left.
    retrying: tuple[int, BaseException] | None = None
    sent_at: float = 0.0  # time.monotonic() when it was handed to a worker
    #: time.monotonic() when its worker said its tasks started (a timed chunk's STARTED)
    started_at: float | None = None
    submitted: float = 0.0  # time.time() when the caller handed it over, if profiled
    output: list[Any] = field(default_factory=list)  # relay batches that came ahead
    #: Of ``output``, the batches written on workers lost running the chunk before
    #: (its OUTPUT messages from the worker it is on now come after them).
    output_carried: int = 0
    id: int = field(default_factory=lambda: next(_chunk_ids))
    #: Its tasks before this offset were settled when a worker died running the
    #: chunk; the next worker runs it from here (TASK's ``skip``).
    resume: int = 0
    #: What those tasks came to: ``(start, end, error)`` offsets, each task of the range failed,
    settled: list[tuple[int, int, BaseException]] = field(default_factory=list)
    #: and the results of those that finished, read from the dead worker's log
    #: (unpickled by the caller's thread, as a RESULT is), with who ran them.
    recovered: list[tuple[WorkerLabel, Record]] = field(default_factory=list)


class TaskFailure(NamedTuple):
    """A task's exception, ready to raise or return, and the task's index."""

    task_index: int
    error: BaseException


class Job:
    """One call's function payload and settings; subclasses say where results go."""

    def __init__(self, function: FunctionPayload, flags: int, retries: int = 0,
                 timeout: float | None = None, seed: tuple[int, int | None] | None = None
                 ) -> None:
        self.id = next(_job_ids) & 0xFFFFFFFF
        self.function = function
        self.timeout = timeout  # per task, in seconds
        self.seed = seed  # (entropy, the cluster's call number or None), see rng.py
        self.movable = False  # pinned chunks may move to another worker if theirs is lost
        self.flags = (flags | Flag.TIMED) if timeout else flags
        self.retries = retries
        self.cancelled = False
        #: False: sent only to an idle worker, and nothing is queued behind it
        #: (joblib's batches, whose next one goes to whichever worker frees up).
        self.prefetch = True
        #: How long its last chunk ran on a worker (the scheduler queues nothing
        #: behind a job whose chunks run long).
        self.chunk_seconds = 0.0
        #: What must live while the job does (the Cluster of a call made on one that
        #: the caller dropped: ``Cluster(n=2).submit(f, 1)``).
        self.keep: object = None
        #: How messages name a job of one call ("the call to f"); None: by task index.
        self.call_name: str | None = None
        self._held: list[tuple[Chunk, WorkerLabel, Payload]] = []  # see hold

    def name_tasks(self, first: int, last: int) -> str:
        """How messages name this job's tasks ``first..last``: "task 3", "tasks 3..5",
        or the call's name for a job of one call (a submit's index is always 0)."""
        if self.call_name is not None:
            return self.call_name
        return f"task {first}" if first == last else f"tasks {first}..{last}"

    def deadline(self, chunk: Chunk) -> float | None:
        """When ``chunk`` (sent) overruns this job's time limit, if it has one: the
        limit of its tasks from when its worker said they started; until it says so,
        loading their function and arguments may take as long again."""
        if not self.timeout:
            return None
        limit = self.timeout * chunk.count + TIMEOUT_SLACK
        if chunk.started_at is None:
            return chunk.sent_at + self.timeout * chunk.count + limit
        return chunk.started_at + limit

    def chunk(self, first_index: int, count: int, frames: list[Any], pinned: int | None = None
              ) -> Chunk:
        """Make a chunk of this job."""
        return Chunk(self, first_index, count, frames, pinned)

    # -- hooks run on the I/O thread; never block -----------------------------------

    def start(self, chunk: Chunk) -> bool:
        """The chunk is about to be sent; False drops it (its future was cancelled)."""
        return not self.cancelled

    def deliver(self, chunk: Chunk, label: WorkerLabel, payload: Payload | None) -> None:
        """A RESULT arrived for ``chunk``."""
        raise NotImplementedError

    def hold(self, chunk: Chunk, label: WorkerLabel, payload: Payload) -> bool:
        """A RESULT arrived for ``chunk`` in a turn of the I/O thread that may read more:
        keep it until :meth:`release`, so that a caller waiting on several results
        wakes once for the turn's; True when it is the first kept."""
        self._held.append((chunk, label, payload))
        return len(self._held) == 1

    def release(self) -> None:
        """Deliver what :meth:`hold` kept (the I/O thread's turn ends), one at a time:
        should one raise, the rest stay for the next release."""
        while self._held:
            self.deliver(*self._held.pop(0))

    def fail(self, chunk: Chunk, error: BaseException) -> None:
        """``chunk`` cannot complete (worker lost, cluster closed): its tasks fail with
        ``error``, but for those settled when a worker died running it before, whose
        kept results and own errors are delivered as they are."""
        if not (chunk.settled or chunk.recovered):
            self._fail(chunk, error)
            return
        chunk.settled.append((chunk.resume, chunk.count, error))
        chunk.resume = chunk.count
        self.deliver(chunk, chunk.recovered[-1][0] if chunk.recovered else NOBODY, None)

    def _fail(self, chunk: Chunk, error: BaseException) -> None:
        """Every task of ``chunk`` failed with ``error``."""
        raise NotImplementedError

    def dropped(self, chunk: Chunk, payload: Payload | None = None) -> None:
        """``chunk`` was cancelled before or while it ran (``payload``: its RESULT, then)."""

    def cancel_waiting(self, chunk: Chunk) -> bool:
        """Cancel ``chunk``, which no worker got, as a cancelled future (a submit's);
        whether it was (a map's is not: its caller is failed instead)."""
        return False


#: What a StreamJob's caller is told of a chunk: ``(chunk, worker or None, payload or error)``.
Event = tuple[Chunk, WorkerLabel | None, Any]
#: A RESULT as the I/O thread hands it on: the body of its first frame and its buffers
#: (``deliver`` gets None when every task was settled as workers died running it).
Payload = tuple[memoryview, list[Any]]


class Outcome(NamedTuple):
    """A decoded RESULT."""

    values: list[Any]
    failures: list[TaskFailure]
    seconds: float  # time the chunk computed on its worker
    output: list[Any]  # relay batches, in order: those that came ahead, then the last


def decode_outcome(chunk: Chunk, label: WorkerLabel, payload: Payload | None) -> Outcome:
    """Unpickle a RESULT: values, each failed task's rebuilt exception, time and output.

    The tasks a chunk settled when a worker died running it (``chunk.settled``,
    ``chunk.recovered``) come first; the RESULT holds those from ``chunk.resume`` on.
    """
    if not chunk.resume and not chunk.settled and payload is not None:
        return _decode(chunk, label, payload, chunk.first_index, chunk.count)
    if payload is None:
        head = Outcome([None] * chunk.count, [], 0.0, chunk.output)
    else:
        rest = _decode(chunk, label, payload, chunk.first_index + chunk.resume,
                       chunk.count - chunk.resume)
        head = Outcome([None] * chunk.resume + rest.values, rest.failures, rest.seconds,
                       rest.output)
    values = head.values
    settled: list[TaskFailure] = []
    for ran_on, record in chunk.recovered:
        kept = _decode(chunk, ran_on, (memoryview(record.frames[0]), record.frames[1:]),
                       chunk.first_index + record.first, record.tasks)
        values[record.first:record.first + record.tasks] = kept.values
        settled += kept.failures
    settled += [TaskFailure(chunk.first_index + offset, error)
                for start, end, error in chunk.settled for offset in range(start, end)]
    settled.sort(key=lambda failure: failure.task_index)
    return head._replace(values=values, failures=settled + head.failures)


def _decode(chunk: Chunk, label: WorkerLabel, payload: Payload, first_index: int,
            count: int) -> Outcome:
    """Decode a RESULT for ``count`` tasks from ``first_index`` on."""
    try:
        values, errors, seconds, batch, *kept = codec.loads(*payload)
        if kept:  # the chunk's first slices, pickled as the worker kept them
            values, errors = _join_kept(kept[0], values, errors)
    except BaseException as exc:  # SystemExit from a class's unpickling too, but in the
        task_errors.raise_if_the_users(exc)  # main thread (a signal handler's sys.exit())
        tasks = chunk.job.name_tasks(first_index, first_index + count - 1)
        problem = RemoteError(codec.describe(exc), f"the results of {tasks} could not be "
                              f"unpickled in the master: {type(exc).__name__}: {exc}")
        add_note(problem, f"sockpool: {tasks} finished on {label}")
        # Each task of the chunk failed: none of its results can be told apart.
        failures = [TaskFailure(first_index + i, problem) for i in range(count)]
        return Outcome([None] * count, failures, 0.0, chunk.output)
    failures = []
    for offset, packed in errors:
        index = first_index + offset
        failures.append(TaskFailure(index, task_errors.unpack_exception(
            packed, f"sockpool: {chunk.job.name_tasks(index, index)} failed on {label}")))
    if len(values) < count and failures:
        # The chunk stopped early (its payload failed to load, or stop-on-error):
        # the tasks it never ran share its first failure.
        first = failures[0].error
        failures += [TaskFailure(first_index + i, first) for i in range(len(values), count)]
        values = values + [None] * (count - len(values))
    output = [*chunk.output, batch] if batch is not None else chunk.output
    return Outcome(values, failures, seconds, output)


def _written(payload: Payload) -> list[Any]:
    """The output a cancelled chunk's RESULT carries (it carries no results)."""
    try:
        batch = codec.loads(*payload)[3]
    except BaseException:  # nothing to show rather than a failed I/O thread
        return []
    return [batch] if batch is not None else []


def _join_kept(slices: list[tuple[int, int, list[Any]]], values: list[Any],
               errors: list[tuple[int, bytes]]) -> tuple[list[Any], list[tuple[int, bytes]]]:
    """A RESULT's values and errors, after those of the slices it carries pickled."""
    first_values: list[Any] = []
    first_errors: list[tuple[int, bytes]] = []
    for start, _, frames in slices:
        kept_values, kept_errors, _, _ = codec.loads(frames[0], frames[1:])
        first_values += kept_values
        first_errors += [(start + offset, packed) for offset, packed in kept_errors]
    return first_values + values, first_errors + errors


class StreamJob(Job):
    """Results are queued as they are released; the calling thread decodes them.

    Queue items are lists of events: ``(chunk, label, frames)`` for a result,
    ``(chunk, None, error)`` for a chunk that failed as a whole, ``(chunk, None,
    None)`` for one dropped by cancellation.  The results of one turn of the
    I/O thread go as one list, so the caller wakes once for them.
    """

    def __init__(self, function: FunctionPayload, flags: int, retries: int = 0,
                 timeout: float | None = None, seed: tuple[int, int | None] | None = None
                 ) -> None:
        super().__init__(function, flags, retries, timeout, seed)
        self.events: queue.SimpleQueue[list[Event]] = queue.SimpleQueue()
        self.abandoned = False

    def deliver(self, chunk: Chunk, label: WorkerLabel, payload: Payload | None) -> None:
        self._tell((chunk, label, payload))  # (a lost worker's results, settled in a turn)

    def release(self) -> None:  # the turn's results as one event list: one wake-up
        held, self._held = self._held, []
        if held and not self.abandoned:
            self._put(list(held))

    def _put(self, events: list[Event]) -> None:
        self.events.put(events)
        if self.abandoned:  # as it was put: the caller may have emptied the queue before
            self.abandon()

    def abandon(self) -> None:
        """Nobody reads this job's events any more (its map raised, or was left): drop
        those queued and those to come, and the results (shared memory) with them."""
        self.abandoned = True
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.get_nowait()

    def _fail(self, chunk: Chunk, error: BaseException) -> None:
        self._tell((chunk, None, error))

    def dropped(self, chunk: Chunk, payload: Payload | None = None) -> None:
        if payload is not None:  # cancelled as it ran: what its tasks wrote still shows
            chunk.output = [*chunk.output, *_written(payload)]
        self._tell((chunk, None, None))

    def _tell(self, event: Event) -> None:
        # Behind the results held this turn: the caller learns of the chunks in the
        # order the I/O thread did (a fail-fast map raises the error read first).
        if self.abandoned:
            return
        if self._held:
            self._held.append(event)  # type: ignore[arg-type]  # released as events
        else:
            self._put([event])


class HeldResults:
    """The jobs holding results the I/O thread read in its current turn (see
    :meth:`Job.hold`), each told once the turn ends (I/O thread only)."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []

    def hold(self, chunk: Chunk, label: WorkerLabel, payload: Payload) -> None:
        """Keep a RESULT that came this turn until :meth:`release`."""
        if chunk.job.hold(chunk, label, payload):
            self._jobs.append(chunk.job)

    def release(self) -> None:
        """Tell each job what it got this turn (its caller wakes once for it all)."""
        # One at a time: what an escaping BaseException (a done-callback's SystemExit)
        # leaves here, the teardown still tells.
        while self._jobs:
            job = self._jobs.pop(0)
            try:
                job.release()
            except Exception:  # one result that cannot be told must not stop the rest
                logger.exception("sockpool: a result could not be delivered")


class FutureJob(Job):
    """One call whose outcome completes a ``concurrent.futures.Future``.

    Every hook runs on the I/O thread, and the Future is thread-safe itself, so
    no lock is needed here.
    """

    def __init__(self, function: FunctionPayload, future: Future[Any],
                 seed: tuple[int, int | None] | None = None, timeout: float | None = None
                 ) -> None:
        super().__init__(function, Flag.CALL, timeout=timeout, seed=seed)
        self.future = future

    def name_tasks(self, first: int, last: int) -> str:
        # Its one task is always task 0: messages name the call (only when they are made).
        return self.call_name or f"the call to {self.function.name or 'the function'}"

    def start(self, chunk: Chunk) -> bool:
        # running() already: a retry after its first worker was lost, or a chunk its
        # worker gave back; not if it was cancelled meanwhile (an abort, an asyncio
        # cancel), which would run again what it had just interrupted.
        return super().start(chunk) and (
            self.future.running() or self.future.set_running_or_notify_cancel())

    def deliver(self, chunk: Chunk, label: WorkerLabel, payload: Payload | None) -> None:
        values, failures, _, output = decode_outcome(chunk, label, payload)
        try:
            relay.emit(output)
        except Exception as exc:  # a warning under an "error" filter: the call raises it
            self._settle(error=exc)
            return
        if failures:
            self._settle(error=failures[0].error)
        else:
            self._settle(value=values[0])

    def _fail(self, chunk: Chunk, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # (a warning under -W error: the failure wins)
            relay.emit(chunk.output)  # what it wrote on a worker lost running it
        self._settle(error=error)

    def cancel_waiting(self, chunk: Chunk) -> bool:
        if not self.future.cancel():  # running: a retry, or a chunk given back
            return False
        self.future.set_running_or_notify_cancel()  # tells wait() and as_completed()
        self.dropped(chunk)
        return True

    def dropped(self, chunk: Chunk, payload: Payload | None = None) -> None:
        if payload is not None:  # interrupted as it ran: what it wrote still shows
            with contextlib.suppress(Exception):
                relay.emit(relay.lines_ended([*chunk.output, *_written(payload)]))
        if self.future.done():
            return
        if self.future.cancel():
            self.future.set_running_or_notify_cancel()  # tells wait() and as_completed()
        else:
            self.future.set_exception(
                CancelledError("the task was cancelled after it was sent to a worker")
                if self.cancelled else
                ClusterClosedError("the task was interrupted because its cluster was shut down"))

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        future = self.future
        if future.done() or not (future.running() or future.set_running_or_notify_cancel()):
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
