"""What the master knows of each worker, and the messages that describe its fate."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..common import protocol
from ..common.config import CurveKeys
from ..errors import LaunchError, TaskTimeoutError, WorkerLostError
from ..launchers.base import WorkerProcess
from .clock import ClockSync
from .function_mirror import FunctionMirror
from .jobs import Chunk, WorkerLabel, where
from .task_progress import ProgressPage

#: Bytes of function payloads a worker caches (it drops the least recently used).
FUNCTION_CACHE_BYTES = 512 * 1024 * 1024
#: A heartbeat that is not a clock probe: it only says the master is there.
_PLAIN_HEARTBEAT = protocol.header(protocol.Kind.HEARTBEAT)


class WorkerState(enum.Enum):
    """A worker's state as the master sees it.

    STARTING -> SETUP -> READY [-> RETIRING] -> LOST | STOPPED.  SETUP runs
    ``Cluster(setup=)`` and loads the exports (with neither, it passes at once);
    RETIRING is a worker recycled by
    ``max_tasks_per_worker`` or ``max_worker_memory``; a worker may be LOST or
    STOPPED from any earlier state.
    """

    STARTING = "starting"  # launched; not yet proved it holds the cluster's token
    SETUP = "setup"  # connected; running the setup function, or loading the exports
    READY = "ready"  # takes tasks
    RETIRING = "retiring"  # finishes what it holds, then is stopped and replaced
    LOST = "lost"  # ended or fell silent unasked
    STOPPED = "stopped"  # ended because the cluster stopped it

    @property
    def alive(self) -> bool:
        """Whether a worker in this state may still send or take messages."""
        return self in (WorkerState.STARTING, WorkerState.SETUP, WorkerState.READY,
                        WorkerState.RETIRING)

    @property
    def starting(self) -> bool:
        """Whether the worker has yet to become ready."""
        return self in (WorkerState.STARTING, WorkerState.SETUP)


class WorkerInfo(NamedTuple):
    """One worker, as :attr:`sockpool.Cluster.workers` reports it."""

    id: int
    host: str
    pid: int
    state: str  # "starting", "setup", "idle" or "busy"


class WorkerUsage(NamedTuple):
    """What a worker did and holds, as it last reported (None: not reported yet)."""

    tasks_done: int
    cpu_seconds: float | None
    resident_bytes: int | None


class WorkerRecord:
    """What the master knows of one worker."""

    def __init__(self, worker_id: int, process: WorkerProcess, *, watched: bool) -> None:
        """``watched``: its launcher watches its process, so its silence does not count."""
        self.id = worker_id
        self.process = process
        # Its heartbeats need no answer: the master sees its process end and reads
        # its use itself.  A localhost worker of an ssh cluster must answer: its
        # launcher judges all its workers by their silence.
        self.quiet = process.same_host and watched
        self.state = WorkerState.STARTING
        self.host = process.host
        self.pid = process.pid
        self.data_identity = protocol.data_identity(worker_id)
        self.control_identity = protocol.control_identity(worker_id)
        self.control_ready = False
        self.started_at = time.monotonic()
        self.ready_at: float | None = None  # when it began to take tasks
        self.last_heard = self.started_at
        self.functions = FunctionMirror(FUNCTION_CACHE_BYTES)  # what it caches
        self.setup_chunk: Chunk | None = None
        self.has_exports = False  # the cluster's exports went to it (after its setup)
        self.failure: LaunchError | None = None  # why it could not start, when known
        self.exited_at: float | None = None  # when its process was first seen ended
        self.left_at: float | None = None  # when the master stopped counting on it
        self.timed_out: Chunk | None = None  # the chunk whose time limit it overran
        #: its tasks had all returned in time: what overran was writing their results
        self.overran_writing = False
        #: the chunk past its time limit whose stack it was asked for, and when
        self.stacks_asked: tuple[Chunk, float] | None = None
        self.retired_at: float | None = None  # when a retiring worker was told to stop
        self.keys: CurveKeys | None = None  # its CURVE keys, when the transport has them
        self.shared_memory = False  # it maps our segments and we map its (same machine)
        self.results_received = 0  # RESULT messages it sent us, which TASK and ACK tell it
        self.progress: ProgressPage | None = None  # how far its chunk got (same host)
        self.clock = ClockSync(process.same_host)  # its clock's offset from ours
        self.resident_bytes: int | None = None  # as it last reported them (another host)
        self.cpu_seconds: float | None = None
        self.tasks_done = 0

    def heartbeat(self) -> bytes:
        """The master's heartbeat to this worker: a clock probe, which it answers
        with its clock and use; or, for a quiet worker, a plain one that wants no answer."""
        return _PLAIN_HEARTBEAT if self.quiet else protocol.clock_probe()

    def heard_beat(self, head: protocol.Header, body: memoryview) -> None:
        """Take its heartbeat: the answer to a clock probe carries its clock and use."""
        reply = protocol.parse_clock_reply(head, body)
        if reply is not None:
            self.clock.sample(reply, time.time_ns())
            self.resident_bytes = reply.resident_bytes if reply.resident_bytes >= 0 else None
            self.cpu_seconds = reply.cpu_seconds

    def usage(self) -> WorkerUsage:
        """Its tasks done, CPU seconds and resident bytes, as read or last reported."""
        if self.process.same_host:
            cpu, memory = self.process.usage() or (None, None)
            return WorkerUsage(self.tasks_done, cpu, memory)
        return WorkerUsage(self.tasks_done, self.cpu_seconds, self.resident_bytes)

    @property
    def label(self) -> WorkerLabel:
        """Who it is, as messages name it ("worker 1 (pid 123 on host)")."""
        return WorkerLabel(self.id, self.host, self.pid)

    @property
    def alive(self) -> bool:
        """Whether the worker may still send or take messages."""
        return self.state.alive

    @property
    def page_read(self) -> bool:
        """Whether the master maps this worker's progress page and can wait for its
        process to end (a pidfd): its TASKs are flagged ``PAGE_READ``."""
        return self.progress is not None and self.process.fileno() is not None


def snapshot(records: Iterable[WorkerRecord], load: Callable[[int], int]) -> list[WorkerInfo]:
    """Each worker that is not gone: id, host, pid, state (ready ones: busy or idle)."""
    rows = []
    for record in records:
        if record.alive:
            state = record.state.value
            if record.state is WorkerState.READY:
                state = "busy" if load(record.id) else "idle"
            rows.append(WorkerInfo(record.id, record.host, record.pid, state))
    return rows


def lost_error(record: WorkerRecord, how: str, tail: str, chunk: Chunk,
               start: int | None = None, end: int | None = None, ran: bool = True
               ) -> WorkerLostError:
    """The error of a chunk (its tasks ``[start, end)``; by default those it had left to
    run) whose worker was lost (``ran``: running them; else before they started, a
    chunk pinned to it: ``run_on_all``'s)."""
    first = chunk.first_index + (chunk.resume if start is None else start)
    last = chunk.first_index + (chunk.count if end is None else end) - 1
    tasks = chunk.job.name_tasks(first, last)
    message = (f"{record.label} was lost ({how}) while running {tasks}" if ran else
               f"{record.label} was lost ({how}) before it ran {tasks} (run_on_all runs on "
               "each worker there as it is called)")
    if tail:  # (what its tasks wrote, relayed, then its own stderr)
        message += f"\nits output ends with:\n{tail}"
    return WorkerLostError(message, worker_id=record.id, host=record.host, pid=record.pid,
                           exit_status=how, stderr_tail=tail)


def result_lost_error(record: WorkerRecord, how: str, tail: str, chunk: Chunk, start: int,
                      end: int, beside_a_death: bool = False) -> WorkerLostError:
    """The error of tasks that finished on a worker whose death took their results along
    (``beside_a_death``: in the chunk of a task it died running)."""
    first, last = chunk.first_index + start, chunk.first_index + end - 1
    tasks = chunk.job.name_tasks(first, last)
    results = "its result was" if first == last else "their results were"
    message = f"{tasks} finished on {record.label}, but it was lost ({how}) before {results} sent"
    if beside_a_death:
        they = "it" if first == last else "they"
        message += f" ({they} ran in the same chunk as the task it died in)"
    return WorkerLostError(message, worker_id=record.id, host=record.host, pid=record.pid,
                           exit_status=how, stderr_tail=tail)


def timeout_error(record: WorkerRecord, chunk: Chunk) -> TaskTimeoutError:
    """The error of a chunk that ran past its job's time limit."""
    tasks = chunk.job.name_tasks(chunk.first_index, chunk.first_index + chunk.count - 1)
    limit = f"{chunk.job.timeout:g} s (timeout=)"
    if chunk.started_at is None:
        what = (f"loading the function and arguments of {tasks} (and the exports sent "
                f"before it) took longer than twice its {limit}")
    elif record.overran_writing:
        results = "its result was" if chunk.count == 1 else "their results were"
        what = f"{tasks} returned, but {results} still being written past twice its {limit}"
    else:
        what = f"{tasks} ran longer than {limit}"
    message = f"{what} on {record.label}; the worker was stopped " + (
        "and is replaced" if record.process.replaceable else
        "(its launcher starts no replacement)")
    stack = task_frames(stacks) if (stacks := record.process.stacks()) else ""
    if stack:
        message += f"\nwhere it was when stopped:\n{stack}"
    return TaskTimeoutError(message, timeout=chunk.job.timeout, worker_id=record.id,
                            host=record.host, pid=record.pid, stack=stack)


#: The frames below a task on a worker's main thread: its loop and entry point.
_WORKER_FRAMES = re.compile(r'  File "(?:.*/sockpool/worker/(?:runner|loop|main|__main__)\.py'
                            r'|<frozen runpy>|.*/runpy\.py)", line \d+ in '
                            r'|  File "<string>", line 1 in <module>$')


def task_frames(stacks: str) -> str:
    """A worker's stack as faulthandler wrote it, without the frames of the worker's
    own loop below the task, and a frame repeated over and over (deep recursion)
    shown three times and counted, as Python's tracebacks do."""
    lines = stacks.splitlines()
    while len(lines) > 2 and _WORKER_FRAMES.match(lines[-1]):
        lines.pop()
    shown: list[str] = []
    repeats = 0
    for line in [*lines, None]:
        if shown and line == shown[-1 - min(repeats, 2)] and line is not None:
            repeats += 1
            if repeats <= 2:
                shown.append(line)
            continue
        if repeats > 2:
            shown.append(f"  [Previous line repeated {repeats - 2} more times]")
        repeats = 0
        if line is not None:
            shown.append(line)
    return "\n".join(shown)


def launch_error(record: WorkerRecord, how: str, tail: str) -> LaunchError:
    """The error of a worker that ended before it was ready."""
    message = f"worker {record.id} ({where(record.pid, record.host)}) failed to start: {how}"
    message += command_note(record.process.command)
    if tail:
        message += f"\nits stderr ends with:\n{tail}"
    return LaunchError(message, command=record.process.command,
                       returncode=record.process.poll(), stderr_tail=tail)


def setup_error(record: WorkerRecord, chunk: Chunk, cause: BaseException) -> LaunchError:
    """The error of a worker whose ``setup`` function (``chunk``'s) failed (``cause``);
    its command is an attribute only (the worker started: the command did its part)."""
    error = LaunchError(f"{chunk.job.name_tasks(0, 0)} failed on {record.label}: "
                        f"{type(cause).__name__}: {cause}", command=record.process.command)
    error.__cause__ = cause
    return error


def command_note(command: str | None) -> str:
    """The line a worker's :class:`LaunchError` adds to name the command that started it."""
    return f"\ncommand: {command}" if command else ""
